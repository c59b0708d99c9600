#!/usr/bin/env bash
# The load tester's figures for docs/benchmarks.md, all measured in one run on
# this machine (nodes, balancer, NATS and the load generator share its
# cores), each from chat-loadtest's --json summary:
#   1. one node, direct versus through chat-balancer (same rate);
#   2. one node versus two (a NATS cluster), both through the balancer;
#   3. one-to-one versus group chat at the same deliveries per second;
#   4. connections one node holds, and its memory per connection.
# The table goes to target/bench-loadtest/loadtest.md and replaces the part
# of docs/benchmarks.md between the loadtest markers.
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
  --target "127.0.0.1:$conns" --scenario connect --users "$CONNS" --rate 2000 --duration "${hold}s" \
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

python3 - "$OUT" "$RATE" "$USERS" "$DURATION" "$CONNS" <<'EOF'
import json, os, re, sys
out, rate, users, duration, conns = sys.argv[1:]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def ms(us):
    return f"{us / 1000:.2f}"
rows = []
def row(label, s, base=None):
    d = s["latency"]["delivery"]["corrected"]
    a = s["latency"]["send_ack"]["corrected"]
    r = s["rate"]
    c = s["counters"]
    ratio = ""
    if base is not None:
        b = base["latency"]["delivery"]["corrected"]
        ratio = f"{d['p99_us'] / max(b['p99_us'], 1):.2f}×"
    rows.append(f"| {label} | {r['offered_per_s']:.0f} | {r['achieved_per_s']:.0f} | {c['delivered']} | {c['lost']} | "
                f"{ms(d['p50_us'])} | {ms(d['p99_us'])} | {ms(d['p99_9_us'])} | {ms(a['p99_us'])} | {ratio} |")
node = load("direct-node")
row("one node, direct (baseline)", node)
row("one node, through chat-balancer", load("direct-balancer"), node)
row("two nodes (NATS), through chat-balancer", load("two-nodes"), node)
row("group chat, one node, 10 members (rate ÷ 9)", load("group-node"), node)
conn = load("connections")
mem = load("connections-memory")
held = conn["counters"]["connections_at_end"]
per = (mem["rss_online_kib"] - mem["rss_before_kib"]) * 1024 / max(held, 1)
login = conn["latency"]["login"]["corrected"]
text = f"""<!-- loadtest:begin (generated by scripts/bench-loadtest.sh from chat-loadtest --json; do not edit) -->
`RATE={rate} USERS={users} DURATION={duration} CONNS={conns} scripts/bench-loadtest.sh`: release
binaries, 1-shard nodes unless noted, {users} users with 4 friends each, open model, {duration}
measured after 2 s warmup; every process on this machine's 2 cores. Latency is corrected
(from each message's scheduled send time), in ms; the ratio is delivery p99 over the
baseline's, measured in the same run.

| run | offered/s | achieved/s | delivered | lost | delivery p50 | delivery p99 | delivery p99.9 | ack p99 | p99 vs baseline |
|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Group chat runs at a ninth of the direct rate so that both deliver the same
messages per second (each group message reaches 9 members).

**Connections one node held:** {held} of {conns} users connected, registered and
logged in at 2 000/s and stayed online (`--scenario connect`, one 2-shard node;
the 20 000 open-files limit per process caps a node here). Resident memory
{mem['rss_before_kib'] / 1024:.0f} MiB before, {mem['rss_online_kib'] / 1024:.0f} MiB with everyone online: **{per / 1024:.1f} KiB
per connection** (session, buffers, presence and routing state). Time to
online (login, corrected) p50 {ms(login['p50_us'])} ms, p99 {ms(login['p99_us'])} ms.
<!-- loadtest:end -->
"""
with open(os.path.join(out, "loadtest.md"), "w") as f:
    f.write(text)
path = "docs/benchmarks.md"
doc = open(path).read()
pattern = re.compile(r"<!-- loadtest:begin.*?<!-- loadtest:end -->\n", re.S)
if pattern.search(doc):
    doc = pattern.sub(lambda _: text, doc)
else:
    doc += "\n## Load tester: balancer, cluster, group chat, connections\n\n" + text
open(path, "w").write(doc)
print(text)
EOF
