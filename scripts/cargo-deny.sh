#!/usr/bin/env bash
# Runs `cargo deny check` (advisories, bans, licenses, sources; see deny.toml)
# so that it also works where GitHub, the home of the RustSec advisory
# database, can't be reached (CI here). scripts/test.sh calls it.
#
# The advisory database is taken from the first of:
#   1. upstream: `cargo deny fetch db` (clones or updates it; needs GitHub);
#   2. a snapshot written by scripts/update-advisories.sh, at $CHAT_ADVISORY_DB,
#      ../shared/advisory-db (beside this repository), or the pruned one
#      committed in deny/advisory-db (what CI, which can't reach GitHub, uses;
#      refresh it with `scripts/update-advisories.sh --prune deny/advisory-db`);
#   3. the copy left in target/advisory-dbs by an earlier run, if cargo-deny
#      still finds it fresh (maximum-db-staleness, 90 days by default).
# Then the whole check runs with `--offline`, which is cargo-deny's only
# switch that stops it fetching the database (it also stops cargo metadata
# downloading crates, hence the `cargo fetch` first: crates.io is reachable).
# With no database at all, bans, licenses and sources still run and the
# advisories check is reported as skipped; CHAT_DENY_REQUIRE_ADVISORIES=1 makes
# that an error instead.
set -euo pipefail
snapshot=${CHAT_ADVISORY_DB:-}
if [ -n "$snapshot" ]; then snapshot=$(cd "$snapshot" && pwd); fi # before the cd below
cd "$(dirname "$0")/.."

# deny.toml sets [advisories] db-path to this (relative to the workspace root).
dbs=target/advisory-dbs
# The directory cargo-deny clones its default database URL into under db-path
# ("advisory-db-" + xxhash64 of https://github.com/rustsec/advisory-db).
db="$dbs/advisory-db-3157b0e258782691"
upstream=https://github.com/rustsec/advisory-db

# Copies a snapshot (plain files) into $db as the one-commit git repository
# cargo-deny expects: it reads $db/crates/**/*.md, and it needs `git show HEAD`
# to work there (it takes the database's age from .git/FETCH_HEAD, or else from
# the newer of the HEAD commit's date and .git/HEAD's mtime). The commit carries
# the snapshot's upstream date and origin points upstream, so a later online
# `cargo deny check` updates this copy in place. Staged anew on every run
# (about a second): .git/HEAD is then always new, so cargo-deny's own staleness
# limit never trips on a snapshot; warn_age below reports its real age instead.
stage_snapshot() {
  local snap=$1 date commit tmp="$db.staging"
  date=$(sed -n 's/^date //p' "$snap/SNAPSHOT")
  commit=$(sed -n 's/^commit //p' "$snap/SNAPSHOT")
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp -R "$snap/crates" "$tmp/"
  (
    cd "$tmp"
    export GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date"
    git init -q -b main
    git remote add origin "$upstream"
    git add -A
    git -c user.name=advisory-snapshot -c user.email=advisory-snapshot@localhost \
      -c commit.gpgsign=false commit -q --no-verify -m "advisory-db snapshot of upstream $commit"
  )
  rm -rf "$db"
  mv "$tmp" "$db"
  echo "advisory database: snapshot $snap (upstream $commit of $date)"
}

warn_age() {
  local ts age_days
  ts=$(git -C "$db" show -s --format=%ct HEAD)
  age_days=$(( ($(date +%s) - ts) / 86400 ))
  if [ "$age_days" -gt 30 ]; then
    echo "warning: the advisory database is $age_days days old (newest advisory commit $(git -C "$db" show -s --format=%cs HEAD));" \
      "refresh the snapshot with scripts/update-advisories.sh where GitHub is reachable" >&2
  fi
}

if [ -z "$snapshot" ] && [ -f ../shared/advisory-db/SNAPSHOT ]; then
  snapshot=../shared/advisory-db
fi
if [ -z "$snapshot" ] && [ -f deny/advisory-db/SNAPSHOT ]; then
  snapshot=deny/advisory-db
fi

mkdir -p "$dbs"
have_db=false
if timeout 300 cargo deny --log-level error fetch db 2>/dev/null; then
  echo "advisory database: fetched from $upstream"
  have_db=true
elif [ -n "$snapshot" ]; then
  echo "advisory database: $upstream unreachable; using the snapshot"
  [ -f "$snapshot/SNAPSHOT" ] || { echo "$snapshot: no SNAPSHOT file (write it with scripts/update-advisories.sh)" >&2; exit 1; }
  stage_snapshot "$snapshot"
  warn_age
  have_db=true
elif [ -d "$db/.git" ]; then
  echo "advisory database: $upstream unreachable and no snapshot; using the earlier copy in $db"
  warn_age
  have_db=true
fi

# `--offline` makes `cargo metadata` use only the local cache, which must hold
# every platform's crates (metadata resolves them all, whatever deny.toml's
# [graph] targets keep afterwards).
cargo fetch --locked --quiet

if $have_db; then
  cargo deny --offline --locked check
elif [ "${CHAT_DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  echo "error: no advisory database: $upstream is unreachable and there is no snapshot" \
    "(CHAT_ADVISORY_DB, ../shared/advisory-db); see scripts/update-advisories.sh" >&2
  exit 1
else
  echo "warning: advisories NOT checked: $upstream is unreachable and there is no snapshot" \
    "(CHAT_ADVISORY_DB, ../shared/advisory-db); see scripts/update-advisories.sh" >&2
  cargo deny --offline --locked check bans licenses sources
fi
