# Counting a proxy's work with `perf stat`, shared by run.sh and chat.sh
# (sourced, from the repository root). See their SYSCALLS knob.

# `seconds 10s` prints 10, `seconds 500ms` 0.5, `seconds 2m` 120.
seconds() {
  python3 -c 'import re,sys; v=sys.argv[1]; m=re.fullmatch(r"([0-9.]+)(ms|s|m)?", v); n=float(m[1]); print({"ms": n/1000, "m": n*60}.get(m[2], n))' "$1"
}

# `counting_on SYSCALLS` prints 1 when counting is asked for: SYSCALLS=1, or
# auto where perf can read the syscall tracepoints; 0 otherwise.
counting_on() {
  case $1 in
  1) echo 1 ;;
  auto) if perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then echo 1; else echo 0; fi ;;
  *) echo 0 ;;
  esac
}

# `count_proxy PID OUT WARMUP_S DURATION_S EVENTS` starts, in the
# background, `perf stat -x, -e EVENTS` on PID and its children (nginx's
# workers) from WARMUP_S seconds on for DURATION_S seconds, into OUT. Call
# it without command substitution and take the job from `$!`, so that the
# caller can `wait` for it.
count_proxy() {
  local pid=$1 out=$2 warmup=$3 duration=$4 events=$5 procs
  procs=$(pgrep -d, -P "$pid" || true)
  (sleep "$warmup" && perf stat -x, -e "$events" -p "${procs:+$procs,}$pid" -o "$out" -- sleep "$duration") \
    >/dev/null 2>&1 &
}
