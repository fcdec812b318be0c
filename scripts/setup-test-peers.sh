#!/usr/bin/env bash
# Install the real peers that watchdogd's integration tests run against:
#   - configurable-http-proxy 5.x from npm, into $REPO/.cache/node
#   - PostgreSQL 15 server binaries from Debian (initdb, pg_ctl under /usr/lib/postgresql/15/bin)
#   - the `postgres` OS user (initdb and pg_ctl refuse to run as root)
#   - promtool from Debian's prometheus package (the alert rules' tests)
#   - kubectl (the machine image has it; else Debian's kubernetes-client), for the tests that
#     pipe manifests into `kubectl apply` and render the kustomizations
#   - headless Chromium and its WebDriver from Debian (chromium, chromium-driver), for the
#     admin page's browser test (selenium drives them)
#
# Idempotent; meant to run as root on a fresh Debian 12 machine (CI calls it).
# Prints one line per thing it did or found already present.
# Environment:
#   WATCHDOGD_CHP_VERSION  override the configurable-http-proxy version (default by Node major)
#   WATCHDOGD_PG_MAJOR     PostgreSQL major version to require (default 15)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$REPO/.cache/node"
PG_MAJOR="${WATCHDOGD_PG_MAJOR:-15}"
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup-test-peers: %s\n' "$*"; }
die() { printf 'setup-test-peers: ERROR: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -qq >/dev/null
        APT_UPDATED=1
        say "ran apt-get update"
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    say "installed Debian packages: $*"
}

# Install packages whose services must not start (a PostgreSQL cluster, a Prometheus
# server): a policy-rc.d that denies every start while apt runs.
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d added=0 status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added=1
    fi
    apt_install "$@" || status=$?
    [ "$added" -eq 1 ] && rm -f "$policy"
    return "$status"
}

# --- Node.js and npm ------------------------------------------------------------
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    say "node $(node --version) and npm $(npm --version) already present"
else
    apt_install nodejs npm
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"

# configurable-http-proxy 5.2+ declares node >= 20; 5.1 runs on Debian 12's node 18.
if [ -n "${WATCHDOGD_CHP_VERSION:-}" ]; then
    CHP_VERSION="$WATCHDOGD_CHP_VERSION"
elif [ "$NODE_MAJOR" -ge 20 ]; then
    CHP_VERSION="5.3.0"
else
    CHP_VERSION="5.1.0"
fi
case "$CHP_VERSION" in 5.*) ;; *) die "configurable-http-proxy must be 5.x, not $CHP_VERSION" ;; esac

# --- configurable-http-proxy into $REPO/.cache/node ------------------------------
mkdir -p "$NODE_DIR"
# .cache holds installed tools only: keep it out of git without touching .gitignore.
if [ ! -f "$REPO/.cache/.gitignore" ]; then
    printf '*\n' >"$REPO/.cache/.gitignore"
    say "wrote $REPO/.cache/.gitignore"
fi
PKG_JSON="$(printf '{\n  "name": "watchdogd-test-peers",\n  "private": true,\n  "description": "npm peers for watchdogd integration tests (written by scripts/setup-test-peers.sh)",\n  "dependencies": {\n    "configurable-http-proxy": "%s"\n  }\n}\n' "$CHP_VERSION")"
if [ ! -f "$NODE_DIR/package.json" ] || [ "$(cat "$NODE_DIR/package.json")" != "$PKG_JSON" ]; then
    printf '%s\n' "$PKG_JSON" >"$NODE_DIR/package.json"
    say "wrote $NODE_DIR/package.json (configurable-http-proxy $CHP_VERSION)"
fi
CHP_BIN="$NODE_DIR/node_modules/.bin/configurable-http-proxy"
CHP_PKG="$NODE_DIR/node_modules/configurable-http-proxy/package.json"
installed_chp() {
    [ -x "$CHP_BIN" ] && [ -f "$CHP_PKG" ] && node -p "require('$CHP_PKG').version" 2>/dev/null || true
}
if [ "$(installed_chp)" = "$CHP_VERSION" ]; then
    say "configurable-http-proxy $CHP_VERSION already present at $CHP_BIN"
else
    (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    [ "$(installed_chp)" = "$CHP_VERSION" ] || die "npm install did not produce configurable-http-proxy $CHP_VERSION"
    say "installed configurable-http-proxy $CHP_VERSION at $CHP_BIN"
fi
"$CHP_BIN" --version >/dev/null 2>&1 || die "$CHP_BIN does not run"

# --- PostgreSQL server binaries ------------------------------------------------------
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
if [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] && [ -x "$PG_BIN/postgres" ]; then
    say "PostgreSQL $PG_MAJOR server already present in $PG_BIN"
else
    # Do not let the package start a cluster of its own during installation.
    apt_install_no_start "postgresql-$PG_MAJOR"
    [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || die "postgresql-$PG_MAJOR installed but $PG_BIN/initdb or pg_ctl is missing"
fi
say "$("$PG_BIN/postgres" --version)"

# --- the postgres OS user ------------------------------------------------------------------
if id -u postgres >/dev/null 2>&1; then
    say "OS user postgres already present (uid $(id -u postgres))"
else
    [ "$(id -u)" -eq 0 ] || die "need root to create the postgres OS user"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    say "created OS user postgres (uid $(id -u postgres))"
fi
if command -v runuser >/dev/null 2>&1; then
    say "runuser already present"
else
    apt_install util-linux
fi
# --- promtool: `promtool test rules` on config/kubernetes/monitoring's alerts ---------------
if command -v promtool >/dev/null 2>&1; then
    say "promtool already present ($(promtool --version 2>&1 | head -n 1))"
else
    # Debian ships promtool only inside the prometheus package; its server is not needed.
    apt_install_no_start prometheus
    command -v promtool >/dev/null 2>&1 || die "prometheus installed but promtool is missing"
fi

# --- kubectl ---------------------------------------------------------------------------------
# tests/scenario/test_disk_map.py restores claims with `kubectl apply -f -` against the
# simulated API server, as the runbook does against a real one.
if command -v kubectl >/dev/null 2>&1; then
    say "kubectl already present ($(command -v kubectl))"
else
    # The machine image ships kubectl; Debian's own package of it is kubernetes-client.
    apt_install kubernetes-client
    command -v kubectl >/dev/null 2>&1 || die "kubernetes-client installed but no kubectl on PATH"
fi

# --- Chromium and chromedriver: the admin page's browser test -------------------------------
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "chromium and chromedriver already present ($(chromium --version 2>/dev/null | head -n 1))"
else
    apt_install chromium chromium-driver
    command -v chromedriver >/dev/null 2>&1 || die "chromium-driver installed but chromedriver is missing"
fi

# --- JupyterHub 5.x in its own venv -----------------------------------------------------------
# z2jh still ships JupyterHub 5.5: the integration tests run the same repairs against it.
HUB5_VERSION="${WATCHDOGD_HUB5_VERSION:-5.5.4}"
HUB5_VENV="$REPO/.cache/hub5-venv"
HUB5_MARKER="$HUB5_VENV/.watchdogd-jupyterhub-$HUB5_VERSION"
if [ -f "$HUB5_MARKER" ]; then
    say "JupyterHub $HUB5_VERSION already present in $HUB5_VENV"
else
    rm -rf "$HUB5_VENV"
    "${WATCHDOGD_PYTHON:-python3}" -m venv "$HUB5_VENV"
    "$HUB5_VENV/bin/python" -m pip install -q "jupyterhub==$HUB5_VERSION" "psycopg[binary]" \
        >"$REPO/.cache/hub5-pip.log" 2>&1 || { tail -n 30 "$REPO/.cache/hub5-pip.log"; die "pip install jupyterhub==$HUB5_VERSION failed"; }
    touch "$HUB5_MARKER"
    say "installed JupyterHub $HUB5_VERSION into $HUB5_VENV"
fi
# The culler check's test runs the real jupyterhub-idle-culler as a hub-managed service, with
# the hub's own interpreter. A separate step, so that an existing venv only gains the package.
if "$HUB5_VENV/bin/python" -c 'import jupyterhub_idle_culler' >/dev/null 2>&1; then
    say "jupyterhub-idle-culler already present in $HUB5_VENV"
else
    "$HUB5_VENV/bin/python" -m pip install -q "jupyterhub-idle-culler>=1.4" \
        >>"$REPO/.cache/hub5-pip.log" 2>&1 || { tail -n 30 "$REPO/.cache/hub5-pip.log"; die "pip install jupyterhub-idle-culler failed"; }
    say "installed jupyterhub-idle-culler into $HUB5_VENV"
fi
say "done"
