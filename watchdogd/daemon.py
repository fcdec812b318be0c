"""``watchdogd run``: the scheduler, signals, and the leader gate.

APScheduler 3's BlockingScheduler runs one job per check at the check's
interval. Jobs run one at a time (a single worker thread): passes never overlap,
so budgets and the audit log stay simple, and the collect stage inside a pass
is concurrent anyway. SIGTERM lets the running pass finish, then exits 0.

SIGHUP reloads the configuration: the file is validated at once (as ``watchdogd config
check`` does), off the scheduler's thread; a bad one is refused with one log line and the
running configuration stays. A good one is queued as a job on the single worker, so it
replaces the engine's configuration, sources and notifier, and the schedule, between two
passes, never in the middle of one. ``[state]``, ``[daemon]`` and ``[listener]`` belong to
the process (the store holds the pass lock, the elector the Lease, the metrics endpoint and
the acknowledge listener their ports, the links their key): a reload
keeps them, logs that they changed, and they take effect at the next start.

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
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from watchdogd.config import Config
from watchdogd.engine import Engine
from watchdogd.report import PassReport

if TYPE_CHECKING:
    from watchdogd.leader import LeaderElector
    from watchdogd.listener import AckListener
    from watchdogd.metrics import Health, Metrics, MetricsServer
    from watchdogd.notify import Notifier
    from watchdogd.sdnotify import SystemdNotifier
    from watchdogd.web import WebServer

__all__ = ["RESTART_SECTIONS", "Daemon", "Reload", "ReloadRefused", "supervise"]

EXIT_CONFIG = 78

#: seconds beyond ``pass_timeout`` that a stop may take (the Lease release, the log)
SHUTDOWN_GRACE = 15.0
#: exit code when a stop had to abandon a pass that ignored its deadline (EX_TEMPFAIL)
EXIT_STOP_TIMEOUT = 75
#: sections a reload keeps: they belong to the process, and take effect at the next start
RESTART_SECTIONS = ("state", "daemon", "listener", "digest", "web")

log = structlog.get_logger("watchdogd.daemon")


@dataclass(frozen=True)
class Reload:
    """A validated new configuration with what is built from it, waiting for a pass boundary."""

    config: Config
    sources: Any
    notifier: Notifier | None
    dry_run: bool


class ReloadRefused(Exception):
    """The new configuration cannot be used; the message is one line naming the problem."""


class Daemon:
    """Schedules passes of an engine until told to stop; reloads its configuration on SIGHUP."""

    def __init__(self, config: Config, engine: Engine, *,
                 reloader: Callable[[], Reload] | None = None,
                 digest: Notifier | None = None) -> None:
        self.config = config
        self.engine = engine
        #: the weekly digest's destinations; None: no digest (``[digest] enabled = false``)
        self.digest = digest
        #: reads and validates the configuration again; raises ReloadRefused
        self.reloader = reloader
        self.scheduler = BlockingScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)}, timezone="UTC")
        self.stopping = threading.Event()
        self.on_ready: list[Callable[[], None]] = []
        self.on_stopping: list[Callable[[], None]] = []
        self.on_pass_start: list[Callable[[str], None]] = []
        self.on_pass: list[Callable[[str, PassReport | None], None]] = []
        #: called on the worker after a reload was applied, with the schedule before it
        self.on_reload: list[Callable[[dict[str, float]], None]] = []
        self.scheduled: dict[str, float] = {}
        self._stop_timer: threading.Timer | None = None
        self._shutdown: threading.Thread | None = None
        self._reload_lock = threading.Lock()

    def _wanted(self) -> dict[str, float]:
        """The checks the engine's configuration schedules (enabled, with a target)."""
        wanted = {}
        for name in self.engine.registry:
            check = self.engine.settings[name]
            if check.enabled and self.engine.plan([name]):
                wanted[name] = check.interval.total_seconds()
        return wanted

    def _add_check_job(self, name: str, interval: float) -> None:
        self.scheduler.add_job(
            self._run_check, "interval", args=[name], seconds=interval, id=f"check-{name}",
            name=name, next_run_time=_now(), coalesce=True, max_instances=1,
            # The default grace of 1 s drops passes after a slow one; a pass
            # that is late by up to an interval should still run.
            misfire_grace_time=max(1, int(interval)), replace_existing=True,
        )

    def _schedule_outbox(self) -> None:
        if self.engine.notifier is None and self.digest is None:
            if self.scheduler.get_job("outbox") is not None:
                self.scheduler.remove_job("outbox")
            return
        retry = self.config.notify.retry_after.total_seconds()
        self.scheduler.add_job(self._deliver, "interval", seconds=retry, id="outbox",
                               coalesce=True, max_instances=1,
                               misfire_grace_time=max(1, int(retry)), replace_existing=True)

    def schedule(self) -> list[str]:
        """Add one job per enabled check, the first run now; return the check names."""
        self.scheduled = self._wanted()
        for name, interval in self.scheduled.items():
            self._add_check_job(name, interval)
        self._schedule_outbox()
        self._schedule_digest()
        return list(self.scheduled)

    def _schedule_digest(self) -> None:
        """The weekly digest at ``[digest] schedule``, and once at the start.

        The run at the start catches up a digest whose time passed while no replica ran;
        the store's once-a-week mark keeps it from going out twice.
        """
        if self.digest is None:
            return
        from zoneinfo import ZoneInfo  # noqa: PLC0415

        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415

        from watchdogd.config import parse_weekly  # noqa: PLC0415

        day, hour, minute = parse_weekly(self.config.digest.schedule)
        zone = ZoneInfo(self.config.digest.timezone)
        self.scheduler.add_job(
            self._send_digest, CronTrigger(day_of_week=day, hour=hour, minute=minute,
                                           timezone=zone),
            id="digest", next_run_time=_now(), coalesce=True, max_instances=1,
            misfire_grace_time=3600, replace_existing=True)

    def _send_digest(self) -> None:
        """Queue and deliver this week's digest if it is due and no replica has sent it."""
        if self.digest is None or not self.engine.acting():
            return  # only the acting replica sends; the others would queue it twice
        from watchdogd.digest import due, make_digest, send_digest  # noqa: PLC0415

        now = self.engine.clock()
        settings = self.config.digest
        try:
            if not due(now, settings.schedule, settings.timezone):
                return  # the start-up run before this week's time: the cron job sends it
            with self.engine.store.pass_lock() as hold:
                if not hold.held:
                    return
                digest = make_digest(self.engine.store, now, tz=_zone(settings.timezone),
                                     prefix=self.config.notify.title_prefix, top=settings.top)
                queued, _ = send_digest(self.engine.store, self.digest, digest, now)
            if queued:
                log.info("weekly digest queued", week=digest.week, opened=digest.opened,
                         resolved=digest.resolved, actions=digest.actions)
        except Exception as exc:  # the store or a bug: the passes go on
            log.error("weekly digest failed", error=f"{type(exc).__name__}: {exc}")

    # -- reload (SIGHUP) -------------------------------------------------------------------

    def request_reload(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """SIGHUP: validate the configuration again, off the signal handler's frame."""
        if self.stopping.is_set():
            return
        log.info("reload requested", signal=signum)
        # The handler interrupts the scheduler's own thread, which may hold the
        # scheduler's lock: reading files and adding jobs happen in a helper thread.
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> bool:
        """Validate the configuration now and queue it for the next pass boundary.

        False, with one log line naming the problem, when the new configuration is refused;
        the running one then stays in force.
        """
        if self.reloader is None:
            log.warning("reload ignored: this daemon was started without a configuration file "
                        "to read again")
            return False
        with self._reload_lock:
            try:
                new = self.reloader()
            except ReloadRefused as exc:
                log.error("reload refused; the running configuration stays", problem=str(exc))
                return False
            except Exception as exc:  # a bug while building: the daemon keeps running as it was
                log.error("reload refused; the running configuration stays",
                          problem=f"{type(exc).__name__}: {exc}")
                return False
            if self.stopping.is_set():
                return False
            # The only worker runs passes one at a time: a job queued on it runs after the
            # pass in progress and before the next one.
            self.scheduler.add_job(self._apply_reload, "date", args=[new], id="reload",
                                   run_date=_now(), misfire_grace_time=None,
                                   replace_existing=True)
            return True

    def _apply_reload(self, new: Reload) -> None:
        if self.stopping.is_set():
            return
        old = self.config
        restart = [name for name in RESTART_SECTIONS
                   if getattr(new.config, name) != getattr(old, name)]
        config = new.config.model_copy(update={name: getattr(old, name)
                                               for name in RESTART_SECTIONS})
        engine = self.engine
        previous = (engine.config, engine.sources, engine.notifier, engine.dry_run)
        self.config = config
        engine.config, engine.sources, engine.notifier, engine.dry_run = (
            config, new.sources, new.notifier, new.dry_run)
        wanted = self._wanted()
        if not wanted:
            # As at the start, a configuration without anything to check is refused.
            self.config = old
            engine.config, engine.sources, engine.notifier, engine.dry_run = previous
            _close(new.sources)
            log.error("reload refused; the running configuration stays",
                      problem="nothing to do: no enabled check has a target in the new "
                              "configuration")
            return
        _close(previous[1])
        before = dict(self.scheduled)
        for name in set(before) - set(wanted):
            job = self.scheduler.get_job(f"check-{name}")
            if job is not None:
                job.remove()
        for name, interval in wanted.items():
            if before.get(name) != interval:
                self._add_check_job(name, interval)
        self.scheduled = wanted
        self._schedule_outbox()
        log.info("configuration reloaded", checks=list(wanted), dry_run=self.engine.dry_run)
        if restart:
            log.warning("changed sections keep their old values until a restart",
                        sections=restart)
        for callback in self.on_reload:
            try:
                callback(before)
            except Exception as exc:  # a hook must never take the scheduler down
                log.error("reload hook failed", error=f"{type(exc).__name__}: {exc}")

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
        notifiers = [n for n in (self.engine.notifier, self.digest) if n is not None]
        if not notifiers or not self.engine.acting():
            return
        try:
            # The outbox has one sender: the holder of the store's lock.
            with self.engine.store.pass_lock() as hold:
                if hold.held:
                    for notifier in notifiers:
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
        """Run until SIGTERM or SIGINT, reloading on SIGHUP; return the exit code."""
        names = self.schedule()
        if not names:
            log.error("nothing to do: no enabled check has a target in the configuration")
            return 78
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
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
    listener: AckListener | None = None,
    web: WebServer | None = None,
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

        def count_outbox(_report: PassReport) -> None:
            # After the pass's own delivery: what is still waiting for a receiver.
            try:
                metrics.observe_outbox(daemon.engine.store.outbox_counts())
            except Exception as exc:  # the store's trouble is the pass's to report
                log.warning("outbox not counted", error=f"{type(exc).__name__}: {exc}")

        daemon.engine.listeners.append(count_outbox)
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

    def reloaded(before: dict[str, float]) -> None:
        if health is not None:
            for name in set(before) - set(daemon.scheduled):
                health.forget(name)
            for name, interval in daemon.scheduled.items():
                health.expect(name, interval)
        if systemd is not None:
            systemd.status(f"reloaded; scheduled {', '.join(daemon.scheduled)}")

    daemon.on_ready.append(ready)
    daemon.on_stopping.append(stopping)
    daemon.on_reload.append(reloaded)

    # The HTTP endpoints, each on its configured address: one that cannot bind is a
    # configuration error (exit 78), and the ones already started are stopped again.
    endpoints = [(e, what, setting) for e, what, setting in (
        (server, "metrics", "daemon.metrics_listen"),
        (listener, "acknowledge links", "listener.listen"),
        (web, "the admin page", "web.listen")) if e is not None]
    started: list[Any] = []
    for endpoint, what, setting in endpoints:
        try:
            endpoint.start()
        except OSError as exc:
            log.error(f"cannot serve {what}", listen=f"{endpoint.host}:{endpoint.port}",
                      error=exc.strerror or str(exc), setting=setting)
            for other in reversed(started):
                other.stop()
            return EXIT_CONFIG
        started.append(endpoint)
    if elector is not None:
        elector.start()
    try:
        return daemon.run()
    finally:
        if pinger is not None:
            pinger.stop()
        if elector is not None:
            elector.stop(release=True)
        for endpoint in reversed(started):
            endpoint.stop()


def _close(sources: Any) -> None:
    try:
        sources.close()
    except Exception as exc:  # an adapter that fails to close must not stop the reload
        log.warning("closing sources failed", error=f"{type(exc).__name__}: {exc}")


def _status_line(name: str, report: PassReport | None) -> str:
    if report is None:
        return f"{name}: the last pass failed (see the log)"
    return (f"{name}: {report.findings} finding(s), {report.actions_done} action(s) done, "
            f"{report.errors} error(s) at {report.finished_at:%H:%M:%S}Z")


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    return ZoneInfo(name)


def _now() -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC) + timedelta(seconds=0)
