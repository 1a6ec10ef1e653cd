#!/usr/bin/env bash
# The one test command: installs and starts what the tests need (idempotent),
# then checks formatting and lints and runs every test of the workspace
# against real SQLite, PostgreSQL and MariaDB.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -- rest    # extra args go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outputs and downloaded crates live outside the clone so that fresh
# clones (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/syncstore/target}"
mkdir -p "$CARGO_TARGET_DIR"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (rustup: https://rustup.rs)" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

bash scripts/services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked -- "${extra[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries (cargo prints one per binary, and
# the last is often the doc-tests' "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
