"""The simulated Kubernetes API server: lifecycle, request dispatch, and the public test API.

No API server can run on the machines this project is built and tested on, yet watchdogd's
Kubernetes source must be exercised through the *official* ``kubernetes`` client and ``kubectl``
exactly as in production: pagination with ``limit``/``continue`` (and the 410 on an expired token
that a careless pager turns into a silently truncated pod list), label and field selectors,
delete and deletecollection, Leases with optimistic concurrency, watches, and the discovery
documents kubectl reads before it does anything.  This package answers those over real HTTP/1.1
on the shared simulator HTTP base, so tests, benchmarks and ``watchdogd demo`` can all use it.

Shapes follow the real API server (checked against the kubernetes 37 client's models and
kubectl 1.32): list items carry no ``kind``/``apiVersion``, errors are ``Status`` objects with the
real ``reason`` and message wording, continue tokens are opaque base64 JSON, a continued list is
served from the snapshot taken at its first page, watches are chunked newline-delimited JSON.

Known simplifications (each would need a controller or kubelet that the simulator does not have):
pods are removed at once when deleted (no graceful termination), deleting a namespace without
finalizers removes its content at once, there is no garbage collection by ownerReferences,
strategic-merge-patch is applied as a JSON merge patch, server-side apply is not supported,
and watches send no BOOKMARK events.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import random
import re
import ssl
import traceback
from collections.abc import Iterable
from typing import Any

from watchdogd.sim._http import Fault, HttpBase, Request, Response
from watchdogd.sim.kube.errors import ApiError, details, not_found
from watchdogd.sim.kube.resources import Obj, ResourceType, resource
from watchdogd.sim.kube.routes import PUBLIC_PATHS, Identity, forbidden, parse_path, resolve
from watchdogd.sim.kube.selectors import (
    FieldRequirement,
    Query,
    parse_field_selector,
    parse_label_selector,
)
from watchdogd.sim.kube.store import Entry, Gone, Store, WatchStream, clone, dumps, object_key
from watchdogd.sim.kube.tables import table
from watchdogd.sim.kube.tls import SIM_CA_PEM, server_context
from watchdogd.sim.kube.verbs import Verbs, json_response, now_rfc3339

__all__ = ["KubeSim"]

_FAULT_MESSAGES: dict[int, str] = {
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: simulated fault",
    503: "the server is currently unable to handle the request",
    504: "Timeout: request did not complete within the allotted timeout",
}


class KubeSim(HttpBase):
    """A Kubernetes API server in a thread: ``with KubeSim() as sim: ...``.

    Besides HTTP it offers direct, thread-safe store access (:meth:`put`, :meth:`get`,
    :meth:`delete`, :meth:`list`, :meth:`put_many`) for building worlds without API rules,
    fault injection (:meth:`fail`, :meth:`expire_continue_tokens`, :meth:`down`) and a log of
    every request (:attr:`requests`) so tests can assert what a client actually did.
    """

    def __init__(self, *, token: str = "sim-token", page_max: int = 500,  # noqa: S107
                 strict_namespaces: bool = False, cert_file: str | None = None,
                 key_file: str | None = None, ca_pem: str | None = None) -> None:
        """``strict_namespaces`` makes an HTTP create in a missing namespace a 404 as on a real
        cluster; it is off by default so worlds need not create every namespace first.

        ``cert_file``/``key_file`` replace the built-in serving certificate (e.g. an expiring
        one for certificate checks); ``ca_pem`` is then the CA that kubeconfigs should trust.
        """
        super().__init__()
        self.token = token
        self._cert_files = (cert_file, key_file) if cert_file else None
        self.ca_pem = ca_pem if ca_pem is not None else (SIM_CA_PEM if not cert_file else "")
        self._ssl_context: ssl.SSLContext | None = None
        self.page_max = page_max
        #: tracebacks of unexpected exceptions (answered as 500), to debug the simulator itself
        self.errors: builtins.list[str] = []
        self._store = Store()
        self._verbs = Verbs(self._store, strict_namespaces=strict_namespaces)
        self._tokens: dict[str, Identity] = {token: Identity("kubernetes-admin", None)}

    @property
    def strict_namespaces(self) -> bool:
        """Whether an HTTP create in a missing namespace is a 404 (as on a real cluster)."""
        return self._verbs.strict_namespaces

    @strict_namespaces.setter
    def strict_namespaces(self, value: bool) -> None:
        self._verbs.strict_namespaces = value

    # -- lifecycle -----------------------------------------------------------------------------

    kind = "kubesim"

    def server_tls(self) -> ssl.SSLContext:
        """http and https share the port (kubectl needs https to send a token)."""
        return self.ssl_context

    def on_down(self) -> None:
        """End every open watch with the server."""
        self._store.wake_watchers()

    def default_headers(self) -> builtins.list[tuple[str, str]]:
        """What the API server sends with every answer: Go's net/http adds ``Date`` (the
        simulator's clock; none with ``send_date = False``, a proxy that strips it)."""
        head = [("Cache-Control", "no-cache, private")]
        return head + [h for h in super().default_headers() if h[0] == "Date"]

    @property
    def url(self) -> str:
        """Plain-HTTP base URL; stable across :meth:`down`/:meth:`up`."""
        if not self._port:
            raise RuntimeError("KubeSim is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def https_url(self) -> str:
        """The same server over TLS (same port), as kubeconfigs written here use it."""
        return "https" + self.url[4:]

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The server-side TLS context (built once)."""
        if self._ssl_context is None:
            self._ssl_context = server_context(self._cert_files)
        return self._ssl_context

    def write_kubeconfig(self, path: str | os.PathLike[str], *, context: str = "sim",
                         namespace: str = "default", token: str | None = None,
                         tls: bool = True) -> str:
        """Write a token-auth kubeconfig (JSON, which is YAML) for the client and kubectl.

        By default it points at :attr:`https_url` and trusts the simulator's CA, because
        kubectl drops credentials for http servers; ``tls=False`` gives the plain URL (enough
        for the Python client, which sends the token either way).
        """
        cluster: Obj = {"server": self.url}
        if tls:
            cluster = {"server": self.https_url, "certificate-authority-data":
                       base64.b64encode(self.ca_pem.encode()).decode()}
            if not self.ca_pem:
                cluster = {"server": self.https_url, "insecure-skip-tls-verify": True}
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": token or self.token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                       "namespace": namespace}}],
            "current-context": context,
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        return os.fspath(path)

    def add_token(self, token: str, allow: set[tuple[str, str]] | None = None, *,
                  user: str = "system:serviceaccount:default:sim-limited") -> None:
        """Accept another bearer token; ``allow`` limits it to (verb, resource) pairs such as
        ``("list", "pods")`` (``*`` wildcards, ``pods/eviction`` for subresources) to simulate
        RBAC; anything else is a 403 with the real message."""
        self._tokens[token] = Identity(user, None if allow is None else frozenset(allow))

    # -- direct store access -----------------------------------------------------------------

    def resource(self, kind: str) -> ResourceType:
        """Resolve a kind (``Pod``), plural (``pods``) or short name (``po``)."""
        return resource(kind)

    def _prepare_put(self, obj: Obj, deep: bool) -> tuple[ResourceType, str, Obj]:
        kind = obj.get("kind")
        if not kind:
            raise ValueError("object has no kind")
        rt = self.resource(str(kind))
        if obj.get("apiVersion") not in (None, rt.api_version):
            raise ValueError(f"{kind} is served as {rt.api_version}, not {obj['apiVersion']}")
        body = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        if deep:
            body = clone(body)
        meta = dict(body.get("metadata") or {})
        body["metadata"] = meta
        if not meta.get("name"):
            raise ValueError(f"{kind} has no metadata.name")
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if rt.kind == "Namespace" and not (body.get("status") or {}).get("phase"):
            body["status"] = {**(body.get("status") or {}), "phase": "Active"}
        return rt, object_key(meta.get("namespace", ""), meta["name"]), body

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object without API rules (world setup); emits watch events.

        Fills metadata.uid (kept from the object it replaces), resourceVersion (always new),
        creationTimestamp (unless given) and namespace ``default`` for namespaced kinds;
        a Namespace without status.phase gets ``Active``.  Returns a copy of what is stored.
        """
        rt, key, body = self._prepare_put(obj, deep=True)
        with self._store.lock:
            return self._store.install(rt, key, body, now_rfc3339()).full()

    def put_many(self, objs: Iterable[dict[str, Any]]) -> None:
        """Bulk :meth:`put` for large worlds (20,000 pods in well under a second or two).

        Takes ownership of the nested structures of ``objs`` instead of deep-copying them, and
        serializes each object once now so the first list is as fast as later ones: do not
        mutate the passed objects afterwards.
        """
        prepared = [self._prepare_put(o, deep=False) for o in objs]
        now = now_rfc3339()
        with self._store.lock:
            for rt, key, body in prepared:
                self._store.install(rt, key, body, now, serialize=True)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """A copy of one object (with kind/apiVersion) or None; namespace defaults to
        ``default`` for namespaced kinds."""
        rt = self.resource(kind)
        ns = (namespace or "default") if rt.namespaced else ""
        with self._store.lock:
            entry = self._store.buckets[rt].get(object_key(ns, name))
        return entry.full() if entry else None

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Remove an object at once, ignoring finalizers and without cascading (world setup);
        emits DELETED.  True if it existed."""
        rt = self.resource(kind)
        ns = (namespace or "default") if rt.namespaced else ""
        key = object_key(ns, name)
        with self._store.lock:
            old = self._store.buckets[rt].get(key)
            if old is None:
                return False
            self._store.next_rv()
            self._store.commit(rt, key, None, deleted=self._store.with_rv(old, self._store.rv))
        return True

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Copies of all objects of a kind (one namespace or all), in the API's order."""
        rt = self.resource(kind)
        with self._store.lock:
            entries = self._store.scope(rt, namespace)
        return [e.full() for e in entries]

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion handed out (what a list right now would report)."""
        return str(self._store.rv)

    # -- faults and observation ------------------------------------------------------------

    def fail(self, path_regex: str, *, status: int | None = 500, times: int | None = None,
             hang: float | None = None, after: int = 0) -> None:
        """Make requests whose path (no query) matches ``path_regex`` (``re.search``) fail.

        Each of the next ``times`` matches (None: all) after the first ``after`` gets ``status``
        with a Status body; with ``hang`` the answer comes only after that many seconds (so a
        client's timeout fires first).  ``status=0`` closes the connection without an answer;
        ``status=None`` with ``hang`` is a slow API: the real answer, late.
        """
        self.add_fault(Fault(status or 0, times, hang, re.compile(path_regex), None, after=after,
                             late=status is None))

    def expire_continue_tokens(self) -> None:
        """Every continue token issued so far answers 410 Expired from now on."""
        with self._store.lock:
            self._store.tokens_valid_from = self._store.token_serial + 1
            self._store.snapshots.clear()

    def expire_continue_after(self, pages: int) -> None:
        """The next paginated list answers 410 on its ``pages``-th continue request (1 = the
        first continue), like an etcd compaction in the middle of a long list."""
        if pages < 1:
            raise ValueError("pages counts continue requests and starts at 1")
        with self._store.lock:
            self._store.expire_after_pending = pages

    # -- HTTP entry point ------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        """A fault is a Status with the real server's wording for that code."""
        message = _FAULT_MESSAGES.get(fault.status, f"simulated fault ({fault.status})")
        return json_response(fault.status, ApiError(fault.status, message).status())

    def handle(self, req: Request) -> Response:
        """Authenticate, then route (watches stream); errors are Status answers."""
        try:
            ident = self._authenticate(req)
            if self._is_watch(req) and req.method == "GET":
                return self._watch(req, ident)
            return self._route(req, ident)
        except ApiError as err:
            return json_response(err.code, err.status())
        except Exception:  # a simulator bug must still answer, as a 500
            self.errors.append(traceback.format_exc())
            bug = ApiError(500, "Internal error occurred: simulator bug (see KubeSim.errors)")
            return json_response(500, bug.status())

    def _authenticate(self, req: Request) -> Identity:
        auth = req.headers.get("Authorization")
        if auth is None and req.path in PUBLIC_PATHS:
            return Identity("system:anonymous", frozenset())
        scheme, _, token = (auth or "").partition(" ")
        ident = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if ident is None:
            raise ApiError(401, "Unauthorized")
        return ident

    @staticmethod
    def _is_watch(req: Request) -> bool:
        """``?watch=true`` or the old ``/api/v1/watch/...`` path form."""
        return req.params.get("watch") in ("true", "1") or bool(
            re.match(r"^/(api/v1|apis/[^/]+/[^/]+)/watch/", req.path))

    # -- dispatch ----------------------------------------------------------------------------

    def _route(self, req: Request, ident: Identity) -> Response:
        target = resolve(req.method, req.path, ident, self._port)
        if isinstance(target, Response):
            return target
        return self._handle(req, target.verb, target.rt, target.namespace, target.name,
                            target.sub)

    def _handle(self, req: Request, verb: str, rt: ResourceType, namespace: str | None,
                name: str | None, sub: str | None) -> Response:
        dry = "dryRun" in req.params
        if verb == "list":
            return self._list(req, rt, namespace)
        if verb == "deletecollection":
            return self._verbs.delete_collection(
                rt, self._query(req, rt, namespace),
                self._body(req) if req.body.strip() else {}, dry)
        body = self._body(req) if req.method in ("POST", "PUT", "PATCH") else None
        if verb == "create" and name is None:
            assert body is not None
            if rt.namespaced and namespace is None:
                raise ApiError(405, "the server does not allow this method on the requested "
                                    "resource", details=details(rt))
            return self._verbs.create(rt, namespace, body, dry)
        assert name is not None
        ns = namespace or ""
        if sub == "eviction":
            return self._verbs.evict(rt, ns, name, dry)
        if sub == "scale":
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip()
            return self._verbs.scale(verb, ctype, rt, ns, name, body, dry)
        if verb == "get":
            with self._store.lock:
                entry = self._store.buckets[rt].get(object_key(ns, name))
            if entry is None:
                raise not_found(rt, name)
            return self._object_response(req, rt, entry, 200)
        if verb == "delete":
            options = self._body(req) if req.body.strip() else {}
            for key in ("gracePeriodSeconds", "dryRun"):
                if key in req.params:
                    options.setdefault(key, req.params[key])
            return self._verbs.delete(rt, ns, name, options, dry or bool(options.get("dryRun")))
        assert body is not None
        if verb == "patch":
            ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip()
            return self._verbs.patch(ctype, rt, ns, name, sub, body, dry)
        return self._verbs.update(rt, ns, name, sub, body, dry)

    def _body(self, req: Request) -> Any:
        try:
            return json.loads(req.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}") from None

    def _object_response(self, req: Request, rt: ResourceType, entry: Entry,
                         code: int) -> Response:
        if "as=Table" in (req.headers.get("Accept") or ""):
            meta = {"resourceVersion": entry.meta.get("resourceVersion", "")}
            return json_response(code, table(rt, [entry], meta,
                                             req.params.get("includeObject", "Metadata")))
        return Response(code, entry.full_json.encode())

    # -- list, watch -------------------------------------------------------------------------

    def _query(self, req: Request, rt: ResourceType, namespace: str | None) -> Query:
        labels = parse_label_selector(req.params.get("labelSelector", ""))
        fields = parse_field_selector(req.params.get("fieldSelector", ""), rt)
        return Query(namespace if rt.namespaced else None, tuple(labels), tuple(fields))

    def _list(self, req: Request, rt: ResourceType, namespace: str | None) -> Response:
        query = self._query(req, rt, namespace)
        items, meta = self._store.page(rt, query, req.params.get("limit"),
                                       req.params.get("continue"), self.page_max)
        if "as=Table" in (req.headers.get("Accept") or ""):
            return json_response(200, table(rt, items, meta,
                                            req.params.get("includeObject", "Metadata")))
        head = (f'{{"kind":"{rt.kind}List","apiVersion":{dumps(rt.api_version)},'
                f'"metadata":{dumps(meta)},"items":[')
        return Response(200, (head + ",".join(e.item_json for e in items) + "]}").encode())

    def _watch(self, req: Request, ident: Identity) -> Response:
        """Stream watch events as chunked newline-delimited JSON until timeoutSeconds,
        the client hanging up, or the server going down."""
        parsed = parse_path(req.path)
        if parsed is None or parsed[3] is not None:
            return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        rt, namespace, name, _ = parsed
        if not ident.may("watch", rt, None):
            raise forbidden(ident, "watch", rt, namespace, name, None)
        query = self._query(req, rt, namespace)
        if name is not None:  # GET .../pods/NAME?watch=true is metadata.name=NAME
            by_name = FieldRequirement("metadata.name", ("metadata", "name"), True, name)
            query = Query(query.namespace, query.labels, (*query.fields, by_name))
        try:
            timeout = float(req.params.get("timeoutSeconds") or random.uniform(1800, 3600))
        except ValueError:
            raise ApiError(400, "invalid timeoutSeconds") from None
        try:
            initial, watcher = self._store.open_watch(rt, query, req.params.get("resourceVersion"))
        except Gone as gone:
            status = ApiError(410, gone.message).status()
            return Response(200, stream=[dumps({"type": "ERROR", "object": status}).encode()
                                         + b"\n"])
        return Response(200, stream=WatchStream(self._store, watcher, initial, query, timeout))
