#!/usr/bin/env bash
# The Rebalancer's figures (issue 11): `ringstore-rebalance` loads three
# `ringstore node` processes x 16 shards with DATA_MB of 256 B-4 KiB values,
# runs a fixed-rate YCSB-A load throughout, joins a fourth node and waits
# for the job to finish: time until replicas are balanced within 10%,
# foreground p50/p99 before vs during, bytes moved per second, failed
# requests. JSON report and SVG plot in loadtest/out/rebalance/.
#
# Usage: [DATA_MB=1024] [RATE=400] [TRIALS=1] loadtest/bench-rebalance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=loadtest/out/rebalance
source loadtest/lib.sh
bench_setup rebalance
for t in $(seq 1 "${TRIALS:-1}"); do
  TMPDIR="$DATA" "$BIN/ringstore-rebalance" --data-mb "${DATA_MB:-1024}" --rate "${RATE:-400}" --bin "$BIN/ringstore" \
    --out "$OUT/trial-$t.json" --plot "$OUT/trial-$t.svg"
done
