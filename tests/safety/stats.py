"""The safety suite's tally: what was generated, injected and survived, and what went wrong.

Every test of ``tests/safety`` adds to one process-wide :data:`STATS`; the suite's
``conftest.py`` prints it at the end of the run and, when ``$SAFETY_SUMMARY``
names a file, writes it there as JSON (``bench/safety.py`` reads that file). Violations are
counted *before* the assertion that fails on them, so a failing run still says how many
unjustified actions or lost records it saw.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["LABELS", "STATS", "Stats"]

#: counter name -> what it means, in the order the summary prints them
LABELS: dict[str, str] = {
    "worlds": "randomized worlds generated",
    "passes": "passes run against them",
    "faults_injected": "faults injected",
    "faults_fired": "faults that hit a request",
    "source_errors": "check targets reported as error",
    "actions_checked": "actions checked against the world's truth",
    "converged": "worlds converged after the faults were removed",
    "breaker_held": "worlds where the breaker held instead",
    "crashes": "crashes (SIGKILL) survived",
    "interrupted_seen": "interrupted actions shown after a restart",
    "notices_after_outage": "notifications delivered after an outage",
    "store_faults": "state store faults handled",
    "fuzz_inputs": "malformed inputs fed to parsers",
    "secret_scans": "outputs scanned for secrets",
    "skewed_clocks": "worlds where watchdogd's clock was skewed",
    "foreign_volumes": "volumes of unconfigured clusters planted",
    "rival_processes": "passes run beside a rival process on one store",
    "leader_kills": "leaders killed with notices queued",
    "unjustified_actions": "UNJUSTIFIED ACTIONS",
    "lost_records": "LOST RECORDS",
    "violations": "OTHER VIOLATIONS",
}

#: counters that must stay zero
BAD = ("unjustified_actions", "lost_records", "violations")


class Stats:
    """Thread-safe counters."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name`` (one of :data:`LABELS`)."""
        if name not in LABELS:
            raise KeyError(f"unknown safety counter {name!r}")
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        """Every counter, zeros included."""
        with self._lock:
            return {name: int(self._counts.get(name, 0)) for name in LABELS}

    def render(self) -> str:
        """The summary, one counter per line."""
        counts = self.snapshot()
        width = max(len(label) for label in LABELS.values())
        lines = [f"  {label.ljust(width)}  {counts[name]}" for name, label in LABELS.items()]
        ok = all(counts[name] == 0 for name in BAD)
        lines.append("  " + ("SAFE: zero unjustified actions, zero lost records"
                             if ok else "UNSAFE: see the counters above"))
        return "\n".join(lines)

    def write(self, path: str | Path) -> None:
        """Write the counters as JSON."""
        data: dict[str, Any] = {"counts": self.snapshot(), "labels": LABELS}
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


STATS = Stats()
