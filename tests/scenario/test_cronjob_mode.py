"""CronJob mode: consecutive ``watchdogd check`` processes share one state file.

Each run is a fresh process, exactly as a Kubernetes CronJob or the systemd timer
starts it, against a simulated world (Kubernetes API, CHP and JupyterHub over real
HTTP). A finding seen by the first run is only *confirmed* by the second, so the
first run never acts and the second does; the third sees it resolved. The runs'
stderr is what a log collector receives: JSON lines, every action and every source
error with its target, and no secret anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watchdogd.sim.world import World

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    report: dict[str, Any]
    logs: list[dict[str, Any]]
    stdout: str
    stderr: str


def check(world: World, *extra: str) -> Run:
    """``watchdogd check --json`` in a new process, stderr not a TTY (as in a CronJob)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
    result = subprocess.run(
        [sys.executable, "-m", "watchdogd", "check", "--config", str(world.config_path),
         "--json", *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    logs = []
    for line in result.stderr.splitlines():
        try:
            logs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}\n{result.stderr}")
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return Run(result.returncode, report, logs, result.stdout, result.stderr)


def finding(run: Run, kind: str, subject: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [f for c in run.report["checks"] for f in c["findings"]
                                     if f["kind"] == kind and f["subject"] == subject]
    assert len(matches) == 1, matches
    return matches[0]


def secrets_of(world: World) -> list[str]:
    return [p.read_text().strip() for p in world.secrets_dir.iterdir()
            if p.name in ("hub_api_token", "proxy_token")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with World(tmp_path / "world") as w:
        w.healthy(users=6, running=4)
        yield w


def test_confirmed_and_acted_on_the_second_run_never_the_first(world: World) -> None:
    user = world.stale_session("niklaus")
    first = check(world)
    assert first.code == 0, first.stderr
    entry = finding(first, "stale-session", user)
    assert entry["sightings"] == 1
    assert entry["action"]["status"] == "unconfirmed"
    assert world.hub.is_running(user), "the first run acted"
    assert not [log for log in first.logs if log.get("event") == "action started"]

    second = check(world)
    assert second.code == 0, second.stderr
    entry = finding(second, "stale-session", user)
    assert entry["sightings"] == 2
    assert entry["action"]["status"] == "done"
    assert not world.hub.is_running(user)
    started = [log for log in second.logs if log.get("event") == "action started"]
    finished = [log for log in second.logs if log.get("event") == "action finished"]
    assert [(log["action"], log["target"]) for log in started] == [("stop-server", "main")]
    assert [(log["action"], log["target"], log["status"]) for log in finished] == [
        ("stop-server", "main", "done")]
    assert all(log["level"] and log["timestamp"] for log in second.logs)

    third = check(world)
    assert third.code == 0, third.stderr
    resolved = [k for c in third.report["checks"] for k in c["resolved"]]
    assert f"sessions/main/stale-session/{user}" in resolved

    # The audit log of the shared state shows the one action, done by the second run.
    audit = subprocess.run(
        [sys.executable, "-m", "watchdogd", "actions", "--config", str(world.config_path),
         "--json"], capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    actions = json.loads(audit.stdout)
    assert [(a["name"], a["status"]) for a in actions] == [("stop-server", "done")]

    for run in (first, second, third):
        for secret in secrets_of(world):
            assert secret not in run.stdout and secret not in run.stderr


def test_a_source_error_is_logged_with_its_target_and_acts_on_nothing(world: World) -> None:
    user = world.stale_session("zeno-stale")
    check(world)  # seen once
    world.chp.stop()  # the proxy API goes away before the confirming run
    run = check(world)
    assert run.code == 2  # a check could not complete
    errors = [log for log in run.logs if log.get("event") == "source error"]
    assert errors, run.stderr
    assert {(log["source"], log["target"]) for log in errors} >= {("proxy", "main")}
    assert all(log["level"] == "warning" for log in errors)
    sessions = [c for c in run.report["checks"] if c["check"] == "sessions"]
    assert sessions[0]["status"] == "error"
    assert world.hub.is_running(user), "incomplete data caused an action"
    for secret in secrets_of(world):
        assert secret not in run.stderr


def test_check_failing_across_processes_flaps_silently_then_pages_once_and_resolves(
        tmp_path: Path) -> None:
    """One ``watchdogd check`` process per interval on one state file, as a CronJob runs them:
    the failed passes are counted from the store. A proxy API that flaps (down, up) never
    pages; one down for three runs in a row pages once, on the third, names the failing
    need, and resolves with a notice. (Quiet while it lasts and reminded after
    ``repeat_after``: tests/unit/test_engine.py, on a simulated clock.)"""
    from tests.safety.receiver import Receiver

    with Receiver() as receiver, World(tmp_path / "world", notify_url=receiver.url,
                                       notify={"error_after": "0s"}) as world:
        world.healthy(users=4, running=2)

        def run(proxy_up: bool) -> Run:
            if proxy_up:
                world.chp.start()
            else:
                world.chp.down()
            result = check(world, "--only", "sessions")
            assert result.code == (0 if proxy_up else 2), result.stderr
            return result

        def kinds(result: Run) -> list[str]:
            return [f["kind"] for c in result.report["checks"] for f in c["findings"]]

        # error, ok: the run that completes ends the count, so two more errors are not three
        runs = [run(up) for up in (False, True, False, False)]
        assert [kinds(r) for r in runs] == [[], [], [], []]
        assert receiver.messages == []
        runs.append(run(False))
        failing = finding(runs[-1], "check-failing", "main")
        assert failing["evidence"]["passes"] == 3 and failing["action"] is None
        [page] = receiver.messages
        assert "check-failing" in page["title"] and "[critical]" in page["title"]
        assert "routes (proxy main)" in page["message"]

        resolved = run(True)
        assert "sessions/main/check-failing/main" in resolved.report["checks"][0]["resolved"]
        assert len(receiver.messages) == 2 and "[resolved]" in receiver.messages[1]["title"]
        for result in (*runs, resolved):
            for secret in secrets_of(world):
                assert secret not in result.stdout and secret not in result.stderr
