#!/usr/bin/env bash
# Runs the demo, lets its scenario finish, and lints the /metrics exposition with promtool.
# Any promtool output at all is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp); out=$(mktemp); metrics=$(mktemp)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cargo build --locked --quiet
./target/debug/flowwatch demo --hold --listen "127.0.0.1:$port" >"$out" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log" "$out" "$metrics"' EXIT
# Wait until every execution of the scenario is terminal, so every metric family has data.
all_terminal() {
  curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null | python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
done = sum(doc["by_status"].get(s, 0) for s in ("SUCCEEDED", "FAILED", "NOT_FOUND"))
sys.exit(0 if doc["watched"] > 0 and done == doc["watched"] else 1)'
}
for _ in $(seq 1 120); do
  if all_terminal; then break; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/metrics" >"$metrics"
grep -q 'flowwatch_transitions_total{.*to_status="FAILED"} 1' "$metrics" || { echo "the demo's FAILED transition is missing"; cat "$log"; exit 1; }
problems=$(promtool check metrics <"$metrics" 2>&1 || true)
if [ -n "$problems" ]; then
  echo "promtool check metrics found problems:"; echo "$problems"; exit 1
fi
echo "promtool check metrics: no problems in $(grep -vc '^#' "$metrics") samples"
