#!/usr/bin/env bash
# Fuzzes a live `syncstore serve` with schemathesis (from PyPI, in a cached
# virtualenv) against its own OpenAPI spec: no response may be a 5xx, every
# response must match the spec (status, content type, schema; errors are the
# {message, code, details} envelope), with a bounded number of examples.
#
#   bash scripts/schemathesis.sh                 # CI budget: 25 examples per operation
#   EXAMPLES=500 bash scripts/schemathesis.sh    # a deeper run
#   SEED=7 bash scripts/schemathesis.sh          # another reproducible draw
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
VENV="${SYNCSTORE_CACHE:-/var/cache/syncstore}/schemathesis-venv"
ST_VERSION=4.32.5
EXAMPLES="${EXAMPLES:-25}"
SEED="${SEED:-20261126}"
if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi
BIN="${SYNCSTORE_BIN:-$CARGO_TARGET_DIR/debug/syncstore}"
[ -x "$BIN" ] || cargo build -q -p syncstore
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key="sk_live_schemathesis_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# User tokens are configured, so the typed /auth/* bodies reach the token
# code instead of 503 TOKENS_DISABLED.
jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
jwt_refresh_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
SYNCSTORE_DATA_DIR="$work" PORT="$port" BOOTSTRAP_API_KEY="$key" BOOTSTRAP_USER_ID=fuzz \
  JWT_SECRET="$jwt_secret" JWT_REFRESH_SECRET="$jwt_refresh_secret" \
  RATE_LIMIT_MAX_REQUESTS=100000000 LOG_LEVEL=warn "$BIN" serve 2> "$work/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

set +e
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --url "http://127.0.0.1:$port" \
  -H "X-API-Key: $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" --seed "$SEED" --request-timeout 10 --no-color
status=$?
set -e
if grep -q panicked "$work/server.log"; then echo "schemathesis: the server panicked"; status=1; fi
echo "schemathesis: $([ $status -eq 0 ] && echo PASS || echo FAIL) ($EXAMPLES examples per operation, seed $SEED)"
exit $status
