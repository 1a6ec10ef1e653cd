#!/usr/bin/env bash
# Analytics benchmark (issue #7):
#  1. The producer's cost per request: REST PUT and GET throughput on
#     PostgreSQL with analytics off, embedded (in-process aggregation) and
#     through Kafka.
#  2. The consumer's throughput: synthetic events are put in a topic first,
#     then `syncstore analytics` aggregates them into PostgreSQL; events/s
#     from its first aggregated batch to its last.
#
#   ./bench/analytics.sh
#   EVENTS=500000 DURATION=30s ./bench/analytics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
EVENTS=${EVENTS:-200000}
BROKERS=$(bash scripts/kafka-up.sh)
FEED=$CARGO_TARGET_DIR/release/analytics-feed

echo "| scenario | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
run_backend "PostgreSQL, analytics off" DATABASE_URL="$PG_URL" ENABLE_ANALYTICS=false
run_backend "PostgreSQL, analytics embedded" DATABASE_URL="$PG_URL" ENABLE_ANALYTICS=true
run_backend "PostgreSQL, analytics to Kafka" DATABASE_URL="$PG_URL" ENABLE_ANALYTICS=true \
  KAFKA_BROKERS="$BROKERS" KAFKA_TOPIC="bench-rest-$RANDOM"

topic="bench-consumer-$RANDOM$RANDOM"
"$FEED" --brokers "$BROKERS" --topic "$topic" --events "$EVENTS" 2>&1 | sed 's/^/# /'
port=3201
env DATABASE_URL="$PG_URL" KAFKA_BROKERS="$BROKERS" KAFKA_TOPIC="$topic" SYNCSTORE_STORE="$topic" \
  ANALYTICS_CONSUMER_BATCH="${BATCH:-20000}" PORT=$port LOG_LEVEL=warn "$BIN" analytics & pids+=($!)
wait_up "http://127.0.0.1:$port/health"
aggregated() { curl -fs "http://127.0.0.1:$port/metrics" | awk '/analytics_events_total\{outcome="aggregated"\}/ {print $2}'; }
first_at=""
while :; do
  n=$(aggregated); n=${n:-0}
  if [ -z "$first_at" ] && [ "${n%.*}" -gt 0 ]; then first_at=$(date +%s.%N); first_n=${n%.*}; fi
  if [ "${n%.*}" -ge "$EVENTS" ]; then break; fi
  sleep 0.1
done
done_at=$(date +%s.%N)
python3 - "$first_at" "$done_at" "$first_n" "$EVENTS" <<'PY'
import sys
t0, t1, n0, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"| consumer: {n} events into PostgreSQL aggregates | {(n - n0) / (t1 - t0):.0f} events/s | | | |")
PY
