"""detect() of the volumes check on hand-built snapshots: ages, the ladder, events, credentials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import REGISTRY, volumes
from watchdogd.config import Config
from watchdogd.model import Detection, Snapshot

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
Obj = dict[str, Any]


def ts(delta: timedelta) -> str:
    """Cinder's naive UTC timestamp ``delta`` before NOW."""
    return (NOW - delta).replace(tzinfo=None).isoformat(timespec="microseconds")


def volume(vid: str, status: str = "available", *, age: timedelta = timedelta(hours=2),
           name: str | None = None, attached: list[Obj] | None = None) -> Obj:
    return {"id": vid, "name": name or f"pvc-{vid}", "status": status, "size": 1,
            "created_at": ts(timedelta(days=3)), "updated_at": ts(age), "multiattach": False,
            "metadata": {}, "attachments": [
                {"id": vid, "attachment_id": a["id"], "volume_id": vid,
                 "server_id": a["instance"], "host_name": "node-1"} for a in attached or []]}


def attachment(aid: str, vid: str, status: str = "attached") -> Obj:
    return {"id": aid, "status": status, "instance": f"inst-{aid}", "volume_id": vid,
            "attached_at": "", "detached_at": "", "attach_mode": "rw"}


def snapshot(vols: list[Obj], atts: list[Obj] | None = None, *,
             marks: dict[str, datetime] | None = None, credentials: Obj | None = None,
             pvs: list[Obj] | None = None, pvcs: list[Obj] | None = None,
             events: list[Obj] | None = None, cloud_now: datetime | None = NOW,
             **check: Any) -> Snapshot:
    settings = volumes.TargetSettings("js2", ("c1",), volumes.Settings(**check))
    obs: dict[str, Any] = {
        "volumes": {"items": vols, "pages": 1,
                    "cloud_now": cloud_now.isoformat() if cloud_now else None},
        "attachments": {"items": atts or [], "pages": 1},
        "credentials": credentials or {"items": [], "user_id": "u", "in_use": None},
        "pvs:c1": pvs or [], "pvcs:c1": pvcs or [],
        "events:c1:FailedAttachVolume": events or [], "events:c1:FailedMount": [],
    }
    return Snapshot("volumes", "js2", obs, {}, settings, marks or {})


def seen(d: Detection, kind: str | None = None) -> list[Any]:
    return [f for f in d.findings if kind is None or f.kind == kind]


def marks_of(snap: Snapshot, ago: timedelta) -> dict[str, datetime]:
    """Pretend the previous passes saw every condition of ``snap`` ``ago`` ago."""
    first = volumes.detect(snap, NOW)
    return dict.fromkeys(first.marks, NOW - ago)


def test_targets_share_kube_needs_with_orphans() -> None:
    config = Config.model_validate({
        "clusters": {"c1": {}, "c2": {}},
        "clouds": {"js2": {"cloud": "js2", "clusters": ["c1", "c2"]}},
    })
    (target,) = REGISTRY["volumes"].targets_for(config)
    keys = {n.key for n in target.needs}
    assert keys == {"volumes", "attachments", "credentials", "pvs:c1", "pvs:c2",
                    "events:c1:FailedAttachVolume", "events:c1:FailedMount",
                    "events:c2:FailedAttachVolume", "events:c2:FailedMount"}
    events = next(n for n in target.needs if n.key == "events:c1:FailedMount")
    assert dict(events.params) == {"kind": "Event", "field_selector": "reason=FailedMount"}
    with_claims = Config.model_validate({**config.model_dump(),
                                         "checks": {"volumes": {"read_claims": True}}})
    (target,) = REGISTRY["volumes"].targets_for(with_claims)
    assert {"pvcs:c1", "pvcs:c2"} <= {n.key for n in target.needs}


# -- stuck volumes: two clocks, and never a young reservation ---------------------------------


def test_first_sighting_is_no_verdict_even_if_cinder_says_old() -> None:
    snap = snapshot([volume("v1", "detaching", age=timedelta(hours=5))])
    detection = volumes.detect(snap, NOW)
    assert seen(detection) == []
    assert any(m.startswith("vol:v1:detaching:") for m in detection.marks)


def test_detaching_volume_seen_twice_is_reset_to_available() -> None:
    snap = snapshot([volume("v1", "detaching", age=timedelta(hours=5))])
    snap.marks = marks_of(snap, timedelta(minutes=3))
    (finding,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert finding.subject == "v1"
    assert finding.action is not None
    assert finding.action.name == "reset-volume-status"
    assert finding.action.params["status"] == "available"
    assert finding.action.params["observed_status"] == "detaching"
    assert finding.action.params["observed_updated_at"] == snap["volumes"]["items"][0][
        "updated_at"]
    assert finding.action.destructive and finding.action.before["volume"]["id"] == "v1"


def test_reset_to_in_use_when_an_attached_attachment_remains() -> None:
    att = attachment("a1", "v1", "attached")
    snap = snapshot([volume("v1", "detaching", attached=[att])], [att])
    snap.marks = marks_of(snap, timedelta(minutes=3))
    (finding,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert finding.action is not None and finding.action.params["status"] == "in-use"


def test_cinder_age_below_stuck_after_is_no_verdict() -> None:
    snap = snapshot([volume("v1", "attaching", age=timedelta(minutes=2))])
    snap.marks = marks_of(snap, timedelta(hours=1))
    assert seen(volumes.detect(snap, NOW)) == []


def test_young_reserved_volume_by_our_clock_is_never_judged() -> None:
    """Cinder's clock says hours (skew, or we just started); we have watched for a minute."""
    att = attachment("a1", "v1", "reserved")
    snap = snapshot([volume("v1", "reserved", age=timedelta(hours=3))], [att])
    snap.marks = marks_of(snap, timedelta(minutes=1))
    assert seen(volumes.detect(snap, NOW)) == []


def test_reserved_volume_without_attachment_is_reset_once_watched_long_enough() -> None:
    snap = snapshot([volume("v1", "reserved", age=timedelta(hours=3))])
    snap.marks = marks_of(snap, timedelta(minutes=6))
    (finding,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert finding.action is not None and finding.action.params["status"] == "available"


def test_a_changed_updated_at_restarts_our_clock() -> None:
    snap = snapshot([volume("v1", "reserved", age=timedelta(hours=3))])
    old_marks = marks_of(snap, timedelta(hours=1))
    moved = snapshot([volume("v1", "reserved", age=timedelta(minutes=10))])
    moved.marks = old_marks
    detection = volumes.detect(moved, NOW)
    assert seen(detection) == []
    assert not set(old_marks) & detection.marks  # the old condition is forgotten


def test_statuses_are_configurable() -> None:
    snap = snapshot([volume("v1", "error_deleting", age=timedelta(hours=3))],
                    stuck_statuses=["reserved"])
    snap.marks = marks_of(snap, timedelta(hours=1))
    assert seen(volumes.detect(snap, NOW)) == []


# -- attachments and the ladder ---------------------------------------------------------------


def test_reserved_beside_attached_is_deleted_first_and_no_reset_planned() -> None:
    good = attachment("a-good", "v1", "attached")
    dangling = attachment("a-dang", "v1", "reserved")
    snap = snapshot([volume("v1", "in-use", attached=[good])], [good, dangling])
    snap.marks = marks_of(snap, timedelta(minutes=10))
    detection = volumes.detect(snap, NOW)
    (stale,) = seen(detection, "attachment-stale")
    assert stale.subject == "a-dang"
    assert stale.action is not None and stale.action.name == "delete-attachment"
    assert stale.action.params == {
        "attachment_id": "a-dang", "volume_id": "v1", "observed_status": "reserved",
        "observed_volume_status": "in-use",
        "observed_volume_updated_at": snap["volumes"]["items"][0]["updated_at"]}
    assert stale.action.before["attachment"]["id"] == "a-dang"
    assert seen(detection, "volume-stuck") == []  # in-use is not a stuck status


def test_stuck_volume_waits_for_its_dangling_attachment() -> None:
    dangling = attachment("a1", "v1", "reserved")
    snap = snapshot([volume("v1", "reserved", age=timedelta(hours=2))], [dangling])
    snap.marks = marks_of(snap, timedelta(hours=1))
    detection = volumes.detect(snap, NOW)
    (stale,) = seen(detection, "attachment-stale")
    (stuck,) = seen(detection, "volume-stuck")
    assert stale.action is not None and stale.action.name == "delete-attachment"
    assert stuck.action is None
    assert "deleted first" in stuck.message


def test_lone_reserved_attachment_needs_the_longer_limit() -> None:
    young = attachment("a1", "v1", "reserved")
    snap = snapshot([volume("v1", "reserved", age=timedelta(minutes=20))], [young])
    snap.marks = marks_of(snap, timedelta(minutes=20))
    detection = volumes.detect(snap, NOW)
    assert seen(detection, "attachment-stale") == []
    (stuck,) = seen(detection, "volume-stuck")
    assert stuck.action is None and "in flight" in stuck.message


def test_an_attaching_attachment_blocks_the_reset() -> None:
    att = attachment("a1", "v1", "attaching")
    snap = snapshot([volume("v1", "attaching", age=timedelta(hours=2))], [att])
    snap.marks = marks_of(snap, timedelta(hours=1))
    (stuck,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert stuck.action is None


def test_lists_read_a_moment_apart_that_disagree_are_judged_next_pass() -> None:
    att = attachment("a1", "v1", "reserved")
    snap = snapshot([volume("v1", "available", age=timedelta(hours=2))], [att])
    snap.marks = marks_of(snap, timedelta(hours=1))
    assert seen(volumes.detect(snap, NOW)) == []


def test_attachment_of_an_unlisted_volume_is_ignored() -> None:
    snap = snapshot([], [attachment("a1", "v-new", "reserved")])
    assert volumes.detect(snap, NOW).findings == []


# -- events -----------------------------------------------------------------------------------


def pv(name: str, vid: str, claim: str = "claim-alice") -> Obj:
    return {"metadata": {"name": name},
            "spec": {"csi": {"driver": "cinder.csi.openstack.org", "volumeHandle": vid},
                     "claimRef": {"namespace": "jhub", "name": claim}},
            "status": {"phase": "Bound"}}


def pvc(user: str, slug: str | None = None) -> Obj:
    return {"metadata": {"name": f"claim-{slug or user}", "namespace": "jhub",
                         "annotations": {"hub.jupyter.org/username": user}}}


def event(pv_name: str, *, ago: timedelta = timedelta(minutes=2), count: int = 4,
          reason: str = "FailedAttachVolume") -> Obj:
    return {"metadata": {"name": "e", "namespace": "jhub"},
            "involvedObject": {"kind": "Pod", "namespace": "jhub", "name": "jupyter-alice"},
            "reason": reason, "count": count,
            "lastTimestamp": (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": f'AttachVolume.Attach failed for volume "{pv_name}" : reserved'}


def test_events_name_the_user_on_the_stuck_volume() -> None:
    vol = volume("v1", "reserved", age=timedelta(hours=2), name="pvc-abc")
    snap = snapshot([vol], pvs=[pv("pvc-abc", "v1")], pvcs=[pvc("alice")],
                    events=[event("pvc-abc")])
    snap.marks = marks_of(snap, timedelta(hours=1))
    (stuck,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert stuck.severity.label == "critical"
    assert "alice" in stuck.message and "jhub/jupyter-alice" in stuck.message
    (entry,) = stuck.evidence["affected"]
    assert entry["user"] == "alice" and entry["pvc"] == "claim-alice" and entry["count"] == 4


def test_read_claims_gives_the_exact_username() -> None:
    slug = "user-email-com---0925f997"
    vol = volume("v1", "reserved", age=timedelta(hours=2), name="pvc-abc")
    snap = snapshot([vol], pvs=[pv("pvc-abc", "v1", claim=f"claim-{slug}")],
                    pvcs=[pvc("user@email.com", slug)], events=[event("pvc-abc")],
                    read_claims=True)
    snap.marks = marks_of(snap, timedelta(hours=1))
    (stuck,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert stuck.evidence["affected"][0]["user"] == "user@email.com"
    snap.settings = volumes.TargetSettings("js2", ("c1",), volumes.Settings())
    (stuck,) = seen(volumes.detect(snap, NOW), "volume-stuck")
    assert stuck.evidence["affected"][0]["user"] == slug  # from the claim's name


def test_events_on_a_healthy_looking_volume_are_attach_failed() -> None:
    att = attachment("a1", "v1", "attached")
    vol = volume("v1", "in-use", name="pvc-abc", attached=[att])
    snap = snapshot([vol], [att], pvs=[pv("pvc-abc", "v1")], pvcs=[pvc("alice")],
                    events=[event("pvc-abc", count=7)])
    (failed,) = seen(volumes.detect(snap, NOW), "volume-attach-failed")
    assert failed.subject == "v1" and failed.action is None
    assert "alice" in failed.message and "node-1" in failed.message


def test_events_on_an_available_volume_are_old_news() -> None:
    vol = volume("v1", "available", name="pvc-abc")
    snap = snapshot([vol], pvs=[pv("pvc-abc", "v1")], events=[event("pvc-abc", count=9)])
    assert seen(volumes.detect(snap, NOW)) == []


def test_old_or_rare_events_are_ignored() -> None:
    att = attachment("a1", "v1", "attached")
    vol = volume("v1", "in-use", name="pvc-abc", attached=[att])
    snap = snapshot([vol], [att], pvs=[pv("pvc-abc", "v1")], pvcs=[pvc("alice")],
                    events=[event("pvc-abc", ago=timedelta(hours=3)),
                            event("pvc-abc", count=1)])
    assert seen(volumes.detect(snap, NOW)) == []


# -- credentials ------------------------------------------------------------------------------


def creds(*items: tuple[str, str | None]) -> Obj:
    return {"items": [{"id": f"id-{n}", "name": n, "expires_at": e} for n, e in items],
            "user_id": "u", "in_use": "id-watchdogd"}


def test_credential_thresholds() -> None:
    snap = snapshot([], credentials=creds(
        ("forever", None),
        ("far", ts(-timedelta(days=90))),
        ("soon", ts(-timedelta(days=20))),
        ("watchdogd", ts(-timedelta(days=3))),
        ("gone", ts(timedelta(days=2)))))
    found = {f.subject: f for f in seen(volumes.detect(snap, NOW), "credential-expiring")}
    assert set(found) == {"soon", "watchdogd", "gone"}
    assert found["soon"].severity.label == "warning"
    assert found["watchdogd"].severity.label == "critical"
    assert "watchdogd itself uses" in found["watchdogd"].message
    assert found["gone"].severity.label == "critical" and "expired" in found["gone"].message
    assert found["soon"].evidence["days_left"] == pytest.approx(20, abs=0.1)


def test_auth_failure_is_the_only_verdict() -> None:
    stuck = volume("v1", "detaching", age=timedelta(hours=5))
    snap = snapshot([stuck])
    snap.marks = marks_of(snap, timedelta(hours=1))
    snap.observations["attachments"] = {"auth_error": "list attachments: Keystone rejected"}
    detection = volumes.detect(snap, NOW)
    (only,) = detection.findings
    assert only.kind == "credential-invalid" and only.subject == "js2"
    assert only.severity.label == "critical" and only.action is None
    assert detection.marks == set(snap.marks)  # what earlier passes saw is kept, unjudged


def test_updated_at_is_aged_on_cinders_clock_not_watchdogds() -> None:
    """watchdogd 15 days ahead: a volume detaching for 2 minutes by Cinder's clock is young."""
    cinder = NOW - timedelta(days=15)
    vol = volume("v1", "detaching", age=timedelta(days=15, minutes=2))
    snap = snapshot([vol], cloud_now=cinder)
    snap.marks = marks_of(snap, timedelta(minutes=3))
    assert seen(volumes.detect(snap, NOW), "volume-stuck") == []
    # The same volume truly detaching for 5 hours on Cinder's clock is stuck, whatever
    # watchdogd's clock says.
    old = snapshot([volume("v1", "detaching", age=timedelta(days=15, hours=5))],
                   cloud_now=cinder)
    old.marks = marks_of(old, timedelta(minutes=3))
    assert len(seen(volumes.detect(old, NOW), "volume-stuck")) == 1


def test_without_cinders_clock_watchdogds_own_sightings_must_span_stuck_after() -> None:
    snap = snapshot([volume("v1", "detaching", age=timedelta(hours=5))], cloud_now=None)
    snap.marks = marks_of(snap, timedelta(minutes=3))
    assert seen(volumes.detect(snap, NOW), "volume-stuck") == []
    snap.marks = marks_of(snap, timedelta(hours=2))
    assert len(seen(volumes.detect(snap, NOW), "volume-stuck")) == 1
