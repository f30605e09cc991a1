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
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null | grep -q '"IN_PROGRESS":0'; then break; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$port/metrics" >"$metrics"
grep -q 'flowwatch_transitions_total{.*to_status="FAILED"} 1' "$metrics" || { echo "the demo's FAILED transition is missing"; cat "$log"; exit 1; }
problems=$(promtool check metrics <"$metrics" 2>&1 || true)
if [ -n "$problems" ]; then
  echo "promtool check metrics found problems:"; echo "$problems"; exit 1
fi
echo "promtool check metrics: no problems in $(grep -vc '^#' "$metrics") samples"
