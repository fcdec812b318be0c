"""Proves the real-peer harness: JupyterHub 6 + CHP (+ PostgreSQL) with SimSpawner.

What a session looks like in the real hub, its database and CHP when a user's server
runs, when it is killed behind the hub's back (the frozen KubeSpawner watch cache), and
after a stop through the REST API with watchdogd's service token.

Skipped with a reason when configurable-http-proxy or PostgreSQL is not installed,
unless WATCHDOGD_REQUIRE_PEERS is set (then that is a failure). Install them with
``scripts/setup-test-peers.sh``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # `tests.peers` lives in the repo root, not in a package
    sys.path.insert(0, str(_ROOT))

from tests.peers.jupyterhub import (  # noqa: E402
    PAGINATION_ACCEPT,
    RealHub,
    hub_available,
)
from tests.peers.postgres import RealPostgres, postgres_available  # noqa: E402

pytestmark = pytest.mark.integration

JUPYTERHUB_6_ALEMBIC = "f460b0348206"
SIM_TOKEN = "sim-token"
NAMESPACE = "jhub"


def _require(reason: str | None) -> None:
    """Skip (or fail, with WATCHDOGD_REQUIRE_PEERS set) when a peer is missing."""
    if reason is None:
        return
    if os.environ.get("WATCHDOGD_REQUIRE_PEERS", "") not in ("", "0"):
        pytest.fail(f"WATCHDOGD_REQUIRE_PEERS is set but {reason}")
    pytest.skip(reason)


# --------------------------------------------------------------------------------------
# Kubernetes API: the project's simulator when it is there, else a tiny recording fake
# --------------------------------------------------------------------------------------


class TinyKube:
    """A minimal Kubernetes pod API: POST/GET/DELETE pods, recorded; Bearer auth."""

    def __init__(self, token: str = SIM_TOKEN) -> None:
        """Serve on a free port of 127.0.0.1 in a daemon thread."""
        self.token = token
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        kube = self
        one = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)(?:\?.*)?$")
        many = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:\?.*)?$")

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _status(self, code: int, reason: str) -> None:
                self._send(code, {"kind": "Status", "status": "Failure", "code": code,
                                  "reason": reason})

            def _read(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(n) or b"{}")
                return body

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {kube.token}":
                    self._status(401, "Unauthorized")
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                m = one.match(self.path)
                if m:
                    with kube.lock:
                        pod = kube.pods.get((m[1], m[2]))
                    if pod is None:
                        self._status(404, "NotFound")
                    else:
                        self._send(200, pod)
                    return
                m = many.match(self.path)
                if m:
                    with kube.lock:
                        items = [p for (ns, _), p in kube.pods.items() if ns == m[1]]
                    self._send(200, {"kind": "PodList", "items": items, "metadata": {}})
                    return
                self._status(404, "NotFound")

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                m = many.match(self.path)
                body = self._read()
                if not m:
                    self._status(404, "NotFound")
                    return
                key = (m[1], body["metadata"]["name"])
                with kube.lock:
                    kube.calls.append(("POST", f"{key[0]}/{key[1]}"))
                    if key in kube.pods:
                        self._status(409, "AlreadyExists")
                        return
                    body["metadata"]["uid"] = f"uid-{len(kube.calls)}"
                    kube.pods[key] = body
                self._send(201, body)

            def do_DELETE(self) -> None:
                if not self._authorized():
                    return
                m = one.match(self.path)
                self._read()
                if not m:
                    self._status(404, "NotFound")
                    return
                with kube.lock:
                    kube.calls.append(("DELETE", f"{m[1]}/{m[2]}"))
                    pod = kube.pods.pop((m[1], m[2]), None)
                if pod is None:
                    self._status(404, "NotFound")
                else:
                    self._send(200, pod)

        return Handler

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """Pods in a namespace."""
        with self.lock:
            return [p for (ns, _), p in self.pods.items() if ns == namespace]

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


class KubeAPI:
    """What the tests need of a Kubernetes API: ``url``, ``token``, ``pods(ns)``, ``close()``."""

    def __init__(self) -> None:
        """Use watchdogd.sim.kube.KubeSim when it works, else TinyKube (with a warning)."""
        self.token = SIM_TOKEN
        self.kind = "TinyKube"
        self._sim: Any = None
        self._tiny: TinyKube | None = None
        try:
            kube_sim: Any = importlib.import_module("watchdogd.sim.kube").KubeSim
        except (ImportError, AttributeError):
            kube_sim = None
        if kube_sim is not None:
            try:
                self._sim = self._start_sim(kube_sim)
            except Exception as exc:
                warnings.warn(
                    f"watchdogd.sim.kube.KubeSim did not start ({exc!r}); using TinyKube",
                    stacklevel=2,
                )
                self._sim = None
        if self._sim is not None:
            self.url: str = self._sim.url
            self.kind = "KubeSim"
        else:
            self._tiny = TinyKube(self.token)
            self.url = self._tiny.url

    @staticmethod
    def _start_sim(kube_sim: Any) -> Any:
        sim = kube_sim(token=SIM_TOKEN)
        started = sim.start()
        sim = started if started is not None else sim
        try:
            # a faithful API server needs the namespace to exist
            sim.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            sim.list("Pod", NAMESPACE)
        except Exception:
            sim.stop()
            raise
        return sim

    def pods(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """Pods in ``namespace`` as plain dicts."""
        if self._tiny is not None:
            return self._tiny.list_pods(namespace)
        items = self._sim.list("Pod", namespace)
        return [i if isinstance(i, dict) else dict(i) for i in items]

    def pod(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        """One pod by name, or None."""
        for p in self.pods(namespace):
            if p["metadata"]["name"] == name:
                return p
        return None

    def close(self) -> None:
        """Stop the API server."""
        if self._tiny is not None:
            self._tiny.close()
            return
        for meth in ("stop", "close", "shutdown"):
            fn = getattr(self._sim, meth, None)
            if callable(fn):
                fn()
                return


# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeAPI]:
    """A Kubernetes API for the spawner's pods."""
    api = KubeAPI()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def hub(tmp_path: Path, kube: KubeAPI) -> Iterator[RealHub]:
    """A running RealHub on SQLite."""
    _require(hub_available())
    with RealHub(tmp_path / "hub", kube_url=kube.url, kube_token=kube.token) as h:
        yield h


def wait_until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``check`` until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def db_rows(db_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query on the hub database, as dicts."""
    engine = sa.create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


SPAWNER_SQL = """
select u.name as user, s.name as server_name, s.server_id, s.state, s.started,
       s.last_activity, sv.port as port
from spawners s join users u on u.id = s.user_id
left join servers sv on sv.id = s.server_id
where u.name = :user and s.name = :name
"""


def spawner_row(hub: RealHub, user: str, name: str = "") -> dict[str, Any]:
    """The hub DB's spawners row (with its servers port) of one server."""
    rows = db_rows(hub.db_url, SPAWNER_SQL, user=user, name=name)
    assert len(rows) == 1, rows
    row = rows[0]
    row["state"] = json.loads(row["state"]) if row["state"] else {}
    return row


def alembic_version(db_url: str) -> str:
    """alembic_version.version_num of the hub DB."""
    rows = db_rows(db_url, "select version_num from alembic_version")
    return str(rows[0]["version_num"])


def assert_running_session(hub: RealHub, kube: KubeAPI, user: str, name: str = "") -> None:
    """DB, REST API, CHP and the pod all say the server runs."""
    pod_name = f"jupyter-{user}" + (f"--{name}" if name else "")
    row = spawner_row(hub, user, name)
    assert row["server_id"] is not None
    assert row["started"] is not None
    assert row["state"]["pod_name"] == pod_name
    assert row["state"]["namespace"] == NAMESPACE
    assert row["state"]["dns_name"] == f"{pod_name}.{NAMESPACE}.svc.cluster.local"
    assert row["state"]["kubespawner_version"]

    server = hub.user_model(user)["servers"][name]
    assert server["ready"] is True
    assert server["pending"] is None
    assert server["state"]["pod_name"] == pod_name

    route = f"/user/{user}" + (f"/{name}" if name else "")
    routes = hub.proxy_routes()
    assert route in routes, routes
    assert routes[route]["user"] == user
    assert routes[route]["server_name"] == name
    assert routes[route]["jupyterhub"] is True
    assert routes[route]["target"] == f"http://127.0.0.1:{row['port']}"

    pod = kube.pod(pod_name)
    assert pod is not None, [p["metadata"]["name"] for p in kube.pods()]
    labels = pod["metadata"]["labels"]
    assert labels["component"] == "singleuser-server"
    assert labels["app"] == "jupyterhub"
    assert labels["hub.jupyter.org/username"] == user
    assert labels["hub.jupyter.org/servername"] == name
    annotations = pod["metadata"]["annotations"]
    assert annotations["hub.jupyter.org/username"] == user
    if name:
        assert annotations["hub.jupyter.org/servername"] == name
    else:
        assert "hub.jupyter.org/servername" not in annotations
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "127.0.0.1"


def assert_session_cleared(hub: RealHub, kube: KubeAPI, user: str, name: str = "") -> None:
    """The hub stopped the server everywhere (KubeSpawner's state keys stay in the DB)."""
    row = spawner_row(hub, user, name)
    assert row["server_id"] is None
    assert row["started"] is None
    assert row["port"] is None
    assert row["state"]["pod_name"] == f"jupyter-{user}" + (f"--{name}" if name else "")
    assert "pid" not in row["state"]
    assert name not in hub.user_model(user)["servers"]
    route = f"/user/{user}" + (f"/{name}" if name else "")
    assert route not in hub.proxy_routes()


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


def test_session_lifecycle_on_sqlite(hub: RealHub, kube: KubeAPI) -> None:
    """Start, kill behind the hub's back, stop through the API; a named server too."""
    assert hub.db_url.startswith("sqlite:///")
    assert alembic_version(hub.db_url) == JUPYTERHUB_6_ALEMBIC
    status, body = hub.api("GET", "/", token=hub.service_token)
    assert status == 200
    assert body["version"].startswith("6.")

    hub.create_user("alice")
    hub.start_server("alice")
    assert_running_session(hub, kube, "alice")
    pid = hub.server_pids()["alice"]
    assert pid > 0

    # the service token sees the server state (admin:server_state)
    status, users = hub.api(
        "GET", "/users?state=ready", token=hub.service_token,
        headers={"Accept": PAGINATION_ACCEPT},
    )
    assert status == 200
    assert set(users) == {"items", "_pagination"}
    assert [u["name"] for u in users["items"]] == ["alice"]
    assert users["items"][0]["servers"][""]["state"]["pod_name"] == "jupyter-alice"

    # the frozen watch cache: the process and the pod are gone, the hub believes in them
    hub.kill_server_behind_hubs_back("alice")
    assert kube.pod("jupyter-alice") is None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert spawner_row(hub, "alice")["server_id"] is not None
    server = hub.user_model("alice")["servers"][""]
    assert server["ready"] is True
    assert "/user/alice" in hub.proxy_routes()

    # watchdogd's remediation: DELETE /users/{u}/server with the service token
    status, body = hub.api("DELETE", "/users/alice/server", token=hub.service_token)
    assert status in (202, 204), body
    wait_until("alice's server gone", lambda: "" not in hub.user_model("alice")["servers"])
    assert_session_cleared(hub, kube, "alice")
    stopped = hub.user_model("alice", include_stopped_servers=True)["servers"][""]
    assert stopped["stopped"] is True
    assert stopped["ready"] is False

    # a named server
    hub.start_server("alice", "lab")
    assert_running_session(hub, kube, "alice", "lab")
    assert "alice/lab" in hub.server_pids()
    hub.stop_server("alice", "lab")
    assert_session_cleared(hub, kube, "alice", "lab")
    assert kube.pod("jupyter-alice--lab") is None
    assert hub.server_pids() == {}


def test_hub_restart_clears_a_dead_server_even_when_poll_is_frozen(
    hub: RealHub, kube: KubeAPI
) -> None:
    """At start the hub probes every server its poll() calls running; dead ones stop."""
    hub.create_user("bob")
    hub.start_server("bob")
    hub.kill_server_behind_hubs_back("bob")
    assert hub.user_model("bob")["servers"][""]["ready"] is True

    hub.restart_hub()
    server = hub.user_model("bob")["servers"].get("")
    # while the hub probes the dead server's URL (Spawner.http_timeout) it says "check"
    assert server is None or server["pending"] in ("check", "stop"), server
    wait_until(
        "bob's session cleared",
        # user.stop() commits server_id = NULL first and started = NULL just after
        lambda: (row := spawner_row(hub, "bob"))["server_id"] is None and row["started"] is None,
        timeout=40,
    )
    assert_session_cleared(hub, kube, "bob")
    assert hub.server_pids() == {}


def test_hub_on_postgres(tmp_path: Path, kube: KubeAPI) -> None:
    """The same hub on a real PostgreSQL database."""
    _require(hub_available())
    _require(postgres_available())
    with RealPostgres() as pg:
        db_url = pg.create_database("jupyterhub")
        with RealHub(
            tmp_path / "hub", db_url=db_url, kube_url=kube.url, kube_token=kube.token
        ) as hub:
            assert hub.db_url == db_url
            assert alembic_version(db_url) == JUPYTERHUB_6_ALEMBIC
            hub.create_user("carol")
            hub.start_server("carol")
            assert_running_session(hub, kube, "carol")
            hub.kill_server_behind_hubs_back("carol")
            assert spawner_row(hub, "carol")["server_id"] is not None
            status, _ = hub.api("DELETE", "/users/carol/server", token=hub.service_token)
            assert status in (202, 204)
            wait_until("carol's server gone",
                       lambda: "" not in hub.user_model("carol")["servers"])
            assert_session_cleared(hub, kube, "carol")
