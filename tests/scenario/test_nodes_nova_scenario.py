"""The nodes check with Nova behind the nodes, through the real engine, sources and simulators.

The oracle is the simulators' truth: which server is shelved, in ERROR or deleted, and
whether Nova answers at all. The node verdicts must never wait on Nova.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from watchdogd.sim.parts import CloudPart, ClusterPart
from watchdogd.sim.world import SimClock, World

Obj = dict[str, Any]


def nodes_target(report: Obj) -> Obj:
    (entry,) = [c for c in report["checks"] if c["check"] == "nodes"]
    return entry


def found(report: Obj) -> dict[tuple[str, str], Obj]:
    return {(f["kind"], f["subject"]): f for f in nodes_target(report)["findings"]}


@pytest.fixture
def world() -> Iterator[World]:
    cloud, cluster = CloudPart(seed=False), ClusterPart(dedicated_core=False)
    with World(clock=SimClock(), parts=[cloud, cluster]) as w:
        w.healthy(users=2, running=1)
        cloud.servers_for_nodes()
        yield w


def parts(world: World) -> tuple[CloudPart, ClusterPart]:
    cloud, cluster = world.parts["openstack"], world.parts["cluster"]
    assert isinstance(cloud, CloudPart) and isinstance(cluster, ClusterPart)
    return cloud, cluster


def test_shelved_error_and_deleted_servers_through_the_engine(world: World) -> None:
    cloud, cluster = parts(world)
    assert cloud.sim is not None
    cloud.shelved_node("node-3")
    cluster.node_not_ready("node-2")
    cloud.server_state("node-2", "error")
    cluster.node_not_ready("node-1")
    gone = cloud.servers_for_nodes()["node-1"]
    cloud.sim.remove_server(gone)

    report = world.engine().run_pass(only=["nodes"]).as_json()

    assert nodes_target(report)["status"] == "findings", nodes_target(report)["error"]
    got = found(report)
    assert set(got) == {("node-shelved", "node-3"), ("node-not-ready", "node-2"),
                        ("node-not-ready", "node-1")}
    assert got[("node-shelved", "node-3")]["severity"] == "info"
    assert got[("node-shelved", "node-3")]["action"] is None
    assert "is ERROR" in got[("node-not-ready", "node-2")]["message"]
    assert f"{gone} is deleted" in got[("node-not-ready", "node-1")]["message"]
    assert cloud.sim.count("nova", r"/servers/detail") == 1  # one paged list, one page


def test_nova_down_leaves_the_node_verdicts_and_keeps_a_seen_shelve(world: World) -> None:
    cloud, cluster = parts(world)
    assert cloud.sim is not None
    cloud.shelved_node("node-3")
    engine = world.engine()
    first = found(engine.run_pass(only=["nodes"]).as_json())
    assert ("node-shelved", "node-3") in first
    cloud.sim.down("nova")
    cluster.node_not_ready("node-2")
    cluster.node_pressure("node-1", "DiskPressure")
    world.clock.advance(minutes=5)

    report = engine.run_pass(only=["nodes"]).as_json()

    target = nodes_target(report)
    assert target["status"] == "findings" and target["error"] is None
    got = found(report)
    assert set(got) == {("node-shelved", "node-3"), ("node-not-ready", "node-2"),
                        ("node-pressure", "node-1/DiskPressure"),
                        ("servers-unreadable", cloud.cloud)}
    assert "last seen shelved" in got[("node-shelved", "node-3")]["message"]
    assert "unknown" in got[("node-not-ready", "node-2")]["message"]
    # the shelved node was not resolved and re-opened: the same finding, seen twice
    assert got[("node-shelved", "node-3")]["sightings"] == 2
