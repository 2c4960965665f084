//! Pure parsing of what a client sends: the key from the raw path, the
//! query string, precondition headers, the idempotency key and the
//! request deadline. Each
//! function returns an [`ApiError`] that says exactly what was wrong.

use std::time::Duration;

use ringstore_shared::command::{Fence, Precondition, Request};
use ringstore_shared::config::Limits;
use ringstore_shared::lock::SessionId;
use serde::Deserialize;

use crate::error::ApiError;
use crate::params::{decode, duration_in, Params};

pub const KV_PREFIX: &str = "/v1/kv/";

/// The user key of `/v1/kv/{key}`, from the raw (still percent-encoded)
/// path so that `%2F` and `/` both mean `/` and nothing is decoded twice.
pub fn parse_key(raw_path: &str, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    parse_key_under(raw_path, KV_PREFIX, limits)
}

/// The key of a path `prefix` + key (`/v1/kv/`, `/v1/watch/`), by the
/// same rules.
pub fn parse_key_under(raw_path: &str, prefix: &str, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let enc = raw_path
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::bad_request(format!("key path must start with {prefix}")))?;
    if enc.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    let bytes = decode(enc, false, "key")?.into_bytes();
    if bytes.len() > limits.key_bytes_max {
        return Err(ApiError::too_large("key", bytes.len(), limits.key_bytes_max));
    }
    Ok(bytes)
}

pub const LOCKS_PREFIX: &str = "/v1/locks/";

/// The lock name of `/v1/locks/{name}[/action]` from the raw path.
/// `action` is the verb segment the route matched (`acquire`, ...), if any.
pub fn parse_lock_name(raw_path: &str, action: Option<&str>, limits: &Limits) -> Result<String, ApiError> {
    let mut enc = raw_path
        .strip_prefix(LOCKS_PREFIX)
        .ok_or_else(|| ApiError::bad_request("lock path must start with /v1/locks/"))?;
    if let Some(a) = action {
        enc = enc
            .strip_suffix(a)
            .and_then(|e| e.strip_suffix('/'))
            .ok_or_else(|| ApiError::bad_request(format!("lock path must end with /{a}")))?;
    }
    if enc.is_empty() {
        return Err(ApiError::bad_request("lock name must not be empty"));
    }
    let name = decode(enc, false, "lock name")?;
    if name.len() > limits.key_bytes_max {
        return Err(ApiError::too_large("lock name", name.len(), limits.key_bytes_max));
    }
    Ok(name)
}

/// `Fencing-Token: <lock name, percent-encoded>:<token>`.
pub fn parse_fence(h: Option<Result<&str, ()>>, limits: &Limits) -> Result<Option<Fence>, ApiError> {
    let Some(v) = h else { return Ok(None) };
    let bad = || ApiError::bad_request("Fencing-Token must be <lock name>:<token>");
    let v = v.map_err(|_| bad())?;
    let (name, token) = v.rsplit_once(':').ok_or_else(bad)?;
    let token: u64 = token.trim().parse().map_err(|_| bad())?;
    let lock = decode(name.trim(), false, "Fencing-Token's lock name").map_err(|_| bad())?;
    if lock.is_empty() || token == 0 {
        return Err(bad());
    }
    if lock.len() > limits.key_bytes_max {
        return Err(ApiError::too_large("key", lock.len(), limits.key_bytes_max));
    }
    Ok(Some(Fence { lock, token }))
}

/// Body of `POST /v1/locks/{name}/acquire`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// A label for people; two clients with one label still exclude each other.
    pub owner: String,
    pub ttl_ms: u64,
    #[serde(default)]
    pub wait_ms: u64,
    /// The session of an earlier acquire, to re-enter the lock it holds.
    pub session: Option<String>,
}

/// Body of `release` and `refresh` (`ttl_ms` for refresh only).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HolderBody {
    pub session: String,
    pub token: u64,
    pub ttl_ms: Option<u64>,
}

/// A lock session as the API shows it: 32 lowercase hex digits.
pub fn format_session(s: SessionId) -> String {
    format!("{s:032x}")
}

pub fn parse_session(s: &str) -> Result<SessionId, ApiError> {
    let bad = || ApiError::bad_request("session must be the 32 hex digits an acquire returned");
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    match SessionId::from_str_radix(s, 16) {
        Ok(0) | Err(_) => Err(bad()),
        Ok(v) => Ok(v),
    }
}

pub fn check_owner(owner: &str, limits: &Limits) -> Result<(), ApiError> {
    if owner.is_empty() {
        return Err(ApiError::bad_request("owner must not be empty"));
    }
    if owner.len() > limits.lock_owner_bytes_max {
        return Err(ApiError::bad_request(format!("owner is longer than {} bytes", limits.lock_owner_bytes_max)));
    }
    Ok(())
}

pub fn check_lock_ttl(ttl_ms: u64, limits: &Limits) -> Result<(), ApiError> {
    if ttl_ms == 0 || ttl_ms > limits.lock_ttl_ms_max {
        return Err(ApiError::bad_request(format!("ttl_ms must be between 1 and {}", limits.lock_ttl_ms_max)));
    }
    Ok(())
}

/// Time an acquire's request keeps past its wait: to commit the grant
/// that ends the wait and answer it.
pub const WAIT_ANSWER_MARGIN_MS: u64 = 1_000;

/// The deadline of an acquire that may wait `wait_ms`. Without
/// `X-Request-Timeout` it follows the wait (a request that says "wait
/// 20 s" waits 20 s), up to the largest deadline less the answer margin.
/// With the header, the wait must end inside it, or the client would see a
/// timeout instead of the lock's holder.
pub fn wait_deadline(h: Option<Result<&str, ()>>, wait_ms: u64, limits: &Limits) -> Result<Duration, ApiError> {
    if h.is_some() {
        let deadline = parse_timeout(h, limits)?;
        if u128::from(wait_ms) >= deadline.as_millis() {
            return Err(ApiError::bad_request(format!(
                "wait_ms ({wait_ms}) must be below X-Request-Timeout ({} ms); leave the header out and the \
                 deadline follows wait_ms",
                deadline.as_millis()
            )));
        }
        return Ok(deadline);
    }
    let wait_max = limits.request_timeout_ms_max.saturating_sub(WAIT_ANSWER_MARGIN_MS);
    if wait_ms > wait_max {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {wait_max} (the longest request, {} ms, less {WAIT_ANSWER_MARGIN_MS} ms to \
             answer); got {wait_ms}",
            limits.request_timeout_ms_max
        )));
    }
    let follows = wait_ms.saturating_add(WAIT_ANSWER_MARGIN_MS);
    Ok(Duration::from_millis(follows.max(limits.request_timeout_ms_default)))
}

/// The query of `/v1/kv/{key}`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KvQuery {
    pub ttl_ms: Option<u64>,
    pub consistency: Option<Consistency>,
    /// GET only: the value and its metadata as one JSON object.
    pub meta: bool,
    /// GET only, a long poll: answer once the key's version is not this
    /// (0: absent), or after `wait`.
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

/// How long a long poll (`?index=`) waits without `?wait=`.
pub const LONG_POLL_WAIT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

pub const KV_PARAMS: &[&str] = &["ttl_ms", "consistency", "meta", "index", "wait"];

pub fn parse_query(qs: &str, limits: &Limits) -> Result<KvQuery, ApiError> {
    let p = Params::parse(qs, KV_PARAMS)?;
    let consistency = p.one_of("consistency", &["linearizable", "stale"])?.map(|c| match c {
        "stale" => Consistency::Stale,
        _ => Consistency::Linearizable,
    });
    let wait_max = Duration::from_millis(limits.request_timeout_ms_max.saturating_sub(WAIT_ANSWER_MARGIN_MS));
    let wait = p.get("wait").map(|w| duration_in("wait", w, Duration::from_millis(1), wait_max)).transpose()?;
    let index = p.u64_in("index", 0, u64::MAX)?;
    if wait.is_some() && index.is_none() {
        return Err(ApiError::bad_request(
            "wait needs index: the version you have (the ETag's number), or 0 if the key was absent",
        ));
    }
    Ok(KvQuery { ttl_ms: p.u64_in("ttl_ms", 1, limits.ttl_ms_max)?, consistency, meta: p.flag("meta")?, index, wait })
}

/// `"42"` → 42. Weak tags, lists and `*` are refused: a version is exact.
fn parse_etag(v: &str) -> Result<u64, ApiError> {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| ApiError::bad_request(format!("If-Match must be one quoted version like \"42\", got {v:?}")))?;
    inner
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("If-Match must be one quoted version like \"42\", got {v:?}")))
}

/// Precondition from `If-Match` / `If-None-Match` (raw header values;
/// `None` when absent, `Err` text when not valid UTF-8 or visible ASCII).
pub fn parse_precondition(
    if_match: Option<Result<&str, ()>>,
    if_none_match: Option<Result<&str, ()>>,
    is_put: bool,
) -> Result<Precondition, ApiError> {
    let if_match = if_match.transpose().map_err(|_| ApiError::bad_request("If-Match is not valid text"))?;
    let if_none_match =
        if_none_match.transpose().map_err(|_| ApiError::bad_request("If-None-Match is not valid text"))?;
    match (if_match, if_none_match) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("send If-Match or If-None-Match, not both")),
        (Some(m), None) => Ok(Precondition::IfVersion(parse_etag(m)?)),
        (None, Some(n)) if n.trim() == "*" && is_put => Ok(Precondition::IfAbsent),
        (None, Some(_)) if is_put => Err(ApiError::bad_request("If-None-Match supports only \"*\" (create-only)")),
        (None, Some(_)) => Err(ApiError::bad_request("If-None-Match is only supported on PUT")),
        (None, None) => Ok(Precondition::Always),
    }
}

/// `If-None-Match` of a GET: `*` or a list of versions, each quoted and
/// maybe weak (`W/"42"`; a GET compares weakly, RFC 9110 13.1.2).
#[derive(Debug, PartialEq, Eq)]
pub enum NoneMatch {
    Any,
    Versions(Vec<u64>),
}

impl NoneMatch {
    /// Whether a value of `version` is one the client has: 304.
    pub fn has(&self, version: u64) -> bool {
        match self {
            NoneMatch::Any => true,
            NoneMatch::Versions(v) => v.contains(&version),
        }
    }
}

/// Versions a client may list in one `If-None-Match`.
const NONE_MATCH_TAGS_MAX: usize = 64;

pub fn parse_if_none_match(h: Option<Result<&str, ()>>) -> Result<Option<NoneMatch>, ApiError> {
    let Some(v) = h else { return Ok(None) };
    let bad = || ApiError::bad_request("If-None-Match must be * or quoted versions like \"42\", \"43\"");
    let v = v.map_err(|_| bad())?.trim();
    if v == "*" {
        return Ok(Some(NoneMatch::Any));
    }
    let tags = v.split(',').map(|t| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).and_then(|t| t.parse::<u64>().ok()).ok_or_else(bad)
    });
    let versions = tags.take(NONE_MATCH_TAGS_MAX + 1).collect::<Result<Vec<_>, _>>()?;
    if versions.len() > NONE_MATCH_TAGS_MAX {
        return Err(ApiError::bad_request(format!("If-None-Match lists more than {NONE_MATCH_TAGS_MAX} versions")));
    }
    Ok(Some(NoneMatch::Versions(versions)))
}

/// The request id of a write or lock command from `Idempotency-Key`: 32
/// hex digits (a UUID's dashes allowed), not all zero. A client that sends
/// the same key again (its answer was lost, a node died) gets the first
/// try's outcome instead of a second apply, for as long as the shard keeps
/// the record (`REQUEST_RETENTION_MS`). Every try carrying a key looks its
/// record up at apply (`retry`): the server cannot tell which try is first.
/// `None` without the header: the API draws an id of its own. A key is as
/// private as a lock session (a retried acquire answers the first try's
/// session), so it must be random and never shared.
pub fn parse_idempotency_key(h: Option<Result<&str, ()>>) -> Result<Option<Request>, ApiError> {
    let Some(v) = h else { return Ok(None) };
    let bad = || ApiError::bad_request("Idempotency-Key must be 32 hex digits (a UUID), not all zero");
    let hex: String = v.map_err(|_| bad())?.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    match u128::from_str_radix(&hex, 16) {
        Ok(0) | Err(_) => Err(bad()),
        Ok(id) => Ok(Some(Request { id, retry: true })),
    }
}

/// Deadline from `X-Request-Timeout` (`2s`, `500ms` or milliseconds),
/// bounded by the limits.
pub fn parse_timeout(h: Option<Result<&str, ()>>, limits: &Limits) -> Result<Duration, ApiError> {
    let Some(v) = h else {
        return Ok(Duration::from_millis(limits.request_timeout_ms_default));
    };
    let v = v.map_err(|_| ApiError::bad_request("X-Request-Timeout is not valid text"))?;
    let max = Duration::from_millis(limits.request_timeout_ms_max);
    duration_in("X-Request-Timeout", v, Duration::from_millis(limits.request_timeout_ms_min), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn keys_with_slashes_unicode_and_escapes() {
        assert_eq!(parse_key("/v1/kv/a/b/c", &l()).unwrap(), b"a/b/c");
        assert_eq!(parse_key("/v1/kv/a%2Fb", &l()).unwrap(), b"a/b");
        assert_eq!(parse_key("/v1/kv/%D0%BA%D0%BB%D1%8E%D1%87", &l()).unwrap(), "ключ".as_bytes());
        assert_eq!(parse_key("/v1/kv/", &l()).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_key("/v1/kv/%FF", &l()).unwrap_err().status, StatusCode::BAD_REQUEST);
        // Broken escapes are refused, not stored literally.
        assert_eq!(parse_key("/v1/kv/a%ZZ", &l()).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_key("/v1/kv/a+b", &l()).unwrap(), b"a+b");
    }

    #[test]
    fn key_limit_is_exact() {
        let ok = format!("/v1/kv/{}", "k".repeat(4096));
        assert_eq!(parse_key(&ok, &l()).unwrap().len(), 4096);
        let over = format!("/v1/kv/{}", "k".repeat(4097));
        assert_eq!(parse_key(&over, &l()).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(parse_query("", &l()).unwrap(), KvQuery::default());
        assert_eq!(parse_query("ttl_ms=5", &l()).unwrap().ttl_ms, Some(5));
        assert_eq!(parse_query("consistency=stale", &l()).unwrap().consistency, Some(Consistency::Stale));
        assert!(parse_query("meta", &l()).unwrap().meta);
        let q = parse_query("index=7&wait=20s", &l()).unwrap();
        assert_eq!((q.index, q.wait), (Some(7), Some(Duration::from_secs(20))));
        assert!(parse_query("wait=1s", &l()).unwrap_err().message.starts_with("wait needs index"));
        assert!(parse_query("index=1&wait=60s", &l()).unwrap_err().message.contains("from 1ms to 59s"));
        for bad in ["ttl_ms=0", "ttl_ms=-1", "ttl_ms=x", "consistency=weird", "tll_ms=5", "ttl_ms=1&ttl_ms=2"] {
            let e = parse_query(bad, &l()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            let named = if bad.starts_with("tll") { "tll_ms" } else { bad.split('=').next().unwrap() };
            assert!(e.message.contains(named), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn preconditions() {
        assert_eq!(parse_precondition(None, None, true).unwrap(), Precondition::Always);
        assert_eq!(parse_precondition(Some(Ok("\"42\"")), None, true).unwrap(), Precondition::IfVersion(42));
        assert_eq!(parse_precondition(None, Some(Ok("*")), true).unwrap(), Precondition::IfAbsent);
        for bad in ["42", "W/\"42\"", "\"x\"", "*", "\"1\", \"2\"", "\""] {
            assert!(parse_precondition(Some(Ok(bad)), None, true).is_err(), "{bad}");
        }
        assert!(parse_precondition(Some(Ok("\"1\"")), Some(Ok("*")), true).is_err());
        assert!(parse_precondition(None, Some(Ok("\"1\"")), true).is_err());
        assert!(parse_precondition(None, Some(Ok("*")), false).is_err());
        assert!(parse_precondition(Some(Err(())), None, true).is_err());
    }

    #[test]
    fn if_none_match_of_a_get() {
        assert_eq!(parse_if_none_match(None).unwrap(), None);
        assert_eq!(parse_if_none_match(Some(Ok("*"))).unwrap(), Some(NoneMatch::Any));
        let list = parse_if_none_match(Some(Ok(r#""4", W/"7" ,"9""#))).unwrap().unwrap();
        assert!(list.has(4) && list.has(7) && list.has(9) && !list.has(5));
        for bad in ["4", "\"x\"", "\"4\",", "", "W/4"] {
            assert!(parse_if_none_match(Some(Ok(bad))).is_err(), "{bad}");
        }
        let many = vec!["\"1\""; 65].join(",");
        assert!(parse_if_none_match(Some(Ok(&many))).is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(parse_idempotency_key(None).unwrap(), None);
        let k = "0123456789abcdef0123456789ABCDEF";
        let want = Some(Request { id: 0x0123456789abcdef0123456789abcdef, retry: true });
        assert_eq!(parse_idempotency_key(Some(Ok(k))).unwrap(), want);
        assert_eq!(parse_idempotency_key(Some(Ok("01234567-89ab-cdef-0123-456789abcdef"))).unwrap(), want);
        for bad in ["", "0", "00000000000000000000000000000000", "0123456789abcdef0123456789abcdeg", &format!("{k}0")] {
            let e = parse_idempotency_key(Some(Ok(bad))).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(parse_idempotency_key(Some(Err(()))).is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(None, &l()).unwrap(), Duration::from_millis(5000));
        assert_eq!(parse_timeout(Some(Ok("250")), &l()).unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout(Some(Ok("2s")), &l()).unwrap(), Duration::from_millis(2000));
        assert_eq!(parse_timeout(Some(Ok("500ms")), &l()).unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout(Some(Ok("1m")), &l()).unwrap(), Duration::from_millis(60_000));
        assert_eq!(parse_timeout(Some(Ok("100ms")), &l()).unwrap(), Duration::from_millis(100));
        // Below 100 ms no write could make it: refused up front, not a 503 later.
        for bad in ["0", "5ms", "99", "-5", "abc", "60001", "61s", "2 s"] {
            let e = parse_timeout(Some(Ok(bad)), &l()).unwrap_err();
            assert_eq!(e.status, actix_web::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn an_acquires_deadline_follows_its_wait() {
        let ms = Duration::from_millis;
        // Short waits keep the default deadline; long ones get wait + margin.
        assert_eq!(wait_deadline(None, 0, &l()).unwrap(), ms(5_000));
        assert_eq!(wait_deadline(None, 3_000, &l()).unwrap(), ms(5_000));
        assert_eq!(wait_deadline(None, 20_000, &l()).unwrap(), ms(21_000));
        assert_eq!(wait_deadline(None, 59_000, &l()).unwrap(), ms(60_000));
        let e = wait_deadline(None, 59_001, &l()).unwrap_err().message;
        assert!(e.starts_with("wait_ms must be at most 59000"), "{e}");
        // An explicit deadline is kept, and the wait must end inside it.
        assert_eq!(wait_deadline(Some(Ok("30s")), 20_000, &l()).unwrap(), ms(30_000));
        assert!(wait_deadline(Some(Ok("2s")), 2_000, &l()).is_err());
        assert!(wait_deadline(Some(Ok("nope")), 0, &l()).is_err());
    }
}
