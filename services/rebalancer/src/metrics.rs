//! The Rebalancer's Prometheus series. Every series exists from start, so
//! `rate()` and alerts see 0, not absence.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec, IntCounterVec, IntGaugeVec,
};

pub struct Metrics {
    pub moves: IntCounterVec,
    pub bytes_moved: IntCounterVec,
    pub move_seconds: HistogramVec,
    pub moves_in_progress: IntGaugeVec,
    pub active: IntGaugeVec,
    pub nodes: IntGaugeVec,
    pub rounds: IntCounterVec,
    pub splits: IntCounterVec,
    pub split_seconds: HistogramVec,
    pub split_fence_seconds: HistogramVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    moves: register_int_counter_vec!(
        "ringstore_rebalance_moves_total",
        "Moves carried out (kind=replica|leader, result=done|rolled_back|failed)",
        &["node", "kind", "result"]
    )
    .expect("registers once"),
    bytes_moved: register_int_counter_vec!(
        "ringstore_rebalance_bytes_moved_total",
        "Shard bytes copied to new replicas by finished moves",
        &["node"]
    )
    .expect("registers once"),
    move_seconds: register_histogram_vec!(
        "ringstore_rebalance_move_seconds",
        "Time from the start of a replica move to its end",
        &["node", "result"],
        vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0]
    )
    .expect("registers once"),
    moves_in_progress: register_int_gauge_vec!(
        "ringstore_rebalance_moves_in_progress",
        "Replica moves recorded in the cluster map (set by the active Rebalancer)",
        &["node"]
    )
    .expect("registers once"),
    active: register_int_gauge_vec!(
        "ringstore_rebalance_active",
        "1 on the node whose Rebalancer is active (next to the meta leader)",
        &["node"]
    )
    .expect("registers once"),
    nodes: register_int_gauge_vec!(
        "ringstore_cluster_nodes",
        "Nodes in the cluster map by state (set by the active Rebalancer)",
        &["node", "state"]
    )
    .expect("registers once"),
    rounds: register_int_counter_vec!(
        "ringstore_rebalance_rounds_total",
        "Rebalancer rounds (result=ok|failed)",
        &["node", "result"]
    )
    .expect("registers once"),
    splits: register_int_counter_vec!(
        "ringstore_rebalance_splits_total",
        "Splits recorded by this node's Rebalancer (reason=count|size|load)",
        &["node", "reason"]
    )
    .expect("registers once"),
    split_seconds: register_histogram_vec!(
        "ringstore_rebalance_split_seconds",
        "Time from recording a split to the map listing the new shard: the most a key it gives away waits",
        &["node"],
        vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("registers once"),
    split_fence_seconds: register_histogram_vec!(
        "ringstore_rebalance_split_fence_seconds",
        "From proposing a split to the map listing the new shard: an upper bound of how long its keys are refused",
        &["node"],
        vec![0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    )
    .expect("registers once"),
});

/// Creates every labelled series of `node` at 0.
pub fn init(node: u64) {
    let n = node.to_string();
    let m = &*METRICS;
    for kind in ["replica", "leader"] {
        for result in ["done", "rolled_back", "failed"] {
            m.moves.with_label_values(&[&n, kind, result]);
        }
    }
    m.bytes_moved.with_label_values(&[&n]);
    for reason in ["count", "size", "load"] {
        m.splits.with_label_values(&[&n, reason]);
    }
    m.split_seconds.with_label_values(&[&n]);
    m.split_fence_seconds.with_label_values(&[&n]);
    m.moves_in_progress.with_label_values(&[&n]);
    m.active.with_label_values(&[&n]);
    for state in ["joining", "up", "draining", "down", "removed"] {
        m.nodes.with_label_values(&[&n, state]);
    }
    for result in ["ok", "failed"] {
        m.rounds.with_label_values(&[&n, result]);
    }
}
