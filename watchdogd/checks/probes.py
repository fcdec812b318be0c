"""Hub probes: does the hub answer its users, through the proxy, while its pod runs?

A hub that hangs (a locked database, a stuck event loop) still has a Running pod and a
proxy in front of it; the proxy answers its users 503 (configurable-http-proxy, when the
hub refuses connections), 502/504 (an ingress in front), or nothing at all (CHP waits on
a hung hub without limit). The sessions check cannot see it, since it cannot read the Hub
API then (that is ``check-failing``, after ``notify.error_after``); this check, one target
per hub with a ``public_url``, asks ``GET {public_url}/hub/health`` every minute and reads
the hub pods:

==================================  ==================  ================================
probe                               hub pod             outcome
==================================  ==================  ================================
200                                 any                 nothing
502 / 503 / 504 / no answer         one Running         ``hub-unresponsive`` (critical),
                                                        ``restart-hub`` (opt-in) at most
                                                        once an hour
502 / 503 / 504 / no answer         none Running        ``error``: Kubernetes is starting
                                                        or cannot run the hub, a different
                                                        story (``check-failing`` later)
any other status                    any                 ``error``: an unexpected answer
proxy unreachable (source error)    any                 ``error``
==================================  ==================  ================================
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict

from watchdogd.checks.common import Detector
from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import (
    Action,
    CheckTarget,
    Detection,
    Finding,
    ImplausibleData,
    Need,
    Severity,
    Snapshot,
)
from watchdogd.ports import HubProbe, Kube, call

NAME = "probes"
KINDS = ("hub-unresponsive",)
#: A hub whose public side cannot even be probed may be down for everyone.
FAILING_SEVERITY = Severity.CRITICAL

#: What a proxy answers for a hub it cannot get an answer from.
GATEWAY_ERRORS = frozenset({502, 503, 504})
#: restart-hub for an unresponsive hub: at most one done restart per hub in this span
RESTART_EVERY = timedelta(hours=1)


class Settings(CheckConfig):
    """``[checks.probes]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=1)


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per hub that has a ``public_url``: its probe and its hub pods."""
    result = []
    for name, hub in inventory.hubs.items():
        if not hub.public_url:
            continue
        needs = [Need.bind("health", call(HubProbe.health, name))]
        if hub.hub_pod_selector:
            needs.append(Need.bind("hub_pods", call(Kube.pods, hub.cluster,
                                                    namespace=hub.namespace,
                                                    label_selector=hub.hub_pod_selector)))
        result.append(CheckTarget(name, tuple(needs), {
            "hub": name, "cluster": hub.cluster, "namespace": hub.namespace,
            "selector": hub.hub_pod_selector}))
    return result


def unanswered(health: dict[str, Any]) -> bool:
    """Whether the probe got a gateway error or no answer: the proxy could not reach the hub."""
    return bool(health.get("timed_out")) or health.get("status") in GATEWAY_ERRORS


def _got(health: dict[str, Any]) -> str:
    if health.get("timed_out"):
        return "no answer in time"
    body = health.get("body") or ""
    return f"HTTP {health.get('status')}" + (f" ({body})" if body else "")


def _pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {"namespace": metadata.get("namespace"), "name": metadata.get("name"),
            "uid": metadata.get("uid"), "phase": status.get("phase"),
            "node": (pod.get("spec") or {}).get("nodeName"),
            "started": status.get("startTime")}


def _running(pod: dict[str, Any]) -> bool:
    return (not (pod.get("metadata") or {}).get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") == "Running")


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Judge the probe against the hub pods; plan a restart of a hung hub."""
    d = Detector(NAME, snapshot, now)
    s: dict[str, Any] = snapshot.settings
    health: dict[str, Any] = snapshot["health"]
    if health.get("status") == 200:
        return Detection([], 1)
    got = _got(health)
    if not unanswered(health):
        raise ImplausibleData(f"GET {health.get('url')} got {got}, neither the hub's answer "
                              "nor a proxy's gateway error: look at what serves the public URL")
    hub_pods: list[dict[str, Any]] | None = snapshot.get("hub_pods")
    namespace = s["namespace"]
    steps = (f"Next steps: read the hub's log (kubectl -n {namespace} logs deploy/hub "
             f"--tail=200), restart it (kubectl -n {namespace} rollout restart deploy/hub), "
             "and check the hub database (a locked SQLite file or an unreachable PostgreSQL "
             "hangs the hub).")
    if hub_pods is None:
        d.finding("hub-unresponsive", s["hub"], Severity.CRITICAL,
                  f"the hub does not answer its users: GET {health.get('url')} got {got} "
                  "(its pods are not looked at: hub_pod_selector is empty). " + steps,
                  {"probe": health})
        return Detection(d.findings, 1)
    running = [p for p in hub_pods if _running(p)]
    if len(running) != 1:
        phases = ", ".join(sorted(str((p.get("status") or {}).get("phase")) for p in hub_pods))
        raise ImplausibleData(
            f"the hub does not answer (GET {health.get('url')} got {got}) and "
            f"{len(running)} hub pods are Running in {namespace} (selector {s['selector']}; "
            f"{len(hub_pods)} found{': ' + phases if phases else ''}): the hub is being "
            "started, replaced or cannot be scheduled, which is Kubernetes' story, not a hung "
            f"hub (kubectl -n {namespace} describe pod -l {s['selector']})")
    pod = _pod_summary(running[0])
    action = Action.bind(
        "restart-hub", call(Kube.delete_pod, s["cluster"], namespace=pod["namespace"],
                            name=pod["name"], uid=pod["uid"]),
        destructive=True, before={"pod": pod}, min_interval=RESTART_EVERY,
        verify=(Need.bind("health", call(HubProbe.health, s["hub"])),
                Need.bind("pod", call(Kube.pod, s["cluster"], namespace=pod["namespace"],
                                      name=pod["name"]))))
    d.finding("hub-unresponsive", s["hub"], Severity.CRITICAL,
              f"the hub does not answer its users: GET {health.get('url')} got {got} while "
              f"hub pod {pod['namespace']}/{pod['name']} is Running. " + steps,
              {"probe": health, "hub_pod": pod}, action)
    return Detection(d.findings, 1)


def verify(finding: Finding, reads: dict[str, Any], first_seen: datetime) -> str | None:
    """Restart only a hub that still does not answer, in the very pod that was judged."""
    health = reads.get("health") or {}
    if not unanswered(health):
        return f"the probe now gets {_got(health)}: the hub answers"
    pod = reads.get("pod")
    seen = finding.evidence.get("hub_pod") or {}
    if pod is None:
        return "the hub pod is already gone"
    if (pod.get("metadata") or {}).get("uid") != seen.get("uid"):
        return "the hub pod was replaced since it was observed"
    if not _running(pod):
        return f"the hub pod is no longer Running ({(pod.get('status') or {}).get('phase')})"
    return None
