"""The credential check of the volumes check is its own finding and never blocks volume verdicts.

Listing the application credentials fails for reasons that say nothing about the volume lists
(Keystone refuses the listing, a token without a user); a cloud without Keystone
(``auth_type: none``) has nothing to list and is skipped by the source.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from watchdogd.checks import volumes
from watchdogd.config import CloudConfig
from watchdogd.model import Detection, Snapshot
from watchdogd.sources.openstack import OpenStackSource

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def ts(delta: timedelta) -> str:
    return (NOW - delta).replace(tzinfo=None).isoformat(timespec="microseconds")


def stuck_volume() -> dict[str, Any]:
    return {"id": "v1", "name": "pvc-v1", "status": "detaching", "size": 1,
            "created_at": ts(timedelta(days=3)), "updated_at": ts(timedelta(hours=5)),
            "multiattach": False, "metadata": {}, "attachments": []}


def snapshot(credentials: dict[str, Any], marks: dict[str, datetime] | None = None) -> Snapshot:
    settings = volumes.TargetSettings("js2", (), volumes.Settings(correlate_events=False))
    obs = {"volumes": {"items": [stuck_volume()], "pages": 1, "cloud_now": NOW.isoformat()},
           "attachments": {"items": [], "pages": 1}, "credentials": credentials}
    return Snapshot("volumes", "js2", obs, {}, settings, marks or {})


def kinds(detection: Detection) -> set[str]:
    return {f.kind for f in detection.findings}


def later(detection: Detection, credentials: dict[str, Any]) -> Detection:
    """The next pass, an hour on, with what this one marked."""
    marks = dict.fromkeys(detection.marks, NOW - timedelta(hours=1))
    return volumes.detect(snapshot(credentials, marks), NOW)


EXPIRING = {"items": [{"id": "id-wd", "name": "watchdogd", "expires_at": ts(-timedelta(days=3)),
                       "project_id": "p1"}], "user_id": "u", "in_use": "id-wd"}


def test_a_failed_listing_is_its_own_warning_and_verdicts_go_on() -> None:
    first = volumes.detect(snapshot({"items": [], "user_id": "u", "in_use": None}), NOW)
    for failure in ({"check_error": "list application credentials: 403 Forbidden"},
                    {"auth_error": "list application credentials: Keystone rejected it"}):
        detection = later(first, failure)
        assert kinds(detection) == {"volume-stuck", "credential-check-failed"}
        assert not detection.partial
        (check,) = [f for f in detection.findings if f.kind == "credential-check-failed"]
        assert check.severity.label == "warning" and check.subject == "js2"
        assert "Volume verdicts are not affected" in check.message
        (stuck,) = [f for f in detection.findings if f.kind == "volume-stuck"]
        assert stuck.action is not None and stuck.action.name == "reset-volume-status"


def test_credentials_seen_expiring_stay_reported_while_the_listing_fails() -> None:
    first = volumes.detect(snapshot(EXPIRING), NOW)
    (expiring,) = [f for f in first.findings if f.kind == "credential-expiring"]
    failing = later(first, {"check_error": "list application credentials: 503"})
    (kept,) = [f for f in failing.findings if f.kind == "credential-expiring"]
    assert (kept.key, kept.severity) == (expiring.key, expiring.severity)
    assert kept.evidence["in_use"] is True and "as last listed" in kept.message
    # Still failing a pass later: the memory is kept, not lost after one pass.
    again = later(failing, {"check_error": "list application credentials: 503"})
    assert "credential-expiring" in kinds(again)
    # Listed again without it (renewed): it goes away like any finding.
    renewed = later(again, {"items": [], "user_id": "u", "in_use": None})
    assert kinds(renewed) == {"volume-stuck"}


def test_rejected_volume_lists_are_still_the_only_verdict() -> None:
    snap = snapshot({"items": [], "user_id": "u", "in_use": None})
    snap.observations["volumes"] = {"auth_error": "list volumes: Keystone rejected"}
    detection = volumes.detect(snap, NOW)
    assert kinds(detection) == {"credential-invalid"} and detection.partial


def test_a_skipped_listing_makes_no_finding() -> None:
    first = volumes.detect(snapshot({"skipped": "auth_type none"}), NOW)
    assert kinds(first) == set()  # a first sighting of the stuck volume: no verdict yet
    assert kinds(later(first, {"skipped": "auth_type none"})) == {"volume-stuck"}


class FakeConn:
    def __init__(self, auth_type: str, user_id: str | None = None) -> None:
        self.config = SimpleNamespace(config={"auth_type": auth_type}, auth={})
        self.current_user_id = user_id


def source(conn: FakeConn) -> OpenStackSource:
    return OpenStackSource("js2", CloudConfig(cloud="js2"), connect=lambda _c: conn)


def test_the_source_skips_a_cloud_without_keystone() -> None:
    for auth_type in ("none", "noauth"):
        result = source(FakeConn(auth_type)).application_credentials()
        assert set(result) == {"skipped"} and auth_type in result["skipped"]


def test_the_source_returns_a_failed_listing_instead_of_raising() -> None:
    result = source(FakeConn("password", user_id=None)).application_credentials()
    assert result == {"check_error": "the token names no user: cannot list its credentials"}
