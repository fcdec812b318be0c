"""`watchdogd run` as a real process: SIGTERM during a pass lets the pass finish, then exit 0."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from watchdogd.sim.world import World


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return list(conn.execute(sql))
        except sqlite3.OperationalError:
            return []


def test_sigterm_lets_the_running_pass_finish(tmp_path: Path) -> None:
    with World(tmp_path / "world", remediation={"confirm_after": 1},
               sessions={"interval": "1h"}) as world:
        world.healthy(users=4, running=2)
        world.stale_session("stella")
        # The pod list answers only after 3 s: SIGTERM arrives in the middle of the pass.
        world.kube.fail(r"/namespaces/jhub/pods$", hang=3, times=1, status=None)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "watchdogd", "run", "--config", str(world.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for("the pod list request", lambda: any(
                "/namespaces/jhub/pods" in path for _, path in world.kube.requests))
            daemon.send_signal(signal.SIGTERM)
            _out, err = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
        assert daemon.returncode == 0, err
        passes = rows(world.state_path, "SELECT check_name, status FROM passes")
        assert ("sessions", "findings") in passes
        actions = rows(world.state_path, "SELECT name, status FROM actions")
        assert actions == [("stop-server", "done")]
        assert not world.hub.is_running("stella")
        assert '"stopping"' in err or "stopping" in err
