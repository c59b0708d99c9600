# One server process at a time for a benchmark script; sourced by
# scripts/bench.sh and scripts/bench-floor.sh. `server_stop` ends the server
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
