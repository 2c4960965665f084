#!/usr/bin/env bash
# Watch fan-out on three `ringstore node` processes (16 shards): WATCHERS
# streams of one prefix (spread over the nodes) while writers PUT under it
# at RATE/s. Prints events/s delivered, ack-to-event latency p50/p99,
# missed or out-of-order events and memory per watcher; the JSON report
# goes to loadtest/out/watch/.
#
# Usage: loadtest/bench-watch.sh [WATCHERS, default 1000] [RATE, default 5000] [DURATION, default 20s]
set -euo pipefail
cd "$(dirname "$0")/.."
WATCHERS="${1:-1000}"
RATE="${2:-5000}"
DURATION="${3:-20s}"
OUT=loadtest/out/watch
source loadtest/lib.sh
bench_setup watch
# One node serves a third of the watchers; leave room.
start_ringstore3 --watchers-max $(( WATCHERS + 100 ))
pids=$(IFS=,; echo "${RS_PIDS[*]}")
"$BIN/ringstore-watch-fanout" --endpoints "$RS" --watchers "$WATCHERS" --rate "$RATE" --duration "$DURATION" \
  --pids "$pids" --out "$OUT/w$WATCHERS-r$RATE.json"
stop_ringstore3
