#!/usr/bin/env bash
# The end-to-end scenario: YAML in, synced devices and analytics out.
#
# Brings up a real kube-apiserver and etcd, PostgreSQL, Redis and Kafka
# (idempotently), installs the CRDs and RBAC from the rendered Helm chart,
# runs the operator as a process under the chart's ServiceAccount, applies
# examples/ with kubectl, waits for Ready, starts a Prometheus server (built
# from its Go module) with the chart's alert rules, then runs
# e2e/scenario.mjs, which plays the kubelet for the Deployments the operator
# made, drives the official socket.io-client and REST against them, and
# checks what Prometheus scraped and which alerts fire. Prints a pass/fail
# summary; exits non-zero on any failure.
#
#   bash e2e/run.sh
#   E2E_REDIS_URL=redis+cluster://127.0.0.1:7000,… bash e2e/run.sh   # the
#     store's Redis URL (its Secret); the test command gives it the Redis
#     Cluster of scripts/redis-cluster-up.sh
#   E2E_POSTGRES_ADMIN_URL=postgres://…  # the admin URL of its database
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
say() { printf '== e2e: %s\n' "$*"; }

bash scripts/services.sh >/dev/null
KUBECONFIG_ADMIN="$(bash scripts/kube-up.sh)"
BIN_DIR="$(bash scripts/k8s-bins.sh)"
KUBECTL="$BIN_DIR/kubectl"
HELM="$(bash scripts/helm-bin.sh)"
PROM_BIN="$(bash scripts/promtool-bin.sh)"
bash scripts/kafka-up.sh >/dev/null
cargo build -q -p syncstore -p syncstore-operator
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)

# Cluster DNS for the one in-cluster name the example uses: the Kafka
# Service. PostgreSQL and Redis come in through Secrets, as they would.
grep -q 'kafka.kafka.svc.cluster.local' /etc/hosts \
  || echo '127.0.0.1 kafka.kafka.svc.cluster.local # syncstore e2e' >> /etc/hosts

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
SYSTEM=syncstore-system
NS="e2e-$(date +%s)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "installing the CRDs and RBAC from the rendered chart"
k create namespace "$SYSTEM" --dry-run=client -o yaml | k apply -f - >/dev/null
"$HELM" template syncstore charts/syncstore-operator -n "$SYSTEM" --include-crds \
  --show-only templates/rbac.yaml --show-only templates/serviceaccount.yaml > "$CARGO_TARGET_DIR/e2e-rbac.yaml"
# --show-only leaves the CRDs out; they come from the chart's crds/ folder.
k apply --server-side --force-conflicts -f charts/syncstore-operator/crds/ >/dev/null
k wait --for=condition=Established --timeout=30s crd/syncstores.syncstore.dev crd/apikeys.syncstore.dev >/dev/null
k apply -f "$CARGO_TARGET_DIR/e2e-rbac.yaml" >/dev/null

say "starting the operator as ServiceAccount $SYSTEM/syncstore-syncstore-operator"
token=$(k -n "$SYSTEM" create token syncstore-syncstore-operator --duration=2h)
OPERATOR_KUBECONFIG="$CARGO_TARGET_DIR/e2e-operator.kubeconfig"
python3 - "$KUBECONFIG_ADMIN" "$token" > "$OPERATOR_KUBECONFIG" <<'PY'
import sys, re
text = open(sys.argv[1]).read()
print(re.sub(r"token: .*", "token: " + sys.argv[2], text))
PY
# It watches only the scenario's namespace: without a namespace controller,
# namespaces the test suite deleted linger here with their objects.
KUBECONFIG="$OPERATOR_KUBECONFIG" POD_NAMESPACE="$SYSTEM" POD_NAME=operator-e2e WATCH_NAMESPACE="$NS" \
  OPERATOR_HTTP_ADDR=127.0.0.1:18090 USAGE_SYNC_INTERVAL=3s LOG_LEVEL=info,kube=warn,sqlx=warn \
  "$CARGO_TARGET_DIR/debug/syncstore-operator" run > "$CARGO_TARGET_DIR/e2e-operator.log" 2>&1 &
pids+=($!)

say "starting Prometheus on loopback (scrapes the emulated pods and the operator)"
# The pods' targets come from a file the scenario's kubelet emulation
# writes as it starts them (file_sd), with the labels a PodMonitor gives
# (namespace, pod, job = <namespace>/<store>). The operator is scraped with
# honor_labels, as the chart's ServiceMonitor does, so its per-store series
# keep the store's namespace. The rules are the chart's with every `for:`
# at 3s; the expressions are copied byte for byte.
PROM_DIR="$CARGO_TARGET_DIR/e2e-prometheus"
rm -rf "$PROM_DIR" && mkdir -p "$PROM_DIR"
sed -E 's/^( +for: ).*/\13s/' charts/syncstore-operator/files/alerts.yaml > "$PROM_DIR/rules.yaml"
echo '[]' > "$PROM_DIR/targets.json"
cat > "$PROM_DIR/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: pods
    file_sd_configs: [{files: [targets.json], refresh_interval: 1s}]
  - job_name: operator
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:18090"]
        labels: {job: "$SYSTEM/syncstore-operator", namespace: "$SYSTEM", pod: operator-e2e}
YAML
"$PROM_BIN/promtool" check config "$PROM_DIR/prometheus.yml" >/dev/null
PROM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PROM_BIN/prometheus" --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" > "$PROM_DIR/prometheus.log" 2>&1 &
pids+=($!)

say "applying examples/ into namespace $NS"
k create namespace "$NS" >/dev/null
k -n "$NS" create secret generic pg-admin \
  --from-literal=url="${E2E_POSTGRES_ADMIN_URL:-postgres://syncstore:syncstore@127.0.0.1:5432/syncstore}" >/dev/null
k -n "$NS" create secret generic redis --from-literal=url="${E2E_REDIS_URL:-redis://127.0.0.1:6379}" >/dev/null
k -n "$NS" apply -f examples/syncstore-postgres.yaml -f examples/apikeys.yaml
# No kubelet here (the scenario plays it), so the store cannot be Ready
# (= a pod serves) yet: wait for its database, and for the keys.
k -n "$NS" wait --for=condition=DatabaseReady --timeout=120s syncstore/chat
k -n "$NS" wait --for=condition=Ready --timeout=120s apikey/mobile-alice apikey/dashboard
k -n "$NS" get syncstores,apikeys

say "running the scenario"
set +e
KUBECTL="$KUBECTL" KUBECONFIG="$KUBECONFIG_ADMIN" NS="$NS" SYNCSTORE_BIN="$CARGO_TARGET_DIR/debug/syncstore" \
  PROM_URL="http://127.0.0.1:$PROM_PORT" PROM_TARGETS="$PROM_DIR/targets.json" \
  node e2e/scenario.mjs
status=$?
set -e
if [ "$status" -ne 0 ]; then
  say "operator log (last 30 lines)"
  tail -30 "$CARGO_TARGET_DIR/e2e-operator.log"
  say "Prometheus log (last 10 lines)"
  tail -10 "$PROM_DIR/prometheus.log"
fi
exit "$status"
