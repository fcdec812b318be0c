"""Plumbing shared by the stdlib HTTP simulators of the hub side (CHP, the Hub REST API).

Each simulator is a :class:`HttpSim` subclass that implements :meth:`HttpSim.handle`, a pure
request -> response function over its own state. This base owns what every simulator needs
and what tests lean on: a server thread on a free port of 127.0.0.1, ``down()``/``up()`` on
the same port (open keep-alive connections are cut, as when a real process dies), faults
(``fail(status=, times=, hang=)``) and a log of the requests received.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["Fault", "HttpSim", "Request", "Response", "free_port", "iso_utc", "utcnow"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock of the simulators)."""
    return datetime.now(UTC)


@dataclass
class Request:
    """One request as a simulator sees it."""

    method: str
    path: str  # percent-encoded, without the query
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    full_url: str

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query argument (tornado's ``get_argument``)."""
        values = self.query.get(name)
        return values[-1] if values else default

    def json(self) -> Any:
        """The body parsed as JSON (``None`` for an empty body); ValueError if it is not JSON."""
        if not self.body:
            return None
        return json.loads(self.body)


@dataclass
class Response:
    """What a simulator answers."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        """A JSON answer."""
        return cls(status, json.dumps(data).encode())

    @classmethod
    def text(cls, status: int, text: str = "") -> Response:
        """A plain-text answer (or an empty one)."""
        return cls(status, text.encode(), "text/plain" if text else None)


@dataclass
class Fault:
    """A fault set with :meth:`HttpSim.fail`."""

    status: int
    times: int | None
    hang: float | None
    path: re.Pattern[str]
    method: str | None
    fired: int = 0
    #: matching requests let through before the fault starts firing (``fail(after=)``)
    after: int = 0
    seen: int = 0

    def applies(self, method: str, path: str) -> bool:
        """Whether this fault takes the request (and counts it)."""
        if self.method is not None and self.method != method:
            return False
        if not self.path.search(path):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class _Server(ThreadingHTTPServer):
    """Knows its open connections so that ``down()`` can cut them like a dying process."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: HttpSim) -> None:
        self.sim = sim
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self.conn_lock:
            self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.conn_lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away is not the simulator's problem


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real servers
    # Headers and body are separate writes: with Nagle each answer waited for the client's
    # delayed ACK (~25 ms a request, 6x the cost of a whole pass against the simulators).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        self.server.sim._serve(self)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header is the simulated server's clock, as a real server's is its own:
        # tests with a skewed or fake clock see it in every answer.
        if timestamp is not None:
            return super().date_time_string(timestamp)
        return email.utils.format_datetime(self.server.sim.clock().astimezone(UTC),
                                           usegmt=True)

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.server.sim.send_date:
            super().send_response(code, message)
            return
        # A server behind a proxy that strips Date: the same answer without it.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class HttpSim:
    """Base of a simulator: lifecycle, faults, request log. Subclasses implement ``handle``."""

    #: used in thread names and error messages
    kind = "sim"
    #: whether answers carry a ``Date`` header (a proxy in front may strip it)
    send_date = True

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        #: ``(method, path?query)`` of every request received, in order
        self.requests: list[tuple[str, str]] = []
        self._faults: list[Fault] = []
        self._meta_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 (the same port again after :meth:`down`)."""
        with self._life_lock:
            if self._server is not None:
                return self
            server = _Server(("127.0.0.1", self._port), self)
            self._port = server.server_address[1]
            self._closing.clear()
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"{self.kind}-{self._port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection (idempotent)."""
        self.down()

    def down(self) -> None:
        """Stop listening and cut open connections: clients get refused or reset."""
        with self._life_lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if thread is not None:
            thread.join(timeout=5)

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        self.start()

    @property
    def is_up(self) -> bool:
        """Whether the simulator is listening."""
        return self._server is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port (0 before the first start)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; stable across :meth:`down`/:meth:`up`."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    # -- faults -----------------------------------------------------------------------------

    def fail(self, status: int = 500, *, times: int | None = None, hang: float | None = None,
             path: str = "", method: str | None = None, after: int = 0) -> None:
        """Make matching requests fail.

        The next ``times`` requests (None: all) whose path matches ``path`` (``re.search``,
        empty: every path) and whose method is ``method`` (None: any) get ``status``; with
        ``hang`` the answer comes only after that many seconds, so a client timeout fires
        first. ``status=0`` closes the connection without an answer. ``after`` lets that many
        matching requests through first.
        """
        with self._meta_lock:
            self._faults.append(Fault(status, times, hang, re.compile(path), method,
                                      after=after))

    def clear_faults(self) -> None:
        """Remove every fault set with :meth:`fail`."""
        with self._meta_lock:
            self._faults.clear()

    def reset_requests(self) -> None:
        """Forget the request log."""
        with self._meta_lock:
            self.requests.clear()

    def fault_response(self, fault: Fault) -> Response:
        """The answer of a fault; subclasses shape it like their real server's errors."""
        return Response.text(fault.status, "simulated fault")

    # -- serving ------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        """Answer one request (implemented by each simulator)."""
        raise NotImplementedError

    def _serve(self, h: _Handler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        split = urlsplit(h.path)
        path = split.path or "/"
        with self._meta_lock:
            self.requests.append((h.command, h.path))
            fault = next((f for f in self._faults if f.applies(h.command, path)), None)
        if fault is not None:
            if fault.hang:
                self._closing.wait(fault.hang)
            if fault.status == 0 or self._closing.is_set():
                h.close_connection = True
                return
            self._write(h, self.fault_response(fault))
            return
        host = h.headers.get("Host") or f"127.0.0.1:{self._port}"
        req = Request(h.command, path, parse_qs(split.query, keep_blank_values=True),
                      h.headers, body, f"http://{host}{h.path}")
        try:
            resp = self.handle(req)
        except Exception as exc:  # a simulator bug still answers, visibly
            resp = Response.json(500, {"status": 500,
                                       "message": f"simulator bug: {type(exc).__name__}: {exc}"})
        self._write(h, resp)

    @staticmethod
    def _write(h: _Handler, resp: Response) -> None:
        try:
            h.send_response(resp.status)
            if resp.content_type and resp.body:
                h.send_header("Content-Type", resp.content_type)
            for key, value in resp.headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(resp.body)))
            h.end_headers()
            if h.command != "HEAD" and resp.body:
                h.wfile.write(resp.body)
        except OSError:
            h.close_connection = True


def isoformat_ms(value: datetime) -> str:
    """``2026-11-22T03:00:00.123Z``: how JavaScript's ``Date`` serializes (CHP's timestamps)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime | None:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC), or None."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso_utc(value: datetime, *, digits: int = 0, suffix: str = "Z") -> str:
    """``value`` in UTC (naive means UTC) as ``2026-11-22T03:00:00``, then ``digits`` digits of
    its fraction of a second and ``suffix``: each simulated service writes its own variant."""
    value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    fraction = f".{value.microsecond:06d}"[:digits + 1] if digits else ""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + fraction + suffix


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now (for servers that are no HttpSim)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
