#!/usr/bin/env bash
# Builds Jaeger v2 (the all-in-one `jaeger` binary: an OpenTelemetry
# Collector distribution with Jaeger's storage and query API) from the
# github.com/jaegertracing/jaeger Go module once, and caches it outside the
# clone; prints the binary's path. The trace test starts it on loopback.
#
#   JAEGER_VERSION  module version: v1.76.0 is Jaeger v2.13.0 (the module
#                   tags each v2 release with its v1 twin)
set -euo pipefail
JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
CACHE="${SYNCSTORE_CACHE:-/var/cache/syncstore}/jaeger"
BIN="$CACHE/bin-$JAEGER_VERSION"
if [ ! -x "$BIN/jaeger" ]; then
  command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
  mkdir -p "$BIN"
  # A wrapper module that requires the release and builds its command: the
  # module's go.mod may carry replace directives, which `go install
  # pkg@version` refuses.
  wrap="$CACHE/wrap-$JAEGER_VERSION"
  mkdir -p "$wrap"
  (
    cd "$wrap"
    export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0
    if [ ! -f go.sum ]; then
      rm -f go.mod
      go mod init syncstore.dev/jaeger-wrapper >/dev/null 2>&1
      go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2
    fi
    go build -trimpath -o "$BIN/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
    mv "$BIN/jaeger.tmp" "$BIN/jaeger"
  )
fi
echo "$BIN/jaeger"
