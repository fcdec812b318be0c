"""Maintenance windows: when each ``[maintenance.NAME]`` is open, as silences of the moment.

A window covers the findings of its ``checks`` and ``targets`` while it is open: the engine
treats it exactly as an operator's silence that forbids actions (tracked and reported,
never notified, never acted on), and sends one summary notice when it closes. Pure
functions of the configuration and a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta

from watchdogd.config import WEEKDAYS, MaintenanceWindow
from watchdogd.model import Silence

__all__ = ["open_occurrence", "window_silences"]


def open_occurrence(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The (start, end) of the window's occurrence that contains ``now``, if one does.

    Starts are local wall-clock times in the window's zone, so a 02:00 window stays at
    02:00 across daylight-saving changes (its length is real time).
    """
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    zone = ZoneInfo(window.timezone)
    local = now.astimezone(zone)
    hour, minute = (int(part) for part in window.start.split(":"))
    # An occurrence lasts at most 7 days, so one that contains now began within 8 days.
    for back in range(8):
        day = local.date() - timedelta(days=back)
        if window.days and WEEKDAYS[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, time(hour, minute), tzinfo=zone).astimezone(UTC)
        end = start + window.duration  # in UTC: the length is real time
        if start <= now < end:
            return start, end
    return None


def window_silences(windows: Mapping[str, MaintenanceWindow], now: datetime) -> list[Silence]:
    """A silence (no actions) for each scope of each window open at ``now``."""
    silences = []
    for name, window in windows.items():
        occurrence = open_occurrence(window, now)
        if occurrence is None:
            continue
        start, end = occurrence
        checks: list[str | None] = list(window.checks) or [None]
        targets: list[str | None] = list(window.targets) or [None]
        for check, target in itertools.product(checks, targets):
            silences.append(Silence(id=0, reason=window.reason, created_by="config",
                                    created_at=start, expires_at=end, check=check,
                                    target=target, window=name))
    return silences
