"""Start-up imports: a sessions-only ``watchdogd check`` loads no package it does not use.

A CronJob run is mostly process start-up, so each heavy package must be imported where a
pass first needs it. This runs a real ``watchdogd check --only sessions`` against a tiny
simulated world in a fresh interpreter and lists the modules it had loaded at exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdogd.sim.world import World

ROOT = Path(__file__).resolve().parents[2]

# Packages only other checks, the daemon or other commands use.
NOT_FOR_SESSIONS = (
    "openstack",  # openstacksdk: the volumes and orphans checks
    "keystoneauth1",
    "cryptography",  # certificate parsing: the certs check
    "apscheduler",  # the daemon (`watchdogd run`)
    "prometheus_client",  # the daemon's metrics
    "watchdogd.sim",  # tests, bench and the demo only
    "watchdogd.daemon",
    "watchdogd.metrics",
    "watchdogd.sources.openstack",
    "watchdogd.sources.tls",
    "apprise",  # notification delivery: only a run with destinations
    "psycopg",  # a PostgreSQL hub or state database; the world's are SQLite
    "sqlalchemy.orm",
    "sqlalchemy.dialects.postgresql",
    "rich",  # structlog's console tracebacks (test extras only): a console brings it back
    "kubernetes.client.api",  # the generated API classes: lists go by path through ApiClient
)

# Runs the command line in this interpreter and prints the loaded modules at exit.
PROBE = """\
import atexit, json, sys
atexit.register(lambda: print("@@modules " + json.dumps(sorted(sys.modules))))
from watchdogd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(remediation={"dry_run": True}) as w:
        w.healthy(users=3, running=2)
        yield w


def loaded_modules(config: Path) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "check", "--only", "sessions", "-c", str(config)],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@modules "))
    return set(json.loads(line[len("@@modules "):]))


def test_sessions_check_imports_only_what_it_uses(world: World) -> None:
    modules = loaded_modules(world.config_path)
    # It did run the pass: the sources it needs were loaded.
    assert {"watchdogd.sources.hubapi", "watchdogd.sources.kube",
            "watchdogd.sources.hubdb"} <= modules
    heavy = sorted(m for m in modules
                   if any(m == p or m.startswith(p + ".") for p in NOT_FOR_SESSIONS))
    assert heavy == []
    # The package of the generated models is loaded by the client; no model module is.
    assert sorted(m for m in modules if m.startswith("kubernetes.client.models.")) == []


# Logs one exception through the console renderer, as a person at a terminal reads it.
CONSOLE = """\
import logging, sys
if sys.argv[1] == "rich-first":
    import rich  # structlog then sees rich as it does when watchdogd does not hide it
from watchdogd import logs
logs.configure(json_lines=False, stream=sys.stdout)
def fail():
    raise ZeroDivisionError("division by zero")
try:
    fail()
except ZeroDivisionError:
    logging.getLogger("lib").exception("it failed")
"""


def console_output(mode: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100")
    proc = subprocess.run([sys.executable, "-c", CONSOLE, mode], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Past the timestamp; the locals of the script's frame differ by the `rich` module.
    lines = [line for line in proc.stdout.splitlines()[1:] if "rich" not in line]
    return "\n".join([proc.stdout.splitlines()[0].split(" ", 1)[1], *lines])


def test_console_tracebacks_are_those_structlog_renders_with_rich() -> None:
    pytest.importorskip("rich")
    hidden, plain = console_output("fresh"), console_output("rich-first")
    assert "Traceback (most recent call last)" in plain and "fail" in plain
    assert hidden == plain
