#!/usr/bin/env bash
# Compares chat-balancer with nginx (stream module) and HAProxy as TCP
# proxies, against a direct connection, in one run on this machine.
#
# Installs nginx + libnginx-mod-stream and haproxy from Debian if missing,
# starts two echo upstreams (tcp-bench echo, balancer/bench/src/echo.rs) on
# loopback, then each proxy on its own port in front of both, configured like
# the seed's nginx config (round-robin, weight=1 max_fails=3 fail_timeout=30s,
# proxy_connect_timeout 1s, tcp_nodelay on):
#   direct         one upstream, no proxy (the baseline)
#   nginx          stream module, worker_processes 2
#   haproxy        mode tcp, balance roundrobin, nbthread 2
#   chat-balancer  cargo build --release -p chat-balancer, threads = cores
#                  (skipped, with a note, if it does not build or start); the
#                  echo upstreams answer its load probes (ECHO_PROBES)
# and measures against each, ROUNDS times in rotating order: new connections
# per second (conn-rate), latency of 16-byte request/response on established
# connections at a fixed rate (open loop, coordinated omission corrected;
# all targets in the same run, interleaved), and bulk throughput (echoed);
# and, with chat-balancer a target, its redirect mode: "which node?" at a fixed
# rate on persistent connections to its redirect port, round trip at the
# client and the balancer's own answer time (its histogram
# chat_balancer_redirect_answer_seconds on the admin port, before and after).
# Prints the Markdown tables (medians over the rounds, ratios against direct,
# nginx and HAProxy); the raw JSON lines stay in $OUT. Everything it starts is stopped on exit. The load generator, the
# proxies and the upstreams share the machine's cores.
#
# Usage:
#   balancer/bench/run.sh                     # defaults below, about 2.5 min
#                                               (plus building chat-balancer)
#   DURATION=10s ROUNDS=3 RATE=10000 balancer/bench/run.sh
#   TARGETS="direct nginx" balancer/bench/run.sh
#   BALANCER_ARGS="--connect-timeout 1s" balancer/bench/run.sh
# Knobs (environment):
#   DURATION=5s WARMUP=1s ROUNDS=2     measured time, unmeasured warmup, rounds
#   CONCURRENCY=32                     conn-rate: connections opened at once
#   CONNECTIONS=50 RATE=5000           latency: connections and requests/s per target
#   LATENCY_MODE=interleaved           latency: all targets in one run, requests
#                                      interleaved on one schedule (a noisy
#                                      moment hits all alike), or sequential
#   LATENCY_DURATION=10s               latency: measured time of each run
#   BULK_CONNECTIONS=4                 bulk: streaming connections
#   REDIRECT_CONNECTIONS=10            redirect mode: persistent connections,
#   REDIRECT_RATE=$RATE                "which node?" requests/s in all and
#   REDIRECT_DURATION=$DURATION        measured time, once per round (against
#                                      chat-balancer, and baseline if given)
#   LOADGEN_THREADS=1                  load generator runtime threads
#   TARGETS="direct nginx haproxy chat-balancer"
#   BASE_PORT=18190                    upstreams BASE_PORT and BASE_PORT+2,
#                                      proxies BASE_PORT+10.., chat-balancer's
#                                      admin +13 and redirect +14
#   ECHO_PROBES=answer                 echo upstreams vs chat-balancer's load
#                                      probes (tcp-bench echo --probes): answer
#                                      like a node (idle, capacity 10 000), or
#                                      silent | close | echo (the balancer then
#                                      marks both down and routes in panic mode)
#   SOURCE_IPS=16                      conn-rate: client source addresses
#                                      127.0.0.1..N (one caps new connections
#                                      at ~14 000/s: TIME_WAIT ports)
#   BALANCER_ARGS=""                   extra chat-balancer flags
#   SYSCALLS=0                         1 (or auto): during conn-rate, count each
#                                      proxy's CPU time, system calls,
#                                      epoll_ctl calls and context switches per
#                                      connection with `perf stat` over the
#                                      measured window, in a table of their own
#                                      (auto: when perf can read the syscall
#                                      tracepoints). Off by default: the
#                                      tracepoints slow the proxies a little
#   BASELINE_BALANCER=PATH             also measure this chat-balancer binary
#                                      (another build, e.g. before a change) as
#                                      target "baseline", in the same run
#   OUT=target/tcp-bench/<date>        results directory
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-32}
CONNECTIONS=${CONNECTIONS:-50}
RATE=${RATE:-5000}
LATENCY_MODE=${LATENCY_MODE:-interleaved}
LATENCY_DURATION=${LATENCY_DURATION:-10s}
BULK_CONNECTIONS=${BULK_CONNECTIONS:-4}
REDIRECT_CONNECTIONS=${REDIRECT_CONNECTIONS:-10}
REDIRECT_RATE=${REDIRECT_RATE:-$RATE}
REDIRECT_DURATION=${REDIRECT_DURATION:-$DURATION}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
BASELINE_BALANCER=${BASELINE_BALANCER:-}
TARGETS=${TARGETS:-"direct nginx haproxy chat-balancer${BASELINE_BALANCER:+ baseline}"}
BASE_PORT=${BASE_PORT:-18190}
ECHO_PROBES=${ECHO_PROBES:-answer}
SOURCE_IPS=${SOURCE_IPS:-16}
BALANCER_ARGS=${BALANCER_ARGS:-}
SYSCALLS=${SYSCALLS:-0}
OUT=${OUT:-target/tcp-bench/$(date +%Y%m%d-%H%M%S)}

UP1=$((BASE_PORT))
UP2=$((BASE_PORT + 2))
declare -A PORT=(
  [direct]=$UP1
  [nginx]=$((BASE_PORT + 10))
  [haproxy]=$((BASE_PORT + 11))
  [chat-balancer]=$((BASE_PORT + 12))
  [baseline]=$((BASE_PORT + 15))
)
ADMIN_PORT=$((BASE_PORT + 13))
REDIRECT_PORT=$((BASE_PORT + 14))
# Redirect mode of the balancer targets: redirect port and admin port.
declare -A REDIRECT=(
  [chat-balancer]="$REDIRECT_PORT $ADMIN_PORT"
  [baseline]="$((BASE_PORT + 17)) $((BASE_PORT + 16))"
)

# Process ids of the proxies (nginx: its master; its workers are found
# when counting).
declare -A PID=()

log() { echo "run.sh: $*" >&2; }

# ---- open files ---------------------------------------------------------------
# A proxy holds two descriptors per relayed connection; keep the largest
# concurrency well inside the per-process limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
most=$CONCURRENCY
((CONNECTIONS > most)) && most=$CONNECTIONS
((BULK_CONNECTIONS > most)) && most=$BULK_CONNECTIONS
if ((2 * most + 200 > nofile / 2 || 4 * CONNECTIONS + 200 > nofile / 2)); then
  log "concurrency $most needs $((2 * most + 200)) descriptors per proxy (interleaved latency: $((4 * CONNECTIONS + 200)) in the load generator); ulimit -n is $nofile: lower it"
  exit 2
fi

# ---- packages -----------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- builds -------------------------------------------------------------------
cargo build --release -p chat-balancer-bench >&2
BENCH=target/release/tcp-bench
BALANCER=target/release/chat-balancer
balancer_note=""
if [[ " $TARGETS " == *" chat-balancer "* ]]; then
  if ! cargo build --release -p chat-balancer >&2; then
    balancer_note="chat-balancer did not build"
  fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd) # absolute: nginx resolves paths against its prefix
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

wait_port() { # port, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# ---- upstreams ----------------------------------------------------------------
for port in $UP1 $UP2; do
  "$BENCH" echo --listen "127.0.0.1:$port" --probes "$ECHO_PROBES" 2>"$OUT/echo-$port.log" &
  pids+=($!)
done
for port in $UP1 $UP2; do
  wait_port "$port" 5 || { log "echo upstream on $port did not start"; exit 1; }
done

active=()
for t in $TARGETS; do
  case $t in
  direct) active+=(direct) ;;
  nginx)
    mkdir -p "$work/nginx/logs"
    cat >"$work/nginx/nginx.conf" <<EOF
# The seed's stream config, on bench ports; worker_connections raised from
# the seed's 1024 so that it is never the limit.
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $OUT/nginx-error.log warn;
worker_rlimit_nofile $nofile;
events {
    worker_connections 8192;
}
stream {
    upstream bench {
        server 127.0.0.1:$UP1 weight=1 max_fails=3 fail_timeout=30s;
        server 127.0.0.1:$UP2 weight=1 max_fails=3 fail_timeout=30s;
    }
    server {
        proxy_connect_timeout 1s;
        listen 127.0.0.1:${PORT[nginx]};
        proxy_pass bench;
        tcp_nodelay on;
    }
}
EOF
    cp "$work/nginx/nginx.conf" "$OUT/nginx.conf"
    nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>>"$OUT/nginx-error.log" &
    pids+=($!)
    PID[nginx]=$!
    if wait_port "${PORT[nginx]}" 10; then active+=(nginx); else log "nginx did not start (see $OUT/nginx-error.log)"; fi
    ;;
  haproxy)
    cat >"$work/haproxy.cfg" <<EOF
# HAProxy equivalent of the seed's nginx stream config.
global
    nbthread 2
    maxconn 8000
defaults
    mode tcp
    timeout connect 1s        # proxy_connect_timeout 1s
    timeout client 10m        # nginx proxy_timeout default
    timeout server 10m
    retries 2
    option redispatch 1       # a failed connect tries another server (proxy_next_upstream)
frontend bench
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend upstreams
backend upstreams
    balance roundrobin
    # weight=1 max_fails=3 fail_timeout=30s: 3 connection errors mark a
    # server down, a check every 30 s brings it back.
    default-server weight 1 check inter 30s fall 3 rise 1 observe layer4 error-limit 3 on-error mark-down
    server up1 127.0.0.1:$UP1
    server up2 127.0.0.1:$UP2
EOF
    cp "$work/haproxy.cfg" "$OUT/haproxy.cfg"
    haproxy -db -f "$work/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
    pids+=($!)
    PID[haproxy]=$!
    if wait_port "${PORT[haproxy]}" 10; then active+=(haproxy); else log "haproxy did not start (see $OUT/haproxy.log)"; fi
    ;;
  chat-balancer)
    if [[ -z $balancer_note ]]; then
      up="weight=1 max_fails=3 fail_timeout=30s"
      # shellcheck disable=SC2086 # BALANCER_ARGS is a list of flags
      "$BALANCER" --listen "127.0.0.1:${PORT[chat-balancer]}" \
        --upstream "127.0.0.1:$UP1 $up" --upstream "127.0.0.1:$UP2 $up" \
        --admin-listen "127.0.0.1:$ADMIN_PORT" --redirect-listen "127.0.0.1:$REDIRECT_PORT" \
        $BALANCER_ARGS >"$OUT/chat-balancer.log" 2>&1 &
      pids+=($!)
      PID[chat-balancer]=$!
      if wait_port "${PORT[chat-balancer]}" 10; then
        active+=(chat-balancer)
      else
        balancer_note="chat-balancer did not start: $(tail -3 "$OUT/chat-balancer.log" | tr '\n' ' ')"
      fi
    fi
    ;;
  baseline)
    up="weight=1 max_fails=3 fail_timeout=30s"
    # shellcheck disable=SC2086 # BALANCER_ARGS is a list of flags
    "$BASELINE_BALANCER" --listen "127.0.0.1:${PORT[baseline]}" \
      --upstream "127.0.0.1:$UP1 $up" --upstream "127.0.0.1:$UP2 $up" \
      --admin-listen "127.0.0.1:$((BASE_PORT + 16))" --redirect-listen "127.0.0.1:$((BASE_PORT + 17))" \
      $BALANCER_ARGS >"$OUT/baseline.log" 2>&1 &
    pids+=($!)
    PID[baseline]=$!
    if wait_port "${PORT[baseline]}" 10; then active+=(baseline); else log "baseline did not start (see $OUT/baseline.log)"; fi
    ;;
  *) log "unknown target $t"; exit 2 ;;
  esac
done
[[ -n $balancer_note ]] && log "$balancer_note"
log "targets: ${active[*]}; results in $OUT"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
sleep 1 # let probes and health checks settle

# ---- measurements -------------------------------------------------------------
results="$OUT/results.jsonl"
: >"$results"
source balancer/bench/perf-count.sh
SYSCALLS=$(counting_on "$SYSCALLS")
warmup_s=$(seconds "$WARMUP")
duration_s=$(seconds "$DURATION")
common=(--warmup "$WARMUP" --threads "$LOADGEN_THREADS")
n=${#active[@]}
for ((round = 0; round < ROUNDS; round++)); do
  for bench in conn-rate latency bulk; do
    if [[ $bench == latency && $LATENCY_MODE == interleaved ]]; then
      # All targets in one run, their requests interleaved on one schedule.
      all=()
      for t in "${active[@]}"; do all+=(--target "127.0.0.1:${PORT[$t]}" --label "$t"); done
      "$BENCH" latency "${all[@]}" "${common[@]}" --duration "$LATENCY_DURATION" \
        --connections "$CONNECTIONS" --rate "$RATE" >>"$results" || log "latency failed"
      sleep 0.5
      continue
    fi
    for ((i = 0; i < n; i++)); do
      t=${active[$(((i + round) % n))]}
      dur=(--duration "$DURATION")
      case $bench in
      conn-rate) extra=(--concurrency "$CONCURRENCY" --source-ips "$SOURCE_IPS") ;;
      latency) extra=(--connections "$CONNECTIONS" --rate "$RATE") dur=(--duration "$LATENCY_DURATION") ;;
      bulk) extra=(--connections "$BULK_CONNECTIONS") ;;
      esac
      counting=
      if [[ $bench == conn-rate && $SYSCALLS == 1 && -n ${PID[$t]:-} ]]; then
        count_proxy "${PID[$t]}" "$OUT/conn-rate-$t-$round.perf" "$warmup_s" "$duration_s" \
          task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_ctl,context-switches
        counting=$!
      fi
      "$BENCH" "$bench" --target "127.0.0.1:${PORT[$t]}" --label "$t" "${common[@]}" "${dur[@]}" "${extra[@]}" \
        >>"$results" || log "$bench against $t failed"
      [[ -n $counting ]] && wait "$counting" || true
      sleep 0.5
    done
  done
  # Redirect mode: "which node?" on the balancers' redirect ports, with their
  # answer-time histogram read off the admin port before and after.
  for t in "${active[@]}"; do
    [[ -n ${REDIRECT[$t]:-} ]] || continue
    read -r rport aport <<<"${REDIRECT[$t]}"
    "$BENCH" redirect --target "127.0.0.1:$rport" --metrics "http://127.0.0.1:$aport/metrics" \
      --label "$t" "${common[@]}" --duration "$REDIRECT_DURATION" \
      --connections "$REDIRECT_CONNECTIONS" --rate "$REDIRECT_RATE" >>"$results" ||
      log "redirect against $t failed"
    sleep 0.5
  done
done

if [[ " ${active[*]} " == *" chat-balancer "* ]]; then
  curl -s "127.0.0.1:$ADMIN_PORT/metrics" >"$OUT/chat-balancer-metrics.txt" 2>/dev/null || true
  curl -s "127.0.0.1:$ADMIN_PORT/status.json" >"$OUT/chat-balancer-status.json" 2>/dev/null || true
fi

# ---- report -------------------------------------------------------------------
{
  echo "$(date -u +%Y-%m-%d) · $(nproc) cores shared by the load generator, the proxies and two echo upstreams · load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS CONCURRENCY=$CONCURRENCY SOURCE_IPS=$SOURCE_IPS LATENCY_MODE=$LATENCY_MODE LATENCY_DURATION=$LATENCY_DURATION CONNECTIONS=$CONNECTIONS RATE=$RATE BULK_CONNECTIONS=$BULK_CONNECTIONS REDIRECT_CONNECTIONS=$REDIRECT_CONNECTIONS REDIRECT_RATE=$REDIRECT_RATE REDIRECT_DURATION=$REDIRECT_DURATION LOADGEN_THREADS=$LOADGEN_THREADS ECHO_PROBES=$ECHO_PROBES"
  echo "$(nginx -v 2>&1) · $(haproxy -v | head -1) · chat-balancer $(git rev-parse --short HEAD)"
  [[ -n $balancer_note ]] && echo "Not measured: $balancer_note"
  if [[ -s $OUT/chat-balancer-metrics.txt ]]; then
    echo "chat-balancer counters: $(grep -E '^chat_balancer_(accepted|panic|fallback_picks|picks|closed)_total' "$OUT/chat-balancer-metrics.txt" | tr '\n' ' ')"
  fi
  echo
  "$BENCH" table "$results"
  if ((SYSCALLS == 1)); then
    echo
    echo "What each proxy spent per connection during conn-rate (perf stat over the measured window, medians of the rounds; the tracepoints slowed the proxies a little in this run):"
    echo
    python3 - "$OUT" "$results" "$duration_s" <<'PY'
import json, statistics, sys
from pathlib import Path
out, results, duration = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
rate = {}
for line in results.read_text().splitlines():
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if j.get("bench") == "conn-rate":
        rate.setdefault(j["label"], []).append(j["conn_per_s"])
rows = {}
for f in sorted(out.glob("conn-rate-*.perf")):
    target, round_ = f.stem[len("conn-rate-"):].rsplit("-", 1)
    counts = {}
    for line in f.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2:
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                pass
    rates = rate.get(target, [])
    if int(round_) >= len(rates) or not rates[int(round_)]:
        continue
    conns = rates[int(round_)] * duration
    rows.setdefault(target, []).append((
        counts.get("task-clock", 0) * 1e3 / conns,
        counts.get("raw_syscalls:sys_enter", 0) / conns,
        counts.get("syscalls:sys_enter_epoll_ctl", 0) / conns,
        counts.get("context-switches", 0) / conns,
    ))
print("| proxy | CPU µs per connection | system calls per connection | of which epoll_ctl | context switches per connection |")
print("|---|---:|---:|---:|---:|")
for target, vals in rows.items():
    med = [statistics.median(v[i] for v in vals) for i in range(4)]
    print(f"| {target} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.2f} |")
PY
  fi
} | tee "$OUT/table.md"
