#!/usr/bin/env bash
# Range moves' figures (issue 12): `ringstore-rebalance --grow` loads
# NODES `ringstore node` processes x SHARDS shards with DATA_MB of
# 256 B-4 KiB values, runs a fixed-rate YCSB-A load throughout, then adds
# GROW shards (POST /v1/cluster/shards): splits in place, then replica
# moves to even the nodes out. Reports each split's fence (p50/p99/max),
# foreground p50/p99/max before, during and after (AFTER_SECS, 20), time
# to finish, bytes moved per second and failed requests. JSON report and
# SVG plot in loadtest/out/grow/.
#
# KEEP_LOGS=1 keeps the nodes' logs in $OUT/logs-N (with RINGSTORE_LOG for
# more, e.g. "info,ringstore_router=debug").
#
# Usage: [DATA_MB=1024] [RATE=400] [NODES=4] [SHARDS=4] [GROW=4] [TRIALS=1] [KEEP_LOGS=1] loadtest/bench-grow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=loadtest/out/grow
source loadtest/lib.sh
bench_setup grow
for t in $(seq 1 "${TRIALS:-1}"); do
  TMPDIR="$DATA" "$BIN/ringstore-rebalance" --data-mb "${DATA_MB:-1024}" --rate "${RATE:-400}" \
    --nodes "${NODES:-4}" --grow "${GROW:-4}" --bin "$BIN/ringstore" --after-secs "${AFTER_SECS:-20}" \
    --out "$OUT/trial-$t.json" --plot "$OUT/trial-$t.svg" ${KEEP_LOGS:+--keep-logs "$OUT/logs-$t"} \
    -- --shards "${SHARDS:-4}"
done
