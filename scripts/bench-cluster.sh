#!/usr/bin/env bash
# Benchmarks one-to-one chat in a two-node cluster on this machine: one
# nats-server, two release chat-nodes sharing one data directory. In the same
# run it measures pairs whose sender and receiver are on the same node and
# pairs split across the two nodes (every message crosses NATS), closed loop
# and at fixed rates, so the two can be compared as a ratio.
#   scripts/bench-cluster.sh
#   PAIRS=50 RATES="2000 5000" DURATION=10s scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-20}
RATES=${RATES:-"2000 5000"}
DURATION=${DURATION:-10s}
SHARDS=${SHARDS:-1}
BASE=${BASE:-16700}

cargo build --release --locked -p chat-node -p chat-client >&2
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
nats-server -a 127.0.0.1 -p "$BASE" 2>"$data/nats.log" &
pids+=($!)
for i in 1 2; do
  ./target/release/chat-node --listen "127.0.0.1:$((BASE + i))" --metrics-listen "127.0.0.1:$((BASE + 10 + i))" \
    --data-dir "$data" --node-id "bench-$i" --nats "nats://127.0.0.1:$BASE" --shards "$SHARDS" \
    --argon2-memory-kib 1024 --argon2-iterations 1 2>"$data/node-$i.log" &
  pids+=($!)
done
for port in $((BASE + 1)) $((BASE + 2)); do
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
done

run() {
  echo "== $*"
  ./target/release/chat-bench --addr "127.0.0.1:$((BASE + 1))" --pairs "$PAIRS" --duration "$DURATION" --warmup 2s "$@" 2>&1 | tail -3
}
for rate in closed $RATES; do
  extra=()
  [ "$rate" != closed ] && extra=(--rate "$rate")
  run "${extra[@]}"
  run --receiver-addr "127.0.0.1:$((BASE + 2))" "${extra[@]}"
done
echo "== node 2 bus metrics"
curl -s "127.0.0.1:$((BASE + 12))/metrics" | grep -E '^chat_node_(nats|resyncs)'
