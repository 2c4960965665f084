# The two commands of the README: `make run` and `make test`.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: run test deps build lint fmt bench bench-batch bench-watch bench-shed bench-tls bench-cluster bench-partition bench-rebalance bench-grow bench-containers bench-idle profile-shards chaos

# Builds the whole workspace so features unify as in `make test` (building a
# subset can re-run RocksDB's build script).
run: deps
	$(ENV) cargo build --release --workspace --bins && "$$CARGO_TARGET_DIR/release/ringstore" dev

test: deps
	$(ENV) cargo fmt --all -- --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings
	promtool check config deploy/prometheus/prometheus.yml
	scripts/check-manifests.sh
	python3 scripts/audit.py
	$(ENV) cargo test --workspace

deps:
	@scripts/install-deps.sh

build: deps
	$(ENV) cargo build --workspace --all-targets

fmt:
	cargo fmt --all

# The foundation benchmark: ringstore dev under 64 writers vs raw RocksDB.
bench: deps
	$(ENV) loadtest/bench-foundation.sh

# POST /v1/kv:batch of 100 puts against single PUTs, by 1 and 16 clients.
bench-batch: deps
	$(ENV) loadtest/bench-batch.sh

bench-watch: deps
	$(ENV) loadtest/bench-watch.sh

# One token floods, another reads: its p99 with and without --rate-limit-rps.
bench-shed: deps
	$(ENV) loadtest/bench-shed.sh

# Three nodes with plain HTTP and TCP peers, then with HTTPS and peer mTLS.
bench-tls: deps
	$(ENV) loadtest/bench-tls.sh

# Three `ringstore node` processes beside `ringstore dev`, and failover after kill -9.
bench-cluster: deps
	$(ENV) loadtest/bench-cluster.sh

# perf of 16 shards against 1 under writes: node CPU per operation by symbol.
profile-shards: deps
	$(ENV) loadtest/profile-shards.sh

# Availability while the busiest leader is cut off (iptables: root) or paused.
bench-partition: deps
	$(ENV) loadtest/bench-partition.sh

# Image size, pod start to ready, 3 -> 5 pods in Docker (BIG=1: with 1 GiB).
bench-containers: deps
	$(ENV) loadtest/bench-containers.sh

# 3 -> 4 nodes with 1 GiB under load: the Rebalancer's figures.
bench-rebalance: deps
	$(ENV) loadtest/bench-rebalance.sh

# 4 nodes x 4 shards + 4 shards with 1 GiB under load: splits' fences and moves.
bench-grow: deps
	$(ENV) loadtest/bench-grow.sh

# 16, 256 and 1,000 idle shards on three nodes: RSS and CPU per replica.
bench-idle: deps
	$(ENV) loadtest/bench-idle.sh

# The fault suite on a long schedule (root: iptables). A release ringstore
# with failpoints (for the latency and clock-skew nemeses), then
# `ringstore-chaos`; DURATION=2h, SEED=N and NODES=5 pass through. The
# release `ringstore` keeps its failpoint route until the next `make run`
# or release build rebuilds it without.
chaos: deps
	$(ENV) cargo build --release -p ringstore --features failpoints && cargo build --release -p ringstore-chaos && \
		"$$CARGO_TARGET_DIR/release/ringstore-chaos" --duration $${DURATION:-20m} --nodes $${NODES:-5} $${SEED:+--seed $$SEED}
