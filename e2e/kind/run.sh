#!/usr/bin/env bash
# The end-to-end scenario on a kind cluster, for machines with Docker (the
# development machines of this repository have no Docker engine, so this is
# not run by the test command). Needs docker, kind, kubectl, helm and node.
#
#   bash e2e/kind/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind kubectl helm node; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

kind get clusters | grep -qx syncstore || kind create cluster --config e2e/kind/kind-config.yaml
docker build --target syncstore -t syncstore:e2e .
docker build --target operator -t syncstore-operator:e2e .
kind load docker-image syncstore:e2e syncstore-operator:e2e --name syncstore

kubectl apply -f e2e/kind/deps.yaml
kubectl -n databases rollout status deploy/postgres deploy/redis --timeout=180s
kubectl -n kafka rollout status deploy/kafka --timeout=180s

helm upgrade --install syncstore charts/syncstore-operator -n syncstore-system --create-namespace \
  --set image.repository=syncstore-operator --set image.tag=e2e --set image.pullPolicy=Never --wait

NS=e2e
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic pg-admin --dry-run=client -o yaml \
  --from-literal=url=postgres://syncstore_admin:change-me@postgres.databases.svc:5432/syncstore | kubectl apply -f -
kubectl -n "$NS" create secret generic redis --dry-run=client -o yaml \
  --from-literal=url=redis://redis.databases.svc:6379 | kubectl apply -f -
# The examples name a published image; kind runs the one built above.
sed 's#ghcr.io/syncstore/syncstore:0.1.0#syncstore:e2e#' examples/syncstore-postgres.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" apply -f examples/apikeys.yaml
kubectl -n "$NS" wait --for=condition=Ready --timeout=180s syncstore/chat apikey/mobile-alice apikey/dashboard
kubectl -n "$NS" rollout status deploy/chat deploy/chat-analytics --timeout=180s
kubectl -n "$NS" get syncstores,apikeys,deploy,pods

# The same client checks as the local scenario, through a port-forward.
kubectl -n "$NS" port-forward svc/chat 30080:80 >/dev/null &
trap 'kill $!' EXIT
sleep 2
KEY=$(kubectl -n "$NS" get secret chat-mobile-key -o jsonpath='{.data.apiKey}' | base64 -d)
curl -fsS -X PUT localhost:30080/api/v1/sync-storage/item/hello -H "X-API-Key: $KEY" \
  -H 'Content-Type: application/json' -d '{"value":"from kind"}'
echo
curl -fsS localhost:30080/api/v1/sync-storage/item/hello -H "X-API-Key: $KEY"
echo
echo "kind scenario: PASS"
