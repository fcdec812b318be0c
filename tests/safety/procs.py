"""Real ``watchdogd`` processes against a world, killed and restarted on purpose.

The state database is read from outside with plain ``sqlite3`` (WAL lets a reader look
while the daemon writes), polled with a deadline, never slept on blindly.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = ["Blocker", "Run", "actions_table", "check", "launch", "stop", "wait_for"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}


def launch(config: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m watchdogd ARGS -c CONFIG`` (stdout and stderr to pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "watchdogd", *args, "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())


@dataclass
class Run:
    """A finished ``watchdogd check --json``."""

    code: int
    report: dict[str, Any]
    stderr: str

    def findings(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(f["kind"], f["subject"]): f for c in self.report.get("checks", [])
                for f in c["findings"]}


def check(config: Path, *args: str, timeout: float = 120) -> Run:
    """One complete ``watchdogd check --json`` run."""
    proc = launch(config, "check", "--json", *args)
    out, err = proc.communicate(timeout=timeout)
    report = json.loads(out) if out.strip() else {}
    return Run(proc.returncode, report, err)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, and reap it: no handler, no finally, no flush runs."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def stop(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    """SIGTERM and wait (the daemon finishes its pass and exits 0)."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60,
             proc: subprocess.Popen[str] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) while waiting for "
                                 f"{what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rows(state: Path, sql: str) -> list[dict[str, Any]]:
    """Rows of a query on the state DB, read only (empty while the file or schema is missing)."""
    if not state.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    except sqlite3.Error:
        return []  # the schema is not there yet
    finally:
        conn.close()


def actions_table(state: Path) -> list[dict[str, Any]]:
    """The audit log as plain rows."""
    return _rows(state, "SELECT * FROM actions ORDER BY id")


def passes_table(state: Path) -> list[dict[str, Any]]:
    """The pass log."""
    return _rows(state, "SELECT * FROM passes ORDER BY started_at")


class Blocker:
    """Lets matching requests change the world, then holds their answers until released.

    The action reached the world, and the client never hears so: exactly what a crash
    between a request and its recorded result looks like from the daemon's side.
    """

    def __init__(self, match: Callable[[Any], bool]) -> None:
        self.match = match
        self.release = threading.Event()
        self.held = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        """The blocking version of a simulator's request handler ``real``."""

        def blocking(req: Any, *rest: Any) -> Any:
            if not self.match(req) or self.release.is_set():
                return real(req, *rest)
            self.held += 1
            answer = real(req, *rest)
            self.release.wait(120)
            return answer

        return blocking
