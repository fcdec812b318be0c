"""The simulated Nova (compute API v2.1): servers, their states, limits, and microversions.

What watchdogd reads of Nova, as the compute API reference and Nova's own code describe it:

* version discovery: ``GET /`` answers 200 with ``{"versions": [v2.0 SUPPORTED, v2.1
  CURRENT]}``, ``GET /v2.1`` (with or without a slash) 200 with ``{"version": {...}}``
  (``version`` the maximum microversion, ``min_version`` 2.1); both without a token.
* microversions: ``OpenStack-API-Version: compute X`` or the legacy
  ``X-OpenStack-Nova-API-Version: X`` (``latest`` allowed); every answer carries both headers
  and ``Vary`` on both; a version out of range is a 406 ``computeFault`` naming the range.
  openstacksdk's compute proxy sends no header for a raw ``get`` (2.1 then) and its
  resources at most their ``_max_microversion`` (the servers 2.100).
* ``GET /servers/detail``: sorted by ``created`` then ``id``, both descending; ``limit``
  capped at ``page_max`` (Nova's ``[api]max_limit``, 1000); ``servers_links`` with a
  ``next`` link (``limit`` and ``marker``) exactly when the page is full; an unknown marker
  is a 400 ``marker [X] not found``. ``all_tenants`` (any value but a false one) needs the
  admin role: a 403 for anyone else (Nova's ``os_compute_api:servers:detail:get_all_tenants``
  policy), never silently ignored as Cinder does. Without it the list is the token's project.
* the server view: ``status`` derived from ``OS-EXT-STS:vm_state`` (``shelved`` ->
  ``SHELVED``, ``shelved_offloaded`` -> ``SHELVED_OFFLOADED``, ``stopped`` -> ``SHUTOFF``,
  ``error`` -> ``ERROR``, ...), ``OS-EXT-STS:task_state`` (``shelving``, ``unshelving``...)
  and ``OS-EXT-STS:power_state``; the ``OS-EXT-SRV-ATTR:*`` attributes for admins only;
  ``locked`` from 2.9, ``description`` from 2.19, ``tags`` from 2.26, the flavor embedded
  (no id) from 2.47.
* ``GET /limits``: the token's project's absolute limits and usage (``maxTotalInstances``,
  ``totalInstancesUsed``, ``maxTotalCores``, ``totalCoresUsed``, ``maxTotalRAMSize``,
  ``totalRAMUsed``...; -1 is unlimited; Nova's shipped defaults with
  ``OpenStackSim(default_quotas=True)``, else unlimited). Usage counts every server of the
  project that is not deleted, shelved-offloaded ones included (Nova's default, ``[quota]
  count_usage_from_placement = false``).

The catalog entry (type ``compute``) is ``/v2.1`` without a project id, as current Nova
deployments register it. ``POST /servers/{id}/action`` does ``shelve`` (offloaded at once,
as with Nova's default ``shelved_offload_time = 0``) and ``unshelve``; a server in another
state is a 409.
Simplifications: servers are made by the world builder only (no create or delete over HTTP,
no other action), no flavors or images API, no ``changes-since`` or other
filters, ``addresses`` empty.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from watchdogd.sim._http import Request, Response, iso_utc
from watchdogd.sim.openstack_base import (
    NOT_FOUND,
    UNAUTHENTICATED,
    OpenStackError,
    Routes,
    Service,
    as_utc,
    body_of,
    keystone_error,
    microversion,
    mv,
    reply,
)

if TYPE_CHECKING:
    from watchdogd.sim.keystone import Keystone, Token
    from watchdogd.sim.openstack import OpenStackSim

__all__ = ["MAX_MICROVERSION", "STATUS_OF", "Nova"]

Obj = dict[str, Any]

MIN_MICROVERSION = (2, 1)
MAX_MICROVERSION = (2, 100)
#: a server's API ``status`` for its ``vm_state`` (task_state aside: see :func:`_status`)
STATUS_OF = {
    "active": "ACTIVE", "building": "BUILD", "stopped": "SHUTOFF", "paused": "PAUSED",
    "suspended": "SUSPENDED", "rescued": "RESCUE", "resized": "VERIFY_RESIZE",
    "soft_deleted": "SOFT_DELETED", "deleted": "DELETED", "error": "ERROR",
    "shelved": "SHELVED", "shelved_offloaded": "SHELVED_OFFLOADED",
}
#: power_state numbers of the view: RUNNING 1, SHUTDOWN 4, NOSTATE 0
_POWER = {"active": 1, "rescued": 1, "paused": 3, "error": 0, "building": 0,
          "shelved_offloaded": 0}
_FAULT_NAMES = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 409: "conflict",
                413: "overLimit"}
_TRUE = ("1", "t", "true", "on", "y", "yes")
_FALSE = ("0", "f", "false", "off", "n", "no")

#: Nova's default quotas (nova.conf ``[quota]``)
DEFAULT_QUOTAS = {"instances": 10, "cores": 20, "ram": 51200}


@dataclass
class Server:
    id: str
    name: str
    vm_state: str
    project_id: str
    user_id: str
    created: datetime
    updated: datetime
    task_state: str | None = None
    vcpus: int = 2
    ram: int = 4096
    host: str | None = "compute-1"
    metadata: dict[str, str] = field(default_factory=dict)
    locked: bool = False


def version_headers(version: str) -> dict[str, str]:
    """The headers of every Nova answer at microversion ``version``."""
    return {"OpenStack-API-Version": f"compute {version}",
            "X-OpenStack-Nova-API-Version": version,
            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
            "x-openstack-request-id": f"req-{uuid.uuid4()}",
            "x-compute-request-id": f"req-{uuid.uuid4()}"}


def _status(server: Server) -> str:
    """Nova's ``status`` of a server: its vm_state's, except a few task states that win."""
    if server.vm_state == "active" and server.task_state in ("rebooting",
                                                                "rebooting_hard"):
        return "REBOOT" if server.task_state == "rebooting" else "HARD_REBOOT"
    if server.vm_state in ("active", "stopped") and server.task_state == "migrating":
        return "MIGRATING"
    return STATUS_OF.get(server.vm_state, "UNKNOWN")


routes = Routes()


class Nova(Service):
    """Nova's servers and limits; tokens and projects are the cloud's Keystone's."""

    kind = "nova"

    def __init__(self, cloud: OpenStackSim, keystone: Keystone) -> None:
        super().__init__(cloud)
        self.keystone = keystone
        self.servers: dict[str, Server] = {}
        #: project id -> its quota overrides (instances, cores, ram); the rest is the default
        self.quotas: dict[str, dict[str, int]] = {}

    # -- the world builder's vocabulary ------------------------------------------------------

    def add_server(self, name: str, *, vm_state: str = "active", task_state: str | None = None,
                   project: str | None = None, age: timedelta = timedelta(days=1),
                   updated_age: timedelta | None = None, vcpus: int = 2, ram: int = 4096,
                   server_id: str | None = None, host: str | None = "compute-1") -> Obj:
        """Create a server as Nova would store it; returns its admin detail view (2.1)."""
        if vm_state not in STATUS_OF or vm_state == "deleted":
            raise ValueError(f"unknown vm_state {vm_state!r}")
        with self.lock:
            now = self.clock()
            project_id = (self.keystone.project_by_name(project).id if project
                          else self.cloud.admin_project_id)
            server = Server(server_id or str(uuid.uuid4()), name, vm_state, project_id,
                            self.cloud.admin_user_id, now - age,
                            now - (updated_age if updated_age is not None else age),
                            task_state, vcpus, ram,
                            None if vm_state == "shelved_offloaded" else host)
            self.servers[server.id] = server
            return self.server_view(server, admin=True, version=MIN_MICROVERSION)

    def set_server(self, server_id: str, *, touch: bool = True, **fields: Any) -> Obj:
        """Change server fields directly (``vm_state``, ``task_state``...); ``touch`` sets
        ``updated`` to now, as every state change in Nova does. Shelve-offloading clears the
        host, as Nova does."""
        with self.lock:
            server = self.servers[server_id]
            for key, value in fields.items():
                if not hasattr(server, key):
                    raise AttributeError(key)
                setattr(server, key, value)
            if server.vm_state not in STATUS_OF or server.vm_state == "deleted":
                raise ValueError(f"unknown vm_state {server.vm_state!r}")
            if server.vm_state == "shelved_offloaded":
                server.host = None
            if touch and "updated" not in fields:
                server.updated = self.clock()
            return self.server_view(server, admin=True, version=MIN_MICROVERSION)

    def remove_server(self, server_id: str) -> None:
        """Delete a server (it is gone from every list, as a deleted instance is)."""
        with self.lock:
            del self.servers[server_id]

    def server(self, server_id: str) -> Obj | None:
        """The admin detail view (2.1) of one server, or None."""
        with self.lock:
            server = self.servers.get(server_id)
            return (None if server is None
                    else self.server_view(server, admin=True, version=MIN_MICROVERSION))

    def set_quota(self, project: str | None = None, **limits: int) -> None:
        """Set ``instances``, ``cores`` or ``ram`` (MiB) of a project's quota (-1: none)."""
        unknown = set(limits) - set(DEFAULT_QUOTAS)
        if unknown:
            raise ValueError(f"unknown Nova quota {sorted(unknown)}")
        with self.lock:
            project_id = (self.keystone.project_by_name(project).id if project
                          else self.cloud.admin_project_id)
            self.quotas.setdefault(project_id, {}).update(limits)

    def usage(self, project_id: str) -> dict[str, int]:
        """What a project's servers use: ``instances``, ``cores``, ``ram``."""
        with self.lock:
            mine = [s for s in self.servers.values() if s.project_id == project_id]
            return {"instances": len(mine), "cores": sum(s.vcpus for s in mine),
                    "ram": sum(s.ram for s in mine)}

    # -- HTTP ----------------------------------------------------------------------------------

    def error(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        if code == 401:  # keystonemiddleware answers, in Keystone's format
            return keystone_error(code, message, self.keystone.auth_url, headers)
        name = _FAULT_NAMES.get(code, "computeFault")
        return reply(code, {name: {"code": code, "message": message}},
                     {**version_headers("2.1"), **(headers or {})})

    def _version(self, status: str = "CURRENT") -> Obj:
        return {"id": "v2.1", "status": status, "version": mv(MAX_MICROVERSION),
                "min_version": mv(MIN_MICROVERSION), "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": self.base_url + "/v2.1/"},
                          {"rel": "describedby", "type": "text/html",
                           "href": "http://docs.openstack.org/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    def _versions(self) -> Obj:
        legacy = {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
                  "updated": "2011-01-21T11:33:21Z",
                  "links": [{"rel": "self", "href": self.base_url + "/v2/"}]}
        current = self._version()
        return {"versions": [legacy, {k: current[k] for k in
                                      ("id", "status", "version", "min_version", "updated")}
                             | {"links": [current["links"][0]]}]}

    @staticmethod
    def _microversion(req: Request) -> tuple[int, int]:
        text: str | None = None
        header = req.headers.get("OpenStack-API-Version") or ""
        match = re.match(r"^\s*compute\s+(\S+)\s*$", header)
        if match:
            text = match.group(1)
        elif req.headers.get("X-OpenStack-Nova-API-Version"):
            text = str(req.headers.get("X-OpenStack-Nova-API-Version")).strip()
        return microversion(text, MIN_MICROVERSION, MAX_MICROVERSION, version_headers)

    def route(self, req: Request) -> Response:
        """The version documents (no token), the microversion and token gates, an optional
        project segment (``/v2.1/{project_id}/...``, the older catalog form), the routes."""
        path = req.path.rstrip("/") or "/"
        if path == "/" and req.method == "GET":
            return reply(200, self._versions())
        v21 = re.fullmatch(r"/v2\.1(/.*)?", path)
        if v21 is None:
            raise OpenStackError(404, NOT_FOUND)
        rest = v21.group(1) or ""
        if not rest and req.method == "GET":
            return reply(200, {"version": self._version()})
        version = self._microversion(req)
        headers = version_headers(mv(version))
        caller = self.keystone.valid_token(req.headers.get("X-Auth-Token"))
        if caller is None:
            raise OpenStackError(401, UNAUTHENTICATED)
        head = rest.split("/", 2)[1]
        if head in self.keystone.projects:
            if head != caller.project_id:
                raise OpenStackError(400, "Malformed request URL: URL's project_id "
                                          f"'{head}' doesn't match Context's project_id "
                                          f"'{caller.project_id}'")
            rest = rest[len(head) + 1:]
        found = routes.match(req.method, rest)
        if found is None:
            raise OpenStackError(404, NOT_FOUND)
        resp: Response = found[0](self, req, caller, version, **found[1])
        resp.headers.update(headers)
        return resp

    # -- servers -------------------------------------------------------------------------------

    @routes.add("GET", r"/servers(?P<detail>/detail)?")
    def _list_servers(self, req: Request, caller: Token, version: tuple[int, int],
                      detail: str | None) -> Response:
        admin = "admin" in caller.roles
        all_tenants = req.arg("all_tenants")
        everyone = all_tenants is not None and all_tenants.strip().lower() not in _FALSE
        if all_tenants is not None and all_tenants.strip().lower() not in (*_TRUE, *_FALSE, ""):
            raise OpenStackError(400, f"Invalid input for query parameters all_tenants. Value: "
                                      f"{all_tenants}.")
        if everyone and not admin:
            what = "detail:get_all_tenants" if detail else "index:get_all_tenants"
            raise OpenStackError(403, f"Policy doesn't allow os_compute_api:servers:{what} to "
                                      "be performed.")
        ordered = sorted(self.servers.values(), key=lambda s: (as_utc(s.created), s.id),
                         reverse=True)
        visible = [s for s in ordered if everyone or s.project_id == caller.project_id]
        marker = req.arg("marker")
        start = 0
        if marker:
            ids = [s.id for s in visible]
            if marker not in ids:
                raise OpenStackError(400, f"marker [{marker}] not found")
            start = ids.index(marker) + 1
        limit = self.page_limit(req)
        page = visible[start:start + limit]
        if detail:
            items = [self.server_view(s, admin, version) for s in page]
        else:
            items = [{"id": s.id, "name": s.name, "links": self._links(s.id)} for s in page]
        result: Obj = {"servers": items}
        if page and len(page) == limit:
            query = {k: v[-1] for k, v in req.query.items() if k not in ("marker", "limit")}
            query.update(limit=str(limit), marker=page[-1].id)
            result["servers_links"] = [{"rel": "next", "href": self.base_url
                                        + req.path.rstrip("/") + "?" + urlencode(query)}]
        return reply(200, result)

    def _links(self, server_id: str) -> list[Obj]:
        return [{"rel": "self", "href": f"{self.base_url}/v2.1/servers/{server_id}"},
                {"rel": "bookmark", "href": f"{self.base_url}/servers/{server_id}"}]

    def server_view(self, server: Server, admin: bool, version: tuple[int, int]) -> Obj:
        """The server as the API shows it at ``version`` (``admin``: the host attributes)."""
        status = _status(server)
        flavor: Obj = {"id": "m1.sim", "links": [{"rel": "bookmark",
                                                  "href": f"{self.base_url}/flavors/m1.sim"}]}
        if version >= (2, 47):
            flavor = {"vcpus": server.vcpus, "ram": server.ram, "disk": 20, "ephemeral": 0,
                      "swap": 0, "original_name": "m1.sim", "extra_specs": {}}
        view: Obj = {
            "id": server.id, "name": server.name, "status": status,
            "tenant_id": server.project_id, "user_id": server.user_id,
            "metadata": dict(server.metadata),
            "hostId": uuid.uuid5(uuid.NAMESPACE_DNS, f"{server.project_id}{server.host}").hex
            if server.host else "",
            "image": "", "flavor": flavor,
            "created": iso_utc(server.created), "updated": iso_utc(server.updated),
            "addresses": {}, "accessIPv4": "", "accessIPv6": "", "links": self._links(server.id),
            "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": "nova",
            "config_drive": "", "key_name": None,
            "OS-SRV-USG:launched_at": iso_utc(server.created, digits=6, suffix=""),
            "OS-SRV-USG:terminated_at": None, "security_groups": [{"name": "default"}],
            "OS-EXT-STS:task_state": server.task_state,
            "OS-EXT-STS:vm_state": server.vm_state,
            "OS-EXT-STS:power_state": _POWER.get(server.vm_state, 4),
            "os-extended-volumes:volumes_attached": [],
        }
        if status in ("ACTIVE", "BUILD"):
            view["progress"] = 0
        if admin:
            view.update({"OS-EXT-SRV-ATTR:host": server.host,
                         "OS-EXT-SRV-ATTR:hypervisor_hostname": server.host,
                         "OS-EXT-SRV-ATTR:instance_name":
                             f"instance-{int(uuid.UUID(server.id)) % 16**8:08x}"})
        if version >= (2, 9):
            view["locked"] = server.locked
        if version >= (2, 19):
            view["description"] = None
        if version >= (2, 26):
            view["tags"] = []
        return view

    @routes.add("POST", r"/servers/(?P<server_id>[^/]+)/action")
    def _server_action(self, req: Request, caller: Token, version: tuple[int, int],
                       server_id: str) -> Response:
        """``shelve`` and ``unshelve``, the runbook's soft scaling (other actions: 400).

        With Nova's default ``shelved_offload_time = 0`` a shelved server is offloaded at
        once: ``SHELVED_OFFLOADED``, no host. Unshelving makes it ``ACTIVE`` again.
        """
        server = self.servers.get(server_id)
        if server is None or not ("admin" in caller.roles
                                  or server.project_id == caller.project_id):
            raise OpenStackError(404, f"Instance {server_id} could not be found.")
        body = body_of(req)
        if not isinstance(body, dict) or len(body) != 1:
            raise OpenStackError(400, "Malformed request body")
        (action, _args), = body.items()
        allowed = {"shelve": ("active", "stopped", "paused", "suspended"),
                   "unshelve": ("shelved", "shelved_offloaded")}
        if action not in allowed:
            raise OpenStackError(400, f"There is no such action: {action}")
        if server.vm_state not in allowed[action] or server.task_state is not None:
            raise OpenStackError(409, f"Cannot '{action}' instance {server_id} while it is in "
                                      f"vm_state {server.vm_state}")
        if action == "shelve":
            server.vm_state, server.host = "shelved_offloaded", None
        else:
            server.vm_state, server.host = "active", "compute-1"
        server.updated = self.clock()
        return Response(202, b"", None)

    # -- limits --------------------------------------------------------------------------------

    def quota(self, project_id: str) -> dict[str, int]:
        """A project's quota: its overrides over the defaults (Nova's shipped ones with the
        cloud's ``default_quotas``, else unlimited)."""
        base = (DEFAULT_QUOTAS if self.cloud.default_quotas
                else dict.fromkeys(DEFAULT_QUOTAS, -1))
        return {**base, **self.quotas.get(project_id, {})}

    @routes.add("GET", r"/limits")
    def _limits(self, req: Request, caller: Token, version: tuple[int, int]) -> Response:
        project_id = caller.project_id or ""
        if req.arg("tenant_id"):  # an admin may ask for another project's (os-used-limits)
            if "admin" not in caller.roles:
                raise OpenStackError(403, "Policy doesn't allow os_compute_api:limits:"
                                          "other_project to be performed.")
            project_id = str(req.arg("tenant_id"))
        quota, used = self.quota(project_id), self.usage(project_id)
        absolute: Obj = {
            "maxServerMeta": 128, "maxTotalInstances": quota["instances"],
            "maxTotalCores": quota["cores"], "maxTotalRAMSize": quota["ram"],
            "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10,
            "totalInstancesUsed": used["instances"], "totalCoresUsed": used["cores"],
            "totalRAMUsed": used["ram"], "totalServerGroupsUsed": 0,
        }
        if version < (2, 57):
            absolute.update(maxImageMeta=128, maxPersonality=5, maxPersonalitySize=10240)
        if version < (2, 36):
            absolute.update(maxSecurityGroups=10, maxSecurityGroupRules=20,
                            maxTotalFloatingIps=10, totalFloatingIpsUsed=0,
                            totalSecurityGroupsUsed=1)
        return reply(200, {"limits": {"rate": [], "absolute": absolute}})
