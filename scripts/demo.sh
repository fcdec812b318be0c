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
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e . >/dev/null
exec .venv/bin/watchdogd demo "$@"
