"""``watchdogd run``: the scheduler, signals, and the leader gate.

APScheduler 3's BlockingScheduler runs one job per check at the check's
interval. Jobs run one at a time (a single worker thread): passes never overlap,
so budgets and the audit log stay simple, and the collect stage inside a pass
is concurrent anyway. SIGTERM lets the running pass finish, then exits 0.

:func:`supervise` adds what runs around the scheduler in production: systemd
notifications (``READY=1`` once the first pass is scheduled, ``WATCHDOG=1``
while passes keep completing, ``STOPPING=1``), the ``/metrics`` and
``/healthz`` endpoint, and the Lease elector whose ``is_leader`` is the
engine's ``acting`` gate. Each is optional, so tests can run any subset.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from watchdogd.config import Config
from watchdogd.engine import Engine, PassReport

if TYPE_CHECKING:
    from watchdogd.leader import LeaderElector
    from watchdogd.metrics import Health, Metrics, MetricsServer
    from watchdogd.sdnotify import SystemdNotifier

__all__ = ["Daemon", "supervise"]

EXIT_CONFIG = 78

#: seconds beyond ``pass_timeout`` that a stop may take (the Lease release, the log)
SHUTDOWN_GRACE = 15.0
#: exit code when a stop had to abandon a pass that ignored its deadline (EX_TEMPFAIL)
EXIT_STOP_TIMEOUT = 75

log = structlog.get_logger("watchdogd.daemon")


class Daemon:
    """Schedules passes of an engine until told to stop."""

    def __init__(self, config: Config, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.scheduler = BlockingScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)}, timezone="UTC")
        self.stopping = threading.Event()
        self.on_ready: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []
        self.on_pass_start: list[Callable[[str], None]] = []
        self.on_pass: list[Callable[[str, PassReport | None], None]] = []
        self.scheduled: dict[str, float] = {}
        self._stop_timer: threading.Timer | None = None
        self._shutdown: threading.Thread | None = None

    def schedule(self) -> list[str]:
        """Add one job per enabled check, the first run now; return the check names."""
        names = []
        for name in self.engine.registry:
            check = self.config.check(name)
            if not check.enabled or not self.engine.plan([name]):
                continue
            interval = check.interval.total_seconds()
            self.scheduler.add_job(
                self._run_check, "interval", args=[name], seconds=interval, id=f"check-{name}",
                name=name, next_run_time=_now(), coalesce=True, max_instances=1,
                # The default grace of 1 s drops passes after a slow one; a pass
                # that is late by up to an interval should still run.
                misfire_grace_time=max(1, int(interval)),
            )
            names.append(name)
            self.scheduled[name] = interval
        notifier = self.engine.notifier
        if notifier is not None:
            retry = self.config.notify.retry_after.total_seconds()
            self.scheduler.add_job(self._deliver, "interval", seconds=retry, id="outbox",
                                   coalesce=True, max_instances=1,
                                   misfire_grace_time=max(1, int(retry)))
        return names

    def _run_check(self, name: str) -> None:
        if self.stopping.is_set():
            return
        for started in self.on_pass_start:
            started(name)
        try:
            report = self.engine.run_pass(only=[name])
        except Exception as exc:  # the store or a bug: log, keep the daemon alive
            log.error("pass failed", check=name, error=f"{type(exc).__name__}: {exc}")
            report = None
        if report is not None:
            log.info("pass finished", check=name, findings=report.findings,
                     errors=report.errors, actions_done=report.actions_done,
                     duration_s=round((report.finished_at - report.started_at)
                                      .total_seconds(), 3))
        for callback in self.on_pass:
            try:
                callback(name, report)
            except Exception as exc:  # a hook must never take the scheduler down
                log.error("pass hook failed", check=name, error=f"{type(exc).__name__}: {exc}")

    def _deliver(self) -> None:
        notifier = self.engine.notifier
        if notifier is None or not self.engine.acting():
            return
        try:
            # The outbox has one sender: the holder of the store's lock.
            with self.engine.store.pass_lock() as hold:
                if hold.held:
                    notifier.deliver(self.engine.store, self.engine.clock())
        except Exception as exc:
            log.error("outbox delivery failed", error=f"{type(exc).__name__}: {exc}")

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Stop scheduling; the running pass finishes first."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("stopping", signal=signum)
        for callback in self.on_stopping:
            callback()
        # From a signal handler the scheduler cannot wait for its own thread;
        # shut down from a helper thread and let start() return.
        self._shutdown = threading.Thread(target=self.scheduler.shutdown,
                                          kwargs={"wait": True}, daemon=True)
        self._shutdown.start()
        self._exit_by_deadline()

    def _exit_by_deadline(self) -> None:
        """End the process if the running pass outlives its own deadline after a stop.

        Every call of a pass ends by ``pass_timeout`` (bounded.py), so this only fires
        on a bug; then the daemon still ends within the bound the README documents.
        """
        bound = self.config.daemon.pass_timeout.total_seconds() + SHUTDOWN_GRACE

        def expire() -> None:
            log.error("the running pass did not end after SIGTERM; exiting without it",
                      waited_s=bound)
            os._exit(EXIT_STOP_TIMEOUT)

        self._stop_timer = threading.Timer(bound, expire)
        self._stop_timer.daemon = True
        self._stop_timer.start()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        names = self.schedule()
        if not names:
            log.error("nothing to do: no enabled check has a target in the configuration")
            return 78
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("started", checks=names, dry_run=self.engine.dry_run)
        for callback in self.on_ready:
            callback()
        self.scheduler.start()
        if self._shutdown is not None:
            self._shutdown.join()  # the running pass ends (by its deadline)
        if self._stop_timer is not None:
            self._stop_timer.cancel()  # the stop finished in time
        log.info("stopped")
        return 0


def supervise(
    daemon: Daemon,
    *,
    systemd: SystemdNotifier | None = None,
    watchdog_period: float | None = None,
    health: Health | None = None,
    metrics: Metrics | None = None,
    server: MetricsServer | None = None,
    elector: LeaderElector | None = None,
) -> int:
    """Run ``daemon`` with systemd notification, metrics, health and leader election.

    Start order: the metrics endpoint (a bad ``metrics_listen`` is a configuration
    error, exit 78, before anything else happens), the elector (its first round runs
    at once, so the first pass usually already knows whether it may act), then the
    scheduler. ``READY=1`` goes out when the first passes are scheduled, and the
    watchdog starts pinging then. On SIGTERM: ``STOPPING=1``, the elector resigns
    (no new actions or notifications), the running pass finishes, and only then is
    the Lease released, so two replicas never act at once.
    """
    from watchdogd.sdnotify import Watchdog  # noqa: PLC0415

    if health is not None:
        def track(name: str, report: PassReport | None) -> None:
            health.pass_finished(name, report is not None)

        daemon.on_pass_start.append(health.pass_started)
        daemon.on_pass.append(track)
    if metrics is not None:
        daemon.engine.listeners.append(metrics.observe)
        def count_failure(name: str, report: PassReport | None) -> None:
            if report is None:
                metrics.pass_failed(name)

        daemon.on_pass.append(count_failure)
    if systemd is not None and systemd.enabled:
        def status(name: str, report: PassReport | None) -> None:
            systemd.status(_status_line(name, report))

        daemon.on_pass.append(status)

    pinger: Watchdog | None = None

    def ready() -> None:
        nonlocal pinger
        if health is not None:
            for name, interval in daemon.scheduled.items():
                health.expect(name, interval)
        if systemd is None:
            return
        systemd.ready(f"scheduled {', '.join(daemon.scheduled)}")
        if watchdog_period is not None:
            alive = health.alive if health is not None else (lambda: True)
            pinger = Watchdog(systemd, watchdog_period, alive)
            pinger.start()

    def stopping() -> None:
        if systemd is not None:
            systemd.stopping("finishing the running pass")
        if elector is not None:
            elector.resign()

    daemon.on_ready.append(ready)
    daemon.on_stopping.append(stopping)

    if server is not None:
        try:
            server.start()
        except OSError as exc:
            log.error("cannot serve metrics", listen=f"{server.host}:{server.port}",
                      error=exc.strerror or str(exc), setting="daemon.metrics_listen")
            return EXIT_CONFIG
    if elector is not None:
        elector.start()
    try:
        return daemon.run()
    finally:
        if pinger is not None:
            pinger.stop()
        if elector is not None:
            elector.stop(release=True)
        if server is not None:
            server.stop()


def _status_line(name: str, report: PassReport | None) -> str:
    if report is None:
        return f"{name}: the last pass failed (see the log)"
    return (f"{name}: {report.findings} finding(s), {report.actions_done} action(s) done, "
            f"{report.errors} error(s) at {report.finished_at:%H:%M:%S}Z")


def _now() -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC) + timedelta(seconds=0)
