#!/usr/bin/env bash
# Set up watchdogd in ./.venv and run `watchdogd demo` against the built-in simulated world.
# Works on a fresh machine with Python >= 3.11; needs nothing else.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${WATCHDOGD_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
mkdir -p .cache
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e .; } >.cache/pip.log 2>&1; then
    tail -n 40 .cache/pip.log
    echo "pip install failed; the whole log is in .cache/pip.log" >&2
    exit 1
fi
exec .venv/bin/watchdogd demo "$@"
