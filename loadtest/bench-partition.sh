#!/usr/bin/env bash
# Availability under faults (issue 17), in one run on this machine:
#  1. `ringstore-partition`: a fixed-rate YCSB-A load over three `ringstore
#     node` processes x 16 shards while the busiest leader is cut off from
#     its peers (iptables; needs root) and then paused (SIGSTOP), TRIALS
#     times; longest gap, the majority's rate and failures, how fast the
#     faulted node fails, with SVG timelines;
#  2. with BEFORE=/path/to/old/bin (a release build of an older commit),
#     the cost on the happy path: YCSB-W and YCSB-A, 64 clients, three
#     node processes x 16 shards, old and new builds alternately, ROUNDS
#     times each.
# JSON reports and plots go to loadtest/out/partition/.
#
# Usage: [TRIALS=3] [ROUNDS=2] [BEFORE=dir] loadtest/bench-partition.sh [DURATION per A/B run, default 15s]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-15s}"
OUT=loadtest/out/partition
source loadtest/lib.sh
bench_setup partition

for t in $(seq 1 "${TRIALS:-3}"); do
  "$BIN/ringstore-partition" --fault both --rate 600 --bin "$BIN/ringstore" \
    --out "$OUT/trial-$t.json" --plot "$OUT/trial-$t.svg"
done

if [ -n "${BEFORE:-}" ]; then
  NEW="$BIN"
  for r in $(seq 1 "${ROUNDS:-2}"); do
    for side in before after; do
      BIN="$NEW"; [ $side = before ] && BIN="$BEFORE"
      for w in w a; do
        RS_TAG="$side-$r-$w" start_ringstore3 --shards 16
        "$NEW/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload $w --dist zipfian \
          --keys 10000 --preload 10000 --clients 64 --duration "$DURATION" \
          --label "$side, round $r, YCSB-$w" --out "$OUT/ab-$side-$r-$w.json" >/dev/null
        stop_ringstore3
      done
    done
  done
  BIN="$NEW"
  python3 - "$OUT" "${ROUNDS:-2}" <<'PY'
import json, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("\nhappy path, 3 x ringstore node x 16 shards, 64 clients, zipfian over 10,000 keys (ops/s; p99 ms of PUT)")
for w in ["w", "a"]:
    for side in ["before", "after"]:
        rs = [json.load(open(os.path.join(out, f"ab-{side}-{r}-{w}.json")))["operations"] for r in range(1, rounds + 1)]
        tot = [sum(o["ops_per_sec"] for o in r.values()) for r in rs]
        p99 = [r["put"]["p99_ms"] for r in rs]
        print(f"YCSB-{w.upper()} {side:>6}: " + ", ".join(f"{t:.0f}" for t in tot) + f" (mean {sum(tot) / len(tot):.0f});"
              " PUT p99 " + ", ".join(f"{p:.1f}" for p in p99))
PY
fi
