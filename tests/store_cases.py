"""Store behaviour shared by the SQLite (unit) and PostgreSQL (integration) tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from watchdogd import store as store_module
from watchdogd.model import Action, ClaimRecord, Finding, Severity
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


def claim(name: str, volume: str, *, user: str | None = "alice", size: str = "10Gi",
          cluster: str = "c1") -> ClaimRecord:
    return ClaimRecord(cluster, "jhub", name, f"pv-{volume}", volume, user, "annotation", size,
                       "Delete", {"access_modes": ["ReadWriteOnce"], "fs_type": "ext4"})


def disk_rows(store: Store) -> int:
    with store.engine.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(
            store_module.disks_table)).scalar_one())


def disk_map_history(store: Store) -> None:
    """A change is a new version, an unchanged pass writes nothing, and --at reads the past."""
    t1, t2, t3, t4 = (T0 + timedelta(minutes=m) for m in (0, 5, 10, 15))
    first = [claim("claim-alice", "v1"), claim("claim-bob", "v2", user="bob")]
    assert store.record_disks("orphans", "cloud", first, t1) == (2, 0)
    # The same map again: compared, not written.
    assert store.record_disks("orphans", "cloud", first, t2) == (0, 0)
    assert disk_rows(store) == 2
    # bob's claim grew, alice's is gone, carol's is new; another target is not touched.
    store.record_disks("orphans", "other", [claim("claim-zed", "v9", user="zed")], t2)
    later = [claim("claim-bob", "v2", user="bob", size="20Gi"),
             claim("claim-carol", "v3", user="carol")]
    assert store.record_disks("orphans", "cloud", later, t3) == (2, 2)
    assert disk_rows(store) == 5
    now = {(r["target"], r["claim"]): r for r in store.disks()}
    assert sorted(now) == [("cloud", "claim-bob"), ("cloud", "claim-carol"),
                           ("other", "claim-zed")]
    assert now[("cloud", "claim-bob")]["size"] == "20Gi"
    assert now[("cloud", "claim-bob")]["valid_from"] == t3
    before = {r["claim"]: r for r in store.disks(at=t2) if r["target"] == "cloud"}
    assert sorted(before) == ["claim-alice", "claim-bob"]
    assert before["claim-bob"]["size"] == "10Gi" and before["claim-bob"]["valid_to"] == t3
    assert before["claim-alice"]["manifest"] == {"access_modes": ["ReadWriteOnce"],
                                                 "fs_type": "ext4"}
    assert store.disks(at=T0 - timedelta(minutes=1)) == []
    assert store.disks_recorded_since() == t1
    # A pass that sees no claim at all (the tear-down) is a version too: the map is empty.
    assert store.record_disks("orphans", "cloud", [], t4) == (0, 2)
    assert [r["claim"] for r in store.disks()] == ["claim-zed"]
    assert sorted(r["claim"] for r in store.disks(at=t3 + timedelta(seconds=1))
                  if r["target"] == "cloud") == ["claim-bob", "claim-carol"]


def upgrade_from_version_4(url: str) -> None:
    """A schema-4 database gets the disk map table (5) and the acknowledge links' nonces (6);
    its findings stay."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for step in (1, 2, 3, 4):
            store_module.MIGRATIONS[step](conn)
        conn.execute(sa.insert(store_module.meta_table).values(key="schema_version", value="4"))
        conn.execute(sa.insert(store_module.findings_table).values(
            key="orphans/c/released-pv/x", check_name="orphans", target="c",
            kind="released-pv", subject="x", severity=20, message="m", evidence="{}",
            status="open", first_seen=T0, last_seen=T0, sightings=2))
    engine.dispose()
    store = Store(url)
    assert store.schema_version() == SCHEMA_VERSION == 6
    assert {"disks", "ack_links"} <= set(sa.inspect(store.engine).get_table_names())
    assert [r["subject"] for r in store.findings()] == ["x"]
    assert store.record_disks("orphans", "c", [claim("claim-alice", "v1")], T0) == (1, 0)
    assert [r["user"] for r in store.disks()] == ["alice"]
    store.close()
