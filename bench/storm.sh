#!/usr/bin/env bash
# Reconnect storm (issue 14 §11): 1,000 devices of 100 users reconnect at
# once, against a small table and against one with 100x more rows of OTHER
# users. The cost should follow the users' changes, not the table's size.
# Prints, per run, the reconnect-to-pending-updates times (bench/storm.mjs)
# and what the database did meanwhile (pg_stat_user_tables of sync_items,
# transactions), then the query plans of the pending-updates query on
# PostgreSQL, SQLite and MariaDB.
#
#   ./bench/storm.sh
#   USERS=50 DEVICES_PER_USER=10 OTHER_ROWS=100000 ./bench/storm.sh
#
# Needs the services of scripts/services.sh (PostgreSQL, MariaDB) and
# `npm ci` in tests/js. Uses the debug binary unless BIN is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
BIN=${BIN:-$CARGO_TARGET_DIR/debug/syncstore}
export USERS=${USERS:-100} DEVICES_PER_USER=${DEVICES_PER_USER:-10} CHANGES=${CHANGES:-5}
ITEMS_PER_USER=${ITEMS_PER_USER:-20}
# 100x the storm users' rows, spread over other users.
OTHER_ROWS=${OTHER_ROWS:-$((USERS * ITEMS_PER_USER * 100))}
OTHER_USERS=${OTHER_USERS:-2000}
PG=${PG:-postgres://syncstore:syncstore@127.0.0.1:5432}
DB=${STORM_DB:-syncstore_storm}
MYSQL_URL=${MYSQL_URL:-mysql://syncstore:syncstore@127.0.0.1:3306/syncstore_absent}
KEY=sk_live_bench_storm_admin_key_0123456789
PORT=${PORT:-3311}
ulimit -n "$(ulimit -Hn)"

pids=()
work=$(mktemp -d)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
wait_up() { for _ in $(seq 400); do curl -fs "$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
psql_db() { psql "$PG/$DB" -v ON_ERROR_STOP=1 -qAt "$@"; }

# The storm users' rows (ITEMS_PER_USER each) and, with $1 > 0, $1 rows of
# other users, written straight into the tables as the write path leaves them.
seed() { # other_rows
  psql_db <<SQL
INSERT INTO user_state (user_id, last_seq, bytes_used, purged_seq, updated_at)
  SELECT 'storm-' || u, $ITEMS_PER_USER, 0, 0, 0 FROM generate_series(0, $USERS - 1) u;
INSERT INTO sync_items (id, user_id, instance_id, item_key, value, metadata, version, timestamp,
                        last_modified, is_deleted, size, seq, created_at)
  SELECT md5('s' || u || '/' || i), 'storm-' || u, 'seed', 'item-' || i, '{"v":' || i || '}', '{}', 1,
         0, 0, false, 8, i, 0
  FROM generate_series(0, $USERS - 1) u, generate_series(1, $ITEMS_PER_USER) i;
INSERT INTO user_state (user_id, last_seq, bytes_used, purged_seq, updated_at)
  SELECT 'other-' || u, $1 / $OTHER_USERS, 0, 0, 0 FROM generate_series(0, $OTHER_USERS - 1) u WHERE $1 > 0;
INSERT INTO sync_items (id, user_id, instance_id, item_key, value, metadata, version, timestamp,
                        last_modified, is_deleted, size, seq, created_at)
  SELECT md5('o' || n), 'other-' || (n % $OTHER_USERS), 'seed', 'item-' || n, '{"v":' || n || '}', '{}', 1,
         0, 0, false, 8, n / $OTHER_USERS + 1, 0
  FROM generate_series(0, $1 - 1) n;
ANALYZE;
SQL
}

stats() { # -> "seq_scan seq_tup_read idx_scan idx_tup_fetch xact_commit"
  psql_db -F ' ' -c "SELECT t.seq_scan, t.seq_tup_read, t.idx_scan, t.idx_tup_fetch, d.xact_commit
    FROM pg_stat_user_tables t, pg_stat_database d WHERE t.relname = 'sync_items' AND d.datname = current_database()"
}

run() { # label other_rows
  local label=$1 other=$2
  psql "$PG/postgres" -qAt -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
  DATABASE_URL="$PG/$DB" "$BIN" migrate >/dev/null
  seed "$other"
  local rows
  rows=$(psql_db -c "SELECT count(*) FROM sync_items")
  env DATABASE_URL="$PG/$DB" PORT=$PORT POD_NAME=storm BOOTSTRAP_API_KEY=$KEY LOG_LEVEL=warn \
    RATE_LIMIT_MAX_REQUESTS=1000000000 HTTP_MAX_CONNECTIONS=20000 "$BIN" serve 2>"$work/server.log" & pids+=($!)
  wait_up "http://127.0.0.1:$PORT"
  coproc STORM { node bench/storm.mjs "http://127.0.0.1:$PORT" "$KEY" storm; }
  local line
  read -r line <&"${STORM[0]}"
  [ "$line" = READY ] || { echo "storm: $line" >&2; exit 1; }
  sleep 1 # statistics are flushed at most once a second
  local before after
  before=$(stats)
  echo go >&"${STORM[1]}"
  read -r line <&"${STORM[0]}"
  sleep 1.5
  after=$(stats)
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  # shellcheck disable=SC2206
  local b=($before) a=($after)
  echo "$label: rows=$rows $line db={\"seqScans\":$((a[0] - b[0])),\"seqRowsRead\":$((a[1] - b[1])),\"idxScans\":$((a[2] - b[2])),\"idxRowsFetched\":$((a[3] - b[3])),\"transactions\":$((a[4] - b[4]))}"
}

run small 0
run "100x other users' rows" "$OTHER_ROWS"

# The pending-updates query (storage::items::changes_since), as each
# database plans it on a table of that shape.
Q="FROM sync_items WHERE user_id = 'storm-7' AND seq > 20 ORDER BY seq"
echo "PostgreSQL plan: $(psql_db -c "EXPLAIN SELECT * $Q" | tr '\n' ' ')"
sqlite=$work/sqlite
mkdir -p "$sqlite"
SYNCSTORE_DATA_DIR=$sqlite "$BIN" migrate >/dev/null
echo "SQLite plan: $(sqlite3 "$sqlite/syncstore.db" "EXPLAIN QUERY PLAN SELECT * $Q" | tr '\n' ' ')"
DATABASE_URL=$MYSQL_URL "$BIN" migrate >/dev/null
mysql_args=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(f"-h{p.hostname} -P{p.port or 3306} -u{p.username} -p{p.password} {p.path[1:]}")' "$MYSQL_URL")
# shellcheck disable=SC2086
echo "MariaDB plan: $(mysql $mysql_args -N -e "EXPLAIN SELECT * $Q" | tr '\n\t' '  ')"
