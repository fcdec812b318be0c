"""API-only sessions and the least token, against real JupyterHub 6.1 and 5.5.

One hub start per version. Its ``watchdogd`` service and role are rendered the way the
z2jh chart renders ``hub.services.watchdogd`` and ``hub.loadRoles.watchdogd`` (its
``jupyterhub_config.py`` appends each service with the ``api_token`` from the chart's
Secret to ``c.JupyterHub.services`` and each role to ``c.JupyterHub.load_roles``), with
exactly the scopes the README lists; beside it, one service per scope whose role lacks
just that scope. On one set of planted problems:

- DB mode and API mode (no ``db_url``) report the same findings and plan the same actions;
- with each scope removed in turn, the pass is an error naming that scope and acts on
  nothing (the hub, the proxy and the pods are as before);
- with the least token and remediation on, a stop and a route sync happen.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.integration.conftest import require_or_skip
from tests.peers.jupyterhub import RealHub, hub_available
from watchdogd.app import build, load_config
from watchdogd.config import HubConfig
from watchdogd.engine import Engine
from watchdogd.model import SourceError
from watchdogd.report import PassReport
from watchdogd.sim.kube import KubeSim
from watchdogd.sources.hubapi import HubApiSource

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HUB5_PYTHON = REPO / ".cache" / "hub5-venv" / "bin" / "python"
#: README, "Running it against a real hub": the same on 5.5 and 6.1 (both know
#: delete:servers; 5.x's "servers" holds it too, but grants starting as well)
LEAST = ["list:users", "read:servers", "admin:server_state", "delete:servers", "proxy"]


def without(scope: str) -> str:
    return "watchdogd-without-" + scope.replace(":", "-")


def z2jh_extra_config(tokens: dict[str, str]) -> str:
    """What z2jh's jupyterhub_config.py does with these chart values (hub.services,
    hub.loadRoles) and its Secret, replacing RealHub's own ``watchdogd`` service."""
    values: dict[str, Any] = {"hub": {
        "services": {name: {} for name in tokens},
        "loadRoles": {"watchdogd": {"services": ["watchdogd"], "scopes": LEAST}},
    }}
    for scope in LEAST:
        values["hub"]["loadRoles"][without(scope)] = {
            "services": [without(scope)], "scopes": [s for s in LEAST if s != scope]}
    secret = {f"hub.services.{name}.apiToken": token for name, token in tokens.items()}
    return f"""
Z2JH_VALUES = {json.dumps(values)}
Z2JH_SECRET = {json.dumps(secret)}
c.JupyterHub.services = [s for s in c.JupyterHub.services if s["name"] != "watchdogd"]
c.JupyterHub.load_roles = [r for r in c.JupyterHub.load_roles if r["name"] != "watchdogd"]
for key, service in Z2JH_VALUES["hub"]["services"].items():
    service.setdefault("name", key)
    service.pop("apiToken", None)
    service["api_token"] = Z2JH_SECRET[f"hub.services.{{key}}.apiToken"]
    c.JupyterHub.services.append(service)
for key, role in Z2JH_VALUES["hub"]["loadRoles"].items():
    role.setdefault("name", key)
    c.JupyterHub.load_roles.append(role)
"""


class Setup:
    """The real hub, its simulated cluster, and watchdogd configurations for it."""

    def __init__(self, workdir: Path, hub: RealHub, kube: KubeSim,
                 tokens: dict[str, str]) -> None:
        self.workdir, self.hub, self.kube, self.tokens = workdir, hub, kube, tokens
        self.kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig")
        self.engines: list[Any] = []

    def engine(self, name: str, *, service: str = "watchdogd", db: bool = False,
               dry_run: bool = True) -> Engine:
        secrets_dir = self.workdir / name
        secrets_dir.mkdir()
        (secrets_dir / "api_token").write_text(self.tokens[service] + "\n")
        (secrets_dir / "db_url").write_text(self.hub.db_url + "\n")
        (secrets_dir / "proxy_token").write_text(self.hub.proxy_token + "\n")
        (secrets_dir / "state_url").write_text(f"sqlite:///{secrets_dir / 'state.db'}\n")
        db_line = f'db_url_file = "{secrets_dir / "db_url"}"' if db else ""
        path = secrets_dir / "watchdogd.toml"
        path.write_text(f"""
[state]
url_file = "{secrets_dir / 'state_url'}"
[remediation]
dry_run = false
confirm_after = 1
min_age = 0
enabled = ["stop-server", "sync-routes"]
[clusters.sim]
kubeconfig = "{self.kubeconfig}"
timeout = "5s"
[hubs.main]
cluster = "sim"
namespace = "jhub"
api_url = "{self.hub.api_url}"
api_token_file = "{secrets_dir / 'api_token'}"
{db_line}
proxy_api_url = "{self.hub.proxy_api_url}"
proxy_token_file = "{secrets_dir / 'proxy_token'}"
timeout = "10s"
""")
        app = build(load_config(path), dry_run=dry_run)
        self.engines.append(app)
        return app.engine

    def world(self) -> Any:
        """What the hub, the proxy and the cluster hold now (the oracle of "did nothing")."""
        engine = sa.create_engine(self.hub.db_url)
        with engine.connect() as conn:
            rows = sorted(conn.execute(sa.text(
                "SELECT users.name, spawners.name, spawners.server_id FROM spawners "
                "JOIN users ON users.id = spawners.user_id")).all())
        engine.dispose()
        routes = {k: v.get("target") for k, v in self.hub.proxy_routes().items()}
        pods = sorted((p["metadata"]["name"], p["status"].get("phase"))
                      for p in self.kube.list("Pod", "jhub"))
        return rows, routes, pods


@pytest.fixture(params=["6", "5"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    require_or_skip(hub_available())
    if request.param == "5":
        require_or_skip(None if HUB5_PYTHON.exists() else
                        f"no JupyterHub 5 venv at {HUB5_PYTHON}: run scripts/setup-test-peers.sh")
    tokens = {name: secrets.token_hex(32)
              for name in ["watchdogd", *(without(s) for s in LEAST)]}
    with KubeSim() as kube:
        hub = RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token,
                      extra_config=z2jh_extra_config(tokens))
        if request.param == "5":
            hub.python = str(HUB5_PYTHON)
        with hub:
            status, body = hub.api("GET", "/")
            assert status == 200 and body["version"].startswith(request.param + "."), body
            kube.put({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "hub-5f7c9", "namespace": "jhub",
                                   "labels": {"component": "hub"}},
                      "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                      "status": {"phase": "Running"}})
            result = Setup(tmp_path, hub, kube, tokens)
            try:
                yield result
            finally:
                for app in result.engines:
                    app.close()


def plant(setup: Setup) -> None:
    """stale-session (carol), dead-session (erin), orphan-pod (dave), missing-route (bob),
    stale-route (frank), route-mismatch (gina), and alice healthy."""
    hub, kube = setup.hub, setup.kube
    for user in ("alice", "bob", "carol", "dave", "erin", "frank", "gina"):
        hub.create_user(user)
    for user in ("alice", "bob", "carol", "erin", "gina"):
        hub.start_server(user)
    hub.kill_server_behind_hubs_back("carol")
    pod = kube.get("Pod", "jupyter-erin", "jhub")
    assert pod is not None
    pod["status"] = {**pod["status"], "phase": "Failed", "reason": "Evicted"}
    kube.put(pod)
    kube.put({"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "jupyter-dave", "namespace": "jhub",
                           "labels": {"component": "singleuser-server"},
                           "annotations": {"hub.jupyter.org/username": "dave"}},
              "spec": {"containers": [{"name": "notebook", "image": "lab"}]},
              "status": {"phase": "Running", "podIP": "127.0.0.1"}})
    auth = hub._proxy_auth()
    status, _ = hub._request("DELETE", f"{hub.proxy_api_url}/api/routes/user/bob", auth)
    assert status == 204
    for user, target in (("frank", "http://127.0.0.1:9"), ("gina", "http://10.9.9.9:8888")):
        hub._request("POST", f"{hub.proxy_api_url}/api/routes/user/{user}", auth,
                     {"target": target, "user": user, "server_name": "", "jupyterhub": True})


PLANTED = {("stale-session", "carol", "stop-server"), ("dead-session", "erin", "stop-server"),
           ("orphan-pod", "dave", "delete-pod"), ("missing-route", "bob", "sync-routes"),
           ("stale-route", "frank", "sync-routes"), ("route-mismatch", "gina", "sync-routes")}


def findings(report: PassReport) -> set[tuple[Any, ...]]:
    [check] = report.checks
    assert check.status == "findings", check.error
    return {(f.tracked.finding.kind, f.tracked.finding.subject, f.tracked.finding.severity,
             f.tracked.finding.action.name if f.tracked.finding.action else None,
             f.tracked.finding.action.call if f.tracked.finding.action else None)
            for f in check.findings}


def test_api_mode_matches_db_mode_and_the_least_token_is_proven(setup: Setup) -> None:
    plant(setup)
    by_db = findings(setup.engine("db", db=True).run_pass(only=["sessions"]))
    by_api = findings(setup.engine("api").run_pass(only=["sessions"]))
    assert {(kind, subject, action) for kind, subject, _, action, _ in by_db} == PLANTED
    assert by_api == by_db

    before = setup.world()
    for scope in LEAST:
        engine = setup.engine(without(scope), service=without(scope), dry_run=False)
        [check] = engine.run_pass(only=["sessions"]).checks
        assert check.status == "error", scope
        assert check.error is not None and f"lacks the scope {scope} " in check.error, (
            scope, check.error)
        assert not check.findings
        assert setup.world() == before, scope

    # What the hub itself does without each read scope, below the token check: a 403, or
    # keys left out of the models; the reads name the scope either way.
    for scope, answer in (("list:users", "403 Forbidden"), ("read:servers", "no servers"),
                          ("admin:server_state", "no spawner state")):
        source = HubApiSource("main", HubConfig(
            cluster="sim", api_url=setup.hub.api_url,
            api_token=SecretStr(setup.tokens[without(scope)])))
        with pytest.raises(SourceError, match=f"{answer}.*{scope}") as info:
            source.sessions()
        assert setup.tokens[without(scope)] not in str(info.value)
        source.close()

    [check] = setup.engine("least", dry_run=False).run_pass(only=["sessions"]).checks
    assert check.status == "findings", check.error
    done = {(f.tracked.finding.kind, f.tracked.finding.subject): str(f.action_status)
            for f in check.findings}
    assert done[("stale-session", "carol")] == "done"
    assert done[("missing-route", "bob")] == "done"
    assert done[("orphan-pod", "dave")] != "done"  # delete-pod is not enabled
    assert hub_running(setup, "carol") is False
    assert "/user/bob" in setup.hub.proxy_routes()


def hub_running(setup: Setup, user: str) -> bool:
    return setup.hub.server_model(user) is not None
