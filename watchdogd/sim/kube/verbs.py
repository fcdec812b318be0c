"""The API verbs over the store: create, update, patch, delete, evict, with the real rules.

Each verb takes what the route parsed (resource type, namespace, name, subresource, body) and
answers what the real API server answers: admission (names, labels, namespace lifecycle),
optimistic concurrency on resourceVersion, finalizers, dry runs and no-op updates.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

from watchdogd.sim._http import Response, rfc3339, utcnow
from watchdogd.sim.kube.binder import after_write
from watchdogd.sim.kube.errors import ApiError, conflict, details, invalid, not_found
from watchdogd.sim.kube.patch import MERGE_PATCHES, patched
from watchdogd.sim.kube.resources import BY_KIND, Obj, ResourceType
from watchdogd.sim.kube.selectors import DNS_SUBDOMAIN, Query, valid_label_key
from watchdogd.sim.kube.store import Entry, Store, clone, dumps, object_key

__all__ = ["Verbs", "json_response", "now_rfc3339"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_MODIFIED = ("the object has been modified; please apply your changes to the latest version "
             "and try again")


def now_rfc3339() -> str:
    """Second-precision UTC timestamp, the format of every metadata time in the real API."""
    return rfc3339(utcnow())


def json_response(code: int, obj: Any) -> Response:
    """A compact JSON answer, as the API server writes them."""
    return Response(code, dumps(obj).encode())


class Verbs:
    """The writes and their rules; ``strict_namespaces`` makes a create in a missing namespace
    a 404 as on a real cluster."""

    def __init__(self, store: Store, *, strict_namespaces: bool = False) -> None:
        self.store = store
        self.strict_namespaces = strict_namespaces

    def check_identity(self, rt: ResourceType, body: Any, namespace: str | None,
                        name: str | None) -> Obj:
        """The checks the real decoder and handlers make on a request body."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was not a JSON object")
        if body.get("apiVersion") not in (None, rt.api_version) or \
                body.get("kind") not in (None, rt.kind):
            raise ApiError(400, f"the API version in the data ({body.get('apiVersion')}) does not "
                                f"match the expected API version ({rt.api_version})"
                           if body.get("kind") in (None, rt.kind) else
                           f"the kind in the data ({body.get('kind')}) does not match the "
                           f"expected kind ({rt.kind})")
        obj = {k: v for k, v in body.items() if k not in ("kind", "apiVersion")}
        meta = dict(obj.get("metadata") or {})
        obj["metadata"] = meta
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "the namespace of the provided object does not match the "
                                    "namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") not in (None, name):
            raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match the "
                                f"name on the URL ({name})")
        if name is not None:
            meta["name"] = name
        return obj

    def validate(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: list[tuple[str, str]] = []
        pattern = _DNS_LABEL if rt.kind == "Namespace" else DNS_SUBDOMAIN
        if not pattern.match(name) or len(name) > (63 if rt.kind == "Namespace" else 253):
            causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                           "subdomain must consist of lower case alphanumeric characters, '-' "
                           "or '.', and must start and end with an alphanumeric character"))
        for key, value in (meta.get("labels") or {}).items():
            if not valid_label_key(str(key)):
                causes.append(("metadata.labels", f'Invalid value: "{key}": name part must '
                               "consist of alphanumeric characters, '-', '_' or '.'"))
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(("metadata.labels", f'Invalid value: "{value}": a valid label must '
                               "be an empty string or consist of alphanumeric characters, '-', "
                               "'_' or '.', and must start and end with an alphanumeric "
                               "character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                               "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
                               "[A-Za-z0-9])?')"))
        if causes:
            raise invalid(rt, name, causes)

    def namespace_admits(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        """NamespaceLifecycle admission: no new content in a terminating namespace."""
        if not rt.namespaced or namespace is None:
            return
        ns = self.store.buckets[BY_KIND["Namespace"]].get(namespace)
        if ns is None:
            if self.strict_namespaces:
                raise ApiError(404, f'namespaces "{namespace}" not found',
                               details={"name": namespace, "kind": "namespaces"})
            return
        if ns.meta.get("deletionTimestamp"):
            raise ApiError(403, f'{rt.qualified} "{name}" is forbidden: unable to create new '
                                f"content in namespace {namespace} because it is being "
                                "terminated", details=details(rt, name))

    def create(self, rt: ResourceType, namespace: str | None, body: Any,
                dry: bool) -> Response:
        obj = self.check_identity(rt, body, namespace, None)
        meta = obj["metadata"]
        store = self.store
        with store.lock:
            if not meta.get("name"):
                if meta.get("generateName"):
                    bucket = store.buckets[rt]
                    while True:
                        meta["name"] = meta["generateName"] + "".join(
                            random.choice(_GENERATE_CHARS) for _ in range(5))
                        if object_key(namespace or "", meta["name"]) not in bucket:
                            break
                else:
                    raise invalid(rt, "", [("metadata.name", "Required value: name or "
                                             "generateName is required")])
            self.validate(rt, obj)
            self.namespace_admits(rt, namespace, meta["name"])
            key = object_key(namespace or "", meta["name"])
            if key in store.buckets[rt]:
                raise ApiError(409, f'{rt.qualified} "{meta["name"]}" already exists',
                               reason="AlreadyExists", details=details(rt, meta["name"]))
            for drop in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(drop, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if "spec" in obj:
                meta["generation"] = 1
            if rt.initial_status is not None:
                obj["status"] = clone(rt.initial_status)
            if dry:
                meta["resourceVersion"] = str(store.rv)
                return Response(201, Entry(rt, obj).full_json.encode())
            meta["resourceVersion"] = str(store.next_rv())
            entry = Entry(rt, obj)
            store.commit(rt, key, entry)
            after_write(store, entry)
        return Response(201, entry.full_json.encode())

    def update(self, rt: ResourceType, ns: str, name: str, sub: str | None, body: Any,
                dry: bool) -> Response:
        obj = self.check_identity(rt, body, ns or None, name)
        with self.store.lock:
            old = self.store.buckets[rt].get(object_key(ns, name))
            if old is None:
                raise not_found(rt, name)
            return self.apply_update(rt, old, obj, sub, dry)

    def patch(self, ctype: str, rt: ResourceType, ns: str, name: str, sub: str | None,
              patch: Any, dry: bool) -> Response:
        with self.store.lock:
            old = self.store.buckets[rt].get(object_key(ns, name))
            if old is None:
                raise not_found(rt, name)
            if ctype in MERGE_PATCHES and isinstance(patch, dict):
                wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
                if wanted_rv is not None and wanted_rv != old.meta.get("resourceVersion"):
                    raise conflict(rt, name, _MODIFIED)
            new = patched(ctype, old.full(), patch)
            obj = self.check_identity(rt, new, ns or None, name)
            obj["metadata"]["resourceVersion"] = old.meta.get("resourceVersion")
            return self.apply_update(rt, old, obj, sub, dry)

    def apply_update(self, rt: ResourceType, old: Entry, obj: Obj, sub: str | None,
                      dry: bool) -> Response:
        """The update rules shared by PUT and PATCH (store lock held)."""
        name = old.meta["name"]
        sent_rv = obj["metadata"].get("resourceVersion")
        if sent_rv not in (None, "") and sent_rv != old.meta.get("resourceVersion"):
            raise conflict(rt, name, "the object has been modified; please apply your changes "
                                      "to the latest version and try again")
        prev = old.full()
        del prev["kind"], prev["apiVersion"]
        if sub == "status":
            new = {**prev, "status": obj.get("status")}
        elif sub == "finalize":
            new = {**prev, "spec": {**(prev.get("spec") or {}),
                                    "finalizers": (obj.get("spec") or {}).get("finalizers")}}
        else:
            self.validate(rt, obj)
            new = obj
            if rt.has_status:
                new["status"] = prev.get("status")
            if rt.kind == "Namespace":
                new["spec"] = {**(new.get("spec") or {}),
                               "finalizers": (prev.get("spec") or {}).get("finalizers")}
        new = {k: v for k, v in new.items() if v is not None}
        if isinstance(new.get("spec"), dict):
            new["spec"] = {k: v for k, v in new["spec"].items() if v is not None}
        meta = dict(new.get("metadata") or {})
        for keep in ("uid", "creationTimestamp", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "generation", "namespace", "name"):
            if keep in prev["metadata"]:
                meta[keep] = prev["metadata"][keep]
            else:
                meta.pop(keep, None)
        if "generation" in meta and new.get("spec") != prev.get("spec"):
            meta["generation"] = int(meta["generation"]) + 1
        meta["resourceVersion"] = prev["metadata"].get("resourceVersion")
        new["metadata"] = meta
        if new == prev:  # the real server does not write (nor bump the version) on a no-op
            return Response(200, old.full_json.encode())
        store = self.store
        key = object_key(meta.get("namespace", ""), name)
        if dry:
            return Response(200, Entry(rt, new).full_json.encode())
        meta["resourceVersion"] = str(store.next_rv())
        entry = Entry(rt, new)
        store.commit(rt, key, entry)
        if meta.get("deletionTimestamp") and not self.store.finalizers(entry):
            self.store.remove(rt, key, entry)
        else:
            after_write(store, entry)
        return Response(200, entry.full_json.encode())

    def delete(self, rt: ResourceType, ns: str, name: str, options: Any, dry: bool) -> Response:
        if not isinstance(options, dict):
            raise ApiError(400, "DeleteOptions must be a JSON object")
        with self.store.lock:
            entry = self.store.buckets[rt].get(object_key(ns, name))
            if entry is None:
                raise not_found(rt, name)
            return self.delete_entry(rt, entry, options, dry)

    def delete_entry(self, rt: ResourceType, entry: Entry, options: Obj,
                      dry: bool) -> Response:
        """Delete one object (store lock held): finalizers make it linger, marked."""
        name = entry.meta["name"]
        pre = options.get("preconditions") or {}
        for field_name, meta_name in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = pre.get(field_name)
            if want is not None and want != entry.meta.get(field_name):
                raise conflict(rt, name, f"Precondition failed: {meta_name} in precondition: "
                                          f"{want}, {meta_name} in object meta: "
                                          f"{entry.meta.get(field_name)}")
        key = object_key(entry.meta.get("namespace", ""), name)
        store = self.store
        if self.store.finalizers(entry):
            if entry.meta.get("deletionTimestamp") or dry:
                return Response(200, entry.full_json.encode())
            marked = self.store.with_rv(entry, store.next_rv(), deletionTimestamp=now_rfc3339(),
                                   deletionGracePeriodSeconds=0)
            if rt.kind == "Namespace":
                marked.obj["status"] = {**(marked.obj.get("status") or {}),
                                        "phase": "Terminating"}
            store.commit(rt, key, marked)
            return Response(200, marked.full_json.encode())
        changes: Obj = {}
        if rt.kind == "Pod":
            grace = options.get("gracePeriodSeconds")
            changes = {"deletionTimestamp": now_rfc3339(),
                       "deletionGracePeriodSeconds": int(grace) if grace is not None else 30}
        if dry:
            final = self.store.with_rv(entry, store.rv, **changes)
        else:
            final = self.store.remove(rt, key, entry, **changes)
        if rt.returns_deleted:
            return Response(200, final.full_json.encode())
        gone = {**details(rt, name), "uid": entry.meta.get("uid")}
        return json_response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success", "details": gone})

    def delete_collection(self, rt: ResourceType, query: Query, options: Any,
                          dry: bool) -> Response:
        deleted: list[Entry] = []
        with self.store.lock:
            for entry in self.store.scope(rt, query.namespace):
                if query.matches(entry.obj):
                    self.delete_entry(rt, entry, options if isinstance(options, dict) else {},
                                       dry)
                    deleted.append(entry)
            rv = self.store.rv
        head = (f'{{"kind":"{rt.kind}List","apiVersion":{dumps(rt.api_version)},'
                f'"metadata":{{"resourceVersion":"{rv}"}},"items":[')
        return Response(200, (head + ",".join(e.item_json for e in deleted) + "]}").encode())

    def scale(self, verb: str, ctype: str, rt: ResourceType, ns: str, name: str, body: Any,
              dry: bool) -> Response:
        """The ``scale`` subresource: an ``autoscaling/v1`` Scale read from and written to
        the object's ``spec.replicas`` (the apps controllers do the rest, not simulated)."""
        with self.store.lock:
            old = self.store.buckets[rt].get(object_key(ns, name))
            if old is None:
                raise not_found(rt, name)
            current = _scale_of(old.full())
            if verb == "get":
                return json_response(200, current)
            if verb == "patch":
                if ctype in MERGE_PATCHES and isinstance(body, dict):
                    wanted = (body.get("metadata") or {}).get("resourceVersion")
                    if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                        raise conflict(rt, name, _MODIFIED)
                body = patched(ctype, current, body)
            if not isinstance(body, dict) or body.get("kind") not in (None, "Scale"):
                raise ApiError(400, "the body of the request was not a Scale object")
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if sent_rv not in (None, "") and sent_rv != current["metadata"]["resourceVersion"]:
                raise conflict(rt, name, _MODIFIED)
            replicas = (body.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise invalid(rt, name, [("spec.replicas",
                                          "must be greater than or equal to 0"
                                          if isinstance(replicas, int) else "must be an integer")])
            new = old.full()
            del new["kind"], new["apiVersion"]
            new["spec"] = {**(new.get("spec") or {}), "replicas": replicas}
            self.apply_update(rt, old, new, None, dry)
            updated = self.store.buckets[rt].get(object_key(ns, name))
            assert updated is not None
            return json_response(200, _scale_of(new if dry else updated.full()))

    def evict(self, rt: ResourceType, ns: str, name: str, dry: bool) -> Response:
        """policy/v1 Eviction: without PodDisruptionBudgets it is a delete."""
        with self.store.lock:
            entry = self.store.buckets[rt].get(object_key(ns, name))
            if entry is None:
                raise not_found(rt, name)
            self.delete_entry(rt, entry, {}, dry)
        return json_response(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success", "code": 201})


def _scale_of(obj: Obj) -> Obj:
    """The ``autoscaling/v1`` Scale of a Deployment, as the real scale subresource shows it."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    match = ((spec.get("selector") or {}).get("matchLabels") or {})
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        # the API defaults replicas to 1 when the Deployment does not say
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": ",".join(f"{k}={v}" for k, v in sorted(match.items()))},
    }
