#!/usr/bin/env bash
# What tracing costs (issue 18): bench/run.sh's PUT and GET on PostgreSQL,
# with OpenTelemetry off (no OTEL_* variable: nothing installed) and on
# (every request sampled, exported over OTLP/HTTP to a real Jaeger on
# loopback, built by scripts/jaeger-bin.sh), interleaved off/on/off/on in
# one run. Prints a markdown table.
#
#   ./bench/traces.sh              # 10 s per scenario
#   DURATION=30s ./bench/traces.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
JAEGER=$(bash scripts/jaeger-bin.sh)

# Jaeger v2 with in-memory storage, its OTLP/HTTP receiver on 14318.
cat > "$work/jaeger.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, logs: {level: warn}}
extensions:
  jaeger_query: {storage: {traces: memstore}, http: {endpoint: "127.0.0.1:16686"}, grpc: {endpoint: "127.0.0.1:16685"}}
  jaeger_storage: {backends: {memstore: {memory: {max_traces: 100000}}}}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:14318"}}}
processors:
  batch: {}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
YAML
"$JAEGER" --config "$work/jaeger.yaml" >"$work/jaeger.log" 2>&1 & pids+=($!)
wait_up http://127.0.0.1:16686/api/services

on=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:14318 OTEL_SERVICE_NAME=syncstore-bench OTEL_TRACES_SAMPLER=always_on)
echo "| tracing | scenario | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
for round in 1 2; do
  run_backend "PostgreSQL" DATABASE_URL="$PG_URL" | sed "s/^|/| off (run $round) |/"
  run_backend "PostgreSQL" DATABASE_URL="$PG_URL" "${on[@]}" | sed "s/^|/| on (run $round) |/"
done
spans=$(curl -fs "http://127.0.0.1:16686/api/services" || true)
echo
echo "Jaeger's services after the run: $spans"
