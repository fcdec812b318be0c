"""A configurable-http-proxy REST API, faithful to CHP 5.x, in a thread.

Copied from ``lib/configproxy.js`` and ``lib/store.js`` of configurable-http-proxy 5:

- ``Authorization: token <CONFIGPROXY_AUTH_TOKEN>`` (the regex ``token\\s+(\\S+)``);
  anything else is a bare ``403`` with an empty body (CHP never answers 401);
- ``GET /api/routes[?inactive_since=ISO]`` the whole table as one JSON object (an invalid
  timestamp is a 400 ``Invalid datestamp '...' must be ISO8601.``);
  ``GET /api/routes/<path>`` one route or 404;
- ``POST /api/routes/<path>`` with a JSON body that needs a string ``target`` (400 ``Must
  specify 'target' as string`` otherwise); 201 with an empty body; the body is stored as
  the route's data, plus ``last_activity``;
- ``DELETE /api/routes/<path>``: 204, or 404 when there is no such route;
- other methods 405 ``Method not supported``, other paths 404 ``Not Found``.

Keys are cleaned like CHP's ``trimPrefix``: a leading ``/`` is added and a trailing one
removed (``/user/alice/`` is stored as ``/user/alice``; the root stays ``/``).
``last_activity`` is serialized like a JavaScript ``Date`` (``2026-11-22T03:00:00.123Z``).

The public side (:attr:`ChpSim.public_url`, CHP's ``--port``) proxies like CHP 5 without
``--timeout``/``--proxy-timeout``: the longest route prefix of the path picks the target, the
whole path is sent on (``includePrefix``); no route is a ``404 Not Found``; a target that
refuses or drops the connection is a ``503 Service Unavailable`` (``handleProxyError``'s
default body is the status text); a target that hangs keeps the request waiting, as CHP
sets no upstream timeout by default. ``public.fail(504, ...)`` stands for an ingress in
front of CHP that gives up first.
"""

from __future__ import annotations

import copy
import http.client
import re
import secrets
import select
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from watchdogd.sim._http import Fault, HttpSim, Request, Response, isoformat_ms, parse_iso, utcnow

__all__ = ["ChpPublic", "ChpSim", "clean_path"]

_TOKEN = re.compile(r"token\s+(\S+)")
_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def clean_path(path: str) -> str:
    """CHP's ``trimPrefix``: leading ``/`` added, trailing ``/`` removed, root kept."""
    if not path.startswith("/"):
        path = "/" + path
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


class ChpSim(HttpSim):
    """configurable-http-proxy's API: ``with ChpSim() as chp: chp.add_route(...)``.

    The Python API (``routes``, :meth:`add_route`, :meth:`delete_route`) changes the same
    table the HTTP API serves, without going through HTTP, so tests and the hub simulator
    can set up a world without counting as API requests.
    """

    kind = "chpsim"

    def __init__(self, *, token: str | None = None, default_target: str | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """``default_target`` adds the ``/`` route CHP makes for ``--default-target``."""
        super().__init__(clock=clock)
        self.token = token or secrets.token_hex(16)
        self._routes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: the proxying side (CHP's public port); its ``fail()`` plays an ingress in front
        self.public = ChpPublic(self)
        if default_target:
            self.add_route("/", default_target)

    @property
    def url(self) -> str:
        """The API's base URL (``http://127.0.0.1:PORT``; routes are at ``/api/routes``)."""
        return self.base_url

    @property
    def public_url(self) -> str:
        """The public side's base URL (what users reach; ``hubs.X.public_url``)."""
        return self.public.base_url

    def start(self) -> ChpSim:
        """Listen on the API port and the public port."""
        super().start()
        self.public.start()
        return self

    def down(self) -> None:
        """Both ports go away, as when the CHP process dies."""
        self.public.down()
        super().down()

    def target_for(self, path: str) -> str | None:
        """CHP's ``targetForReq``: the target of the longest route prefix of ``path``."""
        with self._lock:
            routes = dict(self._routes)
        parts = [p for p in path.split("/") if p]
        for n in range(len(parts), -1, -1):
            key = "/" + "/".join(parts[:n])
            if key in routes:
                return str(routes[key]["target"])
        return None

    # -- Python API -----------------------------------------------------------------------

    @property
    def routes(self) -> dict[str, dict[str, Any]]:
        """A copy of the routing table: key (no trailing slash) -> data with ``target``."""
        with self._lock:
            return copy.deepcopy(self._routes)

    def route(self, path: str) -> dict[str, Any] | None:
        """A copy of one route's data, or None."""
        with self._lock:
            data = self._routes.get(clean_path(path))
            return copy.deepcopy(data) if data is not None else None

    def add_route(self, path: str, target: str, **data: Any) -> str:
        """Add or replace a route (like ``POST /api/routes/<path>``); returns the clean key."""
        key = clean_path(path)
        with self._lock:
            self._routes[key] = {**data, "target": target,
                                 "last_activity": isoformat_ms(self.clock())}
        return key

    def delete_route(self, path: str) -> bool:
        """Remove a route (like ``DELETE``); True if it existed."""
        with self._lock:
            return self._routes.pop(clean_path(path), None) is not None

    def touch(self, path: str, when: datetime | None = None) -> None:
        """Record activity on a route (what proxied traffic does to ``last_activity``)."""
        with self._lock:
            route = self._routes.get(clean_path(path))
            if route is not None:
                route["last_activity"] = isoformat_ms(when or self.clock())

    # -- HTTP -----------------------------------------------------------------------------------

    def fault_response(self, fault: Fault) -> Response:
        """CHP's ``fail()``: the status and its reason phrase as plain text."""
        return Response.text(fault.status, _STATUS_TEXT.get(fault.status, "Error"))

    def handle(self, req: Request) -> Response:
        """Route ``/api/routes[/path]`` like configproxy.js's ``handleApiRequest``."""
        if req.path != "/api/routes" and not req.path.startswith("/api/routes/"):
            return Response.text(404, "Not Found")
        if req.method not in ("GET", "POST", "DELETE"):
            return Response.text(405, "Method not supported")
        match = _TOKEN.search(req.headers.get("Authorization") or "")
        if match is None or not secrets.compare_digest(match.group(1), self.token):
            return Response(403, b"", None)
        rest = req.path[len("/api/routes"):]
        path = unquote(rest) if rest else None
        if req.method == "GET":
            return self._get(req, path)
        if req.method == "POST":
            return self._post(req, path)
        return self._delete(path)

    def _get(self, req: Request, path: str | None) -> Response:
        if path and path != "/":
            route = self.route(path)
            return Response.json(200, route) if route is not None else Response(404, b"", None)
        param = req.arg("inactiveSince") or req.arg("inactive_since")
        routes = self.routes
        if param:
            since = parse_iso(param)
            if since is None:
                return Response.text(400, f"Invalid datestamp '{param}' must be ISO8601.")
            routes = {k: v for k, v in routes.items()
                      if (parse_iso(str(v.get("last_activity"))) or since) < since}
        return Response.json(200, routes)

    def _post(self, req: Request, path: str | None) -> Response:
        try:
            data = req.json() or {}
        except ValueError as exc:
            return Response.text(400, f"Body not valid JSON: {exc}")
        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            return Response.text(400, "Must specify 'target' as string")
        target = data.pop("target")
        data.pop("last_activity", None)
        self.add_route(path or "/", target, **data)
        return Response(201, b"", None)

    def _delete(self, path: str | None) -> Response:
        status = 204 if self.delete_route(path or "/") else 404
        return Response(status, b"", None)


#: request headers a proxy does not pass on (hop-by-hop)
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                  "upgrade", "trailer", "host", "content-length"})


class ChpPublic(HttpSim):
    """CHP's public port: proxies each request to its route's target (see the module doc)."""

    kind = "chpsim-public"

    def __init__(self, chp: ChpSim) -> None:
        super().__init__(clock=chp.clock)
        self.chp = chp

    def fault_response(self, fault: Fault) -> Response:
        """What an ingress in front says: the status and its reason phrase."""
        return Response.text(fault.status, _STATUS_TEXT.get(fault.status, "Gateway Timeout"))

    def handle(self, req: Request) -> Response:
        """Forward to the target and relay its answer, or CHP's 404 / 503."""
        target = self.chp.target_for(req.path)
        if target is None:
            return Response(404, b"Not Found", None)
        where = urlsplit(target)
        query = req.full_url.partition("?")[2]
        path = (where.path.rstrip("/") + req.path) + (f"?{query}" if query else "")
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port or 80,
                                          timeout=10)
        try:
            conn.request(req.method, path, body=req.body or None, headers={
                k: v for k, v in req.headers.items() if k.lower() not in _HOP})
            # No upstream timeout (CHP's default): wait for the target as long as it takes,
            # or until this simulator goes down.
            while not self._closing.is_set():
                assert conn.sock is not None
                readable, _, _ = select.select([conn.sock], [], [], 0.05)
                if readable:
                    break
            else:
                return Response(503, b"Service Unavailable", None)
            upstream = conn.getresponse()
            body = upstream.read()
        except OSError:  # ECONNREFUSED, ECONNRESET, a dropped connection: handleProxyError
            return Response(503, b"Service Unavailable", None)
        except http.client.HTTPException:
            return Response(503, b"Service Unavailable", None)
        finally:
            conn.close()
        headers = {k: v for k, v in upstream.getheaders()
                   if k.lower() not in _HOP and k.lower() not in ("date", "server",
                                                                  "content-type")}
        return Response(upstream.status, body, upstream.getheader("Content-Type"), headers)
