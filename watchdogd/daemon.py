"""``watchdogd run``: the scheduler, signals, and the leader gate.

APScheduler 3's BlockingScheduler runs one job per check at the check's
interval. Jobs run one at a time (a single worker thread): passes never overlap,
so budgets and the audit log stay simple, and the collect stage inside a pass
is concurrent anyway. SIGTERM lets the running pass finish, then exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from watchdogd.config import Config
from watchdogd.engine import Engine, PassReport

__all__ = ["Daemon"]

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
        self.on_pass: list[Callable[[str, PassReport | None], None]] = []

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
            callback(name, report)
        return

    def _deliver(self) -> None:
        notifier = self.engine.notifier
        if notifier is None or not self.engine.acting():
            return
        try:
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
        threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True},
                         daemon=True).start()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        for interrupted in self.engine.recover():
            log.warning("interrupted action will be re-confirmed", finding=interrupted)
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
        log.info("stopped")
        return 0


def _now() -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC) + timedelta(seconds=0)
