//! [`Watcher`]: a key's or a prefix's changes from `GET /v1/watch`, as a
//! stream that outlives a node: when a connection breaks it reconnects to
//! the next endpoint from the last position it delivered, so the caller
//! sees every change once, in order per key.

use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::endpoints::Endpoints;
use crate::kv::KvError;

type Body = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>>>;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
    /// Deleted when its TTL ran out.
    Expire,
}

/// One change, with the position to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: String,
    /// A put's value; `None` for deletes and expiries.
    pub value: Option<Vec<u8>>,
    /// A put's version (the log index that wrote it); 0 otherwise.
    pub version: u64,
    pub position: String,
}

/// Reconnects a broken stream at most this many times in a row.
const RECONNECTS_MAX: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// A stream that says nothing (not even its 10 s heartbeat) for this long is
/// taken as broken.
const SILENCE_MAX: Duration = Duration::from_secs(30);

pub struct Watcher {
    endpoints: Endpoints,
    /// `/v1/watch/{key}` or `/v1/watch?prefix=P`.
    path: String,
    position: Option<String>,
    body: Option<Body>,
    buf: Vec<u8>,
}

impl Watcher {
    pub(crate) fn new(endpoints: Endpoints, path: String, from: Option<String>) -> Watcher {
        Watcher { endpoints, path, position: from, body: None, buf: Vec::new() }
    }

    /// Where the stream is: resume a later watch from here to miss nothing.
    /// `None` until the first line arrives (for a watch from now).
    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    async fn connect(&mut self) -> Result<(), KvError> {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let path = match &self.position {
            Some(p) => format!("{}{sep}from={p}", self.path),
            None => self.path.clone(),
        };
        let url = format!("{}{path}", self.endpoints.current());
        let mut res = self.endpoints.get(url).send().await.map_err(|e| KvError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.body().limit(1 << 20).await.unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            return Err(match status {
                410 => KvError::Compacted { message: body },
                s => KvError::Server { status: s, body },
            });
        }
        self.body = Some(Box::pin(res));
        Ok(())
    }

    /// The next line of the current stream; `None` if it broke or fell silent.
    async fn line(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line[..i]).ok();
            }
            let body = self.body.as_mut()?;
            match tokio::time::timeout(SILENCE_MAX, body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next change. Reconnects (to the next endpoint, from the last
    /// position) when the stream breaks; [`KvError::Compacted`] when the
    /// position is older than a shard keeps: read the keys again and
    /// start a new watch.
    pub async fn next(&mut self) -> Result<Change, KvError> {
        let mut failures = 0;
        loop {
            if self.body.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(e @ KvError::Compacted { .. }) => return Err(e),
                    Err(e) if failures >= RECONNECTS_MAX => return Err(e),
                    Err(_) => {
                        failures += 1;
                        self.endpoints.rotate();
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            }
            let Some(line) = self.line().await else {
                // Broken or silent: the next connection resumes.
                self.body = None;
                self.buf.clear();
                self.endpoints.rotate();
                continue;
            };
            failures = 0;
            if let Some(p) = line["position"].as_str() {
                self.position = Some(p.to_string());
            }
            let kind = match line["type"].as_str() {
                Some("put") => ChangeKind::Put,
                Some("delete") => ChangeKind::Delete,
                Some("expire") => ChangeKind::Expire,
                Some("compacted") => return Err(KvError::Compacted { message: line.to_string() }),
                // start, progress, closed (the node stops: reconnect).
                Some("closed") => {
                    self.body = None;
                    self.endpoints.rotate();
                    continue;
                }
                _ => continue,
            };
            return Ok(change(kind, &line, self.position.clone().unwrap_or_default()));
        }
    }
}

fn change(kind: ChangeKind, line: &Value, position: String) -> Change {
    let b64 = |v: &Value| v.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
    let key = match line["key"].as_str() {
        Some(k) => k.to_string(),
        None => b64(&line["key_b64"]).map(|k| String::from_utf8_lossy(&k).into_owned()).unwrap_or_default(),
    };
    let value = match (line["value"].as_str(), kind) {
        (Some(v), _) => Some(v.as_bytes().to_vec()),
        (None, ChangeKind::Put) => b64(&line["value_b64"]),
        _ => None,
    };
    Change { kind, key, value, version: line["version"].as_u64().unwrap_or(0), position }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_changes() {
        let line: Value = serde_json::from_str(
            r#"{"type":"put","key":"a","value_b64":"AP8=","version":7,"shard":2,"index":7,"position":"2.7"}"#,
        )
        .unwrap();
        let c = change(ChangeKind::Put, &line, "2.7".into());
        assert_eq!(c.value, Some(vec![0, 255]));
        assert_eq!((c.key.as_str(), c.version, c.position.as_str()), ("a", 7, "2.7"));
        let line: Value = serde_json::from_str(r#"{"type":"delete","key":"a","position":"2.9"}"#).unwrap();
        assert_eq!(change(ChangeKind::Delete, &line, "2.9".into()).value, None);
    }
}
