#!/usr/bin/env bash
# Load shedding: one token floods node 1 with GETs (wrk, 64 connections,
# as fast as they go) while another token reads at a steady pace within
# its limit (4 connections, one request per 20 ms each: about 200/s).
# Prints the steady token's p50/p99 alone, beside the flood with
# --rate-limit-rps, and beside the flood without a limit; the flood's
# requests/s and 429s.
#
# Usage: loadtest/bench-shed.sh [SECONDS, default 10] [RPS per token, default 300]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN="${1:-10}"
RPS="${2:-300}"
OUT=loadtest/out/shed
source loadtest/lib.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bench_setup shed
TOKENS="$DATA/tokens.toml"
FLOOD=$("$BIN/ringstore" token new --name flood --scopes read 2>&1 >>"$TOKENS" | tail -1)
STEADY=$("$BIN/ringstore" token new --name steady --scopes read,write 2>&1 >>"$TOKENS" | tail -1)
URL=http://127.0.0.1:18181/v1/kv/shed/k

# A pace for the steady reader: each connection waits 20 ms between requests.
PACE="$DATA/pace.lua"
echo 'function delay() return 20 end' >"$PACE"
# wrk_p NAME TOKEN CONNS SECONDS [SCRIPT]: runs wrk, keeps its report in $OUT/NAME.txt.
wrk_p() {
  wrk -t1 -c"$3" -d"$4s" --latency ${5:+-s "$5"} -H "Authorization: Bearer $2" "$URL" >"$OUT/$1.txt"
}
# pct FILE P: the latency percentile line of a wrk report, in ms.
pct() {
  awk -v p="$2%" '$1 == p { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 } printf "%.2f", v }' "$1"
}
rps() { awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$1"; }
non2xx() { awk '/Non-2xx/ { print $5 }' "$1" | grep . || echo 0; }

run() { # run TAG FLAGS...: a fresh cluster, the steady reader alone, then beside the flood
  local tag=$1
  shift
  RS_TAG=$tag start_ringstore3 --auth-tokens "$TOKENS" "$@"
  curl -sf -X PUT -H "Authorization: Bearer $STEADY" "$URL" -d value >/dev/null
  wrk_p "$tag-alone" "$STEADY" 4 "$SECONDS_RUN" "$PACE"
  # The flood starts a second before the measured reader and ends after it.
  wrk_p "$tag-flood" "$FLOOD" 64 $((SECONDS_RUN + 2)) &
  local flood=$!
  sleep 1
  wrk_p "$tag-beside" "$STEADY" 4 "$SECONDS_RUN" "$PACE"
  wait "$flood"
  stop_ringstore3
}

run limited --rate-limit-rps "$RPS" --rate-limit-burst "$RPS"
run unlimited

echo
printf '%-30s %10s %10s %12s %12s\n' "" "p50 ms" "p99 ms" "requests/s" "non-2xx"
for f in limited-alone limited-beside limited-flood unlimited-alone unlimited-beside unlimited-flood; do
  printf '%-30s %10s %10s %12s %12s\n' "$f" "$(pct "$OUT/$f.txt" 50)" "$(pct "$OUT/$f.txt" 99)" \
    "$(rps "$OUT/$f.txt")" "$(non2xx "$OUT/$f.txt")"
done
echo
echo "steady token's p99 beside the flood / alone: limited $(awk -v a="$(pct "$OUT/limited-beside.txt" 99)" -v b="$(pct "$OUT/limited-alone.txt" 99)" 'BEGIN { printf "%.2fx", a / b }'), unlimited $(awk -v a="$(pct "$OUT/unlimited-beside.txt" 99)" -v b="$(pct "$OUT/unlimited-alone.txt" 99)" 'BEGIN { printf "%.2fx", a / b }')"
echo "(wrk reports in $OUT/)"
