"""The map of users' disks as people use it: its table, and the manifests that restore it.

The orphans check records, each pass, which claim is bound to which PV and Cinder volume
(:meth:`watchdogd.store.Store.record_disks`). After a tear-down and a reinstall, the PV and
PVC manifests printed here bind each volume to its claim again: the PV names the volume
(``csi.volumeHandle``) and is pre-bound to the claim (``claimRef`` without a uid, which a
new claim could never match), the claim names the PV (``volumeName``), and the PV's reclaim
policy is ``Retain`` whatever it was, so a second tear-down cannot delete the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import yaml

from watchdogd.config import parse_duration
from watchdogd.slugs import escape_slug, safe_slug
from watchdogd.text import table
from watchdogd.times import iso, parse_time

__all__ = ["for_user", "manifests", "map_table", "parse_at", "render_manifests"]

Row = Mapping[str, Any]

#: KubeSpawner's claim names and labels carry a slug of the username, not the name itself
_SLUGGED = ("label", "claim-name")


def parse_at(text: str, now: datetime) -> datetime:
    """``--at``: an ISO time (``2026-12-01T10:00:00Z``; UTC when no zone is given) or a
    time ago (``90m``, ``6h``, ``2d``). Raises ValueError naming what it expected."""
    when = parse_time(text.strip())
    if when is not None:
        return when
    try:
        ago = parse_duration(text)
    except ValueError:
        ago = None
    if isinstance(ago, timedelta):
        return now - ago
    raise ValueError(f"{text!r} is neither an ISO time (2026-12-01T10:00:00Z) nor a time ago "
                     "(90m, 6h, 2d)")


def for_user(rows: Iterable[Row], user: str) -> list[Row]:
    """The claims of ``user``: by the recorded name, or by its KubeSpawner slugs where only
    a slug was recorded (the claim's label or its ``claim-{slug}`` name)."""
    slugs = {safe_slug(user), escape_slug(user)}
    return [r for r in rows if r.get("user") == user
            or (r.get("user_source") in _SLUGGED and r.get("user") in slugs)]


def map_table(rows: Sequence[Row]) -> str:
    """The map as a text table, every cell escaped."""
    return table(
        ["USER", "NAMESPACE", "CLAIM", "PV", "VOLUME", "SIZE", "RECLAIM", "CLUSTER", "SINCE"],
        [[r.get("user") or "-", r["namespace"], r["claim"], r["pv"], r["volume_id"],
          r.get("size") or "-", r.get("reclaim_policy") or "-", r["cluster"],
          iso(r["valid_from"], timespec="seconds")] for r in rows])


def manifests(row: Row) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PV and the PVC that bind ``row``'s Cinder volume to its claim again."""
    m: Mapping[str, Any] = row.get("manifest") or {}
    csi: dict[str, Any] = {"driver": m.get("driver") or "cinder.csi.openstack.org",
                           "volumeHandle": row["volume_id"]}
    if m.get("fs_type"):
        csi["fsType"] = m["fs_type"]
    if m.get("volume_attributes"):
        csi["volumeAttributes"] = dict(m["volume_attributes"])
    for key, ref in sorted((m.get("csi_refs") or {}).items()):
        csi[f"{key}SecretRef"] = {k: v for k, v in ref.items() if v}
    access = list(m.get("access_modes") or ["ReadWriteOnce"])
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": row.get("size") or m.get("claim_request")},
        "accessModes": access,
        # Whatever the PV had: a restored disk must survive the next tear-down.
        "persistentVolumeReclaimPolicy": "Retain",
        # Pre-bound to the claim by name only: the old claim's uid would make it Released.
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "namespace": row["namespace"], "name": row["claim"]},
        "csi": csi,
    }
    if m.get("storage_class") is not None:
        pv_spec["storageClassName"] = m["storage_class"]
    if m.get("volume_mode"):
        pv_spec["volumeMode"] = m["volume_mode"]
    if m.get("mount_options"):
        pv_spec["mountOptions"] = list(m["mount_options"])
    if m.get("node_affinity"):
        pv_spec["nodeAffinity"] = m["node_affinity"]
    pv_meta: dict[str, Any] = {"name": row["pv"]}
    if m.get("pv_annotations"):
        pv_meta["annotations"] = dict(m["pv_annotations"])
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": pv_meta, "spec": pv_spec}

    claim_meta: dict[str, Any] = {"name": row["claim"], "namespace": row["namespace"]}
    if m.get("claim_labels"):
        claim_meta["labels"] = dict(m["claim_labels"])
    annotations = dict(m.get("claim_annotations") or {})
    if row.get("user") and row.get("user_source") in ("annotation", "namespace"):
        annotations.setdefault("hub.jupyter.org/username", row["user"])
    if annotations:
        claim_meta["annotations"] = annotations
    claim_spec: dict[str, Any] = {
        "accessModes": list(m.get("claim_access_modes") or access),
        "resources": {"requests": {"storage": m.get("claim_request") or row.get("size")}},
        # "" rather than nothing: a default StorageClass must not be put on the claim, or
        # it would no longer match a PV without a class.
        "storageClassName": m.get("claim_storage_class") or m.get("storage_class") or "",
        "volumeName": row["pv"],
    }
    if m.get("volume_mode"):
        claim_spec["volumeMode"] = m["volume_mode"]
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": claim_meta,
             "spec": claim_spec}
    return pv, claim


def render_manifests(rows: Sequence[Row], header: str) -> str:
    """YAML documents for ``kubectl apply -f -``: each claim's PV, then its PVC.

    ``yaml.safe_dump`` writes any control or non-ASCII character of an outside value as an
    escape in a quoted string: the terminal sees plain text, kubectl reads the exact value.
    """
    docs = []
    for row in rows:
        for obj in manifests(row):
            docs.append(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False,
                                       allow_unicode=False))
    return "".join(f"# {line}\n" for line in header.splitlines()) + "---\n" + \
        "---\n".join(docs)
