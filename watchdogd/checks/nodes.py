"""Node health, per cluster: see disk pressure coming, clean up failed pods.

=============================== ==============================================================
kind                            when (planned action)
=============================== ==============================================================
``node-not-ready``              a node's Ready condition is False or Unknown (critical); for a
                                node of a cloud's cluster, with its Nova server's state (ERROR,
                                SHUTOFF, deleted...) when the server list says so
``node-shelved``                a NotReady, cordoned node whose server is SHELVED or
                                SHELVED_OFFLOADED: scaled down on purpose (info, no action)
``servers-unreadable``          Nova's server list of a cloud that serves the cluster could not
                                be read: NotReady nodes are judged without it (warning)
``node-pressure``               DiskPressure, MemoryPressure or PIDPressure is True: the kubelet
                                is evicting pods (warning; subject ``node/Condition``)
``failed-pods``                 a pod in phase Failed, evicted or not (info; ``delete-pod``
                                once it has been failed for ``failed_pod_min_age``)
``image-cache-pressure``        the images on a node already leave less free space than the
                                kubelet's eviction threshold (critical), or pulling the next
                                image would (warning: before the upgrade, not after)
``core-pod-misplaced``          a hub or proxy pod runs on a node without the core label while
                                ``dedicated_core`` is on (warning)
``namespace-stuck-terminating`` a namespace Terminating for longer than ``terminating_after``,
                                with the finalizers and conditions that hold it (warning)
=============================== ==============================================================

Lists are narrowed by the API server (``status.phase=Failed`` pods, Terminating
namespaces, the core pods' label selector), so a 20,000-pod cluster costs the
failed pods, not every pod. Failed pods are deleted only with the uid they had
when observed: a pod recreated under the same name is never touched.

Image arithmetic uses what the Node object says: ``status.images`` (the kubelet
reports at most 50, largest first, so the sum is a lower bound) against
``status.capacity["ephemeral-storage"]``. Other disk use (logs, emptyDirs,
writable layers) only makes things worse, so the warning errs early, which is
the point of a warning before an upgrade.

Nova behind the nodes: for a cluster that a ``[clouds.X]`` lists in ``clusters``, the
cloud's servers are read in one paged list (``OpenStack.servers``) and each node is mapped to
its server by ``spec.providerID`` (``openstack:///<server id>``). That list is an *optional*
need: the node verdicts never depend on it, so when it fails they are still made, without
the server's state, and ``servers-unreadable`` says why. A node seen shelved before keeps its
``node-shelved`` verdict while the list is unreadable, as long as it stays NotReady and
cordoned (a mark remembers the sighting), so a Nova outage does not page for every shelved
node. A server absent from the list is called deleted only when the list covered every
project (admin credentials; Nova refuses ``all_tenants`` to others with a 403, and the source
then lists the credentials' own project and says so): otherwise it is only "not visible".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ConfigDict, Field, field_validator

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
from watchdogd.ports import Kube, OpenStack, call
from watchdogd.times import parse_time

NAME = "nodes"
KINDS = (
    "node-pressure", "node-not-ready", "failed-pods", "image-cache-pressure",
    "core-pod-misplaced", "namespace-stuck-terminating", "node-shelved", "servers-unreadable",
)
#: Nova statuses of a server shelved on purpose (soft scaling)
SHELVED = ("SHELVED", "SHELVED_OFFLOADED")
#: a node of a cloud is ``openstack:///<server id>`` (``openstack://<region>/<id>`` too)
_PROVIDER = re.compile(r"^openstack://[^/]*/([^/]+)$")
_SHELVED_MARK = "shelved:"

PRESSURE_CONDITIONS = ("DiskPressure", "MemoryPressure", "PIDPressure")
#: kubelet's default ``nodeStatusMaxImages``: beyond it, status.images is truncated.
KUBELET_MAX_IMAGES = 50

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": Decimal("0.001"), "": Decimal(1), "k": Decimal(10**3), "M": Decimal(10**6),
            "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(
    r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?\s*$")
_THRESHOLD = re.compile(r"^\s*(imagefs|nodefs)\.available\s*<\s*(.+?)\s*$")


def parse_quantity(value: Any) -> int:
    """A Kubernetes resource quantity (``102687672Ki``, ``100Gi``, ``1.5G``, ``1e9``) in units."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"not a quantity: {value!r} (use 8Gi, 500M, 1e9, ...)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        amount = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {value!r}") from None
    amount *= _BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix]
    return int(amount)


@dataclass(frozen=True)
class Threshold:
    """A kubelet hard-eviction threshold on free disk: ``imagefs.available<15%``."""

    signal: str
    percent: float | None
    bytes: int | None

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """Read ``imagefs.available<15%`` or ``nodefs.available<10Gi``."""
        match = _THRESHOLD.match(text)
        if not match:
            raise ValueError(f"not an eviction threshold on free disk: {text!r} "
                             "(use imagefs.available<15% or nodefs.available<10Gi)")
        signal, value = f"{match.group(1)}.available", match.group(2)
        if value.endswith("%"):
            try:
                percent = float(value[:-1])
            except ValueError:
                raise ValueError(f"bad percentage in {text!r}") from None
            if not 0 < percent < 100:
                raise ValueError(f"percentage out of range in {text!r}")
            return cls(signal, percent, None)
        return cls(signal, None, parse_quantity(value))

    def free_bytes(self, capacity: int) -> int:
        """The free space below which the kubelet evicts, on a disk of ``capacity``."""
        if self.percent is not None:
            return int(capacity * self.percent / 100)
        return self.bytes or 0

    def __str__(self) -> str:
        value = f"{self.percent:g}%" if self.percent is not None else _size(self.bytes or 0)
        return f"{self.signal}<{value}"


class Settings(CheckConfig):
    """``[checks.nodes]``.

    ``clusters``
        which ``[clusters.X]`` to watch; empty (the default) means all of them.
    ``failed_pod_min_age``
        how long a pod must have been Failed before ``delete-pod`` is planned
        (1 h: long enough to read its logs and events after an alert, short
        enough that evicted pods do not pile up for days).
    ``failed_pod_namespaces``
        limit failed-pod findings and deletes to these namespaces; empty: all.
    ``next_image_size``
        the size of the image the next upgrade pulls: a quantity (``8Gi``),
        ``largest`` (the default: as big as the largest image already on each
        node, which a new singleuser image usually is), or ``0`` to turn the
        pre-upgrade warning off.
    ``eviction_threshold``
        the kubelet's hard-eviction threshold on free image disk; the kubelet's
        default ``imagefs.available<15%`` unless your kubelet config says otherwise.
    ``dedicated_core``
        core pods (``core_selector``) must run on nodes labelled
        ``core_node_label``: z2jh's ``scheduling.corePods.nodeAffinity.
        matchNodePurpose: require``. Off by default, because z2jh's default is
        only ``prefer``.
    ``core_selector``
        label selector of the core pods: z2jh's hub and proxy.
    ``core_node_label``
        ``key=value`` (or ``key``) the core nodes carry.
    ``terminating_after``
        a namespace deleting for longer than this (30 min) is stuck: healthy
        deletes take seconds to a few minutes.
    ``nova``
        read the servers of every cloud that lists the cluster in its ``clusters``,
        to tell shelved nodes from broken ones (on by default; off for a cloud whose
        credentials have no compute access).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=5)
    clusters: list[str] = Field(default_factory=list)
    failed_pod_min_age: Duration = timedelta(hours=1)
    failed_pod_namespaces: list[str] = Field(default_factory=list)
    next_image_size: str = "largest"
    eviction_threshold: str = "imagefs.available<15%"
    dedicated_core: bool = False
    core_selector: str = "component in (hub,proxy)"
    core_node_label: str = "hub.jupyter.org/node-purpose=core"
    terminating_after: Duration = timedelta(minutes=30)
    nova: bool = True

    @field_validator("next_image_size", mode="before")
    @classmethod
    def _next_image(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip().lower() not in ("largest", "none", "off"):
            parse_quantity(value)
        return value

    @field_validator("eviction_threshold")
    @classmethod
    def _threshold(cls, value: str) -> str:
        Threshold.parse(value)
        return value

    @field_validator("core_node_label")
    @classmethod
    def _label(cls, value: str) -> str:
        key = value.partition("=")[0].strip()
        if not key or any(c in value for c in ",!() "):
            raise ValueError(f"expected key=value or key, not {value!r}")
        return value

    def next_image_bytes(self) -> int | None:
        """The configured next image size in bytes; None for ``largest``; 0 when off."""
        text = self.next_image_size.strip().lower()
        if text == "largest":
            return None
        if text in ("none", "off"):
            return 0
        return parse_quantity(self.next_image_size)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one cluster."""

    cluster: str
    check: Settings
    #: the clouds whose ``clusters`` list this cluster: their servers are its nodes'
    clouds: tuple[str, ...] = ()


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per watched cluster: nodes, failed pods, Terminating namespaces, core pods."""
    names = check.clusters or list(inventory.clusters)
    result = []
    for cluster in names:
        needs = [
            Need.bind("nodes", call(Kube.list_objects, cluster, kind="Node")),
            Need.bind("namespaces", call(Kube.list_objects, cluster, kind="Namespace",
                                         field_selector="status.phase=Terminating")),
        ]
        if check.failed_pod_namespaces:
            for namespace in dict.fromkeys(check.failed_pod_namespaces):
                needs.append(Need.bind(f"failed_pods:{namespace}", call(
                    Kube.pods, cluster, namespace=namespace,
                    field_selector="status.phase=Failed")))
        else:
            needs.append(Need.bind("failed_pods", call(Kube.pods, cluster,
                                                       field_selector="status.phase=Failed")))
        if check.dedicated_core:
            needs.append(Need.bind("core_pods", call(Kube.pods, cluster,
                                                     label_selector=check.core_selector)))
        clouds = tuple(name for name, cloud in inventory.clouds.items()
                       if cluster in cloud.clusters) if check.nova else ()
        for cloud in clouds:
            needs.append(Need.bind(f"servers:{cloud}", call(OpenStack.servers, cloud)))
        result.append(CheckTarget(cluster, tuple(needs), TargetSettings(cluster, check, clouds),
                                  optional=frozenset(f"servers:{c}" for c in clouds)))
    return result


# -- detection --------------------------------------------------------------------------


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Judge nodes, failed pods, core pod placement and Terminating namespaces."""
    s: TargetSettings = snapshot.settings
    nodes: list[dict[str, Any]] = snapshot["nodes"]
    namespaces: list[dict[str, Any]] = snapshot["namespaces"]
    failed: list[dict[str, Any]] = []
    if s.check.failed_pod_namespaces:
        for namespace in dict.fromkeys(s.check.failed_pod_namespaces):
            failed += snapshot[f"failed_pods:{namespace}"]
    else:
        failed = snapshot["failed_pods"]
    core_pods: list[dict[str, Any]] | None = (snapshot["core_pods"] if s.check.dedicated_core
                                              else None)
    if not nodes:
        placed = [p for p in [*failed, *(core_pods or [])] if (p.get("spec") or {}).get("nodeName")]
        if placed:
            raise ImplausibleData(f"cluster {s.cluster} lists no nodes, yet pods ran on "
                                  f"{len(placed)} node(s): the node list cannot be trusted")
    findings: list[Finding] = []
    marks: set[str] = set()
    by_name: dict[str, dict[str, Any]] = {}
    next_size = s.check.next_image_bytes()
    threshold = Threshold.parse(s.check.eviction_threshold)
    nova = _nova_view(s, snapshot, nodes)
    if nova is not None:
        findings += nova.unreadable(s)
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        by_name[name] = node
        findings += _judge_node(s, node, name, nova, snapshot, marks)
        finding = _judge_images(s, node, name, threshold, next_size)
        if finding is not None:
            findings.append(finding)
    for pod in failed:
        finding = _judge_failed_pod(s, pod, snapshot, now, marks)
        if finding is not None:
            findings.append(finding)
    if core_pods is not None:
        findings += _judge_core_pods(s, core_pods, by_name)
    for ns in namespaces:
        finding = _judge_namespace(s, ns, snapshot, now, marks)
        if finding is not None:
            findings.append(finding)
    subjects = len(nodes) + len(failed) + len(namespaces) + len(core_pods or [])
    return Detection(findings, subjects, marks)


def _conditions(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("type")): c for c in (node.get("status") or {}).get("conditions") or []
            if isinstance(c, dict)}


@dataclass
class _Nova:
    """What the clouds that serve a cluster say about its nodes' servers."""

    #: every server read, by id, with the cloud that listed it
    servers: dict[str, tuple[str, dict[str, Any]]]
    #: cloud -> why its list could not be read
    errors: dict[str, str]
    #: clouds whose credentials only listed their own project
    own_project: list[str]
    #: whether any node's server is in the lists at all (else they are not this cluster's)
    covers: bool

    @property
    def proves_absence(self) -> bool:
        """A server missing from the lists is deleted: every list was read, covered every
        project, and holds servers of this cluster's nodes."""
        return not self.errors and not self.own_project and self.covers

    def unreadable(self, s: TargetSettings) -> list[Finding]:
        return [Finding(
            NAME, s.cluster, "servers-unreadable", cloud, Severity.WARNING,
            f"the server list of cloud {cloud} could not be read ({error}): NotReady nodes of "
            f"cluster {s.cluster} are judged without their servers' state (shelved, ERROR, "
            "SHUTOFF, deleted), and a newly shelved node pages as node-not-ready",
            {"cloud": cloud, "error": error}) for cloud, error in sorted(self.errors.items())]


def server_id(node: dict[str, Any]) -> str | None:
    """The Nova server id of a node's ``spec.providerID`` (``openstack:///<id>``), or None."""
    match = _PROVIDER.match(str((node.get("spec") or {}).get("providerID") or ""))
    return match.group(1) if match else None


def _nova_view(s: TargetSettings, snapshot: Snapshot,
               nodes: list[dict[str, Any]]) -> _Nova | None:
    if not s.clouds:
        return None
    servers: dict[str, tuple[str, dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    own_project: list[str] = []
    for cloud in s.clouds:
        key = f"servers:{cloud}"
        if key in snapshot.errors:
            errors[cloud] = snapshot.errors[key]
            continue
        listed = snapshot.get(key) or {}
        if listed.get("all_projects") is not True:
            own_project.append(cloud)
        for server in listed.get("items") or []:
            servers.setdefault(str(server.get("id")), (cloud, server))
    ids = [i for i in (server_id(n) for n in nodes) if i is not None]
    return _Nova(servers, errors, own_project, any(i in servers for i in ids))


def _judge_node(s: TargetSettings, node: dict[str, Any], name: str, nova: _Nova | None,
                snapshot: Snapshot, marks: set[str]) -> list[Finding]:
    conditions = _conditions(node)
    unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
    findings = []
    ready = conditions.get("Ready")
    if ready is None or ready.get("status") != "True":
        status = ready.get("status") if ready else None
        if ready is None:
            why = "reports no Ready condition"
        elif status == "Unknown":
            why = "stopped posting status (Ready Unknown: the kubelet is unreachable)"
        else:
            why = f"is NotReady ({ready.get('reason') or 'no reason'})"
        since = ready.get("lastTransitionTime") if ready else None
        evidence: dict[str, Any] = {"node": name, "condition": _condition_summary(ready),
                                    "unschedulable": unschedulable}
        sid = server_id(node)
        note = ""
        if nova is not None and sid is not None:
            shelved, note = _server_verdict(s, name, sid, unschedulable, nova, snapshot, marks,
                                            evidence)
            if shelved is not None:
                findings.append(shelved)
                return findings + _judge_pressure(s, conditions, name, unschedulable)
        findings.append(Finding(
            NAME, s.cluster, "node-not-ready", name, Severity.CRITICAL,
            f"node {name} {why}" + (f" since {since}" if since else "")
            + (f": {str(ready.get('message'))[:200]}" if ready and ready.get("message") else "")
            + ("; it is cordoned" if unschedulable else "")
            + ". Pods on it are not served and new ones cannot start there."
            + (f" {note}" if note else ""),
            evidence))
    return findings + _judge_pressure(s, conditions, name, unschedulable)


def _server_verdict(s: TargetSettings, name: str, sid: str, unschedulable: bool, nova: _Nova,
                    snapshot: Snapshot, marks: set[str],
                    evidence: dict[str, Any]) -> tuple[Finding | None, str]:
    """A NotReady node's server: ``node-shelved`` when it was shelved on purpose, else what
    ``node-not-ready`` should add about it (and its evidence, filled in)."""
    mark = f"{_SHELVED_MARK}{name}:{sid}"
    found = nova.servers.get(sid)
    if found is not None:
        cloud, server = found
        status = str(server.get("status") or "?")
        evidence["server"] = {"cloud": cloud, **server}
        evidence["server_state"] = status
        if status in SHELVED and unschedulable:
            marks.add(mark)
            return Finding(
                NAME, s.cluster, "node-shelved", name, Severity.INFO,
                f"node {name} is NotReady and cordoned because its server {sid} is {status} "
                f"(cloud {cloud}): scaled down on purpose; `openstack server unshelve {sid}` "
                "and `kubectl uncordon` bring it back", evidence), ""
        states = (f"vm_state {server.get('OS-EXT-STS:vm_state')}, task_state "
                  f"{server.get('OS-EXT-STS:task_state')}")
        advice = {
            "ERROR": "Nova failed it: read its fault (`openstack server show "
                     f"{sid}`), then rebuild or replace the node",
            "SHUTOFF": f"it was stopped: start it (`openstack server start {sid}`) or remove "
                       "the node",
            "SHELVED": "it is shelved but the node is not cordoned, so pods are still "
                       "scheduled there: cordon the node or unshelve the server",
            "SHELVED_OFFLOADED": "it is shelved but the node is not cordoned, so pods are "
                                 "still scheduled there: cordon the node or unshelve the server",
        }.get(status, "")
        return None, (f"Its server {sid} (cloud {cloud}) is {status} ({states})"
                      + (f": {advice}." if advice else "."))
    if nova.errors:
        evidence["server_state"] = "unknown"
        evidence["servers_error"] = dict(nova.errors)
        if unschedulable and mark in snapshot.marks:
            marks.add(mark)  # keep the sighting while the list cannot be read
            evidence["shelved_since"] = snapshot.marks[mark].isoformat()
            return Finding(
                NAME, s.cluster, "node-shelved", name, Severity.INFO,
                f"node {name} is NotReady and cordoned; its server {sid} was last seen shelved "
                "(the server list cannot be read now: see servers-unreadable)", evidence), ""
        return None, (f"Its server {sid}'s state is unknown: the server list could not be "
                      "read (see servers-unreadable).")
    if nova.proves_absence:
        evidence["server_state"] = "deleted"
        return None, (f"Its server {sid} is deleted: it is in no project of the complete "
                      f"server list. Remove the node (`kubectl delete node {name}`) or "
                      "replace it.")
    evidence["server_state"] = "not-visible"
    why = ("the credentials of " + ", ".join(nova.own_project) + " list their own project "
           "only" if nova.own_project else "no node of the cluster has its server in the "
           "list (is this the cloud, and the region, that runs it?)")
    return None, (f"Its server {sid} is not in the server list, but {why}: whether it still "
                  "exists is unknown.")


def _judge_pressure(s: TargetSettings, conditions: dict[str, dict[str, Any]], name: str,
                    unschedulable: bool) -> list[Finding]:
    findings = []
    for kind in PRESSURE_CONDITIONS:
        condition = conditions.get(kind)
        if condition is None or condition.get("status") != "True":
            continue
        resource = {"DiskPressure": "disk", "MemoryPressure": "memory",
                    "PIDPressure": "process IDs"}[kind]
        findings.append(Finding(
            NAME, s.cluster, "node-pressure", f"{name}/{kind}", Severity.WARNING,
            f"node {name} has {kind} since {condition.get('lastTransitionTime') or '?'}: the "
            f"kubelet is short of {resource}, evicts pods and takes no new ones"
            + (f" ({str(condition.get('message'))[:160]})" if condition.get("message") else ""),
            {"node": name, "condition": _condition_summary(condition),
             "unschedulable": unschedulable}))
    return findings


def _condition_summary(condition: dict[str, Any] | None) -> dict[str, Any] | None:
    if condition is None:
        return None
    return {k: condition.get(k) for k in ("type", "status", "reason", "message",
                                          "lastTransitionTime", "lastHeartbeatTime")}


def _judge_images(s: TargetSettings, node: dict[str, Any], name: str, threshold: Threshold,
                  next_size: int | None) -> Finding | None:
    status = node.get("status") or {}
    images = [i for i in status.get("images") or [] if isinstance(i, dict)]
    raw_capacity = (status.get("capacity") or {}).get("ephemeral-storage")
    if not images or raw_capacity is None:
        return None
    try:
        capacity = parse_quantity(raw_capacity)
    except ValueError:
        return None
    if capacity <= 0:
        return None
    sizes = [int(i.get("sizeBytes") or 0) for i in images]
    used = sum(sizes)
    largest = max(sizes)
    floor = threshold.free_bytes(capacity)
    free = capacity - used
    pull = largest if next_size is None else next_size
    evidence: dict[str, Any] = {
        "node": name, "capacity_bytes": capacity, "images_bytes": used,
        "images": len(images), "images_truncated": len(images) >= KUBELET_MAX_IMAGES,
        "largest_image_bytes": largest, "eviction_threshold": str(threshold),
        "threshold_free_bytes": floor, "next_image_bytes": pull,
        "largest_image": _image_name(images[sizes.index(largest)]),
    }
    share = f"{_size(used)} of {_size(capacity)} ({100 * used / capacity:.0f}%)"
    at_least = "at least " if evidence["images_truncated"] else ""
    if free < floor:
        return Finding(
            NAME, s.cluster, "image-cache-pressure", name, Severity.CRITICAL,
            f"images on node {name} take {at_least}{share}: less than the kubelet's "
            f"{threshold} ({_size(floor)}) is left, so it garbage-collects images and evicts "
            "pods. Remove unused images (crictl rmi --prune) or grow the disk.", evidence)
    if pull > 0 and free - pull < floor:
        return Finding(
            NAME, s.cluster, "image-cache-pressure", name, Severity.WARNING,
            f"images on node {name} take {at_least}{share}; pulling the next image "
            f"({_size(pull)}) would leave {_size(max(0, free - pull))}, under the kubelet's "
            f"{threshold} ({_size(floor)}): the upgrade would evict pods. Prune images "
            "(crictl rmi --prune) or grow the disk before it.", evidence)
    return None


def _image_name(image: dict[str, Any]) -> str:
    names = [str(n) for n in image.get("names") or []]
    tagged = [n for n in names if "@sha256:" not in n]
    return (tagged or names or ["?"])[0]


def _judge_failed_pod(s: TargetSettings, pod: dict[str, Any], snapshot: Snapshot,
                      now: datetime, marks: set[str]) -> Finding | None:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if status.get("phase") != "Failed" or metadata.get("deletionTimestamp"):
        return None  # already being deleted, or not failed after all
    namespace, name = str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
    uid = metadata.get("uid")
    failed_at = failure_time(pod)
    if failed_at is None:
        mark = f"failed:{uid}"
        marks.add(mark)
        failed_at = snapshot.marks.get(mark, now)
    age = now - failed_at
    reason = str(status.get("reason") or "Failed")
    detail = str(status.get("message") or "")[:200]
    node = (pod.get("spec") or {}).get("nodeName")
    owners = [f"{o.get('kind')}/{o.get('name')}" for o in metadata.get("ownerReferences") or []
              if isinstance(o, dict)]
    summary = {"namespace": namespace, "name": name, "uid": uid, "node": node,
               "reason": reason, "message": detail, "failed_at": failed_at.isoformat(),
               "created": metadata.get("creationTimestamp"), "owners": owners,
               "labels": metadata.get("labels") or {}}
    what = "was evicted" if reason == "Evicted" else f"failed ({_exit(pod) or reason})"
    message = (f"pod {namespace}/{name} {what} {_ago(age)} ago"
               + (f" on node {node}" if node else "") + (f": {detail}" if detail else ""))
    action = None
    if age >= s.check.failed_pod_min_age and uid:
        action = Action.bind("delete-pod", call(Kube.delete_pod, s.cluster, namespace=namespace,
                                                name=name, uid=uid),
                             destructive=True, before={"pod": summary},
                             about={"annotations": metadata.get("annotations")})
        message += "; it only holds its record now: delete it"
    else:
        message += (f"; it is deleted once failed for {_ago(s.check.failed_pod_min_age)} "
                    "(read its logs before)")
    return Finding(NAME, s.cluster, "failed-pods", f"{namespace}/{name}", Severity.INFO,
                   message, {"pod": summary}, action)


def _exit(pod: dict[str, Any]) -> str:
    """``Error, exit code 1`` for the first container that ended badly, else ''."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = ((container or {}).get("state") or {}).get("terminated") or {}
        code = terminated.get("exitCode")
        if code:
            return f"{terminated.get('reason') or 'exit'}, exit code {code}"
    return ""


def failure_time(pod: dict[str, Any]) -> datetime | None:
    """When a pod failed: its containers' last finish or its last condition change."""
    status = pod.get("status") or {}
    times: list[datetime] = []
    for key in ("containerStatuses", "initContainerStatuses"):
        for container in status.get(key) or []:
            terminated = ((container or {}).get("state") or {}).get("terminated") or {}
            parsed = parse_time(terminated.get("finishedAt"))
            if parsed is not None:
                times.append(parsed)
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") in (
                "Ready", "ContainersReady", "DisruptionTarget"):
            parsed = parse_time(condition.get("lastTransitionTime"))
            if parsed is not None:
                times.append(parsed)
    return max(times) if times else None


def _judge_core_pods(s: TargetSettings, pods: list[dict[str, Any]],
                     nodes: dict[str, dict[str, Any]]) -> list[Finding]:
    key, has_value, value = s.check.core_node_label.partition("=")
    key, value = key.strip(), value.strip()
    labelled = sum(1 for n in nodes.values() if _has_label(n, key, value, has_value))
    findings = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        node_name = (pod.get("spec") or {}).get("nodeName")
        if metadata.get("deletionTimestamp") or phase not in ("Running", "Pending"):
            continue
        if not node_name or node_name not in nodes:
            continue  # not scheduled yet, or the node list is a moment older: next pass
        node = nodes[node_name]
        if _has_label(node, key, value, has_value):
            continue
        namespace, name = metadata.get("namespace"), metadata.get("name")
        component = (metadata.get("labels") or {}).get("component") or "core"
        findings.append(Finding(
            NAME, s.cluster, "core-pod-misplaced", f"{namespace}/{name}", Severity.WARNING,
            f"{component} pod {namespace}/{name} runs on node {node_name}, which is not labelled "
            f"{s.check.core_node_label}"
            + (" (no node is)" if not labelled else f" ({labelled} node(s) are)")
            + ": user pods can starve it and a scale-down can evict it. Set z2jh's "
            "scheduling.corePods.nodeAffinity.matchNodePurpose to require, then delete the pod "
            "so that it is rescheduled.",
            {"pod": {"namespace": namespace, "name": name, "uid": metadata.get("uid"),
                     "node": node_name, "phase": phase},
             "node_labels": {k: v for k, v in ((node.get("metadata") or {}).get("labels")
                                              or {}).items() if "node-purpose" in k or
                             k.startswith("node-role")},
             "core_nodes": labelled}))
    return findings


def _has_label(node: dict[str, Any], key: str, value: str, has_value: str) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    if key not in labels:
        return False
    return not has_value or labels[key] == value


def _judge_namespace(s: TargetSettings, namespace: dict[str, Any], snapshot: Snapshot,
                     now: datetime, marks: set[str]) -> Finding | None:
    metadata = namespace.get("metadata") or {}
    name = str(metadata.get("name") or "")
    status = namespace.get("status") or {}
    if status.get("phase") != "Terminating" and not metadata.get("deletionTimestamp"):
        return None
    since = parse_time(metadata.get("deletionTimestamp"))
    if since is None:
        mark = f"terminating:{name}"
        marks.add(mark)
        since = snapshot.marks.get(mark, now)
    waited = now - since
    if waited < s.check.terminating_after:
        return None
    finalizers = list((namespace.get("spec") or {}).get("finalizers") or [])
    finalizers += [f for f in metadata.get("finalizers") or [] if f not in finalizers]
    conditions = [
        {"type": c.get("type"), "reason": c.get("reason"), "message": c.get("message")}
        for c in status.get("conditions") or []
        if isinstance(c, dict) and c.get("status") == "True"
    ]
    held = ", ".join(finalizers) or "no finalizer"
    blockers = "; ".join(str(c["message"])[:200] for c in conditions if c.get("message"))
    return Finding(
        NAME, s.cluster, "namespace-stuck-terminating", name, Severity.WARNING,
        f"namespace {name} has been terminating for {_ago(waited)} (finalizers: {held})"
        + (f": {blockers}" if blockers else "")
        + ". Anything recreated there is refused. Find what holds it (`kubectl api-resources "
        f"--verbs=list --namespaced -o name | xargs -n1 kubectl get -n {name}`; an unavailable "
        "APIService blocks every namespace delete); never strip the finalizers blindly.",
        {"namespace": name, "deletion_timestamp": metadata.get("deletionTimestamp"),
         "terminating_for_s": int(waited.total_seconds()), "finalizers": finalizers,
         "conditions": conditions})


# -- small helpers ----------------------------------------------------------------------


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{max(seconds, 0)}s"
