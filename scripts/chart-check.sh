#!/usr/bin/env bash
# Checks charts/syncstore-operator: helm lint (with the values schema, also
# with the ServiceMonitor on), helm template, and the rendered manifests
# (CRDs included) dry-run on the real kube-apiserver of scripts/kube-up.sh.
# The chart's CRDs must be the generated ones.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM="$(bash scripts/helm-bin.sh)"
KUBECTL="$(bash scripts/k8s-bins.sh)/kubectl"
KUBECONFIG="${KUBECONFIG_OVERRIDE:-$(bash scripts/kube-up.sh)}"
chart=charts/syncstore-operator
ok() { printf 'chart: ok   %s\n' "$*"; }
fail() { printf 'chart: FAIL %s\n' "$*"; exit 1; }

cmp -s crds/syncstore.dev.yaml "$chart/crds/syncstore.dev.yaml" || fail "charts/syncstore-operator/crds differs from crds/syncstore.dev.yaml (cp it)"
ok "CRDs match crds/syncstore.dev.yaml"
"$HELM" lint "$chart" >/dev/null && ok "helm lint"
"$HELM" lint "$chart" --set serviceMonitor.enabled=true >/dev/null && ok "helm lint with the ServiceMonitor"
if "$HELM" lint "$chart" --set replicaCount=0 >/dev/null 2>&1; then fail "the values schema accepted replicaCount=0"; fi
ok "values.schema.json refuses replicaCount=0"
out=$(mktemp); trap 'rm -f "$out"' EXIT
"$HELM" template syncstore "$chart" -n syncstore-system --include-crds > "$out"
ok "helm template ($(grep -c '^kind:' "$out") objects)"
"$HELM" template syncstore "$chart" -n syncstore-system --set serviceMonitor.enabled=true | grep -q 'kind: ServiceMonitor' \
  || fail "no ServiceMonitor when enabled"
ok "ServiceMonitor rendered when enabled"
scoped=$("$HELM" template syncstore "$chart" -n syncstore-system --set watchNamespace=team-a)
grep -q 'kind: ClusterRoleBinding' <<<"$scoped" && fail "watchNamespace still renders a ClusterRoleBinding"
ok "watchNamespace renders namespace-scoped RBAC"
"$KUBECTL" --kubeconfig "$KUBECONFIG" create namespace syncstore-system --dry-run=client -o yaml \
  | "$KUBECTL" --kubeconfig "$KUBECONFIG" apply -f - >/dev/null
"$KUBECTL" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts --dry-run=server -f "$out" >/dev/null
ok "rendered manifests accepted by kube-apiserver (--dry-run=server)"
