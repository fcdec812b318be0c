"""The hypothesis profile of the safety suite, and how many examples each property gets.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible) with
no deadline (a pass against real HTTP simulators takes tens of milliseconds, a fault with a
client timeout a second or more). ``SAFETY_SCALE`` scales the example counts
(``bench/safety.py --scale 5`` runs five times as many for a longer soak).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["SAFETY", "examples"]

SAFETY = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


def examples(n: int) -> int:
    """``n`` examples, times ``$SAFETY_SCALE`` (default 1)."""
    scale = float(os.environ.get("SAFETY_SCALE", "1") or 1)
    return max(1, int(n * scale))
