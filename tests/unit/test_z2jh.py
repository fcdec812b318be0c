"""config/kubernetes/z2jh/z2jh-values.yaml is valid z2jh configuration with watchdogd's scopes.

The snippet is merged into the chart's default values (tests/data/z2jh/values.yaml) the way
Helm merges a user's config.yaml, and the result is validated against the chart's own
values.schema.yaml (both copied from the chart's 4.4.0 tag: tests/data/z2jh/README.md), as
`helm upgrade` does before rendering. The scopes are those watchdogd's hub API calls need,
and each exists in the installed JupyterHub.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from watchdogd.sim.hub import SERVICE_SCOPES

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "config" / "kubernetes" / "z2jh" / "z2jh-values.yaml"
DATA = REPO / "tests" / "data" / "z2jh"
#: The scopes only the culler check needs; without them it is judged from culler_timeout.
OPTIONAL_SCOPES = {"list:services", "read:services"}


def merged(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a values file into the chart's defaults: maps merge, others win."""
    out = copy.deepcopy(defaults)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.cache
def validator() -> jsonschema.protocols.Validator:
    schema = yaml.safe_load((DATA / "values.schema.yaml").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


@functools.cache
def _defaults_text() -> str:
    return (DATA / "values.yaml").read_text()


def defaults() -> dict[str, Any]:
    """The chart's default values (a fresh copy: tests merge into it)."""
    return yaml.safe_load(_defaults_text())  # type: ignore[no-any-return]


def problems(values: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator().iter_errors(values)]


def snippet() -> dict[str, Any]:
    return yaml.safe_load(SNIPPET.read_text())  # type: ignore[no-any-return]


def test_the_data_says_which_chart_it_came_from() -> None:
    note = (DATA / "README.md").read_text()
    assert re.search(r"tag `4\.4\.0` \(commit\s+[0-9a-f]{40}", note)
    assert "JupyterHub 5.5" in note


def test_the_chart_defaults_are_valid() -> None:
    """The oracle itself: the chart's defaults pass its schema (else every test here lies)."""
    assert problems(defaults()) == []


def test_the_snippet_is_valid_chart_configuration() -> None:
    values = merged(defaults(), snippet())
    assert problems(values) == []
    # What the chart's jupyterhub_config.py makes of it: a service named by its key (the
    # token is generated into the Secret `hub`) and a role naming that service.
    assert values["hub"]["loadRoles"]["watchdogd"]["services"] == ["watchdogd"]
    # The admin page: a url makes the hub route /services/watchdogd/ to it, list it in the
    # Services menu and act as its OAuth provider.
    service = values["hub"]["services"]["watchdogd"]
    assert service["url"].startswith("http://")
    assert service["oauth_no_confirm"] is True
    # The proxy's egress gains a rule; the chart's own rules stay.
    netpol = values["proxy"]["chp"]["networkPolicy"]
    assert netpol["egress"] and netpol["egressAllowRules"] == defaults()["proxy"]["chp"][
        "networkPolicy"]["egressAllowRules"]


def test_the_service_entry_is_what_jupyterhub_accepts() -> None:
    """The chart hands hub.services.X to JupyterHub as is: every key must be a Service option."""
    from jupyterhub.services.service import Service

    service = snippet()["hub"]["services"]["watchdogd"]
    assert set(service) <= set(Service.class_trait_names()), set(service) - set(
        Service.class_trait_names())
    built = Service(name="watchdogd", **service)
    assert built.url == service["url"] and built.oauth_no_confirm is True
    assert built.display is True  # shown in the Services menu (JupyterHub's default)
    # A url and no command: an external service, which the hub does not start.
    assert not built.managed



@pytest.mark.parametrize("broken", [
    {"hub": {"loadRole": {"watchdogd": {}}}},        # misspelt: the hub section is closed
    {"hub": {"services": ["watchdogd"]}},            # a list where the chart wants a map
    {"hubs": {"services": {"watchdogd": {}}}},       # not a section of the chart
])
def test_the_schema_refuses_a_misplaced_snippet(broken: dict[str, Any]) -> None:
    assert problems(merged(defaults(), broken)) != []


def test_the_scopes_are_what_watchdogd_calls_and_exist_in_jupyterhub() -> None:
    scopes = snippet()["hub"]["loadRoles"]["watchdogd"]["scopes"]
    assert len(scopes) == len(set(scopes))
    # Exactly the service role the simulated hub enforces (REFERENCE.md), without the
    # optional culler scopes, which the README explains.
    assert set(scopes) == SERVICE_SCOPES - OPTIONAL_SCOPES
    from jupyterhub.scopes import scope_definitions

    assert set(scopes) <= set(scope_definitions), set(scopes) - set(scope_definitions)


def test_the_readme_includes_the_snippet_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```yaml\n{SNIPPET.read_text()}```" in readme
