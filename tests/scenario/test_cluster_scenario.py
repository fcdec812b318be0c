"""The real engine, sources and Kubernetes simulator: the certs and nodes checks end to end.

Every finding kind is planted with :class:`~watchdogd.sim.parts.ClusterPart` and found;
``delete-pod`` of failed pods honours confirmation, dry-run, the failed-pod minimum age,
the budget, the breaker and the uid precondition; a list that fails (an error status, a
hang, a continue token that expires half way) makes the target ``error`` and acts on nothing.
Simulated time (a SimClock shared by the world and the engine) only moves when told to.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.model import PreconditionFailed
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.objects import failed_pod
from watchdogd.sim.parts import ClusterPart
from watchdogd.sim.seed import seed_cluster
from watchdogd.sim.world import SimClock, World
from watchdogd.sources import FACTORIES, Sources
from watchdogd.sources.kube import KubeSource
from watchdogd.store import Store

Obj = dict[str, Any]
ONLY = ["certs", "nodes"]


def findings(report: Obj, check: str | None = None) -> dict[tuple[str, str], Obj]:
    return {(f["kind"], f["subject"]): f for c in report["checks"]
            if check is None or c["check"] == check for f in c["findings"]}


def target(report: Obj, check: str, name: str = "sim") -> Obj:
    entries: list[Obj] = [c for c in report["checks"]
                          if c["check"] == check and c["target"] == name]
    (entry,) = entries
    return entry


def action_statuses(report: Obj) -> dict[str, str]:
    return {f["subject"]: f["action"]["status"] for c in report["checks"]
            for f in c["findings"] if f["action"]}


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


def make_world(clock: SimClock, **kwargs: Any) -> World:
    part = ClusterPart(checks=kwargs.pop("checks", None))
    return World(clock=clock, parts=[part], **kwargs)


@pytest.fixture
def world(clock: SimClock) -> Iterator[World]:
    with make_world(clock) as w:
        w.healthy(users=3, running=2)
        yield w


def part_of(world: World) -> ClusterPart:
    part = world.parts["cluster"]
    assert isinstance(part, ClusterPart)
    return part


def pod_exists(world: World, subject: str) -> bool:
    namespace, name = subject.split("/")
    return world.kube.get("Pod", name, namespace) is not None


# -- every kind, found --------------------------------------------------------------------------


def test_every_planted_problem_is_found(world: World) -> None:
    part = part_of(world)
    part.node_pressure("node-1", "DiskPressure")
    part.node_pressure("node-1", "MemoryPressure")
    part.node_not_ready("node-2", unknown=True)
    part.image_cache_pressure("node-3")
    part.failed_pods(2, evicted=True)
    part.failed_pods(1, evicted=False, prefix="crashed")
    part.core_pod_misplaced("proxy", node_name="node-1")
    part.stuck_namespace("nublado-carol")
    part.tls_secret("hub-tls", days=5, annotations={"cert-manager.io/certificate-name": "hub"})
    part.tls_secret("proxy-public-tls-acme", days=20)
    part.tls_secret("old", days=-1)
    healthy = part.tls_secret("docs", days=200)
    part.broken_secret("garbage-tls")
    part.broken_secret("no-crt", missing=True)
    world.kube.reset_requests()

    report = world.engine().run_pass(only=ONLY).as_json()

    assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]
    found = findings(report)
    assert set(part.planted) <= set(found), set(part.planted) - set(found)
    assert set(found) - set(part.planted) == set(), "only what was planted"
    assert ("cert-expiring", healthy) not in found
    severities = {key: f["severity"] for key, f in found.items()}
    assert severities[("cert-expiring", "staging/hub-tls")] == "critical"
    assert severities[("cert-expiring", "staging/proxy-public-tls-acme")] == "warning"
    assert severities[("cert-expiring", "staging/old")] == "critical"
    assert severities[("node-not-ready", "node-2")] == "critical"
    assert severities[("image-cache-pressure", "node-3")] == "warning"
    assert "cmctl renew -n staging hub" in found[("cert-expiring", "staging/hub-tls")]["message"]
    assert "no tls.crt" in found[("cert-unreadable", "staging/no-crt")]["message"]
    # Lists are narrowed by the API server, never filtered after fetching everything.
    paths = [unquote(path) for _method, path in world.kube.requests]
    assert any("/api/v1/secrets?" in p and "fieldSelector=type=kubernetes.io/tls" in p
               for p in paths), paths
    assert any("/api/v1/pods?" in p and "fieldSelector=status.phase=Failed" in p
               for p in paths), paths
    assert any("/api/v1/namespaces?" in p and "fieldSelector=status.phase=Terminating" in p
               for p in paths), paths
    # The certs check is notify-only: no finding of it carries an action.
    assert all(f["action"] is None for f in target(report, "certs")["findings"])


def test_seed_demo_shows_every_kind(tmp_path: Path) -> None:
    with KubeSim() as kube:
        seed = seed_cluster(kube, cluster="demo", workdir=tmp_path)
        try:
            config = Config.model_validate({
                "state": {"url": f"sqlite:///{tmp_path}/state.db"},
                "clusters": {"demo": {"kubeconfig": kube.write_kubeconfig(tmp_path / "kc")}},
                "checks": seed.checks,
            })
            engine = Engine(config, Store(config.state.resolved_url()), Sources(config))
            report = engine.run_pass(only=ONLY).as_json()
            engine.sources.close()
        finally:
            seed.close()
    assert report["summary"]["errors"] == 0, [c["error"] for c in report["checks"]]
    for check, expected in seed.expected.items():
        kinds = {f["kind"] for c in report["checks"] if c["check"] == check
                 for f in c["findings"]}
        assert kinds == expected, check


# -- delete-pod: confirmation, dry-run, min age, budget, breaker, uid -----------------------


def test_failed_pods_are_deleted_once_confirmed_then_resolved(world: World,
                                                              clock: SimClock) -> None:
    part = part_of(world)
    pods = part.failed_pods(2)
    engine = world.engine()
    first = engine.run_pass(only=ONLY).as_json()
    assert {action_statuses(first)[p] for p in pods} == {"unconfirmed"}
    assert all(pod_exists(world, p) for p in pods)
    clock.advance(minutes=5)
    second = engine.run_pass(only=ONLY).as_json()
    assert {action_statuses(second)[p] for p in pods} == {"done"}
    assert not any(pod_exists(world, p) for p in pods)
    audit = engine.store.actions(limit=10)
    assert {(a.name, a.status) for a in audit} == {("delete-pod", "done")}
    clock.advance(minutes=5)
    third = engine.run_pass(only=ONLY).as_json()
    assert sorted(target(third, "nodes")["resolved"]) == sorted(
        f"nodes/sim/failed-pods/{p}" for p in pods)


def test_dry_run_changes_nothing(world: World, clock: SimClock) -> None:
    [subject] = part_of(world).failed_pods(1)
    engine = world.engine(dry_run=True)
    for _ in range(3):
        report = engine.run_pass(only=ONLY).as_json()
        clock.advance(minutes=5)
    assert action_statuses(report)[subject] == "dry-run"
    assert pod_exists(world, subject)
    assert engine.store.actions(limit=10) == []


def test_young_failed_pods_wait_for_min_age(clock: SimClock) -> None:
    with make_world(clock, checks={"nodes": {"failed_pod_min_age": "30m"}}) as world:
        [subject] = part_of(world).failed_pods(1, failed_for=timedelta(minutes=10))
        engine = world.engine()
        for _ in range(3):
            report = engine.run_pass(only=ONLY).as_json()
            [finding] = [f for f in target(report, "nodes")["findings"]
                         if f["subject"] == subject]
            assert finding["action"] is None
            clock.advance(minutes=5)
        assert pod_exists(world, subject)  # failed 25 minutes ago now
        clock.advance(minutes=5)
        report = engine.run_pass(only=ONLY).as_json()
        assert action_statuses(report)[subject] == "done"  # confirmed long ago
        assert not pod_exists(world, subject)


def test_budget_limits_deletes_per_pass(clock: SimClock) -> None:
    with make_world(clock, remediation={"max_per_pass": 3}) as world:
        pods = part_of(world).failed_pods(7)
        engine = world.engine()
        engine.run_pass(only=ONLY)
        clock.advance(minutes=5)
        report = engine.run_pass(only=ONLY).as_json()
        statuses = [action_statuses(report)[p] for p in pods]
        assert statuses.count("done") == 3
        assert statuses.count("over-budget") == 4
        assert sum(pod_exists(world, p) for p in pods) == 4
        clock.advance(minutes=5)
        engine.run_pass(only=ONLY)
        assert sum(pod_exists(world, p) for p in pods) == 1


def test_breaker_opens_on_mass_deletion(world: World, clock: SimClock) -> None:
    pods = part_of(world).failed_pods(12)  # breaker_max is 10
    engine = world.engine()
    engine.run_pass(only=ONLY)
    clock.advance(minutes=5)
    report = engine.run_pass(only=ONLY).as_json()
    assert "12 destructive actions planned" in target(report, "nodes")["breaker"]
    assert {action_statuses(report)[p] for p in pods} == {"breaker-open"}
    assert all(pod_exists(world, p) for p in pods)


def test_a_replaced_pod_is_never_deleted(world: World, clock: SimClock) -> None:
    """The pod is recreated under the same name between detection and action: the uid
    precondition makes the delete a no-op and the action is recorded as skipped."""
    [subject] = part_of(world).failed_pods(1)
    namespace, name = subject.split("/")
    replaced: list[str] = []

    class Racing(KubeSource):
        def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> str:
            fresh = failed_pod(namespace, name, now=clock())
            replaced.append(world.kube.put(fresh)["metadata"]["uid"])
            return super().delete_pod(namespace, name, uid)

    config = world.load_config()
    factories = dict(FACTORIES)
    factories["kube"] = lambda c, n: Racing(n, c.clusters[n])
    engine = Engine(config, Store(config.state.resolved_url()), Sources(config, factories),
                    clock=clock)
    engine.run_pass(only=ONLY)
    clock.advance(minutes=5)
    report = engine.run_pass(only=ONLY).as_json()
    assert action_statuses(report)[subject] == "skipped"
    survivor = world.kube.get("Pod", name, namespace)
    assert survivor is not None and survivor["metadata"]["uid"] == replaced[0]
    engine.sources.close()
    engine.store.close()
    with pytest.raises(PreconditionFailed, match="replaced"):
        Racing("sim", config.clusters["sim"]).delete_pod(namespace, name, "not-the-uid")


# -- failed lists: error, never "no findings" ---------------------------------------------------


def test_failing_node_list_is_an_error_and_acts_on_nothing(world: World,
                                                          clock: SimClock) -> None:
    part = part_of(world)
    pods = part.failed_pods(2)
    part.node_not_ready("node-2")
    engine = world.engine()
    good = engine.run_pass(only=ONLY).as_json()
    assert ("node-not-ready", "node-2") in findings(good, "nodes")
    world.kube.fail(r"^/api/v1/nodes$", status=500)
    for _ in range(2):
        clock.advance(minutes=5)
        report = engine.run_pass(only=ONLY).as_json()
        nodes = target(report, "nodes")
        assert nodes["status"] == "error"
        assert "list nodes" in nodes["error"] and "500" in nodes["error"]
        assert nodes["findings"] == [] and nodes["resolved"] == []
    assert all(pod_exists(world, p) for p in pods)  # confirmed, yet never deleted
    assert engine.store.actions(limit=10) == []
    still_open = {f["subject"] for f in engine.store.findings() if f["check"] == "nodes"}
    assert "node-2" in still_open  # an incomplete pass resolves nothing


def test_forbidden_secret_list_is_an_error(world: World) -> None:
    part_of(world).tls_secret("hub-tls", days=5)
    world.kube.fail(r"^/api/v1/secrets$", status=403)
    report = world.engine().run_pass(only=ONLY).as_json()
    certs = target(report, "certs")
    assert certs["status"] == "error" and "403" in certs["error"]
    assert certs["findings"] == []
    assert target(report, "nodes")["status"] == "ok"


def test_expired_continue_token_fails_the_failed_pod_list(world: World) -> None:
    world.kube.put_many(failed_pod("staging", f"bulk-{i}", now=world.clock())
                        for i in range(501))  # two pages of 500
    world.kube.expire_continue_after(1)
    report = world.engine().run_pass(only=ONLY).as_json()
    nodes = target(report, "nodes")
    assert nodes["status"] == "error" and "410" in nodes["error"]
    assert nodes["findings"] == []


def test_hanging_api_is_an_error_after_the_timeout(clock: SimClock) -> None:
    with make_world(clock, timeout="1s") as world:
        world.kube.fail(r"^/api/v1/namespaces$", hang=30)
        report = world.engine().run_pass(only=ONLY).as_json()
        nodes = target(report, "nodes")
        assert nodes["status"] == "error"
        assert "no answer within 1s" in nodes["error"]
