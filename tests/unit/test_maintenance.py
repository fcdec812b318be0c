"""Maintenance windows: when they are open, what they mute and freeze, the summary after.

The open/closed rule is a pure function of the window and a time (local wall-clock starts,
real-time lengths across daylight saving); the engine part runs the engine test's
plain-data hub with a window in the configuration and reads the notices from the outbox.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_engine import T0, Adapter, FakeWorld, make_config
from watchdogd.app import load_config
from watchdogd.checks import REGISTRY
from watchdogd.config import ConfigError, MaintenanceWindow, NotifyConfig
from watchdogd.engine import Engine
from watchdogd.maintenance import open_occurrence, window_silences
from watchdogd.notify import Notifier
from watchdogd.sim.world import SimClock
from watchdogd.sources import Sources
from watchdogd.store import Store


def window(**values: Any) -> MaintenanceWindow:
    return MaintenanceWindow.model_validate(values)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_weekly_window_in_its_own_zone() -> None:
    tuesdays = window(days=["Tue"], start="02:00", duration="2h", timezone="America/Chicago")
    # 2026-12-08 is a Tuesday; Chicago is UTC-6 in December.
    assert open_occurrence(tuesdays, utc(2026, 12, 8, 8, 30)) == (
        utc(2026, 12, 8, 8, 0), utc(2026, 12, 8, 10, 0))
    assert open_occurrence(tuesdays, utc(2026, 12, 8, 7, 59)) is None
    assert open_occurrence(tuesdays, utc(2026, 12, 8, 10, 0)) is None  # the end is open
    assert open_occurrence(tuesdays, utc(2026, 12, 7, 8, 30)) is None  # a Monday


def test_window_across_midnight_and_daylight_saving() -> None:
    nightly = window(start="23:00", duration="2h")
    assert open_occurrence(nightly, utc(2026, 12, 8, 0, 30)) == (
        utc(2026, 12, 7, 23, 0), utc(2026, 12, 8, 1, 0))
    # 2026-03-08: Chicago skips 02:00-03:00. A 01:00 window of 3 hours lasts 3 real hours,
    # ending at 05:00 local daylight time (10:00 UTC).
    sunday = window(days=["sun"], start="01:00", duration="3h", timezone="America/Chicago")
    assert open_occurrence(sunday, utc(2026, 3, 8, 9, 30)) == (
        utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 10, 0))
    assert open_occurrence(sunday, utc(2026, 3, 8, 10, 0)) is None


def test_window_scopes_become_silences() -> None:
    scoped = window(start="00:00", duration="1d", checks=["sessions", "labs"],
                    targets=["main"], reason="hub upgrade")
    silences = window_silences({"upgrade": scoped}, T0)
    assert {(s.check, s.target, s.window) for s in silences} == {
        ("sessions", "main", "upgrade"), ("labs", "main", "upgrade")}
    assert silences[0].matches("sessions", "main", "stale-session", "alice")
    assert not silences[0].matches("sessions", "other", "stale-session", "alice")
    assert "maintenance window 'upgrade'" in silences[0].describe()
    assert not silences[0].allow_actions


@pytest.mark.parametrize(("section", "expected"), [
    ('start = "2am"\nduration = "1h"', "maintenance.w.start: expected HH:MM"),
    ('start = "02:00"\nduration = "0s"', "maintenance.w.duration"),
    ('start = "02:00"\nduration = "8d"', "maintenance.w.duration"),
    ('start = "02:00"\nduration = "1h"\ntimezone = "Mars/Olympus"',
     "maintenance.w.timezone: unknown time zone 'Mars/Olympus'"),
    ('start = "02:00"\nduration = "1h"\ndays = ["tuesday", "someday"]',
     "maintenance.w.days: unknown weekday 'someday'"),
    ('start = "02:00"\nduration = "1h"\nchecks = ["sesions"]',
     "maintenance.w.checks: unknown check 'sesions'"),
    ('start = "02:00"\nduration = "1h"\nwhen = "always"', "maintenance.w.when"),
])
def test_bad_windows_are_refused_naming_the_key(tmp_path: Path, section: str,
                                                 expected: str) -> None:
    path = tmp_path / "watchdogd.toml"
    path.write_text(f"[maintenance.w]\n{section}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def engine_for(tmp_path: Path, world: FakeWorld, clock: SimClock,
               **windows: MaintenanceWindow) -> Engine:
    config = make_config(tmp_path)
    urls_file = tmp_path / "apprise.txt"
    urls_file.write_text("json://127.0.0.1:9/nobody-listens\n")
    config = config.model_copy(update={
        "notify": NotifyConfig(urls_file=str(urls_file)), "maintenance": windows})
    factories = {n: (lambda _c, _n: Adapter(world)) for n in ("hubdb", "hubapi", "proxy", "kube")}
    return Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                  notifier=Notifier.from_config(config.notify), clock=clock,
                  registry={"sessions": REGISTRY["sessions"]})


def test_window_mutes_and_freezes_then_summarises(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("alice", pod=False)  # a stale session: stop-server once confirmed
    clock = SimClock(T0)  # 03:00 UTC, inside 02:00-04:00
    engine = engine_for(tmp_path, world, clock,
                        nightly=window(start="02:00", duration="2h", reason="backups"),
                        certs_only=window(start="02:00", duration="2h", checks=["certs"]))
    engine.run_pass()
    clock.advance(minutes=30)
    report = engine.run_pass().as_json()
    [entry] = report["checks"][0]["findings"]
    assert entry["sightings"] == 2
    assert entry["action"]["status"] == "silenced"
    assert "maintenance window 'nightly' until 2026-11-22T04:00Z: backups" in \
        entry["action"]["detail"]
    assert entry["silenced"]["window"] == "nightly" and entry["silenced"]["id"] is None
    assert not [c for c in world.calls if c[0] == "stop_server"]
    assert engine.store.outbox() == []

    clock.advance(minutes=40)  # 04:10: the window has closed
    report = engine.run_pass().as_json()
    [entry] = report["checks"][0]["findings"]
    assert entry["action"]["status"] == "done"
    outbox = engine.store.outbox()
    summary = [r for r in outbox if r["finding_key"] == "maintenance/nightly"]
    assert [r["title"] for r in summary] == [
        "watchdogd maintenance window nightly ended: 1 finding(s) open"]
    assert "[critical] stale-session alice (sessions/main)" in summary[0]["body"]
    assert summary[0]["severity"] == 30
    assert [r["event"] for r in outbox if r["finding_key"].endswith("/alice")][:1] == ["new"]
    # The certs-only window covered nothing here and says so once it closed.
    [certs] = [r for r in outbox if r["finding_key"] == "maintenance/certs_only"]
    assert certs["body"] == "Nothing is open: the window left no problem."

    clock.advance(minutes=10)  # a window summarises once
    engine.run_pass()
    assert len([r for r in engine.store.outbox() if r["event"] == "window"]) == 2


def test_a_window_closing_between_runs_is_summarised_by_the_next(tmp_path: Path) -> None:
    world = FakeWorld()
    world.add("bob", pod=False)
    clock = SimClock(T0)
    nightly = window(start="02:00", duration="2h")
    engine_for(tmp_path, world, clock, nightly=nightly).run_pass()
    clock.advance(hours=3)  # the next CronJob run, a new process, long after the window
    later = engine_for(tmp_path, world, clock, nightly=nightly)
    later.run_pass()
    assert [r["title"] for r in later.store.outbox() if r["event"] == "window"] == [
        "watchdogd maintenance window nightly ended: 1 finding(s) open"]
