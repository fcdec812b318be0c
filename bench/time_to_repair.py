"""Time to repair: a pod vanishes behind the hub's back; how long until watchdogd stops it?

A simulated world (``watchdogd.sim.World``: Kubernetes API, CHP and Hub API simulators over
real HTTP) with healthy servers, and a real ``watchdogd run`` process on it at the shipped
defaults (``[checks.sessions] interval``, ``[remediation] confirm_after`` and ``min_age`` as
``watchdogd.config`` ships them) with remediation on for ``stop-server`` and notices to a
local JSON receiver. Once the daemon has completed a pass, one user's pod is deleted behind
the hub's back (the frozen-watch-cache case). The script prints the seconds from that moment
to the ``stale-session`` finding in the state store, to the notice at the receiver, and to
the hub no longer running the server, and exits 0 when the stop came within the goal
(2 minutes), 1 when it did not, 2 when it could not run.

Runs in real time (about two minutes). Never part of the test run.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from watchdogd.checks import sessions
from watchdogd.config import RemediationConfig
from watchdogd.sim.world import World

GOAL_S = 120.0


class _Receiver(http.server.ThreadingHTTPServer):
    """apprise ``json://`` notices, each with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.notices: list[tuple[float, dict[str, Any]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        self.server.notices.append((time.monotonic(), data))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _shipped_remediation() -> dict[str, Any]:
    shipped = RemediationConfig()
    return {"dry_run": False, "confirm_after": shipped.confirm_after,
            "min_age": f"{int(shipped.min_age.total_seconds())}s",
            "max_per_pass": shipped.max_per_pass, "max_per_hour": shipped.max_per_hour,
            "enabled": ["stop-server"]}


def _finding_seen(state: Path, user: str) -> bool:
    if not state.exists():
        return False
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("select count(*) from findings where kind = 'stale-session' "
                               "and subject = ?", (user,)).fetchone()
        except sqlite3.OperationalError:
            return False
    return bool(row and row[0])


def _passes(state: Path) -> int:
    if not state.exists():
        return 0
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as conn:
        try:
            return int(conn.execute("select count(*) from passes").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--running", type=int, default=30)
    parser.add_argument("--limit", type=float, default=420.0, help="give up after seconds")
    args = parser.parse_args()

    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    interval = sessions.Settings().interval
    url = f"json://127.0.0.1:{receiver.server_address[1]}/notify"
    with World(notify_url=url, remediation=_shipped_remediation(),
               sessions={"interval": f"{int(interval.total_seconds())}s"}) as world:
        names = world.healthy(users=args.users, running=args.running)
        config = world.write_config()
        daemon = subprocess.Popen([sys.executable, "-m", "watchdogd", "run", "-c", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while _passes(world.state_path) == 0:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print(f"watchdogd run did not complete a pass (exit {daemon.poll()})")
                    return 2
                time.sleep(0.2)
            user = names[0]
            namespace, pod_name = world.hub.pod_location(user)
            world.kube.delete("Pod", pod_name, namespace)
            start = time.monotonic()
            found = notified = stopped = None
            while time.monotonic() - start < args.limit and stopped is None:
                now = time.monotonic() - start
                if found is None and _finding_seen(world.state_path, user):
                    found = now
                if notified is None and any("stale-session" in json.dumps(n)
                                            for _, n in receiver.notices):
                    notified = min(t for t, n in receiver.notices
                                   if "stale-session" in json.dumps(n)) - start
                if not world.hub.is_running(user):
                    stopped = now
                time.sleep(0.25)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    shipped = RemediationConfig()
    print(f"shipped defaults: sessions interval {interval}, confirm_after "
          f"{shipped.confirm_after}, min_age {timedelta(seconds=shipped.min_age.seconds)}")
    for label, value in (("to the finding", found), ("to the notice", notified),
                         ("to the stop", stopped)):
        print(f"  seconds {label:<16} {'never' if value is None else f'{value:6.1f}'}")
    ok = stopped is not None and stopped < GOAL_S
    print(f"{'PASS' if ok else 'MISS'}: stop within {GOAL_S:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
