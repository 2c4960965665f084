#!/usr/bin/env bash
# Where 16 shards cost more than 1: three `ringstore node` processes under
# workload W (64 clients), once with the default 16 shards and once with
# --shards 1; `perf record` samples all three nodes for 6 s of each run.
# Prints each run's node CPU per operation and the symbols whose CPU per
# operation grew the most from 1 shard to 16. perf.data files and reports
# go to loadtest/out/profile/.
#
# Usage: loadtest/profile-shards.sh [TOP, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "needs perf (linux-perf)"; exit 1; }
TOP="${1:-30}"
OUT=loadtest/out/profile
source loadtest/lib.sh
bench_setup profile

profile() { # name [FLAG...]
  local name=$1
  shift
  RS_TAG="$name" start_ringstore3 "$@"
  "$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload w --clients 64 --duration 3s \
    --keys 10000 --preload 10000 --value-size 256 --label warm-up --out "$OUT/warm-up.tmp" >/dev/null
  "$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload w --clients 64 --duration 8s \
    --keys 10000 --preload 0 --value-size 256 --label "$name" --out "$OUT/$name.json" >/dev/null &
  local lt=$!
  sleep 1
  perf record -F 999 -o "$OUT/$name.perf.data" -p "$(IFS=,; echo "${RS_PIDS[*]}")" -- sleep 6 >/dev/null 2>&1
  wait "$lt"
  stop_ringstore3
  perf report -i "$OUT/$name.perf.data" --no-children --sort sym -g none --stdio -F sample,sym \
    >"$OUT/$name.report.txt" 2>/dev/null
}
profile shards16
profile shards1 --shards 1

python3 - "$OUT" "$TOP" <<'PY'
import json, os, re, sys
out, top = sys.argv[1], int(sys.argv[2])
def load(name):
    ops = json.load(open(os.path.join(out, f"{name}.json")))["operations"]["put"]["ops_per_sec"]
    per_op = 1e6 / 999 / 6 / ops  # one sample at 999 Hz over 6 s, in us per operation
    syms = {}
    for line in open(os.path.join(out, f"{name}.report.txt")):
        m = re.match(r"\s+(\d+)\s+\[.\]\s+(.*)", line)
        if m:
            syms[m.group(2).strip()[:100]] = int(m.group(1)) * per_op
    return ops, syms
o16, a = load("shards16")
o1, b = load("shards1")
print(f"\nworkload W, 64 clients: 16 shards {o16:.0f} ops/s, node CPU {sum(a.values()):.0f} us/op; "
      f"1 shard {o1:.0f} ops/s, {sum(b.values()):.0f} us/op")
print(f"{'16 shards':>10}{'1 shard':>9}{'diff':>8}  us/op, largest increases")
for k in sorted(set(a) | set(b), key=lambda k: b.get(k, 0) - a.get(k, 0))[:top]:
    print(f"{a.get(k, 0):>10.2f}{b.get(k, 0):>9.2f}{a.get(k, 0) - b.get(k, 0):>+8.2f}  {k}")
PY
