"""The probes check on hand-built snapshots: what a probe and the hub pods mean."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from watchdogd.checks import probes
from watchdogd.model import ImplausibleData, Snapshot

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
SETTINGS = {"hub": "main", "cluster": "js2", "namespace": "jhub", "selector": "component=hub"}
URL = "https://hub.example.org/hub/health"


def pod(phase: str = "Running", uid: str = "u1", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "hub-1", "namespace": "jhub", "uid": uid, **meta},
            "status": {"phase": phase}}


def probe(status: int | None, body: str = "") -> dict[str, Any]:
    return {"url": URL, "status": status, "timed_out": status is None,
            "body": body if status is not None else "no answer within 15s"}


def snapshot(health: dict[str, Any], hub_pods: list[dict[str, Any]] | None) -> Snapshot:
    observations: dict[str, Any] = {"health": health}
    if hub_pods is not None:
        observations["hub_pods"] = hub_pods
    return Snapshot("probes", "main", observations, settings=SETTINGS)


def test_an_answering_hub_is_fine_whatever_its_pods() -> None:
    assert probes.detect(snapshot(probe(200), []), NOW).findings == []


@pytest.mark.parametrize("status", [502, 503, 504, None])
def test_a_gateway_error_or_silence_with_a_running_pod_is_hub_unresponsive(
        status: int | None) -> None:
    [finding] = probes.detect(snapshot(probe(status, "Service Unavailable"), [pod()]),
                              NOW).findings
    assert (finding.key, finding.severity.label) == (
        "probes/main/hub-unresponsive/main", "critical")
    assert "kubectl -n jhub rollout restart deploy/hub" in finding.message
    assert "hub database" in finding.message
    action = finding.action
    assert action is not None and action.name == "restart-hub"
    assert dict(action.params) == {"namespace": "jhub", "name": "hub-1", "uid": "u1"}
    assert action.min_interval == probes.RESTART_EVERY
    assert [n.key for n in action.verify] == ["health", "pod"]


@pytest.mark.parametrize("pods", [[], [pod("Pending")], [pod(), pod(uid="u2")],
                                  [pod(deletionTimestamp="2026-11-22T02:59:00Z")]])
def test_no_single_running_hub_pod_is_a_different_story(pods: list[dict[str, Any]]) -> None:
    with pytest.raises(ImplausibleData, match="Kubernetes' story"):
        probes.detect(snapshot(probe(503), pods), NOW)


def test_an_unexpected_answer_is_an_error_not_a_verdict() -> None:
    with pytest.raises(ImplausibleData, match="HTTP 404"):
        probes.detect(snapshot(probe(404, "Not Found"), [pod()]), NOW)


def test_without_a_pod_selector_it_is_reported_but_never_acted_on() -> None:
    [finding] = probes.detect(snapshot(probe(None), None), NOW).findings
    assert finding.action is None and "hub_pod_selector is empty" in finding.message


def test_verify_acts_only_on_the_same_pod_of_a_hub_still_silent() -> None:
    [finding] = probes.detect(snapshot(probe(504), [pod()]), NOW).findings
    assert probes.verify(finding, {"health": probe(None), "pod": pod()}, NOW) is None
    assert "answers" in (probes.verify(finding, {"health": probe(200), "pod": pod()}, NOW) or "")
    assert "replaced" in (probes.verify(finding, {"health": probe(504),
                                                  "pod": pod(uid="u2")}, NOW) or "")
    assert "gone" in (probes.verify(finding, {"health": probe(504), "pod": None}, NOW) or "")
    assert "no longer Running" in (probes.verify(
        finding, {"health": probe(504), "pod": pod("Failed")}, NOW) or "")


def test_a_hub_without_public_url_is_not_probed() -> None:
    from watchdogd.config import Config

    config = Config.model_validate({
        "clusters": {"js2": {"kubeconfig": "/x"}},
        "hubs": {"a": {"cluster": "js2", "api_url": "http://hub/hub/api"},
                 "b": {"cluster": "js2", "api_url": "http://hub/hub/api",
                       "public_url": "https://hub.example.org/"}}})
    [target] = probes.targets(probes.Settings(), config.inventory)
    assert target.name == "b"
    assert {n.key for n in target.needs} == {"health", "hub_pods"}
