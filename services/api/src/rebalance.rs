//! Changing the set of nodes and watching the Rebalancer:
//! - `POST /v1/cluster/nodes`: a node joins (`?dry_run=true`: the moves it
//!   would cause and the balance after, nothing recorded);
//! - `POST /v1/cluster/nodes/{id}/drain`: every replica leaves the node,
//!   which then becomes `removed` (`?dry_run=true` as above);
//! - `GET /v1/rebalance`: moves with their state and blockers, the plan,
//!   bytes moved and left, rate, ETA;
//! - `POST /v1/cluster/shards`: the ring grows by N shards, split off the
//!   largest ones (`?dry_run=true`: the splits it would make);
//! - `POST /v1/rebalance/pause|resume`, `PUT /v1/rebalance/config`.
//!
//! Every change is one edit of the cluster map in the meta shard, which
//! the active Rebalancer then carries out.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ringstore_rebalancer::view::{job_view, preview};
use ringstore_rebalancer::REPLICATION;
use ringstore_router::map::{read_map, update_map};
use ringstore_shared::cluster_map::{ClusterMap, NodeInfo, NodeState};
use ringstore_shared::rebalance::{check_drain, ChangeError};
use ringstore_shared::split;
use ringstore_shared::NodeId;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::scan::hex;
use crate::ApiState;

/// Bodies of these endpoints are small JSON objects.
pub const ADMIN_BODY_BYTES_MAX: usize = 4096;
/// Addresses are `host:port`; longer is a mistake.
const ADDRESS_BYTES_MAX: usize = 255;
/// Bounds of the run-time settings: slower than this never finishes a
/// move, faster saturates any disk; more moves at once than this only
/// queue up at the same disks.
const RATE_MIN: u64 = 64 * 1024;
const RATE_MAX: u64 = 10 * 1024 * 1024 * 1024;
const CONCURRENT_MAX: u32 = 64;
const DOWN_AFTER_MAX_S: u64 = 7 * 24 * 3600;
/// Data shards a cluster may grow to: the map lists each, and every node
/// runs a replica of a third of them (with three nodes, all of them).
pub const SHARDS_MAX: u64 = 4096;
/// Shards one request may add.
pub const SHARDS_ADD_MAX: u64 = 1024;
/// Shards per up node the ring may be asked to keep.
const SHARDS_PER_NODE_MAX: u32 = 256;
/// Split sizes: small enough to test with, never above what one snapshot
/// may carry (a larger shard could not move).
const SPLIT_BYTES_MIN: u64 = 64 * 1024;
const SPLIT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
const SPLIT_QPS_MAX: u64 = 10_000_000;
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

fn dry_run(req: &HttpRequest) -> Result<bool, ApiError> {
    crate::params::Params::parse(req.query_string(), &["dry_run"])?.flag("dry_run")
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

fn check_address(what: &str, a: &str) -> Result<(), ApiError> {
    let ok = a.len() <= ADDRESS_BYTES_MAX
        && matches!(a.rsplit_once(':'), Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what} must be HOST:PORT (at most {ADDRESS_BYTES_MAX} bytes), not {a:?}")))
    }
}

fn deadline() -> Instant {
    Instant::now() + ADMIN_TIMEOUT
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::UnknownNode(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_node", e.to_string()),
        ChangeError::Removed(_) => ApiError::new(StatusCode::CONFLICT, "node_removed", e.to_string()),
        ChangeError::NoRoom { .. } => ApiError::new(StatusCode::CONFLICT, "no_room", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    /// Peer (Raft) address other nodes dial.
    peer: String,
    /// Client HTTP address.
    #[serde(default)]
    http: String,
    /// Keep this id (a node that knows its id); otherwise one is assigned.
    id: Option<NodeId>,
    /// The cluster the node believes it joins (16 hex digits): refused if
    /// it is another.
    cluster_id: Option<String>,
}

#[derive(Debug)]
enum JoinError {
    IdTaken { id: NodeId, peer: String },
    Removed(NodeId),
}

/// What a join does to the map: the node as `joining` under its id (the
/// same node joining again, same address, keeps its entry).
fn join_edit(m: &ClusterMap, b: &JoinBody) -> Result<(NodeId, Option<ClusterMap>), JoinError> {
    let same_peer = m.nodes.iter().find(|(_, n)| n.peer == b.peer && n.state != NodeState::Removed);
    if let Some((&id, _)) = same_peer {
        if b.id.is_none_or(|want| want == id) {
            return Ok((id, None));
        }
    }
    let id = match b.id {
        Some(id) => match m.nodes.get(&id) {
            Some(n) if n.state == NodeState::Removed => return Err(JoinError::Removed(id)),
            Some(n) => return Err(JoinError::IdTaken { id, peer: n.peer.clone() }),
            None => id,
        },
        None => m.next_node_id(),
    };
    let mut next = m.next();
    let mut info = NodeInfo::new(b.http.clone(), b.peer.clone(), NodeState::Joining);
    info.since_ms = ringstore_rebalancer::now_ms();
    next.nodes.insert(id, info);
    Ok((id, Some(next)))
}

/// `POST /v1/cluster/nodes`.
pub async fn join(req: HttpRequest, body: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let dry = dry_run(&req)?;
    let b: JoinBody = parse(&body)?;
    check_address("peer", &b.peer)?;
    if !b.http.is_empty() {
        check_address("http", &b.http)?;
    }
    if b.id == Some(0) {
        return Err(ApiError::bad_request("node id 0 is reserved"));
    }
    let ours = format!("{:016x}", state.cluster_id);
    if let Some(theirs) = &b.cluster_id {
        if !theirs.eq_ignore_ascii_case(&ours) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "cluster_mismatch",
                format!("this is cluster {ours}; the node belongs to cluster {theirs}: use an empty data dir to join"),
            ));
        }
    }
    let (cell, transport) = (&state.map, &state.transport);
    let join_err = |e: JoinError| match e {
        JoinError::IdTaken { id, peer } => ApiError::new(
            StatusCode::CONFLICT,
            "id_taken",
            format!("node id {id} belongs to the node at {peer}; join without an id to get a new one"),
        ),
        JoinError::Removed(id) => ApiError::new(
            StatusCode::CONFLICT,
            "node_removed",
            format!("node {id} was removed; ids are never reused, join with an empty data dir"),
        ),
    };
    if dry {
        let current = read_map(cell, transport, deadline()).await?;
        let (id, next) = join_edit(&current, &b).map_err(join_err)?;
        let mut changed = next.unwrap_or_else(|| current.clone());
        if let Some(n) = changed.nodes.get_mut(&id) {
            n.state = NodeState::Up;
        }
        let p = preview(&current, &changed, REPLICATION);
        return Ok(HttpResponse::Ok().json(json!({ "dry_run": true, "id": id, "preview": p })));
    }
    let mut joined = None;
    let map = update_map(cell, transport, deadline(), |m| {
        let (id, next) = join_edit(m, &b)?;
        joined = Some(id);
        Ok(next)
    })
    .await?
    .map_err(join_err)?;
    let id = joined.ok_or_else(|| ApiError::bad_request("join made no change"))?;
    tracing::info!(node = state.node, joined = id, peer = %b.peer, epoch = map.epoch, "node joined the cluster map");
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "cluster_id": ours,
        "shards": map.shards.len().saturating_sub(1),
        "epoch": map.epoch,
        "map": hex(&map.encode()),
    })))
}

/// `POST /v1/cluster/nodes/{id}/drain`.
pub async fn drain(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let dry = dry_run(&req)?;
    let id: NodeId = path.parse().map_err(|_| ApiError::bad_request(format!("{path:?} is not a node id")))?;
    let (cell, transport) = (&state.map, &state.transport);
    let edit = |m: &ClusterMap| -> Result<Option<ClusterMap>, ChangeError> {
        check_drain(m, id, REPLICATION)?;
        if m.nodes[&id].state == NodeState::Draining {
            return Ok(None);
        }
        let mut next = m.next();
        if let Some(n) = next.nodes.get_mut(&id) {
            n.state = NodeState::Draining;
            n.since_ms = ringstore_rebalancer::now_ms();
        }
        Ok(Some(next))
    };
    if dry {
        let current = read_map(cell, transport, deadline()).await?;
        let changed = edit(&current).map_err(change_error)?.unwrap_or_else(|| current.clone());
        let p = preview(&current, &changed, REPLICATION);
        return Ok(HttpResponse::Ok().json(json!({ "dry_run": true, "id": id, "preview": p })));
    }
    let map = update_map(cell, transport, deadline(), edit).await?.map_err(change_error)?;
    tracing::info!(node = state.node, draining = id, epoch = map.epoch, "node draining");
    let replicas = map.hosted_on(id).len();
    Ok(HttpResponse::Ok().json(json!({ "id": id, "state": "draining", "epoch": map.epoch, "replicas": replicas })))
}

/// `GET /v1/rebalance`.
pub async fn status(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let view = job_view(&state.map, &state.transport, REPLICATION, deadline()).await?;
    Ok(HttpResponse::Ok().json(view))
}

async fn set_paused(state: &ApiState, paused: bool) -> Result<HttpResponse, ApiError> {
    let map = update_map(&state.map, &state.transport, deadline(), |m| {
        if m.rebalance.paused == paused {
            return Ok::<_, std::convert::Infallible>(None);
        }
        let mut next = m.next();
        next.rebalance.paused = paused;
        Ok(Some(next))
    })
    .await?
    .unwrap_or_else(|e| match e {});
    tracing::info!(node = state.node, paused, epoch = map.epoch, "rebalancing paused or resumed");
    Ok(HttpResponse::Ok().json(json!({ "paused": map.rebalance.paused, "epoch": map.epoch })))
}

/// `POST /v1/rebalance/pause`.
pub async fn pause(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    set_paused(&state, true).await
}

/// `POST /v1/rebalance/resume`.
pub async fn resume(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    set_paused(&state, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddShardsBody {
    /// Shards to add.
    add: u64,
}

fn splits_json(splits: &[ringstore_shared::cluster_map::ShardSplit]) -> Vec<serde_json::Value> {
    splits.iter().map(|s| json!({ "source": s.source, "target": s.target, "at": format!("{:016x}", s.at) })).collect()
}

/// `POST /v1/cluster/shards {"add": N}`: raises the map's shard target by
/// N; the Rebalancer splits the largest shards (in place, no data copied)
/// until it is met, and the planner then spreads the new shards' replicas.
/// 202: the growth is recorded, not done; `GET /v1/rebalance` follows it.
/// Not idempotent: sent twice, it adds twice.
pub async fn add_shards(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let dry = dry_run(&req)?;
    let b: AddShardsBody = parse(&body)?;
    if !(1..=SHARDS_ADD_MAX).contains(&b.add) {
        return Err(ApiError::bad_request(format!("add must be in 1..={SHARDS_ADD_MAX}, not {}", b.add)));
    }
    let grow = |m: &ClusterMap| -> Result<ClusterMap, ApiError> {
        let target = m.rebalance.target_shards.max(split::planned_shards(m)) + b.add;
        if target > SHARDS_MAX {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_shards",
                format!("{target} shards asked for; a cluster may have at most {SHARDS_MAX}"),
            ));
        }
        let mut next = m.next();
        next.rebalance.target_shards = target;
        Ok(next)
    };
    let now = ringstore_rebalancer::now_ms();
    if dry {
        let map = read_map(&state.map, &state.transport, deadline()).await?;
        let next = grow(&map)?;
        let plan = split::plan_splits(&next, &Default::default(), now);
        return Ok(HttpResponse::Ok().json(json!({
            "dry_run": true,
            "shards": map.data_shards().count(),
            "target_shards": next.rebalance.target_shards,
            "splits": splits_json(&plan),
        })));
    }
    let map = update_map(&state.map, &state.transport, deadline(), |m| grow(m).map(Some)).await??;
    let plan = split::plan_splits(&map, &Default::default(), now);
    tracing::info!(
        node = state.node,
        add = b.add,
        target = map.rebalance.target_shards,
        epoch = map.epoch,
        "shards to add recorded"
    );
    Ok(HttpResponse::Accepted().json(json!({
        "epoch": map.epoch,
        "shards": map.data_shards().count(),
        "target_shards": map.rebalance.target_shards,
        "splits": splits_json(&plan),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    max_bytes_per_sec: Option<u64>,
    max_concurrent_moves: Option<u32>,
    down_after_s: Option<u64>,
    shards_per_node: Option<u32>,
    split_max_bytes: Option<u64>,
    split_load_qps: Option<u64>,
}

/// `PUT /v1/rebalance/config`.
pub async fn config(body: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let b: ConfigBody = parse(&body)?;
    if let Some(r) = b.max_bytes_per_sec.filter(|r| !(RATE_MIN..=RATE_MAX).contains(r)) {
        return Err(ApiError::bad_request(format!("max_bytes_per_sec must be in {RATE_MIN}..={RATE_MAX}, not {r}")));
    }
    if let Some(c) = b.max_concurrent_moves.filter(|c| !(1..=CONCURRENT_MAX).contains(c)) {
        return Err(ApiError::bad_request(format!("max_concurrent_moves must be in 1..={CONCURRENT_MAX}, not {c}")));
    }
    if let Some(d) = b.down_after_s.filter(|d| !(1..=DOWN_AFTER_MAX_S).contains(d)) {
        return Err(ApiError::bad_request(format!("down_after_s must be in 1..={DOWN_AFTER_MAX_S}, not {d}")));
    }
    if let Some(n) = b.shards_per_node.filter(|n| *n > SHARDS_PER_NODE_MAX) {
        return Err(ApiError::bad_request(format!("shards_per_node must be in 0..={SHARDS_PER_NODE_MAX}, not {n}")));
    }
    if let Some(n) = b.split_max_bytes.filter(|n| *n != 0 && !(SPLIT_BYTES_MIN..=SPLIT_BYTES_MAX).contains(n)) {
        return Err(ApiError::bad_request(format!(
            "split_max_bytes must be 0 (off) or in {SPLIT_BYTES_MIN}..={SPLIT_BYTES_MAX}, not {n}"
        )));
    }
    if let Some(n) = b.split_load_qps.filter(|n| *n > SPLIT_QPS_MAX) {
        return Err(ApiError::bad_request(format!("split_load_qps must be in 0..={SPLIT_QPS_MAX}, not {n}")));
    }
    let map = update_map(&state.map, &state.transport, deadline(), |m| {
        let mut next = m.next();
        let c = &mut next.rebalance;
        c.max_bytes_per_sec = b.max_bytes_per_sec.unwrap_or(c.max_bytes_per_sec);
        c.max_concurrent_moves = b.max_concurrent_moves.unwrap_or(c.max_concurrent_moves);
        c.down_after_s = b.down_after_s.unwrap_or(c.down_after_s);
        c.shards_per_node = b.shards_per_node.unwrap_or(c.shards_per_node);
        c.split_max_bytes = b.split_max_bytes.unwrap_or(c.split_max_bytes);
        c.split_load_qps = b.split_load_qps.unwrap_or(c.split_load_qps);
        Ok::<_, std::convert::Infallible>((next.rebalance != m.rebalance).then_some(next))
    })
    .await?
    .unwrap_or_else(|e| match e {});
    let c = map.rebalance;
    tracing::info!(node = state.node, ?c, epoch = map.epoch, "rebalance settings changed");
    Ok(HttpResponse::Ok().json(json!({
        "epoch": map.epoch,
        "paused": c.paused,
        "max_bytes_per_sec": c.max_bytes_per_sec,
        "max_concurrent_moves": c.max_concurrent_moves,
        "down_after_s": c.down_after_s,
        "shards_per_node": c.shards_per_node,
        "target_shards": c.target_shards,
        "split_max_bytes": c.split_max_bytes,
        "split_load_qps": c.split_load_qps,
    })))
}
