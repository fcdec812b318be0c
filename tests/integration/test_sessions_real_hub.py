"""The sessions check end to end against a real JupyterHub 6 and configurable-http-proxy.

The hub runs on SQLite and on a real PostgreSQL; the simulated Kubernetes API holds
the pods that mirror the hub's servers. Everything watchdogd does goes through the
real Hub REST API, and notices arrive at a real local HTTP receiver and SMTP server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from tests.peers.postgres import RealPostgres
from tests.peers.receivers import JsonReceiver, SmtpReceiver
from watchdogd.app import load_config
from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.notify import Notifier
from watchdogd.report import PassReport
from watchdogd.sim.kube import KubeSim
from watchdogd.sources import Sources
from watchdogd.store import Store

pytestmark = pytest.mark.integration


class Deployment:
    """A real hub, its proxy, a simulated cluster with a hub pod, and a watchdogd config."""

    def __init__(self, workdir: Path, hub: RealHub, kube: KubeSim, http: JsonReceiver,
                 smtp: SmtpReceiver) -> None:
        self.workdir, self.hub, self.kube, self.http, self.smtp = workdir, hub, kube, http, smtp
        kube.put({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "hub-5f7c9", "namespace": "jhub",
                               "labels": {"component": "hub", "app": "jupyterhub"}},
                  "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                  "status": {"phase": "Running"}})
        secrets = workdir / "secrets"
        secrets.mkdir(exist_ok=True)
        for name, value in (("api_token", hub.service_token), ("db_url", hub.db_url),
                            ("proxy_token", hub.proxy_token)):
            (secrets / name).write_text(value + "\n")
        (secrets / "apprise.txt").write_text(f"{http.url}\n{smtp.url}\n")
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        self.config_path = workdir / "watchdogd.toml"
        self.config_path.write_text(f"""
[state]
url_file = "secrets/state_url"
[notify]
urls_file = "{secrets / 'apprise.txt'}"
[remediation]
dry_run = false
confirm_after = 2
min_age = 0
enabled = ["stop-server", "sync-routes", "delete-pod"]
[clusters.sim]
kubeconfig = "{kubeconfig}"
timeout = "5s"
[hubs.main]
cluster = "sim"
namespace = "jhub"
api_url = "{hub.api_url}"
api_token_file = "secrets/api_token"
db_url_file = "secrets/db_url"
proxy_api_url = "{hub.proxy_api_url}"
proxy_token_file = "secrets/proxy_token"
timeout = "10s"
""")
        (secrets / "state_url").write_text(f"sqlite:///{workdir}/state.db\n")
        self.config: Config = load_config(self.config_path)
        self.engine = self.build_engine()

    def build_engine(self) -> Engine:
        store = Store(self.config.state.resolved_url())
        return Engine(self.config, store, Sources(self.config),
                      notifier=Notifier.from_config(self.config.notify))

    def run(self) -> PassReport:
        return self.engine.run_pass(only=["sessions"])

    def hub_db_running(self) -> dict[str, Any]:
        engine = sa.create_engine(self.hub.db_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT users.name, spawners.name, spawners.server_id FROM spawners "
                "JOIN users ON users.id = spawners.user_id")).all()
        engine.dispose()
        return {(u + (f"/{s}" if s else "")): sid for u, s, sid in rows}


def findings_of(report: PassReport) -> dict[str, tuple[str, str | None]]:
    [check] = report.checks
    assert check.status != "error", check.error
    return {f"{f.tracked.finding.kind}:{f.tracked.finding.subject}":
            (str(f.tracked.finding.action.name) if f.tracked.finding.action else "",
             str(f.action_status) if f.action_status else None)
            for f in check.findings}


REPO = Path(__file__).resolve().parents[2]
#: JupyterHub 5.x in its own venv (scripts/setup-test-peers.sh): z2jh still ships 5.5.
HUB5_PYTHON = REPO / ".cache" / "hub5-venv" / "bin" / "python"
ALEMBIC = {"6": "f460b0348206", "5": "4621fec11365"}


def start_deployment(request: pytest.FixtureRequest, tmp_path: Path, backend: str,
                     version: str) -> Iterator[Deployment]:
    require_or_skip(hub_available())
    if version == "5":
        require_or_skip(None if HUB5_PYTHON.exists() else
                        f"no JupyterHub 5 venv at {HUB5_PYTHON}: run scripts/setup-test-peers.sh")
    db_url = None
    if backend == "postgresql":
        postgres: RealPostgres = request.getfixturevalue("postgres")
        db_url = postgres.create_database(f"hub_{tmp_path.name[-12:].lower()}".replace("-", "_"))
    with KubeSim() as kube, JsonReceiver() as http, SmtpReceiver() as smtp:
        hub = RealHub(tmp_path / "hub", db_url=db_url, kube_url=kube.url,
                      kube_token=kube.token)
        if version == "5":
            hub.python = str(HUB5_PYTHON)
        with hub:
            deployment = Deployment(tmp_path, hub, kube, http, smtp)
            engine = sa.create_engine(hub.db_url)
            with engine.connect() as conn:
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            engine.dispose()
            assert revision == ALEMBIC[version]
            yield deployment


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from start_deployment(request, tmp_path, request.param, "6")


@pytest.fixture(params=["sqlite", "postgresql"])
def deployment_hub5(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from start_deployment(request, tmp_path, request.param, "5")


def test_stale_session_on_jupyterhub_5(deployment_hub5: Deployment) -> None:
    """The same repair on JupyterHub 5.x (schema 4621fec11365), still what z2jh ships."""
    test_stale_session_is_stopped_through_the_hub_and_resolved(deployment_hub5)


def test_stale_session_is_stopped_through_the_hub_and_resolved(deployment: Deployment) -> None:
    hub = deployment.hub
    for user in ("alice", "bob"):
        hub.create_user(user)
        hub.start_server(user)
    assert deployment.run().checks[0].findings == []

    hub.kill_server_behind_hubs_back("alice")
    assert hub.user_model("alice")["servers"][""]["ready"] is True  # the hub still believes

    first = findings_of(deployment.run())
    assert first == {"stale-session:alice": ("stop-server", "unconfirmed")}
    second = findings_of(deployment.run())
    assert second == {"stale-session:alice": ("stop-server", "done")}
    assert deployment.hub_db_running()["alice"] is None  # the hub DB says stopped
    assert deployment.hub_db_running()["bob"] is not None
    third = deployment.run()
    assert third.checks[0].findings == []
    assert third.checks[0].resolved == ["sessions/main/stale-session/alice"]
    # The user can start again: the hub no longer refuses.
    hub.unfreeze("alice")
    hub.start_server("alice")

    titles = deployment.http.titles()
    assert any("[critical] stale-session alice" in t for t in titles)
    assert any("action stop-server done: alice" in t for t in titles)
    assert "[resolved] stale-session alice" in titles[-1]
    assert any("resolved" in s for s in deployment.smtp.subjects)
    [record] = deployment.engine.store.actions()
    assert (record.name, record.status) == ("stop-server", "done")
    assert record.before["hub_db"]["state"]["pod_name"] == "jupyter-alice"


def test_orphan_pod_missing_route_stale_route_and_named_server(deployment: Deployment) -> None:
    hub, kube = deployment.hub, deployment.kube
    for user in ("alice", "bob", "carol", "dave"):
        hub.create_user(user)
    hub.start_server("alice")
    hub.start_server("bob")
    hub.start_server("carol", "lab")
    # orphan-pod: a pod the hub has no record of (a stop whose pod delete failed).
    kube.put({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "jupyter-dave", "namespace": "jhub",
                           "labels": {"component": "singleuser-server"},
                           "annotations": {"hub.jupyter.org/username": "dave"}},
              "spec": {"containers": [{"name": "notebook", "image": "lab"}]},
              "status": {"phase": "Running"}})
    # missing-route: bob's route deleted from CHP directly.
    routes = hub.proxy_routes()
    assert "/user/bob" in routes
    status, _ = hub._request("DELETE", f"{hub.proxy_api_url}/api/routes/user/bob",
                             hub._proxy_auth())
    assert status == 204
    # stale-route: a hub route for a user who is not running.
    hub._request("POST", f"{hub.proxy_api_url}/api/routes/user/dave", hub._proxy_auth(),
                 {"target": "http://127.0.0.1:9", "user": "dave", "server_name": "",
                  "jupyterhub": True})
    # stale-session of a named server.
    hub.kill_server_behind_hubs_back("carol", "lab")

    first = findings_of(deployment.run())
    assert first == {
        "orphan-pod:dave": ("delete-pod", "unconfirmed"),
        "missing-route:bob": ("sync-routes", "unconfirmed"),
        "stale-route:dave": ("sync-routes", "unconfirmed"),
        "stale-session:carol/lab": ("stop-server", "unconfirmed"),
    }
    second = findings_of(deployment.run())
    assert {k: v[1] for k, v in second.items()} == {
        "orphan-pod:dave": "done", "missing-route:bob": "done", "stale-route:dave": "done",
        "stale-session:carol/lab": "done"}
    assert kube.get("Pod", "jupyter-dave", "jhub") is None
    routes = hub.proxy_routes()
    assert "/user/bob" in routes
    assert "/user/dave" not in routes
    assert deployment.hub_db_running()["carol/lab"] is None
    assert deployment.run().checks[0].findings == []
    # One route sync served both route findings.
    names = [r.name for r in deployment.engine.store.actions() if r.status == "done"]
    assert names.count("sync-routes") == 1


def test_cli_check_reports_json_and_exit_codes(deployment: Deployment) -> None:
    hub = deployment.hub
    hub.create_user("alice")
    hub.start_server("alice")
    hub.kill_server_behind_hubs_back("alice")

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "watchdogd", "check", "--config",
             str(deployment.config_path), "--json", *args],
            capture_output=True, text=True, timeout=120, cwd=deployment.workdir, check=False)

    dry = check("--dry-run", "--exit-code")
    assert dry.returncode == 1, dry.stderr
    report = json.loads(dry.stdout)
    [finding] = report["checks"][0]["findings"]
    assert (finding["kind"], finding["action"]["status"]) == ("stale-session", "unconfirmed")
    ok = check()
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["checks"][0]["findings"][0]["action"]["status"] == "done"
    assert report["checks"][0]["requests"] >= 5
    assert hub.service_token not in ok.stdout + ok.stderr
    assert hub.proxy_token not in ok.stdout + ok.stderr
