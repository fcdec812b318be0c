"""The simulated Cinder v3: volumes, attachments, microversions, metadata and volume actions.

What watchdogd's volume remediation depends on, as observed on cinder 29.0 (see
tests/integration): ``GET /`` is ``300`` with ``{"versions": [...]}`` (``version`` 3.71),
``/v3/`` the same with 200. Every answer carries ``OpenStack-API-Version: volume X`` and
``Vary: OpenStack-API-Version``; a microversion above the maximum is a 406 ``computeFault``,
``/attachments`` below 3.27 a 404 ``itemNotFound``.

Volume lists are sorted by ``created_at`` then ``id``, both descending; ``volumes_links`` has a
``next`` link exactly when the page is full (limit capped at ``page_max``, Cinder's
``osapi_max_limit``); an unknown marker is a 404; ``all_tenants`` is silently ignored for
non-admins. Attachment lists have no links at all.

The volume's ``attachments`` member only lists *attached* attachments; reserved ones are only
visible under ``/attachments``. Deleting an attachment recomputes the volume's status from the
remaining ones (attached > attaching > detaching > reserved, none: available) and keeps
``updated_at``; ``os-reset_status`` sets ``updated_at`` (403 for a non-admin);
``attach_status=detached`` detaches every attachment. A user may not delete an attachment that
has a connection (Cinder bug #2004555: 409). Metadata updates do not touch ``updated_at``. A
volume without a host is deleted at once.

Quotas (``GET /limits``, ``GET /os-quota-sets/{project}[?usage=true]``, ``PUT`` for admins)
count the project's volumes and their sizes (observed on cinder 29: ``in_use`` only, a create
past a limit is a 413 ``overLimit`` with ``retryAfter`` and the ``VolumeLimitExceeded`` or
``VolumeSizeExceedsAvailableQuota`` wording); defaults are Cinder's (10 volumes, 1000 GiB,
10 snapshots) with ``OpenStackSim(default_quotas=True)``, else unlimited (-1), as the real
test peer's are.

Simplifications: one region; no volume types, snapshots or backends (snapshot and backup
usage is 0, per-type quotas are not kept); created volumes are ``available`` at once; only
reservations are made over the API (no connector).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from watchdogd.sim._http import Request, Response
from watchdogd.sim.openstack_base import (
    NOT_FOUND,
    UNAUTHENTICATED,
    OpenStackError,
    Routes,
    Service,
    as_utc,
    body_of,
    cinder_time,
    keystone_error,
    microversion,
    mv,
    reply,
)

if TYPE_CHECKING:
    from watchdogd.sim.keystone import Keystone, Token
    from watchdogd.sim.openstack import OpenStackSim

__all__ = ["ATTACH_STATUSES", "VOLUME_STATUSES", "Cinder"]

Obj = dict[str, Any]

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
#: Cinder's default quotas (cinder.conf ``quota_*``), in the order ``os-quota-sets`` lists them
DEFAULT_QUOTAS = {"volumes": 10, "per_volume_gigabytes": -1, "snapshots": 10,
                  "gigabytes": 1000, "backups": 10, "backup_gigabytes": 1000, "groups": 10}
_FAULT_NAMES = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 409: "conflict",
                413: "overLimit", 503: "serviceUnavailable"}
_DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
_NOT_DELETABLE = ("Invalid volume: Volume status must be available or error or error_restoring "
                  "or error_extending or error_managing and must not be migrating, attached, "
                  "belong to a group, have snapshots, awaiting a transfer, or be disassociated "
                  "from snapshots after volume transfer.")


@dataclass
class Volume:
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
class Attachment:
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


def version_headers(version: str) -> dict[str, str]:
    """The headers of every Cinder answer at microversion ``version``."""
    return {"OpenStack-API-Version": f"volume {version}", "Vary": "OpenStack-API-Version",
            "x-openstack-request-id": f"req-{uuid.uuid4()}"}


routes = Routes()


class Cinder(Service):
    """Cinder's state and API; tokens and projects are the cloud's Keystone's."""

    kind = "cinder"

    def __init__(self, cloud: OpenStackSim, keystone: Keystone) -> None:
        super().__init__(cloud)
        self.keystone = keystone
        #: project id -> its quota overrides; the rest is :data:`DEFAULT_QUOTAS`
        self.quotas: dict[str, dict[str, int]] = {}
        self.volumes: dict[str, Volume] = {}
        self.attachments: dict[str, Attachment] = {}
        self._order: list[str] | None = None
        self._att_index: dict[str, list[Attachment]] | None = None

    # -- the world builder's vocabulary ------------------------------------------------------

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
        with self.lock:
            now = self.clock()
            vid = volume_id or str(uuid.uuid4())
            project_id = (self.keystone.project_by_name(project).id if project
                          else self.cloud.admin_project_id)
            created = now - age
            updated = now - (updated_age if updated_age is not None else age)
            self.volumes[vid] = Volume(
                vid, name if name is not None else f"pvc-{uuid.uuid4()}", status, size,
                project_id, self.cloud.admin_user_id, created, updated, dict(metadata or {}),
                multiattach, "attached" if status == "in-use" else "detached", description,
                host="sim@lvm#lvm")
            self._order = None
            return self.volume_view(self.volumes[vid], admin=True)

    def add_volumes(self, count: int, *, prefix: str = "pvc-", status: str = "available",
                    age: timedelta = timedelta(days=1)) -> list[str]:
        """Bulk-create ``count`` volumes (ids returned), for benchmarks: distinct creation
        times, one second apart, so the order is stable."""
        with self.lock:
            now = self.clock()
            ids = []
            for i in range(count):
                vid = str(uuid.uuid4())
                when = now - age - timedelta(seconds=i)
                self.volumes[vid] = Volume(
                    vid, f"{prefix}{uuid.uuid4()}", status, 1, self.cloud.admin_project_id,
                    self.cloud.admin_user_id, when, when,
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
        with self.lock:
            volume = self.volumes[volume_id]
            now = self.clock()
            aid = str(uuid.uuid4())
            connected = status in ("attached", "detaching", "error_detaching")
            attachment = Attachment(
                aid, volume_id, instance or str(uuid.uuid4()), status, volume.project_id,
                now - age,
                connector={"host": host, "initiator": f"iqn.2004-10.com.ubuntu:{host}"}
                if connected else None,
                connection_info={"driver_volume_type": "iscsi", "data": {}} if connected else None,
                attach_mode="rw" if connected else "null",
                attached_at=(now - age) if status == "attached" else None)
            self.attachments[aid] = attachment
            self._att_index = None
            if update_volume:
                self._recompute(volume)
            return self.attachment_view(attachment, detail=True)

    def add_attachments(self, volume_ids: Iterable[str], *, status: str = "attached",
                        age: timedelta = timedelta(days=1)) -> list[str]:
        """Bulk-attach (benchmarks): one attachment per volume, statuses set as Cinder would."""
        if status not in ATTACH_STATUSES:
            raise ValueError(f"unknown attachment status {status!r}")
        with self.lock:
            now = self.clock()
            ids = []
            for vid in volume_ids:
                volume = self.volumes[vid]
                aid = str(uuid.uuid4())
                connected = status == "attached"
                self.attachments[aid] = Attachment(
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

    def set_volume(self, volume_id: str, *, touch: bool = True, **fields: Any) -> Obj:
        """Change volume fields directly (``status``, ``name``, ``metadata``...); ``touch``
        sets ``updated_at`` to now, as any Cinder database write does."""
        with self.lock:
            volume = self.volumes[volume_id]
            _assign(volume, fields)
            if touch and "updated_at" not in fields:
                volume.updated_at = self.clock()
            return self.volume_view(volume, admin=True)

    def set_attachment(self, attachment_id: str, **fields: Any) -> None:
        """Change attachment fields directly."""
        with self.lock:
            attachment = self.attachments[attachment_id]
            _assign(attachment, fields)
            self._att_index = None

    def remove_volume(self, volume_id: str) -> None:
        """Delete a volume and its attachments without API rules."""
        with self.lock:
            self.volumes.pop(volume_id)
            for attachment in self._atts_of(volume_id):
                del self.attachments[attachment.id]
            self._att_index = None
            self._order = None

    def volume(self, volume_id: str) -> Obj | None:
        """The admin detail view of one volume, or None."""
        with self.lock:
            volume = self.volumes.get(volume_id)
            return None if volume is None else self.volume_view(volume, admin=True)

    def volume_list(self) -> list[Obj]:
        """Every volume (admin detail view), in Cinder's list order."""
        with self.lock:
            return [self.volume_view(self.volumes[v], admin=True) for v in self._ordered()]

    def attachment_list(self, volume_id: str | None = None) -> list[Obj]:
        """Every attachment (detail view), optionally of one volume."""
        with self.lock:
            return [self.attachment_view(a, detail=True) for a in self.attachments.values()
                    if volume_id is None or a.volume_id == volume_id]

    def inject_stuck_volume(self, name: str | None = None, *, status: str = "reserved",
                            age: timedelta = timedelta(hours=2)) -> Obj:
        """A volume left in a transitional ``status`` since ``age`` ago, with what Cinder would
        hold beside it: a reserved attachment for ``reserved``, an attaching one for
        ``attaching``, an attached one for ``detaching``, nothing for the deletes."""
        with self.lock:
            volume = self.add_volume(name, status="available", age=age + timedelta(days=1))
            vid = volume["id"]
            if status == "reserved":
                self.add_attachment(vid, status="reserved", age=age)
            elif status == "attaching":
                self.add_attachment(vid, status="attaching", age=age)
            elif status == "detaching":
                self.add_attachment(vid, status="attached", age=age + timedelta(hours=1))
            self.volumes[vid].status = status
            self.volumes[vid].updated_at = self.clock() - age
            return self.volume_view(self.volumes[vid], admin=True)

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
        with self.lock:
            if volume_id is None:
                volume_id = self.add_volume(name, age=age + timedelta(days=1))["id"]
                if beside_attached:
                    self.add_attachment(volume_id, status="attached",
                                        age=age + timedelta(hours=1))
            attachment = self.add_attachment(volume_id, status="reserved", age=age,
                                             update_volume=False, host="node-2")
            volume = self.volumes[volume_id]
            volume.status = volume.attach_status = "reserved"
            volume.updated_at = self.clock() - age
            return self.volume_view(volume, admin=True), attachment

    def inject_orphan_volume(self, name: str | None = None, *,
                             age: timedelta = timedelta(days=30),
                             metadata: Mapping[str, str] | None = None) -> Obj:
        """An ``available`` ``pvc-*`` volume (whether a PV names it is the cluster's matter)."""
        return self.add_volume(name, age=age, metadata=metadata)

    # -- state helpers -------------------------------------------------------------------------

    def _atts_of(self, volume_id: str) -> list[Attachment]:
        """The attachments of one volume, from an index rebuilt after any change (a list of
        20,000 volumes must not scan 5,000 attachments per volume)."""
        if self._att_index is None:
            index: dict[str, list[Attachment]] = {}
            for attachment in self.attachments.values():
                index.setdefault(attachment.volume_id, []).append(attachment)
            self._att_index = index
        return self._att_index.get(volume_id, [])

    def _recompute(self, volume: Volume) -> None:
        """Cinder's ``_get_statuses_from_attachments`` (errors ignored, alphabetical first)."""
        states = sorted(a.status for a in self._atts_of(volume.id)
                        if not a.status.startswith("error_"))
        attach_status = states[0] if states else "detached"
        volume.attach_status = attach_status
        volume.status = {"attached": "in-use", "detached": "available"}.get(attach_status,
                                                                              attach_status)

    def _ordered(self) -> list[str]:
        if self._order is None:
            self._order = [v.id for v in sorted(self.volumes.values(),
                                                key=lambda v: (as_utc(v.created_at), v.id),
                                                reverse=True)]
        return self._order

    # -- HTTP ----------------------------------------------------------------------------------

    def error(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        if code == 401:  # keystonemiddleware answers, in Keystone's format
            return keystone_error(code, message, self.keystone.auth_url, headers)
        name = _FAULT_NAMES.get(code, "computeFault")
        fault: Obj = {"code": code, "message": message}
        if code == 413:
            fault["retryAfter"] = "0"
        return reply(code, {name: fault}, {**version_headers("3.0"), **(headers or {})})

    def _versions(self) -> Obj:
        return {"versions": [{
            "id": "v3.0", "status": "CURRENT", "version": mv(MAX_MICROVERSION),
            "min_version": mv(MIN_MICROVERSION), "updated": "2023-08-31T00:00:00Z",
            "links": [{"rel": "describedby", "type": "text/html",
                       "href": "https://docs.openstack.org/"},
                      {"rel": "self", "href": self.base_url + "/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.volume+json;version=3"}]}]}

    @staticmethod
    def _microversion(req: Request) -> tuple[int, int]:
        header = req.headers.get("OpenStack-API-Version") or ""
        match = re.match(r"^\s*volume\s+(\S+)\s*$", header)
        return microversion(match.group(1) if match else None, MIN_MICROVERSION,
                            MAX_MICROVERSION, version_headers)

    def route(self, req: Request) -> Response:
        """The version documents, the microversion and token gates, the project segment of
        the URL (``/v3/{project_id}/...`` or ``/v3/...``), then the resource table."""
        path = req.path.rstrip("/") or "/"
        if path == "/" and req.method == "GET":
            return reply(300, self._versions(), version_headers("3.0"))
        version = self._microversion(req)
        headers = version_headers(mv(version))
        v3 = re.fullmatch(r"/v3(/.*)?", path)
        if v3 is None:
            raise OpenStackError(404, NOT_FOUND)
        rest = v3.group(1) or ""
        if not rest and req.method == "GET":
            return reply(200, self._versions(), headers)
        caller = self.keystone.valid_token(req.headers.get("X-Auth-Token"))
        if caller is None:
            raise OpenStackError(401, UNAUTHENTICATED)
        head = rest.split("/", 2)[1] if rest else ""
        if head and head not in ("volumes", "attachments", "limits", "os-quota-sets"):
            if head != caller.project_id:
                if head in self.keystone.projects:
                    raise OpenStackError(400, "Malformed request url")
                raise OpenStackError(404, NOT_FOUND)
            rest = rest[len(head) + 1:]
            if not rest and req.method == "GET":
                return reply(200, self._versions(), headers)
        if rest.startswith("/attachments") and version < ATTACH_MICROVERSION:
            raise OpenStackError(404, NOT_FOUND)
        found = routes.match(req.method, rest)
        if found is None:
            raise OpenStackError(404, NOT_FOUND)
        resp: Response = found[0](self, req, caller, **found[1])
        resp.headers.update(headers)
        return resp

    # -- volumes -------------------------------------------------------------------------------

    def _visible_volume(self, caller: Token, volume_id: str) -> Volume:
        volume = self.volumes.get(volume_id)
        if volume is None or not ("admin" in caller.roles
                                  or volume.project_id == caller.project_id):
            raise OpenStackError(404, f"Volume {volume_id} could not be found.")
        return volume

    def _page(self, req: Request, ids: list[str], keep: Callable[[str], bool],
              missing: str) -> tuple[list[str], int]:
        """The ids of one page of a list in Cinder's order, after the ``marker`` (``missing``
        names it in the 404 if it is unknown), up to the limit, of those ``keep`` accepts;
        and the limit, which says whether the page is full."""
        marker = req.arg("marker")
        start = 0
        if marker:
            if marker not in ids:
                raise OpenStackError(404, f"{missing} {marker} could not be found.")
            start = ids.index(marker) + 1
        limit = self.page_limit(req)
        page: list[str] = []
        for item in ids[start:]:
            if len(page) >= limit:
                break
            if keep(item):
                page.append(item)
        return page, limit

    @routes.add("GET", r"/volumes(?P<detail>/detail)?")
    def _list_volumes(self, req: Request, caller: Token, detail: str | None) -> Response:
        admin = "admin" in caller.roles
        all_projects = admin and (req.arg("all_tenants") or "0").lower() in (
            "1", "true", "yes", "on", "t", "y")
        status = req.arg("status")
        name = req.arg("name")
        project_filter = req.arg("project_id") if all_projects else None

        def keep(vid: str) -> bool:
            volume = self.volumes[vid]
            return ((all_projects or volume.project_id == caller.project_id)
                    and not (project_filter and volume.project_id != project_filter)
                    and not (status and volume.status != status)
                    and not (name and volume.name != name))

        ids, limit = self._page(req, self._ordered(), keep, "Volume")
        page = [self.volumes[vid] for vid in ids]
        if detail:
            items = [self.volume_view(v, admin) for v in page]
        else:
            items = [{"id": v.id, "name": v.name, "links": self._links("volumes", v.id)}
                     for v in page]
        result: Obj = {"volumes": items}
        if page and len(page) == limit:
            query = {k: v[-1] for k, v in req.query.items() if k != "marker"}
            query.update(limit=str(limit), marker=page[-1].id)
            result["volumes_links"] = [{"rel": "next", "href": self.base_url
                                        + req.path.rstrip("/") + "?" + urlencode(query)}]
        return reply(200, result)

    def _links(self, collection: str, item_id: str) -> list[Obj]:
        return [{"rel": "self", "href": f"{self.base_url}/v3/{collection}/{item_id}"},
                {"rel": "bookmark", "href": f"{self.base_url}/{collection}/{item_id}"}]

    def volume_view(self, volume: Volume, admin: bool) -> Obj:
        """The volume as the API shows it (``admin``: with the admin-only attributes)."""
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

    @routes.add("POST", r"/volumes")
    def _create_volume(self, req: Request, caller: Token) -> Response:
        spec = (body_of(req) or {}).get("volume")
        if not isinstance(spec, dict) or not isinstance(spec.get("size"), int):
            raise OpenStackError(400, "Invalid input received: size is required")
        now = self.clock()
        assert caller.project_id is not None
        self._check_quota(caller.project_id, spec["size"])
        volume = Volume(str(uuid.uuid4()), str(spec.get("name") or ""), "available",
                        spec["size"], caller.project_id, caller.user_id, now, now,
                        {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()},
                        bool(spec.get("multiattach")), description=spec.get("description"))
        self.volumes[volume.id] = volume
        self._order = None
        return reply(202, {"volume": self.volume_view(volume, "admin" in caller.roles)})

    @routes.add("GET", r"/volumes/(?P<volume_id>[^/]+)")
    def _show_volume(self, req: Request, caller: Token, volume_id: str) -> Response:
        volume = self._visible_volume(caller, volume_id)
        return reply(200, {"volume": self.volume_view(volume, "admin" in caller.roles)})

    @routes.add("DELETE", r"/volumes/(?P<volume_id>[^/]+)")
    def _delete_volume(self, req: Request, caller: Token, volume_id: str) -> Response:
        volume = self._visible_volume(caller, volume_id)
        if self._atts_of(volume.id) or volume.status not in _DELETABLE:
            raise OpenStackError(400, _NOT_DELETABLE)
        del self.volumes[volume.id]
        self._order = None
        return reply(202)

    @routes.add("POST", r"/volumes/(?P<volume_id>[^/]+)/action")
    def _volume_action(self, req: Request, caller: Token, volume_id: str) -> Response:
        volume = self._visible_volume(caller, volume_id)
        body = body_of(req)
        if not isinstance(body, dict) or len(body) != 1:
            raise OpenStackError(400, "Malformed request body")
        (action, args), = body.items()
        if action != "os-reset_status":
            raise OpenStackError(400, f"There is no such action: {action}")
        if "admin" not in caller.roles:
            raise OpenStackError(403, "Policy doesn't allow volume_extension:"
                                      "volume_admin_actions:reset_status to be performed.")
        if not isinstance(args, dict):
            raise OpenStackError(400, "Malformed request body")
        status = args.get("status")
        attach_status = args.get("attach_status")
        if status is not None and status not in VOLUME_STATUSES:
            raise OpenStackError(400, f"Volume status: {status} is invalid.")
        if status in ("deleting", "error_deleting"):
            raise OpenStackError(400, f"Cannot reset-state to {status}")
        volume_atts = list(self._atts_of(volume.id))
        if status == "in-use" and not volume_atts:
            raise OpenStackError(400, "Cannot reset-state to in-use because volume does not "
                                      "have any attachments.")
        if status:
            volume.status = status
        if attach_status:
            volume.attach_status = attach_status
            if attach_status == "detached":
                for attachment in volume_atts:
                    del self.attachments[attachment.id]
                self._att_index = None
        volume.updated_at = self.clock()
        return reply(202)

    @routes.add("GET", r"/volumes/(?P<volume_id>[^/]+)/metadata")
    def _show_metadata(self, req: Request, caller: Token, volume_id: str) -> Response:
        return reply(200, {"metadata": dict(self._visible_volume(caller, volume_id).metadata)})

    @routes.add("POST PUT", r"/volumes/(?P<volume_id>[^/]+)/metadata")
    def _update_metadata(self, req: Request, caller: Token, volume_id: str) -> Response:
        volume = self._visible_volume(caller, volume_id)
        meta = (body_of(req) or {}).get("metadata")
        if not isinstance(meta, dict):
            raise OpenStackError(400, "Malformed request body")
        if req.method == "PUT":
            volume.metadata = {}
        volume.metadata.update({str(k): str(v) for k, v in meta.items()})
        return reply(200, {"metadata": dict(volume.metadata)})

    @routes.add("DELETE", r"/volumes/(?P<volume_id>[^/]+)/metadata/(?P<key>[^/]+)")
    def _delete_metadata(self, req: Request, caller: Token, volume_id: str,
                         key: str) -> Response:
        if self._visible_volume(caller, volume_id).metadata.pop(key, None) is None:
            raise OpenStackError(404, "Metadata item was not found")
        return Response(200, b"", None)

    # -- quotas --------------------------------------------------------------------------------

    def set_quota(self, project: str | None = None, **limits: int) -> None:
        """Set quotas of a project (``volumes=3``, ``gigabytes=50``...; -1: none)."""
        unknown = set(limits) - set(DEFAULT_QUOTAS)
        if unknown:
            raise ValueError(f"unknown Cinder quota {sorted(unknown)}")
        with self.lock:
            project_id = (self.keystone.project_by_name(project).id if project
                          else self.cloud.admin_project_id)
            self.quotas.setdefault(project_id, {}).update(limits)

    def quota(self, project_id: str) -> dict[str, int]:
        """A project's quotas: its overrides over the defaults (Cinder's shipped ones with the
        cloud's ``default_quotas``, else unlimited as on the test peer of tests/peers)."""
        base = (DEFAULT_QUOTAS if self.cloud.default_quotas
                else dict.fromkeys(DEFAULT_QUOTAS, -1))
        return {**base, **self.quotas.get(project_id, {})}

    def usage(self, project_id: str) -> dict[str, int]:
        """What a project uses: its volumes' count and sizes (no snapshots, no backups)."""
        with self.lock:
            mine = [v for v in self.volumes.values() if v.project_id == project_id]
            return {"volumes": len(mine), "gigabytes": sum(v.size for v in mine),
                    "snapshots": 0, "backups": 0, "backup_gigabytes": 0,
                    "per_volume_gigabytes": 0, "groups": 0}

    def _check_quota(self, project_id: str, size: int) -> None:
        """Cinder's reservation on create: the 413s, worded as cinder 29 words them (with
        both quotas over, cinder 29 names gigabytes)."""
        quota, used = self.quota(project_id), self.usage(project_id)
        if 0 <= quota["gigabytes"] < used["gigabytes"] + size:
            raise OpenStackError(413, "VolumeSizeExceedsAvailableQuota: Requested volume or "
                                      "snapshot exceeds allowed gigabytes quota. Requested "
                                      f"{size}G, quota is {quota['gigabytes']}G and "
                                      f"{used['gigabytes']}G has been consumed.")
        if 0 <= quota["volumes"] < used["volumes"] + 1:
            raise OpenStackError(413, "VolumeLimitExceeded: Maximum number of volumes allowed "
                                      f"({quota['volumes']}) exceeded for quota 'volumes'.")

    @routes.add("GET", r"/limits")
    def _limits(self, req: Request, caller: Token) -> Response:
        project_id = caller.project_id or ""
        quota, used = self.quota(project_id), self.usage(project_id)
        return reply(200, {"limits": {"rate": [], "absolute": {
            "maxTotalVolumes": quota["volumes"], "maxTotalSnapshots": quota["snapshots"],
            "maxTotalVolumeGigabytes": quota["gigabytes"], "maxTotalBackups": quota["backups"],
            "maxTotalBackupGigabytes": quota["backup_gigabytes"],
            "totalVolumesUsed": used["volumes"], "totalGigabytesUsed": used["gigabytes"],
            "totalSnapshotsUsed": used["snapshots"], "totalBackupsUsed": used["backups"],
            "totalBackupGigabytesUsed": used["backup_gigabytes"]}}})

    @routes.add("GET", r"/os-quota-sets/(?P<project_id>[^/]+)")
    def _show_quotas(self, req: Request, caller: Token, project_id: str) -> Response:
        if project_id != caller.project_id and "admin" not in caller.roles:
            raise OpenStackError(403, "Policy doesn't allow volume_extension:quotas:show to be "
                                      "performed.")
        quota, used = self.quota(project_id), self.usage(project_id)
        if (req.arg("usage") or "").lower() in ("1", "true", "yes", "on", "t", "y"):
            body: Obj = {k: {"limit": v, "in_use": used[k], "reserved": 0}
                         for k, v in quota.items()}
        else:
            body = dict(quota)
        return reply(200, {"quota_set": {**body, "id": project_id}})

    @routes.add("PUT", r"/os-quota-sets/(?P<project_id>[^/]+)")
    def _update_quotas(self, req: Request, caller: Token, project_id: str) -> Response:
        if "admin" not in caller.roles:
            raise OpenStackError(403, "Policy doesn't allow volume_extension:quotas:update to "
                                      "be performed.")
        changes = (body_of(req) or {}).get("quota_set")
        if not isinstance(changes, dict) or not all(
                k in DEFAULT_QUOTAS and isinstance(v, int) and v >= -1
                for k, v in changes.items()):
            raise OpenStackError(400, "Invalid input received: quota_set")
        self.quotas.setdefault(project_id, {}).update(changes)
        return reply(200, {"quota_set": self.quota(project_id)})

    # -- attachments ---------------------------------------------------------------------------

    @routes.add("GET", r"/attachments(?P<detail>/detail)?")
    def _list_attachments(self, req: Request, caller: Token, detail: str | None) -> Response:
        admin = "admin" in caller.roles
        all_projects = admin and "all_tenants" in req.query
        volume_id = req.arg("volume_id")
        status = req.arg("status") or req.arg("attach_status")
        instance = req.arg("instance_id")
        ordered = sorted(self.attachments.values(),
                         key=lambda a: (as_utc(a.created_at), a.id), reverse=True)

        def keep(aid: str) -> bool:
            attachment = self.attachments[aid]
            return ((all_projects or attachment.project_id == caller.project_id)
                    and not (volume_id and attachment.volume_id != volume_id)
                    and not (status and attachment.status != status)
                    and not (instance and attachment.instance != instance))

        ids = self._page(req, [a.id for a in ordered], keep, "VolumeAttachment")[0]
        views = [self.attachment_view(self.attachments[aid], bool(detail)) for aid in ids]
        return reply(200, {"attachments": views})

    @staticmethod
    def attachment_view(attachment: Attachment, detail: bool) -> Obj:
        """The attachment as the API shows it (``detail``: the detail view)."""
        view: Obj = {"id": attachment.id, "status": attachment.status,
                     "instance": attachment.instance, "volume_id": attachment.volume_id}
        if detail:
            view.update(attached_at=cinder_time(attachment.attached_at) or "", detached_at="",
                        attach_mode=attachment.attach_mode,
                        connection_info=attachment.connection_info or {})
        return view

    @routes.add("POST", r"/attachments")
    def _create_attachment(self, req: Request, caller: Token) -> Response:
        spec = (body_of(req) or {}).get("attachment")
        if not isinstance(spec, dict):
            raise OpenStackError(400, "Malformed request body")
        volume = self._visible_volume(caller, str(spec.get("volume_uuid")))
        if spec.get("connector"):
            raise OpenStackError(400, "the simulator only makes reservations (no connector)")
        allowed = ("available", "reserved", "in-use") if volume.multiattach else ("available",)
        if volume.status not in allowed:
            raise OpenStackError(400, f"Invalid volume: Volume {volume.id} status must be "
                                      f"available or downloading to reserve, but the current "
                                      f"status is {volume.status}.")
        now = self.clock()
        attachment = Attachment(str(uuid.uuid4()), volume.id, spec.get("instance_uuid"),
                                "reserved", volume.project_id, now)
        self.attachments[attachment.id] = attachment
        self._att_index = None
        volume.status = volume.attach_status = "reserved"
        volume.updated_at = now
        return reply(200, {"attachment": self.attachment_view(attachment, True)})

    def _visible_attachment(self, caller: Token, attachment_id: str,
                            method: str) -> Attachment:
        attachment = self.attachments.get(attachment_id)
        missing = ("Volume attachment could not be found with filter: "
                   f"attachment_id = {attachment_id}.")
        if attachment is None:
            raise OpenStackError(404, missing)
        if not ("admin" in caller.roles or attachment.project_id == caller.project_id):
            if method == "DELETE":
                raise OpenStackError(403, "Policy doesn't allow volume:attachment_delete to be "
                                          "performed.")
            raise OpenStackError(404, missing)
        return attachment

    @routes.add("GET", r"/attachments/(?P<attachment_id>[^/]+)")
    def _show_attachment(self, req: Request, caller: Token, attachment_id: str) -> Response:
        attachment = self._visible_attachment(caller, attachment_id, req.method)
        return reply(200, {"attachment": self.attachment_view(attachment, True)})

    @routes.add("DELETE", r"/attachments/(?P<attachment_id>[^/]+)")
    def _delete_attachment(self, req: Request, caller: Token, attachment_id: str) -> Response:
        attachment = self._visible_attachment(caller, attachment_id, req.method)
        if attachment.instance and attachment.connection_info:
            raise OpenStackError(409, "Detected user call to delete in-use attachment. Call "
                                      "must come from the nova service and nova must be "
                                      "configured to send the service token.")
        del self.attachments[attachment.id]
        self._att_index = None
        volume = self.volumes.get(attachment.volume_id)
        remaining = []
        if volume is not None:
            self._recompute(volume)  # updated_at is kept, as Cinder's volume_detached does
            remaining = [self.attachment_view(a, False) for a in self._atts_of(volume.id)]
        return reply(200, {"attachments": remaining})


def _assign(record: Any, fields: dict[str, Any]) -> None:
    """Set existing fields of a simulated database row (a typo is an AttributeError)."""
    for key, value in fields.items():
        if not hasattr(record, key):
            raise AttributeError(key)
        setattr(record, key, value)
