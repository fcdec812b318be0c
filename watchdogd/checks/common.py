"""Small helpers the check modules share: pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["parse_time"]


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
