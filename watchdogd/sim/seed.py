"""Seed data for the demo and the benchmarks: one of every problem the checks find.

:func:`seed_cloud` gives a cloud's users their home volumes (PVs, claims) and breaks a few of
them; :func:`seed_cluster` puts one of every ``nodes`` and ``certs`` finding into a cluster
(and, given a directory, kubeadm-like files and a served endpoint); :func:`populate_scale`
builds the cluster benchmark's world.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdogd.sim.objects import (
    CORE_LABEL,
    USER_LABEL,
    GiB,
    failed_attach_event,
    failed_pod,
    images,
    namespace,
    node,
    pod,
    pv_for_volume,
    pvc_for_user,
    stuck_namespace,
    tls_secret,
)
from watchdogd.sim.tls import GARBAGE_PEM, CertAuthority, Issued, TlsServer, key_pem

if TYPE_CHECKING:
    from watchdogd.sim.kube import KubeSim
    from watchdogd.sim.openstack import OpenStackSim

__all__ = ["DEMO_USERS", "DemoSeed", "ScaleWorld", "populate_scale", "seed_cloud",
           "seed_cluster"]

Obj = dict[str, Any]

#: The users seed_cloud gives volumes in a World: the first of World.healthy()'s names.
DEMO_USERS = ("ada", "alan", "barbara")


def seed_cloud(sim: OpenStackSim, clusters: Mapping[str, KubeSim], *, namespace: str = "jhub",
              users: Iterable[str] = ("alice", "bob", "carol"),
              gone_users: Iterable[str] = ("mallory",)) -> Obj:
    """Build the demo world: healthy user volumes, and one of each problem to find and fix.

    Per cluster, each of ``users`` gets a bound, attached home volume. Then, in the first
    cluster: alice's volume is stuck ``reserved`` with a ``FailedAttachVolume`` event on her
    pod; bob's has a dangling reserved attachment beside the attached one; a ``pvc-*``
    volume no PV references is orphaned; a PV is ``Released``; and ``postgres-{user}`` extra
    claims are left for ``gone_users`` (who are not hub users). Returns what was injected.
    """
    names = list(clusters)
    if not names:
        raise ValueError("seed_cloud needs at least one cluster")
    users = list(users)
    injected: Obj = {"stuck": [], "dangling": [], "orphans": [], "released": [],
                     "extra_pvcs": [], "volumes": []}
    now = sim.clock()
    for index, cluster in enumerate(names):
        kube = clusters[cluster]
        objects: list[Obj] = []
        for user in users:
            if index == 0 and user == users[0]:
                volume = sim.inject_stuck_volume(f"pvc-{uuid.uuid4()}", status="reserved",
                                                 age=timedelta(hours=2))
                injected["stuck"].append(volume["id"])
                objects.append(failed_attach_event(namespace, f"jupyter-{user}", volume["name"],
                                                   when=now))
            elif index == 0 and len(users) > 1 and user == users[1]:
                volume, attachment = sim.inject_dangling_attachment(
                    f"pvc-{uuid.uuid4()}", age=timedelta(hours=2))
                injected["dangling"].append(attachment["id"])
            else:
                volume = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=3))
                sim.add_attachment(volume["id"], status="attached", age=timedelta(days=1))
            injected["volumes"].append(volume["id"])
            objects.append(pv_for_volume(volume, claim_namespace=namespace,
                                         claim_name=f"claim-{user}"))
            objects.append(pvc_for_user(user, volume["name"], namespace=namespace))
        if index == 0:
            orphan = sim.inject_orphan_volume(f"pvc-{uuid.uuid4()}")
            injected["orphans"].append(orphan["id"])
            released = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=9))
            objects.append(pv_for_volume(released, claim_namespace=namespace,
                                         claim_name="claim-departed", phase="Released"))
            injected["released"].append(released["name"])
            for gone in gone_users:
                extra = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=20))
                objects.append(pv_for_volume(extra, claim_namespace=namespace,
                                             claim_name=f"postgres-{gone}"))
                objects.append(pvc_for_user(gone, extra["name"], namespace=namespace,
                                            name=f"postgres-{gone}",
                                            labels={"component": "extra-pvc"}))
                injected["extra_pvcs"].append(f"{namespace}/postgres-{gone}")
        kube.put_many(objects)
    return injected


@dataclass
class DemoSeed:
    """What :func:`seed_cluster` built: the ``[checks.*]`` settings that watch it, the
    servers it started (close them with :meth:`close`) and the expected finding kinds."""

    checks: dict[str, dict[str, Any]]
    servers: list[TlsServer] = field(default_factory=list)
    expected: dict[str, set[str]] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the servers."""
        for server in self.servers:
            server.close()
        self.servers.clear()


def seed_cluster(kube: KubeSim, *, cluster: str = "demo", workdir: Path | None = None,
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
        ca_issued = Issued(ca.cert_pem, key_pem(ca.key), ca.cert.not_valid_after_utc)
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
