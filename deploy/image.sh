#!/usr/bin/env bash
# Build compose.yaml's image here with no registry and no network in the build: the local base
# (deploy/base.sh, cached), the Python wheels on the host (`pip wheel` into deploy/wheelhouse/,
# kept: a second run finds them all there and asks no index), then
#   podman build --network none --build-arg BASE=<local base> --build-arg PIP_NO_INDEX=1
# Prints the image name. Root only (rootful podman). PYTHON: the pip that fetches the wheels
# (default python3; the base's Python is 3.11, Debian bookworm's, so it should be a 3.11).
# Exit status 3: what the build needs could not be fetched here (the base, the wheels); any other
# failure is the build's own.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${RAMSIM_IMAGE:-localhost/ramsim:latest}
PYTHON=${PYTHON:-python3}
base=$(deploy/base.sh) || { echo "deploy/image.sh: the local base image could not be made" >&2; exit 3; }
wheels=deploy/wheelhouse
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$PYTHON" - "$requirements" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
build = project["build-system"]["requires"]
open(sys.argv[1], "w").write("\n".join([*build, *project["project"]["dependencies"]]) + "\n")
PY
if ! "$PYTHON" -m pip wheel -q --no-index --find-links "$wheels" -w "$wheels" -r "$requirements" >/dev/null 2>&1; then
  echo "deploy/image.sh: fetching wheels into $wheels" >&2
  "$PYTHON" -m pip wheel -q --find-links "$wheels" -w "$wheels" -r "$requirements" >&2 \
    || { echo "deploy/image.sh: the wheels could not be fetched" >&2; exit 3; }
fi
build=(podman build --quiet --network none --format docker --build-arg BASE="$base" --build-arg PIP_NO_INDEX=1 -f deploy/Dockerfile)
# the build stage tagged too, so that it stays the layer cache of the next build and older ones can go
"${build[@]}" --target build -t "${IMAGE%:*}-build:latest" . >/dev/null
"${build[@]}" -t "$IMAGE" . >/dev/null
podman image prune -f --filter label=org.ramsim.image >/dev/null  # earlier builds' images, now untagged
echo "$IMAGE"
