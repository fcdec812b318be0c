"""kubectl's Table answers (``Accept: ...;as=Table``): the columns plain ``kubectl get`` prints.

Hand-written: the cells are the server-side printers of k8s.io/kubernetes (pkg/printers),
which exist only in Go; only the resources watchdogd's operators list are given their columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from watchdogd.sim._http import parse_iso, utcnow
from watchdogd.sim.kube.resources import Obj, ResourceType
from watchdogd.sim.kube.store import Entry

__all__ = ["human_duration", "table"]

def human_duration(seconds: float) -> str:
    """kubectl's AGE format (k8s.io/apimachinery duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: Obj) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    then = parse_iso(str(ts))
    if then is None:
        return "<unknown>"
    return human_duration((utcnow() - then).total_seconds())


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = status.get("reason") or status.get("phase") or ""
    for cs in reversed(statuses):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            term = state["terminated"] or {}
            reason = term.get("reason") or f"ExitCode:{term.get('exitCode', 0)}"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    return [f"{ready}/{len(spec.get('containers') or [])}", reason, restarts, _age(pod),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>"]


def _node_cells(node: Obj) -> list[Any]:
    status = node.get("status") or {}
    ready = "Unknown"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = {"True": "Ready", "False": "NotReady"}.get(cond.get("status"), "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    version = (status.get("nodeInfo") or {}).get("kubeletVersion", "")
    return [ready, ",".join(sorted(roles)) or "<none>", _age(node), version]


_ACCESS = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
           "ReadWriteOncePod": "RWOP"}


def _modes(spec: Obj) -> str:
    return ",".join(_ACCESS.get(m, m) for m in spec.get("accessModes") or [])


def _pv_cells(pv: Obj) -> list[Any]:
    spec, status = pv.get("spec") or {}, pv.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    return [(spec.get("capacity") or {}).get("storage", ""), _modes(spec),
            spec.get("persistentVolumeReclaimPolicy", ""), status.get("phase", ""), claim,
            spec.get("storageClassName", ""), status.get("reason", ""), _age(pv)]


def _pvc_cells(pvc: Obj) -> list[Any]:
    spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
    return [status.get("phase", ""), spec.get("volumeName", ""),
            (status.get("capacity") or {}).get("storage", ""), _modes(status),
            spec.get("storageClassName") or "", _age(pvc)]


@dataclass(frozen=True)
class _Column:
    name: str
    type: str = "string"
    format: str = ""
    priority: int = 0

    def definition(self) -> Obj:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.name, "priority": self.priority}


_TABLES: dict[str, tuple[tuple[_Column, ...], Callable[[Obj], list[Any]]]] = {
    "Pod": ((_Column("Ready"), _Column("Status"), _Column("Restarts", "integer"),
             _Column("Age"), _Column("IP", priority=1), _Column("Node", priority=1)), _pod_cells),
    "Node": ((_Column("Status"), _Column("Roles"), _Column("Age"), _Column("Version")),
             _node_cells),
    "Namespace": ((_Column("Status"), _Column("Age")),
                  lambda o: [(o.get("status") or {}).get("phase", ""), _age(o)]),
    "PersistentVolume": ((_Column("Capacity"), _Column("Access Modes"),
                          _Column("Reclaim Policy"), _Column("Status"), _Column("Claim"),
                          _Column("StorageClass"), _Column("Reason"), _Column("Age")),
                         _pv_cells),
    "PersistentVolumeClaim": ((_Column("Status"), _Column("Volume"), _Column("Capacity"),
                               _Column("Access Modes"), _Column("StorageClass"),
                               _Column("Age")), _pvc_cells),
}


def table(rt: ResourceType, entries: list[Entry], list_meta: Obj, include: str) -> Obj:
    columns, cells = _TABLES.get(rt.kind, ((_Column("Age"),), lambda o: [_age(o)]))
    rows = []
    for e in entries:
        row: Obj = {"cells": [e.meta.get("name", ""), *cells(e.obj)]}
        if include == "Object":
            row["object"] = e.full()
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": e.meta}
        rows.append(row)
    defs = [_Column("Name", format="name").definition(), *(c.definition() for c in columns)]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": defs, "rows": rows}
