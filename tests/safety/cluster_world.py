"""A cluster to break at random for the ``nodes`` and ``certs`` checks, and its oracle.

:class:`ClusterModel` uses a :class:`~watchdogd.sim.parts.ClusterPart`: failed and evicted
pods of various ages (some younger than ``failed_pod_min_age``), pods replaced under the same
name while a pass runs, node pressure and NotReady nodes, full image caches, misplaced core
pods, stuck namespaces, TLS secrets expiring, expired or unreadable.

Only one action exists here, ``delete-pod`` of a failed pod, and :class:`ClusterTruth`
allows it only for that very pod (same uid), still Failed, failed for at least
``failed_pod_min_age`` by the model's own record of when it failed. Everything else the two
checks report is notify-only: any other action is unjustified.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tests.safety.faults import (
    DeleteWatch,
    DownFault,
    Fault,
    HttpFault,
    KubeBodyFault,
    wrap_method,
)
from tests.safety.harness import Driver, Truth
from watchdogd.sim.objects import failed_pod, pod
from watchdogd.sim.parts import ClusterPart
from watchdogd.sim.world import SimClock, World
from watchdogd.store import ActionRecord

__all__ = ["CLUSTER_FAULTS", "CLUSTER_PLANTS", "ClusterModel", "ClusterTruth", "cluster_fault"]

CLUSTER_PLANTS = ("failed-old", "evicted-old", "failed-young", "node-pressure", "not-ready",
                  "image-cache", "core-misplaced", "stuck-namespace", "cert-expiring",
                  "cert-expired", "cert-broken", "healthy-pod")


class ClusterTruth(Truth):
    """The cluster's pods as they really are at the start of a pass."""

    def __init__(self, model: ClusterModel, now: datetime) -> None:
        self.now = now
        self.model = model
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p
                     for p in model.world.kube.list("Pod")}
        self.failed_at = dict(model.failed_at)

    def justify(self, row: ActionRecord) -> str | None:
        if row.name != "delete-pod":
            return f"{row.name}: the nodes and certs checks only ever delete failed pods"
        p = row.params
        found = self.pods.get((p.get("namespace"), p.get("name")))
        if found is None:
            return "no such pod"
        meta, status = found["metadata"], found.get("status") or {}
        if meta.get("uid") != p.get("uid"):
            return "another pod (uid) now has that name"
        if status.get("phase") != "Failed":
            return f"the pod is {status.get('phase')}"
        failed = self.failed_at.get(meta["uid"])
        if failed is None:
            return "the model never made this pod fail"
        if self.now - failed < self.model.min_age:
            return f"failed {self.now - failed} ago, less than {self.model.min_age}"
        return None


class ClusterModel:
    """Nodes, pods, namespaces and certificates, planted and replaced at random."""

    def __init__(self, world: World, part: ClusterPart, clock: SimClock, *,
                 min_age: timedelta, seed: int) -> None:
        self.world = world
        self.part = part
        self.clock = clock
        self.min_age = min_age
        self.rng = random.Random(seed)
        self._names = (f"p{i}" for i in itertools.count())
        #: pod uid -> when it failed (the model's own record)
        self.failed_at: dict[str, datetime] = {}
        self.namespace = part.namespace
        self.deletes = DeleteWatch(world.kube, self._harm)

    @staticmethod
    def _harm(victim: dict[str, Any]) -> str | None:
        phase = (victim.get("status") or {}).get("phase")
        return None if phase == "Failed" else f"it was {phase}, not Failed"

    def _failed(self, *, evicted: bool, failed_for: timedelta) -> None:
        name = next(self._names)
        obj = failed_pod(self.namespace, name, now=self.clock(), evicted=evicted,
                         failed_for=failed_for, node_name=self.rng.choice(
                             ["node-1", "node-2", "node-3"]))
        stored = self.world.kube.put(obj)
        self.failed_at[stored["metadata"]["uid"]] = self.clock() - failed_for

    def plant(self, kind: str) -> None:
        part = self.part
        node = self.rng.choice(["node-1", "node-2", "node-3"])
        if kind == "failed-old":
            self._failed(evicted=False, failed_for=timedelta(hours=3))
        elif kind == "evicted-old":
            self._failed(evicted=True, failed_for=timedelta(hours=2))
        elif kind == "failed-young":
            self._failed(evicted=self.rng.random() < 0.5, failed_for=timedelta(minutes=5))
        elif kind == "node-pressure":
            part.node_pressure(node, self.rng.choice(["DiskPressure", "MemoryPressure",
                                                      "PIDPressure"]))
        elif kind == "not-ready":
            part.node_not_ready(node, unknown=self.rng.random() < 0.5)
        elif kind == "image-cache":
            part.image_cache_pressure(node, critical=self.rng.random() < 0.5)
        elif kind == "core-misplaced":
            part.core_pod_misplaced(self.rng.choice(["hub", "proxy"]), node)
        elif kind == "stuck-namespace":
            part.stuck_namespace(f"nublado-{next(self._names)}")
        elif kind == "cert-expiring":
            part.tls_secret(f"tls-{next(self._names)}", days=self.rng.choice([3, 20]))
        elif kind == "cert-expired":
            part.tls_secret(f"tls-{next(self._names)}", days=-2)
        elif kind == "cert-broken":
            part.broken_secret(f"broken-{next(self._names)}", missing=self.rng.random() < 0.5)
        elif kind == "healthy-pod":
            self.world.kube.put(pod(self.namespace, next(self._names), now=self.clock(),
                                    node_name=node))

    def replace_failed(self) -> None:
        """A failed pod is replaced under the same name (a new uid, Running): a controller
        recreated it while the pass was deciding."""
        failed = [p for p in self.world.kube.list("Pod", self.namespace)
                  if (p.get("status") or {}).get("phase") == "Failed"]
        if not failed:
            return
        old = failed[0]
        self.world.kube.delete("Pod", old["metadata"]["name"], self.namespace)
        fresh = pod(self.namespace, old["metadata"]["name"], now=self.clock(),
                    node_name="node-1")
        self.world.kube.put(fresh)

    # -- the oracle and the driver ----------------------------------------------------------------

    def truth(self) -> ClusterTruth:
        return ClusterTruth(self, self.clock())

    def mutations(self) -> dict[str, Callable[[], int]]:
        kube = self.world.kube

        def writes() -> int:
            return sum(1 for method, _ in list(kube.requests)
                       if method in ("DELETE", "POST", "PUT", "PATCH"))

        return {"kube": writes}

    def driver(self, step: timedelta) -> Driver:
        return Driver(self.world.load_config(), self.clock, ["nodes", "certs"], self.truth,
                      self.mutations(), harms=self.deletes.drain,
                      advance=lambda: self.clock.advance(seconds=step.total_seconds()))


class _ReplaceAfterList(Fault):
    """A failed pod is recreated right after the failed-pod list was answered."""

    source = "kube"
    label = "replaced-after-list"
    unstable = True

    def __init__(self, model: ClusterModel) -> None:
        self.model = model
        self._restore: Callable[[], None] | None = None
        self._fired = 0

    def arm(self) -> None:
        def make(real: Any) -> Any:
            def route(req: Any, ident: Any) -> Any:
                answer = real(req, ident)
                if (req.method == "GET" and req.path.endswith("/pods")
                        and "Failed" in str(req.params.get("fieldSelector"))
                        and not self._fired):
                    self._fired += 1
                    self.model.replace_failed()
                return answer

            return route

        self._restore = wrap_method(self.model.world.kube, "_route", make)

    def disarm(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def fired(self) -> bool:
        return self._fired > 0


class _Expire(Fault):
    source = "kube"
    label = "410"

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def arm(self) -> None:
        self.kube.expire_continue_after(1)

    def disarm(self) -> None:
        with self.kube._store.lock:
            self.kube._store.expire_after_pending = None


def cluster_fault(model: ClusterModel, kind: str) -> Fault:
    kube = model.world.kube
    if kind == "down":
        return DownFault("kube", kube.down, kube.up)
    if kind == "pods-500":
        return HttpFault("kube", kube, kind, path_regex=r"/pods$", status=500)
    if kind == "nodes-401":
        return HttpFault("kube", kube, kind, path_regex=r"/nodes$", status=401)
    if kind == "secrets-403":
        return HttpFault("kube", kube, kind, path_regex=r"/secrets$", status=403)
    if kind == "namespaces-hang":
        return HttpFault("kube", kube, kind, path_regex=r"/namespaces$", status=500, hang=1.5)
    if kind == "410":
        return _Expire(kube)
    if kind == "malformed-pods":
        return KubeBodyFault(kube, "/pods", b'{"kind": "Status", "code": 200}')
    if kind == "delete-500":
        return HttpFault("kube", kube, kind, path_regex=r"/pods/[^/]+$", status=500)
    if kind == "replaced-after-list":
        return _ReplaceAfterList(model)
    raise ValueError(kind)


CLUSTER_FAULTS = ("down", "pods-500", "nodes-401", "secrets-403", "namespaces-hang", "410",
                  "malformed-pods", "delete-500", "replaced-after-list")
