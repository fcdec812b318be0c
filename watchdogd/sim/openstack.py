"""A fake Keystone and Cinder v3, over real HTTP, that openstacksdk and the ``openstack`` CLI use
unchanged.

watchdogd's volume remediation depends on how Cinder answers: the JSON shapes, the microversion
gate on attachments (3.27), marker pagination with ``volumes_links``, ``all_tenants`` being
silently ignored for non-admins, the 403 of a non-admin ``os-reset_status``, what an attachment
delete does to the volume's status. The real services (PyPI ``cinder`` and ``keystone``) are the
ground truth and are used by the integration tests; this module copies what was observed there so
that unit, scenario and benchmark runs need neither a virtualenv nor seconds of start-up, and so
that faults the real services cannot be asked for (Keystone down, a token revoked half way
through a list, a 503 storm, a volume changing between two requests) are one method call away.

Shapes checked against cinder 29.0 and keystone 30.0 (see tests/integration):

* ``GET /`` on Cinder is ``300`` with ``{"versions": [...]}`` (``version`` 3.71); ``/v3/`` the
  same with 200. Every Cinder answer carries ``OpenStack-API-Version: volume X`` and
  ``Vary: OpenStack-API-Version``; a microversion above the maximum is a 406 ``computeFault``,
  ``/attachments`` below 3.27 a 404 ``itemNotFound``.
* Volume lists are sorted by ``created_at`` then ``id``, both descending; ``volumes_links`` has a
  ``next`` link exactly when the page is full (limit capped at ``page_max``, Cinder's
  ``osapi_max_limit``); an unknown marker is a 404. Attachment lists have no links at all.
* The volume's ``attachments`` member only lists *attached* attachments; reserved ones are only
  visible under ``/attachments``. Deleting an attachment recomputes the volume's status from the
  remaining ones (attached > attaching > detaching > reserved, none: available) and keeps
  ``updated_at``; ``os-reset_status`` sets ``updated_at``; ``attach_status=detached`` detaches
  every attachment. A user may not delete an attachment that has a connection (Cinder bug
  #2004555: 409). Metadata updates do not touch ``updated_at``. A volume without a host is
  deleted at once.

Simplifications: one region, one domain (``default``); no volume types, snapshots, quotas or
backends; created volumes are ``available`` at once; tokens are random strings (not Fernet).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import secrets
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

if TYPE_CHECKING:
    from watchdogd.sim.kube import KubeSim
    from watchdogd.sim.world import World

__all__ = [
    "CinderError",
    "CloudPart",
    "OpenStackSim",
    "failed_attach_event",
    "pv_for_volume",
    "pvc_for_user",
    "seed_demo",
]

Obj = dict[str, Any]
Clock = Callable[[], datetime]

MAX_MICROVERSION = (3, 71)
MIN_MICROVERSION = (3, 0)
ATTACH_MICROVERSION = (3, 27)
VOLUME_STATUSES = frozenset({
    "creating", "available", "reserved", "attaching", "detaching", "in-use", "maintenance",
    "deleting", "awaiting-transfer", "error", "error_deleting", "backing-up", "restoring-backup",
    "error_backing-up", "error_restoring", "error_extending", "downloading", "uploading",
    "retyping", "extending",
})
ATTACH_STATUSES = frozenset({
    "attached", "attaching", "detached", "reserved", "detaching", "error_attaching",
    "error_detaching", "deleted",
})

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

_PHRASES = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 300: "Multiple Choices",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
            413: "Request Entity Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_CINDER_FAULT_NAMES = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 409: "conflict",
                       413: "overLimit", 503: "serviceUnavailable"}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cinder_time(value: datetime | None) -> str | None:
    """Cinder's timestamp format: naive UTC with microseconds (``2026-11-22T03:09:09.826923``)."""
    if value is None:
        return None
    return _utc(value).astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _keystone_time(value: datetime) -> str:
    return _utc(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


class CinderError(Exception):
    """An error the simulated API answers in the service's own body format."""

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


# -- the world ---------------------------------------------------------------------------------


@dataclass
class _User:
    id: str
    name: str
    password: str
    project_id: str
    roles: tuple[str, ...]


@dataclass
class _Project:
    id: str
    name: str


@dataclass
class _AppCred:
    id: str
    name: str
    secret: str
    user_id: str
    project_id: str
    expires_at: datetime | None
    description: str = ""
    unrestricted: bool = False


@dataclass
class _Token:
    value: str
    user_id: str
    project_id: str | None
    roles: tuple[str, ...]
    expires_at: datetime
    methods: tuple[str, ...]
    app_cred_id: str | None = None
    revoked: bool = False


@dataclass
class _Volume:
    id: str
    name: str
    status: str
    size: int
    project_id: str
    user_id: str
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    multiattach: bool = False
    attach_status: str = "detached"
    description: str | None = None
    host: str | None = None
    availability_zone: str = "nova"


@dataclass
class _Attachment:
    id: str
    volume_id: str
    instance: str | None
    status: str
    project_id: str
    created_at: datetime
    connector: dict[str, Any] | None = None
    connection_info: dict[str, Any] | None = None
    attach_mode: str = "null"
    attached_at: datetime | None = None


@dataclass
class _Fault:
    service: str | None
    pattern: re.Pattern[str]
    status: int
    times: int | None
    after: int
    method: str | None
    hang: float | None
    seen: int = 0
    fired: int = 0


@dataclass
class _Hook:
    service: str | None
    pattern: re.Pattern[str]
    method: str | None
    fn: Callable[[OpenStackSim], None]
    times: int | None
    fired: int = 0


@dataclass
class _Request:
    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise CinderError(400, "Malformed request body") from None


@dataclass
class _Response:
    code: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _reply(code: int, obj: Any = None, headers: dict[str, str] | None = None) -> _Response:
    body = b"" if obj is None else _json.encode(obj).encode()
    return _Response(code, body, {"Content-Type": "application/json", **(headers or {})})


# -- HTTP plumbing -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """A threading server that can cut its open keep-alive connections on :meth:`down`."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: OpenStackSim, service: str) -> None:
        self.sim = sim
        self.service = service
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

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
        """Resets are normal here (clients time out, tests cut connections)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: benchmarks make thousands of requests."""

    def _dispatch(self) -> None:
        self.server.sim._serve(self, self.server.service)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def send(self, resp: _Response) -> None:
        head = [f"HTTP/1.1 {resp.code} {_PHRASES.get(resp.code, 'Unknown')}",
                f"Content-Length: {len(resp.body)}"]
        head += [f"{k}: {v}" for k, v in resp.headers.items()]
        if "Date" not in resp.headers and self.server.sim.send_date:
            # Cinder's clock, as its WSGI server sends it: the simulated "now".
            head.append("Date: " + email.utils.format_datetime(
                self.server.sim.clock().astimezone(UTC), usegmt=True))
        if self.close_connection:
            head.append("Connection: close")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(payload if self.command == "HEAD" else payload + resp.body)


class _Listener:
    """One service's listening socket, stoppable and restartable on the same port."""

    def __init__(self, sim: OpenStackSim, service: str) -> None:
        self.sim = sim
        self.service = service
        self.port = 0
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.server is not None:
            return
        server = _Server(("127.0.0.1", self.port), self.sim, self.service)
        self.port = server.server_address[1]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"{self.service}-sim-{self.port}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        server, self.server = self.server, None
        thread, self.thread = self.thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if thread is not None:
            thread.join(timeout=5)


# -- the simulator -----------------------------------------------------------------------------


class OpenStackSim:
    """Keystone and Cinder in threads: ``with OpenStackSim() as sim: ...``.

    The world is built directly (:meth:`add_volume`, :meth:`add_attachment`, the ``inject_*``
    helpers) and changed over HTTP by the clients under test. :attr:`requests` logs every
    request as ``(service, method, path?query)``; :meth:`fail`, :meth:`down`,
    :meth:`expire_tokens` and :meth:`on_request` inject faults.
    """

    ADMIN_PASSWORD = "sim-admin-secret"

    def __init__(self, *, page_max: int = 1000, clock: Clock | None = None,
                 region: str = "RegionOne", project_id_in_url: bool = True,
                 token_ttl: timedelta = timedelta(hours=1)) -> None:
        """``page_max`` is Cinder's ``osapi_max_limit``; ``clock`` gives the simulated "now"
        (timestamps, token and credential expiry), so tests with a fake clock stay consistent."""
        self.page_max = page_max
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        #: whether answers carry a ``Date`` header (a proxy in front may strip it)
        self.send_date = True
        self.region = region
        self.project_id_in_url = project_id_in_url
        self.token_ttl = token_ttl
        self.requests: list[tuple[str, str, str]] = []
        #: tracebacks of unexpected exceptions (answered 500), to debug the simulator itself
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._keystone = _Listener(self, "keystone")
        self._cinder = _Listener(self, "cinder")
        self._projects: dict[str, _Project] = {}
        self._users: dict[str, _User] = {}
        self._app_creds: dict[str, _AppCred] = {}
        self._tokens: dict[str, _Token] = {}
        self._volumes: dict[str, _Volume] = {}
        self._attachments: dict[str, _Attachment] = {}
        self._order: list[str] | None = None
        self._att_index: dict[str, list[_Attachment]] | None = None
        self._faults: list[_Fault] = []
        self._hooks: list[_Hook] = []
        self._revoke_after: int | None = None
        self.admin_project_id = self.add_project("admin")
        self.admin_user_id = self.add_user("admin", self.ADMIN_PASSWORD, project="admin",
                                           roles=("admin", "member", "reader"))

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> OpenStackSim:
        """Listen on two free ports of 127.0.0.1 (the same ones again after :meth:`down`)."""
        self._keystone.start()
        self._cinder.start()
        return self

    def stop(self) -> None:
        """Stop both services (idempotent)."""
        self._keystone.stop()
        self._cinder.stop()

    def down(self, service: str = "keystone") -> None:
        """Close ``keystone`` or ``cinder``'s socket and cut its connections (refused/reset)."""
        self._listener(service).stop()

    def up(self, service: str = "keystone") -> None:
        """Listen again on the same port."""
        self._listener(service).start()

    def _listener(self, service: str) -> _Listener:
        if service not in ("keystone", "cinder"):
            raise ValueError("service is 'keystone' or 'cinder'")
        return self._keystone if service == "keystone" else self._cinder

    def __enter__(self) -> OpenStackSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def keystone_url(self) -> str:
        """Keystone's root URL."""
        if not self._keystone.port:
            raise RuntimeError("OpenStackSim is not started")
        return f"http://127.0.0.1:{self._keystone.port}"

    @property
    def auth_url(self) -> str:
        """The ``auth_url`` for clouds.yaml (``.../v3``)."""
        return self.keystone_url + "/v3"

    @property
    def cinder_url(self) -> str:
        """Cinder's root URL (what ``block_storage_endpoint_override`` takes)."""
        if not self._cinder.port:
            raise RuntimeError("OpenStackSim is not started")
        return f"http://127.0.0.1:{self._cinder.port}"

    # -- identities ----------------------------------------------------------------------------

    def add_project(self, name: str) -> str:
        """Create a project; return its id."""
        with self._lock:
            pid = uuid.uuid4().hex
            self._projects[pid] = _Project(pid, name)
            return pid

    def _project_by_name(self, name: str) -> _Project:
        for project in self._projects.values():
            if project.name == name:
                return project
        raise KeyError(name)

    def add_user(self, name: str, password: str, *, project: str = "admin",
                 roles: Iterable[str] = ("member", "reader")) -> str:
        """Create a user with roles on ``project`` (a name); return the user id."""
        with self._lock:
            if project not in {p.name for p in self._projects.values()}:
                self.add_project(project)
            uid = uuid.uuid4().hex
            self._users[uid] = _User(uid, name, password, self._project_by_name(project).id,
                                     tuple(roles))
            return uid

    def add_application_credential(self, user: str, name: str, *, secret: str | None = None,
                                   expires_at: datetime | None = None,
                                   unrestricted: bool = False) -> tuple[str, str]:
        """An application credential of ``user`` (a name); returns ``(id, secret)``."""
        with self._lock:
            owner = self._user_by_name(user)
            acid = uuid.uuid4().hex
            secret = secret or secrets.token_urlsafe(24)
            self._app_creds[acid] = _AppCred(acid, name, secret, owner.id, owner.project_id,
                                             expires_at, unrestricted=unrestricted)
            return acid, secret

    def set_application_credential(self, acid: str, *, expires_at: datetime | None) -> None:
        """Change when a credential expires (an expired one can no longer authenticate)."""
        with self._lock:
            self._app_creds[acid].expires_at = expires_at

    def _user_by_name(self, name: str) -> _User:
        for user in self._users.values():
            if user.name == name:
                return user
        raise KeyError(name)

    def write_clouds_yaml(self, path: str | Path, cloud: str = "sim", *, user: str = "admin",
                          password: str | None = None,
                          application_credential: tuple[str, str] | None = None) -> str:
        """Write a clouds.yaml (JSON is YAML) with one entry; password or app credential auth."""
        auth: Obj = {"auth_url": self.auth_url}
        entry: Obj = {"region_name": self.region, "interface": "public",
                      "identity_api_version": "3"}
        if application_credential is not None:
            entry["auth_type"] = "v3applicationcredential"
            auth.update(application_credential_id=application_credential[0],
                        application_credential_secret=application_credential[1])
        else:
            owner = self._user_by_name(user)
            entry["auth_type"] = "password"
            auth.update(username=user, user_domain_name="Default",
                        password=password if password is not None else owner.password,
                        project_name=self._projects[owner.project_id].name,
                        project_domain_name="Default")
        entry["auth"] = auth
        Path(path).write_text(json.dumps({"clouds": {cloud: entry}}, indent=2), encoding="utf-8")
        return str(path)

    # -- tokens --------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every token issued so far is rejected from now on (401), as after a key rotation."""
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    def expire_tokens_after(self, cinder_requests: int) -> None:
        """Revoke every token once ``cinder_requests`` more Cinder requests were answered: a
        token that expires in the middle of a paginated list."""
        with self._lock:
            self._revoke_after = cinder_requests

    # -- volumes and attachments -----------------------------------------------------------------

    def add_volume(self, name: str | None = None, *, status: str = "available", size: int = 1,
                   project: str | None = None, age: timedelta = timedelta(hours=1),
                   updated_age: timedelta | None = None, metadata: Mapping[str, str] | None = None,
                   multiattach: bool = False, volume_id: str | None = None,
                   description: str | None = None) -> Obj:
        """Create a volume as Cinder would store it; returns its admin detail view.

        ``age`` sets ``created_at``; ``updated_age`` sets ``updated_at`` (default: same as
        created). No attachments are made: see :meth:`add_attachment`.
        """
        if status not in VOLUME_STATUSES:
            raise ValueError(f"unknown volume status {status!r}")
        with self._lock:
            now = self.clock()
            vid = volume_id or str(uuid.uuid4())
            project_id = (self._project_by_name(project).id if project
                          else self.admin_project_id)
            created = now - age
            updated = now - (updated_age if updated_age is not None else age)
            self._volumes[vid] = _Volume(
                vid, name if name is not None else f"pvc-{uuid.uuid4()}", status, size,
                project_id, self.admin_user_id, created, updated, dict(metadata or {}),
                multiattach, "attached" if status == "in-use" else "detached", description,
                host="sim@lvm#lvm")
            self._order = None
            return self._volume_view(self._volumes[vid], admin=True)

    def add_volumes(self, count: int, *, prefix: str = "pvc-", status: str = "available",
                    age: timedelta = timedelta(days=1)) -> list[str]:
        """Bulk-create ``count`` volumes (ids returned), for benchmarks: distinct creation
        times, one second apart, so the order is stable."""
        with self._lock:
            now = self.clock()
            ids = []
            for i in range(count):
                vid = str(uuid.uuid4())
                when = now - age - timedelta(seconds=i)
                self._volumes[vid] = _Volume(
                    vid, f"{prefix}{uuid.uuid4()}", status, 1, self.admin_project_id,
                    self.admin_user_id, when, when,
                    attach_status="attached" if status == "in-use" else "detached",
                    host="sim@lvm#lvm")
                ids.append(vid)
            self._order = None
            return ids

    def add_attachment(self, volume_id: str, *, status: str = "attached",
                       instance: str | None = None, age: timedelta = timedelta(hours=1),
                       update_volume: bool = True, host: str = "node-1") -> Obj:
        """Attach (``attached``: with a connector, as after a real attach) or reserve.

        ``update_volume`` recomputes the volume's status and attach_status from its
        attachments as Cinder does (and, for a new reservation, sets ``updated_at``); False
        writes the attachment alone, for states the API never makes by itself.
        """
        if status not in ATTACH_STATUSES:
            raise ValueError(f"unknown attachment status {status!r}")
        with self._lock:
            volume = self._volumes[volume_id]
            now = self.clock()
            aid = str(uuid.uuid4())
            connected = status in ("attached", "detaching", "error_detaching")
            attachment = _Attachment(
                aid, volume_id, instance or str(uuid.uuid4()), status, volume.project_id,
                now - age,
                connector={"host": host, "initiator": f"iqn.2004-10.com.ubuntu:{host}"}
                if connected else None,
                connection_info={"driver_volume_type": "iscsi", "data": {}} if connected else None,
                attach_mode="rw" if connected else "null",
                attached_at=(now - age) if status == "attached" else None)
            self._attachments[aid] = attachment
            self._att_index = None
            if update_volume:
                self._recompute(volume)
            return self._attachment_view(attachment, detail=True)

    def _atts_of(self, volume_id: str) -> list[_Attachment]:
        """The attachments of one volume, from an index rebuilt after any change (a list of
        20,000 volumes must not scan 5,000 attachments per volume)."""
        if self._att_index is None:
            index: dict[str, list[_Attachment]] = {}
            for attachment in self._attachments.values():
                index.setdefault(attachment.volume_id, []).append(attachment)
            self._att_index = index
        return self._att_index.get(volume_id, [])

    def add_attachments(self, volume_ids: Iterable[str], *, status: str = "attached",
                        age: timedelta = timedelta(days=1)) -> list[str]:
        """Bulk-attach (benchmarks): one attachment per volume, statuses set as Cinder would."""
        if status not in ATTACH_STATUSES:
            raise ValueError(f"unknown attachment status {status!r}")
        with self._lock:
            now = self.clock()
            ids = []
            for vid in volume_ids:
                volume = self._volumes[vid]
                aid = str(uuid.uuid4())
                connected = status == "attached"
                self._attachments[aid] = _Attachment(
                    aid, vid, str(uuid.uuid4()), status, volume.project_id, now - age,
                    connector={"host": "node-1"} if connected else None,
                    connection_info={"driver_volume_type": "iscsi"} if connected else None,
                    attach_mode="rw" if connected else "null",
                    attached_at=now - age if connected else None)
                volume.status = {"attached": "in-use"}.get(status, status)
                volume.attach_status = status
                ids.append(aid)
            self._att_index = None
            return ids

    def _recompute(self, volume: _Volume) -> None:
        """Cinder's ``_get_statuses_from_attachments`` (errors ignored, alphabetical first)."""
        states = sorted(a.status for a in self._atts_of(volume.id)
                        if not a.status.startswith("error_"))
        attach_status = states[0] if states else "detached"
        volume.attach_status = attach_status
        volume.status = {"attached": "in-use", "detached": "available"}.get(attach_status,
                                                                              attach_status)

    def set_volume(self, volume_id: str, *, touch: bool = True, **fields: Any) -> Obj:
        """Change volume fields directly (``status``, ``name``, ``metadata``...); ``touch``
        sets ``updated_at`` to now, as any Cinder database write does."""
        with self._lock:
            volume = self._volumes[volume_id]
            for key, value in fields.items():
                if not hasattr(volume, key):
                    raise AttributeError(key)
                setattr(volume, key, value)
            if touch and "updated_at" not in fields:
                volume.updated_at = self.clock()
            return self._volume_view(volume, admin=True)

    def set_attachment(self, attachment_id: str, **fields: Any) -> None:
        """Change attachment fields directly."""
        with self._lock:
            attachment = self._attachments[attachment_id]
            for key, value in fields.items():
                if not hasattr(attachment, key):
                    raise AttributeError(key)
                setattr(attachment, key, value)
            self._att_index = None

    def remove_volume(self, volume_id: str) -> None:
        """Delete a volume and its attachments without API rules."""
        with self._lock:
            self._volumes.pop(volume_id)
            for attachment in self._atts_of(volume_id):
                del self._attachments[attachment.id]
            self._att_index = None
            self._order = None

    def volume(self, volume_id: str) -> Obj | None:
        """The admin detail view of one volume, or None."""
        with self._lock:
            volume = self._volumes.get(volume_id)
            return None if volume is None else self._volume_view(volume, admin=True)

    def volumes(self) -> list[Obj]:
        """Every volume (admin detail view), in Cinder's list order."""
        with self._lock:
            return [self._volume_view(self._volumes[v], admin=True) for v in self._ordered()]

    def attachments(self, volume_id: str | None = None) -> list[Obj]:
        """Every attachment (detail view), optionally of one volume."""
        with self._lock:
            return [self._attachment_view(a, detail=True) for a in self._attachments.values()
                    if volume_id is None or a.volume_id == volume_id]

    # -- injections (the world builder's vocabulary) -------------------------------------------

    def inject_stuck_volume(self, name: str | None = None, *, status: str = "reserved",
                            age: timedelta = timedelta(hours=2)) -> Obj:
        """A volume left in a transitional ``status`` since ``age`` ago, with what Cinder would
        hold beside it: a reserved attachment for ``reserved``, an attaching one for
        ``attaching``, an attached one for ``detaching``, nothing for the deletes."""
        with self._lock:
            volume = self.add_volume(name, status="available", age=age + timedelta(days=1))
            vid = volume["id"]
            if status == "reserved":
                self.add_attachment(vid, status="reserved", age=age)
            elif status == "attaching":
                self.add_attachment(vid, status="attaching", age=age)
            elif status == "detaching":
                self.add_attachment(vid, status="attached", age=age + timedelta(hours=1))
            self._volumes[vid].status = status
            self._volumes[vid].updated_at = self.clock() - age
            return self._volume_view(self._volumes[vid], admin=True)

    def inject_dangling_attachment(self, name: str | None = None, *,
                                   age: timedelta = timedelta(hours=2),
                                   beside_attached: bool = True,
                                   volume_id: str | None = None) -> tuple[Obj, Obj]:
        """A reserved attachment nobody will complete; returns ``(volume, attachment)``.

        ``beside_attached``: next to an attached attachment of a non-multiattach volume (a
        re-attach to a new node that died half way; the API refuses to make this, a crash
        leaves it). Either way the volume is ``reserved``, as the reservation left it (real
        Cinder sets the status on reserve and recomputes it only when an attachment goes).
        """
        with self._lock:
            if volume_id is None:
                volume_id = self.add_volume(name, age=age + timedelta(days=1))["id"]
                if beside_attached:
                    self.add_attachment(volume_id, status="attached",
                                        age=age + timedelta(hours=1))
            attachment = self.add_attachment(volume_id, status="reserved", age=age,
                                             update_volume=False, host="node-2")
            volume = self._volumes[volume_id]
            volume.status = volume.attach_status = "reserved"
            volume.updated_at = self.clock() - age
            return self._volume_view(volume, admin=True), attachment

    def inject_orphan_volume(self, name: str | None = None, *,
                             age: timedelta = timedelta(days=30),
                             metadata: Mapping[str, str] | None = None) -> Obj:
        """An ``available`` ``pvc-*`` volume (whether a PV names it is the cluster's matter)."""
        return self.add_volume(name, age=age, metadata=metadata)

    # -- faults and hooks ----------------------------------------------------------------------

    def fail(self, path_regex: str, *, status: int = 500, times: int | None = None,
             service: str | None = "cinder", method: str | None = None, after: int = 0,
             hang: float | None = None) -> None:
        """Answer requests whose path matches ``path_regex`` with ``status``.

        The next ``times`` matches (None: all) after the first ``after`` fail; ``status=0``
        closes the connection without an answer; ``hang`` delays the answer that many seconds.
        """
        with self._lock:
            self._faults.append(_Fault(service, re.compile(path_regex), status, times, after,
                                       method, hang))

    def clear_faults(self) -> None:
        """Forget every fault and hook."""
        with self._lock:
            self._faults.clear()
            self._hooks.clear()
            self._revoke_after = None

    def on_request(self, path_regex: str, fn: Callable[[OpenStackSim], None], *,
                   service: str | None = "cinder", method: str | None = None,
                   times: int | None = 1) -> None:
        """Run ``fn(sim)`` right after a matching request was answered: the world changing
        while a client is in the middle of something."""
        with self._lock:
            self._hooks.append(_Hook(service, re.compile(path_regex), method, fn, times))

    def reset_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self.requests.clear()

    def count(self, service: str | None = None, path_regex: str | None = None,
              method: str | None = None) -> int:
        """How many logged requests match."""
        pattern = re.compile(path_regex) if path_regex else None
        with self._lock:
            return sum(1 for s, m, p in self.requests
                       if (service is None or s == service) and (method is None or m == method)
                       and (pattern is None or pattern.search(p)))

    # -- HTTP entry ----------------------------------------------------------------------------

    def _serve(self, h: _Handler, service: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        split = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        req = _Request(service, h.command, split.path, query, h.headers, body)
        with self._lock:
            self.requests.append((service, h.command, h.path))
            fault = self._match_fault(req)
        if fault is not None:
            if fault.hang:
                threading.Event().wait(fault.hang)
            if fault.status == 0:
                h.close_connection = True
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                return
            h.send(self._error(service, fault.status, _fault_message(fault.status)))
            return
        try:
            resp = self._keystone_route(req) if service == "keystone" else self._cinder_route(req)
        except CinderError as exc:
            resp = self._error(service, exc.code, exc.message, exc.headers)
        except Exception:
            self.errors.append(traceback.format_exc())
            resp = self._error(service, 500, "The server has either erred or is incapable of "
                                             "performing the requested operation.")
        h.send(resp)
        self._after(req)

    def _match_fault(self, req: _Request) -> _Fault | None:
        for fault in self._faults:
            if fault.service not in (None, req.service):
                continue
            if fault.method not in (None, req.method) or not fault.pattern.search(req.path):
                continue
            fault.seen += 1
            if fault.seen <= fault.after:
                continue
            if fault.times is not None and fault.fired >= fault.times:
                continue
            fault.fired += 1
            return fault
        return None

    def _after(self, req: _Request) -> None:
        hooks = []
        with self._lock:
            if req.service == "cinder" and self._revoke_after is not None:
                self._revoke_after -= 1
                if self._revoke_after <= 0:
                    self._revoke_after = None
                    for token in self._tokens.values():
                        token.revoked = True
            for hook in self._hooks:
                if hook.service not in (None, req.service):
                    continue
                if hook.method not in (None, req.method) or not hook.pattern.search(req.path):
                    continue
                if hook.times is not None and hook.fired >= hook.times:
                    continue
                hook.fired += 1
                hooks.append(hook)
        for hook in hooks:
            hook.fn(self)

    def _error(self, service: str, code: int, message: str,
               headers: dict[str, str] | None = None) -> _Response:
        if service == "keystone" or code == 401:
            title = _PHRASES.get(code, "Error")
            extra = dict(headers or {})
            if code == 401:
                extra.setdefault("WWW-Authenticate", f'Keystone uri="{self.auth_url}"')
            return _reply(code, {"error": {"code": code, "title": title, "message": message}},
                          extra)
        name = _CINDER_FAULT_NAMES.get(code, "computeFault")
        return _reply(code, {name: {"code": code, "message": message}},
                      {**self._version_headers("3.0"), **(headers or {})})

    # -- Keystone --------------------------------------------------------------------------------

    def _version_doc(self) -> Obj:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": self.auth_url + "/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}

    def _keystone_route(self, req: _Request) -> _Response:
        path = req.path.rstrip("/") or "/"
        if path == "/" and req.method == "GET":
            return _reply(300, {"versions": {"values": [self._version_doc()]}})
        if path == "/v3" and req.method == "GET":
            return _reply(200, {"version": self._version_doc()})
        if path == "/v3/auth/tokens" and req.method == "POST":
            return self._issue_token(req)
        with self._lock:
            caller = self._valid_token(req.headers.get("X-Auth-Token"))
            if caller is None:
                raise CinderError(401, "The request you have made requires authentication.")
            if path == "/v3/auth/tokens":
                return self._validate_token(req, caller)
            match = re.fullmatch(r"/v3/users/([^/]+)/application_credentials(?:/([^/]+))?", path)
            if match and req.method == "GET":
                return self._list_app_creds(req, caller, match.group(1), match.group(2))
            match = re.fullmatch(r"/v3/users/([^/]+)", path)
            if match and req.method == "GET":
                user = self._users.get(match.group(1))
                if user is None or (user.id != caller.user_id and "admin" not in caller.roles):
                    raise CinderError(404, f"Could not find user: {match.group(1)}.")
                return _reply(200, {"user": self._user_view(user)})
            if path in ("/v3/projects", "/v3/auth/projects") and req.method == "GET":
                visible = [p for p in self._projects.values() if "admin" in caller.roles
                           or p.id == caller.project_id]
                name = req.query.get("name")
                return _reply(200, {"projects": [self._project_view(p) for p in visible
                                                 if name is None or p.name == name],
                                    "links": {"self": self.auth_url + path, "next": None,
                                              "previous": None}})
            match = re.fullmatch(r"/v3/projects/([^/]+)", path)
            if match and req.method == "GET":
                project = self._projects.get(match.group(1))
                if project is None:
                    raise CinderError(404, f"Could not find project: {match.group(1)}.")
                return _reply(200, {"project": self._project_view(project)})
            if path == "/v3/auth/catalog" and req.method == "GET":
                return _reply(200, {"catalog": self._catalog(caller.project_id)})
        raise CinderError(404, "The resource could not be found.")

    def _user_view(self, user: _User) -> Obj:
        return {"id": user.id, "name": user.name, "domain_id": "default", "enabled": True,
                "default_project_id": user.project_id, "password_expires_at": None,
                "links": {"self": f"{self.auth_url}/users/{user.id}"}}

    def _project_view(self, project: _Project) -> Obj:
        return {"id": project.id, "name": project.name, "domain_id": "default",
                "enabled": True, "is_domain": False, "parent_id": "default",
                "description": "", "tags": [],
                "links": {"self": f"{self.auth_url}/projects/{project.id}"}}

    def _issue_token(self, req: _Request) -> _Response:
        data = req.json() or {}
        identity = ((data.get("auth") or {}).get("identity")) or {}
        methods = identity.get("methods") or []
        with self._lock:
            now = self.clock()
            if "application_credential" in methods:
                spec = identity.get("application_credential") or {}
                cred = self._app_creds.get(spec.get("id") or "")
                if cred is None and spec.get("name"):
                    user_spec = spec.get("user") or {}
                    cred = next((c for c in self._app_creds.values()
                                 if c.name == spec["name"]
                                 and self._users[c.user_id].name == user_spec.get("name")), None)
                if cred is None or not secrets.compare_digest(cred.secret,
                                                              str(spec.get("secret", ""))):
                    raise CinderError(401, "The request you have made requires authentication.")
                if cred.expires_at is not None and _utc(cred.expires_at) <= now:
                    raise CinderError(401, "The request you have made requires authentication.")
                user = self._users[cred.user_id]
                project_id: str | None = cred.project_id
                expires = now + self.token_ttl
                if cred.expires_at is not None:
                    expires = min(expires, _utc(cred.expires_at))
                token = self._new_token(user, project_id, ("application_credential",), expires,
                                        cred.id)
            elif "password" in methods:
                spec = ((identity.get("password") or {}).get("user")) or {}
                user_or_none = (self._users.get(spec.get("id") or "")
                                or next((u for u in self._users.values()
                                         if u.name == spec.get("name")), None))
                if user_or_none is None or not secrets.compare_digest(
                        user_or_none.password, str(spec.get("password", ""))):
                    raise CinderError(401, "The request you have made requires authentication.")
                user = user_or_none
                project_id = self._scope(data, user)
                token = self._new_token(user, project_id, ("password",), now + self.token_ttl)
            else:
                raise CinderError(401, "The request you have made requires authentication.")
            return _reply(201, {"token": self._token_view(token)},
                          {"X-Subject-Token": token.value})

    def _scope(self, data: Obj, user: _User) -> str | None:
        scope = ((data.get("auth") or {}).get("scope")) or {}
        project = scope.get("project") or None
        if project is None:
            return None
        found = (self._projects.get(project.get("id") or "")
                 or next((p for p in self._projects.values() if p.name == project.get("name")),
                         None))
        if found is None or found.id != user.project_id:
            raise CinderError(401, "The request you have made requires authentication.")
        return found.id

    def _new_token(self, user: _User, project_id: str | None, methods: tuple[str, ...],
                   expires: datetime, app_cred_id: str | None = None) -> _Token:
        token = _Token("gAAAAA" + secrets.token_urlsafe(48), user.id, project_id,
                       user.roles if project_id else (), expires, methods, app_cred_id)
        self._tokens[token.value] = token
        return token

    def _valid_token(self, value: str | None) -> _Token | None:
        token = self._tokens.get(value or "")
        if token is None or token.revoked or _utc(token.expires_at) <= self.clock():
            return None
        if token.app_cred_id is not None:
            cred = self._app_creds.get(token.app_cred_id)
            if cred is None or (cred.expires_at is not None
                                and _utc(cred.expires_at) <= self.clock()):
                return None
        return token

    def _validate_token(self, req: _Request, caller: _Token) -> _Response:
        subject = self._valid_token(req.headers.get("X-Subject-Token"))
        if subject is None:
            raise CinderError(404, "Could not find token.")
        if req.method == "DELETE":
            subject.revoked = True
            return _Response(204)
        return _reply(200, {"token": self._token_view(subject)},
                      {"X-Subject-Token": subject.value})

    def _token_view(self, token: _Token) -> Obj:
        user = self._users[token.user_id]
        view: Obj = {
            "methods": list(token.methods),
            "user": {"domain": {"id": "default", "name": "Default"}, "id": user.id,
                     "name": user.name, "password_expires_at": None},
            "audit_ids": [secrets.token_urlsafe(16)],
            "expires_at": _keystone_time(token.expires_at),
            "issued_at": _keystone_time(self.clock()),
        }
        if token.project_id is not None:
            project = self._projects[token.project_id]
            view.update(
                project={"domain": {"id": "default", "name": "Default"}, "id": project.id,
                         "name": project.name},
                is_domain=False,
                roles=[{"id": f"role-{name}", "name": name} for name in token.roles],
                catalog=self._catalog(token.project_id),
            )
        if token.app_cred_id is not None:
            cred = self._app_creds[token.app_cred_id]
            view["application_credential"] = {"id": cred.id, "name": cred.name,
                                              "restricted": not cred.unrestricted}
        return view

    def _catalog(self, project_id: str | None) -> list[Obj]:
        def endpoints(url: str) -> list[Obj]:
            return [{"id": uuid.uuid5(uuid.NAMESPACE_URL, url + iface).hex, "interface": iface,
                     "region": self.region, "region_id": self.region, "url": url}
                    for iface in ("public", "internal", "admin")]

        volume_url = self.cinder_url + "/v3"
        if self.project_id_in_url and project_id:
            volume_url += f"/{project_id}"
        return [
            {"id": "identity", "type": "identity", "name": "keystone",
             "endpoints": endpoints(self.auth_url)},
            {"id": "block-storage", "type": "block-storage", "name": "cinder",
             "endpoints": endpoints(volume_url)},
            {"id": "volumev3", "type": "volumev3", "name": "cinderv3",
             "endpoints": endpoints(volume_url)},
        ]

    def _list_app_creds(self, req: _Request, caller: _Token, user_id: str,
                        acid: str | None) -> _Response:
        if user_id != caller.user_id:
            raise CinderError(403, "You are not authorized to perform the requested action: "
                                   "identity:list_application_credentials.")
        if acid is not None:
            cred = self._app_creds.get(acid)
            if cred is None or cred.user_id != user_id:
                raise CinderError(404, f"Could not find Application Credential: {acid}.")
            return _reply(200, {"application_credential": self._app_cred_view(cred)})
        name = req.query.get("name")
        creds = [self._app_cred_view(c) for c in self._app_creds.values()
                 if c.user_id == user_id and (name is None or c.name == name)]
        return _reply(200, {"application_credentials": creds,
                            "links": {"self": f"{self.auth_url}/users/{user_id}/"
                                              "application_credentials",
                                      "previous": None, "next": None}})

    def _app_cred_view(self, cred: _AppCred) -> Obj:
        user = self._users[cred.user_id]
        return {"id": cred.id, "name": cred.name, "description": cred.description,
                "user_id": cred.user_id, "project_id": cred.project_id,
                "expires_at": (None if cred.expires_at is None else
                               cinder_time(cred.expires_at)),
                "unrestricted": cred.unrestricted, "system": None, "access_rules": [],
                "roles": [{"id": f"role-{r}", "name": r, "domain_id": None}
                          for r in user.roles],
                "links": {"self": f"{self.auth_url}/users/{cred.user_id}/"
                                  f"application_credentials/{cred.id}"}}

    # -- Cinder ------------------------------------------------------------------------------------

    def _cinder_versions(self) -> Obj:
        return {"versions": [{
            "id": "v3.0", "status": "CURRENT", "version": _mv(MAX_MICROVERSION),
            "min_version": _mv(MIN_MICROVERSION), "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "describedby", "type": "text/html",
                       "href": "https://docs.openstack.org/"},
                      {"rel": "self", "href": self.cinder_url + "/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}]}]}

    @staticmethod
    def _version_headers(version: str) -> dict[str, str]:
        return {"OpenStack-API-Version": f"volume {version}", "Vary": "OpenStack-API-Version",
                "x-openstack-request-id": f"req-{uuid.uuid4()}"}

    def _microversion(self, req: _Request) -> tuple[int, int]:
        header = req.headers.get("OpenStack-API-Version") or ""
        match = re.match(r"^\s*volume\s+(\S+)\s*$", header)
        if not match:
            return MIN_MICROVERSION
        text = match.group(1)
        if text == "latest":
            return MAX_MICROVERSION
        parts = re.fullmatch(r"(\d+)\.(\d+)", text)
        if not parts:
            raise CinderError(400, f"Invalid API version request string {text}")
        version = (int(parts.group(1)), int(parts.group(2)))
        if not MIN_MICROVERSION <= version <= MAX_MICROVERSION:
            raise CinderError(406, f"Version {text} is not supported by the API. Minimum is "
                                   f"{_mv(MIN_MICROVERSION)} and maximum is "
                                   f"{_mv(MAX_MICROVERSION)}.",
                              headers=self._version_headers(text))
        return version

    def _cinder_route(self, req: _Request) -> _Response:
        path = req.path.rstrip("/") or "/"
        if path == "/" and req.method == "GET":
            return _reply(300, self._cinder_versions(), self._version_headers("3.0"))
        version = self._microversion(req)
        headers = self._version_headers(_mv(version))
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v3"]:
            raise CinderError(404, "The resource could not be found.")
        parts = parts[1:]
        if not parts and req.method == "GET":
            return _reply(200, self._cinder_versions(), headers)
        with self._lock:
            caller = self._valid_token(req.headers.get("X-Auth-Token"))
            if caller is None:
                raise CinderError(401, "The request you have made requires authentication.")
            if parts and parts[0] not in ("volumes", "attachments"):
                if parts[0] != caller.project_id:
                    if parts[0] in self._projects:
                        raise CinderError(400, "Malformed request url")
                    raise CinderError(404, "The resource could not be found.")
                parts = parts[1:]
            if not parts and req.method == "GET":
                return _reply(200, self._cinder_versions(), headers)
            resp = self._cinder_resource(req, caller, parts, version)
        resp.headers.update(headers)
        return resp

    def _cinder_resource(self, req: _Request, caller: _Token, parts: list[str],
                         version: tuple[int, int]) -> _Response:
        admin = "admin" in caller.roles
        head, rest = parts[0], parts[1:]
        if head == "volumes":
            if not rest:
                if req.method == "GET":
                    return self._list_volumes(req, caller, detail=False)
                if req.method == "POST":
                    return self._create_volume(req, caller)
            elif rest == ["detail"] and req.method == "GET":
                return self._list_volumes(req, caller, detail=True)
            else:
                volume = self._visible_volume(caller, rest[0])
                if len(rest) == 1:
                    if req.method == "GET":
                        return _reply(200, {"volume": self._volume_view(volume, admin)})
                    if req.method == "DELETE":
                        return self._delete_volume(volume)
                elif rest[1:] == ["action"] and req.method == "POST":
                    return self._volume_action(req, caller, volume)
                elif rest[1:] == ["metadata"]:
                    if req.method == "GET":
                        return _reply(200, {"metadata": dict(volume.metadata)})
                    if req.method in ("POST", "PUT"):
                        body = req.json() or {}
                        meta = body.get("metadata")
                        if not isinstance(meta, dict):
                            raise CinderError(400, "Malformed request body")
                        if req.method == "PUT":
                            volume.metadata = {}
                        volume.metadata.update({str(k): str(v) for k, v in meta.items()})
                        return _reply(200, {"metadata": dict(volume.metadata)})
                elif len(rest) == 3 and rest[1] == "metadata" and req.method == "DELETE":
                    if volume.metadata.pop(rest[2], None) is None:
                        raise CinderError(404, "Metadata item was not found")
                    return _Response(200)
        elif head == "attachments":
            if version < ATTACH_MICROVERSION:
                raise CinderError(404, "The resource could not be found.")
            if not rest and req.method == "GET":
                return self._list_attachments(req, caller, detail=False)
            if not rest and req.method == "POST":
                return self._create_attachment(req, caller)
            if rest == ["detail"] and req.method == "GET":
                return self._list_attachments(req, caller, detail=True)
            if len(rest) == 1:
                attachment = self._attachments.get(rest[0])
                if attachment is None:
                    raise CinderError(404, "Volume attachment could not be found with filter: "
                                           f"attachment_id = {rest[0]}.")
                if not (admin or attachment.project_id == caller.project_id):
                    if req.method == "DELETE":
                        raise CinderError(403, "Policy doesn't allow volume:attachment_delete "
                                               "to be performed.")
                    raise CinderError(404, "Volume attachment could not be found with filter: "
                                           f"attachment_id = {rest[0]}.")
                if req.method == "GET":
                    return _reply(200, {"attachment": self._attachment_view(attachment, True)})
                if req.method == "DELETE":
                    return self._delete_attachment(attachment)
        raise CinderError(404, "The resource could not be found.")

    def _visible_volume(self, caller: _Token, volume_id: str) -> _Volume:
        volume = self._volumes.get(volume_id)
        if volume is None or not ("admin" in caller.roles
                                  or volume.project_id == caller.project_id):
            raise CinderError(404, f"Volume {volume_id} could not be found.")
        return volume

    def _ordered(self) -> list[str]:
        if self._order is None:
            self._order = [v.id for v in sorted(self._volumes.values(),
                                                key=lambda v: (_utc(v.created_at), v.id),
                                                reverse=True)]
        return self._order

    def _limit(self, req: _Request) -> int:
        text = req.query.get("limit")
        if text is None:
            return self.page_max
        try:
            limit = int(text)
        except ValueError:
            raise CinderError(400, "limit param must be an integer") from None
        if limit < 0:
            raise CinderError(400, "limit param must be positive")
        return min(limit, self.page_max)

    def _list_volumes(self, req: _Request, caller: _Token, *, detail: bool) -> _Response:
        admin = "admin" in caller.roles
        all_projects = admin and req.query.get("all_tenants", "0").lower() in (
            "1", "true", "yes", "on", "t", "y")
        status = req.query.get("status")
        name = req.query.get("name")
        project_filter = req.query.get("project_id") if all_projects else None
        ids = self._ordered()
        marker = req.query.get("marker")
        start = 0
        if marker:
            if marker not in self._volumes:
                raise CinderError(404, f"Volume {marker} could not be found.")
            start = ids.index(marker) + 1
        limit = self._limit(req)
        page: list[_Volume] = []
        for vid in ids[start:]:
            if len(page) >= limit:
                break
            volume = self._volumes[vid]
            if not all_projects and volume.project_id != caller.project_id:
                continue
            if project_filter and volume.project_id != project_filter:
                continue
            if status and volume.status != status:
                continue
            if name and volume.name != name:
                continue
            page.append(volume)
        if detail:
            items = [self._volume_view(v, admin) for v in page]
        else:
            items = [{"id": v.id, "name": v.name, "links": self._links("volumes", v.id)}
                     for v in page]
        result: Obj = {"volumes": items}
        if page and len(page) == limit:
            query = {k: v for k, v in req.query.items() if k != "marker"}
            query.update(limit=str(limit), marker=page[-1].id)
            base = req.path.rstrip("/")
            result["volumes_links"] = [{"rel": "next", "href": self.cinder_url + base + "?"
                                        + urlencode(query)}]
        return _reply(200, result)

    def _links(self, collection: str, item_id: str) -> list[Obj]:
        return [{"rel": "self", "href": f"{self.cinder_url}/v3/{collection}/{item_id}"},
                {"rel": "bookmark", "href": f"{self.cinder_url}/{collection}/{item_id}"}]

    def _volume_view(self, volume: _Volume, admin: bool) -> Obj:
        attached = [a for a in self._atts_of(volume.id) if a.status == "attached"]
        attached.sort(key=lambda a: a.created_at)
        view: Obj = {
            "id": volume.id, "status": volume.status, "size": volume.size,
            "availability_zone": volume.availability_zone,
            "created_at": cinder_time(volume.created_at),
            "updated_at": cinder_time(volume.updated_at),
            "name": volume.name, "description": volume.description,
            "volume_type": "__DEFAULT__", "snapshot_id": None, "source_volid": None,
            "metadata": dict(volume.metadata), "links": self._links("volumes", volume.id),
            "user_id": volume.user_id, "bootable": "false", "encrypted": False,
            "replication_status": None, "consistencygroup_id": None,
            "multiattach": volume.multiattach,
            "attachments": [{"id": volume.id, "attachment_id": a.id, "volume_id": volume.id,
                             "server_id": a.instance,
                             "host_name": (a.connector or {}).get("host"),
                             "device": "/dev/vdb", "attached_at": cinder_time(a.attached_at)}
                            for a in attached],
            "migration_status": None, "group_id": None, "provider_id": None,
        }
        if admin:
            view.update({"os-vol-tenant-attr:tenant_id": volume.project_id,
                         "os-vol-mig-status-attr:migstat": None,
                         "os-vol-mig-status-attr:name_id": None,
                         "os-vol-host-attr:host": volume.host})
        return view

    def _create_volume(self, req: _Request, caller: _Token) -> _Response:
        spec = (req.json() or {}).get("volume")
        if not isinstance(spec, dict) or not isinstance(spec.get("size"), int):
            raise CinderError(400, "Invalid input received: size is required")
        now = self.clock()
        assert caller.project_id is not None
        volume = _Volume(str(uuid.uuid4()), str(spec.get("name") or ""), "available",
                         spec["size"], caller.project_id, caller.user_id, now, now,
                         {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()},
                         bool(spec.get("multiattach")), description=spec.get("description"))
        self._volumes[volume.id] = volume
        self._order = None
        return _reply(202, {"volume": self._volume_view(volume, "admin" in caller.roles)})

    def _delete_volume(self, volume: _Volume) -> _Response:
        if self._atts_of(volume.id):
            raise CinderError(400, "Invalid volume: Volume status must be available or error or "
                                   "error_restoring or error_extending or error_managing and "
                                   "must not be migrating, attached, belong to a group, have "
                                   "snapshots, awaiting a transfer, or be disassociated from "
                                   "snapshots after volume transfer.")
        if volume.status not in ("available", "error", "error_restoring", "error_extending",
                                 "error_managing"):
            raise CinderError(400, "Invalid volume: Volume status must be available or error or "
                                   "error_restoring or error_extending or error_managing and "
                                   "must not be migrating, attached, belong to a group, have "
                                   "snapshots, awaiting a transfer, or be disassociated from "
                                   "snapshots after volume transfer.")
        del self._volumes[volume.id]
        self._order = None
        return _Response(202, b"", {"Content-Type": "application/json"})

    def _volume_action(self, req: _Request, caller: _Token, volume: _Volume) -> _Response:
        body = req.json()
        if not isinstance(body, dict) or len(body) != 1:
            raise CinderError(400, "Malformed request body")
        (action, args), = body.items()
        if action != "os-reset_status":
            raise CinderError(400, f"There is no such action: {action}")
        if "admin" not in caller.roles:
            raise CinderError(403, "Policy doesn't allow volume_extension:volume_admin_actions:"
                                   "reset_status to be performed.")
        if not isinstance(args, dict):
            raise CinderError(400, "Malformed request body")
        status = args.get("status")
        attach_status = args.get("attach_status")
        if status is not None and status not in VOLUME_STATUSES:
            raise CinderError(400, f"Volume status: {status} is invalid.")
        if status in ("deleting", "error_deleting"):
            raise CinderError(400, f"Cannot reset-state to {status}")
        volume_atts = list(self._atts_of(volume.id))
        if status == "in-use" and not volume_atts:
            raise CinderError(400, "Cannot reset-state to in-use because volume does not have "
                                   "any attachments.")
        if status:
            volume.status = status
        if attach_status:
            volume.attach_status = attach_status
            if attach_status == "detached":
                for attachment in volume_atts:
                    del self._attachments[attachment.id]
                self._att_index = None
        volume.updated_at = self.clock()
        return _Response(202, b"", {"Content-Type": "application/json"})

    def _list_attachments(self, req: _Request, caller: _Token, *, detail: bool) -> _Response:
        admin = "admin" in caller.roles
        all_projects = admin and "all_tenants" in req.query
        volume_id = req.query.get("volume_id")
        status = req.query.get("status") or req.query.get("attach_status")
        instance = req.query.get("instance_id")
        ordered = sorted(self._attachments.values(), key=lambda a: (_utc(a.created_at), a.id),
                         reverse=True)
        marker = req.query.get("marker")
        start = 0
        if marker:
            ids = [a.id for a in ordered]
            if marker not in ids:
                raise CinderError(404, f"VolumeAttachment {marker} could not be found.")
            start = ids.index(marker) + 1
        limit = self._limit(req)
        page: list[Obj] = []
        for attachment in ordered[start:]:
            if len(page) >= limit:
                break
            if not all_projects and attachment.project_id != caller.project_id:
                continue
            if volume_id and attachment.volume_id != volume_id:
                continue
            if status and attachment.status != status:
                continue
            if instance and attachment.instance != instance:
                continue
            page.append(self._attachment_view(attachment, detail))
        return _reply(200, {"attachments": page})

    @staticmethod
    def _attachment_view(attachment: _Attachment, detail: bool) -> Obj:
        view: Obj = {"id": attachment.id, "status": attachment.status,
                     "instance": attachment.instance, "volume_id": attachment.volume_id}
        if detail:
            view.update(attached_at=cinder_time(attachment.attached_at) or "", detached_at="",
                        attach_mode=attachment.attach_mode,
                        connection_info=attachment.connection_info or {})
        return view

    def _create_attachment(self, req: _Request, caller: _Token) -> _Response:
        spec = (req.json() or {}).get("attachment")
        if not isinstance(spec, dict):
            raise CinderError(400, "Malformed request body")
        volume = self._visible_volume(caller, str(spec.get("volume_uuid")))
        if spec.get("connector"):
            raise CinderError(400, "the simulator only makes reservations (no connector)")
        allowed = ("available", "reserved", "in-use") if volume.multiattach else ("available",)
        if volume.status not in allowed:
            raise CinderError(400, f"Invalid volume: Volume {volume.id} status must be "
                                   f"available or downloading to reserve, but the current "
                                   f"status is {volume.status}.")
        now = self.clock()
        attachment = _Attachment(str(uuid.uuid4()), volume.id, spec.get("instance_uuid"),
                                 "reserved", volume.project_id, now)
        self._attachments[attachment.id] = attachment
        self._att_index = None
        volume.status = volume.attach_status = "reserved"
        volume.updated_at = now
        return _reply(200, {"attachment": self._attachment_view(attachment, True)})

    def _delete_attachment(self, attachment: _Attachment) -> _Response:
        if attachment.instance and attachment.connection_info:
            raise CinderError(409, "Detected user call to delete in-use attachment. Call must "
                                   "come from the nova service and nova must be configured to "
                                   "send the service token.")
        del self._attachments[attachment.id]
        self._att_index = None
        volume = self._volumes.get(attachment.volume_id)
        remaining = []
        if volume is not None:
            self._recompute(volume)  # updated_at is kept, as Cinder's volume_detached does
            remaining = [self._attachment_view(a, False) for a in self._atts_of(volume.id)]
        return _reply(200, {"attachments": remaining})


def _mv(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _fault_message(status: int) -> str:
    return {500: "The server has either erred or is incapable of performing the requested "
                 "operation.",
            502: "Bad Gateway", 503: "The service is unavailable at this time.",
            504: "Gateway Timeout"}.get(status, f"simulated fault {status}")


# -- Kubernetes objects that go with volumes ------------------------------------------------------

CSI_DRIVER = "cinder.csi.openstack.org"


def pv_for_volume(volume: Mapping[str, Any], *, claim_namespace: str | None = None,
                  claim_name: str | None = None, phase: str = "Bound",
                  in_tree: bool = False) -> Obj:
    """The PersistentVolume cinder-csi makes for ``volume`` (named like the volume)."""
    spec: Obj = {"capacity": {"storage": f"{volume.get('size', 1)}Gi"},
                 "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                 "storageClassName": "default", "volumeMode": "Filesystem"}
    if in_tree:
        spec["cinder"] = {"volumeID": volume["id"], "fsType": "ext4"}
    else:
        spec["csi"] = {"driver": CSI_DRIVER, "volumeHandle": volume["id"], "fsType": "ext4",
                       "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity":
                                            "sim-cinder-csi"}}
    if claim_name:
        spec["claimRef"] = {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                            "namespace": claim_namespace or "default", "name": claim_name,
                            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                  f"{claim_namespace}/{claim_name}"))}
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": str(volume.get("name") or f"pv-{volume['id']}"),
                         "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER}},
            "spec": spec, "status": {"phase": phase}}


def pvc_for_user(user: str, volume_name: str | None, *, namespace: str = "jhub",
                 name: str | None = None, labels: Mapping[str, str] | None = None,
                 phase: str = "Bound") -> Obj:
    """A KubeSpawner-style claim (``claim-{user}``) bound to the PV ``volume_name``."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name or f"claim-{user}", "namespace": namespace,
                         "labels": {"app": "jupyterhub", "component": "singleuser-storage",
                                    "hub.jupyter.org/username": user, **(labels or {})},
                         "annotations": {"hub.jupyter.org/username": user}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "default",
                     "resources": {"requests": {"storage": "1Gi"}},
                     **({"volumeName": volume_name} if volume_name else {})},
            "status": {"phase": phase}}


def failed_attach_event(namespace: str, pod: str, pv_name: str, *, reason: str =
                        "FailedAttachVolume", when: datetime | None = None, count: int = 5,
                        message: str | None = None) -> Obj:
    """The event the attach-detach controller (or the kubelet, for FailedMount) records."""
    when = when or datetime.now(UTC)
    if message is None:
        if reason == "FailedAttachVolume":
            message = (f'AttachVolume.Attach failed for volume "{pv_name}" : rpc error: code = '
                       "Internal desc = [ControllerPublishVolume] Attach Volume failed with "
                       "error failed to attach volume: Volume is in reserved state")
        else:
            message = (f'MountVolume.WaitForAttach failed for volume "{pv_name}" : volume '
                       "attachment is being deleted")
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod,
                               "apiVersion": "v1"},
            "reason": reason, "message": message, "type": "Warning", "count": count,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": "attachdetach-controller" if reason ==
                       "FailedAttachVolume" else "kubelet"}}


def seed_demo(sim: OpenStackSim, clusters: Mapping[str, KubeSim], *, namespace: str = "jhub",
              users: Iterable[str] = ("alice", "bob", "carol"),
              gone_users: Iterable[str] = ("mallory",)) -> Obj:
    """Build the demo world: healthy user volumes, and one of each problem to find and fix.

    Per cluster, each of ``users`` gets a bound, attached home volume. Then, in the first
    cluster: alice's volume is stuck ``reserved`` with a ``FailedAttachVolume`` event on her
    pod; bob's has a dangling reserved attachment beside the attached one; a ``pvc-*``
    volume no PV references is orphaned; a PV is ``Released``; and ``postgres-{user}`` extra
    claims are left for ``gone_users`` (who are not hub users). Returns what was injected.
    """
    names = list(clusters)
    if not names:
        raise ValueError("seed_demo needs at least one cluster")
    users = list(users)
    injected: Obj = {"stuck": [], "dangling": [], "orphans": [], "released": [],
                     "extra_pvcs": [], "volumes": []}
    now = sim.clock()
    for index, cluster in enumerate(names):
        kube = clusters[cluster]
        objects: list[Obj] = []
        for user in users:
            if index == 0 and user == users[0]:
                volume = sim.inject_stuck_volume(f"pvc-{uuid.uuid4()}", status="reserved",
                                                 age=timedelta(hours=2))
                injected["stuck"].append(volume["id"])
                objects.append(failed_attach_event(namespace, f"jupyter-{user}", volume["name"],
                                                   when=now))
            elif index == 0 and len(users) > 1 and user == users[1]:
                volume, attachment = sim.inject_dangling_attachment(
                    f"pvc-{uuid.uuid4()}", age=timedelta(hours=2))
                injected["dangling"].append(attachment["id"])
            else:
                volume = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=3))
                sim.add_attachment(volume["id"], status="attached", age=timedelta(days=1))
            injected["volumes"].append(volume["id"])
            objects.append(pv_for_volume(volume, claim_namespace=namespace,
                                         claim_name=f"claim-{user}"))
            objects.append(pvc_for_user(user, volume["name"], namespace=namespace))
        if index == 0:
            orphan = sim.inject_orphan_volume(f"pvc-{uuid.uuid4()}")
            injected["orphans"].append(orphan["id"])
            released = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=9))
            objects.append(pv_for_volume(released, claim_namespace=namespace,
                                         claim_name="claim-departed", phase="Released"))
            injected["released"].append(released["name"])
            for gone in gone_users:
                extra = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=20))
                objects.append(pv_for_volume(extra, claim_namespace=namespace,
                                             claim_name=f"postgres-{gone}"))
                objects.append(pvc_for_user(gone, extra["name"], namespace=namespace,
                                            name=f"postgres-{gone}",
                                            labels={"component": "extra-pvc"}))
                injected["extra_pvcs"].append(f"{namespace}/postgres-{gone}")
        kube.put_many(objects)
    return injected


#: The users seed_demo gives volumes in a World: the first of World.healthy()'s names.
DEMO_USERS = ("ada", "alan", "barbara")


class CloudPart:
    """An OpenStack cloud as a part of a :class:`~watchdogd.sim.world.World`.

    ``World(parts=[CloudPart()])`` starts an :class:`OpenStackSim` on the world's clock, seeds
    it with :func:`seed_demo` against the world's cluster (unless ``seed=False``), and adds to
    the configuration a ``[clouds.NAME]`` section, the ``volumes`` and ``orphans`` checks with
    limits short enough for a pass every five simulated minutes, and the actions
    ``delete-attachment``, ``reset-volume-status`` and ``quarantine`` (never
    ``delete-orphan-volume``: deleting data stays an operator's decision in a demo too).
    """

    name = "openstack"
    checks = ("volumes", "orphans")

    def __init__(self, *, cloud: str = "sim-cloud", seed: bool = True, page_max: int = 1000,
                 volumes: Mapping[str, Any] | None = None,
                 orphans: Mapping[str, Any] | None = None) -> None:
        self.cloud = cloud
        self.seed = seed
        self.page_max = page_max
        self.volume_settings = dict(volumes or {})
        self.orphan_settings = dict(orphans or {})
        self.sim: OpenStackSim | None = None
        self.clouds_yaml = ""
        #: what :func:`seed_demo` and the injectors below injected
        self.injected: Obj = {}
        self._world: World | None = None

    def start(self, world: World) -> None:
        """Start the simulator on the world's clock, write clouds.yaml, seed the world."""
        self._world = world
        self.sim = OpenStackSim(page_max=self.page_max, clock=world.clock).start()
        self.clouds_yaml = self.sim.write_clouds_yaml(world.workdir / "clouds.yaml", self.cloud)
        Path(self.clouds_yaml).chmod(0o600)
        if self.seed:
            self.injected = seed_demo(self.sim, {world.cluster_name: world.kube},
                                      namespace=world.namespace, users=DEMO_USERS)

    def config(self, world: World) -> Obj:
        """``[clouds.NAME]``, ``[checks.volumes]``, ``[checks.orphans]``, enabled actions."""
        enabled = list(world.remediation.get("enabled") or [])
        enabled += [a for a in ("delete-attachment", "reset-volume-status", "quarantine")
                    if a not in enabled]
        return {
            "clouds": {self.cloud: {"cloud": self.cloud, "clouds_yaml": self.clouds_yaml,
                                    "clusters": [world.cluster_name],
                                    "timeout": world.timeout}},
            "remediation": {"enabled": enabled},
            "checks": {
                "volumes": {"interval": "3m", "stuck_after": "5m",
                            "attachment_stale_after": "5m", **self.volume_settings},
                "orphans": {"interval": "5m", **self.orphan_settings},
            },
        }

    def stop(self) -> None:
        """Stop the simulator (idempotent)."""
        if self.sim is not None:
            self.sim.stop()

    # -- injectors (beyond what seed_demo plants) ----------------------------------------------

    def _started(self) -> tuple[World, OpenStackSim]:
        if self._world is None or self.sim is None:
            raise RuntimeError("the part is not started")
        return self._world, self.sim

    def expiring_credential(self, name: str = "ci-deploy", *, days: float = 5) -> str:
        """An application credential of the cloud user that expires in ``days`` (the one
        watchdogd authenticates with is a password, so this is someone else's credential
        of the same user: a CI job's, say). Returns its name, the finding's subject."""
        world, sim = self._started()
        sim.add_application_credential("admin", name,
                                       expires_at=world.clock() + timedelta(days=days))
        self.injected.setdefault("credentials", []).append(name)
        return name

    def attach_failed(self, user: str, *, node: str = "node-gone", events: int = 5) -> str:
        """``user``'s home volume is still ``in-use``, attached on ``node`` (a node that died
        without detaching it), so every attach to the user's new pod fails: a bound PV and
        claim, and a ``FailedAttachVolume`` event seen ``events`` times. Returns the volume
        id, the subject of the ``volume-attach-failed`` finding."""
        world, sim = self._started()
        volume = sim.add_volume(f"pvc-{uuid.uuid4()}", age=timedelta(days=10))
        sim.add_attachment(volume["id"], status="attached", age=timedelta(days=2), host=node)
        volume = sim.volume(volume["id"]) or volume
        message = (f'Multi-Attach error for volume "{volume["name"]}" Volume is already '
                   f"exclusively attached to one node ({node}) and can't be attached to "
                   "another")
        world.kube.put_many([
            pv_for_volume(volume, claim_namespace=world.namespace, claim_name=f"claim-{user}"),
            pvc_for_user(user, volume["name"], namespace=world.namespace),
            failed_attach_event(world.namespace, f"jupyter-{user}", volume["name"],
                                when=world.clock(), count=events, message=message),
        ])
        self.injected.setdefault("attach_failed", []).append(volume["id"])
        return str(volume["id"])
