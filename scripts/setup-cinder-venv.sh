#!/usr/bin/env bash
# Create the separate virtualenv with real OpenStack Cinder and Keystone used by the
# integration tests (tests/peers/openstack_real.py).
#
# Why a separate venv: Cinder and Keystone pin most of the oslo.* world and eventlet; they must
# not share the project's environment. Why a full constraints list: OpenStack releases are
# only tested against their own upper-constraints; a newer transitive release (SQLAlchemy,
# eventlet, oslo.*) can break them, so every package below was installed and run together
# here (Python 3.11, wheels only, no compiler needed).
#
# Idempotent: a marker file in the venv records the interpreter and the pins; when it matches,
# nothing is done. Prints one line saying what it did.
#
#   WATCHDOGD_CINDER_VENV  where the venv goes (default: <repo>/.cache/cinder-venv)
#   WATCHDOGD_PYTHON       interpreter to build it with (default: python3, must be >= 3.11)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WATCHDOGD_CINDER_VENV:-$repo/.cache/cinder-venv}"
python="${WATCHDOGD_PYTHON:-python3}"
marker="$venv/.watchdogd-pins"

# Top-level packages (what the tests run): Cinder 29 / Keystone 30 (2025.2 "Flamingo" series).
pins="cinder==29.0.0 keystone==30.0.0"

# Everything they pull in, as resolved and verified here.
constraints="$(cat <<'PINS'
alembic==1.20.1
amqp==5.4.2
aniso8601==10.0.1
attrs==26.1.0
automaton==3.5.0
autopage==0.6.0
bcrypt==5.0.0
blinker==1.9.0
cachetools==8.0.1
castellan==5.8.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cliff==4.17.0
cmd2==4.3.1
cotyledon==2.2.0
cryptography==50.0.2
cursive==0.3.1
debtcollector==3.1.0
decorator==5.3.1
defusedxml==0.7.1
distro==1.9.0
dnspython==2.9.2
dogpile.cache==1.5.0
elementpath==4.8.0
eventlet==0.41.3
fasteners==0.20
Flask==3.1.3
Flask-RESTful==0.3.10
futurist==3.5.0
greenlet==3.5.6
idna==3.20
invoke==3.0.3
iso8601==2.1.0
itsdangerous==2.2.0
Jinja2==3.1.6
jsonpatch==1.47
jsonpointer==3.12
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
keystoneauth1==5.18.1
keystonemiddleware==13.0.1
kombu==5.7.0
lxml==6.1.3
Mako==1.4.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
msgpack==1.2.4
netaddr==1.3.0
networkx==3.6.1
oauthlib==4.0.1
os-brick==7.1.1
os-service-types==1.9.0
oslo.cache==4.3.0
oslo.concurrency==7.6.1
oslo.config==10.7.0
oslo.context==6.5.0
oslo.db==18.1.1
oslo.i18n==6.9.0
oslo.log==8.3.2
oslo.messaging==18.3.1
oslo.metrics==0.17.0
oslo.middleware==8.2.0
oslo.policy==6.0.1
oslo.privsep==3.12.0
oslo.reports==3.9.0
oslo.rootwrap==7.10.0
oslo.serialization==5.11.0
oslo.service==4.8.0
oslo.upgradecheck==2.8.0
oslo.utils==10.2.0
oslo.versionedobjects==3.12.0
oslo.vmware==4.10.1
osprofiler==4.4.0
packaging==26.3
paramiko==5.1.0
Paste==3.10.1
PasteDeploy==3.1.0
pbr==7.1.3
prettytable==3.18.0
prometheus_client==0.26.0
prompt_toolkit==3.0.53
psutil==7.2.2
pycadf==4.1.0
pycparser==3.12
pydot==4.0.1
Pygments==2.21.0
PyJWT==2.15.1
PyNaCl==1.6.2
pyOpenSSL==26.4.0
pyparsing==3.3.3
pyperclip==1.11.0
pysaml2==7.5.5
python-barbicanclient==7.6.0
python-dateutil==4.0.0
python-glanceclient==4.13.0
python-keystoneclient==6.0.0
python-novaclient==18.13.1
pytz==2026.6
pyudev==0.24.5
PyYAML==6.0.3
referencing==0.37.0
repoze-lru==0.8
requests==2.34.2
rfc3986==2.0.0
rich==15.0.0
rich-argparse==1.8.0
Routes==2.5.1
rpds-py==2026.9.1
rtslib-fb==2.2.4
setproctitle==1.3.8
six==1.17.0
SQLAlchemy==2.1.9
statsd==4.0.1
stevedore==5.10.0
suds-community==1.2.0
tabulate==0.10.0
taskflow==6.5.0
tenacity==9.2.1
testresources==2.1.2
testscenarios==0.7.0
tooz==9.1.0
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
vine==5.1.0
voluptuous==0.16.0
warlock==2.1.0
wcwidth==0.9.4
WebOb==1.8.11
Werkzeug==3.1.9
wrapt==2.5.2
xmlschema==2.5.1
yappi==1.7.6
zstd==1.5.7.2
PINS
)"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-cinder-venv: $python not found (set WATCHDOGD_PYTHON)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup-cinder-venv: $python is older than 3.11 (cinder 29 / keystone 30 need >= 3.11)" >&2
    exit 1
fi

pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
want="$(printf 'python=%s\n%s\n%s\n' "$pyver" "$pins" "$constraints" | sha256sum | cut -d' ' -f1)"
if [[ -f "$marker" && "$(head -n1 "$marker")" == "$want" && -x "$venv/bin/cinder-api" ]]; then
    echo "setup-cinder-venv: up to date at $venv ($pins, python $pyver)"
    exit 0
fi

start=$SECONDS
# Debian splits venv/ensurepip into python3-venv; a fresh machine may not have it.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "python${pyver}-venv" >/dev/null 2>&1 \
            || apt-get install -y -qq python3-venv >/dev/null
    else
        echo "setup-cinder-venv: $python has no venv/ensurepip (install python3-venv)" >&2
        exit 1
    fi
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$constraints" >"$tmp/constraints.txt"
log="$tmp/pip.log"
# shellcheck disable=SC2086  # $pins is a list of requirement specifiers
if ! "$venv/bin/pip" install --disable-pip-version-check --no-input -q \
        -c "$tmp/constraints.txt" $pins >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -n 30 >&2
    echo "setup-cinder-venv: pip install failed" >&2
    exit 1
fi
if ! "$venv/bin/python" -W ignore -c \
        'import cinder.api, keystone.server.wsgi, keystonemiddleware.auth_token, werkzeug.serving' \
        >"$tmp/import.log" 2>&1; then
    tail -n 30 "$tmp/import.log" >&2
    echo "setup-cinder-venv: installed venv does not import" >&2
    exit 1
fi
printf '%s\n%s\n' "$want" "$pins" >"$marker"
echo "setup-cinder-venv: installed $pins into $venv (python $pyver) in $((SECONDS - start)) s"
