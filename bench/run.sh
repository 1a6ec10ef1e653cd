#!/usr/bin/env bash
# HTTP benchmark: PUT and GET throughput and latency of `syncstore serve` on
# SQLite and on PostgreSQL, each beside a bare-axum "hello" endpoint measured
# in the same run as this machine's HTTP ceiling. Prints a markdown table.
#
#   ./bench/run.sh                 # 10 s per scenario
#   DURATION=30s ./bench/run.sh
#
# Needs wrk (Debian package) and the services of scripts/services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

echo "| scenario | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"

PORT=3999 "$HELLO" & pids+=($!)
wait_up http://127.0.0.1:3999/hello
echo "| bare axum GET /hello (ceiling) | $(measure http://127.0.0.1:3999/hello) |"

run_backend "SQLite" SYNCSTORE_DATA_DIR="$work/sqlite"
run_backend "PostgreSQL" DATABASE_URL="$PG_URL"
