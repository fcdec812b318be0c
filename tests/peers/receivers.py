"""Real local notification receivers: an HTTP endpoint for apprise's json:// and SMTP."""

from __future__ import annotations

import json
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.peers.postgres import free_port


class JsonReceiver:
    """Records what apprise POSTs; ``failing = True`` answers 503 instead."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.failing = False
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                with receiver.arrived:
                    receiver.messages.append(json.loads(body))
                    receiver.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/notify"

    def __enter__(self) -> JsonReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def titles(self) -> list[str]:
        return [m["title"] for m in self.messages]


class _Collect:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


class SmtpReceiver:
    """A real SMTP server (aiosmtpd) on a free port."""

    def __init__(self) -> None:
        self.handler = _Collect()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return (f"mailto://127.0.0.1:{self.port}?from=watchdogd@example.org"
                "&to=ops@example.org")

    @property
    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.handler.messages]

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
