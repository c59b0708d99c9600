#!/usr/bin/env bash
# History figures: the latency of a page of history with a large store.
# Starts a release chat-node (history kept forever) on a fresh data
# directory, lets scripts/bench_history.py register users, write MESSAGES
# stored messages into the node's SQLite file (CONVERSATION of them in one
# direct conversation), then ask RATE pages a second for DURATION seconds
# (open model, latency from each request's scheduled time) and print one
# JSON line: p50/p99/p99.9 of a page and the node's CPU per page.
#   scripts/bench-history.sh
#   MESSAGES=200000 RATE=2000 scripts/bench-history.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000}
CONVERSATION=${CONVERSATION:-100000}
RATE=${RATE:-1000}
DURATION=${DURATION:-10}
PORT=${PORT:-16700}
METRICS=${METRICS:-16701}
NODE=${NODE:-./target/release/chat-node}

cargo build --release --locked -p chat-node >&2
data=$(mktemp -d)
"$NODE" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" --data-dir "$data" \
  --history-retention 0 --argon2-memory-kib 1024 --argon2-iterations 1 2>"$data/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
python3 scripts/bench_history.py --port "$PORT" --db "$data/chat.db" --pid "$node" \
  --messages "$MESSAGES" --conversation "$CONVERSATION" --rate "$RATE" --duration "$DURATION"
