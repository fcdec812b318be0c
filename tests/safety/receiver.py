"""A notification endpoint for apprise's ``json://`` that can be down, failing or slow.

Unlike ``tests.peers.receivers.JsonReceiver`` it can go down and come back on the same
port (``down()`` closes the listening socket: connections are refused), and its "slow"
mode holds a request past the client's timeout and then answers 504 *without* keeping the
message, the way a gateway in front of a dead chat service behaves. (A receiver that keeps
a message and answers too late would make any sender deliver it twice: exactly-once needs
the receiver's answer.) That receiver is mode "late": it keeps the message and answers
200 after ``slow_for``, the duplicate case an at-least-once sender can only bound. Mode
"reject" answers 400 without keeping, a refusal that retrying cannot change. Neither is in
:data:`MODES`, the modes an exactly-once delivery must survive.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.peers.postgres import free_port

__all__ = ["Receiver"]

MODES = ("up", "failing", "down", "slow")
#: Modes outside what exactly-once can survive.
EXTRA_MODES = ("late", "reject")


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False


class Receiver:
    """Records what apprise POSTs while ``mode == "up"``."""

    def __init__(self, *, slow_for: float = 1.5) -> None:
        self.port = free_port()
        self.messages: list[dict[str, Any]] = []
        #: the request headers of each message kept in mode "up"
        self.headers: list[dict[str, str]] = []
        self.mode = "up"
        self.slow_for = slow_for
        self.attempts = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/notify"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.attempts += 1
                    mode = receiver.mode
                if mode == "slow":
                    receiver._closing.wait(receiver.slow_for)
                    self.send_response(504)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "late":
                    with receiver._lock:
                        receiver.messages.append(json.loads(body))
                    receiver._closing.wait(receiver.slow_for)
                    try:
                        self.send_response(200)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    except OSError:
                        pass  # the sender has long given up
                    return
                if mode == "reject":
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "failing":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.messages.append(json.loads(body))
                    receiver.headers.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> Receiver:
        if self._server is None:
            self._closing.clear()
            self._server = _Server(("127.0.0.1", self.port), self._handler())
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._closing.set()
            server.shutdown()
            server.server_close()

    def set_mode(self, mode: str) -> None:
        """``up``, ``failing`` (503), ``down`` (refused), ``slow`` (timeout, then 504),
        ``late`` (kept, then 200 after the timeout) or ``reject`` (400)."""
        if mode not in MODES + EXTRA_MODES:
            raise ValueError(mode)
        if mode == "down":
            self.stop()
        else:
            self.start()
        with self._lock:
            self.mode = mode

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
