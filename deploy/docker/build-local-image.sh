#!/usr/bin/env bash
# Builds a runnable ringstore image without pulling anything (this machine
# has no registry): FROM scratch with the binary, stripped of debug info,
# the shared libraries `ldd` lists for it, /etc/passwd for a non-root user
# and an empty /data. The container tests use this image; users with a
# registry can use the multi-stage Dockerfile beside it instead.
#
# Usage: deploy/docker/build-local-image.sh [BINARY] [TAG]
#   BINARY defaults to the release build, TAG to ringstore:local.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/release/ringstore}"
TAG="${2:-ringstore:local}"
[ -x "$BIN" ] || { echo "no binary at $BIN (build it: cargo build --release -p ringstore)" >&2; exit 1; }
ctx="$(mktemp -d "${TMPDIR:-/tmp}/ringstore-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/etc" "$root/data" "$root/tmp"
objcopy --strip-debug "$BIN" "$root/ringstore"
# The libraries and the loader, at the paths the binary asks for.
for lib in $(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
echo 'ringstore:x:10001:10001:ringstore:/data:/ringstore' > "$root/etc/passwd"
echo 'ringstore:x:10001:' > "$root/etc/group"
# glibc resolves names through these (Docker and Kubernetes mount hosts and resolv.conf).
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cp deploy/docker/Dockerfile.local "$ctx/Dockerfile"
docker build --quiet -t "$TAG" "$ctx" >/dev/null
echo "$TAG"
