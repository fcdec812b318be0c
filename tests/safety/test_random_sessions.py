"""Randomized hub worlds with faults: watchdogd never does harm, and repairs what it may.

Each example builds a world (KubeSim, ChpSim and HubSim over real HTTP) with random users,
servers and planted problems, random remediation limits, random paging, then runs passes
with the remediation ON while the world drifts and every source takes random faults: down,
slow past the client timeout, 500/503, 401/403, a short page, a cut body, a 410 in the middle
of a list, a malformed answer, the world changing between two reads, a failing stop or pod
delete. The :class:`~tests.safety.harness.Referee` checks every pass (I1, I2, I3, I5); then
the faults stop and the world must converge within a bound and stay converged (I4).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.safety.harness import converge, convergence_bound
from tests.safety.profile import SAFETY, examples
from tests.safety.sessions_world import (
    FAULT_KINDS,
    NAMED,
    PROBLEMS,
    SafeWorld,
    SessionsModel,
    sessions_fault,
)
from tests.safety.stats import STATS
from watchdogd.sim.world import SimClock

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)

fault = st.sampled_from(sorted(FAULT_KINDS)).flatmap(
    lambda source: st.tuples(st.just(source), st.sampled_from(FAULT_KINDS[source])))

drift = st.one_of(
    st.tuples(st.just("start"), st.none()),
    st.tuples(st.just("stop"), st.integers(0, 50)),
    st.tuples(st.just("plant"), st.sampled_from(PROBLEMS + NAMED)),
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("spawning"), st.none()),
)

a_pass = st.fixed_dictionaries({
    "drift": st.lists(drift, max_size=2),
    "faults": st.lists(fault, min_size=1, max_size=2, unique_by=lambda f: f[0]),
})

policy = st.fixed_dictionaries({
    "confirm_after": st.sampled_from([2, 3]),
    "max_per_pass": st.integers(1, 5),
    "max_per_hour": st.integers(2, 20),
    "breaker_max": st.integers(1, 10),
    "breaker_fraction": st.sampled_from([0.2, 0.5, 1.0]),
    "breaker_min_subjects": st.sampled_from([1, 5, 20]),
})

#: a fault that lasts several passes in a row: (source, kind), first pass, length
outage = st.tuples(fault, st.integers(0, 5), st.integers(2, 4))

world_spec = st.fixed_dictionaries({
    "policy": policy,
    "restart_hub": st.booleans(),
    "healthy": st.integers(1, 8),
    "problems": st.lists(st.sampled_from(PROBLEMS + NAMED), min_size=2, max_size=8),
    "hub_page_cap": st.sampled_from([None, 2, 3]),
    "kube_page": st.sampled_from([2, 3, 500]),
    "passes": st.lists(a_pass, min_size=2, max_size=6),
    "outages": st.lists(outage, max_size=2),
    # watchdogd's clock against the hub's, the proxy's and the cluster's: ages must be
    # taken on one clock each, so no skew may stop a healthy or a starting server
    "skew": st.sampled_from([timedelta(0), timedelta(days=15), -timedelta(days=15),
                             timedelta(hours=3), -timedelta(minutes=40)]),
    # the pass after which watchdogd's clock is corrected (None: never)
    "corrected_after": st.one_of(st.none(), st.integers(0, 5)),
})


def faults_of(spec: dict[str, Any], index: int) -> list[tuple[str, str]]:
    """The faults of pass ``index``: its own, and the outages covering it (one per source)."""
    chosen = dict(spec["passes"][index]["faults"])
    for (source, kind), first, length in spec["outages"]:
        if first <= index < first + length:
            chosen[source] = kind
    return sorted(chosen.items())

PASSES_PER_HOUR = 3  # the simulated clock moves 20 minutes a pass


def run_world(spec: dict[str, Any]) -> list[str]:
    """Build, drive and referee one generated world; return the violations."""
    clock = SimClock(T0)
    enabled = ["stop-server", "sync-routes", "delete-pod"]
    if spec["restart_hub"]:
        enabled.append("restart-hub")
    remediation = {**spec["policy"], "min_age": "0s", "enabled": enabled}
    extra = {"clusters": {"sim": {"page_size": spec["kube_page"]}}}
    with SafeWorld(clock=clock, timeout="0.5s", remediation=remediation,
                   sessions={"stuck_spawn_after": "15m", "stuck_stop_after": "10m"},
                   extra=extra) as world:
        model = SessionsModel(world, clock, hub_page_cap=spec["hub_page_cap"])
        for _ in range(spec["healthy"]):
            model.start_healthy()
        for kind in spec["problems"]:
            model.plant(kind)
        skew = [spec["skew"]]
        driver = model.driver(skew=lambda: skew[0])
        if spec["skew"]:
            STATS.add("skewed_clocks")
        try:
            for index, step in enumerate(spec["passes"]):
                for event in step["drift"]:
                    model.drift(event)
                driver.run([sessions_fault(model, source, kind)
                            for source, kind in faults_of(spec, index)])
                if index == spec["corrected_after"]:
                    skew[0] = timedelta(0)
            broken = len(model.truth().broken())
            bound = convergence_bound(driver.referee.policy, broken + 2, PASSES_PER_HOUR)
            converge(driver, bound, world=lambda: model.truth().broken())
        finally:
            driver.close()
        STATS.add("worlds")
        return driver.referee.violations


@settings(SAFETY, max_examples=examples(25))
@given(spec=world_spec)
def test_random_hub_worlds_are_never_harmed_and_converge(spec: dict[str, Any]) -> None:
    violations = run_world(spec)
    assert not violations, "\n".join(violations)
