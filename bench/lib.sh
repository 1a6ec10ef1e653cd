#!/usr/bin/env bash
# Shared by the benchmark scripts: settings, the wrk runner, API keys and
# the wrk Lua scripts. Source it after `cd` to the repository root.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
USERS=${USERS:-64}
PG_URL=${PG_URL:-postgres://syncstore:syncstore@127.0.0.1:5432/syncstore}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/services.sh >/dev/null
cargo build --release -q -p syncstore -p syncstore-bench
BIN=$CARGO_TARGET_DIR/release/syncstore
HELLO=$CARGO_TARGET_DIR/release/bench-hello

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_up() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not up: $1" >&2; return 1; }

# One API key per user, so that writes spread over users as in production
# (one user's writes serialise on that user's row by design).
make_keys() { # env... -> writes $work/keys.lua
  local run=$RANDOM
  {
    echo "keys = {"
    for i in $(seq "$USERS"); do
      printf '  "%s",\n' "$(env "$@" "$BIN" keys create --name bench --user "bench-$run-$i" 2>/dev/null)"
    done
    echo "}"
  } > "$work/keys.lua"
}

write_scripts() {
  local value
  value=$(python3 -c 'import json; print(json.dumps({"title": "bench", "tags": ["a", "b"], "body": "x" * 960}))')
  cat > "$work/put.lua" <<LUA
dofile("$work/keys.lua")
local body = '{"value":' .. [[$value]] .. '}'
request = function()
  local k = keys[math.random(#keys)]
  return wrk.format("PUT", "/api/v1/sync-storage/item/bench-" .. math.random(100),
    { ["X-API-Key"] = k, ["Content-Type"] = "application/json" }, body)
end
LUA
  # Walks every (user, key) pair in order, so the GETs below all hit.
  cat > "$work/seed.lua" <<LUA
dofile("$work/keys.lua")
local body = '{"value":' .. [[$value]] .. '}'
local n = 0
request = function()
  n = n + 1
  local k = keys[(n % #keys) + 1]
  return wrk.format("PUT", "/api/v1/sync-storage/item/bench-" .. ((math.floor(n / #keys) % 100) + 1),
    { ["X-API-Key"] = k, ["Content-Type"] = "application/json" }, body)
end
LUA
  cat > "$work/get.lua" <<LUA
dofile("$work/keys.lua")
request = function()
  local k = keys[math.random(#keys)]
  return wrk.format("GET", "/api/v1/sync-storage/item/bench-" .. math.random(100), { ["X-API-Key"] = k })
end
LUA
}

# wrk output -> "req/s | p50 | p99 | non-2xx"
measure() { # url script?
  local out
  if [ -n "${2:-}" ]; then
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$2" "$1")
  else
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$1")
  fi
  local rps p50 p99 bad
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  echo "$rps | $p50 | $p99 | ${bad:-0}"
}


run_backend() { # name, env...
  local name=$1; shift
  local port=3100
  make_keys "$@"
  write_scripts
  env "$@" PORT=$port LOG_LEVEL=warn RATE_LIMIT_MAX_REQUESTS=1000000000 DB_CONNECTION_LIMIT="${DB_CONNECTION_LIMIT:-16}" "$BIN" serve & pids+=($!)
  wait_up "http://127.0.0.1:$port/health"
  wrk -t1 -c8 -d"${SEED_DURATION:-8s}" -s "$work/seed.lua" "http://127.0.0.1:$port" >/dev/null
  echo "| $name PUT 1 KB (64 users × 100 keys) | $(measure "http://127.0.0.1:$port" "$work/put.lua") |"
  echo "| $name GET 1 KB | $(measure "http://127.0.0.1:$port" "$work/get.lua") |"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
}

