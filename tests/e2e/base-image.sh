#!/usr/bin/env bash
# Build the local Python base image the e2e tests pass to the Dockerfile as BASE_IMAGE.
# No container registry is reachable here, so the base is Debian bookworm made with
# debootstrap (python3 + python3-venv: Debian bookworm's Python 3.11, the image's: docs/dependencies.md)
# and imported into podman. Cached: does nothing when the image already exists
# (FORCE=1 rebuilds). MIRROR=... picks another Debian mirror.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
image="${BASE_IMAGE:-localhost/fiboserver-base:bookworm}"
suite="${SUITE:-bookworm}"

if [[ "${FORCE:-0}" != 1 ]] && podman image exists "$image"; then
    echo "base-image: $image exists, kept (FORCE=1 rebuilds)"
    exit 0
fi

root="$(mktemp -d /var/tmp/fiboserver-rootfs.XXXXXX)"
trap 'rm -rf "$root" "$root.log"' EXIT
start=$SECONDS
echo "base-image: debootstrap $suite into $root"
# minbase: no init, no docs tooling; the image only needs an interpreter, venv and CAs.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" "${MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1 \
    || { tail -30 "$root.log"; exit 1; }
# Shrink: package lists and caches are not needed at run time.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | podman import --quiet \
    --change 'CMD ["/usr/bin/python3"]' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$image" >/dev/null
echo "base-image: imported $image in $((SECONDS - start)) s"
