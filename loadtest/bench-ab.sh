#!/usr/bin/env bash
# Before/after of a change on a noisy machine: the release build of an
# older commit (BEFORE=/dir holding its `ringstore` binary) and this
# tree's, as three `ringstore node` processes each, run in alternation
# (before, after, after, before, ...) so drift in the machine's speed
# falls on both. Each trial starts a fresh cluster. Prints per-trial rows
# and the median ops/s, p99 and node CPU per operation (user + system time
# of the three nodes during the timed run, from /proc, over its operations:
# steadier than ops/s when the machine's speed drifts) of each build and
# workload; JSON reports go to loadtest/out/ab/. Each trial warms up for
# 2 s (with the preload) before its timed run.
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
rm -f "$OUT"/*.json "$OUT"/*.cpu

# cpu_ticks PID...: user + system clock ticks the processes used so far.
cpu_ticks() {
  local s=0
  for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$s"
}

trial() { # build-name bin-dir trial workload
  local pre=0 c0 c1
  [ "$4" = w ] && pre=10000
  BIN="$2" RS_TAG="$1-$3-$4" start_ringstore3 ${RINGSTORE_FLAGS:-}
  "$AFTER/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload "$4" --clients 64 \
    --duration 2s --keys 10000 --preload "$pre" --value-size 256 --label warm-up --out "$OUT/warm-up.tmp" >/dev/null
  c0=$(cpu_ticks "${RS_PIDS[@]}")
  "$AFTER/ringstore-loadtest" --system ringstore --endpoints "$RS" --workload "$4" --clients 64 \
    --duration "$DURATION" --keys 10000 --preload 0 --value-size 256 \
    --label "$1 trial $3 workload $4" --out "$OUT/$1-$3-$4.json" >/dev/null
  c1=$(cpu_ticks "${RS_PIDS[@]}")
  echo "$((c1 - c0)) $(getconf CLK_TCK)" >"$OUT/$1-$3-$4.cpu"
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
rows, cpu = {}, {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    build, trial, w = os.path.basename(f)[:-5].split("-")
    ops = json.load(open(f))["operations"]
    for op, o in ops.items():
        rows.setdefault((w, op, build), []).append((o["ops_per_sec"], o["p99_ms"], o["errors"]))
    ticks, hz = map(int, open(f[:-5] + ".cpu").read().split())
    done = sum(o["count"] for o in ops.values())
    if done:
        cpu.setdefault((w, build), []).append(ticks / hz * 1e6 / done)
for (w, build), v in sorted(cpu.items()):
    print(f"{w.upper()} {build}: node CPU per operation {statistics.median(v):.0f} us (trials {' '.join(f'{x:.0f}' for x in v)})")
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
