#!/usr/bin/env bash
# Writes a snapshot of the RustSec advisory database (rustsec/advisory-db) as
# plain files, for `scripts/cargo-deny.sh` to use where the database can't be
# fetched (no route to GitHub, as in CI here).
#
#   scripts/update-advisories.sh [--prune] [--from GIT_URL|DIR] [DEST]
#
# --from  where to read the database: a git URL or a local git repository
#         (cloned at its default branch), or a directory that already holds a
#         snapshot; default https://github.com/rustsec/advisory-db
# --prune keep only the advisories of crates named in Cargo.lock (smaller, but
#         a crate added to Cargo.lock later has no advisories until the next run
#         of this script; the full database is ~9 MB, so the default keeps all)
# DEST    default ../shared/advisory-db, beside this repository, which is where
#         scripts/cargo-deny.sh looks first (CI gets a copy of shared/ there)
#
# The snapshot is DEST/crates/<crate>/RUSTSEC-*.md (what cargo-deny reads),
# DEST/LICENSE.txt (the database is CC0-1.0) and DEST/SNAPSHOT, which records
# the upstream commit and its date. DEST is replaced whole.
set -euo pipefail
cd "$(dirname "$0")/.."

from=https://github.com/rustsec/advisory-db
prune=false
dest=../shared/advisory-db
while [ $# -gt 0 ]; do
  case $1 in
    --from) from=$2; shift 2 ;;
    --prune) prune=true; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) dest=$1; shift ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -d "$from/crates" ] && [ -f "$from/SNAPSHOT" ]; then
  # Already a snapshot (e.g. to prune one).
  cp -R "$from" "$work/db"
  commit=$(sed -n 's/^commit //p' "$from/SNAPSHOT")
  date=$(sed -n 's/^date //p' "$from/SNAPSHOT")
  source=$(sed -n 's/^source //p' "$from/SNAPSHOT")
else
  url=$from
  if [ -d "$from" ]; then url="file://$(cd "$from" && pwd)"; fi # --depth needs file:// for a local repo
  git clone --quiet --depth 1 "$url" "$work/db"
  commit=$(git -C "$work/db" rev-parse HEAD)
  date=$(git -C "$work/db" show -s --format=%cI HEAD)
  source=$from
fi
[ -d "$work/db/crates" ] || { echo "$from holds no crates/ directory: not an advisory database" >&2; exit 1; }

out="$work/out"
mkdir -p "$out/crates"
if $prune; then
  # Crate names in Cargo.lock; advisories are filed under crates/<name>/.
  sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock | sort -u | while read -r krate; do
    if [ -d "$work/db/crates/$krate" ]; then cp -R "$work/db/crates/$krate" "$out/crates/"; fi
  done
else
  cp -R "$work/db/crates/." "$out/crates/"
fi
# Only advisories are kept (cargo-deny reads crates/**/*.md).
find "$out/crates" -type f ! -name '*.md' -delete
if [ -f "$work/db/LICENSE.txt" ]; then cp "$work/db/LICENSE.txt" "$out/"; fi
{
  echo "commit $commit"
  echo "date $date"
  echo "source $source"
  echo "pruned $prune"
  echo "written $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$out/SNAPSHOT"

mkdir -p "$(dirname "$dest")"
rm -rf "$dest.new"
cp -R "$out" "$dest.new"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "advisory snapshot written to $dest: $(find "$dest/crates" -name '*.md' | wc -l) advisories, upstream $commit of $date"
