"""Import cost per top-level package in CPU time, where ``-X importtime`` has wall time.

``python -X importtime`` times each module with the wall clock, so on a machine that other
processes keep busy its figures moved threefold from run to run (CPU time moves far less,
though cache contention still inflates it by some 10%). This runs a
command line with every module's execution (reading its bytecode included) timed in the
importing thread's CPU time instead, then charges each module's own time to the innermost
non-standard-library package on its import chain (itself, if it is one): the standard
library modules a package is the first to import count as that package's. Modules the
interpreter loads before this script starts (``site`` and the like) are not counted.

``--runs`` (default 5) fresh processes; each package's median is printed as a Markdown
table, largest first.

    .venv/bin/python bench/importcpu.py [--runs 5] -- -m watchdogd check --only sessions -c FILE
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in the measured process: a meta-path finder that wraps each found loader's
# exec_module with a per-thread CPU timer, then runs the command line.
PROBE = """\
import os, runpy, sys, threading, time
local = threading.local()
out = []
class Timer:
    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and not isinstance(loader, type) \\
                    and hasattr(loader, "exec_module"):
                real = loader.exec_module
                def exec_module(module, real=real, name=name):
                    stack = getattr(local, "stack", None)
                    if stack is None:
                        stack = local.stack = []
                    stack.append(0)
                    started = time.thread_time_ns()
                    try:
                        real(module)
                    finally:
                        cumulative = time.thread_time_ns() - started
                        children = stack.pop()
                        if stack:
                            stack[-1] += cumulative
                        out.append((cumulative - children, len(stack), name))
                loader.exec_module = exec_module
            return spec
        return None
sys.meta_path.insert(0, Timer())
def dump():
    with open(os.environ["IMPORTCPU_OUT"], "w") as f:
        for own, depth, name in out:
            f.write(f"{own} {depth} {name}\\n")
import atexit
atexit.register(dump)
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
"""

STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


def by_package(lines: list[str]) -> Counter[str]:
    """Own CPU time (ms) per package, each stdlib module charged to its first importer."""
    rows = [(int(own), int(depth), name) for own, depth, name in
            (line.split() for line in lines if line.strip())]
    result: Counter[str] = Counter()
    # Lines come as imports finish (children before their parent): reversed, a parent
    # precedes its children, and a stack of (depth, owner) finds the innermost package.
    stack: list[tuple[int, str]] = []
    for own, depth, name in reversed(rows):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        top = name.split(".")[0]
        owner = top if top not in STDLIB else (stack[-1][1] if stack else "(standard library)")
        result[owner] += own / 1e6
        stack.append((depth, owner))
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the table; 2 when the command fails."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after --: what python would run (-m MODULE ... or SCRIPT ...)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.runs < 1:
        parser.error("need a command after -- and --runs >= 1")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    runs: list[Counter[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            env["IMPORTCPU_OUT"] = out = str(Path(tmp) / f"run{i}")
            proc = subprocess.run([sys.executable, "-c", PROBE, *command], env=env,
                                  capture_output=True, check=False)
            if proc.returncode != 0 or not Path(out).exists():
                print(f"bench/importcpu.py: the command exited {proc.returncode}: "
                      f"{proc.stderr.decode(errors='replace')[-1500:]}", file=sys.stderr)
                return 2
            runs.append(by_package(Path(out).read_text().splitlines()))
    packages = set().union(*runs)
    median = {p: statistics.median(r.get(p, 0.0) for r in runs) for p in packages}
    total = statistics.median(sum(r.values()) for r in runs)
    print(f"| package (with the stdlib it imports first) | CPU ms, median of {args.runs} |")
    print("|---|---:|")
    for package in sorted(packages, key=lambda p: -median[p]):
        if median[package] >= 1.0:
            print(f"| {package} | {median[package]:.1f} |")
    print(f"| (each under 1 ms) | {sum(v for v in median.values() if v < 1.0):.1f} |")
    print(f"| **total** | {total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
