"""One actor per state store: real processes side by side on one state, and a killed leader.

* Two ``watchdogd check`` processes on one state file (a manual run beside the CronJob,
  ``kubectl create job --from=cronjob``): while one is in the middle of a pass the other
  detects and reports, says it is not acting and writes nothing; at random overlaps, no
  server is ever stopped twice and every notice arrives exactly once.
* Two ``watchdogd run`` replicas with Lease election on one shared state (the Deployment):
  the leader is SIGKILLed while its notices are queued (the receiver is down); the new
  leader inherits the open findings, the audit log and the outbox, and delivers every
  queued notice exactly once.

The oracles are the simulators' own request logs and the receiver's inbox, never the
reports of the processes under test.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from tests.safety.procs import Blocker, actions_table, check, launch, wait_for
from tests.safety.receiver import Receiver
from tests.safety.sessions_world import SafeWorld
from tests.safety.stats import STATS
from tests.sim.test_leader import free_port, holder, scrape

NOTIFY = {"notify": {"timeout": "0.5s", "retry_after": "0.01s", "repeat_after": "6h"}}


def hub_deletes(world: SafeWorld) -> Counter[str]:
    """How many ``DELETE /users/NAME/server`` reached the hub, per user."""
    out: Counter[str] = Counter()
    for method, path in list(world.hub.requests):
        parts = path.split("?")[0].split("/")
        if method == "DELETE" and "users" in parts and parts[-1] == "server":
            out[parts[parts.index("users") + 1]] += 1
    return out


def table(state: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def delivered_once(state: Path, rx: Receiver) -> list[str]:
    """Every queued notice arrived exactly once; nothing arrived that was not queued."""
    outbox = table(state, "SELECT * FROM outbox ORDER BY id")
    problems = [f"never delivered: {r['title']}" for r in outbox if r["delivered_at"] is None]
    sent = Counter(r["title"] for r in outbox)
    arrived = Counter(m["title"] for m in rx.messages)
    if sent != arrived:
        problems.append(f"arrived {dict(arrived - sent)} more, {dict(sent - arrived)} less "
                        "than queued")
    return problems


def test_a_second_process_during_a_pass_reports_and_acts_on_nothing(tmp_path: Path) -> None:
    with Receiver() as rx, SafeWorld(tmp_path / "world", timeout="30s", notify_url=rx.url,
                                     extra=NOTIFY) as world:
        world.healthy(users=4, running=3)
        world.stale_session("zed")
        world.stale_session("amy")
        state = world.state_path
        first = check(world.config_path)
        assert first.code == 0, first.stderr
        assert first.report["acting"] is True

        # The first process holds its pass open in the middle of the stop of one user.
        blocker = Blocker(lambda req: req.method == "DELETE" and "/users/" in req.path)
        world.hub.handle = blocker.wrap(world.hub.handle)  # type: ignore[method-assign]
        proc = launch(world.config_path, "check", "--json")
        wait_for(lambda: blocker.held, "the first process to be mid-action", proc=proc)
        findings_before = table(state, "SELECT key, sightings, notified_at FROM findings")
        outbox_before = table(state, "SELECT id FROM outbox")
        deletes_before = hub_deletes(world)

        second = check(world.config_path)
        STATS.add("rival_processes")
        assert second.code == 0, second.stderr
        assert second.report["acting"] is False
        assert "another watchdogd holds the lock" in second.report["not_acting_reason"]
        assert {f["kind"] for f in second.findings().values()} == {"stale-session"}
        assert all(f["action"]["status"] != "done" for f in second.findings().values())
        # It wrote nothing and asked the hub for nothing.
        assert hub_deletes(world) == deletes_before
        assert table(state, "SELECT key, sightings, notified_at FROM findings") == \
            findings_before
        assert table(state, "SELECT id FROM outbox") == outbox_before

        blocker.release.set()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert hub_deletes(world) == Counter({"zed": 1, "amy": 1})
        assert check(world.config_path).code == 0  # resolves, and sends what is left
        assert delivered_once(state, rx) == []
        assert [r for r in actions_table(state) if r["status"] == "started"] == []


def test_checks_at_random_overlaps_never_act_twice(tmp_path: Path) -> None:
    with Receiver() as rx, SafeWorld(tmp_path / "world", timeout="30s", notify_url=rx.url,
                                     extra=NOTIFY, remediation={"confirm_after": 1}) as world:
        world.healthy(users=4, running=3)
        planted = []
        for round_no in range(4):
            for i in range(2):
                planted.append(world.stale_session(f"s{round_no}x{i}"))
            runs: list[Any] = []

            def one(into: list[Any] = runs) -> None:
                into.append(check(world.config_path))

            threads = [threading.Thread(target=one) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(180)
            STATS.add("rival_processes", len(runs) - 1)
            assert len(runs) == 3 and all(r.code == 0 for r in runs), [r.stderr for r in runs]
            for run in runs:
                if not run.report["acting"]:
                    assert "another watchdogd" in run.report["not_acting_reason"]
        for _ in range(3):  # a lone run at the end stops what every overlap left
            assert check(world.config_path).code == 0
        deletes = hub_deletes(world)
        assert max(deletes.values()) == 1, deletes
        assert set(deletes) == set(planted)
        assert delivered_once(world.state_path, rx) == []
        done = Counter(r["finding_key"] for r in actions_table(world.state_path)
                       if r["status"] == "done")
        assert max(done.values()) == 1, done


def test_a_leader_killed_with_notices_queued_hands_everything_over(tmp_path: Path) -> None:
    extra = {**NOTIFY, "daemon": {"leader_election": True, "lease_cluster": "sim",
                                  "lease_duration": "4s"}}
    with Receiver() as rx, SafeWorld(tmp_path / "world", timeout="5s", notify_url=rx.url,
                                     extra=extra, sessions={"interval": "0.5s"},
                                     remediation={"confirm_after": 2}) as world:
        world.healthy(users=4, running=3)
        world.write_config()
        state = world.state_path
        rx.set_mode("down")
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}

        def start(name: str) -> None:
            ports[name] = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
            # Both replicas share the one state of the config, as in the Deployment.
            env |= {"POD_NAME": f"replica-{name}",
                    "WATCHDOGD_DAEMON__METRICS_LISTEN": f"127.0.0.1:{ports[name]}"}
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "watchdogd", "run", "--config", str(world.config_path)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        try:
            start("a")
            wait_for(lambda: (holder(world.kube) or "").startswith("replica-a"), "a to lead")
            start("b")
            wait_for(lambda: scrape(ports["b"]).get("watchdogd_healthy") == 1.0, "b up")
            user = world.stale_session("zoe")
            wait_for(lambda: not world.hub.is_running(user), "a to stop the stale session")
            # The finding, the action and the resolution are queued; nothing arrived.
            wait_for(lambda: len(table(state, "SELECT id FROM outbox WHERE delivered_at IS "
                                       "NULL")) >= 3, "the notices to be queued")
            assert rx.messages == []
            procs["a"].send_signal(signal.SIGKILL)
            procs["a"].wait(30)
            STATS.add("leader_kills")
            rx.set_mode("up")
            wait_for(lambda: (holder(world.kube) or "").startswith("replica-b"),
                     "b to take over", timeout=60)
            wait_for(lambda: not table(state, "SELECT id FROM outbox WHERE delivered_at IS "
                                       "NULL"), "b to deliver the outbox", timeout=60)
            assert delivered_once(state, rx) == []
            titles = [m["title"] for m in rx.messages]
            assert sum("stale-session zoe" in t and "resolved" not in t for t in titles) == 1
            assert sum("action stop-server done: zoe" in t for t in titles) == 1
            # The audit log and the finding's history survived the leader.
            rows = actions_table(state)
            assert [(r["name"], r["status"]) for r in rows] == [("stop-server", "done")]
            assert hub_deletes(world) == Counter({"zoe": 1})
            [finding] = table(state, "SELECT status FROM findings WHERE kind = "
                                     "'stale-session'")
            assert finding["status"] == "resolved"
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
