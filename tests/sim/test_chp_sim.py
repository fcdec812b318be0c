"""ChpSim against configurable-http-proxy 5's REST API contract (lib/configproxy.js)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from watchdogd.config import HubConfig
from watchdogd.model import SourceError
from watchdogd.sim.chp import ChpSim, clean_path
from watchdogd.sim.world import SimClock
from watchdogd.sources.proxy import ProxySource

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)




@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0)


@pytest.fixture
def chp(clock: SimClock) -> Iterator[ChpSim]:
    with ChpSim(token="secret-proxy-token", clock=clock) as sim:
        yield sim


TOKEN = "secret-proxy-token"


def call(chp: ChpSim, method: str, path: str, *, token: str | None = TOKEN,
         body: Any = None, raw: bytes | None = None, timeout: float = 5) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return requests.request(method, chp.url + path, headers=headers, data=data, timeout=timeout)


def test_clean_path_is_chp_trim_prefix() -> None:
    assert clean_path("/user/alice/") == "/user/alice"
    assert clean_path("user/alice") == "/user/alice"
    assert clean_path("/") == "/"
    assert clean_path("") == "/"


def test_post_get_delete_round_trip(chp: ChpSim) -> None:
    resp = call(chp, "POST", "/api/routes/user/alice/",
                body={"target": "http://10.0.0.5:8888", "user": "alice", "server_name": "",
                      "jupyterhub": True})
    assert resp.status_code == 201
    assert resp.content == b""
    routes = call(chp, "GET", "/api/routes").json()
    assert routes == {"/user/alice": {"user": "alice", "server_name": "", "jupyterhub": True,
                                      "target": "http://10.0.0.5:8888",
                                      "last_activity": "2026-11-22T03:00:00.000Z"}}
    assert call(chp, "GET", "/api/routes/user/alice").json()["target"] == "http://10.0.0.5:8888"
    assert call(chp, "GET", "/api/routes/user/bob").status_code == 404
    assert call(chp, "DELETE", "/api/routes/user/alice").status_code == 204
    assert call(chp, "DELETE", "/api/routes/user/alice").status_code == 404
    assert call(chp, "GET", "/api/routes").json() == {}


def test_post_needs_a_string_target_and_json(chp: ChpSim) -> None:
    resp = call(chp, "POST", "/api/routes/user/x", body={"user": "x"})
    assert (resp.status_code, resp.text) == (400, "Must specify 'target' as string")
    resp = call(chp, "POST", "/api/routes/user/x", body={"target": 5})
    assert resp.status_code == 400
    resp = call(chp, "POST", "/api/routes/user/x", raw=b"{not json")
    assert resp.status_code == 400
    assert resp.text.startswith("Body not valid JSON")
    assert chp.routes == {}


def test_auth_is_a_bare_403(chp: ChpSim) -> None:
    for token in (None, "wrong"):
        resp = call(chp, "GET", "/api/routes", token=token)
        assert resp.status_code == 403
        assert resp.content == b""
    resp = requests.get(chp.url + "/api/routes", timeout=5,
                        headers={"Authorization": "Bearer secret-proxy-token"})
    assert resp.status_code == 403


def test_unknown_paths_and_methods(chp: ChpSim) -> None:
    assert call(chp, "GET", "/api/other").status_code == 404
    resp = call(chp, "PUT", "/api/routes/user/x", body={"target": "http://x"})
    assert (resp.status_code, resp.text) == (405, "Method not supported")


def test_inactive_since(chp: ChpSim, clock: SimClock) -> None:
    chp.add_route("/user/old", "http://10.0.0.1:8888", user="old")
    clock.now = T0 + timedelta(hours=2)
    chp.add_route("/user/new", "http://10.0.0.2:8888", user="new")
    since = (T0 + timedelta(hours=1)).isoformat()
    resp = requests.get(chp.url + "/api/routes", params={"inactive_since": since}, timeout=5,
                        headers={"Authorization": "token secret-proxy-token"})
    assert list(resp.json()) == ["/user/old"]
    resp = requests.get(chp.url + "/api/routes", params={"inactiveSince": "yesterday"},
                        timeout=5, headers={"Authorization": "token secret-proxy-token"})
    assert resp.status_code == 400
    assert "must be ISO8601" in resp.text


def test_python_api_and_default_target(clock: SimClock) -> None:
    with ChpSim(default_target="http://hub:8081", clock=clock) as chp:
        assert chp.routes == {"/": {"target": "http://hub:8081",
                                    "last_activity": "2026-11-22T03:00:00.000Z"}}
        key = chp.add_route("/user/a/lab/", "http://10.0.0.3:8888", user="a",
                            server_name="lab", jupyterhub=True)
        assert key == "/user/a/lab"
        copy = chp.routes
        copy["/user/a/lab"]["target"] = "changed"
        assert chp.route("/user/a/lab/")["target"] == "http://10.0.0.3:8888"  # type: ignore[index]
        assert chp.delete_route("/user/a/lab")
        assert not chp.delete_route("/user/a/lab")
        assert chp.requests == []  # the Python API is not HTTP


def test_faults_and_request_log(chp: ChpSim) -> None:
    chp.fail(503, times=1)
    assert call(chp, "GET", "/api/routes").status_code == 503
    assert call(chp, "GET", "/api/routes").status_code == 200
    chp.fail(500, path="^/api/routes/user/", method="POST")
    assert call(chp, "POST", "/api/routes/user/x", body={"target": "http://x"}).status_code == 500
    assert call(chp, "GET", "/api/routes").status_code == 200
    chp.clear_faults()
    chp.fail(hang=5)
    with pytest.raises(requests.Timeout):
        call(chp, "GET", "/api/routes", timeout=0.2)
    chp.clear_faults()
    chp.fail(0, times=1)
    with pytest.raises(requests.ConnectionError):
        call(chp, "GET", "/api/routes")
    assert ("POST", "/api/routes/user/x") in chp.requests
    assert chp.requests[0] == ("GET", "/api/routes")


def test_down_and_up_keep_port_and_routes(chp: ChpSim) -> None:
    chp.add_route("/user/a", "http://10.0.0.1:8888")
    url = chp.url
    session = requests.Session()
    headers = {"Authorization": f"token {chp.token}"}
    assert session.get(url + "/api/routes", headers=headers, timeout=5).status_code == 200
    chp.down()
    assert not chp.is_up
    with pytest.raises(requests.ConnectionError):
        session.get(url + "/api/routes", headers=headers, timeout=5)
    chp.up()
    assert chp.url == url
    assert list(session.get(url + "/api/routes", headers=headers, timeout=5).json()) == [
        "/user/a"]


def test_proxy_source_reads_the_simulator(chp: ChpSim) -> None:
    chp.add_route("/user/a", "http://10.0.0.1:8888", user="a", server_name="", jupyterhub=True)
    config = HubConfig(cluster="c", api_url="http://127.0.0.1:1/hub/api",
                       proxy_api_url=chp.url, proxy_token=chp.token)  # type: ignore[arg-type]
    source = ProxySource("main", config)
    try:
        assert source.routes()["/user/a"]["target"] == "http://10.0.0.1:8888"
        chp.fail(403)
        with pytest.raises(SourceError, match="403"):
            source.routes()
    finally:
        source.close()


# -- the public side: proxying as CHP 5 does, and the hub probe through it ---------------------


def test_the_public_side_proxies_and_answers_like_chp(tmp_path: Any) -> None:
    from watchdogd.sim.hub import HubSim
    from watchdogd.sources.probe import HubProbeSource

    with ChpSim() as chp, HubSim(tmp_path / "hub", chp=chp) as hub:
        config = HubConfig.model_validate({"cluster": "x", "api_url": hub.api_url,
                                           "public_url": chp.public_url + "/",
                                           "timeout": "0.5s"})
        source = HubProbeSource("main", config)
        answer = requests.get(f"{chp.public_url}/hub/health", timeout=5)
        assert (answer.status_code, answer.text) == (200, "")
        assert source.health() == {"url": f"{chp.public_url}/hub/health", "status": 200,
                                   "timed_out": False, "body": ""}
        # The hub hangs: CHP has no upstream timeout, so neither does the request.
        hub.freeze()
        try:
            assert source.health()["timed_out"] is True
        finally:
            hub.thaw()
        # The hub refuses connections: handleProxyError's default 503.
        hub.down()
        answer = requests.get(f"{chp.public_url}/hub/health", timeout=5)
        assert (answer.status_code, answer.text) == (503, "Service Unavailable")
        assert source.health()["status"] == 503
        # No route for the path: 404.
        chp.delete_route("/")
        assert requests.get(f"{chp.public_url}/hub/health", timeout=5).status_code == 404
        # The proxy itself is gone: nothing is known about the hub.
        chp.down()
        with pytest.raises(SourceError, match="cannot connect"):
            source.health()
        source.close()
