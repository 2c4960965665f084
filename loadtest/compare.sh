#!/usr/bin/env bash
# ringstore beside etcd, same machine, same run, same load generator, each
# through its native protocol: a 3-member etcd (Debian's etcd-server) and a
# 3-node ringstore (three `ringstore node` processes on the TCP peer
# transport) on 127.0.0.1. Both fsync every commit; clients of both are
# spread over the three members.
# Runs workloads A, C and W (64 clients, uniform keys, 256 B values) against
# each, stops both, prints a side-by-side table with ratios and writes JSON
# reports and SVG plots to loadtest/out/compare/.
#
# Usage: loadtest/compare.sh [DURATION per workload, default 20s] [CLIENTS, default 64]
# RINGSTORE_FLAGS adds flags to every ringstore node (e.g. "--shards 1").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
DURATION="${1:-20s}"
CLIENTS="${2:-64}"
KEYS=10000
OUT=loadtest/out/compare
source loadtest/lib.sh
bench_setup compare
start_etcd3 ringstore-compare
# shellcheck disable=SC2086 # flags are words
start_ringstore3 ${RINGSTORE_FLAGS:-}

run() { # system endpoints workload preload
  "$BIN/ringstore-loadtest" --system "$1" --endpoints "$2" --workload "$3" --clients "$CLIENTS" \
    --duration "$DURATION" --keys $KEYS --preload "$4" --value-size 256 \
    --label "$1 workload $3" --out "$OUT/$1-$3.json"
}
for w in w a c; do
  pre=0; [ "$w" = w ] && pre=$KEYS
  run etcd "$ETCD" "$w" "$pre"
  run ringstore "$RS" "$w" "$pre"
done

python3 - "$OUT" "$DURATION" "$CLIENTS" <<'PY'
import json, os, sys
out, duration, clients = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"\nringstore vs etcd: {clients} clients, {duration} per workload, 10,000 keys, 256 B values, 3 members each on 127.0.0.1")
print(f"{'workload':<9}{'op':<5}{'etcd ops/s':>11}{'ringstore':>11}{'ratio':>7}{'etcd p50':>10}{'rs p50':>8}{'etcd p99':>10}{'rs p99':>8}")
for w in ["w", "a", "c"]:
    e = json.load(open(os.path.join(out, f"etcd-{w}.json")))["operations"]
    r = json.load(open(os.path.join(out, f"ringstore-{w}.json")))["operations"]
    for op in sorted(set(e) | set(r)):
        eo, ro = e.get(op), r.get(op)
        if not eo or not ro:
            continue
        ratio = ro["ops_per_sec"] / max(eo["ops_per_sec"], 1e-9)
        print(f"{w.upper():<9}{op:<5}{eo['ops_per_sec']:>11.0f}{ro['ops_per_sec']:>11.0f}{ratio:>7.2f}"
              f"{eo['p50_ms']:>10.2f}{ro['p50_ms']:>8.2f}{eo['p99_ms']:>10.2f}{ro['p99_ms']:>8.2f}")
        if eo["errors"] or ro["errors"]:
            print(f"  errors: etcd {eo['errors']}, ringstore {ro['errors']}")
PY
