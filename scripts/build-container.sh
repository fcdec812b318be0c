#!/usr/bin/env bash
# Build the watchdogd container image with podman.
#
#   scripts/build-container.sh [--local-base] [--tag IMAGE] [--no-smoke]
#
# Normal machines (a registry is reachable) need nothing of this script:
#
#   podman build -t watchdogd .          # or: docker build -t watchdogd .
#
# This script is for machines like the project's CI, where podman runs without a container
# runtime daemon and without a registry:
#   --local-base   make the base image locally: Debian bookworm (python3 3.11, venv,
#                  CA certificates) with mmdebstrap from the Debian mirror, imported into
#                  podman as localhost/watchdogd-base:bookworm. Default when the official
#                  base image cannot be pulled.
#   builds with --isolation=chroot (no user namespaces or runc needed),
#   from a clean context (Containerfile, pyproject.toml, README.md, watchdogd/), so a local
#   .venv or .cache never goes into the build.
#   Then, unless --no-smoke, runs `watchdogd --version` in the image with a read-only root
#   filesystem where podman can run containers here (it says so when it cannot).
#
# Needs root (or a working rootless podman) and, for --local-base, mmdebstrap.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="localhost/watchdogd:latest"
local_base=""
smoke=1
base_image="localhost/watchdogd-base:bookworm"
official_base="docker.io/library/python:3.12-slim-bookworm"

say() { printf 'build-container: %s\n' "$*"; }
die() { printf 'build-container: ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --local-base) local_base=1 ;;
        --tag) shift; tag="${1:?--tag needs an image name}" ;;
        --no-smoke) smoke="" ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

command -v podman >/dev/null 2>&1 || die "podman not found (Debian: apt-get install podman)"

base="$official_base"
if [ -z "$local_base" ] && ! podman image exists "$official_base" \
        && ! timeout 60 podman pull -q "$official_base" >/dev/null 2>&1; then
    say "cannot pull $official_base; making a local base image instead"
    local_base=1
fi

if [ -n "$local_base" ]; then
    base="$base_image"
    if podman image exists "$base_image"; then
        say "base image $base_image already present"
    else
        command -v mmdebstrap >/dev/null 2>&1 \
            || die "mmdebstrap not found (Debian: apt-get install mmdebstrap)"
        say "making $base_image with mmdebstrap (Debian bookworm, python3, venv)"
        # passwd gives groupadd/useradd; the official slim image has them too.
        mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-venv,ca-certificates,tzdata,passwd \
            --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
            bookworm - \
          | podman import \
              --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
              --change 'ENV LANG=C.UTF-8' \
              --change 'CMD ["python3"]' \
              - "$base_image" >/dev/null
        say "made $base_image"
    fi
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$repo/Containerfile" "$repo/pyproject.toml" "$repo/README.md" "$context/"
# Only the package, never caches or editable-install metadata.
tar -C "$repo" --exclude='__pycache__' --exclude='*.pyc' -cf - watchdogd | tar -C "$context" -xf -

# Behind a TLS-inspecting proxy the image's CA bundle does not know the proxy's CA: lend
# the build stage the host's bundle (read-only, never stored in a layer).
extra=()
host_ca="${PIP_CERT:-}"
if [ -z "$host_ca" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    host_ca=/etc/ssl/certs/ca-certificates.crt
fi
if [ -n "$host_ca" ] && [ -r "$host_ca" ]; then
    extra+=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
if [ -n "${PIP_INDEX_URL:-}" ]; then
    extra+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
fi

say "building $tag from $base (podman build --isolation=chroot)"
started=$(date +%s)
podman build --isolation=chroot --network=host --build-arg "BASE=$base" "${extra[@]}" \
    -f "$context/Containerfile" -t "$tag" "$context"
say "built $tag in $(( $(date +%s) - started ))s: $(podman image inspect --format '{{.Size}}' "$tag") bytes"

if [ -n "$smoke" ]; then
    if out="$(podman run --rm --read-only --network=none "$tag" --version 2>&1)"; then
        say "smoke test (podman run --read-only): $out"
    else
        # No usable OCI runtime here (e.g. crun may not set rlimits in this sandbox): run the
        # entrypoint in the image's filesystem with chroot, as the image's user, instead.
        say "podman cannot run containers here ($(printf '%s' "$out" | tail -n 1))"
        mnt="$(podman image mount "$tag")"
        trap 'podman image umount "$tag" >/dev/null 2>&1 || true; rm -rf "$context"' EXIT
        user="$(podman image inspect --format '{{.Config.User}}' "$tag")"
        out="$(chroot --userspec="$user" "$mnt" /usr/bin/env -i \
            PATH=/opt/watchdogd/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 \
            /opt/watchdogd/bin/watchdogd --version)"
        say "smoke test (chroot into the image as $user): $out"
        for tool in pip pip3 gcc cc make; do
            if chroot "$mnt" /bin/sh -c "command -v $tool" >/dev/null 2>&1; then
                die "the final image contains $tool"
            fi
        done
        say "the final image has no pip and no compiler"
    fi
fi
