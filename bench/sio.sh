#!/usr/bin/env bash
# Socket.IO benchmarks (issue: real-time sync). Prints one line per scenario.
#
#   ./bench/sio.sh                     # 20k idle, 10k latency, 1k fan-out
#   CONNS=5000 LAT_CONNS=2000 ./bench/sio.sh
#   ONLY=pods ./bench/sio.sh           # just the two-pod runs (Redis, Cluster)
#
# Needs the services of scripts/services.sh (PostgreSQL, Redis) and starts
# the Redis Cluster of scripts/redis-cluster-up.sh for the last scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
CONNS=${CONNS:-19000}
LAT_CONNS=${LAT_CONNS:-10000}
RATE=${RATE:-1000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
FAN_DEVICES=${FAN_DEVICES:-1000}
FAN_WRITES=${FAN_WRITES:-200}
PG_URL=${PG_URL:-postgres://syncstore:syncstore@127.0.0.1:5432/syncstore}
KEY=sk_live_bench_admin_key_0123456789abcdef

# The hard limit here is 20,000 open files per process, which caps the
# idle test just below 20k connections.
ulimit -n "$(ulimit -Hn)"
bash scripts/services.sh >/dev/null
cargo build --release -q -p syncstore -p syncstore-bench
BIN=$CARGO_TARGET_DIR/release/syncstore
LOAD=$CARGO_TARGET_DIR/release/sio-load

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_up() { for _ in $(seq 200); do curl -fs "$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

start() { # port pod [env...]
  local port=$1 pod=$2; shift 2
  env "$@" PORT="$port" POD_NAME="$pod" BOOTSTRAP_API_KEY=$KEY LOG_LEVEL=warn RATE_LIMIT_MAX_REQUESTS=1000000000 DATABASE_URL="$PG_URL" \
    DB_CONNECTION_LIMIT=16 "$BIN" serve & pids+=($!)
  wait_up "http://127.0.0.1:$port"
}

ONLY=${ONLY:-}
if [ "$ONLY" != pods ]; then
start 3301 bench-a
echo "idle ($CONNS connections, one process): $("$LOAD" --url http://127.0.0.1:3301 --key $KEY --server-pid "${pids[0]}" idle --connections "$CONNS" | tr "\n" " ")"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

start 3301 bench-a
echo "latency single process ($LAT_CONNS clients, $RATE writes/s): $("$LOAD" --url http://127.0.0.1:3301 --key $KEY latency --connections "$LAT_CONNS" --writes-per-sec "$RATE" --seconds "$SECONDS_PER_RUN" | tr '\n' ' ')"
echo "fan-out (1 user, $FAN_DEVICES devices, $FAN_WRITES writes): $("$LOAD" --url http://127.0.0.1:3301 --key $KEY fanout --devices "$FAN_DEVICES" --writes "$FAN_WRITES" | tr '\n' ' ')"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()
fi

start 3301 bench-a REDIS_URL=redis://127.0.0.1:6379
start 3302 bench-b REDIS_URL=redis://127.0.0.1:6379
echo "latency across 2 processes via Redis ($LAT_CONNS clients, $RATE writes/s): $("$LOAD" --url http://127.0.0.1:3301 --url2 http://127.0.0.1:3302 --key $KEY latency --connections "$LAT_CONNS" --writes-per-sec "$RATE" --seconds "$SECONDS_PER_RUN" | tr '\n' ' ')"
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true; pids=()

# The same two processes on the Redis Cluster (sharded pub/sub): the users'
# channels spread over the slots. Per node: SPUBLISH calls (the writes whose
# channel the node owns) and messages heard over the cluster bus (only the
# owner's replica should hear one; a broadcast would reach all five others).
SEEDS=$(bash scripts/redis-cluster-up.sh)
node_counts() {
  for hp in ${SEEDS//,/ }; do
    local port=${hp##*:}
    local spub bus
    spub=$(redis-cli -p "$port" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_spublish:calls=\([0-9]*\).*/\1/p')
    bus=$(redis-cli -p "$port" cluster info | tr -d '\r' | sed -n 's/^cluster_stats_messages_publishshard_received://p')
    echo "$port ${spub:-0} ${bus:-0}"
  done
}
before=$(node_counts)
start 3301 bench-a REDIS_URL="redis+cluster://$SEEDS"
start 3302 bench-b REDIS_URL="redis+cluster://$SEEDS"
echo "latency across 2 processes via Redis Cluster ($LAT_CONNS clients, $RATE writes/s): $("$LOAD" --url http://127.0.0.1:3301 --url2 http://127.0.0.1:3302 --key $KEY latency --connections "$LAT_CONNS" --writes-per-sec "$RATE" --seconds "$SECONDS_PER_RUN" | tr '\n' ' ')"
after=$(node_counts)
echo "per Redis Cluster node (port: SPUBLISH calls, shard messages heard over the bus):"
join <(echo "$before") <(echo "$after") | while read -r port s0 b0 s1 b1; do
  echo "  :$port $((s1 - s0)) $((b1 - b0))"
done
