#!/usr/bin/env bash
# The Prometheus Operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule),
# as its Go module github.com/prometheus-operator/prometheus-operator ships
# them (example/prometheus-operator-crd/), copied once into a cache outside
# the clone; prints that directory. The operator's PodMonitor test installs
# podmonitors from here, and scripts/chart-check.sh dry-runs the chart's
# ServiceMonitor and PrometheusRule against the other two.
#
#   PROMETHEUS_OPERATOR_VERSION  the module version (default below)
set -euo pipefail
VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
DIR="${SYNCSTORE_CACHE:-/var/cache/syncstore}/prometheus/operator-crds-$VERSION"
kinds=(podmonitors servicemonitors prometheusrules)
have=1
for k in "${kinds[@]}"; do [ -s "$DIR/monitoring.coreos.com_$k.yaml" ] || have=0; done
if [ "$have" = 1 ]; then echo "$DIR"; exit 0; fi
command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
src=$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@$VERSION" \
  | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$src/example/prometheus-operator-crd" ] || { echo "no CRDs in $src" >&2; exit 1; }
mkdir -p "$DIR"
for k in "${kinds[@]}"; do
  cp "$src/example/prometheus-operator-crd/monitoring.coreos.com_$k.yaml" "$DIR/"
  chmod 644 "$DIR/monitoring.coreos.com_$k.yaml"
done
echo "$DIR"
