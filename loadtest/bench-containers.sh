#!/usr/bin/env bash
# Deployment figures (issue 13) with the Docker Engine: image size, pod
# start to ready, 3 -> 5 pods balanced with 10,000 keys (and, with
# BIG=1, with 1 GiB: 262,144 keys of 4 KiB), write failures while a pod is
# killed. JSON reports in loadtest/out/containers/.
#
# Usage: [BIG=1] loadtest/bench-containers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=loadtest/out/containers
source loadtest/lib.sh
bench_setup containers
loadtest/bench_containers.py "$BIN/ringstore" --keys 10000 --value-bytes 100 --out "$OUT/10k.json"
if [ -n "${BIG:-}" ]; then
  loadtest/bench_containers.py "$BIN/ringstore" --keys 262144 --value-bytes 4096 --out "$OUT/1gib.json"
fi
