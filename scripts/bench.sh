#!/usr/bin/env bash
# Benchmarks one node: starts a release chat-node (default shards) on a fresh
# data directory and runs chat-loadtest against it directly, in both
# protocols: one-to-one messages at fixed open-model rates, closed loop (50
# sender/receiver pairs, each with one message in flight), a ramp that finds
# the highest rate whose delivery p99 stays within the objective, group
# fan-out (one group of 100 members), then memory per idle connection and per
# logged-in idle user. Node and load generator share the machine's cores.
# chat-loadtest reads the node's /metrics (--server-metrics) at the start and
# end of each measured window: the node's CPU per delivered message and
# memory per connection. The table, from chat-loadtest's --json, goes into
# docs/benchmarks.md (scripts/loadtest-table.py).
#
# BASELINE=path/to/other/chat-node runs the same set against that binary too,
# in the same run (its rows say "baseline"), e.g. a build of an earlier
# commit: ratios between the two then come from one run on one machine.
#   scripts/bench.sh                 # defaults below
#   USERS=200 RATES="10000" DURATION=20s SLO=p99=10ms scripts/bench.sh
#   BASELINE=/tmp/old/target/release/chat-node scripts/bench.sh
# NODE_ARGS are extra chat-node flags; BASELINE_ARGS those of the baseline
# (default: NODE_ARGS), e.g. the same build with and without a flag:
#   BASELINE=./target/release/chat-node BASELINE_ARGS= NODE_ARGS="--commit-window 300us" scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100}
RATES=${RATES:-"5000 10000"}
DURATION=${DURATION:-8s}
SLO=${SLO:-p99=5ms}
PORT=${PORT:-16600}
METRICS=${METRICS:-16601}
OUT=${OUT:-target/bench}
NODE=${NODE:-./target/release/chat-node}
BASELINE=${BASELINE:-}
NODE_ARGS=${NODE_ARGS:-}
BASELINE_ARGS=${BASELINE_ARGS-$NODE_ARGS}
IDLE=${IDLE:-2000}
# JSON users acknowledge as the seed's client does (not at all: the node
# counts a push read at the user's next request), so the "seed JSON" rows
# measure what that client costs; JSON_ACKS=explicit sends msgid 50 instead.
export CHAT_LOADTEST_JSON_ACKS=${JSON_ACKS:-implicit}

cargo build --release --locked >&2
mkdir -p "$OUT"

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
start_node() {
  server_stop
  data=$(mktemp -d)
  # shellcheck disable=SC2086
  "$1" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
    --data-dir "$data" --argon2-memory-kib 1024 --argon2-iterations 1 $node_args 2>"$data/log" &
  server_started chat-node "$PORT"
}

runs=()

# One binary's whole set; $1 the binary, $2 a row prefix ("" or "baseline, "),
# $3 its extra flags (start_node reads node_args).
bench() {
  local bin=$1 tag=$2 key=${2:+base-} node_args=$3
  for protocol in fb json; do
    local label
    label=$([ "$protocol" = fb ] && echo FlatBuffers || echo "seed JSON")
    start_node "$bin"
    for rate in $RATES; do
      run "$key$protocol-$rate" --warmup 2s --protocol "$protocol" --users "$USERS" --rate "$rate" --duration "$DURATION"
      runs+=("$tag$label, $rate/s::$OUT/$key$protocol-$rate.json")
    done
    run "$key$protocol-closed" --warmup 2s --protocol "$protocol" --users "$USERS" --model closed \
      --rate 1000000 --duration "$DURATION"
    runs+=("$tag$label, closed loop, $((USERS / 2)) pairs::$OUT/$key$protocol-closed.json")
    run "$key$protocol-group" --warmup 2s --protocol "$protocol" --users 100 --scenario group \
      --group-size 100 --rate 1000 --duration "$DURATION"
    runs+=("$tag$label, one group of 100, 1 000 msg/s (per delivery)::$OUT/$key$protocol-group.json")
    start_node "$bin"
    run "$key$protocol-ramp" --warmup 2s --protocol "$protocol" --users "$USERS" --scenario ramp \
      --ramp-start 5000 --ramp-step 5000 --ramp-max 100000 --ramp-step-duration 4s --slo "$SLO"
    runs+=("$tag$label, ramp until $SLO is missed::$OUT/$key$protocol-ramp.json")
    start_node "$bin"
    run "$key$protocol-idle" --protocol "$protocol" --scenario connect --connect-only \
      --users "$IDLE" --rate 2000 --duration 3s --warmup 0s
    runs+=("$tag$label, $IDLE idle connections (memory)::$OUT/$key$protocol-idle.json")
    start_node "$bin"
    run "$key$protocol-online" --protocol "$protocol" --scenario connect \
      --users "$IDLE" --rate 2000 --duration 3s --warmup 0s
    runs+=("$tag$label, $IDLE logged-in idle users (memory)::$OUT/$key$protocol-online.json")
  done
  server_stop
}

bench "$NODE" "" "$NODE_ARGS"
if [ -n "$BASELINE" ]; then
  bench "$BASELINE" "baseline, " "$BASELINE_ARGS"
fi
scripts/loadtest-table.py one-node "\
\`USERS=$USERS RATES=\"$RATES\" DURATION=$DURATION SLO=$SLO${BASELINE:+ BASELINE=…} scripts/bench.sh\`: one
release node (default shards, \`--sync normal\`${NODE_ARGS:+, \`$NODE_ARGS\`}) on a fresh data directory, $USERS
users with 4 friends each sending one-to-one messages to random friends, open model (latency
corrected from each message's scheduled send time), over loopback; node and load generator share
the 2 cores. Closed loop: $((USERS / 2)) fixed sender/receiver pairs, each sender's next message
once its receiver got the last one (and its ack came). Group: one group of 100 members, each
message delivered to the 99 others (server CPU is per delivery). The ramp adds 5 000/s every 4 s
from 5 000/s until a step's delivery p99 exceeds the objective; its highest rate that held is the
node's capacity at that latency. Memory rows: $IDLE connections that only connect and ping, or
users that register, log in and stay idle. Server columns: the node's CPU time per delivered
message and its resident memory gained per connection (since before the users connected), from
its \`/metrics\` at the start and the end of each measured window (a ramp: of all its steps).
FlatBuffers users acknowledge what they receive (\`DeliveryAck\`, quiet: no reply) every 32
messages and whenever their inbox runs dry; seed JSON users \`--json-acks $CHAT_LOADTEST_JSON_ACKS\`.${BASELINE:+ Rows
marked baseline ran the binary \`BASELINE\` names in the same script run${BASELINE_ARGS:+, with \`$BASELINE_ARGS\`}.}" "${runs[@]}"
