#!/usr/bin/env bash
# Chat traffic through a proxy in front of one node, against going direct, in
# one run on this machine: chat-loadtest (open model, USERS users with 4
# friends each) at each of RATES against
#   direct         the node itself
#   chat-balancer  --threads 2 (BALANCER_THREADS; release build)
#   nginx          stream module, worker_processes 2, the seed's settings
#   haproxy        mode tcp, nbthread 2
# ROUNDS times in rotating order. For each target it prints the delivery
# latency (corrected: from each message's scheduled send time to its
# receipt; median over the rounds of each round's p50 and p99), the ratio of
# that p99 to going direct, the node's CPU per delivered message (from its
# /metrics), and the proxy's CPU per delivered message: utime + stime of all
# the proxy's processes (nginx's master and workers) between the start and
# the end of the measured window (chat-loadtest --balancer-pid), over the
# messages delivered in it; with its ratio to nginx's and HAProxy's.
# Installs nginx (stream module) and HAProxy from Debian if missing.
#
# Usage:
#   balancer/bench/chat.sh                           # about 6 minutes
#   RATES="5000" ROUNDS=1 balancer/bench/chat.sh
# Knobs (environment):
#   RATES="5000 10000" USERS=1000 DURATION=10s WARMUP=2s ROUNDS=3
#   PROTOCOL=fb                  chat-loadtest --protocol (fb or json)
#   TARGETS="direct chat-balancer nginx haproxy"
#   BASELINE_BALANCER=PATH       also measure this chat-balancer binary (e.g.
#                                a build before a change) as target "baseline"
#   BALANCER_THREADS=2           chat-balancer --threads (nginx and HAProxy run 2)
#   BASE_PORT=18500              node BASE_PORT (+1 metrics), proxies +10..+13
#   SYSCALLS=0                   1 (or auto): count the proxy's system calls and context
#                                switches per delivered message with
#                                `perf stat` over the measured window (auto:
#                                when perf can read the syscall tracepoints).
#                                Off by default: the tracepoints slow every
#                                system call of the proxy a little, which
#                                direct does not pay, so measure the latency
#                                ratios without them
#   OUT=target/chat-bench/<date> results (one JSON report per run)
set -euo pipefail
cd "$(dirname "$0")/../.."

RATES=${RATES:-"5000 10000"}
USERS=${USERS:-1000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
PROTOCOL=${PROTOCOL:-fb}
BASELINE_BALANCER=${BASELINE_BALANCER:-}
TARGETS=${TARGETS:-"direct chat-balancer nginx haproxy${BASELINE_BALANCER:+ baseline}"}
BALANCER_THREADS=${BALANCER_THREADS:-2}
BASE_PORT=${BASE_PORT:-18500}
SYSCALLS=${SYSCALLS:-0}
OUT=${OUT:-target/chat-bench/$(date +%Y%m%d-%H%M%S)}

NODE=$BASE_PORT
METRICS=$((BASE_PORT + 1))
declare -A PORT=(
  [direct]=$NODE
  [chat-balancer]=$((BASE_PORT + 10))
  [nginx]=$((BASE_PORT + 11))
  [haproxy]=$((BASE_PORT + 12))
  [baseline]=$((BASE_PORT + 13))
)
declare -A PID=()

log() { echo "chat.sh: $*" >&2; }

need=()
command -v nginx >/dev/null || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --locked -p chat-node -p chat-balancer -p chat-loadtest >&2

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  local i
  for ((i = 0; i < 100; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on $1"
  exit 1
}

# The node: cheap password hashing (setting up users is not what is measured).
./target/release/chat-node --listen "127.0.0.1:$NODE" --metrics-listen "127.0.0.1:$METRICS" \
  --data-dir "$work/node" --argon2-memory-kib 1024 --argon2-iterations 1 --max-connections 20000 \
  2>"$OUT/node.log" &
pids+=($!)
wait_port "$NODE"

for t in $TARGETS; do
  case $t in
  direct) ;;
  chat-balancer | baseline)
    bin=./target/release/chat-balancer
    [[ $t == baseline ]] && bin=$BASELINE_BALANCER
    "$bin" --listen "127.0.0.1:${PORT[$t]}" --upstream "127.0.0.1:$NODE" --threads "$BALANCER_THREADS" \
      --redirect-listen off --admin-listen off 2>"$OUT/$t.log" &
    pids+=($!)
    PID[$t]=$!
    ;;
  nginx)
    mkdir -p "$work/nginx/logs"
    cat >"$work/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $OUT/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {
    worker_connections 8192;
}
stream {
    upstream node {
        server 127.0.0.1:$NODE weight=1 max_fails=3 fail_timeout=30s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        proxy_pass node;
        proxy_connect_timeout 1s;
        tcp_nodelay on;
    }
}
EOF
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>>"$OUT/nginx-error.log" &
    pids+=($!)
    PID[$t]=$!
    ;;
  haproxy)
    cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 9000
defaults
    mode tcp
    timeout connect 1s
    timeout client 10m
    timeout server 10m
frontend chat
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend node
backend node
    server node 127.0.0.1:$NODE
EOF
    haproxy -db -f "$work/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
    pids+=($!)
    PID[$t]=$!
    ;;
  *) log "unknown target $t"; exit 2 ;;
  esac
  wait_port "${PORT[$t]}"
done
log "targets: $TARGETS; results in $OUT"
source balancer/bench/perf-count.sh
SYSCALLS=$(counting_on "$SYSCALLS")
warmup_s=$(seconds "$WARMUP")
duration_s=$(seconds "$DURATION")
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

read -r -a order <<<"$TARGETS"
n=${#order[@]}
for ((round = 0; round < ROUNDS; round++)); do
  for rate in $RATES; do
    for ((i = 0; i < n; i++)); do
      t=${order[$(((i + round) % n))]}
      extra=()
      [[ -n ${PID[$t]:-} ]] && extra=(--balancer-pid "${PID[$t]}")
      log "round $round, $rate msg/s, $t"
      counting=
      if [[ $SYSCALLS == 1 && -n ${PID[$t]:-} ]]; then
        count_proxy "${PID[$t]}" "$OUT/$t-$rate-$round.perf" "$warmup_s" "$duration_s" \
          raw_syscalls:sys_enter,context-switches
        counting=$!
      fi
      ./target/release/chat-loadtest --metrics-listen off --progress off \
        --target "127.0.0.1:${PORT[$t]}" --protocol "$PROTOCOL" \
        --server-metrics "http://127.0.0.1:$METRICS/metrics" "${extra[@]}" \
        --users "$USERS" --rate "$rate" --duration "$DURATION" --warmup "$WARMUP" \
        --json "$OUT/$t-$rate-$round.json" >/dev/null 2>>"$OUT/loadtest.log" ||
        log "chat-loadtest against $t at $rate failed (see $OUT/loadtest.log)"
      [[ -n $counting ]] && wait "$counting" || true
    done
  done
done

{
  echo "$(date -u +%Y-%m-%d) · $(nproc) cores shared by the load generator, the node and the proxies · load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "RATES=\"$RATES\" USERS=$USERS DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS PROTOCOL=$PROTOCOL · $(nginx -v 2>&1) · $(haproxy -v | head -1 | cut -d' ' -f1-3) · chat-balancer $(git rev-parse --short HEAD)"
  echo
  python3 - "$OUT" "$RATES" "$TARGETS" "$duration_s" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, rates, targets = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
duration_s = float(sys.argv[4])
names = {"direct": "direct (no proxy)", "nginx": "nginx stream", "haproxy": "HAProxy"}

def runs(t, rate):
    for f in sorted(out.glob(f"{t}-{rate}-*.json")):
        try:
            yield json.loads(f.read_text())
        except ValueError:
            pass

def counted(t, rate):
    """Per round: the proxy's (system calls, context switches) per delivered
    message over the measured window, from perf stat, if it ran."""
    for f in sorted(out.glob(f"{t}-{rate}-*.perf")):
        round_ = f.stem.rsplit("-", 1)[1]
        report = out / f"{t}-{rate}-{round_}.json"
        counts = {}
        for line in f.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].isdigit():
                counts[parts[2]] = int(parts[0])
        try:
            achieved = json.loads(report.read_text())["rate"]["achieved_per_s"]
        except (OSError, ValueError, KeyError):
            continue
        messages = achieved * duration_s
        if messages and "raw_syscalls:sys_enter" in counts:
            yield counts["raw_syscalls:sys_enter"] / messages, counts.get("context-switches", 0) / messages

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def cpu(run, group):
    g = (run.get("server") or {}).get(group) or {}
    return g.get("cpu_us_per_delivered")

def delivery(run, q):
    return run["latency"]["delivery"]["corrected"].get(f"{q}_us")

fig = {}
for rate in rates:
    for t in targets:
        rs = list(runs(t, rate))
        counts = list(counted(t, rate))
        fig[(t, rate)] = {
            "rounds": len(rs),
            "rate": med([r.get("rate", {}).get("achieved_per_s") for r in rs]),
            "lost": sum(r["counters"].get("lost", 0) for r in rs),
            "p50": med([delivery(r, "p50") for r in rs]),
            "p99": med([delivery(r, "p99") for r in rs]),
            "node": med([cpu(r, "nodes") for r in rs]),
            "proxy": med([cpu(r, "balancer") for r in rs]),
            "syscalls": med([c[0] for c in counts]),
            "switches": med([c[1] for c in counts]),
        }

def f(v, fmt):
    return "–" if v is None else fmt(v)

ms = lambda us: f"{us / 1000:.2f} ms"
mu = lambda us: f"{us:.1f} µs"
x = lambda r: f"{r:.2f}×"
one = lambda v: f"{v:.2f}"
print("| rate | target | rounds | delivery p50 | p99 | p99 ÷ direct | node CPU per message | proxy CPU per message | ÷ nginx's | ÷ HAProxy's | proxy system calls per message | proxy context switches per message | lost |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for rate in rates:
    direct = fig.get(("direct", rate), {}).get("p99")
    nginx = fig.get(("nginx", rate), {}).get("proxy")
    haproxy = fig.get(("haproxy", rate), {}).get("proxy")
    for t in targets:
        g = fig[(t, rate)]
        ratio = lambda a, b: x(a / b) if a is not None and b else "–"
        print(
            f"| {int(rate):,} | {names.get(t, t)} | {g['rounds']} | {f(g['p50'], ms)} | {f(g['p99'], ms)} | "
            f"{ratio(g['p99'], direct) if t != 'direct' else '1.00×'} | {f(g['node'], mu)} | "
            f"{f(g['proxy'], mu) if t != 'direct' else '–'} | "
            f"{ratio(g['proxy'], nginx) if t != 'direct' else '–'} | "
            f"{ratio(g['proxy'], haproxy) if t != 'direct' else '–'} | "
            f"{f(g['syscalls'], one)} | {f(g['switches'], one)} | {g['lost']} |".replace(",", " ")
        )
EOF
} | tee "$OUT/table.md"
