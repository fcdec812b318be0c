"""A whole simulated deployment: Kubernetes, the proxy and JupyterHub, plus a watchdogd config.

:class:`World` starts a :class:`~watchdogd.sim.kube.KubeSim`, a :class:`~watchdogd.sim.chp.ChpSim`
and a :class:`~watchdogd.sim.hub.HubSim` on free ports of 127.0.0.1, writes the secret files
(hub API token, hub DB URL, proxy token, state URL) and a complete watchdogd TOML
configuration into its directory, and offers one *injector* per finding kind of the sessions
check. Each injector breaks the world the way production breaks, through the same doors
(a pod deleted behind the hub's back, a stop whose pod delete failed, a stop that never
finishes...), and records what it planted in :attr:`World.planted`::

    with World() as world:
        world.healthy(users=12, running=8)
        world.stale_session("niklaus")
        engine = world.engine()
        engine.run_pass()          # seen once: unconfirmed
        engine.run_pass()          # confirmed: stop-server runs through the Hub API
        assert not world.hub.is_running("niklaus")

A world exists to be repaired, so its configuration has remediation **on**: ``dry_run =
false``, ``confirm_after = 2``, ``min_age = "0s"``, and the session actions ``stop-server``,
``sync-routes`` and ``delete-pod`` enabled (``restart-hub`` is not: restarting a hub is an
operator's call). ``World(remediation={...}, sessions={...}, checks={...})`` overrides any
of it.

Plugging in more of the world
-----------------------------

Other simulated systems (an OpenStack cloud, nodes and their pressure, certificates) join as
*parts*: any object with a ``name`` and three methods (:class:`WorldPart`)::

    class CloudPart:
        name = "openstack"
        def start(self, world: World) -> None: ...            # start servers; world.kube is up
        def config(self, world: World) -> dict[str, Any]: ...  # TOML fragment, deep-merged:
                                                               # {"clouds": {...}, "checks": {...}}
        def stop(self) -> None: ...

Pass them as ``World(parts=[CloudPart()])`` or call :meth:`World.add_part` (on a running
world the part starts at once and the config file is rewritten). Parts are started after the
hub side and stopped before it, in reverse order; ``world.parts["openstack"]`` finds one
again, so a part's own injectors stay on the part (``world.parts["openstack"].stuck_volume(...)``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import tomli_w

from watchdogd.sim._http import free_port, utcnow
from watchdogd.sim.chp import ChpSim
from watchdogd.sim.hub import HubSim, Layout, route_key
from watchdogd.sim.kube import KubeSim

if TYPE_CHECKING:
    from watchdogd.config import Config
    from watchdogd.engine import Engine

__all__ = [
    "EXPECTED_ACTION",
    "HEALTHY_NAMES",
    "NODES",
    "Planted",
    "SimClock",
    "World",
    "WorldPart",
    "dumps_toml",
    "healthy_node",
]

#: The action the sessions check plans for each kind an injector plants (None: notify only).
EXPECTED_ACTION: dict[str, str | None] = {
    "stale-session": "stop-server",
    "dead-session": "stop-server",
    "orphan-pod": "delete-pod",
    "missing-route": "sync-routes",
    "stale-route": "sync-routes",
    "route-mismatch": "sync-routes",
    "stuck-spawn": "stop-server",
    "stuck-stop": "restart-hub",
    "invalid-username-label": None,
}

#: Names :meth:`World.healthy` gives its users, in order (then ``user-13``...).
HEALTHY_NAMES = (
    "ada", "alan", "barbara", "claude", "dennis", "edsger", "frances", "grace", "john", "ken",
    "linus", "margaret", "katherine", "leslie", "tony", "hedy", "alonzo", "kristen", "robin",
    "shafi",
)

DEFAULT_REMEDIATION: dict[str, Any] = {
    "dry_run": False,
    "confirm_after": 2,
    "min_age": "0s",
    "max_per_pass": 5,
    "max_per_hour": 20,
    "enabled": ["stop-server", "sync-routes", "delete-pod"],
}

_EVICTED_MESSAGE = ("The node was low on resource: ephemeral-storage. Threshold quantity: "
                    "1Gi, available: 512Mi. Container notebook was using 9Gi, request is 0, "
                    "has larger consumption of ephemeral-storage.")


@runtime_checkable
class WorldPart(Protocol):
    """Another simulated system that joins a :class:`World` (see the module docstring)."""

    name: str

    def start(self, world: World) -> None:
        """Start serving; the hub side of ``world`` already runs."""

    def config(self, world: World) -> dict[str, Any]:
        """The TOML fragment this part adds (deep-merged into the world's configuration)."""

    def stop(self) -> None:
        """Stop serving (idempotent)."""


#: The nodes of a world's cluster: (name, ``hub.jupyter.org/node-purpose``). HubSim puts user
#: pods on ``node-1``..``node-3`` and the hub pod on ``core-1``.
NODES = (("core-1", "core"), ("node-1", "user"), ("node-2", "user"), ("node-3", "user"))


def healthy_node(name: str, purpose: str = "user") -> dict[str, Any]:
    """A Ready Node without pressure, roomy disk and a few cached images (z2jh labels)."""
    now = "2026-11-01T00:00:00Z"
    conditions = [
        {"type": kind, "status": "False", "reason": f"KubeletHasSufficient{word}",
         "message": f"kubelet has sufficient {word.lower()}", "lastHeartbeatTime": now,
         "lastTransitionTime": now}
        for kind, word in (("MemoryPressure", "Memory"), ("DiskPressure", "Disk"),
                           ("PIDPressure", "PID"))
    ]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
                       "lastTransitionTime": now})
    resources = {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "200Gi", "pods": "110"}
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "hub.jupyter.org/node-purpose": purpose}},
        "spec": {},
        "status": {
            "conditions": conditions, "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.32.4", "osImage": "Ubuntu 24.04.3 LTS"},
            "images": [
                {"names": ["quay.io/jupyter/base-notebook:2026-11-17"], "sizeBytes": 1_400_000_000},
                {"names": ["quay.io/jupyterhub/k8s-hub:4.3.1"], "sizeBytes": 420_000_000},
            ],
        },
    }


class SimClock:
    """A clock that only moves when told to: ``clock.advance(minutes=5)``.

    Pass one to :class:`World` to share it between the simulators and the engine, so that
    "stuck for 10 minutes" can happen in a test that takes a second.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = (start or datetime.now(UTC)).astimezone(UTC)
        self._free = False

    def __call__(self) -> datetime:
        if self._free:
            self.now = max(self.now, datetime.now(UTC))
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move forward by ``timedelta(**delta)``; returns the new time."""
        self.now += timedelta(**delta)
        return self.now

    def run_free(self) -> None:
        """From now on follow the real time (never going back), e.g. when a world built
        in simulated time is handed to a real ``watchdogd check``."""
        self._free = True


@dataclass(frozen=True)
class Planted:
    """One problem an injector put into the world."""

    kind: str
    subject: str
    story: str  # what was done to the world, in words
    action: str | None  # what the sessions check plans for it (None: notify only)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def _toml_ready(value: Any) -> Any:
    # What watchdogd's configuration reads that TOML has no type for: a duration is a string
    # ("300s"), and None means "leave the key out".
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, list | tuple):
        return [_toml_ready(v) for v in value]
    return value


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a watchdogd configuration (nested dicts, durations as timedelta) as TOML."""
    return tomli_w.dumps(_toml_ready(data))


class World:
    """KubeSim + ChpSim + HubSim and a watchdogd configuration for them."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        notify_url: str | None = None,
        namespace: str = "jhub",
        layout: Layout = "kubespawner",
        hub_name: str = "main",
        cluster_name: str = "sim",
        kubespawner_version: str = "7.0.0",
        remediation: dict[str, Any] | None = None,
        sessions: dict[str, Any] | None = None,
        checks: dict[str, dict[str, Any]] | None = None,
        parts: Iterable[WorldPart] = (),
        clock: Callable[[], datetime] = utcnow,
        timeout: str = "5s",
        nodes: bool = True,
        probes: bool = False,
        notify: dict[str, Any] | None = None,
        hub_db: bool = True,
    ) -> None:
        """Prepare a world; nothing runs until :meth:`start`.

        ``workdir`` defaults to a temporary directory removed by :meth:`stop`.
        ``remediation`` and ``sessions`` override keys of ``[remediation]`` and
        ``[checks.sessions]``; ``checks`` adds other ``[checks.NAME]`` sections.
        ``clock`` is shared by the simulators and :meth:`engine` (see :class:`SimClock`).
        ``nodes`` puts healthy Node objects for the nodes the pods run on (:data:`NODES`);
        a part that simulates nodes itself can turn that off. ``probes`` gives the hub a
        ``public_url`` (the simulated proxy's public side), so the ``probes`` check runs;
        ``notify`` overrides keys of ``[notify]`` (``error_after``...). ``hub_db=False``
        leaves ``db_url_file`` out: watchdogd reads the hub through its API alone (API mode).
        """
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="watchdogd-world-")).resolve()
        self.notify_url = notify_url
        self.namespace = namespace
        self.layout: Layout = layout
        self.hub_name = hub_name
        self.cluster_name = cluster_name
        self.kubespawner_version = kubespawner_version
        self.remediation = _deep_merge(DEFAULT_REMEDIATION, remediation or {})
        self.sessions = dict(sessions or {})
        self.checks = dict(checks or {})
        self.clock = clock
        self.timeout = timeout
        self.with_nodes = nodes
        self.probes = probes
        self.notify = dict(notify or {})
        self.hub_db = hub_db
        self.parts: dict[str, WorldPart] = {}
        for part in parts:
            self.parts[part.name] = part
        #: what the injectors planted, in order
        self.planted: list[Planted] = []
        self.secrets_dir = self.workdir / "secrets"
        self.config_path = self.workdir / "watchdogd.toml"
        self.kubeconfig_path = self.workdir / "kubeconfig"
        self.state_path = self.workdir / "state.db"
        self.kube = KubeSim()
        self.chp = ChpSim(clock=clock)
        self._hub: HubSim | None = None
        self._started: list[WorldPart] = []
        self._closers: list[Callable[[], None]] = []
        self._metrics_port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def hub(self) -> HubSim:
        """The hub simulator (after :meth:`start`)."""
        if self._hub is None:
            raise RuntimeError("the world is not started")
        return self._hub

    def start(self) -> World:
        """Start every simulator, write the secrets and the configuration."""
        if self._hub is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(exist_ok=True)
        try:
            self.kube.start()
            self.kube.write_kubeconfig(self.kubeconfig_path, context=self.cluster_name,
                                       namespace=self.namespace)
            self.chp.start()
            if self.with_nodes:
                self.kube.put_many(healthy_node(name, purpose) for name, purpose in NODES)
            self._hub = HubSim(self.workdir / "hub", self.kube, self.chp, self.namespace,
                               layout=self.layout, kubespawner_version=self.kubespawner_version,
                               clock=self.clock).start()
            self._metrics_port = free_port()
            for part in self.parts.values():
                part.start(self)
                self._started.append(part)
            self.write_config()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close engines, stop parts and simulators, remove a temporary directory."""
        for close in reversed(self._closers):
            close()
        self._closers.clear()
        for part in reversed(self._started):
            part.stop()
        self._started.clear()
        if self._hub is not None:
            self._hub.stop()
        self.chp.stop()
        self.kube.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def add_part(self, part: WorldPart) -> WorldPart:
        """Add a part; on a running world it starts now and the config file is rewritten."""
        self.parts[part.name] = part
        if self._hub is not None:
            part.start(self)
            self._started.append(part)
            self.write_config()
        return part

    @property
    def checks_in_play(self) -> list[str]:
        """The checks this world is built for: ``sessions`` and those of its parts.

        A part may declare ``checks = ("volumes", "orphans")``; the demo runs exactly these.
        """
        names = ["sessions"] + (["probes"] if self.probes else [])
        for part in self.parts.values():
            names += [c for c in getattr(part, "checks", ()) if c not in names]
        return names

    # -- configuration --------------------------------------------------------------------------

    def _secret(self, name: str, value: str) -> str:
        path = self.secrets_dir / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return str(path)

    def config_data(self) -> dict[str, Any]:
        """The configuration as a dict (what :meth:`write_config` writes as TOML)."""
        hub = self.hub
        hub_section: dict[str, Any] = {
            "cluster": self.cluster_name,
            "namespace": self.namespace,
            "layout": self.layout,
            "api_url": hub.api_url,
            "api_token_file": self._secret("hub_api_token", hub.token),
            "proxy_api_url": self.chp.url,
            "proxy_token_file": self._secret("proxy_token", self.chp.token),
            "timeout": self.timeout,
        }
        if self.probes:
            hub_section["public_url"] = self.chp.public_url
        if self.hub_db:
            hub_section["db_url_file"] = self._secret("hub_db_url", hub.db_url)
        if self.layout == "nublado":
            hub_section["pod_selector"] = "nublado.lsst.io/category=lab"
        data: dict[str, Any] = {
            "state": {"url_file": self._secret("state_url", f"sqlite:///{self.state_path}")},
            "remediation": self.remediation,
            "daemon": {"metrics_listen": f"127.0.0.1:{self._metrics_port}",
                       "pass_timeout": "60s"},
            "clusters": {self.cluster_name: {"kubeconfig": str(self.kubeconfig_path),
                                             "context": self.cluster_name,
                                             "timeout": self.timeout}},
            "hubs": {self.hub_name: hub_section},
            "checks": {"sessions": {"interval": "1m", **self.sessions}, **self.checks},
        }
        if self.notify_url:
            data["notify"] = {"urls_file": self._secret("notify_urls", self.notify_url)}
        if self.notify:
            data["notify"] = {**data.get("notify", {}), **self.notify}
        for part in self.parts.values():
            # Parts add actions: each one's remediation.enabled joins the others', so two
            # parts that enable their own actions do not replace each other's.
            before = list(data["remediation"].get("enabled") or [])
            data = _deep_merge(data, part.config(self))
            after = list(data["remediation"].get("enabled") or [])
            data["remediation"] = {**data["remediation"],
                                   "enabled": list(dict.fromkeys([*before, *after]))}
        return data

    def write_config(self) -> Path:
        """(Re)write the TOML configuration; returns its path."""
        self.config_path.write_text(
            "# watchdogd configuration of a simulated world (watchdogd.sim.world)\n"
            + dumps_toml(self.config_data()), encoding="utf-8")
        return self.config_path

    def load_config(self) -> Config:
        """Load the configuration exactly as ``watchdogd -c PATH`` would."""
        from watchdogd.config import load_config  # noqa: PLC0415

        return load_config(self.config_path)

    def engine(self, *, dry_run: bool | None = None,
               clock: Callable[[], datetime] | None = None) -> Engine:
        """A real Engine (Store, Sources, Notifier) on this world's configuration, built as
        ``watchdogd check`` builds it (:func:`watchdogd.app.build`).

        Its store and adapters are closed by :meth:`stop`. Several engines share one
        state database, as successive ``watchdogd check`` runs do.
        """
        from watchdogd.app import build  # noqa: PLC0415

        app = build(self.load_config(), dry_run=dry_run, clock=clock or self.clock,
                    notify=bool(self.notify_url))
        self._closers.append(app.close)
        return app.engine

    # -- injectors --------------------------------------------------------------------------------

    def _plant(self, kind: str, subject: str, story: str) -> str:
        self.planted.append(Planted(kind, subject, story, EXPECTED_ACTION[kind]))
        return subject

    @staticmethod
    def _subject(user: str, server_name: str) -> str:
        return f"{user}/{server_name}" if server_name else user

    def healthy(self, users: int = 12, running: int = 8) -> list[str]:
        """``users`` users (named from :data:`HEALTHY_NAMES`), the first ``running`` of them
        with a server whose DB row, pod and route all agree. Returns the names."""
        existing = set(self.hub.users())
        names: list[str] = []
        candidates = iter([*HEALTHY_NAMES, *(f"user-{i}" for i in range(1, 100_000))])
        while len(names) < users:
            name = next(candidates)
            if name not in existing:
                names.append(name)
        for i, name in enumerate(names):
            if i < running:
                self.hub.start_server(name)
            else:
                self.hub.add_user(name)
        return names

    def stale_session(self, user: str, server_name: str = "") -> str:
        """The server runs in the hub's DB, but its pod was deleted behind the hub's back
        (the frozen watch cache keeps the hub believing in it)."""
        info = self.hub.start_server(user, server_name)
        self.kube.delete("Pod", info.pod_name, info.namespace)
        return self._plant("stale-session", self._subject(user, server_name),
                           f"pod {info.namespace}/{info.pod_name} deleted behind the hub's back")

    def dead_session(self, user: str, reason: str = "Evicted", server_name: str = "") -> str:
        """The server runs in the hub's DB, but its pod is dead (``Evicted`` by default)."""
        info = self.hub.start_server(user, server_name)
        pod = self.kube.get("Pod", info.pod_name, info.namespace)
        assert pod is not None
        phase = "Succeeded" if reason == "Completed" else "Failed"
        message = _EVICTED_MESSAGE if reason == "Evicted" else f"container notebook: {reason}"
        pod["status"] = {"phase": phase, "reason": reason, "message": message,
                         "startTime": pod["status"].get("startTime")}
        self.kube.put(pod)
        return self._plant("dead-session", self._subject(user, server_name),
                           f"pod {info.namespace}/{info.pod_name} is {phase} ({reason})")

    def orphan_pod(self, user: str, server_name: str = "") -> str:
        """A stop went through but its pod delete failed: no DB record, the pod still runs."""
        info = self.hub.start_server(user, server_name)
        self.hub.stop_server(user, server_name, delete_pod=False)
        return self._plant("orphan-pod", self._subject(user, server_name),
                           f"stopped in the hub, but pod {info.namespace}/{info.pod_name} "
                           "was never deleted")

    def missing_route(self, user: str, server_name: str = "") -> str:
        """The server runs, but its proxy route is gone (a CHP restart without the hub)."""
        info = self.hub.start_server(user, server_name)
        self.chp.delete_route(info.route)
        return self._plant("missing-route", self._subject(user, server_name),
                           f"proxy route {info.route} deleted")

    def stale_route(self, user: str, server_name: str = "",
                    target: str = "http://10.0.77.7:8888") -> str:
        """The hub does not consider the server running, yet the proxy still routes to it."""
        self.hub.add_user(user)
        path = route_key(user, server_name)
        self.chp.add_route(path, target, user=user, server_name=server_name, jupyterhub=True)
        return self._plant("stale-route", self._subject(user, server_name),
                           f"proxy route {path} -> {target} left for a stopped server")

    def route_mismatch(self, user: str, server_name: str = "",
                       target: str = "http://10.0.66.6:8888") -> str:
        """The server runs, but the proxy sends its users to an old address."""
        info = self.hub.start_server(user, server_name)
        self.chp.add_route(info.route, target, user=user, server_name=server_name,
                           jupyterhub=True)
        return self._plant("route-mismatch", self._subject(user, server_name),
                           f"proxy route {info.route} -> {target}, the server is at "
                           f"{info.target}")

    def stuck_spawn(self, user: str, minutes: float = 30, server_name: str = "") -> str:
        """A spawn began ``minutes`` ago and is still pending (the pod never left Pending)."""
        started = self.clock() - timedelta(minutes=minutes)
        info = self.hub.start_server(user, server_name, pending="spawn", started=started)
        return self._plant("stuck-spawn", self._subject(user, server_name),
                           f"spawn pending since {minutes:g} minutes, pod "
                           f"{info.namespace}/{info.pod_name} stuck in Pending")

    def stuck_stop(self, user: str, server_name: str = "") -> str:
        """A stop began and never finished: the API shows ``pending: "stop"``, the hub
        already removed the route, the pod is still there."""
        info = self.hub.start_server(user, server_name)
        self.hub.set_pending(user, server_name, "stop")
        self.chp.delete_route(info.route)
        return self._plant("stuck-stop", self._subject(user, server_name),
                           "a stop that never finishes (the API shows pending: stop)")

    def invalid_username(self, name: str = "_alice", kubespawner_version: str = "6.2.0") -> str:
        """A user whose pod label would be invalid.

        KubeSpawner layout: the deployment runs KubeSpawner ``kubespawner_version`` (< 7 uses
        the ``escape`` slug scheme, where ``_alice`` becomes the label ``-5falice``,
        kubespawner issue 498); the running servers' state records that version, which is
        how the check learns the scheme, so at least one server must be running. Nublado:
        the user's namespace name would be invalid.
        """
        self.hub.add_user(name)
        if self.layout == "kubespawner":
            if not self.hub.set_kubespawner_version(kubespawner_version):
                raise ValueError("invalid_username needs a running server to show the "
                                 "KubeSpawner version (call healthy() first)")
            story = (f"user {name!r} on a hub running KubeSpawner {kubespawner_version} "
                     "(escape slug scheme)")
        else:
            story = f"user {name!r}: namespace nublado-{name} is not a valid name"
        return self._plant("invalid-username-label", name, story)
