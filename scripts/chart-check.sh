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

# Monitoring (issue 18): the PrometheusRule carries files/alerts.yaml with
# the runbook base swapped, the dashboards are sidecar ConfigMaps of valid
# JSON, and with everything on the apiserver takes the lot, against the
# Prometheus Operator's real ServiceMonitor and PrometheusRule CRDs.
monitoring=(--set serviceMonitor.enabled=true --set prometheusRule.enabled=true --set dashboards.enabled=true)
"$HELM" lint "$chart" "${monitoring[@]}" >/dev/null && ok "helm lint with the PrometheusRule and dashboards"
rule=$("$HELM" template syncstore "$chart" -n syncstore-system "${monitoring[@]}" \
  --set prometheusRule.runbookBaseUrl=https://runbooks.example.org/syncstore --show-only templates/prometheusrule.yaml)
alerts=$(grep -c '^ *- alert: ' "$chart/files/alerts.yaml")
[ "$(grep -c '^ *- alert: ' <<<"$rule")" = "$alerts" ] || fail "the PrometheusRule does not carry the $alerts alerts of files/alerts.yaml"
[ "$(grep -c 'runbook_url: https://runbooks.example.org/syncstore#syncstore' <<<"$rule")" = "$alerts" ] \
  || fail "runbook links do not follow prometheusRule.runbookBaseUrl"
ok "PrometheusRule carries the $alerts alerts, runbooks at prometheusRule.runbookBaseUrl"
"$HELM" template syncstore "$chart" -n syncstore-system --set dashboards.enabled=true \
  --show-only templates/dashboards.yaml \
  | "$KUBECTL" --kubeconfig "$KUBECONFIG" create --dry-run=client -o json -f - | python3 -c '
import sys, json
text, docs, i = sys.stdin.read(), [], 0
while text[i:].strip():
    i += len(text[i:]) - len(text[i:].lstrip())
    doc, i = json.JSONDecoder().raw_decode(text, i)
    docs.append(doc)
assert len(docs) == 2, len(docs)
for d in docs:
    assert d["metadata"]["labels"]["grafana_dashboard"] == "1", d["metadata"]
    for name, text in d["data"].items():
        assert json.loads(text)["panels"], name
' || fail "the dashboards are not two ConfigMaps labelled grafana_dashboard: \"1\" holding dashboard JSON"
ok "dashboards rendered as two grafana_dashboard ConfigMaps of valid JSON"
crds="$(bash scripts/prometheus-operator-crds.sh)"
for k in servicemonitors prometheusrules; do
  "$KUBECTL" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts -f "$crds/monitoring.coreos.com_$k.yaml" >/dev/null
done
"$KUBECTL" --kubeconfig "$KUBECONFIG" wait --for=condition=Established --timeout=30s \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
"$HELM" template syncstore "$chart" -n syncstore-system "${monitoring[@]}" > "$out"
"$KUBECTL" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts --dry-run=server -f "$out" >/dev/null
ok "with ServiceMonitor, PrometheusRule and dashboards: accepted by kube-apiserver (--dry-run=server)"
