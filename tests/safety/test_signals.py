"""Signals of a real ``watchdogd run`` process: SIGHUP reloads the configuration, never kills.

A good new file replaces the running configuration between two passes; a bad one is refused
with one log line naming the problem (never a secret), and the old configuration stays.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.safety.procs import actions_table, launch, passes_table, wait_for
from watchdogd.sim.world import World


class Daemon:
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
    daemon = Daemon(world.config_path)
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
    daemon = Daemon(world.config_path)
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
