"""Project quotas, per cloud: see a Cinder or Nova limit coming before a create fails on it.

=================== =====================================================================
kind                when
=================== =====================================================================
``quota-near``      a quota's usage reached ``near_fraction`` of its limit (warning)
``quota-exhausted`` usage is at (or over) the limit: the next create fails, Cinder with
                    a 413 ``VolumeLimitExceeded``, Nova with a 403 (critical)
=================== =====================================================================

Subjects are ``volume/volumes``, ``volume/gigabytes``, ``volume/snapshots`` (Cinder) and
``compute/instances``, ``compute/cores``, ``compute/ram`` (Nova), of the project the cloud's
credentials are scoped to: what watchdogd's credentials see is the project the hub creates its
volumes and the autoscaler its nodes in. Both come from the services' ``GET /limits`` (absolute
limits beside their usage), which any member may read, for the token's project, with no
project id to know (a ``noauth`` Cinder has none). A limit of -1 is unlimited and never near;
a limit of 0 is a resource switched off on purpose and never reported either. Per-volume-type
quotas (``volumes_<type>``) are not in ``/limits`` and are not judged.

Each finding says the headroom left and what runs out first for the two things the quotas
gate: new user volumes (one volume and ``user_volume_gb`` GiB each: the smaller of the two
headrooms) and new nodes (one instance, and ``node_cores`` cores and ``node_ram_mb`` MiB when
set). Nothing is ever acted on: raising a quota is the cloud operator's call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ConfigDict, Field

from watchdogd.config import CheckConfig, Duration, Inventory
from watchdogd.model import CheckTarget, Detection, Finding, Need, Severity, Snapshot
from watchdogd.ports import OpenStack, call

NAME = "quotas"
KINDS = ("quota-near", "quota-exhausted")


@dataclass(frozen=True)
class Quota:
    """One quota as ``/limits`` names it, and what running out of it stops."""

    service: str  # volume | compute
    resource: str
    limit_key: str
    used_key: str
    unit: str
    stops: str


QUOTAS = (
    Quota("volume", "volumes", "maxTotalVolumes", "totalVolumesUsed", "volumes",
          "new user volumes (a new user's home claim, a new PVC) fail with 413"),
    Quota("volume", "gigabytes", "maxTotalVolumeGigabytes", "totalGigabytesUsed", "GiB",
          "new user volumes and volume extensions fail with 413"),
    Quota("volume", "snapshots", "maxTotalSnapshots", "totalSnapshotsUsed", "snapshots",
          "new snapshots (backups of user volumes) fail with 413"),
    Quota("compute", "instances", "maxTotalInstances", "totalInstancesUsed", "servers",
          "new nodes (a scale-up, a replacement) fail"),
    Quota("compute", "cores", "maxTotalCores", "totalCoresUsed", "cores",
          "new nodes fail once their flavor's cores do not fit"),
    Quota("compute", "ram", "maxTotalRAMSize", "totalRAMUsed", "MiB",
          "new nodes fail once their flavor's RAM does not fit"),
)


class Settings(CheckConfig):
    """``[checks.quotas]``.

    ``clouds``
        which ``[clouds.X]`` to watch; empty (the default) means all of them.
    ``near_fraction``
        usage at this fraction of a limit (0.9) is ``quota-near``.
    ``volume`` / ``compute``
        read Cinder's / Nova's limits (both on; off for a cloud without that service
        or credentials without access to it, which would otherwise fail the target).
    ``user_volume_gb``
        the size of a new user's volume (z2jh's default home claim is 10 GiB): how
        many more fit is the smaller of the volumes and the gigabytes headroom.
    ``node_cores`` / ``node_ram_mb``
        the flavor of a new node, to say how many more fit in the cores and RAM
        quotas; 0 (the default): counted by instances alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(minutes=15)
    clouds: list[str] = Field(default_factory=list)
    near_fraction: float = Field(0.9, gt=0, lt=1)
    volume: bool = True
    compute: bool = True
    user_volume_gb: int = Field(10, ge=1)
    node_cores: int = Field(0, ge=0)
    node_ram_mb: int = Field(0, ge=0)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one cloud."""

    cloud: str
    check: Settings


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per watched cloud: Cinder's and Nova's limits of its project."""
    result = []
    for cloud in check.clouds or list(inventory.clouds):
        needs = []
        if check.volume:
            needs.append(Need.bind("volume_limits", call(OpenStack.volume_limits, cloud)))
        if check.compute:
            needs.append(Need.bind("compute_limits", call(OpenStack.compute_limits, cloud)))
        if needs:
            result.append(CheckTarget(cloud, tuple(needs), TargetSettings(cloud, check)))
    return result


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Every quota at or near its limit, with the headroom and what runs out first."""
    s: TargetSettings = snapshot.settings
    limits: dict[str, dict[str, int]] = {}
    if s.check.volume:
        limits["volume"] = snapshot["volume_limits"]
    if s.check.compute:
        limits["compute"] = snapshot["compute_limits"]
    room = {service: _room(s.check, service, values) for service, values in limits.items()}
    findings: list[Finding] = []
    judged = 0
    for quota in QUOTAS:
        values = limits.get(quota.service)
        if values is None:
            continue
        limit, used = values[quota.limit_key], values[quota.used_key]
        if limit <= 0:
            continue  # -1 unlimited; 0 switched off on purpose
        judged += 1
        finding = _judge(s, quota, limit, used, room[quota.service])
        if finding is not None:
            findings.append(finding)
    return Detection(findings, judged)


def _room(check: Settings, service: str, values: dict[str, int]) -> dict[str, Any]:
    """How many more of the thing a service's quotas gate fit, and which quota stops it."""
    def left(limit_key: str, used_key: str, each: int) -> int | None:
        limit = values[limit_key]
        if limit < 0 or each <= 0:
            return None  # unlimited, or not counted
        return max(0, limit - values[used_key]) // each

    if service == "volume":
        thing = f"new user volumes ({check.user_volume_gb} GiB each)"
        counts = {"volumes": left("maxTotalVolumes", "totalVolumesUsed", 1),
                  "gigabytes": left("maxTotalVolumeGigabytes", "totalGigabytesUsed",
                                    check.user_volume_gb)}
    else:
        thing = "new nodes"
        counts = {"instances": left("maxTotalInstances", "totalInstancesUsed", 1),
                  "cores": left("maxTotalCores", "totalCoresUsed", check.node_cores),
                  "ram": left("maxTotalRAMSize", "totalRAMUsed", check.node_ram_mb)}
    known = {k: v for k, v in counts.items() if v is not None}
    if not known:
        return {"thing": thing, "room_for": None, "runs_out_first": None}
    first = min(known, key=lambda k: (known[k], k))
    return {"thing": thing, "room_for": known[first], "runs_out_first": first}


def _judge(s: TargetSettings, quota: Quota, limit: int, used: int,
           room: dict[str, Any]) -> Finding | None:
    fraction = used / limit
    if fraction < s.check.near_fraction:
        return None
    left = max(0, limit - used)
    exhausted = used >= limit
    evidence = {"service": quota.service, "resource": quota.resource, "limit": limit,
                "used": used, "left": left, "fraction": round(fraction, 3),
                "near_fraction": s.check.near_fraction, **room}
    state = (f"at its limit ({used} of {limit} {quota.unit})" if exhausted else
             f"at {100 * fraction:.0f}% ({used} of {limit} {quota.unit}, {left} left)")
    first = room.get("runs_out_first")
    outlook = ""
    if first is not None:
        fits = "none fits" if room["room_for"] == 0 else f"room for {room['room_for']}"
        outlook = f"; of {room['thing']}, {fits} ({first} runs out first)"
    message = (f"cloud {s.cloud}: the {quota.service} quota {quota.resource} of the project is "
               f"{state}: {'now' if exhausted else 'soon'} {quota.stops}{outlook}. Free what "
               "is unused or ask the cloud's operators for more "
               f"(`openstack quota show` lists them).")
    kind, severity = (("quota-exhausted", Severity.CRITICAL) if exhausted
                      else ("quota-near", Severity.WARNING))
    return Finding(NAME, s.cloud, kind, f"{quota.service}/{quota.resource}", severity, message,
                   evidence)
