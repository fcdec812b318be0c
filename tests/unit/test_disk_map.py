"""The map of users' disks: what the orphans check puts on it, the manifests made from it, and
the ``volumes map`` / ``volumes manifests`` commands on a recorded store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdogd import diskmap
from watchdogd.checks import orphans
from watchdogd.cli import main
from watchdogd.model import ClaimRecord, Snapshot
from watchdogd.slugs import safe_slug
from watchdogd.store import Store

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
Obj = dict[str, Any]


def pv(name: str, vid: str, namespace: str, claim: str, *, uid: str | None = None,
       phase: str = "Bound", driver: str = "cinder.csi.openstack.org",
       attributes: Obj | None = None, **csi: Any) -> Obj:
    ref: Obj = {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim}
    if uid:
        ref["uid"] = uid
    return {"metadata": {"name": name}, "status": {"phase": phase},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                     "claimRef": ref,
                     "csi": {"driver": driver, "volumeHandle": vid, "fsType": "ext4",
                             "volumeAttributes": attributes or {}, **csi}}}


def claim(name: str, namespace: str = "jhub", *, uid: str = "u1", user: str | None = None,
          slug: str | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid,
                 "labels": {"component": "singleuser-storage"},
                 "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{...}"}}
    if user:
        meta["annotations"]["hub.jupyter.org/username"] = user
    if slug:
        meta["labels"]["hub.jupyter.org/username"] = slug
    return {"metadata": meta, "spec": {"volumeName": "x", "storageClassName": "standard",
                                       "accessModes": ["ReadWriteOnce"],
                                       "resources": {"requests": {"storage": "8Gi"}}},
            "status": {"phase": "Bound"}}


def snapshot(pvs: dict[str, list[Obj]], pvcs: dict[str, list[Obj]],
             hubs: tuple[orphans.HubRef, ...] = ()) -> Snapshot:
    settings = orphans.TargetSettings("c", None, tuple(pvs), hubs, orphans.Settings())
    obs: dict[str, Any] = {f"pvs:{c}": items for c, items in pvs.items()}
    obs.update({f"pvcs:{c}": [] for c in pvs})  # every cluster's claims are listed
    obs.update({f"pvcs:{c}": items for c, items in pvcs.items()})
    return Snapshot("orphans", "c", obs, {}, settings)


def records(snap: Snapshot) -> dict[str, ClaimRecord]:
    detection = orphans.detect(snap, NOW)
    assert detection.records is not None
    return {f"{r.cluster}/{r.namespace}/{r.claim}": r for r in detection.records}


def test_who_owns_each_claim_and_what_is_left_off() -> None:
    nublado = orphans.HubRef("rsp", "c2", "nublado", "nublado", "nublado-")
    found = records(snapshot(
        {"c1": [pv("p1", "v1", "jhub", "claim-alice", uid="u1"),
                pv("p2", "v2", "jhub", "claim-bob", uid="u2"),
                pv("p3", "v3", "jhub", "claim-old", uid="gone"),
                pv("p4", "v4", "jhub", "claim-rel", phase="Released"),
                pv("p5", "v5", "jhub", "claim-nfs", driver="nfs.csi.k8s.io")],
         "c2": [pv("p6", "v6", "nublado-carol", "home"),
                pv("p7", "v7", "jhub", "claim-dave---1a2b3c4d"),
                pv("p8", "v8", "other", "data")]},
        {"c1": [claim("claim-alice", uid="u1", user="Alice Smith"),
                claim("claim-bob", uid="u2", slug="bob"),
                claim("claim-old", uid="new-one", user="mallory")]},
        hubs=(nublado,)))
    assert {k: (r.user, r.user_source) for k, r in found.items()} == {
        "c1/jhub/claim-alice": ("Alice Smith", "annotation"),
        "c1/jhub/claim-bob": ("bob", "label"),
        # the claim of that name now is another one: the PV's claim is not read from it
        "c1/jhub/claim-old": ("old", "claim-name"),
        "c2/nublado-carol/home": ("carol", "namespace"),
        "c2/jhub/claim-dave---1a2b3c4d": ("dave---1a2b3c4d", "claim-name"),
        "c2/other/data": (None, None),
    }
    alice = found["c1/jhub/claim-alice"]
    assert (alice.pv, alice.volume_id, alice.size, alice.reclaim_policy) == (
        "p1", "v1", "10Gi", "Delete")
    assert alice.manifest["claim_request"] == "8Gi"
    # only the hub's annotations come along, not the controller's or kubectl's
    assert alice.manifest["claim_annotations"] == {"hub.jupyter.org/username": "Alice Smith"}
    assert found["c1/jhub/claim-old"].manifest["claim_listed"] is False


def test_no_secret_is_recorded() -> None:
    found = records(snapshot({"c1": [pv(
        "p1", "v1", "jhub", "claim-a", attributes={"password": "hunter2", "zone": "nova"},
        nodeStageSecretRef={"name": "cinder-creds", "namespace": "kube-system"})]}, {}))
    manifest = found["c1/jhub/claim-a"].manifest
    assert "hunter2" not in json.dumps(manifest)
    assert manifest["volume_attributes"]["zone"] == "nova"
    pv_doc, _ = diskmap.manifests({**_row(found["c1/jhub/claim-a"])})
    # the name of the Secret the driver reads, as the PV had it; never its content
    assert pv_doc["spec"]["csi"]["nodeStageSecretRef"] == {"name": "cinder-creds",
                                                          "namespace": "kube-system"}


def _row(record: ClaimRecord) -> Obj:
    return {"cluster": record.cluster, "namespace": record.namespace, "claim": record.claim,
            "pv": record.pv, "volume_id": record.volume_id, "user": record.user,
            "user_source": record.user_source, "size": record.size,
            "reclaim_policy": record.reclaim_policy, "manifest": dict(record.manifest)}


def test_manifests_rebind_the_volume_and_keep_it() -> None:
    found = records(snapshot({"c1": [pv("p1", "v1", "jhub", "claim-alice", uid="u1")]},
                             {"c1": [claim("claim-alice", user="alice")]}))
    pv_doc, claim_doc = diskmap.manifests(_row(found["c1/jhub/claim-alice"]))
    spec = pv_doc["spec"]
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"
    assert spec["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "namespace": "jhub", "name": "claim-alice"}  # no uid
    assert (spec["csi"]["driver"], spec["csi"]["volumeHandle"], spec["csi"]["fsType"]) == (
        "cinder.csi.openstack.org", "v1", "ext4")
    assert claim_doc["spec"]["volumeName"] == "p1"
    assert claim_doc["spec"]["storageClassName"] == "standard"
    assert claim_doc["metadata"]["annotations"] == {"hub.jupyter.org/username": "alice"}


def test_a_claim_without_a_class_asks_for_none() -> None:
    row = {"cluster": "c1", "namespace": "jhub", "claim": "claim-a", "pv": "p", "volume_id": "v",
           "user": "a", "user_source": "claim-name", "size": "1Gi", "manifest": {}}
    pv_doc, claim_doc = diskmap.manifests(row)
    assert "storageClassName" not in pv_doc["spec"]
    # "" keeps the default StorageClass admission from giving it one the PV lacks
    assert claim_doc["spec"]["storageClassName"] == ""


def test_users_match_by_name_or_by_the_recorded_slug() -> None:
    rows = [{"user": "Alice Smith", "user_source": "annotation"},
            {"user": safe_slug("Alice Smith"), "user_source": "claim-name"},
            {"user": safe_slug("Alice Smith"), "user_source": "namespace"},
            {"user": "bob", "user_source": "label"}]
    assert diskmap.for_user(rows, "Alice Smith") == rows[:2]
    assert diskmap.for_user(rows, "bob") == [rows[3]]


def test_parse_at() -> None:
    assert diskmap.parse_at("2026-11-20T10:00:00Z", NOW) == datetime(2026, 11, 20, 10,
                                                                     tzinfo=UTC)
    assert diskmap.parse_at("2026-11-20T10:00:00", NOW).tzinfo is not None
    assert diskmap.parse_at("2d", NOW) == NOW - timedelta(days=2)
    with pytest.raises(ValueError, match="neither an ISO time"):
        diskmap.parse_at("last tuesday", NOW)


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("WATCHDOGD_CONFIG", raising=False)
    url = f"sqlite:///{tmp_path}/state.db"
    store = Store(url)
    hostile = "eve\x1b[31m\u202e"
    store.record_disks("orphans", "js2", [
        ClaimRecord("c1", "jhub", "claim-alice", "pv-a", "v1", "alice", "annotation", "10Gi",
                    "Delete", {"access_modes": ["ReadWriteOnce"], "storage_class": "std",
                               "claim_annotations": {"hub.jupyter.org/username": "alice"}}),
        ClaimRecord("c1", "jhub", "claim-eve", "pv-e", "v2", hostile, "annotation", "1Gi",
                    "Retain", {"claim_annotations": {"hub.jupyter.org/username": hostile}}),
        ClaimRecord("c2", "jhub", "claim-alice", "pv-b", "v3", "alice", "annotation", "5Gi",
                    "Delete", {}),
    ], NOW)
    store.record_disks("orphans", "js2", [], NOW + timedelta(hours=1))
    store.close()
    path = tmp_path / "watchdogd.toml"
    (tmp_path / "state-url").write_text(url + "\n")
    path.write_text(f'[state]\nurl_file = "{tmp_path / "state-url"}"\n')
    return path


def run(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = 0
    try:
        main([*args, "--config", str(config)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_volumes_map_now_and_then(config_file: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config_file, capsys, "volumes", "map")[1].startswith("no claims on the map")
    at = "2026-11-22T03:30:00Z"
    code, out, _ = run(config_file, capsys, "volumes", "map", "--at", at)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["USER", "NAMESPACE", "CLAIM"]
    assert "\x1b" not in out and "\u202e" not in out and "eve\\x1b[31m\\u202e" in out
    code, out, _ = run(config_file, capsys, "volumes", "map", "--at", at, "--json")
    rows = json.loads(out)
    assert [(r["cluster"], r["claim"], r["valid_to"]) for r in rows] == [
        ("c1", "claim-alice", "2026-11-22T04:00:00Z"),
        ("c1", "claim-eve", "2026-11-22T04:00:00Z"),
        ("c2", "claim-alice", "2026-11-22T04:00:00Z")]
    assert run(config_file, capsys, "volumes", "map", "--at", "soon")[0] == 64


def test_volumes_manifests_refusals_and_output(config_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    at = ("--at", "2026-11-22T03:30:00Z")
    assert run(config_file, capsys, "volumes", "manifests")[0] == 64
    assert run(config_file, capsys, "volumes", "manifests", "alice", "--all")[0] == 64
    code, _, err = run(config_file, capsys, "volumes", "manifests", "alice", *at)
    assert code == 64 and "clusters c1, c2" in err and "--cluster" in err
    code, _, err = run(config_file, capsys, "volumes", "manifests", "nobody", *at)
    assert code == 3 and "no claim of user 'nobody'" in err
    code, out, _ = run(config_file, capsys, "volumes", "manifests", "--all", "--cluster", "c1",
                       *at)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("PersistentVolume", "pv-a"), ("PersistentVolumeClaim", "claim-alice"),
        ("PersistentVolume", "pv-e"), ("PersistentVolumeClaim", "claim-eve")]
    # escaped for the terminal, exact for kubectl
    assert docs[3]["metadata"]["annotations"]["hub.jupyter.org/username"] == "eve\x1b[31m\u202e"
