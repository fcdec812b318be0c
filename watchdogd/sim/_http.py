"""The one HTTP base of the simulators: server thread, faults, lifecycle, request log.

Each simulator subclasses :class:`HttpBase` (or :class:`HttpSim`, which adds the hub-style
``fail(status=, times=, hang=)``) and implements :meth:`HttpBase.handle`, a pure
request -> response function over its own state. This base owns what every simulator needs
and what tests lean on: a server thread on a free port of 127.0.0.1, ``down()``/``up()`` on
the same port (open keep-alive connections are cut, as when a real process dies), faults,
a log of the requests received, optional TLS on the same port (told apart by the first byte)
and streamed (chunked) answers such as Kubernetes watches.

Hand-written on purpose: the simulators must cut keep-alive connections, hang, close without
an answer and stream until the peer hangs up, which a WSGI server hides from its application;
``http.server`` keeps the socket in reach.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import json
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from watchdogd.times import parse_time, utcnow

__all__ = ["Fault", "HttpBase", "HttpSim", "Request", "Response", "free_port", "iso_utc",
           "peer_closed", "rfc3339", "utcnow"]


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

    @functools.cached_property
    def params(self) -> dict[str, str]:
        """The first value of each query argument (how Go's ``url.Values.Get`` reads them)."""
        return {k: v[0] for k, v in self.query.items()}


@dataclass
class Response:
    """What a simulator answers.

    With ``stream`` the answer is chunked: each bytes item of the iterable is one chunk, an
    empty item means "nothing yet" (the base then checks whether the peer hung up), and the
    stream's ``close()``, if it has one, is called however the answer ends (as WSGI does).
    """

    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None

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
    """A fault set with :meth:`HttpSim.fail` (or a subclass's own ``fail``)."""

    status: int
    times: int | None
    hang: float | None
    path: re.Pattern[str]
    method: str | None
    fired: int = 0
    #: the first ``after`` matching requests pass untouched
    after: int = 0
    seen: int = 0
    #: answer for real after ``hang`` (a slow server) instead of with ``status``
    late: bool = False

    def applies(self, method: str, path: str) -> bool:
        """Whether this fault takes the request (and counts it)."""
        if self.method is not None and self.method != method:
            return False
        if not self.path.search(path):
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


class _Server(ThreadingHTTPServer):
    """Knows its open connections so that ``down()`` can cut them like a dying process.

    With a TLS context each connection speaks plain HTTP or TLS, told apart by its first byte
    (0x16 opens a TLS handshake), so ``http://`` and ``https://`` share one port and one
    down()/up().
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: HttpBase,
                 tls: ssl.SSLContext | None = None) -> None:
        self.sim = sim
        self.tls = tls
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        conn = request
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        if first == b"\x16":
            try:
                conn = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ValueError):  # failed handshakes are the client's problem
                return
            with self.conn_lock:
                self.connections.discard(request)
                self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            if conn is not request:  # wrap_socket detached `request`; close the TLS socket
                with self.conn_lock:
                    self.connections.discard(conn)
                with contextlib.suppress(OSError):
                    conn.close()

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

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class HttpBase:
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
            server = _Server(("127.0.0.1", self._port), self, self.server_tls())
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
        self.on_down()
        if thread is not None:
            thread.join(timeout=5)

    def on_down(self) -> None:
        """Called by :meth:`down` once connections are cut (e.g. to end open streams)."""

    def server_tls(self) -> ssl.SSLContext | None:
        """The TLS context for https on the same port, or None (plain HTTP only)."""
        return None

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

    def add_fault(self, fault: Fault) -> None:
        """Install a fault (what each simulator's ``fail`` builds)."""
        with self._meta_lock:
            self._faults.append(fault)

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

    def default_headers(self) -> list[tuple[str, str]]:
        """Headers every answer starts with: here what ``http.server`` sends (Server, Date).

        Without :attr:`send_date`, no ``Date``: a server behind a proxy that strips it.
        """
        head = [("Server", f"{_Handler.server_version} {_Handler.sys_version}")]
        if self.send_date:
            head.append(("Date", email.utils.format_datetime(self.clock().astimezone(UTC),
                                                             usegmt=True)))
        return head

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
            if (fault.status == 0 and not fault.late) or self._closing.is_set():
                h.close_connection = True
                return
            if not fault.late:
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

    def _write(self, h: _Handler, resp: Response) -> None:
        """Status line, headers and body in one send: separate small writes meet delayed ACKs."""
        head = [*self.default_headers()]
        if resp.content_type and (resp.body or resp.stream is not None):
            head.append(("Content-Type", resp.content_type))
        head += resp.headers.items()
        if resp.stream is not None:
            head.append(("Transfer-Encoding", "chunked"))
        else:
            head.append(("Content-Length", str(len(resp.body))))
        if h.close_connection:
            head.append(("Connection", "close"))
        phrase = h.responses[resp.status][0] if resp.status in h.responses else ""
        payload = (f"HTTP/1.1 {resp.status} {phrase}\r\n"
                   + "".join(f"{k}: {v}\r\n" for k, v in head) + "\r\n").encode("latin-1")
        try:
            if resp.stream is not None:
                h.wfile.write(payload)
                self._stream(h, resp.stream)
            else:
                h.wfile.write(payload if h.command == "HEAD" else payload + resp.body)
        except OSError:
            h.close_connection = True
        finally:
            close = getattr(resp.stream, "close", None)
            if close is not None:
                close()

    def _stream(self, h: _Handler, chunks: Iterable[bytes]) -> None:
        """Write chunks until the stream ends, the peer hangs up or the simulator goes down;
        the last two cut the connection without the terminating chunk, as a dying server."""
        for chunk in chunks:
            if chunk:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            elif peer_closed(h.connection):
                h.close_connection = True
                return
            if self._closing.is_set():
                h.close_connection = True
                return
        if self._closing.is_set():
            h.close_connection = True
            return
        h.wfile.write(b"0\r\n\r\n")


class HttpSim(HttpBase):
    """A simulator with the hub-style fault API, :meth:`fail`."""

    def fail(self, status: int = 500, *, times: int | None = None, hang: float | None = None,
             path: str = "", method: str | None = None, after: int = 0) -> None:
        """Make matching requests fail.

        The next ``times`` requests (None: all) whose path matches ``path`` (``re.search``,
        empty: every path) and whose method is ``method`` (None: any) get ``status``; with
        ``hang`` the answer comes only after that many seconds, so a client timeout fires
        first. ``status=0`` closes the connection without an answer. ``after`` lets that many
        matching requests through first.
        """
        self.add_fault(Fault(status, times, hang, re.compile(path), method, after=after))


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client hung up on an idle stream (otherwise we learn only on the next write)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):  # no MSG_PEEK through TLS; a watcher sends nothing
            return True
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def rfc3339(value: datetime) -> str:
    """``2026-11-22T03:00:00Z``: second-precision UTC, as Kubernetes writes its timestamps."""
    return iso_utc(value)


def isoformat_ms(value: datetime) -> str:
    """``2026-11-22T03:00:00.123Z``: how JavaScript's ``Date`` serializes (CHP's timestamps)."""
    return iso_utc(value, digits=3)


def parse_iso(text: str) -> datetime | None:
    """Parse an ISO 8601 timestamp (``Z`` or offset; naive means UTC), or None."""
    return parse_time(text.strip())


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
