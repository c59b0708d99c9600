#!/usr/bin/env bash
# Benchmarks one-to-one chat in a two-node cluster on this machine: one
# nats-server, two release chat-nodes sharing one data directory. In the same
# run it measures users whose friends are all on the same node (every user on
# node 1) and users whose friends are all on the other node (users alternate
# between the nodes and each befriends its two neighbours: every message
# crosses NATS), at fixed rates and with a ramp, so the two compare as
# ratios. chat-loadtest reads both nodes' /metrics (--server-metrics) at the
# start and end of each measured window and prints their CPU per delivered
# message and memory per connection (the two nodes summed). The table, from
# chat-loadtest's --json, goes into docs/benchmarks.md.
#   scripts/bench-cluster.sh
#   USERS=100 RATES="2000 5000" DURATION=10s scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-40}
RATES=${RATES:-"2000 5000"}
DURATION=${DURATION:-10s}
SLO=${SLO:-p99=20ms}
SHARDS=${SHARDS:-1}
BASE=${BASE:-16700}
OUT=${OUT:-target/bench-cluster}

cargo build --release --locked >&2
mkdir -p "$OUT"
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

same=(--target "127.0.0.1:$((BASE + 1))")
across=(--target "127.0.0.1:$((BASE + 1))" --target "127.0.0.1:$((BASE + 2))")
runs=()
run() {
  local name=$1
  shift
  echo "== $name: chat-loadtest $*" >&2
  # The table's server-cost lines go to stderr.
  ./target/release/chat-loadtest --users "$USERS" --friends 1 --warmup 2s --metrics-listen off \
    --server-metrics "http://127.0.0.1:$((BASE + 11))/metrics" \
    --server-metrics "http://127.0.0.1:$((BASE + 12))/metrics" \
    --progress off --json "$OUT/$name.json" "$@" | sed -n '/^server (/,/^$/p' >&2 || true
}
for rate in $RATES; do
  run "same-$rate" "${same[@]}" --rate "$rate" --duration "$DURATION"
  run "across-$rate" "${across[@]}" --rate "$rate" --duration "$DURATION"
  runs+=("same node, $rate/s::$OUT/same-$rate.json" "across nodes, $rate/s::$OUT/across-$rate.json::same node, $rate/s")
done
ramp=(--scenario ramp --ramp-start 2000 --ramp-step 2000 --ramp-max 60000 --ramp-step-duration 4s --slo "$SLO")
run same-ramp "${same[@]}" "${ramp[@]}"
run across-ramp "${across[@]}" "${ramp[@]}"
runs+=("same node, ramp until $SLO is missed::$OUT/same-ramp.json" "across nodes, ramp until $SLO is missed::$OUT/across-ramp.json")
scripts/loadtest-table.py cluster "\
\`USERS=$USERS RATES=\"$RATES\" DURATION=$DURATION SLO=$SLO scripts/bench-cluster.sh\`: one
nats-server and two release nodes (\`--shards $SHARDS\`) on one shared data directory, and the load
generator, all on this machine's 2 cores. $USERS users, each with two friends. \"Same node\": every
user on node 1. \"Across nodes\": users alternate between the nodes and their friends are their
neighbours, so every message crosses NATS. Open model, latency corrected from the scheduled
send time. Server columns: both nodes' CPU time per delivered message and resident memory
gained per connection, summed, from their \`/metrics\` at the start and the end of each
measured window." "${runs[@]}"
echo "== node 2 bus metrics" >&2
curl -s "127.0.0.1:$((BASE + 12))/metrics" | grep -E '^chat_node_(nats|resyncs)' >&2
