//! `PUT/GET/DELETE /v1/kv/{key}`: the value is the raw body; its version
//! (the Raft index that wrote it) is the quoted `ETag`.

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use ringstore_router::Route;
use ringstore_shared::apply::Outcome;
use ringstore_shared::command::{Command, Fence, Request};
use ringstore_shared::lock;
use ringstore_shared::StoreError;
use ringstore_storage::messages::new_request_id;
use ringstore_storage::{ShardOp, ShardReply};
use serde_json::json;

use crate::error::ApiError;
use crate::request::{
    parse_fence, parse_idempotency_key, parse_if_none_match, parse_key, parse_precondition, parse_query, parse_timeout,
    wait_deadline, Consistency, LONG_POLL_WAIT_DEFAULT,
};

/// Time a long poll's wake-up gets beyond its wait to come back from the
/// leader, before the read that answers it.
const LONG_POLL_HOP_SLACK: Duration = Duration::from_millis(250);
use crate::ApiState;

pub(crate) fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<Result<&'a str, ()>> {
    h.get(name).map(|v| v.to_str().map_err(|_| ()))
}

/// The write's request id: the client's `Idempotency-Key`, or a fresh one.
pub(crate) fn request_id(req: &HttpRequest) -> Result<Request, ApiError> {
    Ok(parse_idempotency_key(header(req.headers(), "idempotency-key"))?
        .unwrap_or_else(|| Request::first(new_request_id())))
}

/// The request deadline; parsed with the other headers, before any body is read.
pub(crate) fn deadline(req: &HttpRequest, state: &ApiState) -> Result<Duration, ApiError> {
    parse_timeout(header(req.headers(), "x-request-timeout"), &state.limits)
}

/// A fenced write's token must have been issued by its lock: a linearizable
/// read of the lock's record (on the lock's own shard, usually not the
/// key's) refuses a token above the lock's `last_token` or of a lock that
/// never existed, before the write can move the key's fence. A token handed
/// to a client was committed before the client could send it, so the read
/// sees it; see docs/ARCHITECTURE.md ("Fencing tokens must be issued").
async fn check_token_issued(state: &ApiState, fence: &Fence, timeout: Duration) -> Result<(), ApiError> {
    let op = ShardOp::LockStatus { name: fence.lock.clone() };
    match route(state, fence.lock.clone().into_bytes(), op, timeout).await? {
        ShardReply::Lock { record, .. } => lock::check_issued(&fence.lock, record.as_ref(), fence.token).map_err(|e| {
            crate::ops::UNKNOWN_TOKENS.inc();
            ApiError::new(StatusCode::CONFLICT, "unknown_token", e.to_string())
        }),
        other => Err(unexpected(other)),
    }
}

/// Checks the command's fence (if any), then routes the write in what is
/// left of `timeout`.
async fn fenced_write(
    state: &ApiState,
    key: Vec<u8>,
    cmd: Command,
    request: Request,
    timeout: Duration,
) -> Result<ShardReply, ApiError> {
    let start = std::time::Instant::now();
    let fence = match &cmd {
        Command::Put { fence, .. } | Command::Delete { fence, .. } => fence.as_ref(),
        _ => None,
    };
    if let Some(f) = fence {
        check_token_issued(state, f, timeout).await?;
    }
    let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
    route(state, key, ShardOp::write_as(cmd, request), left).await
}

pub(crate) async fn route(
    state: &ApiState,
    key: Vec<u8>,
    op: ShardOp,
    timeout: Duration,
) -> Result<ShardReply, ApiError> {
    let routed = state
        .router
        .send(Route { key, op, timeout, shard: None })
        .await
        .map_err(|_| ApiError::from(StoreError::Unavailable { reason: "router stopped".into() }))?;
    Ok(routed?)
}

/// Reads the body, refusing it as soon as it passes the value limit (and
/// before reading at all when `Content-Length` already says so).
async fn read_body(req: &HttpRequest, mut payload: web::Payload, max: usize) -> Result<Vec<u8>, ApiError> {
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
    {
        if len > max {
            return Err(ApiError::too_large("value", len, max));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::too_large("value", body.len() + chunk.len(), max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn etag(version: u64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

pub async fn put(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let key = parse_key(req.uri().path(), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Write, &key)?;
    let q = parse_query(req.query_string(), &state.limits)?;
    if q.consistency.is_some() || q.meta || q.index.is_some() {
        return Err(ApiError::bad_request("consistency, meta and index apply to GET only"));
    }
    let cond = parse_precondition(header(req.headers(), "if-match"), header(req.headers(), "if-none-match"), true)?;
    let fence = parse_fence(header(req.headers(), "fencing-token"), &state.limits)?;
    let request = request_id(&req)?;
    let timeout = deadline(&req, &state)?;
    let value = read_body(&req, payload, state.limits.value_bytes_max).await?;
    let cmd = Command::Put { key: key.clone(), value, ttl_ms: q.ttl_ms, cond, fence };
    match fenced_write(&state, key, cmd, request, timeout).await? {
        ShardReply::Outcome(Outcome::Written { version }) => {
            Ok(HttpResponse::Ok().insert_header(etag(version)).json(json!({ "version": version })))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn get(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let key = parse_key(req.uri().path(), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Read, &key)?;
    let q = parse_query(req.query_string(), &state.limits)?;
    if q.ttl_ms.is_some() {
        return Err(ApiError::bad_request("ttl_ms applies to PUT only"));
    }
    let stale = q.consistency.unwrap_or_default() == Consistency::Stale;
    if req.headers().contains_key(header::IF_MATCH) {
        return Err(ApiError::bad_request("If-Match applies to PUT and DELETE; a GET takes If-None-Match"));
    }
    let none_match = parse_if_none_match(header(req.headers(), "if-none-match"))?;
    let mut timeout = deadline(&req, &state)?;
    let mut read = None;
    if let Some(after) = q.index {
        if stale {
            return Err(ApiError::bad_request("a long poll (index) reads linearizably; leave out consistency"));
        }
        let wait = q.wait.unwrap_or(LONG_POLL_WAIT_DEFAULT);
        // The deadline follows the wait, as an acquire's does.
        timeout = wait_deadline(header(req.headers(), "x-request-timeout"), wait.as_millis() as u64, &state.limits)?;
        let started = std::time::Instant::now();
        read = long_poll(&state, &key, after, wait, timeout).await?;
        timeout = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
    }
    let reply = match read {
        Some(r) => r,
        None => route(&state, key.clone(), ShardOp::Read { key, stale }, timeout).await?,
    };
    match reply {
        ShardReply::Value { value: Some(v), applied_index } => {
            if none_match.as_ref().is_some_and(|m| m.has(v.version)) {
                // The client's copy is current: headers only.
                return Ok(HttpResponse::NotModified()
                    .insert_header(etag(v.version))
                    .insert_header(("x-ringstore-applied-index", applied_index.to_string()))
                    .finish());
            }
            if q.meta {
                return Ok(HttpResponse::Ok().insert_header(etag(v.version)).json(meta_view(&req, v, applied_index)));
            }
            let mut r = HttpResponse::Ok();
            r.insert_header(etag(v.version))
                .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
                .insert_header(("x-ringstore-applied-index", applied_index.to_string()));
            if let Some(e) = v.expires_at_ms {
                r.insert_header(("x-ringstore-expires-at-ms", e.to_string()));
            }
            Ok(r.body(v.data))
        }
        ShardReply::Value { value: None, .. } => Err(StoreError::NotFound.into()),
        other => Err(unexpected(other)),
    }
}

pub async fn delete(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let key = parse_key(req.uri().path(), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Write, &key)?;
    let q = parse_query(req.query_string(), &state.limits)?;
    if q.ttl_ms.is_some() || q.consistency.is_some() || q.meta {
        return Err(ApiError::bad_request("DELETE takes no query parameters"));
    }
    let cond = parse_precondition(header(req.headers(), "if-match"), header(req.headers(), "if-none-match"), false)?;
    let fence = parse_fence(header(req.headers(), "fencing-token"), &state.limits)?;
    let request = request_id(&req)?;
    let timeout = deadline(&req, &state)?;
    let cmd = Command::Delete { key: key.clone(), cond, fence };
    match fenced_write(&state, key, cmd, request, timeout).await? {
        ShardReply::Outcome(Outcome::Deleted { version }) => {
            Ok(HttpResponse::Ok().json(json!({ "deleted": true, "version": version })))
        }
        other => Err(unexpected(other)),
    }
}

/// `?meta`: the value (as text when it is UTF-8, else `value_b64`) with
/// its version, expiry and the answering replica's applied index.
fn meta_view(req: &HttpRequest, v: ringstore_shared::value::StoredValue, applied_index: u64) -> serde_json::Value {
    let key = req.uri().path().strip_prefix(crate::request::KV_PREFIX).unwrap_or_default();
    let key = crate::params::decode(key, false, "key").unwrap_or_default();
    let mut o = json!({
        "key": key,
        "version": v.version,
        "expires_at_ms": v.expires_at_ms,
        "applied_index": applied_index,
    });
    put_value(&mut o, v.data);
    o
}

/// Puts `data` into the JSON object `o` as `value` when it is UTF-8 text,
/// else as `value_b64`.
/// A long poll: reads `key`; if its version is still `after` (0: absent),
/// waits up to `wait` for a change to it in the shard's events (the
/// node's watch feed, or the shard itself for a feed that does not reach
/// back to the read) and answers `None`, for the caller to read it again.
/// A wake-up, not a result: the answer is always a linearizable read.
async fn long_poll(
    state: &web::Data<ApiState>,
    key: &[u8],
    after: u64,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<ShardReply>, ApiError> {
    let first = route(state, key.to_vec(), ShardOp::Read { key: key.to_vec(), stale: false }, timeout).await?;
    let (version, applied) = match &first {
        ShardReply::Value { value, applied_index } => (value.as_ref().map_or(0, |v| v.version), *applied_index),
        _ => return Ok(Some(first)),
    };
    let shard = state.map.load().shard_for(key);
    let (Some(shard), true) = (shard, version == after) else { return Ok(Some(first)) };
    let filter = ringstore_storage::events::KeyFilter::Exact(key.to_vec());
    if crate::feed::read(state, shard, &filter, applied, 1, wait).await.is_none() {
        // Changed, the wait ended, or a wait cut short (a leader change, a
        // split, a position the shard no longer keeps): the read after
        // says what the key is now.
        let op = ShardOp::Events { filter, after: Some(applied), max: 1, wait_ms: wait.as_millis() as u64 };
        let route =
            ringstore_router::Route { key: Vec::new(), op, timeout: wait + LONG_POLL_HOP_SLACK, shard: Some(shard) };
        let _ = state.router.send(route).await;
    }
    Ok(None)
}

pub(crate) fn put_value(o: &mut serde_json::Value, data: Vec<u8>) {
    match String::from_utf8(data) {
        Ok(text) => o["value"] = json!(text),
        Err(e) => {
            use base64::Engine as _;
            o["value_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()));
        }
    }
}

pub(crate) fn unexpected(reply: ShardReply) -> ApiError {
    ApiError::from(StoreError::Internal(format!("unexpected shard reply {reply:?}")))
}
