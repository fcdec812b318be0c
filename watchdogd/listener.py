"""The acknowledge listener: ``POST /ack/<token>`` from a phone's ntfy button, nothing else.

Optional and off by default (``[listener] listen``). It serves exactly one thing: a POST
to ``/ack/<token>`` whose token :class:`~watchdogd.acklinks.AckLinks` accepts acknowledges
the one finding the token names, once (the store records the nonce in the same
transaction as the acknowledgement). Everything else is refused with a plain one-line
answer:

* a GET (or any other method) on ``/ack/...``: 405, so a link preview, a crawler or a
  browser that opens the link never acknowledges anything;
* any other path: 404;
* a body longer than :data:`MAX_BODY`, or one of unknown length: 413 / 411;
* a forged or tampered token: 403; an expired one: 410; a replayed one: 409; a link
  whose finding is no longer open: 410.

Each request has a deadline (``[listener] timeout``) for the whole exchange, and at most
:data:`MAX_CLIENTS` are served at once. The phone gives no identity, so the
acknowledgement is recorded ``by`` "ntfy". A token is a credential until used: no log
line carries it (the request line is never logged), only the finding and the outcome.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from watchdogd.acklinks import AckLinks, LinkRefused
from watchdogd.metrics import parse_listen, serve_in_thread, shut_down
from watchdogd.store import LinkUsed, Store, StoreError
from watchdogd.text import safe_text
from watchdogd.times import utcnow

__all__ = ["ACKED_BY", "MAX_BODY", "MAX_CLIENTS", "AckListener"]

log = structlog.get_logger("watchdogd.listener")

#: who an acknowledgement from the listener is recorded as: the phone says nothing more
ACKED_BY = "ntfy"
#: ntfy's http action sends an empty body by default; anything large is not one
MAX_BODY = 1024
#: requests served at once; more are closed without an answer
MAX_CLIENTS = 16
_PREFIX = "/ack/"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 slots: threading.BoundedSemaphore) -> None:
        super().__init__(address, handler)
        self.slots = slots

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: a phone can tap again
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "watchdogd"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # set on the subclass made per listener
    links: AckLinks
    store: Store
    clock: Callable[[], datetime]
    deadline: float

    def setup(self) -> None:
        super().setup()
        # One deadline for the whole exchange: a socket timeout alone restarts with
        # every byte, so a client trickling its request could hold a thread for ever.
        self.connection.settimeout(self.deadline)
        self._timer = threading.Timer(self.deadline, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._timer.cancel()
        with contextlib.suppress(OSError):  # the client went away
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Never: the request line carries the token."""

    def _answer(self, code: int, text: str, **headers: str) -> None:
        body = (text + "\n").encode("utf-8")
        try:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass  # the client went away or the deadline cut it off
        self.close_connection = True

    def _refuse_method(self) -> None:
        if self.path.split("?", 1)[0].startswith(_PREFIX):
            self._answer(405, "method not allowed: the acknowledge button sends POST",
                         Allow="POST")
        else:
            self._answer(404, "not found")

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _read_body(self) -> bool:
        """Read and drop a small body; False (answered) when it is too big or unbounded."""
        if self.headers.get("Transfer-Encoding"):
            self._answer(411, "a body of unknown length is not accepted")
            return False
        length_text = self.headers.get("Content-Length", "0").strip() or "0"
        if not length_text.isdigit():
            self._answer(400, "bad Content-Length")
            return False
        length = int(length_text)
        if length > MAX_BODY:
            self._answer(413, f"body too large (at most {MAX_BODY} bytes)")
            return False
        if length:
            self.rfile.read(length)
        return True

    def do_POST(self) -> None:
        """``POST /ack/<token>``: acknowledge the token's finding, once."""
        path = self.path.split("?", 1)[0]
        if not path.startswith(_PREFIX):
            self._answer(404, "not found")
            return
        if not self._read_body():
            return
        token = path[len(_PREFIX):]
        peer = self.client_address[0] if self.client_address else "?"
        now = self.clock()
        try:
            link = self.links.check(token, now)
        except LinkRefused as refused:
            log.warning("acknowledge link refused", peer=peer, status=refused.status,
                        reason=str(refused))
            self._answer(refused.status, str(refused))
            return
        key = safe_text(link.finding_key, 300)
        # The nonce's start names the link in the log without being usable.
        nonce = link.nonce[:8]
        try:
            severity = self.store.use_ack_link(link.nonce, link.finding_key, ACKED_BY, now,
                                               link.expires)
        except LinkUsed:
            log.warning("acknowledge link replayed", peer=peer, finding=key, nonce=nonce)
            self._answer(409, "this acknowledge link was already used")
            return
        except KeyError:
            log.info("acknowledge link for a finding no longer open", peer=peer, finding=key,
                     nonce=nonce)
            self._answer(410, f"{key} is no longer open: nothing to acknowledge")
            return
        except StoreError as exc:
            log.error("acknowledge link not honoured: the state database failed",
                      finding=key, error=safe_text(str(exc), 300))
            self._answer(503, "the state database is unavailable; try again")
            return
        log.info("acknowledged from the phone", peer=peer, finding=key, by=ACKED_BY,
                 severity=severity.label, nonce=nonce)
        self._answer(200, f"acknowledged {key} ({severity.label}): no reminders until it "
                          "escalates or resolves")


class AckListener:
    """The listener's HTTP server in a background thread."""

    def __init__(self, links: AckLinks, store: Store, listen: str, *, timeout: float = 10.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.host, self.port = parse_listen(listen, "listener.listen")
        self.links, self.store, self.timeout, self.clock = links, store, timeout, clock
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve; return the bound (host, port). Raises OSError if it cannot bind."""
        handler = type("Handler", (_Handler,), {
            "links": self.links, "store": self.store, "deadline": self.timeout,
            "clock": staticmethod(self.clock)})
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.port), handler,
                                    threading.BoundedSemaphore(MAX_CLIENTS))
        self.port = self._server.server_address[1]
        self._thread = serve_in_thread(self._server, "ack-listener")
        log.info("acknowledge listener listening", address=f"{self.host}:{self.port}",
                 paths=["POST /ack/<token>"])
        return self.host, self.port

    def stop(self) -> None:
        """Stop serving."""
        shut_down(self._server, self._thread)
        self._server = self._thread = None
