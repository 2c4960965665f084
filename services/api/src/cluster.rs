//! `GET /v1/cluster`: the cluster map as this node routes by it (the meta
//! shard's, as of the node's last refresh): nodes with their state, the
//! replica moves in progress, and each
//! shard's replicas, leader and applied index as one of its replicas sees
//! them, and its share of the ring. `?ranges=true` lists every ring
//! interval (thousands per shard: 1,024 virtual nodes each).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use ringstore_router::Route;
use ringstore_storage::{ShardOp, ShardReply};
use serde_json::json;

use crate::error::ApiError;
use crate::ApiState;

pub async fn cluster(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let ranges = crate::params::Params::parse(req.query_string(), &["ranges"])?.flag("ranges")?;
    let table = state.map.load();
    let map = &table.map;
    // One pass over the ring's intervals, grouped by shard.
    let mut owned: std::collections::HashMap<u64, Vec<std::ops::RangeInclusive<u64>>> = Default::default();
    for (r, shard) in table.ring().ranges() {
        owned.entry(shard).or_default().push(r);
    }
    let statuses = map.shards.keys().map(|&shard| {
        let route = Route { key: vec![], op: ShardOp::Status, timeout: Duration::from_secs(2), shard: Some(shard) };
        state.router.send(route)
    });
    let statuses = futures::future::join_all(statuses).await;
    let mut shards = Vec::new();
    for ((&id, replicas), st) in map.shards.iter().zip(statuses) {
        let st = match st {
            Ok(Ok(ShardReply::Status(s))) => Some(s),
            _ => None,
        };
        // The meta shard owns no keys, so no intervals.
        let owned = owned.remove(&id).unwrap_or_default();
        let share: f64 = owned.iter().map(|r| (r.end() - r.start()) as f64 + 1.0).sum::<f64>() / 2f64.powi(64);
        let mut s = json!({
            "id": id,
            "replicas": replicas,
            "leader": st.as_ref().and_then(|s| s.leader),
            "applied_index": st.as_ref().map(|s| s.applied_index),
            "term": st.as_ref().map(|s| s.term),
            "key_count": st.as_ref().and_then(|s| s.key_count),
            "bytes": st.as_ref().and_then(|s| s.bytes),
            "range_count": owned.len(),
            "ring_share": share,
        });
        if ranges {
            s["ranges"] = json!(owned.iter().map(|r| [r.start(), r.end()]).collect::<Vec<_>>());
        }
        shards.push(s);
    }
    let nodes: Vec<serde_json::Value> = map
        .nodes
        .iter()
        .map(|(id, n)| {
            json!({ "id": id, "peer": n.peer, "http": n.http, "state": n.state.label(), "since_ms": n.since_ms })
        })
        .collect();
    // The moves in progress as the map records them; `GET /v1/rebalance`
    // adds each one's state, progress and blocker.
    let moves: Vec<serde_json::Value> = map
        .moves
        .iter()
        .map(|m| json!({ "shard": m.shard, "from": m.from, "to": m.to, "started_ms": m.started_ms, "bytes": m.bytes }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "epoch": map.epoch, "nodes": nodes, "shards": shards, "moves": moves })))
}
