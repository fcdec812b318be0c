"""Store behaviour shared by the SQLite (unit) and PostgreSQL (integration) tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from watchdogd import store as store_module
from watchdogd.model import Action, Finding, Severity
from watchdogd.store import SCHEMA_VERSION, Store

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def finding(subject: str, severity: Severity = Severity.WARNING) -> Finding:
    return Finding("sessions", "main", "stale-session", subject, severity, f"{subject} broken",
                   {"why": subject})


def lifecycle(store: Store) -> None:
    """Sightings, announcement after confirmation, escalation, reminder, resolution."""
    repeat = timedelta(hours=6)
    tracked, resolved = store.track("sessions", "main", [finding("alice")], T0,
                                    announce_after=2, repeat_after=repeat)
    assert [(t.sightings, t.event) for t in tracked] == [(1, None)]
    tracked, _ = store.track("sessions", "main", [finding("alice")], T0 + timedelta(minutes=1),
                             announce_after=2, repeat_after=repeat)
    assert [(t.sightings, t.event, t.first_seen) for t in tracked] == [(2, "new", T0)]
    tracked, _ = store.track("sessions", "main", [finding("alice", Severity.CRITICAL)],
                             T0 + timedelta(minutes=2), announce_after=2, repeat_after=repeat)
    assert tracked[0].event == "escalated"
    tracked, _ = store.track("sessions", "main", [finding("alice", Severity.CRITICAL)],
                             T0 + timedelta(hours=7), announce_after=2, repeat_after=repeat)
    assert tracked[0].event == "reminder"
    tracked, resolved = store.track("sessions", "main", [], T0 + timedelta(hours=8),
                                    announce_after=2, repeat_after=repeat)
    assert tracked == []
    assert [(r.key, r.notified) for r in resolved] == [("sessions/main/stale-session/alice",
                                                        True)]
    # Other targets are untouched by this target's pass.
    assert store.findings(status="open") == []
    [row] = store.findings(status="resolved")
    assert row["first_seen"] == T0
    # A reappearance is a new occurrence.
    tracked, _ = store.track("sessions", "main", [finding("alice")], T0 + timedelta(hours=9),
                             announce_after=1, repeat_after=repeat)
    assert (tracked[0].sightings, tracked[0].event) == (1, "new")


def audit_and_outbox(store: Store) -> None:
    action = Action("stop-server", "hubapi", "main", "stop_server", {"user": "alice"},
                    before={"pod": None})
    action_id = store.begin_action("p1", finding("alice"), action, T0)
    [record] = store.interrupted_actions()
    assert (record.id, record.status, record.params) == (action_id, "started", {"user": "alice"})
    store.finish_action(action_id, "done", "stopped (204)", T0 + timedelta(seconds=1))
    assert store.interrupted_actions() == []
    assert store.actions_since(T0 - timedelta(minutes=1)) == 1
    assert store.actions_since(T0 + timedelta(minutes=1)) == 0
    rows = [{"finding_key": "k", "event": e, "severity": Severity.WARNING, "title": e,
             "body": "b", "destination": "d1"} for e in ("new", "resolved")]
    store.enqueue(rows, T0)
    first, second = store.pending_notices("d1", T0)
    assert (first.event, second.event) == ("new", "resolved")
    store.mark_failed(first.id, "down", T0 + timedelta(minutes=5))
    # The failed notice blocks the later one until its retry time: order is kept.
    assert store.pending_notices("d1", T0 + timedelta(minutes=1)) == []
    store.mark_delivered(first.id, T0 + timedelta(minutes=5))
    [left] = store.pending_notices("d1", T0 + timedelta(minutes=5))
    assert left.event == "resolved"


def marks(store: Store) -> None:
    store.set_marks("sessions", "main", {"a", "b"}, T0)
    store.set_marks("sessions", "main", {"b", "c"}, T0 + timedelta(minutes=1))
    assert store.marks("sessions", "main") == {"b": T0, "c": T0 + timedelta(minutes=1)}


def upgrade_from_version_1(url: str) -> None:
    """A schema-1 database (as 0.0.x wrote it) is brought forward without loss."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        store_module.MIGRATIONS[1](conn)
        conn.execute(sa.insert(store_module.meta_table).values(key="schema_version", value="1"))
        conn.execute(sa.insert(store_module.findings_table).values(
            key="sessions/main/stale-session/old", check_name="sessions", target="main",
            kind="stale-session", subject="old", severity=20, message="m", evidence="{}",
            status="open", first_seen=T0, last_seen=T0, sightings=3))
    engine.dispose()
    store = Store(url)
    assert store.schema_version() == SCHEMA_VERSION
    [row] = store.findings()
    assert (row["subject"], row["sightings"]) == ("old", 3)
    store.set_marks("sessions", "main", {"x"}, T0)  # a schema-2 table now exists
    store.close()
