#!/usr/bin/env bash
# Regenerate requirements/*.lock: every transitive dependency at an exact version with its
# sha256 hashes, one lock per process kind (see pyproject.toml's extras):
#   dev.lock      the test/bench environment (scripts/setup.sh installs it)
#   node.lock     the tenant node image (docker/node.Dockerfile)
#   reading.lock  the reading frontend image (docker/reading.Dockerfile)
#   export.lock   the model build stage of the reading image
# Run it after changing a pin in pyproject.toml or requirements/build.in, then commit the
# locks; tests/test_locks.py fails while a lock disagrees with pyproject.toml.
# The resolver is uv (pinned), run from its own small venv under .cache/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.9.5
TOOLS=.cache/tools/lock-venv
if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "lock: installing uv $UV_VERSION into $TOOLS"
  python3.11 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "uv==$UV_VERSION"
fi
# The CPU build of torch (for the model build) is a local wheel on these machines
# (/opt/wheels, pip's find-links) and on download.pytorch.org/whl/cpu; it is the only
# package taken from there.
FIND_LINKS=()
for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do [ -d "$dir" ] && FIND_LINKS+=(--find-links "$dir"); done
compile() {  # compile OUT EXTRA...
  local out=$1; shift
  local extras=()
  for extra in "$@"; do extras+=(--extra "$extra"); done
  echo "lock: requirements/$out (extras: ${*:-none})"
  "$TOOLS/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_35 "${FIND_LINKS[@]}" "${extras[@]}" \
    --custom-compile-command "scripts/lock.sh" \
    pyproject.toml requirements/build.in -o "requirements/$out"
}
compile dev.lock dev
compile node.lock node
compile reading.lock reading
compile export.lock reading export
echo "lock: done; commit requirements/*.lock"
