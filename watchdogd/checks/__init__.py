"""The checks: one module per family, pure functions over a snapshot.

A check module provides:

``NAME``
    the check's name (``sessions``), used in keys, config and metrics;
``KINDS``
    the finding kinds it can report;
``Settings`` and ``settings(config)``
    the model of its ``[checks.NAME]`` section, and that section validated;
``targets(config)``
    what it looks at in a pass and which observations each target needs;
``detect(snapshot, now)``
    the findings, each with its planned action: no I/O, deterministic;
``verify(finding, reads, first_seen)`` (optional)
    whether a finding still holds on the objects its action's ``verify`` needs
    re-read right before acting: None, or why the action must be skipped.

Adding a check is its module, one line in :data:`REGISTRY`, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

from watchdogd.checks import certs, nodes, orphans, sessions, volumes
from watchdogd.config import CheckConfig, Config
from watchdogd.model import CheckTarget, Detection, Finding, Snapshot

__all__ = ["REGISTRY", "CheckSpec"]


@dataclass(frozen=True)
class CheckSpec:
    """The interface of one check module."""

    name: str
    kinds: tuple[str, ...]
    settings: Callable[[Config], CheckConfig]
    targets: Callable[[Config], list[CheckTarget]]
    detect: Callable[[Snapshot, datetime], Detection]
    settings_model: type[CheckConfig]
    verify: Callable[[Finding, dict[str, Any], datetime], str | None] | None = None

    def validate_settings(self, data: dict[str, object]) -> CheckConfig:
        """Validate a ``[checks.NAME]`` section (raises pydantic's ValidationError)."""
        return self.settings_model.model_validate(data)

    @classmethod
    def of(cls, module: ModuleType) -> CheckSpec:
        """Read the interface off a check module."""
        return cls(module.NAME, tuple(module.KINDS), module.settings, module.targets,
                   module.detect, module.Settings, getattr(module, "verify", None))


REGISTRY: dict[str, CheckSpec] = {
    spec.name: spec for spec in (
        CheckSpec.of(sessions), CheckSpec.of(certs), CheckSpec.of(nodes),
        CheckSpec.of(volumes), CheckSpec.of(orphans),
    )
}
