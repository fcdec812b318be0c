"""systemd/: the units verify without a single warning and score 2.0 or better.

``systemd-analyze verify`` needs the ExecStart binary to exist, so the units are
checked on a copy whose ``/opt/watchdogd/bin/watchdogd`` points at this
interpreter's ``watchdogd`` script; everything else is verified as shipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from watchdogd.app import load_config
from watchdogd.config import Config, parse_duration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED = "/opt/watchdogd/bin/watchdogd"
SERVICES = ("watchdogd.service", "watchdogd-check.service", "watchdogd-digest.service")
MAX_EXPOSURE = 2.0


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "") not in ("", "0"):
            pytest.fail("systemd-analyze is required (WATCHDOGD_REQUIRE_PEERS is set)")
        pytest.skip("systemd-analyze not installed")
    return path


def settings(unit: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments dropped; repeated keys accumulate)."""
    out: dict[str, list[str]] = {}
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def units(tmp_path: Path) -> Path:
    script = Path(sys.prefix) / "bin" / "watchdogd"
    assert script.is_file(), f"{script} missing: pip install -e . first"
    for unit in UNITS.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(script)))
    return tmp_path


def test_units_verify_without_warnings(units: Path) -> None:
    names = sorted(p.name for p in units.iterdir())
    assert names == ["watchdogd-check.service", "watchdogd-check.timer",
                     "watchdogd-digest.service", "watchdogd-digest.timer", "watchdogd.service"]
    result = subprocess.run([analyze(), "verify", *(f"./{n}" for n in names)], cwd=units,
                            capture_output=True, text=True, timeout=120, check=False)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_at_most_2(units: Path, unit: str) -> None:
    result = subprocess.run([analyze(), "security", "--offline=yes", f"./{unit}"], cwd=units,
                            capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_daemon_unit_speaks_sd_notify_with_a_watchdog() -> None:
    unit = settings("watchdogd.service")
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    watchdog = parse_duration(unit["WatchdogSec"][0].replace("min", "m"))
    assert timedelta(seconds=10) <= watchdog <= timedelta(minutes=10)
    assert unit["ExecStart"][0].split()[:2] == [INSTALLED, "run"]
    # SIGTERM lets the running pass finish: the stop timeout must cover a pass.
    stop = parse_duration(unit["TimeoutStopSec"][0].replace("min", "m"))
    assert stop > Config().daemon.pass_timeout
    assert unit["RestartPreventExitStatus"] == ["78"]  # configuration errors do not loop


@pytest.mark.parametrize("name", SERVICES)
def test_secrets_by_credential_state_by_state_directory(name: str) -> None:
    unit = settings(name)
    assert unit["LoadCredential"] == ["watchdogd:/etc/watchdogd/credentials"]
    assert unit["StateDirectory"] == ["watchdogd"]
    assert unit["DynamicUser"] == ["yes"]
    assert not [v for v in unit.get("Environment", []) if re.search(r"TOKEN|PASSWORD|URL", v)]


def test_the_timer_runs_the_one_shot_check() -> None:
    service = settings("watchdogd-check.service")
    timer = settings("watchdogd-check.timer")
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][0].split()[:2] == [INSTALLED, "check"]
    assert timer["Unit"] == ["watchdogd-check.service"]
    # Counted from the end of the last run: passes never overlap.
    assert "OnUnitInactiveSec" in timer and "OnCalendar" not in timer
    assert "watchdogd.service" in service["Conflicts"][0]


def test_the_digest_timer_sends_it_weekly() -> None:
    service = settings("watchdogd-digest.service")
    timer = settings("watchdogd-digest.timer")
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"][0].split()[:3] == [INSTALLED, "digest", "--send"]
    assert timer["Unit"] == ["watchdogd-digest.service"]
    assert timer["OnCalendar"] == ["Mon *-*-* 08:00:00"] and timer["Persistent"] == ["true"]
    # Sent once per week whoever sends it: it runs beside the daemon.
    assert "Conflicts" not in service


def test_credentials_and_state_directory_reach_the_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What systemd provides is what load_config reads: credential:NAME and $STATE_DIRECTORY."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    # LoadCredential=watchdogd:/etc/watchdogd/credentials turns the file hub-main-api-token
    # of that directory into the credential "watchdogd_hub-main-api-token".
    (credentials / "watchdogd_hub-main-api-token").write_text("s3cret\n")
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    path = tmp_path / "watchdogd.toml"
    path.write_text(
        '[clusters.c]\nkubeconfig = "/nonexistent"\n'
        '[hubs.main]\ncluster = "c"\napi_url = "http://hub:8081/hub/api"\n'
        'api_token_file = "credential:watchdogd_hub-main-api-token"\n')
    config = load_config(path)
    token = config.hubs["main"].api_token
    assert token is not None and token.get_secret_value() == "s3cret"
    assert config.state.resolved_url() == f"sqlite:///{state}/state.db"
