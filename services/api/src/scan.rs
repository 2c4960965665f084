//! `GET /v1/kv?prefix=P&limit=L&cursor=C&keys_only=true`: a prefix scan
//! over every shard at once (each linearizable on its leader), merged in
//! key order and cut into pages. The cursor is the hex of the last key
//! returned; the next page starts after it.
//!
//! `DELETE /v1/kv?prefix=P`: deletes the keys under `P`, page by page on
//! every shard, and answers how many it deleted. Each page is one
//! replicated command that deletes the keys its scan saw if they still
//! hold the version seen: a key written while the delete runs is ordered
//! after it and stays. Not atomic across pages or shards (etcd's range
//! delete is); a deadline that passes part way answers 503 with the count
//! so far, and the same request goes on from where it stopped.

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
/// Keys one delete page takes per shard (one Raft entry each).
pub const DELETE_PAGE_KEYS: usize = 1000;

static PREFIX_DELETED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter!("ringstore_kv_prefix_deleted_keys_total", "Keys deleted by DELETE /v1/kv?prefix=")
        .expect("registers once")
});

struct ScanQuery {
    prefix: String,
    limit: usize,
    cursor: Option<String>,
    keys_only: bool,
}

/// Validates a scan's query string as the handler does (the fuzzer's
/// entry point).
pub fn check_scan_query(qs: &str, key_bytes_max: usize) -> Result<(), ApiError> {
    parse_scan_query(qs, key_bytes_max).map(|_| ())
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

/// Lowercase hex (cursors, token hashes, rebalance views).
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Standard base64 (values and keys that are not UTF-8).
pub(crate) fn b64(b: &[u8]) -> String {
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
    crate::auth::allow(&req, crate::auth::Scope::Read, q.prefix.as_bytes())?;
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

/// Deletes one page of keys seen on one shard (keys scanned from one
/// shard are on one shard; the router finds it by the first).
async fn delete_page(
    state: &ApiState,
    keys: Vec<(Vec<u8>, u64)>,
    timeout: std::time::Duration,
) -> Result<u64, ApiError> {
    let first = keys.first().map(|(k, _)| k.clone()).unwrap_or_default();
    let op = ShardOp::write(ringstore_shared::command::Command::DeleteKeys { keys });
    match crate::kv::route(state, first, op, timeout).await? {
        ShardReply::Outcome(ringstore_shared::apply::Outcome::DeletedKeys { count }) => Ok(count),
        other => Err(unexpected(other)),
    }
}

pub async fn delete_prefix(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let p = Params::parse(req.query_string(), &["prefix"])?;
    let prefix = match p.get("prefix") {
        Some(prefix) if !prefix.is_empty() => prefix.as_bytes().to_vec(),
        _ => {
            return Err(ApiError::bad_request(
                "DELETE /v1/kv needs a non-empty prefix (?prefix=users/); a key is deleted at /v1/kv/{key}",
            ))
        }
    };
    if prefix.len() > state.limits.key_bytes_max {
        return Err(ApiError::too_large("prefix", prefix.len(), state.limits.key_bytes_max));
    }
    crate::auth::allow(&req, crate::auth::Scope::Write, &prefix)?;
    let timeout = deadline(&req, &state)?;
    let until = tokio::time::Instant::now() + timeout;
    let mut deleted = 0u64;
    // Each round scans every shard from the start of the prefix (what the
    // last round deleted is gone) and deletes what it saw. A round that
    // deletes nothing of what it saw met only keys rewritten meanwhile:
    // they stay, and so does the loop's bound.
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let op = || ShardOp::Scan { prefix: prefix.clone(), after: None, limit: DELETE_PAGE_KEYS, keys_only: true };
        let seen = every_shard(&state, left, op, |reply| match reply {
            ShardReply::Items { items, more, epoch } => Ok((items, more, epoch)),
            other => Err(unexpected(other)),
        })
        .await;
        let (items, _) = match seen {
            Ok(found) => found,
            Err(e) => return Err(partial(e, deleted)),
        };
        if items.is_empty() {
            break;
        }
        let table = state.map.load();
        let mut pages: std::collections::BTreeMap<u64, Vec<(Vec<u8>, u64)>> = Default::default();
        for (k, v) in items {
            pages.entry(table.shard_for(&k).unwrap_or_default()).or_default().push((k, v.version));
        }
        let left =
            until.saturating_duration_since(tokio::time::Instant::now()).max(std::time::Duration::from_millis(1));
        let rounds = futures::future::join_all(pages.into_values().map(|keys| delete_page(&state, keys, left))).await;
        let mut round = 0;
        for r in rounds {
            match r {
                Ok(n) => round += n,
                Err(e) => {
                    PREFIX_DELETED.inc_by(deleted + round);
                    return Err(partial(e, deleted + round));
                }
            }
        }
        deleted += round;
        if round == 0 {
            break;
        }
    }
    PREFIX_DELETED.inc_by(deleted);
    let shown = String::from_utf8_lossy(&prefix);
    tracing::info!(prefix = crate::params::clip(&shown), prefix_bytes = prefix.len(), deleted, "deleted by prefix");
    Ok(HttpResponse::Ok().json(json!({ "deleted": deleted })))
}

/// An error part way through a delete says how far it got.
fn partial(e: ApiError, deleted: u64) -> ApiError {
    if deleted == 0 {
        return e;
    }
    ApiError { message: format!("{} (after deleting {deleted} keys; send the request again to go on)", e.message), ..e }
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

    #[test]
    fn a_partial_delete_says_how_far_it_got() {
        let e = partial(ApiError::from(StoreError::Timeout { timeout_ms: 5 }), 0);
        assert!(!e.message.contains("after deleting"));
        let e = partial(ApiError::from(StoreError::Timeout { timeout_ms: 5 }), 12);
        assert_eq!(e.code, "timeout");
        assert!(e.message.ends_with("(after deleting 12 keys; send the request again to go on)"), "{}", e.message);
    }
}
