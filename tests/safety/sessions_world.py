"""A hub deployment to break at random: the model that drifts it, the oracle that judges.

:class:`SessionsModel` wraps a :class:`~watchdogd.sim.world.World` (KubeSim, ChpSim, HubSim
over real HTTP) and changes it between passes the way production does: servers start and
stop, pods vanish behind the hub's back, routes go missing, spawns and stops hang.

:class:`SessionsTruth` is the oracle. It reads the simulators' own state (the hub's SQLite
file, the pods in the Kubernetes store, the proxy's table) and says whether an action is
justified, with its own reading of the rules of DESIGN.md, not with watchdogd's code:

* ``stop-server`` only for a server the hub DB calls running, not already stopping, whose
  pod is gone or dead, or whose spawn has been pending longer than ``stuck_spawn_after``;
* ``delete-pod`` only for that very pod (same uid), a user pod of a server the hub does not
  consider running;
* ``restart-hub`` only for the running hub pod, and only while a stop has been pending for
  longer than ``stuck_stop_after`` (since the first pass that could see it);
* ``sync-routes`` only while the proxy's table disagrees with the hub.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tests.safety.faults import (
    DeleteWatch,
    DownFault,
    Fault,
    FileFault,
    HttpFault,
    LockFault,
    Tap,
    TapFault,
    wrap_method,
)
from tests.safety.harness import Driver, Truth
from watchdogd.sim._http import parse_iso
from watchdogd.sim.hub import route_key
from watchdogd.sim.world import SimClock, World, dumps_toml
from watchdogd.store import ActionRecord

__all__ = ["NAMED", "PROBLEMS", "SafeWorld", "SessionsModel", "SessionsTruth", "sessions_fault"]

Key = tuple[str, str]

#: problem kinds the model can plant (World injectors), on default or named servers
PROBLEMS = ("stale-session", "dead-session", "orphan-pod", "missing-route", "stale-route",
            "route-mismatch", "stuck-spawn", "stuck-stop")
NAMED = tuple(f"{kind}@gpu" for kind in PROBLEMS)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts (``extra`` wins)."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


class SafeWorld(World):
    """A :class:`World` whose configuration takes extra keys (page sizes, notify...)."""

    def __init__(self, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.extra = extra or {}
        super().__init__(*args, **kwargs)

    def start(self) -> SafeWorld:
        super().start()
        return self

    def __enter__(self) -> SafeWorld:
        return self.start()

    def config_data(self) -> dict[str, Any]:
        return merge(super().config_data(), self.extra)

    def write_config(self) -> Any:
        self.config_path.write_text(dumps_toml(self.config_data()), encoding="utf-8")
        return self.config_path


def _alive(pod: dict[str, Any] | None) -> bool:
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return False
    return status.get("phase") in ("Running", "Pending")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    from datetime import UTC

    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class SessionsTruth(Truth):
    """The hub side of a world, read from the simulators' own state."""

    def __init__(self, world: World, now: datetime, pending_since: dict[Key, datetime], *,
                 stuck_spawn_after: timedelta, stuck_stop_after: timedelta) -> None:
        self.now = now
        self.hub_name = world.hub_name
        self.stuck_spawn_after = stuck_spawn_after
        self.stuck_stop_after = stuck_stop_after
        hub = world.hub
        conn = sqlite3.connect(f"file:{hub.db_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT users.name, spawners.name, spawners.state, spawners.started, "
                "servers.proto, servers.ip, servers.port FROM spawners "
                "JOIN users ON users.id = spawners.user_id "
                "LEFT JOIN servers ON servers.id = spawners.server_id "
                "WHERE spawners.server_id IS NOT NULL").fetchall()
        finally:
            conn.close()
        self.running: dict[Key, dict[str, Any]] = {}
        for user, name, state, started, proto, ip, port in rows:
            self.running[(user, name or "")] = {
                "state": json.loads(state) if state else {}, "started": _parse(started),
                "target": f"{proto or 'http'}://{ip}:{port}"}
        self.pending = {key: hub.pending(*key) for key in self.running}
        for key, pending in self.pending.items():
            if pending == "stop":
                pending_since.setdefault(key, now)
        for key in [k for k in pending_since if self.pending.get(k) != "stop"]:
            del pending_since[key]
        self.pending_since = dict(pending_since)
        # The whole cluster, not the namespace watchdogd is configured to list: the oracle
        # must know where pods really are.
        pods = world.kube.list("Pod")
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        self.pods_of: dict[Key, list[dict[str, Any]]] = {}
        for pod in pods:
            meta = pod["metadata"]
            if (meta.get("labels") or {}).get("component") != "singleuser-server":
                continue
            user = (meta.get("annotations") or {}).get("hub.jupyter.org/username")
            if user:
                server = (meta.get("annotations") or {}).get("hub.jupyter.org/servername", "")
                self.pods_of.setdefault((user, server), []).append(pod)
        self.routes = world.chp.routes
        self.hub_pod = hub.hub_pod
        self.namespace = world.namespace

    # -- the rules ------------------------------------------------------------------------------

    def _pod_alive(self, key: Key) -> bool:
        state = self.running.get(key, {}).get("state") or {}
        at_state = self.pods.get((state.get("namespace"), state.get("pod_name")))
        return _alive(at_state) or any(_alive(p) for p in self.pods_of.get(key, []))

    def route_drift(self) -> list[str]:
        """Where the proxy's table and the hub disagree."""
        drift = []
        for key, row in self.running.items():
            if self.pending.get(key):
                continue
            route = self.routes.get(route_key(*key))
            if route is None or route.get("target") != row["target"]:
                drift.append(f"{key}: route {route and route.get('target')} != {row['target']}")
        for path, route in self.routes.items():
            if route.get("jupyterhub") and route.get("user"):
                key = (str(route["user"]), str(route.get("server_name") or ""))
                if key not in self.running:
                    drift.append(f"{path}: route for a server that is not running")
        return drift

    def justify(self, row: ActionRecord) -> str | None:
        params = row.params
        if row.name == "stop-server":
            key = (params.get("user"), params.get("server_name") or "")
            if key not in self.running:
                return "the hub does not consider the server running"
            pending = self.pending.get(key)
            if pending == "stop":
                return "a stop is already pending"
            if pending == "spawn":
                started = self.running[key]["started"]
                if started is None or self.now - started < self.stuck_spawn_after:
                    return "the spawn is pending but not yet stuck"
                return None
            if self._pod_alive(key):
                return "its pod is alive"
            return None
        if row.name in ("delete-pod", "restart-hub"):
            pod = self.pods.get((params.get("namespace"), params.get("name")))
            if pod is None:
                return "no such pod"
            if params.get("uid") and pod["metadata"].get("uid") != params.get("uid"):
                return "a different pod (uid) now has that name"
            if row.name == "restart-hub":
                if pod["metadata"]["name"] != self.hub_pod:
                    return "not the hub pod"
                waited = [self.now - s for s in self.pending_since.values()]
                if not waited or max(waited) < self.stuck_stop_after:
                    return "no stop has been pending long enough"
                return None
            meta = pod["metadata"]
            user = (meta.get("annotations") or {}).get("hub.jupyter.org/username")
            if not user:
                return "not a user pod"
            key = (user, (meta.get("annotations") or {}).get("hub.jupyter.org/servername", ""))
            if key in self.running:
                return "the hub considers its server running"
            return None
        if row.name == "sync-routes":
            return None if self.route_drift() else "the routes agree with the hub"
        return f"unknown action {row.name}"

    def subjects(self, check: str, target: str) -> int | None:
        if check != "sessions":
            return None
        keys = set(self.running) | set(self.pods_of)
        for route in self.routes.values():
            if route.get("jupyterhub") and route.get("user"):
                keys.add((str(route["user"]), str(route.get("server_name") or "")))
        return len(keys)

    def broken(self) -> list[str]:
        """What an operator would call broken (for messages)."""
        out = [f"{k}: no live pod" for k in self.running
               if not self.pending.get(k) and not self._pod_alive(k)]
        out += [f"{k}: orphan pod" for k, pods in self.pods_of.items()
                if k not in self.running and any(_alive(p) for p in pods)]
        return out + self.route_drift()


class SessionsModel:
    """A hub world that drifts, plus the bookkeeping the oracle needs."""

    STUCK_SPAWN_AFTER = timedelta(minutes=15)
    STUCK_STOP_AFTER = timedelta(minutes=10)
    PASS_EVERY = timedelta(minutes=20)

    def __init__(self, world: World, clock: SimClock, *, hub_page_cap: int | None = None) -> None:
        self.world = world
        self.clock = clock
        self._names = (f"u{i}" for i in itertools.count())
        self.healthy: list[str] = []
        self.planted: dict[str, str] = {}
        self.pending_since: dict[Key, datetime] = {}
        self.hub_tap = Tap(world.hub, page_cap=hub_page_cap)
        self.chp_tap = Tap(world.chp)
        self.deletes = DeleteWatch(world.kube, self._pod_harm)
        self.stop_harms: list[str] = []
        wrap_method(world.hub, "handle", self._watch_stops)

    # -- harm, judged at the moment a request arrives ------------------------------------------

    def _pod_harm(self, victim: dict[str, Any]) -> str | None:
        meta = victim["metadata"]
        if meta["name"] == self.world.hub.hub_pod:
            if not any(self.world.hub.pending(u, s) == "stop" for u, s in self.pending_since):
                return "the hub was restarted with no stop pending"
            return None
        user = (meta.get("annotations") or {}).get("hub.jupyter.org/username")
        server = (meta.get("annotations") or {}).get("hub.jupyter.org/servername", "")
        if user and self.world.hub.is_running(user, server):
            return f"the hub considers {user}'s server running"
        return None

    def _watch_stops(self, real: Any) -> Any:
        hub = self.world.hub

        def handle(req: Any) -> Any:
            if req.method == "DELETE" and "/users/" in req.path:
                parts = [p for p in req.path.split("/") if p]
                user = parts[parts.index("users") + 1]
                server = parts[-1] if parts[-2] == "servers" else ""
                info = hub.spawner(user, server)
                if (info is not None and info["server_id"] is not None
                        and hub.pending(user, server) is None):
                    state = info["state"] or {}
                    pod = self.world.kube.get("Pod", str(state.get("pod_name")),
                                              state.get("namespace"))
                    if _alive(pod):
                        self.stop_harms.append(f"stopped {user}/{server}: its pod was alive")
                if info is not None and hub.pending(user, server) == "spawn":
                    started = parse_iso(str(info.get("started") or ""))
                    if started is None or self.clock() - started < self.STUCK_SPAWN_AFTER:
                        self.stop_harms.append(
                            f"stopped {user}/{server} while it was starting (spawn pending "
                            f"since {started}, less than {self.STUCK_SPAWN_AFTER})")
            return real(req)

        return handle

    def harms(self) -> list[str]:
        found = self.deletes.drain() + self.stop_harms
        self.stop_harms = []
        return found

    def name(self) -> str:
        return next(self._names)

    # -- drift ------------------------------------------------------------------------------------

    def start_healthy(self) -> str:
        user = self.name()
        self.world.hub.start_server(user)
        self.healthy.append(user)
        return user

    def start_spawning(self) -> str:
        """A user starts a server right now: the spawn is pending, as every spawn is at
        first; only after ``stuck_spawn_after`` (by the hub's clock) is it stuck."""
        user = self.name()
        self.world.hub.start_server(user, pending="spawn", started=self.clock())
        return user

    def stop_healthy(self, index: int) -> str | None:
        if not self.healthy:
            return None
        user = self.healthy.pop(index % len(self.healthy))
        self.world.hub.stop_server(user)
        return user

    def plant(self, kind: str) -> str:
        """Plant one problem for a new user; ``kind@NAME`` plants it on the named server."""
        kind, _, server = kind.partition("@")
        user = self.name()
        w = self.world
        injectors: dict[str, Callable[..., object]] = {
            "stale-session": w.stale_session, "dead-session": w.dead_session,
            "orphan-pod": w.orphan_pod, "missing-route": w.missing_route,
            "stale-route": w.stale_route, "route-mismatch": w.route_mismatch,
            "stuck-spawn": w.stuck_spawn, "stuck-stop": w.stuck_stop,
        }
        injectors[kind](user, server_name=server)
        self.planted[user] = kind
        return user

    def restart_hub(self) -> None:
        """The hub pod is deleted; wait until the simulated Deployment has replaced it."""
        hub = self.world.hub
        before = hub.restarts
        assert hub.hub_pod is not None
        self.world.kube.delete("Pod", hub.hub_pod, self.world.namespace)
        deadline = time.monotonic() + 10
        while hub.restarts == before or hub.hub_pod is None or self.world.kube.get(
                "Pod", hub.hub_pod, self.world.namespace) is None:
            if time.monotonic() > deadline:
                raise AssertionError("the simulated hub did not restart")
            time.sleep(0.01)

    def drift(self, event: tuple[str, Any]) -> None:
        kind, arg = event
        if kind == "start":
            self.start_healthy()
        elif kind == "stop":
            self.stop_healthy(int(arg))
        elif kind == "plant":
            self.plant(str(arg))
        elif kind == "restart":
            self.restart_hub()
        elif kind == "spawning":
            self.start_spawning()

    # -- the oracle -------------------------------------------------------------------------------

    def truth(self) -> SessionsTruth:
        return SessionsTruth(self.world, self.clock(), self.pending_since,
                             stuck_spawn_after=self.STUCK_SPAWN_AFTER,
                             stuck_stop_after=self.STUCK_STOP_AFTER)

    def mutations(self) -> dict[str, Callable[[], int]]:
        hub, kube = self.world.hub, self.world.kube

        def hub_writes() -> int:
            return sum(1 for method, _ in list(hub.requests) if method in ("DELETE", "POST"))

        def kube_writes() -> int:
            return sum(1 for method, _ in list(kube.requests)
                       if method in ("DELETE", "POST", "PUT", "PATCH"))

        return {"hubapi": hub_writes, "kube": kube_writes}

    def driver(self, *, notifier: Any = None,
               skew: Callable[[], timedelta] | None = None) -> Driver:
        """A refereed driver; ``skew()`` puts watchdogd's clock ahead of the world's (or
        behind), and may change between passes (an NTP step, a run from another host)."""
        clock = self.clock if skew is None else (lambda: self.clock() + skew())
        return Driver(self.world.load_config(), clock, ["sessions"], self.truth,
                      self.mutations(), advance=lambda: self.clock.advance(
                          seconds=self.PASS_EVERY.total_seconds()),
                      settle=self.world.hub.check_restart, harms=self.harms,
                      notifier=notifier)

    # -- faults -----------------------------------------------------------------------------------

    def change_in_flight(self) -> None:
        """The world changes while a pass reads it: a healthy server stops, another starts.

        The number of active users stays the same, so offset paging cannot notice: the
        hub API's list may skip a running user and still show the stopped one.
        """
        self.stop_healthy(0)
        self.start_healthy()

    def grow_in_flight(self) -> None:
        """A server starts while a pass reads the world (the active total grows)."""
        self.start_healthy()


def sessions_fault(model: SessionsModel, source: str, kind: str) -> Fault:
    """One fault of ``kind`` on ``source`` (hubapi, proxy, kube, hubdb) of a sessions world."""
    w = model.world
    hang = 1.5  # the world's client timeout is 0.5s
    once = kind.endswith("-once")  # the first request hangs, the source's retry gets through
    if source == "hubdb":
        if kind == "locked":
            return LockFault("hubdb", w.hub.db_path)
        return FileFault("hubdb", w.hub.db_path, kind)
    if source == "hubapi":
        sim: Any = w.hub
        if kind == "down":
            return DownFault("hubapi", sim.down, sim.up)
        if kind in ("short-page", "cut-body"):
            return TapFault("hubapi", model.hub_tap, kind, "/users")
        if kind == "change-between-pages":
            return TapFault("hubapi", model.hub_tap, kind, "/users",
                            before=model.change_in_flight, unstable=True)
        if kind == "grow-between-pages":
            return TapFault("hubapi", model.hub_tap, "change-between-pages", "/users",
                            before=model.grow_in_flight, unstable=True)
        if kind.startswith("hang"):
            return HttpFault("hubapi", sim, kind, status=500, hang=hang, path="/users$",
                             times=1 if once else None)
        if kind == "stop-fails":
            return HttpFault("hubapi", sim, kind, status=500, method="DELETE")
        return HttpFault("hubapi", sim, kind, status=int(kind), path="/users$", times=None)
    if source == "proxy":
        sim = w.chp
        if kind == "down":
            return DownFault("proxy", sim.down, sim.up)
        if kind == "cut-body":
            return TapFault("proxy", model.chp_tap, kind, "/api/routes")
        if kind == "change-between-reads":
            return TapFault("proxy", model.chp_tap, "change-before", "/api/routes",
                            before=model.change_in_flight, unstable=True)
        if kind.startswith("hang"):
            return HttpFault("proxy", sim, kind, status=500, hang=hang, path="/api/routes$",
                             times=1 if once else None)
        return HttpFault("proxy", sim, kind, status=int(kind), path="/api/routes$")
    if source == "kube":
        sim = w.kube
        if kind == "down":
            return DownFault("kube", sim.down, sim.up)
        if kind == "410":
            return _Expire(sim)
        if kind.startswith("hang"):
            return HttpFault("kube", sim, kind, path_regex=r"/pods$", status=500, hang=hang,
                             times=1 if once else None)
        if kind == "malformed":
            return HttpFault("kube", sim, kind, path_regex=r"/pods$", status=200)
        if kind == "delete-fails":
            return HttpFault("kube", sim, kind, path_regex=r"/pods/[^/]+$", status=500)
        return HttpFault("kube", sim, kind, path_regex=r"/pods$", status=int(kind))
    raise ValueError(f"unknown fault source {source}")


class _Expire(Fault):
    """The next paginated pod list answers 410 on its first continue (an etcd compaction)."""

    source = "kube"
    label = "410"

    def __init__(self, sim: Any) -> None:
        self.sim = sim

    def arm(self) -> None:
        self.sim.expire_continue_after(1)

    def disarm(self) -> None:
        with self.sim._store.lock:
            self.sim._store.expire_after_pending = None


#: fault kinds per source that hypothesis picks from
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "hubdb": ("missing", "corrupt", "empty", "locked"),
    "hubapi": ("down", "500", "503", "401", "403", "hang", "hang-once", "short-page", "cut-body",
               "change-between-pages", "grow-between-pages", "stop-fails"),
    "proxy": ("down", "500", "403", "hang", "hang-once", "cut-body", "change-between-reads"),
    "kube": ("down", "500", "401", "410", "hang", "hang-once", "malformed", "delete-fails"),
}
