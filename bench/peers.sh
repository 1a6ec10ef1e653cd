#!/usr/bin/env bash
# The peer benchmark (issue 17): syncstore on PostgreSQL and on SQLite beside
# the servers its users would pick instead, on the same machine, driven by
# one load client (sio-load, bench/src/sio_load) through the same workloads:
#
#   idle     IDLE_CONNS connections, RSS per connection; then ROUNDS rounds
#            of connecting and disconnecting them, RSS after each
#   fanout   1 user × FAN_DEVICES devices, FAN_WRITES acked writes:
#            deliveries/s, delivery p99, server CPU per 1,000 deliveries
#   latency  LAT_CONNS/2 users × (writer, reader), RATE writes/s for
#            SECONDS_PER_RUN s: delivery p50/p99, CPU per 1,000 deliveries
#
# Peers: Centrifugo (CENTRIFUGO_VERSION, built from its Go module with the
# machine's Go into $PEERS_CACHE, memory engine with history and recovery:
# bench/peers/centrifugo.json) and Node socket.io 4.8 serving the seed's
# `/sync` from memory (bench/peers/socketio-server.mjs).
#
#   ./bench/peers.sh                                  # RUNS=2, everything
#   SERVERS="syncstore-sqlite centrifugo" WORKLOADS=fanout RUNS=1 ./bench/peers.sh
#
# Prints one line per (run, server, workload). Benchmarks are not tests:
# nothing here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
PEERS_CACHE=${PEERS_CACHE:-/var/cache/syncstore/peers}
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
RUNS=${RUNS:-2}
SERVERS=${SERVERS:-syncstore-postgres syncstore-sqlite centrifugo socketio}
WORKLOADS=${WORKLOADS:-idle fanout latency}
IDLE_CONNS=${IDLE_CONNS:-10000}
ROUNDS=${ROUNDS:-5}
LAT_CONNS=${LAT_CONNS:-10000}
RATE=${RATE:-1000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
FAN_DEVICES=${FAN_DEVICES:-1000}
FAN_WRITES=${FAN_WRITES:-200}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://syncstore:syncstore@127.0.0.1:5432/syncstore}
PG_URL=${PG_ADMIN_URL%/*}/syncstore_peers
KEY=sk_live_bench_admin_key_0123456789abcdef

# 10,000 sockets per process need more than the default 1,024 open files;
# in production raise LimitNOFILE (systemd) or the container runtime's
# nofile limit the same way.
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"
bash scripts/services.sh >/dev/null
cargo build --release -q -p syncstore -p syncstore-bench
BIN=$CARGO_TARGET_DIR/release/syncstore
LOAD=$CARGO_TARGET_DIR/release/sio-load
CENTRIFUGO=$PEERS_CACHE/centrifugo-$CENTRIFUGO_VERSION
# `go install` sets no version ldflags: the binary says v0.0.0, hence the
# version in its cached name.
if [ ! -x "$CENTRIFUGO" ]; then
  mkdir -p "$PEERS_CACHE/gobin"
  GOBIN="$PEERS_CACHE/gobin" go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
  mv "$PEERS_CACHE/gobin/centrifugo" "$CENTRIFUGO"
fi
(cd bench/peers && npm ci --silent --no-audit --no-fund)

# Servers' logs stay in $work (printed at the end) for a run to be checked.
work=$(mktemp -d /tmp/peers.XXXXXX)
pid=
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
trap stop EXIT
# Up means answering HTTP, from the process just started (not one left
# behind on the port by an earlier run).
wait_up() {
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { echo "server exited; log: $log" >&2; exit 1; }
    curl -s -o /dev/null "$1" && return 0
    sleep 0.05
  done
  echo "not up: $1; log: $log" >&2; exit 1
}
port_free() { ! curl -s -o /dev/null "http://127.0.0.1:$1/" || { echo "port $1 is taken" >&2; exit 1; }; }
# A fresh PostgreSQL database for each syncstore start, checkpointed, so
# that one run's rows, vacuum and checkpoints do not fall on the next.
fresh_postgres() {
  PGOPTIONS=--client-min-messages=warning psql -q "$PG_ADMIN_URL" -c 'DROP DATABASE IF EXISTS syncstore_peers WITH (FORCE)' -c 'CREATE DATABASE syncstore_peers'
  su postgres -c "psql -qc CHECKPOINT" >/dev/null
}

# Starts one server afresh; sets pid, url and the load client's flags.
start() { # server
  log=$work/$1-$((++starts)).log
  case $1 in
    syncstore-postgres|syncstore-sqlite)
      # SQLite is the embedded default (synchronous=NORMAL in WAL mode; the
      # PostgreSQL server commits synchronously): no DATABASE_URL, a fresh
      # data dir on disk.
      db=(SYNCSTORE_DATA_DIR="$(mktemp -d "$work/sqlite.XXXXXX")")
      [ "$1" = syncstore-postgres ] && { fresh_postgres; db=(DATABASE_URL="$PG_URL"); }
      url=http://127.0.0.1:3301
      port_free 3301
      # Nothing of the caller's environment switches on Redis or Kafka;
      # the connection cap is above the workloads' 10,000 sockets.
      env -u DATABASE_URL -u REDIS_URL -u KAFKA_BROKERS "${db[@]}" PORT=3301 BOOTSTRAP_API_KEY=$KEY \
        LOG_LEVEL=warn RATE_LIMIT_MAX_REQUESTS=1000000000 HTTP_MAX_CONNECTIONS=100000 \
        DB_CONNECTION_LIMIT=16 "$BIN" serve >"$log" 2>&1 & pid=$!
      flags=(--protocol socketio --key "$KEY")
      [ "$1" = syncstore-postgres ] && flags+=(--db-comm postgres)
      wait_up "$url/health" ;;
    centrifugo)
      url=http://127.0.0.1:3401
      port_free 3401
      "$CENTRIFUGO" --config bench/peers/centrifugo.json >"$log" 2>&1 & pid=$!
      flags=(--protocol centrifugo)
      wait_up "$url/connection/websocket" ;;
    socketio)
      url=http://127.0.0.1:3501
      port_free 3501
      env -u NODE_OPTIONS PORT=3501 API_KEY=$KEY node bench/peers/socketio-server.mjs >"$log" 2>&1 & pid=$!
      flags=(--protocol socketio --key "$KEY")
      wait_up "$url/health" ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
  flags+=(--url "$url" --server-pid "$pid")
}

load() { # workload
  case $1 in
    idle) "$LOAD" "${flags[@]}" idle --connections "$IDLE_CONNS" --rounds "$ROUNDS" ;;
    fanout) "$LOAD" "${flags[@]}" fanout --devices "$FAN_DEVICES" --writes "$FAN_WRITES" ;;
    latency) "$LOAD" "${flags[@]}" latency --connections "$LAT_CONNS" --writes-per-sec "$RATE" --seconds "$SECONDS_PER_RUN" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}

starts=0
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# syncstore $(git describe --always --dirty), centrifugo $CENTRIFUGO_VERSION, socket.io $(node -p 'require("./bench/peers/node_modules/socket.io/package.json").version'), node $(node --version), PostgreSQL $(psql -Atc 'show server_version' "$PG_ADMIN_URL")"
for run in $(seq "$RUNS"); do
  for server in $SERVERS; do
    for workload in $WORKLOADS; do
      # Each workload on a fresh process, so that one's memory or backlog
      # is not the next one's.
      start "$server"
      out=$(load "$workload")
      kill -0 "$pid" 2>/dev/null || { echo "$server died during $workload; log: $log" >&2; exit 1; }
      echo "run=$run server=$server workload=$workload $(tr '\n' ' ' <<<"$out")"
      stop
      rm -rf "$work"/sqlite.*
    done
  done
done
echo "# servers' logs: $work"
