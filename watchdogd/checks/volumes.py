"""Cinder volumes stuck in transitional states, dangling attachments, expiring credentials.

The Cinder runbook, automated with its safety rules written down:

* ``volume-stuck``: a volume in a transitional status (``reserved``, ``attaching``,
  ``detaching``, ``deleting``, ``error_deleting`` by default) for longer than ``stuck_after``.
  Two clocks must agree: Cinder's ``updated_at`` is at least ``stuck_after`` old *on Cinder's
  clock* (the ``Date`` of its list answer, never watchdogd's clock), *and* watchdogd has seen
  the volume in exactly that state (same status, same ``updated_at``) in an earlier pass.
  Without a ``Date`` from Cinder, watchdogd's own sightings must span ``stuck_after``.
  ``reserved`` is a normal transient state (every attach starts with it), so for it
  watchdogd's own observation must also span ``stuck_after``: neither a skewed Cinder clock
  nor a first look can make a young reservation look old.
* ``attachment-stale``: a ``reserved`` attachment beside an ``attached`` one (a re-attach to a
  node that died half way), or a lone reserved attachment older than
  ``attachment_stale_after``. Attachments have no timestamps in the API; the volume's
  ``updated_at`` is a lower bound of their age (a reservation updates the volume), and
  watchdogd's own first sighting is another.

The remediation ladder, one step per pass and volume:

1. ``delete-attachment`` for each dangling attachment (Cinder then recomputes the volume's
   status itself, which usually ends the stuck state);
2. only when no attachment other than attached ones is left, ``reset-volume-status`` to
   ``in-use`` (attached ones remain) or ``available`` (none). A reset only edits Cinder's
   database, so it is never planned while anything could still be in flight.

Both carry the volume as observed (status and ``updated_at``); the source re-reads the volume
right before acting and skips it if either moved.

Kubernetes ``FailedAttachVolume`` / ``FailedMount`` events name the PV; through the PV's CSI
volume handle they are tied to the Cinder volume, and through its claim to the hub user, so a
finding says whose lab is blocked (the user is read from the claim's name, KubeSpawner's
``claim-{username}``, or with ``read_claims`` from the claim's annotation, at the price of
listing every claim). A volume with such events, no stuck state of its own and not
``available`` is reported as ``volume-attach-failed`` (no action: it is usually attached to
another, dead node).

``credential-expiring`` warns about application credentials of the configured user
(``warn_days`` / ``critical_days``, as for certificates); ``credential-invalid`` is the only
verdict for a cloud whose credentials Keystone rejects when listing volumes or attachments.
Listing the credentials is a check of its own: when only it fails (Keystone refuses the
listing, the token names no user), that is ``credential-check-failed`` (a warning) and the
volume verdicts are made as usual; the credentials last seen expiring stay reported, with
their remembered expiry, rather than being announced as resolved. A cloud without Keystone
(clouds.yaml ``auth_type: none``) has no credentials to check: the source skips the listing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from watchdogd.checks.common import Detector
from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import (
    Action,
    CheckTarget,
    Detection,
    Need,
    Severity,
    Snapshot,
)
from watchdogd.ports import Kube, OpenStack, call
from watchdogd.times import parse_time

NAME = "volumes"
KINDS = ("volume-stuck", "attachment-stale", "volume-attach-failed", "credential-expiring",
         "credential-invalid", "credential-check-failed")

ANNOTATION_USER = "hub.jupyter.org/username"
EVENT_REASONS = ("FailedAttachVolume", "FailedMount")
_PV_IN_MESSAGE = re.compile(r'volume "([^"]+)"')


class Settings(CheckConfig):
    """``[checks.volumes]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=3)
    #: how long a volume may stay in a transitional status before it is stuck
    stuck_after: Duration = timedelta(minutes=5)
    stuck_statuses: list[str] = Field(default_factory=lambda: [
        "reserved", "attaching", "detaching", "deleting", "error_deleting"])
    #: how old a lone reserved attachment (none attached beside it) must be to be dangling
    attachment_stale_after: Duration = timedelta(minutes=30)
    #: read PVs, claims and attach events of the cloud's clusters to name the affected users
    correlate_events: bool = True
    event_window: Duration = timedelta(hours=1)
    #: events needed before a volume that is not stuck is reported as volume-attach-failed
    event_min_count: int = Field(3, ge=1)
    #: read every claim for the exact hub username (its ``hub.jupyter.org/username``
    #: annotation); otherwise the user is the claim's name without ``claim_prefix``
    #: (KubeSpawner's ``claim-{username}``, a slug), which saves listing all claims each pass
    read_claims: bool = False
    claim_prefix: str = "claim-"
    check_credentials: bool = True
    warn_days: int = Field(30, ge=0)
    critical_days: int = Field(7, ge=0)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one cloud."""

    cloud: str
    clusters: tuple[str, ...]
    check: Settings



# -- needs shared with the orphans check (equal needs are fetched once per pass) ---------------


def volumes_need(cloud: str) -> Need:
    """Every volume of the cloud, all projects."""
    return Need.bind("volumes", call(OpenStack.volumes, cloud))


def pvs_need(cluster: str) -> Need:
    """Every PersistentVolume of a cluster."""
    return Need.bind(f"pvs:{cluster}", call(Kube.list_objects, cluster, kind="PersistentVolume"))


def pvcs_need(cluster: str) -> Need:
    """Every PersistentVolumeClaim of a cluster."""
    return Need.bind(f"pvcs:{cluster}", call(Kube.list_objects, cluster,
                                             kind="PersistentVolumeClaim"))


def events_need(cluster: str, reason: str) -> Need:
    """The events of one reason in a cluster (a server-side field selector)."""
    return Need.bind(f"events:{cluster}:{reason}", call(Kube.list_objects, cluster, kind="Event",
                                                        field_selector=f"reason={reason}"))


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per cloud: its volumes, attachments, credentials and clusters' PVs/events."""
    result = []
    for name, cloud in inventory.clouds.items():
        needs = [volumes_need(name), Need.bind("attachments", call(OpenStack.attachments, name))]
        if check.check_credentials:
            needs.append(Need.bind("credentials", call(OpenStack.application_credentials, name)))
        if check.correlate_events:
            for cluster in cloud.clusters:
                needs.append(pvs_need(cluster))
                if check.read_claims:
                    needs.append(pvcs_need(cluster))
                needs += [events_need(cluster, reason) for reason in EVENT_REASONS]
        result.append(CheckTarget(name, tuple(needs),
                                  TargetSettings(name, tuple(cloud.clusters), check)))
    return result


# -- helpers shared with the orphans check --------------------------------------------------------


def pv_volume_id(pv: dict[str, Any]) -> str | None:
    """The Cinder volume behind a PV: the cinder-csi handle, or the in-tree ``cinder`` id."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi") or {}
    if csi.get("volumeHandle"):
        return str(csi["volumeHandle"])
    cinder = spec.get("cinder") or {}
    if cinder.get("volumeID"):
        return str(cinder["volumeID"])
    return None


def auth_error(snapshot: Snapshot, keys: Iterable[str]) -> str | None:
    """The first ``auth_error`` among the OpenStack observations, if any."""
    for key in keys:
        value = snapshot.get(key)
        if isinstance(value, dict) and value.get("auth_error"):
            return str(value["auth_error"])
    return None


def volume_summary(volume: dict[str, Any]) -> dict[str, Any]:
    """The fields of a volume an operator needs in a finding (and an audit before-image)."""
    return {k: volume.get(k) for k in (
        "id", "name", "status", "size", "created_at", "updated_at", "multiattach",
        "os-vol-tenant-attr:tenant_id", "os-vol-host-attr:host", "metadata")} | {
        "attachments": [{k: a.get(k) for k in ("attachment_id", "server_id", "host_name")}
                        for a in volume.get("attachments") or []]}


def cloud_now(snapshot: Snapshot) -> datetime | None:
    """The cloud's own "now" when the volumes were listed (its ``Date`` header), or None.

    ``updated_at`` and ``created_at`` are Cinder's clock: their age is only meaningful
    against Cinder's clock too. Comparing them with watchdogd's clock let a skew of days
    make a young volume look stuck or old.
    """
    volumes = snapshot.observations.get("volumes")
    if not isinstance(volumes, dict):
        return None
    return parse_time(volumes.get("cloud_now"))


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def _age_text(delta: timedelta) -> str:
    minutes = _minutes(delta)
    if minutes >= 2 * 60 * 24:
        return f"{minutes // (60 * 24)} days"
    if minutes >= 120:
        return f"{minutes // 60} hours"
    return f"{minutes} minutes"


# -- detection ---------------------------------------------------------------------------------


@dataclass
class _Affected:
    """Who is blocked by a volume, from Kubernetes events."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def users(self) -> list[str]:
        return sorted({str(e["user"]) for e in self.entries if e.get("user")})

    @property
    def count(self) -> int:
        return sum(int(e.get("count") or 1) for e in self.entries)

    def text(self) -> str:
        if not self.entries:
            return ""
        first = self.entries[0]
        who = ", ".join(self.users) or "unknown user"
        pods = sorted({f"{e['cluster']}:{e['namespace']}/{e['pod']}" for e in self.entries})
        return (f"; blocks {who} (pod {', '.join(pods)}: {first['reason']}, "
                f"{self.count} event(s))")


class _Detector(Detector):
    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        super().__init__(NAME, snapshot, now)
        self.s: TargetSettings = snapshot.settings
        #: whether Cinder honoured all_tenants (it silently ignores it for non-admins)
        listed = (snapshot.get("volumes") or {}).get("all_projects")
        self.scope = ("all projects" if listed is True else
                      "own project only (not admin)" if listed is False else "unknown")
        #: Cinder's clock (the list's ``Date``): ages of Cinder's timestamps are taken on it
        self.cloud_now = cloud_now(snapshot)


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Stuck volumes, dangling attachments and credentials of one cloud; plan the ladder."""
    d = _Detector(snapshot, now)
    # Only the lists the verdicts rest on: a refused credential listing alone says nothing
    # about them (it is credential-check-failed, below).
    problem = auth_error(snapshot, ("volumes", "attachments"))
    if problem is not None:
        d.finding("credential-invalid", d.s.cloud, Severity.CRITICAL,
                  f"cloud {d.s.cloud}: {problem}. No volume verdicts until this is fixed "
                  "(renew the application credential and its secret file)",
                  {"error": problem})
        # Keep what earlier passes observed: this pass judged nothing else.
        # Nothing else was judged: the open volume findings stay open, unresolved.
        return Detection(d.findings, 1, set(snapshot.marks), partial=True)

    volumes: list[dict[str, Any]] = snapshot["volumes"]["items"]
    attachments: list[dict[str, Any]] = snapshot["attachments"]["items"]
    by_id = {str(v["id"]): v for v in volumes}
    by_volume: dict[str, list[dict[str, Any]]] = {}
    for attachment in attachments:
        by_volume.setdefault(str(attachment.get("volume_id")), []).append(attachment)
    affected = _correlate(d, by_id) if d.s.check.correlate_events else {}

    judged: set[str] = set()
    stuck_statuses = set(d.s.check.stuck_statuses)
    for vid in sorted(set(by_volume) | {v for v, vol in by_id.items()
                                        if vol.get("status") in stuck_statuses}):
        volume = by_id.get(vid)
        if volume is None:
            continue  # an attachment of a volume created after the list: next pass
        if _judge(d, volume, by_volume.get(vid, []), affected.get(vid)):
            judged.add(vid)

    for vid, who in sorted(affected.items()):
        if vid in judged or who.count < d.s.check.event_min_count:
            continue
        volume = by_id[vid]
        if volume.get("status") == "available":
            continue  # nothing holds it any more: the controller's next retry attaches it
        atts = by_volume.get(vid, [])
        hosts = sorted({str(a.get("host_name")) for a in volume.get("attachments") or []
                        if a.get("host_name")})
        d.finding("volume-attach-failed", vid, Severity.WARNING,
                  f"volume {volume.get('name')} ({vid}) cannot be attached or mounted"
                  f"{who.text()}; Cinder says {volume.get('status')}"
                  + (f", attached on {', '.join(hosts)}" if hosts else "")
                  + ". If that node is gone, detach the volume there (nova) first",
                  {"volume": volume_summary(volume), "attachments": atts,
                   "affected": who.entries})

    if "credentials" in snapshot.observations:
        _judge_credentials(d, snapshot["credentials"])
    return Detection(d.findings, len(volumes), d.marks)


def _judge(d: _Detector, volume: dict[str, Any], atts: list[dict[str, Any]],
           who: _Affected | None) -> bool:
    """Findings for one volume; True when it got a stuck or stale finding."""
    s = d.s.check
    vid = str(volume["id"])
    status = str(volume.get("status"))
    updated_at = volume.get("updated_at")
    updated = parse_time(updated_at)
    if updated is None:
        return False  # no age, no verdict
    # Without Cinder's clock its timestamps' age is a guess: watchdogd's own sightings
    # then have to span every limit by themselves.
    cinder_age = (d.cloud_now or d.now) - updated
    own_clock_only = d.cloud_now is None
    attached = [a for a in atts if a.get("status") == "attached"]
    reserved = [a for a in atts if a.get("status") == "reserved"]
    others = [a for a in atts if a.get("status") not in ("attached", "reserved", "detached",
                                                          "deleted")]
    if status == "available" and (attached or reserved or others):
        return False  # the two lists were read a moment apart and disagree: next pass
    if status == "in-use" and not attached:
        return False
    if not reserved and status not in s.stuck_statuses:
        return False  # the common case: attached, nothing to judge

    who = who or _Affected()
    evidence_base = {"volume": volume_summary(volume), "attachments": atts,
                     "cinder_age_minutes": _minutes(cinder_age),
                     "listing_scope": d.scope}
    if who.entries:
        evidence_base["affected"] = who.entries
    severity = Severity.CRITICAL if who.users else Severity.WARNING

    dangling = []
    for attachment in reserved:
        since = d.seen_since(f"att:{attachment['id']}:reserved:{updated_at}")
        observed = d.now - since
        limit = s.stuck_after if attached else s.attachment_stale_after
        if cinder_age >= limit and observed >= limit:
            dangling.append(attachment)
            beside = (f"beside attached attachment {attached[0]['id']}" if attached
                      else "with nothing attached")
            d.finding(
                "attachment-stale", str(attachment["id"]), severity,
                f"reserved attachment {attachment['id']} of volume {volume.get('name')} "
                f"({vid}) {beside}, unchanged for at least {_age_text(min(cinder_age, observed))}"
                f" (instance {attachment.get('instance')}); nothing will complete it"
                + who.text(),
                {**evidence_base, "attachment": attachment,
                 "observed_since": since.isoformat()},
                Action.bind("delete-attachment", call(
                    OpenStack.delete_attachment, d.s.cloud, attachment_id=str(attachment["id"]),
                    volume_id=vid, observed_status="reserved", observed_volume_status=status,
                    observed_volume_updated_at=updated_at),
                    destructive=True,
                    before={"attachment": attachment, "volume": volume_summary(volume)},
                    about={"volume_metadata": volume.get("metadata")}))

    if status not in s.stuck_statuses:
        return bool(dangling)
    since = d.seen_since(f"vol:{vid}:{status}:{updated_at}")
    observed = d.now - since
    if cinder_age < s.stuck_after or observed <= timedelta(0):
        return bool(dangling)
    if (status == "reserved" or own_clock_only) and observed < s.stuck_after:
        return bool(dangling)  # never judge a young reservation
    message = (f"volume {volume.get('name')} ({vid}) has been {status} for "
               f"{_age_text(cinder_age)}" + who.text())
    evidence = {**evidence_base, "observed_since": since.isoformat()}
    action = None
    blocking = [a for a in atts if a.get("status") not in ("attached", "detached", "deleted")]
    if dangling:
        message += "; its dangling attachment is deleted first"
    elif blocking:
        states = ", ".join(sorted(f"{a['id']} {a.get('status')}" for a in blocking))
        message += (f"; not reset while attachment(s) {states} may still be in flight "
                    "(an operator must look if this persists)")
    else:
        target = "in-use" if attached else "available"
        message += f"; its status is reset to {target}"
        action = Action.bind("reset-volume-status", call(
            OpenStack.reset_volume_status, d.s.cloud, volume_id=vid, status=target,
            observed_status=status, observed_updated_at=updated_at),
            destructive=True, before={"volume": volume_summary(volume), "attachments": atts},
            about={"volume_metadata": volume.get("metadata")})
    d.finding("volume-stuck", vid, severity, message, evidence, action)
    return True


def _correlate(d: _Detector, by_id: dict[str, dict[str, Any]]) -> dict[str, _Affected]:
    """Map attach/mount failure events to Cinder volumes via PV name -> volume handle."""
    result: dict[str, _Affected] = {}
    window = d.s.check.event_window
    for cluster in d.s.clusters:
        pvs: list[dict[str, Any]] = d.snapshot[f"pvs:{cluster}"]
        pvcs: list[dict[str, Any]] = (d.snapshot[f"pvcs:{cluster}"] if d.s.check.read_claims
                                      else [])
        pv_by_name = {str((pv.get("metadata") or {}).get("name")): pv for pv in pvs}
        claims = {((c.get("metadata") or {}).get("namespace"),
                   (c.get("metadata") or {}).get("name")): c for c in pvcs}
        for reason in EVENT_REASONS:
            for event in d.snapshot[f"events:{cluster}:{reason}"]:
                last = _event_time(event)
                if last is None or d.now - last > window:
                    continue
                involved = event.get("involvedObject") or {}
                for name in _PV_IN_MESSAGE.findall(str(event.get("message") or "")):
                    pv = pv_by_name.get(name)
                    vid = pv_volume_id(pv) if pv is not None else (name if name in by_id
                                                                   else None)
                    if vid is None or vid not in by_id:
                        continue
                    claim_ref = ((pv or {}).get("spec") or {}).get("claimRef") or {}
                    claim = claims.get((claim_ref.get("namespace"), claim_ref.get("name")))
                    user = (_claim_user(claim) if d.s.check.read_claims
                            else _slug_user(claim_ref.get("name"), d.s.check.claim_prefix))
                    result.setdefault(vid, _Affected()).entries.append({
                        "cluster": cluster, "namespace": involved.get("namespace"),
                        "pod": involved.get("name"), "user": user,
                        "pv": name, "pvc": claim_ref.get("name"), "reason": reason,
                        "count": _event_count(event), "last_seen": last.isoformat(),
                        "message": str(event.get("message") or "")[:300],
                    })
    return result


def _slug_user(claim_name: Any, prefix: str) -> str | None:
    """The username slug in a KubeSpawner claim name (``claim-alice`` -> ``alice``)."""
    if isinstance(claim_name, str) and prefix and claim_name.startswith(prefix):
        return claim_name[len(prefix):] or None
    return None


def _claim_user(claim: dict[str, Any] | None) -> str | None:
    if claim is None:
        return None
    metadata = claim.get("metadata") or {}
    for source in (metadata.get("annotations") or {}, metadata.get("labels") or {}):
        user = source.get(ANNOTATION_USER)
        if isinstance(user, str) and user:
            return user
    return None


def _event_time(event: dict[str, Any]) -> datetime | None:
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"),
                  event.get("eventTime"), event.get("firstTimestamp"),
                  (event.get("metadata") or {}).get("creationTimestamp")):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    return None


def _event_count(event: dict[str, Any]) -> int:
    series = event.get("series") or {}
    for value in (series.get("count"), event.get("count")):
        if isinstance(value, int) and value > 0:
            return value
    return 1


#: marks that remember a credential seen expiring: ``credexp:`` + JSON of its fields
_CRED_MARK = "credexp:"
#: the marks column's width; a longer mark is not kept (the finding then may resolve)
_MARK_MAX = 1024


def _judge_credentials(d: _Detector, data: dict[str, Any]) -> None:
    if data.get("skipped"):
        return  # no Keystone (auth_type none): nothing to expire
    failure = data.get("check_error") or data.get("auth_error")
    if failure:
        _credential_check_failed(d, str(failure))
        return
    for cred in data.get("items") or []:
        _judge_credential(d, cred, in_use=cred.get("id") == data.get("in_use"))


def _credential_check_failed(d: _Detector, failure: str) -> None:
    d.finding("credential-check-failed", d.s.cloud, Severity.WARNING,
              f"cloud {d.s.cloud}: cannot check the application credentials' expiry: "
              f"{failure}. Volume verdicts are not affected; grant the user the listing of "
              "its own application credentials, or set checks.volumes.check_credentials = "
              "false", {"error": failure})
    # What was seen expiring before is still expiring: keep reporting it from memory.
    for mark in sorted(d.snapshot.marks):
        if not mark.startswith(_CRED_MARK):
            continue
        try:
            cred = json.loads(mark.removeprefix(_CRED_MARK))
        except ValueError:
            continue
        if isinstance(cred, dict):
            _judge_credential(d, cred, in_use=bool(cred.get("in_use")), remembered=True)


def _judge_credential(d: _Detector, cred: dict[str, Any], *, in_use: bool,
                      remembered: bool = False) -> None:
    s = d.s.check
    expires = parse_time(cred.get("expires_at"))
    if expires is None:
        return  # never expires
    left = expires - d.now
    days = left.total_seconds() / 86400
    if days > s.warn_days:
        return
    severity = Severity.CRITICAL if days <= s.critical_days else Severity.WARNING
    name = str(cred.get("name") or cred.get("id"))
    what = "the credential watchdogd itself uses" if in_use else "application credential"
    when = (f"expired {_age_text(-left)} ago" if days < 0
            else f"expires in {int(days)} day(s) ({expires:%Y-%m-%d %H:%M} UTC)")
    d.finding("credential-expiring", name, severity,
              f"cloud {d.s.cloud}: {what} {name!r} {when}; create a new one and replace "
              "its secret wherever it is used"
              + (" (as last listed: the listing fails now)" if remembered else ""),
              {"id": cred.get("id"), "name": name, "expires_at": cred.get("expires_at"),
               "days_left": round(days, 1), "in_use": in_use,
               "project_id": cred.get("project_id")})
    mark = _CRED_MARK + json.dumps(
        {"id": cred.get("id"), "name": cred.get("name"), "expires_at": cred.get("expires_at"),
         "in_use": in_use, "project_id": cred.get("project_id")},
        sort_keys=True, ensure_ascii=False, default=str)
    if len(mark) <= _MARK_MAX:
        d.marks.add(mark)
