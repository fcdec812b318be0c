"""Randomized clusters with faults: the nodes and certs checks never harm a pod.

Each example plants failed and evicted pods (old and young), node pressure, NotReady nodes,
full image caches, misplaced core pods, stuck namespaces and TLS secrets (expiring, expired,
unreadable), then runs the ``nodes`` and ``certs`` checks with remediation on while the
Kubernetes API fails at random, and failed pods are recreated under the same name in the
middle of a pass. The referee checks every pass; then the faults stop and the cluster must
converge (every old failed pod deleted) and stay converged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.safety.cluster_world import CLUSTER_FAULTS, CLUSTER_PLANTS, ClusterModel, cluster_fault
from tests.safety.harness import converge
from tests.safety.profile import SAFETY, examples
from tests.safety.sessions_world import SafeWorld
from tests.safety.stats import STATS
from watchdogd.sim.parts import ClusterPart
from watchdogd.sim.world import SimClock

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
STEP = timedelta(minutes=20)
MIN_AGE = timedelta(minutes=30)

a_pass = st.fixed_dictionaries({
    "drift": st.lists(st.sampled_from(CLUSTER_PLANTS), max_size=2),
    "faults": st.lists(st.sampled_from(CLUSTER_FAULTS), min_size=1, max_size=2, unique=True),
})
spec_strategy = st.fixed_dictionaries({
    "policy": st.fixed_dictionaries({
        "confirm_after": st.sampled_from([2, 3]),
        "max_per_pass": st.integers(1, 5),
        "max_per_hour": st.integers(3, 20),
        "breaker_max": st.integers(2, 10),
        "breaker_fraction": st.sampled_from([0.5, 1.0, 0.2]),
        "breaker_min_subjects": st.sampled_from([20, 5]),
    }),
    "plants": st.lists(st.sampled_from(CLUSTER_PLANTS), min_size=2, max_size=8),
    "passes": st.lists(a_pass, min_size=2, max_size=5),
    "seed": st.integers(0, 2**16),
})


def run_cluster(spec: dict[str, Any]) -> list[str]:
    clock = SimClock(T0)
    part = ClusterPart(checks={"nodes": {"failed_pod_min_age": "30m"}})
    # Only the two checks of the part run; their faults would not touch the other sources,
    # but the world's remediation must allow delete-pod.
    with SafeWorld(clock=clock, timeout="0.5s", parts=[part], nodes=False,
                   remediation={**spec["policy"], "min_age": "0s",
                                "enabled": ["delete-pod"]},
                   extra={"clusters": {"sim": {"page_size": 3}}}) as world:
        model = ClusterModel(world, part, clock, min_age=MIN_AGE, seed=spec["seed"])
        for kind in spec["plants"]:
            model.plant(kind)
        driver = model.driver(STEP)
        try:
            for item in spec["passes"]:
                for kind in item["drift"]:
                    model.plant(kind)
                driver.run([cluster_fault(model, kind) for kind in item["faults"]])
            policy = spec["policy"]
            old = sum(1 for k in spec["plants"] if k.endswith("old"))
            bound = (policy["confirm_after"] + 8 + old // policy["max_per_pass"]
                     + 3 * (old // policy["max_per_hour"]) + len(spec["passes"]))
            converge(driver, bound)
        finally:
            driver.close()
    STATS.add("worlds")
    return driver.referee.violations


@settings(SAFETY, max_examples=examples(15))
@given(spec=spec_strategy)
def test_random_clusters_are_never_harmed_and_converge(spec: dict[str, Any]) -> None:
    violations = run_cluster(spec)
    assert not violations, "\n".join(violations)


def test_failed_pod_replaced_while_the_pass_decides_is_never_deleted() -> None:
    """Confirmed and planned with the old pod's uid; the controller recreates the pod under
    the same name right after the list; the delete must not take the new, running pod."""
    clock = SimClock(T0)
    part = ClusterPart(checks={"nodes": {"failed_pod_min_age": "30m"}})
    with SafeWorld(clock=clock, timeout="2s", parts=[part], nodes=False,
                   remediation={"confirm_after": 2, "min_age": "0s",
                                "enabled": ["delete-pod"]}) as world:
        model = ClusterModel(world, part, clock, min_age=MIN_AGE, seed=1)
        model.plant("failed-old")
        [name] = [p["metadata"]["name"] for p in world.kube.list("Pod", part.namespace)]
        driver = model.driver(STEP)
        try:
            driver.run()  # seen once
            report = driver.run([cluster_fault(model, "replaced-after-list")])
            [entry] = [f for c in report.checks for f in c.findings
                       if f.tracked.finding.kind == "failed-pods"]
            assert entry.action_status == "skipped", entry.action_detail
            survivor = world.kube.get("Pod", name, part.namespace)
            assert survivor is not None and survivor["status"]["phase"] == "Running"
        finally:
            driver.close()
        assert driver.referee.violations == []
