"""Kubernetes objects as the simulated worlds plant them: nodes, pods, namespaces, TLS
secrets, and the PVs, claims and events that go with Cinder volumes.

Each builder returns a plain object shaped like the real API's (a kubelet's node status with
conditions and images, an evicted pod's status with its DisruptionTarget condition, a
namespace held by its finalizers, the PersistentVolume cinder-csi makes); the worlds put them
into a :class:`~watchdogd.sim.kube.KubeSim`.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from watchdogd.sim._http import rfc3339

__all__ = [
    "CORE_LABEL",
    "CSI_DRIVER",
    "PRESSURE",
    "USER_LABEL",
    "GiB",
    "failed_attach_event",
    "failed_pod",
    "images",
    "namespace",
    "node",
    "pod",
    "pv_for_volume",
    "pvc_for_user",
    "rfc3339",
    "stuck_namespace",
    "tls_secret",
]

Obj = dict[str, Any]

CORE_LABEL = ("hub.jupyter.org/node-purpose", "core")
USER_LABEL = ("hub.jupyter.org/node-purpose", "user")
GiB = 2**30



# -- cluster health -----------------------------------------------------------------------

#: condition -> ((reason, message) when False, (reason, message) when True), as kubelets say
PRESSURE = {
    "MemoryPressure": (("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                       ("KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available")),
    "DiskPressure": (("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                     ("KubeletHasDiskPressure", "kubelet has disk pressure")),
    "PIDPressure": (("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    ("KubeletHasInsufficientPID", "kubelet has insufficient PID available")),
}


def node(name: str, *, now: datetime | None = None, ready: bool | None = True,
         pressure: Iterable[str] = (), images: Sequence[tuple[str, int]] = (),
         ephemeral_storage: str = "100Gi", labels: dict[str, str] | None = None,
         unschedulable: bool = False, not_ready_since: datetime | None = None) -> Obj:
    """A Node as a kubelet reports it. ``ready=None`` is Ready Unknown (kubelet gone);
    ``pressure`` names conditions that are True; ``images`` are (name, bytes)."""
    now = now or datetime.now(UTC)
    stamp = rfc3339(not_ready_since or now - timedelta(days=3))
    pressed = set(pressure)
    conditions = []
    for kind, (calm, pressing) in PRESSURE.items():
        (reason, message) = pressing if kind in pressed else calm
        conditions.append({"type": kind, "status": "True" if kind in pressed else "False",
                           "reason": reason, "message": message,
                           "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": stamp})
    if ready is True:
        conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                           "message": "kubelet is posting ready status",
                           "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": stamp})
    elif ready is False:
        conditions.append({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                           "message": "container runtime network not ready: NetworkReady=false",
                           "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": stamp})
    else:
        for condition in conditions:
            condition.update(status="Unknown", reason="NodeStatusUnknown",
                             message="Kubelet stopped posting node status.")
        conditions.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                           "message": "Kubelet stopped posting node status.",
                           "lastHeartbeatTime": stamp, "lastTransitionTime": stamp})
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  "node.kubernetes.io/instance-type": "m3.large", **(labels or {})}
    obj: Obj = {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": all_labels,
                     "creationTimestamp": rfc3339(now - timedelta(days=30))},
        "spec": {"podCIDR": "10.244.0.0/24", "providerID": f"openstack:///{uuid.uuid4()}"},
        "status": {
            "capacity": {"cpu": "8", "memory": "32853148Ki",
                         "ephemeral-storage": ephemeral_storage, "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32750748Ki",
                            "ephemeral-storage": ephemeral_storage, "pods": "110"},
            "conditions": conditions,
            "images": [{"names": [f"{image}@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, image).hex}"
                                  f"{uuid.uuid5(uuid.NAMESPACE_DNS, image).hex}", image],
                        "sizeBytes": size}
                       for image, size in sorted(images, key=lambda i: -i[1])],
            "nodeInfo": {"kubeletVersion": "v1.32.4", "containerRuntimeVersion":
                         "containerd://1.7.24", "osImage": "Ubuntu 24.04.1 LTS"},
        },
    }
    if unschedulable:
        obj["spec"]["unschedulable"] = True
    return obj


def pod(namespace: str, name: str, *, now: datetime | None = None, phase: str = "Running",
        node_name: str | None = "node-1", labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, age: timedelta = timedelta(hours=2),
        image: str = "quay.io/jupyterhub/k8s-singleuser-sample:4.1.0") -> Obj:
    """A pod in ``phase`` (Running pods are ready), created ``age`` ago."""
    now = now or datetime.now(UTC)
    created = now - age
    metadata: Obj = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "creationTimestamp": rfc3339(created), "labels": dict(labels or {})}
    if annotations:
        metadata["annotations"] = dict(annotations)
    status: Obj = {"phase": phase, "startTime": rfc3339(created)}
    if phase == "Running":
        status.update(podIP=f"10.244.{random.randint(0, 255)}.{random.randint(1, 254)}",
                      conditions=[{"type": "Ready", "status": "True",
                                   "lastTransitionTime": rfc3339(created)}],
                      containerStatuses=[{"name": "main", "ready": True, "restartCount": 0,
                                          "image": image,
                                          "state": {"running": {"startedAt": rfc3339(created)}}}])
    spec: Obj = {"containers": [{"name": "main", "image": image}],
                 "restartPolicy": "OnFailure"}
    if node_name:
        spec["nodeName"] = node_name
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec,
            "status": status}


def failed_pod(namespace: str, name: str, *, now: datetime | None = None,
               failed_for: timedelta = timedelta(hours=3), evicted: bool = False,
               node_name: str | None = "node-1", labels: dict[str, str] | None = None,
               owner: tuple[str, str] | None = None) -> Obj:
    """A pod in phase Failed ``failed_for`` ago: evicted by the kubelet for disk, or an
    ordinary failure (exit code 1)."""
    now = now or datetime.now(UTC)
    failed_at = rfc3339(now - failed_for)
    obj = pod(namespace, name, now=now, phase="Failed", node_name=node_name, labels=labels,
              age=failed_for + timedelta(hours=1))
    status = obj["status"]
    conditions = [{"type": "Ready", "status": "False", "reason": "PodFailed",
                   "lastTransitionTime": failed_at},
                  {"type": "ContainersReady", "status": "False", "reason": "PodFailed",
                   "lastTransitionTime": failed_at}]
    if evicted:
        status.update(reason="Evicted", message=(
            "The node was low on resource: ephemeral-storage. Threshold quantity: 15729180Ki, "
            "available: 10350904Ki. Container main was using 4390092Ki, request is 0, has "
            "larger consumption of ephemeral-storage."))
        conditions.append({"type": "DisruptionTarget", "status": "True",
                           "reason": "TerminationByKubelet",
                           "message": "The node was low on resource: ephemeral-storage.",
                           "lastTransitionTime": failed_at})
        terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                      "message": "The container could not be located when the pod was "
                                 "terminated", "finishedAt": failed_at}
    else:
        terminated = {"exitCode": 1, "reason": "Error", "finishedAt": failed_at,
                      "startedAt": rfc3339(now - failed_for - timedelta(minutes=5))}
    status["conditions"] = conditions
    status["containerStatuses"] = [{"name": "main", "ready": False, "restartCount": 0,
                                    "image": obj["spec"]["containers"][0]["image"],
                                    "state": {"terminated": terminated}}]
    if owner:
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "batch/v1" if owner[0] == "Job" else "apps/v1", "kind": owner[0],
             "name": owner[1], "uid": str(uuid.uuid4()), "controller": True}]
    return obj


def namespace(name: str, *, labels: dict[str, str] | None = None) -> Obj:
    """An Active namespace."""
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                  **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def stuck_namespace(name: str, *, now: datetime | None = None,
                    terminating_for: timedelta = timedelta(hours=2),
                    finalizers: Sequence[str] = ("kubernetes",),
                    remaining: str = "kubernetes.io/pvc-protection") -> Obj:
    """A namespace deleted ``terminating_for`` ago and still held: content with a finalizer
    (a PVC protected by ``remaining``) keeps the namespace controller from finishing."""
    now = now or datetime.now(UTC)
    since = rfc3339(now - terminating_for)
    obj = namespace(name)
    obj["metadata"]["deletionTimestamp"] = since
    obj["metadata"]["creationTimestamp"] = rfc3339(now - terminating_for - timedelta(days=7))
    obj["spec"] = {"finalizers": list(finalizers)}
    obj["status"] = {"phase": "Terminating", "conditions": [
        {"type": "NamespaceDeletionDiscoveryFailure", "status": "False",
         "reason": "ResourcesDiscovered", "message": "All resources successfully discovered",
         "lastTransitionTime": since},
        {"type": "NamespaceContentRemaining", "status": "True",
         "reason": "SomeResourcesRemain",
         "message": "Some resources are remaining: persistentvolumeclaims. has 1 resource "
                    "instances", "lastTransitionTime": since},
        {"type": "NamespaceFinalizersRemaining", "status": "True",
         "reason": "SomeFinalizersRemain",
         "message": f"Some content in the namespace has finalizers remaining: {remaining} in 1 "
                    "resource instances", "lastTransitionTime": since},
    ]}
    return obj


def tls_secret(namespace_name: str, name: str, cert_pem: bytes | None,
               key_pem: bytes = b"", *, annotations: dict[str, str] | None = None,
               secret_type: str = "kubernetes.io/tls") -> Obj:  # noqa: S107
    """A TLS secret; ``cert_pem=None`` leaves ``tls.crt`` out (a broken secret)."""
    data = {"tls.key": base64.b64encode(key_pem).decode()}
    if cert_pem is not None:
        data["tls.crt"] = base64.b64encode(cert_pem).decode()
    metadata: Obj = {"name": name, "namespace": namespace_name}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"kind": "Secret", "apiVersion": "v1", "type": secret_type, "metadata": metadata,
            "data": data}


def images(prefix: str, sizes: Sequence[int]) -> list[tuple[str, int]]:
    """(name, size) pairs: ``prefix-0:1.0``, ``prefix-1:1.0``, ..."""
    return [(f"{prefix}-{i}:1.0", size) for i, size in enumerate(sizes)]


# -- what goes with a Cinder volume -------------------------------------------------------

CSI_DRIVER = "cinder.csi.openstack.org"


def pv_for_volume(volume: Mapping[str, Any], *, claim_namespace: str | None = None,
                  claim_name: str | None = None, phase: str = "Bound",
                  in_tree: bool = False) -> Obj:
    """The PersistentVolume cinder-csi makes for ``volume`` (named like the volume)."""
    spec: Obj = {"capacity": {"storage": f"{volume.get('size', 1)}Gi"},
                 "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                 "storageClassName": "default", "volumeMode": "Filesystem"}
    if in_tree:
        spec["cinder"] = {"volumeID": volume["id"], "fsType": "ext4"}
    else:
        spec["csi"] = {"driver": CSI_DRIVER, "volumeHandle": volume["id"], "fsType": "ext4",
                       "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity":
                                            "sim-cinder-csi"}}
    if claim_name:
        spec["claimRef"] = {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                            "namespace": claim_namespace or "default", "name": claim_name,
                            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                  f"{claim_namespace}/{claim_name}"))}
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": str(volume.get("name") or f"pv-{volume['id']}"),
                         "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
            "spec": spec, "status": {"phase": phase}}


def pvc_for_user(user: str, volume_name: str | None, *, namespace: str = "jhub",
                 name: str | None = None, labels: Mapping[str, str] | None = None,
                 phase: str = "Bound") -> Obj:
    """A KubeSpawner-style claim (``claim-{user}``) bound to the PV ``volume_name``.

    Its uid is the one :func:`pv_for_volume` writes into the PV's ``claimRef``, as the PV
    controller binds them."""
    name = name or f"claim-{user}"
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace,
                         "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}")),
                         "labels": {"app": "jupyterhub", "component": "singleuser-storage",
                                    "hub.jupyter.org/username": user, **(labels or {})},
                         "annotations": {"hub.jupyter.org/username": user}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "default",
                     "resources": {"requests": {"storage": "1Gi"}},
                     **({"volumeName": volume_name} if volume_name else {})},
            "status": {"phase": phase}}


def failed_attach_event(namespace: str, pod: str, pv_name: str, *, reason: str =
                        "FailedAttachVolume", when: datetime | None = None, count: int = 5,
                        message: str | None = None) -> Obj:
    """The event the attach-detach controller (or the kubelet, for FailedMount) records."""
    when = when or datetime.now(UTC)
    if message is None:
        if reason == "FailedAttachVolume":
            message = (f'AttachVolume.Attach failed for volume "{pv_name}" : rpc error: code = '
                       "Internal desc = [ControllerPublishVolume] Attach Volume failed with "
                       "error failed to attach volume: Volume is in reserved state")
        else:
            message = (f'MountVolume.WaitForAttach failed for volume "{pv_name}" : volume '
                       "attachment is being deleted")
    stamp = rfc3339(when)
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod,
                               "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning", "count": count,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": "attachdetach-controller" if reason ==
                       "FailedAttachVolume" else "kubelet"}}
