//! `ringstore node --join URL`: asks a member to record this node in the
//! cluster map and learns the cluster's id, shard count and map from the
//! answer. Retried (bounded) while the member cannot answer yet; a refusal
//! (another cluster, an id taken, a removed node) ends the node with the
//! member's reason.

use std::time::Duration;

use ringstore_shared::cluster_map::ClusterMap;
use ringstore_shared::NodeId;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

/// How long a join keeps trying to reach a member.
pub const JOIN_TRYING: Duration = Duration::from_secs(60);
const JOIN_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Deserialize)]
struct Joined {
    id: NodeId,
    cluster_id: String,
    shards: u64,
    map: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The member answered no: this node must not start as it is.
    #[error("{endpoint} refused the join ({status}): {body}")]
    Refused { endpoint: String, status: u16, body: String },
    #[error("could not join through {endpoint} within {within:?}: {last}")]
    Unreachable { endpoint: String, within: Duration, last: String },
    #[error("the join answer from {endpoint} is malformed: {detail}")]
    Malformed { endpoint: String, detail: String },
}

#[derive(Debug)]
pub struct Admission {
    pub id: NodeId,
    pub cluster_id: u64,
    pub shards: u64,
    pub map: ClusterMap,
}

/// The member a node joins through, and how it speaks to it.
#[derive(Clone, Copy)]
pub struct Via<'a> {
    /// `http://host:port`, or `https://` with `tls`.
    pub url: &'a str,
    pub tls: Option<&'a std::sync::Arc<rustls::ClientConfig>>,
    /// A token with the admin scope, when the cluster requires tokens.
    pub token: Option<&'a str>,
}

/// Joins through the member `via`. `id`/`cluster_id`: what this node
/// already is, if anything. `within`: how long to keep trying to reach it.
pub async fn join(
    via: Via<'_>,
    peer: &str,
    http: &str,
    id: Option<NodeId>,
    cluster_id: Option<u64>,
    within: Duration,
) -> Result<Admission, JoinError> {
    let client = ringstore_client::tls::http_client(Duration::from_secs(10), via.tls);
    let endpoint = format!("{}/v1/cluster/nodes", via.url.trim_end_matches('/'));
    let body = json!({
        "peer": peer,
        "http": http,
        "id": id,
        "cluster_id": cluster_id.map(|c| format!("{c:016x}")),
    });
    let malformed = |detail: String| JoinError::Malformed { endpoint: endpoint.clone(), detail };
    let start = std::time::Instant::now();
    loop {
        let req = ringstore_client::with_bearer(client.post(&endpoint), via.token);
        let last = match req.send_json(&body).await {
            Ok(mut resp) => {
                let status = resp.status();
                match resp.body().limit(16 * 1024 * 1024).await {
                    Ok(bytes) if status.is_success() => {
                        let j: Joined = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
                        let cluster_id =
                            u64::from_str_radix(&j.cluster_id, 16).map_err(|e| malformed(e.to_string()))?;
                        let map = ringstore_api::scan::unhex(&j.map)
                            .ok_or_else(|| "the map is not hex".to_string())
                            .and_then(|b| ClusterMap::decode(&b).map_err(|e| e.to_string()))
                            .map_err(malformed)?;
                        info!(id = j.id, cluster = %j.cluster_id, epoch = map.epoch, "joined the cluster");
                        return Ok(Admission { id: j.id, cluster_id, shards: j.shards, map });
                    }
                    Ok(bytes) if status.is_client_error() => {
                        let body = String::from_utf8_lossy(&bytes).into_owned();
                        return Err(JoinError::Refused { endpoint, status: status.as_u16(), body });
                    }
                    Ok(bytes) => format!("{status}: {}", String::from_utf8_lossy(&bytes)),
                    Err(e) => format!("{status}: {e}"),
                }
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() > within {
            return Err(JoinError::Unreachable { endpoint, within, last });
        }
        warn!(%endpoint, "join not answered yet ({last}); retrying");
        tokio::time::sleep(JOIN_PAUSE).await;
    }
}
