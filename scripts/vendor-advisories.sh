#!/usr/bin/env bash
# Vendors, from a checkout of github.com/rustsec/advisory-db (DB, the first
# argument), the advisories of every crate in Cargo.lock into
# audit/advisory-db/, with the names of every crate the database covers,
# for scripts/audit.py. Run it after changing dependencies, and from time
# to time with a fresh checkout (new advisories).
set -euo pipefail
cd "$(dirname "$0")/.."
db="${1:?usage: scripts/vendor-advisories.sh PATH-TO-ADVISORY-DB-CHECKOUT}"
out=audit/advisory-db
rm -rf "$out"
mkdir -p "$out/crates"
ls "$db/crates" | sort > "$out/ALL_CRATES"
for name in $(grep '^name = ' Cargo.lock | sed 's/name = "\(.*\)"/\1/' | sort -u); do
  if [ -d "$db/crates/$name" ]; then
    cp -r "$db/crates/$name" "$out/crates/"
  fi
done
if git -C "$db" rev-parse HEAD >/dev/null 2>&1; then
  echo "advisory-db $(git -C "$db" rev-parse --short=12 HEAD), $(git -C "$db" log -1 --format=%cs)" > "$out/SOURCE"
else
  echo "advisory-db (not a git checkout), vendored $(date -u +%F)" > "$out/SOURCE"
fi
echo "vendor-advisories: $(ls "$out/crates" | wc -l) crates' advisories in $out ($(cat "$out/SOURCE"))"
