//! `/v1/locks/{name}`: acquire (with an optional FIFO wait), release,
//! refresh and status. Every reply carries `lease_remaining_ms`, measured
//! by the leader when it decided, so a client can set a safe deadline from
//! its own monotonic clock taken before it sent the request.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ringstore_shared::apply::Outcome;
use ringstore_shared::command::Command;
use ringstore_shared::lock::{Holder, LockOutcome};
use ringstore_storage::{ShardOp, ShardReply};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;
use crate::kv::{deadline, header, request_id, route, unexpected};
use crate::params::Params;
use crate::request::{
    check_lock_ttl, check_owner, format_session, parse_lock_name, parse_session, wait_deadline, AcquireBody, HolderBody,
};
use crate::ApiState;

/// Largest lock request body: an owner and a few numbers.
pub const LOCK_BODY_BYTES_MAX: usize = 16 * 1024;

/// The JSON body of a lock action. `shape` says what the action takes,
/// for errors where serde's own words would name Rust types.
fn body<T: DeserializeOwned>(req: &HttpRequest, b: &[u8], shape: &str) -> Result<T, ApiError> {
    // Lock routes take no query parameters; the same rule as the KV routes.
    Params::parse(req.query_string(), &[])?;
    if b.len() > LOCK_BODY_BYTES_MAX {
        return Err(ApiError::too_large("request body", b.len(), LOCK_BODY_BYTES_MAX));
    }
    crate::params::json_object(b, shape)
}

const ACQUIRE_SHAPE: &str =
    r#"must be a JSON object like {"owner": "worker-1", "ttl_ms": 10000, "wait_ms": 0, "session": null}"#;
const RELEASE_SHAPE: &str = r#"must be a JSON object like {"session": "<32 hex digits>", "token": 7}"#;
const REFRESH_SHAPE: &str = r#"must be a JSON object like {"session": "<32 hex digits>", "token": 7, "ttl_ms": 10000}"#;

fn remaining(expires_at_ms: u64, now_ms: u64) -> u64 {
    expires_at_ms.saturating_sub(now_ms)
}

/// 409 naming the holder (never its token: owner and token release a lock).
fn conflict(
    status: StatusCode,
    code: &'static str,
    message: String,
    holder: Option<Holder>,
    now_ms: u64,
) -> HttpResponse {
    let (owner, left) = match &holder {
        Some(h) => (Some(h.owner.clone()), Some(remaining(h.expires_at_ms, now_ms))),
        None => (None, None),
    };
    HttpResponse::build(status).json(json!({
        "error": { "code": code, "message": message },
        "holder": owner,
        "lease_remaining_ms": left,
    }))
}

/// 409 for a release, refresh or re-entry by a session and token that do
/// not hold the lock (any more: a lease that ended frees it).
fn not_holder(name: &str, holder: Option<Holder>, now_ms: u64) -> HttpResponse {
    conflict(
        StatusCode::CONFLICT,
        "not_holder",
        format!("this session and token do not hold lock {name:?} (a hold ends when its lease does)"),
        holder,
        now_ms,
    )
}

/// The session is returned to the acquirer only: it is what re-enters,
/// refreshes and releases the lock.
fn granted(token: u64, hold_count: u32, expires_at_ms: u64, now_ms: u64, session: Option<u128>) -> HttpResponse {
    let left = remaining(expires_at_ms, now_ms);
    let mut body = json!({
        "token": token,
        "hold_count": hold_count,
        "expires_in_ms": left,
        "lease_remaining_ms": left,
    });
    if let Some(s) = session {
        body["session"] = json!(format_session(s));
    }
    HttpResponse::Ok().json(body)
}

pub async fn acquire(req: HttpRequest, raw: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let name = parse_lock_name(req.uri().path(), Some("acquire"), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Write, name.as_bytes())?;
    let b: AcquireBody = body(&req, &raw, ACQUIRE_SHAPE)?;
    check_owner(&b.owner, &state.limits)?;
    check_lock_ttl(b.ttl_ms, &state.limits)?;
    let timeout = wait_deadline(header(req.headers(), "x-request-timeout"), b.wait_ms, &state.limits)?;
    let session = b.session.as_deref().map(parse_session).transpose()?;
    let request = request_id(&req)?;
    let op =
        ShardOp::Acquire { name: name.clone(), owner: b.owner, ttl_ms: b.ttl_ms, wait_ms: b.wait_ms, session, request };
    match route(&state, name.clone().into_bytes(), op, timeout).await? {
        ShardReply::Outcome(Outcome::Lock { outcome, now_ms }) => match outcome {
            LockOutcome::Granted { token, hold_count, expires_at_ms, session } => {
                Ok(granted(token, hold_count, expires_at_ms, now_ms, Some(session)))
            }
            // A re-entry whose session does not hold the lock.
            LockOutcome::Conflict { holder } if session.is_some() => Ok(not_holder(&name, holder, now_ms)),
            LockOutcome::Conflict { holder } => Ok(conflict(
                StatusCode::CONFLICT,
                "lock_held",
                format!("lock {name:?} is held by another session"),
                holder,
                now_ms,
            )),
            LockOutcome::QueueFull { limit } => Ok(conflict(
                StatusCode::TOO_MANY_REQUESTS,
                "lock_queue_full",
                format!("lock {name:?} is held and {limit} waiters already queue for it"),
                None,
                now_ms,
            )),
            o => Err(unexpected(ShardReply::Outcome(Outcome::Lock { outcome: o, now_ms }))),
        },
        other => Err(unexpected(other)),
    }
}

pub async fn release(req: HttpRequest, raw: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let name = parse_lock_name(req.uri().path(), Some("release"), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Write, name.as_bytes())?;
    let b: HolderBody = body(&req, &raw, RELEASE_SHAPE)?;
    let session = parse_session(&b.session)?;
    if b.ttl_ms.is_some() {
        return Err(ApiError::bad_request("release takes no ttl_ms"));
    }
    let timeout = deadline(&req, &state)?;
    let cmd = Command::LockRelease { name: name.clone(), session, token: b.token };
    let op = ShardOp::write_as(cmd, request_id(&req)?);
    match route(&state, name.clone().into_bytes(), op, timeout).await? {
        ShardReply::Outcome(Outcome::Lock { outcome: LockOutcome::Released { hold_count }, .. }) => {
            Ok(HttpResponse::Ok().json(json!({ "released": true, "hold_count": hold_count, "free": hold_count == 0 })))
        }
        ShardReply::Outcome(Outcome::Lock { outcome: LockOutcome::Conflict { holder }, now_ms }) => {
            Ok(not_holder(&name, holder, now_ms))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn refresh(req: HttpRequest, raw: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let name = parse_lock_name(req.uri().path(), Some("refresh"), &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Write, name.as_bytes())?;
    let b: HolderBody = body(&req, &raw, REFRESH_SHAPE)?;
    let session = parse_session(&b.session)?;
    let ttl_ms = b.ttl_ms.ok_or_else(|| ApiError::bad_request("refresh needs ttl_ms"))?;
    check_lock_ttl(ttl_ms, &state.limits)?;
    let timeout = deadline(&req, &state)?;
    let cmd = Command::LockRefresh { name: name.clone(), session, token: b.token, ttl_ms };
    let op = ShardOp::write_as(cmd, request_id(&req)?);
    match route(&state, name.clone().into_bytes(), op, timeout).await? {
        ShardReply::Outcome(Outcome::Lock {
            outcome: LockOutcome::Refreshed { token, hold_count, expires_at_ms },
            now_ms,
        }) => Ok(granted(token, hold_count, expires_at_ms, now_ms, None)),
        ShardReply::Outcome(Outcome::Lock { outcome: LockOutcome::Conflict { holder }, now_ms }) => {
            Ok(not_holder(&name, holder, now_ms))
        }
        other => Err(unexpected(other)),
    }
}

/// `GET /v1/locks?prefix=P&limit=L&cursor=C`: the locks whose names
/// start with `P` (held, or free with tokens issued), in name order,
/// linearizable on every shard's leader. The cursor is the last name of
/// the page; the next page starts after it.
pub async fn list(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let p = Params::parse(req.query_string(), &["prefix", "limit", "cursor"])?;
    let prefix = p.get("prefix").unwrap_or_default().to_string();
    if prefix.len() > state.limits.key_bytes_max {
        return Err(ApiError::too_large("prefix", prefix.len(), state.limits.key_bytes_max));
    }
    crate::auth::allow(&req, crate::auth::Scope::Read, prefix.as_bytes())?;
    let limit = p.u64_in("limit", 1, LIST_LIMIT_MAX as u64)?.map_or(LIST_LIMIT_DEFAULT, |l| l as usize);
    let after = p.get("cursor").map(str::to_string);
    let timeout = deadline(&req, &state)?;
    let op = || ShardOp::ScanLocks { prefix: prefix.clone(), after: after.clone(), limit };
    let (mut locks, mut more) = crate::scan::every_shard(&state, timeout, op, |reply| match reply {
        ShardReply::Locks { locks, more, epoch, now_ms } => {
            Ok((locks.into_iter().map(|(n, r)| (n, r, now_ms)).collect(), more, epoch))
        }
        other => Err(unexpected(other)),
    })
    .await?;
    locks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    more |= locks.len() > limit;
    locks.truncate(limit);
    let next = if more { locks.last().map(|(n, _, _)| n.clone()) } else { None };
    let items: Vec<serde_json::Value> = locks
        .into_iter()
        .map(|(name, record, now_ms)| {
            // A lease that ended frees the lock, whatever the record says.
            let holder = record.holder.as_ref().filter(|h| h.expires_at_ms > now_ms);
            json!({
                "name": name,
                "held": holder.is_some(),
                "holder": holder.map(|h| h.owner.clone()),
                "token": holder.map(|h| h.token),
                "lease_remaining_ms": holder.map(|h| remaining(h.expires_at_ms, now_ms)),
                "last_token": record.last_token,
                "waiters": record.queue.iter().filter(|q| q.wait_until_ms > now_ms).count(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "locks": items, "next_cursor": next })))
}

/// Locks per listing page, by default and at most.
pub const LIST_LIMIT_DEFAULT: usize = 100;
pub const LIST_LIMIT_MAX: usize = 1000;

pub async fn status(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let name = parse_lock_name(req.uri().path(), None, &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Read, name.as_bytes())?;
    Params::parse(req.query_string(), &[])?;
    let timeout = deadline(&req, &state)?;
    match route(&state, name.clone().into_bytes(), ShardOp::LockStatus { name: name.clone() }, timeout).await? {
        ShardReply::Lock { record, waiters, now_ms } => {
            let holder = record.as_ref().and_then(|r| r.holder.as_ref());
            Ok(HttpResponse::Ok().json(json!({
                "name": name,
                "held": holder.is_some(),
                "holder": holder.map(|h| h.owner.clone()),
                "token": holder.map(|h| h.token),
                "hold_count": holder.map(|h| h.hold_count).unwrap_or(0),
                "lease_remaining_ms": holder.map(|h| remaining(h.expires_at_ms, now_ms)),
                "last_token": record.as_ref().map(|r| r.last_token).unwrap_or(0),
                "waiters": waiters,
            })))
        }
        other => Err(unexpected(other)),
    }
}
