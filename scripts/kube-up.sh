#!/usr/bin/env bash
# Starts a real etcd and kube-apiserver on loopback, as controller-runtime's
# envtest does (no kubelet, no scheduler, no controller-manager), and prints
# the path of an admin kubeconfig. Idempotent: a running control plane is
# reused. Each fresh start begins with an empty etcd.
#
#   scripts/kube-up.sh          # start (or reuse), print the kubeconfig path
#   scripts/kube-up.sh stop     # stop both
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${SYNCSTORE_CACHE:-/var/cache/syncstore}/k8s/run"
ETCD_PORT="${ETCD_PORT:-12379}"
API_PORT="${KUBE_API_PORT:-16443}"
KUBECONFIG_OUT="$RUN/kubeconfig"

stop() {
  for p in kube-apiserver etcd; do
    if [ -f "$RUN/$p.pid" ]; then kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true; rm -f "$RUN/$p.pid"; fi
  done
}
if [ "${1:-}" = stop ]; then stop; exit 0; fi

BIN="$(bash scripts/k8s-bins.sh)"
healthy() {
  [ -f "$KUBECONFIG_OUT" ] && "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" get --raw /readyz >/dev/null 2>&1
}
if healthy; then echo "$KUBECONFIG_OUT"; exit 0; fi
stop
mkdir -p "$RUN/pki"
rm -rf "$RUN/etcd-data"

# A CA, a serving certificate for 127.0.0.1/localhost, the service-account
# signing key and a static admin token: everything envtest generates.
pki="$RUN/pki"
if [ ! -f "$pki/serving.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=syncstore-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/serving.key" -out "$pki/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$pki/ext.cnf"
  openssl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/ext.cnf" -out "$pki/serving.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  token=$(openssl rand -hex 24)
  echo "$token,admin,admin,system:masters" > "$pki/tokens.csv"
fi
token=$(cut -d, -f1 "$pki/tokens.csv")

nohup "$BIN/etcd" --data-dir "$RUN/etcd-data" --name envtest \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "envtest=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync \
  > "$RUN/etcd.log" 2>&1 &
echo $! > "$RUN/etcd.pid"

nohup "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$pki/tokens.csv" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
  --disable-admission-plugins ServiceAccount --allow-privileged=true \
  > "$RUN/kube-apiserver.log" 2>&1 &
echo $! > "$RUN/kube-apiserver.pid"

cat > "$KUBECONFIG_OUT" <<KC
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: envtest
  context: {cluster: envtest, user: admin, namespace: default}
current-context: envtest
KC
chmod 600 "$KUBECONFIG_OUT"

for _ in $(seq 1 120); do
  if healthy; then echo "$KUBECONFIG_OUT"; exit 0; fi
  sleep 0.5
done
echo "kube-apiserver did not become ready; see $RUN/kube-apiserver.log" >&2
tail -20 "$RUN/kube-apiserver.log" >&2
exit 1
