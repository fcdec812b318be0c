"""Ordinary misconfigurations that hide healthy pods from watchdogd's pod list.

Each world runs 40 healthy servers and two real stale sessions, then hides some healthy pods
from the configured list scope the way operators do by accident: pods in another namespace
(a KubeSpawner profile override that the spawner state records), pods that miss the selector
(a profile with other labels), a selector with a typo that matches nothing. watchdogd runs
passes with remediation on and no confirmation delay.

The oracle knows the whole simulated world, not the slice watchdogd lists: every Hub API
``DELETE`` of a server is judged at the moment it arrives against the pod the hub's spawner
state names, read from the Kubernetes store by name in whatever namespace it lives
(:class:`~tests.safety.sessions_world.SessionsModel`). No healthy server may be stopped; the
two real stale sessions are stopped whenever the view is plausible, and when it is not (the
selector typo of a hub where too many are unseen) nothing is stopped at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.safety.sessions_world import SafeWorld, SessionsModel
from watchdogd.sim.world import SimClock

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
HEALTHY = 40


def _move_namespace(world: SafeWorld, user: str, namespace: str) -> None:
    """The pod runs in ``namespace`` and the spawner state says so (a profile override)."""
    hub = world.hub
    info = hub.spawner(user)
    assert info is not None
    state = dict(info["state"] or {})
    pod = world.kube.get("Pod", state["pod_name"], state["namespace"])
    assert pod is not None
    world.kube.delete("Pod", state["pod_name"], state["namespace"])
    pod["metadata"]["namespace"] = namespace
    pod["metadata"].pop("resourceVersion", None)
    world.kube.put(pod)
    state["namespace"] = namespace
    with hub._lock:
        hub._db.execute("UPDATE spawners SET state = ? WHERE id = ?",
                        (json.dumps(state), info["id"]))
        hub._db.commit()


def _relabel(world: SafeWorld, user: str) -> None:
    """The pod carries other labels than the selector's (a profile with its own labels)."""
    info = world.hub.spawner(user)
    assert info is not None
    state = info["state"] or {}
    pod = world.kube.get("Pod", state["pod_name"], state["namespace"])
    assert pod is not None
    pod["metadata"]["labels"] = {"app": "profile-gpu"}
    world.kube.put(pod)


Hide = Callable[[SafeWorld, list[str]], None]


def hide_other_namespace(world: SafeWorld, users: list[str]) -> None:
    for user in users[:3]:
        _move_namespace(world, user, "profile-gpu")


def hide_by_labels(world: SafeWorld, users: list[str]) -> None:
    for user in users[:8]:
        _relabel(world, user)


def hide_nothing(world: SafeWorld, users: list[str]) -> None:
    pass


CASES: dict[str, tuple[Hide, dict[str, object], bool]] = {
    # name: (what hides pods, extra hub config, whether the real stale sessions get stopped)
    "pods in another namespace": (hide_other_namespace, {}, True),
    "selector matches a subset": (hide_by_labels, {}, True),
    "selector typo matches nothing": (hide_nothing,
                                      {"pod_selector": "component=singleuser-sever"}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_healthy_pods_are_never_stopped(case: str) -> None:
    hide, hub_extra, repairs = CASES[case]
    clock = SimClock(T0)
    remediation = {"dry_run": False, "confirm_after": 1, "min_age": "0s",
                   "enabled": ["stop-server", "sync-routes", "delete-pod"],
                   "max_per_pass": 50, "max_per_hour": 200, "breaker_max": 50,
                   "breaker_fraction": 1.0}
    with SafeWorld(clock=clock, timeout="2s", remediation=remediation,
                   extra={"hubs": {"main": hub_extra}} if hub_extra else None) as world:
        model = SessionsModel(world, clock)
        healthy = [model.start_healthy() for _ in range(HEALTHY)]
        stale = [model.plant("stale-session") for _ in range(2)]
        hide(world, healthy)
        world.write_config()
        engine = world.engine()
        statuses = []
        for _ in range(3):
            report = engine.run_pass(only=["sessions"])
            statuses.append(report.checks[0].status)
            clock.advance(minutes=5)
        assert model.harms() == [], case
        assert all(world.hub.is_running(user) for user in healthy), case
        if repairs:
            assert not any(world.hub.is_running(user) for user in stale), (case, statuses)


def test_a_wrong_namespace_is_implausible_and_stops_nothing() -> None:
    # The spawner states name pods that exist nowhere watchdogd can read: the kube context
    # points at another cluster. Modelled by removing every user pod from the one cluster
    # while the hub goes on believing in them: the 40 are invisible even by name.
    clock = SimClock(T0)
    remediation = {"dry_run": False, "confirm_after": 1, "min_age": "0s",
                   "enabled": ["stop-server"], "breaker_fraction": 1.0, "breaker_max": 100,
                   "max_per_pass": 100, "max_per_hour": 100}
    with SafeWorld(clock=clock, timeout="2s", remediation=remediation) as world:
        model = SessionsModel(world, clock)
        healthy = [model.start_healthy() for _ in range(HEALTHY)]
        for pod in world.kube.list("Pod", world.namespace):
            if pod["metadata"]["name"].startswith("jupyter-"):
                world.kube.delete("Pod", pod["metadata"]["name"], world.namespace)
        engine = world.engine()
        for _ in range(2):
            report = engine.run_pass(only=["sessions"])
            clock.advance(minutes=5)
        [check] = report.checks
        assert check.status == "error"
        assert [f.tracked.finding.kind for f in check.findings] == ["view-implausible"]
        assert all(world.hub.is_running(user) for user in healthy)


@pytest.mark.parametrize("skew", [timedelta(days=1), -timedelta(days=1), timedelta(minutes=20)])
def test_a_skewed_clock_never_stops_a_user_who_is_starting(skew: timedelta) -> None:
    """watchdogd's clock against the hub's: a spawn's age is the hub's and watchdogd's own.

    Passes run a minute apart (the shipped interval is 30 s), with confirmation after two,
    while users start servers whose spawns take a few minutes; halfway the clock is
    corrected (an NTP step). The oracle judges each stop as it reaches the hub, by the
    hub's own record of when the spawn began and the world's true time.
    """
    clock = SimClock(T0)
    remediation = {"dry_run": False, "confirm_after": 2, "min_age": "0s",
                   "enabled": ["stop-server", "sync-routes", "delete-pod"],
                   "breaker_fraction": 1.0}
    with SafeWorld(clock=clock, timeout="2s", remediation=remediation,
                   sessions={"stuck_spawn_after": "15m"}) as world:
        model = SessionsModel(world, clock)
        healthy = [model.start_healthy() for _ in range(6)]
        # A truly stuck spawn beside them: stopping it is allowed once both clocks agree
        # (after the clock step forward, watchdogd's own sighting may; the hub's says 40 m).
        world.stuck_spawn(model.name(), minutes=40)
        engine = world.engine()
        offset = [skew]
        engine.clock = lambda: clock() + offset[0]
        starting: list[str] = []
        for minute in range(12):
            if minute % 3 == 0:
                starting.append(model.start_spawning())
            engine.run_pass(only=["sessions"])
            assert model.harms() == [], (skew, minute)
            for user in starting[:-1]:  # a spawn takes about three minutes
                if world.hub.pending(user) == "spawn":
                    world.hub.set_pending(user, "", None)
            if minute == 6:
                offset[0] = timedelta(0)
            clock.advance(minutes=1)
        assert all(world.hub.is_running(user) for user in healthy + starting[:-1])
