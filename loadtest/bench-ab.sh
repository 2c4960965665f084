#!/usr/bin/env bash
# Before/after of a change on a noisy machine: the release build of an
# older commit (BEFORE=/dir holding its `ringstore` binary) and this
# tree's, as three `ringstore node` processes each, run in alternation
# (before, after, after, before, ...) so drift in the machine's speed
# falls on both. Each trial starts a fresh cluster. Prints per-trial rows
# and the median ops/s and p99 of each build and workload; JSON reports go
# to loadtest/out/ab/.
#
# Usage: BEFORE=/tmp/before loadtest/bench-ab.sh [DURATION, default 10s] [TRIALS, default 3] [WORKLOADS, default "w a"]
# RINGSTORE_FLAGS adds flags to every node of both builds.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10s}"
TRIALS="${2:-3}"
WORKLOADS="${3:-w a}"
OUT=loadtest/out/ab
: "${BEFORE:?set BEFORE to a directory holding the ringstore binary of the older build}"
[ -x "$BEFORE/ringstore" ] || { echo "no ringstore binary in $BEFORE"; exit 1; }
source loadtest/lib.sh
bench_setup ab
AFTER="$BIN"
rm -f "$OUT"/*.json

trial() { # build-name bin-dir trial workload
  local pre=0
  [ "$4" = w ] && pre=10000
  BIN="$2" RS_TAG="$1-$3-$4" start_ringstore3 ${RINGSTORE_FLAGS:-}
  "$AFTER/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload "$4" --clients 64 \
    --duration "$DURATION" --keys 10000 --preload "$pre" --value-size 256 \
    --label "$1 trial $3 workload $4" --out "$OUT/$1-$3-$4.json" >/dev/null
  stop_ringstore3
}

for t in $(seq 1 "$TRIALS"); do
  for w in $WORKLOADS; do
    if [ $((t % 2)) = 1 ]; then order="before after"; else order="after before"; fi
    for b in $order; do
      if [ "$b" = before ]; then dir="$BEFORE"; else dir="$AFTER"; fi
      trial "$b" "$dir" "$t" "$w"
      echo "trial $t $w $b done"
    done
  done
done

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    build, trial, w = os.path.basename(f)[:-5].split("-")
    for op, o in json.load(open(f))["operations"].items():
        rows.setdefault((w, op, build), []).append((o["ops_per_sec"], o["p99_ms"], o["errors"]))
print(f"\n{'workload':<9}{'op':<5}{'before ops/s':>13}{'after':>9}{'ratio':>7}{'p99 before':>12}{'after':>8}   trials (ops/s)")
for (w, op) in sorted({(w, op) for (w, op, _) in rows}):
    b, a = rows.get((w, op, "before"), []), rows.get((w, op, "after"), [])
    if not b or not a:
        continue
    mb, ma = statistics.median(x[0] for x in b), statistics.median(x[0] for x in a)
    pb, pa = statistics.median(x[1] for x in b), statistics.median(x[1] for x in a)
    trials = " ".join(f"{x[0]:.0f}" for x in b) + " | " + " ".join(f"{x[0]:.0f}" for x in a)
    errs = sum(x[2] for x in b + a)
    print(f"{w.upper():<9}{op:<5}{mb:>13.0f}{ma:>9.0f}{ma / mb:>7.2f}{pb:>12.2f}{pa:>8.2f}   {trials}"
          + (f"  errors {errs}" if errs else ""))
PY
