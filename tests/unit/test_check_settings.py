"""Each check gets its own validated settings: its defaults, its keys, nothing of the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdogd import config as config_module
from watchdogd.app import build, load_config
from watchdogd.checks import REGISTRY, section_problems
from watchdogd.config import Config, ConfigError


def _config(tmp_path: Path, checks: dict[str, dict[str, object]]) -> Config:
    return Config.model_validate({
        "state": {"url": f"sqlite:///{tmp_path}/state.db"},
        "clusters": {"js2": {"kubeconfig": "/nonexistent"}},
        "hubs": {"main": {"cluster": "js2", "api_url": "http://hub/hub/api"}},
        "checks": checks,
    })


@pytest.mark.parametrize(("checks", "expected"), [
    ({}, {"sessions": 30, "certs": 6 * 3600, "nodes": 300, "volumes": 180, "orphans": 3600,
          "quotas": 900}),
    # A section that sets other keys keeps its check's own default interval (certs
    # used to fall back to the shared 5 minutes and open TLS connections 72 times as often).
    ({"certs": {"warn_days": 20}, "sessions": {"stuck_stop_after": "20m"}},
     {"sessions": 30, "certs": 6 * 3600}),
    ({"nodes": {"interval": "2m"}}, {"nodes": 120}),
])
def test_the_daemon_schedules_each_check_at_its_own_interval(
        tmp_path: Path, checks: dict[str, dict[str, object]], expected: dict[str, int]) -> None:
    app = build(_config(tmp_path, checks), notify=False)
    try:
        for name, seconds in expected.items():
            assert app.engine.settings[name].interval.total_seconds() == seconds
        # the daemon's schedule reads the same settings (only checks with a target run)
        wanted = app.daemon()._wanted()
        assert wanted["sessions"] == expected.get("sessions", 30)
    finally:
        app.close()


def test_a_check_receives_its_settings_and_the_inventory_only(tmp_path: Path) -> None:
    config = _config(tmp_path, {"sessions": {"stuck_spawn_after": "7m"}})
    spec = REGISTRY["sessions"]
    [target] = spec.targets(spec.settings(config.checks), config.inventory)
    assert target.name == "main"
    assert target.settings.check.stuck_spawn_after.total_seconds() == 420


def test_the_registry_names_each_bad_key_of_each_section() -> None:
    problems = section_problems({
        "sessions": {"interval": "soon", "bogus": 1},
        "sesions": {},
        "certs": {"warn_days": -1},
    })
    assert "checks.sessions.bogus: unknown key" in problems
    assert any(p.startswith("checks.sessions.interval: invalid duration") for p in problems)
    assert any(p.startswith("checks.sesions: unknown check (known: ") for p in problems)
    assert any(p.startswith("checks.certs.warn_days: ") for p in problems)


def test_the_app_loader_judges_check_sections_and_the_bare_loader_leaves_them_raw(
        tmp_path: Path) -> None:
    path = tmp_path / "watchdogd.toml"
    path.write_text('[checks.sessions]\nbogus = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["checks.sessions.bogus: unknown key"]
    # config knows no checks (it sits below them); the raw table is kept as written
    assert config_module.load_config(path).checks == {"sessions": {"bogus": 1}}
