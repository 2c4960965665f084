//! [`KvClient`]: keys and batches over the REST API. Writes carry an
//! `Idempotency-Key` drawn once per call and kept across tries, so a try
//! whose outcome is unknown (lost answer, dead node, 503) is sent again to
//! the next endpoint and still applies once; a batch's items are named by
//! that key plus their index on the server.

use std::time::{Duration, Instant};

use base64::Engine as _;
use percent_encoding::utf8_percent_encode;
use serde_json::{json, Value};

use crate::endpoints::{Call, Endpoints};
use crate::{PATH, QUERY};

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// `If-Match` / `if_version` not met; the key's version now, if any.
    #[error("precondition failed: {message}")]
    PreconditionFailed { message: String },
    #[error("ringstore answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("no node answered: {0}")]
    Transport(String),
    /// A watch's position is older than a shard keeps (410).
    #[error("the watch position is compacted: {message}")]
    Compacted { message: String },
}

/// One item of [`KvClient::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put { key: String, value: Vec<u8>, if_version: Option<u64> },
    Get { key: String },
    Delete { key: String, if_version: Option<u64> },
}

/// One item's answer, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchResult {
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    Value {
        value: Vec<u8>,
        version: u64,
    },
    /// What the single-key route would have answered (404 for a get of a
    /// missing key, 412 for an unmet `if_version`, ...).
    Failed {
        status: u16,
        code: String,
        message: String,
    },
}

#[derive(Clone)]
pub struct KvClient {
    endpoints: Endpoints,
    timeout: Duration,
}

const OCTETS: &str = "application/octet-stream";
/// Answers a call takes at most (a batch's, a scan's).
const ANSWER_BYTES_MAX: usize = 64 << 20;

impl KvClient {
    /// `endpoints`: node base URLs; `timeout`: each call's deadline (the
    /// server's `X-Request-Timeout` too, at most 60 s).
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        // Per request timeouts are set on each try; this one only bounds
        // a long poll's (59 s at most, plus slack).
        KvClient { endpoints: Endpoints::new(endpoints, Duration::from_secs(62)), timeout }
    }

    /// Sends `token` as `Authorization: Bearer` (nodes run with `--auth-tokens`).
    pub fn with_token(mut self, token: &str) -> Self {
        self.endpoints.set_token(token);
        self
    }

    /// Speaks HTTPS to `https://` endpoints, trusting `tls`'s roots
    /// ([`crate::tls::client_config`] of the cluster CA).
    pub fn with_tls(mut self, tls: &std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.endpoints.set_tls(tls);
        self
    }

    /// Sends until an answer other than 503 arrives, rotating endpoints,
    /// within the client's timeout (which the server is told as
    /// `X-Request-Timeout`); or, for a long poll, within `poll` and with
    /// the server's deadline following the poll's wait.
    pub(crate) async fn send(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        headers: &[(&str, String)],
        poll: Option<Duration>,
    ) -> Result<(u16, Vec<u8>), KvError> {
        let until = Instant::now() + poll.unwrap_or(self.timeout);
        let call = Call { method, path, body, headers, deadline_header: poll.is_none(), answer_max: ANSWER_BYTES_MAX };
        self.endpoints.send(call, until).await.map_err(KvError::Transport)
    }

    /// Follows `key`'s changes from `from` (a position an earlier
    /// [`Change`](crate::Change) carried) or from now.
    pub fn watch(&self, key: &str, from: Option<String>) -> crate::Watcher {
        let path = format!("/v1/watch/{}", utf8_percent_encode(key, PATH));
        crate::Watcher::new(self.endpoints.clone(), path, from)
    }

    /// Follows the changes of every key starting with `prefix`, on every
    /// shard (in order per key).
    pub fn watch_prefix(&self, prefix: &str, from: Option<String>) -> crate::Watcher {
        let path = format!("/v1/watch?prefix={}", utf8_percent_encode(prefix, QUERY));
        crate::Watcher::new(self.endpoints.clone(), path, from)
    }

    fn key_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, PATH))
    }

    /// The value and version of `key` (a linearizable read through
    /// `?meta`, which carries the version), or `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        let path = format!("{}?meta=true", Self::key_path(key));
        let (status, body) = self.send(awc::http::Method::GET, &path, None, &[], None).await?;
        versioned(status, &body)
    }

    /// Waits until `key`'s version is not `index` (0: absent) or `wait`
    /// ends (at most 59 s; the client's timeout should exceed it), then
    /// returns the key as it is (a linearizable read). Loop on it with
    /// the version returned (0 for `None`) to follow a key.
    pub async fn wait_for_change(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Option<(Vec<u8>, u64)>, KvError> {
        let path = format!("{}?meta=true&index={index}&wait={}ms", Self::key_path(key), wait.as_millis());
        let budget = wait + Duration::from_secs(2);
        let (status, body) = self.send(awc::http::Method::GET, &path, None, &[], Some(budget)).await?;
        versioned(status, &body)
    }

    /// Writes `value` (only over version `if_version`, when given) and
    /// returns the new version.
    pub async fn put(&self, key: &str, value: &[u8], if_version: Option<u64>) -> Result<u64, KvError> {
        let headers: Vec<(&str, String)> = if_version.map(|v| ("if-match", format!("\"{v}\""))).into_iter().collect();
        let (status, body) = self
            .send(awc::http::Method::PUT, &Self::key_path(key), Some((OCTETS, value.to_vec())), &headers, None)
            .await?;
        match status {
            200 => Ok(json_of(&body)?["version"].as_u64().unwrap_or(0)),
            s => Err(error(s, &body)),
        }
    }

    /// Deletes `key`; `Ok(false)` if it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let (status, body) = self.send(awc::http::Method::DELETE, &Self::key_path(key), None, &[], None).await?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(error(s, &body)),
        }
    }

    /// Deletes every key starting with `prefix` (not empty), page by page
    /// on every shard, and returns how many it deleted. Not atomic: a key
    /// written under the prefix meanwhile may stay. Sent again after a
    /// timeout, it goes on where it stopped.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, KvError> {
        let path = format!("/v1/kv?prefix={}", utf8_percent_encode(prefix, QUERY));
        let (status, body) = self.send(awc::http::Method::DELETE, &path, None, &[], None).await?;
        match status {
            200 => Ok(json_of(&body)?["deleted"].as_u64().unwrap_or(0)),
            s => Err(error(s, &body)),
        }
    }

    /// Sends `ops` as one `POST /v1/kv:batch` (at most 1,000): each item
    /// succeeds or fails alone, one key's items in order.
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, KvError> {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let items: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value, if_version } => {
                    json!({ "op": "put", "key": key, "value_b64": b64(value), "if_version": if_version })
                }
                BatchOp::Get { key } => json!({ "op": "get", "key": key }),
                BatchOp::Delete { key, if_version } => json!({ "op": "delete", "key": key, "if_version": if_version }),
            })
            .collect();
        let body = json!({ "ops": items }).to_string().into_bytes();
        let (status, answer) =
            self.send(awc::http::Method::POST, "/v1/kv:batch", Some(("application/json", body)), &[], None).await?;
        if status != 200 {
            return Err(error(status, &answer));
        }
        let v = json_of(&answer)?;
        let results = v["results"].as_array().ok_or_else(|| unparsable("no results"))?;
        results
            .iter()
            .zip(ops)
            .map(|(r, op)| {
                if r["ok"] != true {
                    return Ok(BatchResult::Failed {
                        status: r["status"].as_u64().unwrap_or(0) as u16,
                        code: r["error"]["code"].as_str().unwrap_or_default().to_string(),
                        message: r["error"]["message"].as_str().unwrap_or_default().to_string(),
                    });
                }
                let version = r["version"].as_u64().unwrap_or(0);
                Ok(match op {
                    BatchOp::Put { .. } => BatchResult::Written { version },
                    BatchOp::Delete { .. } => BatchResult::Deleted { version },
                    BatchOp::Get { .. } => BatchResult::Value { value: value_of(r)?, version },
                })
            })
            .collect()
    }
}

/// A `?meta` answer: the value and its version, `None` for a 404.
fn versioned(status: u16, body: &[u8]) -> Result<Option<(Vec<u8>, u64)>, KvError> {
    match status {
        200 => {
            let v = json_of(body)?;
            Ok(Some((value_of(&v)?, v["version"].as_u64().unwrap_or(0))))
        }
        404 => Ok(None),
        s => Err(error(s, body)),
    }
}

pub(crate) fn json_of(b: &[u8]) -> Result<Value, KvError> {
    serde_json::from_slice(b).map_err(|e| unparsable(&e.to_string()))
}

pub(crate) fn unparsable(what: &str) -> KvError {
    KvError::Server { status: 200, body: format!("unparsable answer: {what}") }
}

/// `value` (text) or `value_b64` of an answer object.
pub(crate) fn value_of(v: &Value) -> Result<Vec<u8>, KvError> {
    match (v["value"].as_str(), v["value_b64"].as_str()) {
        (Some(t), _) => Ok(t.as_bytes().to_vec()),
        (None, Some(b)) => {
            base64::engine::general_purpose::STANDARD.decode(b).map_err(|e| unparsable(&format!("value_b64: {e}")))
        }
        (None, None) => Err(unparsable("no value")),
    }
}

pub(crate) fn error(status: u16, body: &[u8]) -> KvError {
    let text = String::from_utf8_lossy(body).into_owned();
    match status {
        412 => KvError::PreconditionFailed { message: text },
        s => KvError::Server { status: s, body: text },
    }
}
