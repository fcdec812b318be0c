"""Prometheus metrics, ``/healthz``, and the liveness rule the systemd watchdog shares.

Everything is fed from what already flows through the daemon: every
:class:`~watchdogd.engine.PassReport` (``Engine.listeners``), every pass start
and end (the daemon's hooks), and every source call (:class:`InstrumentedSources`
wraps the adapters, so a source error is counted whichever stage hit it). A
scrape never touches the state store or the outside world: it only reads
counters and a few dictionaries under a lock.

Exposed on ``[daemon] metrics_listen`` (``127.0.0.1:9464`` by default, so
nothing is reachable from outside the host unless configured):

=============================================  ===============================================
``watchdogd_pass_duration_seconds``            histogram per ``check``, ``target``
``watchdogd_passes_total``                     per ``check``, ``target``, ``status``
                                               (ok / findings / error)
``watchdogd_pass_failures_total``              passes that raised (store down, a bug), per check
``watchdogd_findings_open``                    open findings per ``check``, ``target``,
                                               ``kind``, ``severity``
``watchdogd_actions_total``                    planned actions per ``action``, ``status``
                                               (done, failed, dry-run, unconfirmed, ...)
``watchdogd_source_errors_total``              per ``source``, ``target``
``watchdogd_last_success_timestamp_seconds``   last pass that completed, per ``check``,
                                               ``target``
``watchdogd_leader``                           1 when this replica acts (always 1 without
                                               leader election)
``watchdogd_healthy``                          1 when ``/healthz`` answers 200
=============================================  ===============================================

``/healthz`` answers 503 with the reasons when a scheduled check has not
completed a pass within three of its intervals, or a pass has been running for
longer than twice the pass timeout. The systemd watchdog pings on the same rule,
and also withholds its ping while the latest pass of a check failed outright.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import threading
import time
from collections import Counter as CountOf
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from watchdogd import __version__
from watchdogd.config import Config
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sources import Factory, Sources
from watchdogd.times import format_duration

if TYPE_CHECKING:
    from watchdogd.report import PassReport

__all__ = [
    "Health",
    "InstrumentedSources",
    "Metrics",
    "MetricsServer",
    "parse_listen",
]

log = structlog.get_logger("watchdogd.metrics")

#: A pass is "not completing" after this many of its check's intervals.
STALE_INTERVALS = 3
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Health:
    """Whether passes keep completing: the rule behind ``/healthz`` and the watchdog.

    ``expect(check, interval)`` declares a scheduled check. A check is stale when
    neither a completed pass nor the start of the daemon lies within
    ``STALE_INTERVALS`` of its intervals; a pass is stuck when it has run longer
    than ``stuck_after`` seconds. Times are monotonic, so a wall-clock jump
    neither hides nor invents a problem.
    """

    def __init__(self, *, stuck_after: float, clock: Callable[[], float] = time.monotonic,
                 stale_intervals: int = STALE_INTERVALS) -> None:
        self.stuck_after = stuck_after
        self.stale_intervals = stale_intervals
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self._intervals: dict[str, float] = {}
        self._completed: dict[str, float] = {}
        self._running: dict[str, float] = {}
        self._failed: set[str] = set()

    def expect(self, check: str, interval: float) -> None:
        """Declare that ``check`` runs every ``interval`` seconds."""
        with self._lock:
            self._intervals[check] = interval

    def forget(self, check: str) -> None:
        """``check`` is no longer scheduled (a reloaded configuration dropped it)."""
        with self._lock:
            for table in (self._intervals, self._completed, self._running):
                table.pop(check, None)
            self._failed.discard(check)

    def pass_started(self, check: str) -> None:
        """A pass of ``check`` began."""
        with self._lock:
            self._running[check] = self.clock()

    def pass_finished(self, check: str, completed: bool) -> None:
        """A pass of ``check`` ended; ``completed`` is False when it raised."""
        with self._lock:
            self._running.pop(check, None)
            if completed:
                self._completed[check] = self.clock()
                self._failed.discard(check)
            else:
                self._failed.add(check)

    def problems(self) -> list[str]:
        """Why the daemon is unhealthy; empty when it is healthy."""
        now = self.clock()
        out = []
        with self._lock:
            for check, interval in sorted(self._intervals.items()):
                since = self._completed.get(check, self.started)
                limit = self.stale_intervals * interval
                if now - since > limit:
                    what = "since start" if check not in self._completed else "in"
                    out.append(f"{check}: no pass completed {what} {format_duration(now - since)} "
                               f"({self.stale_intervals} intervals are {format_duration(limit)})")
            for check, began in sorted(self._running.items()):
                if now - began > self.stuck_after:
                    out.append(f"{check}: a pass has been running for "
                               f"{format_duration(now - began)}")
        return out

    def healthy(self) -> bool:
        """True when :meth:`problems` is empty."""
        return not self.problems()

    def failing(self) -> list[str]:
        """Checks whose latest pass raised instead of completing."""
        with self._lock:
            return sorted(self._failed)

    def alive(self) -> bool:
        """The watchdog's rule: healthy, and no check's latest pass failed."""
        return self.healthy() and not self.failing()



class Metrics(Collector):
    """The process's metrics, in a registry of its own (tests make as many as they like)."""

    def __init__(self, health: Health | None = None,
                 leader: Callable[[], bool] = lambda: True,
                 wall: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = health
        self.leader = leader
        self.wall = wall
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], CountOf[tuple[str, str]]] = {}
        self._last_success: dict[tuple[str, str], float] = {}
        self.pass_duration = Histogram(
            "watchdogd_pass_duration_seconds", "Duration of one check target's part of a pass.",
            ["check", "target"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.passes = Counter(
            "watchdogd_passes", "Check target passes by outcome (ok, findings, error).",
            ["check", "target", "status"], registry=self.registry)
        self.pass_failures = Counter(
            "watchdogd_pass_failures", "Passes that raised instead of completing.",
            ["check"], registry=self.registry)
        self.actions = Counter(
            "watchdogd_actions", "Planned actions by what happened to them.",
            ["action", "status"], registry=self.registry)
        self.source_errors = Counter(
            "watchdogd_source_errors", "Source calls that failed.",
            ["source", "target"], registry=self.registry)
        self.registry.register(self)

    # -- feeding -------------------------------------------------------------------------

    def observe(self, report: PassReport) -> None:
        """Account for one pass (an ``Engine.listeners`` callback)."""
        finished = report.finished_at.timestamp()
        with self._lock:
            for check in report.checks:
                key = (check.check, check.target)
                self.pass_duration.labels(check.check, check.target).observe(check.duration_s)
                self.passes.labels(check.check, check.target, check.status).inc()
                for item in check.findings:
                    action = item.tracked.finding.action
                    if action is not None and item.action_status is not None:
                        self.actions.labels(action.name, str(item.action_status)).inc()
                if check.status == "error":
                    # Nothing is known about this target now: keep the last open findings,
                    # exactly as the store does (an incomplete pass resolves nothing).
                    continue
                self._open[key] = CountOf(
                    (f.tracked.finding.kind, f.tracked.finding.severity.label)
                    for f in check.findings)
                self._last_success[key] = finished

    def pass_failed(self, check: str) -> None:
        """A pass of ``check`` raised."""
        self.pass_failures.labels(check).inc()

    def source_error(self, source: str, target: str) -> None:
        """A source call failed."""
        self.source_errors.labels(source, target).inc()

    # -- the collector part: gauges computed at scrape time ----------------------------------

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe up front: the gauges' label sets change with the world."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The gauges, from the latest reports."""
        findings = GaugeMetricFamily(
            "watchdogd_findings_open", "Open findings by kind and severity.",
            labels=["check", "target", "kind", "severity"])
        success = GaugeMetricFamily(
            "watchdogd_last_success_timestamp_seconds",
            "Unix time of the last completed pass of a check target.",
            labels=["check", "target"])
        with self._lock:
            for (check, target), counts in sorted(self._open.items()):
                for (kind, severity), n in sorted(counts.items()):
                    findings.add_metric([check, target, kind, severity], n)
            for (check, target), when in sorted(self._last_success.items()):
                success.add_metric([check, target], when)
        yield findings
        yield success
        try:
            leading = self.leader()
        except Exception:  # a broken gate must not break the scrape
            leading = False
        yield GaugeMetricFamily("watchdogd_leader",
                                "1 when this replica remediates and notifies.",
                                value=1 if leading else 0)
        if self.health is not None:
            yield GaugeMetricFamily("watchdogd_healthy", "1 when /healthz answers 200.",
                                    value=1 if self.health.healthy() else 0)
        info = GaugeMetricFamily("watchdogd_build_info", "The running version.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, honouring ``Accept``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# -- counting source errors ---------------------------------------------------------------


class InstrumentedSources(Sources):
    """Sources whose adapters count every failed call in :class:`Metrics`.

    The engine keeps only the text of a source error in its report; wrapping the
    adapters counts them by source and target, whether they happened while
    collecting or while acting. ``PreconditionFailed`` is not an error of the
    source (the world changed) and is not counted.
    """

    def __init__(self, config: Config, metrics: Metrics,
                 factories: dict[str, Factory] | None = None) -> None:
        super().__init__(config, factories)
        self.metrics = metrics

    def adapter(self, source: str, target: str) -> Any:
        """The adapter, wrapped so that failed calls are counted."""
        try:
            adapter = super().adapter(source, target)
        except SourceError:
            self.metrics.source_error(source, target)
            raise
        return _Counted(adapter, source, target, self.metrics)


class _Counted:
    """A transparent proxy that counts exceptions raised by an adapter's methods."""

    def __init__(self, adapter: Any, source: str, target: str, metrics: Metrics) -> None:
        self._adapter = adapter
        self._source = source
        self._target = target
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._adapter, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except PreconditionFailed:
                raise
            except Exception:
                self._metrics.source_error(self._source, self._target)
                raise

        return call


# -- the HTTP endpoint ---------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (localhost) -> (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"daemon.metrics_listen: expected host:port, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"daemon.metrics_listen: port {port} out of range")
    host = host.strip("[]") or "127.0.0.1"
    return host, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "watchdogd"
    protocol_version = "HTTP/1.1"
    metrics: Metrics  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""

    def do_GET(self) -> None:
        """``/metrics`` and ``/healthz``."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.metrics.exposition(self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path in ("/healthz", "/livez"):
            health = self.metrics.health
            problems = health.problems() if health is not None else []
            if problems:
                self._send(503, ("unhealthy\n" + "\n".join(problems) + "\n").encode(),
                           "text/plain; charset=utf-8")
            else:
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n",
                       "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP in a background thread."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        self.metrics = metrics
        self.host, self.port = parse_listen(listen)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve; return the bound (host, port). Raises OSError if it cannot bind."""
        handler = type("Handler", (_Handler,), {"metrics": self.metrics})
        server_class = _Server6 if _is_v6(self.host) else _Server
        self._server = server_class((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics listening", address=f"{self.host}:{self.port}",
                 paths=["/metrics", "/healthz"])
        return self.host, self.port

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _is_v6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
