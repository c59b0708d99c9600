#!/usr/bin/env bash
# Benchmarks one-to-one chat on this machine: starts a release chat-node on a
# fresh data directory, then runs chat-bench with 50 sender/receiver pairs in
# closed loop (one message in flight per pair) and at fixed rates, in both
# protocols. Node and load generator share the machine's cores.
#   scripts/bench.sh                 # defaults below
#   PAIRS=100 RATES="10000" DURATION=20s scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-50}
RATES=${RATES:-"5000 10000 20000"}
DURATION=${DURATION:-10s}
PORT=${PORT:-16600}
METRICS=${METRICS:-16601}

cargo build --release --locked -p chat-node -p chat-client >&2
data=$(mktemp -d)
./target/release/chat-node --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
  --data-dir "$data" --argon2-memory-kib 1024 --argon2-iterations 1 2>"$data/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done

run() {
  echo "== $*"
  ./target/release/chat-bench --addr "127.0.0.1:$PORT" --pairs "$PAIRS" --duration "$DURATION" --warmup 2s "$@" 2>&1 | tail -3
}
for protocol in fb json; do
  run --protocol "$protocol"
  for rate in $RATES; do
    run --protocol "$protocol" --rate "$rate"
  done
done
echo "== node metrics"
curl -s "127.0.0.1:$METRICS/metrics" | grep -E '^chat_node_(store_batch_ops|store_commit_seconds|event_loop_lag_seconds)_(sum|count)'
