"""What the simulated Keystone and Cinder share: errors, a route table, and the service base.

Each service is an :class:`~watchdogd.sim._http.HttpSim` (its own port, ``down()``/``up()``,
faults) that belongs to one :class:`~watchdogd.sim.openstack.OpenStackSim`: the cloud holds the
lock, the clock, the settings and the request log that both services write, and runs the
hooks tests set with ``on_request``.

The route table is hand-written (a list of method sets and anchored regexes, first match
wins): the two services have 20 routes between them, their paths are plain segments, and a
WSGI toolkit's router would add a run-time dependency to the package (the demo command ships
``sim/``) and its own trailing-slash redirects, which neither Keystone nor Cinder sends.
"""

from __future__ import annotations

import json
import re
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watchdogd.sim._http import Fault, HttpSim, Request, Response, iso_utc

if TYPE_CHECKING:
    from watchdogd.sim._http import _Handler
    from watchdogd.sim.openstack import OpenStackSim

__all__ = ["OpenStackError", "Routes", "Service", "cinder_time", "keystone_time", "microversion",
           "mv", "reply"]

Obj = dict[str, Any]

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

#: the ``title`` of a Keystone error
PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
           413: "Request Entity Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
UNAUTHENTICATED = "The request you have made requires authentication."
NOT_FOUND = "The resource could not be found."
SERVER_ERROR = ("The server has either erred or is incapable of performing the requested "
                "operation.")


def as_utc(value: datetime) -> datetime:
    """``value`` with naive read as UTC (the simulators' stored times may be either)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cinder_time(value: datetime | None) -> str | None:
    """Cinder's timestamp format: naive UTC with microseconds (``2026-11-22T03:09:09.826923``)."""
    return None if value is None else iso_utc(value, digits=6, suffix="")


def keystone_time(value: datetime) -> str:
    """Keystone's token times: UTC seconds with a zero fraction (``...T03:00:00.000000Z``)."""
    return iso_utc(value, suffix=".000000Z")


def fault_message(status: int) -> str:
    """What the services say when a fault set with ``fail`` answers ``status``."""
    return {500: SERVER_ERROR, 502: "Bad Gateway",
            503: "The service is unavailable at this time.",
            504: "Gateway Timeout"}.get(status, f"simulated fault {status}")


class OpenStackError(Exception):
    """An error the simulated API answers in the service's own body format."""

    def __init__(self, code: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def reply(code: int, obj: Any = None, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON answer; the services name the type even when the body is empty."""
    body = b"" if obj is None else _json.encode(obj).encode()
    return Response(code, body, None, {"Content-Type": "application/json", **(headers or {})})


def keystone_error(code: int, message: str, auth_url: str,
                   headers: dict[str, str] | None = None) -> Response:
    """Keystone's error body (Cinder's auth middleware answers a 401 the same way)."""
    extra = dict(headers or {})
    if code == 401:
        extra.setdefault("WWW-Authenticate", f'Keystone uri="{auth_url}"')
    return reply(code, {"error": {"code": code, "title": PHRASES.get(code, "Error"),
                                  "message": message}}, extra)


def body_of(req: Request) -> Any:
    """The request's JSON body (None if empty); a 400 as the services say it if not JSON."""
    try:
        return req.json()
    except ValueError:
        raise OpenStackError(400, "Malformed request body") from None


Handler = Callable[..., Response]


@dataclass(frozen=True)
class _Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool


class Routes:
    """A route table: ``@routes.add("GET DELETE", r"/volumes/(?P<volume_id>[^/]+)")`` on a
    method; :meth:`match` finds the first route whose pattern matches the whole path and whose
    methods include the request's, and the handler is called with the named groups."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, methods: str, pattern: str, *, auth: bool = True) -> Callable[[Handler],
                                                                               Handler]:
        """Register a handler; ``auth=False``: answered without a token."""
        def register(handler: Handler) -> Handler:
            self._routes.append(_Route(frozenset(methods.split()), re.compile(pattern),
                                       handler, auth))
            return handler
        return register

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], bool] | None:
        """``(handler, path parameters, needs a token)`` of the first matching route."""
        for route in self._routes:
            if method in route.methods:
                found = route.pattern.fullmatch(path)
                if found:
                    return route.handler, found.groupdict(), route.auth
        return None


def mv(version: tuple[int, int]) -> str:
    """A microversion as the API writes it: ``3.71``."""
    return f"{version[0]}.{version[1]}"


def microversion(text: str | None, lowest: tuple[int, int], highest: tuple[int, int],
                 headers: Callable[[str], dict[str, str]]) -> tuple[int, int]:
    """The microversion a request asked for (``text``, None: none asked), as the service's
    API checks it: ``latest`` is ``highest``, a malformed one 400, one out of range 406
    (with the service's version ``headers`` for it)."""
    if text is None:
        return lowest
    if text == "latest":
        return highest
    parts = re.fullmatch(r"(\d+)\.(\d+)", text)
    if not parts:
        raise OpenStackError(400, f"Invalid API version request string {text}")
    version = (int(parts.group(1)), int(parts.group(2)))
    if not lowest <= version <= highest:
        raise OpenStackError(406, f"Version {text} is not supported by the API. Minimum is "
                                  f"{mv(lowest)} and maximum is {mv(highest)}.",
                             headers=headers(text))
    return version


class Service(HttpSim):
    """One OpenStack service of a cloud: its own port and faults, the cloud's lock and log.

    Subclasses implement :meth:`route` (patchable per instance, as the safety tests do) and
    :meth:`error`; an :class:`OpenStackError` becomes the service's error body, any other
    exception a 500 that is also recorded in the cloud's ``errors``.
    """

    def __init__(self, cloud: OpenStackSim) -> None:
        super().__init__(clock=cloud.clock)
        self.cloud = cloud
        self.lock: threading.RLock = cloud.lock

    def route(self, req: Request) -> Response:
        """Answer one request (the lock is held)."""
        raise NotImplementedError

    def error(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """An error in the service's own format."""
        raise NotImplementedError

    def page_limit(self, req: Request) -> int:
        """The ``limit`` of a list request, as Cinder and Nova read it, at most a page."""
        text = req.arg("limit")
        if text is None:
            return self.cloud.page_max
        try:
            limit = int(text)
        except ValueError:
            raise OpenStackError(400, "limit param must be an integer") from None
        if limit < 0:
            raise OpenStackError(400, "limit param must be positive")
        return min(limit, self.cloud.page_max)

    def fault_response(self, fault: Fault) -> Response:
        return self.error(fault.status, fault_message(fault.status))

    def handle(self, req: Request) -> Response:
        try:
            with self.lock:
                resp = self.route(req)
        except OpenStackError as exc:
            resp = self.error(exc.code, exc.message, exc.headers)
        except Exception:
            self.cloud.errors.append(traceback.format_exc())
            resp = self.error(500, SERVER_ERROR)
        # Hooks run once the answer is settled, before it is written: the client's next
        # request sees the changed world, whichever connection it comes on.
        self.cloud.answered(self.kind, req)
        return resp

    def _serve(self, h: _Handler) -> None:
        # The cloud's log names the service, in arrival order across both services.
        with self.lock:
            self.cloud.requests.append((self.kind, h.command, h.path))
        super()._serve(h)
