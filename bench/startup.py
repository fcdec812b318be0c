"""Start-up benchmark: a one-shot ``watchdogd check --only sessions`` on a tiny world.

A CronJob run or an operator's ``watchdogd check`` on a small hub is almost all process
start-up: the pass itself is a handful of requests. This measures what such a run costs
against the least a process can do for the same answer.

The world (``watchdogd.sim.world.World``, built in this process before anything is timed,
so that neither its imports nor its simulators' CPU are counted): a hub with 3 users and
2 running servers, their routes and pods, everything healthy.

Measured, each a fresh process (wall time around the process, CPU time and peak RSS from
``wait4``'s rusage of that process alone):

Every measured process is started by a small launcher process that this one starts before
it builds the world, so that the peak RSS printed is the measured process's own.

* **watchdogd**: ``python -m watchdogd check --only sessions -c CONFIG`` (dry run);
* **floor**: ``python -c SCRIPT`` where the script sends the same HTTP requests the
  watchdogd run sent (read back from the simulators' request logs: method, path and
  query, with the same credentials, the Kubernetes API over the same TLS) through
  ``http.client``, one keep-alive connection per peer, and ``json.loads`` each body;
  then the hub database's three statements (those of ``bench/sessions.py``'s floor)
  through ``sqlite3`` in one read-only transaction.

``--runs`` (default 7) of each, alternating; medians are compared. The modules each
imports are counted with ``-X importtime`` in one more run of each. Goal: watchdogd's
median wall time under 0.35 s and under 2x the floor's. Exit 0 when met, 1 when missed,
2 when the benchmark could not run.

    .venv/bin/python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import render_table, spawn_fresh, verdict  # noqa: E402
from bench.sessions import FLOOR_SQL  # noqa: E402 - the hubdb source's statements

WALL_TARGET_S = 0.35
RATIO_TARGET = 2.0

# The floor's whole program: the requests, with the credentials, come as JSON in argv[1].
FLOOR_SCRIPT = """\
import http.client, json, ssl, sys
from urllib.parse import urlsplit
plan = json.loads(sys.argv[1])
conns = {}
for req in plan["requests"]:
    url = urlsplit(req["base"])
    key = (url.scheme, url.netloc)
    if key not in conns:
        if url.scheme == "https":
            ctx = ssl.create_default_context(cadata=plan["ca"])
            conns[key] = http.client.HTTPSConnection(url.netloc, timeout=30, context=ctx)
        else:
            conns[key] = http.client.HTTPConnection(url.netloc, timeout=30)
    conn = conns[key]
    conn.request(req["method"], url.path.rstrip("/") + req["path"], headers=req["headers"])
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"{req['path']}: {response.status}")
    json.loads(body)
import sqlite3
db = sqlite3.connect(f"file:{plan['db']}?mode=ro", uri=True, isolation_level=None)
db.execute("BEGIN")
for sql in plan["sql"]:
    db.execute(sql).fetchall()
db.execute("COMMIT")
db.close()
"""


class BenchError(Exception):
    """The benchmark could not run (exit 2), as opposed to a missed goal (exit 1)."""


@dataclass
class Run:
    """One measured process."""

    wall: float
    cpu: float
    rss_mb: float
    stdout: str


def env() -> dict[str, str]:
    """The children import this worktree's watchdogd, not whatever is installed."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [out.get("PYTHONPATH")])])
    out.pop("PYTHONPROFILEIMPORTTIME", None)
    # An installed watchdogd has its bytecode compiled; let the warm-up run write this
    # worktree's (a run that compiles 20 modules from source measures the compiler).
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


# Runs each measured command and reports its wall time and its own rusage (wait4). It is
# started before this process builds the world, so it stays small: a child's ru_maxrss
# begins at the high-water mark of the memory image it replaced (see _common), which is
# this launcher's few megabytes, never the simulators'.
LAUNCHER = """\
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    job = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(job["argv"], stdout=out, stderr=err, env=job["env"])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        result = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss_mb": usage.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status),
                  "stdout": out.read().decode(errors="replace"),
                  "stderr": err.read().decode(errors="replace")[-1500:]}
    print(json.dumps(result), flush=True)
"""


class Launcher:
    """The small process that starts every measured command (see LAUNCHER)."""

    def __init__(self) -> None:
        self.proc = spawn_fresh([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def measure(self, argv: list[str]) -> Run:
        """Run ``argv`` once; wall, user+system CPU and peak RSS of that process alone."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env()}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("the launcher process died")
        result = json.loads(line)
        if result["code"] != 0:
            raise BenchError(f"{' '.join(argv[:5])}... exited {result['code']}: "
                             f"{result['stderr']}")
        return Run(result["wall"], result["cpu"], result["rss_mb"], result["stdout"])

    def close(self) -> None:
        """End the launcher (EOF on its stdin)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def module_count(argv: list[str]) -> int:
    """How many modules ``argv`` (a ``python ...`` command) imports: ``-X importtime`` lines."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True,
                          env=env(), check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:5])}... exited {proc.returncode} under importtime")
    return sum(1 for line in proc.stderr.decode(errors="replace").splitlines()
               if line.startswith("import time:") and "| imported package" not in line)


def sim_logs(world: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each simulator's base URL and its request log (method, path with query)."""
    return [(world.hub.url, world.hub.requests), (world.chp.url, world.chp.requests),
            (world.kube.https_url, world.kube.requests)]


def floor_plan(launcher: Launcher, world: Any, config: Path) -> dict[str, Any]:
    """The requests one watchdogd run sends, with their credentials, for the floor script."""
    for _, log in sim_logs(world):
        log.clear()
    run = launcher.measure([sys.executable, "-m", "watchdogd", "check", "--only", "sessions",
                   "-c", str(config), "--json"])
    report = json.loads(run.stdout)
    checks = report["checks"]
    if [c["status"] for c in checks] != ["ok"] or any(c["findings"] for c in checks):
        raise BenchError(f"the pass did not see a healthy world: {checks}")
    auth = {world.hub.url: f"token {world.hub.token}", world.chp.url: f"token {world.chp.token}",
            world.kube.https_url: f"Bearer {world.kube.token}"}
    requests = [{"base": base, "method": method, "path": path,
                 "headers": {"Authorization": auth[base], "Accept": "application/json"}}
                for base, log in sim_logs(world) for method, path in list(log)]
    if any(r["method"] != "GET" for r in requests):
        raise BenchError(f"a dry-run sessions pass sent more than GETs: {requests}")
    return {"requests": requests, "ca": world.kube.ca_pem, "db": str(world.hub.db_path),
            "sql": list(FLOOR_SQL), "counted": sum(c["requests"] for c in checks)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each (median)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("need --runs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """0: the goal is met; 1: missed; 2: the benchmark could not run."""
    args = parse_args(argv)
    try:
        return drive(args)
    except BenchError as exc:
        print(f"bench/startup.py: {exc}", file=sys.stderr)
        return 2


def drive(args: argparse.Namespace) -> int:
    """Build the tiny world, time both commands, print the verdict."""
    launcher = Launcher()  # first, while this process is small
    from watchdogd.sim.world import World

    with World(remediation={"dry_run": True}, timeout="30s") as world:
        world.healthy(users=3, running=2)
        config = world.config_path
        plan = floor_plan(launcher, world, config)
        wd_argv = [sys.executable, "-m", "watchdogd", "check", "--only", "sessions",
                   "-c", str(config)]
        floor_argv = [sys.executable, "-c", FLOOR_SCRIPT, json.dumps(plan)]
        launcher.measure(floor_argv)  # warm the page cache for both before timing anything
        runs: dict[str, list[Run]] = {"watchdogd": [], "floor": []}
        for i in range(args.runs):
            order = ("watchdogd", "floor") if i % 2 == 0 else ("floor", "watchdogd")
            for what in order:
                runs[what].append(launcher.measure(wd_argv if what == "watchdogd" else floor_argv))
        modules = {"watchdogd": module_count(wd_argv), "floor": module_count(floor_argv)}
        bare = [launcher.measure([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
    launcher.close()

    med = {what: {k: statistics.median(getattr(r, k) for r in rs)
                  for k in ("wall", "cpu", "rss_mb")} for what, rs in runs.items()}
    wall, floor_wall = med["watchdogd"]["wall"], med["floor"]["wall"]
    ratio = wall / floor_wall
    ok = wall < WALL_TARGET_S and ratio < RATIO_TARGET
    rows = [[what, f"{m['wall']:.3f}", f"{m['cpu']:.3f}", f"{m['rss_mb']:.0f}",
             str(modules[what]),
             f"{min(r.wall for r in runs[what]):.3f}-{max(r.wall for r in runs[what]):.3f}"]
            for what, m in med.items()]
    rows.append(["python -c pass", f"{statistics.median(r.wall for r in bare):.3f}",
                 f"{statistics.median(r.cpu for r in bare):.3f}",
                 f"{statistics.median(r.rss_mb for r in bare):.0f}", "", ""])
    print(f"start-up benchmark: `watchdogd check --only sessions` on a tiny world (3 users, "
          f"2 running servers) against the same {len(plan['requests'])} HTTP requests and "
          f"{len(plan['sql'])} SQL statements from `python -c` (the pass counted "
          f"{plan['counted']}); medians of {args.runs} runs each")
    print()
    print(render_table(["process", "wall (s)", "CPU (s)", "peak RSS (MB)", "modules",
                        "wall range"], rows))
    print()
    cpu_ratio = med["watchdogd"]["cpu"] / med["floor"]["cpu"]
    print(f"watchdogd / floor: wall {ratio:.2f}x (goal < {RATIO_TARGET:g}x) "
          f"{verdict(ratio < RATIO_TARGET)}, CPU {cpu_ratio:.2f}x; "
          f"wall {wall:.3f} s (goal < {WALL_TARGET_S} s) {verdict(wall < WALL_TARGET_S)}")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          "the simulators; not counted)")
    print(f"result: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
