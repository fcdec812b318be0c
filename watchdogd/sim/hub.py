"""A JupyterHub as watchdogd sees it: its REST API over a SQLite database of the real shape.

:class:`HubSim` answers the part of the Hub REST API watchdogd uses, with the shapes,
status codes and messages of JupyterHub 6.1 (checked against a running 6.1.1):

- ``GET /hub/api/users?state=active|ready|inactive&offset=&limit=``; with ``Accept:
  application/jupyterhub-pagination+json`` the answer is ``{items, _pagination: {offset,
  limit, total, next}}`` (``next`` is ``{offset, limit, url}``, null on the last page),
  without it a plain list; ``limit`` defaults to 50 (200 without the header) and is capped
  at 200; for ``ready`` the total counts *active* users, as the real hub's does;
- ``GET /hub/api/users/{name}``: the user model; ``servers`` lists active servers
  (``name, ready, pending, started, last_activity, url, stopped, ...``), ``state`` only with
  the ``admin:server_state`` scope; fields are filtered by scope like the real access map;
  with ``include_stopped_servers`` (any value but ``0``/``false``, on the list too) the
  stopped servers as well (``stopped: true, ready: false``, their kept ``state``);
- ``GET /hub/api/user``: the token owner's model (here always the service ``watchdogd``)
  with ``scopes``, the token's expanded scopes (any valid token may read it);
- ``DELETE /hub/api/users/{name}/server`` and ``/servers/{name}``: stops the server (clears
  ``spawners.server_id`` and ``started``, deletes the ``servers`` row, deletes the pod the
  spawner state names, removes the proxy route) and answers 204; a stopped server answers
  204 too; a server told to stop slowly (:meth:`HubSim.hang_stop`) answers 202 and stays
  ``pending: "stop"``; a server already pending stop answers 202 again (JupyterHub 6.1's
  ``users.py``); an unknown named server is a 404 ``{user} has no server named '{name}'``;
- ``POST /hub/api/users/{name}/server[s/{name}]``: 201; 202 while a spawn is pending;
  400 ``{user} is pending stop`` / ``{user} is already running``;
- ``POST /hub/api/users/{name}``: create a user (201, 409 if it exists);
- ``GET`` / ``POST /hub/api/proxy``: the routing table / the hub's ``check_routes``;
- ``GET /hub/api/services``: the services by name (:meth:`HubSim.add_service`), each model
  filtered like the real access map: ``kind, name, admin, url, prefix, command, pid, info,
  display`` with ``read:services``, only ``kind, name, admin`` with ``list:services`` alone
  (``command`` is a hub-managed service's argument list, ``[]`` for an external one; ``pid``
  0 unless the hub runs it);
- ``GET /hub/health`` (and ``/hub/api/health``): an empty 200 without authentication
  (``HealthCheckHandler``); :meth:`HubSim.freeze` makes every request hang, as a hub whose
  process is stopped;
- ``Authorization: token X``: an unknown or missing token is a 403 ``Missing or invalid
  credentials.`` (JupyterHub answers 403 here, never 401); a token without the scope is a 403
  ``Action is not authorized with current scopes; requires any of [delete:servers]``.

The database (``jupyterhub.sqlite`` in the work directory) has the real tables watchdogd's
hubdb source reads (``users``, ``spawners``, ``servers``, ``oauth_clients``,
``alembic_version``), created with the DDL JupyterHub 6's ``orm.py`` produces, and is written
the way the hub writes it: running means ``spawners.server_id IS NOT NULL``; ``started`` is set
when a spawn begins and cleared on stop; KubeSpawner's ``state`` JSON (``kubespawner_version``,
``pod_name``, ``namespace``, ``dns_name``) survives a stop. "Pending" is never stored: it lives
in memory, as in the hub.

With a :class:`~watchdogd.sim.kube.KubeSim`, servers get pods with KubeSpawner's names, labels
and annotations (or the Nublado layout: namespace ``nublado-{user}``, pod ``{user}-nb``), and a
hub pod ``hub-...`` labelled ``component=hub`` runs in the namespace. Deleting that pod
restarts the hub, like a Deployment would: pending states are forgotten, pending stops finish,
servers whose pods are gone are cleaned up (the restarted hub polls them afresh), routes are
checked. With a :class:`~watchdogd.sim.chp.ChpSim`, routes are kept like the hub keeps them.

The hub "believes" its database: deleting a pod behind its back changes nothing here (the
frozen KubeSpawner watch cache of REFERENCE.md), which is how stale sessions arise.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import string
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

from watchdogd.sim._http import Fault, HttpSim, Request, Response, utcnow
from watchdogd.slugs import escape_slug, safe_slug

if TYPE_CHECKING:
    from watchdogd.sim.chp import ChpSim
    from watchdogd.sim.kube import KubeSim

__all__ = [
    "ADMIN_SCOPES",
    "ALEMBIC_5X",
    "ALEMBIC_6X",
    "SERVICE_SCOPES",
    "HubSim",
    "ServerInfo",
    "expand_scopes",
    "route_key",
]

JUPYTERHUB_VERSION = "6.1.1"
ALEMBIC_6X = "f460b0348206"
ALEMBIC_5X = "4621fec11365"
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

#: The scopes of watchdogd's service role (REFERENCE.md; the services ones for the culler check).
SERVICE_SCOPES = frozenset({"list:users", "read:servers", "admin:server_state",
                            "delete:servers", "proxy", "list:services", "read:services"})
#: What the ``admin`` role can do (everything the simulator knows).
ADMIN_SCOPES = frozenset({"admin:users", "admin:servers", "proxy", "admin-ui", "admin:services"})

# JupyterHub 6.1's scope_definitions, the part that matters here: scope -> subscopes.
_SUBSCOPES: dict[str, tuple[str, ...]] = {
    "admin:users": ("admin:auth_state", "users", "read:roles:users", "delete:users"),
    "users": ("read:users", "list:users", "users:activity"),
    "list:users": ("read:users:name",),
    "read:users": ("read:users:name", "read:users:groups", "read:users:activity"),
    "read:roles": ("read:roles:users", "read:roles:services", "read:roles:groups"),
    "users:activity": ("read:users:activity",),
    "admin:servers": ("admin:server_state", "servers"),
    "servers": ("read:servers", "start:servers", "delete:servers"),
    "read:servers": ("read:users:name",),
    "admin:services": ("list:services", "read:services", "read:roles:services"),
    "list:services": ("read:services:name",),
    "read:services": ("read:services:name",),
}

# The service model's access map (apihandlers/base.py ``service_model``).
_SERVICE_ACCESS_MAP: dict[str, frozenset[str]] = {
    "read:services": frozenset({"kind", "name", "admin", "url", "prefix", "command", "pid",
                                "info", "display"}),
    "read:services:name": frozenset({"kind", "name", "admin"}),
    "read:roles:services": frozenset({"kind", "name", "roles", "admin"}),
}

# The user model's access map (apihandlers/base.py ``user_model``).
_ACCESS_MAP: dict[str, frozenset[str]] = {
    "read:users": frozenset({"kind", "name", "user_info", "admin", "roles", "groups", "server",
                             "pending", "created", "last_activity"}),
    "read:users:name": frozenset({"kind", "name", "user_info", "admin"}),
    "read:users:groups": frozenset({"kind", "name", "groups"}),
    "read:users:activity": frozenset({"kind", "name", "last_activity"}),
    "read:servers": frozenset({"kind", "name", "servers"}),
    "read:roles:users": frozenset({"kind", "name", "roles", "admin"}),
    "admin:auth_state": frozenset({"kind", "name", "auth_state"}),
}

# The DDL JupyterHub 6's orm.py produces on SQLite (the tables watchdogd reads, and
# oauth_clients because spawners has a foreign key to it).
_DDL = """
CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE servers (
    id INTEGER NOT NULL,
    proto VARCHAR(15),
    ip VARCHAR(255),
    port INTEGER,
    base_url VARCHAR(255),
    cookie_name VARCHAR(255),
    CONSTRAINT pk_servers PRIMARY KEY (id)
);
CREATE TABLE users (
    id INTEGER NOT NULL,
    name VARCHAR(255),
    user_info TEXT,
    admin BOOLEAN,
    created DATETIME,
    last_activity DATETIME,
    cookie_id VARCHAR(255) NOT NULL,
    state TEXT,
    encrypted_auth_state BLOB,
    CONSTRAINT pk_users PRIMARY KEY (id),
    CONSTRAINT uq_users_name UNIQUE (name),
    CONSTRAINT uq_users_cookie_id UNIQUE (cookie_id)
);
CREATE TABLE oauth_clients (
    id INTEGER NOT NULL,
    identifier VARCHAR(255),
    description VARCHAR(1023),
    secret VARCHAR(255),
    redirect_uri VARCHAR(1023),
    allowed_scopes TEXT,
    CONSTRAINT pk_oauth_clients PRIMARY KEY (id),
    CONSTRAINT uq_oauth_clients_identifier UNIQUE (identifier)
);
CREATE TABLE spawners (
    id INTEGER NOT NULL,
    user_id INTEGER,
    server_id INTEGER,
    state TEXT,
    name VARCHAR(255),
    display_name VARCHAR(255),
    started DATETIME,
    last_activity DATETIME,
    user_options TEXT,
    oauth_client_id VARCHAR(255),
    CONSTRAINT pk_spawners PRIMARY KEY (id),
    CONSTRAINT fk_spawners_user_id_users FOREIGN KEY(user_id)
        REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT fk_spawners_server_id_servers FOREIGN KEY(server_id)
        REFERENCES servers (id) ON DELETE SET NULL,
    CONSTRAINT fk_spawners_oauth_client_id_oauth_clients FOREIGN KEY(oauth_client_id)
        REFERENCES oauth_clients (identifier) ON DELETE SET NULL
);
"""

Pending = Literal["spawn", "stop"] | None
Layout = Literal["kubespawner", "nublado"]
Key = tuple[str, str]  # (user, server name; "" for the default server)



def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """A set of scopes with all their subscopes, like JupyterHub's ``expand_scopes``."""
    result: set[str] = set()
    todo = list(scopes)
    while todo:
        scope = todo.pop()
        if scope in result:
            continue
        result.add(scope)
        todo.extend(_SUBSCOPES.get(scope, ()))
    return frozenset(result)




def url_escape_path(value: str) -> str:
    """JupyterHub's ``url_escape_path``."""
    return quote(value, safe="@~")


def _iso(value: datetime | None) -> str | None:
    """The REST API's timestamps: ``2026-11-22T03:06:20.451110Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def _db_time(value: datetime | None) -> str | None:
    """How SQLAlchemy stores a naive UTC DateTime on SQLite."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_db(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class HubApiError(Exception):
    """An error answer, as JupyterHub's ``write_error`` renders it."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServerInfo:
    """Where a started server lives: what a test needs to break it on purpose."""

    user: str
    server_name: str
    namespace: str
    pod_name: str
    ip: str
    port: int
    route: str

    @property
    def target(self) -> str:
        """The proxy target the hub sets for this server."""
        return f"http://{self.ip}:{self.port}"


class HubSim(HttpSim):
    """A JupyterHub REST API and database in a thread.

    ``kube`` and ``chp`` are optional: without them no pods or routes are kept.
    """

    kind = "hubsim"

    def __init__(
        self,
        workdir: str | Path,
        kube: KubeSim | None = None,
        chp: ChpSim | None = None,
        namespace: str = "jhub",
        *,
        token: str | None = None,
        scopes: Iterable[str] = SERVICE_SCOPES,
        layout: Layout = "kubespawner",
        kubespawner_version: str = "7.0.0",
        alembic_revision: str = ALEMBIC_6X,
        hub_pod: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Create the database in ``workdir`` (a fresh one each time); nothing listens yet.

        ``token`` (random by default) carries ``scopes`` (watchdogd's service role by
        default); :attr:`admin_token` can do everything. ``layout`` and
        ``kubespawner_version`` are the defaults of :meth:`start_server`. ``hub_pod`` runs a
        hub pod in ``namespace`` (when ``kube`` is given).
        """
        super().__init__(clock=clock)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kube = kube
        self.chp = chp
        self.namespace = namespace
        self.layout: Layout = layout
        self.kubespawner_version = kubespawner_version
        self.token = token or secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        self._tokens: dict[str, frozenset[str]] = {
            self.token: expand_scopes(scopes), self.admin_token: expand_scopes(ADMIN_SCOPES)}
        self.db_path = self.workdir / "jupyterhub.sqlite"
        self._pending: dict[Key, str] = {}
        self._hang_stop: set[Key] = set()
        #: service name -> its full model (what ``GET /services`` filters by scope)
        self._services: dict[str, dict[str, Any]] = {}
        self._nublado: set[str] = set()
        self._next_ip = 0
        self._lock = threading.RLock()
        self._with_hub_pod = hub_pod and kube is not None
        #: the name of the running hub pod (None without kube)
        self.hub_pod: str | None = None
        #: how many times the hub was restarted (its pod deleted)
        self.restarts = 0
        self._watcher: threading.Thread | None = None
        self._stop_watch = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self.db_path.unlink(missing_ok=True)
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys=ON")
        # A simulator's database need not survive a power cut; big worlds build faster.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_DDL)
        self._db.execute("INSERT INTO alembic_version (version_num) VALUES (?)",
                         (alembic_revision,))
        self._db.execute(
            "INSERT INTO oauth_clients (identifier, description, secret, redirect_uri, "
            "allowed_scopes) VALUES ('jupyterhub', 'JupyterHub', '', '', '[]')")

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> HubSim:
        """Listen, run the hub pod and add the hub's own route ``/``."""
        super().start()
        with self._lock:
            if self._with_hub_pod and self.hub_pod is None:
                self._new_hub_pod()
            if self.chp is not None and self.chp.route("/") is None:
                self.chp.add_route("/", self.base_url, hub=True, jupyterhub=True)
        if self._with_hub_pod and self._watcher is None:
            self._stop_watch.clear()
            self._watcher = threading.Thread(target=self._watch_hub_pod, daemon=True,
                                             name=f"hubsim-watch-{self.port}")
            self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop serving and watching; close the database (idempotent)."""
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        super().stop()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    @property
    def url(self) -> str:
        """The hub's base URL (``http://127.0.0.1:PORT``)."""
        return self.base_url

    @property
    def api_url(self) -> str:
        """The REST API root, ``http://127.0.0.1:PORT/hub/api`` (what ``hubs.X.api_url`` takes)."""
        return f"{self.base_url}/hub/api"

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of the hub database."""
        return f"sqlite:///{self.db_path}"

    def add_token(self, token: str, scopes: Iterable[str]) -> str:
        """Accept another API token with these scopes (expanded like the hub's roles)."""
        self._tokens[token] = expand_scopes(scopes)
        return token

    def add_service(self, name: str, *, command: Iterable[str] | None = None, url: str = "",
                    pid: int | None = None, admin: bool = False) -> None:
        """Declare a service as ``c.JupyterHub.services`` would: hub-managed with a
        ``command`` (it then has a ``pid`` unless told otherwise), else external (``[]``)."""
        argv = list(command or [])
        with self._lock:
            self._services[name] = {
                "kind": "service", "name": name, "roles": [], "admin": admin, "url": url,
                "prefix": f"/services/{name}/" if url else "", "command": argv,
                "pid": (pid if pid is not None else 4242 + len(self._services)) if argv else 0,
                "info": {}, "display": True,
            }

    def remove_service(self, name: str) -> bool:
        """Forget a service (a hub restarted without it); False if there was none."""
        with self._lock:
            return self._services.pop(name, None) is not None

    def set_last_activity(self, user: str, when: datetime, server_name: str = "") -> None:
        """Write a server's ``last_activity`` (and its user's), as activity the hub learned
        of at ``when`` would have left it; the real hub's activity endpoint only moves it
        forward, which a simulated world need not wait for."""
        with self._tx() as conn:
            row = self._spawner_row(conn, user, server_name)
            if row is None:
                raise ValueError(f"{_log_name(user, server_name)} has no spawner")
            conn.execute("UPDATE spawners SET last_activity = ? WHERE id = ?",
                         (_db_time(when), row["id"]))
            conn.execute("UPDATE users SET last_activity = ? WHERE id = ?",
                         (_db_time(when), row["user_id"]))

    # -- the database --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, serialized with every other simulator access."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _user_row(self, conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return row

    def _spawner_row(self, conn: sqlite3.Connection, user: str,
                     server_name: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT spawners.*, users.name AS user_name FROM spawners "
            "JOIN users ON users.id = spawners.user_id WHERE users.name = ? AND spawners.name = ?",
            (user, server_name)).fetchone()
        return row

    def add_user(self, name: str, *, admin: bool = False) -> bool:
        """Create a user with its default spawner row (as the hub does); False if it exists."""
        with self._tx() as conn:
            return self._add_user(conn, name, admin)

    def _add_user(self, conn: sqlite3.Connection, name: str, admin: bool = False) -> bool:
        if self._user_row(conn, name) is not None:
            return False
        cursor = conn.execute(
            "INSERT INTO users (name, admin, created, cookie_id) VALUES (?, ?, ?, ?)",
            (name, admin, _db_time(self.clock()), uuid.uuid4().hex))
        conn.execute("INSERT INTO spawners (user_id, name, display_name) VALUES (?, '', '')",
                     (cursor.lastrowid,))
        return True

    def users(self) -> list[str]:
        """Every user name, in id order."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM users ORDER BY id")]

    def is_running(self, user: str, server_name: str = "") -> bool:
        """What the database says: ``spawners.server_id IS NOT NULL``."""
        with self._lock:
            row = self._spawner_row(self._db, user, server_name)
            return row is not None and row["server_id"] is not None

    def spawner(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        """The spawner row joined with its server row, as plain data (for assertions)."""
        with self._lock:
            row = self._spawner_row(self._db, user, server_name)
            if row is None:
                return None
            data = dict(row)
            data["state"] = json.loads(row["state"]) if row["state"] else None
            server = None
            if row["server_id"] is not None:
                srow = self._db.execute("SELECT * FROM servers WHERE id = ?",
                                        (row["server_id"],)).fetchone()
                server = dict(srow) if srow is not None else None
            data["server"] = server
            return data

    # -- servers -------------------------------------------------------------------------------

    def _allocate_ip(self) -> str:
        self._next_ip += 1
        n = self._next_ip
        return f"10.0.{n // 200}.{n % 200 + 10}"

    def pod_location(self, user: str, server_name: str = "", *,
                     layout: Layout | None = None,
                     kubespawner_version: str | None = None) -> tuple[str, str]:
        """``(namespace, pod name)`` the spawner gives this server."""
        if (layout or self.layout) == "nublado":
            return f"nublado-{user}", f"{user}-nb"
        version = kubespawner_version or self.kubespawner_version
        slug = _user_slug(user, version)
        name = f"jupyter-{slug}"
        if server_name:
            name += f"--{_user_slug(server_name, version)}"
        return self.namespace, name

    def start_server(
        self,
        user: str,
        server_name: str = "",
        *,
        ip: str | None = None,
        port: int = 8888,
        pod: bool = True,
        route: bool = True,
        kubespawner_version: str | None = None,
        layout: Layout | None = None,
        pending: Pending = None,
        phase: str = "Running",
        node: str | None = None,
        started: datetime | None = None,
    ) -> ServerInfo:
        """Start a server the way the hub records one (the user is created if needed).

        Writes the ``servers`` row, the ``oauth_clients`` row and the spawner's
        ``server_id``, ``started``, ``last_activity`` and KubeSpawner ``state``; creates
        the pod (``pod=True``, when a KubeSim is attached) and the proxy route
        ``/user/{user}[/{server}]`` (``route=True``, when a ChpSim is attached).
        ``pending="spawn"`` leaves it starting (the API shows ``pending: "spawn"``; no route
        yet, as the hub adds routes when a server is ready). Raises ValueError if it already
        runs.
        """
        layout = layout or self.layout
        version = kubespawner_version or self.kubespawner_version
        if layout == "nublado" and server_name:
            raise ValueError("Nublado has one lab per user: no named servers")
        now = started or self.clock()
        namespace, pod_name = self.pod_location(user, server_name, layout=layout,
                                                kubespawner_version=version)
        key = (user, server_name)
        with self._tx() as conn:
            self._add_user(conn, user)
            row = self._spawner_row(conn, user, server_name)
            if row is not None and row["server_id"] is not None:
                raise ValueError(f"{_log_name(user, server_name)} is already running")
            ip = ip or self._allocate_ip()
            base_url = _server_url(user, server_name)
            server_id = conn.execute(
                "INSERT INTO servers (proto, ip, port, base_url, cookie_name) "
                "VALUES ('http', ?, ?, ?, 'cookie')", (ip, port, base_url)).lastrowid
            client = "jupyterhub-user-" + user + (f"-{server_name}" if server_name else "")
            conn.execute("DELETE FROM oauth_clients WHERE identifier = ?", (client,))
            conn.execute(
                "INSERT INTO oauth_clients (identifier, description, secret, redirect_uri, "
                "allowed_scopes) VALUES (?, ?, ?, ?, ?)",
                (client, f"Server at {base_url}", "sha512:sim", base_url + "oauth_callback",
                 json.dumps([f"access:servers!server={user}/{server_name}"])))
            if layout == "nublado":
                state: dict[str, Any] = {}
                self._nublado.add(user)
            else:
                state = {"kubespawner_version": version, "pod_name": pod_name,
                         "namespace": namespace,
                         "dns_name": f"{pod_name}.{namespace}.svc.cluster.local"}
            user_id = self._user_row(conn, user)["id"]  # type: ignore[index]
            if row is None:
                conn.execute("INSERT INTO spawners (user_id, name, display_name) VALUES (?, ?, ?)",
                             (user_id, server_name, server_name))
            conn.execute(
                "UPDATE spawners SET server_id = ?, state = ?, started = ?, last_activity = ?, "
                "oauth_client_id = ? WHERE user_id = ? AND name = ?",
                (server_id, json.dumps(state), _db_time(now), _db_time(now), client, user_id,
                 server_name))
            conn.execute("UPDATE users SET last_activity = ? WHERE id = ?",
                         (_db_time(now), user_id))
            if pending:
                self._pending[key] = pending
            else:
                self._pending.pop(key, None)
        info = ServerInfo(user, server_name, namespace, pod_name, ip, port,
                          route_key(user, server_name))
        if pod and self.kube is not None:
            self.kube.put(self._pod(info, layout, version, phase if not pending else "Pending",
                                    node, now))
        if route and not pending and self.chp is not None:
            self.chp.add_route(info.route, info.target, user=user, server_name=server_name,
                               jupyterhub=True)
        return info

    def _pod(self, info: ServerInfo, layout: Layout, version: str, phase: str,
             node: str | None, now: datetime) -> dict[str, Any]:
        started = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        node = node or f"node-{self._next_ip % 3 + 1}"
        if layout == "nublado":
            metadata: dict[str, Any] = {
                "name": info.pod_name, "namespace": info.namespace,
                "labels": {"nublado.lsst.io/category": "lab",
                           "nublado.lsst.io/user": info.user},
                "annotations": {"nublado.lsst.io/user": info.user}}
            container: dict[str, Any] = {"name": "notebook",
                                         "image": "ghcr.io/lsst-sqre/sciplat-lab:w_2026_47"}
        else:
            user_slug = _user_slug(info.user, version)
            labels = {
                "hub.jupyter.org/username": user_slug,
                "app.kubernetes.io/name": "jupyterhub",
                "app.kubernetes.io/managed-by": "kubespawner",
                "app": "jupyterhub",
                "heritage": "jupyterhub",
                "app.kubernetes.io/component": "singleuser-server",
                "component": "singleuser-server",
                "hub.jupyter.org/servername": (_user_slug(info.server_name, version)
                                               if info.server_name else ""),
            }
            annotations = {"hub.jupyter.org/username": info.user}
            if info.server_name:
                annotations["hub.jupyter.org/servername"] = info.server_name
            annotations["hub.jupyter.org/kubespawner-version"] = version
            annotations["hub.jupyter.org/jupyterhub-version"] = JUPYTERHUB_VERSION
            metadata = {"name": info.pod_name, "namespace": info.namespace, "labels": labels,
                        "annotations": annotations}
            container = {"name": "notebook", "image": "quay.io/jupyter/base-notebook:2026-11-17",
                         "ports": [{"containerPort": info.port, "name": "notebook-port",
                                    "protocol": "TCP"}]}
        status: dict[str, Any] = {"phase": phase, "startTime": started, "hostIP": "192.168.0.10"}
        if phase == "Running":
            status["podIP"] = info.ip
            status["podIPs"] = [{"ip": info.ip}]
            status["conditions"] = [{"type": "Ready", "status": "True"}]
            status["containerStatuses"] = [{"name": "notebook", "ready": True, "restartCount": 0,
                                            "image": container["image"],
                                            "state": {"running": {"startedAt": started}}}]
        elif phase == "Pending":
            status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            status["containerStatuses"] = [{
                "name": "notebook", "ready": False, "restartCount": 0,
                "image": container["image"],
                "state": {"waiting": {"reason": "ContainerCreating"}}}]
        return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata,
                "spec": {"containers": [container], "nodeName": node,
                         "restartPolicy": "OnFailure"},
                "status": status}

    def stop_server(self, user: str, server_name: str = "", *, delete_pod: bool = True,
                    remove_route: bool = True) -> bool:
        """Stop a server as the hub does (database, pod, route); False if it was not running.

        ``delete_pod=False`` is the pod delete that failed while the stop went on: the
        database says stopped, the pod lives on (an orphan pod).
        """
        key = (user, server_name)
        with self._tx() as conn:
            row = self._spawner_row(conn, user, server_name)
            self._pending.pop(key, None)
            self._hang_stop.discard(key)
            if row is None or row["server_id"] is None:
                return False
            state = json.loads(row["state"]) if row["state"] else {}
            state.pop("pid", None)
            conn.execute(
                "UPDATE spawners SET server_id = NULL, started = NULL, last_activity = ?, "
                "state = ?, oauth_client_id = NULL WHERE id = ?",
                (_db_time(self.clock()), json.dumps(state), row["id"]))
            conn.execute("DELETE FROM servers WHERE id = ?", (row["server_id"],))
            if row["oauth_client_id"]:
                conn.execute("DELETE FROM oauth_clients WHERE identifier = ?",
                             (row["oauth_client_id"],))
        if remove_route and self.chp is not None:
            self.chp.delete_route(route_key(user, server_name))
        if delete_pod and self.kube is not None:
            namespace, name = self._pod_of(user, server_name, state)
            if namespace and name:
                self.kube.delete("Pod", name, namespace)  # a pod already gone is fine
        return True

    def _pod_of(self, user: str, server_name: str,
                state: dict[str, Any]) -> tuple[str | None, str | None]:
        if state.get("pod_name"):
            return state.get("namespace") or self.namespace, str(state["pod_name"])
        if user in self._nublado or self.layout == "nublado":
            return f"nublado-{user}", f"{user}-nb"
        return None, None

    def set_pending(self, user: str, server_name: str = "", pending: Pending = None) -> None:
        """Make the API show ``pending`` for a running server (None clears it)."""
        key = (user, server_name)
        with self._lock:
            if pending is None:
                self._pending.pop(key, None)
            else:
                if not self.is_running(user, server_name):
                    raise ValueError(f"{_log_name(user, server_name)} is not running")
                self._pending[key] = pending

    def pending(self, user: str, server_name: str = "") -> str | None:
        """What the API shows as ``pending`` for a server."""
        with self._lock:
            return self._pending.get((user, server_name))

    def hang_stop(self, user: str, server_name: str = "") -> None:
        """The next stop of this server never finishes: 202, then ``pending: "stop"``."""
        with self._lock:
            self._hang_stop.add((user, server_name))

    def set_kubespawner_version(self, version: str) -> int:
        """The hub now runs this KubeSpawner: future servers and the state of the running
        ones record it (KubeSpawner rewrites its state on every poll). Returns how many
        running servers were updated."""
        self.kubespawner_version = version
        with self._tx() as conn:
            rows = conn.execute("SELECT id, state FROM spawners "
                                "WHERE server_id IS NOT NULL AND state IS NOT NULL").fetchall()
            count = 0
            for row in rows:
                state = json.loads(row["state"])
                if isinstance(state, dict) and "pod_name" in state:
                    state["kubespawner_version"] = version
                    conn.execute("UPDATE spawners SET state = ? WHERE id = ?",
                                 (json.dumps(state), row["id"]))
                    count += 1
        return count

    def finish_stop(self, user: str, server_name: str = "") -> bool:
        """Let a pending stop complete (as if the spawner's stop finally returned)."""
        return self.stop_server(user, server_name)

    # -- the hub pod, restarts -----------------------------------------------------------------

    def _new_hub_pod(self) -> None:
        assert self.kube is not None
        alphabet = string.ascii_lowercase + string.digits
        suffix = "".join(secrets.choice(alphabet) for _ in range(5))
        name = f"hub-7c9d8f6b5d-{suffix}"
        now = self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.kube.put({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"app": "jupyterhub", "component": "hub",
                                    "release": "jhub", "hub.jupyter.org/network-access-proxy-api":
                                    "true", "pod-template-hash": "7c9d8f6b5d"}},
            "spec": {"containers": [{"name": "hub", "image": "quay.io/jupyterhub/k8s-hub:4.3.1"}],
                     "nodeName": "core-1"},
            "status": {"phase": "Running", "podIP": "10.0.255.2", "startTime": now,
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })
        self.hub_pod = name

    def _watch_hub_pod(self) -> None:
        while not self._stop_watch.wait(0.05):
            self.check_restart()

    def check_restart(self) -> bool:
        """Restart the hub if its pod was deleted (also runs in a watcher thread); True if so.

        A restarted hub forgets what was pending in memory, finishes the stops that hung,
        polls every server afresh (servers whose pods are gone are cleaned up) and checks
        the proxy's routes, as JupyterHub does at start.
        """
        if not self._with_hub_pod or self.kube is None:
            return False
        with self._lock:
            if self.hub_pod is None or self._stop_watch.is_set():
                return False
            if self.kube.get("Pod", self.hub_pod, self.namespace) is not None:
                return False
            self.restarts += 1
            stopping = [k for k, v in self._pending.items() if v == "stop"]
            self._pending.clear()
            self._hang_stop.clear()
            for user, server_name in stopping:
                self.stop_server(user, server_name)
            for user, server_name, state in self._running_rows():
                namespace, name = self._pod_of(user, server_name, state)
                if name and self.kube.get("Pod", name, namespace) is None:
                    self.stop_server(user, server_name)
            self._new_hub_pod()
            if self.chp is not None:
                self.check_routes()
            return True

    def _running_rows(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT users.name, spawners.name, spawners.state FROM spawners JOIN users "
            "ON users.id = spawners.user_id WHERE spawners.server_id IS NOT NULL").fetchall()
        return [(r[0], r[1] or "", json.loads(r[2]) if r[2] else {}) for r in rows]

    # -- routes --------------------------------------------------------------------------------

    def check_routes(self) -> None:
        """JupyterHub's ``Proxy.check_routes``: add missing routes of ready servers, fix
        wrong targets, delete jupyterhub routes of servers that are not running."""
        if self.chp is None:
            return
        with self._lock:
            rows = self._db.execute(
                "SELECT users.name, spawners.name, servers.proto, servers.ip, servers.port "
                "FROM spawners JOIN users ON users.id = spawners.user_id "
                "JOIN servers ON servers.id = spawners.server_id").fetchall()
            pending = dict(self._pending)
        routes = {k: v for k, v in self.chp.routes.items() if v.get("jupyterhub")}
        good = {"/"}
        if "/" not in routes or routes["/"].get("target") != self.base_url:
            self.chp.add_route("/", self.base_url, hub=True, jupyterhub=True)
        for user, name, proto, ip, port in rows:
            server_name = name or ""
            spec = route_key(user, server_name)
            if pending.get((user, server_name)):
                good.add(spec)  # never touch the route of a server in transition
                continue
            good.add(spec)
            target = f"{proto or 'http'}://{ip}:{port}"
            route = routes.get(spec)
            if route is None or "user" not in route or route.get("target") != target:
                self.chp.add_route(spec, target, user=user, server_name=server_name,
                                   jupyterhub=True)
        for spec in routes:
            if spec not in good:
                self.chp.delete_route(spec)

    # -- HTTP ------------------------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        """JupyterHub's JSON error shape."""
        return Response.json(fault.status, {"status": fault.status,
                                            "message": "simulated fault"})

    def freeze(self) -> None:
        """Stop answering, as a hub whose process hangs (SIGSTOP, a stuck event loop):
        connections are accepted, requests wait until :meth:`thaw` or the hub stops."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Answer again; the requests that waited are answered now."""
        self._thawed.set()

    def handle(self, req: Request) -> Response:
        """Dispatch one REST API request."""
        while not self._thawed.wait(0.05):
            if self._closing.is_set():
                return Response(503, b"", None)
        self.check_restart()
        try:
            return self._dispatch(req)
        except HubApiError as err:
            return Response.json(err.status, {"status": err.status, "message": err.message})

    def _dispatch(self, req: Request) -> Response:
        path = req.path.rstrip("/")
        if path in ("/hub/health", "/hub/api/health") and req.method in ("GET", "HEAD"):
            return Response(200, b"", None)  # HealthCheckHandler: no auth, empty 200
        if not path.startswith("/hub/api"):
            raise HubApiError(404, "Not Found")
        parts = [unquote(p) for p in path[len("/hub/api"):].split("/") if p]
        if not parts:
            if req.method == "GET":
                return Response.json(200, {"version": JUPYTERHUB_VERSION})
            raise HubApiError(405, "Method Not Allowed")
        scopes = self._authenticate(req)
        method = req.method
        if parts == ["users"] and method == "GET":
            return self._list_users(req, scopes)
        if parts == ["user"] and method == "GET":
            return Response.json(200, {"kind": "service", "name": "watchdogd", "admin": False,
                                       "roles": [], "token_id": None, "session_id": None,
                                       "scopes": sorted(scopes)})
        if parts[0] == "users" and len(parts) == 2:
            if method == "GET":
                self._need(scopes, "read:users", "read:users:name", "read:servers",
                           "read:users:groups", "read:users:activity", "read:roles:users")
                return Response.json(200, self._get_user(parts[1], scopes,
                                                         _include_stopped(req)))
            if method == "POST":
                self._need(scopes, "admin:users")
                return self._create_user(parts[1], scopes)
        if parts[0] == "users" and len(parts) in (3, 4) and parts[2] in ("server", "servers"):
            if (parts[2] == "server") != (len(parts) == 3):
                raise HubApiError(404, "Not Found")
            server_name = parts[3] if len(parts) == 4 else ""
            if method == "DELETE":
                self._need(scopes, "delete:servers")
                return self._stop(parts[1], server_name)
            if method == "POST":
                self._need(scopes, "start:servers")
                return self._start(parts[1], server_name)
        if parts == ["services"] and method == "GET":
            return Response.json(200, self._list_services(scopes))
        if parts == ["proxy"]:
            self._need(scopes, "proxy")
            if method == "GET":
                routes = self.chp.routes if self.chp is not None else {}
                return Response.json(200, {k: v for k, v in routes.items()
                                           if v.get("jupyterhub")})
            if method == "POST":
                self.check_routes()
                return Response(200, b"", None)
        raise HubApiError(404 if method == "GET" else 405,
                          "Not Found" if method == "GET" else "Method Not Allowed")

    def _authenticate(self, req: Request) -> frozenset[str]:
        header = req.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        scopes = self._tokens.get(token.strip()) if scheme.lower() in ("token", "bearer") else None
        if scopes is None:
            raise HubApiError(403, "Missing or invalid credentials.")
        return scopes

    @staticmethod
    def _need(scopes: frozenset[str], *needed: str) -> None:
        if not any(scope in scopes for scope in needed):
            raise HubApiError(403, "Action is not authorized with current scopes; requires any "
                                   f"of [{', '.join(needed)}]")

    # -- services ------------------------------------------------------------------------------

    def _list_services(self, scopes: frozenset[str]) -> dict[str, dict[str, Any]]:
        """apihandlers/services.py ``ServiceListAPIHandler.get``, models filtered by scope."""
        self._need(scopes, "list:services")
        allowed: set[str] = set()
        for scope, keys in _SERVICE_ACCESS_MAP.items():
            if scope in scopes:
                allowed |= keys
        with self._lock:
            return {name: {k: v for k, v in model.items() if k in allowed}
                    for name, model in self._services.items()}

    # -- users ---------------------------------------------------------------------------------

    def _list_users(self, req: Request, scopes: frozenset[str]) -> Response:
        self._need(scopes, "list:users")
        state = req.arg("state")
        accepts = PAGINATION_MEDIA_TYPE in {
            s.strip().lower() for s in (req.headers.get("Accept") or "").split(",")}
        try:
            offset = abs(int(req.arg("offset") or 0))
            limit = abs(int(req.arg("limit") or (DEFAULT_LIMIT if accepts else MAX_LIMIT)))
        except ValueError:
            raise HubApiError(400, "Invalid argument type, offset and limit must be "
                                   "integers") from None
        limit = min(max(limit, 1), MAX_LIMIT)
        if state in ("active", "ready"):
            where = ("WHERE users.id IN (SELECT user_id FROM spawners "
                     "WHERE server_id IS NOT NULL)")
        elif state == "inactive":
            where = ("WHERE users.id NOT IN (SELECT user_id FROM spawners "
                     "WHERE server_id IS NOT NULL AND user_id IS NOT NULL)")
        elif state:
            raise HubApiError(400, f"Unrecognized state filter: {state!r}")
        else:
            where = ""
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM users {where}").fetchone()[0]  # noqa: S608
            rows = self._db.execute(
                f"SELECT * FROM users {where} ORDER BY id LIMIT ? OFFSET ?",  # noqa: S608
                (limit, offset)).fetchall()
            active = self._active_rows([row["id"] for row in rows])
            stopped = (self._active_rows([row["id"] for row in rows], stopped=True)
                       if _include_stopped(req) else {})
            items = []
            for row in rows:
                if state == "ready" and not any(
                        self._pending.get((row["name"], r["name"] or "")) is None
                        for r in active.get(row["id"], [])):
                    continue
                model = self._user_model(row, scopes, active.get(row["id"], []),
                                         stopped.get(row["id"], []))
                if model:
                    items.append(model)
        if not accepts:
            return Response.json(200, items)
        pagination: dict[str, Any] = {"offset": offset, "limit": limit, "total": total,
                                      "next": None}
        if offset + limit < total:
            parts = urlsplit(req.full_url)
            query = parse_qs(parts.query, keep_blank_values=True)
            query["offset"] = [str(offset + limit)]
            query["limit"] = [str(limit)]
            url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
            pagination["next"] = {"offset": offset + limit, "limit": limit, "url": url}
        return Response.json(200, {"items": items, "_pagination": pagination})

    def _get_user(self, name: str, scopes: frozenset[str],
                  include_stopped: bool = False) -> dict[str, Any]:
        with self._lock:
            row = self._user_row(self._db, name)
            if row is None:
                raise HubApiError(404)
            stopped = (self._active_rows([row["id"]], stopped=True).get(row["id"], [])
                       if include_stopped else [])
            return self._user_model(row, scopes,
                                    self._active_rows([row["id"]]).get(row["id"], []), stopped)

    def _create_user(self, name: str, scopes: frozenset[str]) -> Response:
        if not self.add_user(name):
            raise HubApiError(409, f"User {name} already exists")
        return Response.json(201, self._get_user(name, scopes))

    def _user_model(self, row: sqlite3.Row, scopes: frozenset[str],
                    active: list[sqlite3.Row], stopped: list[sqlite3.Row] | None = None,
                    ) -> dict[str, Any]:
        """apihandlers/base.py ``user_model``, filtered by the token's scopes; ``stopped``
        are the spawner rows without a server, listed with ``include_stopped_servers``."""
        name = row["name"]
        servers = self._server_models(name, scopes, active, stopped or [])
        default_active = any((r["name"] or "") == "" for r in active)
        default_pending = self._pending.get((name, "")) if default_active else None
        running = default_active and default_pending is None
        model: dict[str, Any] = {
            "kind": "user", "name": name, "admin": bool(row["admin"]), "roles": ["user"],
            "groups": [], "server": f"/user/{url_escape_path(name)}/" if running else None,
            "pending": None, "created": _iso(_from_db(row["created"])),
            "last_activity": _iso(_from_db(row["last_activity"])), "auth_state": None,
            "user_info": None,
        }
        allowed: set[str] = set()
        for scope, keys in _ACCESS_MAP.items():
            if scope in scopes:
                allowed |= keys
        model = {k: v for k, v in model.items() if k in allowed}
        if not model:
            return model
        if "pending" in allowed:
            model["pending"] = default_pending
        if "servers" in allowed or servers:
            model["servers"] = servers
        return model

    def _active_rows(self, user_ids: list[int], *,
                     stopped: bool = False) -> dict[int, list[sqlite3.Row]]:
        """The spawner rows with a server (running, or pending either way), by user id;
        one query for a whole page of users. ``stopped``: the rows without one instead."""
        which = "IS NULL" if stopped else "IS NOT NULL"
        result: dict[int, list[sqlite3.Row]] = {}
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                    f"SELECT * FROM spawners WHERE server_id {which} "  # noqa: S608
                    f"AND user_id IN ({marks}) ORDER BY id", chunk):
                result.setdefault(row["user_id"], []).append(row)
        return result

    def _server_models(self, user: str, scopes: frozenset[str], active: list[sqlite3.Row],
                       stopped: list[sqlite3.Row]) -> dict[str, dict[str, Any]]:
        """The active servers of a user (running or pending), and the ``stopped`` ones
        (``include_stopped_servers``), as server models."""
        if "read:servers" not in scopes:
            return {}
        result = {}
        for row in [*active, *stopped]:
            server_name = row["name"] or ""
            is_stopped = row["server_id"] is None
            pending = None if is_stopped else self._pending.get((user, server_name))
            base = f"/hub/api/users/{url_escape_path(user)}"
            model: dict[str, Any] = {
                "name": server_name,
                "display_name": row["display_name"] or "",
                "full_name": f"{user}/{server_name}",
                "last_activity": _iso(_from_db(row["last_activity"])),
                "started": _iso(_from_db(row["started"])),
                "pending": pending,
                "ready": pending is None and not is_stopped,
                "stopped": is_stopped,
                "url": _server_url(user, server_name),
                "user_options": json.loads(row["user_options"]) if row["user_options"] else {},
                "progress_url": (f"{base}/servers/{url_escape_path(server_name)}/progress"
                                 if server_name else f"{base}/server/progress"),
                "full_url": None,
                "full_progress_url": None,
            }
            if "admin:server_state" in scopes:
                model["state"] = json.loads(row["state"]) if row["state"] else {}
            result[server_name] = model
        return result

    # -- start and stop ------------------------------------------------------------------------

    def _stop(self, user: str, server_name: str) -> Response:
        """apihandlers/users.py ``UserServerAPIHandler.delete``."""
        key = (user, server_name)
        with self._lock:
            if self._user_row(self._db, user) is None:
                raise HubApiError(404)
            row = self._spawner_row(self._db, user, server_name)
            if server_name and row is None:
                raise HubApiError(404, f"{user} has no server named '{server_name}'")
            pending = self._pending.get(key)
            if pending == "stop":
                return Response(202, b"", None)  # already stopping
            if row is None or row["server_id"] is None:
                return Response(204, b"", None)
            if key in self._hang_stop:
                # The stop starts (the hub removes the route first) and never finishes.
                self._hang_stop.discard(key)
                self._pending[key] = "stop"
                if self.chp is not None:
                    self.chp.delete_route(route_key(user, server_name))
                return Response(202, b"", None)
            self.stop_server(user, server_name)
        return Response(204, b"", None)

    def _start(self, user: str, server_name: str) -> Response:
        """apihandlers/users.py ``UserServerAPIHandler.post`` (the parts that answer)."""
        key = (user, server_name)
        with self._lock:
            if self._user_row(self._db, user) is None:
                raise HubApiError(404)
            pending = self._pending.get(key)
            if pending == "spawn":
                return Response(202, b"", None)
            if pending:
                raise HubApiError(400, f"{_log_name(user, server_name)} is pending {pending}")
            if self.is_running(user, server_name):
                raise HubApiError(400, f"{_log_name(user, server_name)} is already running")
            self.start_server(user, server_name)
        return Response(201, b"", None)


def _include_stopped(req: Request) -> bool:
    """``include_stopped_servers`` as the hub reads it: anything but ``0``/``false``."""
    value = req.arg("include_stopped_servers")
    return value is not None and value.lower() not in ("0", "false")


def _user_slug(name: str, kubespawner_version: str) -> str:
    major = kubespawner_version.split(".", maxsplit=1)[0]
    if major.isdigit() and int(major) < 7:
        return escape_slug(name)
    return safe_slug(name)


def _log_name(user: str, server_name: str) -> str:
    """``Spawner._log_name``: ``user`` or ``user:server``."""
    return f"{user}:{server_name}" if server_name else user


def _server_url(user: str, server_name: str) -> str:
    url = f"/user/{url_escape_path(user)}/"
    return url + f"{url_escape_path(server_name)}/" if server_name else url


def route_key(user: str, server_name: str = "") -> str:
    """The CHP key of a server's route (the hub's routespec without the trailing slash)."""
    return _server_url(user, server_name).rstrip("/")
