#!/usr/bin/env bash
# POST /v1/kv:batch against single PUTs on three `ringstore node`
# processes (16 shards): the same keys/s question asked two ways, by one
# client and by 16. Each key of a batch counts as one write with the
# batch's latency. Prints keys/s and p50/p99 per run; JSON reports go to
# loadtest/out/batch/.
#
# Usage: loadtest/bench-batch.sh [DURATION, default 10s] [BATCH, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10s}"
BATCH="${2:-100}"
OUT=loadtest/out/batch
source loadtest/lib.sh
bench_setup batch
rm -f "$OUT"/*.json
start_ringstore3
for clients in 1 16; do
  for b in 1 "$BATCH"; do
    "$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload w --clients "$clients" \
      --batch "$b" --duration "$DURATION" --keys 100000 --value-size 256 \
      --label "$clients clients, batch $b" --out "$OUT/c$clients-b$b.json" >/dev/null
    echo "clients $clients batch $b done"
  done
done
stop_ringstore3

python3 - "$OUT" <<'PY'
import glob, json, os, sys
print(f"\n{'clients':>8}{'keys per request':>18}{'keys/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
rows = []
for f in glob.glob(os.path.join(sys.argv[1], "*.json")):
    c, b = os.path.basename(f)[:-5].split("-")
    o = json.load(open(f))["operations"]["put"]
    rows.append((int(c[1:]), int(b[1:]), o))
for c, b, o in sorted(rows):
    print(f"{c:>8}{b:>18}{o['ops_per_sec']:>10.0f}{o['p50_ms']:>9.2f}{o['p99_ms']:>9.2f}{o['errors']:>8}")
PY
