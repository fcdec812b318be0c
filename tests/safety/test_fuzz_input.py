"""Bad input: every parser meets malformed payloads and answers with a clear SourceError.

Each source's parser gets valid answers broken in small ways, random JSON, bodies cut
short, bytes that are not JSON, absurd nesting, and error statuses: the Hub REST API's
user pages, CHP's routing table, Kubernetes lists (pods, TLS secrets), Cinder's volume and
attachment lists, PEM/DER certificates, the hub database's spawner state, and the TOML
configuration. The only acceptable outcomes are a well-formed result or a clear error
(``SourceError``, ``ConfigError``); never another exception, never a hang.

Then the same payloads reach a real engine pass in a hub world (remediation on): the pass
completes, the daemon does not crash, and the referee finds no unjustified action.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client
from pydantic import SecretStr

from tests.safety.faults import KubeBodyFault, TapFault
from tests.safety.fuzz import PayloadServer, bodies, broken, call_with_deadline, json_values
from tests.safety.harness import hasten
from tests.safety.profile import SAFETY, examples
from tests.safety.sessions_world import SafeWorld, SessionsModel
from tests.safety.stats import STATS
from watchdogd.app import load_config
from watchdogd.checks import certs
from watchdogd.config import ClusterConfig, Config, ConfigError, HubConfig
from watchdogd.model import SourceError
from watchdogd.sim.tls import CertAuthority
from watchdogd.sim.world import SimClock
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.hubdb import HubDbSource
from watchdogd.sources.kube import KubeSource
from watchdogd.sources.proxy import ProxySource
from watchdogd.sources.tls import TlsSource

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
statuses = st.sampled_from([200] * 10 + [201, 204, 301, 400, 401, 403, 404, 410, 500, 503])

# -- what the real services answer ------------------------------------------------------------

USERS_PAGE: dict[str, Any] = {
    "items": [{
        "kind": "user", "name": "alice", "admin": False, "groups": [],
        "servers": {"": {
            "name": "", "ready": True, "pending": None, "stopped": False,
            "started": "2026-11-22T01:00:00.000000Z", "last_activity": "2026-11-22T02:00:00Z",
            "url": "/user/alice/", "state": {"pod_name": "jupyter-alice", "namespace": "jhub"},
        }}}],
    "_pagination": {"offset": 0, "limit": 200, "total": 1, "next": None},
}
ROUTES: dict[str, Any] = {
    "/": {"hub": True, "target": "http://10.0.255.2:8081", "jupyterhub": True,
          "last_activity": "2026-11-22T02:00:00.000Z"},
    "/user/alice": {"user": "alice", "server_name": "", "target": "http://10.0.0.5:8888",
                    "jupyterhub": True, "last_activity": "2026-11-22T02:00:00.000Z"},
}
POD_LIST: dict[str, Any] = {
    "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
    "items": [{
        "metadata": {"name": "jupyter-alice", "namespace": "jhub", "uid": "u-1",
                     "labels": {"component": "singleuser-server"},
                     "annotations": {"hub.jupyter.org/username": "alice"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": "10.0.0.5"}}],
}


def _cert_pem() -> bytes:
    authority = CertAuthority(now=T0)
    return authority.issue("hub.example.org", days=30, dns=["hub.example.org"]).cert_pem


CERT_PEM = _cert_pem()
SECRET_LIST: dict[str, Any] = {
    "kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
    "items": [{"metadata": {"name": "hub-tls", "namespace": "jhub"},
               "type": "kubernetes.io/tls",
               "data": {"tls.crt": base64.b64encode(CERT_PEM).decode(), "tls.key": "a2V5"}}],
}


def answers(valid: Any) -> st.SearchStrategy[bytes]:
    """The valid answer itself, broken versions of it, and random documents, as bodies."""
    return bodies(st.one_of(st.just(valid), broken(valid), broken(valid, max_edits=6),
                            json_values))


def assert_clear(outcome: str, value: Any, shape: Callable[[Any], str | None]) -> None:
    """A well-formed result or a SourceError; never another exception, never a hang."""
    STATS.add("fuzz_inputs")
    if outcome == "hung":
        STATS.add("violations")
        raise AssertionError("the parser never returned on a malformed answer")
    if outcome == "raised":
        if not isinstance(value, SourceError):
            STATS.add("violations")
            raise AssertionError(f"not a SourceError: {type(value).__name__}: {value}")
        assert "\n" not in str(value), str(value)
        return
    problem = shape(value)
    if problem:
        STATS.add("violations")
        raise AssertionError(f"returned a malformed result: {problem}: {value!r}"[:500])


# -- result shapes (what the checks rely on) --------------------------------------------------


def servers_shape(value: Any) -> str | None:
    if not isinstance(value, list):
        return "not a list"
    for server in value:
        if not isinstance(server, dict) or not isinstance(server.get("user"), str):
            return "a server without a user name"
        if not isinstance(server.get("server_name"), str):
            return "a server name that is not a string"
        if not isinstance(server.get("state"), dict):
            return "a state that is not an object"
    return None


def routes_shape(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not an object"
    for path, route in value.items():
        if not isinstance(path, str) or not isinstance(route, dict):
            return "a route that is not an object"
        if not isinstance(route.get("target"), str):
            return "a route without a target"
    return None


def objects_shape(value: Any) -> str | None:
    if not isinstance(value, list):
        return "not a list"
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("metadata"), dict):
            return "an object without metadata"
    return None


def records_shape(value: Any) -> str | None:
    if not isinstance(value, list):
        return "not a list"
    for record in value:
        if not isinstance(record, dict) or not ("error" in record or "not_after" in record):
            return "a record with neither a date nor an error"
        if "tls.key" in json.dumps(record, default=str):
            return "a private key kept in a record"
    return None


# -- the sources, each against a server that says whatever we want ------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[PayloadServer]:
    with PayloadServer() as payload_server:
        yield payload_server


def _hub(url: str) -> HubConfig:
    return HubConfig(cluster="c", api_url=f"{url}/hub/api", api_token=SecretStr("t0ken"),
                     proxy_api_url=url, proxy_token=SecretStr("pr0xy"),
                     timeout=timedelta(seconds=3))


def _kube(url: str) -> KubeSource:
    def factory(name: str, config: ClusterConfig) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = url
        configuration.retries = 1
        return client.ApiClient(configuration)

    return KubeSource("c", ClusterConfig(timeout=timedelta(seconds=3), page_size=2),
                      factory=factory)


@settings(SAFETY, max_examples=examples(150))
@given(status=statuses, body=answers(USERS_PAGE))
def test_hub_api_users_parser(server: PayloadServer, status: int, body: bytes) -> None:
    server.payload = (status, body)
    source = HubApiSource("main", _hub(server.url))
    hasten(source, 0.0)
    try:
        assert_clear(*call_with_deadline(source.active_servers), servers_shape)
    finally:
        source.close()


@settings(SAFETY, max_examples=examples(100))
@given(status=statuses, body=answers(ROUTES))
def test_proxy_routes_parser(server: PayloadServer, status: int, body: bytes) -> None:
    server.payload = (status, body)
    source = ProxySource("main", _hub(server.url))
    hasten(source, 0.0)
    try:
        assert_clear(*call_with_deadline(source.routes), routes_shape)
    finally:
        source.close()


@settings(SAFETY, max_examples=examples(120))
@given(status=statuses, body=answers(POD_LIST))
def test_kubernetes_list_parser(server: PayloadServer, status: int, body: bytes) -> None:
    server.payload = (status, body)
    source = _kube(server.url)
    try:
        assert_clear(*call_with_deadline(
            lambda: source.pods(namespace="jhub", label_selector="component=x")), objects_shape)
    finally:
        source.close()


@settings(SAFETY, max_examples=examples(80))
@given(status=statuses, body=answers(SECRET_LIST))
def test_tls_secret_list_parser(server: PayloadServer, status: int, body: bytes) -> None:
    server.payload = (status, body)
    tls = TlsSource("c", Config.model_validate({"clusters": {"c": {}}}))
    tls._kube = _kube(server.url)
    try:
        outcome, value = call_with_deadline(tls.secrets)
        assert_clear(outcome, value, records_shape)
        if outcome == "ok":  # and the certs check can judge whatever came out
            for record in value:
                certs.judge(record, "c", certs.Settings(), T0)
    finally:
        tls.close()


# -- PEM and DER --------------------------------------------------------------------------------


@st.composite
def certificate_bytes(draw: st.DrawFn) -> bytes:
    pem = CERT_PEM
    body = pem.split(b"\n")
    kind = draw(st.sampled_from(["flip", "cut", "lines", "random", "b64", "der", "chain",
                                 "headers"]))
    if kind == "flip":
        data = bytearray(pem)
        for _ in range(draw(st.integers(1, 8))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "cut":
        return pem[: draw(st.integers(0, len(pem)))]
    if kind == "lines":
        lines = draw(st.permutations(body))
        return b"\n".join(lines[: draw(st.integers(0, len(lines)))])
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "b64":
        inner = base64.b64encode(draw(st.binary(max_size=300)))
        return b"-----BEGIN CERTIFICATE-----\n" + inner + b"\n-----END CERTIFICATE-----\n"
    if kind == "der":
        der = x509.load_pem_x509_certificate(pem).public_bytes(
            __import__("cryptography.hazmat.primitives.serialization",
                       fromlist=["Encoding"]).Encoding.DER)
        data = bytearray(der)
        index = draw(st.integers(0, len(data) - 1))
        data[index] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "chain":
        return pem + draw(st.binary(max_size=64)) + pem[: draw(st.integers(0, len(pem)))]
    return b"-----BEGIN CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n" + pem


@settings(SAFETY, max_examples=examples(200))
@given(data=certificate_bytes())
def test_certificate_parser(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    STATS.add("fuzz_inputs")
    path = tmp_path_factory.mktemp("pem") / "fuzz.crt"
    path.write_bytes(data)
    tls = TlsSource("local", Config())
    outcome, value = call_with_deadline(lambda: tls.files(str(path)))
    assert_clear(outcome, value, records_shape)
    for record in value:
        certs.judge(record, "files", certs.Settings(), T0)


# -- the hub database's spawner state --------------------------------------------------------------


@settings(SAFETY, max_examples=examples(60))
@given(state=st.one_of(st.text(max_size=40), json_values.map(json.dumps),
                       st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
       server_id=st.one_of(st.integers(-5, 5), st.none()))
def test_hub_database_state_parser(tmp_path_factory: pytest.TempPathFactory, state: str,
                                   server_id: int | None) -> None:
    STATS.add("fuzz_inputs")
    path = tmp_path_factory.mktemp("hubdb") / "jupyterhub.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE alembic_version (version_num VARCHAR(32));"
        "INSERT INTO alembic_version VALUES ('f460b0348206');"
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(255));"
        "CREATE TABLE servers (id INTEGER PRIMARY KEY, proto TEXT, ip TEXT, port INTEGER, "
        "base_url TEXT);"
        "CREATE TABLE spawners (id INTEGER PRIMARY KEY, user_id INTEGER, server_id INTEGER, "
        "state TEXT, name TEXT, started DATETIME, last_activity DATETIME);"
        "INSERT INTO users VALUES (1, 'alice');"
        "INSERT INTO servers VALUES (1, 'http', '10.0.0.5', 8888, '/user/alice/');")
    conn.execute("INSERT INTO spawners VALUES (1, 1, ?, ?, '', '2026-11-22 01:00:00', NULL)",
                 (server_id, state))
    conn.commit()
    conn.close()
    source = HubDbSource("main", HubConfig(cluster="c", api_url="http://hub/hub/api",
                                           db_url=SecretStr(f"sqlite:///{path}")))
    try:
        outcome, value = call_with_deadline(source.sessions)
        assert_clear(outcome, value, lambda v: None if all(
            isinstance(r["state"], dict) for r in v["running"]) else "state not an object")
    finally:
        source.close()


# -- the configuration ----------------------------------------------------------------------------

VALID_CONFIG: dict[str, Any] = {
    "state": {"url_file": "state_url"},
    "remediation": {"dry_run": False, "confirm_after": 2, "min_age": "5m", "max_per_pass": 5,
                    "enabled": ["stop-server", "sync-routes"]},
    "daemon": {"pass_timeout": "60s"},
    "clusters": {"js2": {"kubeconfig": "kubeconfig", "context": "js2", "timeout": "15s"}},
    "hubs": {"main": {"cluster": "js2", "api_url": "http://hub:8081/hub/api",
                      "api_token_file": "token", "db_url_file": "db_url"}},
    "checks": {"sessions": {"interval": "1m", "stuck_spawn_after": "15m"}},
}


def _toml(data: Any) -> str | None:
    from watchdogd.sim.world import dumps_toml

    if not isinstance(data, dict):
        return None
    try:
        return dumps_toml(data)
    except (TypeError, AttributeError):
        return None


@settings(SAFETY, max_examples=examples(120))
@given(doc=broken(VALID_CONFIG, max_edits=4),
       raw=st.one_of(st.none(), st.text(max_size=80), st.binary(max_size=40)))
def test_config_loader(tmp_path_factory: pytest.TempPathFactory, doc: Any,
                       raw: str | bytes | None) -> None:
    STATS.add("fuzz_inputs")
    directory = tmp_path_factory.mktemp("config")
    for name, value in (("state_url", f"sqlite:///{directory}/state.db"), ("token", "t"),
                        ("db_url", f"sqlite:///{directory}/hub.sqlite"), ("kubeconfig", "{}")):
        (directory / name).write_text(value)
    path = directory / "watchdogd.toml"
    text = _toml(doc)
    if raw is not None or text is None:
        path.write_bytes(raw.encode() if isinstance(raw, str) else (raw or b""))
    else:
        path.write_text(text)
    outcome, value = call_with_deadline(lambda: load_config(path))
    if outcome == "raised":
        assert isinstance(value, ConfigError), f"{type(value).__name__}: {value}"
        assert all(isinstance(p, str) and p for p in value.problems)
    else:
        assert outcome == "ok" and isinstance(value, Config)


# -- all the way through a pass ------------------------------------------------------------------

payload = st.one_of(
    st.tuples(st.just("hubapi"), answers(USERS_PAGE)),
    st.tuples(st.just("proxy"), answers(ROUTES)),
    st.tuples(st.just("kube"), answers(POD_LIST)),
)


@settings(SAFETY, max_examples=examples(25))
@given(bad=payload, status=statuses)
def test_malformed_answers_in_a_pass_never_crash_or_act(bad: tuple[str, bytes],
                                                        status: int) -> None:
    source, body = bad
    clock = SimClock(T0)
    with SafeWorld(clock=clock, timeout="2s", extra={"clusters": {"sim": {"page_size": 3}}},
                   remediation={"confirm_after": 2}) as world:
        model = SessionsModel(world, clock)
        for _ in range(4):
            model.start_healthy()
        model.plant("stale-session")
        model.plant("orphan-pod")
        model.plant("missing-route")
        driver = model.driver()
        try:
            driver.run()
            if source == "hubapi":
                fault: Any = TapFault("hubapi", model.hub_tap, "body", "/users", times=99,
                                      body=body, status=status)
            elif source == "proxy":
                fault = TapFault("proxy", model.chp_tap, "body", "/api/routes", times=99,
                                 body=body, status=status)
            else:
                fault = KubeBodyFault(world.kube, "/pods", body, status=status)
            # A well-formed lie cannot be told from the truth by any parser: I1 does not
            # apply to this pass, every other rule does (no action without confirmation).
            fault.unstable = True
            driver.run([fault])  # must not raise: the daemon survives whatever it reads
            driver.run()
        finally:
            driver.close()
        STATS.add("fuzz_inputs")
        assert driver.referee.violations == []


# -- Cinder ---------------------------------------------------------------------------------------


class CinderTap:
    """An OpenStackSim whose Cinder answers GETs on one path with a payload of our choosing."""

    def __init__(self, sim: Any) -> None:
        from watchdogd.sim._http import Response

        self.path: str | None = None
        self.payload: tuple[int, bytes] = (200, b"{}")
        real = sim.cinder.route

        def route(req: Any) -> Any:
            answer = real(req)
            if self.path and req.method == "GET" and self.path in req.path:
                status, body = self.payload
                return Response(status, body, None, dict(answer.headers))
            return answer

        sim.cinder.route = route


@pytest.fixture(scope="module")
def cinder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, CinderTap, Any]]:
    from watchdogd.config import CloudConfig
    from watchdogd.sim.openstack import OpenStackSim
    from watchdogd.sources.openstack import OpenStackSource

    sim = OpenStackSim(page_max=50).start()
    try:
        sim.inject_stuck_volume("pvc-stuck", status="reserved")
        sim.inject_dangling_attachment("pvc-dangling")
        sim.add_volume("pvc-fine")
        path = tmp_path_factory.mktemp("cloud") / "clouds.yaml"
        sim.write_clouds_yaml(path, "sim")
        tap = CinderTap(sim)
        source = OpenStackSource("sim", CloudConfig(cloud="sim", clouds_yaml=str(path),
                                                    timeout=timedelta(seconds=3)))
        hasten(source, 0.0)
        yield sim, tap, source
        source.close()
    finally:
        sim.stop()


def _cinder_valid(sim: Any) -> dict[str, Any]:
    volumes = sim.volumes()
    return {"volumes": {"volumes": volumes, "volumes_links": []},
            "attachments": {"attachments": sim.attachments()},
            "volume": {"volume": volumes[0]}}


def listing_shape(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not an object"
    if "auth_error" in value:
        return None if isinstance(value["auth_error"], str) else "auth_error not a string"
    items = value.get("items")
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("id"), str) for i in items):
        return "items without ids"
    return None


@settings(SAFETY, max_examples=examples(120))
@given(which=st.sampled_from(["volumes", "attachments", "volume"]), status=statuses,
       data=st.data())
def test_cinder_parsers(cinder: tuple[Any, CinderTap, Any], which: str, status: int,
                        data: st.DataObject) -> None:
    from watchdogd.checks import volumes as volumes_check

    sim, tap, source = cinder
    valid = _cinder_valid(sim)
    body = data.draw(answers(valid[which]), label="body")
    tap.path = {"volumes": "/volumes/detail", "attachments": "/attachments/detail",
                "volume": "/volumes/"}[which]
    tap.payload = (status, body)
    try:
        if which == "volume":
            from watchdogd.sources.openstack import AuthFailed

            vid = valid["volume"]["volume"]["id"]
            outcome, value = call_with_deadline(lambda: source.volume(vid))
            if outcome == "raised" and isinstance(value, AuthFailed):
                return  # volume() is the actions' helper: they turn this into a SourceError
            assert_clear(outcome, value, lambda v: None if v is None or isinstance(v, dict)
                         else "not an object")
            return
        call = source.volumes if which == "volumes" else source.attachments
        outcome, value = call_with_deadline(call)
        assert_clear(outcome, value, listing_shape)
    finally:
        tap.path = None
    if outcome != "ok" or "auth_error" in value:
        return
    # Whatever the parser let through, the check judges without crashing.
    other = source.attachments() if which == "volumes" else source.volumes()
    observations = ({"volumes": value, "attachments": other} if which == "volumes"
                    else {"volumes": other, "attachments": value})
    from watchdogd.model import Snapshot

    snapshot = Snapshot("volumes", "sim", observations=observations,
                        settings=volumes_check.TargetSettings(
                            "sim", (), volumes_check.Settings(correlate_events=False,
                                                              check_credentials=False)))
    volumes_check.detect(snapshot, T0 + timedelta(days=1))
