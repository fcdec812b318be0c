"""The systemd notification protocol, written out: ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``.

``Type=notify`` services tell systemd about their state by sending one datagram
of newline-separated ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named in
``$NOTIFY_SOCKET``: a filesystem path, or an abstract socket when the name
starts with ``@``. That is all ``sd_notify(3)`` does, so we send the datagram
ourselves rather than depend on libsystemd bindings.

Notification is best effort: a missing or broken socket never stops a pass.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op.

The watchdog is the interesting part. ``WatchdogSec=`` asks for a ``WATCHDOG=1``
at least that often; :class:`Watchdog` sends one every half period, but only
while its ``alive`` callable says passes keep completing. When passes hang or
fail, the pings stop and systemd restarts the service: a wedged daemon that
still answers the watchdog from a healthy-looking thread would defeat the point.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

import structlog

__all__ = ["SystemdNotifier", "Watchdog", "watchdog_period"]

log = structlog.get_logger("watchdogd.sdnotify")


class SystemdNotifier:
    """Sends notification datagrams to systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None) -> None:
        """``address`` is the value of ``$NOTIFY_SOCKET``; None or empty disables sending."""
        self.address = address or None
        self._warned = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier systemd asked for, if any."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that wants notifications."""
        return self.address is not None

    def _sockaddr(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            # Abstract namespace: a leading NUL byte, no filesystem entry.
            return b"\0" + self.address[1:].encode()
        return self.address

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one datagram; True when it was sent."""
        if self.address is None:
            return False
        if not self.address.startswith(("/", "@")):
            # vsock: and other transports of newer systemd versions are not spoken here.
            self._warn(f"unsupported NOTIFY_SOCKET address {self.address!r}")
            return False
        payload = "\n".join(fields).encode()
        try:
            with self._lock, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2.0)
                sock.connect(self._sockaddr())
                sock.sendall(payload)
        except OSError as exc:
            self._warn(f"cannot notify systemd: {exc.strerror or exc}")
            return False
        return True

    def _warn(self, message: str) -> None:
        # One warning is useful; one per watchdog tick would flood the journal.
        if not self._warned:
            self._warned = True
            log.warning("sd_notify failed", error=message, socket=self.address)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is over (the first pass is scheduled)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun (the running pass is finishing)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive and making progress."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """``STATUS=``: one line that ``systemctl status`` shows."""
        return self.notify(f"STATUS={text}")


def watchdog_period(environ: Mapping[str, str] | None = None,
                    pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``WatchdogSec=``), or None when no watchdog is set.

    ``$WATCHDOG_USEC`` carries ``WatchdogSec=``; ``$WATCHDOG_PID``, when set,
    names the process the watchdog is meant for (a child that inherited the
    environment must not ping on its parent's behalf).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    target = env.get("WATCHDOG_PID")
    if target and target.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC", value=usec)
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


class Watchdog:
    """Pings systemd's watchdog every ``period`` seconds while ``alive()`` is true.

    :meth:`tick` is one decision (ping or not); the thread started by
    :meth:`start` calls it every ``period``. ``ticks`` counts completed ticks
    under a condition so that tests can wait for "two more ticks" exactly
    instead of sleeping and hoping.
    """

    def __init__(self, notifier: SystemdNotifier, period: float,
                 alive: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.period = period
        self.alive = alive
        self.ticks = 0
        self.pings = 0
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_alive = True

    def tick(self) -> bool:
        """Ping if alive; return whether a ping was sent."""
        alive = self.alive()
        if alive != self._was_alive:
            self._was_alive = alive
            if alive:
                log.info("watchdog pings resumed: passes complete again")
            else:
                log.warning("watchdog pings withheld: passes are not completing; "
                            "systemd restarts the service after WatchdogSec")
        sent = self.notifier.watchdog() if alive else False
        with self.cond:
            self.ticks += 1
            self.pings += int(sent)
            self.cond.notify_all()
        return sent

    def wait_ticks(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` more ticks have completed (for tests and diagnostics)."""
        with self.cond:
            goal = self.ticks + count
            return self.cond.wait_for(lambda: self.ticks >= goal, timeout)

    def start(self) -> None:
        """Ping from a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as exc:  # never let the pinger die silently
                log.error("watchdog tick failed", error=f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self.period):
                return

    def stop(self) -> None:
        """Stop pinging (shutdown: systemd no longer expects pings after STOPPING=1)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
