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
``watchdogd_findings_oldest_open_timestamp_seconds``
                                               Unix time the oldest open finding was first
                                               seen, per ``check``, ``target``, ``severity``
``watchdogd_check_interval_seconds``           each scheduled check's ``interval``, per
                                               ``check`` (alert rules compare ages with it)
``watchdogd_outbox_notices``                   notices waiting in the outbox per ``state``
                                               (``queued``: not yet delivered, ``set_aside``:
                                               given up on, kept for a human)
``watchdogd_leader``                           1 when this replica acts (always 1 without
                                               leader election; absent from a one-shot run's
                                               export)
``watchdogd_healthy``                          1 when ``/healthz`` answers 200
=============================================  ===============================================

A one-shot ``watchdogd check`` (a CronJob, a systemd timer) has no endpoint to scrape: with
``[daemon] metrics_textfile`` and/or ``pushgateway_url`` it writes the same metrics after its
pass (:func:`export_one_shot`), the open findings and last successes read from the state
store, so a target that failed in this run keeps its last success time instead of vanishing.

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
from watchdogd.config import Config, DaemonConfig
from watchdogd.model import PreconditionFailed, SourceError
from watchdogd.sources import Factory, Sources
from watchdogd.text import safe_text
from watchdogd.times import format_duration

if TYPE_CHECKING:
    from watchdogd.report import PassReport

__all__ = [
    "Health",
    "InstrumentedSources",
    "Metrics",
    "MetricsServer",
    "export_one_shot",
    "parse_listen",
    "serve_in_thread",
    "shut_down",
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

    def intervals(self) -> dict[str, float]:
        """The scheduled checks and their intervals in seconds."""
        with self._lock:
            return dict(self._intervals)

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
        #: (check, target) -> severity -> Unix time the oldest open finding was first seen
        self._oldest: dict[tuple[str, str], dict[str, float]] = {}
        self._last_success: dict[tuple[str, str], float] = {}
        #: check -> interval (seconds), for a process without a Health (a one-shot export)
        self.intervals: dict[str, float] = {}
        self._outbox: dict[str, int] | None = None
        #: False for a one-shot run's export: "the replica that acts" means nothing there
        self.export_leader = True
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
                    # exactly as the store does (an incomplete pass resolves nothing), and
                    # show what the engine tracks for the failure itself (check-failing,
                    # view-implausible) in place of its previous count.
                    kinds = {f.tracked.finding.kind for f in check.findings}
                    kept = CountOf({item: n for item, n in self._open.get(key, {}).items()
                                    if item[0] not in kinds})
                    kept.update((f.tracked.finding.kind, f.tracked.finding.severity.label)
                                for f in check.findings)
                    self._open[key] = kept
                    continue
                self._open[key] = CountOf(
                    (f.tracked.finding.kind, f.tracked.finding.severity.label)
                    for f in check.findings)
                self._oldest[key] = _oldest(
                    (f.tracked.finding.severity.label, f.tracked.first_seen.timestamp())
                    for f in check.findings)
                self._last_success[key] = finished

    def observe_open(self, findings: Iterable[dict[str, Any]],
                     last_success: dict[tuple[str, str], float]) -> None:
        """Take the open findings and last successes as the state store has them.

        A one-shot run's export uses this instead of its own report, which knows nothing
        of the targets it did not run or that failed in it.
        """
        open_: dict[tuple[str, str], CountOf[tuple[str, str]]] = {}
        firsts: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for row in findings:
            key = (row["check"], row["target"])
            open_.setdefault(key, CountOf())[(row["kind"], row["severity"])] += 1
            firsts.setdefault(key, []).append((row["severity"], row["first_seen"].timestamp()))
        with self._lock:
            self._open = open_
            self._oldest = {key: _oldest(values) for key, values in firsts.items()}
            self._last_success = dict(last_success)

    def observe_outbox(self, counts: dict[str, int]) -> None:
        """How many notices the outbox holds by state (``Store.outbox_counts``)."""
        with self._lock:
            self._outbox = dict(counts)

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
        oldest = GaugeMetricFamily(
            "watchdogd_findings_oldest_open_timestamp_seconds",
            "Unix time the oldest open finding of a check target was first seen.",
            labels=["check", "target", "severity"])
        intervals = GaugeMetricFamily(
            "watchdogd_check_interval_seconds", "The interval of each scheduled check.",
            labels=["check"])
        outbox = GaugeMetricFamily(
            "watchdogd_outbox_notices",
            "Notices in the outbox: queued (not delivered yet) or set aside (given up).",
            labels=["state"])
        scheduled = self.health.intervals() if self.health is not None else self.intervals
        with self._lock:
            for (check, target), counts in sorted(self._open.items()):
                for (kind, severity), n in sorted(counts.items()):
                    findings.add_metric([check, target, kind, severity], n)
            for (check, target), firsts in sorted(self._oldest.items()):
                for severity, when in sorted(firsts.items()):
                    oldest.add_metric([check, target, severity], when)
            for (check, target), when in sorted(self._last_success.items()):
                success.add_metric([check, target], when)
            if self._outbox is not None:
                for state in ("queued", "set_aside"):
                    outbox.add_metric([state], self._outbox.get(state, 0))
        for check, interval in sorted(scheduled.items()):
            intervals.add_metric([check], interval)
        yield findings
        yield oldest
        yield success
        yield intervals
        yield outbox
        if self.export_leader:
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


def _oldest(values: Iterable[tuple[str, float]]) -> dict[str, float]:
    """severity -> the earliest time among ``(severity, time)`` pairs."""
    oldest: dict[str, float] = {}
    for severity, when in values:
        oldest[severity] = min(when, oldest.get(severity, when))
    return oldest


# -- a one-shot run's metrics ---------------------------------------------------------------


def export_one_shot(metrics: Metrics, daemon: DaemonConfig) -> list[str]:
    """Write a one-shot run's metrics to the textfile and/or the Pushgateway it names.

    The textfile (node_exporter's textfile collector, or any file a scraper reads) is
    written to a temporary name and renamed, so a scrape never sees half a file. The push
    replaces the group ``job`` (``pushgateway_job``) on the gateway; it runs in a thread
    joined for at most ``pushgateway_timeout``, so a gateway that trickles cannot hold the
    run. Returns the problems, one line each (the run's own outcome does not depend on
    them; the caller logs them).
    """
    problems = []
    if daemon.metrics_textfile:
        from prometheus_client import write_to_textfile  # noqa: PLC0415

        try:
            write_to_textfile(daemon.metrics_textfile, metrics.registry)
        except OSError as exc:
            problems.append(f"daemon.metrics_textfile: {daemon.metrics_textfile}: "
                            f"{exc.strerror or exc}")
    if daemon.pushgateway_url:
        problem = _push(metrics, daemon.pushgateway_url, daemon.pushgateway_job,
                        daemon.pushgateway_timeout.total_seconds())
        if problem:
            problems.append(f"daemon.pushgateway_url: {problem}")
    return problems


def _push(metrics: Metrics, url: str, job: str, timeout: float) -> str | None:
    from prometheus_client import push_to_gateway  # noqa: PLC0415

    outcome: list[str | None] = []

    def push() -> None:
        try:
            push_to_gateway(url, job=job, registry=metrics.registry, timeout=timeout)
            outcome.append(None)
        except Exception as exc:  # urllib's errors name the URL, never a credential of ours
            outcome.append(safe_text(f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=push, name="pushgateway", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer within {format_duration(timeout)} (for the whole push)"
    return outcome[0]


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


def parse_listen(value: str, setting: str = "daemon.metrics_listen") -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (localhost) -> (host, port).

    A ValueError names ``setting``, the key the address came from.
    """
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{setting}: expected host:port, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{setting}: port {port} out of range")
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
        self._thread = serve_in_thread(self._server, "metrics-http")
        log.info("metrics listening", address=f"{self.host}:{self.port}",
                 paths=["/metrics", "/healthz"])
        return self.host, self.port

    def stop(self) -> None:
        """Stop serving."""
        shut_down(self._server, self._thread)
        self._server = self._thread = None


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Serve ``server`` on a daemon thread of its own (the endpoints of ``watchdogd run``)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=name, daemon=True)
    thread.start()
    return thread


def shut_down(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    """Stop what :func:`serve_in_thread` started (either may be None: nothing to stop)."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)


def _is_v6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
