"""One actor per state store: the pass lock, and what a pass that cannot take it does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.unit.test_engine import T0, FakeWorld, make_engine
from watchdogd.model import Action, Finding, Severity
from watchdogd.sim.world import SimClock
from watchdogd.store import SCHEMA_VERSION, Store


def test_a_second_store_on_one_file_cannot_take_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    first, second = Store(url), Store(url)
    with first.pass_lock() as hold:
        assert hold.held and hold.fresh
        with second.pass_lock() as other:
            assert not other.held
            assert "another watchdogd holds the lock" in (other.reason or "")
        assert first.lock_held()
        assert not second.lock_held()
    with second.pass_lock() as other:  # released with the last pass of the first
        assert other.held


def test_the_passes_of_one_process_share_one_hold(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store, rival = Store(url), Store(url)
    with store.pass_lock() as outer:
        assert outer.fresh
        with store.pass_lock() as inner:
            assert inner.held and not inner.fresh  # not fresh: another pass is running
        with rival.pass_lock() as other:  # the outer pass still holds it
            assert not other.held
    assert not store.lock_held()


def test_the_lock_is_held_by_another_process(tmp_path: Path) -> None:
    """flock is per open file: a real second process is refused, then allowed."""
    url = f"sqlite:///{tmp_path}/state.db"
    Store(url).close()
    code = textwrap.dedent(f"""
        import sys
        from watchdogd.store import Store
        store = Store({url!r})
        with store.pass_lock() as hold:
            print("held" if hold.held else "refused", flush=True)
            sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "held"
        with Store(url).pass_lock() as hold:
            assert not hold.held
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
    with Store(url).pass_lock() as hold:
        assert hold.held


def test_a_pass_without_the_lock_reports_and_writes_nothing(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)
    world.add("bob")
    engine = make_engine(tmp_path, world, confirm_after=1)
    rival = Store(engine.config.state.resolved_url())
    with rival.pass_lock() as hold:
        assert hold.held
        report = engine.run_pass()
    assert report.acting is False
    body = report.as_json()
    assert body["acting"] is False
    assert "another watchdogd holds the lock" in body["not_acting_reason"]
    [check] = report.checks
    [entry] = check.findings
    assert entry.tracked.finding.kind == "stale-session"
    assert str(entry.action_status) == "dry-run"
    assert entry.action_detail.startswith("not acting:")
    assert world.calls == []
    # Only the actor counts sightings, announces, records passes and queues notices.
    assert engine.store.findings(status=None) == []
    assert engine.store.outbox() == []
    assert engine.store.last_pass("sessions", "main") is None
    # Once the lock is free the same engine acts.
    report = engine.run_pass()
    assert report.acting is True
    assert str(report.checks[0].findings[0].action_status) == "done"
    assert world.calls == [("stop_server", {"user": "alice", "server_name": ""})]


def test_an_action_of_another_process_in_flight_is_not_judged_interrupted(
        tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice")
    engine = make_engine(tmp_path, world, clock=SimClock(T0))
    rival = Store(engine.config.state.resolved_url())
    finding = Finding("sessions", "main", "stale-session", "bob", Severity.CRITICAL, "m")
    with rival.pass_lock():
        rival.begin_action("rival-pass", finding,
                           Action("stop-server", "hubapi", "main", "stop_server",
                                  {"user": "bob"}), T0)
        assert engine.recover() == []
        engine.run_pass()
        assert [r.status for r in engine.store.actions()] == ["started"]
    # The rival died without a result: the next holder settles it.
    engine.run_pass()
    assert [r.status for r in engine.store.actions()] == ["interrupted"]


def test_the_standby_leaves_announcements_to_the_leader(tmp_path: Path) -> None:
    """A follower that marked findings announced would make the next leader stay silent."""
    world = FakeWorld()
    world.add("alice", pod=False)
    engine = make_engine(tmp_path, world, confirm_after=1, enabled=[])
    engine.acting = lambda: False
    for _ in range(3):
        report = engine.run_pass()
        assert "not the leader" in (report.not_acting_reason or "")
    assert engine.store.findings(status=None) == []
    engine.acting = lambda: True
    [entry] = engine.run_pass().checks[0].findings
    assert entry.tracked.event == "new"


def test_processes_starting_together_on_a_new_file_create_the_schema_once(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    code = f"from watchdogd.store import Store; print(Store({url!r}).schema_version())"
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [child.communicate(timeout=60) for child in children]
    assert [c.returncode for c in children] == [0, 0, 0, 0], [err for _, err in results]
    assert {out.strip() for out, _ in results} == {str(SCHEMA_VERSION)}


def test_a_new_state_file_and_its_lock_are_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store = Store(url)
    with store.pass_lock():
        pass
    for name in ("state.db", "state.db.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
