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
source scripts/env.sh
DURATION="${1:-10s}"
CLIENTS="${2:-16}"
OUT=loadtest/out/locks
mkdir -p "$OUT"
cargo build --release --workspace --bins >/dev/null
BIN="$CARGO_TARGET_DIR/release"
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ringstore-locks.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup EXIT

IC="1=127.0.0.1:18191,2=127.0.0.1:18192,3=127.0.0.1:18193"
RS=""
for i in 1 2 3; do
  "$BIN/ringstore" node --id $i --data-dir "$DATA/rs-$i" --http "127.0.0.1:1818$i" --peer-addr "127.0.0.1:1819$i" \
    --initial-cluster "$IC" --log warn >"$OUT/ringstore-$i.log" 2>&1 &
  PIDS+=($!)
  RS="${RS:+$RS,}http://127.0.0.1:1818$i"
done
CLUSTER="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$DATA/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
    --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token ringstore-locks \
    --log-level warn >"$OUT/etcd-$i.log" 2>&1 &
  PIDS+=($!)
done
ETCD="http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"
redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
PIDS+=($!)

for i in 1 2 3; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:1818$i/readyz" >/dev/null && break; sleep 0.1; done
done
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:12379/health | grep -q '"health":"true"' && break
  sleep 0.2
done
sleep 1

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
