"""delete-extra-pvc against the simulated Kubernetes API: the PV is switched to Retain before
the claim goes, every precondition is re-read by name, and undo recreates the claim on it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config import ClusterConfig, Config
from watchdogd.model import Action, Finding, PreconditionFailed, Severity
from watchdogd.repair import Console, Refused
from watchdogd.sim.kube import KubeSim
from watchdogd.sources.kube import KubeSource
from watchdogd.store import Store
from watchdogd.undo import UndoContext, undo

MARK = ("watchdogd-orphaned-since", "2026-11-01T00:00:00Z")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[KubeSim, KubeSource, dict[str, Any], Config]]:
    with KubeSim() as sim:
        claim = sim.put({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "metadata": {"name": "scratch-bob", "namespace": "jhub",
                                      "labels": {"component": "extra-pvc"},
                                      "annotations": {"hub.jupyter.org/username": "bob",
                                                      MARK[0]: MARK[1],
                                                      "pv.kubernetes.io/bind-completed": "yes"}},
                         "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1",
                                  "resources": {"requests": {"storage": "1Gi"}}},
                         "status": {"phase": "Bound"}})
        sim.put({"apiVersion": "v1", "kind": "PersistentVolume",
                 "metadata": {"name": "pv-1"},
                 "spec": {"persistentVolumeReclaimPolicy": "Delete",
                          "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                          "csi": {"driver": "cinder.csi.openstack.org", "volumeHandle": "v-1"},
                          "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "jhub",
                                       "name": "scratch-bob",
                                       "uid": claim["metadata"]["uid"],
                                       "resourceVersion": "7"}},
                 "status": {"phase": "Bound"}})
        kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
        cluster = ClusterConfig(kubeconfig=str(kubeconfig))
        config = Config.model_validate({"clusters": {"sim": {"kubeconfig": str(kubeconfig)}}})
        source = KubeSource("sim", cluster)
        yield sim, source, claim, config
        source.close()


def delete(source: KubeSource, claim: dict[str, Any]) -> str:
    return source.delete_extra_claim("jhub", "scratch-bob", claim["metadata"]["uid"], "pv-1",
                                     *MARK)


def test_refuses_while_a_pod_mounts_it_and_keeps_the_disk(world: Any) -> None:
    sim, source, claim, _ = world
    sim.put({"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "db-bob", "namespace": "jhub"},
             "spec": {"containers": [{"name": "db", "image": "postgres"}],
                      "volumes": [{"name": "d",
                                   "persistentVolumeClaim": {"claimName": "scratch-bob"}}]}})
    with pytest.raises(PreconditionFailed, match="mounted by pod"):
        delete(source, claim)
    assert sim.get("PersistentVolumeClaim", "scratch-bob", "jhub") is not None
    assert sim.get("PersistentVolume", "pv-1")["spec"]["persistentVolumeReclaimPolicy"] == \
        "Delete"  # nothing changed
    sim.delete("Pod", "db-bob", "jhub")
    assert "kept" in delete(source, claim)
    assert sim.get("PersistentVolumeClaim", "scratch-bob", "jhub") is None
    assert sim.get("PersistentVolume", "pv-1")["spec"]["persistentVolumeReclaimPolicy"] == \
        "Retain"


def test_refuses_a_replaced_or_unmarked_claim(world: Any) -> None:
    sim, source, claim, _ = world
    with pytest.raises(PreconditionFailed, match="replaced"):
        source.delete_extra_claim("jhub", "scratch-bob", "other-uid", "pv-1", *MARK)
    with pytest.raises(PreconditionFailed, match="no longer marked"):
        source.delete_extra_claim("jhub", "scratch-bob", claim["metadata"]["uid"], "pv-1",
                                  MARK[0], "2026-12-01T00:00:00Z")
    assert sim.get("PersistentVolumeClaim", "scratch-bob", "jhub") is not None


def test_undo_recreates_the_claim_on_the_retained_pv(world: Any, tmp_path: Path) -> None:
    sim, source, claim, config = world
    store = Store(f"sqlite:///{tmp_path}/state.db")
    finding = Finding("orphans", "js2", "orphan-extra-pvc", "sim/jhub/scratch-bob",
                      Severity.INFO, "m")
    from watchdogd.checks.orphans import _claim_manifest

    action = Action("delete-extra-pvc", "kube", "sim", "delete_extra_claim",
                    params={"key": MARK[0]},
                    before={"claim": _claim_manifest(claim), "pv": {"name": "pv-1"}})
    now = datetime.now(UTC)
    action_id = store.begin_action("p", finding, action, now)
    store.finish_action(action_id, "done", delete(source, claim), now)
    said: list[str] = []
    ctx = UndoContext(config, store, Console(echo=said.append, ask=lambda q: True))
    assert undo(ctx, action_id) == 0
    again = sim.get("PersistentVolumeClaim", "scratch-bob", "jhub")
    assert again is not None and again["spec"]["volumeName"] == "pv-1"
    assert again["metadata"]["uid"] != claim["metadata"]["uid"]
    annotations = dict(again["metadata"]["annotations"])
    # The simulator's PV controller binds the new claim to the PV it names, as Kubernetes
    # does, and marks the binding itself; what the undo wrote has no mark, no old binding.
    assert annotations.pop("pv.kubernetes.io/bind-completed") == "yes"
    assert annotations == {"hub.jupyter.org/username": "bob"}
    assert again["status"]["phase"] == "Bound"
    ref = sim.get("PersistentVolume", "pv-1")["spec"]["claimRef"]
    assert ref["name"] == "scratch-bob" and ref["uid"] == again["metadata"]["uid"]
    assert undo(ctx, action_id) == 0 and "already undone" in said[-1]
    store.close()


def set_mark(sim: KubeSim, value: str) -> None:
    claim = sim.get("PersistentVolumeClaim", "scratch-bob", "jhub")
    assert claim is not None
    claim["metadata"]["annotations"][MARK[0]] = value
    sim.put(claim)


def test_undo_removes_the_claims_quarantine_mark_only_if_still_ours(
        world: Any, tmp_path: Path) -> None:
    sim, _source, claim, config = world
    store = Store(f"sqlite:///{tmp_path}/state.db")
    finding = Finding("orphans", "sim", "orphan-extra-pvc", "sim/jhub/scratch-bob",
                      Severity.INFO, "m")
    uid = claim["metadata"]["uid"]
    params = {"namespace": "jhub", "name": "scratch-bob", "uid": uid, "key": MARK[0],
              "value": MARK[1]}
    now = datetime.now(UTC)
    said: list[str] = []
    ctx = UndoContext(config, store, Console(echo=said.append, ask=lambda q: True))

    # A mark someone changed since is not watchdogd's to remove.
    set_mark(sim, "2026-12-01T00:00:00Z")
    changed = store.begin_action("p", finding, Action("quarantine-extra-pvc", "kube", "sim",
                                                      "mark_claim", params), now)
    store.finish_action(changed, "done", "marked", now)
    with pytest.raises(Refused, match="is marked watchdogd-orphaned-since=2026-12-01"):
        undo(ctx, changed)
    annotations = sim.get("PersistentVolumeClaim", "scratch-bob", "jhub")["metadata"][
        "annotations"]
    assert annotations[MARK[0]] == "2026-12-01T00:00:00Z"

    set_mark(sim, MARK[1])
    action_id = store.begin_action("p2", finding, Action("quarantine-extra-pvc", "kube", "sim",
                                                         "mark_claim", params), now)
    store.finish_action(action_id, "done", "marked", now)
    assert undo(ctx, action_id) == 0
    annotations = sim.get("PersistentVolumeClaim", "scratch-bob", "jhub")["metadata"][
        "annotations"]
    assert MARK[0] not in annotations and annotations["hub.jupyter.org/username"] == "bob"
    store.close()
