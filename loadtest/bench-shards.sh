#!/usr/bin/env bash
# Sharding benchmark (issue 4), in one run on this machine:
#  1. three `ringstore node` processes bootstrapped with 1, 4 and 16 data
#     shards: 64 clients, YCSB-A (50% GET / 50% PUT of 256 B), zipfian over
#     10,000 preloaded keys, clients spread over the three nodes;
#  2. memory per shard replica: each node's idle RSS after start with 1, 16
#     and 64 shards (every node holds a replica of every shard);
#  3. with BEFORE=/path/to/old/bin (a release build of an older commit),
#     the same workload on `ringstore dev --shards 16` from both builds,
#     for a before/after of a change.
# Prints tables; JSON reports go to loadtest/out/shards/.
#
# Usage: loadtest/bench-shards.sh [DURATION per run, default 20s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"
OUT=loadtest/out/shards
source loadtest/lib.sh
bench_setup shards

# start_nodes N: the three node processes of lib.sh with N shards.
start_nodes() { RS_TAG="s$1" start_ringstore3 --shards "$1"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# CPU ticks (user + system) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# 1. Throughput and p99 by shard count.
for n in 1 4 16; do
  start_nodes $n
  "$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" \
    --workload a --dist zipfian --keys 10000 --preload 10000 --clients 64 --duration "$DURATION" \
    --watch-pid "${RS_PIDS[0]}" --label "3 x ringstore node, $n shard(s)" --out "$OUT/shards-$n.json"
  stop_ringstore3
done

# 2. Idle RSS and idle CPU (ticks, heartbeats) per node by shard count.
: >"$OUT/rss.tsv"
TICK_HZ=$(getconf CLK_TCK)
for n in 1 16 64; do
  start_nodes $n
  sleep 3
  declare -A before_ticks=()
  for p in "${RS_PIDS[@]}"; do before_ticks[$p]=$(cpu_ticks "$p"); done
  sleep 10
  for p in "${RS_PIDS[@]}"; do
    cpu=$(( $(cpu_ticks "$p") - ${before_ticks[$p]} ))
    echo -e "$n\t$(rss_kib "$p")\t$(python3 -c "print(f'{$cpu / $TICK_HZ / 10 * 100:.1f}')")" >>"$OUT/rss.tsv"
  done
  stop_ringstore3
done

# 3. Before/after on ringstore dev, 16 shards.
if [ -n "${BEFORE:-}" ]; then
  for side in before after; do
    bin="$BIN"; [ $side = before ] && bin="$BEFORE"
    "$bin/ringstore" dev --data-dir "$DATA/dev-$side" --http 127.0.0.1:18080 --http-workers 2 --shards 16 \
      --log warn >"$OUT/dev-$side.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    wait_ready http://127.0.0.1:18080
    "$BIN/ringstore-loadtest" --system ringstore \
      --endpoints http://127.0.0.1:18080,http://127.0.0.1:18081,http://127.0.0.1:18082 \
      --workload a --dist zipfian --keys 10000 --preload 10000 --clients 64 --duration "$DURATION" \
      --watch-pid $pid --label "ringstore dev, 16 shards ($side)" --out "$OUT/dev-$side.json"
    kill -TERM $pid; wait $pid 2>/dev/null || true
  done
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"\n3 x ringstore node, 64 clients, YCSB-A zipfian over 10,000 keys, 256 B values")
print(f"{'shards':>6} {'GET/s':>8} {'PUT/s':>8} {'total/s':>8} {'GET p99':>8} {'PUT p99':>8} {'errors':>7} {'node-1 peak RSS MiB':>20}")
for n in [1, 4, 16]:
    r = json.load(open(os.path.join(out, f"shards-{n}.json")))
    g, p = r["operations"]["get"], r["operations"]["put"]
    rss = r.get("peak_rss_bytes", 0) / 2**20
    print(f"{n:>6} {g['ops_per_sec']:>8.0f} {p['ops_per_sec']:>8.0f} {g['ops_per_sec'] + p['ops_per_sec']:>8.0f} "
          f"{g['p99_ms']:>8.2f} {p['p99_ms']:>8.2f} {g['errors'] + p['errors']:>7} {rss:>20.1f}")
rows = [l.split("\t") for l in open(os.path.join(out, "rss.tsv")).read().split("\n") if l]
by, cpu = {}, {}
for n, kib, pct in rows:
    by.setdefault(int(n), []).append(int(kib) / 1024)
    cpu.setdefault(int(n), []).append(float(pct))
print("\nidle nodes, every node holding a replica of every shard (+ the meta shard on 3 nodes):")
for n in sorted(by):
    print(f"{n:>6} shards: RSS MiB " + ", ".join(f"{x:.1f}" for x in by[n]) + f" (mean {sum(by[n]) / len(by[n]):.1f});"
          f" idle CPU % of a core " + ", ".join(f"{x:.1f}" for x in cpu[n]))
lo, hi = min(by), max(by)
per = (sum(by[hi]) / len(by[hi]) - sum(by[lo]) / len(by[lo])) / (hi - lo)
print(f"RSS growth per added shard replica ({lo} -> {hi} shards): {per:.2f} MiB")
if os.path.exists(os.path.join(out, "dev-before.json")):
    print("\nringstore dev, 16 shards, same workload: before / after")
    for side in ["before", "after"]:
        r = json.load(open(os.path.join(out, f"dev-{side}.json")))
        g, p = r["operations"]["get"], r["operations"]["put"]
        print(f"{side:>7}: GET {g['ops_per_sec']:>7.0f}/s PUT {p['ops_per_sec']:>7.0f}/s  "
              f"GET p99 {g['p99_ms']:.2f} ms  PUT p99 {p['p99_ms']:.2f} ms")
PY
