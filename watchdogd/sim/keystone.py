"""The simulated Keystone v3: users, projects, application credentials, tokens and the catalog.

Password and application-credential authentication (by id, or by name and user), project
scope, token validation and revocation (``X-Subject-Token``), the catalog that points
openstacksdk at Cinder (``/v3/{project_id}`` when ``project_id_in_url``), and the lists of
users, projects and a user's application credentials. One domain (``default``); tokens are
random strings (not Fernet).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

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
    keystone_time,
    reply,
)

if TYPE_CHECKING:
    from watchdogd.sim.openstack import OpenStackSim

__all__ = ["Keystone", "Token"]

Obj = dict[str, Any]


@dataclass
class User:
    id: str
    name: str
    password: str
    project_id: str
    roles: tuple[str, ...]


@dataclass
class Project:
    id: str
    name: str


@dataclass
class AppCred:
    id: str
    name: str
    secret: str
    user_id: str
    project_id: str
    expires_at: datetime | None
    description: str = ""
    unrestricted: bool = False


@dataclass
class Token:
    value: str
    user_id: str
    project_id: str | None
    roles: tuple[str, ...]
    expires_at: datetime
    methods: tuple[str, ...]
    app_cred_id: str | None = None
    revoked: bool = False


_Named = TypeVar("_Named", User, Project)


def _named(records: Iterable[_Named], name: str) -> _Named:
    for record in records:
        if record.name == name:
            return record
    raise KeyError(name)


routes = Routes()


class Keystone(Service):
    """Keystone's state and API; the cloud gives the clock, the lock and Cinder's URL."""

    kind = "keystone"

    def __init__(self, cloud: OpenStackSim) -> None:
        super().__init__(cloud)
        self.projects: dict[str, Project] = {}
        self.users: dict[str, User] = {}
        self.app_creds: dict[str, AppCred] = {}
        self.tokens: dict[str, Token] = {}

    @property
    def auth_url(self) -> str:
        """The ``auth_url`` for clouds.yaml (``.../v3``)."""
        return self.base_url + "/v3"

    # -- identities ------------------------------------------------------------------------

    def add_project(self, name: str) -> str:
        """Create a project; return its id."""
        with self.lock:
            pid = uuid.uuid4().hex
            self.projects[pid] = Project(pid, name)
            return pid

    def project_by_name(self, name: str) -> Project:
        """The project called ``name`` (KeyError if none)."""
        return _named(self.projects.values(), name)

    def add_user(self, name: str, password: str, *, project: str = "admin",
                 roles: Iterable[str] = ("member", "reader")) -> str:
        """Create a user with roles on ``project`` (a name); return the user id."""
        with self.lock:
            if project not in {p.name for p in self.projects.values()}:
                self.add_project(project)
            uid = uuid.uuid4().hex
            self.users[uid] = User(uid, name, password, self.project_by_name(project).id,
                                   tuple(roles))
            return uid

    def user_by_name(self, name: str) -> User:
        """The user called ``name`` (KeyError if none)."""
        return _named(self.users.values(), name)

    def add_application_credential(self, user: str, name: str, *, secret: str | None = None,
                                   expires_at: datetime | None = None,
                                   unrestricted: bool = False) -> tuple[str, str]:
        """An application credential of ``user`` (a name); returns ``(id, secret)``."""
        with self.lock:
            owner = self.user_by_name(user)
            acid = uuid.uuid4().hex
            secret = secret or secrets.token_urlsafe(24)
            self.app_creds[acid] = AppCred(acid, name, secret, owner.id, owner.project_id,
                                           expires_at, unrestricted=unrestricted)
            return acid, secret

    def set_application_credential(self, acid: str, *, expires_at: datetime | None) -> None:
        """Change when a credential expires (an expired one can no longer authenticate)."""
        with self.lock:
            self.app_creds[acid].expires_at = expires_at

    # -- tokens ------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every token issued so far is rejected from now on (401), as after a key rotation."""
        with self.lock:
            for token in self.tokens.values():
                token.revoked = True

    def valid_token(self, value: str | None) -> Token | None:
        """The token ``value`` names if it still authenticates, else None."""
        token = self.tokens.get(value or "")
        if token is None or token.revoked or as_utc(token.expires_at) <= self.clock():
            return None
        if token.app_cred_id is not None:
            cred = self.app_creds.get(token.app_cred_id)
            if cred is None or (cred.expires_at is not None
                                and as_utc(cred.expires_at) <= self.clock()):
                return None
        return token

    def _new_token(self, user: User, project_id: str | None, methods: tuple[str, ...],
                   expires: datetime, app_cred_id: str | None = None) -> Token:
        token = Token("gAAAAA" + secrets.token_urlsafe(48), user.id, project_id,
                      user.roles if project_id else (), expires, methods, app_cred_id)
        self.tokens[token.value] = token
        return token

    # -- HTTP --------------------------------------------------------------------------------

    def error(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return keystone_error(code, message, self.auth_url, headers)

    def route(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        found = routes.match(req.method, path)
        if found is not None and not found[2]:
            return found[0](self, req, **found[1])
        caller = self.valid_token(req.headers.get("X-Auth-Token"))
        if caller is None:  # an unknown path is a 401 too, before it is a 404
            raise OpenStackError(401, UNAUTHENTICATED)
        if found is None:
            raise OpenStackError(404, NOT_FOUND)
        return found[0](self, req, caller, **found[1])

    def _version_doc(self) -> Obj:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": self.auth_url + "/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}

    @routes.add("GET", r"/", auth=False)
    def _versions(self, req: Request) -> Response:
        return reply(300, {"versions": {"values": [self._version_doc()]}})

    @routes.add("GET", r"/v3", auth=False)
    def _version(self, req: Request) -> Response:
        return reply(200, {"version": self._version_doc()})

    @routes.add("POST", r"/v3/auth/tokens", auth=False)
    def _issue_token(self, req: Request) -> Response:
        data = body_of(req) or {}
        identity = ((data.get("auth") or {}).get("identity")) or {}
        methods = identity.get("methods") or []
        now = self.clock()
        if "application_credential" in methods:
            spec = identity.get("application_credential") or {}
            cred = self.app_creds.get(spec.get("id") or "")
            if cred is None and spec.get("name"):
                user_spec = spec.get("user") or {}
                cred = next((c for c in self.app_creds.values()
                             if c.name == spec["name"]
                             and self.users[c.user_id].name == user_spec.get("name")), None)
            if cred is None or not secrets.compare_digest(cred.secret,
                                                          str(spec.get("secret", ""))):
                raise OpenStackError(401, UNAUTHENTICATED)
            if cred.expires_at is not None and as_utc(cred.expires_at) <= now:
                raise OpenStackError(401, UNAUTHENTICATED)
            user = self.users[cred.user_id]
            expires = now + self.cloud.token_ttl
            if cred.expires_at is not None:
                expires = min(expires, as_utc(cred.expires_at))
            token = self._new_token(user, cred.project_id, ("application_credential",),
                                    expires, cred.id)
        elif "password" in methods:
            spec = ((identity.get("password") or {}).get("user")) or {}
            user_or_none = (self.users.get(spec.get("id") or "")
                            or next((u for u in self.users.values()
                                     if u.name == spec.get("name")), None))
            if user_or_none is None or not secrets.compare_digest(
                    user_or_none.password, str(spec.get("password", ""))):
                raise OpenStackError(401, UNAUTHENTICATED)
            user = user_or_none
            token = self._new_token(user, self._scope(data, user), ("password",),
                                    now + self.cloud.token_ttl)
        else:
            raise OpenStackError(401, UNAUTHENTICATED)
        return reply(201, {"token": self._token_view(token)}, {"X-Subject-Token": token.value})

    def _scope(self, data: Obj, user: User) -> str | None:
        scope = ((data.get("auth") or {}).get("scope")) or {}
        project = scope.get("project") or None
        if project is None:
            return None
        found = (self.projects.get(project.get("id") or "")
                 or next((p for p in self.projects.values() if p.name == project.get("name")),
                         None))
        if found is None or found.id != user.project_id:
            raise OpenStackError(401, UNAUTHENTICATED)
        return found.id

    @routes.add("GET HEAD DELETE", r"/v3/auth/tokens")
    def _validate_token(self, req: Request, caller: Token) -> Response:
        subject = self.valid_token(req.headers.get("X-Subject-Token"))
        if subject is None:
            raise OpenStackError(404, "Could not find token.")
        if req.method == "DELETE":
            subject.revoked = True
            return Response(204, b"", None)
        return reply(200, {"token": self._token_view(subject)},
                     {"X-Subject-Token": subject.value})

    @routes.add("GET", r"/v3/users/(?P<user_id>[^/]+)/application_credentials"
                       r"(?:/(?P<acid>[^/]+))?")
    def _list_app_creds(self, req: Request, caller: Token, user_id: str,
                        acid: str | None) -> Response:
        if user_id != caller.user_id:
            raise OpenStackError(403, "You are not authorized to perform the requested "
                                      "action: identity:list_application_credentials.")
        if acid is not None:
            cred = self.app_creds.get(acid)
            if cred is None or cred.user_id != user_id:
                raise OpenStackError(404, f"Could not find Application Credential: {acid}.")
            return reply(200, {"application_credential": self._app_cred_view(cred)})
        name = req.arg("name")
        creds = [self._app_cred_view(c) for c in self.app_creds.values()
                 if c.user_id == user_id and (name is None or c.name == name)]
        return reply(200, {"application_credentials": creds,
                           "links": {"self": f"{self.auth_url}/users/{user_id}/"
                                             "application_credentials",
                                     "previous": None, "next": None}})

    @routes.add("GET", r"/v3/users/(?P<user_id>[^/]+)")
    def _show_user(self, req: Request, caller: Token, user_id: str) -> Response:
        user = self.users.get(user_id)
        if user is None or (user.id != caller.user_id and "admin" not in caller.roles):
            raise OpenStackError(404, f"Could not find user: {user_id}.")
        return reply(200, {"user": self._user_view(user)})

    @routes.add("GET", r"/v3/(?:auth/)?projects")
    def _list_projects(self, req: Request, caller: Token) -> Response:
        visible = [p for p in self.projects.values() if "admin" in caller.roles
                   or p.id == caller.project_id]
        name = req.arg("name")
        return reply(200, {"projects": [self._project_view(p) for p in visible
                                        if name is None or p.name == name],
                           "links": {"self": self.auth_url + req.path.rstrip("/"),
                                     "next": None, "previous": None}})

    @routes.add("GET", r"/v3/projects/(?P<project_id>[^/]+)")
    def _show_project(self, req: Request, caller: Token, project_id: str) -> Response:
        project = self.projects.get(project_id)
        if project is None:
            raise OpenStackError(404, f"Could not find project: {project_id}.")
        return reply(200, {"project": self._project_view(project)})

    @routes.add("GET", r"/v3/auth/catalog")
    def _show_catalog(self, req: Request, caller: Token) -> Response:
        return reply(200, {"catalog": self.catalog(caller.project_id)})

    # -- views -------------------------------------------------------------------------------

    def _user_view(self, user: User) -> Obj:
        return {"id": user.id, "name": user.name, "domain_id": "default", "enabled": True,
                "default_project_id": user.project_id, "password_expires_at": None,
                "links": {"self": f"{self.auth_url}/users/{user.id}"}}

    def _project_view(self, project: Project) -> Obj:
        return {"id": project.id, "name": project.name, "domain_id": "default",
                "enabled": True, "is_domain": False, "parent_id": "default",
                "description": "", "tags": [],
                "links": {"self": f"{self.auth_url}/projects/{project.id}"}}

    def _token_view(self, token: Token) -> Obj:
        user = self.users[token.user_id]
        view: Obj = {
            "methods": list(token.methods),
            "user": {"domain": {"id": "default", "name": "Default"}, "id": user.id,
                     "name": user.name, "password_expires_at": None},
            "audit_ids": [secrets.token_urlsafe(16)],
            "expires_at": keystone_time(token.expires_at),
            "issued_at": keystone_time(self.clock()),
        }
        if token.project_id is not None:
            project = self.projects[token.project_id]
            view.update(
                project={"domain": {"id": "default", "name": "Default"}, "id": project.id,
                         "name": project.name},
                is_domain=False,
                roles=[{"id": f"role-{name}", "name": name} for name in token.roles],
                catalog=self.catalog(token.project_id),
            )
        if token.app_cred_id is not None:
            cred = self.app_creds[token.app_cred_id]
            view["application_credential"] = {"id": cred.id, "name": cred.name,
                                              "restricted": not cred.unrestricted}
        return view

    def catalog(self, project_id: str | None) -> list[Obj]:
        """The service catalog of a token scoped to ``project_id``."""
        region = self.cloud.region

        def endpoints(url: str) -> list[Obj]:
            return [{"id": uuid.uuid5(uuid.NAMESPACE_URL, url + iface).hex, "interface": iface,
                     "region": region, "region_id": region, "url": url}
                    for iface in ("public", "internal", "admin")]

        volume_url = self.cloud.cinder_url + "/v3"
        if self.cloud.project_id_in_url and project_id:
            volume_url += f"/{project_id}"
        return [
            {"id": "identity", "type": "identity", "name": "keystone",
             "endpoints": endpoints(self.auth_url)},
            {"id": "block-storage", "type": "block-storage", "name": "cinder",
             "endpoints": endpoints(volume_url)},
            {"id": "volumev3", "type": "volumev3", "name": "cinderv3",
             "endpoints": endpoints(volume_url)},
            {"id": "compute", "type": "compute", "name": "nova",
             "endpoints": endpoints(self.cloud.nova_url + "/v2.1")},
        ]

    def _app_cred_view(self, cred: AppCred) -> Obj:
        user = self.users[cred.user_id]
        return {"id": cred.id, "name": cred.name, "description": cred.description,
                "user_id": cred.user_id, "project_id": cred.project_id,
                "expires_at": cinder_time(cred.expires_at),
                "unrestricted": cred.unrestricted, "system": None, "access_rules": [],
                "roles": [{"id": f"role-{r}", "name": r, "domain_id": None}
                          for r in user.roles],
                "links": {"self": f"{self.auth_url}/users/{cred.user_id}/"
                                  f"application_credentials/{cred.id}"}}
