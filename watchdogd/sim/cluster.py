"""Cluster health worlds for the simulator: nodes, failed pods, TLS secrets, stuck namespaces.

Builders return plain Kubernetes objects shaped like the real API's (a kubelet's
node status with conditions and images, an evicted pod's status with its
DisruptionTarget condition, a namespace held by its finalizers); injectors put
them into a :class:`~watchdogd.sim.kube.KubeSim`. Certificates are generated
with ``cryptography`` (EC P-256, one shared leaf key per authority so that
thousands of them cost a fraction of a second), and :class:`TlsServer` serves
one on a free local port for the endpoint source.

``seed_demo`` puts one of every finding of the ``certs`` and ``nodes`` checks
into a simulator (and, given a directory, kubeadm-like files and a served
endpoint) and returns the configuration that watches them; ``populate_scale``
builds the benchmark's cluster.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import ssl
import tempfile
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from watchdogd.sim.kube import KubeSim

if TYPE_CHECKING:
    from watchdogd.sim.world import World

__all__ = [
    "CertAuthority",
    "ClusterPart",
    "DemoSeed",
    "Issued",
    "TlsServer",
    "failed_pod",
    "namespace",
    "node",
    "pod",
    "populate_scale",
    "seed_demo",
    "stuck_namespace",
    "tls_secret",
]

Obj = dict[str, Any]

CORE_LABEL = ("hub.jupyter.org/node-purpose", "core")
USER_LABEL = ("hub.jupyter.org/node-purpose", "user")
GiB = 2**30


def rfc3339(when: datetime) -> str:
    """Second-precision UTC, as every metadata time in the API."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A generated certificate and its key, PEM encoded."""

    cert_pem: bytes
    key_pem: bytes
    not_after: datetime

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` and ``stem.key`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertAuthority:
    """A test CA that issues leaf certificates valid, expiring or expired, as asked.

    ``now`` anchors every validity period, so a test with a fixed clock gets
    exactly "expires in 5 days".
    """

    def __init__(self, name: str = "watchdogd-sim-ca", *, now: datetime | None = None,
                 days: int = 3650) -> None:
        self.now = now or datetime.now(UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - timedelta(days=1))
            .not_valid_after(self.now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self._serial = 1000

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, days: float = 90, dns: Sequence[str] | None = None,
              ips: Sequence[str] = (), self_signed: bool = False, client: bool = False,
              lifetime_days: float = 365, own_key: bool = False) -> Issued:
        """A certificate for ``common_name`` that expires ``days`` from ``now`` (negative:
        expired). ``dns`` defaults to ``[common_name]``; ``self_signed`` makes it its own
        issuer; ``own_key`` generates a key instead of the shared leaf key."""
        key = ec.generate_private_key(ec.SECP256R1()) if own_key or self_signed \
            else self.leaf_key
        not_after = self.now + timedelta(days=days)
        not_before = min(not_after - timedelta(days=lifetime_days),
                         self.now - timedelta(hours=1))
        self._serial += 1
        subject = _name(common_name)
        names: list[x509.GeneralName] = [
            x509.DNSName(d) for d in ([common_name] if dns is None else dns)]
        names += [x509.IPAddress(ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.name)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(key if self_signed else self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key),
                      cert.not_valid_after_utc)


GARBAGE_PEM = (b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgYXQgYWxsLCBqdXN0IGdh"
               b"cmJhZ2U=\n-----END CERTIFICATE-----\n")


# -- Kubernetes objects -----------------------------------------------------------------

#: condition -> ((reason, message) when False, (reason, message) when True), as kubelets say
_PRESSURE = {
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
    for kind, (calm, pressing) in _PRESSURE.items():
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


# -- a local HTTPS endpoint ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""


class _TlsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's thread, so a client that connects and says
        # nothing holds only its own thread, never the accept loop.
        with contextlib.suppress(OSError):
            request.settimeout(10)
            request.do_handshake()
            super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-handshake are normal here."""


class TlsServer:
    """An HTTPS server on 127.0.0.1 and a free port, serving ``issued``.

    ``by_name`` serves another certificate to clients that ask for that SNI
    name; ``seen_sni`` records every name clients asked for (None: no SNI).
    """

    def __init__(self, issued: Issued, *, by_name: dict[str, Issued] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="watchdogd-tls-")
        self.seen_sni: list[str | None] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        context = self._context(issued, "default")
        for name, other in (by_name or {}).items():
            self._contexts[name] = self._context(other, f"sni{len(self._contexts)}")
        context.sni_callback = self._pick
        self._server = _TlsHttpServer(("127.0.0.1", 0), _Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"tls-{self.port}")
        self._thread.start()

    def _context(self, issued: Issued, stem: str) -> ssl.SSLContext:
        cert, key = issued.write(Path(self._dir.name), stem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context

    def _pick(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
              _context: ssl.SSLContext) -> None:
        self.seen_sni.append(name)
        if name in self._contexts:
            sock.context = self._contexts[name]

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and remove the key files."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._dir.cleanup()

    def __enter__(self) -> TlsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- worlds -----------------------------------------------------------------------------


@dataclass
class DemoSeed:
    """What :func:`seed_demo` built: the ``[checks.*]`` settings that watch it, the
    servers it started (close them with :meth:`close`) and the expected finding kinds."""

    checks: dict[str, dict[str, Any]]
    servers: list[TlsServer] = field(default_factory=list)
    expected: dict[str, set[str]] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the servers."""
        for server in self.servers:
            server.close()
        self.servers.clear()


def seed_demo(kube: KubeSim, *, cluster: str = "demo", workdir: Path | None = None,
              now: datetime | None = None, namespace_name: str = "staging") -> DemoSeed:
    """One of every ``nodes`` and ``certs`` finding in ``kube`` (cluster ``cluster``).

    Pods go to ``namespace_name`` (not the hub's namespace, so a sessions world in the same
    simulator is left alone). With ``workdir``, also a kubeadm-like ``pki`` directory, an
    ``admin.conf`` with an expiring client certificate, and an HTTPS endpoint (closed by
    :meth:`DemoSeed.close`) that serves the wrong name to one of two configured names.
    """
    now = now or datetime.now(UTC)
    ns = namespace_name
    core = dict([CORE_LABEL])
    user = dict([USER_LABEL])
    kube.put_many([
        namespace(ns),
        node("core-1", now=now, labels=core, images=images("core", [800_000_000] * 6)),
        node("user-1", now=now, labels=user, pressure=["DiskPressure"],
             ephemeral_storage="60Gi", images=images("lab", [9 * GiB] * 6)),
        node("user-2", now=now, labels=user, ready=False,
             not_ready_since=now - timedelta(minutes=40)),
        node("user-3", now=now, labels=user, ephemeral_storage="100Gi",
             images=images("lab", [8 * GiB] * 10)),
        pod(ns, "hub-5f7c9d8b6-x2x7q", now=now, node_name="user-3",
            labels={"app": "jupyterhub", "component": "hub"}),
        pod(ns, "proxy-6d9f7b7c5-9kq2m", now=now, node_name="core-1",
            labels={"app": "jupyterhub", "component": "proxy"}),
        failed_pod(ns, "jupyter-alice", now=now, evicted=True, node_name="user-1",
                   failed_for=timedelta(hours=3)),
        failed_pod(ns, "jupyter-bob", now=now, evicted=True, node_name="user-1",
                   failed_for=timedelta(hours=2)),
        failed_pod(ns, "nightly-report-28815840-7mxkq", now=now, node_name="user-3",
                   failed_for=timedelta(minutes=10), owner=("Job", "nightly-report-28815840")),
        stuck_namespace("nublado-carol", now=now, terminating_for=timedelta(hours=2)),
    ])
    ca = CertAuthority(now=now)
    kube.put_many([
        tls_secret(ns, "hub-tls", ca.issue("hub.example.org", days=5).cert_pem,
                   annotations={"cert-manager.io/certificate-name": "hub-tls",
                                "cert-manager.io/issuer-name": "letsencrypt"}),
        tls_secret(ns, "proxy-public-tls-acme",
                   ca.issue("jupyter.example.org", days=20).cert_pem),
        tls_secret(ns, "old-wildcard", ca.issue("*.example.org", days=-3).cert_pem),
        tls_secret(ns, "broken-tls", GARBAGE_PEM),
        tls_secret(ns, "no-crt", None, b"key"),
        tls_secret(ns, "fine-tls", ca.issue("docs.example.org", days=200).cert_pem),
    ])
    certs: dict[str, Any] = {"secrets_clusters": [cluster]}
    seed = DemoSeed(
        checks={"certs": certs, "nodes": {"clusters": [cluster], "dedicated_core": True,
                                          "next_image_size": "8Gi"}},
        expected={"nodes": {"node-pressure", "node-not-ready", "failed-pods",
                            "image-cache-pressure", "core-pod-misplaced",
                            "namespace-stuck-terminating"},
                  "certs": {"cert-expiring", "cert-unreadable"}})
    if workdir is not None:
        pki = workdir / "pki"
        ca_issued = Issued(ca.cert_pem, _key_pem(ca.key), ca.cert.not_valid_after_utc)
        ca_issued.write(pki, "ca")
        ca.issue("kube-apiserver", days=20, dns=["kubernetes", "kubernetes.default.svc"],
                 ips=["10.96.0.1"]).write(pki, "apiserver")
        ca.issue("kube-etcd", days=300).write(pki / "etcd", "server")
        (pki / "stray.crt").write_bytes(GARBAGE_PEM)
        admin = ca.issue("kubernetes-admin", days=5, dns=[], client=True)
        (workdir / "admin.conf").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin@demo",
            "clusters": [{"name": "demo", "cluster": {
                "server": "https://127.0.0.1:6443",
                "certificate-authority-data": base64.b64encode(ca.cert_pem).decode()}}],
            "users": [{"name": "kubernetes-admin", "user": {
                "client-certificate-data": base64.b64encode(admin.cert_pem).decode(),
                "client-key-data": base64.b64encode(admin.key_pem).decode()}}],
            "contexts": [{"name": "admin@demo", "context": {"cluster": "demo",
                                                            "user": "kubernetes-admin"}}],
        }, indent=2))
        server = TlsServer(ca.issue("hub.example.org", days=12))
        seed.servers.append(server)
        certs.update(files=[str(pki)], kubeconfigs=[str(workdir / "admin.conf")], endpoints=[
            {"url": server.url, "server_name": "hub.example.org", "name": "hub.example.org"},
            {"url": server.url, "server_name": "jupyter.example.org",
             "name": "jupyter.example.org"}])
        seed.expected["certs"].add("cert-hostname-mismatch")
    return seed


@dataclass(frozen=True)
class ScaleWorld:
    """What :func:`populate_scale` built."""

    nodes: int
    images: int
    pods: int
    failed: int
    secrets: int


def populate_scale(kube: KubeSim, *, nodes: int = 500, images_per_node: int = 50,
                   pods: int = 20_000, failed: int = 2_000, secrets: int = 2_000,
                   now: datetime | None = None, seed: int = 7) -> ScaleWorld:
    """The benchmark's cluster: ``nodes`` with ``images_per_node`` images each (a few
    nodes full enough to warn), ``pods`` pods of which ``failed`` Failed (half evicted, most
    old enough to delete), and ``secrets`` TLS secrets over 100 namespaces with expiries from
    expired to two years (a few broken)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    objects: list[Obj] = [namespace(f"ns-{i}") for i in range(100)]
    node_names = [f"node-{i:04d}" for i in range(nodes)]
    for i, name in enumerate(node_names):
        sizes = [rng.randint(50_000_000, 1_500_000_000) for _ in range(images_per_node)]
        pressure = ["DiskPressure"] if i % 97 == 0 else []
        objects.append(node(name, now=now, labels=dict([CORE_LABEL if i < 3 else USER_LABEL]),
                            pressure=pressure, ready=i % 113 != 5,
                            ephemeral_storage="45Gi" if i % 10 == 0 else "200Gi",
                            images=images(f"img{i % 7}", sizes)))
    for i in range(pods - failed):
        objects.append(pod(f"ns-{i % 100}", f"jupyter-user{i}", now=now,
                           node_name=node_names[i % nodes],
                           labels={"component": "singleuser-server"},
                           annotations={"hub.jupyter.org/username": f"user{i}"}))
    objects.append(pod("ns-0", "hub-0", now=now, node_name=node_names[0],
                       labels={"component": "hub"}))
    objects.append(pod("ns-0", "proxy-0", now=now, node_name=node_names[10],
                       labels={"component": "proxy"}))
    for i in range(failed):
        objects.append(failed_pod(f"ns-{i % 100}", f"failed-{i}", now=now,
                                  evicted=i % 2 == 0, node_name=node_names[i % nodes],
                                  failed_for=timedelta(minutes=rng.randint(5, 3000))))
    for i in range(100, 110):
        objects.append(stuck_namespace(f"ns-{i}", now=now,
                                       terminating_for=timedelta(minutes=10 * (i - 99))))
    ca = CertAuthority(now=now)
    for i in range(secrets):
        ns = f"ns-{i % 100}"
        if i % 500 == 499:
            objects.append(tls_secret(ns, f"tls-{i}", GARBAGE_PEM))
            continue
        issued = ca.issue(f"site{i}.example.org", days=rng.randint(-10, 730))
        objects.append(tls_secret(ns, f"tls-{i}", issued.cert_pem, issued.key_pem))
    kube.put_many(objects)
    return ScaleWorld(nodes, images_per_node, pods, failed, secrets)


# -- a part of watchdogd.sim.world.World --------------------------------------------------


class ClusterPart:
    """Nodes, failed pods, namespaces and TLS secrets as a part of a
    :class:`~watchdogd.sim.world.World`: ``World(parts=[ClusterPart()])``.

    On start it gives the world the nodes its pods already name (``core-1``, labelled
    core, and ``node-1`` to ``node-3``), healthy, so that the world is plausible; each
    injector then breaks one thing the way production breaks and records
    ``(kind, subject)`` in :attr:`planted`. Times come from the world's clock.
    """

    name = "cluster"
    #: the checks this part is built for (the demo runs exactly the checks in play)
    checks = ("certs", "nodes")

    def __init__(self, *, nodes: Sequence[str] = ("node-1", "node-2", "node-3"),
                 namespace_name: str = "staging", dedicated_core: bool = True,
                 checks: dict[str, dict[str, Any]] | None = None) -> None:
        self.user_nodes = tuple(nodes)
        self.namespace = namespace_name
        self.dedicated_core = dedicated_core
        self.extra = checks or {}
        self.planted: list[tuple[str, str]] = []
        self._world: World | None = None
        self._ca: CertAuthority | None = None
        #: HTTPS endpoints started by :meth:`hostname_mismatch` (closed by :meth:`stop`)
        self.servers: list[TlsServer] = []
        self._endpoints: list[str] = []

    @property
    def world(self) -> World:
        """The world this part joined."""
        if self._world is None:
            raise RuntimeError("the part is not started")
        return self._world

    @property
    def ca(self) -> CertAuthority:
        """The authority that signs this part's certificates (anchored at start)."""
        if self._ca is None:
            self._ca = CertAuthority(now=self.world.clock())
        return self._ca

    def start(self, world: World) -> None:
        """Healthy nodes for the pods the hub simulator places, and the part's namespace."""
        self._world = world
        now = world.clock()
        world.kube.put_many([
            namespace(self.namespace),
            node("core-1", now=now, labels=dict([CORE_LABEL]),
                 images=images("core", [600_000_000] * 5)),
            *(node(n, now=now, labels=dict([USER_LABEL]),
                   images=images("lab", [3 * GiB] * 4)) for n in self.user_nodes),
        ])

    def config(self, world: World) -> dict[str, Any]:
        """``[checks.certs]`` reads this cluster's secrets; ``[checks.nodes]`` watches it."""
        checks: dict[str, dict[str, Any]] = {
            "certs": {"secrets_clusters": [world.cluster_name]},
            "nodes": {"clusters": [world.cluster_name], "dedicated_core": self.dedicated_core},
        }
        if self._endpoints:
            checks["certs"]["endpoints"] = list(self._endpoints)
        for name, section in self.extra.items():
            checks[name] = {**checks.get(name, {}), **section}
        return {"checks": checks}

    def stop(self) -> None:
        """Stop the HTTPS endpoints (idempotent); nothing else runs on its own."""
        for server in self.servers:
            server.close()
        self.servers.clear()

    def _plant(self, kind: str, subject: str) -> str:
        self.planted.append((kind, subject))
        return subject

    def _node(self, name: str) -> Obj:
        found = self.world.kube.get("Node", name)
        if found is None:
            raise KeyError(f"no node {name!r}")
        return found

    # -- injectors -------------------------------------------------------------------------

    def node_pressure(self, name: str = "node-1", kind: str = "DiskPressure") -> str:
        """The kubelet of ``name`` reports ``kind`` (DiskPressure, MemoryPressure, PIDPressure)."""
        obj = self._node(name)
        for condition in obj["status"]["conditions"]:
            if condition["type"] == kind:
                reason, message = _PRESSURE[kind][1]
                condition.update(status="True", reason=reason, message=message,
                                 lastTransitionTime=rfc3339(self.world.clock()))
        self.world.kube.put(obj)
        return self._plant("node-pressure", f"{name}/{kind}")

    def node_not_ready(self, name: str = "node-2", *, unknown: bool = False) -> str:
        """``name`` goes NotReady (or Unknown: its kubelet stopped posting status)."""
        obj = self._node(name)
        now = self.world.clock()
        fresh = node(name, now=now, ready=None if unknown else False,
                     labels=obj["metadata"].get("labels"), not_ready_since=now)
        obj["status"]["conditions"] = fresh["status"]["conditions"]
        self.world.kube.put(obj)
        return self._plant("node-not-ready", name)

    def image_cache_pressure(self, name: str = "node-3", *, critical: bool = False) -> str:
        """Fill ``name``'s image cache: past the eviction threshold (``critical``) or close
        enough that pulling the next image (the largest one again) would cross it."""
        obj = self._node(name)
        count = 11 if critical else 10  # 88 or 80 GiB of 100: 15% must stay free
        obj["status"]["capacity"]["ephemeral-storage"] = "100Gi"
        obj["status"]["images"] = node(name, images=images("big", [8 * GiB] * count))[
            "status"]["images"]
        self.world.kube.put(obj)
        return self._plant("image-cache-pressure", name)

    def failed_pods(self, count: int = 1, *, evicted: bool = True,
                    failed_for: timedelta = timedelta(hours=3), prefix: str = "failed",
                    node_name: str = "node-1") -> list[str]:
        """``count`` pods that Failed ``failed_for`` ago (evicted for disk by default)."""
        now = self.world.clock()
        subjects: list[str] = []
        existing = {p["metadata"]["name"] for p in self.world.kube.list("Pod", self.namespace)}
        i = 0
        while len(subjects) < count:
            name = f"{prefix}-{i}"
            i += 1
            if name in existing:
                continue
            self.world.kube.put(failed_pod(self.namespace, name, now=now, evicted=evicted,
                                           failed_for=failed_for, node_name=node_name))
            subjects.append(self._plant("failed-pods", f"{self.namespace}/{name}"))
        return subjects

    def core_pod_misplaced(self, component: str = "proxy", node_name: str = "node-1") -> str:
        """A core pod (z2jh's proxy by default) scheduled on a user node."""
        name = f"{component}-6d9f7b7c5-9kq2m"
        self.world.kube.put(pod(self.namespace, name, now=self.world.clock(),
                                node_name=node_name,
                                labels={"app": "jupyterhub", "component": component}))
        return self._plant("core-pod-misplaced", f"{self.namespace}/{name}")

    def stuck_namespace(self, name: str = "nublado-carol",
                        terminating_for: timedelta = timedelta(hours=2)) -> str:
        """A namespace whose delete has hung for ``terminating_for`` (a protected PVC)."""
        self.world.kube.put(stuck_namespace(name, now=self.world.clock(),
                                            terminating_for=terminating_for))
        return self._plant("namespace-stuck-terminating", name)

    def tls_secret(self, name: str, days: float, *, host: str | None = None,
                   annotations: dict[str, str] | None = None) -> str:
        """A TLS secret whose certificate expires ``days`` from now (negative: expired)."""
        issued = self.ca.issue(host or f"{name}.example.org", days=days)
        self.world.kube.put(tls_secret(self.namespace, name, issued.cert_pem, issued.key_pem,
                                       annotations=annotations))
        subject = f"{self.namespace}/{name}"
        if days <= 30:
            self._plant("cert-expiring", subject)
        return subject

    def broken_secret(self, name: str = "broken-tls", *, missing: bool = False) -> str:
        """A TLS secret whose ``tls.crt`` is garbage (or, ``missing``, absent)."""
        self.world.kube.put(tls_secret(self.namespace, name, None if missing else GARBAGE_PEM,
                                       b"key"))
        return self._plant("cert-unreadable", f"{self.namespace}/{name}")

    def hostname_mismatch(self, serves: str = "hub.example.org", *, days: float = 200) -> str:
        """An HTTPS endpoint on a free local port whose certificate covers ``serves`` only
        (valid ``days``), watched by its address (``https://127.0.0.1:PORT``, as a health
        check or a load balancer reaches it): a certificate without that address among its
        subjectAltNames, which clients refuse. ``[checks.certs] endpoints`` gets the URL (the
        configuration is rewritten); the server runs until :meth:`stop`. Returns the
        finding's subject."""
        server = TlsServer(self.ca.issue(serves, days=days))
        self.servers.append(server)
        self._endpoints.append(server.url)
        self.world.write_config()
        return self._plant("cert-hostname-mismatch", f"127.0.0.1:{server.port}")
