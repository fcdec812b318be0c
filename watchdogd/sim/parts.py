"""The parts a :class:`~watchdogd.sim.world.World` can be built with beyond its hub side:
an OpenStack cloud (:class:`CloudPart`), cluster health (:class:`ClusterPart`), the
hub's idle culler (:class:`CullerPart`) and a Nublado hub with its lab controller
(:class:`NubladoPart`).

Each part starts its simulators on the world's clock, plants what it is asked to (recording
what it planted), and adds its sections to the world's configuration.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchdogd.sim.chp import ChpSim
from watchdogd.sim.hub import HubSim, ServerInfo
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.nublado import NubladoSim
from watchdogd.sim.objects import (
    CORE_LABEL,
    PRESSURE,
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
    rfc3339,
    stuck_namespace,
    tls_secret,
)
from watchdogd.sim.openstack import OpenStackSim
from watchdogd.sim.seed import DEMO_USERS, seed_cloud
from watchdogd.sim.tls import GARBAGE_PEM, CertAuthority, TlsServer

if TYPE_CHECKING:
    from watchdogd.sim.world import World

__all__ = ["Z2JH_CULLER", "CloudPart", "ClusterPart", "CullerPart", "NubladoPart"]

Obj = dict[str, Any]


class CloudPart:
    """An OpenStack cloud as a part of a :class:`~watchdogd.sim.world.World`.

    ``World(parts=[CloudPart()])`` starts an :class:`OpenStackSim` on the world's clock, seeds
    it with :func:`seed_cloud` against the world's cluster (unless ``seed=False``), and adds to
    the configuration a ``[clouds.NAME]`` section, the ``volumes``, ``orphans`` and ``quotas``
    checks with limits short enough for a pass every five simulated minutes, and the actions
    ``delete-attachment``, ``reset-volume-status`` and ``quarantine`` (never
    ``delete-orphan-volume``: deleting data stays an operator's decision in a demo too).
    """

    name = "openstack"
    checks = ("volumes", "orphans", "quotas")

    def __init__(self, *, cloud: str = "sim-cloud", seed: bool = True, page_max: int = 1000,
                 volumes: Mapping[str, Any] | None = None,
                 orphans: Mapping[str, Any] | None = None) -> None:
        self.cloud = cloud
        self.seed = seed
        self.page_max = page_max
        self.volume_settings = dict(volumes or {})
        self.orphan_settings = dict(orphans or {})
        self.sim: OpenStackSim | None = None
        self.clouds_yaml = ""
        #: what :func:`seed_cloud` and the injectors below injected
        self.injected: Obj = {}
        self._world: World | None = None

    def start(self, world: World) -> None:
        """Start the simulator on the world's clock, write clouds.yaml, seed the world."""
        self._world = world
        self.sim = OpenStackSim(page_max=self.page_max, clock=world.clock).start()
        self.clouds_yaml = self.sim.write_clouds_yaml(world.workdir / "clouds.yaml", self.cloud)
        Path(self.clouds_yaml).chmod(0o600)
        if self.seed:
            self.injected = seed_cloud(self.sim, {world.cluster_name: world.kube},
                                      namespace=world.namespace, users=DEMO_USERS)

    def config(self, world: World) -> Obj:
        """``[clouds.NAME]``, ``[checks.volumes]``, ``[checks.orphans]``, enabled actions."""
        enabled = list(world.remediation.get("enabled") or [])
        enabled += [a for a in ("delete-attachment", "reset-volume-status", "quarantine",
                                "quarantine-extra-pvc", "delete-extra-pvc")
                    if a not in enabled]
        return {
            "clouds": {self.cloud: {"cloud": self.cloud, "clouds_yaml": self.clouds_yaml,
                                    "clusters": [world.cluster_name],
                                    "timeout": world.timeout}},
            "remediation": {"enabled": enabled},
            "checks": {
                "volumes": {"interval": "3m", "stuck_after": "5m",
                            "attachment_stale_after": "5m", **self.volume_settings},
                "orphans": {"interval": "5m", **self.orphan_settings},
                "quotas": {"interval": "5m"},
            },
        }

    def stop(self) -> None:
        """Stop the simulator (idempotent)."""
        if self.sim is not None:
            self.sim.stop()

    # -- injectors (beyond what seed_cloud plants) ----------------------------------------------

    def _started(self) -> tuple[World, OpenStackSim]:
        if self._world is None or self.sim is None:
            raise RuntimeError("the part is not started")
        return self._world, self.sim

    def expiring_credential(self, name: str = "ci-deploy", *, days: float = 5) -> str:
        """An application credential of the cloud user that expires in ``days`` (the one
        watchdogd authenticates with is a password, so this is someone else's credential
        of the same user: a CI job's, say). Returns its name, the finding's subject."""
        world, sim = self._started()
        sim.add_application_credential("admin", name,
                                       expires_at=world.clock() + timedelta(days=days))
        self.injected.setdefault("credentials", []).append(name)
        return name

    def quota_near(self, *, limit_gb: int = 200, left_gb: int = 15) -> str:
        """The project's volume quota nearly used up: ``limit_gb`` GiB, of which only
        ``left_gb`` are left once a scratch volume (not a ``pvc-*`` one: no orphan) takes what
        the user volumes do not. The volumes quota is set high enough not to be near too.
        Returns the subject of the ``quota-near`` finding."""
        _, sim = self._started()
        used = sim.cinder.usage(sim.admin_project_id)
        scratch = limit_gb - left_gb - used["gigabytes"]
        if scratch < 1 or (limit_gb - left_gb) / limit_gb < 0.9:
            raise ValueError("choose limit_gb and left_gb so that usage is 90% or more")
        sim.add_volume("project-scratch", size=scratch, age=timedelta(days=60))
        sim.set_volume_quota(gigabytes=limit_gb, volumes=used["volumes"] * 4 + 10)
        self.injected.setdefault("quota_near", []).append("volume/gigabytes")
        return "volume/gigabytes"

    def quota_exhausted(self) -> str:
        """The project's Nova instances quota set to exactly the servers it runs: the next
        node cannot be created. Returns the subject of the ``quota-exhausted`` finding."""
        _, sim = self._started()
        used = sim.nova.usage(sim.admin_project_id)
        sim.set_compute_quota(instances=used["instances"])
        self.injected.setdefault("quota_exhausted", []).append("compute/instances")
        return "compute/instances"

    def servers_for_nodes(self) -> dict[str, str]:
        """Give every Node of the world's cluster whose ``spec.providerID`` is
        ``openstack:///<id>`` its Nova server (``ACTIVE``, named after the node) if it has
        none yet: the cloud under the cluster. Returns node name -> server id."""
        world, sim = self._started()
        found: dict[str, str] = {}
        for obj in world.kube.list("Node"):
            provider = str((obj.get("spec") or {}).get("providerID") or "")
            if not provider.startswith("openstack:///"):
                continue
            sid = provider.rsplit("/", 1)[-1]
            if sim.server(sid) is None:
                sim.add_server(obj["metadata"]["name"], server_id=sid, age=timedelta(days=30))
            found[obj["metadata"]["name"]] = sid
        return found

    def shelved_node(self, name: str) -> str:
        """The runbook's soft scaling: ``kubectl cordon`` then ``openstack server shelve``.
        The node's server is SHELVED_OFFLOADED (Nova's default offload time is 0), the node
        is cordoned and NotReady (its kubelet went with the VM). Returns the node's name,
        the subject of the ``node-shelved`` finding."""
        world, sim = self._started()
        sid = self.servers_for_nodes()[name]
        sim.set_server(sid, vm_state="shelved_offloaded")
        obj = world.kube.get("Node", name)
        assert obj is not None
        now = world.clock()
        obj["spec"]["unschedulable"] = True
        obj["spec"]["taints"] = [{"key": "node.kubernetes.io/unschedulable",
                                  "effect": "NoSchedule", "timeAdded": rfc3339(now)}]
        obj["status"]["conditions"] = node(name, now=now, ready=None,
                                           not_ready_since=now)["status"]["conditions"]
        world.kube.put(obj)
        self.injected.setdefault("shelved", []).append(name)
        return name

    def server_state(self, node_name: str, vm_state: str) -> str:
        """Put ``node_name``'s server in ``vm_state`` (``error``, ``stopped``...); returns its
        id."""
        _, sim = self._started()
        sid = self.servers_for_nodes()[node_name]
        sim.set_server(sid, vm_state=vm_state)
        return sid

    def attach_failed(self, user: str, *, node: str = "node-gone", events: int = 5) -> str:
        """``user``'s home volume is still ``in-use``, attached on ``node`` (a node that died
        without detaching it), so every attach to the user's new pod fails: a bound PV and
        claim, and a ``FailedAttachVolume`` event seen ``events`` times. Returns the volume
        id, the subject of the ``volume-attach-failed`` finding."""
        world, sim = self._started()
        volume = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=10))
        sim.add_attachment(volume["id"], status="attached", age=timedelta(days=2), host=node)
        volume = sim.volume(volume["id"]) or volume
        message = (f'Multi-Attach error for volume "{volume["name"]}" Volume is already '
                   f"exclusively attached to one node ({node}) and can't be attached to "
                   "another")
        world.kube.put_many([
            pv_for_volume(volume, claim_namespace=world.namespace, claim_name=f"claim-{user}"),
            pvc_for_user(user, volume["name"], namespace=world.namespace),
            failed_attach_event(world.namespace, f"jupyter-{user}", volume["name"],
                                when=world.clock(), count=events, message=message),
        ])
        self.injected.setdefault("attach_failed", []).append(volume["id"])
        return str(volume["id"])


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
        #: clusters whose API server answers 503 throughout (:meth:`unreachable_cluster`)
        self.broken: dict[str, KubeSim] = {}

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
        clusters: dict[str, Any] = {}
        for name, kube in self.broken.items():
            path = kube.write_kubeconfig(world.workdir / f"kubeconfig-{name}", context=name)
            clusters[name] = {"kubeconfig": path, "context": name, "timeout": world.timeout}
            checks["nodes"]["clusters"].append(name)
        for name, section in self.extra.items():
            checks[name] = {**checks.get(name, {}), **section}
        return {"checks": checks, **({"clusters": clusters} if clusters else {})}

    def stop(self) -> None:
        """Stop the HTTPS endpoints and broken API servers (idempotent)."""
        for server in self.servers:
            server.close()
        self.servers.clear()
        for kube in self.broken.values():
            kube.stop()
        self.broken.clear()

    def unreachable_cluster(self, name: str = "edge") -> str:
        """A second cluster, watched by the nodes check, whose API server answers every
        request ``503 Service Unavailable`` (a control plane that lost etcd): the nodes
        check cannot complete there, which becomes ``check-failing`` once it has lasted
        ``notify.error_after`` (the configuration is rewritten). Returns the subject."""
        kube = KubeSim().start()
        kube.fail("", status=503)
        self.broken[name] = kube
        self.world.write_config()
        return self._plant("check-failing", name)

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
                reason, message = PRESSURE[kind][1]
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

    def claim_stuck_terminating(self, name: str = "scratch-wendy", pod: str = "jupyter-wendy",
                                deleted_ago: timedelta = timedelta(minutes=30)) -> str:
        """A claim deleted ``deleted_ago`` (on the API server's own clock) that
        ``kubernetes.io/pvc-protection`` keeps because pod ``pod`` still mounts it. Returns
        the ``pvc-stuck-terminating`` finding's subject."""
        world = self.world
        deleted = world.kube.clock() - deleted_ago
        world.kube.put({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": world.namespace,
                         "finalizers": ["kubernetes.io/pvc-protection"],
                         "deletionTimestamp": deleted.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "deletionGracePeriodSeconds": 0},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Pending"}})
        world.kube.put({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": world.namespace,
                         "labels": {"app": "scratch"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "busybox"}],
                     "volumes": [{"name": "data",
                                  "persistentVolumeClaim": {"claimName": name}}]},
            "status": {"phase": "Running"}})
        return self._plant("pvc-stuck-terminating",
                           f"{world.cluster_name}/{world.namespace}/{name}")

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


#: z2jh's culler service (jupyterhub/files/hub/jupyterhub_config.py, with the chart's defaults)
Z2JH_CULLER = ("jupyterhub-idle-culler", [
    "python3", "-m", "jupyterhub_idle_culler", "--url=http://localhost:8081/hub/api",
    "--timeout=3600", "--cull-every=600", "--concurrency=10"])


class CullerPart:
    """The hub's idle culler as a part of a :class:`~watchdogd.sim.world.World`:
    ``World(parts=[CullerPart()])`` lists z2jh's ``jupyterhub-idle-culler`` service (a
    hub-managed one, with its command line) among the hub's services, and
    :meth:`idle_servers` plants servers it should have stopped long ago.

    The simulated culler never culls: it is the culler that runs with a token lacking
    ``delete:servers``, or whose loop died, which is what the culler check is for.
    """

    name = "culler"
    #: the checks this part is built for (the demo runs exactly the checks in play)
    checks = ("culler",)

    def __init__(self, service: tuple[str, list[str]] | None = Z2JH_CULLER) -> None:
        self.service = service
        self.planted: list[tuple[str, str]] = []
        self._world: World | None = None

    @property
    def world(self) -> World:
        """The world this part joined."""
        if self._world is None:
            raise RuntimeError("the part is not started")
        return self._world

    def start(self, world: World) -> None:
        """List the culler among the hub's services (``service=None``: no culler at all)."""
        self._world = world
        if self.service is not None:
            name, command = self.service
            world.hub.add_service(name, command=command)

    def config(self, world: World) -> dict[str, Any]:
        """``[checks.culler]``; the culler itself is found through the Hub API."""
        return {"checks": {"culler": {"interval": "5m"}}}

    def stop(self) -> None:
        """Nothing runs of its own."""

    def idle_servers(self, users: Sequence[str], idle: Sequence[timedelta]) -> str:
        """Servers for ``users``, each idle for the matching ``idle`` (``last_activity`` as
        the hub last heard of it, on the hub's clock); returns the
        subject of the ``culler-overdue`` finding they make (the hub's name)."""
        now = self.world.clock()
        for user, quiet in zip(users, idle, strict=True):
            # started an hour before its user went quiet
            self.world.hub.start_server(user, started=now - quiet - timedelta(hours=1))
            self.world.hub.set_last_activity(user, now - quiet)
        self.planted.append(("culler-overdue", self.world.hub_name))
        return self.world.hub_name
class _NubladoHub(HubSim):
    """A hub whose spawner is Nublado's: a start records the lab with the controller (its
    namespace and memory; the pod is the hub simulator's), a stop is the controller's
    ``DELETE`` first, as ``NubladoSpawner.stop`` does."""

    def __init__(self, *args: Any, controller: NubladoSim, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.controller = controller

    def start_server(self, user: str, server_name: str = "", **kwargs: Any) -> ServerInfo:
        info = super().start_server(user, server_name, **kwargs)
        self.controller.ensure_namespace(user)
        self.controller.remember(user, "pending" if kwargs.get("pending") else "running")
        return info

    def stop_server(self, user: str, server_name: str = "", *, delete_pod: bool = True,
                    remove_route: bool = True, via_controller: bool = True) -> bool:
        if via_controller and delete_pod:
            self.controller.delete_lab(user)
        return super().stop_server(user, server_name, delete_pod=delete_pod,
                                   remove_route=remove_route)


class NubladoPart:
    """A second hub, with Nublado's layout and lab controller, beside the world's own:
    ``World(parts=[NubladoPart()])``.

    It shares the world's cluster (lab namespaces ``nublado-<user>``, pods selected by
    ``nublado.lsst.io/category=lab``) and clock, runs its own proxy, hub (namespace
    ``nublado``) and :class:`~watchdogd.sim.nublado.NubladoSim`, adds ``[hubs.HUB]`` with
    ``nublado_url``, ``[checks.labs]`` and the action ``delete-lab``. Injectors break one
    user's records the way production does and record ``(kind, subject)`` in
    :attr:`planted`.
    """

    name = "nublado"
    checks = ("labs",)

    def __init__(self, *, hub_name: str = "rsp", namespace_name: str = "nublado",
                 reconcile_every: timedelta = timedelta(minutes=60),
                 labs: Mapping[str, Any] | None = None) -> None:
        self.hub_name = hub_name
        self.namespace = namespace_name
        self.reconcile_every = reconcile_every
        self.settings = dict(labs or {})
        self.planted: list[tuple[str, str]] = []
        self.chp: ChpSim | None = None
        self._hub: _NubladoHub | None = None
        self._controller: NubladoSim | None = None
        self._world: World | None = None

    @property
    def hub(self) -> _NubladoHub:
        """The Nublado hub (after start)."""
        if self._hub is None:
            raise RuntimeError("the part is not started")
        return self._hub

    @property
    def controller(self) -> NubladoSim:
        """The lab controller (after start)."""
        if self._controller is None:
            raise RuntimeError("the part is not started")
        return self._controller

    def start(self, world: World) -> None:
        """Start the proxy, the controller and the hub on the world's cluster and clock."""
        self._world = world
        self.chp = ChpSim(clock=world.clock).start()
        self._controller = NubladoSim(world.kube, reconcile_every=self.reconcile_every,
                                      clock=world.clock).start()
        self._hub = _NubladoHub(world.workdir / f"hub-{self.hub_name}", world.kube, self.chp,
                                self.namespace, layout="nublado", clock=world.clock,
                                controller=self._controller)
        self._hub.start()

    def _secret(self, world: World, name: str, value: str) -> str:
        path = world.secrets_dir / f"{self.hub_name}-{name}"
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return str(path)

    def config(self, world: World) -> Obj:
        """``[hubs.HUB]`` (Nublado layout, controller URL and token), ``[checks.labs]``."""
        assert self.chp is not None
        enabled = list(world.remediation.get("enabled") or [])
        enabled += [a for a in ("delete-lab",) if a not in enabled]
        return {
            "hubs": {self.hub_name: {
                "cluster": world.cluster_name, "namespace": self.namespace,
                "layout": "nublado", "api_url": self.hub.api_url,
                "api_token_file": self._secret(world, "hub_api_token", self.hub.token),
                "db_url_file": self._secret(world, "hub_db_url", self.hub.db_url),
                "proxy_api_url": self.chp.url,
                "proxy_token_file": self._secret(world, "proxy_token", self.chp.token),
                "nublado_url": self.controller.url,
                "nublado_token_file": self._secret(world, "nublado_token",
                                                   self.controller.token),
                "timeout": world.timeout,
            }},
            "remediation": {"enabled": enabled},
            "checks": {"labs": {"interval": "1m", **self.settings}},
        }

    def stop(self) -> None:
        """Stop the hub, the controller and the proxy (idempotent)."""
        for sim in (self._hub, self._controller, self.chp):
            if sim is not None:
                sim.stop()

    # -- injectors -------------------------------------------------------------------------

    def _plant(self, kind: str, subject: str) -> str:
        self.planted.append((kind, subject))
        return subject

    def healthy(self, users: Sequence[str]) -> list[str]:
        """Labs that agree everywhere: hub server, route, namespace, pod, controller."""
        for user in users:
            self.hub.start_server(user)
        return list(users)

    def stale_lab(self, user: str) -> str:
        """The hub stopped ``user``'s lab while the controller was restarting (its DELETE
        never arrived) and a node drain took the pod: the controller's memory says running
        until its hourly reconcile, the namespace is left."""
        self.hub.start_server(user)
        self.hub.stop_server(user, via_controller=False)
        return self._plant("controller-stale-lab", user)

    def lab_pod_missing(self, user: str) -> str:
        """The lab pod was deleted behind both the hub's and the controller's back."""
        self.hub.start_server(user)
        namespace, name = self.controller.names(user)
        assert self._world is not None
        self._world.kube.delete("Pod", name, namespace)
        return self._plant("lab-pod-missing", user)

    def lost_lab(self, user: str) -> str:
        """The controller forgot a lab the hub runs and whose pod runs."""
        self.hub.start_server(user)
        self.controller.forget(user)
        return self._plant("controller-lost-lab", user)

    def stuck_lab(self, user: str) -> str:
        """A delete that never finishes: the controller holds the lab as terminating, the
        hub already dropped the server."""
        self.hub.start_server(user)
        self.hub.stop_server(user, via_controller=False)
        self.controller.remember(user, "terminating", operation="delete")
        return self._plant("lab-stuck", user)

    def namespace_orphan(self, user: str) -> str:
        """A namespace ``nublado-<user>`` nobody has a lab for."""
        self.controller.ensure_namespace(user)
        return self._plant("lab-namespace-orphan", user)
