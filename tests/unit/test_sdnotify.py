"""sd_notify against real datagram sockets: READY, the WATCHDOG cadence, STOPPING.

The daemon runs for real (APScheduler, the hooks, the watchdog thread) with a fake
engine whose passes can be made to fail; systemd's side is a datagram socket bound
by the test. Waits are on events (a datagram arrived, N watchdog ticks completed),
never on the clock.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from watchdogd.config import CheckConfig, Config
from watchdogd.daemon import Daemon, supervise
from watchdogd.metrics import Health
from watchdogd.report import PassReport
from watchdogd.sdnotify import SystemdNotifier, Watchdog, watchdog_period


class Listener:
    """systemd's end: a bound AF_UNIX datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind)

    def recv(self, timeout: float = 10.0) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def drain(self) -> list[list[str]]:
        """Everything queued now, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            pass
        return out

    def wait_for(self, field: str, timeout: float = 10.0) -> list[list[str]]:
        """Messages up to and including the first containing ``field``."""
        seen = []
        while True:
            message = self.recv(timeout)
            seen.append(message)
            if field in message:
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[Listener]:
    listener = Listener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    listener = Listener(f"@watchdogd-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


def test_path_socket_receives_one_datagram_per_notification(path_listener: Listener) -> None:
    notifier = SystemdNotifier(path_listener.address)
    assert notifier.ready("scheduled sessions")
    assert path_listener.recv() == ["READY=1", "STATUS=scheduled sessions"]
    assert notifier.watchdog()
    assert path_listener.recv() == ["WATCHDOG=1"]
    assert notifier.stopping()
    assert path_listener.recv() == ["STOPPING=1"]


def test_abstract_socket(abstract_listener: Listener) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": abstract_listener.address})
    assert notifier.enabled
    assert notifier.ready()
    assert abstract_listener.recv() == ["READY=1"]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_missing_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert not notifier.ready()  # logged once, never raised
    assert not notifier.watchdog()


def test_watchdog_period_is_half_of_watchdog_sec() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "120000000"}) == 60.0
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "junk"}) is None
    # Meant for another process (a child that inherited the environment): not ours.
    assert watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=4242) is None
    assert watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"},
                           pid=4242) == 1.0


def test_watchdog_tick_pings_only_while_alive(path_listener: Listener) -> None:
    alive = [True]
    dog = Watchdog(SystemdNotifier(path_listener.address), 1.0, lambda: alive[0])
    assert dog.tick()
    assert path_listener.recv() == ["WATCHDOG=1"]
    alive[0] = False
    assert not dog.tick()
    assert path_listener.drain() == []
    alive[0] = True
    assert dog.tick()
    assert path_listener.recv() == ["WATCHDOG=1"]


# -- the daemon, end to end -----------------------------------------------------------------


class FakeEngine:
    """What Daemon needs of an engine; passes succeed until told to fail."""

    def __init__(self) -> None:
        self.registry: dict[str, Any] = {"probe": object()}
        self.settings = {"probe": CheckConfig(interval=0.2)}
        self.notifier = None
        self.dry_run = True
        self.listeners: list[Any] = []
        self.failing = threading.Event()
        self.passes = 0

    def plan(self, only: Any = None, target: Any = None) -> list[Any]:
        return [("probe", "t")]

    def recover(self) -> list[str]:
        return []

    def acting(self) -> bool:
        return True

    def run_pass(self, only: Any = None, target: Any = None) -> PassReport:
        self.passes += 1
        if self.failing.is_set():
            raise RuntimeError("the state store is gone")
        now = datetime.now(UTC)
        report = PassReport(now, now, True, [])
        for listener in self.listeners:
            listener(report)
        return report


def test_daemon_ready_watchdog_cadence_and_stopping(
        path_listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """READY once scheduled; WATCHDOG while passes complete, none while they fail; STOPPING."""
    config = Config.model_validate({"checks": {"probe": {"interval": 0.2}}})
    engine = FakeEngine()
    daemon = Daemon(config, engine)  # type: ignore[arg-type]
    health = Health(stuck_after=60)
    notifier = SystemdNotifier(path_listener.address)
    outcomes: list[tuple[str, bool]] = []
    failed = threading.Event()
    completed_again = threading.Event()

    def on_pass(name: str, report: PassReport | None) -> None:
        outcomes.append((name, report is not None))
        if report is None:
            failed.set()
        elif failed.is_set():
            completed_again.set()

    daemon.on_pass.append(on_pass)
    pingers: list[Watchdog] = []
    real_start = Watchdog.start

    def capture(self: Watchdog) -> None:
        pingers.append(self)
        real_start(self)

    monkeypatch.setattr(Watchdog, "start", capture)
    errors: list[BaseException] = []

    def systemd_side() -> None:
        try:
            first = path_listener.recv()
            assert first[0] == "READY=1", first
            # The cadence: pings keep coming while passes complete.
            for _ in range(3):
                path_listener.wait_for("WATCHDOG=1")
            engine.failing.set()
            assert failed.wait(10)
            dog = pingers[0]
            while not health.failing():
                assert dog.wait_ticks(1)
            # A tick that began before the failure was recorded may still ping: let two
            # full ticks pass, discard what came so far, then watch three more ticks.
            assert dog.wait_ticks(2)
            path_listener.drain()
            assert dog.wait_ticks(3)
            after = path_listener.drain()
            assert not [m for m in after if "WATCHDOG=1" in m], after
            engine.failing.clear()
            assert completed_again.wait(10)
            path_listener.wait_for("WATCHDOG=1")
            daemon.request_stop()
            path_listener.wait_for("STOPPING=1")
        except BaseException as exc:
            errors.append(exc)
            daemon.request_stop()

    thread = threading.Thread(target=systemd_side)
    thread.start()
    code = supervise(daemon, systemd=notifier, watchdog_period=0.05, health=health)
    thread.join(30)
    if errors:
        raise errors[0]
    assert code == 0
    assert ("probe", False) in outcomes
    assert pingers[0].pings >= 4


def test_daemon_from_environment(path_listener: Listener,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The `watchdogd run` wiring reads NOTIFY_SOCKET and WATCHDOG_USEC from the environment."""
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 0.05
    assert SystemdNotifier.from_env().address == path_listener.address
