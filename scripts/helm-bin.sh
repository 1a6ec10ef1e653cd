#!/usr/bin/env bash
# Builds helm from the helm.sh/helm/v3 Go module once and caches it outside
# the clone; prints the binary's path.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
BIN="${SYNCSTORE_CACHE:-/var/cache/syncstore}/helm/bin-$HELM_VERSION"
if [ ! -x "$BIN/helm" ]; then
  command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
  (cd /tmp && GOBIN="$BIN" GOFLAGS=-mod=mod CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >&2
fi
echo "$BIN/helm"
