"""HubSim against the JupyterHub 6.1 REST API contract, and its database against the hubdb source.

The shapes asserted here were read off a running JupyterHub 6.1.1 (tests/peers/jupyterhub.py):
the paginated users list, the server model, the 403 messages, stop answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from watchdogd.config import HubConfig
from watchdogd.model import SourceError
from watchdogd.sim.chp import ChpSim
from watchdogd.sim.hub import (
    ALEMBIC_5X,
    ALEMBIC_6X,
    HubSim,
    expand_scopes,
)
from watchdogd.sim.kube import KubeSim
from watchdogd.slugs import escape_slug, safe_slug
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.hubdb import HubDbSource

PAGINATION = {"Accept": "application/jupyterhub-pagination+json"}


@pytest.fixture
def kube() -> Iterator[KubeSim]:
    with KubeSim() as sim:
        yield sim


@pytest.fixture
def chp() -> Iterator[ChpSim]:
    with ChpSim() as sim:
        yield sim


@pytest.fixture
def hub(tmp_path: Path, kube: KubeSim, chp: ChpSim) -> Iterator[HubSim]:
    sim = HubSim(tmp_path / "hub", kube, chp).start()
    try:
        yield sim
    finally:
        sim.stop()


def api(hub: HubSim, method: str, path: str, *, token: str | None = None,
        headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
    h = {"Authorization": f"token {token or hub.token}", **(headers or {})}
    return requests.request(method, hub.api_url + path, headers=h, timeout=5, **kwargs)


def hub_config(hub: HubSim, chp: ChpSim | None = None) -> HubConfig:
    return HubConfig(cluster="sim", api_url=hub.api_url, api_token=hub.token,  # type: ignore[arg-type]
                     db_url=hub.db_url, proxy_api_url=chp.url if chp else None,  # type: ignore[arg-type]
                     proxy_token=chp.token if chp else None)  # type: ignore[arg-type]


# -- the users list ----------------------------------------------------------------------------


def test_pagination_shape_total_and_next(hub: HubSim) -> None:
    for name in ("u1", "u2", "u3", "u4", "u5"):
        hub.start_server(name)
    hub.add_user("idle")
    first = api(hub, "GET", "/users?state=active&limit=2", headers=PAGINATION).json()
    assert set(first) == {"items", "_pagination"}
    assert [u["name"] for u in first["items"]] == ["u1", "u2"]
    page = first["_pagination"]
    assert page["offset"] == 0
    assert page["limit"] == 2
    assert page["total"] == 5
    assert page["next"]["offset"] == 2
    assert page["next"]["limit"] == 2
    assert page["next"]["url"] == f"{hub.api_url}/users?state=active&limit=2&offset=2"
    last = api(hub, "GET", "/users?state=active&limit=2&offset=4", headers=PAGINATION).json()
    assert [u["name"] for u in last["items"]] == ["u5"]
    assert last["_pagination"] == {"offset": 4, "limit": 2, "total": 5, "next": None}
    # without the header: a plain list of everything (up to 200)
    plain = api(hub, "GET", "/users?state=active").json()
    assert [u["name"] for u in plain] == ["u1", "u2", "u3", "u4", "u5"]
    inactive = api(hub, "GET", "/users?state=inactive", headers=PAGINATION).json()
    assert [u["name"] for u in inactive["items"]] == ["idle"]
    assert inactive["_pagination"]["limit"] == 50
    assert inactive["items"][0]["servers"] == {}


def test_limits_and_bad_arguments(hub: HubSim) -> None:
    hub.add_user("a")
    capped = api(hub, "GET", "/users?limit=5000", headers=PAGINATION).json()
    assert capped["_pagination"]["limit"] == 200
    resp = api(hub, "GET", "/users?limit=many")
    assert resp.status_code == 400
    assert resp.json()["message"] == "Invalid argument type, offset and limit must be integers"
    resp = api(hub, "GET", "/users?state=sleeping")
    assert resp.status_code == 400
    assert resp.json() == {"status": 400, "message": "Unrecognized state filter: 'sleeping'"}


def test_ready_filter_drops_pending_but_total_counts_active(hub: HubSim) -> None:
    hub.start_server("ready")
    hub.start_server("spawning", pending="spawn")
    page = api(hub, "GET", "/users?state=ready", headers=PAGINATION).json()
    assert [u["name"] for u in page["items"]] == ["ready"]
    assert page["_pagination"]["total"] == 2  # as the real hub: the count of active users


def test_user_and_server_model(hub: HubSim) -> None:
    hub.start_server("bob", "lab", ip="10.0.0.9")
    reader = hub.add_token("reader", ["read:users", "read:servers", "admin:server_state"])
    model = api(hub, "GET", "/users/bob", token=reader).json()
    assert model["name"] == "bob"
    assert model["server"] is None  # no default server running
    server = model["servers"]["lab"]
    assert server["name"] == "lab"
    assert server["ready"] is True
    assert server["pending"] is None
    assert server["stopped"] is False
    assert server["url"] == "/user/bob/lab/"
    assert server["progress_url"] == "/hub/api/users/bob/servers/lab/progress"
    assert server["started"].endswith("Z")
    assert server["state"] == {"kubespawner_version": "7.0.0", "pod_name": "jupyter-bob--lab",
                               "namespace": "jhub",
                               "dns_name": "jupyter-bob--lab.jhub.svc.cluster.local"}
    assert api(hub, "GET", "/users/nobody").json() == {"status": 404, "message": None}


def test_scopes_filter_the_model(hub: HubSim) -> None:
    hub.start_server("alice")
    no_state = hub.add_token("no-state", ["list:users", "read:users", "read:servers"])
    server = api(hub, "GET", "/users?state=active", token=no_state).json()[0]["servers"][""]
    assert "state" not in server
    names_only = hub.add_token("names", ["list:users"])
    user = api(hub, "GET", "/users", token=names_only).json()[0]
    assert set(user) == {"kind", "name", "admin", "user_info"}


def test_auth_unknown_token_and_missing_scope(hub: HubSim) -> None:
    for headers in ({"Authorization": "token nonsense"}, {}):
        resp = requests.get(hub.api_url + "/users", headers=headers, timeout=5)
        assert resp.status_code == 403
        assert resp.json() == {"status": 403, "message": "Missing or invalid credentials."}
    hub.start_server("alice")
    reader = hub.add_token("reader", ["list:users", "read:users"])
    resp = api(hub, "DELETE", "/users/alice/server", token=reader)
    assert resp.status_code == 403
    assert resp.json() == {"status": 403, "message": "Action is not authorized with current "
                                                     "scopes; requires any of [delete:servers]"}
    resp = api(hub, "POST", "/proxy", token=reader)
    assert resp.json()["message"].endswith("requires any of [proxy]")
    assert hub.is_running("alice")
    assert requests.get(hub.api_url, timeout=5).json() == {"version": "6.1.1"}


def test_scope_expansion() -> None:
    assert {"read:servers", "start:servers", "delete:servers"} <= expand_scopes(["servers"])
    assert "admin:server_state" in expand_scopes(["admin:servers"])
    assert "list:users" in expand_scopes(["admin:users"])


# -- stopping ----------------------------------------------------------------------------------


def test_stop_clears_db_pod_and_route(hub: HubSim, kube: KubeSim, chp: ChpSim) -> None:
    info = hub.start_server("alice")
    assert kube.get("Pod", "jupyter-alice", "jhub") is not None
    assert chp.route("/user/alice") == {"user": "alice", "server_name": "", "jupyterhub": True,
                                        "target": info.target,
                                        "last_activity": chp.routes["/user/alice"]["last_activity"]}
    resp = api(hub, "DELETE", "/users/alice/server")
    assert resp.status_code == 204
    spawner = hub.spawner("alice")
    assert spawner is not None
    assert spawner["server_id"] is None
    assert spawner["started"] is None
    assert spawner["state"]["pod_name"] == "jupyter-alice"  # KubeSpawner's state survives
    db = sqlite3.connect(hub.db_path)
    assert db.execute("SELECT count(*) FROM servers").fetchone()[0] == 0
    db.close()
    assert kube.get("Pod", "jupyter-alice", "jhub") is None
    assert chp.route("/user/alice") is None
    # stopping what is stopped is fine, as on the real hub
    assert api(hub, "DELETE", "/users/alice/server").status_code == 204
    resp = api(hub, "DELETE", "/users/alice/servers/nope")
    assert resp.status_code == 404
    assert resp.json()["message"] == "alice has no server named 'nope'"
    assert api(hub, "DELETE", "/users/nobody/server").status_code == 404


def test_stop_of_a_stale_session_tolerates_the_missing_pod(hub: HubSim, kube: KubeSim) -> None:
    hub.start_server("alice")
    kube.delete("Pod", "jupyter-alice", "jhub")
    assert api(hub, "DELETE", "/users/alice/server").status_code == 204
    assert not hub.is_running("alice")


def test_slow_stop_answers_202_and_stays_pending(hub: HubSim, kube: KubeSim, chp: ChpSim) -> None:
    hub.start_server("alice")
    hub.hang_stop("alice")
    assert api(hub, "DELETE", "/users/alice/server").status_code == 202
    server = api(hub, "GET", "/users/alice").json()["servers"][""]
    assert server["pending"] == "stop"
    assert server["ready"] is False
    assert hub.is_running("alice")  # the DB still says running
    assert chp.route("/user/alice") is None  # the hub removes the route first
    assert kube.get("Pod", "jupyter-alice", "jhub") is not None
    # asking again while it is stopping: 202 again (JupyterHub 6.1 users.py)
    assert api(hub, "DELETE", "/users/alice/server").status_code == 202
    # starting it is refused with the real message
    resp = api(hub, "POST", "/users/alice/server", token=hub.admin_token)
    assert resp.status_code == 400
    assert resp.json()["message"] == "alice is pending stop"
    assert hub.finish_stop("alice")
    assert not hub.is_running("alice")
    assert kube.get("Pod", "jupyter-alice", "jhub") is None


def test_pending_spawn_is_interrupted_by_a_stop(hub: HubSim, kube: KubeSim) -> None:
    hub.start_server("bob", pending="spawn")
    server = api(hub, "GET", "/users/bob").json()["servers"][""]
    assert (server["pending"], server["ready"]) == ("spawn", False)
    assert kube.get("Pod", "jupyter-bob", "jhub")["status"]["phase"] == "Pending"  # type: ignore[index]
    assert api(hub, "POST", "/users/bob/server", token=hub.admin_token).status_code == 202
    assert api(hub, "DELETE", "/users/bob/server").status_code == 204
    assert not hub.is_running("bob")
    assert hub.pending("bob") is None


def test_start_answers(hub: HubSim, chp: ChpSim) -> None:
    hub.add_user("carol")
    assert api(hub, "POST", "/users/carol/server", token=hub.admin_token).status_code == 201
    assert hub.is_running("carol")
    assert chp.route("/user/carol") is not None
    resp = api(hub, "POST", "/users/carol/server", token=hub.admin_token)
    assert resp.json() == {"status": 400, "message": "carol is already running"}
    resp = api(hub, "POST", "/users/dave", token=hub.admin_token)
    assert resp.status_code == 201
    assert api(hub, "POST", "/users/dave", token=hub.admin_token).status_code == 409


# -- routes ------------------------------------------------------------------------------------


def test_proxy_post_is_check_routes(hub: HubSim, chp: ChpSim) -> None:
    alice = hub.start_server("alice")
    bob = hub.start_server("bob")
    hub.start_server("sam", pending="spawn")
    chp.delete_route("/user/alice")  # missing
    chp.add_route("/user/bob", "http://10.9.9.9:8888", user="bob", server_name="",
                  jupyterhub=True)  # wrong target
    chp.add_route("/user/gone", "http://10.0.0.99:8888", user="gone", server_name="",
                  jupyterhub=True)  # stale
    chp.add_route("/user/sam", "http://10.0.0.98:8888", user="sam", server_name="",
                  jupyterhub=True)  # pending: left alone
    chp.add_route("/grafana", "http://grafana:3000")  # not the hub's: left alone
    chp.delete_route("/")
    resp = api(hub, "POST", "/proxy")
    assert (resp.status_code, resp.content) == (200, b"")
    routes = chp.routes
    assert routes["/user/alice"]["target"] == alice.target
    assert routes["/user/bob"]["target"] == bob.target
    assert "/user/gone" not in routes
    assert routes["/user/sam"]["target"] == "http://10.0.0.98:8888"
    assert routes["/grafana"]["target"] == "http://grafana:3000"
    assert routes["/"] == {"hub": True, "jupyterhub": True, "target": hub.url,
                           "last_activity": routes["/"]["last_activity"]}
    listed = api(hub, "GET", "/proxy").json()
    assert "/grafana" not in listed
    assert "/user/alice" in listed


# -- naming and layouts ------------------------------------------------------------------------


def test_kubespawner_pod_shape(hub: HubSim, kube: KubeSim) -> None:
    hub.start_server("bob", "lab", ip="10.0.0.7")
    pod = kube.get("Pod", "jupyter-bob--lab", "jhub")
    assert pod is not None
    meta = pod["metadata"]
    assert meta["labels"]["component"] == "singleuser-server"
    assert meta["labels"]["hub.jupyter.org/username"] == "bob"
    assert meta["labels"]["hub.jupyter.org/servername"] == "lab"
    assert meta["annotations"]["hub.jupyter.org/username"] == "bob"
    assert meta["annotations"]["hub.jupyter.org/servername"] == "lab"
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "10.0.0.7"
    hub_pods = [p for p in kube.list("Pod", "jhub")
                if p["metadata"]["labels"].get("component") == "hub"]
    assert [p["metadata"]["name"] for p in hub_pods] == [hub.hub_pod]


def test_slug_schemes() -> None:
    assert safe_slug("alice") == "alice"
    assert safe_slug("Alice_B").startswith("alice-b---")
    assert len(safe_slug("Alice_B").rsplit("---", 1)[1]) == 8
    assert escape_slug("_alice") == "-5falice"
    assert escape_slug("a-b") == "a-2db"


def test_escape_scheme_names(tmp_path: Path, kube: KubeSim) -> None:
    hub = HubSim(tmp_path / "old", kube, None, kubespawner_version="6.2.0").start()
    try:
        info = hub.start_server("a.b")
        assert info.pod_name == "jupyter-a-2eb"
        pod = kube.get("Pod", "jupyter-a-2eb", "jhub")
        assert pod["metadata"]["annotations"]["hub.jupyter.org/username"] == "a.b"  # type: ignore[index]
    finally:
        hub.stop()


def test_nublado_layout(hub: HubSim, kube: KubeSim) -> None:
    info = hub.start_server("rubin", layout="nublado")
    assert (info.namespace, info.pod_name) == ("nublado-rubin", "rubin-nb")
    assert kube.get("Pod", "rubin-nb", "nublado-rubin") is not None
    assert api(hub, "DELETE", "/users/rubin/server").status_code == 204
    assert kube.get("Pod", "rubin-nb", "nublado-rubin") is None
    with pytest.raises(ValueError, match="one lab per user"):
        hub.start_server("rubin", "second", layout="nublado")


# -- restarts ----------------------------------------------------------------------------------


def test_deleting_the_hub_pod_restarts_the_hub(hub: HubSim, kube: KubeSim, chp: ChpSim) -> None:
    hub.start_server("stuck")
    hub.set_pending("stuck", "", "stop")
    hub.start_server("stale")
    kube.delete("Pod", "jupyter-stale", "jhub")
    hub.start_server("fine")
    old = hub.hub_pod
    assert old is not None
    kube.delete("Pod", old, "jhub")
    hub.check_restart()  # the watcher thread would do it within 50 ms
    assert hub.restarts == 1
    assert hub.hub_pod != old
    assert kube.get("Pod", hub.hub_pod, "jhub") is not None  # type: ignore[arg-type]
    assert not hub.is_running("stuck")
    assert hub.pending("stuck") is None
    assert not hub.is_running("stale")  # the fresh hub polled it and found no pod
    assert hub.is_running("fine")
    assert chp.route("/user/fine") is not None


# -- watchdogd's sources read the simulator ----------------------------------------------------


def test_hubdb_source_reads_the_real_shape(hub: HubSim) -> None:
    info = hub.start_server("alice", ip="10.0.0.5")
    hub.add_user("bob")
    source = HubDbSource("main", hub_config(hub))
    try:
        data = source.sessions()
    finally:
        source.close()
    assert data["schema"] == ALEMBIC_6X
    assert data["schema_known"] is True
    assert data["users"] == ["alice", "bob"]
    [row] = data["running"]
    assert row["user"] == "alice"
    assert row["server_name"] == ""
    assert row["url"] == info.target == "http://10.0.0.5:8888"
    assert row["base_url"] == "/user/alice/"
    assert row["state"]["pod_name"] == "jupyter-alice"
    assert row["started"] is not None


def test_hubapi_source_against_the_simulator(hub: HubSim) -> None:
    hub.start_server("alice")
    hub.start_server("bob", "lab")
    hub.start_server("carol", pending="spawn")
    hub.add_user("dave")
    source = HubApiSource("main", hub_config(hub))
    try:
        servers = {(s["user"], s["server_name"]): s for s in source.active_servers()}
        assert set(servers) == {("alice", ""), ("bob", "lab"), ("carol", "")}
        assert servers[("carol", "")]["pending"] == "spawn"
        assert servers[("alice", "")]["state"]["pod_name"] == "jupyter-alice"
        assert source.stop_server("alice") == "stopped (204)"
        hub.hang_stop("bob", "lab")
        assert source.stop_server("bob", "lab").startswith("stop accepted (202)")
        assert source.sync_routes().startswith("routes synced")
    finally:
        source.close()
    assert not hub.is_running("alice")
    assert hub.pending("bob", "lab") == "stop"


def test_hubapi_source_names_a_wrong_token(hub: HubSim) -> None:
    config = hub_config(hub).model_copy(update={"api_token": SecretStr("rotated-away")})
    source = HubApiSource("main", config)
    try:
        with pytest.raises(SourceError) as caught:
            source.active_servers()
    finally:
        source.close()
    message = str(caught.value)
    assert "is wrong or expired" in message
    assert "rotated-away" not in message


def test_services_list_filtered_by_scope(hub: HubSim) -> None:
    """``GET /services`` as JupyterHub 6.1.1 and 5.5.4 answer it (read off both): a managed
    service's command and pid with read:services, names only with list:services alone."""
    command = ["python3", "-m", "jupyterhub_idle_culler", "--timeout=3600"]
    hub.add_service("jupyterhub-idle-culler", command=command, pid=321)
    hub.add_service("idle-culler")
    full = api(hub, "GET", "/services").json()
    assert full["jupyterhub-idle-culler"] == {
        "kind": "service", "name": "jupyterhub-idle-culler", "admin": False, "url": "",
        "prefix": "", "command": command, "pid": 321, "info": {}, "display": True}
    assert (full["idle-culler"]["command"], full["idle-culler"]["pid"]) == ([], 0)
    names = hub.add_token("names-only", ["list:services"])
    assert api(hub, "GET", "/services", token=names).json() == {
        name: {"kind": "service", "name": name, "admin": False}
        for name in ("jupyterhub-idle-culler", "idle-culler")}
    none = hub.add_token("no-services", ["list:users"])
    resp = api(hub, "GET", "/services", token=none)
    assert resp.status_code == 403
    assert "list:services" in resp.json()["message"]


def test_hubapi_source_reads_services(hub: HubSim) -> None:
    hub.add_service("jupyterhub-idle-culler", command=["python3", "-m", "jupyterhub_idle_culler"])
    hub.add_service("idle-culler")
    source = HubApiSource("main", hub_config(hub))
    try:
        services = source.services()
    finally:
        source.close()
    assert services["jupyterhub-idle-culler"]["command"] == [
        "python3", "-m", "jupyterhub_idle_culler"]
    assert services["idle-culler"]["command"] == []
    hidden = hub_config(hub).model_copy(update={
        "api_token": SecretStr(hub.add_token("names-only", ["list:services"]))})
    source = HubApiSource("main", hidden)
    try:
        assert {n: s["command"] for n, s in source.services().items()} == {
            "jupyterhub-idle-culler": None, "idle-culler": None}
    finally:
        source.close()
    forbidden = hub_config(hub).model_copy(update={
        "api_token": SecretStr(hub.add_token("users-only", ["list:users"]))})
    source = HubApiSource("main", forbidden)
    try:
        with pytest.raises(SourceError, match="lacks permission; it needs the scope "
                                              "list:services"):
            source.services()
    finally:
        source.close()


def test_hub_faults(hub: HubSim) -> None:
    hub.fail(500, times=1, path="/users")
    resp = api(hub, "GET", "/users")
    assert resp.status_code == 500
    assert resp.json()["status"] == 500
    assert api(hub, "GET", "/users").status_code == 200
    assert [m for m, _ in hub.requests] == ["GET", "GET"]


def test_jupyterhub_5_schema(tmp_path: Path) -> None:
    hub = HubSim(tmp_path / "five", alembic_revision=ALEMBIC_5X)
    try:
        hub.start_server("alice")  # no kube, no proxy: only the database
        db = sqlite3.connect(hub.db_path)
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == ALEMBIC_5X
        db.close()
    finally:
        hub.stop()


def test_include_stopped_servers_and_the_token_model(hub: HubSim) -> None:
    hub.start_server("alice")
    hub.start_server("alice", "gpu")
    hub.stop_server("alice", "gpu")
    listed = api(hub, "GET", "/users/alice").json()["servers"]
    assert set(listed) == {""}
    for value in ("1", "true"):
        listed = api(hub, "GET", f"/users/alice?include_stopped_servers={value}").json()[
            "servers"]
        assert set(listed) == {"", "gpu"}
        assert (listed["gpu"]["stopped"], listed["gpu"]["ready"], listed["gpu"]["pending"],
                listed["gpu"]["started"]) == (True, False, None, None)
        assert listed["gpu"]["state"]["pod_name"]  # KubeSpawner's state survives a stop
        assert listed[""]["stopped"] is False
    page = api(hub, "GET", "/users?include_stopped_servers=1").json()
    assert set(page[0]["servers"]) == {"", "gpu"}
    assert set(api(hub, "GET", "/users?include_stopped_servers=0").json()[0]["servers"]) == {""}
    narrow = hub.add_token("narrow", ["list:users", "servers"])
    me = api(hub, "GET", "/user", token=narrow).json()
    assert {"list:users", "delete:servers", "read:servers"} <= set(me["scopes"])
    assert "admin:server_state" not in me["scopes"]


def test_api_sessions_equal_the_db_read_and_need_state(hub: HubSim) -> None:
    for user in ("alice", "bob"):
        hub.start_server(user)
    hub.add_user("carol")
    hub.start_server("dave", pending="spawn")
    by_api = HubApiSource("main", hub_config(hub)).sessions()
    by_db = HubDbSource("main", hub_config(hub)).sessions()
    assert sorted(by_api["users"]) == sorted(by_db["users"])
    keys = ("user", "server_name", "state", "started")
    assert (sorted(tuple(str(r[k]) for k in keys) for r in by_api["running"])
            == sorted(tuple(str(r[k]) for k in keys) for r in by_db["running"]))
    no_state = hub.add_token("no-state", ["list:users", "read:servers"])
    config = hub_config(hub).model_copy(update={"api_token": SecretStr(no_state)})
    with pytest.raises(SourceError, match="needs the admin:server_state scope"):
        HubApiSource("main", config).sessions()
    with pytest.raises(SourceError, match=r"lacks the scopes admin:server_state, proxy \("):
        HubApiSource("main", config).token_scopes(
            ("list:users", "read:servers", "admin:server_state", "proxy"))
