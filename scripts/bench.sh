#!/usr/bin/env bash
# Benchmarks one-to-one chat on one node: starts a release chat-node (2
# shards) on a fresh data directory and runs chat-loadtest against it
# directly, in both protocols: at fixed rates, then a ramp that finds the
# highest rate whose delivery p99 stays within the objective. Node and load
# generator share the machine's cores. chat-loadtest reads the node's
# /metrics (--server-metrics) at the start and end of each measured window,
# and prints the node's CPU per delivered message and memory per connection.
# The table, from chat-loadtest's --json, goes into docs/benchmarks.md
# (scripts/loadtest-table.py).
#   scripts/bench.sh                 # defaults below
#   USERS=200 RATES="10000" DURATION=20s SLO=p99=10ms scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100}
RATES=${RATES:-"5000 10000 20000"}
DURATION=${DURATION:-8s}
SLO=${SLO:-p99=20ms}
PORT=${PORT:-16600}
METRICS=${METRICS:-16601}
OUT=${OUT:-target/bench}

cargo build --release --locked >&2
mkdir -p "$OUT"
data=$(mktemp -d)
./target/release/chat-node --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
  --data-dir "$data" --argon2-memory-kib 1024 --argon2-iterations 1 2>"$data/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done

runs=()
run() {
  local name=$1
  shift
  echo "== $name: chat-loadtest $*" >&2
  # The table's server-cost lines go to stderr.
  ./target/release/chat-loadtest --target "127.0.0.1:$PORT" --users "$USERS" --warmup 2s \
    --server-metrics "http://127.0.0.1:$METRICS/metrics" --metrics-listen off --progress off \
    --json "$OUT/$name.json" "$@" | sed -n '/^server (/,/^$/p' >&2 || true
}
for protocol in fb json; do
  label=$([ "$protocol" = fb ] && echo FlatBuffers || echo "seed JSON")
  for rate in $RATES; do
    run "$protocol-$rate" --protocol "$protocol" --rate "$rate" --duration "$DURATION"
    runs+=("$label, $rate/s::$OUT/$protocol-$rate.json")
  done
  run "$protocol-ramp" --protocol "$protocol" --scenario ramp --ramp-start 5000 --ramp-step 5000 \
    --ramp-max 100000 --ramp-step-duration 4s --slo "$SLO"
  runs+=("$label, ramp until $SLO is missed::$OUT/$protocol-ramp.json")
done
scripts/loadtest-table.py one-node "\
\`USERS=$USERS RATES=\"$RATES\" DURATION=$DURATION SLO=$SLO scripts/bench.sh\`: one release node
(2 shards, \`--sync normal\`), $USERS users with 4 friends each sending one-to-one messages to
random friends, open model (latency corrected from each message's scheduled send time), over
loopback; node and load generator share the 2 cores. The ramp adds 5 000/s every 4 s from
5 000/s until a step's delivery p99 exceeds the objective; its highest rate that held is the
node's capacity at that latency. Server columns: the node's CPU time per delivered message and
its resident memory gained per connection (since before the users connected), from its
\`/metrics\` at the start and the end of each measured window (a ramp: of all its steps)." "${runs[@]}"
echo "== node metrics" >&2
curl -s "127.0.0.1:$METRICS/metrics" | grep -E '^chat_node_(store_batch_ops|store_commit_seconds|event_loop_lag_seconds)_(sum|count)' >&2
