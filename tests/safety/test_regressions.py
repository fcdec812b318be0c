"""One small, deterministic test per bug the safety suite found in watchdogd.

Each test names the property that caught the bug; the randomized tests find such cases
again only by chance, these pin them down.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.safety.fuzz import PayloadServer, call_with_deadline
from tests.safety.harness import hasten
from tests.safety.test_fuzz_input import _hub, _kube
from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd.app import load_config
from watchdogd.checks import REGISTRY
from watchdogd.config import Config, ConfigError
from watchdogd.engine import Engine
from watchdogd.model import SourceError
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.sources.hubapi import HubApiSource
from watchdogd.sources.proxy import ProxySource
from watchdogd.sources.tls import TlsSource
from watchdogd.store import Store, StoreError

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.fixture
def server() -> Iterator[PayloadServer]:
    with PayloadServer() as payload_server:
        yield payload_server


# -- the state store fails between an action's intent and its result (store stress) -------------


class FlakyStore(Store):
    """Fails ``finish_action`` once, as a locked or restarting database would."""

    fail_next_finish = False

    def finish_action(self, action_id: int, status: str, detail: str, now: datetime) -> None:
        if self.fail_next_finish:
            self.fail_next_finish = False
            raise StoreError("state database: database is locked")
        super().finish_action(action_id, status, detail, now)


def test_store_failure_after_an_action_is_settled_before_the_next_pass(
        tmp_path: Path) -> None:
    """A long-running daemon never restarts, so recover() never runs: the intent row used to
    stay ``started`` and the finding kept its old sightings (a retry without re-confirming)."""
    world = FakeWorld()
    world.add("alice", pod=False)
    clock = SimClock(T0)
    config = make_config(tmp_path)
    store = FlakyStore(config.state.resolved_url())
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    engine = Engine(config, store, Sources(config, factories), clock=clock,
                    registry={"sessions": REGISTRY["sessions"]})
    engine.run_pass()
    world.stop_raises = None
    store.fail_next_finish = True
    with pytest.raises(StoreError):
        engine.run_pass()  # the stop ran, its result was lost
    assert world.calls == [("stop_server", {"user": "alice", "server_name": ""})]
    world.add("alice", pod=False)  # the stop did not take after all: the problem is back
    report = engine.run_pass()
    [row] = store.actions()
    assert (row.status, row.finished_at is not None) == ("interrupted", True)
    [entry] = [f for c in report.checks for f in c.findings]
    assert (entry.tracked.sightings, entry.action_status) == (1, "unconfirmed")
    assert len(world.calls) == 1  # not retried on the strength of the old confirmation


# -- malformed input (fuzzing) --------------------------------------------------------------------


@pytest.mark.parametrize("section", ["hubs", "clouds", "daemon", "clusters"])
def test_config_with_a_section_of_the_wrong_type_is_a_config_error(tmp_path: Path,
                                                                   section: str) -> None:
    """``_references`` called ``.items()`` on whatever the section was: AttributeError, so
    ``watchdogd config check`` died with exit 70 instead of listing the problem (78)."""
    path = tmp_path / "watchdogd.toml"
    path.write_text(f"{section} = true\n[hubs2]\nx = 1\n" if section != "hubs"
                    else "hubs = true\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(section in problem for problem in caught.value.problems)
    path.write_text('[clouds.c]\ncloud = "c"\nclusters = [["nested"]]\n'
                    '[hubs.h]\ncluster = ["x"]\napi_url = "http://hub"\n')
    with pytest.raises(ConfigError):
        load_config(path)


def test_absurdly_deep_json_is_a_source_error(server: PayloadServer) -> None:
    """json raised RecursionError (not a ValueError) past Python's recursion limit."""
    server.payload = (200, DEEP)
    for call in (HubApiSource("main", _hub(server.url)).active_servers,
                 ProxySource("main", _hub(server.url)).routes,
                 lambda: _kube(server.url).pods(namespace="jhub")):
        outcome, value = call_with_deadline(call)
        assert outcome == "raised" and isinstance(value, SourceError), value
        assert "not JSON" in str(value)
    server.payload = (500, DEEP)  # quoted in an error message: the same parser
    source = HubApiSource("main", _hub(server.url))
    hasten(source, 0.0)
    outcome, value = call_with_deadline(source.active_servers)
    assert outcome == "raised" and isinstance(value, SourceError), value


@pytest.mark.parametrize("pagination", [
    {"offset": 0, "limit": 1, "total": 5, "next": {"offset": 0}},   # never moves on
    {"offset": 0, "limit": 1, "total": 5, "next": "page2"},        # not an object
    {"offset": 0, "limit": 1, "total": 5, "next": {"offset": "1"}},  # not a number
], ids=["same-offset", "next-not-object", "offset-not-int"])
def test_hub_pagination_that_does_not_move_forward_is_a_source_error(
        server: PayloadServer, pagination: dict[str, Any]) -> None:
    """The same page forever: active_servers() looped without end (and hammered the hub)."""
    page = {"items": [{"name": "alice", "servers": {}}], "_pagination": pagination}
    server.payload = (200, json.dumps(page).encode())
    outcome, value = call_with_deadline(HubApiSource("main", _hub(server.url)).active_servers,
                                        5)
    assert outcome == "raised" and isinstance(value, SourceError), (outcome, value)
    server.payload = (200, json.dumps({"items": [], "_pagination": 7}).encode())
    outcome, value = call_with_deadline(HubApiSource("main", _hub(server.url)).active_servers)
    assert outcome == "raised" and isinstance(value, SourceError), (outcome, value)


@pytest.mark.parametrize("metadata", [{"continue": "again"}, -1, {"continue": 5}],
                         ids=["repeated-token", "metadata-not-object", "token-not-string"])
def test_kubernetes_list_metadata_that_cannot_end_is_a_source_error(
        server: PayloadServer, metadata: Any) -> None:
    """A continue token that keeps coming back looped forever; metadata of the wrong type
    raised AttributeError."""
    page = {"kind": "PodList", "metadata": metadata,
            "items": [{"metadata": {"name": "p", "namespace": "jhub"}}]}
    server.payload = (200, json.dumps(page).encode())
    outcome, value = call_with_deadline(lambda: _kube(server.url).pods(namespace="jhub"), 5)
    assert outcome == "raised" and isinstance(value, SourceError), (outcome, value)


def test_tls_secret_with_data_of_the_wrong_type_is_a_source_error(
        server: PayloadServer) -> None:
    """``(secret.get("data") or {}).get(...)`` on ``true``: AttributeError."""
    page = {"kind": "SecretList", "metadata": {}, "items": [
        {"metadata": {"name": "t", "namespace": "n"}, "type": "kubernetes.io/tls",
         "data": True}]}
    server.payload = (200, json.dumps(page).encode())
    tls = TlsSource("c", Config.model_validate({"clusters": {"c": {}}}))
    tls._kube = _kube(server.url)
    outcome, value = call_with_deadline(tls.secrets)
    assert outcome == "raised" and isinstance(value, SourceError), (outcome, value)


# -- secrets echoed back by a peer (secrets) ------------------------------------------------------


def test_a_peer_echoing_the_token_does_not_put_it_in_the_error(server: PayloadServer) -> None:
    token = "tok-3f9a77c1e5"
    server.payload = (500, f"bad gateway; you sent Authorization: token {token}".encode())
    source = HubApiSource("main", _hub(server.url).model_copy(
        update={"api_token": SecretStr(token)}))
    hasten(source, 0.0)
    outcome, value = call_with_deadline(source.active_servers)
    assert outcome == "raised" and isinstance(value, SourceError)
    assert token not in str(value) and "***" in str(value)
    server.payload = (400, json.dumps({"message": f"token {token} may not"}).encode())
    from watchdogd.model import PreconditionFailed

    with pytest.raises(PreconditionFailed) as caught:
        source.stop_server("alice")
    assert token not in str(caught.value)


def test_a_kube_api_echoing_the_bearer_token_does_not_put_it_in_the_error(
        server: PayloadServer) -> None:
    source = _kube(server.url)
    source.client.configuration.api_key = {"authorization": "Bearer kube-tok-77aa01"}
    server.payload = (500, b'{"kind":"Status","message":"saw Bearer kube-tok-77aa01"}')
    outcome, value = call_with_deadline(lambda: source.pods(namespace="jhub"))
    assert outcome == "raised" and isinstance(value, SourceError)
    assert "kube-tok-77aa01" not in str(value)


# -- OpenStack ---------------------------------------------------------------------------------


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Any, Any, Any]]:
    from watchdogd.config import CloudConfig
    from watchdogd.sim.openstack import OpenStackSim
    from watchdogd.sim.world import SimClock
    from watchdogd.sources.openstack import OpenStackSource

    clock = SimClock(datetime(2026, 11, 22, 3, 0, tzinfo=UTC))
    sim = OpenStackSim(clock=clock).start()
    try:
        path = sim.write_clouds_yaml(tmp_path / "clouds.yaml", "sim")
        source = OpenStackSource("sim", CloudConfig(cloud="sim", clouds_yaml=path,
                                                    timeout=timedelta(seconds=5)))
        hasten(source, 0.0)
        yield sim, clock, source
        source.close()
    finally:
        sim.stop()


def test_a_token_dying_under_concurrent_reads_is_not_a_credential_failure(
        cloud: tuple[Any, Any, Any]) -> None:
    """keystoneauth re-authenticates a 401 only if invalidate() finds a token to drop; under
    concurrent reads only the first did, the others reported ``credential-invalid``."""
    sim, clock, source = cloud
    sim.add_volume("pvc-1")
    source.volumes()
    failures = 0
    for _ in range(5):
        clock.advance(hours=4)  # Keystone's token is dead; the client does not know yet
        results: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda f=f, out=results: out.append(f()))
                   for f in (source.volumes, source.attachments,
                             source.application_credentials)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failures += sum(1 for r in results if "auth_error" in r)
    assert failures == 0


def test_attachment_deleted_is_done_even_if_the_volume_cannot_be_read_afterwards(
        cloud: tuple[Any, Any, Any]) -> None:
    """The read after the delete raised: the audit log said ``failed`` for a deletion that
    had happened."""
    sim, _clock, source = cloud
    volume, attachment = sim.inject_dangling_attachment("pvc-x", beside_attached=False)
    fresh = source.volume(volume["id"])
    assert fresh is not None
    # The delete path reads the attachment, then the volume, deletes, then reads the volume
    # again: make that last read fail.
    sim.fail(rf"/volumes/{volume['id']}$", status=500, after=1)
    detail = source.delete_attachment(attachment["id"], volume["id"], "reserved",
                                      fresh["status"], fresh["updated_at"])
    assert "deleted reserved attachment" in detail and "unknown" in detail
    assert sim.attachments(volume["id"]) == []


def test_a_certificate_whose_issuer_does_not_decode_is_an_unreadable_record(
        tmp_path: Path) -> None:
    """cryptography decodes fields lazily: the certificate loaded, reading its issuer raised
    ValueError, and one bad file made the whole ``files`` target an error."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.safety.test_fuzz_input import CERT_PEM

    der = x509.load_pem_x509_certificate(CERT_PEM).public_bytes(Encoding.DER)
    issuer = b"\x06\x03U\x04\x03\x0c\x10watchdogd-sim-ca"
    assert issuer in der
    path = tmp_path / "bad.crt"
    path.write_bytes(der.replace(issuer, issuer.replace(b"\x0c", b"\x0d")))
    [record] = TlsSource("local", Config()).files(str(path))
    assert "does not decode" in record["error"]


def test_a_cinder_volume_with_attachments_of_the_wrong_type_is_a_source_error(
        cloud: tuple[Any, Any, Any]) -> None:
    """The volumes check read ``attachments`` as a list of objects: TypeError in detect."""
    from tests.safety.test_fuzz_input import CinderTap

    sim, _clock, source = cloud
    view = sim.add_volume("pvc-odd")
    tap = CinderTap(sim)
    tap.path = "/volumes/detail"
    odd: Any
    for odd in (1, ["not an object"], {"value": []}):
        tap.payload = (200, json.dumps({"volumes": [{**view, "attachments": odd}],
                                        "volumes_links": []}).encode())
        with pytest.raises(SourceError, match="is malformed"):
            source.volumes()
