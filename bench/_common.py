"""Helpers the scale benchmarks share: honest peak RSS, request bounds, verdicts, tables.

Peak RSS of a child process is subtle on Linux. ``ru_maxrss`` (of the child itself, or
of the child as ``wait4`` reports it) survives ``execve``: the kernel folds the high-water
mark of the memory image the child replaced into it. A child that a big process starts
directly (``subprocess.Popen`` forks or vforks the caller) therefore reports *the caller's*
peak when that is larger: a benchmark whose parent holds the simulated world would measure
the world, not watchdogd. :func:`spawn_fresh` starts the child through a small ``/bin/sh``
that forks it, so the child's ``ru_maxrss`` starts from the shell's few megabytes and is
its own. :func:`own_peak_rss_mb` reads ``VmHWM`` (the high-water mark of the current memory
image only) as a cross-check.
"""

from __future__ import annotations

import math
import resource
import subprocess
from collections.abc import Sequence
from typing import Any

from watchdogd.text import table

__all__ = [
    "own_peak_rss_mb",
    "peak_rss_mb",
    "render_table",
    "request_bound",
    "spawn_fresh",
    "verdict",
]


def spawn_fresh(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` so that its ``ru_maxrss`` measures only itself (see the module doc).

    ``/bin/sh -c '"$0" "$@"; exit $?'`` keeps the shell alive while the command runs, so
    the shell forks it instead of exec-ing it in place; signals and the exit status
    pass through unchanged for a benchmark's purposes.
    """
    return subprocess.Popen(["/bin/sh", "-c", '"$0" "$@"; exit $?', *argv], **popen)


def peak_rss_mb() -> float:
    """This process's ``ru_maxrss`` in MB (kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def own_peak_rss_mb() -> float | None:
    """``VmHWM`` of this process's current memory image in MB (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def request_bound(n: int, page: int = 500, slack: int = 10) -> int:
    """The issue's request budget for listing ``n`` objects: ``ceil(n / page) + slack``."""
    return math.ceil(n / page) + slack


def verdict(ok: bool) -> str:
    """``PASS`` or ``MISS``, as the benchmarks print them."""
    return "PASS" if ok else "MISS"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The benchmarks' tables: watchdogd's own, with a rule under the headers."""
    return table(headers, rows, rule=True)
