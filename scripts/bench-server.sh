# One server process at a time, and the load tester against it, for a
# benchmark script; sourced by scripts/bench.sh and scripts/bench-floor.sh
# (which set PORT, METRICS and OUT). `server_stop` ends the server
# and removes its data directory (also at exit); a script makes `data`
# (mktemp -d), starts its server in the background with its log in
# "$data/log", then calls `server_started NAME PORT`, which waits until PORT
# accepts connections, or prints the log and exits.
server=""
data=""
server_stop() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [ -n "$data" ]; then rm -rf "$data"; fi
  server=""
  data=""
}
trap server_stop EXIT
server_started() {
  server=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "$1 did not start: $(cat "$data/log")" >&2
  exit 1
}
# `run NAME ARGS...` runs chat-loadtest with ARGS against the server on
# PORT (its /metrics on METRICS), its JSON summary into $OUT/NAME.json; the
# server-cost lines of its table go to stderr.
run() {
  local name=$1
  shift
  echo "== $name: chat-loadtest $*" >&2
  ./target/release/chat-loadtest --target "127.0.0.1:$PORT" \
    --server-metrics "http://127.0.0.1:$METRICS/metrics" --metrics-listen off --progress off \
    --json "$OUT/$name.json" "$@" | sed -n '/^server (/,/^$/p' >&2 || true
}
