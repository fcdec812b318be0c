"""The state store on a real PostgreSQL server."""

from __future__ import annotations

import pytest

from tests import store_cases
from tests.peers.postgres import RealPostgres
from watchdogd.store import Store

pytestmark = pytest.mark.integration


def test_store_on_postgresql(postgres: RealPostgres) -> None:
    store = Store(postgres.create_database("wd_store"))
    store_cases.lifecycle(store)
    store_cases.audit_and_outbox(store)
    store_cases.marks(store)
    store_cases.disk_map_history(store)
    store.close()


def test_upgrade_from_schema_1_on_postgresql(postgres: RealPostgres) -> None:
    store_cases.upgrade_from_version_1(postgres.create_database("wd_upgrade"))


def test_upgrade_from_schema_4_on_postgresql(postgres: RealPostgres) -> None:
    store_cases.upgrade_from_version_4(postgres.create_database("wd_upgrade4"))


def test_one_actor_per_postgresql_state(postgres: RealPostgres) -> None:
    """Two replicas on one database: one holds the advisory lock, the other is refused."""
    import sqlalchemy as sa

    url = postgres.create_database("wd_lock")
    leader, standby = Store(url), Store(url)
    other_url = postgres.create_database("wd_lock_other")
    with leader.pass_lock() as hold:
        assert hold.held and hold.fresh
        assert leader.lock_held()
        with standby.pass_lock() as refused:
            assert not refused.held
            assert "another watchdogd holds the lock" in (refused.reason or "")
        # Advisory locks belong to one database: another watchdogd's state is unaffected.
        with Store(other_url).pass_lock() as elsewhere:
            assert elsewhere.held
        # The lock goes with its session: a dropped connection must stop the actions.
        with standby.engine.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid <> pg_backend_pid()"))
            conn.commit()
        assert not leader.lock_held()
    with standby.pass_lock() as taken:
        assert taken.held
    leader.close()
    standby.close()


def test_a_finding_postgresql_refuses_is_set_aside_and_the_others_are_tracked(
        postgres: RealPostgres) -> None:
    from datetime import UTC, datetime, timedelta

    from watchdogd.model import Finding, Severity

    store = Store(postgres.create_database("wd_findings_aside"))
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    good = Finding("sessions", "main", "stale-session", "alice", Severity.CRITICAL, "m")
    # A kind longer than its VARCHAR(64): nothing escapes that, PostgreSQL refuses it.
    bad = Finding("sessions", "main", "k" * 100, "bob", Severity.CRITICAL, "m")
    tracked, _ = store.track("sessions", "main", [good, bad], now, announce_after=1,
                             repeat_after=timedelta(hours=1))
    assert [t.finding.subject for t in tracked] == ["alice", "bob"]  # both in the report
    assert [f["subject"] for f in store.findings()] == ["alice"]  # the good one is stored
    store.close()


def test_the_weekly_digest_is_claimed_once_on_postgresql(postgres: RealPostgres) -> None:
    """Two replicas at once on one database: one queues the week's digest, the other nothing."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    url = postgres.create_database("wd_digest")
    replicas = [Store(url), Store(url)]
    now = datetime(2026, 12, 7, 8, tzinfo=UTC)
    row = {"finding_key": "digest/2026-W50", "event": "digest", "severity": 1,
           "title": "t", "body": "b", "destination": "d1"}
    with ThreadPoolExecutor(2) as pool:
        claims = sorted(pool.map(lambda s: s.claim_once("digest/2026-W50", [row], now),
                                 replicas))
    assert claims == [False, True]
    assert [r["event"] for r in replicas[0].outbox()] == ["digest"]
    assert replicas[1].claimed_at("digest/2026-W50") == now
    assert replicas[1].claim_once("digest/2026-W51", [row], now)
    for store in replicas:
        store.close()
