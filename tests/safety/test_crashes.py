"""SIGKILL between an action's intent and its result, and at random points of a pass.

Real ``watchdogd check`` and ``watchdogd run`` processes act on a simulated world and are
killed with SIGKILL (no handler, no ``finally``). On restart:

* the audit log shows the interrupted action (its intent row, then ``interrupted``);
* the daemon looks at the world again before doing anything: the interrupted finding must
  be confirmed again from fresh observations (``confirm_after`` passes) before a retry;
* an action that did reach the world is never repeated (a server is never stopped twice,
  the hub is never restarted twice, a pod is never deleted twice);
* every request that changed the world has an intent row written before it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.safety.faults import wrap_method
from tests.safety.procs import (
    Blocker,
    actions_table,
    check,
    kill,
    launch,
    passes_table,
    stop,
    wait_for,
)
from tests.safety.sessions_world import SafeWorld
from tests.safety.stats import STATS


def hub_deletes(world: SafeWorld, user: str) -> int:
    return sum(1 for method, path in list(world.hub.requests)
               if method == "DELETE" and path.split("?")[0].endswith(f"/users/{user}/server"))


def started_rows(state: Path) -> list[dict[str, Any]]:
    return [r for r in actions_table(state) if r["status"] == "started"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SafeWorld]:
    # A long client timeout: the daemon must still be waiting when it is killed.
    with SafeWorld(tmp_path / "world", timeout="30s") as w:
        w.healthy(users=4, running=3)
        yield w


@pytest.mark.parametrize("reached", [False, True], ids=["not-reached", "reached-the-world"])
def test_kill_between_intent_and_result(world: SafeWorld, reached: bool) -> None:
    world.stale_session("zed")
    state = world.state_path
    first = check(world.config_path)
    assert first.code == 0, first.stderr
    assert first.findings()[("stale-session", "zed")]["action"]["status"] == "unconfirmed"

    path = "/hub/api/users/zed/server"
    blocker = Blocker(lambda req: req.method == "DELETE" and req.path == path)
    if reached:  # the hub stops the server; its answer never comes back
        world.hub.handle = blocker.wrap(world.hub.handle)  # type: ignore[method-assign]
    else:  # the request hangs before the hub does anything
        world.hub.fail(500, hang=120, path=f"{path}$", method="DELETE")
    proc = launch(world.config_path, "check", "--json")
    [intent] = wait_for(lambda: started_rows(state), "the intent row", proc=proc)
    wait_for(lambda: hub_deletes(world, "zed"), "the DELETE to reach the hub", proc=proc)
    if reached:
        wait_for(lambda: blocker.held, "the hub to have stopped the server", proc=proc)
    kill(proc)
    STATS.add("crashes")
    blocker.release.set()
    world.hub.clear_faults()

    # The intent was written first, with a before-image a human can act on.
    assert (intent["name"], json.loads(intent["params"])) == (
        "stop-server", {"user": "zed", "server_name": ""})
    assert json.loads(intent["before"])["hub_db"]["state"]["pod_name"] == "jupyter-zed"
    assert world.hub.is_running("zed") is not reached

    second = check(world.config_path)
    assert second.code == 0, second.stderr
    [row] = [r for r in actions_table(state) if r["id"] == intent["id"]]
    assert row["status"] == "interrupted" and row["finished_at"] is not None
    STATS.add("interrupted_seen")
    shown = json.loads(launch(world.config_path, "actions", "--json").communicate(
        timeout=60)[0])
    assert [(r["id"], r["status"]) for r in shown] == [(intent["id"], "interrupted")]
    # Nothing is done on the strength of the old confirmation.
    assert len(actions_table(state)) == 1
    if reached:
        assert ("stale-session", "zed") not in second.findings()
    else:
        entry = second.findings()[("stale-session", "zed")]
        assert (entry["sightings"], entry["action"]["status"]) == (1, "unconfirmed")

    third = check(world.config_path)
    assert third.code == 0, third.stderr
    assert not world.hub.is_running("zed")
    if reached:
        assert hub_deletes(world, "zed") == 1  # never stopped twice
        assert len(actions_table(state)) == 1
    else:
        # Confirmed again from fresh observations: now it is done, once.
        assert third.findings()[("stale-session", "zed")]["action"]["status"] == "done"
        assert hub_deletes(world, "zed") == 2  # the hung request never did anything
        assert [r["status"] for r in actions_table(state)] == ["interrupted", "done"]


def test_daemon_killed_while_restarting_the_hub_never_restarts_it_twice(
        tmp_path: Path) -> None:
    remediation = {"confirm_after": 1,
                   "enabled": ["stop-server", "sync-routes", "delete-pod", "restart-hub"]}
    with SafeWorld(tmp_path / "world", timeout="30s", remediation=remediation,
                   sessions={"stuck_stop_after": "0s"}) as world:
        world.healthy(users=3, running=2)
        world.stuck_stop("sam")
        state = world.state_path
        hub_pod = world.hub.hub_pod
        assert hub_pod is not None
        blocker = Blocker(lambda req: req.method == "DELETE" and req.path.endswith(
            f"/pods/{hub_pod}"))
        world.kube._route = blocker.wrap(world.kube._route)  # type: ignore[method-assign]

        daemon = launch(world.config_path, "run")
        wait_for(lambda: blocker.held, "the hub pod delete", proc=daemon)
        [intent] = wait_for(lambda: started_rows(state), "the intent row", proc=daemon)
        kill(daemon)
        STATS.add("crashes")
        blocker.release.set()
        assert intent["name"] == "restart-hub"
        wait_for(lambda: world.hub.restarts == 1, "the hub to restart")

        passes = len(passes_table(state))
        again = launch(world.config_path, "run")
        wait_for(lambda: len(passes_table(state)) > passes, "a pass of the restarted daemon",
                 proc=again)
        # SIGTERM waits for the running pass, and this world's sources may each take up to
        # 30 s: the deadline covers a whole pass on a loaded machine.
        code, err = stop(again, timeout=240)
        assert code == 0, err

        rows = actions_table(state)
        assert [(r["name"], r["status"]) for r in rows] == [("restart-hub", "interrupted")]
        STATS.add("interrupted_seen")
        deletes = [p for m, p in world.kube.requests if m == "DELETE" and "/pods/" in p]
        assert len(deletes) == 1, deletes  # the restart reached the world once
        assert world.hub.restarts == 1
        assert not world.hub.is_running("sam")  # the restart did finish the stop


class Ledger:
    """Every mutating request a simulator receives, and what the world was at that moment."""

    def __init__(self, world: SafeWorld) -> None:
        self.world = world
        self.stops: list[tuple[str, bool]] = []  # (user, was running)
        self.pod_deletes: list[tuple[str, bool]] = []  # (pod, existed)
        self.problems: list[str] = []
        hub_handle, kube_route = world.hub.handle, world.kube._route

        def hub(req: Any) -> Any:
            if req.method == "DELETE" and "/users/" in req.path:
                user = req.path.split("/users/")[1].split("/")[0]
                self.stops.append((user, world.hub.is_running(user)))
            return hub_handle(req)

        def kube(req: Any, ident: Any) -> Any:
            if req.method == "DELETE" and "/pods/" in req.path:
                name = req.path.rsplit("/", 1)[1]
                self.pod_deletes.append((name, world.kube.get("Pod", name, "jhub") is not None))
            return kube_route(req, ident)

        world.hub.handle = hub  # type: ignore[method-assign]
        world.kube._route = kube  # type: ignore[method-assign]

    def audit(self, state: Path) -> list[str]:
        """Requests without an intent written before them, and repeats."""
        rows = actions_table(state)
        problems = []
        for user in {u for u, _ in self.stops}:
            intents = [r for r in rows if r["name"] == "stop-server"
                       and json.loads(r["params"])["user"] == user]
            arrived = [s for s in self.stops if s[0] == user]
            if len(arrived) > len(intents):
                problems.append(f"{len(arrived)} stop(s) of {user} reached the hub, "
                                f"{len(intents)} intent(s) in the audit log")
        for pod in {p for p, _ in self.pod_deletes}:
            intents = [r for r in rows if r["name"] in ("delete-pod", "restart-hub")
                       and json.loads(r["params"])["name"] == pod]
            arrived = [d for d in self.pod_deletes if d[0] == pod]
            if len(arrived) > len(intents):
                problems.append(f"{len(arrived)} delete(s) of pod {pod}, {len(intents)} "
                                "intent(s)")
        problems += [f"stop of {u} repeated: the server was no longer running"
                     for u, running in self.stops if not running]
        problems += [f"delete of pod {p} repeated: it was already gone"
                     for p, existed in self.pod_deletes if not existed]
        return problems


def slowly(real: Any) -> Any:
    """A request handler that takes 20 ms: a pass gets many points to die at."""

    def handle(req: Any) -> Any:
        time.sleep(0.02)
        return real(req)

    return handle


def test_kills_at_random_points_of_passes(tmp_path: Path) -> None:
    rng = random.Random(20261122)  # fixed: the same kill points on every run
    with SafeWorld(tmp_path / "world", timeout="5s",
                   remediation={"max_per_pass": 3}) as world:
        world.healthy(users=5, running=4)
        for user in ("s1", "s2", "s3"):
            world.stale_session(user)
        world.dead_session("d1")
        world.orphan_pod("o1")
        world.orphan_pod("o2")
        world.missing_route("m1")
        state = world.state_path
        ledger = Ledger(world)
        for sim in (world.hub, world.chp):
            wrap_method(sim, "handle", slowly)
        world.kube.fail(r".", status=None, hang=0.02)  # type: ignore[arg-type]

        interrupted_before: set[str] = set()
        for _ in range(6):
            seen = len(world.hub.requests)
            proc = launch(world.config_path, "check", "--json")
            wait_for(lambda seen=seen: len(world.hub.requests) > seen,  # type: ignore[misc]
                     "the pass to start", proc=proc)
            time.sleep(rng.uniform(0.0, 0.4))
            if proc.poll() is None:
                kill(proc)
                STATS.add("crashes")
            else:
                proc.communicate()
            interrupted_before = {r["finding_key"] for r in started_rows(state)}
            # The next start recovers: interrupted findings prove themselves again first.
            run = check(world.config_path)
            assert run.code == 0, run.stderr
            assert started_rows(state) == []
            for result in run.report["checks"]:
                for finding in result["findings"]:
                    if finding["key"] in interrupted_before:
                        STATS.add("interrupted_seen")
                        assert finding["action"]["status"] != "done", finding
            assert ledger.audit(state) == []

        world.kube.clear_faults()
        for _ in range(6):
            run = check(world.config_path)
            assert run.code == 0, run.stderr
            remaining = [f for f in run.findings().values()
                         if f["action"] and f["action"]["status"] != "disabled"]
            if not remaining:
                break
        else:
            raise AssertionError(f"not converged after the crashes: {remaining}")
        assert ledger.audit(state) == []
        for user in ("s1", "s2", "s3", "d1"):
            assert not world.hub.is_running(user)
        assert world.kube.get("Pod", "jupyter-o1", "jhub") is None
        statuses = {r["status"] for r in actions_table(state)}
        assert "started" not in statuses
