"""Randomized Nublado worlds: the labs and sessions checks never delete a lab that lives.

Each seed builds a Nublado hub with its lab controller (a
:class:`~watchdogd.sim.parts.NubladoPart`) and lets it drift between passes the ways
production drifts: labs start and stop, a stop whose DELETE never reached the controller,
pods vanish behind everyone's back, the controller forgets a lab. Some drift also happens
*during* a pass, right after the pass read a stale lab's state by name (its user respawns
the lab), so only the re-reads before acting can notice it. Remediation is on, with
no confirmation delay and no budget to hide behind.

The oracle judges every ``DELETE`` the controller receives at the moment it arrives, on
the simulators' truth: the hub must not run the user, and no lab pod may exist. After the
drift stops, the world must converge: no controller state for a lab the hub does not run
and whose pod is gone is left.
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import unquote

import pytest

from watchdogd.sim.nublado import LAB_PREFIX
from watchdogd.sim.parts import NubladoPart
from watchdogd.sim.world import SimClock, World

USERS = [f"u{i:02d}" for i in range(24)]


class Oracle:
    """Wraps the controller's HTTP handler: judges DELETEs, and races after list reads."""

    def __init__(self, world: World, part: NubladoPart, rng: random.Random) -> None:
        self.world, self.part, self.rng = world, part, rng
        self.violations: list[str] = []
        self.deletes = 0
        self.races = 0
        self.racing = True
        ctl = part.controller
        original = ctl.handle

        def handle(req: Any) -> Any:
            if req.method == "DELETE":
                self.judge(unquote(req.path.rsplit("/", 1)[-1]))
            response = original(req)
            if req.method == "GET" and req.path.startswith(LAB_PREFIX + "/") and self.racing:
                self.race(unquote(req.path.rsplit("/", 1)[-1]))
            return response

        ctl.handle = handle  # type: ignore[method-assign]

    def judge(self, user: str) -> None:
        self.deletes += 1
        namespace, name = self.part.controller.names(user)
        if self.part.hub.is_running(user):
            self.violations.append(f"DELETE of {user}'s lab while the hub runs it")
        if self.world.kube.get("Pod", name, namespace) is not None:
            self.violations.append(f"DELETE of {user}'s lab while its pod exists")

    def race(self, user: str) -> None:
        """Right after the pass read a stale lab by name (a lookup, or the re-read before
        acting): its user comes back, and the hub runs a new lab with a new pod."""
        ctl, hub = self.part.controller, self.part.hub
        if (user in ctl.running() and not hub.is_running(user)
                and self.rng.random() < 0.5):
            self.races += 1
            hub.start_server(user)


def drift(world: World, part: NubladoPart, rng: random.Random) -> None:
    hub, ctl = part.hub, part.controller
    for _ in range(rng.randint(2, 6)):
        user = rng.choice(USERS)
        namespace, name = ctl.names(user)
        move = rng.choice(["start", "stop", "lost-delete", "lost-delete", "pod-vanishes",
                           "forget"])
        running = hub.is_running(user)
        if move == "start" and not running and ctl.state(user) is None:
            hub.start_server(user)
        elif move == "stop" and running:
            hub.stop_server(user)
        elif move == "lost-delete" and running:
            hub.stop_server(user, via_controller=False)
        elif move == "pod-vanishes":
            world.kube.delete("Pod", name, namespace)
        elif move == "forget" and running:
            ctl.forget(user)


@pytest.mark.parametrize("seed", range(6))
def test_no_lab_that_lives_is_deleted_and_stale_labs_are_cleared(seed: int) -> None:
    rng = random.Random(seed)
    remediation = {"confirm_after": 1, "min_age": "0s", "max_per_pass": 50,
                   "max_per_hour": 500, "breaker_max": 50, "breaker_fraction": 1.0,
                   "max_repeats": 50,
                   "enabled": ["stop-server", "sync-routes", "delete-pod", "delete-lab"]}
    part = NubladoPart()
    with World(clock=SimClock(), parts=[part], remediation=remediation) as world:
        part.healthy(rng.sample(USERS, 12))
        oracle = Oracle(world, part, rng)
        clock = world.clock
        assert isinstance(clock, SimClock)
        engine = world.engine()
        for _ in range(6):
            drift(world, part, rng)
            engine.run_pass(only=["sessions", "labs"])
            clock.advance(minutes=5)
        oracle.racing = False
        for _ in range(3):
            report = engine.run_pass(only=["sessions", "labs"]).as_json()
            clock.advance(minutes=5)
        assert oracle.violations == []
        ctl, hub = part.controller, part.hub
        stale = [u for u in ctl.running() if not hub.is_running(u)
                 and world.kube.get("Pod", *reversed(ctl.names(u))) is None]
        assert stale == [], report
        assert all(c["status"] != "error" for c in report["checks"]), report
