#!/usr/bin/env python3
"""Writes dashboards/ringstore.json, the provisioning-ready Grafana dashboard.

Edit the PANELS table and re-run; the JSON is committed so Grafana needs no
build step. services/node/tests/dashboards.rs checks that every metric a
panel queries is exported by ringstore.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(expr, legend)]) — one row of the grid per 2 panels.
PANELS = [
    ("Requests per second by method", "reqps", [
        ('sum by (method) (rate(ringstore_http_requests_total[1m]))', "{{method}}")]),
    ("Errors per second by status", "reqps", [
        ('sum by (status) (rate(ringstore_http_requests_total{status=~"4..|5.."}[1m]))', "{{status}}")]),
    ("Latency p50 / p99 by method", "s", [
        ('histogram_quantile(0.50, sum by (le, method) (rate(ringstore_http_request_duration_seconds_bucket[1m])))', "p50 {{method}}"),
        ('histogram_quantile(0.99, sum by (le, method) (rate(ringstore_http_request_duration_seconds_bucket[1m])))', "p99 {{method}}")]),
    ("Leaders and replicas per node", "short", [
        ('sum by (node) (ringstore_raft_is_leader)', "leaders on node {{node}}"),
        ('count by (node) (ringstore_raft_term)', "replicas on node {{node}}")]),
    ("Apply lag (commit - applied)", "short", [
        ('max by (node, shard) (ringstore_raft_commit_index - ringstore_raft_applied_index)', "node {{node}} shard {{shard}}")]),
    ("Raft term by shard", "short", [
        ('max by (shard) (ringstore_raft_term)', "shard {{shard}}")]),
    ("Proposals per second by result", "ops", [
        ('sum by (result) (rate(ringstore_raft_proposals_total[1m]))', "{{result}}")]),
    ("Log entries per fsync (median)", "short", [
        ('histogram_quantile(0.5, sum by (le) (rate(ringstore_raft_ready_entries_bucket[1m])))', "entries per Ready")]),
    ("WAL fsyncs: Ready rounds per fsync and p99 fsync latency", "short", [
        ('histogram_quantile(0.5, sum by (le, node) (rate(ringstore_rocksdb_wal_sync_readies_bucket[1m])))', "rounds per fsync (median) node {{node}}"),
        ('sum by (node) (rate(ringstore_rocksdb_wal_sync_seconds_count[1m]))', "fsyncs/s node {{node}}"),
        ('histogram_quantile(0.99, sum by (le, node) (rate(ringstore_rocksdb_wal_sync_seconds_bucket[1m]))) * 1000', "p99 fsync ms node {{node}}")]),
    ("Cluster map: epoch per node and refreshes", "short", [
        ('max by (node) (ringstore_router_map_epoch)', "epoch node {{node}}"),
        ('sum by (result) (increase(ringstore_router_map_refreshes_total[5m]))', "refreshes {{result}} /5m"),
        ('sum by (node) (increase(ringstore_router_retries_total{reason="wrong_shard"}[5m]))', "WrongShard node {{node}} /5m")]),
    ("Storage-thread rounds: replicas per round, log reads from memory", "short", [
        ('histogram_quantile(0.5, sum by (le, node) (rate(ringstore_storage_round_replicas_bucket[1m])))', "replicas per round (median) node {{node}}"),
        ('sum by (node) (rate(ringstore_storage_round_replicas_count[1m]))', "rounds/s node {{node}}"),
        ('sum by (node) (rate(ringstore_raft_entry_cache_reads_total{result="hit"}[1m])) / clamp_min(sum by (node) (rate(ringstore_raft_entry_cache_reads_total[1m])), 1e-9)', "log reads from memory, share node {{node}}")]),
    ("RocksDB write latency p99", "s", [
        ('histogram_quantile(0.99, sum by (le, sync) (rate(ringstore_rocksdb_write_seconds_bucket[1m])))', "sync={{sync}}")]),
    ("RocksDB bytes written / SST size", "bytes", [
        ('sum by (node) (rate(ringstore_rocksdb_write_bytes_total[1m]))', "written/s node {{node}}"),
        ('max by (node) (ringstore_rocksdb_sst_bytes)', "SST node {{node}}"),
        ('max by (node) (ringstore_rocksdb_pending_compaction_bytes)', "pending compaction node {{node}}")]),
    ("Peer traffic: Raft messages", "short", [
        ('sum by (node) (rate(ringstore_raft_messages_sent_total[1m]))', "sent/s node {{node}}"),
        ('sum by (reason) (rate(ringstore_raft_messages_dropped_total[1m]))', "dropped/s {{reason}}")]),
    ("Peer transport: bytes per second", "Bps", [
        ('sum by (node, peer) (rate(ringstore_peer_sent_bytes_total[1m]))', "sent {{node}} -> {{peer}}"),
        ('sum by (node) (rate(ringstore_peer_received_bytes_total[1m]))', "received node {{node}}")]),
    ("Peer transport: queues, drops, reconnects", "short", [
        ('max by (node, peer) (ringstore_peer_queue_depth)', "queue {{node}} -> {{peer}}"),
        ('sum by (reason) (rate(ringstore_peer_dropped_total[1m]))', "dropped/s {{reason}}"),
        ('sum by (node, peer) (increase(ringstore_peer_connects_total{result!="ok"}[5m]))', "failed connects {{node}} -> {{peer}} /5m"),
        ('sum by (reason) (increase(ringstore_peer_refused_total[5m]))', "refused {{reason}} /5m"),
        ('min by (node, peer) (ringstore_peer_connected)', "connected {{node}} -> {{peer}}")]),
    ("Peer links under faults: silent peers, ping RTT p99, relays, fast 503s", "short", [
        ('sum by (node, peer) (increase(ringstore_peer_link_silent_total[5m]))', "silent {{node}} -> {{peer}} /5m"),
        ('histogram_quantile(0.99, sum by (le, node, peer) (rate(ringstore_peer_ping_rtt_seconds_bucket[1m])))', "ping p99 s {{node}} -> {{peer}}"),
        ('sum by (node) (rate(ringstore_peer_relayed_requests_total[1m]))', "relayed/s node {{node}}"),
        ('sum by (node) (rate(ringstore_router_leaderless_fast_fails_total[1m]))', "leaderless 503/s node {{node}}")]),
    ("Fenced writes refused: unknown tokens", "short", [
        ('sum (increase(ringstore_fencing_unknown_tokens_total[5m]))', "unknown_token /5m")]),
    ("Forwarded requests and snapshot chunks", "ops", [
        ('sum by (node) (rate(ringstore_peer_forwarded_requests_total[1m]))', "forwarded/s node {{node}}"),
        ('sum by (direction) (rate(ringstore_peer_snapshot_chunks_total[1m]))', "snapshot chunks/s {{direction}}")]),
    ("Router retries, deduplicated copies, snapshots, compactions", "short", [
        ('sum by (reason) (rate(ringstore_router_retries_total[1m]))', "retry {{reason}}"),
        ('sum by (kind) (increase(ringstore_raft_snapshots_total[5m]))', "snapshots {{kind}} /5m"),
        ('sum (increase(ringstore_raft_log_compactions_total[5m]))', "log compactions /5m"),
        # Every replica applies (and counts) each copy: the leader's count is the shard's.
        ('sum by (attempt) (increase(ringstore_requests_deduplicated_total[5m]) * on (node, shard) group_left ringstore_raft_is_leader)',
         "deduplicated {{attempt}} /5m")]),
    ("Hibernation: sleeping replicas and wakes", "short", [
        ('max by (node) (ringstore_raft_hibernating_replicas)', "sleeping node {{node}}"),
        ('sum by (reason) (increase(ringstore_raft_hibernation_wakes_total[5m]))', "wakes {{reason}} /5m")]),
    ("Watch feeds: shards followed, polls, stream reads by source", "short", [
        ('sum by (node) (ringstore_watch_feeds)', "feeds node {{node}}"),
        ('sum by (result) (rate(ringstore_watch_feed_polls_total[1m]))', "feed polls/s {{result}}"),
        ('sum by (source) (rate(ringstore_watch_stream_reads_total[1m]))', "stream reads/s {{source}}")]),
    ("Transactions and prefix deletes", "short", [
        ('sum by (result) (rate(ringstore_txns_total[1m]))', "txn/s {{result}}"),
        ('sum(rate(ringstore_kv_prefix_deleted_keys_total[1m]))', "prefix-deleted keys/s")]),
    ("Watch streams: open, events sent, ended", "short", [
        ('sum by (node) (ringstore_watchers)', "streams node {{node}}"),
        ('sum by (kind) (rate(ringstore_watch_events_sent_total[1m]))', "sent/s {{kind}}"),
        ('sum by (reason) (increase(ringstore_watch_ends_total[5m]))', "ended {{reason}} /5m")]),
    ("Watch polls at the leaders and their event logs", "short", [
        ('sum by (node) (ringstore_watch_event_pollers)', "polls held node {{node}}"),
        ('sum by (result) (rate(ringstore_watch_event_polls_total[1m]))', "answered/s {{result}}"),
        ('max by (node) (ringstore_watch_event_log_bytes)', "largest log bytes node {{node}}")]),
    ("Pending requests per replica", "short", [
        ('max by (node, shard) (ringstore_raft_pending_requests)', "node {{node}} shard {{shard}}")]),
    ("Locks held and waiters", "short", [
        ('sum by (shard) (ringstore_locks_held * on (node, shard) group_left ringstore_raft_is_leader)', "held shard {{shard}}"),
        ('sum by (shard) (ringstore_lock_waiters)', "waiters shard {{shard}}")]),
    ("Lock events per second", "ops", [
        ('sum by (event) (rate(ringstore_lock_events_total[1m]))', "{{event}}")]),
    ("TTL expirations per second", "ops", [
        ('sum (rate(ringstore_ttl_expired_keys_total[1m]))', "expired keys")]),
    ("Rebalancer: nodes by state and moves in progress", "short", [
        ('max by (state) (ringstore_cluster_nodes * on (node) group_left ringstore_rebalance_active)', "nodes {{state}}"),
        ('max (ringstore_rebalance_moves_in_progress * on (node) group_left ringstore_rebalance_active)', "moves in progress"),
        ('max by (node) (ringstore_rebalance_active)', "active on node {{node}}")]),
    ("Rebalancer: moves by kind and result, bytes moved", "short", [
        ('sum by (kind, result) (increase(ringstore_rebalance_moves_total[5m]))', "{{kind}} {{result}} /5m"),
        ('sum (rate(ringstore_rebalance_bytes_moved_total[1m]))', "bytes moved/s"),
        ('sum (increase(ringstore_raft_conf_changes_total[5m]))', "membership changes applied /5m"),
        ('sum by (node) (increase(ringstore_replicas_destroyed_total[5m]))', "replicas deleted node {{node}} /5m")]),
    ("Rebalancer: replica move duration p50 / p99", "s", [
        ('histogram_quantile(0.50, sum by (le) (rate(ringstore_rebalance_move_seconds_bucket{result="done"}[10m])))', "p50"),
        ('histogram_quantile(0.99, sum by (le) (rate(ringstore_rebalance_move_seconds_bucket{result="done"}[10m])))', "p99")]),
    ("Splits by reason, and shards", "short", [
        ('sum by (reason) (increase(ringstore_rebalance_splits_total[10m]))', "splits {{reason}} /10m"),
        ('count (max by (shard) (ringstore_raft_is_leader == 1))', "shards led"),
        ('sum (ringstore_shard_hot_key)', "shards with a hot key")]),
    ("Split fence (keys refused), split apply and key count time p99", "s", [
        ('histogram_quantile(0.99, sum by (le) (rate(ringstore_rebalance_split_fence_seconds_bucket[10m])))', "fence p99 (upper bound)"),
        ('histogram_quantile(0.99, sum by (le) (rate(ringstore_shard_split_apply_seconds_bucket[10m])))', "apply p99"),
        ('histogram_quantile(0.99, sum by (le) (rate(ringstore_shard_stats_count_seconds_bucket[10m])))', "key count p99 (off the storage thread)")]),
    ("Requests per second at each shard's leader", "ops", [
        ('max by (shard) (ringstore_shard_requests_per_second)', "shard {{shard}}")]),
    ("Security: refused requests and peers, TLS", "short", [
        ('sum by (result) (rate(ringstore_auth_requests_total{result=~"missing|invalid|forbidden"}[1m]))', "auth {{result}}/s"),
        ('sum by (by) (rate(ringstore_requests_rate_limited_total[1m]))', "rate limited by {{by}}/s"),
        ('sum by (node) (increase(ringstore_peer_refused_total{reason="tls"}[5m]))', "peers refused by TLS, node {{node}} /5m"),
        ('sum by (result) (increase(ringstore_tls_reloads_total[1h]))', "TLS reloads {{result}} /1h"),
        ('min(ringstore_tls_enabled)', "TLS on every node (1)")]),
]


def panel(i, title, unit, targets):
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(ord("A") + j)}
            for j, (e, l) in enumerate(targets)
        ],
    }


dashboard = {
    "uid": "ringstore-overview",
    "title": "ringstore overview",
    "tags": ["ringstore"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-30m", "to": "now"},
    "templating": {"list": [{
        "name": "datasource", "type": "datasource", "query": "prometheus",
        "label": "Prometheus", "current": {},
    }]},
    "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
}

here = os.path.dirname(os.path.abspath(__file__))
# The same dashboard for Grafana provisioning and, as a ConfigMap, for
# Kubernetes (kustomize reads files only under its own folder).
for out in [os.path.join(here, "dashboards", "ringstore.json"),
            os.path.join(here, "..", "k8s", "base", "grafana-dashboard.json")]:
    with open(out, "w") as f:
        json.dump(dashboard, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.normpath(out)}: {len(PANELS)} panels")
