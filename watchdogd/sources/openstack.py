"""OpenStack Cinder, Nova (and Keystone), through openstacksdk's proxies, read as raw JSON.

openstacksdk is used for what it is good at: clouds.yaml, authentication (password or
application credential, re-authenticating on a 401), the service catalog and microversion
headers. Lists are *not* read as SDK resource objects: on the real Cinder API with 5,006 volumes
the objects cost 23x the client CPU of the raw pages. Instead every list is fetched with
``proxy.get(path, microversion=...)`` and parsed as JSON, page by page:

* volumes follow Cinder's ``volumes_links`` (only the ``marker`` is taken from the link: behind a
  TLS-terminating proxy the link's scheme and host are often wrong);
* servers follow Nova's ``servers_links`` the same way;
* attachments have no links at all, so they are paged with ``marker`` until a page comes back
  shorter than the pages before it, or empty (Cinder caps ``limit`` at ``osapi_max_limit``
  without saying so, so a short *first* page proves nothing and is confirmed by one more
  request).

An authentication failure (keystoneauth's ``Unauthorized``, which is not an ``SDKException``,
or a 401 that survives the SDK's own re-authentication) is returned as ``{"auth_error": ...}``
rather than raised: the volumes check turns it into a ``credential-invalid`` finding. Anything
else that prevents a complete answer raises :class:`~watchdogd.model.SourceError`. Reads are
retried on connection errors and 500/502/503/504; writes never are.

Every action re-reads what it is about to change and raises
:class:`~watchdogd.model.PreconditionFailed` when the volume's status or ``updated_at`` moved
since the pass observed them, so a volume that changed state during the pass is never touched.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from keystoneauth1 import exceptions as ks_exc

from watchdogd.config import CloudConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.ports import VOLUME_FIELDS
from watchdogd.sources.base import (
    attempts,
    count_request,
    describe_status,
    http_date,
    note_server_date,
    scrub,
    secret_values,
)
from watchdogd.sources.bounded import bound_session, limits

# openstacksdk warns about its own future API changes on every request; in a
# daemon that logs warnings they would drown the lines an operator needs.
warnings.filterwarnings("ignore", module=r"openstack(\.|$)")

__all__ = ["ATTACHMENTS_MICROVERSION", "AuthFailed", "OpenStackSource"]

#: Attachments (the new attach API) exist from 3.27; every block-storage request uses it.
ATTACHMENTS_MICROVERSION = "3.27"
RETRY_STATUSES = frozenset({500, 502, 503, 504})


#: keystoneauth plugins that send no credentials: such a cloud has no user to list
NO_AUTH_TYPES = frozenset({"none", "noauth"})


class AuthFailed(Exception):
    """Keystone or Cinder rejected the credentials (after the SDK's own re-authentication)."""


def _connect(config: CloudConfig) -> Any:
    """Build an openstacksdk Connection from the clouds.yaml entry and the overrides."""
    import openstack.connection  # noqa: PLC0415 - the SDK is heavy; import when used
    from openstack import config as os_config  # noqa: PLC0415

    overrides: dict[str, Any] = {
        "api_timeout": config.timeout.total_seconds(),
        # Retries are ours (counted, bounded, reads only); the SDK's would hide requests.
        "connect_retries": 0,
        "status_code_retries": 0,
        "block_storage_api_version": "3",
    }
    if config.region:
        overrides["region_name"] = config.region
    if config.auth_url:
        overrides["auth_url"] = config.auth_url
    if config.block_storage_endpoint:
        overrides["block_storage_endpoint_override"] = config.block_storage_endpoint
    if config.application_credential_id:
        if config.application_credential_secret is None:
            raise SourceError("openstack", config.cloud,
                              "application_credential_id is set but no secret "
                              "(application_credential_secret_file)")
        overrides.update(
            auth_type="v3applicationcredential",
            application_credential_id=config.application_credential_id,
            application_credential_secret=config.application_credential_secret
            .get_secret_value(),
        )
    files = [config.clouds_yaml] if config.clouds_yaml else None
    try:
        loader = os_config.OpenStackConfig(config_files=files, load_envvars=False)
        if config.application_credential_id:
            # The entry's own auth (a password, a project scope) would be merged with the
            # credential and rejected: keep only where Keystone is.
            entry = (loader.cloud_config.get("clouds") or {}).get(config.cloud)
            if isinstance(entry, dict):
                auth = entry.get("auth") or {}
                entry["auth"] = {k: v for k, v in auth.items() if k == "auth_url"}
                entry.pop("auth_type", None)
        region = loader.get_one(cloud=config.cloud, **overrides)
        return openstack.connection.Connection(config=region)
    except Exception as exc:  # ConfigException, OSError, yaml errors, plugin errors
        where = config.clouds_yaml or "clouds.yaml"
        raise SourceError("openstack", config.cloud,
                          f"cannot load cloud {config.cloud!r} from {where}: "
                          f"{type(exc).__name__}: {_first_line(exc)}") from None


class OpenStackSource:
    """One cloud's Cinder and Keystone, with the credentials of its clouds.yaml entry."""

    def __init__(self, target: str, config: CloudConfig, *,
                 connect: Callable[[CloudConfig], Any] = _connect,
                 retries: int = 2, sleep: Callable[[float], None] = time.sleep) -> None:
        self.target = target
        self.config = config
        self.page_size = config.page_size
        self.timeout = config.timeout.total_seconds()
        self.max_bytes = int(config.max_response_bytes)
        self.retries = retries
        self._sleep = sleep
        self._connect = connect
        self._conn: Any = None
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def error(self, cause: str) -> SourceError:
        """A SourceError naming this cloud (its credentials masked, should Keystone or a
        gateway echo them back in an error body)."""
        return SourceError("openstack", self.target, scrub(cause, self._secrets()))

    def _secrets(self) -> list[str]:
        values: list[Any] = []
        if self.config.application_credential_secret is not None:
            values.append(self.config.application_credential_secret.get_secret_value())
        auth = getattr(getattr(self._conn, "config", None), "auth", None)
        if isinstance(auth, dict):
            values += [auth.get(k) for k in ("password", "application_credential_secret",
                                             "token")]
        return secret_values(values)

    @property
    def conn(self) -> Any:
        """The SDK connection, built once (thread-safe); every HTTP response is counted."""
        with self._lock:
            if self._conn is None:
                conn = self._connect(self.config)
                session = getattr(getattr(conn, "session", None), "session", None)
                if session is not None:
                    session.hooks.setdefault("response", []).append(_count_response)
                    # Every connection checks the call's total deadline and byte budget.
                    bound_session(session)
                self._conn = conn
            return self._conn

    @property
    def _credential(self) -> str:
        return f"the credentials of cloud {self.config.cloud!r} (clouds.{self.target})"

    @contextmanager
    def _sdk(self, what: str) -> Iterator[None]:
        """Translate keystoneauth/SDK exceptions into AuthFailed or SourceError."""
        from openstack import exceptions as sdk_exc  # noqa: PLC0415

        try:
            yield
        except ks_exc.Unauthorized:
            raise AuthFailed(f"{what}: Keystone rejected {self._credential} "
                             "(401 Unauthorized: wrong, expired or revoked)") from None
        except (ks_exc.EndpointNotFound, ks_exc.EmptyCatalog) as exc:
            raise self.error(f"{what}: the service catalog has no usable endpoint "
                             f"({_first_line(exc)})") from None
        except ks_exc.DiscoveryFailure as exc:
            raise self.error(f"{what}: version discovery failed, Keystone or Cinder is "
                             f"unreachable or not what was expected ({_where(exc)})") from None
        except ks_exc.ConnectionError as exc:
            raise _Retriable(f"{what}: cannot connect to {_where(exc)}") from None
        except (ks_exc.ClientException, sdk_exc.SDKException) as exc:
            raise self.error(f"{what}: {type(exc).__name__}: {_first_line(exc)}") from None

    def _request(self, service: str, method: str, path: str, *, what: str,
                 json: Any = None, ok: tuple[int, ...] = (200,), retry: bool = False,
                 microversion: str | None = ATTACHMENTS_MICROVERSION) -> Any:
        """One request (retried if ``retry``); returns the response with a status in ``ok``.

        A 401 gets one more try after a fresh authentication. keystoneauth re-authenticates
        on a 401 only if its ``invalidate()`` finds a token to drop: when a token dies under
        concurrent requests (the pass reads volumes, attachments and credentials at once),
        the first one drops it and the others come back with their 401 and no retry, which
        would read as "the credentials are invalid". A 401 means nothing was done, so the
        retry is safe for writes too; a second 401 is the credentials.
        """
        try:
            return self._request_once(service, method, path, what=what, json=json, ok=ok,
                                      retry=retry, microversion=microversion)
        except AuthFailed:
            self._reauthenticate(what)
            return self._request_once(service, method, path, what=what, json=json, ok=ok,
                                      retry=retry, microversion=microversion)

    def _reauthenticate(self, what: str) -> None:
        """Drop the token and get a new one, one thread at a time."""
        with self._auth_lock, self._sdk(what):
            session = self.conn.session
            session.invalidate()
            session.get_token()

    def _request_once(self, service: str, method: str, path: str, *, what: str,
                      json: Any = None, ok: tuple[int, ...] = (200,), retry: bool = False,
                      microversion: str | None = ATTACHMENTS_MICROVERSION) -> Any:
        last = ""
        for _ in attempts(1 + (self.retries if retry else 0), self._sleep):
            try:
                with self._sdk(what), limits(self.timeout, self.max_bytes) as bound:
                    proxy = getattr(self.conn, service)
                    kwargs: dict[str, Any] = {"raise_exc": False, "connect_retries": 0}
                    if microversion is not None and service == "block_storage":
                        kwargs["microversion"] = microversion
                    if json is not None:
                        kwargs["json"] = json
                    try:
                        response = proxy.request(path, method, **kwargs)
                    except Exception:
                        if bound.exceeded == "size":
                            raise self.error(f"{what}: {bound.describe()}") from None
                        if bound.exceeded:
                            raise _Retriable(f"{what}: {bound.describe()}") from None
                        raise
            except _Retriable as exc:
                count_request()  # no response reached the hook
                last = str(exc)
                if method != "GET":
                    break  # a write whose answer never came is not sent again
                continue
            status = response.status_code
            note_server_date(response.headers.get("Date"))
            if status in ok:
                return response
            if status == 401:
                raise AuthFailed(f"{what}: {self._credential} rejected with 401 even after "
                                 "re-authentication")
            last = f"{what}: " + describe_status(status, _error_text(response),
                                                 credential=self._credential,
                                                 need=_need_for(path, method))
            if status not in RETRY_STATUSES:
                break
        raise self.error(last)

    def _get_json(self, service: str, path: str, *, what: str, ok: tuple[int, ...] = (200,),
                  microversion: str | None = ATTACHMENTS_MICROVERSION) -> Any:
        return self._get_dated(service, path, what=what, ok=ok, microversion=microversion)[0]

    def _get_dated(self, service: str, path: str, *, what: str, ok: tuple[int, ...] = (200,),
                   microversion: str | None = ATTACHMENTS_MICROVERSION,
                   ) -> tuple[Any, datetime | None]:
        """The JSON of a GET (None for a 404) and the server's ``Date``: the cloud's clock."""
        response = self._request(service, "GET", path, what=what, retry=True, ok=ok,
                                 microversion=microversion)
        date = http_date(response.headers.get("Date"))
        if response.status_code == 404:
            return None, date
        try:
            return response.json(), date
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise self.error(f"{what}: the answer is not JSON") from None

    # -- reads ---------------------------------------------------------------------------------

    def volumes(self) -> dict[str, Any]:
        """Every volume of every project (``all_tenants``), with details, all pages.

        Returns ``{"items": [...], "pages": n, "all_projects": bool | None, "cloud_now":
        iso | None}`` (False: the credential is not admin and Cinder listed its own project
        only; ``cloud_now``: the first page's ``Date``, Cinder's clock, so ages of its
        ``updated_at`` are never taken on watchdogd's clock), or ``{"auth_error": why}``.
        """
        try:
            items: list[dict[str, Any]] = []
            seen: set[str] = set()
            marker: str | None = None
            pages = 0
            cloud_now: datetime | None = None
            while True:
                query = {"all_tenants": "1", "limit": str(self.page_size)}
                if marker:
                    query["marker"] = marker
                data, date = self._get_dated("block_storage",
                                             "/volumes/detail?" + urlencode(query),
                                             what="list volumes")
                if pages == 0:
                    cloud_now = date
                page = _items(data, "volumes")
                if page is None:
                    raise self.error("list volumes: the answer has no volumes list")
                pages += 1
                for volume in page:
                    vid = volume.get("id")
                    if not isinstance(vid, str) or vid in seen:
                        raise self.error("list volumes: a volume without id, or seen twice: "
                                         "the list changed while paging")
                    if not _well_formed(volume, _VOLUME_FIELDS):
                        raise self.error(f"list volumes: volume {vid[:64]} is malformed")
                    seen.add(vid)
                    # Only the fields kept (ports.VOLUME_FIELDS): the page's other fields go
                    # with the page, so tens of thousands of volumes cost what is read.
                    items.append({key: volume[key] for key in VOLUME_FIELDS if key in volume})
                marker = _next_marker(data.get("volumes_links"))
                if marker is None and len(page) >= self.page_size:
                    marker = str(page[-1]["id"])  # a full page without a link: ask once more
                if marker is None or not page:
                    # Cinder silently ignores all_tenants for a non-admin: say which it was
                    # (only admins see the tenant attribute).
                    scope = (any("os-vol-tenant-attr:tenant_id" in v for v in items)
                             if items else None)
                    return {"items": items, "pages": pages, "all_projects": scope,
                            "cloud_now": cloud_now.isoformat() if cloud_now else None}
        except AuthFailed as exc:
            return {"auth_error": str(exc)}

    def attachments(self) -> dict[str, Any]:
        """Every attachment of every project (3.27), all pages: ``{"items", "pages"}``.

        Reserved attachments only show up here, never in a volume's ``attachments``.
        """
        try:
            items: list[dict[str, Any]] = []
            seen: set[str] = set()
            marker: str | None = None
            pages = 0
            previous: int | None = None
            while True:
                query = {"all_tenants": "1", "limit": str(self.page_size)}
                if marker:
                    query["marker"] = marker
                data = self._get_json("block_storage", "/attachments/detail?"
                                      + urlencode(query), what="list attachments")
                page = _items(data, "attachments")
                if page is None:
                    raise self.error("list attachments: the answer has no attachments list")
                pages += 1
                for attachment in page:
                    aid = attachment.get("id")
                    if not isinstance(aid, str) or aid in seen:
                        raise self.error("list attachments: an attachment without id, or seen "
                                         "twice: the list changed while paging")
                    if not _well_formed(attachment, _ATTACHMENT_FIELDS):
                        raise self.error(f"list attachments: attachment {aid[:64]} is malformed")
                    seen.add(aid)
                    attachment.pop("connection_info", None)  # can hold target secrets
                items.extend(page)
                # The end: an empty page, or one shorter than the pages before it. A short
                # first page may be Cinder's silent cap, so it is confirmed by one more page.
                if not page or (previous is not None and len(page) < previous):
                    return {"items": items, "pages": pages}
                previous = max(previous or 0, len(page))
                marker = str(page[-1]["id"])
        except AuthFailed as exc:
            return {"auth_error": str(exc)}

    def application_credentials(self) -> dict[str, Any]:
        """The application credentials of the authenticated user, with ``expires_at``.

        Returns ``{"items", "user_id", "in_use"}`` (``in_use``: the id of the credential this
        connection authenticates with, if any), ``{"auth_error": why}``, ``{"check_error":
        why}`` when the listing fails otherwise, or ``{"skipped": why}`` for a cloud without
        Keystone (``auth_type: none``). It never raises: the credential check is its own
        finding, and a failure of it must not leave the volume verdicts without data.
        """
        try:
            # Inside _sdk like every other first use of the connection: the SDK's modules
            # are imported in the same order in every collect thread.
            with self._sdk("read the auth type"):
                auth_type = self._auth_type()
            if auth_type in NO_AUTH_TYPES:
                return {"skipped": f"auth_type {auth_type}: no Keystone user, no application "
                                   "credentials"}
            return self._application_credentials()
        except SourceError as exc:
            return {"check_error": exc.cause}

    def _auth_type(self) -> str | None:
        config = getattr(getattr(self.conn, "config", None), "config", None)
        value = config.get("auth_type") if isinstance(config, dict) else None
        return value if isinstance(value, str) else None

    def _application_credentials(self) -> dict[str, Any]:
        try:
            with self._sdk("who am I"):
                user_id = self.conn.current_user_id
            if not user_id:
                raise self.error("the token names no user: cannot list its credentials")
            data = self._get_json("identity", f"/users/{user_id}/application_credentials",
                                  what="list application credentials", microversion=None)
            items = _items(data, "application_credentials")
            if items is None:
                raise self.error("list application credentials: the answer has no list")
            if data.get("truncated"):
                raise self.error("list application credentials: Keystone truncated the list "
                                 "(list_limit)")
            clean = [{k: c.get(k) for k in ("id", "name", "expires_at", "project_id",
                                            "description", "unrestricted")} for c in items]
            in_use = None
            with self._sdk("read the auth options"):
                auth = getattr(self.conn.config, "auth", None) or {}
                in_use = auth.get("application_credential_id") if isinstance(auth, dict) else None
            return {"items": clean, "user_id": user_id, "in_use": in_use}
        except AuthFailed as exc:
            return {"auth_error": str(exc)}

    def servers(self) -> dict[str, Any]:
        """Every Nova server (``all_tenants``) with details, all pages, at microversion 2.1.

        Returns ``{"items": [...], "pages": n, "all_projects": bool}``: each item only the
        fields the checks read (``id``, ``name``, ``status``, ``OS-EXT-STS:vm_state``,
        ``OS-EXT-STS:task_state``, ``updated``, ``tenant_id``). Nova answers ``all_tenants``
        from a non-admin with a 403 (it never ignores it silently, as Cinder does): the list
        is then read again without it, for the token's project only, and ``all_projects`` is
        False, so that a server missing from it is never taken for a deleted one. Anything
        short of every page, a refused credential included, raises SourceError.
        """
        try:
            try:
                items, pages = self._server_pages(all_tenants=True)
                return {"items": items, "pages": pages, "all_projects": True}
            except _Forbidden:
                items, pages = self._server_pages(all_tenants=False)
                return {"items": items, "pages": pages, "all_projects": False}
        except AuthFailed as exc:
            raise self.error(str(exc)) from None
        except _Forbidden as exc:
            raise self.error(str(exc)) from None

    def volume_limits(self) -> dict[str, int]:
        """Cinder's absolute limits and usage of the credentials' project (``GET /limits``):
        ``maxTotalVolumes``, ``totalVolumesUsed``, ``maxTotalVolumeGigabytes``... (-1:
        unlimited)."""
        return self._limits("block_storage", "read volume limits", _VOLUME_LIMITS)

    def compute_limits(self) -> dict[str, int]:
        """Nova's absolute limits and usage of the credentials' project (``GET /limits``):
        ``maxTotalInstances``, ``totalInstancesUsed``, ``maxTotalCores``, ``maxTotalRAMSize``
        (MiB)... (-1: unlimited)."""
        return self._limits("compute", "read compute limits", _COMPUTE_LIMITS)

    def _limits(self, service: str, what: str, keys: tuple[str, ...]) -> dict[str, int]:
        try:
            data = self._get_json(service, "/limits", what=what,
                                  microversion=ATTACHMENTS_MICROVERSION
                                  if service == "block_storage" else None)
        except AuthFailed as exc:
            raise self.error(str(exc)) from None
        absolute = ((data or {}).get("limits") or {}).get("absolute") if isinstance(
            data, dict) else None
        if not isinstance(absolute, dict):
            raise self.error(f"{what}: the answer has no absolute limits")
        missing = [k for k in keys if k not in absolute]
        if missing:
            raise self.error(f"{what}: the answer lacks {', '.join(missing)}")
        values = {k: absolute[k] for k in keys}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise self.error(f"{what}: a limit is not an integer")
        return values

    def _server_pages(self, *, all_tenants: bool) -> tuple[list[dict[str, Any]], int]:
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        marker: str | None = None
        pages = 0
        while True:
            query = {"all_tenants": "1"} if all_tenants else {}
            query["limit"] = str(self.page_size)
            if marker:
                query["marker"] = marker
            response = self._request("compute", "GET", "/servers/detail?" + urlencode(query),
                                     what="list servers", retry=True, ok=(200, 403),
                                     microversion=None)
            if response.status_code == 403:
                what = "list servers" + (" of every project" if all_tenants else "")
                raise _Forbidden(f"{what}: " + describe_status(
                    403, _error_text(response), credential=self._credential,
                    need="the admin role to list every project's servers" if all_tenants
                    else "a role on the project (member or reader)"))
            try:
                data = response.json()
            except (ValueError, RecursionError):
                raise self.error("list servers: the answer is not JSON") from None
            page = _items(data, "servers")
            if page is None:
                raise self.error("list servers: the answer has no servers list")
            pages += 1
            for server in page:
                sid = server.get("id")
                if not isinstance(sid, str) or sid in seen:
                    raise self.error("list servers: a server without id, or seen twice: the "
                                     "list changed while paging")
                if not _well_formed(server, _SERVER_FIELDS):
                    raise self.error(f"list servers: server {sid[:64]} is malformed")
                seen.add(sid)
                items.append({k: server.get(k) for k in _SERVER_FIELDS} | {"id": sid})
            marker = _next_marker(data.get("servers_links"))
            if marker is None and len(page) >= self.page_size:
                marker = str(page[-1]["id"])  # a full page without a link: ask once more
            if marker is None or not page:
                return items, pages

    def volume(self, volume_id: str) -> dict[str, Any] | None:
        """One volume's detail, or None when it does not exist (any more)."""
        data = self._get_json("block_storage", f"/volumes/{volume_id}",
                              what=f"show volume {volume_id}", ok=(200, 404))
        if data is None:
            return None
        volume = data.get("volume") if isinstance(data, dict) else None
        if not isinstance(volume, dict):
            raise self.error(f"show volume {volume_id}: the answer has no volume")
        return volume

    def volume_attachments(self, volume_id: str) -> list[dict[str, Any]]:
        """The attachments of one volume, any status (reserved ones included)."""
        query = urlencode({"all_tenants": "1", "volume_id": volume_id})
        data = self._get_json("block_storage", f"/attachments/detail?{query}",
                              what=f"list attachments of volume {volume_id}")
        items = _items(data, "attachments")
        if items is None:
            raise self.error(f"list attachments of volume {volume_id}: no attachments list")
        return items

    # -- actions -------------------------------------------------------------------------------

    def _fresh(self, volume_id: str, observed_status: str, observed_updated_at: str | None,
               what: str) -> dict[str, Any]:
        """Re-read a volume right before changing it; refuse if it moved since observed."""
        try:
            volume = self.volume(volume_id)
        except AuthFailed as exc:
            raise self.error(str(exc)) from None
        if volume is None:
            raise PreconditionFailed(f"volume {volume_id} no longer exists")
        if volume.get("status") != observed_status:
            raise PreconditionFailed(
                f"volume {volume_id} is now {volume.get('status')!r}, not {observed_status!r} "
                f"as observed: not going to {what}")
        if observed_updated_at is not None and volume.get("updated_at") != observed_updated_at:
            raise PreconditionFailed(
                f"volume {volume_id} changed since it was observed (updated_at "
                f"{observed_updated_at} -> {volume.get('updated_at')}): not going to {what}")
        return volume

    def _attachments_of(self, volume_id: str) -> list[dict[str, Any]]:
        try:
            return self.volume_attachments(volume_id)
        except AuthFailed as exc:
            raise self.error(str(exc)) from None

    def _write(self, method: str, path: str, *, what: str, json: Any = None,
               ok: tuple[int, ...]) -> Any:
        try:
            return self._request("block_storage", method, path, what=what, json=json, ok=ok)
        except AuthFailed as exc:
            raise self.error(str(exc)) from None

    def reset_volume_status(self, volume_id: str, status: str, observed_status: str,
                            observed_updated_at: str | None) -> str:
        """``os-reset_status`` (admin): ``available`` when no attachment is left, ``in-use``
        when only attached ones are. It only edits Cinder's database, so it is done only when
        nothing is attached in a way the new status would contradict."""
        if status not in ("available", "in-use"):
            raise ValueError(f"refusing to reset a volume to {status!r}")
        self._fresh(volume_id, observed_status, observed_updated_at, f"reset it to {status}")
        attachments = self._attachments_of(volume_id)
        states = sorted(str(a.get("status")) for a in attachments)
        if status == "available" and attachments:
            raise PreconditionFailed(f"volume {volume_id} has attachments ({', '.join(states)}): "
                                     "not resetting it to available")
        if status == "in-use" and (not attachments
                                   or any(s != "attached" for s in states)):
            raise PreconditionFailed(f"volume {volume_id} attachments are "
                                     f"[{', '.join(states)}]: in-use needs only attached ones")
        attach_status = "detached" if status == "available" else "attached"
        self._write("POST", f"/volumes/{volume_id}/action", what=f"reset volume {volume_id}",
                    json={"os-reset_status": {"status": status, "attach_status": attach_status}},
                    ok=(202, 200))
        return f"volume {volume_id}: status {observed_status} -> {status}"

    def delete_attachment(self, attachment_id: str, volume_id: str, observed_status: str,
                          observed_volume_status: str,
                          observed_volume_updated_at: str | None) -> str:
        """Delete a dangling (reserved, never connected) attachment (3.27)."""
        data = self._get_json("block_storage", f"/attachments/{attachment_id}",
                              what=f"show attachment {attachment_id}", ok=(200, 404))
        if data is None:
            raise PreconditionFailed(f"attachment {attachment_id} no longer exists")
        attachment = data.get("attachment") if isinstance(data, dict) else None
        if not isinstance(attachment, dict):
            raise self.error(f"show attachment {attachment_id}: the answer has no attachment")
        if attachment.get("status") != observed_status or attachment.get("volume_id") != volume_id:
            raise PreconditionFailed(
                f"attachment {attachment_id} is now {attachment.get('status')!r} (was "
                f"{observed_status!r}): not deleting it")
        if attachment.get("connection_info"):
            raise PreconditionFailed(f"attachment {attachment_id} has a connection now: "
                                     "something is attaching it")
        self._fresh(volume_id, observed_volume_status, observed_volume_updated_at,
                    f"delete attachment {attachment_id}")
        self._write("DELETE", f"/attachments/{attachment_id}",
                    what=f"delete attachment {attachment_id}", ok=(200, 202, 204))
        # The attachment is gone now: a failure to read the volume afterwards must not turn
        # a done deletion into a "failed" one in the audit log.
        try:
            after = self.volume(volume_id)
            now = str(after.get("status")) if after else "gone"
        except (SourceError, AuthFailed) as exc:
            now = f"unknown (reading it afterwards failed: {exc})"
        return (f"deleted {observed_status} attachment {attachment_id} of volume {volume_id}; "
                f"the volume is now {now}")

    def quarantine_volume(self, volume_id: str, key: str, value: str, observed_status: str,
                          observed_updated_at: str | None) -> str:
        """Mark an orphaned volume in its metadata (``key = value``, the date first seen)."""
        volume = self._fresh(volume_id, observed_status, observed_updated_at, "quarantine it")
        if volume.get("attachments"):
            raise PreconditionFailed(f"volume {volume_id} is attached now")
        current = (volume.get("metadata") or {}).get(key)
        if current:
            return f"volume {volume_id} was already quarantined ({key}={current})"
        self._write("POST", f"/volumes/{volume_id}/metadata", what=f"mark volume {volume_id}",
                    json={"metadata": {key: value}}, ok=(200,))
        return f"volume {volume_id} quarantined: {key}={value}"

    def unquarantine_volume(self, volume_id: str, key: str, value: str) -> str:
        """Remove the quarantine mark ``key`` (the undo of :meth:`quarantine_volume`), only
        when it still holds ``value``, the mark watchdogd wrote."""
        volume = self.volume(volume_id)
        if volume is None:
            raise PreconditionFailed(f"volume {volume_id} no longer exists")
        mark = (volume.get("metadata") or {}).get(key)
        if mark is None:
            return f"volume {volume_id} has no {key} mark (already removed)"
        if mark != value:
            raise PreconditionFailed(f"volume {volume_id} mark {key} is {mark!r} now, not the "
                                     f"{value!r} watchdogd wrote: left as it is")
        self._write("DELETE", f"/volumes/{volume_id}/metadata/{quote(key, safe='')}",
                    what=f"unmark volume {volume_id}", ok=(200, 204))
        return f"volume {volume_id}: quarantine mark {key}={value} removed"

    def delete_volume(self, volume_id: str, observed_status: str,
                      observed_updated_at: str | None, quarantine_key: str,
                      quarantine_value: str) -> str:
        """Delete an orphaned volume that has been quarantined, if nothing changed since."""
        if observed_status != "available":
            raise ValueError("only available volumes are deleted")
        volume = self._fresh(volume_id, observed_status, observed_updated_at, "delete it")
        if volume.get("attachments") or self._attachments_of(volume_id):
            raise PreconditionFailed(f"volume {volume_id} has attachments now: not deleting it")
        mark = (volume.get("metadata") or {}).get(quarantine_key)
        if mark != quarantine_value:
            raise PreconditionFailed(f"volume {volume_id} quarantine mark is {mark!r}, not "
                                     f"{quarantine_value!r}: not deleting it")
        self._write("DELETE", f"/volumes/{volume_id}", what=f"delete volume {volume_id}",
                    ok=(202, 204))
        return f"deleted orphaned volume {volume_id} ({volume.get('name')}), quarantined " \
               f"since {quarantine_value}"

    def close(self) -> None:
        """Close the SDK connection (its session and pools)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            close = getattr(conn, "close", None)
            if close is not None:
                close()


class _Retriable(Exception):
    """A connection failure worth one more try."""


class _Forbidden(Exception):
    """A 403: the credentials may not list that scope."""


def _count_response(response: Any, *args: Any, **kwargs: Any) -> None:
    """requests hook: every HTTP response (Keystone and discovery included) is a request."""
    count_request()


#: The fields the checks read, and the types Cinder gives them (None is always allowed).
_VOLUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "status": str, "created_at": str, "updated_at": str, "metadata": dict,
    "attachments": list, "size": int, "multiattach": bool}
_ATTACHMENT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "volume_id": str, "status": str, "instance": str}
#: The absolute limits the quotas check reads (Cinder's and Nova's ``/limits``).
_VOLUME_LIMITS = ("maxTotalVolumes", "totalVolumesUsed", "maxTotalVolumeGigabytes",
                  "totalGigabytesUsed", "maxTotalSnapshots", "totalSnapshotsUsed")
_COMPUTE_LIMITS = ("maxTotalInstances", "totalInstancesUsed", "maxTotalCores", "totalCoresUsed",
                   "maxTotalRAMSize", "totalRAMUsed")
#: The fields of a Nova server the nodes check reads (2.1 detail view).
_SERVER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "status": str, "OS-EXT-STS:vm_state": str, "OS-EXT-STS:task_state": str,
    "updated": str, "tenant_id": str}


def _well_formed(item: dict[str, Any], fields: dict[str, type | tuple[type, ...]]) -> bool:
    """Whether the fields the checks read have Cinder's types (a volume's attachments too)."""
    for key, kind in fields.items():
        value = item.get(key)
        if value is not None and not isinstance(value, kind):
            return False
    attachments = item.get("attachments")
    return attachments is None or all(isinstance(a, dict) for a in attachments)


def _items(data: Any, key: str) -> list[dict[str, Any]] | None:
    if not isinstance(data, dict):
        return None
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    return items


def _next_marker(links: Any) -> str | None:
    """The ``marker`` of a ``rel=next`` link (scheme and host of the link are ignored)."""
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("rel") == "next" and link.get("href"):
            markers = parse_qs(urlsplit(str(link["href"])).query).get("marker")
            if markers:
                return markers[-1]
    return None


def _error_text(response: Any) -> str:
    """Cinder wraps errors as ``{"itemNotFound": {"message": ...}}``; Keystone as ``error``."""
    try:
        data = response.json()
    except (ValueError, RecursionError):
        return str(getattr(response, "text", "") or "")
    if isinstance(data, dict) and len(data) == 1:
        (inner,) = data.values()
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(getattr(response, "text", "") or "")


def _need_for(path: str, method: str) -> str:
    if "/action" in path:
        return "the admin role (volume_extension:volume_admin_actions:reset_status)"
    if "all_tenants" in path:
        return "the admin role to list every project's volumes"
    return f"permission for {method} {urlsplit(path).path}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


_URL = re.compile(r"https?://[^\s/'\"]+")


def _where(exc: BaseException) -> str:
    """The host part of the URL in a keystoneauth message (never a path or query)."""
    match = _URL.search(str(exc))
    return match.group(0) if match else type(exc).__name__
