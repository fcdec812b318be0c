"""A fake Kubernetes API server, small enough to read and faithful enough to trust.

No API server can run on the machines this project is built and tested on, yet watchdogd's
Kubernetes source must be exercised through the *official* ``kubernetes`` client and ``kubectl``
exactly as in production: pagination with ``limit``/``continue`` (and the 410 on an expired token
that a careless pager turns into a silently truncated pod list), label and field selectors,
delete and deletecollection, Leases with optimistic concurrency, watches, and the discovery
documents kubectl reads before it does anything.  This module answers those over real HTTP/1.1
with only the standard library, so tests, benchmarks and ``watchdogd demo`` can all use it.

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
import bisect
import builtins
import collections
import contextlib
import json
import os
import queue
import random
import re
import select
import socket
import ssl
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RESOURCES", "ApiError", "KubeSim", "ResourceType"]

Obj = dict[str, Any]

# --------------------------------------------------------------------------------------------
# The resource table: adding a resource is one line here.
# --------------------------------------------------------------------------------------------

ALL_VERBS: tuple[str, ...] = (
    "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch",
)


@dataclass(frozen=True, eq=False)  # identity: each type is a singleton used as a dict key
class ResourceType:
    """One REST resource as the API server's discovery documents describe it.

    Everything the simulator does per resource (paths, discovery, list kinds, which field
    selectors are accepted, what a delete answers) derives from these few facts, so the table
    below stays the single place to extend.
    """

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    #: field selector labels beyond metadata.name / metadata.namespace (real per-type lists)
    field_labels: tuple[str, ...] = ()
    #: subresources served: "status", "eviction" (pods), "finalize" (namespaces)
    subresources: tuple[str, ...] = ("status",)
    #: single-object DELETE answers the deleted object (pods, PVs, PVCs) instead of a Status
    returns_deleted: bool = False
    verbs: tuple[str, ...] = ALL_VERBS
    #: status a POST starts with (the real strategies drop a client-sent status); None keeps it
    initial_status: Obj | None = None

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise (the objects' apiVersion)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``leases.coordination.k8s.io``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        """Lower-case kind, as discovery's singularName."""
        return self.kind.lower()

    @property
    def has_status(self) -> bool:
        """Whether a status subresource exists, so main-resource writes keep the old status."""
        return "status" in self.subresources


_POD_FIELDS = (
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
    "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
    "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
    "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
)
_NO_DELETECOLLECTION = tuple(v for v in ALL_VERBS if v != "deletecollection")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Pod", "pods", True, ("po",), ("all",), _POD_FIELDS,
                 ("status", "eviction"), returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",), (), ("status.phase",),
                 ("status", "finalize"), verbs=_NO_DELETECOLLECTION,
                 initial_status={"phase": "Active"}),
    ResourceType("", "v1", "Node", "nodes", False, ("no",), (), ("spec.unschedulable",)),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",),
                 returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",),
                 returns_deleted=True, initial_status={"phase": "Pending"}),
    ResourceType("", "v1", "Event", "events", True, ("ev",), (), _EVENT_FIELDS, ()),
    ResourceType("", "v1", "Secret", "secrets", True, (), (), ("type",), ()),
    ResourceType("", "v1", "Service", "services", True, ("svc",), ("all",),
                 initial_status={"loadBalancer": {}}),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",), (), (), ()),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",), (), (), ()),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True, (), (), (), ()),
    ResourceType("batch", "v1", "CronJob", "cronjobs", True, ("cj",), ("all",), initial_status={}),
    ResourceType("batch", "v1", "Job", "jobs", True, (), ("all",), ("status.successful",),
                 initial_status={}),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), ("all",),
                 initial_status={}),
)

#: Field labels whose value is not simply the dotted path into the object.
_FIELD_PATHS: dict[str, tuple[str, ...]] = {"source": ("source", "component")}
#: Values the real field-label functions report when the field is absent (Go zero values).
_FIELD_DEFAULTS: dict[str, str] = {
    "spec.unschedulable": "false", "spec.hostNetwork": "false", "status.successful": "0",
}

SIM_VERSION: Obj = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.4", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2025-04-22T00:00:00Z", "goVersion": "go1.23.6",
    "compiler": "gc", "platform": "linux/amd64",
}

_EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results."
)
_REASONS: dict[int, str] = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 422: "Invalid",
    429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}
_FAULT_MESSAGES: dict[int, str] = {
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: simulated fault",
    503: "the server is currently unable to handle the request",
    504: "Timeout: request did not complete within the allotted timeout",
}
_HTTP_PHRASES: dict[int, str] = {
    200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    409: "Conflict", 410: "Gone", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}

# A fixed, public, test-only CA and server certificate (EC P-256, valid 2025-2125, SANs
# 127.0.0.1, localhost, kubernetes, kubernetes.default.svc).  HTTPS is not optional for
# faithfulness: kubectl (client-go's clientcmd) only sends a kubeconfig's credentials to https
# servers, so token auth with kubectl needs TLS.  Never use these anywhere but the simulator.
SIM_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBbzCCARagAwIBAgIUe+lTQ13ZGNpPYWh55FpagKBAVPAwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXNpbS1jYTAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEw
MTAwMDAwMFowFTETMBEGA1UEAwwKa3ViZXNpbS1jYTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABMwtNOjxfB9MlrFIqQiLzi0gHC0yQN53Eb/AbOf1LhB24wXc95qp
m37kz1kyEhTfdSy97lRsY6tx1i/YqosAvLGjQjBAMA8GA1UdEwEB/wQFMAMBAf8w
DgYDVR0PAQH/BAQDAgGGMB0GA1UdDgQWBBTDBIdv3e1Pfg8ZqpIts5BRtMMdLDAK
BggqhkjOPQQDAgNHADBEAiBCxGpwFTYpgaNuC+OnHi3fJwJLyAMJ3S36Stn+NiMA
FgIgEspj+r/3U0xu+qaRjNzqkxLzwouOL/yfLxNXj7Xo/KI=
-----END CERTIFICATE-----
"""
_SIM_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIByTCCAXCgAwIBAgIUBoEq8B8obgtuOArveKNAM1/xVD8wCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKa3ViZXNpbS1jYTAgFw0yNTAxMDEwMDAwMDBaGA8yMTI1MDEw
MTAwMDAwMFowGTEXMBUGA1UEAwwOa3ViZS1hcGlzZXJ2ZXIwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARQzXL3fw7YeVWdSC8OS1Unih6A3N3lNq18Q30UDb+/F58/
Hsc3LORG90+oh1az2liJdk8kpgrveK5L04wETY3lo4GXMIGUMAwGA1UdEwEB/wQC
MAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMD4GA1UdEQQ3
MDWCCWxvY2FsaG9zdIIKa3ViZXJuZXRlc4IWa3ViZXJuZXRlcy5kZWZhdWx0LnN2
Y4cEfwAAATAfBgNVHSMEGDAWgBTDBIdv3e1Pfg8ZqpIts5BRtMMdLDAKBggqhkjO
PQQDAgNHADBEAiBj6PnJFA3eOqg2qpwnrVKwFE+tENt1maVF0jNsW9V3KQIgbv42
yV3fg0k6IXz5JsnChnLbOfWAGlqK645l23iYszI=
-----END CERTIFICATE-----
"""
_SIM_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+kqlGpPXAhX6VaF7
cPdIvJxV4b3MunxW8e6L/JjHN/KhRANCAARQzXL3fw7YeVWdSC8OS1Unih6A3N3l
Nq18Q30UDb+/F58/Hsc3LORG90+oh1az2liJdk8kpgrveK5L04wETY3l
-----END PRIVATE KEY-----
"""

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_dumps: Callable[[Any], str] = _json_encoder.encode


def _now_rfc3339() -> str:
    """Second-precision UTC timestamp, the format of every metadata time in the real API."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clone(obj: Any) -> Any:
    """Deep copy through JSON: faster than copy.deepcopy and rejects what the API cannot hold."""
    return json.loads(_dumps(obj))


# --------------------------------------------------------------------------------------------
# Errors as Status objects
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error the simulated API answers with a ``Status`` body, as the real server does."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: Obj | None = None, list_meta: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details or {}
        self.list_meta = list_meta or {}

    def status(self) -> Obj:
        """The wire form; ``details`` is always present (possibly empty) so callers can index it."""
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": dict(self.list_meta),
            "status": "Failure", "message": self.message, "reason": self.reason,
            "details": self.details, "code": self.code,
        }


def _details(rt: ResourceType, name: str | None = None) -> Obj:
    d: Obj = {}
    if name:
        d["name"] = name
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    return d


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.qualified} "{name}" not found', details=_details(rt, name))


def _conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
                    details=_details(rt, name))


def _invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    if len(causes) > 1:
        text = "[" + text + "]"
    return ApiError(
        422, f'{rt.kind} "{name}" is invalid: {text}',
        details={"name": name, "group": rt.group, "kind": rt.kind,
                 "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f}
                            for f, m in causes]},
    )


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector, matched with the real semantics.

    ``!=`` and ``notin`` also match objects that lack the key, exactly like the API server,
    which is a classic surprise worth reproducing.
    """

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether ``labels`` satisfies this requirement."""
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            number = int(str(value))
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == ">" else number < limit


_LS_TOKEN = re.compile(r"\s*(?:(?P<op>!=|==|=|!|\(|\)|,|>|<)|(?P<word>[^\s!=(),<>]+))\s*")


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse the ``labelSelector`` grammar: ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``,
    ``!key``, ``>``/``<`` and ``,`` for AND.  Bad syntax is a 400 like the real server's."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _LS_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ApiError(400, f"unable to parse requirement: invalid label selector {text!r}")
        tokens.append(("op", m.group("op")) if m.group("op") else ("word", m.group("word")))
        pos = m.end()
    reqs: list[LabelRequirement] = []
    i = 0

    def bad(why: str) -> ApiError:
        return ApiError(400, f"unable to parse requirement: {why} in label selector {text!r}")

    def peek() -> tuple[str, str] | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        negate = tokens[i] == ("op", "!")
        if negate:
            i += 1
        tok = peek()
        if tok is None or tok[0] != "word":
            raise bad("found no key")
        key = tok[1]
        if not _valid_label_key(key):
            raise bad(f"invalid label key {key!r}")
        i += 1
        nxt = peek()
        if negate:
            reqs.append(LabelRequirement(key, "!"))
        elif nxt is None or nxt == ("op", ","):
            reqs.append(LabelRequirement(key, "exists"))
        elif nxt[0] == "op" and nxt[1] in ("=", "==", "!="):
            i += 1
            val = peek()
            value = ""
            if val is not None and val[0] == "word":
                value = val[1]
                i += 1
            reqs.append(LabelRequirement(key, "!=" if nxt[1] == "!=" else "=", (value,)))
        elif nxt[0] == "op" and nxt[1] in (">", "<"):
            i += 1
            val = peek()
            if val is None or val[0] != "word" or not re.fullmatch(r"-?\d+", val[1]):
                raise bad("expected an integer")
            i += 1
            reqs.append(LabelRequirement(key, nxt[1], (val[1],)))
        elif nxt in (("word", "in"), ("word", "notin")):
            i += 1
            if peek() != ("op", "("):
                raise bad("expected '('")
            i += 1
            values: list[str] = []
            while True:
                val = peek()
                if val is None:
                    raise bad("expected ')'")
                if val[0] == "word":
                    values.append(val[1])
                    i += 1
                    val = peek()
                if val == ("op", ","):
                    i += 1
                    continue
                if val == ("op", ")"):
                    i += 1
                    break
                raise bad("expected ',' or ')'")
            reqs.append(LabelRequirement(key, nxt[1], tuple(values)))
        else:
            raise bad(f"unexpected {nxt[1]!r}")
        tok = peek()
        if tok is None:
            break
        if tok != ("op", ","):
            raise bad(f"expected ',' but found {tok[1]!r}")
        i += 1
    return reqs


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


@dataclass(frozen=True)
class FieldRequirement:
    """One ``field=value`` / ``field!=value`` term of a field selector."""

    label: str
    path: tuple[str, ...]
    equal: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        """Compare the object's field as the real field-label functions stringify it."""
        cur: Any = obj
        for part in self.path:
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None:
            text = _FIELD_DEFAULTS.get(self.label, "")
        elif isinstance(cur, bool):
            text = "true" if cur else "false"
        else:
            text = str(cur)
        return (text == self.value) == self.equal


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str, rt: ResourceType) -> list[FieldRequirement]:
    """Parse a ``fieldSelector`` and reject labels the resource does not index, like the real
    server does with ``field label not supported: X`` (a 400)."""
    supported = {"metadata.name", *rt.field_labels}
    if rt.namespaced:
        supported.add("metadata.namespace")
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        m = re.match(r"^((?:[^\\=!]|\\.)*)(!=|==|=)(.*)$", term)
        if not m:
            raise ApiError(400, f"invalid selector: '{text}'; can't understand '{term}'")
        label, op, value = _unescape(m.group(1)).strip(), m.group(2), _unescape(m.group(3))
        if label not in supported:
            raise ApiError(400, f"field label not supported: {label}")
        path = _FIELD_PATHS.get(label, tuple(label.split(".")))
        reqs.append(FieldRequirement(label, path, op != "!=", value))
    return reqs


@dataclass(frozen=True)
class Query:
    """Which objects of one resource a list, watch or deletecollection is about."""

    namespace: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @property
    def has_selectors(self) -> bool:
        """The real server omits remainingItemCount when a selector filters the list."""
        return bool(self.labels or self.fields)

    def matches(self, obj: Obj) -> bool:
        """Namespace, label and field terms all hold (AND)."""
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels:
            labels = meta.get("labels") or {}
            if not all(r.matches(labels) for r in self.labels):
                return False
        return all(r.matches(obj) for r in self.fields)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class _Entry:
    """One immutable version of a stored object (kept without kind/apiVersion, as list items).

    Its JSON is produced once and cached: serving a 500-pod page then is a string join,
    which keeps the simulator from dominating the benchmarks it is used for.
    """

    __slots__ = ("_json", "obj", "rt")

    def __init__(self, rt: ResourceType, obj: Obj, item_json: str | None = None) -> None:
        self.rt = rt
        self.obj = obj
        self._json = item_json

    @property
    def item_json(self) -> str:
        """The object as a list item: no kind, no apiVersion."""
        if self._json is None:
            self._json = _dumps(self.obj)
        return self._json

    @property
    def full_json(self) -> str:
        """The object as a GET or watch event carries it: kind and apiVersion first."""
        head = f'{{"kind":{_dumps(self.rt.kind)},"apiVersion":{_dumps(self.rt.api_version)}'
        item = self.item_json
        return head + "}" if item == "{}" else head + "," + item[1:]

    @property
    def meta(self) -> Obj:
        """The object's metadata (read only)."""
        meta: Obj = self.obj.get("metadata") or {}
        return meta

    def full(self) -> Obj:
        """A private deep copy with kind and apiVersion, for Python callers."""
        out: Obj = json.loads(self.full_json)
        return out


@dataclass
class _Event:
    rv: int
    type: str
    entry: _Entry
    old: _Entry | None = None


@dataclass(eq=False)  # identity hashing: watchers live in a set
class _Watcher:
    rt: ResourceType
    query: Query
    events: queue.SimpleQueue[_Event | None] = field(default_factory=queue.SimpleQueue)


@dataclass
class _Snapshot:
    """The entries of a list at its first page, so that continued pages stay consistent."""

    rv: int
    entries: list[_Entry]
    continues: int = 0
    expire_at: int | None = None


class _Gone(Exception):
    """A watch asked for history the store no longer has (answered as an ERROR event)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _key(namespace: str, name: str) -> str:
    """Keys sort like etcd's ``/registry/<resource>/<ns>/<name>``: lists come out in this order."""
    return f"{namespace}/{name}" if namespace else name


class _Store:
    """Objects, the global resourceVersion counter, watch history and list snapshots.

    One lock guards everything: simulated clusters are small enough that contention never
    shows, and a single lock makes "list then watch from its resourceVersion" trivially
    consistent, which is the property clients depend on.
    """

    HISTORY = 50_000  # events kept for watches that resume; older ones answer 410
    SNAPSHOTS = 512

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 1  # never "0": a watch from "0" means "from any point", not "from the start"
        self.buckets: dict[ResourceType, dict[str, _Entry]] = {rt: {} for rt in RESOURCES}
        self._sorted: dict[ResourceType, list[str] | None] = dict.fromkeys(RESOURCES)
        self._entries: dict[ResourceType, list[_Entry] | None] = dict.fromkeys(RESOURCES)
        self.history: collections.deque[_Event] = collections.deque()
        self.history_floor = 0
        self.watchers: set[_Watcher] = set()
        self.snapshots: collections.OrderedDict[str, _Snapshot] = collections.OrderedDict()
        self.token_serial = 0
        self.tokens_valid_from = 0
        self.expire_after_pending: int | None = None

    # -- writes ------------------------------------------------------------------------------

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def commit(self, rt: ResourceType, key: str, entry: _Entry | None, *,
               deleted: _Entry | None = None) -> None:
        """Install a new version (or remove with ``deleted`` as the final state) and notify."""
        bucket = self.buckets[rt]
        old = bucket.get(key)
        self._entries[rt] = None
        if entry is not None:
            if old is None:
                self._sorted[rt] = None
            bucket[key] = entry
            self._emit(_Event(self.rv, "MODIFIED" if old else "ADDED", entry, old))
        else:
            if old is None:
                return
            del bucket[key]
            self._sorted[rt] = None
            self._emit(_Event(self.rv, "DELETED", deleted or old, old))

    def _emit(self, ev: _Event) -> None:
        if len(self.history) >= self.HISTORY:
            self.history_floor = self.history.popleft().rv
        self.history.append(ev)
        for w in self.watchers:
            if w.rt is ev.entry.rt:
                w.events.put(ev)

    # -- reads -------------------------------------------------------------------------------

    def sorted_keys(self, rt: ResourceType) -> list[str]:
        keys = self._sorted[rt]
        if keys is None:
            keys = sorted(self.buckets[rt])
            self._sorted[rt] = keys
        return keys

    def scope(self, rt: ResourceType, namespace: str | None) -> list[_Entry]:
        """Entries of one namespace (or all), in key order, as of now.

        The full list is cached until the next write to the resource and is never mutated,
        so it doubles as the consistent snapshot that continued lists are served from.
        """
        keys = self.sorted_keys(rt)
        entries = self._entries[rt]
        if entries is None:
            bucket = self.buckets[rt]
            entries = [bucket[k] for k in keys]
            self._entries[rt] = entries
        if namespace is None or not rt.namespaced:
            return entries
        lo = bisect.bisect_left(keys, namespace + "/")
        hi = bisect.bisect_left(keys, namespace + "0")  # "0" sorts right after "/"
        return entries[lo:hi]

    # -- watches -----------------------------------------------------------------------------

    def open_watch(self, rt: ResourceType, query: Query,
                   rv: str | None) -> tuple[list[_Event], _Watcher]:
        """Register a watcher and return what it must be sent first, atomically."""
        with self.lock:
            if rv in (None, "", "0"):
                initial = [_Event(self.rv, "ADDED", e) for e in self.scope(rt, query.namespace)]
            else:
                try:
                    since = int(str(rv))
                except ValueError:
                    raise ApiError(400, f"invalid resource version: {rv}") from None
                if since < self.history_floor:
                    raise _Gone(f"too old resource version: {since} ({self.history_floor + 1})")
                initial = []
                for ev in reversed(self.history):
                    if ev.rv <= since:
                        break
                    if ev.entry.rt is rt:
                        initial.append(ev)
                initial.reverse()
            watcher = _Watcher(rt, query)
            self.watchers.add(watcher)
            return initial, watcher

    def close_watch(self, watcher: _Watcher) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def wake_watchers(self) -> None:
        """End every open watch (the server is going down)."""
        with self.lock:
            for w in self.watchers:
                w.events.put(None)


def _project(ev: _Event, query: Query) -> tuple[str, _Entry] | None:
    """What a watcher with ``query`` sees of ``ev``: like the real server, an object that
    starts matching arrives as ADDED and one that stops matching leaves as DELETED."""
    new_ok = query.matches(ev.entry.obj)
    if ev.type == "ADDED":
        return ("ADDED", ev.entry) if new_ok else None
    if ev.type == "DELETED":
        return ("DELETED", ev.entry) if query.matches((ev.old or ev.entry).obj) else None
    old_ok = ev.old is not None and query.matches(ev.old.obj)
    if new_ok and old_ok:
        return "MODIFIED", ev.entry
    if new_ok:
        return "ADDED", ev.entry
    if old_ok:
        return "DELETED", ev.entry
    return None


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic-merge-patch, see module notes)."""
    if not isinstance(patch, dict):
        return patch
    result: Obj = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""

    def split(ptr: str) -> list[str]:
        if ptr == "":
            return []
        if not ptr.startswith("/"):
            raise ApiError(422, f"invalid JSON pointer {ptr!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in ptr[1:].split("/")]

    def parent(root: Any, parts: list[str]) -> Any:
        cur = root
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def get(root: Any, parts: list[str]) -> Any:
        cur = root
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def remove(root: Any, parts: list[str]) -> Any:
        con = parent(root, parts)
        if isinstance(con, list):
            return con.pop(int(parts[-1]))
        return con.pop(parts[-1])

    def add(root: Any, parts: list[str], value: Any) -> Any:
        if not parts:
            return value
        con = parent(root, parts)
        if isinstance(con, list):
            if parts[-1] == "-":
                con.append(value)
            else:
                con.insert(int(parts[-1]), value)
        else:
            con[parts[-1]] = value
        return root

    doc = _clone(doc)
    try:
        for op in ops:
            kind, parts = op["op"], split(op["path"])
            if kind == "add":
                doc = add(doc, parts, _clone(op["value"]))
            elif kind == "remove":
                remove(doc, parts)
            elif kind == "replace":
                get(doc, parts)
                if parts:
                    remove(doc, parts)
                doc = add(doc, parts, _clone(op["value"]))
            elif kind in ("move", "copy"):
                src = split(op["from"])
                value = get(doc, src) if kind == "copy" else remove(doc, src)
                doc = add(doc, parts, _clone(value))
            elif kind == "test":
                if get(doc, parts) != op["value"]:
                    raise ApiError(422, f"testing value {op['path']} failed")
            else:
                raise ApiError(422, f"Unexpected kind: {kind}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"the server rejected our request due to an error in our request: "
                            f"jsonpatch: {exc!r}") from None
    return doc


# --------------------------------------------------------------------------------------------
# Tables (what plain `kubectl get` asks for)
# --------------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's AGE format (k8s.io/apimachinery duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: Obj) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = status.get("reason") or status.get("phase") or ""
    for cs in reversed(statuses):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            term = state["terminated"] or {}
            reason = term.get("reason") or f"ExitCode:{term.get('exitCode', 0)}"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    return [f"{ready}/{len(spec.get('containers') or [])}", reason, restarts, _age(pod),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>"]


def _node_cells(node: Obj) -> list[Any]:
    status = node.get("status") or {}
    ready = "Unknown"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = {"True": "Ready", "False": "NotReady"}.get(cond.get("status"), "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        ready += ",SchedulingDisabled"
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    version = (status.get("nodeInfo") or {}).get("kubeletVersion", "")
    return [ready, ",".join(sorted(roles)) or "<none>", _age(node), version]


_ACCESS = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
           "ReadWriteOncePod": "RWOP"}


def _modes(spec: Obj) -> str:
    return ",".join(_ACCESS.get(m, m) for m in spec.get("accessModes") or [])


def _pv_cells(pv: Obj) -> list[Any]:
    spec, status = pv.get("spec") or {}, pv.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    return [(spec.get("capacity") or {}).get("storage", ""), _modes(spec),
            spec.get("persistentVolumeReclaimPolicy", ""), status.get("phase", ""), claim,
            spec.get("storageClassName", ""), status.get("reason", ""), _age(pv)]


def _pvc_cells(pvc: Obj) -> list[Any]:
    spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
    return [status.get("phase", ""), spec.get("volumeName", ""),
            (status.get("capacity") or {}).get("storage", ""), _modes(status),
            spec.get("storageClassName") or "", _age(pvc)]


@dataclass(frozen=True)
class _Column:
    name: str
    type: str = "string"
    format: str = ""
    priority: int = 0

    def definition(self) -> Obj:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.name, "priority": self.priority}


_TABLES: dict[str, tuple[tuple[_Column, ...], Callable[[Obj], list[Any]]]] = {
    "Pod": ((_Column("Ready"), _Column("Status"), _Column("Restarts", "integer"),
             _Column("Age"), _Column("IP", priority=1), _Column("Node", priority=1)), _pod_cells),
    "Node": ((_Column("Status"), _Column("Roles"), _Column("Age"), _Column("Version")),
             _node_cells),
    "Namespace": ((_Column("Status"), _Column("Age")),
                  lambda o: [(o.get("status") or {}).get("phase", ""), _age(o)]),
    "PersistentVolume": ((_Column("Capacity"), _Column("Access Modes"),
                          _Column("Reclaim Policy"), _Column("Status"), _Column("Claim"),
                          _Column("StorageClass"), _Column("Reason"), _Column("Age")),
                         _pv_cells),
    "PersistentVolumeClaim": ((_Column("Status"), _Column("Volume"), _Column("Capacity"),
                               _Column("Access Modes"), _Column("StorageClass"),
                               _Column("Age")), _pvc_cells),
}


def _table(rt: ResourceType, entries: list[_Entry], list_meta: Obj, include: str) -> Obj:
    columns, cells = _TABLES.get(rt.kind, ((_Column("Age"),), lambda o: [_age(o)]))
    rows = []
    for e in entries:
        row: Obj = {"cells": [e.meta.get("name", ""), *cells(e.obj)]}
        if include == "Object":
            row["object"] = e.full()
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": e.meta}
        rows.append(row)
    defs = [_Column("Name", format="name").definition(), *(c.definition() for c in columns)]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": defs, "rows": rows}


# --------------------------------------------------------------------------------------------
# Faults and identities
# --------------------------------------------------------------------------------------------


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    status: int | None
    times: int | None
    hang: float | None
    after: int
    seen: int = 0
    fired: int = 0


@dataclass(frozen=True)
class _Identity:
    user: str
    allow: frozenset[tuple[str, str]] | None  # None: everything (cluster-admin)

    def may(self, verb: str, rt: ResourceType, sub: str | None) -> bool:
        if self.allow is None:
            return True
        names = {rt.plural, rt.qualified, "*"}
        if sub:
            names = {f"{rt.plural}/{sub}", f"{rt.qualified}/{sub}", "*"}
        return any((v, r) in self.allow for v in (verb, "*") for r in names)


_PUBLIC_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})


@dataclass
class _Request:
    """One parsed request, handed from the HTTP handler to the API logic."""

    method: str
    path: str
    params: dict[str, str]
    headers: Any
    body: bytes


@dataclass
class _Response:
    code: int
    body: bytes
    content_type: str = "application/json"


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its open connections, so ``down()`` can cut them the
    way a dying API server does (keep-alive pools must notice, not keep working).

    Each connection speaks plain HTTP or TLS, told apart by its first byte (0x16 opens a TLS
    handshake), so ``http://`` and ``https://`` URLs share one port and one down()/up().
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: KubeSim) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        if first == b"\x16":
            try:
                conn = self.sim.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError):  # failed handshakes are the client's problem
                return
            with self.conn_lock:
                self.connections.discard(request)
                self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            if conn is not request:  # wrap_socket detached `request`; close the TLS socket
                with self.conn_lock:
                    self.connections.discard(conn)
                with contextlib.suppress(OSError):
                    conn.close()

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection resets are normal here (clients time out, tests cut connections)."""


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP/1.1 adapter; everything interesting is in :class:`KubeSim`."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: tests and benchmarks make thousands of requests."""

    def _dispatch(self) -> None:
        self.server.sim._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def write_response(self, resp: _Response) -> None:
        """Status line, headers and body in one send: separate small writes meet delayed ACKs."""
        head = [f"HTTP/1.1 {resp.code} {_HTTP_PHRASES.get(resp.code, 'Unknown')}",
                f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
                "Cache-Control: no-cache, private"]
        if self.close_connection:
            head.append("Connection: close")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        self.wfile.write(payload if self.command == "HEAD" else payload + resp.body)

    def start_chunked(self) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Cache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n")

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client hung up on an idle watch (otherwise we learn only on the next write)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS; a watcher sends nothing
            return True
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _json_response(code: int, obj: Any) -> _Response:
    return _Response(code, _dumps(obj).encode())


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


class KubeSim:
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
        self.token = token
        self._cert_files = (cert_file, key_file) if cert_file else None
        self.ca_pem = ca_pem if ca_pem is not None else (SIM_CA_PEM if not cert_file else "")
        self._ssl_context: ssl.SSLContext | None = None
        self.page_max = page_max
        self.strict_namespaces = strict_namespaces
        self.requests: builtins.list[tuple[str, str]] = []
        #: tracebacks of unexpected exceptions (answered as 500), to debug the simulator itself
        self.errors: builtins.list[str] = []
        self._store = _Store()
        self._tokens: dict[str, _Identity] = {token: _Identity("kubernetes-admin", None)}
        self._faults: builtins.list[_Fault] = []
        self._meta_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._closing = threading.Event()
        self._by_kind: dict[str, ResourceType] = {}
        self._by_path: dict[tuple[str, str], ResourceType] = {}
        for rt in RESOURCES:
            for alias in (rt.kind, rt.kind.lower(), rt.plural, rt.qualified, *rt.short_names):
                self._by_kind.setdefault(alias, rt)
            self._by_path[(rt.api_version, rt.plural)] = rt

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KubeSim:
        """Listen on 127.0.0.1 (port 0 the first time, the same port after :meth:`down`)."""
        with self._life_lock:
            if self._server is not None:
                return self
            _ = self.ssl_context  # build it before any connection thread needs it
            server = _Server(("127.0.0.1", self._port), self)
            self._port = server.server_address[1]
            self._closing.clear()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"kubesim-{self._port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and end every connection and watch (idempotent)."""
        self.down()

    def down(self) -> None:
        """Close the listening socket and cut open connections: clients get refused/reset."""
        with self._life_lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        self._store.wake_watchers()
        if thread is not None:
            thread.join(timeout=5)

    def up(self) -> None:
        """Listen again on the same port (after :meth:`down`)."""
        self.start()

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

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
        """The server-side TLS context (built once; load_cert_chain only reads files)."""
        if self._ssl_context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.set_alpn_protocols(["http/1.1"])  # Go would otherwise try HTTP/2
            if self._cert_files is not None:
                ctx.load_cert_chain(*self._cert_files)
            else:
                with tempfile.TemporaryDirectory(prefix="kubesim-") as tmp:
                    cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
                    with open(cert, "w", encoding="ascii") as fh:
                        fh.write(_SIM_CERT_PEM + SIM_CA_PEM)
                    with open(key, "w", encoding="ascii") as fh:
                        fh.write(_SIM_KEY_PEM)
                    ctx.load_cert_chain(cert, key)
            self._ssl_context = ctx
        return self._ssl_context

    @property
    def port(self) -> int:
        """The TCP port (0 before the first start)."""
        return self._port

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
        self._tokens[token] = _Identity(user, None if allow is None else frozenset(allow))

    # -- direct store access -----------------------------------------------------------------

    def resource(self, kind: str) -> ResourceType:
        """Resolve a kind (``Pod``), plural (``pods``) or short name (``po``)."""
        rt = self._by_kind.get(kind) or self._by_kind.get(kind.lower())
        if rt is None:
            raise KeyError(f"unknown kind {kind!r}")
        return rt

    def _prepare_put(self, obj: Obj, deep: bool) -> tuple[ResourceType, str, Obj]:
        kind = obj.get("kind")
        if not kind:
            raise ValueError("object has no kind")
        rt = self.resource(str(kind))
        if obj.get("apiVersion") not in (None, rt.api_version):
            raise ValueError(f"{kind} is served as {rt.api_version}, not {obj['apiVersion']}")
        body = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        if deep:
            body = _clone(body)
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
        return rt, _key(meta.get("namespace", ""), meta["name"]), body

    def _put_locked(self, rt: ResourceType, key: str, body: Obj, item_json: bool,
                    now: str) -> _Entry:
        store = self._store
        meta = body["metadata"]
        old = store.buckets[rt].get(key)
        old_meta = old.meta if old is not None else {}
        meta["uid"] = meta.get("uid") or old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = (meta.get("creationTimestamp")
                                     or old_meta.get("creationTimestamp") or now)
        meta["resourceVersion"] = str(store.next_rv())
        entry = _Entry(rt, body, _dumps(body) if item_json else None)
        store.commit(rt, key, entry)
        return entry

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object without API rules (world setup); emits watch events.

        Fills metadata.uid (kept from the object it replaces), resourceVersion (always new),
        creationTimestamp (unless given) and namespace ``default`` for namespaced kinds;
        a Namespace without status.phase gets ``Active``.  Returns a copy of what is stored.
        """
        rt, key, body = self._prepare_put(obj, deep=True)
        with self._store.lock:
            return self._put_locked(rt, key, body, False, _now_rfc3339()).full()

    def put_many(self, objs: Iterable[dict[str, Any]]) -> None:
        """Bulk :meth:`put` for large worlds (20,000 pods in well under a second or two).

        Takes ownership of the nested structures of ``objs`` instead of deep-copying them, and
        serializes each object once now so the first list is as fast as later ones: do not
        mutate the passed objects afterwards.
        """
        prepared = [self._prepare_put(o, deep=False) for o in objs]
        now = _now_rfc3339()
        with self._store.lock:
            for rt, key, body in prepared:
                self._put_locked(rt, key, body, True, now)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """A copy of one object (with kind/apiVersion) or None; namespace defaults to
        ``default`` for namespaced kinds."""
        rt = self.resource(kind)
        ns = (namespace or "default") if rt.namespaced else ""
        with self._store.lock:
            entry = self._store.buckets[rt].get(_key(ns, name))
        return entry.full() if entry else None

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Remove an object at once, ignoring finalizers and without cascading (world setup);
        emits DELETED.  True if it existed."""
        rt = self.resource(kind)
        ns = (namespace or "default") if rt.namespaced else ""
        key = _key(ns, name)
        with self._store.lock:
            old = self._store.buckets[rt].get(key)
            if old is None:
                return False
            self._store.next_rv()
            self._store.commit(rt, key, None, deleted=self._with_rv(old, self._store.rv))
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
        with self._meta_lock:
            self._faults.append(_Fault(re.compile(path_regex), status, times, hang, after))

    def clear_faults(self) -> None:
        """Remove every fault set with :meth:`fail`."""
        with self._meta_lock:
            self._faults.clear()

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

    def reset_requests(self) -> None:
        """Forget the request log."""
        with self._meta_lock:
            self.requests.clear()

    # -- HTTP entry point ------------------------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        """Handle one request: record, fault, authenticate, route, answer."""
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        split = urlsplit(h.path)
        path = split.path or "/"
        with self._meta_lock:
            self.requests.append((h.command, h.path))
            fault = self._match_fault(path)
        if fault is not None:
            if fault.hang:
                self._closing.wait(fault.hang)
            if fault.status == 0 or self._closing.is_set():
                h.close_connection = True
                return
        if fault is not None and fault.status is not None:
            message = _FAULT_MESSAGES.get(fault.status, f"simulated fault ({fault.status})")
            h.write_response(_json_response(fault.status, ApiError(fault.status, message).status()))
            return
        params = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        req = _Request(h.command, path, params, h.headers, body)
        try:
            ident = self._authenticate(req)
            if self._is_watch(req) and req.method == "GET":
                self._serve_watch(h, req, ident)
                return
            resp = self._route(req, ident)
        except ApiError as err:
            resp = _json_response(err.code, err.status())
        except Exception:  # a simulator bug must still answer, as a 500
            self.errors.append(traceback.format_exc())
            bug = ApiError(500, "Internal error occurred: simulator bug (see KubeSim.errors)")
            resp = _json_response(500, bug.status())
        try:
            h.write_response(resp)
        except OSError:
            h.close_connection = True

    def _match_fault(self, path: str) -> _Fault | None:
        for f in self._faults:
            if not f.pattern.search(path):
                continue
            f.seen += 1
            if f.seen <= f.after or (f.times is not None and f.fired >= f.times):
                continue
            f.fired += 1
            return f
        return None

    def _authenticate(self, req: _Request) -> _Identity:
        auth = req.headers.get("Authorization")
        if auth is None and req.path in _PUBLIC_PATHS:
            return _Identity("system:anonymous", frozenset())
        scheme, _, token = (auth or "").partition(" ")
        ident = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if ident is None:
            raise ApiError(401, "Unauthorized")
        return ident

    @staticmethod
    def _is_watch(req: _Request) -> bool:
        """``?watch=true`` or the old ``/api/v1/watch/...`` path form."""
        return req.params.get("watch") in ("true", "1") or bool(
            re.match(r"^/(api/v1|apis/[^/]+/[^/]+)/watch/", req.path))

    # -- routing ---------------------------------------------------------------------------

    def _parse_path(self, path: str) -> tuple[ResourceType, str | None, str | None,
                                               str | None] | None:
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
                and (gv, rest[2]) in self._by_path and self._by_path[(gv, rest[2])].namespaced):
            namespace, rest = rest[1], rest[2:]
        if not rest or not 1 <= len(rest) <= 3:
            return None
        rt = self._by_path.get((gv, rest[0]))
        if rt is None or (rt.namespaced and namespace is None and len(rest) > 1):
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            return None
        return rt, namespace, name, sub

    def _route(self, req: _Request, ident: _Identity) -> _Response:
        path = req.path.rstrip("/") or "/"
        if path in _PUBLIC_PATHS:
            if path == "/version":
                return _json_response(200, SIM_VERSION)
            return _Response(200, b"ok", "text/plain; charset=utf-8")
        if path in ("/api", "/apis") or path.startswith(("/api/", "/apis/")):
            discovery = self._discovery(path)
            if discovery is not None:
                return _json_response(200, discovery)
        parsed = self._parse_path(path)
        if parsed is None:
            return _Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        rt, namespace, name, sub = parsed
        verb = self._verb(req.method, name, sub)
        if verb is None or (sub is None and verb not in rt.verbs):
            raise ApiError(405, "the server does not allow this method on the requested resource",
                           details=_details(rt, name))
        if not ident.may(verb, rt, sub):
            raise self._forbidden(ident, verb, rt, namespace, name, sub)
        return self._handle(req, verb, rt, namespace, name, sub)

    @staticmethod
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

    @staticmethod
    def _forbidden(ident: _Identity, verb: str, rt: ResourceType, namespace: str | None,
                   name: str | None, sub: str | None) -> ApiError:
        what = f'{rt.qualified} "{name}"' if name else rt.qualified
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        return ApiError(
            403, f'{what} is forbidden: User "{ident.user}" cannot {verb} resource '
                 f'"{resource}" in API group "{rt.group}" {where}',
            details=_details(rt, name))

    def _handle(self, req: _Request, verb: str, rt: ResourceType, namespace: str | None,
                name: str | None, sub: str | None) -> _Response:
        dry = "dryRun" in req.params
        if verb == "list":
            return self._list(req, rt, namespace)
        if verb == "deletecollection":
            return self._delete_collection(req, rt, namespace, dry)
        body = self._body(req) if req.method in ("POST", "PUT", "PATCH") else None
        if verb == "create" and name is None:
            assert body is not None
            if rt.namespaced and namespace is None:
                raise ApiError(405, "the server does not allow this method on the requested "
                                    "resource", details=_details(rt))
            return self._create(rt, namespace, body, dry)
        assert name is not None
        ns = namespace or ""
        if sub == "eviction":
            return self._evict(rt, ns, name, dry)
        if verb == "get":
            with self._store.lock:
                entry = self._store.buckets[rt].get(_key(ns, name))
            if entry is None:
                raise _not_found(rt, name)
            return self._object_response(req, rt, entry, 200)
        if verb == "delete":
            options = self._body(req) if req.body.strip() else {}
            for key in ("gracePeriodSeconds", "dryRun"):
                if key in req.params:
                    options.setdefault(key, req.params[key])
            return self._delete(rt, ns, name, options, dry or bool(options.get("dryRun")))
        assert body is not None
        if verb == "patch":
            return self._patch(req, rt, ns, name, sub, body, dry)
        return self._update(rt, ns, name, sub, body, dry)

    def _body(self, req: _Request) -> Any:
        try:
            return json.loads(req.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}") from None

    def _object_response(self, req: _Request, rt: ResourceType, entry: _Entry,
                         code: int) -> _Response:
        if "as=Table" in (req.headers.get("Accept") or ""):
            meta = {"resourceVersion": entry.meta.get("resourceVersion", "")}
            table = _table(rt, [entry], meta, req.params.get("includeObject", "Metadata"))
            return _json_response(code, table)
        return _Response(code, entry.full_json.encode())

    # -- discovery ---------------------------------------------------------------------------

    def _discovery(self, path: str) -> Obj | None:
        """The legacy discovery documents; kubectl falls back to them when the response is not
        the aggregated (application/json;g=apidiscovery.k8s.io) form."""
        groups: dict[str, builtins.list[ResourceType]] = {}
        for rt in RESOURCES:
            groups.setdefault(rt.api_version, []).append(rt)
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}]}
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
        resources: builtins.list[Obj] = []
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

    # -- list, watch -------------------------------------------------------------------------

    def _query(self, req: _Request, rt: ResourceType, namespace: str | None) -> Query:
        labels = parse_label_selector(req.params.get("labelSelector", ""))
        fields = parse_field_selector(req.params.get("fieldSelector", ""), rt)
        return Query(namespace if rt.namespaced else None, tuple(labels), tuple(fields))

    def _encode_token(self, rv: int, last: str, sid: str | None) -> str:
        store = self._store
        store.token_serial += 1
        token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last + "\x00", "sid": sid,
                 "n": store.token_serial}
        return base64.urlsafe_b64encode(_dumps(token).encode()).decode().rstrip("=")

    def _decode_token(self, text: str) -> Obj:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            token = json.loads(raw)
            if not isinstance(token, dict) or token.get("v") != "meta.k8s.io/v1":
                raise ValueError("unsupported version")
            int(token["rv"])
            str(token["start"])
            int(token["n"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, f"continue key is not valid: {exc}") from None
        return token

    def _page(self, req: _Request, rt: ResourceType,
              query: Query) -> tuple[builtins.list[_Entry], Obj]:
        """Select one page under the store lock; returns the entries and the list metadata."""
        store = self._store
        try:
            limit = int(req.params.get("limit") or 0)
        except ValueError:
            raise ApiError(400, f"invalid limit: {req.params['limit']!r}") from None
        if limit > 0:
            limit = min(limit, self.page_max)
        cont = req.params.get("continue")
        with store.lock:
            snap: _Snapshot | None = None
            sid: str | None = None
            if cont:
                token = self._decode_token(cont)
                last = str(token["start"]).rstrip("\x00")
                sid = token.get("sid")
                snap = store.snapshots.get(sid) if isinstance(sid, str) else None
                expired = int(token["n"]) < store.tokens_valid_from or (
                    int(token["rv"]) != -1 and snap is None)
                if snap is not None and not expired:
                    snap.continues += 1
                    if snap.expire_at is not None and snap.continues >= snap.expire_at:
                        del store.snapshots[str(sid)]
                        expired = True
                if expired:
                    fresh = self._encode_token(-1, last, None)
                    raise ApiError(410, _EXPIRED_CONTINUE, list_meta={"continue": fresh})
                if snap is None:  # an inconsistent (rv -1) token: continue on live data
                    entries = store.scope(rt, query.namespace)
                    rv = store.rv
                else:
                    store.snapshots.move_to_end(str(sid))
                    entries, rv = snap.entries, snap.rv
                start = self._offset_after(entries, last)
            else:
                entries = store.scope(rt, query.namespace)
                rv, start = store.rv, 0
            items: builtins.list[_Entry] = []
            pos = start
            while pos < len(entries) and (limit <= 0 or len(items) < limit):
                e = entries[pos]
                pos += 1
                if query.matches(e.obj):
                    items.append(e)
            meta: Obj = {"resourceVersion": str(rv)}
            if pos < len(entries) and limit > 0:
                if snap is None:
                    sid = uuid.uuid4().hex
                    snap = _Snapshot(rv, entries)
                    if store.expire_after_pending is not None:
                        snap.expire_at = store.expire_after_pending
                        store.expire_after_pending = None
                    store.snapshots[sid] = snap
                    while len(store.snapshots) > store.SNAPSHOTS:
                        store.snapshots.popitem(last=False)
                last_e = entries[pos - 1]
                meta["continue"] = self._encode_token(
                    rv, _key(last_e.meta.get("namespace", ""), last_e.meta["name"]), sid)
                if not query.has_selectors:
                    meta["remainingItemCount"] = len(entries) - pos
            elif snap is not None and sid is not None:
                store.snapshots.pop(sid, None)
        return items, meta

    @staticmethod
    def _offset_after(entries: builtins.list[_Entry], last: str) -> int:
        """Position after the key ``last`` in entries that are in key order."""
        lo, hi = 0, len(entries)
        while lo < hi:
            mid = (lo + hi) // 2
            m = entries[mid].meta
            if _key(m.get("namespace", ""), m["name"]) <= last:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _list(self, req: _Request, rt: ResourceType, namespace: str | None) -> _Response:
        query = self._query(req, rt, namespace)
        items, meta = self._page(req, rt, query)
        if "as=Table" in (req.headers.get("Accept") or ""):
            table = _table(rt, items, meta, req.params.get("includeObject", "Metadata"))
            return _json_response(200, table)
        head = (f'{{"kind":"{rt.kind}List","apiVersion":{_dumps(rt.api_version)},'
                f'"metadata":{_dumps(meta)},"items":[')
        return _Response(200, (head + ",".join(e.item_json for e in items) + "]}").encode())

    def _serve_watch(self, h: _Handler, req: _Request, ident: _Identity) -> None:
        """Stream watch events as chunked newline-delimited JSON until timeoutSeconds,
        the client hanging up, or the server going down."""
        parsed = self._parse_path(req.path)
        if parsed is None or parsed[3] is not None:
            h.write_response(_Response(404, b"404 page not found\n", "text/plain; charset=utf-8"))
            return
        rt, namespace, name, _ = parsed
        if not ident.may("watch", rt, None):
            raise self._forbidden(ident, "watch", rt, namespace, name, None)
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
        except _Gone as gone:
            h.start_chunked()
            status = ApiError(410, gone.message).status()
            h.write_chunk(_dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            h.end_chunked()
            return
        deadline = time.monotonic() + timeout
        try:
            h.start_chunked()
            self._write_events(h, initial, query)
            while not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    ev = watcher.events.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    if _peer_closed(h.connection):
                        h.close_connection = True
                        return
                    continue
                batch = [ev]
                while True:  # coalesce bursts (put_many) into one write
                    try:
                        batch.append(watcher.events.get_nowait())
                    except queue.Empty:
                        break
                if None in batch:
                    h.close_connection = True
                    return
                self._write_events(h, [e for e in batch if e is not None], query)
            if self._closing.is_set():
                h.close_connection = True
                return
            h.end_chunked()
        except OSError:
            h.close_connection = True
        finally:
            self._store.close_watch(watcher)

    @staticmethod
    def _write_events(h: _Handler, events: builtins.list[_Event], query: Query) -> None:
        lines = []
        for ev in events:
            seen = _project(ev, query)
            if seen is not None:
                lines.append(f'{{"type":"{seen[0]}","object":{seen[1].full_json}}}\n')
        if lines:
            h.write_chunk("".join(lines).encode())

    # -- writes --------------------------------------------------------------------------------

    def _check_identity(self, rt: ResourceType, body: Any, namespace: str | None,
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

    def _validate(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        causes: builtins.list[tuple[str, str]] = []
        pattern = _DNS_LABEL if rt.kind == "Namespace" else _DNS_SUBDOMAIN
        if not pattern.match(name) or len(name) > (63 if rt.kind == "Namespace" else 253):
            causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                           "subdomain must consist of lower case alphanumeric characters, '-' "
                           "or '.', and must start and end with an alphanumeric character"))
        for key, value in (meta.get("labels") or {}).items():
            if not _valid_label_key(str(key)):
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
            raise _invalid(rt, name, causes)

    def _namespace_admits(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        """NamespaceLifecycle admission: no new content in a terminating namespace."""
        if not rt.namespaced or namespace is None:
            return
        ns = self._store.buckets[self._by_kind["Namespace"]].get(namespace)
        if ns is None:
            if self.strict_namespaces:
                raise ApiError(404, f'namespaces "{namespace}" not found',
                               details={"name": namespace, "kind": "namespaces"})
            return
        if ns.meta.get("deletionTimestamp"):
            raise ApiError(403, f'{rt.qualified} "{name}" is forbidden: unable to create new '
                                f"content in namespace {namespace} because it is being "
                                "terminated", details=_details(rt, name))

    def _create(self, rt: ResourceType, namespace: str | None, body: Any,
                dry: bool) -> _Response:
        obj = self._check_identity(rt, body, namespace, None)
        meta = obj["metadata"]
        store = self._store
        with store.lock:
            if not meta.get("name"):
                if meta.get("generateName"):
                    bucket = store.buckets[rt]
                    while True:
                        meta["name"] = meta["generateName"] + "".join(
                            random.choice(_GENERATE_CHARS) for _ in range(5))
                        if _key(namespace or "", meta["name"]) not in bucket:
                            break
                else:
                    raise _invalid(rt, "", [("metadata.name", "Required value: name or "
                                             "generateName is required")])
            self._validate(rt, obj)
            self._namespace_admits(rt, namespace, meta["name"])
            key = _key(namespace or "", meta["name"])
            if key in store.buckets[rt]:
                raise ApiError(409, f'{rt.qualified} "{meta["name"]}" already exists',
                               reason="AlreadyExists", details=_details(rt, meta["name"]))
            for drop in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(drop, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now_rfc3339()
            if "spec" in obj:
                meta["generation"] = 1
            if rt.initial_status is not None:
                obj["status"] = _clone(rt.initial_status)
            if dry:
                meta["resourceVersion"] = str(store.rv)
                return _Response(201, _Entry(rt, obj).full_json.encode())
            meta["resourceVersion"] = str(store.next_rv())
            entry = _Entry(rt, obj)
            store.commit(rt, key, entry)
        return _Response(201, entry.full_json.encode())

    @staticmethod
    def _with_rv(entry: _Entry, rv: int, **meta_changes: Any) -> _Entry:
        obj = dict(entry.obj)
        obj["metadata"] = {**entry.meta, "resourceVersion": str(rv), **meta_changes}
        return _Entry(entry.rt, obj)

    def _update(self, rt: ResourceType, ns: str, name: str, sub: str | None, body: Any,
                dry: bool) -> _Response:
        obj = self._check_identity(rt, body, ns or None, name)
        with self._store.lock:
            old = self._store.buckets[rt].get(_key(ns, name))
            if old is None:
                raise _not_found(rt, name)
            return self._apply_update(rt, old, obj, sub, dry)

    def _patch(self, req: _Request, rt: ResourceType, ns: str, name: str, sub: str | None,
               patch: Any, dry: bool) -> _Response:
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip()
        with self._store.lock:
            old = self._store.buckets[rt].get(_key(ns, name))
            if old is None:
                raise _not_found(rt, name)
            current = old.full()
            if ctype == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise ApiError(400, "json patch must be a list of operations")
                new = json_patch(current, patch)
            elif ctype in ("application/merge-patch+json",
                           "application/strategic-merge-patch+json"):
                if not isinstance(patch, dict):
                    raise ApiError(400, "patch must be a JSON object")
                wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
                if wanted_rv is not None and wanted_rv != old.meta.get("resourceVersion"):
                    raise _conflict(rt, name, "the object has been modified; please apply your "
                                              "changes to the latest version and try again")
                new = merge_patch(current, patch)
            else:
                raise ApiError(415, "the body of the request was in an unknown format - accepted "
                                    "media types include: application/json-patch+json, "
                                    "application/merge-patch+json, "
                                    "application/strategic-merge-patch+json")
            obj = self._check_identity(rt, new, ns or None, name)
            obj["metadata"]["resourceVersion"] = old.meta.get("resourceVersion")
            return self._apply_update(rt, old, obj, sub, dry)

    def _apply_update(self, rt: ResourceType, old: _Entry, obj: Obj, sub: str | None,
                      dry: bool) -> _Response:
        """The update rules shared by PUT and PATCH (store lock held)."""
        name = old.meta["name"]
        sent_rv = obj["metadata"].get("resourceVersion")
        if sent_rv not in (None, "") and sent_rv != old.meta.get("resourceVersion"):
            raise _conflict(rt, name, "the object has been modified; please apply your changes "
                                      "to the latest version and try again")
        prev = old.full()
        del prev["kind"], prev["apiVersion"]
        if sub == "status":
            new = {**prev, "status": obj.get("status")}
        elif sub == "finalize":
            new = {**prev, "spec": {**(prev.get("spec") or {}),
                                    "finalizers": (obj.get("spec") or {}).get("finalizers")}}
        else:
            self._validate(rt, obj)
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
            return _Response(200, old.full_json.encode())
        store = self._store
        key = _key(meta.get("namespace", ""), name)
        if dry:
            return _Response(200, _Entry(rt, new).full_json.encode())
        meta["resourceVersion"] = str(store.next_rv())
        entry = _Entry(rt, new)
        store.commit(rt, key, entry)
        if meta.get("deletionTimestamp") and not self._finalizers(entry):
            self._remove(rt, key, entry)
        return _Response(200, entry.full_json.encode())

    @staticmethod
    def _finalizers(entry: _Entry) -> builtins.list[str]:
        found = list(entry.meta.get("finalizers") or [])
        if entry.rt.kind == "Namespace":
            found += (entry.obj.get("spec") or {}).get("finalizers") or []
        return found

    def _remove(self, rt: ResourceType, key: str, entry: _Entry,
                **meta_changes: Any) -> _Entry:
        """Delete for real (store lock held); a namespace takes its content with it."""
        store = self._store
        final = self._with_rv(entry, store.next_rv(), **meta_changes)
        store.commit(rt, key, None, deleted=final)
        if rt.kind == "Namespace":
            name = entry.meta["name"]
            for other in RESOURCES:
                if other.namespaced:
                    for e in store.scope(other, name):
                        k = _key(name, e.meta["name"])
                        store.commit(other, k, None, deleted=self._with_rv(e, store.next_rv()))
        return final

    def _delete(self, rt: ResourceType, ns: str, name: str, options: Any, dry: bool) -> _Response:
        if not isinstance(options, dict):
            raise ApiError(400, "DeleteOptions must be a JSON object")
        with self._store.lock:
            entry = self._store.buckets[rt].get(_key(ns, name))
            if entry is None:
                raise _not_found(rt, name)
            return self._delete_entry(rt, entry, options, dry)

    def _delete_entry(self, rt: ResourceType, entry: _Entry, options: Obj,
                      dry: bool) -> _Response:
        """Delete one object (store lock held): finalizers make it linger, marked."""
        name = entry.meta["name"]
        pre = options.get("preconditions") or {}
        for field_name, meta_name in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = pre.get(field_name)
            if want is not None and want != entry.meta.get(field_name):
                raise _conflict(rt, name, f"Precondition failed: {meta_name} in precondition: "
                                          f"{want}, {meta_name} in object meta: "
                                          f"{entry.meta.get(field_name)}")
        key = _key(entry.meta.get("namespace", ""), name)
        store = self._store
        if self._finalizers(entry):
            if entry.meta.get("deletionTimestamp") or dry:
                return _Response(200, entry.full_json.encode())
            marked = self._with_rv(entry, store.next_rv(), deletionTimestamp=_now_rfc3339(),
                                   deletionGracePeriodSeconds=0)
            if rt.kind == "Namespace":
                marked.obj["status"] = {**(marked.obj.get("status") or {}),
                                        "phase": "Terminating"}
            store.commit(rt, key, marked)
            return _Response(200, marked.full_json.encode())
        changes: Obj = {}
        if rt.kind == "Pod":
            grace = options.get("gracePeriodSeconds")
            changes = {"deletionTimestamp": _now_rfc3339(),
                       "deletionGracePeriodSeconds": int(grace) if grace is not None else 30}
        if dry:
            final = self._with_rv(entry, store.rv, **changes)
        else:
            final = self._remove(rt, key, entry, **changes)
        if rt.returns_deleted:
            return _Response(200, final.full_json.encode())
        details = {**_details(rt, name), "uid": entry.meta.get("uid")}
        return _json_response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success", "details": details})

    def _delete_collection(self, req: _Request, rt: ResourceType, namespace: str | None,
                           dry: bool) -> _Response:
        query = self._query(req, rt, namespace)
        options = self._body(req) if req.body.strip() else {}
        deleted: builtins.list[_Entry] = []
        with self._store.lock:
            for entry in self._store.scope(rt, query.namespace):
                if query.matches(entry.obj):
                    self._delete_entry(rt, entry, options if isinstance(options, dict) else {},
                                       dry)
                    deleted.append(entry)
            rv = self._store.rv
        head = (f'{{"kind":"{rt.kind}List","apiVersion":{_dumps(rt.api_version)},'
                f'"metadata":{{"resourceVersion":"{rv}"}},"items":[')
        return _Response(200, (head + ",".join(e.item_json for e in deleted) + "]}").encode())

    def _evict(self, rt: ResourceType, ns: str, name: str, dry: bool) -> _Response:
        """policy/v1 Eviction: without PodDisruptionBudgets it is a delete."""
        with self._store.lock:
            entry = self._store.buckets[rt].get(_key(ns, name))
            if entry is None:
                raise _not_found(rt, name)
            self._delete_entry(rt, entry, {}, dry)
        return _json_response(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success", "code": 201})
