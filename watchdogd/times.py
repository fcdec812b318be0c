"""Time in one place: the clock, ISO 8601 in and out, and short human durations.

Every timestamp watchdogd keeps or shows is timezone-aware UTC; peers write theirs in
several dialects (Kubernetes ``...Z``, JupyterHub with an offset, Cinder and Keystone
naive UTC), which :func:`parse_time` reads as one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["format_duration", "iso", "parse_time", "utcnow"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock of every component)."""
    return datetime.now(UTC)


def iso(value: datetime, *, timespec: str = "auto") -> str:
    """ISO 8601 with ``Z`` for UTC, as the JSON report and the CLI tables write times."""
    return value.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    """An API timestamp as an aware datetime, or None when absent or unreadable.

    Kubernetes writes ``...Z``, JupyterHub ISO with an offset, Cinder and Keystone
    naive UTC: all of them mean UTC when no zone is given.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """A short duration for a message or a status line: ``45s``, ``5m03s``, ``2h07m``."""
    whole = max(0, int(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"
