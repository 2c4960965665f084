#!/usr/bin/env bash
# Sharding benchmark (issue 4): `ringstore dev` (3 nodes, one process) with
# 1, 4 and 16 data shards, in one run: 64 clients, YCSB-A (50% GET / 50%
# PUT of 256 B), zipfian keys over 10,000 preloaded keys. Reports ops/s, p99
# and the process's peak RSS (for memory per shard replica).
#
# Usage: loadtest/bench-shards.sh [DURATION per run, default 20s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"
OUT=loadtest/out/shards
source loadtest/lib.sh
bench_setup shards
for n in 1 4 16; do
  "$BIN/ringstore" dev --data-dir "$DATA/s$n" --http 127.0.0.1:18080 --http-workers 2 --shards $n --log warn \
    >"$OUT/dev-$n.log" 2>&1 &
  PID=$!
  PIDS+=($PID)
  wait_ready http://127.0.0.1:18080
  "$BIN/ringstore-loadtest" --system ringstore \
    --endpoints http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:18082 \
    --workload a --dist zipfian --keys 10000 --preload 10000 --clients 64 --duration "$DURATION" \
    --watch-pid $PID --label "ringstore dev, $n shard(s)" --out "$OUT/shards-$n.json"
  kill -TERM $PID; wait $PID 2>/dev/null || true
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"\n{'shards':>6} {'GET/s':>8} {'PUT/s':>8} {'GET p99':>8} {'PUT p99':>8} {'peak RSS MiB':>13}")
base = None
for n in [1, 4, 16]:
    r = json.load(open(os.path.join(out, f"shards-{n}.json")))
    g, p = r["operations"]["get"], r["operations"]["put"]
    rss = r.get("peak_rss_bytes", 0) / 2**20
    base = base or rss
    print(f"{n:>6} {g['ops_per_sec']:>8.0f} {p['ops_per_sec']:>8.0f} {g['p99_ms']:>8.2f} {p['p99_ms']:>8.2f} {rss:>13.1f}")
r1 = json.load(open(os.path.join(out, "shards-1.json"))).get("peak_rss_bytes", 0)
r16 = json.load(open(os.path.join(out, "shards-16.json"))).get("peak_rss_bytes", 0)
print(f"RSS growth per added shard replica (1 -> 16 shards, 45 more replicas): {(r16 - r1) / 45 / 2**20:.2f} MiB")
PY
