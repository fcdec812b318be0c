"""detect() of the nodes check on hand-built snapshots (objects from watchdogd.sim.objects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from watchdogd.checks import REGISTRY, nodes
from watchdogd.config import Config
from watchdogd.model import ImplausibleData, Need, Severity, Snapshot
from watchdogd.sim.objects import (
    CORE_LABEL,
    GiB,
    failed_pod,
    images,
    node,
    pod,
    stuck_namespace,
)

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
CORE = dict([CORE_LABEL])


def healthy(name: str = "node-1", **kwargs: Any) -> dict[str, Any]:
    return node(name, now=NOW, **kwargs)


def snapshot(*, nodes_: list[dict[str, Any]] | None = None,
             failed: list[dict[str, Any]] | None = None,
             namespaces: list[dict[str, Any]] | None = None,
             core_pods: list[dict[str, Any]] | None = None,
             marks: dict[str, datetime] | None = None, **check: Any) -> Snapshot:
    settings = nodes.TargetSettings("js2", nodes.Settings(**check))
    observations: dict[str, Any] = {
        "nodes": [healthy()] if nodes_ is None else nodes_,
        "namespaces": namespaces or [],
    }
    if settings.check.failed_pod_namespaces:
        for ns in settings.check.failed_pod_namespaces:
            observations[f"failed_pods:{ns}"] = [
                p for p in failed or [] if p["metadata"]["namespace"] == ns]
    else:
        observations["failed_pods"] = failed or []
    if settings.check.dedicated_core:
        observations["core_pods"] = core_pods or []
    return Snapshot("nodes", "js2", observations, settings=settings, marks=marks or {})


def detect(**kwargs: Any) -> list[Any]:
    return nodes.detect(snapshot(**kwargs), NOW).findings


def kinds(findings: list[Any]) -> list[tuple[str, str, str]]:
    return [(f.kind, f.subject, f.severity.label) for f in findings]


# -- settings, parsing, targets ---------------------------------------------------------------


def test_registered_with_its_kinds() -> None:
    assert set(REGISTRY["nodes"].kinds) == {
        "node-pressure", "node-not-ready", "failed-pods", "image-cache-pressure",
        "core-pod-misplaced", "namespace-stuck-terminating", "node-shelved",
        "servers-unreadable"}


@pytest.mark.parametrize("text, value", [
    ("102687672Ki", 102687672 * 1024), ("100Gi", 100 * GiB), ("1.5G", 1_500_000_000),
    ("1e9", 1_000_000_000), ("500M", 500_000_000), ("123", 123), (8 * GiB, 8 * GiB),
    ("250m", 0), (".5Ki", 512),
])
def test_parse_quantity(text: Any, value: int) -> None:
    assert nodes.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "12 parsecs", "1.2.3Gi", True])
def test_parse_quantity_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        nodes.parse_quantity(text)


def test_thresholds() -> None:
    percent = nodes.Threshold.parse("imagefs.available<15%")
    assert percent.free_bytes(100 * GiB) == 15 * GiB
    assert str(percent) == "imagefs.available<15%"
    absolute = nodes.Threshold.parse("nodefs.available < 10Gi")
    assert absolute.free_bytes(100 * GiB) == 10 * GiB
    for bad in ("memory.available<100Mi", "imagefs.available>15%", "imagefs.available<150%"):
        with pytest.raises(ValueError, match=r"threshold|range"):
            nodes.Threshold.parse(bad)


@pytest.mark.parametrize("section, message", [
    ({"eviction_threshold": "memory.available<1Gi"}, "not an eviction threshold"),
    ({"next_image_size": "huge"}, "not a quantity"),
    ({"core_node_label": "a=b,c=d"}, "expected key=value"),
    ({"failed_pod_min_age": "soon"}, "invalid duration"),
    ({"min_age": "1h"}, "Extra inputs"),
])
def test_bad_settings(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        nodes.Settings.model_validate(section)


def test_next_image_size_forms() -> None:
    assert nodes.Settings().next_image_bytes() is None  # "largest"
    assert nodes.Settings(next_image_size="0").next_image_bytes() == 0
    assert nodes.Settings(next_image_size="off").next_image_bytes() == 0
    assert nodes.Settings.model_validate({"next_image_size": 5 * GiB}).next_image_bytes() \
        == 5 * GiB
    assert nodes.Settings(next_image_size="8Gi").next_image_bytes() == 8 * GiB


def test_targets_cover_every_cluster_with_narrow_lists() -> None:
    config = Config.model_validate({"clusters": {"a": {"in_cluster": True},
                                                 "b": {"in_cluster": True}}})
    targets = REGISTRY["nodes"].targets_for(config)
    assert [t.name for t in targets] == ["a", "b"]
    assert targets[0].needs == (
        Need.of("nodes", "kube", "a", "list_objects", kind="Node"),
        Need.of("namespaces", "kube", "a", "list_objects", kind="Namespace",
                field_selector="status.phase=Terminating"),
        Need.of("failed_pods", "kube", "a", "pods", field_selector="status.phase=Failed"),
    )
    config = Config.model_validate({
        "clusters": {"a": {"in_cluster": True}, "b": {"in_cluster": True}},
        "checks": {"nodes": {"clusters": ["b"], "dedicated_core": True,
                             "failed_pod_namespaces": ["jhub", "staging"]}}})
    [target] = REGISTRY["nodes"].targets_for(config)
    assert target.name == "b"
    keys = [n.key for n in target.needs]
    assert keys == ["nodes", "namespaces", "failed_pods:jhub", "failed_pods:staging",
                    "core_pods"]
    assert dict(target.needs[-1].params) == {"label_selector": "component in (hub,proxy)"}


# -- nodes ------------------------------------------------------------------------------------


def test_healthy_cluster_has_no_findings() -> None:
    detection = nodes.detect(snapshot(nodes_=[healthy("a"), healthy("b", labels=CORE)]), NOW)
    assert detection.findings == []
    assert detection.subjects == 2


@pytest.mark.parametrize("ready, words", [
    (False, "is NotReady (KubeletNotReady)"),
    (None, "stopped posting status"),
])
def test_node_not_ready(ready: bool | None, words: str) -> None:
    findings = detect(nodes_=[healthy("a"), healthy("b", ready=ready, unschedulable=True)])
    assert kinds(findings) == [("node-not-ready", "b", "critical")]
    assert words in findings[0].message
    assert "cordoned" in findings[0].message
    assert findings[0].evidence["condition"]["type"] == "Ready"


def test_node_without_ready_condition_is_not_ready() -> None:
    bare = healthy("a")
    bare["status"]["conditions"] = [c for c in bare["status"]["conditions"]
                                    if c["type"] != "Ready"]
    assert kinds(detect(nodes_=[bare])) == [("node-not-ready", "a", "critical")]


def test_each_pressure_condition_is_its_own_finding() -> None:
    findings = detect(nodes_=[healthy("a", pressure=["DiskPressure", "PIDPressure"])])
    assert kinds(findings) == [("node-pressure", "a/DiskPressure", "warning"),
                               ("node-pressure", "a/PIDPressure", "warning")]
    assert "short of disk" in findings[0].message


def test_pressure_unknown_on_a_dead_node_is_not_pressure() -> None:
    assert [f.kind for f in detect(nodes_=[healthy("a", ready=None)])] == ["node-not-ready"]


# -- image cache ------------------------------------------------------------------------------


def cache(count: int, size: int = 8 * GiB, capacity: str = "100Gi") -> dict[str, Any]:
    return healthy("a", ephemeral_storage=capacity, images=images("lab", [size] * count))


def test_images_past_the_eviction_threshold_are_critical() -> None:
    [finding] = detect(nodes_=[cache(11)])  # 88 GiB of 100: less than 15 GiB free
    assert (finding.kind, finding.severity) == ("image-cache-pressure", Severity.CRITICAL)
    assert "88.0 GiB of 100.0 GiB (88%)" in finding.message
    assert finding.evidence["threshold_free_bytes"] == 15 * GiB


def test_next_image_would_cross_the_threshold_warns_before_the_upgrade() -> None:
    [finding] = detect(nodes_=[cache(10)])  # 80 GiB; the largest (8 GiB) again leaves 12
    assert finding.severity is Severity.WARNING
    assert "pulling the next image (8.0 GiB) would leave 12.0 GiB" in finding.message
    assert detect(nodes_=[cache(10)], next_image_size="2Gi") == []
    assert detect(nodes_=[cache(10)], next_image_size="0") == []
    assert detect(nodes_=[cache(9)]) == []  # 72 GiB + 8 leaves 20 GiB


def test_threshold_setting_is_honoured() -> None:
    assert detect(nodes_=[cache(10)], eviction_threshold="imagefs.available<5%") == []
    [finding] = detect(nodes_=[cache(10)], eviction_threshold="imagefs.available<25Gi")
    assert finding.severity is Severity.CRITICAL


def test_truncated_image_list_is_a_lower_bound() -> None:
    [finding] = detect(nodes_=[cache(50, size=2 * GiB)])
    assert "at least" in finding.message
    assert finding.evidence["images_truncated"] is True


def test_node_without_capacity_or_images_is_not_judged() -> None:
    no_capacity = cache(11)
    del no_capacity["status"]["capacity"]["ephemeral-storage"]
    assert detect(nodes_=[no_capacity, healthy("b", images=[])]) == []


# -- failed pods ------------------------------------------------------------------------------


def test_old_failed_and_evicted_pods_plan_delete_pod_with_uid() -> None:
    evicted = failed_pod("jhub", "jupyter-alice", now=NOW, evicted=True,
                         failed_for=timedelta(hours=3), node_name="node-1")
    crashed = failed_pod("batch", "report-x", now=NOW, failed_for=timedelta(hours=2),
                         owner=("Job", "report"))
    findings = detect(failed=[evicted, crashed])
    assert kinds(findings) == [("failed-pods", "jhub/jupyter-alice", "info"),
                               ("failed-pods", "batch/report-x", "info")]
    action = findings[0].action
    assert action is not None
    assert (action.name, action.source, action.target, action.call) == (
        "delete-pod", "kube", "js2", "delete_pod")
    assert dict(action.params) == {"namespace": "jhub", "name": "jupyter-alice",
                                   "uid": evicted["metadata"]["uid"]}
    assert action.destructive
    assert action.before["pod"]["reason"] == "Evicted"
    assert "was evicted 3h00m ago on node node-1" in findings[0].message
    assert "failed (Error, exit code 1)" in findings[1].message
    assert findings[1].evidence["pod"]["owners"] == ["Job/report"]


def test_young_failed_pod_is_reported_without_action() -> None:
    young = failed_pod("jhub", "jupyter-bob", now=NOW, failed_for=timedelta(minutes=20))
    [finding] = detect(failed=[young])
    assert finding.action is None
    assert "deleted once failed for 1h00m" in finding.message
    [finding] = detect(failed=[young], failed_pod_min_age="10m")
    assert finding.action is not None


def test_min_age_counts_from_the_failure_not_the_creation() -> None:
    # created days ago, failed a minute ago: not old enough
    recent = failed_pod("jhub", "jupyter-carol", now=NOW, failed_for=timedelta(minutes=1))
    recent["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z"
    assert detect(failed=[recent])[0].action is None


def test_failure_time_unknown_uses_first_sighting() -> None:
    bare = failed_pod("jhub", "x", now=NOW)
    bare["status"] = {"phase": "Failed", "reason": "Evicted"}
    uid = bare["metadata"]["uid"]
    detection = nodes.detect(snapshot(failed=[bare]), NOW)
    assert detection.marks == {f"failed:{uid}"}
    assert detection.findings[0].action is None
    later = nodes.detect(snapshot(failed=[bare],
                                  marks={f"failed:{uid}": NOW - timedelta(hours=2)}), NOW)
    assert later.findings[0].action is not None


def test_pods_being_deleted_or_not_failed_are_skipped() -> None:
    deleting = failed_pod("jhub", "x", now=NOW)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-22T02:59:00Z"
    running = pod("jhub", "y", now=NOW)
    assert detect(failed=[deleting, running]) == []


def test_failed_pod_namespaces_limit_the_lists() -> None:
    pods = [failed_pod("jhub", "a", now=NOW), failed_pod("kube-system", "b", now=NOW)]
    findings = detect(failed=pods, failed_pod_namespaces=["jhub"])
    assert [f.subject for f in findings] == ["jhub/a"]


# -- core pods --------------------------------------------------------------------------------


def core_nodes() -> list[dict[str, Any]]:
    return [healthy("core-1", labels=CORE), healthy("node-1")]


def test_core_pod_on_a_user_node_is_misplaced_when_dedicated() -> None:
    hub = pod("jhub", "hub-1", now=NOW, node_name="node-1", labels={"component": "hub"})
    proxy = pod("jhub", "proxy-1", now=NOW, node_name="core-1", labels={"component": "proxy"})
    findings = detect(nodes_=core_nodes(), core_pods=[hub, proxy], dedicated_core=True)
    assert kinds(findings) == [("core-pod-misplaced", "jhub/hub-1", "warning")]
    assert "hub pod jhub/hub-1 runs on node node-1" in findings[0].message
    assert findings[0].action is None
    assert detect(nodes_=core_nodes(), core_pods=[hub]) == []  # dedicated_core is off


def test_core_label_value_and_key_only_forms() -> None:
    hub = pod("jhub", "hub-1", now=NOW, node_name="node-1", labels={"component": "hub"})
    other = healthy("node-1", labels={"hub.jupyter.org/node-purpose": "user"})
    assert len(detect(nodes_=[other], core_pods=[hub], dedicated_core=True)) == 1
    assert detect(nodes_=[other], core_pods=[hub], dedicated_core=True,
                  core_node_label="hub.jupyter.org/node-purpose") == []


def test_unscheduled_or_unknown_node_core_pods_wait() -> None:
    pending = pod("jhub", "hub-1", now=NOW, node_name=None, phase="Pending",
                  labels={"component": "hub"})
    elsewhere = pod("jhub", "proxy-1", now=NOW, node_name="node-9",
                    labels={"component": "proxy"})
    assert detect(nodes_=core_nodes(), core_pods=[pending, elsewhere], dedicated_core=True) == []


# -- namespaces -------------------------------------------------------------------------------


def test_namespace_stuck_terminating_names_its_finalizers() -> None:
    stuck = stuck_namespace("nublado-alice", now=NOW, terminating_for=timedelta(hours=2))
    fresh = stuck_namespace("nublado-bob", now=NOW, terminating_for=timedelta(minutes=5))
    findings = detect(namespaces=[stuck, fresh])
    assert kinds(findings) == [("namespace-stuck-terminating", "nublado-alice", "warning")]
    finding = findings[0]
    assert "terminating for 2h00m (finalizers: kubernetes)" in finding.message
    assert "kubernetes.io/pvc-protection" in finding.message
    assert finding.evidence["finalizers"] == ["kubernetes"]
    assert {c["type"] for c in finding.evidence["conditions"]} == {
        "NamespaceContentRemaining", "NamespaceFinalizersRemaining"}
    assert finding.action is None
    assert detect(namespaces=[stuck], terminating_after="3h") == []


def test_namespace_terminating_without_timestamp_is_timed_from_first_sighting() -> None:
    odd = stuck_namespace("x", now=NOW)
    del odd["metadata"]["deletionTimestamp"]
    detection = nodes.detect(snapshot(namespaces=[odd]), NOW)
    assert detection.findings == [] and detection.marks == {"terminating:x"}
    later = nodes.detect(snapshot(namespaces=[odd],
                                  marks={"terminating:x": NOW - timedelta(hours=1)}), NOW)
    assert [f.kind for f in later.findings] == ["namespace-stuck-terminating"]


# -- plausibility -----------------------------------------------------------------------------


def test_no_nodes_while_pods_ran_on_nodes_is_implausible() -> None:
    with pytest.raises(ImplausibleData, match="lists no nodes"):
        detect(nodes_=[], failed=[failed_pod("jhub", "a", now=NOW, node_name="node-1")])


def test_an_empty_cluster_is_just_empty() -> None:
    detection = nodes.detect(snapshot(nodes_=[]), NOW)
    assert detection.findings == [] and detection.subjects == 0


def test_subjects_count_everything_examined() -> None:
    detection = nodes.detect(snapshot(
        nodes_=core_nodes(), failed=[failed_pod("jhub", "a", now=NOW, node_name="node-1")],
        namespaces=[stuck_namespace("n", now=NOW)], dedicated_core=True,
        core_pods=[pod("jhub", "hub", now=NOW, node_name="core-1")]), NOW)
    assert detection.subjects == 2 + 1 + 1 + 1
