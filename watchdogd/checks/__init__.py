"""The check registry: which checks exist, their settings validated, their interface.

A check module provides:

``NAME``
    the check's name (``sessions``), used in keys, config and metrics;
``KINDS``
    the finding kinds it can report;
``Settings``
    the model of its ``[checks.NAME]`` section (a :class:`~watchdogd.config.CheckConfig`);
``targets(settings, inventory)``
    what it looks at in a pass and which observations each target needs, from its own
    validated settings and the hubs, clusters and clouds the configuration declares;
``detect(snapshot, now)``
    the findings, each with its planned action: no I/O, deterministic;
``verify(finding, reads, first_seen)`` (optional)
    whether a finding still holds on the objects its action's ``verify`` needs
    re-read right before acting: None, or why the action must be skipped;
``FAILING_SEVERITY`` (optional, warning by default)
    the severity of the engine's ``check-failing`` finding for a target of this check.

Adding a check is its module, one line in :data:`REGISTRY`, and its tests. A check never
sees the whole configuration: the registry validates each ``[checks.NAME]`` section
against its model and hands the check only that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from watchdogd.checks import (
    certs,
    culler,
    labs,
    nodes,
    orphans,
    probes,
    quotas,
    sessions,
    volumes,
)
from watchdogd.config import CheckConfig, Config, Inventory
from watchdogd.model import CheckTarget, Detection, Finding, Severity, Snapshot

__all__ = ["REGISTRY", "CheckSpec", "section_problems"]


@dataclass(frozen=True)
class CheckSpec:
    """The interface of one check module."""

    name: str
    kinds: tuple[str, ...]
    settings_model: type[CheckConfig]
    targets: Callable[[Any, Inventory], list[CheckTarget]]
    detect: Callable[[Snapshot, datetime], Detection]
    verify: Callable[[Finding, dict[str, Any], datetime], str | None] | None = None
    #: how urgent a ``check-failing`` finding of this check is (the module's
    #: ``FAILING_SEVERITY``): a hub nobody can see into is critical, a cert scan warning
    failing_severity: Severity = Severity.WARNING

    def settings(self, sections: Mapping[str, Any]) -> CheckConfig:
        """This check's section of ``[checks]`` validated; its defaults when there is none.

        Raises pydantic's ValidationError; :func:`section_problems` reports the same
        problems as lines that name each key.
        """
        return self.settings_model.section(sections, self.name)

    def targets_for(self, config: Config) -> list[CheckTarget]:
        """This check's targets under ``config``: its own settings and the inventory."""
        return self.targets(self.settings(config.checks), config.inventory)

    @classmethod
    def of(cls, module: ModuleType) -> CheckSpec:
        """Read the interface off a check module."""
        return cls(module.NAME, tuple(module.KINDS), module.Settings, module.targets,
                   module.detect, getattr(module, "verify", None),
                   getattr(module, "FAILING_SEVERITY", Severity.WARNING))


REGISTRY: dict[str, CheckSpec] = {
    spec.name: spec for spec in (
        CheckSpec.of(sessions), CheckSpec.of(certs), CheckSpec.of(nodes),
        CheckSpec.of(volumes), CheckSpec.of(orphans), CheckSpec.of(culler),
        CheckSpec.of(labs), CheckSpec.of(quotas),
        CheckSpec.of(probes),
    )
}


def section_problems(sections: Mapping[str, Any],
                     registry: Mapping[str, CheckSpec] = REGISTRY) -> list[str]:
    """Every problem of the ``[checks.NAME]`` sections, one ``checks.NAME.key: why`` line each."""
    problems = []
    for name in sections:
        spec = registry.get(name)
        if spec is None:
            known = ", ".join(sorted(registry))
            problems.append(f"checks.{name}: unknown check (known: {known})")
            continue
        try:
            spec.settings(sections)
        except ValidationError as exc:
            for error in exc.errors():
                loc = ".".join(str(part) for part in error["loc"])
                msg = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                msg = msg.removeprefix("Value error, ")
                problems.append(f"checks.{name}.{loc}: {msg}")
    return problems
