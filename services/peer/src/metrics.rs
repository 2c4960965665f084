//! Prometheus metrics of the peer transport. Labels are node ids and fixed
//! reason words only, so cardinality is bounded by cluster size.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec,
};
use ringstore_shared::NodeId;

pub struct PeerMetrics {
    pub queue_depth: IntGaugeVec,
    pub connected: IntGaugeVec,
    pub connects: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    pub received_bytes: IntCounterVec,
    pub dropped: IntCounterVec,
    pub refused: IntCounterVec,
    pub snapshot_chunks: IntCounterVec,
    pub forwarded: IntCounterVec,
    pub silent: IntCounterVec,
    pub ping_rtt: HistogramVec,
    pub relayed: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub tls_enabled: IntGaugeVec,
}

pub static PEER: LazyLock<PeerMetrics> = LazyLock::new(|| {
    PeerMetrics {
    queue_depth: register_int_gauge_vec!(
        "ringstore_peer_queue_depth",
        "Batches waiting in the send queue to a peer",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    connected: register_int_gauge_vec!(
        "ringstore_peer_connected",
        "1 while the outbound connection to the peer is up",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    connects: register_int_counter_vec!(
        "ringstore_peer_connects_total",
        "Outbound connection attempts by result (ok, refused, error); growth of error means reconnects",
        &["node", "peer", "result"]
    )
    .expect("metric registers once"),
    sent_bytes: register_int_counter_vec!(
        "ringstore_peer_sent_bytes_total",
        "Bytes written to the connection to a peer",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    received_bytes: register_int_counter_vec!(
        "ringstore_peer_received_bytes_total",
        "Bytes read from a peer's connection",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    dropped: register_int_counter_vec!(
        "ringstore_peer_dropped_total",
        "Outgoing batches dropped (queue_full, disconnected); Raft resends",
        &["node", "peer", "reason"]
    )
    .expect("metric registers once"),
    refused: register_int_counter_vec!(
        "ringstore_peer_refused_total",
        "Inbound connections closed for a failed TLS handshake or certificate (tls), a bad hello, a foreign cluster, an oversized frame or garbage",
        &["node", "reason"]
    )
    .expect("metric registers once"),
    snapshot_chunks: register_int_counter_vec!(
        "ringstore_peer_snapshot_chunks_total",
        "Snapshot chunks sent and received",
        &["node", "direction"]
    )
    .expect("metric registers once"),
    forwarded: register_int_counter_vec!(
        "ringstore_peer_forwarded_requests_total",
        "Client requests sent to a peer's replica (forwarded to the leader)",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    silent: register_int_counter_vec!(
        "ringstore_peer_link_silent_total",
        "Connections to a peer closed because it answered no ping within the link timeout (partition, paused process)",
        &["node", "peer"]
    )
    .expect("metric registers once"),
    tls_reloads: register_int_counter_vec!(
        "ringstore_tls_reloads_total",
        "Reads of the TLS certificate, key and CA after start (SIGHUP) by result (ok, error: the previous stay)",
        &["node", "result"]
    )
    .expect("metric registers once"),
    tls_enabled: register_int_gauge_vec!(
        "ringstore_tls_enabled",
        "1 when the client port speaks HTTPS and peers use mutual TLS",
        &["node"]
    )
    .expect("metric registers once"),
    relayed: register_int_counter_vec!(
        "ringstore_peer_relayed_requests_total",
        "Requests from a peer that this node passed on to the shard's leader (its own replica was not the leader)",
        &["node"]
    )
    .expect("metric registers once"),
    ping_rtt: register_histogram_vec!(
        "ringstore_peer_ping_rtt_seconds",
        "Round trip of a link ping to a peer and its pong",
        &["node", "peer"],
        vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    )
    .expect("metric registers once"),
}
});

/// One link's series, resolved once so the send path formats no labels.
pub struct LinkMetrics {
    pub queue_depth: IntGauge,
    pub connected: IntGauge,
    pub connect_ok: IntCounter,
    pub connect_refused: IntCounter,
    pub connect_error: IntCounter,
    pub sent_bytes: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub dropped_disconnected: IntCounter,
    pub snapshot_chunks_sent: IntCounter,
    pub forwarded: IntCounter,
    pub silent: IntCounter,
    pub ping_rtt: Histogram,
}

impl LinkMetrics {
    pub fn new(node: NodeId, peer: NodeId) -> Self {
        let (n, p) = (node.to_string(), peer.to_string());
        let m = &*PEER;
        LinkMetrics {
            queue_depth: m.queue_depth.with_label_values(&[&n, &p]),
            connected: m.connected.with_label_values(&[&n, &p]),
            connect_ok: m.connects.with_label_values(&[&n, &p, "ok"]),
            connect_refused: m.connects.with_label_values(&[&n, &p, "refused"]),
            connect_error: m.connects.with_label_values(&[&n, &p, "error"]),
            sent_bytes: m.sent_bytes.with_label_values(&[&n, &p]),
            dropped_queue_full: m.dropped.with_label_values(&[&n, &p, "queue_full"]),
            dropped_disconnected: m.dropped.with_label_values(&[&n, &p, "disconnected"]),
            snapshot_chunks_sent: m.snapshot_chunks.with_label_values(&[&n, "sent"]),
            forwarded: m.forwarded.with_label_values(&[&n, &p]),
            silent: m.silent.with_label_values(&[&n, &p]),
            ping_rtt: m.ping_rtt.with_label_values(&[&n, &p]),
        }
    }
}
