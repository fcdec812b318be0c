"""Telling people: apprise delivery from the outbox, with retries and order kept.

A pass only *queues* notices (one outbox row per destination); delivery runs
after it and again on a timer, so a dead Slack webhook never blocks a pass and
a notice survives a restart. Per destination, notices go out in the order they
were queued and a failed one holds back the ones after it, so "resolved" can
never arrive before "new".

Destinations are the entries of an apprise configuration (``notify.urls_file``
or ``WATCHDOGD_NOTIFY__URLS``). Their tags choose severities: an entry tagged
``critical`` gets critical notices only, ``warning`` gets warning and critical,
an entry with no severity tag gets everything. Notification URLs carry tokens,
so they are never logged: a destination is named by a short hash.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apprise
import structlog

from watchdogd.config import NotifyConfig
from watchdogd.model import ActionStatus, Severity
from watchdogd.store import Resolved, Store

if TYPE_CHECKING:
    from watchdogd.engine import CheckResult

__all__ = ["Destination", "Notifier", "NotifyConfigError"]

log = structlog.get_logger("watchdogd.notify")

# apprise logs the URLs it sends to; they hold tokens. Our own log lines say
# which destination (by hash) failed.
logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)

_NOTIFY_TYPE = {
    Severity.INFO: apprise.NotifyType.INFO,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
}
_ACTION_EVENTS = {ActionStatus.DONE, ActionStatus.FAILED, ActionStatus.SKIPPED}
MAX_BACKOFF_STEPS = 6


class NotifyConfigError(Exception):
    """The notification configuration cannot be read (the message names no URL)."""


class Destination:
    """One apprise entry and the lowest severity it wants."""

    def __init__(self, server: Any, timeout: float) -> None:
        # Keep the URL, not the plugin: a reused email plugin holds on to a
        # closed SMTP session and its next send stalls for seconds.
        self._url = server.url()
        self.timeout = timeout
        self.id = hashlib.sha256(self._url.encode()).hexdigest()[:12]
        tags = {str(t).lower() for t in (server.tags or ())}
        levels = [s for s in Severity if s.label in tags]
        self.min_severity = min(levels) if levels else Severity.INFO
        self.label = f"{server.service_name or server.protocol}#{self.id}"

    def send(self, title: str, body: str, severity: Severity) -> bool:
        """Deliver one message; False when apprise says it did not arrive."""
        sender = apprise.Apprise()
        sender.add(self._url)
        for plugin in sender:
            for attribute in ("socket_connect_timeout", "socket_read_timeout"):
                if hasattr(plugin, attribute):
                    setattr(plugin, attribute, self.timeout)
        return bool(sender.notify(title=title, body=body, notify_type=_NOTIFY_TYPE[severity]))


def load_destinations(config: NotifyConfig) -> list[Destination]:
    """Read the apprise configuration into destinations."""
    timeout = config.timeout.total_seconds()
    apprise_config = apprise.AppriseConfig()
    if config.urls is not None:
        # apprise reads URL lists from a "file"; the text only lives in memory
        # and in a private temp file that is deleted at once.
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=True) as handle:
            handle.write(config.urls.get_secret_value().replace(",", "\n"))
            handle.flush()
            apprise_config.add(handle.name)
            servers = list(apprise_config.services())
    elif config.urls_file is not None:
        path = Path(config.urls_file).expanduser()
        if not path.is_file():
            raise NotifyConfigError(f"notify.urls_file: {path} does not exist")
        apprise_config.add(str(path))
        servers = list(apprise_config.services())
    else:
        return []
    if not servers:
        raise NotifyConfigError("notify: no valid apprise URL found (check the URL syntax)")
    return [Destination(server, timeout) for server in servers]


class Notifier:
    """Turns a pass's changes into outbox rows and delivers the outbox."""

    def __init__(self, config: NotifyConfig, destinations: Sequence[Destination]) -> None:
        self.config = config
        self.destinations = {d.id: d for d in destinations}
        self.prefix = config.title_prefix

    @classmethod
    def from_config(cls, config: NotifyConfig) -> Notifier:
        """A notifier for the configured destinations."""
        return cls(config, load_destinations(config))

    def _rows(self, key: str, event: str, severity: Severity, title: str,
              body: str) -> list[dict[str, Any]]:
        return [
            {"finding_key": key, "event": event, "severity": severity, "title": title,
             "body": body, "destination": d.id}
            for d in self.destinations.values() if severity >= d.min_severity
        ]

    def notices(self, result: CheckResult, resolved: Sequence[Resolved],
                breaker: str | None) -> list[dict[str, Any]]:
        """The outbox rows for one check target's pass."""
        rows: list[dict[str, Any]] = []
        where = f"{result.check}/{result.target}"
        for entry in result.findings:
            finding = entry.tracked.finding
            if entry.tracked.event:
                word = {"new": "", "escalated": "escalated: ",
                        "reminder": "still open: "}[entry.tracked.event]
                title = (f"{self.prefix} [{finding.severity.label}] {word}{finding.kind} "
                         f"{finding.subject} ({where})")
                body = finding.message
                if finding.action is not None and entry.action_status:
                    body += f"\nAction {finding.action.name}: {entry.action_status}"
                    if entry.action_detail:
                        body += f" ({entry.action_detail})"
                rows += self._rows(finding.key, entry.tracked.event, finding.severity, title,
                                   body)
            if finding.action is not None and entry.notify_held:
                title = (f"{self.prefix} [critical] {finding.action.name} held: "
                         f"{finding.subject} ({where})")
                body = f"{finding.message}\n{entry.action_detail}"
                rows += self._rows(finding.key, "held", Severity.CRITICAL, title, body)
            if finding.action is not None and entry.action_status in _ACTION_EVENTS:
                severity = (Severity.WARNING if entry.action_status == ActionStatus.DONE
                            else Severity.CRITICAL)
                title = (f"{self.prefix} action {finding.action.name} {entry.action_status}: "
                         f"{finding.subject} ({where})")
                body = f"{finding.message}\nResult: {entry.action_detail}"
                rows += self._rows(finding.key, "action", severity, title, body)
        if self.config.send_resolved:
            for item in resolved:
                if not item.notified:
                    continue
                title = f"{self.prefix} [resolved] {item.kind} {item.subject} ({where})"
                rows += self._rows(item.key, "resolved", Severity.INFO, title,
                                   f"No longer seen: {item.message}")
        if breaker:
            title = f"{self.prefix} [critical] breaker open: no action taken ({where})"
            body = (f"{breaker}.\nwatchdogd acted on none of them. Something large changed "
                    "at once: look before enabling anything.")
            rows += self._rows(f"{where}/breaker", "breaker", Severity.CRITICAL, title, body)
        return rows

    def deliver(self, store: Store, now: datetime) -> tuple[int, int]:
        """Send what is due, in order per destination; return (delivered, failed)."""
        delivered = failed = 0
        for destination_id in store.destinations_with_pending():
            destination = self.destinations.get(destination_id)
            if destination is None:
                continue  # no longer configured: kept, never silently dropped
            for notice in store.pending_notices(destination_id, now):
                try:
                    ok = destination.send(notice.title, notice.body, notice.severity)
                    error = "" if ok else "delivery failed"
                except Exception as exc:  # a plugin bug must not stop the daemon
                    ok, error = False, type(exc).__name__
                if ok:
                    store.mark_delivered(notice.id, now)
                    delivered += 1
                    continue
                steps = min(notice.attempts, MAX_BACKOFF_STEPS)
                retry = now + self.config.retry_after * (2**steps)
                store.mark_failed(notice.id, error, retry)
                failed += 1
                log.warning("notification not delivered", destination=destination.label,
                            finding=notice.finding_key, notice=notice.event,
                            attempts=notice.attempts + 1, retry_at=retry.isoformat())
                break  # keep the order: nothing after it goes out first
        return delivered, failed


def retry_interval(config: NotifyConfig) -> timedelta:
    """How often the daemon retries the outbox between passes."""
    return config.retry_after
