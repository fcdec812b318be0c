"""Session drift: the hub database, the proxy's routes and the pods, per hub.

JupyterHub keeps three records of a running server: a ``spawners`` row with a
``server_id``, a route in configurable-http-proxy, and a pod. When they drift
apart the hub believes in a lab that does not exist and refuses to start or
stop it. This module compares the three and plans the fix the hub itself would
make, always through the Hub REST API:

===========  ==============  =========================  ====================  ===================
hub DB       route           pod                        kind                  planned action
===========  ==============  =========================  ====================  ===================
running      any             missing                    ``stale-session``     ``stop-server``
running      any             Failed/Succeeded/Evicted   ``dead-session``      ``stop-server``
not running  any             running                    ``orphan-pod``        ``delete-pod``
running      missing         running                    ``missing-route``     ``sync-routes``
not running  hub route       any                        ``stale-route``       ``sync-routes``
running      wrong target    running                    ``route-mismatch``    ``sync-routes``
pending spawn too long (API)                            ``stuck-spawn``       ``stop-server``
pending stop too long (API)                             ``stuck-stop``        ``restart-hub``
===========  ==============  =========================  ====================  ===================

The hub's record comes from one of two places. Without ``db_url`` (the default), the
Hub API alone: one paginated ``GET /users`` lists every user and each active server with
its spawner ``state`` (the ``admin:server_state`` scope), so "running" is "active" and the
record and the API are one read. With ``db_url``, the database: a server the database calls
running but the REST API does not list as active (the two were read a moment apart) is
left alone for this pass: the sources disagree, so nothing is known for sure.

Either way the hub API token must hold :func:`scopes_needed` (one ``GET /user`` per pass):
a token without one is an error naming it, so no pass acts on half of its plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field

from watchdogd.checks.common import Detector, pod_before_image
from watchdogd.config import CheckConfig, Duration, HubConfig, Inventory
from watchdogd.model import (
    Action,
    CheckTarget,
    Detection,
    Finding,
    ImplausibleData,
    Need,
    Severity,
    Snapshot,
)
from watchdogd.ports import HubApi, HubDb, Kube, Proxy, call
from watchdogd.slugs import escape_slug
from watchdogd.times import parse_time

NAME = "sessions"
KINDS = (
    "stale-session", "dead-session", "orphan-pod", "missing-route", "stale-route",
    "route-mismatch", "stuck-spawn", "stuck-stop", "invalid-username-label",
)

#: A hub whose sessions cannot be checked is a hub nobody can see into: page at once.
FAILING_SEVERITY = Severity.CRITICAL

ANNOTATION_USER = "hub.jupyter.org/username"
ANNOTATION_SERVER = "hub.jupyter.org/servername"
NUBLADO_USER_LABEL = "nublado.lsst.io/user"
#: Up to this many servers without a pod are always judged: one node that died
#: takes a few labs with it, and a small hub must still be repaired.
MIN_IMPLAUSIBLE_MISSING = 3
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Settings(CheckConfig):
    """``[checks.sessions]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: Duration = timedelta(seconds=30)
    stuck_spawn_after: Duration = timedelta(minutes=15)
    stuck_stop_after: Duration = timedelta(minutes=10)
    #: KubeSpawner's username slug: ``safe`` (7.x), ``escape`` (older), or
    #: ``auto`` (read ``kubespawner_version`` from the spawners' state).
    slug_scheme: Literal["auto", "safe", "escape"] = "auto"
    #: More running servers than this fraction (and more than MIN_IMPLAUSIBLE_MISSING)
    #: whose pods exist neither in the pod list nor when read by name: the view is wrong
    #: (namespace, selector, kube context), not that many labs gone at once.
    max_missing_fraction: float = Field(0.25, gt=0, le=1)


@dataclass(frozen=True)
class TargetSettings:
    """What detect() needs to know about one hub."""

    hub: str
    cluster: str
    namespace: str
    layout: str
    nublado_prefix: str
    hub_pod_selector: str
    check: Settings
    pod_selector: str = ""
    proxy: bool = False
    #: no ``db_url``: the hub's record is the Hub API's user list (``HubApi.sessions``)
    api_only: bool = False


def targets(check: Settings, inventory: Inventory) -> list[CheckTarget]:
    """One target per hub: its DB, API, proxy routes and pods."""
    result = []
    for name, hub in inventory.hubs.items():
        result.append(CheckTarget(name, _needs(name, hub), TargetSettings(
            hub=name, cluster=hub.cluster, namespace=hub.namespace, layout=hub.layout,
            nublado_prefix=hub.nublado_namespace_prefix,
            hub_pod_selector=hub.hub_pod_selector, check=check,
            pod_selector=hub.user_pod_selector(), proxy=bool(hub.proxy_api_url),
            api_only=hub.db_url is None,
        )))
    return result


def scopes_needed(hub: HubConfig) -> tuple[str, ...]:
    """The scopes this check's reads and actions use on ``hub``'s API, in the README's order.

    ``read:users`` is not among them: ``list:users`` names the users and ``read:servers``
    adds their servers (and lets ``GET /users/{name}`` be read before acting); no other
    field of the user model is read. ``proxy`` only when routes are compared.
    """
    scopes = ("list:users", "read:servers", "admin:server_state", "delete:servers")
    return (*scopes, "proxy") if hub.proxy_api_url else scopes


def _needs(name: str, hub: HubConfig) -> tuple[Need, ...]:
    needs = [Need.bind("hub_scopes", call(HubApi.token_scopes, name,
                                          required=scopes_needed(hub)))]
    if hub.db_url is None:
        needs.append(Need.bind("hub_api", call(HubApi.sessions, name)))
    else:
        needs += [Need.bind("hub_db", call(HubDb.sessions, name)),
                  Need.bind("hub_api", call(HubApi.active_servers, name))]
    if hub.proxy_api_url:
        needs.append(Need.bind("routes", call(Proxy.routes, name)))
    selector = hub.user_pod_selector() or None
    if hub.layout == "nublado":
        needs.append(Need.bind("pods", call(Kube.pods, hub.cluster, label_selector=selector)))
    else:
        needs.append(Need.bind("pods", call(Kube.pods, hub.cluster, namespace=hub.namespace,
                                            label_selector=selector)))
    if hub.hub_pod_selector:
        needs.append(Need.bind("hub_pods", call(Kube.pods, hub.cluster, namespace=hub.namespace,
                                                label_selector=hub.hub_pod_selector)))
    return tuple(needs)


SessionKey = tuple[str, str]  # (user, server name; "" for the default server)


def _subject(key: SessionKey) -> str:
    user, server = key
    return f"{user}/{server}" if server else user


def pod_phase(pod: dict[str, Any]) -> str:
    """``alive``, ``dead``, ``terminating`` or ``unknown``."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating"
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted" or status.get("phase") in ("Failed", "Succeeded"):
        return "dead"
    if status.get("phase") in ("Running", "Pending"):
        return "alive"
    return "unknown"



def is_valid_label(value: str) -> bool:
    """Whether Kubernetes accepts ``value`` as a label value."""
    return len(value) <= 63 and bool(LABEL_VALUE.match(value))


def _pod_key(pod: dict[str, Any], s: TargetSettings) -> SessionKey | None:
    """Which session a pod belongs to, or None when it is not a user server."""
    metadata = pod.get("metadata") or {}
    if s.layout == "nublado":
        # Nublado labels its lab pods with the user; the namespace says it too.
        namespace = metadata.get("namespace") or ""
        if not namespace.startswith(s.nublado_prefix):
            return None
        user = (metadata.get("labels") or {}).get(NUBLADO_USER_LABEL)
        if isinstance(user, str) and user:
            return (user, "")
        user = namespace[len(s.nublado_prefix):]
        return (user, "") if metadata.get("name") == f"{user}-nb" else None
    annotations = metadata.get("annotations") or {}
    user = annotations.get(ANNOTATION_USER)
    if not isinstance(user, str) or not user:
        return None
    server = annotations.get(ANNOTATION_SERVER) or ""
    return (user, server if isinstance(server, str) else "")


def _pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {"namespace": metadata.get("namespace"), "name": metadata.get("name"),
            "uid": metadata.get("uid"), "phase": status.get("phase"),
            "reason": status.get("reason"), "pod_ip": status.get("podIP"),
            "node": (pod.get("spec") or {}).get("nodeName")}


def _running_hub_pod(hub_pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    alive = [p for p in hub_pods if pod_phase(p) == "alive"
             and (p.get("status") or {}).get("phase") == "Running"]
    return alive[0] if len(alive) == 1 else None


def _slug_scheme(s: TargetSettings, running: list[dict[str, Any]]) -> str | None:
    if s.check.slug_scheme != "auto":
        return s.check.slug_scheme
    versions = {str(r["state"].get("kubespawner_version")) for r in running
                if r["state"].get("kubespawner_version")}
    if not versions:
        return None  # nothing tells us; judging would be guessing
    major = [int(v.split(".")[0]) for v in versions if v.split(".")[0].isdigit()]
    return "escape" if major and min(major) < 7 else "safe"


class _Detector(Detector):
    """The state of one detect() call; methods read like the table above."""

    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        super().__init__(NAME, snapshot, now)
        self.s: TargetSettings = snapshot.settings

    def finding(self, kind: str, key: SessionKey | str,  # type: ignore[override]
                severity: Severity, message: str, evidence: dict[str, Any],
                action: Action | None = None) -> None:
        """Report one finding of this hub; ``key`` is a session or a subject."""
        super().finding(kind, key if isinstance(key, str) else _subject(key), severity,
                        message, evidence, action)

    def pending_for(self, mark: str, started: datetime | None,
                    ) -> tuple[timedelta, timedelta | None, datetime]:
        """How long a pending spawn or stop has lasted, on each clock by itself.

        Returns watchdogd's own time since its first sighting (kept in ``mark``), the hub's
        time (its ``Date`` now minus ``started``, or minus the hub's ``Date`` at the first
        sighting, kept in a second mark), or None when the hub sends no ``Date``, and when
        it was first seen.
        """
        since = self.seen_since(mark)
        waited = self.now - since
        hub_now = self.snapshot.server_now.get("hub_api")
        if hub_now is None:
            return waited, None, since
        if started is None:
            kept = _hub_since(self.snapshot.marks, mark) or (
                f"hub-since:{hub_now.isoformat()}:{mark}", hub_now)
            self.marks.add(kept[0])
            started = kept[1]
        return waited, hub_now - started, since

    def rereads(self, key: SessionKey, pod_ref: tuple[Any, Any] | None) -> tuple[Need, ...]:
        """What to read again by name right before acting on this session."""
        needs = [Need.bind("server", call(HubApi.server, self.s.hub, user=key[0],
                                          server_name=key[1]))]
        if pod_ref is not None and pod_ref[0] and pod_ref[1]:
            needs.append(Need.bind("pod", call(Kube.pod, self.s.cluster, namespace=pod_ref[0],
                                               name=pod_ref[1])))
        if self.s.proxy:
            needs.append(Need.bind("routes", call(Proxy.routes, self.s.hub)))
        return tuple(needs)

    def stop_server(self, key: SessionKey, before: dict[str, Any],
                    pod_ref: tuple[Any, Any] | None = None) -> Action:
        return Action.bind("stop-server", call(HubApi.stop_server, self.s.hub, user=key[0],
                                               server_name=key[1]),
                           destructive=True, before=before, verify=self.rereads(key, pod_ref))

    def sync_routes(self, before: dict[str, Any], key: SessionKey | None = None) -> Action:
        verify = self.rereads(key, None) if key is not None else ()
        return Action.bind("sync-routes", call(HubApi.sync_routes, self.s.hub), destructive=False,
                           before=before, verify=verify)

    def delete_pod(self, pod: dict[str, Any], key: SessionKey) -> Action:
        summary = _pod_summary(pod)
        return Action.bind("delete-pod", call(Kube.delete_pod, self.s.cluster,
                                              namespace=summary["namespace"],
                                              name=summary["name"], uid=summary["uid"]),
                           destructive=True, before={"pod": pod_before_image(pod)},
                           verify=self.rereads(key, (summary["namespace"], summary["name"])),
                           about={"annotations": (pod.get("metadata") or {}).get("annotations")})


def _hub_since(marks: dict[str, datetime], mark: str) -> tuple[str, datetime] | None:
    """The ``hub-since:<hub time>:<mark>`` mark kept for ``mark``, and its hub time.

    The time leads and must parse, so that no username can forge another's mark.
    """
    head, tail = "hub-since:", f":{mark}"
    for name in marks:
        if name.startswith(head) and name.endswith(tail):
            when = parse_time(name[len(head):len(name) - len(tail)])
            if when is not None:
                return name, when
    return None


def detect(snapshot: Snapshot, now: datetime) -> Detection:
    """Compare the hub's record (DB or API), proxy routes and pods; plan the hub's own fixes."""
    d = _Detector(snapshot, now)
    s = d.s
    if s.api_only:
        db = snapshot["hub_api"]  # one read: the users, and active servers with their state
        api_servers = db["running"]
    else:
        db = snapshot["hub_db"]
        api_servers = snapshot["hub_api"]
    pods: list[dict[str, Any]] = snapshot["pods"]
    routes: dict[str, dict[str, Any]] | None = snapshot.get("routes")
    hub_pods: list[dict[str, Any]] | None = snapshot.get("hub_pods")

    hub_pod = None
    if hub_pods is not None:
        hub_pod = _running_hub_pod(hub_pods)
        if hub_pod is None:
            raise ImplausibleData(
                f"no single running hub pod in namespace {s.namespace} (selector "
                f"{s.hub_pod_selector}, {len(hub_pods)} found): the pod list cannot be trusted")
    user_routes = {
        (str(r["user"]), str(r.get("server_name") or "")): (path, r)
        for path, r in (routes or {}).items() if r.get("jupyterhub") and r.get("user")
    }
    if not db["users"] and (pods or user_routes or api_servers or db["running"]):
        where = "the Hub API lists" if s.api_only else "the hub database has"
        raise ImplausibleData(f"{where} no users, yet servers, routes or pods exist: that "
                              "read cannot be trusted")

    running: dict[SessionKey, dict[str, Any]] = {
        (r["user"], r["server_name"]): r for r in db["running"]
    }
    active: dict[SessionKey, dict[str, Any]] = {
        (a["user"], a["server_name"]): a for a in api_servers
    }
    by_name = {((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name")):
               p for p in pods}
    by_key: dict[SessionKey, list[dict[str, Any]]] = {}
    for pod in pods:
        key = _pod_key(pod, s)
        if key is not None:
            by_key.setdefault(key, []).append(pod)

    # Absence is only believed where the whole place was seen: a pod the list lacks
    # is read by name (it may live in another namespace, or miss the selector).
    lookups: list[Need] = []
    unseen: list[SessionKey] = []
    for key, row in running.items():
        if key in by_key or _pod_ref(row, s) in by_name:
            continue
        ref = _pod_ref(row, s)
        if ref is None:
            unseen.append(key)  # nothing names its pod: its absence cannot be proven
            continue
        lookup = _lookup_key(ref)
        if lookup not in snapshot.observations:
            lookups.append(Need.bind(lookup, call(Kube.pod, s.cluster, namespace=ref[0],
                                                  name=ref[1])))
            continue
        found = snapshot.observations[lookup]
        if found is None:
            unseen.append(key)
        else:
            by_name[ref] = found
    if lookups:
        return Detection([], 0, lookups=tuple(lookups))
    allowed = max(MIN_IMPLAUSIBLE_MISSING, s.check.max_missing_fraction * len(running))
    if len(unseen) > allowed:
        raise ImplausibleData(
            f"{len(unseen)} of the {len(running)} servers the hub runs have no pod, neither "
            f"in the list (cluster {s.cluster}, namespace {s.namespace}, selector "
            f"{s.pod_selector or 'none'}) nor read by name: the view is probably wrong (the "
            "kube context or cluster, the hub's namespace, or pod_selector), so nothing is "
            "stopped", notify=True)

    claimed: set[int] = set()
    for key, row in running.items():
        _judge_running(d, key, row, active.get(key), by_name, by_key, user_routes, routes,
                       hub_pod, claimed, _pod_ref(row, s) is not None)

    for key, key_pods in by_key.items():
        for pod in key_pods:
            if id(pod) in claimed or key in running or key in active:
                continue
            if pod_phase(pod) in ("alive", "dead"):
                summary = _pod_summary(pod)
                d.finding("orphan-pod", key, Severity.WARNING,
                          f"pod {summary['namespace']}/{summary['name']} ({summary['phase']}) "
                          f"belongs to {_subject(key)!r}, whom the hub does not consider "
                          "running; the hub will never clean it up",
                          {"pod": summary}, d.delete_pod(pod, key))

    for key, (path, route) in user_routes.items():
        if key not in running and key not in active:
            d.finding("stale-route", key, Severity.WARNING,
                      f"the proxy routes {path} to {route.get('target')} but the hub does not "
                      "consider this server running",
                      {"route": path, "target": route.get("target")},
                      d.sync_routes({"route": {path: route}}, key))

    _judge_usernames(d, db)
    subjects = len(set(running) | set(by_key) | set(user_routes))
    return Detection(d.findings, subjects, d.marks)


def _judge_running(
    d: _Detector,
    key: SessionKey,
    row: dict[str, Any],
    api: dict[str, Any] | None,
    by_name: dict[tuple[Any, Any], dict[str, Any]],
    by_key: dict[SessionKey, list[dict[str, Any]]],
    user_routes: dict[SessionKey, tuple[str, dict[str, Any]]],
    routes: dict[str, dict[str, Any]] | None,
    hub_pod: dict[str, Any] | None,
    claimed: set[int],
    absence_known: bool,
) -> None:
    s = d.s
    state = row.get("state") or {}
    ref = _pod_ref(row, s)
    pod = by_name.get(ref) if ref is not None else None
    candidates = by_key.get(key, [])
    if pod is None or pod_phase(pod) == "terminating":
        live = [p for p in candidates if pod_phase(p) == "alive"]
        pod = live[0] if live else (candidates[0] if candidates else pod)
    for candidate in candidates:
        claimed.add(id(candidate))
    if pod is not None:
        claimed.add(id(pod))
    evidence: dict[str, Any] = {} if s.api_only else {
        "hub_db": {"server_id": row.get("server_id"), "url": row.get("url"),
                   "started": row.get("started"), "state": state}}
    if api is None:
        return  # DB and API read a moment apart disagree: judge next pass
    evidence["hub_api"] = {"pending": api.get("pending"), "ready": api.get("ready"),
                           "started": api.get("started")}
    if s.api_only:
        evidence["hub_api"]["state"] = state
    pending = api.get("pending")
    if pending == "stop":
        waited, hub_waited, since = d.pending_for(f"pending-stop:{_subject(key)}", None)
        if waited >= s.check.stuck_stop_after and (hub_waited is None
                                                    or hub_waited >= s.check.stuck_stop_after):
            action = None
            if hub_pod is not None:
                meta = hub_pod.get("metadata") or {}
                namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
                action = Action.bind("restart-hub", call(Kube.delete_pod, s.cluster,
                                                         namespace=namespace, name=name,
                                                         uid=meta.get("uid")),
                                     destructive=True, before={"pod": _pod_summary(hub_pod)},
                                     verify=d.rereads(key, (namespace, name)))
            d.finding("stuck-stop", key, Severity.CRITICAL,
                      f"the hub has been stopping {_subject(key)!r} for "
                      f"{_minutes(waited)} minutes; it refuses to start or stop it until the "
                      "stop finishes (a hub restart clears it)",
                      {**evidence, "pending_since": since.isoformat(),
                       "hub_pod": _pod_summary(hub_pod) if hub_pod is not None else None},
                      action)
        return
    if pending:
        # "started" is the hub's clock; its age is taken on the hub's clock (the Date of
        # its answer) and must agree with watchdogd's own sighting of this very spawn
        # (same started): a skew, or a clock step on either side, alone never stops one.
        started = api.get("started") or row.get("started")
        waited, hub_waited, since = d.pending_for(f"pending-spawn:{_subject(key)}:{started}",
                                                  parse_time(started))
        limit = s.check.stuck_spawn_after
        if waited >= limit and (hub_waited is None or hub_waited >= limit):
            d.finding("stuck-spawn", key, Severity.WARNING,
                      f"the spawn of {_subject(key)!r} has been pending ({pending}) for "
                      f"{_minutes(max(waited, hub_waited or waited))} minutes",
                      {**evidence, "pending_since": since.isoformat()},
                      d.stop_server(key, evidence, ref))
        return
    if pod is None:
        if ref is None and not absence_known:
            return
        if key in user_routes:
            path, data = user_routes[key]
            evidence["route"] = {"path": path, "target": data.get("target"),
                                 "last_activity": data.get("last_activity")}
        where = f"pod {ref[0]}/{ref[1]}" if ref is not None else "its pod"
        d.finding("stale-session", key, Severity.CRITICAL,
                  f"the hub thinks {_subject(key)!r} is running, but {where} does not exist; "
                  "the hub will refuse to start or stop it", evidence,
                  d.stop_server(key, evidence, ref))
        return
    phase = pod_phase(pod)
    evidence["pod"] = _pod_summary(pod)
    if phase == "dead" and key in user_routes:
        path, data = user_routes[key]
        evidence["route"] = {"path": path, "target": data.get("target"),
                             "last_activity": data.get("last_activity")}
    if phase == "dead":
        d.finding("dead-session", key, Severity.CRITICAL,
                  f"the hub thinks {_subject(key)!r} is running, but its pod is "
                  f"{evidence['pod']['reason'] or evidence['pod']['phase']}", evidence,
                  d.stop_server(key, evidence, (evidence["pod"]["namespace"],
                                                evidence["pod"]["name"])))
        return
    if phase != "alive" or routes is None:
        return
    route = user_routes.get(key)
    if route is None:
        d.finding("missing-route", key, Severity.WARNING,
                  f"{_subject(key)!r} is running but the proxy has no route to it; the user "
                  "cannot reach the server", evidence, d.sync_routes(evidence, key))
        return
    path, data = route
    target = data.get("target")
    elsewhere: str | None
    if s.api_only:
        elsewhere = _target_elsewhere(target, pod, state) if s.layout == "kubespawner" else None
        expects = f"the pod is at {elsewhere}"
    else:
        expected = row.get("url")
        elsewhere = str(expected) if expected and target != expected else None
        expects = f"the hub expects {elsewhere}"
    if elsewhere:
        evidence["route"] = {"path": path, "target": target}
        d.finding("route-mismatch", key, Severity.WARNING,
                  f"the proxy sends {path} to {target}, {expects}",
                  evidence, d.sync_routes(evidence, key))


def _target_elsewhere(target: Any, pod: dict[str, Any], state: dict[str, Any]) -> str | None:
    """The pod's address when a route ``target`` points to another host, else None.

    The Hub API does not show the server's address (the DB's ``servers`` row): KubeSpawner
    serves on the pod's IP, or on its ``dns_name`` (kept in the spawner state) with
    services enabled, so a host that is neither is another place. The port is not known,
    so not compared; a pod without an IP yet decides nothing.
    """
    status = pod.get("status") or {}
    listed = [status.get("podIP")] + [p.get("ip") for p in status.get("podIPs") or []
                                      if isinstance(p, dict)]
    ips = {ip for ip in listed if isinstance(ip, str) and ip}
    if not ips or not isinstance(target, str):
        return None
    try:
        host = urlsplit(target).hostname
    except ValueError:
        host = None
    if host in ips or (host and host == str(state.get("dns_name") or "").lower()):
        return None
    return ", ".join(sorted(ips))


def _judge_usernames(d: _Detector, db: dict[str, Any]) -> None:
    s = d.s
    if s.layout == "nublado":
        limit = 63 - len(s.nublado_prefix)
        for name in db["users"]:
            if len(name) > limit or not DNS_LABEL.match(name):
                d.finding("invalid-username-label", name, Severity.WARNING,
                          f"{s.nublado_prefix}{name} is not a valid namespace name; this user's "
                          "lab cannot be created", {"namespace": s.nublado_prefix + name})
        return
    if _slug_scheme(s, db["running"]) != "escape":
        return  # the safe scheme hashes any name into a valid label
    for name in db["users"]:
        slug = escape_slug(name)
        if not is_valid_label(slug):
            d.finding("invalid-username-label", name, Severity.WARNING,
                      f"KubeSpawner (escape scheme) would label this user's pod {slug[:70]!r}, "
                      "which Kubernetes rejects: the server cannot start. Rename the user or "
                      "move to KubeSpawner 7's safe slug scheme.", {"label": slug})


def _pod_ref(row: dict[str, Any], s: TargetSettings) -> tuple[str, str] | None:
    """Where the hub's record says this server's pod is: (namespace, name), or None."""
    state = row.get("state") or {}
    namespace, name = state.get("namespace"), state.get("pod_name")
    if isinstance(namespace, str) and namespace and isinstance(name, str) and name:
        return (namespace, name)
    if s.layout == "nublado" and not row.get("server_name"):
        user = str(row.get("user") or "")
        return (f"{s.nublado_prefix}{user}", f"{user}-nb") if user else None
    return None


def _lookup_key(ref: tuple[str, str]) -> str:
    return f"pod:{ref[0]}/{ref[1]}"


def verify(finding: Finding, reads: dict[str, Any], first_seen: datetime) -> str | None:
    """Whether a session finding still holds on the objects read again by name.

    ``reads`` has ``server`` (the user's server in the Hub API now, or None),
    ``pod`` (the pod the finding names, or None) and ``routes`` (when a proxy is
    configured). Returns None to act, or why not.
    """
    server = reads.get("server")
    evidence = finding.evidence
    seen_api = evidence.get("hub_api") or {}
    kind = finding.kind
    if kind in ("orphan-pod", "stale-route"):
        if server is not None:
            return f"the hub now runs {finding.subject!r}"
        if kind == "orphan-pod":
            pod = reads.get("pod")
            seen = evidence.get("pod") or {}
            if pod is None:
                return "the pod is already gone"
            if (pod.get("metadata") or {}).get("uid") != seen.get("uid"):
                return "the pod was replaced since it was observed"
        elif _route_of(finding.subject, reads.get("routes")) is None:
            return "the route is already gone"
        return None
    if server is None:
        return f"the hub no longer runs {finding.subject!r}"
    if kind == "stuck-stop":
        hub_pod = reads.get("pod")
        seen_hub = (evidence.get("hub_pod") or {}).get("uid")
        if server.get("pending") != "stop":
            return f"the stop is no longer pending ({server.get('pending')})"
        if hub_pod is None or (seen_hub and (hub_pod.get("metadata") or {}).get("uid")
                               != seen_hub):
            return "the hub pod was replaced since it was observed"
        return None
    if server.get("started") != seen_api.get("started"):
        return (f"the hub's record of {finding.subject!r} changed (started "
                f"{server.get('started')}, was {seen_api.get('started')}): it was restarted")
    seen_state = (evidence.get("hub_db") or seen_api).get("state") or {}
    state = server.get("state") or {}
    if state and seen_state and state.get("pod_name") != seen_state.get("pod_name"):
        return "the hub's spawner state names another pod now"
    if kind == "stuck-spawn":
        return None if server.get("pending") == seen_api.get("pending") else (
            f"the spawn is no longer pending ({server.get('pending')})")
    if server.get("pending"):
        return f"the hub is already handling it (pending {server.get('pending')})"
    pod = reads.get("pod")
    if kind == "stale-session" and pod is not None and pod_phase(pod) in ("alive", "unknown"):
        meta = pod.get("metadata") or {}
        return (f"pod {meta.get('namespace')}/{meta.get('name')} exists "
                f"({(pod.get('status') or {}).get('phase')}): it is outside the listed "
                "namespace or selector, not gone")
    if kind == "dead-session" and pod is not None:
        seen_pod = evidence.get("pod") or {}
        if (pod.get("metadata") or {}).get("uid") != seen_pod.get("uid"):
            return "the pod was replaced since it was observed"
        if pod_phase(pod) != "dead":
            return f"the pod is {pod_phase(pod)} now"
    route = _route_of(finding.subject, reads.get("routes"))
    if kind in ("stale-session", "dead-session") and route is not None and server.get("ready"):
        # Both times are the proxy's own clock (the pass's read and the re-read): CHP only
        # counts successful answers as activity, so an advance means the server answers.
        # Comparing with watchdogd's clock would let a skewed proxy clock decide.
        active = parse_time(route.get("last_activity"))
        seen = parse_time((evidence.get("route") or {}).get("last_activity"))
        if active is not None and seen is not None and active > seen:
            return (f"the server is ready and its route carried traffic at {active:%H:%M:%S} "
                    "since the pass read it: the server answers")
    if kind == "missing-route" and route is not None:
        return "the route is back"
    if kind == "route-mismatch" and route is None:
        return "the route is gone; the hub adds it again itself"
    return None


def _route_of(subject: str, routes: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """The proxy route of a session subject (``user`` or ``user/server``), if any."""
    if not routes:
        return None
    user, _, server = subject.partition("/")
    for route in routes.values():
        if (route.get("jupyterhub") and route.get("user") == user
                and str(route.get("server_name") or "") == server):
            return route
    return None


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)
