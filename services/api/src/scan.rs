//! `GET /v1/kv?prefix=P&limit=L&cursor=C&keys_only=true`: a prefix scan
//! over every shard at once (each linearizable on its leader), merged in
//! key order and cut into pages. The cursor is the hex of the last key
//! returned; the next page starts after it.

use actix_web::{web, HttpRequest, HttpResponse};
use ringstore_router::Route;
use ringstore_shared::StoreError;
use ringstore_storage::{ShardOp, ShardReply};
use serde_json::json;

use crate::error::ApiError;
use crate::kv::{deadline, unexpected};
use crate::params::Params;
use crate::ApiState;

pub const SCAN_LIMIT_DEFAULT: usize = 100;
pub const SCAN_LIMIT_MAX: usize = 1000;

struct ScanQuery {
    prefix: String,
    limit: usize,
    cursor: Option<String>,
    keys_only: bool,
}

/// The query of a scan, by the rule every route follows (`params`).
fn parse_scan_query(qs: &str, key_bytes_max: usize) -> Result<ScanQuery, ApiError> {
    let p = Params::parse(qs, &["prefix", "limit", "cursor", "keys_only"])?;
    let prefix = p.get("prefix").unwrap_or_default().to_string();
    if prefix.len() > key_bytes_max {
        return Err(ApiError::too_large("prefix", prefix.len(), key_bytes_max));
    }
    let limit = p.u64_in("limit", 1, SCAN_LIMIT_MAX as u64)?.map_or(SCAN_LIMIT_DEFAULT, |l| l as usize);
    Ok(ScanQuery { prefix, limit, cursor: p.get("cursor").map(str::to_string), keys_only: p.flag("keys_only")? })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Sends `op()` to every data shard at once and gathers the pages `page`
/// takes from the replies. A page from a shard that split after this
/// node's map was read may lack the keys it gave away, which the map does
/// not yet send anyone to: learn the newer map and ask again, until the
/// pages and the map agree (bounded by `timeout`). `more`: some shard has
/// further matches.
pub(crate) async fn every_shard<T>(
    state: &ApiState,
    timeout: std::time::Duration,
    op: impl Fn() -> ShardOp,
    page: impl Fn(ShardReply) -> Result<(Vec<T>, bool, u64), ApiError>,
) -> Result<(Vec<T>, bool), ApiError> {
    let until = tokio::time::Instant::now() + timeout;
    for attempt in 0u32.. {
        let table = state.map.load();
        let shards = table.data_shards();
        let pages = shards.iter().map(|&shard| {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            state.router.send(Route { key: vec![], op: op(), timeout: left, shard: Some(shard) })
        });
        let (mut items, mut more, mut ahead) = (Vec::new(), false, None);
        for (reply, shard) in futures::future::join_all(pages).await.into_iter().zip(shards) {
            let reply =
                reply.map_err(|_| ApiError::from(StoreError::Unavailable { reason: "router stopped".into() }))??;
            let (i, m, epoch) = page(reply)?;
            items.extend(i);
            more |= m;
            if !table.reflects(shard, epoch) {
                ahead = Some(epoch);
            }
        }
        let Some(newest) = ahead else { return Ok((items, more)) };
        let behind = |t: &ringstore_router::RoutingTable| t.epoch <= table.epoch;
        if !ringstore_router::map::catch_up(&state.map, &state.transport, attempt, until, behind).await {
            return Err(ApiError::from(StoreError::Unavailable {
                reason: format!(
                    "a shard split at map epoch {newest}, and this node's map (epoch {}) has not caught up",
                    table.epoch
                ),
            }));
        }
    }
    unreachable!("the loop returns")
}

pub async fn scan(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let q = parse_scan_query(req.query_string(), state.limits.key_bytes_max)?;
    let limit = q.limit;
    let after = match &q.cursor {
        Some(c) => Some(unhex(c).ok_or_else(|| ApiError::bad_request("cursor is not one this API returned"))?),
        None => None,
    };
    let timeout = deadline(&req, &state)?;
    let op =
        || ShardOp::Scan { prefix: q.prefix.clone().into_bytes(), after: after.clone(), limit, keys_only: q.keys_only };
    let (mut items, mut more) = every_shard(&state, timeout, op, |reply| match reply {
        ShardReply::Items { items, more, epoch } => Ok((items, more, epoch)),
        other => Err(unexpected(other)),
    })
    .await?;
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    more |= items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(|(k, _)| hex(k)) } else { None };
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .map(|(k, v)| {
            let key = String::from_utf8_lossy(&k).into_owned();
            if q.keys_only {
                json!({ "key": key, "version": v.version })
            } else {
                json!({ "key": key, "value_b64": b64(&v.data), "version": v.version })
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(unhex(&hex("ключ/1".as_bytes())).unwrap(), "ключ/1".as_bytes());
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
