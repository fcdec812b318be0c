"""A total deadline and a size limit for every HTTP call, whichever library makes it.

Client timeouts are per socket operation: a peer that sends one byte a second never trips
a 10 s read timeout, and one that sends 400 MB takes the daemon's memory with it. The
three stacks watchdogd talks through (``requests`` for the Hub API and the proxy,
``keystoneauth``/``requests`` for OpenStack, the Kubernetes client's urllib3) all end in
urllib3 connection pools, so the bound lives there: :func:`bound_pools` makes a pool
manager open connections whose socket checks, before every ``send`` and ``recv``, the
deadline and the byte budget of the call in progress (a context variable set by
:func:`limits`). Past either, the socket operation fails, urllib3 drops the connection,
and :func:`limits` tells the caller which bound was hit, so its error can say so.

The pass has a deadline too (:func:`pass_deadline`): every call made inside it, in any
thread that copied the context, ends by then, so no collect thread outlives its pass.
"""

from __future__ import annotations

import contextvars
import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from watchdogd.config import DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_MAX_BYTES", "Limits", "bound_pools", "bound_requests", "limits",
           "pass_deadline"]



@dataclass
class Limits:
    """The bounds of the call in progress, and which one it hit."""

    deadline: float  # time.monotonic()
    max_bytes: int
    seconds: float
    received: int = 0
    exceeded: str | None = None  # "deadline" | "size"

    def describe(self) -> str:
        """Why the call was abandoned, for the source's error."""
        if self.exceeded == "size":
            return f"the answer is larger than {self.max_bytes} bytes (max_response_bytes)"
        return f"no answer within {self.seconds:g}s (for the whole call: a slow or trickling peer)"


_current: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "watchdogd_call_limits", default=None)
_pass_end: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "watchdogd_pass_deadline", default=None)


@contextmanager
def limits(seconds: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Limits]:
    """Bound every request made inside the block to ``seconds`` in all and ``max_bytes``.

    The deadline is the earlier of ``seconds`` from now and the pass's deadline. A retry
    inside the block shares the same bound: the configured timeout is the whole call.
    """
    deadline = time.monotonic() + seconds
    end = _pass_end.get()
    if end is not None and end < deadline:
        deadline = end
    bound = Limits(deadline, max_bytes, seconds)
    token = _current.set(bound)
    try:
        yield bound
    finally:
        _current.reset(token)


@contextmanager
def pass_deadline(seconds: float) -> Iterator[None]:
    """Every bounded call started inside the block ends within ``seconds`` from now."""
    token = _pass_end.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _pass_end.reset(token)


class _BoundedSocket:
    """A socket (plain or TLS) whose every operation respects the current :class:`Limits`."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()
        # As a real socket: close() waits for the files made by makefile() (http.client
        # closes the connection of a "Connection: close" answer before reading its body).
        self._io_refs = 0
        self._closed = False

    def _arm(self) -> Limits | None:
        bound = _current.get()
        if bound is None:
            self._sock.settimeout(self._timeout)
            return None
        remaining = bound.deadline - time.monotonic()
        if remaining <= 0:
            bound.exceeded = bound.exceeded or "deadline"
            raise TimeoutError("call deadline passed")
        self._sock.settimeout(remaining if self._timeout is None
                              else min(self._timeout, remaining))
        return bound

    def _count(self, bound: Limits | None, n: int) -> None:
        if bound is None:
            return
        bound.received += n
        if bound.received > bound.max_bytes:
            bound.exceeded = "size"
            raise OSError("answer larger than the call's size limit")

    def _timed_out(self, bound: Limits | None) -> None:
        if bound is not None and time.monotonic() >= bound.deadline:
            bound.exceeded = bound.exceeded or "deadline"

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        bound = self._arm()
        try:
            n = int(self._sock.recv_into(buffer, nbytes, flags))
        except TimeoutError:
            self._timed_out(bound)
            raise
        self._count(bound, n)
        return n

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        bound = self._arm()
        try:
            data = bytes(self._sock.recv(bufsize, flags))
        except TimeoutError:
            self._timed_out(bound)
            raise
        self._count(bound, len(data))
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        bound = self._arm()
        try:
            return int(self._sock.send(data, flags))
        except TimeoutError:
            self._timed_out(bound)
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        # In slices, so that a peer that reads one byte a second meets the deadline too.
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view[:65536], flags)
            view = view[sent:]

    def makefile(self, mode: str = "r", buffering: int | None = None, **_: Any) -> Any:
        # What http.client reads the response from: through recv_into above.
        raw = socket.SocketIO(self, "rb" if "r" in mode else "wb")  # type: ignore[arg-type]
        self._io_refs += 1
        size = io.DEFAULT_BUFFER_SIZE if buffering in (None, -1) else buffering
        return io.BufferedReader(raw, size) if "r" in mode else io.BufferedWriter(raw, size)

    def _decref_socketios(self) -> None:
        self._io_refs = max(0, self._io_refs - 1)
        if self._closed and not self._io_refs:
            self._sock.close()

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout  # type: ignore[no-any-return]

    def close(self) -> None:
        self._closed = True
        if not self._io_refs:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _BoundedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _BoundedSocket(self.sock)  # type: ignore[assignment]


class _BoundedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = _BoundedSocket(self.sock)  # type: ignore[assignment]


class _BoundedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _BoundedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


def bound_pools(manager: PoolManager) -> PoolManager:
    """Make ``manager`` open only bounded connections (its existing pools are dropped)."""
    manager.clear()
    manager.pool_classes_by_scheme = {"http": _BoundedHTTPPool,
                                      "https": _BoundedHTTPSPool}
    return manager


def bound_session(session: Any) -> Any:
    """Bound every connection of a ``requests.Session`` (its mounted HTTP adapters)."""
    for adapter in session.adapters.values():
        manager = getattr(adapter, "poolmanager", None)
        if isinstance(manager, PoolManager):
            bound_pools(manager)
    return session


_requests_bound = False


def bound_requests() -> None:
    """Bound the connections of every ``requests`` adapter made from now on in this process.

    For libraries that make their own sessions (apprise's plugins call ``requests.post``):
    their calls made inside :func:`limits` get its deadline too. Outside of it the sockets
    behave as before, so this is harmless for any other caller.
    """
    global _requests_bound  # noqa: PLW0603 - one patch per process
    if _requests_bound:
        return
    from requests.adapters import HTTPAdapter  # noqa: PLC0415

    original = HTTPAdapter.init_poolmanager

    def init_poolmanager(self: HTTPAdapter, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        bound_pools(self.poolmanager)

    HTTPAdapter.init_poolmanager = init_poolmanager  # type: ignore[method-assign]
    _requests_bound = True
