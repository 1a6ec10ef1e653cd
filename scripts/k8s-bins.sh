#!/usr/bin/env bash
# Builds kube-apiserver (from the k8s.io/kubernetes Go module) and etcd (from
# go.etcd.io/etcd/server/v3) once, the way controller-runtime's envtest uses
# them, and caches them outside the clone. Prints the directory that holds
# the binaries. kubectl comes from the same build so versions match.
#
#   K8S_VERSION   k8s.io/kubernetes release (default below)
#   ETCD_VERSION  etcd server release
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${SYNCSTORE_CACHE:-/var/cache/syncstore}/k8s"
BIN="$CACHE/bin-$K8S_VERSION-etcd-$ETCD_VERSION"

if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ] && [ -x "$BIN/kubectl" ]; then
  echo "$BIN"; exit 0
fi
command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
mkdir -p "$BIN"
export GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0

# k8s.io/kubernetes points its staging modules at ./staging with replace
# directives, which `go install pkg@version` refuses. A wrapper module pins
# each staging module to the matching published v0.x tag instead.
wrap="$CACHE/wrap-$K8S_VERSION"
mkdir -p "$wrap"
staging_version="v0.${K8S_VERSION#v1.}"
if [ ! -f "$wrap/go.sum" ]; then
  (
    cd "$wrap"
    rm -f go.mod
    go mod init syncstore.dev/k8s-wrapper >/dev/null 2>&1
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO
    modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$modfile" | awk '{print $1}' | while read -r m; do
      go mod edit -replace "$m=$m@$staging_version"
    done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    go mod tidy >/dev/null
  )
fi
# Stamp the release, or clients see v0.0.0 and warn about version skew.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
(cd "$wrap" && go build -trimpath -ldflags "$ldflags" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
(cd "$wrap" && go build -trimpath -ldflags "$ldflags" -o "$BIN/kubectl" k8s.io/kubernetes/cmd/kubectl)

etcd_wrap="$CACHE/etcd-$ETCD_VERSION"
mkdir -p "$etcd_wrap"
(
  cd "$etcd_wrap"
  [ -f go.mod ] || go mod init syncstore.dev/etcd-wrapper >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
GO
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go mod tidy >/dev/null
  go build -trimpath -o "$BIN/etcd" .
)
echo "$BIN"
