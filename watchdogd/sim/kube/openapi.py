"""The OpenAPI v3 documents of the simulated API server, as far as kubectl reads them.

``kubectl apply`` (and ``create``) validate strictly by default: kubectl reads
``/openapi/v3`` and the group-version's document to learn whether the server checks fields
itself (a ``fieldValidation`` query parameter on the kind's PATCH operation), and then sends
``fieldValidation=Strict`` instead of validating against the schema on its side. These
documents declare exactly that, with each operation's ``x-kubernetes-group-version-kind``, as
the real server's do; they carry no schemas. The simulator accepts the parameter and does not
check field names (a typo a real server refuses gets through here).
"""

from __future__ import annotations

import hashlib
import json

from watchdogd.sim.kube.resources import RESOURCES, Obj, ResourceType

__all__ = ["openapi_v3"]

_QUERY = ("dryRun", "fieldManager", "fieldValidation")


def _prefix(rt: ResourceType) -> str:
    return "api/v1" if rt.api_version == "v1" else f"apis/{rt.api_version}"


def _group_doc(gv_path: str) -> Obj:
    paths: Obj = {}
    for rt in RESOURCES:
        if _prefix(rt) != gv_path:
            continue
        group, _, version = rt.api_version.rpartition("/")
        gvk = {"group": group, "version": version, "kind": rt.kind}
        params = [{"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for name in _QUERY]
        base = f"/{gv_path}/" + ("namespaces/{namespace}/" if rt.namespaced else "")
        paths[f"{base}{rt.plural}"] = {"post": {
            "operationId": f"create{rt.kind}", "x-kubernetes-action": "post",
            "x-kubernetes-group-version-kind": gvk, "parameters": params}}
        paths[f"{base}{rt.plural}/{{name}}"] = {"patch": {
            "operationId": f"patch{rt.kind}", "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk, "parameters": params}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.4"},
            "paths": paths, "components": {"schemas": {}}}


def openapi_v3(path: str) -> Obj | None:
    """The document at ``path`` (``/openapi/v3``, ``/openapi/v3/api/v1``...), or None."""
    prefixes = sorted({_prefix(rt) for rt in RESOURCES})
    if path == "/openapi/v3":
        return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={_hash(p)}"}
                          for p in prefixes}}
    wanted = path.removeprefix("/openapi/v3/")
    return _group_doc(wanted) if wanted in prefixes else None


def _hash(prefix: str) -> str:
    body = json.dumps(_group_doc(prefix), sort_keys=True).encode()
    return hashlib.sha512(body).hexdigest()[:128].upper()
