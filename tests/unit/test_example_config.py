"""config/watchdogd.example.toml documents every key and passes `config check`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel

from watchdogd.checks import REGISTRY
from watchdogd.cli import main
from watchdogd.config import (
    CheckConfig,
    CloudConfig,
    ClusterConfig,
    Config,
    DaemonConfig,
    DigestConfig,
    ExclusionsConfig,
    HubConfig,
    ListenerConfig,
    MaintenanceWindow,
    NotifyConfig,
    RemediationConfig,
    StateConfig,
    WebConfig,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "watchdogd.example.toml"


def documented_keys() -> set[str]:
    keys = set()
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^\s*#?\s*([a-z_]+)\s*=", line)
        if match:
            keys.add(match.group(1))
    return keys


def fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_every_key_is_documented() -> None:
    documented = documented_keys()
    models: list[type[BaseModel]] = [StateConfig, NotifyConfig, RemediationConfig, DaemonConfig,
                                     DigestConfig,
                                     ClusterConfig, HubConfig, CloudConfig, MaintenanceWindow,
                                     ExclusionsConfig, ListenerConfig, WebConfig]
    models += [spec.settings_model for spec in REGISTRY.values()]
    missing = {f"{m.__name__}.{k}" for m in models for k in fields(m) - documented}
    # Secrets are documented through their *_file keys.
    missing = {m for m in missing if not m.endswith(("_token", ".url", ".urls", "db_url",
                                                     "credential_secret", "Config.key"))}
    assert missing == set()
    for name in REGISTRY:
        assert f"[checks.{name}]" in EXAMPLE.read_text(), name
    assert fields(Config) <= documented | {"state", "notify", "remediation", "daemon",
                                           "clusters", "hubs", "clouds", "checks",
                                           "maintenance", "exclusions", "listener",
                                           "digest", "web"}
    assert fields(CheckConfig) <= documented


def test_example_passes_config_check(tmp_path: Path, capsys,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # `config check` reads the files the example names: its ~/.kube/config (context js2),
    # and the default state folder ($STATE_DIRECTORY under systemd).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(
        "current-context: js2\ncontexts: [{name: js2, context: {cluster: js2, user: js2}}]\n")
    config = tmp_path / "watchdogd.toml"
    shutil.copy(EXAMPLE, config)
    for path in re.findall(r'^[a-z_]+_file = "([^"]+)"', EXAMPLE.read_text(), re.M):
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("json://127.0.0.1:9/x\n" if path.endswith("apprise.txt")
                          else "a-secret\n")
    main(["config", "check", "--config", str(config)])
    assert "configuration is valid" in capsys.readouterr().out
