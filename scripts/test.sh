#!/usr/bin/env bash
# Set up everything the tests need, then run lint, types and the whole test suite.
#
#   - ./.venv with watchdogd and its test extras (pytest, hypothesis, jupyterhub, aiosmtpd, ...)
#   - configurable-http-proxy from npm, PostgreSQL from Debian (scripts/setup-test-peers.sh)
#   - real Cinder + Keystone in their own virtualenv (scripts/setup-cinder-venv.sh)
#
# Every real peer is required here (WATCHDOGD_REQUIRE_PEERS=1): a missing one fails the run
# instead of skipping tests silently. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${WATCHDOGD_PYTHON:-python3}"

step() { printf '\n== %s\n' "$*"; }

step "python environment"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
mkdir -p .cache
if ! { .venv/bin/python -m pip install -q --upgrade pip &&
       .venv/bin/python -m pip install -q -e ".[test]"; } >.cache/pip.log 2>&1; then
    tail -n 40 .cache/pip.log
    echo "pip install failed; the whole log is in .cache/pip.log" >&2
    exit 1
fi
echo "watchdogd $(.venv/bin/python -c 'import watchdogd; print(watchdogd.__version__)') with test extras in .venv"

step "real peers: configurable-http-proxy, PostgreSQL"
bash scripts/setup-test-peers.sh

step "real peers: Cinder and Keystone"
bash scripts/setup-cinder-venv.sh

step "lint and types"
.venv/bin/ruff check .
.venv/bin/mypy watchdogd

step "tests"
export WATCHDOGD_REQUIRE_PEERS=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
