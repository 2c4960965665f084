#!/usr/bin/env bash
# Foundation benchmark: 64 clients PUT 256-byte values against `ringstore dev`
# for 30 s, then, on the same disk in the same run, raw RocksDB synced writes
# (the physical limit): one key per write from 1 and from 64 writers, and 64
# keys per write from 1 writer. Prints a table and writes JSON reports to
# loadtest/out/.
#
# Usage: loadtest/bench-foundation.sh [DURATION]   (default 30s)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-30s}"
OUT=loadtest/out
source loadtest/lib.sh
bench_setup bench
PORT=18080

"$BIN/ringstore" dev --data-dir "$DATA/cluster" --http "127.0.0.1:$PORT" --http-workers 2 --log warn \
  >"$OUT/ringstore-dev.log" 2>&1 &
PID=$!
PIDS+=($PID)
wait_ready "http://127.0.0.1:$PORT"

"$BIN/ringstore-loadtest" --system ringstore --endpoints "http://127.0.0.1:$PORT" \
  --clients 64 --duration "$DURATION" --value-size 256 --watch-pid $PID \
  --label "ringstore dev (3 replicas, fsync)" --out "$OUT/ringstore.json"
kill $PID; wait $PID 2>/dev/null || true

RAW_DURATION=10s
"$BIN/ringstore-loadtest" --system rocksdb --dir "$DATA/raw1" --clients 1 --batch 1 --duration $RAW_DURATION \
  --value-size 256 --label "raw RocksDB, 1 writer, 1 key/fsync" --out "$OUT/raw-1x1.json"
"$BIN/ringstore-loadtest" --system rocksdb --dir "$DATA/raw64" --clients 64 --batch 1 --duration $RAW_DURATION \
  --value-size 256 --label "raw RocksDB, 64 writers, 1 key/write (group commit)" --out "$OUT/raw-64x1.json"
"$BIN/ringstore-loadtest" --system rocksdb --dir "$DATA/rawb" --clients 1 --batch 64 --duration $RAW_DURATION \
  --value-size 256 --label "raw RocksDB, 1 writer, 64 keys/fsync" --out "$OUT/raw-1x64.json"

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = [(f, json.load(open(os.path.join(out, f)))) for f in
        ["ringstore.json", "raw-1x1.json", "raw-64x1.json", "raw-1x64.json"]]
rs = rows[0][1]["operations"]["put"]["ops_per_sec"]
print()
print(f"{'run':<52} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'ringstore/this':>15}")
for f, r in rows:
    p = r["operations"]["put"]
    print(f"{r['label']:<52} {p['ops_per_sec']:>10.0f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} {rs / p['ops_per_sec']:>15.2f}")
rss = rows[0][1].get("peak_rss_bytes")
if rss:
    print(f"ringstore dev peak RSS: {rss / 2**20:.1f} MiB (3 nodes in one process)")
PY
