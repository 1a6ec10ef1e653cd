#!/usr/bin/env bash
# A Redis Cluster of 3 masters x 1 replica on loopback (ports 7000-7005 by
# default), from Debian's redis-server (>= 7 for sharded pub/sub), each node
# in its own directory under $SYNCSTORE_CACHE/redis-cluster. Each node also
# serves TLS on its port + 1000 (8000-8005), with the certificates of
# scripts/test-certs.sh, for rediss+cluster://. The cluster bus is TLS too
# (tls-cluster yes): only then does CLUSTER SLOTS answer a TLS client with
# the TLS ports, and a plain one with the plain ports; and so is
# replication, since replicas then find their masters at the TLS ports. Idempotent: a healthy cluster is
# reused; a node that died (a fault test's kill -9) is started again and
# rejoins. Prints the seed node list for REDIS_URL=redis+cluster://<list>
# (the TLS seeds are the same hosts with 1000 added to each port).
#
#   scripts/redis-cluster-up.sh          # start (or reuse)
#   scripts/redis-cluster-up.sh stop     # stop every node (the data goes)
#   scripts/redis-cluster-up.sh heal     # restart dead nodes, wait for "ok"
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${SYNCSTORE_CACHE:-/var/cache/syncstore}/redis-cluster"
BASE="${REDIS_CLUSTER_BASE_PORT:-7000}"
PORTS=()
for i in 0 1 2 3 4 5; do PORTS+=($((BASE + i))); done
SEEDS=$(printf '127.0.0.1:%s,' "${PORTS[@]}"); SEEDS="${SEEDS%,}"

if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
major=$(redis-server --version | sed -E 's/.*v=([0-9]+)\..*/\1/')
if [ "$major" -lt 7 ]; then
  echo "redis-server $(redis-server --version) is older than 7: no sharded pub/sub" >&2
  exit 1
fi

CERTS=$(bash scripts/test-certs.sh)
alive() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
tls_alive() { redis-cli -p "$(($1 + 1000))" --tls --cacert "$CERTS/ca.pem" ping 2>/dev/null | grep -q PONG; }
cluster_ok() { redis-cli -p "$BASE" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
# Every slot covered and as many nodes known as we run: a cluster whose
# creation was interrupted is not reused.
complete() {
  tls_alive "$BASE" && cluster_ok && redis-cli -p "$BASE" config get tls-replication | grep -qx yes && [ "$(redis-cli -p "$BASE" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')" = 6 ] \
    && [ "$(redis-cli -p "$BASE" cluster info | sed -n 's/^cluster_slots_assigned:\([0-9]*\).*/\1/p')" = 16384 ]
}

start_node() {
  local port=$1
  mkdir -p "$DIR/$port"
  # A short node timeout: a killed master's replica is promoted in about
  # two seconds, so the fault tests stay short.
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --dir "$DIR/$port" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 2000 --appendonly no --save '' \
    --tls-port "$((port + 1000))" --tls-cert-file "$CERTS/server.pem" \
    --tls-key-file "$CERTS/server.key" --tls-ca-cert-file "$CERTS/ca.pem" \
    --tls-auth-clients no --tls-cluster yes --tls-replication yes \
    --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log" >/dev/null
}

# Every replica in sync with its master: a replica that is not would not be
# promoted, and the next fault test would wait for a failover in vain.
synced() {
  for port in "${PORTS[@]}"; do
    info=$(redis-cli -p "$port" info replication 2>/dev/null) || return 1
    if echo "$info" | grep -q '^role:slave'; then
      echo "$info" | grep -q '^master_link_status:up' || return 1
    fi
  done
}

wait_ok() {
  for _ in $(seq 1 150); do complete && synced && return 0; sleep 0.2; done
  echo "redis cluster did not become ok" >&2
  redis-cli -p "$BASE" cluster info >&2 || true
  return 1
}

stop() {
  for port in "${PORTS[@]}"; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$DIR"
}

case "${1:-}" in
  stop) stop; exit 0 ;;
  heal)
    for port in "${PORTS[@]}"; do alive "$port" || start_node "$port"; done
    wait_ok; echo "$SEEDS"; exit 0 ;;
esac

if complete; then
  for port in "${PORTS[@]}"; do alive "$port" || start_node "$port"; done
  wait_ok; echo "$SEEDS"; exit 0
fi
# Half-made or never made: start from nothing.
stop
for port in "${PORTS[@]}"; do start_node "$port"; done
for port in "${PORTS[@]}"; do
  for _ in $(seq 1 50); do alive "$port" && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") \
  --cluster-replicas 1 --cluster-yes >/dev/null
wait_ok
echo "$SEEDS"
