"""Routing for the simulated API server: paths to resources, verbs, RBAC, discovery documents.

Everything here is a pure function of the request line and the resource table; the server
(:mod:`watchdogd.sim.kube.apiserver`) authenticates, then asks :func:`resolve` what a request
names and either answers with what it returns (the version, health and discovery documents, a
404) or runs the verb on its store.  The wording of 403/404/405 answers is the real server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from watchdogd.sim._http import Response
from watchdogd.sim.kube.errors import ApiError, details
from watchdogd.sim.kube.openapi import openapi_v3
from watchdogd.sim.kube.resources import BY_PATH, RESOURCES, Obj, ResourceType
from watchdogd.sim.kube.verbs import json_response

__all__ = ["PUBLIC_PATHS", "SIM_VERSION", "Identity", "Target", "discovery", "forbidden",
           "parse_path", "resolve"]

SIM_VERSION: Obj = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.4", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2025-04-22T00:00:00Z", "goVersion": "go1.23.6",
    "compiler": "gc", "platform": "linux/amd64",
}

#: answered without a token, as the real server's default RBAC allows for anonymous users
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})


@dataclass(frozen=True)
class Identity:
    """Who a bearer token is, and what RBAC lets it do."""

    user: str
    allow: frozenset[tuple[str, str]] | None  # None: everything (cluster-admin)

    def may(self, verb: str, rt: ResourceType, sub: str | None) -> bool:
        if self.allow is None:
            return True
        names = {rt.plural, rt.qualified, "*"}
        if sub:
            names = {f"{rt.plural}/{sub}", f"{rt.qualified}/{sub}", "*"}
        return any((v, r) in self.allow for v in (verb, "*") for r in names)


@dataclass(frozen=True)
class Target:
    """What an authorized resource request names: the verb and the object(s) it applies to."""

    verb: str
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None


def parse_path(path: str) -> tuple[ResourceType, str | None, str | None, str | None] | None:
    """Split a resource path into (type, namespace, name, subresource); None if unknown."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        gv, rest = "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    if rest and rest[0] == "watch":
        rest = rest[1:]
    namespace: str | None = None
    if (len(rest) >= 3 and rest[0] == "namespaces"
            and (gv, rest[2]) in BY_PATH and BY_PATH[(gv, rest[2])].namespaced):
        namespace, rest = rest[1], rest[2:]
    if not rest or not 1 <= len(rest) <= 3:
        return None
    rt = BY_PATH.get((gv, rest[0]))
    if rt is None or (rt.namespaced and namespace is None and len(rest) > 1):
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in rt.subresources:
        return None
    return rt, namespace, name, sub


def resolve(method: str, path: str, ident: Identity, port: int) -> Response | Target:
    """A non-watch request: the answer itself when no store is needed, else its :class:`Target`.

    Raises :class:`ApiError` for a method the resource does not allow (405) or one RBAC denies
    (403).  ``port`` is the server's, for the address ``/api`` advertises.
    """
    path = path.rstrip("/") or "/"
    if path in PUBLIC_PATHS:
        if path == "/version":
            return json_response(200, SIM_VERSION)
        return Response(200, b"ok", "text/plain; charset=utf-8")
    if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
        spec = openapi_v3(path)
        if spec is not None:
            return json_response(200, spec)
    if path in ("/api", "/apis") or path.startswith(("/api/", "/apis/")):
        document = discovery(path, port)
        if document is not None:
            return json_response(200, document)
    parsed = parse_path(path)
    if parsed is None:
        return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
    rt, namespace, name, sub = parsed
    verb = _verb(method, name, sub)
    if verb is None or (sub is None and verb not in rt.verbs):
        raise ApiError(405, "the server does not allow this method on the requested resource",
                       details=details(rt, name))
    if not ident.may(verb, rt, sub):
        raise forbidden(ident, verb, rt, namespace, name, sub)
    return Target(verb, rt, namespace, name, sub)


def _verb(method: str, name: str | None, sub: str | None) -> str | None:
    if name is None:
        return {"GET": "list", "POST": "create", "DELETE": "deletecollection"}.get(method)
    if sub == "eviction":
        return "create" if method == "POST" else None
    if sub == "finalize":
        return "update" if method == "PUT" else None
    verbs = {"GET": "get", "PUT": "update", "PATCH": "patch"}
    if sub is None:
        verbs["DELETE"] = "delete"
    return verbs.get(method)


def forbidden(ident: Identity, verb: str, rt: ResourceType, namespace: str | None,
              name: str | None, sub: str | None) -> ApiError:
    """The 403 RBAC answers, worded as the real authorizer words it."""
    what = f'{rt.qualified} "{name}"' if name else rt.qualified
    resource = f"{rt.plural}/{sub}" if sub else rt.plural
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return ApiError(
        403, f'{what} is forbidden: User "{ident.user}" cannot {verb} resource '
             f'"{resource}" in API group "{rt.group}" {where}',
        details=details(rt, name))


def discovery(path: str, port: int) -> Obj | None:
    """The legacy discovery documents; kubectl falls back to them when the response is not
    the aggregated (application/json;g=apidiscovery.k8s.io) form."""
    groups: dict[str, list[ResourceType]] = {}
    for rt in RESOURCES:
        groups.setdefault(rt.api_version, []).append(rt)
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}]}
    named = sorted(gv for gv in groups if "/" in gv)

    def group_doc(gv: str) -> Obj:
        g, v = gv.split("/")
        version = {"groupVersion": gv, "version": v}
        return {"name": g, "versions": [version], "preferredVersion": version}

    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [group_doc(gv) for gv in named]}
    parts = path.strip("/").split("/")
    if parts[0] == "apis" and len(parts) == 2:
        for gv in named:
            if gv.split("/")[0] == parts[1]:
                return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(gv)}
        return None
    gv = "v1" if parts == ["api", "v1"] else "/".join(parts[1:]) if len(parts) == 3 else ""
    if gv not in groups:
        return None
    resources: list[Obj] = []
    for rt in groups[gv]:
        doc: Obj = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                    "kind": rt.kind, "verbs": list(rt.verbs)}
        if rt.short_names:
            doc["shortNames"] = list(rt.short_names)
        if rt.categories:
            doc["categories"] = list(rt.categories)
        resources.append(doc)
        for sub in rt.subresources:
            sdoc: Obj = {"name": f"{rt.plural}/{sub}", "singularName": "",
                         "namespaced": rt.namespaced, "kind": rt.kind,
                         "verbs": ["get", "patch", "update"]}
            if sub == "eviction":
                sdoc.update(group="policy", version="v1", kind="Eviction", verbs=["create"])
            elif sub == "finalize":
                sdoc["verbs"] = ["update"]
            resources.append(sdoc)
    out: Obj = {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}
    if gv != "v1":
        out["apiVersion"] = "v1"
    return out
