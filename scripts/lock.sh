#!/usr/bin/env bash
# Regenerate the hash-pinned lock files in requirements/ (see docs/container.md, "Refreshing the lock files").
#
#   scripts/lock.sh            # or: make lock
#
# Per supported Python (3.11, 3.12):
#   lock-pyXY.txt       what the image installs: the runtime dependencies + the `fast` extra (uvloop)
#   lock-pyXY-test.txt  what `make test` installs: the same pins (generated with lock-pyXY.txt as constraints) + `test`
# and, Python-independent:
#   build.txt           setuptools, to build enforcer itself and the few sdist-only dependencies without fetching an
#                       unpinned build backend (pip install --no-build-isolation)
#   podman-compose.txt  the Compose implementation scripts/image-test.sh drives
# uv resolves for a target Python without that interpreter installed, from PyPI (or $UV_INDEX_URL), for Linux x86-64
# (the hashes cover every file of each pinned release, so other platforms install the same versions).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONS=(3.11 3.12)
UV_VERSION=0.13.9

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  tools=$(mktemp -d)
  trap 'rm -rf "$tools"' EXIT
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "uv==$UV_VERSION"
  uv="$tools/bin/uv"
fi
compile() { "$uv" pip compile --quiet --generate-hashes --python-platform x86_64-unknown-linux-gnu "$@"; }

for py in "${PYTHONS[@]}"; do
  tag=${py/./}
  compile --python-version "$py" --extra fast pyproject.toml -o "requirements/lock-py$tag.txt"
  compile --python-version "$py" --extra fast --extra test -c "requirements/lock-py$tag.txt" pyproject.toml \
    -o "requirements/lock-py$tag-test.txt"
done
compile --python-version "${PYTHONS[0]}" requirements/build.in -o requirements/build.txt
compile --python-version "${PYTHONS[0]}" requirements/podman-compose.in -o requirements/podman-compose.txt
echo "lock: requirements/ regenerated; review the diff, then run make test and make test-image" >&2
