"""Nublado labs: the hub, the lab controller's memory, the lab namespaces and pods, per hub.

On Nublado a lab lives in four places: the hub's server record, the proxy's route, the
Kubernetes objects (namespace ``nublado-<user>``, pod ``<user>-nb``) and the Nublado
controller's in-memory state, which the hub asks (``get_lab_state``) whether a lab still
runs and which the controller's ``reconcile()`` refreshes from Kubernetes only periodically
(hourly). The ``sessions`` check compares the first three; this check adds the fourth, for
hubs with ``layout = "nublado"`` and a ``nublado_url``.

===============  =====================  ================  ==========================  ============
hub (API)        controller             lab pod           kind                        action
===============  =====================  ================  ==========================  ============
not running      running                none              ``controller-stale-lab``    ``delete-lab``
running          running                none              ``lab-pod-missing``         none (1)
running          none/terminated/failed any               ``controller-lost-lab``     none (2)
not pending      pending/terminating    any               ``lab-stuck`` (too long)    none (3)
not running      none                   namespace only    ``lab-namespace-orphan``    none (4)
not running      running                present           (sessions' ``orphan-pod``)  none here
pending          any                    any               (sessions' stuck rows)      none here
===============  =====================  ================  ==========================  ============

(1) the hub still believes in the lab: sessions' ``stale-session`` stops it through the Hub
API, and the hub's spawner deletes it through the controller. (2) the hub drops the server
at its next poll of the controller; if the pod is gone too, sessions' ``stale-session``
owns it. (3) ``409`` territory: an operation is in progress, and waiting is the fix.
(4) the controller's next reconcile adopts a complete namespace or deletes an incomplete
one; deleting namespaces directly is not watchdogd's to do.

Who acts: this check plans an action (the controller's ``DELETE``) only for a user the hub
does not list as active and who has no lab pod at all (listed, nor read by name); the
sessions check acts only on users the hub runs (``stop-server``, ``sync-routes``) or on pods
that exist (``delete-pod``), so the two never plan competing actions for one user in one
pass. Absence is believed only after the pod list (all namespaces, by selector) and a read
by name agree; when most of the controller's running labs have no pod, the view (cluster,
selector) or the controller URL is wrong: the target is ``error`` (``view-implausible``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from watchdogd.checks.common import Detector
from watchdogd.config import CheckConfig, Duration, HubConfig, Inventory
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
from watchdogd.ports import HubApi, Kube, Nublado, call

NAME = "labs"
KINDS = (
    "controller-stale-lab", "lab-pod-missing", "controller-lost-lab", "lab-stuck",
    "lab-namespace-orphan",
)

USER_LABEL = "nublado.lsst.io/user"
#: Up to this many disagreements are always judged: a dead node takes a few labs with it.
MIN_IMPLAUSIBLE = 3


class Settings(CheckConfig):
    """``[checks.labs]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=1)
    #: a lab the controller holds as ``pending`` this long (watchdogd's own sightings) is stuck
    stuck_pending_after: Duration = timedelta(minutes=15)
    #: a lab the controller holds as ``terminating`` this long is stuck
    stuck_terminating_after: Duration = timedelta(minutes=10)
    #: more of the controller's running labs than this fraction (and more than three) without
    #: any pod, or more of the hub's labs unknown to the controller: the view is wrong
    max_missing_fraction: float = Field(0.25, gt=0, le=1)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one Nublado hub."""

    hub: str
    cluster: str
    prefix: str
    pod_selector: str
    nublado_url: str
    check: Settings


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per hub with ``layout = "nublado"`` and a controller URL."""
    result = []
    for name, hub in inventory.hubs.items():
        if hub.layout != "nublado" or not hub.nublado_url:
            continue
        result.append(CheckTarget(name, _needs(name, hub), TargetSettings(
            hub=name, cluster=hub.cluster, prefix=hub.nublado_namespace_prefix,
            pod_selector=hub.user_pod_selector(), nublado_url=hub.nublado_url, check=check)))
    return result


def _needs(name: str, hub: HubConfig) -> tuple[Need, ...]:
    # The hub's servers and the lab pods are the very calls the sessions check makes for a
    # Nublado hub: the engine fetches each once per pass for both checks.
    return (
        Need.bind("hub_api", call(HubApi.active_servers, name)),
        Need.bind("labs", call(Nublado.running_labs, name)),
        Need.bind("pods", call(Kube.pods, hub.cluster,
                               label_selector=hub.user_pod_selector() or None)),
        # Lab namespaces are per user: one list of every namespace (cluster scoped, so no
        # namespace scope can hide one), filtered by the prefix, as the controller does.
        Need.bind("namespaces", call(Kube.list_objects, hub.cluster, kind="Namespace")),
    )


def _pod_alive(pod: dict[str, Any]) -> str:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted" or status.get("phase") in ("Failed", "Succeeded"):
        return "dead"
    return "alive" if status.get("phase") in ("Running", "Pending") else "unknown"


def _pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
            "phase": status.get("phase"), "reason": status.get("reason")}


def _namespace_summary(ns: dict[str, Any] | None) -> dict[str, Any] | None:
    if ns is None:
        return None
    meta = ns.get("metadata") or {}
    return {"name": meta.get("name"), "uid": meta.get("uid"),
            "phase": (ns.get("status") or {}).get("phase"),
            "created": meta.get("creationTimestamp")}


class _Detector(Detector):
    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        super().__init__(NAME, snapshot, now)
        self.s: TargetSettings = snapshot.settings

    def where(self, user: str) -> tuple[str, str]:
        """The lab's (namespace, pod name), as the controller names them."""
        return f"{self.s.prefix}{user}", f"{user}-nb"

    def delete_lab(self, user: str, before: dict[str, Any]) -> Action:
        namespace, pod = self.where(user)
        return Action.bind(
            "delete-lab", call(Nublado.delete_lab, self.s.hub, user=user), destructive=True,
            before=before, verify=(
                Need.bind("lab", call(Nublado.lab, self.s.hub, user=user)),
                Need.bind("server", call(HubApi.server, self.s.hub, user=user)),
                Need.bind("pod", call(Kube.pod, self.s.cluster, namespace=namespace, name=pod)),
            ))


def _lab_key(user: str) -> str:
    return f"lab:{user}"


def _pod_key(namespace: str, name: str) -> str:
    return f"pod:{namespace}/{name}"


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Compare the hub, the controller's memory, the lab namespaces and pods of one hub."""
    d = _Detector(snapshot, now)
    s = d.s
    # Nublado runs one lab per user; a named server, should a hub have one, still means the
    # hub runs something for that user: never judged as "the hub runs nothing".
    hub: dict[str, dict[str, Any]] = {}
    for server in snapshot["hub_api"]:
        if server["user"] not in hub or not server.get("server_name"):
            hub[server["user"]] = server
    running: set[str] = set(snapshot["labs"])
    pods: dict[str, list[dict[str, Any]]] = {}
    for pod in snapshot["pods"]:
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if not namespace.startswith(s.prefix):
            continue
        user = (meta.get("labels") or {}).get(USER_LABEL)
        if not isinstance(user, str) or not user:
            user = namespace[len(s.prefix):]
            if meta.get("name") != f"{user}-nb":
                continue
        pods.setdefault(user, []).append(pod)
    # A namespace already Terminating is on its way out (the nodes check reports one that
    # hangs): it names no lab to judge.
    namespaces = {
        str((ns.get("metadata") or {}).get("name"))[len(s.prefix):]: ns
        for ns in snapshot["namespaces"]
        if str((ns.get("metadata") or {}).get("name") or "").startswith(s.prefix)
        and (ns.get("status") or {}).get("phase") != "Terminating"}
    users = sorted(set(hub) | running | set(pods) | set(namespaces))

    # One round of reads by name, for the users whose records disagree: the controller's
    # state of each (its list names only the running ones), and the lab pod where the list
    # has none (absence is believed only when the read by name agrees).
    lookups: list[Need] = []
    for user in users:
        server = hub.get(user)
        if server is not None and server.get("pending"):
            continue  # the hub is spawning or stopping it: the sessions check judges that
        hub_runs = server is not None
        agree = hub_runs and user in running and user in pods
        if agree or (not hub_runs and user not in running and user not in pods
                     and user not in namespaces):
            continue
        if _lab_key(user) not in snapshot.observations:
            lookups.append(Need.bind(_lab_key(user), call(Nublado.lab, s.hub, user=user)))
        namespace, name = d.where(user)
        if (user not in pods and (hub_runs or user in running)
                and _pod_key(namespace, name) not in snapshot.observations):
            lookups.append(Need.bind(_pod_key(namespace, name),
                                     call(Kube.pod, s.cluster, namespace=namespace, name=name)))
    if lookups:
        return Detection([], 0, lookups=tuple(lookups))

    stale: list[str] = []
    lost: list[str] = []
    for user in users:
        server = hub.get(user)
        if server is not None and server.get("pending"):
            continue
        lab = snapshot.observations.get(_lab_key(user))
        namespace, name = d.where(user)
        pod = snapshot.observations.get(_pod_key(namespace, name))
        user_pods = pods.get(user) or ([pod] if pod is not None else [])
        status = "running" if user in running else (lab or {}).get("status")
        evidence: dict[str, Any] = {
            "hub": ({"pending": server.get("pending"), "ready": server.get("ready"),
                     "started": server.get("started")} if server is not None else None),
            "controller": lab if lab is not None else ({"status": status} if status else None),
            "namespace": _namespace_summary(namespaces.get(user)),
            "pods": [_pod_summary(p) for p in user_pods],
        }
        if user in running and not user_pods:
            if _lab_key(user) not in snapshot.observations:
                continue  # agreed records; never here, kept for safety
            if lab is None or lab.get("status") != "running":
                continue  # the controller moved on between its list and the read
            if server is None:
                stale.append(user)
                d.finding("controller-stale-lab", user, Severity.WARNING,
                          f"the Nublado controller holds a running lab for {user!r}, but the "
                          f"hub does not run it and pod {namespace}/{name} does not exist; "
                          "until its next reconcile the controller may refuse a new lab",
                          evidence, d.delete_lab(user, {"lab": lab,
                                                        "namespace": evidence["namespace"]}))
            else:
                stale.append(user)
                d.finding("lab-pod-missing", user, Severity.CRITICAL,
                          f"the hub and the Nublado controller both think {user!r}'s lab runs, "
                          f"but pod {namespace}/{name} does not exist"
                          + ("" if user in namespaces else " (nor its namespace)")
                          + "; the sessions check stops it through the hub (stale-session)",
                          evidence)
            continue
        if server is not None and status in (None, "terminated", "failed"):
            lost.append(user)
            d.finding("controller-lost-lab", user, Severity.WARNING,
                      f"the hub runs {user!r}'s lab, but the Nublado controller "
                      + (f"holds it as {status}" if status else "has no lab for this user")
                      + "; the hub stops the server at its next poll of the controller",
                      evidence)
            continue
        if status in ("pending", "terminating"):
            limit = (s.check.stuck_pending_after if status == "pending"
                     else s.check.stuck_terminating_after)
            since = d.seen_since(f"{status}:{user}")
            if now - since >= limit:
                d.finding("lab-stuck", user, Severity.WARNING,
                          f"the Nublado controller has held {user!r}'s lab as {status} for "
                          f"{int((now - since).total_seconds() // 60)} minutes (watchdogd's "
                          "own sightings; the controller keeps no timestamp): an operation "
                          "that does not finish",
                          {**evidence, f"{status}_since": since.isoformat()})
            continue
        ns = namespaces.get(user)
        if (server is None and status is None and user not in running and ns is not None
                and _lab_key(user) in snapshot.observations):
            d.finding("lab-namespace-orphan", user, Severity.WARNING,
                      f"namespace {namespace} exists, but neither the hub nor the Nublado "
                      f"controller has a lab for {user!r}; the controller's next reconcile "
                      "adopts or deletes it",
                      evidence)

    allowed = max(MIN_IMPLAUSIBLE, s.check.max_missing_fraction * len(running))
    if len(stale) > allowed:
        raise ImplausibleData(
            f"{len(stale)} of the {len(running)} labs the Nublado controller runs have no pod, "
            f"neither in the list (cluster {s.cluster}, selector {s.pod_selector or 'none'}) "
            "nor read by name: the view is probably wrong (kube context or cluster, "
            "pod_selector, nublado_namespace_prefix), so nothing is deleted", notify=True)
    hub_running = sum(1 for a in hub.values() if not a.get("pending"))
    if len(lost) > max(MIN_IMPLAUSIBLE, s.check.max_missing_fraction * hub_running):
        raise ImplausibleData(
            f"the Nublado controller at {s.nublado_url} knows none of {len(lost)} of the "
            f"{hub_running} labs the hub runs: probably the wrong controller (nublado_url)",
            notify=True)
    return Detection(d.findings, len(users), d.marks)


def verify(finding: Finding, reads: dict[str, Any], first_seen: datetime) -> str | None:
    """Whether a ``controller-stale-lab`` still holds on its re-reads, right before DELETE.

    ``reads``: ``lab`` (the controller's state now, or None), ``server`` (the hub's server
    now, or None), ``pod`` (the lab pod read by name, or None). None to act, else why not.
    """
    user = finding.subject
    lab = reads.get("lab")
    if lab is None:
        return f"the controller no longer has a lab for {user!r}"
    if lab.get("status") != "running":
        return f"the controller now holds the lab as {lab.get('status')}"
    seen = (finding.evidence.get("controller") or {})
    if lab.get("internal_url") != seen.get("internal_url"):
        return "the controller's lab changed since it was observed (a new lab)"
    if reads.get("server") is not None:
        return f"the hub now runs {user!r}"
    pod = reads.get("pod")
    if pod is not None:
        meta = pod.get("metadata") or {}
        return f"pod {meta.get('namespace')}/{meta.get('name')} exists ({_pod_alive(pod)})"
    return None
