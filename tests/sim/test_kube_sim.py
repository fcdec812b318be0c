"""The Kubernetes API simulator, exercised through the official client and kubectl.

Everything watchdogd learns about Kubernetes in tests comes through this simulator, so these
tests pin the behaviour that matters for correctness downstream: consistent pagination and the
410 on an expired continue token, selectors, deletes, optimistic concurrency on Leases,
watches, auth errors and injected faults, all as the unmodified clients see them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from watchdogd.sim.kube import KubeSim, parse_label_selector

NS = "jhub"


def make_pod(name: str, ns: str = NS, *, labels: dict[str, str] | None = None,
             phase: str = "Running", node: str | None = "node-1") -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"containers": [{"name": "notebook", "image": "jupyter/base-notebook"}]},
        "status": {"phase": phase},
    }
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def api_config(sim: KubeSim, path: Path, **kwargs: Any) -> client.Configuration:
    cfg = client.Configuration()
    config.load_kube_config(config_file=sim.write_kubeconfig(path, **kwargs),
                            client_configuration=cfg)
    return cfg


def status_body(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body or "null")
    return body


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as running:
        yield running
    assert running.errors == []  # a simulator bug surfaces as a 500 and is recorded here


@pytest.fixture
def cfg(sim: KubeSim, tmp_path: Path) -> client.Configuration:
    return api_config(sim, tmp_path / "kubeconfig")


@pytest.fixture
def core(cfg: client.Configuration) -> Iterator[Any]:
    """The core API; typed Any because every field of the generated models is Optional."""
    with client.ApiClient(cfg) as api_client:
        yield client.CoreV1Api(api_client)


# -- objects -------------------------------------------------------------------------------


def test_create_get_list_delete_pod(sim: KubeSim, core: Any) -> None:
    body = client.V1Pod(metadata=client.V1ObjectMeta(name="jupyter-alice", labels={"a": "1"}),
                        spec=client.V1PodSpec(containers=[client.V1Container(name="c",
                                                                             image="img")]))
    created = core.create_namespaced_pod(NS, body)
    assert created.metadata.uid and created.metadata.resource_version
    assert created.status.phase == "Pending"  # a POST starts with a fresh status, as for real

    got = core.read_namespaced_pod("jupyter-alice", NS)
    assert got.metadata.uid == created.metadata.uid
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["jupyter-alice"]
    assert core.list_namespaced_pod("other").items == []

    with pytest.raises(ApiException) as dup:
        core.create_namespaced_pod(NS, body)
    assert dup.value.status == 409
    assert status_body(dup.value)["reason"] == "AlreadyExists"

    deleted = core.delete_namespaced_pod("jupyter-alice", NS)
    assert deleted.metadata.name == "jupyter-alice"
    assert deleted.metadata.deletion_timestamp is not None
    assert sim.get("Pod", "jupyter-alice", NS) is None

    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("jupyter-alice", NS)
    assert missing.value.status == 404
    assert status_body(missing.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "jupyter-alice" not found', "reason": "NotFound",
        "details": {"name": "jupyter-alice", "kind": "pods"}, "code": 404,
    }


def test_put_fills_metadata_and_direct_access(sim: KubeSim) -> None:
    stored = sim.put({"kind": "Pod", "metadata": {"name": "p"}, "spec": {}})
    assert stored["apiVersion"] == "v1"
    assert stored["metadata"]["namespace"] == "default"
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"]
    again = sim.put({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}})
    assert again["metadata"]["uid"] == stored["metadata"]["uid"]
    assert int(again["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])

    ns = sim.put({"kind": "Namespace", "metadata": {"name": "jhub", "namespace": "ignored"}})
    assert "namespace" not in ns["metadata"] and ns["status"]["phase"] == "Active"
    sim.put_many([make_pod(f"bulk-{i}") for i in (2, 0, 1)])
    assert [p["metadata"]["name"] for p in sim.list("Pod", NS)] == ["bulk-0", "bulk-1", "bulk-2"]
    assert len(sim.list("pods")) == 4
    assert sim.delete("Pod", "bulk-0", NS) is True
    assert sim.delete("Pod", "bulk-0", NS) is False
    with pytest.raises(ValueError, match=r"metadata\.name"):
        sim.put({"kind": "Pod", "metadata": {}})


def test_patch_merge_strategic_and_json(sim: KubeSim, core: Any) -> None:
    sim.put(make_pod("p", labels={"a": "1", "b": "2"}))
    patched = core.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"b": None, "c": "3"}}})
    assert patched.metadata.labels == {"a": "1", "c": "3"}
    patched = core.patch_namespaced_pod(
        "p", NS, [{"op": "replace", "path": "/metadata/labels/a", "value": "9"}])
    assert patched.metadata.labels == {"a": "9", "c": "3"}
    # the main resource ignores status changes; the status subresource takes them
    core.patch_namespaced_pod("p", NS, {"status": {"phase": "Failed"}})
    assert sim.get("Pod", "p", NS)["status"]["phase"] == "Running"  # type: ignore[index]
    core.patch_namespaced_pod_status("p", NS, {"status": {"phase": "Failed"}})
    assert sim.get("Pod", "p", NS)["status"]["phase"] == "Failed"  # type: ignore[index]


def test_invalid_label_value_is_rejected_like_the_real_api(core: Any) -> None:
    pod = make_pod("jupyter-5falice", labels={"hub.jupyter.org/username": "-5falice"})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(NS, pod)
    assert err.value.status == 422
    body = status_body(err.value)
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('Pod "jupyter-5falice" is invalid: metadata.labels')


# -- pagination ------------------------------------------------------------------------------


def test_pagination_raw_is_consistent(sim: KubeSim, core: Any) -> None:
    sim.put_many([make_pod(f"p{i}") for i in range(5)])
    pages: list[dict[str, Any]] = []
    cont: str | None = None
    while True:
        resp = core.list_namespaced_pod(NS, limit=2, _continue=cont, _preload_content=False)
        page = json.loads(resp.data)
        pages.append(page)
        if len(pages) == 1:  # changes after the first page must not show up in later pages
            sim.put(make_pod("p0a"))
            sim.delete("Pod", "p4", NS)
        cont = page["metadata"].get("continue")
        if not cont:
            break
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [p["metadata"].get("remainingItemCount") for p in pages] == [3, 1, None]
    assert {p["metadata"]["resourceVersion"] for p in pages} == {pages[0]["metadata"]
                                                                  ["resourceVersion"]}
    names = [i["metadata"]["name"] for p in pages for i in p["items"]]
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    first = pages[0]
    assert first["kind"] == "PodList" and first["apiVersion"] == "v1"
    assert "kind" not in first["items"][0] and "apiVersion" not in first["items"][0]
    # a new list sees the changes
    fresh = core.list_namespaced_pod(NS)
    assert [p.metadata.name for p in fresh.items] == ["p0", "p0a", "p1", "p2", "p3"]


def test_pagination_through_models(sim: KubeSim, core: Any) -> None:
    sim.put_many([make_pod(f"p{i}", ns=ns) for i in range(5) for ns in ("a", "b")])
    names: list[str] = []
    cont = None
    while True:
        page = core.list_pod_for_all_namespaces(limit=2, _continue=cont)
        assert len(page.items) <= 2
        names += [f"{p.metadata.namespace}/{p.metadata.name}" for p in page.items]
        cont = page.metadata.var_continue
        if not cont:
            break
    assert names == sorted(names) and len(names) == 10


def test_expired_continue_token_is_410(sim: KubeSim, core: Any) -> None:
    sim.put_many([make_pod(f"p{i}") for i in range(5)])
    first = core.list_namespaced_pod(NS, limit=2)
    sim.expire_continue_tokens()
    with pytest.raises(ApiException) as gone:
        core.list_namespaced_pod(NS, limit=2, _continue=first.metadata.var_continue)
    assert gone.value.status == 410
    body = status_body(gone.value)
    assert body["reason"] == "Expired" and body["code"] == 410
    assert body["message"].startswith("The provided continue parameter is too old")
    # the real server offers an inconsistent continuation, which works
    rest = core.list_namespaced_pod(NS, limit=10, _continue=body["metadata"]["continue"])
    assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4"]
    # a new list is unaffected
    assert len(core.list_namespaced_pod(NS, limit=10).items) == 5


def test_expire_continue_after_pages(sim: KubeSim, core: Any) -> None:
    sim.put_many([make_pod(f"p{i}") for i in range(7)])
    sim.expire_continue_after(2)
    page = core.list_namespaced_pod(NS, limit=2)
    page = core.list_namespaced_pod(NS, limit=2, _continue=page.metadata.var_continue)
    with pytest.raises(ApiException) as gone:
        core.list_namespaced_pod(NS, limit=2, _continue=page.metadata.var_continue)
    assert gone.value.status == 410
    # only that one list was affected
    cont, count = None, 0
    while True:
        page = core.list_namespaced_pod(NS, limit=2, _continue=cont)
        count += len(page.items)
        cont = page.metadata.var_continue
        if not cont:
            break
    assert count == 7


def test_limit_is_capped_by_page_max(tmp_path: Path) -> None:
    with KubeSim(page_max=3) as small:
        small.put_many([make_pod(f"p{i}") for i in range(5)])
        with client.ApiClient(api_config(small, tmp_path / "kc")) as api_client:
            small_core: Any = client.CoreV1Api(api_client)
            page = small_core.list_namespaced_pod(NS, limit=100)
            everything = small_core.list_namespaced_pod(NS)
    assert len(page.items) == 3 and page.metadata.var_continue
    assert len(everything.items) == 5 and everything.metadata.var_continue is None


# -- selectors -------------------------------------------------------------------------------


@pytest.fixture
def labelled(sim: KubeSim) -> KubeSim:
    sim.put_many([
        make_pod("a", labels={"component": "singleuser-server", "user": "alice"}),
        make_pod("b", labels={"component": "singleuser-server", "user": "bob"},
                 phase="Failed", node="node-2"),
        make_pod("c", labels={"component": "hub"}, node=None, phase="Pending"),
        make_pod("d", ns="other", labels={"component": "proxy", "tier": "1"}),
    ])
    return sim


@pytest.mark.parametrize(("selector", "expected"), [
    ("component=singleuser-server", "ab"),
    ("component==hub", "c"),
    ("component!=hub", "abd"),
    ("user", "ab"),
    ("!user", "cd"),
    ("user in (alice, carol)", "a"),
    ("user notin (alice)", "bcd"),
    ("component in (hub,proxy),!user", "cd"),
    ("component=singleuser-server,user!=bob", "a"),
    ("tier>0", "d"),
    ("", "abcd"),
])
def test_label_selectors(labelled: KubeSim, core: Any, selector: str,
                         expected: str) -> None:
    pods = core.list_pod_for_all_namespaces(label_selector=selector).items
    assert "".join(sorted(p.metadata.name for p in pods)) == expected


@pytest.mark.parametrize(("selector", "expected"), [
    ("status.phase=Running", "ad"),
    ("status.phase!=Running", "bc"),
    ("spec.nodeName=node-2", "b"),
    ("spec.nodeName=", "c"),
    ("metadata.name=a", "a"),
    ("metadata.namespace=other", "d"),
    ("metadata.namespace!=other,status.phase=Running", "a"),
])
def test_field_selectors(labelled: KubeSim, core: Any, selector: str,
                         expected: str) -> None:
    pods = core.list_pod_for_all_namespaces(field_selector=selector).items
    assert "".join(sorted(p.metadata.name for p in pods)) == expected


def test_field_selectors_events_and_secrets(sim: KubeSim, core: Any) -> None:
    for i, (reason, pod) in enumerate([("FailedMount", "a"), ("FailedAttachVolume", "b"),
                                       ("FailedMount", "b")]):
        sim.put({"kind": "Event", "metadata": {"name": f"e{i}", "namespace": NS},
                 "reason": reason, "type": "Warning",
                 "involvedObject": {"kind": "Pod", "name": pod, "namespace": NS}})
    sim.put({"kind": "Secret", "metadata": {"name": "tls", "namespace": NS},
             "type": "kubernetes.io/tls"})
    sim.put({"kind": "Secret", "metadata": {"name": "opaque", "namespace": NS}, "type": "Opaque"})
    events = core.list_namespaced_event(
        NS, field_selector="involvedObject.kind=Pod,involvedObject.name=b,reason=FailedMount")
    assert [e.metadata.name for e in events.items] == ["e2"]
    secrets = core.list_secret_for_all_namespaces(field_selector="type=kubernetes.io/tls")
    assert [s.metadata.name for s in secrets.items] == ["tls"]


def test_unsupported_field_selector_is_400(core: Any) -> None:
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_pod(NS, field_selector="spec.foo=bar")
    assert bad.value.status == 400
    body = status_body(bad.value)
    assert body["reason"] == "BadRequest"
    assert body["message"] == "field label not supported: spec.foo"
    with pytest.raises(ApiException) as bad_nodes:
        core.list_node(field_selector="metadata.namespace=x")  # cluster-scoped: no namespace
    assert bad_nodes.value.status == 400


def test_bad_label_selector_is_400(core: Any) -> None:
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_pod(NS, label_selector="a in (b")
    assert bad.value.status == 400


_label_keys = st.sampled_from(["a", "b", "hub.jupyter.org/username"])
_label_values = st.sampled_from(["x", "y", "z"])


@given(labels=st.dictionaries(_label_keys, _label_values), key=_label_keys,
       values=st.lists(_label_values, min_size=1, max_size=3))
def test_selector_operators_are_complements(labels: dict[str, str], key: str,
                                            values: list[str]) -> None:
    """``!=``/``notin``/``!`` match exactly what ``=``/``in``/exists do not, missing keys
    included: the property clients rely on when they split a population with selectors."""

    def matches(selector: str) -> bool:
        return all(r.matches(labels) for r in parse_label_selector(selector))

    joined = ",".join(values)
    assert matches(f"{key} in ({joined})") != matches(f"{key} notin ({joined})")
    assert matches(f"{key}={values[0]}") != matches(f"{key}!={values[0]}")
    assert matches(key) != matches(f"!{key}")
    assert matches(f"{key} in ({joined})") == (labels.get(key) in values)


# -- deletes, finalizers ---------------------------------------------------------------------


def test_deletecollection_with_selector(labelled: KubeSim, core: Any) -> None:
    core.delete_collection_namespaced_pod(NS, label_selector="component=singleuser-server")
    assert [p["metadata"]["name"] for p in labelled.list("Pod")] == ["c", "d"]
    core.delete_collection_namespaced_pod(NS, field_selector="status.phase=Pending")
    assert [p["metadata"]["name"] for p in labelled.list("Pod")] == ["d"]


def test_namespace_with_finalizers_gets_stuck_terminating(sim: KubeSim,
                                                          core: Any) -> None:
    sim.put({"kind": "Namespace", "metadata": {"name": "stuck"},
             "spec": {"finalizers": ["kubernetes"]}})
    sim.put(make_pod("p", ns="stuck"))
    core.delete_namespace("stuck")
    ns = core.read_namespace("stuck")
    assert ns.status.phase == "Terminating" and ns.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod("stuck", make_pod("q", ns="stuck"))
    assert refused.value.status == 403
    assert "because it is being terminated" in status_body(refused.value)["message"]
    # what an operator does by hand: clear the finalizers through the finalize subresource
    body = core.read_namespace("stuck").to_dict()
    body["spec"]["finalizers"] = []
    core.replace_namespace_finalize("stuck", body)
    with pytest.raises(ApiException) as gone:
        core.read_namespace("stuck")
    assert gone.value.status == 404
    assert sim.list("Pod", "stuck") == []  # the content went with it


def test_object_finalizers_keep_it_until_removed(sim: KubeSim, core: Any) -> None:
    sim.put({"kind": "PersistentVolumeClaim",
             "metadata": {"name": "claim-alice", "namespace": NS,
                          "finalizers": ["kubernetes.io/pvc-protection"]},
             "spec": {"accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Bound"}})
    marked = core.delete_namespaced_persistent_volume_claim("claim-alice", NS)
    assert marked.metadata.deletion_timestamp is not None
    assert core.read_namespaced_persistent_volume_claim("claim-alice", NS).metadata.finalizers
    core.patch_namespaced_persistent_volume_claim(
        "claim-alice", NS, [{"op": "remove", "path": "/metadata/finalizers"}])
    assert sim.get("PersistentVolumeClaim", "claim-alice", NS) is None


def test_delete_of_other_kinds_answers_a_status(sim: KubeSim, core: Any) -> None:
    sim.put({"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": NS}})
    result = core.delete_namespaced_config_map("cm", NS)
    assert result["kind"] == "Status" and result["status"] == "Success"
    assert result["details"]["name"] == "cm"


# -- leases ----------------------------------------------------------------------------------


def test_lease_replace_with_stale_resource_version_conflicts(cfg: client.Configuration) -> None:
    with client.ApiClient(cfg) as api_client:
        coord: Any = client.CoordinationV1Api(api_client)
        lease = coord.create_namespaced_lease(NS, {
            "metadata": {"name": "watchdogd"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
        stale_rv = lease.metadata.resource_version
        lease.spec.holder_identity = "b"
        updated = coord.replace_namespaced_lease("watchdogd", NS, lease)
        assert updated.spec.holder_identity == "b"
        assert updated.metadata.resource_version != stale_rv
        lease.spec.holder_identity = "c"
        lease.metadata.resource_version = stale_rv
        with pytest.raises(ApiException) as conflict:
            coord.replace_namespaced_lease("watchdogd", NS, lease)
    assert conflict.value.status == 409
    body = status_body(conflict.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on leases.coordination.k8s.io "watchdogd": the object '
        "has been modified; please apply your changes to the latest version and try again")
    assert body["details"] == {"name": "watchdogd", "group": "coordination.k8s.io",
                               "kind": "leases"}


# -- watch -----------------------------------------------------------------------------------


def test_watch_sees_put_after_start(sim: KubeSim, core: Any) -> None:
    sim.put(make_pod("existing"))
    w = watch.Watch()
    seen: list[tuple[str, str]] = []
    for event in w.stream(core.list_namespaced_pod, NS, timeout_seconds=30):
        seen.append((event["type"], event["object"].metadata.name))
        if event["object"].metadata.name == "existing":
            # the watch is established (it delivered its initial state): now change the world
            sim.put(make_pod("new"))
        else:
            w.stop()
    assert seen == [("ADDED", "existing"), ("ADDED", "new")]
    assert event["raw_object"]["kind"] == "Pod"


def test_watch_from_resource_version_with_selector(sim: KubeSim,
                                                   core: Any) -> None:
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    sim.put(make_pod("a", labels={"component": "singleuser-server"}))
    sim.put(make_pod("b", labels={"component": "hub"}))
    sim.put(make_pod("a", labels={"component": "gone"}))  # stops matching: DELETED
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_pod, NS, resource_version=rv,
                          label_selector="component=singleuser-server", timeout_seconds=30):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "a"), ("DELETED", "a")]


def test_watch_times_out(sim: KubeSim, core: Any) -> None:
    events = list(watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=1))
    assert events == []


# -- auth ------------------------------------------------------------------------------------


def test_bad_token_is_401(sim: KubeSim, tmp_path: Path) -> None:
    with (client.ApiClient(api_config(sim, tmp_path / "kc", token="wrong")) as api_client,
          pytest.raises(ApiException) as denied):
        client.CoreV1Api(api_client).list_namespaced_pod(NS)
    assert denied.value.status == 401
    assert status_body(denied.value)["reason"] == "Unauthorized"


def test_limited_token_is_403(sim: KubeSim, tmp_path: Path) -> None:
    sim.put(make_pod("p"))
    sim.add_token("limited", {("list", "pods"), ("get", "pods")},
                  user="system:serviceaccount:jhub:watchdogd")
    with client.ApiClient(api_config(sim, tmp_path / "kc", token="limited")) as api_client:
        limited: Any = client.CoreV1Api(api_client)
        assert [p.metadata.name for p in limited.list_namespaced_pod(NS).items] == ["p"]
        with pytest.raises(ApiException) as forbidden:
            limited.delete_namespaced_pod("p", NS)
        with pytest.raises(ApiException) as cluster:
            limited.list_node()
    assert forbidden.value.status == 403
    body = status_body(forbidden.value)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods "p" is forbidden: User "system:serviceaccount:jhub:watchdogd" cannot delete '
        'resource "pods" in API group "" in the namespace "jhub"')
    assert status_body(cluster.value)["message"].endswith(
        'cannot list resource "nodes" in API group "" at the cluster scope')
    assert sim.get("Pod", "p", NS) is not None


# -- faults ----------------------------------------------------------------------------------


def test_fail_answers_status_then_recovers(sim: KubeSim, core: Any) -> None:
    sim.fail(r"^/api/v1/namespaces/jhub/pods$", status=500, times=1, after=1)
    core.list_namespaced_pod(NS)  # skipped by `after`
    with pytest.raises(ApiException) as failed:
        core.list_namespaced_pod(NS)
    assert failed.value.status == 500
    assert status_body(failed.value)["reason"] == "InternalError"
    core.list_namespaced_pod(NS)  # `times` used up
    assert [m for m, p in sim.requests if p.startswith("/api/v1/namespaces/jhub/pods")] \
        == ["GET"] * 3
    sim.reset_requests()
    assert sim.requests == []


def test_hang_makes_the_client_time_out(sim: KubeSim, cfg: client.Configuration) -> None:
    cfg.retries = False  # one attempt, so the test is about the timeout alone
    sim.fail(r"/pods$", hang=30)
    with client.ApiClient(cfg) as api_client:
        core: Any = client.CoreV1Api(api_client)
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.list_namespaced_pod(NS, _request_timeout=0.3)
        sim.clear_faults()
        assert core.list_namespaced_pod(NS, _request_timeout=5).items == []


def test_status_zero_drops_the_connection(sim: KubeSim, cfg: client.Configuration) -> None:
    cfg.retries = False
    sim.fail(r"/pods$", status=0, times=1)
    with client.ApiClient(cfg) as api_client:
        core: Any = client.CoreV1Api(api_client)
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.list_namespaced_pod(NS)
        assert core.list_namespaced_pod(NS).items == []


def test_down_and_up_keep_port_and_data(sim: KubeSim, cfg: client.Configuration) -> None:
    cfg.retries = False
    sim.put(make_pod("p"))
    url = sim.url
    with client.ApiClient(cfg) as api_client:
        core: Any = client.CoreV1Api(api_client)
        assert len(core.list_namespaced_pod(NS).items) == 1  # a pooled keep-alive connection
        sim.down()
        with pytest.raises(urllib3.exceptions.HTTPError):
            core.list_namespaced_pod(NS, _request_timeout=5)
        with pytest.raises(urllib3.exceptions.HTTPError):  # new connections are refused
            core.list_namespaced_pod(NS, _request_timeout=5)
        sim.up()
        assert sim.url == url
        assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == ["p"]


def test_plain_http_kubeconfig_and_concurrent_clients(sim: KubeSim, tmp_path: Path) -> None:
    sim.put_many([make_pod(f"p{i}") for i in range(50)])
    plain = api_config(sim, tmp_path / "kc", tls=False)
    assert plain.host == sim.url
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with client.ApiClient(plain) as api_client:
                for _ in range(5):
                    assert len(client.CoreV1Api(api_client).list_namespaced_pod(NS).items) == 50
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


# -- kubectl ---------------------------------------------------------------------------------


@pytest.fixture
def kubectl(sim: KubeSim, tmp_path: Path) -> Any:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed")
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": kubeconfig}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "cache"), *args],
            capture_output=True, text=True, timeout=60, env=env, check=False)

    return run


def test_kubectl_get_and_delete(sim: KubeSim, kubectl: Any) -> None:
    sim.put_many([make_pod("jupyter-alice"), make_pod("hub-0", ns="kube-system")])
    sim.put({"kind": "Node", "metadata": {"name": "node-1",
                                          "labels": {"node-role.kubernetes.io/control-plane": ""}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}],
                        "nodeInfo": {"kubeletVersion": "v1.32.4"}}})
    sim.put({"kind": "PersistentVolume", "metadata": {"name": "pvc-123"},
             "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                      "persistentVolumeReclaimPolicy": "Delete"},
             "status": {"phase": "Released"}})

    pods = kubectl("get", "pods", "-A", "-o", "json")
    assert pods.returncode == 0, pods.stderr
    doc = json.loads(pods.stdout)
    assert sorted(i["metadata"]["name"] for i in doc["items"]) == ["hub-0", "jupyter-alice"]

    table = kubectl("get", "pods", "-A")
    assert table.returncode == 0, table.stderr
    assert "jupyter-alice" in table.stdout and "Running" in table.stdout

    nodes = kubectl("get", "nodes")
    assert nodes.returncode == 0, nodes.stderr
    assert "node-1" in nodes.stdout and "Ready" in nodes.stdout
    assert "control-plane" in nodes.stdout

    pvs = kubectl("get", "pv", "-o", "json")
    assert pvs.returncode == 0, pvs.stderr
    assert json.loads(pvs.stdout)["items"][0]["status"]["phase"] == "Released"

    deleted = kubectl("delete", "pod", "jupyter-alice", "-n", NS)
    assert deleted.returncode == 0, deleted.stderr
    assert sim.get("Pod", "jupyter-alice", NS) is None

    missing = kubectl("delete", "pod", "jupyter-alice", "-n", NS)
    assert missing.returncode != 0
    assert 'pods "jupyter-alice" not found' in missing.stderr


def test_deployment_scale_subresource(sim: KubeSim, cfg: client.Configuration) -> None:
    """GET/PATCH/PUT of deployments/scale, as kubectl scale and the client use it."""
    sim.put({"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "hub", "namespace": NS},
             "spec": {"replicas": 3, "selector": {"matchLabels": {"component": "hub"}},
                      "template": {"metadata": {"labels": {"component": "hub"}},
                                   "spec": {"containers": [{"name": "hub", "image": "h"}]}}}})
    with client.ApiClient(cfg) as api_client:
        apps = client.AppsV1Api(api_client)
        scale = apps.read_namespaced_deployment_scale("hub", NS)
        assert (scale.kind, scale.api_version) == ("Scale", "autoscaling/v1")
        assert scale.spec.replicas == 3
        assert scale.status.selector == "component=hub"
        patched = apps.patch_namespaced_deployment_scale("hub", NS, {"spec": {"replicas": 0}})
        assert patched.spec.replicas == 0
        assert int(patched.metadata.resource_version) > int(scale.metadata.resource_version)
        assert sim.get("Deployment", "hub", NS)["spec"]["replicas"] == 0
        # A stale resourceVersion is a conflict, as on the real server.
        stale = {"metadata": {"resourceVersion": scale.metadata.resource_version},
                 "spec": {"replicas": 1}}
        with pytest.raises(ApiException) as conflict:
            apps.patch_namespaced_deployment_scale("hub", NS, stale)
        assert conflict.value.status == 409
        with pytest.raises(ApiException) as negative:
            apps.patch_namespaced_deployment_scale("hub", NS, {"spec": {"replicas": -1}})
        assert negative.value.status == 422
        with pytest.raises(ApiException) as missing:
            apps.read_namespaced_deployment_scale("nope", NS)
        assert missing.value.status == 404


# -- the PV controller's binding of pre-bound pairs ----------------------------------------------


def _pv_body(name: str, claim: str, *, uid: str | None = None, size: str = "10Gi",
             storage_class: str = "std") -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "PersistentVolumeClaim", "namespace": NS, "name": claim}
    if uid:
        ref["uid"] = uid
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": storage_class, "claimRef": ref,
                     "persistentVolumeReclaimPolicy": "Retain",
                     "csi": {"driver": "cinder.csi.openstack.org", "volumeHandle": name}}}


def _claim_body(name: str, pv: str, *, size: str = "5Gi", storage_class: str = "std",
                modes: tuple[str, ...] = ("ReadWriteOnce",)) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": list(modes), "storageClassName": storage_class,
                     "resources": {"requests": {"storage": size}}, "volumeName": pv}}


def test_a_claim_and_a_pv_that_name_each_other_bind(sim: KubeSim, core: Any) -> None:
    core.create_persistent_volume(_pv_body("pv-a", "claim-a"))
    assert sim.get("PersistentVolume", "pv-a")["status"]["phase"] == "Available"
    core.create_namespaced_persistent_volume_claim(NS, _claim_body("claim-a", "pv-a"))
    claim = sim.get("PersistentVolumeClaim", "claim-a", NS)
    pv = sim.get("PersistentVolume", "pv-a")
    assert claim is not None and pv is not None
    assert (claim["status"]["phase"], pv["status"]["phase"]) == ("Bound", "Bound")
    assert pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    assert claim["status"]["capacity"] == {"storage": "10Gi"}
    assert claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"


@pytest.mark.parametrize(("pv_kwargs", "claim_kwargs", "pv_phase"), [
    ({"storage_class": "other"}, {}, "Available"),          # classes differ
    ({"size": "1Gi"}, {}, "Available"),                     # the claim asks for more
    ({}, {"modes": ("ReadWriteMany",)}, "Available"),       # a mode the PV lacks
    ({"uid": "the-old-claim"}, {}, "Released"),             # bound to a claim that is gone
])
def test_what_the_pv_controller_refuses_to_bind(sim: KubeSim, core: Any, pv_kwargs: Any,
                                                claim_kwargs: Any, pv_phase: str) -> None:
    core.create_persistent_volume(_pv_body("pv-b", "claim-b", **pv_kwargs))
    core.create_namespaced_persistent_volume_claim(NS, _claim_body("claim-b", "pv-b",
                                                                   **claim_kwargs))
    claim = sim.get("PersistentVolumeClaim", "claim-b", NS)
    pv = sim.get("PersistentVolume", "pv-b")
    assert claim is not None and pv is not None
    assert claim["status"]["phase"] == "Pending"
    assert pv["status"]["phase"] == pv_phase
