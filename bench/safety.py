"""Run the safety suite and print what it proved.

    python bench/safety.py                 # the suite as CI runs it (about three minutes)
    python bench/safety.py --scale 5       # five times as many randomized examples
    python bench/safety.py -k random_hub   # only some of it (pytest's -k)

The suite (``tests/safety``) generates randomized worlds (hub sessions, OpenStack volumes
and their PVs in two clusters, nodes, pods and certificates), injects faults into every
source, kills real ``watchdogd`` processes with SIGKILL, takes the notification receiver and
the state database away, feeds malformed input to every parser and looks for secrets in
every output. This script runs it in a child process and prints its counters: how many
worlds, faults, crashes, notifications after outages, and, the point of it all, how many
unjustified actions and lost records (zero, or the exit status is 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD = ("unjustified_actions", "lost_records", "violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every property's number of examples (default 1)")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="run only the tests matching this pytest expression")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show pytest's own output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="watchdogd-safety-") as tmp:
        summary = Path(tmp) / "summary.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOGD_")}
        env.update(SAFETY_SCALE=str(args.scale), SAFETY_SUMMARY=str(summary))
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "tests/safety"]
        if args.keyword:
            command += ["-k", args.keyword]
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=env, check=False,
                                capture_output=not args.verbose, text=True)
        elapsed = time.monotonic() - started
        if not summary.exists():
            if not args.verbose:
                sys.stdout.write(result.stdout[-4000:] + result.stderr[-2000:])
            print("the safety suite wrote no summary (did it run at all?)", file=sys.stderr)
            return 1
        data = json.loads(summary.read_text(encoding="utf-8"))

    counts: dict[str, int] = data["counts"]
    labels: dict[str, str] = data["labels"]
    width = max(len(label) for label in labels.values())
    print(f"watchdogd safety suite (scale {args.scale:g}, {elapsed:.0f} s)")
    for name, label in labels.items():
        print(f"  {label.ljust(width)}  {counts.get(name, 0)}")
    unsafe = any(counts.get(name, 0) for name in BAD)
    if result.returncode != 0:
        if not args.verbose:
            tail = [line for line in result.stdout.splitlines()
                    if line.startswith(("FAILED", "ERROR"))]
            print("\n".join(tail[-20:]))
        print(f"FAILED: pytest exited {result.returncode}")
        return 1
    if unsafe:
        print("UNSAFE: see the counters above")
        return 1
    print("SAFE: zero unjustified actions, zero lost records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
