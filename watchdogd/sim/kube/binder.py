"""The PV controller's binding of a claim and a PV that name each other, as the real one does.

A claim whose ``spec.volumeName`` names a PV, and a PV that is free or pre-bound to that
claim by ``spec.claimRef`` (namespace and name; a uid, when given, must be the claim's), are
bound: the PV's ``claimRef`` gets the claim's uid and the PV becomes ``Bound``, the claim gets
``pv.kubernetes.io/bind-completed``, phase ``Bound``, the PV's capacity and access modes. As
in Kubernetes, nothing binds when the storage classes differ, the claim asks for an access
mode the PV lacks or for more than its capacity, or the PV's ``claimRef`` names another claim
or an older claim of the same name (that PV is ``Released``). A PV written through the API
that nothing binds is ``Available`` (``Released`` when its ``claimRef`` has the uid of a
claim that is gone), unless it has a phase past that. Claims without ``volumeName``
(dynamic provisioning) are left to the world.

Runs synchronously after each API write of a PV or a claim, under the store's lock; the real
controller is asynchronous, so clients poll for the phase, which works against both.
"""

from __future__ import annotations

import re

from watchdogd.sim.kube.resources import BY_KIND, Obj
from watchdogd.sim.kube.store import Entry, Store, clone, object_key

__all__ = ["after_write"]

_QUANTITY = re.compile(r"^([0-9.]+)([KMGTPE]i?|[mk])?$")
_FACTORS = {None: 1, "m": 0.001, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
            "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
            "Ei": 2**60}


def _bytes(quantity: object) -> float | None:
    match = _QUANTITY.match(str(quantity or ""))
    if not match:
        return None
    return float(match.group(1)) * _FACTORS[match.group(2)]


def after_write(store: Store, entry: Entry) -> None:
    """What the PV controller does after a PV or claim was written (store lock held)."""
    kind = entry.rt.kind
    if kind == "PersistentVolumeClaim":
        name = (entry.obj.get("spec") or {}).get("volumeName")
        pv = store.buckets[BY_KIND["PersistentVolume"]].get(str(name)) if name else None
        if pv is not None:
            _bind(store, entry, pv)
    elif kind == "PersistentVolume":
        ref = (entry.obj.get("spec") or {}).get("claimRef") or {}
        claims = store.buckets[BY_KIND["PersistentVolumeClaim"]]
        claim = claims.get(object_key(str(ref.get("namespace") or ""), str(ref.get("name"))))
        if not (ref.get("name") and claim is not None and _bind(store, claim, entry)):
            # A claimRef with a uid names one claim for ever: without it, Released.
            _settle(store, entry, "Released" if ref.get("uid") else "Available")


def _bind(store: Store, claim: Entry, pv: Entry) -> bool:
    """Bind the pair if the real controller would; True when they are (or were) bound."""
    claim_spec: Obj = claim.obj.get("spec") or {}
    pv_spec: Obj = pv.obj.get("spec") or {}
    ref: Obj = pv_spec.get("claimRef") or {}
    meta = claim.meta
    if claim_spec.get("volumeName") != pv.meta.get("name"):
        return False
    if ref and (ref.get("namespace"), ref.get("name")) != (meta.get("namespace"),
                                                           meta.get("name")):
        return False
    if ref.get("uid") and ref["uid"] != meta.get("uid"):
        return False  # the claim it was bound to is gone: Released, never bound again
    if (claim.obj.get("status") or {}).get("phase") == "Bound" and \
            (pv.obj.get("status") or {}).get("phase") == "Bound":
        return True
    if (claim_spec.get("storageClassName") or "") != (pv_spec.get("storageClassName") or ""):
        return False
    if not set(claim_spec.get("accessModes") or ()) <= set(pv_spec.get("accessModes") or ()):
        return False
    wanted = _bytes(((claim_spec.get("resources") or {}).get("requests") or {}).get("storage"))
    capacity = _bytes((pv_spec.get("capacity") or {}).get("storage"))
    if wanted is None or capacity is None or wanted > capacity:
        return False
    new_pv = clone(pv.obj)
    new_pv["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                                  "namespace": meta.get("namespace"), "name": meta.get("name"),
                                  "uid": meta.get("uid"),
                                  "resourceVersion": meta.get("resourceVersion")}
    new_pv["status"] = {"phase": "Bound"}
    _commit(store, pv, new_pv)
    new_claim = clone(claim.obj)
    annotations = new_claim["metadata"].setdefault("annotations", {})
    annotations["pv.kubernetes.io/bind-completed"] = "yes"
    new_claim["status"] = {"phase": "Bound", "accessModes": list(pv_spec.get("accessModes") or []),
                           "capacity": dict(pv_spec.get("capacity") or {})}
    _commit(store, claim, new_claim)
    return True


def _settle(store: Store, pv: Entry, phase: str) -> None:
    """The first phase of a PV nothing binds (one that has a phase already keeps it)."""
    if (pv.obj.get("status") or {}).get("phase") in (None, "Pending"):
        new = clone(pv.obj)
        new["status"] = {"phase": phase}
        _commit(store, pv, new)


def _commit(store: Store, old: Entry, obj: Obj) -> None:
    obj["metadata"]["resourceVersion"] = str(store.next_rv())
    key = object_key(str(old.meta.get("namespace") or ""), str(old.meta["name"]))
    store.commit(old.rt, key, Entry(old.rt, obj))
