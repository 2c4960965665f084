#!/usr/bin/env bash
# Cluster benchmark (issue 3): in one run, on this machine,
#  1. 64 clients PUT 256-byte values for DURATION against `ringstore dev`
#     (3 replicas in one process, in-process transport);
#  2. the same against three `ringstore node` processes on the TCP peer
#     transport, clients spread over all three nodes (2/3 of the writes are
#     forwarded by a follower to the leader);
#  3. `ringstore-failover`: kill -9 of the leader, 10 trials, time to the
#     first acknowledged write, default Raft timing (100 ms tick, election
#     timeout 1-2 s).
# Prints a table; JSON reports go to loadtest/out/.
#
# Usage: loadtest/bench-cluster.sh [DURATION] [TRIALS]   (defaults 30s, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-30s}"
TRIALS="${2:-10}"
OUT=loadtest/out
source loadtest/lib.sh
bench_setup bench

# 1. ringstore dev
"$BIN/ringstore" dev --data-dir "$DATA/dev" --http 127.0.0.1:18080 --http-workers 2 --log warn \
  >"$OUT/cluster-dev.log" 2>&1 &
DEV=$!
PIDS+=("$DEV")
wait_ready http://127.0.0.1:18080
"$BIN/ringstore-loadtest" --system ringstore --endpoints http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:18082 \
  --clients 64 --duration "$DURATION" --value-size 256 --watch-pid "$DEV" \
  --label "ringstore dev (3 replicas, 1 process)" --out "$OUT/cluster-dev.json"
kill -TERM "$DEV"; wait "$DEV" 2>/dev/null || true

# 2. three processes
start_ringstore3
"$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" \
  --clients 64 --duration "$DURATION" --value-size 256 \
  --label "ringstore node x3 (3 processes, TCP)" --out "$OUT/cluster-procs.json"
stop_ringstore3

# 3. failover
"$BIN/ringstore-failover" --trials "$TRIALS" --out "$OUT/failover.json" -- --shards 1

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = [json.load(open(os.path.join(out, f))) for f in ["cluster-dev.json", "cluster-procs.json"]]
base = rows[0]["operations"]["put"]["ops_per_sec"]
print()
print(f"{'run':<42} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>7} {'vs dev':>7}")
for r in rows:
    p = r["operations"]["put"]
    print(f"{r['label']:<42} {p['ops_per_sec']:>9.0f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} "
          f"{p['p999_ms']:>9.2f} {p['errors']:>7} {p['ops_per_sec'] / base:>7.2f}")
f = json.load(open(os.path.join(out, "failover.json")))
print(f"failover (kill -9 leader -> first ack), {len(f['trials'])} trials: "
      f"min {f['min_ms']:.0f} ms, median {f['median_ms']:.0f} ms, max {f['max_ms']:.0f} ms")
PY
