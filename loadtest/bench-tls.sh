#!/usr/bin/env bash
# What TLS costs: 64 clients PUT 256-byte values for DURATION against three
# `ringstore node` processes with plain HTTP and TCP peers, then against
# three with HTTPS for clients and mutual TLS between peers (certificates
# from `ringstore certs`), then a read-mostly mix (workload b) both ways.
# Prints a table; JSON reports go to loadtest/out/.
#
# Usage: loadtest/bench-tls.sh [DURATION]   (default 20s)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-20s}"
OUT=loadtest/out
source loadtest/lib.sh
bench_setup tls

CERTS="$DATA/certs"
"$BIN/ringstore" certs ca --dir "$CERTS" >/dev/null
"$BIN/ringstore" certs node node --dir "$CERTS" --host 127.0.0.1 --host localhost >/dev/null
TLS_FLAGS=(--tls-cert "$CERTS/node.crt" --tls-key "$CERTS/node.key" --tls-ca "$CERTS/ca.crt")

run() { # run TAG WORKLOAD LABEL [FLAGS...]
  local tag="$1" workload="$2" label="$3"
  shift 3
  RS_TAG="$tag" start_ringstore3 "$@"
  "$BIN/ringstore-loadtest" --system ringstore --endpoints "$RS" ${RS_CA:+--ca "$RS_CA"} \
    --workload "$workload" --clients 64 --duration "$DURATION" --value-size 256 \
    --label "$label" --out "$OUT/tls-$tag.json"
  stop_ringstore3
}

run plain-w w "plain: PUT (w)"
RS_CA="$CERTS/ca.crt" run tls-w w "TLS + peer mTLS: PUT (w)" "${TLS_FLAGS[@]}"
run plain-b b "plain: 95% GET (b)"
RS_CA="$CERTS/ca.crt" run tls-b b "TLS + peer mTLS: 95% GET (b)" "${TLS_FLAGS[@]}"

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print()
print(f"{'run':<32} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>7} {'vs plain':>9}")
for w in ["w", "b"]:
    rows = [json.load(open(os.path.join(out, f"tls-{k}-{w}.json"))) for k in ["plain", "tls"]]
    base = sum(o["ops_per_sec"] for o in rows[0]["operations"].values())
    for r in rows:
        ops = r["operations"]
        total = sum(o["ops_per_sec"] for o in ops.values())
        main = max(ops.values(), key=lambda o: o["ops_per_sec"])
        print(f"{r['label']:<32} {total:>9.0f} {main['p50_ms']:>8.2f} {main['p99_ms']:>8.2f} "
              f"{main['p999_ms']:>9.2f} {sum(o['errors'] for o in ops.values()):>7} {total / base:>9.2f}")
PY
