#!/usr/bin/env bash
# Build the local base image compose.yaml's tests use, once, and keep it:
#   debootstrap --variant=minbase --include=python3,python3-venv,mosquitto bookworm DIR
#   tar -C DIR -c . | podman import - localhost/ramsim-base:bookworm
# (no image registry is needed: Debian's packages are the only thing fetched, by debootstrap).
# The root file system is cached as a tarball ($RAMSIM_BASE_CACHE, default /var/cache/ramsim), so
# an image store that was wiped is refilled in seconds. Prints the image name. Root only.
set -euo pipefail
IMAGE=${RAMSIM_BASE_IMAGE:-localhost/ramsim-base:bookworm}
CACHE=${RAMSIM_BASE_CACHE:-/var/cache/ramsim}
TARBALL="$CACHE/ramsim-base-bookworm.tar"

if podman image exists "$IMAGE" 2>/dev/null; then
  echo "$IMAGE"
  exit 0
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "deploy/base.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "deploy/base.sh: debootstrap bookworm into $root" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,mosquitto bookworm "$root" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
podman import --quiet "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
