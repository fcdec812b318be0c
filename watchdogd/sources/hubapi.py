"""The JupyterHub REST API: the only way watchdogd changes a hub's sessions.

The hub caches its state in memory and assumes it is the only writer of its
database, so stopping a server or syncing routes goes through the API, never
through SQL. Reads use the paginated users list: one request per 200 users,
never one per user.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from watchdogd.config import HubConfig
from watchdogd.model import PreconditionFailed
from watchdogd.sources.base import HttpClient, count_request
from watchdogd.sources.bounded import limits

__all__ = ["HubApiSource", "hub_api_answers"]

#: Asked for per page. The hub clamps it to c.JupyterHub.api_page_max_limit (200 by
#: default); an operator who raises that limit gets fewer, larger pages.
PAGE_SIZE = 1000
PAGINATION = "application/jupyterhub-pagination+json"
#: what a connection error says when nothing listens at the address (or no such host)
_NOTHING_LISTENS = ("Connection refused", "Name or service not known",
                    "nodename nor servname", "No address associated")


class HubApiSource:
    """One hub's REST API, with the watchdogd service token."""

    def __init__(self, target: str, config: HubConfig) -> None:
        if config.api_token is None:
            raise ValueError(f"hubs.{target}: api_token_file is not set")
        self.target = target
        self.http = HttpClient(
            "hubapi", target, config.api_url,
            headers={"Authorization": f"token {config.api_token.get_secret_value()}",
                     "Accept": PAGINATION},
            timeout=config.timeout.total_seconds(),
            max_bytes=int(config.max_response_bytes),
            credential=f"the API token of hub {target} (hubs.{target}.api_token_file)",
        )

    def active_servers(self) -> list[dict[str, Any]]:
        """Every server the hub considers active (running or pending), one dict each.

        Raises SourceError when the list changes between pages (the count does
        not add up): offset pagination can skip a user then, and a skipped user
        must never look like a user without a server.
        """
        servers: list[dict[str, Any]] = []
        for user in self._users({"state": "active"}, "active "):
            servers.extend(_servers_of(user, self.http))
        return servers

    def sessions(self) -> dict[str, Any]:
        """Every user and every active server with its spawner state: what the hub DB gave.

        One paginated ``GET /users`` (all users: the sessions check judges every name, and
        "the hub lists no users" is its implausibility test). ``running`` has the entries of
        :meth:`active_servers`, each with the spawner ``state`` (KubeSpawner's ``pod_name``,
        ``namespace``); a server model without ``state`` is a SourceError naming the
        ``admin:server_state`` scope, never a server whose pod is unknown.
        """
        names: list[str] = []
        running: list[dict[str, Any]] = []
        for user in self._users({}, ""):
            running.extend(_servers_of(user, self.http, need_state=True))
            names.append(user["name"])
        return {"schema": None, "schema_known": True, "users": names, "running": running}

    def token_scopes(self, required: tuple[str, ...] = ()) -> list[str]:
        """The scopes the token holds; a SourceError naming each of ``required`` it lacks.

        ``GET /user`` answers any valid token with its owner's model and ``scopes``: the
        token's scopes, expanded (``servers`` brings ``delete:servers``), the ones the hub
        adds only to let it identify itself left out. A scope held only with a filter
        (``read:servers!group=x``) is missing: it would read part of the hub. A check
        asks for this beside its reads, so a pass whose stop or route sync the hub would
        refuse fails as a whole and acts on nothing, rather than on half of its plan.
        """
        model = self.http.get_json("/user", need="a valid token")
        held = model.get("scopes") if isinstance(model, dict) else None
        if not isinstance(held, list):
            raise self.http.error("GET /user: the answer lists no scopes")
        missing = [scope for scope in required if scope not in held]
        if missing:
            raise self.http.error(
                f"the API token lacks the scope{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (watchdogd's role needs {', '.join(required)})")
        return sorted(str(scope) for scope in held)

    def _users(self, params: dict[str, Any], which: str) -> list[dict[str, Any]]:
        """All pages of ``GET /users`` with ``params``; ``which`` words the errors."""
        result: list[dict[str, Any]] = []
        offset = 0
        total: int | None = None
        while True:
            page = self.http.get_json(
                "/users", params={**params, "offset": offset, "limit": PAGE_SIZE},
                need="the scope list:users")
            if isinstance(page, list):  # a hub too old to paginate answers everything
                items, info = page, None
            elif isinstance(page, dict) and isinstance(page.get("items"), list):
                items, info = page["items"], page.get("_pagination") or {}
            else:
                raise self.http.error("GET /users: unexpected answer (no items list)")
            for user in items:
                if not isinstance(user, dict) or not isinstance(user.get("name"), str):
                    raise self.http.error("GET /users: a user entry has no name")
            result.extend(items)
            if info is None:
                break
            if not isinstance(info, dict):
                raise self.http.error("GET /users: the pagination is not an object")
            if total is None:
                total = info.get("total")
            elif info.get("total") != total:
                raise self.http.error("GET /users: the user list changed while paging")
            if isinstance(total, int) and len(result) > total:
                # A "next" that never ends would page forever: more than the hub announced.
                raise self.http.error(f"GET /users: more than the {total} {which}users the "
                                      "hub announced; the list changed or never ends")
            nxt = info.get("next")
            if not nxt:
                break
            step = nxt.get("offset", offset + len(items)) if isinstance(nxt, dict) else None
            if not isinstance(step, int) or isinstance(step, bool) or step <= offset:
                # A next page that does not move forward would be read forever.
                raise self.http.error("GET /users: the next page does not move forward")
            offset = step
            if not items:
                raise self.http.error("GET /users: empty page before the end of the list")
        if total is not None and len(result) != total:
            raise self.http.error(f"GET /users: got {len(result)} of {total} {which}users")
        return result

    def server(self, user: str, server_name: str = "") -> dict[str, Any] | None:
        """One user's server as the hub sees it now; None when it has no such server.

        The re-read right before an action: ``GET /users/{name}`` (a missing user is
        a 404, which means no server either).
        """
        response = self.http.request(
            "GET", f"/users/{quote(user, safe='')}", ok=(200, 404),
            need="the scopes read:servers, admin:server_state")
        if response.status_code == 404:
            return None
        try:
            data = response.json()
        except (ValueError, RecursionError):
            raise self.http.error(f"GET /users/{user}: answer is not JSON") from None
        for entry in _servers_of(data, self.http):
            if entry["server_name"] == server_name:
                return entry
        return None

    def services(self) -> dict[str, dict[str, Any]]:
        """The hub's services by name: ``GET /services`` (one request, not paginated).

        Each entry keeps what the culler check reads: ``name``, ``command`` (the argument
        list of a hub-managed service, ``[]`` for one the hub does not run, None when the
        answer leaves it out: the token has ``list:services`` but not ``read:services``),
        ``pid`` (0 when the hub runs no process for it) and ``url``.
        """
        data = self.http.get_json(
            "/services",
            need="the scope list:services (and read:services to read the culler's command)")
        if not isinstance(data, dict):
            raise self.http.error("GET /services: unexpected answer (not an object)")
        result: dict[str, dict[str, Any]] = {}
        for name, model in data.items():
            if not isinstance(model, dict):
                raise self.http.error("GET /services: a service entry is not an object")
            command = model.get("command")
            if isinstance(command, str):
                command = [command]
            elif isinstance(command, list):
                command = [str(part) for part in command]
            elif command is not None:
                raise self.http.error(f"GET /services: the command of a service is "
                                      f"{type(command).__name__}")
            pid = model.get("pid")
            result[str(name)] = {
                "name": str(model.get("name") or name),
                "command": command,
                "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                "url": model.get("url") if isinstance(model.get("url"), str) else None,
            }
        return result

    def stop_server(self, user: str, server_name: str = "") -> str:
        """Ask the hub to stop one server; a 202 means the hub is still stopping it."""
        path = f"/users/{quote(user, safe='')}/server"
        if server_name:
            path = f"/users/{quote(user, safe='')}/servers/{quote(server_name, safe='')}"
        response = self.http.request(
            "DELETE", path, ok=(202, 204, 400, 404), need="the scope delete:servers")
        if response.status_code == 204:
            return "stopped (204)"
        if response.status_code == 202:
            return "stop accepted (202): the hub is still stopping it; checked again next pass"
        message = self.http.scrub(_message(response.text))
        raise PreconditionFailed(f"hub answered {response.status_code}: {message}")

    def sync_routes(self) -> str:
        """Make the hub reconcile the proxy's routes with its own idea of the servers."""
        self.http.request("POST", "/proxy", ok=(200,), need="the scope proxy")
        return "routes synced (POST /proxy)"

    def close(self) -> None:
        """Close pooled connections."""
        self.http.close()


def hub_api_answers(target: str, config: HubConfig) -> int | None:
    """Whether anything answers at the hub API's URL: the HTTP status of ``GET {api_url}/``
    (any status: a hub that refuses the request is still running), None when the
    connection is refused or the name does not resolve (nothing listens).

    For ``watchdogd repair-session``, which must never write while the hub runs; no token
    is sent. A timeout, a reset or a TLS failure is not proof of absence: SourceError.
    """
    http = HttpClient("hubapi", target, config.api_url, headers={},
                      timeout=config.timeout.total_seconds(), credential="",
                      max_bytes=int(config.max_response_bytes))
    url = f"{http.base_url}/"
    count_request()
    try:
        with limits(http.timeout, http.max_bytes) as bound:
            try:
                response = http.session.get(url, timeout=http.timeout, allow_redirects=False)
            except requests.ConnectionError as exc:
                if not bound.exceeded and not isinstance(exc, requests.Timeout) and any(
                        marker in str(exc) for marker in _NOTHING_LISTENS):
                    return None
                cause = bound.describe() if bound.exceeded else type(exc).__name__
                raise http.error(f"GET {url}: no clear answer ({cause}); cannot tell "
                                 "whether the hub is down") from None
            except requests.RequestException as exc:
                raise http.error(f"GET {url}: {type(exc).__name__}; cannot tell whether "
                                 "the hub is down") from None
            return int(response.status_code)
    finally:
        http.close()


def _servers_of(user: Any, http: HttpClient, *, need_state: bool = False,
                ) -> list[dict[str, Any]]:
    if not isinstance(user, dict) or not isinstance(user.get("name"), str):
        raise http.error("GET /users: a user entry has no name")
    result = []
    if "servers" not in user:
        # The hub leaves the key out when the token may not read servers:
        # that must not look like a user without servers.
        raise http.error("GET /users: user entries have no servers; the token needs "
                         "the read:servers scope")
    servers = user["servers"]
    if not isinstance(servers, dict):
        raise http.error(f"GET /users: servers of a user is {type(servers).__name__}")
    for name, server in servers.items():
        if not isinstance(server, dict):
            raise http.error("GET /users: a server entry is not an object")
        if need_state and not isinstance(server.get("state"), dict):
            # The hub leaves "state" out without admin:server_state: then where the pod
            # is stays unknown, which must never read as "no pod, so stale".
            raise http.error("GET /users: server entries have no spawner state; the token "
                             "needs the admin:server_state scope")
        result.append({
            "user": user["name"],
            "server_name": name,
            "pending": server.get("pending"),
            "ready": bool(server.get("ready")),
            "started": server.get("started"),
            "last_activity": server.get("last_activity"),
            "url": server.get("url"),
            "state": server.get("state") if isinstance(server.get("state"), dict) else {},
        })
    return result


def _message(body: str) -> str:
    import json  # noqa: PLC0415

    try:
        data = json.loads(body)
        return str(data.get("message", ""))[:200]
    except (ValueError, AttributeError):
        return body[:200]
