#!/usr/bin/env bash
# The floor under the node's message path: runs the same FlatBuffers loads
# against a release chat-node and against the yardstick
# (node/examples/floor: the same exchange on one thread, decoded and encoded
# by the node's own protocol code) with and without the node's SQLite store,
# on bare epoll and on a current-thread tokio runtime, ROUNDS times in
# rotating order, on a fresh data directory each time:
# 5 000 one-to-one messages/s (open model), closed loop (50 pairs, one
# message in flight each), and one group of 100 at 1 000 messages/s. What the
# floor costs is what this machine charges for the exchange itself (loopback
# sends and receives, waking the load generator), under any server design.
# Prints the medians (server CPU per delivered message from each server's
# /metrics over the measured window, delivery p99, achieved rate) and puts
# the table into docs/benchmarks.md between <!-- floor:begin/end -->; every
# run's JSON stays in $OUT.
#   scripts/bench-floor.sh                      # 3 rounds, about 9 minutes
#   ROUNDS=5 DURATION=10s scripts/bench-floor.sh
#   TABLE_ONLY=1 scripts/bench-floor.sh        # the table again from $OUT's JSON
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
PORT=${PORT:-16700}
METRICS=${METRICS:-16701}
OUT=${OUT:-target/bench-floor}
NODE=./target/release/chat-node
FLOOR=./target/release/examples/floor

TABLE_ONLY=${TABLE_ONLY:-0}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
start() {
  server_stop
  data=$(mktemp -d)
  case $1 in
    node) "$NODE" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
            --data-dir "$data" --argon2-memory-kib 1024 --argon2-iterations 1 2>"$data/log" & ;;
    floor-store) "$FLOOR" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
            --store "$data" 2>"$data/log" & ;;
    floor) "$FLOOR" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" 2>"$data/log" & ;;
    tokio-store) "$FLOOR" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
            --store "$data" --runtime tokio 2>"$data/log" & ;;
    tokio) "$FLOOR" --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS" \
            --runtime tokio 2>"$data/log" & ;;
  esac
  server_started "$1" "$PORT"
}
servers=(node floor-store floor tokio-store tokio)
measure() {
  cargo build --release --locked >&2
  cargo build --release --locked -p chat-node --example floor >&2
  mkdir -p "$OUT"
  local round i s
  local common=(--warmup 2s --protocol fb --duration "$DURATION")
  for round in $(seq "$ROUNDS"); do
    for i in "${!servers[@]}"; do
      s=${servers[$(((i + round - 1) % ${#servers[@]}))]}
      start "$s"
      run "$s-5000-$round" "${common[@]}" --users 100 --rate 5000
      start "$s"
      run "$s-closed-$round" "${common[@]}" --users 100 --model closed --rate 1000000
      start "$s"
      run "$s-group-$round" "${common[@]}" --users 100 --scenario group --group-size 100 --rate 1000
    done
  done
  server_stop
}
[ "$TABLE_ONLY" = 1 ] || measure

python3 - "$OUT" "$ROUNDS" "$DURATION" <<'EOF'
import json, re, statistics, sys
out, rounds, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3]
loads = [("5000", "5 000 msg/s"), ("closed", "closed loop, 50 pairs"),
         ("group", "one group of 100, 1 000 msg/s (per delivery)")]
servers = [("node", "chat-node"), ("floor-store", "floor on epoll + SQLite store"), ("floor", "floor on epoll, nothing stored"),
           ("tokio-store", "floor on tokio + SQLite store"), ("tokio", "floor on tokio, nothing stored")]
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
lines = ["| load | server | CPU µs/msg (median) | rounds | delivery p99 ms (closed loop: from the send) | achieved msg/s | ÷ epoll floor + store | ÷ epoll floor |",
         "|---|---|---:|---|---:|---:|---:|---:|"]
for load, title in loads:
    runs = {key: [json.load(open(f"{out}/{key}-{load}-{r}.json")) for r in range(1, rounds + 1)]
            for key, _ in servers}
    cpus = {key: [((s.get("server") or {}).get("nodes") or {}).get("cpu_us_per_delivered") for s in runs[key]]
            for key, _ in servers}
    cpu = {key: med(each) for key, each in cpus.items()}
    for key, label in servers:
        each = cpus[key]
        runs_ = runs[key]
        # A closed loop sends when the last message arrived: its latency is
        # from the send, not from a schedule it never keeps.
        measured = "uncorrected" if load == "closed" else "corrected"
        p99 = med([s["latency"]["delivery"][measured]["p99_us"] / 1000 for s in runs_])
        rate = med([s["rate"]["achieved_per_s"] for s in runs_])
        lost = sum(s["counters"]["lost"] + s["counters"]["duplicated"] + s["counters"]["out_of_order"] for s in runs_)
        if lost:
            print(f"{key} {load}: {lost} lost, duplicated or reordered", file=sys.stderr)
        ratio = lambda base: f"{cpu[key] / cpu[base]:.2f}×" if cpu[key] and cpu.get(base) else ""
        lines.append(f"| {title} | {label} | {cpu[key]:.1f} | {', '.join(f'{v:.1f}' for v in each if v is not None)} "
                     f"| {p99:.2f} | {rate:.0f} | {ratio('floor-store')} | {ratio('floor')} |")
intro = (f"`ROUNDS={rounds} DURATION={duration} scripts/bench-floor.sh`: chat-node (release, defaults) and the "
         "yardstick `node/examples/floor` (the same FlatBuffers exchange on one thread, on bare epoll or on "
         "a current-thread tokio runtime, with the node's SQLite store or nothing stored) under the same chat-loadtest loads, 100 users, rounds in "
         "rotating order, each on a fresh data directory; server CPU per delivered message from each "
         "server's `/metrics` over the measured window; the generator shares the 2 cores.")
text = (f"<!-- floor:begin (generated by scripts/bench-floor.sh; do not edit) -->\n{intro}\n\n"
        + "\n".join(lines) + "\n<!-- floor:end -->\n")
path = "docs/benchmarks.md"
doc = open(path).read()
pattern = re.compile(r"<!-- floor:begin.*?<!-- floor:end -->\n", re.S)
doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc + "\n## The floor\n\n" + text
open(path, "w").write(doc)
print(text)
EOF
