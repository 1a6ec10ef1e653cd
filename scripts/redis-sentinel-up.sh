#!/usr/bin/env bash
# Redis Sentinel on loopback, from Debian's redis-server: one master and one
# replica (ports 6390-6391 by default) watched by three sentinels
# (26390-26392, quorum 2) under the name "mymaster", each in its own
# directory under $SYNCSTORE_CACHE/redis-sentinel. Idempotent: a complete
# setup is reused, and a node that died (a fault test's kill -9) is started
# again and rejoins (the sentinels make an old master a replica). Prints
# the REDIS_URL of the setup.
#
# With REDIS_SENTINEL_TLS=1, a second setup (ports 6395-6396 and
# 26395-26397 by default, its own directory) speaks only TLS, with the
# certificates of scripts/test-certs.sh, and requires passwords: the data
# nodes' (in the URL) and the sentinels' own, distinct one (printed on a
# second line, for REDIS_SENTINEL_PASSWORD).
#
#   scripts/redis-sentinel-up.sh          # start (or reuse)
#   scripts/redis-sentinel-up.sh stop     # stop every node (the data goes)
#   scripts/redis-sentinel-up.sh heal     # restart dead nodes, wait until complete
#   REDIS_SENTINEL_TLS=1 scripts/redis-sentinel-up.sh   # the TLS setup
set -euo pipefail
cd "$(dirname "$0")/.."
TLS="${REDIS_SENTINEL_TLS:-}"
DIR="${SYNCSTORE_CACHE:-/var/cache/syncstore}/redis-sentinel${TLS:+-tls}"
BASE="${REDIS_SENTINEL_BASE_PORT:-$([ -n "$TLS" ] && echo 6395 || echo 6390)}"
DATA=("$BASE" "$((BASE + 1))")
SENTINELS=("$((BASE + 20000))" "$((BASE + 20001))" "$((BASE + 20002))")
NAME=mymaster
LIST=$(printf '127.0.0.1:%s,' "${SENTINELS[@]}"); LIST="${LIST%,}"
URL="redis+sentinel://$LIST/$NAME"
# Test passwords of the TLS setup, not secrets: loopback only.
DATA_PASSWORD=data-test-password
SENTINEL_PASSWORD=sentinel-test-password
if [ -n "$TLS" ]; then
  CERTS="$(bash scripts/test-certs.sh)"
  URL="rediss+sentinel://:$DATA_PASSWORD@$LIST/$NAME"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

# redis-cli to a node of this setup (TLS and a password in the TLS one).
cli() {
  local port=$1; shift
  local auth=()
  if [ -n "$TLS" ]; then
    auth=(--tls --cacert "$CERTS/ca.pem" --no-auth-warning -a "$DATA_PASSWORD")
    if [[ " ${SENTINELS[*]} " == *" $port "* ]]; then auth[5]=$SENTINEL_PASSWORD; fi
  fi
  timeout 3 redis-cli -p "$port" "${auth[@]}" "$@" 2>/dev/null
}
# How a node listens: on a plain port, or on a TLS port only.
listen() {
  if [ -n "$TLS" ]; then
    echo "port 0"
    echo "tls-port $1"
    echo "tls-cert-file $CERTS/server.pem"
    echo "tls-key-file $CERTS/server.key"
    echo "tls-ca-cert-file $CERTS/ca.pem"
    echo "tls-auth-clients no"
    echo "tls-replication yes"
  else
    echo "port $1"
  fi
}
alive() { cli "$1" ping | grep -q PONG; }

start_data() {
  local port=$1 role=()
  mkdir -p "$DIR/$port"
  # The second node starts as the first one's replica; a node started
  # again after a failover starts alone and the sentinels demote it.
  if [ "$port" = "${DATA[1]}" ] && [ ! -e "$DIR/$port/started" ]; then
    role=(--replicaof 127.0.0.1 "${DATA[0]}")
  fi
  {
    listen "$port"
    if [ -n "$TLS" ]; then
      echo "requirepass $DATA_PASSWORD"
      echo "masterauth $DATA_PASSWORD"
    fi
  } >"$DIR/$port/redis.conf"
  redis-server "$DIR/$port/redis.conf" --bind 127.0.0.1 --daemonize yes --dir "$DIR/$port" \
    --appendonly no --save '' --pidfile "$DIR/$port/redis.pid" \
    --logfile "$DIR/$port/redis.log" "${role[@]}" >/dev/null
  touch "$DIR/$port/started"
}

start_sentinel() {
  local port=$1
  mkdir -p "$DIR/s$port"
  # A sentinel rewrites its file with what it learns: written once.
  if [ ! -e "$DIR/s$port/sentinel.conf" ]; then
    {
      listen "$port"
      cat <<EOF
bind 127.0.0.1
dir $DIR/s$port
sentinel monitor $NAME 127.0.0.1 ${DATA[0]} 2
sentinel down-after-milliseconds $NAME 1000
sentinel failover-timeout $NAME 5000
sentinel parallel-syncs $NAME 1
EOF
      if [ -n "$TLS" ]; then
        echo "requirepass $SENTINEL_PASSWORD"
        echo "sentinel sentinel-pass $SENTINEL_PASSWORD"
        echo "sentinel auth-pass $NAME $DATA_PASSWORD"
      fi
    } >"$DIR/s$port/sentinel.conf"
  fi
  redis-server "$DIR/s$port/sentinel.conf" --sentinel --daemonize yes \
    --pidfile "$DIR/s$port/sentinel.pid" --logfile "$DIR/s$port/sentinel.log" >/dev/null
}

# Complete: every sentinel names the same master, knows the two others and
# one replica, and that master has its replica attached.
complete() {
  local master="" addr port
  for s in "${SENTINELS[@]}"; do
    addr=$(cli "$s" sentinel get-master-addr-by-name "$NAME" | paste -sd: -) || return 1
    [ -n "$addr" ] || return 1
    [ -z "$master" ] || [ "$master" = "$addr" ] || return 1
    master=$addr
    info=$(cli "$s" sentinel master "$NAME" | paste -sd' ' -)
    echo "$info" | grep -qE '(^| )num-other-sentinels 2( |$)' || return 1
    echo "$info" | grep -qE '(^| )num-slaves 1( |$)' || return 1
    echo "$info" | grep -qE '(^| )flags master( |$)' || return 1
  done
  port=${master##*:}
  cli "$port" info replication | grep -q '^connected_slaves:1'
}

wait_complete() {
  for _ in $(seq 1 150); do complete && return 0; sleep 0.2; done
  echo "redis sentinel setup did not become complete" >&2
  for s in "${SENTINELS[@]}"; do cli "$s" sentinel master "$NAME" | paste -sd' ' - >&2 || true; done
  return 1
}

stop() {
  for port in "${SENTINELS[@]}" "${DATA[@]}"; do
    cli "$port" shutdown nosave >/dev/null || true
  done
  rm -rf "$DIR"
}

heal() {
  for port in "${DATA[@]}"; do alive "$port" || start_data "$port"; done
  for port in "${SENTINELS[@]}"; do alive "$port" || start_sentinel "$port"; done
}

print() { echo "$URL"; [ -z "$TLS" ] || echo "$SENTINEL_PASSWORD"; }

case "${1:-}" in
  stop) stop; exit 0 ;;
  heal) heal; wait_complete; print; exit 0 ;;
esac

if [ -d "$DIR" ]; then
  heal
  if wait_complete 2>/dev/null; then print; exit 0; fi
fi
# Half-made or never made: start from nothing.
stop
mkdir -p "$DIR"
for port in "${DATA[@]}"; do start_data "$port"; done
for port in "${DATA[@]}"; do
  for _ in $(seq 1 50); do alive "$port" && break; sleep 0.1; done
done
for port in "${SENTINELS[@]}"; do start_sentinel "$port"; done
wait_complete
print
