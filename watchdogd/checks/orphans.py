"""Orphans: Cinder volumes no PV references, released PVs, extra claims of departed users.

* ``orphan-volume``: a volume named ``pvc-*`` (what cinder-csi creates for a PV) that no PV of
  *any* of the cloud's clusters references, by CSI volume handle, in-tree ``cinder.volumeID``
  or name. The verdict needs the union over every cluster: if one cluster's PV list failed
  there is no verdict at all (the engine reports the target as ``error``), because the missing
  cluster may be the one using the volume. Volumes younger than ``min_volume_age`` are left
  alone (cinder-csi creates the volume a moment before the PV).
* ``foreign-volume`` (info, never acted on): a ``pvc-*`` volume whose cinder-csi metadata
  names a cluster (``cinder.csi.openstack.org/cluster``) that is not in ``clouds.X.clusters``,
  or that carries ``csi.storage.k8s.io/pv/name``/``pvc/name`` metadata without naming a
  configured cluster and whose PV no configured cluster has: another cluster shares the cloud,
  and its volumes are not watchdogd's to judge.
* ``released-pv``: a PV in phase ``Released`` or ``Failed`` (its claim is gone; with the
  ``Retain`` policy nothing will ever clean it up).
* ``orphan-extra-pvc``: a per-user claim beyond the home claim (``postgres-{username}`` and
  other ``extra_pvc_patterns``, or labelled ``extra_pvc_selector``) whose hub user no longer
  exists in the hub database of the hub that owns that namespace. Users are matched by the
  claim's ``hub.jupyter.org/username`` annotation, else by the name in the pattern compared
  with the users' KubeSpawner slugs (``safe`` and ``escape`` schemes).
* ``pvc-stuck-terminating`` (warning): a claim deleted ``stuck_terminating_after`` ago or
  more (on the API server's clock, its ``Date``) that the ``kubernetes.io/pvc-protection``
  finalizer keeps, because pods still mount it. The pods are named: the claim's namespace
  is listed (a lookup, only for such claims) and every pod whose volumes use the claim is
  in the finding.

Everything is reported only. Two opt-in actions exist for orphaned volumes (enable them in
``remediation.enabled``):

* ``quarantine`` writes ``quarantine_key = <Cinder's time>`` into the volume's metadata
  (non-destructive; the date survives a loss of watchdogd's state). The time is Cinder's
  clock (the ``Date`` of its list answer), so it is later compared with Cinder's clock only;
* ``delete-orphan-volume`` deletes a quarantined volume once two clocks agree that it is
  ``quarantine_days`` old: on Cinder's clock, both the quarantine mark and the volume's
  ``updated_at``; on watchdogd's, its own continuous sighting of the orphan. Only while it is
  ``available`` and unattached, at most ``delete_max_per_pass`` per pass (and within the
  global budget and breaker).

Right before either action the engine re-reads the volume and the PVs of every configured
cluster (the whole list before a delete, the PV of the volume's name before a quarantine);
the source re-reads the volume again and refuses if its status, ``updated_at``, attachments
or quarantine mark changed.

Hub users come from the ``hubdb`` source's ``sessions()`` (one query per hub, no request per
user).

Each pass also returns the map of users' disks (``Detection.records``, see :func:`disk_map`):
every ``Bound`` claim with its PV and Cinder volume, from the same lists. The engine keeps it
in the store as a new version when it changed, and only from a complete pass
(``watchdogd volumes map`` / ``volumes manifests``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from watchdogd.checks.common import Detector
from watchdogd.checks.volumes import (
    auth_error,
    cloud_now,
    pv_volume_id,
    pvcs_need,
    pvs_need,
    volume_summary,
    volumes_need,
)
from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import (
    Action,
    CheckTarget,
    ClaimRecord,
    Detection,
    Finding,
    ImplausibleData,
    Need,
    Severity,
    Snapshot,
)
from watchdogd.ports import HubApi, HubDb, Kube, OpenStack, call
from watchdogd.slugs import escape_slug, safe_slug
from watchdogd.text import MASK, names_a_secret
from watchdogd.times import parse_time

NAME = "orphans"
KINDS = ("orphan-volume", "foreign-volume", "released-pv", "orphan-extra-pvc",
         "pvc-stuck-terminating")
# cinder-csi writes these into the metadata of every volume it creates (--cluster and the
# CSI provisioner's extra-create-metadata).
CSI_CLUSTER_KEY = "cinder.csi.openstack.org/cluster"
CSI_PV_KEY = "csi.storage.k8s.io/pv/name"
CSI_PVC_KEY = "csi.storage.k8s.io/pvc/name"

ANNOTATION_USER = "hub.jupyter.org/username"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
#: the claim annotations a restored claim carries again (KubeSpawner's, z2jh's)
HUB_ANNOTATION_PREFIX = "hub.jupyter.org/"
CINDER_DRIVER = "cinder.csi.openstack.org"
#: KubeSpawner's ``pvc_name_template`` default, ``claim-{user_server}``
CLAIM_PREFIX = "claim-"


class Settings(CheckConfig):
    """``[checks.orphans]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(hours=1)
    volume_prefix: str = "pvc-"
    #: no verdict on volumes younger than this (the PV follows the volume by a moment)
    min_volume_age: Duration = timedelta(hours=1)
    quarantine_days: int = Field(14, ge=1)
    quarantine_key: str = "watchdogd-orphaned-since"
    delete_max_per_pass: int = Field(2, ge=0)
    released_phases: list[str] = Field(default_factory=lambda: ["Released", "Failed"])
    extra_pvc_patterns: list[str] = Field(default_factory=lambda: ["postgres-{username}"])
    #: ``key=value[,key=value]``: claims with these labels are extra per-user claims too
    extra_pvc_selector: str = "component=extra-pvc"
    #: a deleted claim still held by pvc-protection this long after its deletion is stuck
    stuck_terminating_after: Duration = timedelta(minutes=10)


@dataclass(frozen=True)
class HubRef:
    """A hub whose namespace may hold extra per-user claims."""

    name: str
    cluster: str
    namespace: str
    layout: str
    nublado_prefix: str = "nublado-"
    #: no ``db_url``: its users come from the Hub API
    api_only: bool = False


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one cloud (or one cluster without a cloud)."""

    name: str
    cloud: str | None
    clusters: tuple[str, ...]
    hubs: tuple[HubRef, ...]
    check: Settings



def hub_need(hub: str, api_only: bool = False) -> Need:
    """The hub's users: the sessions() read of its database, or of its API without ``db_url``
    (the key stays ``hub_db:``: both give the same ``users``)."""
    if api_only:
        return Need.bind(f"hub_db:{hub}", call(HubApi.sessions, hub))
    return Need.bind(f"hub_db:{hub}", call(HubDb.sessions, hub))


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per cloud (over all its clusters), one per cluster that is in no cloud.

    A cloud without clusters gets no target: with no PV list, every volume would look
    orphaned.
    """
    result = []
    in_clouds: set[str] = set()
    groups: list[tuple[str, str | None, tuple[str, ...]]] = []
    for name, cloud in inventory.clouds.items():
        if cloud.clusters:
            groups.append((name, name, tuple(cloud.clusters)))
            in_clouds.update(cloud.clusters)
    for cluster in inventory.clusters:
        if cluster not in in_clouds:
            name = cluster if cluster not in inventory.clouds else f"cluster-{cluster}"
            groups.append((name, None, (cluster,)))
    for name, cloud_name, clusters in groups:
        hubs = tuple(HubRef(h, hub.cluster, hub.namespace, hub.layout,
                            hub.nublado_namespace_prefix, hub.db_url is None)
                     for h, hub in inventory.hubs.items() if hub.cluster in clusters)
        needs: list[Need] = [volumes_need(cloud_name)] if cloud_name else []
        for cluster in clusters:
            needs.append(pvs_need(cluster))
            # every cluster's claims: extra claims of gone users, claims stuck terminating
            needs.append(pvcs_need(cluster))
        needs += [hub_need(h.name, h.api_only) for h in hubs if h.layout == "kubespawner"]
        result.append(CheckTarget(name, tuple(needs),
                                  TargetSettings(name, cloud_name, clusters, hubs, check)))
    return result


# -- slugs (how KubeSpawner puts a username into a claim name) ---------------------------------




def _user_keys(users: list[str]) -> set[str]:
    keys: set[str] = set()
    for user in users:
        keys.update({user, user.lower(), safe_slug(user), escape_slug(user)})
    return keys


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{username\})", pattern)
    body = "".join("(?P<username>.+)" if p == "{username}" else re.escape(p) for p in parts)
    return re.compile(f"^{body}$")


def _selector(text: str) -> dict[str, str]:
    pairs = {}
    for term in text.split(","):
        key, sep, value = term.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


# -- detection ---------------------------------------------------------------------------------


class _Detector(Detector):
    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        super().__init__(NAME, snapshot, now)
        self.s: TargetSettings = snapshot.settings


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Orphaned volumes (union over clusters), released PVs, extra claims of gone users."""
    d = _Detector(snapshot, now)
    lookups = list(_stuck_claims(d))
    extra_subjects = _extra_pvcs(d, lookups)
    if lookups:
        # the pods of some namespaces first; every verdict is made again with them
        return Detection([], 0, lookups=tuple(dict.fromkeys(lookups)))
    pvs = {cluster: snapshot[f"pvs:{cluster}"] for cluster in d.s.clusters}
    subjects = 0
    if d.s.cloud is not None:
        problem = auth_error(snapshot, ("volumes",))
        if problem is not None:
            raise ImplausibleData(f"no orphan verdict for cloud {d.s.cloud}: {problem}")
        subjects += _orphan_volumes(d, snapshot["volumes"]["items"], pvs)
    volumes_by_id = ({str(v["id"]): v for v in snapshot["volumes"]["items"]}
                     if d.s.cloud is not None else {})
    for cluster, items in pvs.items():
        subjects += _released(d, cluster, items, volumes_by_id)
    subjects += extra_subjects
    return Detection(d.findings, subjects, d.marks,
                     records=disk_map(d.s, snapshot, pvs, volumes_by_id))


def _orphan_volumes(d: _Detector, volumes: list[dict[str, Any]],
                    pvs: dict[str, list[dict[str, Any]]]) -> int:
    s = d.s.check
    referenced_ids: set[str] = set()
    referenced_names: set[str] = set()
    handles = 0
    for items in pvs.values():
        for pv in items:
            referenced_names.add(str((pv.get("metadata") or {}).get("name")))
            vid = pv_volume_id(pv)
            if vid:
                referenced_ids.add(vid)
                handles += 1
    candidates = [v for v in volumes if str(v.get("name") or "").startswith(s.volume_prefix)]
    ids = {str(v["id"]) for v in volumes}
    if handles and candidates and not referenced_ids & ids:
        raise ImplausibleData(
            f"none of the {handles} Cinder-backed PVs of clusters {', '.join(d.s.clusters)} "
            f"references a volume of cloud {d.s.cloud}: is clouds.{d.s.cloud}.clusters right? "
            "No orphan verdict")
    cloud = cloud_now(d.snapshot)
    deletable: list[tuple[datetime, dict[str, Any], dict[str, Any], datetime]] = []
    for volume in candidates:
        vid = str(volume["id"])
        if vid in referenced_ids or str(volume.get("name")) in referenced_names:
            continue
        foreign = _foreign(volume, d.s.clusters, referenced_names)
        if foreign is not None:
            d.finding("foreign-volume", vid, Severity.INFO,
                      f"volume {volume.get('name')} ({vid}) of cloud {d.s.cloud} {foreign}: "
                      "not judged as an orphan, never quarantined or deleted (add the "
                      f"cluster to clouds.{d.s.cloud}.clusters if watchdogd should know it)",
                      {"volume": volume_summary(volume), "clusters": list(d.s.clusters)})
            continue
        created = parse_time(volume.get("created_at"))
        if created is None or (cloud or d.now) - created < s.min_volume_age:
            continue
        mark = f"orphan:{vid}"
        since = d.seen_since(mark)
        summary = volume_summary(volume)
        quarantine = (volume.get("metadata") or {}).get(s.quarantine_key)
        evidence = {"volume": summary, "orphaned_since": since.isoformat(),
                    "quarantined_since": quarantine, "clusters": list(d.s.clusters)}
        text = (f"volume {volume.get('name')} ({vid}, {volume.get('size')} GB, "
                f"{volume.get('status')}) is referenced by no PV in "
                f"{', '.join(d.s.clusters)}; seen orphaned since {since:%Y-%m-%d %H:%M}")
        status = volume.get("status")
        if status != "available" or volume.get("attachments"):
            d.finding("orphan-volume", vid, Severity.WARNING,
                      text + f"; it is {status} and attached to something: not quarantined "
                             "(a cluster watchdogd does not know may use it)", evidence)
            continue
        if not quarantine:
            if cloud is None:
                d.finding("orphan-volume", vid, Severity.WARNING,
                          text + "; Cinder's answer had no Date header, so its clock is "
                                 "unknown: not quarantined", evidence)
                continue
            d.finding("orphan-volume", vid, Severity.WARNING, text, evidence,
                      Action.bind("quarantine", call(
                          OpenStack.quarantine_volume, d.s.cloud or "", volume_id=vid,
                          observed_status="available",
                          observed_updated_at=volume.get("updated_at"),
                          key=s.quarantine_key, value=cloud.strftime("%Y-%m-%dT%H:%M:%SZ")),
                          destructive=False, before={"volume": summary},
                          verify=_rereads(d, volume, full=False),
                          about={"volume_metadata": volume.get("metadata")}))
            continue
        marked = parse_time(quarantine)
        if marked is None:
            d.finding("orphan-volume", vid, Severity.WARNING,
                      text + f"; its quarantine mark {quarantine!r} is not a date: left alone",
                      evidence)
            continue
        # Two clocks, each compared only with itself: Cinder's mark and updated_at against
        # Cinder's now, watchdogd's first sighting against watchdogd's now.
        period = timedelta(days=s.quarantine_days)
        updated = parse_time(volume.get("updated_at")) or marked
        cloud_ready = max(marked, updated) + period
        own_ready = since + period
        evidence.update(cloud_now=cloud.isoformat() if cloud else None,
                        cloud_ready=cloud_ready.isoformat(), own_ready=own_ready.isoformat())
        if cloud is None:
            d.finding("orphan-volume", vid, Severity.WARNING,
                      text + f"; quarantined since {marked:%Y-%m-%d}; Cinder's answer had no "
                             "Date header, so its clock is unknown: not deleted", evidence)
            continue
        if cloud < cloud_ready or d.now < own_ready:
            d.finding("orphan-volume", vid, Severity.WARNING,
                      text + f"; quarantined since {marked:%Y-%m-%d}, deletable once Cinder's "
                             f"clock reaches {cloud_ready:%Y-%m-%d %H:%M} and watchdogd's "
                             f"reaches {own_ready:%Y-%m-%d %H:%M}", evidence)
            continue
        deletable.append((marked, volume, evidence, own_ready))

    deletable.sort(key=lambda item: (item[0], str(item[1]["id"])))
    for index, (marked, volume, evidence, _ready) in enumerate(deletable):
        vid = str(volume["id"])
        text = (f"volume {volume.get('name')} ({vid}, {volume.get('size')} GB) has been "
                f"orphaned and quarantined since {marked:%Y-%m-%d}")
        if index >= s.delete_max_per_pass:
            d.finding("orphan-volume", vid, Severity.WARNING,
                      text + f"; waits for a later pass (checks.orphans.delete_max_per_pass = "
                             f"{s.delete_max_per_pass})", evidence)
            continue
        d.finding("orphan-volume", vid, Severity.WARNING, text + "; it is deleted", evidence,
                  Action.bind("delete-orphan-volume", call(
                      OpenStack.delete_volume, d.s.cloud or "", volume_id=vid,
                      observed_status="available", observed_updated_at=volume.get("updated_at"),
                      quarantine_key=s.quarantine_key,
                      quarantine_value=str((volume.get("metadata") or {}).get(s.quarantine_key))),
                      destructive=True, before={"volume": volume},
                      verify=_rereads(d, volume, full=True),
                      about={"volume_metadata": volume.get("metadata")}))
    return len(candidates)


def _rereads(d: _Detector, volume: dict[str, Any], *, full: bool) -> tuple[Need, ...]:
    """What an orphan verdict rests on, to be read again right before acting on it.

    The volume itself, and every configured cluster's PVs: all of them before a delete
    (a static PV may reference the volume under any name), the one named after the volume
    before a quarantine (cheap, so a first run with hundreds of orphans stays cheap).
    """
    needs = [Need.bind("volume", call(OpenStack.volume, d.s.cloud or "",
                                      volume_id=str(volume["id"])))]
    for cluster in d.s.clusters:
        if full:
            needs.append(pvs_need(cluster))
        else:
            needs.append(Need.bind(f"pvs:{cluster}", call(
                Kube.list_objects, cluster, kind="PersistentVolume",
                field_selector=f"metadata.name={volume.get('name')}")))
    return tuple(needs)


def verify(finding: Finding, reads: dict[str, Any], first_seen: datetime) -> str | None:
    """Whether an orphan volume is still an orphan, on the objects read again just now.

    ``reads`` has ``volume`` (the volume now, or None) and ``pvs:<cluster>`` for every
    configured cluster. Returns None to act, or why not.
    """
    action = finding.action
    if action is not None and action.name in ("quarantine-extra-pvc", "delete-extra-pvc"):
        return _verify_claim(finding, reads)
    if action is None or action.name not in ("quarantine", "delete-orphan-volume"):
        return None
    vid = str(action.params["volume_id"])
    volume = reads.get("volume")
    if volume is None:
        return f"volume {vid} no longer exists"
    name = str(volume.get("name"))
    names: set[str] = set()
    for key, pvs in sorted(reads.items()):
        if not key.startswith("pvs:"):
            continue
        for pv in pvs:
            pv_name = str((pv.get("metadata") or {}).get("name"))
            names.add(pv_name)
            if pv_volume_id(pv) == vid or pv_name == name:
                return f"PV {pv_name} of cluster {key[4:]} now references volume {vid}"
    clusters = tuple(finding.evidence.get("clusters") or ())
    foreign = _foreign(volume, clusters, names)
    if foreign is not None:
        return f"volume {vid} {foreign}"
    if volume.get("status") != "available" or volume.get("attachments"):
        return f"volume {vid} is {volume.get('status')} and attached now"
    return None


def _foreign(volume: dict[str, Any], clusters: tuple[str, ...],
             referenced_names: set[str]) -> str | None:
    """Why a volume belongs to a cluster watchdogd does not know, or None if nothing says so."""
    metadata = volume.get("metadata") or {}
    if not isinstance(metadata, dict):
        return None
    cluster = metadata.get(CSI_CLUSTER_KEY)
    if cluster is not None and str(cluster) not in clusters:
        return f"belongs to cluster {str(cluster)[:128]!r} ({CSI_CLUSTER_KEY}), not configured"
    if cluster is not None:
        return None  # a configured cluster's volume whose PV is gone: a real orphan
    pv_name, pvc_name = metadata.get(CSI_PV_KEY), metadata.get(CSI_PVC_KEY)
    if (pv_name or pvc_name) and str(pv_name) not in referenced_names:
        return (f"was made for PV {str(pv_name)[:128]!r} / claim {str(pvc_name)[:128]!r}, "
                "which no configured cluster has, and names no configured cluster")
    return None


def _released(d: _Detector, cluster: str, pvs: list[dict[str, Any]],
              volumes: dict[str, dict[str, Any]]) -> int:
    phases = set(d.s.check.released_phases)
    for pv in pvs:
        phase = (pv.get("status") or {}).get("phase")
        if phase not in phases:
            continue
        name = str((pv.get("metadata") or {}).get("name"))
        spec = pv.get("spec") or {}
        claim = spec.get("claimRef") or {}
        vid = pv_volume_id(pv)
        volume = volumes.get(vid or "")
        evidence = {"cluster": cluster, "pv": name, "phase": phase,
                    "reclaim_policy": spec.get("persistentVolumeReclaimPolicy"),
                    "claim": f"{claim.get('namespace')}/{claim.get('name')}" if claim else None,
                    "volume_id": vid,
                    "volume": volume_summary(volume) if volume is not None else None,
                    "message": (pv.get("status") or {}).get("message")}
        d.finding("released-pv", f"{cluster}/{name}", Severity.WARNING,
                  f"PV {name} in cluster {cluster} is {phase}"
                  + (f" (its claim {evidence['claim']} is gone)" if claim else "")
                  + f"; reclaim policy {spec.get('persistentVolumeReclaimPolicy')}: delete it "
                    "(and its volume) or re-bind it by hand", evidence)
    return len(pvs)


def _extra_pvcs(d: _Detector, lookups: list[Need]) -> int:
    s = d.s.check
    patterns = [_pattern_regex(p) for p in s.extra_pvc_patterns]
    selector = _selector(s.extra_pvc_selector)
    users_by_place: dict[tuple[str, str], list[str]] = {}
    hubs_by_place: dict[tuple[str, str], list[str]] = {}
    for hub in d.s.hubs:
        if hub.layout != "kubespawner":
            continue
        db = d.snapshot[f"hub_db:{hub.name}"]
        users_by_place.setdefault((hub.cluster, hub.namespace), []).extend(db["users"])
        hubs_by_place.setdefault((hub.cluster, hub.namespace), []).append(hub.name)
    examined = 0
    for (cluster, namespace), users in sorted(users_by_place.items()):
        keys = _user_keys(users)
        claims = [c for c in d.snapshot[f"pvcs:{cluster}"]
                  if (c.get("metadata") or {}).get("namespace") == namespace]
        extra = []
        for claim in claims:
            metadata = claim.get("metadata") or {}
            labels = metadata.get("labels") or {}
            name = str(metadata.get("name"))
            matched = next((m for m in (p.match(name) for p in patterns) if m), None)
            labelled = bool(selector) and all(labels.get(k) == v for k, v in selector.items())
            if not matched and not labelled:
                continue
            annotated = (metadata.get("annotations") or {}).get(ANNOTATION_USER) or labels.get(
                ANNOTATION_USER)
            owner = annotated or (matched.group("username") if matched else None)
            if not owner:
                continue  # labelled, but whose? no verdict
            extra.append((claim, str(owner)))
        examined += len(extra)
        if extra and not users:
            raise ImplausibleData(
                f"hub(s) {', '.join(hubs_by_place[(cluster, namespace)])} list no users, yet "
                f"{len(extra)} extra claims exist in {cluster}/{namespace}: the hub database "
                "read cannot be trusted")
        for claim, owner in extra:
            if owner in keys or owner.lower() in keys:
                continue
            _orphan_claim(d, cluster, namespace, hubs_by_place[(cluster, namespace)], claim,
                          owner, lookups)
    return examined


def _orphan_claim(d: _Detector, cluster: str, namespace: str, hubs: list[str],
                  claim: dict[str, Any], owner: str, lookups: list[Need]) -> None:
    """One ``orphan-extra-pvc`` finding, with its next step when the actions are enabled:
    the quarantine mark (``quarantine-extra-pvc``), then, ``quarantine_days`` later on the
    API server's clock and on watchdogd's own sightings, with no pod mounting the claim,
    ``delete-extra-pvc`` (the PV switched to Retain first)."""
    s = d.s.check
    metadata = claim.get("metadata") or {}
    name, uid = str(metadata.get("name")), str(metadata.get("uid") or "")
    volume_name = (claim.get("spec") or {}).get("volumeName")
    since = d.seen_since(f"extra-pvc:{cluster}/{namespace}/{name}:{uid}")
    mark = (metadata.get("annotations") or {}).get(s.quarantine_key)
    evidence: dict[str, Any] = {
        "cluster": cluster, "namespace": namespace, "claim": name, "uid": uid, "user": owner,
        "hubs": hubs, "volume_name": volume_name,
        "phase": (claim.get("status") or {}).get("phase"),
        "created": metadata.get("creationTimestamp"), "orphaned_since": since.isoformat(),
        "quarantined_since": mark}
    text = (f"claim {namespace}/{name} in cluster {cluster} belongs to {owner!r}, who is no "
            f"longer a user of hub {', '.join(hubs)}"
            + (f" (volume {volume_name})" if volume_name else ""))
    subject = f"{cluster}/{namespace}/{name}"
    api_now = d.snapshot.server_now.get(f"pvcs:{cluster}")
    if not uid or metadata.get("deletionTimestamp"):
        d.finding("orphan-extra-pvc", subject, Severity.INFO,
                  text + ("; it is being deleted" if uid else ""), evidence)
        return
    claim_need = Need.bind("claim", call(Kube.claim, cluster, namespace=namespace, name=name))
    api_only = {ref.name: ref.api_only for ref in d.s.hubs}
    users_needs = tuple(hub_need(h, api_only.get(h, False)) for h in hubs)
    if not mark:
        if api_now is None:
            d.finding("orphan-extra-pvc", subject, Severity.INFO,
                      text + "; the API server sent no Date, so its clock is unknown: not "
                             "marked", evidence)
            return
        d.finding("orphan-extra-pvc", subject, Severity.INFO, text, evidence,
                  Action.bind("quarantine-extra-pvc", call(
                      Kube.mark_claim, cluster, namespace=namespace, name=name, uid=uid,
                      key=s.quarantine_key, value=api_now.strftime("%Y-%m-%dT%H:%M:%SZ")),
                      destructive=False, before={"claim": _claim_manifest(claim)},
                      verify=(claim_need, *users_needs),
                      about={"annotations": (claim.get("metadata") or {}).get("annotations")}))
        return
    marked = parse_time(str(mark))
    if marked is None:
        d.finding("orphan-extra-pvc", subject, Severity.INFO,
                  text + f"; its mark {str(mark)[:64]!r} is not a date: left alone", evidence)
        return
    # Two clocks, each compared only with itself: the API server's mark against the API
    # server's now, watchdogd's first sighting against watchdogd's now.
    period = timedelta(days=s.quarantine_days)
    api_ready, own_ready = marked + period, since + period
    evidence.update(api_now=api_now.isoformat() if api_now else None,
                    api_ready=api_ready.isoformat(), own_ready=own_ready.isoformat())
    if api_now is None or api_now < api_ready or d.now < own_ready:
        d.finding("orphan-extra-pvc", subject, Severity.INFO,
                  text + f"; marked since {marked:%Y-%m-%d}, deletable once the API server's "
                         f"clock reaches {api_ready:%Y-%m-%d %H:%M} and watchdogd's reaches "
                         f"{own_ready:%Y-%m-%d %H:%M}", evidence)
        return
    pods_key = f"pods:{cluster}/{namespace}"
    if pods_key not in d.snapshot.observations:
        lookups.append(Need.bind(pods_key, call(Kube.pods, cluster, namespace=namespace)))
        return
    holders = sorted(str((p.get("metadata") or {}).get("name"))
                     for p in d.snapshot[pods_key] if _mounts(p, name))
    pv = next((v for v in d.snapshot[f"pvs:{cluster}"]
               if (v.get("metadata") or {}).get("name") == volume_name), None)
    claim_ref = ((pv or {}).get("spec") or {}).get("claimRef") or {}
    why_not = (f"pod(s) {', '.join(holders)} mount it" if holders else
               "it is bound to no PV" if not volume_name or pv is None else
               f"PV {volume_name} is bound to another claim" if claim_ref.get("uid") != uid
               else None)
    if why_not is not None:
        evidence["pods"] = holders
        d.finding("orphan-extra-pvc", subject, Severity.INFO,
                  text + f"; quarantined since {marked:%Y-%m-%d}, not deleted: {why_not}",
                  evidence)
        return
    assert pv is not None and volume_name
    spec = pv.get("spec") or {}
    d.finding("orphan-extra-pvc", subject, Severity.INFO,
              text + f"; quarantined since {marked:%Y-%m-%d}: the claim is deleted, PV "
                     f"{volume_name} and its disk are kept (reclaim policy Retain)", evidence,
              Action.bind("delete-extra-pvc", call(
                  Kube.delete_extra_claim, cluster, namespace=namespace, name=name, uid=uid,
                  volume_name=str(volume_name), key=s.quarantine_key, value=str(mark)),
                  before={"claim": _claim_manifest(claim),
                          "pv": {"name": volume_name, "cluster": cluster,
                                 "reclaim_policy": spec.get("persistentVolumeReclaimPolicy"),
                                 "claim_ref": claim_ref}},
                  verify=(claim_need, *users_needs,
                          Need.bind("pods", call(Kube.pods, cluster, namespace=namespace)),
                          Need.bind("pv", call(Kube.volume, cluster, name=str(volume_name)))),
                  about={"annotations": (claim.get("metadata") or {}).get("annotations")}))


def _claim_manifest(claim: dict[str, Any]) -> dict[str, Any]:
    """What recreating a claim needs: identity, labels, annotations, spec (and its uid)."""
    metadata = claim.get("metadata") or {}
    return {"metadata": {k: metadata[k] for k in ("name", "namespace", "uid", "labels",
                                                  "annotations", "creationTimestamp")
                         if k in metadata},
            "spec": claim.get("spec") or {}}


def _verify_claim(finding: Finding, reads: dict[str, Any]) -> str | None:
    """Whether an orphaned extra claim is still one, on the objects read again just now."""
    action = finding.action
    assert action is not None
    params = action.params
    where = f"claim {params['namespace']}/{params['name']}"
    claim = reads.get("claim")
    if claim is None or (claim.get("metadata") or {}).get("uid") != params["uid"]:
        return f"{where} is gone or was replaced"
    users: list[str] = []
    for key, value in reads.items():
        if key.startswith("hub_db:"):
            users.extend(value.get("users") or [])
    if not users:
        return "the hub lists no users now: no verdict"
    owner = str(finding.evidence.get("user"))
    keys = _user_keys(users)
    if owner in keys or owner.lower() in keys:
        return f"{owner!r} is a user of the hub again"
    if action.name != "delete-extra-pvc":
        return None
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    if annotations.get(params["key"]) != params["value"]:
        return f"{where} is no longer marked {params['key']}={params['value']}"
    holders = [str(p["metadata"].get("name")) for p in reads.get("pods") or []
               if _mounts(p, str(params["name"]))]
    if holders:
        return f"{where} is mounted by pod(s) {', '.join(holders)}"
    pv = reads.get("pv")
    if pv is None or ((pv.get("spec") or {}).get("claimRef") or {}).get("uid") != params["uid"]:
        return f"PV {params['volume_name']} is gone or bound to another claim"
    return None


def _stuck_claims(d: _Detector) -> tuple[Need, ...]:
    """``pvc-stuck-terminating`` findings; first the pod lists of their namespaces to read.

    A claim counts once its ``deletionTimestamp`` is ``stuck_terminating_after`` old on the
    API server's clock (the ``Date`` of the claims list; watchdogd's clock only when the
    server sent none). The pods come from a complete list of the claim's namespace, read
    as a lookup only for namespaces that have such a claim.
    """
    lookups: list[Need] = []
    after = d.s.check.stuck_terminating_after
    for cluster in d.s.clusters:
        key = f"pvcs:{cluster}"
        clock = d.snapshot.server_now.get(key) or d.now
        for claim in d.snapshot[key]:
            metadata = claim.get("metadata") or {}
            deleted = parse_time(metadata.get("deletionTimestamp"))
            if deleted is None or PVC_PROTECTION not in (metadata.get("finalizers") or []):
                continue
            if clock - deleted < after:
                continue
            namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
            pods_key = f"pods:{cluster}/{namespace}"
            if pods_key not in d.snapshot.observations:
                if pods_key not in {n.key for n in lookups}:
                    lookups.append(Need.bind(pods_key, call(Kube.pods, cluster,
                                                            namespace=namespace)))
                continue
            holders = sorted(str((p.get("metadata") or {}).get("name"))
                             for p in d.snapshot[pods_key] if _mounts(p, name))
            minutes = int((clock - deleted).total_seconds() // 60)
            d.finding("pvc-stuck-terminating", f"{cluster}/{namespace}/{name}",
                      Severity.WARNING,
                      f"claim {namespace}/{name} in cluster {cluster} was deleted {minutes} "
                      f"min ago and is kept by {PVC_PROTECTION}: "
                      + (f"pod(s) {', '.join(holders)} still mount it" if holders else
                         "no pod mounts it now; the protection controller should release it"),
                      {"cluster": cluster, "namespace": namespace, "claim": name,
                       "deleted": metadata.get("deletionTimestamp"), "pods": holders,
                       "volume_name": (claim.get("spec") or {}).get("volumeName")})
    return tuple(lookups)


def _mounts(pod: dict[str, Any], claim: str) -> bool:
    """Whether ``pod`` uses the claim ``claim`` (of its own namespace) as a volume."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        source = volume.get("persistentVolumeClaim") if isinstance(volume, dict) else None
        if isinstance(source, dict) and source.get("claimName") == claim:
            return True
    return False


# -- the map of users' disks ---------------------------------------------------------------------


def disk_map(s: TargetSettings, snapshot: Snapshot, pvs: dict[str, list[dict[str, Any]]],
             volumes: dict[str, dict[str, Any]]) -> list[ClaimRecord]:
    """Every claim bound to a Cinder volume, through its PV: the map a restore is made from.

    Only ``Bound`` PVs with a claim reference and a Cinder volume (the cinder-csi handle or
    the in-tree ``cinder.volumeID``) are on it: a Released PV's claim is gone already. The
    claim gives the user's annotation, labels and requested size; without it (gone, or not
    the PV's) the user comes from a Nublado namespace or KubeSpawner's ``claim-{slug}``
    name, and the claim's side is what the PV says of it.
    """
    records = []
    secret_keys: dict[str, bool] = {}
    for cluster, items in sorted(pvs.items()):
        listed = snapshot.get(f"pvcs:{cluster}")
        claims = {((c.get("metadata") or {}).get("namespace"),
                   (c.get("metadata") or {}).get("name")): c for c in listed or ()}
        nublado = tuple(h.nublado_prefix for h in s.hubs
                        if h.cluster == cluster and h.layout == "nublado")
        for pv in items:
            record = _record(cluster, pv, claims, listed is not None, nublado, volumes,
                             secret_keys)
            if record is not None:
                records.append(record)
    records.sort(key=lambda r: (r.cluster, r.namespace, r.claim))
    return records


def _record(cluster: str, pv: dict[str, Any], claims: dict[tuple[Any, Any], dict[str, Any]],
            claims_listed: bool, nublado: tuple[str, ...],
            volumes: dict[str, dict[str, Any]], secret_keys: dict[str, bool]) -> ClaimRecord | None:
    # Called for every PV of every cluster each pass (21,000 in bench/volumes.py): plain
    # lookups, and the secret test of a key made once per distinct key (``secret_keys``).
    spec = pv.get("spec") or {}
    ref = spec.get("claimRef") or {}
    if (pv.get("status") or {}).get("phase") != "Bound" or not ref.get("name"):
        return None
    csi = spec.get("csi") or {}
    in_tree = spec.get("cinder") or {}
    if csi.get("driver") == CINDER_DRIVER and csi.get("volumeHandle"):
        volume_id, fs_type = str(csi["volumeHandle"]), csi.get("fsType")
    elif in_tree.get("volumeID"):
        volume_id, fs_type = str(in_tree["volumeID"]), in_tree.get("fsType")
    else:
        return None
    namespace, name = str(ref.get("namespace") or "default"), str(ref["name"])
    claim = claims.get((namespace, name)) if claims_listed else None
    if claim is not None:
        claim_uid = (claim.get("metadata") or {}).get("uid")
        if ref.get("uid") and claim_uid and ref["uid"] != claim_uid:
            claim = None  # a new claim of the same name, not the one this PV was bound to
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    claim_spec: dict[str, Any] = {}
    if claim is not None:
        metadata = claim.get("metadata") or {}
        labels = metadata.get("labels") or {}
        annotations = {str(k): str(v) for k, v in (metadata.get("annotations") or {}).items()
                       if str(k).startswith(HUB_ANNOTATION_PREFIX)
                       and not _secret(str(k), secret_keys)}
        claim_spec = claim.get("spec") or {}
    user, source = _claim_user(namespace, name, annotations, labels, nublado)
    capacity = (spec.get("capacity") or {}).get("storage")
    access = spec.get("accessModes") or []
    volume = volumes.get(volume_id)
    provisioner = ((pv.get("metadata") or {}).get("annotations") or {}).get(PROVISIONED_BY)
    # Only what is there, by reference where the API's own objects can be kept: the map of
    # 21,000 claims is held through the pass and written once (memory is part of the bound).
    manifest: dict[str, Any] = {"driver": CINDER_DRIVER, "access_modes": access,
                                "claim_listed": claim is not None}
    attributes = csi.get("volumeAttributes") or {}
    if attributes:
        # Attribute values are names, never secret values; masked anyway if a key says so.
        if any(_secret(str(k), secret_keys) for k in attributes):
            attributes = {str(k): MASK if v and _secret(str(k), secret_keys) else v
                          for k, v in attributes.items()}
        manifest["volume_attributes"] = attributes
    request = ((claim_spec.get("resources") or {}).get("requests") or {}).get("storage")
    for key, value in (
            ("storage_class", spec.get("storageClassName")),
            ("volume_mode", spec.get("volumeMode")), ("fs_type", fs_type),
            ("in_tree", not csi),
            ("csi_refs", _csi_refs(csi) if csi.keys() & CSI_SECRET_REFS else None),
            ("mount_options", spec.get("mountOptions")),
            ("node_affinity", spec.get("nodeAffinity")),
            ("pv_annotations", {PROVISIONED_BY: str(provisioner)} if provisioner else None),
            ("claim_labels", labels), ("claim_annotations", annotations),
            ("claim_request", request if request != capacity else None),
            ("claim_storage_class", claim_spec.get("storageClassName")),
            ("claim_access_modes", claim_spec.get("accessModes")
             if claim_spec.get("accessModes") != access else None),
            ("volume_gb", volume.get("size") if volume is not None else None)):
        if value:
            manifest[key] = value
    return ClaimRecord(cluster, namespace, name, str((pv.get("metadata") or {}).get("name")),
                       volume_id, user, source, str(capacity) if capacity else None,
                       spec.get("persistentVolumeReclaimPolicy"), manifest)


PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def _secret(key: str, seen: dict[str, bool]) -> bool:
    found = seen.get(key)
    if found is None:
        found = seen[key] = names_a_secret(key)
    return found


def _csi_refs(csi: dict[str, Any]) -> dict[str, Any]:
    """``nodeStageSecretRef`` as ``nodeStage``: the name of a Secret (not its content), kept
    under a key that does not read as a credential."""
    return {key.removesuffix("SecretRef"): {"name": (csi.get(key) or {}).get("name"),
                                            "namespace": (csi.get(key) or {}).get("namespace")}
            for key in CSI_SECRET_REFS if isinstance(csi.get(key), dict)}


#: the CSI secret references a PV may carry (names of Secrets, not their contents)
CSI_SECRET_REFS = frozenset({"nodeStageSecretRef", "nodePublishSecretRef",
                             "controllerPublishSecretRef", "controllerExpandSecretRef"})


def _claim_user(namespace: str, name: str, annotations: dict[str, str],
                labels: dict[str, str], nublado: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Whose claim: KubeSpawner's annotation (the raw name), its label (a slug), a Nublado
    namespace, or the slug in KubeSpawner's ``claim-{slug}`` name, in that order."""
    if annotations.get(ANNOTATION_USER):
        return annotations[ANNOTATION_USER], "annotation"
    if labels.get(ANNOTATION_USER):
        return str(labels[ANNOTATION_USER]), "label"
    for prefix in nublado:
        if namespace.startswith(prefix) and len(namespace) > len(prefix):
            return namespace[len(prefix):], "namespace"
    if name.startswith(CLAIM_PREFIX) and len(name) > len(CLAIM_PREFIX):
        return name[len(CLAIM_PREFIX):], "claim-name"
    return None, None
