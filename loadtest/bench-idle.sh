#!/usr/bin/env bash
# Idle cost of shard replicas (issue 16's goal: 1,000 idle replicas on one
# node at <= 1 MiB RSS and <= 0.05% of a core each). Three `ringstore node`
# processes bootstrapped with N data shards each hold a replica of every
# shard; once ready and settled they get no requests, and each node's RSS
# and CPU are read over a window. Per-replica figures are marginal: the
# difference to the smallest N, over the replicas added.
#
# Usage: loadtest/bench-idle.sh [SHARD COUNTS, default "16 256 1000"] [WINDOW s, default 20]
#   HIBERNATE_AFTER_TICKS=0 turns hibernation off (for a before/after).
#   BEFORE=/dir/with/old/ringstore measures that build too.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS="${1:-16 256 1000}"
WINDOW="${2:-20}"
OUT=loadtest/out/idle
source loadtest/lib.sh
bench_setup idle
TICK_HZ=$(getconf CLK_TCK)
export READY_WAIT_S=300

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -sf "$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {print s + 0}'; }

: >"$OUT/idle.tsv"
sides="after"
[ -n "${BEFORE:-}" ] && sides="before after"
for side in $sides; do
  bin="$BIN"
  [ "$side" = before ] && bin="$BEFORE"
  for n in $COUNTS; do
    extra=()
    [ -n "${HIBERNATE_AFTER_TICKS:-}" ] && [ "$side" = after ] && extra=(--raft-hibernate-after-ticks "$HIBERNATE_AFTER_TICKS")
    t0=$(date +%s.%N)
    BIN="$bin" RS_TAG="$side-$n" start_ringstore3 --shards "$n" "${extra[@]}"
    ready_s=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    # Elections, the first map, leader balancing: let them settle.
    sleep 10
    declare -A t_before=()
    for p in "${RS_PIDS[@]}"; do t_before[$p]=$(cpu_ticks "$p"); done
    for s in $(seq 1 "$WINDOW"); do
      sleep 1
      printf '\r%s, %s shards: idle window %s/%s s' "$side" "$n" "$s" "$WINDOW" >&2
    done
    echo >&2
    i=0
    for p in "${RS_PIDS[@]}"; do
      i=$((i + 1))
      cpu=$(( $(cpu_ticks "$p") - ${t_before[$p]} ))
      sleeping=$(metric "http://127.0.0.1:1818$i" ringstore_raft_hibernating_replicas)
      echo -e "$side\t$n\t$i\t$(rss_kib "$p")\t$cpu\t$sleeping\t$ready_s" >>"$OUT/idle.tsv"
    done
    stop_ringstore3
  done
done

python3 - "$OUT/idle.tsv" "$TICK_HZ" "$WINDOW" <<'PY'
import sys, collections
path, hz, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = collections.defaultdict(list)
for line in open(path):
    side, n, node, rss, cpu, sleeping, ready = line.split("\t")
    rows[(side, int(n))].append((int(rss), int(cpu) / hz / window * 100, float(sleeping), float(ready)))
print(f"\nIdle cost, 3 x ringstore node, every node a replica of every shard (+ the meta shard), {window:.0f} s window")
print(f"{'build':>6} {'shards':>6} {'ready s':>8} {'RSS MiB/node':>13} {'CPU %core/node':>15} {'hibernating':>12} {'MiB/replica':>12} {'%core/replica':>14}")
for side in sorted({s for s, _ in rows}, key=lambda s: s != "before"):
    ns = sorted(n for s, n in rows if s == side)
    base = ns[0]
    b_rss = sum(r[0] for r in rows[(side, base)]) / 3 / 1024
    b_cpu = sum(r[1] for r in rows[(side, base)]) / 3
    for n in ns:
        r = rows[(side, n)]
        rss = sum(x[0] for x in r) / 3 / 1024
        cpu = sum(x[1] for x in r) / 3
        sleeping = sum(x[2] for x in r) / 3
        per_rss = (rss - b_rss) / (n - base) if n > base else float("nan")
        per_cpu = (cpu - b_cpu) / (n - base) if n > base else float("nan")
        print(f"{side:>6} {n:>6} {r[0][3]:>8.1f} {rss:>13.1f} {cpu:>15.2f} {sleeping:>12.0f} {per_rss:>12.3f} {per_cpu:>14.4f}")
print("per replica: the change from the smallest shard count, over the replicas added")
PY
