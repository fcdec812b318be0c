"""detect() of the nodes check with Nova behind the nodes: shelved, broken and deleted servers.

The oracle is the server's state as built into the snapshot; each test says what the
verdict must be for a node whose server is in that state, under each listing scope.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from watchdogd.checks import REGISTRY, nodes
from watchdogd.config import Config
from watchdogd.model import Finding, Snapshot
from watchdogd.sim.objects import node

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def cloud_node(name: str, *, ready: bool | None = False,
               cordoned: bool = False) -> dict[str, Any]:
    return node(name, now=NOW, ready=ready, unschedulable=cordoned)


def sid(obj: dict[str, Any]) -> str:
    found = nodes.server_id(obj)
    assert found is not None
    return found


def server(obj: dict[str, Any], status: str, vm_state: str | None = None) -> dict[str, Any]:
    return {"id": sid(obj), "name": obj["metadata"]["name"], "status": status,
            "OS-EXT-STS:vm_state": vm_state or status.lower(), "OS-EXT-STS:task_state": None,
            "updated": "2026-11-21T00:00:00Z", "tenant_id": "p1"}


def snapshot(nodes_: list[dict[str, Any]], servers: list[dict[str, Any]] | None, *,
             all_projects: bool = True, error: str | None = None,
             marks: dict[str, datetime] | None = None) -> Snapshot:
    settings = nodes.TargetSettings("js2", nodes.Settings(), ("js2",))
    snap = Snapshot("nodes", "js2", {"nodes": nodes_, "namespaces": [], "failed_pods": []},
                    settings=settings, marks=marks or {}, optional=frozenset({"servers:js2"}))
    if error is not None:
        snap.errors["servers:js2"] = error
    else:
        snap.observations["servers:js2"] = {"items": servers or [], "pages": 1,
                                            "all_projects": all_projects}
    return snap


def verdicts(snap: Snapshot) -> dict[tuple[str, str], Finding]:
    return {(f.kind, f.subject): f for f in nodes.detect(snap, NOW).findings}


def test_targets_need_the_servers_of_the_clouds_that_serve_the_cluster() -> None:
    config = Config.model_validate({
        "clusters": {"a": {"in_cluster": True}, "b": {"in_cluster": True}},
        "clouds": {"c1": {"cloud": "c1", "clusters": ["a"]},
                   "c2": {"cloud": "c2", "clusters": ["a", "b"]}}})
    a, b = REGISTRY["nodes"].targets_for(config)
    assert [n.key for n in a.needs if n.source == "openstack"] == ["servers:c1", "servers:c2"]
    assert a.optional == frozenset({"servers:c1", "servers:c2"})
    assert b.optional == frozenset({"servers:c2"})
    assert {(n.target, n.call) for n in b.needs if n.source == "openstack"} == {
        ("c2", "servers")}
    off = Config.model_validate({**config.model_dump(), "checks": {"nodes": {"nova": False}}})
    assert all(not t.optional and all(n.source == "kube" for n in t.needs)
               for t in REGISTRY["nodes"].targets_for(off))


@pytest.mark.parametrize("status", ["SHELVED", "SHELVED_OFFLOADED"])
def test_shelved_and_cordoned_is_node_shelved_info_without_action(status: str) -> None:
    n = cloud_node("node-4", cordoned=True)
    detection = nodes.detect(snapshot([n], [server(n, status)]), NOW)
    [finding] = detection.findings
    assert (finding.kind, finding.severity.label, finding.action) == ("node-shelved", "info",
                                                                       None)
    assert status in finding.message and finding.evidence["server"]["id"] == sid(n)
    assert detection.marks == {f"shelved:node-4:{sid(n)}"}


def test_shelved_but_not_cordoned_still_pages() -> None:
    n = cloud_node("node-4")
    found = verdicts(snapshot([n], [server(n, "SHELVED_OFFLOADED")]))
    finding = found[("node-not-ready", "node-4")]
    assert finding.severity.label == "critical"
    assert "not cordoned" in finding.message


@pytest.mark.parametrize("status, words", [
    ("ERROR", "is ERROR"), ("SHUTOFF", "is SHUTOFF"), ("ACTIVE", "is ACTIVE")])
def test_not_ready_says_what_its_server_is(status: str, words: str) -> None:
    n = cloud_node("node-4", cordoned=True)
    finding = verdicts(snapshot([n], [server(n, status)]))[("node-not-ready", "node-4")]
    assert finding.severity.label == "critical"
    assert words in finding.message and finding.evidence["server_state"] == status


def test_a_server_missing_from_a_complete_list_is_deleted() -> None:
    gone, alive = cloud_node("node-4", cordoned=True), cloud_node("node-1", ready=True)
    finding = verdicts(snapshot([gone, alive], [server(alive, "ACTIVE")]))[
        ("node-not-ready", "node-4")]
    assert "is deleted" in finding.message and finding.evidence["server_state"] == "deleted"


def test_own_project_listing_never_calls_a_missing_server_deleted() -> None:
    gone, alive = cloud_node("node-4", cordoned=True), cloud_node("node-1", ready=True)
    finding = verdicts(snapshot([gone, alive], [server(alive, "ACTIVE")], all_projects=False))[
        ("node-not-ready", "node-4")]
    assert "deleted" not in finding.message and "own project only" in finding.message
    assert finding.evidence["server_state"] == "not-visible"


def test_a_list_without_any_of_the_clusters_servers_proves_nothing() -> None:
    """A cloud (or region) that is not the cluster's: its complete list holds none of them."""
    gone, alive = cloud_node("node-4", cordoned=True), cloud_node("node-1", ready=True)
    other = {**server(alive, "ACTIVE"), "id": "00000000-0000-0000-0000-000000000000"}
    finding = verdicts(snapshot([gone, alive], [other]))[("node-not-ready", "node-4")]
    assert finding.evidence["server_state"] == "not-visible"
    assert "deleted" not in finding.message


def test_unreadable_servers_leave_the_node_verdicts_and_say_so() -> None:
    broken = cloud_node("node-4", cordoned=True)
    pressed = node("node-1", now=NOW, pressure=["DiskPressure"])
    snap = snapshot([broken, pressed], None, error="openstack js2: HTTP 503")
    assert snap.complete  # the engine judges the target, it does not error it
    found = verdicts(snap)
    assert set(found) == {("servers-unreadable", "js2"), ("node-not-ready", "node-4"),
                          ("node-pressure", "node-1/DiskPressure")}
    assert found[("servers-unreadable", "js2")].severity.label == "warning"
    assert "HTTP 503" in found[("servers-unreadable", "js2")].message
    assert "unknown" in found[("node-not-ready", "node-4")].message


def test_a_node_seen_shelved_stays_shelved_while_nova_is_unreadable() -> None:
    n = cloud_node("node-4", cordoned=True)
    mark = f"shelved:node-4:{sid(n)}"
    seen = NOW - timedelta(hours=3)
    detection = nodes.detect(snapshot([n], None, error="openstack js2: HTTP 503",
                                      marks={mark: seen}), NOW)
    found = {(f.kind, f.subject): f for f in detection.findings}
    assert found[("node-shelved", "node-4")].evidence["shelved_since"] == seen.isoformat()
    assert mark in detection.marks
    # uncordoned meanwhile: no longer the operator's scale-down, it pages again
    n2 = cloud_node("node-4")
    n2["spec"]["providerID"] = n["spec"]["providerID"]
    again = verdicts(snapshot([n2], None, error="x", marks={mark: seen}))
    assert ("node-not-ready", "node-4") in again and ("node-shelved", "node-4") not in again


def test_nodes_without_an_openstack_provider_id_are_judged_as_before() -> None:
    n = cloud_node("kind-node", cordoned=True)
    n["spec"]["providerID"] = "kind://docker/kind/kind-node"
    found = verdicts(snapshot([n], []))
    assert found[("node-not-ready", "kind-node")].evidence.get("server_state") is None


def test_ready_nodes_never_look_at_their_server() -> None:
    n = cloud_node("node-1", ready=True)
    assert verdicts(snapshot([n], [server(n, "SHELVED")])) == {}


def test_provider_id_forms() -> None:
    n = cloud_node("x")
    for value, expected in [("openstack:///abc", "abc"), ("openstack://RegionOne/abc", "abc"),
                            ("aws:///us-east-1a/i-1", None), ("", None)]:
        n["spec"]["providerID"] = value
        assert nodes.server_id(n) == expected
