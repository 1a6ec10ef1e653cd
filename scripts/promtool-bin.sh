#!/usr/bin/env bash
# Builds promtool and the prometheus server from the
# github.com/prometheus/prometheus Go module once, with the machine's Go,
# and caches them outside the clone; prints the directory that holds both.
#
#   PROMETHEUS_VERSION  the Go module version (default below)
#
# Prometheus 3.x is published on the Go module proxy as v0.3MM.P for release
# 3.MM.P (v0.316.0 is Prometheus 3.16.0): `go install` refuses the v3.x tags,
# whose module path has no /v3 suffix. The service-discovery plugins are left
# out (-tags remove_all_sd): the tests scrape static targets and files, and
# the cloud SDKs would triple the build.
set -euo pipefail
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
CACHE="${SYNCSTORE_CACHE:-/var/cache/syncstore}/prometheus"
BIN="$CACHE/bin-$PROMETHEUS_VERSION"

if [ -x "$BIN/promtool" ] && [ -x "$BIN/prometheus" ]; then
  echo "$BIN"; exit 0
fi
command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
mkdir -p "$CACHE"
# Built into a private directory and moved into place whole, so that a
# second caller never sees half a build.
work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
minor_patch="${PROMETHEUS_VERSION#v0.3}"
release="3.$((10#${minor_patch%%.*})).${minor_patch#*.}"
ldflags="-X github.com/prometheus/common/version.Version=$release"
for cmd in promtool prometheus; do
  (cd /tmp && GOBIN="$work" GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 \
    go install -trimpath -tags remove_all_sd -ldflags "$ldflags" \
    "github.com/prometheus/prometheus/cmd/$cmd@$PROMETHEUS_VERSION") >&2
done
mkdir -p "$(dirname "$BIN")"
rm -rf "$BIN"
mv "$work" "$BIN"
trap - EXIT
echo "$BIN"
