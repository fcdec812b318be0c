"""detect() of the orphans check on hand-built snapshots: union over clusters, quarantine,
deletion budget, released PVs and extra claims of departed users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import REGISTRY, orphans
from watchdogd.config import Config
from watchdogd.model import Detection, ImplausibleData, Snapshot

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
Obj = dict[str, Any]
CLUSTERS = ("c1", "c2", "c3")


def ts(delta: timedelta) -> str:
    return (NOW - delta).replace(tzinfo=None).isoformat(timespec="microseconds")


def volume(vid: str, *, status: str = "available", name: str | None = None,
           age: timedelta = timedelta(days=10), metadata: dict[str, str] | None = None,
           attached: bool = False) -> Obj:
    return {"id": vid, "name": name if name is not None else f"pvc-{vid}", "status": status,
            "size": 10, "created_at": ts(age), "updated_at": ts(age), "metadata": metadata or {},
            "attachments": [{"attachment_id": "a", "server_id": "s"}] if attached else []}


def pv(name: str, vid: str | None, *, phase: str = "Bound", in_tree: bool = False) -> Obj:
    spec: Obj = {"persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"namespace": "jhub", "name": "claim-x"}}
    if vid is not None:
        spec["cinder" if in_tree else "csi"] = ({"volumeID": vid} if in_tree
                                               else {"volumeHandle": vid})
    return {"metadata": {"name": name}, "spec": spec, "status": {"phase": phase}}


def pvc(name: str, *, user: str | None = None, labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "namespace": "jhub", "labels": labels or {}}
    if user:
        meta["annotations"] = {"hub.jupyter.org/username": user}
    return {"metadata": meta, "spec": {"volumeName": f"pv-{name}"}, "status": {"phase": "Bound"}}


def snapshot(vols: list[Obj], pvs: dict[str, list[Obj]] | None = None, *,
             pvcs: list[Obj] | None = None, users: list[str] | None = None,
             marks: dict[str, datetime] | None = None,
             cloud_now: datetime | None = NOW, **check: Any) -> Snapshot:
    hubs = (orphans.HubRef("main", "c1", "jhub", "kubespawner"),)
    settings = orphans.TargetSettings("js2", "js2", CLUSTERS, hubs, orphans.Settings(**check))
    obs: dict[str, Any] = {"volumes": {"items": vols, "pages": 1,
                                       "cloud_now": cloud_now.isoformat() if cloud_now else None},
                           "pvcs:c1": pvcs or [],
                           "hub_db:main": {"users": users if users is not None else ["alice"],
                                           "running": []}}
    for cluster in CLUSTERS:
        obs[f"pvs:{cluster}"] = (pvs or {}).get(cluster, [])
        obs.setdefault(f"pvcs:{cluster}", [])
    return Snapshot("orphans", "js2", obs, {}, settings, marks or {})


def kinds(detection: Detection, kind: str) -> dict[str, Any]:
    return {f.subject: f for f in detection.findings if f.kind == kind}


def test_targets_one_per_cloud_and_per_loose_cluster() -> None:
    config = Config.model_validate({
        "clusters": {"c1": {}, "c2": {}, "lone": {}},
        "hubs": {"main": {"cluster": "c1", "api_url": "http://hub:8081/hub/api"}},
        "clouds": {"js2": {"cloud": "js2", "clusters": ["c1", "c2"]},
                   "empty": {"cloud": "other"}},
    })
    by_name = {t.name: t for t in REGISTRY["orphans"].targets_for(config)}
    assert set(by_name) == {"js2", "lone"}  # a cloud without clusters gets no verdict
    keys = {n.key for n in by_name["js2"].needs}
    assert keys == {"volumes", "pvs:c1", "pvs:c2", "pvcs:c1", "pvcs:c2", "hub_db:main"}
    assert {n.key for n in by_name["lone"].needs} == {"pvs:lone", "pvcs:lone"}


def test_union_over_clusters_by_handle_in_tree_id_and_name() -> None:
    vols = [volume("v1"), volume("v2"), volume("v3"), volume("v4", name="pvc-by-name"),
            volume("v5"), volume("v6", name="boot-disk")]
    pvs = {"c1": [pv("pvc-v1", "v1")], "c2": [pv("legacy", "v2", in_tree=True)],
           "c3": [pv("pvc-by-name", None), pv("pvc-other", "v3")]}
    found = kinds(orphans.detect(snapshot(vols, pvs), NOW), "orphan-volume")
    assert set(found) == {"v5"}  # v6 is not a pvc-* volume


def test_young_volume_is_no_verdict() -> None:
    vols = [volume("v1", age=timedelta(minutes=5)), volume("v2")]
    found = kinds(orphans.detect(snapshot(vols, {"c1": [pv("x", "v2")]}), NOW),
                  "orphan-volume")
    assert found == {}


def test_pvs_that_match_nothing_of_this_cloud_are_implausible() -> None:
    vols = [volume("v1"), volume("v2")]
    with pytest.raises(ImplausibleData, match="clusters right"):
        orphans.detect(snapshot(vols, {"c1": [pv("p", "elsewhere")]}), NOW)


def test_auth_failure_is_no_verdict() -> None:
    snap = snapshot([])
    snap.observations["volumes"] = {"auth_error": "Keystone rejected"}
    with pytest.raises(ImplausibleData, match="Keystone rejected"):
        orphans.detect(snap, NOW)


def test_first_sighting_plans_a_quarantine_with_the_date() -> None:
    vols = [volume("v1"), volume("keep")]
    detection = orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}), NOW)
    finding = kinds(detection, "orphan-volume")["v1"]
    assert finding.action is not None and finding.action.name == "quarantine"
    assert not finding.action.destructive
    assert finding.action.params["key"] == "watchdogd-orphaned-since"
    assert finding.action.params["value"] == "2026-11-22T03:00:00Z"
    assert "orphan:v1" in detection.marks


def test_attached_orphan_is_reported_but_never_touched() -> None:
    vols = [volume("v1", status="in-use", attached=True), volume("keep")]
    finding = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}), NOW),
                    "orphan-volume")["v1"]
    assert finding.action is None and "not quarantined" in finding.message


def quarantined(vid: str, days: int) -> Obj:
    # Writing the mark is the volume's last update.
    return volume(vid, age=timedelta(days=days), metadata={
        "watchdogd-orphaned-since": (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")})


def test_quarantined_volume_waits_for_both_dates() -> None:
    vols = [quarantined("v1", 20), volume("keep")]
    pvs = {"c1": [pv("k", "keep")]}
    # Our own memory only started 3 days ago (state lost): not yet.
    young = orphans.detect(snapshot(vols, pvs, marks={"orphan:v1": NOW - timedelta(days=3)}),
                           NOW)
    finding = kinds(young, "orphan-volume")["v1"]
    assert finding.action is None and "deletable once" in finding.message
    old = orphans.detect(snapshot(vols, pvs, marks={"orphan:v1": NOW - timedelta(days=15)}),
                         NOW)
    finding = kinds(old, "orphan-volume")["v1"]
    assert finding.action is not None and finding.action.name == "delete-orphan-volume"
    assert finding.action.destructive
    assert finding.action.params["quarantine_value"] == vols[0]["metadata"][
        "watchdogd-orphaned-since"]
    assert finding.action.before["volume"]["id"] == "v1"


def test_delete_budget_takes_the_oldest_quarantine_first() -> None:
    vols = [quarantined(f"v{i}", 20 + i) for i in range(4)] + [volume("keep")]
    marks = {f"orphan:v{i}": NOW - timedelta(days=30) for i in range(4)}
    found = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}, marks=marks,
                                          delete_max_per_pass=2), NOW), "orphan-volume")
    deleting = {s for s, f in found.items() if f.action is not None}
    assert deleting == {"v3", "v2"}
    assert "delete_max_per_pass" in found["v0"].message


def test_unparsable_quarantine_mark_is_left_alone() -> None:
    vols = [volume("v1", metadata={"watchdogd-orphaned-since": "soon"}), volume("keep")]
    finding = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}), NOW),
                    "orphan-volume")["v1"]
    assert finding.action is None


def test_released_and_failed_pvs() -> None:
    vols = [volume("v1"), volume("v2")]
    pvs = {"c2": [pv("pvc-v1", "v1", phase="Released"), pv("pvc-v2", "v2", phase="Failed"),
                  pv("ok", None)]}
    found = kinds(orphans.detect(snapshot(vols, pvs), NOW), "released-pv")
    assert set(found) == {"c2/pvc-v1", "c2/pvc-v2"}
    assert found["c2/pvc-v1"].evidence["volume"]["id"] == "v1"
    assert found["c2/pvc-v1"].action is None


def test_extra_pvcs_of_departed_users() -> None:
    claims = [
        pvc("postgres-alice"),                       # alice exists
        pvc("postgres-bob"),                         # bob is gone
        pvc("postgres-user-email-com---0925f997"),   # slug of an existing user
        pvc("scratch-1", user="carol", labels={"component": "extra-pvc"}),  # gone, by label
        pvc("scratch-2", labels={"component": "extra-pvc"}),  # whose? no verdict
        pvc("claim-bob"),                            # the home claim is not an extra claim
    ]
    snap = snapshot([], pvcs=claims, users=["alice", "user@email.com"])
    found = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc")
    assert set(found) == {"c1/jhub/postgres-bob", "c1/jhub/scratch-1"}
    assert found["c1/jhub/scratch-1"].evidence["user"] == "carol"
    assert found["c1/jhub/postgres-bob"].action is None


def test_hub_without_users_but_with_extra_claims_is_implausible() -> None:
    snap = snapshot([], pvcs=[pvc("postgres-bob")], users=[])
    with pytest.raises(ImplausibleData, match="no users"):
        orphans.detect(snap, NOW)


def test_volumes_of_unconfigured_clusters_are_foreign_never_acted_on() -> None:
    vols = [volume("other", metadata={orphans.CSI_CLUSTER_KEY: "their-cluster"}),
            volume("pvmeta", metadata={orphans.CSI_PV_KEY: "pvc-elsewhere",
                                       orphans.CSI_PVC_KEY: "claim-bob"}),
            volume("ours", metadata={orphans.CSI_CLUSTER_KEY: "c2",
                                     orphans.CSI_PV_KEY: "pvc-gone"}),
            quarantined("oldforeign", 30) | {"metadata": {
                orphans.CSI_CLUSTER_KEY: "their-cluster",
                "watchdogd-orphaned-since": "2026-10-01T00:00:00Z"}},
            volume("keep")]
    marks = {"orphan:oldforeign": NOW - timedelta(days=30)}
    detection = orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}, marks=marks), NOW)
    foreign = kinds(detection, "foreign-volume")
    assert set(foreign) == {"other", "pvmeta", "oldforeign"}
    assert all(f.action is None for f in foreign.values())
    assert "their-cluster" in foreign["other"].message
    # A configured cluster's volume whose PV is gone is a real orphan.
    assert set(kinds(detection, "orphan-volume")) == {"ours"}


# -- two clocks: Cinder's ages on Cinder's clock, watchdogd's on its own ---------------------


def test_the_quarantine_mark_is_written_on_cinders_clock() -> None:
    cinder = NOW - timedelta(days=15)  # watchdogd's clock is 15 days ahead of Cinder's
    vols = [volume("v1", age=timedelta(days=16)), volume("keep")]
    finding = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]},
                                            cloud_now=cinder), NOW), "orphan-volume")["v1"]
    assert finding.action is not None and finding.action.name == "quarantine"
    assert finding.action.params["value"] == cinder.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {n.key for n in finding.action.verify} == {"volume", "pvs:c1", "pvs:c2", "pvs:c3"}


def test_watchdogd_ahead_of_cinder_cannot_age_a_quarantine() -> None:
    """The first round's failure: quarantined in one pass, deleted in the next."""
    cinder = NOW - timedelta(days=15)
    marked = cinder - timedelta(minutes=5)
    v1 = volume("v1", age=timedelta(days=40), metadata={
        "watchdogd-orphaned-since": marked.strftime("%Y-%m-%dT%H:%M:%SZ")})
    v1["updated_at"] = marked.replace(tzinfo=None).isoformat()
    marks = {"orphan:v1": NOW - timedelta(days=20)}  # even with a long own memory
    finding = kinds(orphans.detect(snapshot([v1, volume("keep")], {"c1": [pv("k", "keep")]},
                                            marks=marks, cloud_now=cinder), NOW),
                    "orphan-volume")["v1"]
    assert finding.action is None
    assert "deletable once Cinder's clock reaches" in finding.message


def test_cinder_ahead_of_watchdogd_cannot_age_a_quarantine_either() -> None:
    cinder = NOW + timedelta(days=15)  # Cinder's clock jumped: its mark looks 16 days old
    vols = [quarantined("v1", 1), volume("keep")]
    marks = {"orphan:v1": NOW - timedelta(days=2)}  # watchdogd has known it for 2 days
    finding = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}, marks=marks,
                                            cloud_now=cinder), NOW), "orphan-volume")["v1"]
    assert finding.action is None
    assert "watchdogd's reaches" in finding.message


def test_without_cinders_clock_nothing_is_quarantined_or_deleted() -> None:
    vols = [volume("v1"), quarantined("v2", 30), volume("keep")]
    marks = {"orphan:v2": NOW - timedelta(days=30)}
    found = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]}, marks=marks,
                                          cloud_now=None), NOW), "orphan-volume")
    assert found["v1"].action is None and "no Date header" in found["v1"].message
    assert found["v2"].action is None and "no Date header" in found["v2"].message


def _deletion() -> Any:
    vols = [quarantined("v1", 20), volume("keep")]
    found = kinds(orphans.detect(snapshot(vols, {"c1": [pv("k", "keep")]},
                                          marks={"orphan:v1": NOW - timedelta(days=15)}),
                                 NOW), "orphan-volume")
    finding = found["v1"]
    assert finding.action is not None and finding.action.name == "delete-orphan-volume"
    # A delete re-reads every configured cluster's whole PV list, not only the first one's.
    assert {n.key for n in finding.action.verify} == {"volume", "pvs:c1", "pvs:c2", "pvs:c3"}
    assert all(not dict(n.params).get("field_selector") for n in finding.action.verify
               if n.key.startswith("pvs:"))
    return finding, vols[0]


def test_a_delete_is_skipped_when_a_pv_now_references_the_volume() -> None:
    finding, vol = _deletion()
    reads = {"volume": vol, "pvs:c1": [], "pvs:c2": [pv("static-home", "v1")], "pvs:c3": []}
    reason = orphans.verify(finding, reads, NOW)
    assert reason == "PV static-home of cluster c2 now references volume v1"
    reads["pvs:c2"] = []
    assert orphans.verify(finding, reads, NOW) is None


def test_a_delete_is_skipped_when_the_volume_changed_or_went() -> None:
    finding, vol = _deletion()
    empty = {"pvs:c1": [], "pvs:c2": [], "pvs:c3": []}
    assert orphans.verify(finding, {"volume": None, **empty}, NOW) == "volume v1 no longer exists"
    attached = {**vol, "status": "in-use", "attachments": [{"server_id": "s"}]}
    assert "attached now" in (orphans.verify(finding, {"volume": attached, **empty}, NOW) or "")
    foreign = {**vol, "metadata": {**vol["metadata"],
                                   "cinder.csi.openstack.org/cluster": "other"}}
    assert "not configured" in (orphans.verify(finding, {"volume": foreign, **empty}, NOW) or "")


def _terminating(name: str, deleted: timedelta, *, finalizers: list[str] | None = None) -> Obj:
    claim = pvc(name)
    claim["metadata"]["deletionTimestamp"] = (NOW - deleted).strftime("%Y-%m-%dT%H:%M:%SZ")
    claim["metadata"]["finalizers"] = (["kubernetes.io/pvc-protection"] if finalizers is None
                                       else finalizers)
    return claim


def _pod(name: str, claim: str, namespace: str = "jhub") -> Obj:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}


def test_claims_stuck_terminating_name_the_pods_that_hold_them() -> None:
    claims = [_terminating("postgres-alice", timedelta(hours=2)),
              _terminating("fresh", timedelta(minutes=3)),  # younger than the limit
              _terminating("other-finalizer", timedelta(hours=2), finalizers=["x/y"]),
              _terminating("released", timedelta(hours=1))]
    snap = snapshot([], pvcs=claims, users=["alice"])
    first = orphans.detect(snap, NOW)
    # First the namespace's pods are asked for, nothing is judged without them.
    assert first.findings == [] and [n.key for n in first.lookups] == ["pods:c1/jhub"]
    snap.observations["pods:c1/jhub"] = [_pod("jupyter-alice", "postgres-alice"),
                                         _pod("db-alice", "postgres-alice"),
                                         _pod("other", "claim-bob")]
    found = kinds(orphans.detect(snap, NOW), "pvc-stuck-terminating")
    assert set(found) == {"c1/jhub/postgres-alice", "c1/jhub/released"}
    held = found["c1/jhub/postgres-alice"]
    assert held.evidence["pods"] == ["db-alice", "jupyter-alice"]
    assert "db-alice, jupyter-alice still mount it" in held.message
    assert found["c1/jhub/released"].evidence["pods"] == []
    assert all(f.action is None for f in found.values())  # reported only


def test_stuck_terminating_ages_on_the_api_servers_clock() -> None:
    claims = [_terminating("postgres-alice", timedelta(minutes=12))]
    snap = snapshot([], pvcs=claims, users=["alice"])
    snap.observations["pods:c1/jhub"] = []
    assert kinds(orphans.detect(snap, NOW), "pvc-stuck-terminating")
    # The API server's clock says only 5 minutes have passed: not stuck yet.
    snap.server_now["pvcs:c1"] = NOW - timedelta(minutes=7)
    assert not kinds(orphans.detect(snap, NOW), "pvc-stuck-terminating")


def _claim(name: str, user: str, *, mark: datetime | None = None, uid: str = "u-1") -> Obj:
    claim = pvc(name, user=user, labels={"component": "extra-pvc"})
    claim["metadata"]["uid"] = uid
    if mark is not None:
        claim["metadata"]["annotations"]["watchdogd-orphaned-since"] = mark.strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    return claim


def _bound_pv(claim: Obj, policy: str = "Delete") -> Obj:
    return {"metadata": {"name": claim["spec"]["volumeName"]},
            "spec": {"persistentVolumeReclaimPolicy": policy,
                     "claimRef": {"namespace": "jhub", "name": claim["metadata"]["name"],
                                  "uid": claim["metadata"]["uid"]}},
            "status": {"phase": "Bound"}}


def test_an_orphaned_extra_claim_is_marked_on_the_api_servers_clock() -> None:
    claim = _claim("scratch-bob", "bob")
    snap = snapshot([], pvcs=[claim], users=["alice"])
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is None  # no Date from the API server: no clock, no mark
    snap.server_now["pvcs:c1"] = NOW - timedelta(minutes=3)
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is not None and finding.action.name == "quarantine-extra-pvc"
    assert finding.action.params["value"] == "2026-11-22T02:57:00Z"
    assert finding.action.destructive is False


def _ready(**kw: Any) -> tuple[Snapshot, Obj]:
    claim = _claim("scratch-bob", "bob", mark=NOW - timedelta(days=15))
    pvs = {"c1": [_bound_pv(claim)]}
    snap = snapshot([], pvs, pvcs=[claim], users=["alice"],
                    marks={"extra-pvc:c1/jhub/scratch-bob:u-1": NOW - timedelta(days=15)}, **kw)
    snap.server_now["pvcs:c1"] = NOW
    return snap, claim


def test_delete_waits_for_both_clocks_and_for_no_pod_mounting_it() -> None:
    snap, _ = _ready()
    first = orphans.detect(snap, NOW)
    assert [n.key for n in first.lookups] == ["pods:c1/jhub"]
    snap.observations["pods:c1/jhub"] = [_pod("db-bob", "scratch-bob")]
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is None and "db-bob mount it" in finding.message
    snap.observations["pods:c1/jhub"] = [_pod("other", "scratch-carol")]
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is not None and finding.action.name == "delete-extra-pvc"
    assert finding.action.params["volume_name"] == "pv-scratch-bob"
    assert finding.action.before["claim"]["spec"]["volumeName"] == "pv-scratch-bob"
    assert finding.action.before["pv"]["reclaim_policy"] == "Delete"
    # watchdogd's own sighting is one day old (a new state file): it waits.
    snap.marks["extra-pvc:c1/jhub/scratch-bob:u-1"] = NOW - timedelta(days=1)
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is None
    # the API server's clock is 14 days behind the mark's: it waits too.
    snap, _ = _ready()
    snap.observations["pods:c1/jhub"] = []
    snap.server_now["pvcs:c1"] = NOW - timedelta(days=14)
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is None


def test_delete_is_verified_on_fresh_reads() -> None:
    snap, claim = _ready()
    snap.observations["pods:c1/jhub"] = []
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    pv = _bound_pv(claim)
    reads = {"claim": claim, "hub_db:main": {"users": ["alice"]}, "pods": [], "pv": pv}
    assert orphans.verify(finding, reads, NOW) is None
    assert "a user of the hub again" in str(orphans.verify(
        finding, {**reads, "hub_db:main": {"users": ["alice", "bob"]}}, NOW))
    assert "no users" in str(orphans.verify(finding, {**reads, "hub_db:main": {"users": []}},
                                            NOW))
    assert "mounted by pod(s) late" in str(orphans.verify(
        finding, {**reads, "pods": [_pod("late", "scratch-bob")]}, NOW))
    replaced = _claim("scratch-bob", "bob", mark=NOW - timedelta(days=15), uid="u-2")
    assert "replaced" in str(orphans.verify(finding, {**reads, "claim": replaced}, NOW))
    other = {**pv, "spec": {**pv["spec"], "claimRef": {"uid": "u-9"}}}
    assert "another claim" in str(orphans.verify(finding, {**reads, "pv": other}, NOW))


def test_an_ignored_extra_claim_is_never_marked_nor_deleted() -> None:
    """``watchdogd.io/ignore: "true"`` on the claim exempts both of its actions."""
    from watchdogd.config import ExclusionsConfig
    from watchdogd.policy import exclusion

    claim = _claim("scratch-bob", "bob")
    claim["metadata"]["annotations"]["watchdogd.io/ignore"] = "true"
    snap = snapshot([], pvcs=[claim], users=["alice"])
    snap.server_now["pvcs:c1"] = NOW
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is not None and finding.action.name == "quarantine-extra-pvc"
    assert exclusion(finding.action, ExclusionsConfig()) == 'annotated watchdogd.io/ignore: "true"'
    snap, ready = _ready()
    ready["metadata"]["annotations"]["watchdogd.io/ignore"] = "true"
    snap.observations["pods:c1/jhub"] = []
    [finding] = kinds(orphans.detect(snap, NOW), "orphan-extra-pvc").values()
    assert finding.action is not None and finding.action.name == "delete-extra-pvc"
    assert exclusion(finding.action, ExclusionsConfig()) is not None
