//! A client for ringstore's REST API, used by `ringstore lock`, the tests
//! and the load generator: locks here, keys and batches in [`kv`],
//! transactions in [`txn`], watches in [`watch`].
//!
//! [`LockClient`] talks HTTP to any node (the cluster forwards to the
//! leader) and rotates over its endpoints when one does not answer. Every
//! command carries an `Idempotency-Key`, so a try whose outcome is unknown
//! is sent again, to another node, and still applies once.
//! A granted [`Lease`] carries the lock session (what re-enters, refreshes
//! and releases the lock; the owner string is only a label), the fencing
//! token and a local deadline
//! computed from a monotonic clock started *before* the request was sent,
//! so the holder never believes in a lease longer than the leader does.
//! Runs on an actix (tokio current-thread) runtime, like `awc`.

use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

mod endpoints;
pub mod kv;
pub mod tls;
pub mod txn;
pub mod watch;
use endpoints::{Call, Endpoints};
pub use kv::{BatchOp, BatchResult, KvClient, KvError};
use serde::Deserialize;
use serde_json::json;
pub use txn::{Cmp, Compare, TxnAnswer, TxnOp, TxnResult};
pub use watch::{Change, ChangeKind, Watcher};

/// Characters escaped in a lock name or key inside a URL path (`/` is
/// kept: names may nest; braces of hash tags are escaped, as RFC 3986
/// wants).
const PATH: &AsciiSet =
    &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?').add(b'<').add(b'>').add(b'`').add(b'{').add(b'}');
/// And in a query value: the separators too.
const QUERY: &AsciiSet = &PATH.add(b'&').add(b'=').add(b'+');

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Held by someone else (after the wait, if any).
    #[error("lock is held by {holder:?} for another {lease_remaining_ms:?} ms")]
    Held { holder: Option<String>, lease_remaining_ms: Option<u64> },
    /// Release, refresh or re-entry by a session/token that no longer
    /// holds the lock (its lease ended).
    #[error("this session and token no longer hold the lock (held by {holder:?})")]
    NotHolder { holder: Option<String> },
    #[error("ringstore answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("no node answered: {0}")]
    Transport(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub owner: String,
    /// 32 hex digits; never shown to anyone but this holder.
    pub session: String,
    pub token: u64,
    pub hold_count: u32,
    /// Until when this holder may act on the lock (local monotonic clock).
    pub valid_until: Instant,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LockStatus {
    pub held: bool,
    pub holder: Option<String>,
    pub token: Option<u64>,
    pub hold_count: u32,
    pub lease_remaining_ms: Option<u64>,
    pub last_token: u64,
    pub waiters: Vec<String>,
}

#[derive(Deserialize)]
struct Grant {
    token: u64,
    hold_count: u32,
    lease_remaining_ms: u64,
    /// Only acquires answer it; a refresh keeps the lease's.
    session: Option<String>,
}

#[derive(Deserialize)]
struct Conflict {
    holder: Option<String>,
    lease_remaining_ms: Option<u64>,
}

#[derive(Clone)]
pub struct LockClient {
    endpoints: Endpoints,
}

/// Extra time the HTTP request gets beyond the server-side wait.
const REQUEST_SLACK: Duration = Duration::from_secs(5);
/// Answers of lock commands are small.
const ANSWER_BYTES_MAX: usize = 1 << 20;

impl LockClient {
    /// `endpoints`: node base URLs, e.g. `http://127.0.0.1:8080`.
    pub fn new(endpoints: Vec<String>) -> Self {
        LockClient { endpoints: Endpoints::new(endpoints, Duration::from_secs(120)) }
    }

    /// Sends `token` as `Authorization: Bearer` (nodes run with `--auth-tokens`).
    pub fn with_token(mut self, token: &str) -> Self {
        self.endpoints.set_token(token);
        self
    }

    /// Speaks HTTPS to `https://` endpoints, trusting `tls`'s roots
    /// ([`tls::client_config`] of the cluster CA).
    pub fn with_tls(mut self, tls: &std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.endpoints.set_tls(tls);
        self
    }

    /// Sends one lock command and returns the answer, by the shared retry
    /// loop ([`Endpoints::send`]): the `Idempotency-Key` kept across tries
    /// makes the shard apply the command once and answer every try with
    /// the first outcome, so a retried acquire never adds a second hold
    /// and a retried release never drops two.
    async fn post(
        &self,
        name: &str,
        action: &str,
        body: serde_json::Value,
        wait: Duration,
    ) -> Result<(u16, Vec<u8>), LockError> {
        let path = format!("/v1/locks/{}/{action}", utf8_percent_encode(name, PATH));
        let call = Call {
            method: awc::http::Method::POST,
            path: &path,
            body: Some(("application/json", body.to_string().into_bytes())),
            headers: &[],
            deadline_header: true,
            answer_max: ANSWER_BYTES_MAX,
        };
        self.endpoints.send(call, Instant::now() + wait + REQUEST_SLACK).await.map_err(LockError::Transport)
    }

    /// Acquires `name` in a new session labelled `owner`, waiting up to
    /// `wait` in the FIFO queue.
    pub async fn acquire(&self, name: &str, owner: &str, ttl: Duration, wait: Duration) -> Result<Lease, LockError> {
        let sent = Instant::now();
        let body = json!({"owner": owner, "ttl_ms": ttl.as_millis() as u64, "wait_ms": wait.as_millis() as u64});
        let (status, bytes) = self.post(name, "acquire", body, wait).await?;
        self.grant(name, owner, None, sent, status, &bytes, true)
    }

    /// Acquires the lock `lease` holds once more (reentrancy): one more
    /// hold, same token, the lease renewed to at least `ttl`.
    pub async fn reenter(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let sent = Instant::now();
        let body = json!({"owner": lease.owner, "session": lease.session, "ttl_ms": ttl.as_millis() as u64});
        let (status, bytes) = self.post(&lease.name, "acquire", body, Duration::ZERO).await?;
        self.grant(&lease.name, &lease.owner, Some(&lease.session), sent, status, &bytes, false)
    }

    /// Extends the lease to `ttl` from now.
    pub async fn refresh(&self, lease: &Lease, ttl: Duration) -> Result<Lease, LockError> {
        let sent = Instant::now();
        let body = json!({"session": lease.session, "token": lease.token, "ttl_ms": ttl.as_millis() as u64});
        let (status, bytes) = self.post(&lease.name, "refresh", body, Duration::ZERO).await?;
        self.grant(&lease.name, &lease.owner, Some(&lease.session), sent, status, &bytes, false)
    }

    /// Drops one hold; returns the holds left (0: the lock is free).
    pub async fn release(&self, lease: &Lease) -> Result<u32, LockError> {
        let body = json!({"session": lease.session, "token": lease.token});
        let (status, bytes) = self.post(&lease.name, "release", body, Duration::ZERO).await?;
        match status {
            200 => {
                let v: serde_json::Value = parse(&bytes)?;
                Ok(v["hold_count"].as_u64().unwrap_or(0) as u32)
            }
            409 => Err(LockError::NotHolder { holder: parse::<Conflict>(&bytes)?.holder }),
            s => Err(server(s, &bytes)),
        }
    }

    pub async fn status(&self, name: &str) -> Result<LockStatus, LockError> {
        let url = format!("{}/v1/locks/{}", self.endpoints.urls[0], utf8_percent_encode(name, PATH));
        let mut r = self.endpoints.get(url).send().await.map_err(|e| LockError::Transport(e.to_string()))?;
        let bytes = r.body().await.map_err(|e| LockError::Transport(e.to_string()))?;
        match r.status().as_u16() {
            200 => parse(&bytes),
            s => Err(server(s, &bytes)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        name: &str,
        owner: &str,
        session: Option<&str>,
        sent: Instant,
        status: u16,
        bytes: &[u8],
        acquire: bool,
    ) -> Result<Lease, LockError> {
        match status {
            200 => {
                let g: Grant = parse(bytes)?;
                let session = match (g.session, session) {
                    (Some(s), _) => s,
                    (None, Some(s)) => s.to_string(),
                    (None, None) => return Err(server(200, b"a grant without a session")),
                };
                Ok(Lease {
                    name: name.to_string(),
                    owner: owner.to_string(),
                    session,
                    token: g.token,
                    hold_count: g.hold_count,
                    valid_until: sent + Duration::from_millis(g.lease_remaining_ms),
                })
            }
            409 => {
                let c: Conflict = parse(bytes)?;
                Err(if acquire {
                    LockError::Held { holder: c.holder, lease_remaining_ms: c.lease_remaining_ms }
                } else {
                    LockError::NotHolder { holder: c.holder }
                })
            }
            s => Err(server(s, bytes)),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, LockError> {
    serde_json::from_slice(b).map_err(|e| LockError::Server { status: 200, body: format!("unparsable answer: {e}") })
}

fn server(status: u16, b: &[u8]) -> LockError {
    LockError::Server { status, body: String::from_utf8_lossy(b).into_owned() }
}

/// `req` with `Authorization: Bearer {token}`, if there is a token.
pub fn with_bearer(req: awc::ClientRequest, token: Option<&str>) -> awc::ClientRequest {
    match token {
        Some(t) => req.insert_header(("authorization", format!("Bearer {t}"))),
        None => req,
    }
}

/// `GET {endpoint}{path}` as JSON (admin views such as `/v1/cluster`).
pub async fn get_json(
    endpoint: &str,
    path: &str,
    token: Option<&str>,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
) -> Result<serde_json::Value, LockError> {
    let http = tls::http_client(Duration::from_secs(10), tls);
    let mut r = with_bearer(http.get(format!("{endpoint}{path}")), token)
        .send()
        .await
        .map_err(|e| LockError::Transport(e.to_string()))?;
    let bytes = r.body().limit(64 << 20).await.map_err(|e| LockError::Transport(e.to_string()))?;
    match r.status().as_u16() {
        200 => parse(&bytes),
        s => Err(server(s, &bytes)),
    }
}
