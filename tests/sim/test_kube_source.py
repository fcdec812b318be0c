"""The kube source against the simulated API: raw pagination, selectors, and every failure mode.

A failure is always a SourceError naming the cluster and the cause, never a short list.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from watchdogd.config import ClusterConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sim.kube import KubeSim
from watchdogd.sources.base import counting
from watchdogd.sources.kube import KubeSource


def user_pod(i: int, *, namespace: str = "jhub", phase: str = "Running") -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"jupyter-user{i}", "namespace": namespace,
                         "labels": {"component": "singleuser-server"},
                         "annotations": {"hub.jupyter.org/username": f"user{i}"}},
            "spec": {"containers": [{"name": "notebook", "image": "lab"}]},
            "status": {"phase": phase}}


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    with KubeSim() as kube:
        kube.put_many([user_pod(i) for i in range(23)])
        kube.put({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "hub-1", "namespace": "jhub",
                               "labels": {"component": "hub"}},
                  "spec": {"containers": [{"name": "hub", "image": "hub"}]},
                  "status": {"phase": "Running"}})
        yield kube


def source(sim: KubeSim, tmp_path: Path, *, page_size: int = 5, timeout: float = 2,
           token: str | None = None) -> KubeSource:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig", token=token)
    return KubeSource("sim", ClusterConfig(kubeconfig=kubeconfig, page_size=page_size,
                                           timeout=timedelta(seconds=timeout)))


def test_lists_every_page_with_a_server_side_selector(sim: KubeSim, tmp_path: Path) -> None:
    kube = source(sim, tmp_path)
    sim.reset_requests()
    with counting() as requests:
        pods = kube.pods("jhub", label_selector="component=singleuser-server")
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(
        f"jupyter-user{i}" for i in range(23))
    assert requests[0] == math.ceil(23 / 5)
    queries = [q for _, q in sim.requests]
    assert all("labelSelector=component" in q and "limit=5" in q for q in queries)


def test_field_selector_is_sent_to_the_server(sim: KubeSim, tmp_path: Path) -> None:
    sim.put(user_pod(99, phase="Failed"))
    pods = source(sim, tmp_path).pods(field_selector="status.phase=Failed")
    assert [p["metadata"]["name"] for p in pods] == ["jupyter-user99"]


def test_expired_continue_token_fails_the_whole_list(sim: KubeSim, tmp_path: Path) -> None:
    sim.expire_continue_after(2)
    with pytest.raises(SourceError) as info:
        source(sim, tmp_path).pods("jhub")
    assert info.value.target == "sim"
    assert "410" in info.value.cause and "expired while paging" in info.value.cause


def test_server_error(sim: KubeSim, tmp_path: Path) -> None:
    sim.fail(r"/pods$", status=500)
    with pytest.raises(SourceError, match=r"kube sim: list pods in namespace jhub: HTTP 500"):
        source(sim, tmp_path).pods("jhub")


def test_error_on_a_later_page_fails_the_whole_list(sim: KubeSim, tmp_path: Path) -> None:
    sim.fail(r"/pods$", status=503, after=2)
    with pytest.raises(SourceError, match="HTTP 503"):
        source(sim, tmp_path).pods("jhub")


def test_hang_past_the_timeout(sim: KubeSim, tmp_path: Path) -> None:
    sim.fail(r"/pods$", hang=5)
    with pytest.raises(SourceError, match=r"no answer within 0.5s"):
        source(sim, tmp_path, timeout=0.5).pods("jhub")


def test_api_down(sim: KubeSim, tmp_path: Path) -> None:
    kube = source(sim, tmp_path)
    sim.down()
    try:
        with pytest.raises(SourceError, match=r"connection refused|network error"):
            kube.pods("jhub")
    finally:
        sim.up()


def test_bad_token_names_the_credential(sim: KubeSim, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        source(sim, tmp_path, token="tok-9f3a7c-marker").pods("jhub")
    assert "401 Unauthorized: the credentials of cluster sim" in info.value.cause
    assert "tok-9f3a7c-marker" not in str(info.value)


def test_forbidden_says_what_is_missing(sim: KubeSim, tmp_path: Path) -> None:
    sim.add_token("viewer", {("list", "nodes")}, user="system:serviceaccount:wd:watchdogd")
    with pytest.raises(SourceError) as info:
        source(sim, tmp_path, token="viewer").pods("jhub")
    assert "403 Forbidden" in info.value.cause
    assert "list on pods" in info.value.cause


def test_bad_kubeconfig_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("not: [a kubeconfig")
    kube = KubeSource("js2", ClusterConfig(kubeconfig=str(tmp_path / "kubeconfig")))
    with pytest.raises(SourceError, match="kube js2: cannot load the cluster credentials"):
        kube.pods("jhub")


def test_delete_pod_only_if_it_is_still_the_same_pod(sim: KubeSim, tmp_path: Path) -> None:
    kube = source(sim, tmp_path)
    observed = sim.get("Pod", "jupyter-user1", "jhub")
    assert observed is not None
    sim.delete("Pod", "jupyter-user1", "jhub")
    sim.put(user_pod(1))  # a new pod with the same name: a different uid
    with pytest.raises(PreconditionFailed, match="replaced"):
        kube.delete_pod("jhub", "jupyter-user1", observed["metadata"]["uid"])
    assert sim.get("Pod", "jupyter-user1", "jhub") is not None
    current = sim.get("Pod", "jupyter-user1", "jhub")
    assert current is not None
    assert kube.delete_pod("jhub", "jupyter-user1", current["metadata"]["uid"]) == (
        "deleted pod jhub/jupyter-user1")
    with pytest.raises(PreconditionFailed, match="already gone"):
        kube.delete_pod("jhub", "jupyter-user1", current["metadata"]["uid"])
