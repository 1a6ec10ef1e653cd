#!/usr/bin/env bash
# The one test command: installs and starts what the tests need (idempotent),
# then checks formatting and lints and runs every test of the workspace
# against real SQLite, PostgreSQL and MariaDB.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -- items::   # extra args go to `cargo test` (a filter)
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outputs and downloaded crates live outside the clone so that fresh
# clones (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
mkdir -p "$CARGO_TARGET_DIR"
# That directory outlives every clone, and each clone's path makes new
# artifacts of the workspace crates (about 15 GB of test executables and
# rlibs a run, plus 17 GB of incremental state): three runs in a day filled
# the disk on 2026-12-02. So a run keeps no incremental state (of no use to
# a fresh clone), and drops the test executables and the workspace crates'
# own artifacts that no build touched in the last hour: another clone's or
# an earlier run's. Dependencies stay; cargo rebuilds whatever it needs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
find "$CARGO_TARGET_DIR/debug/incremental" -mindepth 1 -maxdepth 1 -type d -mmin +60 -exec rm -rf {} + 2>/dev/null || true
find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -mmin +60 \
  \( \( ! -name '*.*' -size +20M \) -o -name 'libsyncstore*' -o -name 'syncstore*' \) \
  -delete 2>/dev/null || true

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (rustup: https://rustup.rs)" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

bash scripts/services.sh
# The country-restriction tests read MaxMind's test database (from PyPI).
TEST_GEOIP_DB="$(bash scripts/geoip-testdb.sh)"
export TEST_GEOIP_DB

# The operator's integration tests run against a real kube-apiserver and
# etcd, built once from their Go modules and started envtest-style.
TEST_KUBECONFIG="$(bash scripts/kube-up.sh)"
TEST_KUBECTL="$(bash scripts/k8s-bins.sh)/kubectl"
TEST_HELM="$(bash scripts/helm-bin.sh)"
export TEST_KUBECONFIG TEST_KUBECTL TEST_HELM
# Analytics tests run against a real Kafka broker (KRaft, Maven Central jars).
TEST_KAFKA_BROKERS="$(bash scripts/kafka-up.sh)"
export TEST_KAFKA_BROKERS
# A private CA and a certificate for 127.0.0.1, for Redis over TLS.
TEST_TLS_CERTS="$(bash scripts/test-certs.sh)"
export TEST_TLS_CERTS
# Redis Cluster (3 masters x 1 replica on 7000-7005, sharded pub/sub; TLS
# on 8000-8005) for
# the cluster fan-out, failover and quota tests (issue 19).
TEST_REDIS_CLUSTER="$(bash scripts/redis-cluster-up.sh)"
export TEST_REDIS_CLUSTER
# Redis Sentinel (1 master, 1 replica, 3 sentinels on 6390-6391 and
# 26390-26392) for the Sentinel failover and quota tests (issue 19).
TEST_REDIS_SENTINEL="$(bash scripts/redis-sentinel-up.sh)"
export TEST_REDIS_SENTINEL
# The TLS setup prints its URL, then the sentinels' password.
{ read -r TEST_REDIS_SENTINEL_TLS; read -r TEST_REDIS_SENTINEL_TLS_PASSWORD; } \
  < <(REDIS_SENTINEL_TLS=1 bash scripts/redis-sentinel-up.sh)
export TEST_REDIS_SENTINEL_TLS TEST_REDIS_SENTINEL_TLS_PASSWORD
# Monitoring (issue 18): the Prometheus Operator's CRDs for the PodMonitor
# test, and promtool and prometheus built once from their Go module.
TEST_PROMETHEUS_OPERATOR_CRDS="$(bash scripts/prometheus-operator-crds.sh)"
export TEST_PROMETHEUS_OPERATOR_CRDS
bash scripts/promtool-bin.sh >/dev/null
# Trace tests export to a real Jaeger v2, built once from its Go module.
TEST_JAEGER_BIN="$(bash scripts/jaeger-bin.sh)"
export TEST_JAEGER_BIN

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast -- "${extra[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo "== socket.io-client tests (tests/js)"
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
set +e
SYNCSTORE_BIN="$CARGO_TARGET_DIR/debug/syncstore" \
  node --test --test-concurrency=1 --test-reporter=tap tests/js/*.test.mjs 2>&1 | tee -a "$log"
js_status=${PIPESTATUS[0]}
set -e
[ "$status" -ne 0 ] || status=$js_status

set +e
echo "== schemathesis against the OpenAPI spec"
bash scripts/schemathesis.sh 2>&1 | tee -a "$log"
st_status=${PIPESTATUS[0]}
echo "== promtool: alert rules, their unit tests, dashboard queries"
bash scripts/promtool-check.sh 2>&1 | tee -a "$log"
promtool_status=${PIPESTATUS[0]}
echo "== Helm chart (lint, template, dry-run on the apiserver)"
bash scripts/chart-check.sh 2>&1 | tee -a "$log"
chart_status=${PIPESTATUS[0]}
echo "== end-to-end scenario (e2e/run.sh), the store's Redis being the Redis Cluster"
E2E_REDIS_URL="redis+cluster://$TEST_REDIS_CLUSTER" bash e2e/run.sh 2>&1 | tee -a "$log"
e2e_status=${PIPESTATUS[0]}
echo "== chaos test, short run (e2e/chaos)"
SYNCSTORE_BIN="$CARGO_TARGET_DIR/debug/syncstore" CHAOS_SECONDS="${CHAOS_SECONDS:-20}" \
  node e2e/chaos/chaos.mjs 2>&1 | tee -a "$log"
chaos_status=${PIPESTATUS[0]}
echo "== chaos test on the Redis Cluster, short run (CHAOS_REDIS=cluster)"
SYNCSTORE_BIN="$CARGO_TARGET_DIR/debug/syncstore" CHAOS_SECONDS="${CHAOS_SECONDS:-20}" CHAOS_REDIS=cluster \
  node e2e/chaos/chaos.mjs 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || chaos_status=1
set -e
[ "$status" -ne 0 ] || status=$st_status
[ "$status" -ne 0 ] || status=$promtool_status
[ "$status" -ne 0 ] || status=$chart_status
[ "$status" -ne 0 ] || status=$e2e_status
[ "$status" -ne 0 ] || status=$chaos_status

# One closing line over every runner: cargo prints one line per test binary
# (the last is often the doc-tests' "0 passed"), node prints "# pass N",
# the chart check one "chart: ok|FAIL" line per check (promtool likewise),
# e2e a summary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     /^chart: ok / { p += 1 } /^chart: FAIL / { f += 1 }
     /^promtool: ok / { p += 1 } /^promtool: FAIL / { f += 1 }
     /^e2e: [0-9]+ passed/ { p += $2; f += $4 }
     /^chaos: PASS/ { p += 1 } /^chaos: FAIL/ { f += 1 }
     /^schemathesis: PASS/ { p += 1 } /^schemathesis: FAIL/ { f += 1 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
