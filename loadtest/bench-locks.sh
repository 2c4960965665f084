#!/usr/bin/env bash
# Lock benchmark (issue 5): acquire + release pairs, uncontended (each client
# its own lock) and contended (all clients one lock: each pair is a
# handoff), 16 clients, in one run on this machine against
#  - ringstore: three `ringstore node` processes (fsync, Raft, leases,
#    fencing tokens, FIFO waiting);
#  - etcd: three members (Debian's etcd-server), a lease per client and the
#    v3 Lock/Unlock RPCs;
#  - Redis: one redis-server, no persistence, SET NX PX + Lua
#    compare-and-delete, retried every 1 ms while taken.
# Prints a table with ratios; JSON reports go to loadtest/out/locks/.
#
# Usage: loadtest/bench-locks.sh [DURATION per run, default 10s] [CLIENTS, default 16]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
DURATION="${1:-10s}"
CLIENTS="${2:-16}"
OUT=loadtest/out/locks
source loadtest/lib.sh
bench_setup locks
start_ringstore3
start_etcd3 ringstore-locks
redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p 16379 ping >/dev/null 2>&1 && break; sleep 0.1; done

run() { # system endpoints mode
  "$BIN/ringstore-loadtest" --system "$1" --endpoints "$2" --workload locks --lock-mode "$3" \
    --clients "$CLIENTS" --duration "$DURATION" --label "$1 $3" --out "$OUT/$1-$3.json"
}
for mode in uncontended contended; do
  run ringstore "$RS" $mode
  run etcd "$ETCD" $mode
  run redis "redis://127.0.0.1:16379" $mode
done

python3 - "$OUT" "$DURATION" "$CLIENTS" <<'PY'
import json, os, sys
out, duration, clients = sys.argv[1:4]
print(f"\nlocks: acquire+release pairs, {clients} clients, {duration} per run, on 127.0.0.1")
print(f"{'mode':<12}{'system':<11}{'pairs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'ringstore/this':>16}")
for mode in ["uncontended", "contended"]:
    base = json.load(open(os.path.join(out, f"ringstore-{mode}.json")))["operations"]["lock"]["ops_per_sec"]
    for system in ["ringstore", "etcd", "redis"]:
        s = json.load(open(os.path.join(out, f"{system}-{mode}.json")))["operations"]["lock"]
        print(f"{mode:<12}{system:<11}{s['ops_per_sec']:>9.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}"
              f"{s['errors']:>8}{base / s['ops_per_sec']:>16.2f}")
PY
