#!/usr/bin/env bash
# The chart's monitoring, checked with promtool (scripts/promtool-bin.sh):
# `promtool check rules` on charts/syncstore-operator/files/alerts.yaml,
# `promtool test rules` on each test file of monitoring/tests/ (one per alert
# group), every alert tested and given a runbook section in docs/runbooks.md,
# and every PromQL expression of the Grafana dashboards parsed. Prints one
# `promtool: ok|FAIL` line per check; exits non-zero on any failure. (That
# the expressions name only metrics syncstore exports is checked by the
# e2e, against a real scrape.)
set -uo pipefail
cd "$(dirname "$0")/.."
PROMTOOL="$(bash scripts/promtool-bin.sh)/promtool"
rules=charts/syncstore-operator/files/alerts.yaml
status=0
ok() { printf 'promtool: ok   %s\n' "$*"; }
fail() { printf 'promtool: FAIL %s\n' "$*"; status=1; }

if out=$("$PROMTOOL" check rules "$rules" 2>&1); then
  ok "check rules: $(grep -o '[0-9]* rules found' <<<"$out")"
else
  fail "check rules"; echo "$out"
fi
for t in monitoring/tests/*.test.yaml; do
  if out=$("$PROMTOOL" test rules "$t" 2>&1); then ok "test rules $t"; else fail "test rules $t"; echo "$out"; fi
done
alerts=$(grep -oP '^\s*- alert: \K\w+' "$rules")
missing_tests=(); missing_runbooks=()
for a in $alerts; do
  grep -q "alertname: $a\$" monitoring/tests/*.test.yaml || missing_tests+=("$a")
  grep -q "^## $a\$" docs/runbooks.md || missing_runbooks+=("$a")
  a_lower=$(tr 'A-Z' 'a-z' <<<"$a")
  grep -A14 "alert: $a\$" "$rules" | grep -q "runbooks.md#$a_lower\$" || missing_runbooks+=("$a(link)")
done
if [ ${#missing_tests[@]} -eq 0 ]; then ok "every alert ($(wc -w <<<"$alerts")) has a promtool test"; else fail "alerts without a promtool test: ${missing_tests[*]}"; fi
if [ ${#missing_runbooks[@]} -eq 0 ]; then ok "every alert links its section of docs/runbooks.md"; else fail "alerts without a runbook section or link: ${missing_runbooks[*]}"; fi

# Grafana's variables become plain values, then promtool parses each query.
for d in charts/syncstore-operator/files/dashboards/*.json; do
  n=0; bad=0
  while IFS= read -r expr; do
    n=$((n + 1))
    if ! err=$("$PROMTOOL" --experimental promql format "$expr" 2>&1 >/dev/null); then
      bad=$((bad + 1)); echo "  $d: $expr: $err"
    fi
  done < <(python3 -c '
import json, re, sys
d = json.load(open(sys.argv[1]))
for p in d["panels"]:
    for t in p.get("targets", []):
        e = re.sub(r"\$__rate_interval", "5m", t["expr"])
        print(re.sub(r"\$\{?\w+\}?", "x", e).replace("\n", " "))
' "$d")
  if [ "$n" -gt 0 ] && [ "$bad" -eq 0 ]; then ok "$n queries of $(basename "$d") parse"; else fail "$bad of $n queries of $(basename "$d") do not parse"; fi
done
exit "$status"
