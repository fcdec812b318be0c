"""The state store under stress: a clear error or a clean recovery, never silent loss.

* a corrupt or truncated SQLite file: ``watchdogd check`` stops with a one-line ``state:``
  error, acts on nothing, and leaves the file as it found it (never a fresh empty store);
* a locked SQLite file: a short lock is waited out; a long one is a clear error before any
  action; a lock that starts between an action's intent and its result leaves the intent,
  which is reported ``interrupted`` (and re-confirmed) once the store is back;
* PostgreSQL restarting or stopping in the middle of a pass: the same, over the network;
* a schema from an older version is brought forward with every open finding, audit row
  and queued notice; a newer schema, or tables that are not ours, are refused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.peers.postgres import RealPostgres
from tests.safety.faults import LockFault
from tests.safety.harness import Driver
from tests.safety.procs import check, launch
from tests.safety.receiver import Receiver
from tests.safety.sessions_world import SafeWorld, SessionsModel
from tests.safety.stats import STATS
from watchdogd import store as store_module
from watchdogd.sim.world import SimClock
from watchdogd.store import Store, StoreError

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


@pytest.fixture
def fast_sqlite_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store waits 10 s for a lock; the same code path with 1 s keeps the suite quick."""
    real = store_module._sqlite_pragmas

    def pragmas(dbapi_conn: Any, record: Any) -> None:
        real(dbapi_conn, record)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=1000")
        cursor.close()

    monkeypatch.setattr(store_module, "_sqlite_pragmas", pragmas)
    monkeypatch.setattr(store_module, "_connect_args",
                        lambda url: {"timeout": 1} if url.get_backend_name() == "sqlite"
                        else {"connect_timeout": 3})


def stale_world(tmp_path: Path, **kwargs: Any) -> SafeWorld:
    world = SafeWorld(tmp_path / "world", timeout="5s", **kwargs).start()
    world.healthy(users=4, running=3)
    world.stale_session("zed")
    return world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SafeWorld]:
    w = stale_world(tmp_path)
    try:
        yield w
    finally:
        w.stop()


# -- a corrupt file ----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    """Cut a real state database in half (a disk that filled up, a bad restore)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    page = 4096
    path.write_bytes(data[: max(page, (len(data) // 2) // page * page)])
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_state_file_is_a_clear_error_and_nothing_is_done(
        world: SafeWorld, damage: str) -> None:
    state = world.state_path
    first = check(world.config_path)  # a real store with a finding and a pass in it
    assert first.code == 0, first.stderr
    # Grow it past one page of each table, as a store that has run for a while.
    store = Store(f"sqlite:///{state}")
    for i in range(200):
        store.record_pass(f"filler-{i}", "sessions", "main", T0, T0, "ok", "x" * 200)
    store.close()
    if damage == "garbage":
        state.write_bytes(b"this is not a database, it was overwritten " * 300)
        for suffix in ("-wal", "-shm"):
            state.with_name(state.name + suffix).unlink(missing_ok=True)
    else:
        _truncate(state)
    damaged = state.read_bytes()
    run = check(world.config_path)
    STATS.add("store_faults")
    assert run.code in (2, 78), (run.code, run.stderr)
    assert "watchdogd: state: state database" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert world.hub.is_running("zed")  # confirmed before, yet nothing was done
    assert not [m for m, p in world.hub.requests if m == "DELETE"]
    assert state.read_bytes() == damaged  # never replaced by a fresh, empty store


# -- a locked file -----------------------------------------------------------------------------


def driver_for(world: SafeWorld, url: str | None = None,
               clock: SimClock | None = None) -> tuple[Driver, SessionsModel]:
    clock = clock or SimClock(T0)
    model = SessionsModel(world, clock)
    config = world.load_config()
    driver = Driver(config, clock, ["sessions"], model.truth, model.mutations(),
                    advance=lambda: clock.advance(minutes=20),
                    settle=world.hub.check_restart, state_url=url)
    return driver, model


@pytest.mark.usefixtures("fast_sqlite_timeouts")
def test_lock_held_through_a_pass_is_a_clear_error_before_any_action(
        world: SafeWorld) -> None:
    driver, _ = driver_for(world)
    try:
        driver.run()  # sighting 1
        lock = LockFault("state", world.state_path)
        lock.arm()
        try:
            with pytest.raises(StoreError, match="database is locked"):
                driver.engine.run_pass(["sessions"])
        finally:
            lock.disarm()
        STATS.add("store_faults")
        assert not [c for c in driver.recorder.calls if c.action]
        assert world.hub.is_running("zed")
        # Back: the pass runs as if nothing happened (the confirmation was kept).
        report = driver.run()
        assert [f.action_status for c in report.checks for f in c.findings] == ["done"]
        assert not world.hub.is_running("zed")
        assert driver.referee.violations == []
    finally:
        driver.close()


@pytest.mark.usefixtures("fast_sqlite_timeouts")
def test_short_lock_is_waited_out(world: SafeWorld) -> None:
    driver, _ = driver_for(world)
    try:
        driver.run()
        lock = LockFault("state", world.state_path)
        import threading

        lock.arm()
        threading.Timer(0.3, lock.disarm).start()
        report = driver.run()  # waits for the lock, then acts
        STATS.add("store_faults")
        assert [f.action_status for c in report.checks for f in c.findings] == ["done"]
        assert driver.referee.violations == []
    finally:
        driver.close()


def interrupted_then_reconfirmed(driver: Driver, world: SafeWorld,
                                 break_store: Any, repair_store: Any) -> None:
    """The store fails between an action's intent and its result; then it comes back.

    The action itself ran (the world changed): its intent row must survive and be reported
    ``interrupted`` before the daemon does anything else, in the same process.
    """
    driver.run()  # sighting 1 of the stale session
    driver.recorder.before_first_action.append(break_store)
    with pytest.raises(StoreError):
        driver.engine.run_pass(["sessions"])
    driver.recorder.before_first_action.remove(break_store)
    STATS.add("store_faults")
    repair_store()
    assert not world.hub.is_running("zed")  # the stop reached the hub
    [row] = driver.store.actions()
    assert row.status in ("started", "interrupted")  # the intent was not lost
    report = driver.engine.run_pass(["sessions"])  # the same daemon, next pass
    [row] = driver.store.actions()
    assert row.status == "interrupted", row
    STATS.add("interrupted_seen")
    assert report.errors == 0
    assert not [f for c in report.checks for f in c.findings]


@pytest.mark.usefixtures("fast_sqlite_timeouts")
def test_lock_between_intent_and_result(world: SafeWorld) -> None:
    driver, _ = driver_for(world)
    lock = LockFault("state", world.state_path)
    try:
        interrupted_then_reconfirmed(driver, world, lock.arm, lock.disarm)
    finally:
        lock.disarm()
        driver.close()


# -- PostgreSQL going away -----------------------------------------------------------------------


@pytest.mark.integration
def test_postgres_restart_mid_pass_recovers_cleanly(tmp_path: Path,
                                                    postgres: RealPostgres) -> None:
    url = postgres.create_database("wd_restart")
    with stale_world(tmp_path) as world:
        driver, _ = driver_for(world, url)
        try:
            driver.run()
            driver.recorder.before_first_action.append(postgres.restart)
            report = driver.run()  # the server restarts between the intent and the result
            STATS.add("store_faults")
            assert [f.action_status for c in report.checks for f in c.findings] == ["done"]
            [row] = driver.store.actions()
            assert row.status == "done"
            assert driver.referee.violations == []
        finally:
            driver.recorder.before_first_action.clear()
            driver.close()


@pytest.mark.integration
def test_postgres_down_mid_pass_keeps_the_intent(tmp_path: Path,
                                                 postgres: RealPostgres) -> None:
    url = postgres.create_database("wd_down")
    with stale_world(tmp_path) as world:
        driver, _ = driver_for(world, url)
        try:
            interrupted_then_reconfirmed(driver, world, postgres.stop, postgres.start)
        finally:
            if not postgres.running:
                postgres.start()
            driver.close()


@pytest.mark.integration
def test_postgres_down_before_a_pass_is_a_clear_error(tmp_path: Path,
                                                      postgres: RealPostgres) -> None:
    url = postgres.create_database("wd_before")
    with stale_world(tmp_path) as world:
        driver, _ = driver_for(world, url)
        try:
            driver.run()
            postgres.stop()
            try:
                with pytest.raises(StoreError, match="state database postgresql"):
                    driver.engine.run_pass(["sessions"])
            finally:
                postgres.start()
            STATS.add("store_faults")
            assert not [c for c in driver.recorder.calls if c.action]
            assert world.hub.is_running("zed")
        finally:
            driver.close()


# -- schemas -------------------------------------------------------------------------------------


def test_schema_1_with_data_is_upgraded_without_loss(tmp_path: Path) -> None:
    """A schema-1 store (open finding seen once, an audit row left ``started`` by a crash,
    a notice still queued) is upgraded; the finding is confirmed on the next pass, the old
    intent is reported interrupted, and the old notice is delivered."""
    with Receiver() as rx, SafeWorld(tmp_path / "world", timeout="5s",
                                     notify_url=rx.url) as world:
        world.healthy(users=3, running=2)
        world.stale_session("zed")
        url = f"sqlite:///{world.state_path}"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            store_module.MIGRATIONS[1](conn)
            conn.execute(sa.insert(store_module.meta_table).values(key="schema_version",
                                                                   value="1"))
            conn.execute(sa.insert(store_module.findings_table).values(
                key="sessions/main/stale-session/zed", check_name="sessions", target="main",
                kind="stale-session", subject="zed", severity=30, message="old",
                evidence="{}", status="open", first_seen=T0, last_seen=T0, sightings=1))
            conn.execute(sa.insert(store_module.actions_table).values(
                pass_id="old", finding_key="sessions/main/stale-route/ghost", name="sync-routes",
                source="hubapi", target="main", call="sync_routes", params="{}", before="{}",
                destructive=False, status="started", started_at=T0))
            conn.execute(sa.insert(store_module.outbox_table).values(
                created_at=T0, finding_key="sessions/main/stale-route/ghost", event="new",
                severity=20, title="old notice from schema 1", body="queued before upgrade",
                destination=_destination_id(rx.url), attempts=3, next_attempt_at=T0))
        engine.dispose()

        run = check(world.config_path)
        assert run.code == 0, run.stderr
        STATS.add("store_faults")
        entry = run.findings()[("stale-session", "zed")]
        assert (entry["sightings"], entry["action"]["status"]) == (2, "done")
        assert entry["first_seen"].startswith("2026-11-22T03:00:00")
        rows = json.loads(launch(world.config_path, "actions", "--json").communicate(
            timeout=60)[0])
        assert [(r["name"], r["status"]) for r in rows] == [
            ("stop-server", "done"), ("sync-routes", "interrupted")]
        assert "old notice from schema 1" in [m["title"] for m in rx.messages]
        assert Store(url).schema_version() == store_module.SCHEMA_VERSION


def _destination_id(url: str) -> str:
    from watchdogd.config import NotifyConfig
    from watchdogd.notify import load_destinations

    [destination] = load_destinations(NotifyConfig(urls=url))  # type: ignore[arg-type]
    return destination.id


@pytest.mark.parametrize("case", ["newer", "foreign"])
def test_unknown_schema_is_refused(world: SafeWorld, case: str) -> None:
    engine = sa.create_engine(f"sqlite:///{world.state_path}")
    with engine.begin() as conn:
        if case == "newer":
            store_module.metadata.create_all(conn)
            conn.execute(sa.insert(store_module.meta_table).values(
                key="schema_version", value=str(store_module.SCHEMA_VERSION + 1)))
        else:
            conn.execute(sa.text("CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT)"))
            conn.execute(sa.text("INSERT INTO jobs (payload) VALUES ('someone else''s')"))
    engine.dispose()
    before = _dump(world.state_path)
    run = check(world.config_path)
    STATS.add("store_faults")
    assert run.code == 78, run.stderr
    expected = ("is newer than this watchdogd understands" if case == "newer"
                else "holds tables but no watchdogd schema version")
    assert expected in run.stderr
    assert world.hub.is_running("zed")
    assert _dump(world.state_path) == before  # not a row touched


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())
