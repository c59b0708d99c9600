#!/usr/bin/env bash
# The load tester's figures for docs/benchmarks.md, all measured in one run on
# this machine (nodes, balancer, NATS and the load generator share its
# cores), each from chat-loadtest's --json summary:
#   1. one node, direct versus through chat-balancer (same rate);
#   2. one node versus two (a NATS cluster), both through the balancer;
#   3. one-to-one versus group chat at the same deliveries per second;
#   4. connections one node holds, and its memory per connection.
# scripts/loadtest-table.py puts the table into docs/benchmarks.md.
#   scripts/bench-loadtest.sh
#   RATE=5000 DURATION=20s CONNS=10000 scripts/bench-loadtest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-10000}
USERS=${USERS:-1000}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-19000}
BASE=${BASE:-16800}
OUT=${OUT:-target/bench-loadtest}

cargo build --release --locked >&2
mkdir -p "$OUT"
data=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

# node NAME PORT [flags...]: a release node with cheap password hashing
# (setup of thousands of users in seconds; hashing is not what is measured).
node() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$data/$name"
  ./target/release/chat-node --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$((port + 50))" --node-id "$name" \
    --argon2-memory-kib 1024 --argon2-iterations 1 --max-connections 20000 "$@" \
    2>"$data/$name.log" &
  pids+=($!)
  wait_port "$port"
}

balancer() {
  local port=$1
  shift
  local upstreams=()
  for u in "$@"; do upstreams+=(--upstream "$u"); done
  ./target/release/chat-balancer --listen "127.0.0.1:$port" --redirect-listen off --admin-listen off \
    --threads 1 "${upstreams[@]}" 2>"$data/balancer-$port.log" &
  pids+=($!)
  wait_port "$port"
}

loadtest() {
  local name=$1
  shift
  echo "== $name: chat-loadtest $*" >&2
  ./target/release/chat-loadtest --metrics-listen off --progress off --json "$OUT/$name.json" "$@" \
    | grep -E '^(delivery|send_ack|rate)' >&2 || true
}

one=$BASE
single=$((BASE + 1))
nats=$((BASE + 2))
a=$((BASE + 3))
b=$((BASE + 4))
pair=$((BASE + 5))
conns=$((BASE + 6))

node single "$one" --data-dir "$data/single"
balancer "$single" "127.0.0.1:$one"
nats-server -a 127.0.0.1 -p "$nats" 2>"$data/nats.log" &
pids+=($!)
wait_port "$nats"
node a "$a" --data-dir "$data/cluster" --nats "nats://127.0.0.1:$nats"
node b "$b" --data-dir "$data/cluster" --nats "nats://127.0.0.1:$nats"
balancer "$pair" "127.0.0.1:$a" "127.0.0.1:$b"

common=(--users "$USERS" --rate "$RATE" --duration "$DURATION" --warmup 2s)
loadtest direct-node --target "127.0.0.1:$one" "${common[@]}"
loadtest direct-balancer --target "127.0.0.1:$single" "${common[@]}"
loadtest two-nodes --target "127.0.0.1:$pair" "${common[@]}"
group_rate=$(python3 -c "print($RATE / 9)")
loadtest group-node --target "127.0.0.1:$one" --scenario group --group-size 10 \
  --users "$USERS" --rate "$group_rate" --duration "$DURATION" --warmup 2s

# Connections one node holds: a fresh node, users that connect, log in and
# stay; its resident memory is read while they are all online.
node conns "$conns" --data-dir "$data/conns" --shards 2
conns_pid=${pids[-1]}
rss() { awk '/VmRSS/ {print $2}' "/proc/$conns_pid/status"; }
before=$(rss)
hold=30
./target/release/chat-loadtest --metrics-listen off --progress off --json "$OUT/connections.json" \
  --target "127.0.0.1:$conns" --scenario connect --users "$CONNS" --rate 1000 --duration "${hold}s" \
  >/dev/null &
lt=$!
# Wait until every user is online (the log of the node is quiet then), read RSS.
for _ in $(seq 600); do
  open=$(ls "/proc/$conns_pid/fd" | wc -l)
  if [ "$open" -ge "$CONNS" ]; then break; fi
  sleep 0.5
done
sleep 2
during=$(rss)
open=$(ls "/proc/$conns_pid/fd" | wc -l)
wait $lt || true
printf '{"rss_before_kib": %s, "rss_online_kib": %s, "open_files": %s}\n' "$before" "$during" "$open" \
  >"$OUT/connections-memory.json"

per_conn=$(python3 -c "
import json
s = json.load(open('$OUT/connections.json'))
c = s['counters']['connections_at_end']
login = s['latency']['login']['corrected']
print(f'{c} of $CONNS users online at once; node RSS {$before // 1024} MiB before, {$during // 1024} MiB '
      f'with all online: **{($during - $before) / max(c, 1):.1f} KiB per connection**. Time to get online '
      f'(arrival to login reply, corrected) p50 {login[\"p50_us\"] / 1000:.1f} ms, p99 {login[\"p99_us\"] / 1000:.1f} ms')")
echo "$per_conn" >&2
scripts/loadtest-table.py loadtest "\
\`RATE=$RATE USERS=$USERS DURATION=$DURATION CONNS=$CONNS scripts/bench-loadtest.sh\`: release
binaries, 1-shard nodes, $USERS users with 4 friends each, open model, $DURATION measured after a
2 s warmup; every process (nodes, balancer, NATS, load generator) on this machine's 2 cores.
Latency is corrected (from each message's scheduled send time). Group chat runs at a ninth
of the direct rate, so that both deliver the same messages per second (each group message
reaches 9 members)." \
  "one node, direct::$OUT/direct-node.json" \
  "one node, through chat-balancer::$OUT/direct-balancer.json" \
  "two nodes (NATS), through chat-balancer::$OUT/two-nodes.json" \
  "group chat, one node, 10 members::$OUT/group-node.json" \
  --note "**Connections one node held** (\`--scenario connect --users $CONNS --rate 1000\`
against one 2-shard node; users connect, register, log in and stay online; the 20 000
open-files limit per process caps one node here): $per_conn."
