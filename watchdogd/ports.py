"""The sources as the checks see them: one protocol per adapter, and typed calls to them.

A check names what it needs read and what it plans to do by method reference::

    Need.bind("pods", call(Kube.pods, "js2", namespace="jhub", label_selector=selector))
    Action.bind("stop-server", call(HubApi.stop_server, "main", user="alice"), before=...)

mypy follows each link: a method renamed in a protocol fails the check modules, a keyword
a method does not take fails there too, and ``sources/__init__.py`` builds each adapter as
its protocol, so an adapter that stops matching fails where it is built. At run time the
engine still calls ``getattr(adapter, call)(**params)``: a :class:`Call` is plain data,
hashable, so equal needs of two checks are fetched once.

Checks import this module and :mod:`watchdogd.model`, never :mod:`watchdogd.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol

__all__ = ["LIST_FIELDS", "SOURCES", "VOLUME_FIELDS", "Call", "FieldTree", "HubApi", "HubDb",
           "HubProbe", "Kube", "Nublado", "OpenStack", "Proxy", "Tls", "call"]

P = ParamSpec("P")

Obj = dict[str, Any]

#: Which parts of an object a big list keeps: a key maps to ``True`` (its whole value) or to
#: the tree of what to keep inside it (when the value is an object).
FieldTree = Mapping[str, "FieldTree | bool"]

#: The fields of a Cinder volume that ``OpenStack.volumes`` keeps (when Cinder sends them):
#: what the checks read, and what describes the volume in an audit before-image (type, zone,
#: origin, owner) should it ever have to be made again. A list of tens of thousands of
#: volumes otherwise spends most of its memory on fields nobody reads. A check that needs
#: another field adds it here.
VOLUME_FIELDS: tuple[str, ...] = (
    "id", "name", "description", "status", "size", "volume_type", "availability_zone",
    "bootable", "encrypted", "multiattach", "created_at", "updated_at", "user_id",
    "os-vol-tenant-attr:tenant_id", "os-vol-host-attr:host", "metadata", "attachments",
    "snapshot_id", "source_volid", "volume_image_metadata")

#: kind -> what ``Kube.list_objects`` keeps of each item of that kind; other kinds are kept
#: whole. A PersistentVolume keeps what the volumes and orphans checks read: its name, the
#: Cinder volume behind it, its phase and reclaim policy, and its whole ``claimRef`` (the
#: before-image of ``delete-extra-pvc``: its undo binds the PV to the claim again); tens of
#: thousands of them otherwise cost three times the memory. A check that needs another
#: field adds it here.
LIST_FIELDS: dict[str, FieldTree] = {
    "PersistentVolume": {
        # The orphans check's map of users' disks also reads what a PV that binds the
        # volume to its claim again needs (size, access modes, class, mode, the CSI
        # attributes, fsType, secret references by name, node affinity, mount options).
        "metadata": {"name": True, "annotations": {"pv.kubernetes.io/provisioned-by": True}},
        "spec": {"csi": {"driver": True, "volumeHandle": True, "fsType": True,
                         "volumeAttributes": True, "nodeStageSecretRef": True,
                         "nodePublishSecretRef": True, "controllerPublishSecretRef": True,
                         "controllerExpandSecretRef": True},
                 "cinder": {"volumeID": True, "fsType": True},
                 "claimRef": True,
                 "persistentVolumeReclaimPolicy": True,
                 "capacity": True, "accessModes": True, "storageClassName": True,
                 "volumeMode": True, "mountOptions": True, "nodeAffinity": True},
        "status": {"phase": True, "message": True},
    },
}


class HubDb(Protocol):
    """The hub database, read only (``sources/hubdb.py``)."""

    def sessions(self) -> Obj:
        """Users and running spawners."""
        ...


class HubApi(Protocol):
    """The JupyterHub REST API (``sources/hubapi.py``)."""

    def active_servers(self) -> list[Obj]:
        """Every server the hub considers active (running or pending)."""
        ...

    def sessions(self) -> Obj:
        """Users and active servers with spawner state (what ``HubDb.sessions`` gives)."""
        ...

    def token_scopes(self, required: tuple[str, ...] = ()) -> list[str]:
        """The token's scopes; an error naming each of ``required`` it lacks."""
        ...

    def server(self, user: str, server_name: str = "") -> Obj | None:
        """One user's server as the hub sees it now."""
        ...

    def services(self) -> dict[str, Obj]:
        """The hub's services by name (``command`` None when the token may not see it)."""
        ...

    def stop_server(self, user: str, server_name: str = "") -> str:
        """Ask the hub to stop one server."""
        ...

    def sync_routes(self) -> str:
        """Make the hub reconcile the proxy's routes with its servers."""
        ...


class Proxy(Protocol):
    """configurable-http-proxy's REST API (``sources/proxy.py``)."""

    def routes(self) -> dict[str, Obj]:
        """All routes, by path."""
        ...


class Nublado(Protocol):
    """The Nublado lab controller's REST API (``sources/nublado.py``)."""

    def running_labs(self) -> list[str]:
        """The users whose labs the controller's memory holds as ``running``."""
        ...

    def lab(self, user: str) -> Obj | None:
        """One user's lab state (a ``UserLabState`` without its env), or None (404)."""
        ...

    def delete_lab(self, user: str) -> str:
        """Ask the controller to delete one user's lab (pod and namespace)."""
        ...


class HubProbe(Protocol):
    """The hub as its users reach it: the public URL, through the proxy (``sources/probe.py``)."""

    def health(self) -> Obj:
        """``GET {public_url}/hub/health``: the status the proxy answered, or that none came."""
        ...


class Kube(Protocol):
    """One Kubernetes cluster (``sources/kube.py``)."""

    def list_objects(self, kind: str, namespace: str | None = None,
                     label_selector: str | None = None,
                     field_selector: str | None = None) -> list[Obj]:
        """Every object of ``kind`` matching the selectors, all pages (as ``LIST_FIELDS``
        trims them)."""
        ...

    def pods(self, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[Obj]:
        """Pods matching the selectors."""
        ...

    def pod(self, namespace: str, name: str) -> Obj | None:
        """One pod read by name."""
        ...

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> str:
        """Delete one pod if it is still the one observed."""
        ...

    def claim(self, namespace: str, name: str) -> Obj | None:
        """One PersistentVolumeClaim read by name."""
        ...

    def volume(self, name: str) -> Obj | None:
        """One PersistentVolume read by name."""
        ...

    def mark_claim(self, namespace: str, name: str, uid: str, key: str, value: str) -> str:
        """Annotate a claim with the quarantine mark."""
        ...

    def delete_extra_claim(self, namespace: str, name: str, uid: str, volume_name: str,
                           key: str, value: str) -> str:
        """Delete a quarantined claim, its PV switched to Retain first."""
        ...


class OpenStack(Protocol):
    """One OpenStack cloud: Cinder, Nova and Keystone (``sources/openstack.py``)."""

    def volumes(self) -> Obj:
        """Every volume of every project (its ``VOLUME_FIELDS``)."""
        ...

    def volume(self, volume_id: str) -> Obj | None:
        """One volume's detail."""
        ...

    def attachments(self) -> Obj:
        """Every attachment of every project."""
        ...

    def servers(self) -> Obj:
        """Every Nova server the credentials may list, all pages, and that scope."""
        ...

    def volume_limits(self) -> dict[str, int]:
        """Cinder's quotas and usage of the credentials' project."""
        ...

    def compute_limits(self) -> dict[str, int]:
        """Nova's quotas and usage of the credentials' project."""
        ...

    def application_credentials(self) -> Obj:
        """The application credentials of the authenticated user."""
        ...

    def quarantine_volume(self, volume_id: str, key: str, value: str, observed_status: str,
                          observed_updated_at: str | None) -> str:
        """Mark an orphaned volume in its metadata."""
        ...

    def delete_volume(self, volume_id: str, observed_status: str,
                      observed_updated_at: str | None, quarantine_key: str,
                      quarantine_value: str) -> str:
        """Delete a quarantined orphan if nothing changed."""
        ...

    def delete_attachment(self, attachment_id: str, volume_id: str, observed_status: str,
                          observed_volume_status: str,
                          observed_volume_updated_at: str | None) -> str:
        """Delete a dangling attachment."""
        ...

    def reset_volume_status(self, volume_id: str, status: str, observed_status: str,
                            observed_updated_at: str | None) -> str:
        """``os-reset_status`` when no attachment contradicts it."""
        ...


class Tls(Protocol):
    """Certificates wherever they live (``sources/tls.py``)."""

    def files(self, path: str) -> list[Obj]:
        """Certificates in a file or directory."""
        ...

    def kubeconfig(self, path: str) -> list[Obj]:
        """Client certificates and CAs of a kubeconfig."""
        ...

    def endpoint(self, url: str, server_name: str | None = None,
                 timeout: float = 10.0) -> Obj:
        """The certificate an HTTPS endpoint serves."""
        ...

    def secrets(self) -> list[Obj]:
        """The certificates of every TLS secret of a cluster."""
        ...

    def api_server(self, timeout: float = 10.0) -> Obj:
        """The certificate a cluster's API server serves."""
        ...


#: protocol -> the source name the engine's :class:`~watchdogd.sources.Sources` builds
SOURCES: dict[type, str] = {
    HubDb: "hubdb", HubApi: "hubapi", Proxy: "proxy", Kube: "kube", OpenStack: "openstack",
    Tls: "tls", Nublado: "nublado", HubProbe: "probe",
}
_BY_NAME = {protocol.__name__: source for protocol, source in SOURCES.items()}


@dataclass(frozen=True)
class Call:
    """One method of one adapter with its keyword arguments, as data."""

    source: str
    target: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()


def call(method: Callable[Concatenate[Any, P], object], target: str,
         *args: P.args, **params: P.kwargs) -> Call:
    """``method`` of the ``target``'s adapter, with ``params``; keyword arguments only.

    ``method`` is a protocol's method (``Kube.pods``): its class names the source.
    """
    if args:
        raise TypeError(f"call({method.__qualname__}): pass parameters by keyword")
    owner, _, name = method.__qualname__.partition(".")
    if owner not in _BY_NAME or not name:
        raise TypeError(f"{method.__qualname__} is not a method of a source protocol")
    return Call(_BY_NAME[owner], target, name, tuple(sorted(params.items())))
