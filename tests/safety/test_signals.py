"""Signals of a real ``watchdogd run`` process: SIGHUP reloads the configuration, never kills.

A good new file replaces the running configuration between two passes; a bad one is refused
with one log line naming the problem (never a secret), and the old configuration stays.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.safety.procs import actions_table, launch, passes_table, wait_for
from watchdogd.config import CheckConfig, Config
from watchdogd.daemon import Daemon, Reload, ReloadRefused
from watchdogd.report import PassReport
from watchdogd.sim.world import World


class RunningDaemon:
    """A running ``watchdogd run`` whose JSON log lines are collected as they come."""

    def __init__(self, config: Path) -> None:
        self.proc = launch(config, "run")
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.lines.append(record)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in list(self.lines) if r.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 90) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.events(name)) >= count and self.events(name),
                        f"{count} log line(s) {name!r}", timeout, proc=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        return self.proc.returncode


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    # Dry run at first, one sighting is enough to act, and a pass an hour: every later pass
    # of `sessions` is one a reload scheduled.
    with World(tmp_path / "world", remediation={"dry_run": True, "confirm_after": 1},
               sessions={"interval": "1h"}) as w:
        w.healthy(users=4, running=2)
        w.stale_session("stella")
        yield w


def sessions_passes(world: World) -> list[dict[str, Any]]:
    return [p for p in passes_table(world.state_path) if p["check_name"] == "sessions"]


def test_sighup_with_a_good_file_applies_it_between_passes(world: World) -> None:
    # The first pod list answers after 3 s: the SIGHUP arrives in the middle of that pass.
    world.kube.fail(r"/namespaces/jhub/pods$", hang=3, times=1, status=None)
    daemon = RunningDaemon(world.config_path)
    try:
        wait_for(lambda: any("/namespaces/jhub/pods" in path
                             for _, path in world.kube.requests),
                 "the first pod list request", proc=daemon.proc)
        # The new file turns remediation on and changes the interval (so that the check
        # runs again at once).
        world.remediation["dry_run"] = False
        world.sessions["interval"] = "59m"
        world.write_config()
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_event("configuration reloaded")[0]
        assert reloaded["dry_run"] is False
        wait_for(lambda: [a for a in actions_table(world.state_path)
                          if a["name"] == "stop-server" and a["status"] == "done"],
                 "the stop-server of the reloaded configuration", proc=daemon.proc)
        assert not world.hub.is_running("stella")
        assert daemon.alive()
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.raw)[-3000:]
    assert daemon.events("stopping") and daemon.events("stopped")
    # Never in the middle of a pass: the pass running at the SIGHUP finished first, still
    # in dry run (the one stop-server came from the pass after the reload).
    events = [(r.get("event"), r.get("check")) for r in daemon.lines]
    applied = events.index(("configuration reloaded", None))
    first = events.index(("pass finished", "sessions"))
    assert first < applied
    assert events.count(("pass finished", "sessions")) == 2
    assert len(actions_table(world.state_path)) == 1


def test_sighup_with_a_bad_file_keeps_the_running_configuration(world: World) -> None:
    password = "hunter@2:/x@y"
    daemon = RunningDaemon(world.config_path)
    try:
        wait_for(lambda: sessions_passes(world), "the first sessions pass", proc=daemon.proc)
        good = world.config_path.read_text()
        state_url = world.secrets_dir / "bad_state_url"
        state_url.write_text(f"postgresql://watchdogd:{password}@db.example:5x32/wd\n")
        world.config_path.write_text(good.replace(
            str(world.secrets_dir / "state_url"), str(state_url)))
        daemon.proc.send_signal(signal.SIGHUP)
        (refused,) = daemon.wait_event("reload refused; the running configuration stays")
        assert refused["problem"].startswith("config: state.url: ")
        assert "hunter" not in "".join(daemon.raw)
        assert daemon.alive()
        # A second SIGHUP with the file repaired (and remediation on) is applied: the first
        # one changed nothing meanwhile, not even the schedule.
        assert not daemon.events("configuration reloaded")
        world.remediation["dry_run"] = False
        world.sessions["interval"] = "59m"
        world.write_config()
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_event("configuration reloaded")
        wait_for(lambda: [a for a in actions_table(world.state_path)
                          if a["name"] == "stop-server" and a["status"] == "done"],
                 "the stop-server after the repaired reload", proc=daemon.proc)
    finally:
        code = daemon.stop()
    assert code == 0, "".join(daemon.raw)[-3000:]


# -- the reload path in one process, with a fake engine ----------------------------------------


class FakeSources:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeEngine:
    """What Daemon needs of an engine: passes record the configuration they ran with."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sources: Any = FakeSources()
        self.notifier = None
        self.dry_run = config.remediation.dry_run
        self.registry: dict[str, Any] = {"probe": None}
        self.listeners: list[Any] = []
        self.passes: list[tuple[bool, str]] = []

    @property
    def settings(self) -> dict[str, CheckConfig]:
        return {"probe": CheckConfig.section(self.config.checks, "probe")}

    def plan(self, only: Any = None, target: Any = None) -> list[Any]:
        return [("probe", name) for name in self.config.clusters]

    def acting(self) -> bool:
        return True

    def run_pass(self, only: Any = None, target: Any = None) -> PassReport:
        self.passes.append((self.dry_run, ",".join(self.config.clusters)))
        now = datetime.now(UTC)
        return PassReport(now, now, self.dry_run, [])


def probe_config(*, interval: str = "1h", dry_run: bool = True, cluster: str | None = "c1",
                 metrics: str = "127.0.0.1:9464") -> Config:
    return Config.model_validate({
        "remediation": {"dry_run": dry_run}, "daemon": {"metrics_listen": metrics},
        "clusters": {cluster: {}} if cluster else {},
        "checks": {"probe": {"interval": interval}}})


def run_with(daemon: Daemon, drive: Callable[[], None]) -> None:
    """``daemon.run()`` on this (the main) thread while ``drive`` runs beside it."""
    errors: list[BaseException] = []

    def side() -> None:
        try:
            drive()
        except BaseException as exc:
            errors.append(exc)
        finally:
            daemon.request_stop()

    thread = threading.Thread(target=side)
    thread.start()
    assert daemon.run() == 0
    thread.join(30)
    if errors:
        raise errors[0]


def test_a_refused_reload_changes_nothing() -> None:
    engine = FakeEngine(probe_config())
    old = engine.config

    def refuse() -> Reload:
        raise ReloadRefused("config: remediation.min_age: invalid duration 'soon'")

    daemon = Daemon(old, engine, reloader=refuse)  # type: ignore[arg-type]

    def drive() -> None:
        wait_for(lambda: engine.passes, "the first pass")
        assert daemon.reload() is False
        assert engine.config is old and daemon.config is old
        assert engine.sources.closed == 0

    run_with(daemon, drive)
    assert engine.passes == [(True, "c1")]


def test_a_good_reload_swaps_config_sources_and_schedule_but_not_daemon_sections() -> None:
    engine = FakeEngine(probe_config())
    old_sources = engine.sources
    new_sources = FakeSources()
    new = probe_config(interval="59m", dry_run=False, cluster="c2", metrics="127.0.0.1:1")
    daemon = Daemon(engine.config, engine,  # type: ignore[arg-type]
                        reloader=lambda: Reload(new, new_sources, None, False))

    def drive() -> None:
        wait_for(lambda: engine.passes, "the first pass")
        assert daemon.reload() is True
        wait_for(lambda: len(engine.passes) == 2, "the pass of the new schedule")

    run_with(daemon, drive)
    assert engine.passes == [(True, "c1"), (False, "c2")]
    assert engine.sources is new_sources and old_sources.closed == 1
    assert daemon.scheduled == {"probe": 59 * 60}
    # [daemon] belongs to the process: the metrics endpoint keeps its address.
    assert engine.config.daemon.metrics_listen == "127.0.0.1:9464"
    assert list(engine.config.clusters) == ["c2"]


def test_a_reload_with_nothing_to_check_is_rolled_back() -> None:
    engine = FakeEngine(probe_config())
    old, old_sources, new_sources = engine.config, engine.sources, FakeSources()
    daemon = Daemon(old, engine,  # type: ignore[arg-type]
                        reloader=lambda: Reload(probe_config(cluster=None, interval="59m"),
                                                new_sources, None, True))

    def drive() -> None:
        wait_for(lambda: engine.passes, "the first pass")
        assert daemon.reload() is True  # valid as a file; judged when applied
        wait_for(lambda: new_sources.closed, "the refused sources being closed")

    run_with(daemon, drive)
    assert engine.config is old and engine.sources is old_sources
    assert old_sources.closed == 0 and daemon.scheduled == {"probe": 3600}
