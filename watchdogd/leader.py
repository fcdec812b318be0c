"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica acts, the others watch.

Several replicas of ``watchdogd run`` detect; exactly one remediates and
notifies. The protocol is the one client-go uses, kept small:

- Every ``retry_period`` (a third of the lease duration) each replica reads the
  Lease. The holder writes it back with a fresh ``renewTime``; a replica that is
  not the holder takes it over when the holder has left it unchanged for a whole
  lease duration *as timed by the replica's own monotonic clock* (clocks of
  different machines are never compared), or when it is free.
- Every write carries the ``resourceVersion`` that was read: when two replicas
  race, the API server accepts one write and answers the other ``409 Conflict``.
  A 409 means another replica won.
- :meth:`LeaderElector.is_leader` is computed when asked, never cached by a
  thread: a replica is leader only while its last successful renewal is younger
  than ``renew_deadline`` (two thirds of the lease duration). A replica that
  freezes, or whose API calls fail, therefore stops acting at least a third of a
  lease duration *before* any other replica may take over, and stops within one
  renew period of its last renewal going stale.
- On shutdown the leader resigns at once (stops acting) and releases the Lease
  after its last pass has finished, so a follower takes over without waiting.

The kubernetes package's own ``leaderelection`` module uses the global client
configuration and calls ``sys.exit``; this one uses an explicit ``ApiClient``
and writes Lease bodies as plain JSON, so ``renewTime`` always carries the six
fractional digits the API server's MicroTime parser requires.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
import urllib3

__all__ = [
    "Conflict",
    "KubeLeaseApi",
    "LeaderElector",
    "LeaseApi",
    "LeaseApiError",
    "default_identity",
]

log = structlog.get_logger("watchdogd.leader")

LEASES_PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class LeaseApiError(Exception):
    """The Lease could not be read or written (network, 5xx, 403): nothing is known."""


class Conflict(LeaseApiError):
    """409: the Lease changed since it was read, or was created meanwhile. Someone else won."""


class LeaseApi(Protocol):
    """The three calls an elector makes on its one Lease."""

    namespace: str
    name: str

    def get(self) -> dict[str, Any] | None:
        """The Lease object, or None when it does not exist."""

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST the Lease; :class:`Conflict` when it exists already."""

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the Lease with the resourceVersion in ``body``; :class:`Conflict` when stale."""


class KubeLeaseApi:
    """:class:`LeaseApi` over an official ``ApiClient`` (auth, TLS, pooling), JSON bodies."""

    def __init__(self, api_client: Any, namespace: str, name: str, *, timeout: float) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None,
                 ok: tuple[int, ...]) -> tuple[int, dict[str, Any] | None]:
        what = f"{method} lease {self.namespace}/{self.name}"
        try:
            serialized = self.api_client.param_serialize(
                method=method, resource_path=path,
                header_params={"Accept": "application/json",
                               **({"Content-Type": "application/json"} if body else {})},
                body=body, auth_settings=["BearerToken"])
            response = self.api_client.call_api(*serialized, _request_timeout=self.timeout)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LeaseApiError(f"{what}: {_net(exc, self.timeout)}") from None
        status = int(response.status)
        if status == 409:
            raise Conflict(f"{what}: 409 Conflict ({_message(raw)})")
        if status not in ok:
            raise LeaseApiError(f"{what}: HTTP {status}" + (
                f" ({_message(raw)})" if _message(raw) else ""))
        if status == 404:
            return status, None
        try:
            data = json.loads(raw)
        except ValueError:
            raise LeaseApiError(f"{what}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise LeaseApiError(f"{what}: answer is not an object")
        return status, data

    def get(self) -> dict[str, Any] | None:
        """GET the Lease (None on 404)."""
        path = LEASES_PATH.format(namespace=self.namespace) + f"/{self.name}"
        return self._request("GET", path, None, (200, 404))[1]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST the Lease."""
        path = LEASES_PATH.format(namespace=self.namespace)
        data = self._request("POST", path, body, (200, 201))[1]
        assert data is not None
        return data

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the Lease."""
        path = LEASES_PATH.format(namespace=self.namespace) + f"/{self.name}"
        data = self._request("PUT", path, body, (200,))[1]
        assert data is not None
        return data


def _message(raw: bytes | str | None) -> str:
    if not raw:
        return ""
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    return str(data.get("message", ""))[:200] if isinstance(data, dict) else ""


def _net(exc: BaseException, timeout: float) -> str:
    text = str(exc).lower()
    if "timed out" in text or isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"no answer within {timeout:g}s"
    if "refused" in text:
        return "connection refused"
    return f"network error ({type(exc).__name__})"


def default_identity() -> str:
    """``<pod or host name>_<random>``: unique per process, readable in ``kubectl get lease``."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "watchdogd"
    return f"{host}_{uuid.uuid4().hex[:8]}"


def _microtime(value: datetime) -> str:
    """RFC 3339 with exactly six fractional digits, the Lease's MicroTime format."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class _Observed:
    """The Lease as last read, and when (monotonic) its current version was first seen."""

    holder: str
    duration: float
    resource_version: str
    seen_at: float


class LeaderElector:
    """Acquires and renews one Lease; :meth:`is_leader` is the engine's ``acting`` gate."""

    def __init__(
        self,
        api: LeaseApi,
        identity: str,
        lease_duration: float,
        *,
        renew_fraction: float = 1 / 3,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if lease_duration <= 0:
            raise ValueError("lease_duration must be positive")
        if not 0 < renew_fraction <= 0.5:
            raise ValueError("renew_fraction must be in (0, 0.5]")
        self.api = api
        self.identity = identity
        self.lease_duration = lease_duration
        self.retry_period = lease_duration * renew_fraction
        # Stop acting well before anyone else may take over (one full duration).
        self.renew_deadline = lease_duration - self.retry_period
        self.clock = clock
        self.wall = wall
        self.on_change = on_change
        self._lock = threading.Lock()
        self._renewed_at: float | None = None
        self._observed: _Observed | None = None
        self._held_version: str | None = None
        self._resigned = False
        self._reported: bool | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the gate ------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while our last successful renewal is younger than ``renew_deadline``."""
        with self._lock:
            return self._leading(self.clock())

    def _leading(self, now: float) -> bool:
        return (not self._resigned and self._renewed_at is not None
                and now - self._renewed_at < self.renew_deadline)

    @property
    def holder(self) -> str | None:
        """Who held the Lease when it was last read (None: unknown or free)."""
        with self._lock:
            return self._observed.holder or None if self._observed else None

    # -- one round ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One acquire-or-renew round; returns :meth:`is_leader` afterwards."""
        started = self.clock()
        try:
            self._round(started)
        except Conflict as exc:
            self._lose(f"another replica won the lease ({exc})")
        except LeaseApiError as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                log.warning("lease call failed", lease=self._where(), error=str(exc),
                            leader=self.is_leader())
        else:
            self._last_error = None
        self._report()
        return self.is_leader()

    def _round(self, started: float) -> None:
        if self._resigned:
            # Keep what we hold until release(): the last pass may still be acting.
            if self._held_version is not None:
                self._renew_held(started)
            return
        current = self.api.get()
        if current is None:
            created = self.api.create(self._body(None, acquire=True))
            self._won(created, started)
            return
        spec = current.get("spec") or {}
        meta = current.get("metadata") or {}
        holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        version = str(meta.get("resourceVersion") or "")
        with self._lock:
            previous = self._observed
            seen_at = (previous.seen_at if previous is not None
                       and previous.resource_version == version else started)
            self._observed = _Observed(holder, duration, version, seen_at)
        if holder and holder != self.identity and started - seen_at < duration:
            self._lose(f"held by {holder}")
            return
        acquire = holder != self.identity
        replaced = self.api.replace(self._body(current, acquire=acquire))
        self._won(replaced, started)

    def _renew_held(self, started: float) -> None:
        current = self.api.get()
        spec = (current or {}).get("spec") or {}
        if current is None or spec.get("holderIdentity") != self.identity:
            with self._lock:
                self._held_version = None
            return
        replaced = self.api.replace(self._body(current, acquire=False))
        with self._lock:
            self._held_version = str((replaced.get("metadata") or {}).get("resourceVersion"))

    def _body(self, current: dict[str, Any] | None, *, acquire: bool) -> dict[str, Any]:
        now = _microtime(self.wall())
        old_spec = (current or {}).get("spec") or {}
        transitions = int(old_spec.get("leaseTransitions") or 0)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": now if acquire else old_spec.get("acquireTime") or now,
            "renewTime": now,
            "leaseTransitions": transitions + 1 if acquire and current is not None
            else transitions,
        }
        metadata: dict[str, Any] = {"name": self.api.name, "namespace": self.api.namespace}
        if current is None:
            metadata["labels"] = {"app.kubernetes.io/name": "watchdogd"}
        else:
            metadata = dict(current.get("metadata") or {})
            metadata.pop("managedFields", None)
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": metadata, "spec": spec}

    def _won(self, lease: dict[str, Any], started: float) -> None:
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            # The renewal counts from when the round began: conservative by the
            # round's own duration, never optimistic.
            self._renewed_at = started
            self._held_version = version
            self._observed = _Observed(self.identity, self.lease_duration, version, started)

    def _lose(self, why: str) -> None:
        with self._lock:
            was = self._leading(self.clock())
            self._renewed_at = None
            self._held_version = None
        if was:
            log.warning("leadership lost", lease=self._where(), identity=self.identity,
                        reason=why)

    def _report(self) -> None:
        leading = self.is_leader()
        if leading == self._reported:
            return
        self._reported = leading
        if leading:
            log.info("leadership acquired: this replica remediates and notifies",
                     lease=self._where(), identity=self.identity)
        elif not self._resigned:
            log.info("following: this replica detects only", lease=self._where(),
                     identity=self.identity, holder=self.holder)
        if self.on_change is not None:
            self.on_change(leading)

    def _where(self) -> str:
        return f"{self.api.namespace}/{self.api.name}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run rounds every ``retry_period`` in a daemon thread, the first one now."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="leader-elector", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # a bug must not leave a stale "leader" behind
                self._lose(f"elector failed: {type(exc).__name__}: {exc}")
                log.error("leader election round failed",
                          error=f"{type(exc).__name__}: {exc}")
            if self._stop.wait(self._period()):
                return

    def _period(self) -> float:
        # A renewal that keeps failing is retried sooner, so a short API hiccup
        # does not cost the lease.
        if self._last_error is not None and self.is_leader():
            return self.retry_period / 2
        return self.retry_period

    def resign(self) -> None:
        """Stop acting now; keep renewing what we hold until :meth:`release`."""
        with self._lock:
            was = self._leading(self.clock())
            self._resigned = True
        if was:
            log.info("resigning: no further actions from this replica", lease=self._where())
        self._report()

    def release(self) -> bool:
        """Hand the Lease back (free, one-second duration) if we still hold it."""
        with self._lock:
            self._resigned = True
            held = self._held_version is not None
            self._renewed_at = None
        if not held:
            return False
        try:
            current = self.api.get()
            spec = (current or {}).get("spec") or {}
            if current is None or spec.get("holderIdentity") != self.identity:
                return False
            now = _microtime(self.wall())
            metadata = dict(current.get("metadata") or {})
            metadata.pop("managedFields", None)
            self.api.replace({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"leaseDurationSeconds": 1, "renewTime": now, "acquireTime": now,
                         "leaseTransitions": int(spec.get("leaseTransitions") or 0)},
            })
        except LeaseApiError as exc:
            log.warning("lease release failed; another replica takes over when it expires",
                        lease=self._where(), error=str(exc))
            return False
        finally:
            with self._lock:
                self._held_version = None
        log.info("lease released", lease=self._where(), identity=self.identity)
        return True

    def stop(self, *, release: bool = True) -> None:
        """Stop the rounds, then release the Lease (unless told not to)."""
        self.resign()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.retry_period))
            self._thread = None
        if release:
            self.release()
