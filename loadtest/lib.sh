# Shared by the benchmark scripts (source it after `cd` to the repo root and
# setting OUT): a release build, a temp data dir cleaned up on exit with
# every started process, and the three-member clusters they compare.

# bench_setup NAME: builds (unless SKIP_BUILD=1), sets BIN and DATA, arranges the cleanup.
bench_setup() {
  source scripts/env.sh
  mkdir -p "$OUT"
  # SKIP_BUILD=1: measure the binaries already built (a before/after pair).
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --bins >/dev/null
  BIN="$CARGO_TARGET_DIR/release"
  DATA="$(mktemp -d "${TMPDIR:-/tmp}/ringstore-$1.XXXXXX")"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$DATA"
}

# wait_ready URL [SECONDS]: until URL/readyz answers 200 (20 s by default);
# an https URL is checked against the CA in RS_CA.
wait_ready() {
  for _ in $(seq 1 $(( ${2:-20} * 10 ))); do
    curl -sf ${RS_CA:+--cacert "$RS_CA"} "$1/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not become ready"
  exit 1
}

# start_ringstore3 [FLAG...]: three `ringstore node` processes (HTTP 1818x,
# peers 1819x) with FLAGs, data under $DATA/ringstore[-$RS_TAG]-N (set
# RS_TAG for a fresh cluster in the same run); sets RS (their URLs,
# comma-separated) and RS_PIDS. With RS_CA set (and --tls-* among the
# FLAGs) the URLs are https.
start_ringstore3() {
  local ic="1=127.0.0.1:18191,2=127.0.0.1:18192,3=127.0.0.1:18193"
  local name="ringstore${RS_TAG:+-$RS_TAG}"
  RS=""
  RS_PIDS=()
  for i in 1 2 3; do
    "$BIN/ringstore" node --id $i --data-dir "$DATA/$name-$i" --http "127.0.0.1:1818$i" \
      --peer-addr "127.0.0.1:1819$i" --initial-cluster "$ic" --log warn "$@" >"$OUT/$name-$i.log" 2>&1 &
    PIDS+=($!)
    RS_PIDS+=($!)
    RS="${RS:+$RS,}http${RS_CA:+s}://127.0.0.1:1818$i"
  done
  for i in 1 2 3; do wait_ready "http${RS_CA:+s}://127.0.0.1:1818$i" "${READY_WAIT_S:-20}"; done
}

# stop_ringstore3: SIGTERM to the three nodes, and wait for them.
stop_ringstore3() {
  for p in "${RS_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${RS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# start_etcd3 TOKEN: a three-member etcd (client ports x2379); sets ETCD.
start_etcd3() {
  local cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$DATA/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
      --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$1" \
      --log-level warn >"$OUT/etcd-$i.log" 2>&1 &
    PIDS+=($!)
  done
  ETCD="http://127.0.0.1:12379,http://127.0.0.1:22379,http://127.0.0.1:32379"
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:12379/health | grep -q '"health":"true"' && return 0
    sleep 0.2
  done
  echo "etcd did not become healthy"
  exit 1
}
