"""The culler check against a real JupyterHub (6 and 5) and the real jupyterhub-idle-culler.

One real hub carries two cullers, and watchdogd looks at it as three hubs:

- ``main``: the culler runs outside the hub (the service ``idle-culler`` has a token and no
  command, so the Hub API shows none); watchdogd knows its timeout from the configuration.
  The test keeps it stopped while alice's server ages, sees ``culler-overdue``, starts the
  real culler, sees it stop alice's server, and sees the finding resolve.
- ``z2jh``: the hub-managed service ``jupyterhub-idle-culler`` as z2jh declares it, but its
  role lacks ``delete:servers``: it runs (the hub shows its pid) and stops nothing, the
  misconfiguration the issue describes. Nothing is configured: watchdogd finds the culler by
  its command line and reads ``--timeout`` / ``--cull-every`` off it.
- ``gone``: configured to have the culler ``cull-idle``, which the hub does not list:
  ``culler-missing``.

The hub's activity endpoint only moves ``last_activity`` forward (a past time is accepted and
ignored, read off JupyterHub 6.1.1 and 5.5.4), so idle time is real time: the cullers'
timeout is one second. bob's activity is reported just before each pass, the way a server
in use reports it: he must never be overdue.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from watchdogd.app import build, load_config
from watchdogd.engine import Engine
from watchdogd.report import CheckResult
from watchdogd.sim.kube import KubeSim

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HUB5_PYTHON = REPO / ".cache" / "hub5-venv" / "bin" / "python"
#: z2jh's culler role (jupyterhub/files/hub/jupyterhub_config.py)
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
MARGIN_S = 3


def hub_config(culler_token: str) -> str:
    """The two cullers and the scopes watchdogd's role gains for the culler check."""
    misconfigured = [s for s in CULLER_SCOPES if s != "delete:servers"]
    return f"""
import sys as _sys
c.JupyterHub.services.append({{"name": "idle-culler", "api_token": {culler_token!r}}})
c.JupyterHub.services.append({{
    "name": "jupyterhub-idle-culler",
    "command": [_sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=1",
                "--cull-every=1", "--concurrency=10"],
}})
c.JupyterHub.load_roles.append(
    {{"name": "culler", "scopes": {CULLER_SCOPES!r}, "services": ["idle-culler"]}})
c.JupyterHub.load_roles.append({{"name": "culler-without-delete", "scopes": {misconfigured!r},
                                 "services": ["jupyterhub-idle-culler"]}})
next(r for r in c.JupyterHub.load_roles if r["name"] == "watchdogd")["scopes"] += [
    "list:services", "read:services"]
"""


def watchdogd_config(workdir: Path, hub: RealHub, kube: KubeSim) -> Path:
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "api_token").write_text(hub.service_token + "\n")
    (secrets_dir / "state_url").write_text(f"sqlite:///{workdir}/state.db\n")
    kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
    hub_keys = f"""cluster = "sim"
api_url = "{hub.api_url}"
api_token_file = "secrets/api_token"
timeout = "10s"
"""
    path = workdir / "watchdogd.toml"
    path.write_text(f"""
[state]
url_file = "secrets/state_url"
[clusters.sim]
kubeconfig = "{kubeconfig}"
[hubs.main]
{hub_keys}culler_service = "idle-culler"
culler_timeout = "1s"
[hubs.z2jh]
{hub_keys}
[hubs.gone]
{hub_keys}culler_service = "cull-idle"
[checks.culler]
margin = "{MARGIN_S}s"
""")
    return path


def poll(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``check()`` until it returns something truthy; fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(0.3)


class Culler:
    """The real jupyterhub-idle-culler, run outside the hub with the idle-culler token."""

    def __init__(self, hub: RealHub, token: str, log: Path) -> None:
        self.hub, self.token, self.log = hub, token, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, JUPYTERHUB_API_TOKEN=self.token)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub_idle_culler", f"--url={self.hub.api_url}",
                 "--timeout=1", "--cull-every=1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=self.log.parent)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(params=["6", "5"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path,
               ) -> Iterator[tuple[RealHub, Engine, Culler]]:
    require_or_skip(hub_available())
    if request.param == "5":
        has_culler = HUB5_PYTHON.exists() and subprocess.run(
            [str(HUB5_PYTHON), "-c", "import jupyterhub_idle_culler"], check=False,
            capture_output=True).returncode == 0
        require_or_skip(None if has_culler else
                        f"no JupyterHub 5 venv with jupyterhub-idle-culler at {HUB5_PYTHON}: "
                        "run scripts/setup-test-peers.sh")
    token = secrets.token_hex(32)
    with KubeSim() as kube:
        hub = RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token,
                      extra_config=hub_config(token))
        if request.param == "5":
            hub.python = str(HUB5_PYTHON)
        culler = Culler(hub, token, tmp_path / "culler.log")
        with hub:
            app = build(load_config(watchdogd_config(tmp_path, hub, kube)), dry_run=True)
            try:
                yield hub, app.engine, culler
            finally:
                culler.stop()
                app.close()


def report_activity(hub: RealHub, user: str) -> None:
    """What a server in use does: report its activity to the hub (scope users:activity)."""
    if hub.server_model(user) is None:
        return  # culled
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    status, body = hub.api("POST", f"/users/{user}/activity",
                           body={"last_activity": now, "servers": {"": {"last_activity": now}}})
    assert status == 200, body


def culler_pass(hub: RealHub, engine: Engine) -> dict[str, CheckResult]:
    report_activity(hub, "bob")
    report = engine.run_pass(only=["culler"])
    return {check.target: check for check in report.checks}


def found(check: CheckResult) -> dict[str, Any]:
    assert check.status != "error", check.error
    return {f.tracked.finding.kind: f.tracked.finding for f in check.findings}


def test_a_stopped_culler_is_overdue_and_resolves_once_it_runs(
        deployment: tuple[RealHub, Engine, Culler]) -> None:
    hub, engine, culler = deployment
    for user in ("alice", "bob"):
        hub.create_user(user)
        hub.start_server(user)

    def both_overdue() -> dict[str, CheckResult] | None:
        checks = culler_pass(hub, engine)
        ready = all("culler-overdue" in found(checks[t]) for t in ("main", "z2jh"))
        return checks if ready else None

    checks = poll("culler-overdue for main and z2jh", both_overdue)
    main = found(checks["main"])["culler-overdue"]
    assert main.key == "culler/main/culler-overdue/main"
    assert {k: main.evidence[k] for k in ("count", "servers", "service", "timeout_s",
                                          "timeout_from", "margin_s", "clock")} == {
        "count": 1, "servers": ["alice"], "service": "idle-culler", "timeout_s": 1,
        "timeout_from": "config", "margin_s": MARGIN_S, "clock": "hub"}
    z2jh = found(checks["z2jh"])["culler-overdue"]
    assert {k: z2jh.evidence[k] for k in ("servers", "service", "timeout_s", "cull_every_s",
                                          "timeout_from")} == {
        "servers": ["alice"], "service": "jupyterhub-idle-culler", "timeout_s": 1,
        "cull_every_s": 1, "timeout_from": "command"}
    gone = found(checks["gone"])
    assert set(gone) == {"culler-missing"}
    assert gone["culler-missing"].subject == "cull-idle"
    assert "idle-culler" in gone["culler-missing"].evidence["services"]

    # The oracle is the hub: alice's server runs, idle since it started, while the managed
    # culler is alive (a pid) and has been refused every stop it tried.
    server = hub.server_model("alice")
    assert server is not None and server["last_activity"] == server["started"]
    status, services = hub.api("GET", "/services")
    assert status == 200 and services["jupyterhub-idle-culler"]["pid"] > 0

    culler.start()
    poll("the culler stopping alice's server", lambda: hub.server_model("alice") is None)
    checks = culler_pass(hub, engine)
    assert "culler/main/culler-overdue/main" in checks["main"].resolved
    assert "culler/z2jh/culler-overdue/z2jh" in checks["z2jh"].resolved
    assert "culler-overdue" not in found(checks["main"])
    assert set(found(checks["gone"])) == {"culler-missing"}
    assert "Culling server alice" in culler.log.read_text()
