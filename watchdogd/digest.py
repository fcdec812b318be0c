"""The weekly digest: one long plain-text notice summing up a week of the state store.

:func:`build_digest` is a pure function of store rows (findings, actions, passes) and a
time window; it returns a title and a body that read well in an e-mail. The sections:

* findings opened and resolved in the window, by check/kind, with their severities;
* actions taken (started in the window), by name and status;
* the slowest problems to resolve (resolved in the window, by ``resolved_at - first_seen``)
  and the oldest still open;
* checks that failed: targets with ``error`` passes in the window, how many, the last error;
* certificates and credentials expiring in the next 30 days (open ``cert-expiring`` and
  ``credential-expiring`` findings, by the expiry date in their evidence);
* orphan storage reclaimed (``delete-orphan-volume`` done: count and GiB from the
  before-images) and waiting (open ``orphan-volume`` findings, quarantined or not, and
  open ``released-pv`` / ``orphan-extra-pvc``).

Every value from the store is escaped with :func:`watchdogd.text.safe_text`; the evidence
and before-images were already stored without secrets, and only sizes, dates, names and
error lines are taken from them.

:func:`send_digest` queues it once per ISO week (a mark claimed in the same transaction
as the outbox rows) and delivers it through the outbox, at least once, like any notice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

from watchdogd.config import WEEKDAYS, parse_weekly
from watchdogd.model import Severity
from watchdogd.notify import Destination, Notifier
from watchdogd.store import ActionRecord, Store
from watchdogd.text import safe_text
from watchdogd.times import iso, parse_time

__all__ = ["WINDOW", "Digest", "build_digest", "digest_rows", "due", "make_digest", "send_digest",
           "week_of"]

#: the digest's window: the last seven days
WINDOW = timedelta(days=7)
#: certificates and credentials expiring within this long are listed
EXPIRY_HORIZON = timedelta(days=30)
#: the most lines of one list (the rest is counted)
LIST_LIMIT = 30
_EXPIRING = {"cert-expiring": "certificate", "credential-expiring": "credential"}
_WAITING_KINDS = ("released-pv", "orphan-extra-pvc")


@dataclass(frozen=True)
class Digest:
    """One digest: its title, its body, and the week it belongs to."""

    title: str
    body: str
    #: the ISO week of the window's end in the digest's zone: "2026-W50"
    week: str
    opened: int
    resolved: int
    actions: int


def week_of(until: datetime, tz: tzinfo = UTC) -> str:
    """The ISO week (``2026-W50``) of ``until`` in ``tz``: the digest's once-a-week key."""
    year, week, _ = until.astimezone(tz).isocalendar()
    return f"{year}-W{week:02d}"


def due(now: datetime, schedule: str, timezone: str) -> bool:
    """Whether this ISO week's send time (``schedule`` in ``timezone``) has come."""
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    day, hour, minute = parse_weekly(schedule)
    local = now.astimezone(ZoneInfo(timezone))
    monday = local.date() - timedelta(days=local.weekday())
    when = datetime.combine(monday + timedelta(days=WEEKDAYS.index(day)),
                            time(hour, minute), tzinfo=local.tzinfo)
    return local >= when


def _span(delta: timedelta) -> str:
    """A duration for a reader: ``3d 4h``, ``5h 07m``, ``12m``."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m"


def _gib(size: Any) -> float:
    """A Cinder size (GiB, an integer) from a before-image or evidence; 0 when unreadable."""
    try:
        value = float(size)
    except (TypeError, ValueError):
        return 0.0
    return value if value > 0 else 0.0


def _num(value: float) -> str:
    return f"{value:g}"


def _where(row: dict[str, Any]) -> str:
    return f"{safe_text(row['check'], 64)}/{safe_text(row['target'], 200)}"


def _cut(lines: list[str], limit: int = LIST_LIMIT) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  ... and {len(lines) - limit} more"]


def _severities(rows: Sequence[dict[str, Any]]) -> str:
    counts = Counter(str(r["severity"]) for r in rows)
    order = sorted(counts, key=lambda label: -Severity.parse(label))
    return ", ".join(f"{counts[label]} {label}" for label in order)


def _in(when: datetime | None, since: datetime, until: datetime) -> bool:
    return when is not None and since <= when < until


def build_digest(findings: Sequence[dict[str, Any]], actions: Sequence[ActionRecord],
                 passes: Sequence[dict[str, Any]], since: datetime, until: datetime, *,
                 tz: tzinfo = UTC, prefix: str = "watchdogd", top: int = 5) -> Digest:
    """The digest of ``[since, until)``.

    ``findings`` are the store's findings of every status (``Store.findings(status=None)``),
    ``actions`` the audit log's rows started in the window, ``passes`` the passes that
    finished in it. Dates are shown in ``tz`` (the digest's zone).
    """
    opened = [f for f in findings if _in(f["first_seen"], since, until)]
    resolved = [f for f in findings
                if f["status"] == "resolved" and _in(f["resolved_at"], since, until)]
    actions = [a for a in actions if _in(a.started_at, since, until)]
    passes = [p for p in passes if _in(p["finished_at"], since, until)]
    open_now = [f for f in findings if f["status"] == "open" and f["first_seen"] < until]

    def day(when: datetime) -> str:
        return f"{when.astimezone(tz):%Y-%m-%d}"

    head = safe_text(prefix, 60)
    title = (f"{head} weekly digest {day(since)} to {day(until)}: {len(opened)} opened, "
             f"{len(resolved)} resolved, {len(actions)} action{'' if len(actions) == 1 else 's'}")
    body: list[str] = [
        f"Window: {iso(since.astimezone(UTC), timespec='minutes')} to "
        f"{iso(until.astimezone(UTC), timespec='minutes')} (dates in "
        f"{safe_text(str(tz), 64)}).", ""]

    def section(name: str, lines: list[str], empty: str) -> None:
        body.extend([name, "-" * len(name)])
        body.extend(lines if lines else [empty])
        body.append("")

    # -- findings opened and resolved ------------------------------------------------
    groups: dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = \
        defaultdict(lambda: ([], []))
    for row in opened:
        groups[(row["check"], row["kind"])][0].append(row)
    for row in resolved:
        groups[(row["check"], row["kind"])][1].append(row)
    lines = []
    for (check, kind), (new, gone) in sorted(groups.items()):
        text = f"- {safe_text(check, 64)}/{safe_text(kind, 64)}: {len(new)} opened"
        if new:
            text += f" ({_severities(new)})"
        text += f", {len(gone)} resolved"
        if gone:
            text += f" ({_severities(gone)})"
        lines.append(text)
    section(f"Findings: {len(opened)} opened, {len(resolved)} resolved, {len(open_now)} "
            "open now", lines, "No finding was opened or resolved.")

    # -- actions ---------------------------------------------------------------------
    by_name: dict[str, Counter[str]] = defaultdict(Counter)
    for action in actions:
        by_name[action.name][action.status] += 1
    lines = [f"- {safe_text(name, 64)}: " + ", ".join(
        f"{count} {safe_text(status, 16)}" for status, count in sorted(statuses.items()))
        for name, statuses in sorted(by_name.items())]
    section(f"Actions: {len(actions)}", lines, "No action was taken.")

    # -- slowest to resolve, oldest open ---------------------------------------------
    slow = sorted(resolved, key=lambda r: (-(r["resolved_at"] - r["first_seen"]), r["key"]))
    lines = [f"- {_span(r['resolved_at'] - r['first_seen'])}: [{r['severity']}] "
             f"{safe_text(r['kind'], 64)} {safe_text(r['subject'], 200)} ({_where(r)}), "
             f"resolved {day(r['resolved_at'])}" for r in slow[:top]]
    oldest = sorted(open_now, key=lambda r: (r["first_seen"], r["key"]))
    lines += [f"- open for {_span(until - r['first_seen'])}: [{r['severity']}] "
              f"{safe_text(r['kind'], 64)} {safe_text(r['subject'], 200)} ({_where(r)}), "
              f"since {day(r['first_seen'])}" for r in oldest[:top]]
    section("Slowest to resolve, and oldest still open", lines, "Nothing to list.")

    # -- checks that failed ----------------------------------------------------------
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in passes:
        runs[(row["check"], row["target"])].append(row)
    lines = []
    for (check, target), rows in sorted(runs.items()):
        failed = [r for r in rows if r["status"] == "error"]
        if not failed:
            continue
        last = max(failed, key=lambda r: r["finished_at"])
        lines.append(f"- {safe_text(check, 64)}/{safe_text(target, 200)}: {len(failed)} of "
                     f"{len(rows)} pass(es) failed; last at "
                     f"{last['finished_at'].astimezone(tz):%Y-%m-%d %H:%M}: "
                     f"{safe_text(last['error'] or 'no error recorded', 300)}")
    section("Checks that failed", lines, "Every pass completed.")

    # -- expiring certificates and credentials ---------------------------------------
    expiring: list[tuple[datetime, str]] = []
    for row in open_now:
        what = _EXPIRING.get(row["kind"])
        if what is None:
            continue
        evidence = row.get("evidence") or {}
        when = parse_time(evidence.get("not_after") or evidence.get("expires_at"))
        if when is None and isinstance(evidence.get("days_left"), int | float):
            # No date kept: the days left when it was last seen, counted on from then.
            when = row["last_seen"] + timedelta(days=float(evidence["days_left"]))
        if when is None or when - until > EXPIRY_HORIZON:
            continue
        left = when - until
        state = (f"expired {_span(-left)} ago" if left.total_seconds() <= 0
                 else f"in {_span(left)}")
        expiring.append((when, f"- {day(when)} ({state}): {what} "
                               f"{safe_text(row['subject'], 200)} ({_where(row)})"))
    lines = [text for _, text in sorted(expiring, key=lambda item: (item[0], item[1]))]
    section(f"Expiring in the next {EXPIRY_HORIZON.days} days", _cut(lines),
            "No certificate or credential expires in the next 30 days.")

    # -- orphan storage --------------------------------------------------------------
    deleted = [a for a in actions if a.name == "delete-orphan-volume" and a.status == "done"]
    reclaimed = sum(_gib((a.before.get("volume") or {}).get("size")) for a in deleted)
    orphans = [r for r in open_now if r["kind"] == "orphan-volume"]
    quarantined = [r for r in orphans if (r.get("evidence") or {}).get("quarantined_since")]
    loose = [r for r in orphans if not (r.get("evidence") or {}).get("quarantined_since")]

    def size(rows: Sequence[dict[str, Any]]) -> str:
        return _num(sum(_gib(((r.get("evidence") or {}).get("volume") or {}).get("size"))
                        for r in rows))

    lines = [f"- reclaimed: {len(deleted)} volume(s) deleted, {_num(reclaimed)} GiB",
             f"- waiting: {len(orphans)} orphan volume(s), {size(orphans)} GiB "
             f"({len(quarantined)} quarantined, {size(quarantined)} GiB; {len(loose)} not "
             f"quarantined, {size(loose)} GiB)"]
    for kind in _WAITING_KINDS:
        count = sum(1 for r in open_now if r["kind"] == kind)
        if count:
            lines.append(f"- waiting: {count} {kind} finding(s)")
    section("Orphan storage", lines, "")

    body.append("Details: watchdogd findings --all, watchdogd actions.")
    return Digest(title, "\n".join(body), week_of(until, tz), len(opened), len(resolved),
                  len(actions))


def digest_rows(digest: Digest, destinations: Sequence[Destination]) -> list[dict[str, Any]]:
    """The outbox rows of one digest: one per digest destination, whatever its tags."""
    return [{"finding_key": f"digest/{digest.week}", "event": "digest",
             "severity": Severity.INFO, "title": digest.title, "body": digest.body,
             "destination": d.id} for d in destinations]


def make_digest(store: Store, until: datetime, *, since: datetime | None = None,
                tz: tzinfo = UTC, prefix: str = "watchdogd", top: int = 5) -> Digest:
    """The digest of the window ending at ``until`` (the last 7 days unless ``since``)."""
    start = until - WINDOW if since is None else since
    return build_digest(store.findings(status=None), store.actions_between(start, until),
                        store.passes_between(start, until), start, until, tz=tz,
                        prefix=prefix, top=top)


def send_digest(store: Store, notifier: Notifier, digest: Digest,
                now: datetime) -> tuple[bool, datetime | None]:
    """Queue ``digest`` unless this week's was queued already, then deliver what is due.

    Returns (whether this call queued it, when this week's digest was queued). Delivery
    is the outbox's: a destination that fails now gets it on a later ``deliver``.
    """
    queued = store.claim_once(f"digest/{digest.week}",
                              digest_rows(digest, list(notifier.destinations.values())), now)
    notifier.deliver(store, now)
    return queued, store.claimed_at(f"digest/{digest.week}")
