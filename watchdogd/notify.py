"""Telling people: apprise delivery from the outbox, at least once, order kept per finding.

A pass only *queues* notices (one outbox row per destination); delivery runs
after it and again on a timer, so a dead Slack webhook never blocks a pass and
a notice survives a restart.

The guarantee is *at least once*, not exactly once. A notice is marked delivered
only when apprise says it arrived; otherwise it is tried again later:

* a refusal of the message itself (an HTTP 4xx answer such as 400, 413 or 422)
  sets the notice aside at once, with its error: sending it again cannot help;
* a refusal of the destination (401, 403, 404: a revoked token, a deleted
  webhook) is retried like a failure: the operator can fix it in time;
* a definite failure (connection refused, a 5xx answer, a plugin that raised)
  is retried after ``retry_after * 2**attempts``, capped at :data:`MAX_BACKOFF`;
* a timeout is *uncertain*: the receiver may have kept the message and answered
  too late. Sending again at once would stack duplicates on a slow receiver, so
  the next try waits the full cap (:data:`MAX_BACKOFF`): a receiver that keeps
  every message but always answers late gets it at most once an hour;
* after :data:`MAX_ATTEMPTS` tries a notice is set aside with its last error.

A set-aside notice stays in the outbox (``outbox()``, ``set_aside_at``,
``last_error``) and holds back nothing.

Order is kept *per finding and destination*: a notice waiting for its retry holds
back the later notices of the same finding (so "resolved" never arrives before
"new") and nothing else, so one finding's stuck notice never silences the others.

Destinations are the entries of an apprise configuration (``notify.urls_file``
or ``WATCHDOGD_NOTIFY__URLS``). Their tags choose severities: an entry tagged
``critical`` gets critical notices only, ``warning`` gets warning and critical,
an entry with no severity tag gets everything. Notification URLs carry tokens,
so they are never logged: a destination is named by a short hash.

Phone push services get per-notice URL parameters, computed at delivery from the row's
severity, event and finding key (the outbox keeps one row per destination, not its URL):
ntfy a priority, tags and up to two action buttons ("open report", and "acknowledge", a
signed single-use link to the listener of ``watchdogd run``, for open findings only);
Pushover a priority. They replace the URL's own; ntfy tags are merged.

Text from the outside world (subjects, messages, action results) is escaped with
:func:`watchdogd.text.safe_text` before it goes into a title or body.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import structlog

from watchdogd.acklinks import AckLinks
from watchdogd.config import NotifyConfig
from watchdogd.model import ActionStatus, Resolved, Severity
from watchdogd.sources.bounded import bound_requests, limits
from watchdogd.store import Notice, Store
from watchdogd.text import safe_text

if TYPE_CHECKING:
    from watchdogd.report import CheckResult

__all__ = ["MAX_ATTEMPTS", "MAX_BACKOFF", "Destination", "Notifier", "NotifyConfigError",
           "Outcome", "finding_tag"]

log = structlog.get_logger("watchdogd.notify")

#: apprise's NotifyType member for each severity (by name: apprise is imported only by a
#: process that has somewhere to send)
_NOTIFY_TYPE = {Severity.INFO: "INFO", Severity.WARNING: "WARNING", Severity.CRITICAL: "FAILURE"}
_ACTION_EVENTS = {ActionStatus.DONE, ActionStatus.FAILED, ActionStatus.SKIPPED}

#: The longest wait between two tries of one notice, and the wait after a timeout.
MAX_BACKOFF = timedelta(hours=1)
#: Tries before a notice that keeps failing is set aside (with the default
#: ``retry_after`` of 1m: about 7 hours of outage).
MAX_ATTEMPTS = 12
#: 4xx answers that mean "later" or "fix the destination", not "never this message".
_RETRYABLE_4XX = frozenset({401, 403, 404, 408, 410, 425, 429})
#: ntfy priority and tag per notice level ("resolved" is its own level: good news is low)
_NTFY_PRIORITY = {"critical": "max", "warning": "high", "info": "default", "resolved": "low"}
_NTFY_TAG = {"critical": "rotating_light", "warning": "warning", "info": "information_source",
             "resolved": "white_check_mark"}
#: Pushover priority per level (2, emergency, only with ``notify.pushover_retry``)
_PUSHOVER_PRIORITY = {"critical": "1", "warning": "0", "info": "-1", "resolved": "-1"}
#: events about a finding that is still open: their notices may offer "acknowledge"
_ACKABLE = frozenset({"new", "escalated", "reminder", "held", "action"})
# Bounds on what goes into one message: chat services cut or refuse long ones.
TITLE_LIMIT = 250
TEXT_LIMIT = 4000


class Outcome(enum.Enum):
    """What one delivery attempt tells about the notice."""

    DELIVERED = "delivered"
    #: did not arrive; trying again may work
    FAILED = "failed"
    #: no answer in time: the receiver may have kept it
    UNCERTAIN = "uncertain"
    #: the receiver said it will never take it
    REFUSED = "refused"


class _AppriseRecords(logging.Handler):
    """apprise's log lines of the current send, to tell why it failed.

    apprise only returns True/False; why is in its log. It sends from a worker
    thread with a copy of the caller's context, so the capture is a context
    variable. The lines carry URLs with tokens, so they never leave this handler:
    the logger does not propagate, and only the parsed outcome (a status code,
    "timed out") is kept.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._lines: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
            "watchdogd_apprise_lines", default=None)

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        lines: list[str] = []
        token = self._lines.set(lines)
        try:
            yield lines
        finally:
            self._lines.reset(token)

    def emit(self, record: logging.LogRecord) -> None:
        lines = self._lines.get()
        if lines is not None:
            try:
                lines.append(record.getMessage())
            except Exception:  # a malformed record must not break a send
                lines.append("")


_RECORDS = _AppriseRecords()


def _own_apprise_log() -> None:
    """Route apprise's logger to the capture only (idempotent: tests reconfigure logging)."""
    apprise_log = logging.getLogger("apprise")
    # Its records carry tokens: no other handler may see them (a test runner's
    # capture included), whatever attached it.
    for handler in list(apprise_log.handlers):
        if handler is not _RECORDS and not isinstance(handler, logging.NullHandler):
            apprise_log.removeHandler(handler)
    if _RECORDS not in apprise_log.handlers:
        apprise_log.addHandler(_RECORDS)
    apprise_log.propagate = False
    apprise_log.setLevel(logging.DEBUG)



_STATUS = re.compile(r"error=(\d{3})\b")


def classify(lines: Sequence[str]) -> tuple[Outcome, str]:
    """The outcome of a send apprise reported as failed, from its log lines.

    The returned text is ours (no URL, no response body): it goes to the store.
    """
    text = "\n".join(lines)
    codes = [int(code) for code in _STATUS.findall(text)]
    if codes:
        code = codes[-1]
        if 400 <= code < 500 and code not in _RETRYABLE_4XX:
            return Outcome.REFUSED, f"refused (HTTP {code})"
        return Outcome.FAILED, f"failed (HTTP {code})"
    lowered = text.lower()
    if ("timed out" in lowered or "timeout" in lowered) and "connect timeout" not in lowered:
        return Outcome.UNCERTAIN, "no answer in time (the receiver may have kept it)"
    if "connect timeout" in lowered:
        return Outcome.FAILED, "failed (connect timeout)"
    if "connection" in lowered:
        return Outcome.FAILED, "failed (connection error)"
    return Outcome.FAILED, "failed (apprise gave no reason)"


def finding_tag(finding_key: str) -> str:
    """A short stable tag naming one finding: the same for all of its notices."""
    return "wd-" + hashlib.sha256(finding_key.encode("utf-8", "replace")).hexdigest()[:16]


class NotifyConfigError(Exception):
    """The notification configuration cannot be read (the message names no URL)."""


class Destination:
    """One apprise entry and the lowest severity it wants."""

    def __init__(self, server: Any, timeout: float) -> None:
        # Keep the URL, not the plugin: a reused email plugin holds on to a
        # closed SMTP session and its next send stalls for seconds.
        self._url: str = str(server.url())
        self.timeout = timeout
        self.id = hashlib.sha256(self._url.encode()).hexdigest()[:12]
        tags = {str(t).lower() for t in (server.tags or ())}
        levels = [s for s in Severity if s.label in tags]
        self.min_severity = min(levels) if levels else Severity.INFO
        self.label = f"{server.service_name or server.protocol}#{self.id}"
        # ntfy shows X-Tags on the message; apprise's ntfy plugin takes them from
        # ``?tags=``. A stable tag per finding lets a reader (or a filter) see that
        # a repeat belongs to the same finding.
        scheme = urlsplit(self._url).scheme.lower()
        self.is_ntfy = scheme in ("ntfy", "ntfys")
        self.is_pushover = scheme == "pover"

    def url_for(self, finding_key: str, params: Mapping[str, str] | None = None) -> str:
        """The apprise URL for one notice: ``params`` set, for ntfy the finding's tag too.

        ``params`` replace the configured URL's own (apprise writes every URL back with
        its defaults, ``priority=default`` included, so "set by the operator" cannot be
        told from "not set"); tags are merged.
        """
        if not self.is_ntfy and not params:
            return self._url
        parts = urlsplit(self._url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        # ``xtags`` is the plugin's own name for them (``tags`` is its legacy one).
        names = ("xtags", "tags")
        others = [(k, v) for k, v in query if k.lower() not in names]
        existing = [v for k, v in query if k.lower() in names and v]
        extra = dict(params or {})
        tags = [t for t in extra.pop("xtags", "").split(",") if t]
        if self.is_ntfy:
            tags.append(finding_tag(finding_key))
        others = [(k, v) for k, v in others if k.lower() not in extra] + list(extra.items())
        if existing or tags:
            others.append(("xtags", ",".join([*existing, *tags])))
        # ``quote``, not ``quote_plus``: apprise unquotes without turning "+" into a space.
        return urlunsplit(parts._replace(query=urlencode(others, quote_via=quote)))

    def send(self, title: str, body: str, severity: Severity,
             finding_key: str = "", params: Mapping[str, str] | None = None,
             ) -> tuple[Outcome, str]:
        """Deliver one message and say what became of it (the text names no URL).

        The body is plain text: apprise escapes it for a destination that takes HTML or
        Markdown (an e-mail, Slack), so a name from outside (``<img src=...>``, ``<!channel>``)
        is shown as text there, never rendered, and a digest keeps its lines.
        """
        import apprise  # noqa: PLC0415 - a run without destinations never needs it

        _own_apprise_log()
        sender = apprise.Apprise()
        sender.add(self.url_for(finding_key, params))
        for plugin in sender:
            for attribute in ("socket_connect_timeout", "socket_read_timeout"):
                if hasattr(plugin, attribute):
                    setattr(plugin, attribute, self.timeout)
        # apprise's timeouts are per socket read: a receiver that trickles its answer
        # would hold the pass. The notify timeout is the whole send (bounded.py).
        bound_requests()
        with _RECORDS.capture() as lines, limits(self.timeout):
            ok = bool(sender.notify(title=title, body=body,
                                    notify_type=getattr(apprise.NotifyType,
                                                        _NOTIFY_TYPE[severity]),
                                    body_format=apprise.NotifyFormat.TEXT))
        if ok:
            return Outcome.DELIVERED, ""
        return classify(lines)


def load_destinations(config: NotifyConfig) -> list[Destination]:
    """Read the apprise configuration into destinations."""
    if config.urls is None and config.urls_file is None:
        return []
    import apprise  # noqa: PLC0415 - a run without destinations never needs it

    _own_apprise_log()
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
    else:
        assert config.urls_file is not None
        path = Path(config.urls_file).expanduser()
        if not path.is_file():
            raise NotifyConfigError(f"notify.urls_file: {path} does not exist")
        apprise_config.add(str(path))
        servers = list(apprise_config.services())
    if not servers:
        raise NotifyConfigError("notify: no valid apprise URL found (check the URL syntax)")
    return [Destination(server, timeout) for server in servers]


class Notifier:
    """Turns a pass's changes into outbox rows and delivers the outbox."""

    def __init__(self, config: NotifyConfig, destinations: Sequence[Destination],
                 links: AckLinks | None = None) -> None:
        self.config = config
        self.destinations = {d.id: d for d in destinations}
        #: signs the "acknowledge" links (None: no listener, no such button)
        self.links = links
        self.prefix = safe_text(config.title_prefix, 60)
        #: notices set aside by the last :meth:`deliver`
        self.set_aside = 0

    @classmethod
    def from_config(cls, config: NotifyConfig, links: AckLinks | None = None) -> Notifier:
        """A notifier for the configured destinations."""
        return cls(config, load_destinations(config), links)

    def push_params(self, destination: Destination, notice: Notice,
                    now: datetime) -> dict[str, str]:
        """The per-notice URL parameters of a phone push destination (none for others).

        Computed at delivery, not when queued: the outbox row is the same for every
        kind of destination, and an acknowledge link's lifetime starts when it is sent.
        """
        level = "resolved" if notice.event == "resolved" else notice.severity.label
        if destination.is_pushover:
            if level == "critical" and self.config.pushover_retry is not None:
                return {"priority": "2",
                        "interval": str(int(self.config.pushover_retry.total_seconds())),
                        "expire": str(int(self.config.pushover_expire.total_seconds()))}
            return {"priority": _PUSHOVER_PRIORITY[level]}
        if not destination.is_ntfy:
            return {}
        params = {"priority": _NTFY_PRIORITY[level], "xtags": _NTFY_TAG[level]}
        actions: list[dict[str, Any]] = []
        if self.config.report_url:
            actions.append({"action": "view", "label": "open report",
                            "url": self.config.report_url})
        if self.links is not None and notice.event in _ACKABLE:
            # ntfy's http action is a POST by default; the listener answers nothing else.
            actions.append({"action": "http", "label": "acknowledge",
                            "url": self.links.url(notice.finding_key, now),
                            "method": "POST", "clear": True})
        if actions:
            # ntfy's JSON form: a label or URL with a comma or semicolon cannot break it.
            params["actions"] = json.dumps(actions, separators=(",", ":"))
        return params

    def _rows(self, key: str, event: str, severity: Severity, title: str,
              body: str) -> list[dict[str, Any]]:
        title = safe_text(title, TITLE_LIMIT)
        return [
            {"finding_key": key, "event": event, "severity": severity, "title": title,
             "body": body, "destination": d.id}
            for d in self.destinations.values() if severity >= d.min_severity
        ]

    def window_summary(self, window: str, open_findings: Sequence[dict[str, Any]],
                       limit: int = 20) -> list[dict[str, Any]]:
        """The one notice at the end of a maintenance window: what is open in its scope now.

        ``open_findings`` are the store's open findings (``Store.findings``) the window
        covers; the worst of them sets the notice's severity, so a critical problem that
        the window muted still reaches the critical-only destinations.
        """
        name = safe_text(window, 64)
        worst = max((Severity.parse(r["severity"]) for r in open_findings),
                    default=Severity.INFO)
        title = (f"{self.prefix} maintenance window {name} ended: "
                 f"{len(open_findings)} finding(s) open")
        lines = [f"[{r['severity']}] {safe_text(r['kind'], 64)} {safe_text(r['subject'], 200)} "
                 f"({safe_text(r['check'], 64)}/{safe_text(r['target'], 200)})"
                 for r in sorted(open_findings, key=lambda r: -Severity.parse(r["severity"]))]
        if len(lines) > limit:
            lines = [*lines[:limit], f"... and {len(lines) - limit} more (watchdogd findings)"]
        body = "\n".join(lines) if lines else "Nothing is open: the window left no problem."
        return self._rows(f"maintenance/{name}", "window", worst, title, body)

    def notices(self, result: CheckResult, resolved: Sequence[Resolved],
                breaker: str | None) -> list[dict[str, Any]]:
        """The outbox rows for one check target's pass.

        Every piece of outside text is escaped on its own; the newlines between
        the parts of a body are watchdogd's and stay.
        """
        rows: list[dict[str, Any]] = []
        where = safe_text(f"{result.check}/{result.target}", 200)
        for entry in result.findings:
            if entry.silence is not None:
                continue  # an operator said "I know": nothing of it is sent while silenced
            finding = entry.tracked.finding
            subject = safe_text(finding.subject, 200)
            message = safe_text(finding.message, TEXT_LIMIT)
            detail = safe_text(entry.action_detail or "", TEXT_LIMIT)
            kind = safe_text(finding.kind, 64)
            if entry.tracked.event:
                word = {"new": "", "escalated": "escalated: ",
                        "reminder": "still open: "}[entry.tracked.event]
                title = (f"{self.prefix} [{finding.severity.label}] {word}{kind} "
                         f"{subject} ({where})")
                body = message
                if finding.action is not None and entry.action_status:
                    body += f"\nAction {finding.action.name}: {entry.action_status}"
                    if detail:
                        body += f" ({detail})"
                rows += self._rows(finding.key, entry.tracked.event, finding.severity, title,
                                   body)
            if finding.action is not None and entry.notify_held:
                title = (f"{self.prefix} [critical] {finding.action.name} held: "
                         f"{subject} ({where})")
                rows += self._rows(finding.key, "held", Severity.CRITICAL, title,
                                   f"{message}\n{detail}")
            if finding.action is not None and entry.action_status in _ACTION_EVENTS:
                severity = (Severity.WARNING if entry.action_status == ActionStatus.DONE
                            else Severity.CRITICAL)
                title = (f"{self.prefix} action {finding.action.name} {entry.action_status}: "
                         f"{subject} ({where})")
                rows += self._rows(finding.key, "action", severity, title,
                                   f"{message}\nResult: {detail}")
        if self.config.send_resolved:
            for item in resolved:
                if not item.notified:
                    continue
                title = (f"{self.prefix} [resolved] {safe_text(item.kind, 64)} "
                         f"{safe_text(item.subject, 200)} ({where})")
                rows += self._rows(item.key, "resolved", Severity.INFO, title,
                                   f"No longer seen: {safe_text(item.message, TEXT_LIMIT)}")
        if breaker:
            title = f"{self.prefix} [critical] breaker open: no action taken ({where})"
            body = (f"{safe_text(breaker, TEXT_LIMIT)}.\nwatchdogd acted on none of them. "
                    "Something large changed at once: look before enabling anything.")
            rows += self._rows(f"{result.check}/{result.target}/breaker", "breaker",
                               Severity.CRITICAL, title, body)
        return rows

    def _next_try(self, now: datetime, attempts: int, outcome: Outcome) -> datetime:
        retry_after: timedelta = self.config.retry_after
        cap = max(MAX_BACKOFF, retry_after)
        if outcome is Outcome.UNCERTAIN:
            return now + cap
        # The exponent is bounded so the product cannot overflow a timedelta.
        return now + min(retry_after * (1 << min(attempts, 30)), cap)

    def deliver(self, store: Store, now: datetime) -> tuple[int, int]:
        """Send what is due, in order per finding; return (delivered, not delivered).

        Notices set aside are counted in the second number and in :attr:`set_aside`.
        """
        delivered = failed = self.set_aside = 0
        for destination_id in store.destinations_with_pending():
            destination = self.destinations.get(destination_id)
            if destination is None:
                continue  # no longer configured: kept, never silently dropped
            # Findings whose earlier notice did not get through in this round.
            held: set[str] = set()
            for notice in store.pending_notices(destination_id, now):
                if notice.finding_key in held:
                    continue
                try:
                    outcome, error = destination.send(
                        notice.title, notice.body, notice.severity, notice.finding_key,
                        self.push_params(destination, notice, now))
                except Exception as exc:  # a plugin bug must not stop the daemon
                    outcome, error = Outcome.FAILED, f"failed ({type(exc).__name__})"
                if outcome is Outcome.DELIVERED:
                    store.mark_delivered(notice.id, now)
                    delivered += 1
                    continue
                failed += 1
                attempts = notice.attempts + 1
                give_up = outcome is Outcome.REFUSED or attempts >= MAX_ATTEMPTS
                retry = self._next_try(now, notice.attempts, outcome)
                store.mark_failed(notice.id, error, retry, set_aside_at=now if give_up else None)
                if give_up:
                    self.set_aside += 1
                    # Set aside holds nothing back: the finding's next notice may go.
                    log.error("notification set aside", destination=destination.label,
                              finding=safe_text(notice.finding_key, 300), notice=notice.event,
                              attempts=attempts, error=error)
                    continue
                held.add(notice.finding_key)
                log.warning("notification not delivered", destination=destination.label,
                            finding=safe_text(notice.finding_key, 300), notice=notice.event,
                            attempts=attempts, error=error, retry_at=retry.isoformat())
        return delivered, failed
