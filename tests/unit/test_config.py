"""Configuration loading: every problem named by its path, secrets only from files or env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchdogd.app import load_config
from watchdogd.checks import REGISTRY
from watchdogd.cli import EXIT_CONFIG, EXIT_USAGE, main
from watchdogd.config import ConfigError

GOOD = """
[remediation]
dry_run = false
min_age = "2m"
[clusters.js2]
kubeconfig = "kubeconfig"
[hubs.main]
cluster = "js2"
api_url = "http://hub:8081/hub/api/"
api_token_file = "token"
db_url_file = "dburl"
[checks.sessions]
interval = "30s"
"""

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: js2
clusters: [{name: js2, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: js2, user: {token: not-a-real-token}}]
contexts: [{name: js2, context: {cluster: js2, user: js2}}]
"""


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("WATCHDOGD_"):
            monkeypatch.delenv(key)
    (tmp_path / "token").write_text("tok-from-file\n")
    (tmp_path / "dburl").write_text("sqlite:////tmp/hub.sqlite\n")
    # `config check` reads the kubeconfig and the state folder: both must exist.
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    path = tmp_path / "watchdogd.toml"
    path.write_text(GOOD)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_good_file_loads_with_secrets_and_durations(cfg: Path) -> None:
    config = load_config(cfg)
    hub = config.hubs["main"]
    assert hub.api_token is not None and hub.api_token.get_secret_value() == "tok-from-file"
    assert hub.api_url == "http://hub:8081/hub/api"
    assert config.remediation.min_age.total_seconds() == 120
    assert REGISTRY["sessions"].settings(config.checks).interval.total_seconds() == 30
    assert "tok-from-file" not in repr(config)


def test_environment_overrides_the_file(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOGD_REMEDIATION__DRY_RUN", "true")
    monkeypatch.setenv("WATCHDOGD_HUBS__MAIN__API_TOKEN", "tok-from-env")
    config = load_config(cfg)
    assert config.remediation.dry_run is True
    token = config.hubs["main"].api_token
    assert token is not None and token.get_secret_value() == "tok-from-env"


def test_config_path_from_environment(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOGD_CONFIG", str(cfg))
    assert "main" in load_config(None).hubs


def test_systemd_credentials(cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hub-token").write_text("tok-from-credential")
    cfg.write_text(GOOD.replace('api_token_file = "token"',
                                'api_token_file = "credential:hub-token"'))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    token = load_config(cfg).hubs["main"].api_token
    assert token is not None and token.get_secret_value() == "tok-from-credential"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}: no such config file"]


def test_broken_toml(cfg: Path) -> None:
    cfg.write_text("[hubs.main\n")
    [problem] = problems(cfg)
    assert "invalid TOML" in problem


def test_every_problem_is_listed_with_its_path(cfg: Path) -> None:
    cfg.write_text(GOOD.replace('dry_run = false', 'dry_run = "maybe"\nbogus = 1')
                   .replace('cluster = "js2"', 'cluster = "nope"')
                   .replace('api_token_file = "token"', 'api_token_file = "missing"')
                   .replace('interval = "30s"', 'interval = "soon"\nfoo = 1'))
    found = problems(cfg)
    assert any(p.startswith("remediation.dry_run: ") for p in found)
    assert "remediation.bogus: unknown key" in found
    assert "hubs.main.cluster: no cluster named 'nope'" in found
    assert any(p.startswith("hubs.main.api_token_file: cannot read ") for p in found)
    assert any(p.startswith("checks.sessions.interval: invalid duration") for p in found)
    assert "checks.sessions.foo: unknown key" in found


def test_inline_secret_is_refused_without_echoing_it(cfg: Path) -> None:
    cfg.write_text(GOOD.replace('api_token_file = "token"', 'api_token = "s3cr3t-inline"'))
    found = problems(cfg)
    assert any(p.startswith("hubs.main.api_token: secrets do not belong") for p in found)
    assert not any("s3cr3t-inline" in p for p in found)


def test_unknown_environment_variable(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOGD_REMEDATION__DRY_RUN", "false")
    assert problems(cfg) == ["WATCHDOGD_REMEDATION__DRY_RUN: unknown environment variable "
                             "(no such section)"]


def test_variables_that_address_no_key_are_not_configuration(
        cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tooling (CI sets WATCHDOGD_REQUIRE_PEERS) shares the prefix; only SECTION__KEY is config.
    monkeypatch.setenv("WATCHDOGD_REQUIRE_PEERS", "1")
    monkeypatch.setenv("WATCHDOGD_PYTHON", "python3")
    assert "main" in load_config(cfg).hubs


def test_empty_and_unreadable_secret_files(cfg: Path, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  \n")
    (tmp_path / "dburl").write_bytes(b"\xff\xfe\x00")
    found = problems(cfg)
    assert any(p.startswith("hubs.main.api_token_file: ") and "is empty" in p for p in found)
    assert any(p.startswith("hubs.main.db_url_file: ") and "not UTF-8" in p for p in found)


def test_unknown_check_section(cfg: Path) -> None:
    cfg.write_text(GOOD + "\n[checks.sesions]\n")
    assert any(p.startswith("checks.sesions: unknown check") for p in problems(cfg))


def test_cli_config_check_exit_codes(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["config", "check", "--config", str(cfg)])  # success returns normally
    assert "configuration is valid" in capsys.readouterr().out
    cfg.write_text(GOOD.replace('min_age = "2m"', 'min_age = "2 minutes"'))
    with pytest.raises(SystemExit) as bad:
        main(["config", "check", "--config", str(cfg)])
    assert bad.value.code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "config: remediation.min_age: invalid duration '2 minutes'" in err


def test_cli_usage_errors_exit_64(cfg: Path) -> None:
    with pytest.raises(SystemExit) as bad_option:
        main(["check", "--no-such-option"])
    assert bad_option.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as bad_check:
        main(["check", "--config", str(cfg), "--only", "nonsense"])
    assert bad_check.value.code == EXIT_USAGE
