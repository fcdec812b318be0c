"""The resource table of the simulated API server: what each served resource is and allows.

Adding a resource is one line in :data:`RESOURCES`; paths, discovery, list kinds, accepted
field selectors and delete answers all derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ALL_VERBS", "BY_KIND", "BY_PATH", "RESOURCES", "Obj", "ResourceType", "resource"]

Obj = dict[str, Any]

ALL_VERBS: tuple[str, ...] = (
    "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
)


@dataclass(frozen=True, eq=False)  # identity: each type is a singleton used as a dict key
class ResourceType:
    """One REST resource as the API server's discovery documents describe it.

    Everything the simulator does per resource (paths, discovery, list kinds, which field
    selectors are accepted, what a delete answers) derives from these few facts, so the table
    below stays the single place to extend.
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    #: field selector labels beyond metadata.name / metadata.namespace (real per-type lists)
    field_labels: tuple[str, ...] = ()
    #: subresources served: "status", "eviction" (pods), "finalize" (namespaces),
    #: "scale" (deployments: an ``autoscaling/v1`` Scale over ``spec.replicas``)
    subresources: tuple[str, ...] = ("status",)
    #: single-object DELETE answers the deleted object (pods, PVs, PVCs) instead of a Status
    returns_deleted: bool = False
    verbs: tuple[str, ...] = ALL_VERBS
    #: status a POST starts with (the real strategies drop a client-sent status); None keeps it
    initial_status: Obj | None = None

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise (the objects' apiVersion)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``leases.coordination.k8s.io``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        """Lower-case kind, as discovery's singularName."""
        return self.kind.lower()

    @property
    def has_status(self) -> bool:
        """Whether a status subresource exists, so main-resource writes keep the old status."""
        return "status" in self.subresources


_POD_FIELDS = (
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
    "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
    "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
)
_NO_DELETECOLLECTION = tuple(v for v in ALL_VERBS if v != "deletecollection")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Pod", "pods", True, ("po",), ("all",), _POD_FIELDS,
                 ("status", "eviction"), returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",), (), ("status.phase",),
                 ("status", "finalize"), verbs=_NO_DELETECOLLECTION,
                 initial_status={"phase": "Active"}),
    ResourceType("", "v1", "Node", "nodes", False, ("no",), (), ("spec.unschedulable",)),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",),
                 returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",),
                 returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "Event", "events", True, ("ev",), (), _EVENT_FIELDS, ()),
    ResourceType("", "v1", "Secret", "secrets", True, (), (), ("type",), ()),
    ResourceType("", "v1", "Service", "services", True, ("svc",), ("all",),
                 initial_status={"loadBalancer": {}}),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",), (), (), ()),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",), (), (), ()),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True, (), (), (), ()),
    ResourceType("batch", "v1", "CronJob", "cronjobs", True, ("cj",), ("all",), initial_status={}),
    ResourceType("batch", "v1", "Job", "jobs", True, (), ("all",), ("status.successful",),
                 initial_status={}),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), ("all",),
                 subresources=("status", "scale"), initial_status={}),
)

#: kind, lower-case kind, plural, plural.group and short names -> type
BY_KIND: dict[str, ResourceType] = {}
#: (apiVersion, plural) -> type, for the URL paths
BY_PATH: dict[tuple[str, str], ResourceType] = {}
for _rt in RESOURCES:
    for _alias in (_rt.kind, _rt.kind.lower(), _rt.plural, _rt.qualified, *_rt.short_names):
        BY_KIND.setdefault(_alias, _rt)
    BY_PATH[(_rt.api_version, _rt.plural)] = _rt


def resource(kind: str) -> ResourceType:
    """Resolve a kind (``Pod``), plural (``pods``) or short name (``po``); KeyError if unknown."""
    rt = BY_KIND.get(kind) or BY_KIND.get(kind.lower())
    if rt is None:
        raise KeyError(f"unknown kind {kind!r}")
    return rt
