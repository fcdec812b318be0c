"""An OpenStack cloud and its clusters to break at random, and the oracle that judges actions.

:class:`CloudModel` plants volumes into an :class:`~watchdogd.sim.openstack.OpenStackSim`
(through a :class:`~watchdogd.sim.parts.CloudPart` of a world) with their PVs and claims
in one of two Kubernetes clusters: healthy attached homes, volumes stuck in transitional
states, dangling reservations beside attached attachments or alone, young reservations that
are simply in progress, orphaned ``pvc-*`` volumes, and volumes whose only PV lives in the
*second* cluster (the case where a partial union of PV lists would delete someone's data).

:class:`CloudTruth` reads the simulators' own state and judges each action:

* ``delete-attachment`` only for a reserved, unconnected attachment that is older than
  ``stuck_after`` beside an attached one, or older than ``attachment_stale_after`` alone;
* ``reset-volume-status`` only for a volume in a transitional status for longer than
  ``stuck_after``, to ``available`` when it has no attachment at all, to ``in-use`` when
  all of them are attached;
* ``quarantine`` (a metadata mark) only for an available, unattached ``pvc-*`` volume older
  than ``min_volume_age`` that no PV of any cluster references;
* ``delete-orphan-volume`` only for such a volume that has been orphaned for
  ``quarantine_days`` and carries its quarantine mark.
"""

from __future__ import annotations

import copy
import itertools
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.safety.faults import DownFault, Fault, HttpFault, wrap_method
from tests.safety.harness import Driver, Truth
from tests.safety.stats import STATS
from watchdogd.checks.volumes import pv_volume_id
from watchdogd.sim.kube import KubeSim
from watchdogd.sim.objects import pv_for_volume, pvc_for_user
from watchdogd.sim.openstack import OpenStackSim
from watchdogd.sim.parts import CloudPart
from watchdogd.sim.world import SimClock, World
from watchdogd.store import ActionRecord

__all__ = ["CLOUD_FAULTS", "CLOUD_PLANTS", "CloudModel", "CloudTruth", "cloud_fault"]

STUCK_STATUSES = ("reserved", "attaching", "detaching", "deleting", "error_deleting")
CLOUD_PLANTS = ("healthy", "stuck", "dangling-beside", "dangling-alone", "young-reservation",
                "orphan", "orphan-elsewhere", "released", "foreign-tagged", "foreign-pv-name")
SECOND = "sim2"
#: a cluster that shares the cloud but is in no configuration of watchdogd's
FOREIGN = "other-team"
CSI_CLUSTER = "cinder.csi.openstack.org/cluster"


class CloudTruth(Truth):
    """The cloud and both clusters, as they really are at the start of a pass."""

    def __init__(self, model: CloudModel, now: datetime) -> None:
        sim = model.sim
        self.now = now
        self.model = model
        with sim.lock:
            # Copies: the records change when the pass acts, the truth is the pass's start.
            self.volumes = {v.id: copy.deepcopy(v)
                            for v in sim.cinder.volumes.values()}
            self.attachments = {a.id: copy.deepcopy(a)
                                for a in sim.cinder.attachments.values()}
        self.referenced: set[str] = set()
        self.referenced_names: set[str] = set()
        # Every cluster that uses the cloud, configured or not: the truth is the whole world.
        for kube in model.all_kubes():
            for pv in kube.list("PersistentVolume"):
                self.referenced_names.add(pv["metadata"]["name"])
                vid = pv_volume_id(pv)
                if vid:
                    self.referenced.add(vid)
        self.orphan_since = dict(model.orphan_since)

    def atts(self, vid: str) -> list[Any]:
        return [a for a in self.attachments.values() if a.volume_id == vid]

    def orphan(self, vid: str) -> str | None:
        """None when the volume is a true orphan; else why not."""
        volume = self.volumes.get(vid)
        if volume is None:
            return "no such volume"
        if vid in self.referenced or volume.name in self.referenced_names:
            return "a PV references it"
        if not volume.name.startswith("pvc-"):
            return "not a pvc- volume"
        if volume.status != "available" or self.atts(vid):
            return f"it is {volume.status} with {len(self.atts(vid))} attachment(s)"
        if self.now - volume.created_at < self.model.min_volume_age:
            return "too young"
        return None

    def justify(self, row: ActionRecord) -> str | None:
        p = row.params
        m = self.model
        if row.name == "delete-attachment":
            att = self.attachments.get(str(p.get("attachment_id")))
            if att is None:
                return "no such attachment"
            if att.status != "reserved" or att.connection_info:
                return f"the attachment is {att.status}"
            if att.volume_id != p.get("volume_id"):
                return "the attachment belongs to another volume"
            age = self.now - att.created_at
            beside = any(a.status == "attached" for a in self.atts(att.volume_id))
            limit = m.stuck_after if beside else m.stale_after
            if age < limit:
                return f"reserved for {age}, less than {limit}: an attach may be in progress"
            return None
        if row.name == "reset-volume-status":
            volume = self.volumes.get(str(p.get("volume_id")))
            if volume is None:
                return "no such volume"
            if volume.status not in STUCK_STATUSES:
                return f"the volume is {volume.status}, not stuck"
            if self.now - volume.updated_at < m.stuck_after:
                return "not stuck for long enough"
            states = [a.status for a in self.atts(volume.id)
                      if a.status not in ("detached", "deleted")]
            if p.get("status") == "available" and states:
                return f"it still has attachments {states}"
            if p.get("status") == "in-use" and (not states or set(states) != {"attached"}):
                return f"in-use needs attached attachments only, it has {states}"
            return None
        if row.name == "quarantine":
            return self.orphan(str(p.get("volume_id")))
        if row.name == "delete-orphan-volume":
            vid = str(p.get("volume_id"))
            why = self.orphan(vid)
            if why:
                return why
            since = self.orphan_since.get(vid)
            if since is None or self.now - since < timedelta(days=m.quarantine_days):
                return f"orphaned since {since}, less than {m.quarantine_days} day(s)"
            mark = self.volumes[vid].metadata.get("watchdogd-orphaned-since")
            if not mark:
                return "it carries no quarantine mark"
            return None
        return f"unknown action {row.name}"

    def subjects(self, check: str, target: str) -> int | None:
        return len(self.volumes) if check == "volumes" else None


class CloudModel:
    """A cloud with two clusters, planted and drifted at random."""

    def __init__(self, world: World, part: CloudPart, clock: SimClock, second: KubeSim, *,
                 stuck_after: timedelta, stale_after: timedelta, min_volume_age: timedelta,
                 quarantine_days: int, seed: int) -> None:
        self.world = world
        self.part = part
        assert part.sim is not None
        self.sim: OpenStackSim = part.sim
        self.clock = clock
        self.kubes = {world.cluster_name: world.kube, SECOND: second}
        # Never started: watchdogd cannot reach it, only its volumes' metadata tells of it.
        self.foreign = KubeSim()
        self.stuck_after = stuck_after
        self.stale_after = stale_after
        self.min_volume_age = min_volume_age
        self.quarantine_days = quarantine_days
        self.rng = random.Random(seed)
        self._users = (f"v{i}" for i in itertools.count())
        #: volume id -> when it became an orphan (the model's own knowledge)
        self.orphan_since: dict[str, datetime] = {}
        self.stuck: list[str] = []
        self.harm_seen: list[str] = []
        wrap_method(self.sim.cinder, "route", self._watch)

    # -- harm, judged at the moment a request arrives ------------------------------------------

    def all_kubes(self) -> list[KubeSim]:
        """Every cluster whose PVs use this cloud, including the one watchdogd is not told of."""
        return [*self.kubes.values(), self.foreign]

    def _referenced(self, volume_id: str, name: str) -> bool:
        for kube in self.all_kubes():
            for pv in kube.list("PersistentVolume"):
                if pv_volume_id(pv) == volume_id or pv["metadata"]["name"] == name:
                    return True
        return False

    def _watch(self, real: Any) -> Any:
        sim = self.sim

        def route(req: Any) -> Any:
            parts = [p for p in req.path.split("/") if p]
            harm = None
            with sim.lock:
                if req.method == "DELETE" and "attachments" in parts:
                    att = sim.cinder.attachments.get(parts[-1])
                    if att is not None and (att.status != "reserved" or att.connection_info):
                        harm = f"attachment {att.id} deleted while {att.status}"
                elif req.method == "DELETE" and "volumes" in parts and parts[-1] != "volumes":
                    volume = sim.cinder.volumes.get(parts[-1])
                    if volume is not None and self._referenced(volume.id, volume.name):
                        harm = f"volume {volume.id} deleted while a PV references it"
                elif req.method == "POST" and parts[-1:] == ["action"]:
                    try:
                        body = req.json() or {}
                    except Exception:
                        body = {}
                    reset = body.get("os-reset_status") if isinstance(body, dict) else None
                    volume = sim.cinder.volumes.get(parts[-2])
                    if isinstance(reset, dict) and volume is not None:
                        states = sorted(a.status for a in sim.cinder.attachments.values()
                                        if a.volume_id == volume.id
                                        and a.status not in ("detached", "deleted"))
                        target = reset.get("status")
                        if (target == "available" and states) or (
                                target == "in-use" and set(states) != {"attached"}):
                            harm = (f"volume {volume.id} reset to {target} with attachments "
                                    f"{states}")
            answer = real(req)
            if harm and answer.status < 300:
                self.harm_seen.append(harm)
            return answer

        return route

    def pending(self, delete_enabled: bool) -> list[str]:
        """Orphans a remediation will still act on (quarantine, or delete after it)."""
        truth = self.truth()
        out = []
        for vid, volume in truth.volumes.items():
            if truth.orphan(vid) is None and (
                    delete_enabled or "watchdogd-orphaned-since" not in volume.metadata):
                out.append(f"orphan {vid}")
        return out

    def harms(self) -> list[str]:
        found, self.harm_seen = self.harm_seen, []
        return found

    # -- planting --------------------------------------------------------------------------------

    def _bind(self, volume: dict[str, Any], cluster: str | None = None,
              phase: str = "Bound") -> None:
        user = next(self._users)
        cluster = cluster or self.rng.choice(sorted(self.kubes))
        kube = self.kubes[cluster]
        kube.put_many([
            pv_for_volume(volume, claim_namespace="jhub", claim_name=f"claim-{user}",
                          phase=phase),
            pvc_for_user(user, volume["name"]),
        ])

    def plant(self, kind: str) -> None:
        sim = self.sim
        name = f"pvc-{uuid.uuid4()}"
        if kind == "healthy":
            volume = sim.add_volume(name, age=timedelta(days=3))
            sim.add_attachment(volume["id"], status="attached", age=timedelta(days=1))
            self._bind(volume)
        elif kind == "stuck":
            status = self.rng.choice(STUCK_STATUSES)
            volume = sim.inject_stuck_volume(name, status=status, age=timedelta(hours=2))
            self.stuck.append(volume["id"])
            self._bind(volume)
        elif kind in ("dangling-beside", "dangling-alone"):
            volume, _ = sim.inject_dangling_attachment(
                name, age=timedelta(hours=2), beside_attached=kind == "dangling-beside")
            self._bind(volume)
        elif kind == "young-reservation":
            volume = sim.add_volume(name, age=timedelta(days=2))
            sim.add_attachment(volume["id"], status="reserved", age=timedelta(minutes=1))
            self._bind(volume)
        elif kind == "orphan":
            volume = sim.inject_orphan_volume(name, age=timedelta(days=30))
            self.orphan_since[volume["id"]] = self.clock()
        elif kind == "orphan-elsewhere":
            # Orphaned as far as the first cluster can tell; the second one uses it.
            volume = sim.add_volume(name, age=timedelta(days=30))
            self._bind(volume, cluster=SECOND)
        elif kind == "released":
            volume = sim.add_volume(name, age=timedelta(days=9))
            self._bind(volume, phase="Released")
        elif kind in ("foreign-tagged", "foreign-pv-name"):
            # Another team's cluster on the same cloud: cinder-csi stamped the volume with
            # its cluster id, or (without --cluster) with the PV and claim it was made for.
            user = next(self._users)
            metadata = ({CSI_CLUSTER: FOREIGN} if kind == "foreign-tagged" else
                        {"csi.storage.k8s.io/pv/name": name,
                         "csi.storage.k8s.io/pvc/name": f"claim-{user}",
                         "csi.storage.k8s.io/pvc/namespace": "jhub"})
            volume = sim.add_volume(name, age=timedelta(days=30), metadata=metadata)
            self.foreign.put_many([
                pv_for_volume(volume, claim_namespace="jhub", claim_name=f"claim-{user}"),
                pvc_for_user(user, volume["name"])])
            STATS.add("foreign_volumes")

    def drift(self, kind: str) -> None:
        """The world moves on: an orphan gets adopted, a stuck volume recovers by itself."""
        if kind == "adopt" and self.orphan_since:
            vid = self.rng.choice(sorted(self.orphan_since))
            volume = self.sim.volume(vid)
            self.orphan_since.pop(vid)
            if volume is not None:
                self._bind(volume)
        elif kind == "recover" and self.stuck:
            vid = self.stuck.pop(self.rng.randrange(len(self.stuck)))
            for att in self.sim.attachments(vid):
                if att["status"] != "attached":
                    self.sim.set_attachment(att["id"], status="deleted")
            self.sim.set_volume(vid, status="available")
        else:
            self.plant(kind)

    def settle(self) -> None:
        """Keep the model's orphan clock in step with what actions did to the volumes."""
        for vid in list(self.orphan_since):
            if self.sim.volume(vid) is None:
                del self.orphan_since[vid]

    # -- the oracle and the driver ----------------------------------------------------------------

    def truth(self) -> CloudTruth:
        return CloudTruth(self, self.clock())

    def mutations(self) -> dict[str, Callable[[], int]]:
        sim = self.sim

        def writes() -> int:
            return sum(1 for service, method, _ in list(sim.requests)
                       if service == "cinder" and method in ("POST", "PUT", "DELETE"))

        return {"openstack": writes}

    def driver(self, step: Callable[[], timedelta],
               skew: Callable[[], timedelta] | None = None) -> Driver:
        """A refereed driver; ``skew()`` puts watchdogd's clock ahead of Cinder's (or behind),
        and may change between passes (an NTP step, a run from another host)."""
        clock = self.clock if skew is None else (lambda: self.clock() + skew())
        return Driver(self.world.load_config(), clock, ["volumes", "orphans"], self.truth,
                      self.mutations(), settle=self.settle, harms=self.harms,
                      advance=lambda: self.clock.advance(seconds=step().total_seconds()))

    def change_in_flight(self) -> None:
        """A stuck volume recovers right after the list was read (before any action)."""
        if self.stuck:
            vid = self.stuck[0]
            self.sim.set_volume(vid, status="available")
            for att in self.sim.attachments(vid):
                if att["status"] != "attached":
                    self.sim.set_attachment(att["id"], status="deleted")


def second_cluster(world: World, directory: Path) -> tuple[KubeSim, dict[str, Any]]:
    """Another Kubernetes cluster for the cloud's PVs, and its configuration fragment."""
    kube = KubeSim().start()
    path = directory / "kubeconfig-sim2"
    kube.write_kubeconfig(path, context=SECOND)
    return kube, {"clusters": {SECOND: {"kubeconfig": str(path), "context": SECOND,
                                        "timeout": world.timeout}}}


class _OnList(Fault):
    """The world changes right after Cinder answered the volume list."""

    source = "openstack"
    label = "change-after-list"
    unstable = True

    def __init__(self, model: CloudModel) -> None:
        self.model = model

    def arm(self) -> None:
        self.model.sim.on_request(r"/volumes/detail", lambda _sim: self.model.change_in_flight(),
                                  times=1)

    def disarm(self) -> None:
        self.model.sim.clear_faults()


class _Revoke(Fault):
    """Every token is revoked after ``n`` more Cinder requests (a list half way through)."""

    source = "openstack"
    label = "token-revoked"

    def __init__(self, sim: OpenStackSim, n: int) -> None:
        self.sim = sim
        self.n = n

    def arm(self) -> None:
        self.sim.expire_tokens_after(self.n)

    def disarm(self) -> None:
        self.sim.clear_faults()


def cloud_fault(model: CloudModel, source: str, kind: str) -> Fault:
    """One fault of ``kind`` on ``source``: ``openstack``, ``kube`` (first cluster) or ``kube2``."""
    sim = model.sim
    if source == "openstack":
        if kind == "keystone-down":
            return DownFault("openstack", lambda: sim.down("keystone"), lambda: sim.up("keystone"))
        if kind == "cinder-down":
            return DownFault("openstack", lambda: sim.down("cinder"), lambda: sim.up("cinder"))
        if kind == "list-500":
            return HttpFault("openstack", sim, kind, path_regex=r"/volumes/detail", status=500)
        if kind == "page-2-500":  # the first page arrives, the rest of the list does not
            return HttpFault("openstack", sim, kind, path_regex=r"/volumes/detail", status=500,
                             after=1)
        if kind == "attachments-503-once":
            return HttpFault("openstack", sim, kind, path_regex=r"/attachments", status=503,
                             times=1)
        if kind == "hang":
            return HttpFault("openstack", sim, kind, path_regex=r"/volumes/detail", status=500,
                             hang=1.5)
        if kind == "403":
            return HttpFault("openstack", sim, kind, path_regex=r"/attachments", status=403)
        if kind == "action-500":
            return HttpFault("openstack", sim, kind, path_regex=r"/action|/attachments/[^/]+$|"
                             r"/metadata", status=500, method=None)
        if kind == "token-revoked":
            return _Revoke(sim, 1)
        if kind == "change-after-list":
            return _OnList(model)
    kube = model.kubes[model.world.cluster_name if source == "kube" else SECOND]
    if kind == "down":
        return DownFault(source, kube.down, kube.up)
    if kind == "pv-500":
        return HttpFault(source, kube, kind, path_regex=r"/persistentvolumes$", status=500)
    if kind == "410":
        return _Expire(kube)
    if kind == "401":
        return HttpFault(source, kube, kind, path_regex=r"/persistentvolume", status=401)
    raise ValueError(f"unknown fault {source}: {kind}")


class _Expire(Fault):
    """The next paginated list of the cluster answers 410 on its first continue."""

    label = "410"

    def __init__(self, kube: KubeSim) -> None:
        self.source = "kube"
        self.kube = kube

    def arm(self) -> None:
        self.kube.expire_continue_after(1)

    def disarm(self) -> None:
        with self.kube._store.lock:
            self.kube._store.expire_after_pending = None


CLOUD_FAULTS: dict[str, tuple[str, ...]] = {
    "openstack": ("keystone-down", "cinder-down", "list-500", "page-2-500",
                  "attachments-503-once", "hang",
                  "403", "action-500", "token-revoked", "change-after-list"),
    "kube": ("down", "pv-500", "410", "401"),
    "kube2": ("down", "pv-500", "410", "401"),
}
