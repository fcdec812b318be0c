"""Peers that trickle, stall and flood: every call has a bound, and so does the process.

A TCP forwarder in front of a real simulator answers as a broken peer would: the body one
byte at a time (every byte resets a per-read timeout), the headers of a ``DELETE`` one byte
at a time, or, from a server of its own, a 400 MB answer. Each test asserts the bound: the
error names it, the pass and the process end, the memory of the process stays under the
Deployment's limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.safety.procs import REPO, launch, wait_for
from tests.safety.sessions_world import SafeWorld

#: the shipped Deployment's memory limit
DEPLOYMENT_LIMIT = 512 * 1024 * 1024


class _Server:
    """A listening socket on a free port, one thread per connection."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing.set()
        self.listener.close()


class Trickler(_Server):
    """Forwards to ``upstream``; the answers to matching requests come a byte at a time.

    ``mode`` "body": headers at full speed, then the body trickles; "all": from the first
    byte. Only requests whose first line starts with one of ``methods`` are slowed.
    """

    def __init__(self, upstream_port: int, *, mode: str = "body",
                 methods: tuple[bytes, ...] = (b"GET", b"POST", b"DELETE", b"PUT"),
                 delay: float = 0.2) -> None:
        self.upstream = upstream_port
        self.mode = mode
        self.methods = methods
        self.delay = delay
        self.slowed = 0
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client, \
                socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
            while not self.closing.is_set():
                request = client.recv(65536)
                if not request:
                    return
                upstream.sendall(request)
                slow = request.startswith(self.methods)
                self.slowed += slow
                self._answer(upstream, client, slow)

    def _answer(self, upstream: socket.socket, client: socket.socket, slow: bool) -> None:
        upstream.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            body += chunk
        if not slow:
            client.sendall(head + b"\r\n\r\n" + body)
            return
        fast = head + b"\r\n\r\n" if self.mode == "body" else b""
        client.sendall(fast)
        for byte in (head + b"\r\n\r\n" + body)[len(fast):]:
            if self.closing.wait(self.delay):
                return
            client.sendall(bytes([byte]))


class Flood(_Server):
    """An HTTP server whose every answer is a 200 with a 400 MB JSON list, streamed."""

    SIZE = 400 * 1024 * 1024

    def _serve(self, client: socket.socket) -> None:
        item = b'{"x": "' + b"y" * 1000 + b'"},'
        with contextlib.suppress(OSError), client:
            client.recv(65536)
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n[" % self.SIZE)
            sent = 1
            block = item * 1024
            while sent < self.SIZE - len(block) and not self.closing.is_set():
                client.sendall(block)
                sent += len(block)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


def point_hub_api_at(world: SafeWorld, port: int) -> None:
    """Rewrite the configuration so that the Hub API goes through ``port``."""
    text = world.config_path.read_text()
    hub = port_of(world.hub.api_url)
    world.config_path.write_text(text.replace(f"127.0.0.1:{hub}/", f"127.0.0.1:{port}/"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SafeWorld]:
    with SafeWorld(tmp_path / "world", timeout="2s",
                   extra={"daemon": {"pass_timeout": "10s"}}) as w:
        w.healthy(users=4, running=3)
        w.write_config()
        yield w


def test_a_trickling_hub_api_cannot_hold_a_check(world: SafeWorld) -> None:
    trickle = Trickler(port_of(world.hub.api_url), mode="body")
    try:
        point_hub_api_at(world, trickle.port)
        proc = launch(world.config_path, "check", "--json", "--only", "sessions")
        # The process ends by itself: every call ends by the hub's timeout (2 s), whatever
        # its retries; the pass by its own deadline. 60 s only catches a hang.
        out, err = proc.communicate(timeout=60)
        assert trickle.slowed, "the forwarder never slowed an answer"
        assert proc.returncode == 2, err
        [check] = json.loads(out)["checks"]
        assert check["status"] == "error"
        assert "no answer within 2s (for the whole call" in check["error"]
    finally:
        trickle.close()


def test_a_delete_whose_headers_trickle_fails_and_the_pass_ends(world: SafeWorld) -> None:
    world.stale_session("zed")
    trickle = Trickler(port_of(world.hub.api_url), mode="all", methods=(b"DELETE",))
    try:
        point_hub_api_at(world, trickle.port)
        world.remediation = {**world.remediation, "confirm_after": 1}
        text = world.config_path.read_text().replace("confirm_after = 2", "confirm_after = 1")
        world.config_path.write_text(text)
        proc = launch(world.config_path, "check", "--json", "--only", "sessions")
        out, err = proc.communicate(timeout=60)
        assert trickle.slowed == 1, err
        findings = {f["subject"]: f for c in json.loads(out)["checks"] for f in c["findings"]}
        action = findings["zed"]["action"]
        assert action["status"] == "failed", action
        assert "no answer within 2s" in action["detail"]
    finally:
        trickle.close()


def test_a_400_mb_answer_is_refused_within_the_memory_limit(world: SafeWorld) -> None:
    flood = Flood()
    try:
        point_hub_api_at(world, flood.port)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdogd", "check", "--json", "--only", "sessions",
             "--config", str(world.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env)
        out_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()),
                                  daemon=True)  # type: ignore[union-attr]
        reader.start()
        err = proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        reader.join(30)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 2, err.decode()[-2000:]
        [check] = json.loads(b"".join(out_chunks))["checks"]
        assert "larger than 33554432 bytes (max_response_bytes)" in check["error"]
        peak = usage.ru_maxrss * 1024  # KiB on Linux
        assert peak < DEPLOYMENT_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    finally:
        flood.close()


def test_sigterm_ends_the_daemon_within_its_bound_while_a_peer_trickles(
        world: SafeWorld) -> None:
    trickle = Trickler(port_of(world.hub.api_url), mode="body", delay=0.5)
    try:
        point_hub_api_at(world, trickle.port)
        proc = launch(world.config_path, "run")
        wait_for(lambda: trickle.slowed, "a pass to meet the trickling hub", proc=proc)
        proc.send_signal(signal.SIGTERM)
        # The documented bound: the pass timeout (10 s here) plus 15 s.
        _, err = proc.communicate(timeout=10 + 15 + 10)
        assert proc.returncode == 0, err[-2000:]
        assert "stopping" in err
    finally:
        trickle.close()


def test_a_webhook_that_trickles_its_answer_cannot_hold_a_send() -> None:
    """apprise's timeouts are per read; the notify timeout is the whole send."""
    from tests.safety.receiver import Receiver
    from watchdogd.model import Severity
    from watchdogd.notify import Destination, Outcome

    with Receiver() as rx:
        trickle = Trickler(rx.port, mode="all", methods=(b"POST",), delay=0.3)
        try:
            import apprise

            servers = apprise.Apprise()
            servers.add(f"json://127.0.0.1:{trickle.port}/notify")
            [server] = list(servers)
            outcome, detail = Destination(server, timeout=1.0).send(
                "[critical] title", "body", Severity.CRITICAL, "k")
            assert trickle.slowed == 1
            # The answer did not come in time; the receiver keeps the message (maybe only
            # after the sender gave up, on a loaded machine): the uncertain case.
            assert outcome is Outcome.UNCERTAIN, detail
            wait_for(lambda: len(rx.messages) == 1, "the receiver to keep the message")
        finally:
            trickle.close()
