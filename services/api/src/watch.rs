//! `GET /v1/watch/{key}` and `GET /v1/watch?prefix=P`: the changes to one
//! key, or to every key under a prefix, as a stream of JSON lines (or
//! Server-Sent Events), from now or from a position the client saw.
//!
//! Each shard's leader keeps its recent changes (the `events` log of its
//! applied Raft entries); the stream long-polls every shard it watches and
//! writes what comes back. A key is on one shard, so its events arrive
//! once each and in log order; a prefix spans every shard, and the stream
//! interleaves them as they come (in order per key, not across keys).
//!
//! A position says, per shard, the log index everything up to which was
//! delivered: `3.120,5.88` (shard.index, comma-separated). Every event
//! carries the position just after it; a client that reconnects with
//! `?from=<position>` (or `Last-Event-ID`) misses nothing and sees nothing
//! twice. A position older than a shard keeps answers 410 `compacted`
//! before the stream starts (or ends a running stream with a `compacted`
//! event), naming the oldest position available; the client then reads
//! the keys again and watches from a fresh position, as with etcd.
//!
//! A node follows each watched shard once, whatever the number of streams:
//! streams read their pages from the node's shared feed of the shard
//! (`feed`), and poll the shard itself only to catch up to it.
//!
//! Bounded: a stream polls one page per shard at a time and waits for the
//! client to take it before the next, so a slow reader costs at most a
//! page per shard; one that falls behind what the shard keeps is cut off
//! with `compacted`. A node serves at most `Limits::watchers_max` streams
//! (503 beyond).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGaugeVec};
use ringstore_router::Route;
use ringstore_shared::{ShardId, StoreError};
use ringstore_storage::events::{Event, EventKind, KeyFilter};
use ringstore_storage::{ShardOp, ShardReply};
use serde_json::json;

use crate::error::ApiError;
use crate::params::Params;
use crate::request::parse_key_under;
use crate::scan::b64;
use crate::ApiState;

pub const WATCH_PREFIX: &str = "/v1/watch/";
/// How long one poll waits for a change: a quiet stream gets a `progress`
/// line this often, which keeps proxies from closing it and tells the
/// client its position.
pub const WATCH_POLL_WAIT: Duration = Duration::from_secs(10);
/// Events one poll brings back at most.
pub const WATCH_PAGE_EVENTS: usize = 500;
/// Beyond a poll's wait, the time its answer gets to come back.
const POLL_SLACK: Duration = Duration::from_secs(2);
/// After a failed poll (no leader, node down), the shard is asked again
/// after this; the stream goes on.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Shards a position may name.
const POSITION_SHARDS_MAX: usize = 4096;

static WATCHERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("ringstore_watchers", "Watch streams this node serves", &["node"]).expect("registers once")
});
static WATCH_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_watch_events_sent_total",
        "Events written to watch streams, by kind (put, delete, expire)",
        &["node", "kind"]
    )
    .expect("registers once")
});
static WATCH_ENDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_watch_ends_total",
        "Watch streams ended, by reason: client (it left), compacted (it fell behind what a shard keeps), stopping (the node is draining), refused (over the node's limit)",
        &["node", "reason"]
    )
    .expect("registers once")
});

/// Per shard, the log index up to which a watcher has seen everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position(BTreeMap<ShardId, u64>);

impl Position {
    /// `shard.index` pairs, comma-separated.
    pub fn parse(s: &str) -> Result<Position, ApiError> {
        let bad = || ApiError::bad_request(format!("position {s:?} is not shard.index pairs separated by commas"));
        let mut map = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (shard, index) = part.split_once('.').ok_or_else(bad)?;
            let (shard, index) = (shard.parse().map_err(|_| bad())?, index.parse().map_err(|_| bad())?);
            if map.insert(shard, index).is_some() {
                return Err(ApiError::bad_request(format!("position {s:?} names shard {shard} twice")));
            }
            if map.len() > POSITION_SHARDS_MAX {
                return Err(ApiError::bad_request(format!("a position names at most {POSITION_SHARDS_MAX} shards")));
            }
        }
        if map.is_empty() {
            return Err(bad());
        }
        Ok(Position(map))
    }

    pub fn get(&self, shard: ShardId) -> Option<u64> {
        self.0.get(&shard).copied()
    }

    pub fn set(&mut self, shard: ShardId, index: u64) {
        self.0.insert(shard, index);
    }

    pub fn remove(&mut self, shard: ShardId) {
        self.0.remove(&shard);
    }

    pub fn token(&self) -> String {
        let mut out = String::with_capacity(self.0.len() * 12);
        self.write_token(&mut out);
        out
    }

    /// The token into `out`: once per event per stream, so no allocation.
    fn write_token(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (n, (s, i)) in self.0.iter().enumerate() {
            let sep = if n == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{s}.{i}");
        }
    }
}

/// How the stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `application/x-ndjson`: one JSON object per line.
    Lines,
    /// `text/event-stream`: `event:` the type, `id:` the position, `data:` the JSON.
    Sse,
}

/// One stream line for `kind` with `body` (a JSON object), in `format`.
fn frame(format: Format, kind: &str, position: &str, mut body: serde_json::Value) -> String {
    body["type"] = json!(kind);
    body["position"] = json!(position);
    match format {
        Format::Lines => format!("{body}\n"),
        Format::Sse => format!("event: {kind}\nid: {position}\ndata: {body}\n\n"),
    }
}

/// One event's line, serialized straight from the event: a stream
/// writes one per event it delivers, so no `serde_json::Value` is built.
#[derive(serde::Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    shard: ShardId,
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// `Some(None)`: a put without TTL (`null`); `None`: not a put.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    position: &'a str,
}

/// Writes `e`'s line, at `position`, into `out`.
fn write_event(format: Format, shard: ShardId, e: &Event, position: &str, out: &mut String) {
    let key = std::str::from_utf8(&e.key).ok();
    let value = e.value.as_ref();
    let text = value.and_then(|v| std::str::from_utf8(&v.data).ok());
    let line = EventLine {
        kind: e.kind.as_str(),
        shard,
        index: e.index,
        key,
        key_b64: key.is_none().then(|| b64(&e.key)),
        version: value.map(|v| v.version),
        expires_at_ms: value.map(|v| v.expires_at_ms),
        value: text,
        value_b64: value.filter(|_| text.is_none()).map(|v| b64(&v.data)),
        position,
    };
    // Serializing plain fields into a String cannot fail.
    let json = serde_json::to_string(&line).unwrap_or_default();
    match format {
        Format::Lines => {
            out.push_str(&json);
            out.push('\n');
        }
        Format::Sse => {
            out.push_str("event: ");
            out.push_str(line.kind);
            out.push_str("\nid: ");
            out.push_str(position);
            out.push_str("\ndata: ");
            out.push_str(&json);
            out.push_str("\n\n");
        }
    }
}

/// Writes a page of `shard`'s events into `out`, moving `position` along:
/// after each entry's last event the position is that entry's index, so a
/// client resuming from any event's position gets the rest of its entry.
fn render(
    format: Format,
    position: &mut Position,
    shard: ShardId,
    events: Vec<Event>,
    end: u64,
    out: &mut String,
) -> usize {
    let n = events.len();
    let mut token = String::new();
    let mut events = events.iter().peekable();
    while let Some(e) = events.next() {
        let last_of_entry = events.peek().is_none_or(|next| next.index != e.index);
        position.set(shard, if last_of_entry { e.index } else { e.index - 1 });
        token.clear();
        position.write_token(&mut token);
        write_event(format, shard, e, &token, out);
    }
    position.set(shard, end);
    n
}

/// Counts this node's streams; a slot is held while its stream lives.
struct Slot {
    count: Arc<AtomicUsize>,
    node: String,
    end: &'static str,
    /// Events sent, by kind (put, delete, expire), resolved once.
    sent: [IntCounter; 3],
}

impl Slot {
    fn take(state: &ApiState) -> Result<Slot, ApiError> {
        let max = state.limits.watchers_max;
        let count = state.watchers.clone();
        let node = state.node.to_string();
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            WATCH_ENDS.with_label_values(&[&node, "refused"]).inc();
            return Err(StoreError::Overloaded { queued: max, limit: max }.into());
        }
        WATCHERS.with_label_values(&[&node]).inc();
        let sent = [EventKind::Put, EventKind::Delete, EventKind::Expire]
            .map(|k| WATCH_EVENTS.with_label_values(&[&node, k.as_str()]));
        Ok(Slot { count, node, end: "client", sent })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        WATCHERS.with_label_values(&[&self.node]).dec();
        WATCH_ENDS.with_label_values(&[&self.node, self.end]).inc();
    }
}

type Poll = LocalBoxFuture<'static, (ShardId, Result<ShardReply, StoreError>)>;

struct Watch {
    state: web::Data<ApiState>,
    filter: KeyFilter,
    /// A key watch's key: it follows the key to a new shard after a split.
    key: Option<Vec<u8>>,
    position: Position,
    polls: FuturesUnordered<Poll>,
    format: Format,
    /// What to write before the next poll's answer (the first page).
    pending: Option<String>,
    /// When the stream last wrote.
    last_line: Instant,
    done: bool,
    slot: Slot,
}

/// One long poll of `shard` for events after `after`, sent `delay` from now.
fn poll(
    state: web::Data<ApiState>,
    shard: ShardId,
    filter: KeyFilter,
    after: Option<u64>,
    wait: Duration,
    delay: Duration,
) -> Poll {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // The node's shared feed of the shard, when the stream's position
        // is inside what it keeps; "from now" asks the shard, whose
        // applied index is now.
        if let Some(after) = after {
            if let Some(page) = crate::feed::read(&state, shard, &filter, after, WATCH_PAGE_EVENTS, wait).await {
                crate::feed::count_read(state.node, true);
                return (shard, Ok(page));
            }
        }
        crate::feed::count_read(state.node, false);
        let op = ShardOp::Events { filter, after, max: WATCH_PAGE_EVENTS, wait_ms: wait.as_millis() as u64 };
        // Pinned to the shard whose index the position counts.
        let route = Route { key: Vec::new(), op, timeout: wait + POLL_SLACK, shard: Some(shard) };
        let answer = match state.router.send(route).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable { reason: "router stopped".into() }),
        };
        (shard, answer)
    })
}

impl Watch {
    /// A prefix watch takes in shards split off since it started, from
    /// the start of their history (position 0), which their replicas hold
    /// whole: the split's keys' later events are there and nowhere else.
    fn adopt_new_shards(&mut self) {
        if self.key.is_some() {
            return;
        }
        for shard in self.state.map.load().data_shards() {
            if self.position.get(shard).is_none() {
                tracing::info!(shard, "watch takes in a shard split off since it started");
                self.position.set(shard, 0);
                self.repoll(shard, Duration::ZERO);
            }
        }
    }

    /// `shard` gave the watched key away in a split after delivering all
    /// its events there: go on at the key's new shard from the start of
    /// its history (whole on replicas created by the split; else the
    /// stream ends `compacted`). Until this node's map knows the new
    /// shard, ask the old one again shortly.
    fn follow_key(&mut self, shard: ShardId) {
        let moved_to = self.key.as_ref().and_then(|k| self.state.map.load().shard_for(k)).filter(|s| *s != shard);
        match moved_to {
            Some(to) => {
                tracing::info!(from = shard, to, "watched key moved in a split; following it");
                self.position.remove(shard);
                self.position.set(to, 0);
                self.repoll(to, Duration::ZERO);
            }
            None => self.repoll(shard, RETRY_AFTER),
        }
    }

    fn repoll(&mut self, shard: ShardId, delay: Duration) {
        let after = self.position.get(shard);
        let p = poll(self.state.clone(), shard, self.filter.clone(), after, WATCH_POLL_WAIT, delay);
        self.polls.push(p);
    }

    /// The stream's next chunk; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.pending.take() {
            return Some(Bytes::from(first));
        }
        loop {
            if self.done {
                return None;
            }
            if self.state.draining.load(Ordering::Relaxed) {
                self.done = true;
                self.slot.end = "stopping";
                let body = json!({ "reason": "the node is stopping; reconnect with from=position" });
                return Some(Bytes::from(frame(self.format, "closed", &self.position.token(), body)));
            }
            let (shard, answer) = self.polls.next().await?;
            match answer {
                Ok(ShardReply::Events { events, position: end }) => {
                    let mut out = String::new();
                    for e in &events {
                        self.slot.sent[e.kind as usize].inc();
                    }
                    let quiet = events.is_empty();
                    let end = end.max(self.position.get(shard).unwrap_or(0));
                    render(self.format, &mut self.position, shard, events, end, &mut out);
                    self.repoll(shard, Duration::ZERO);
                    self.adopt_new_shards();
                    if quiet {
                        // A shard's wait ended with nothing: a heartbeat with
                        // the position (the client can resume from here),
                        // unless the stream said something lately.
                        if self.last_line.elapsed() < WATCH_POLL_WAIT / 2 {
                            continue;
                        }
                        out = frame(self.format, "progress", &self.position.token(), json!({}));
                    }
                    self.last_line = Instant::now();
                    return Some(Bytes::from(out));
                }
                Ok(other) => {
                    tracing::warn!(shard, reply = ?other, "watch poll got an unexpected reply");
                    self.repoll(shard, RETRY_AFTER);
                }
                Err(StoreError::Compacted { asked, oldest }) => {
                    self.done = true;
                    self.slot.end = "compacted";
                    tracing::info!(shard, asked, oldest, "watch fell behind what the shard keeps");
                    let body = json!({
                        "shard": shard,
                        "oldest": oldest,
                        "reason": "this stream fell behind what the shard keeps; read the keys again and watch from a new position",
                    });
                    return Some(Bytes::from(frame(self.format, "compacted", &self.position.token(), body)));
                }
                Err(StoreError::WrongShard { .. }) => self.follow_key(shard),
                Err(e) => {
                    tracing::debug!(shard, error = %e, "watch poll failed; asking again");
                    self.repoll(shard, RETRY_AFTER);
                }
            }
        }
    }
}

/// `GET /v1/watch/{key}`.
pub async fn watch_key(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let key = parse_key_under(req.uri().path(), WATCH_PREFIX, &state.limits)?;
    crate::auth::allow(&req, crate::auth::Scope::Read, &key)?;
    let p = Params::parse(req.query_string(), &["from", "format"])?;
    let (format, from) = options(&req, &p)?;
    // Resuming: the shard the position counts on, which follows the key
    // to a new one if it moved since.
    let shard = match &from {
        Some(f) if f.0.len() != 1 => {
            return Err(ApiError::bad_request("a key watch's position names one shard"));
        }
        Some(f) => f.0.keys().next().copied(),
        None => state.map.load().shard_for(&key),
    };
    let shard =
        shard.ok_or_else(|| ApiError::from(StoreError::Unavailable { reason: "no shard owns this key".into() }))?;
    if state.map.load().replicas(shard).is_none() {
        return Err(ApiError::bad_request(format!(
            "the position names shard {shard}, which this cluster does not have; watch from a position this API returned"
        )));
    }
    start(state, format, from, KeyFilter::Exact(key.clone()), Some(key), vec![shard]).await
}

/// `GET /v1/watch?prefix=P`.
pub async fn watch_prefix(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let p = Params::parse(req.query_string(), &["prefix", "from", "format"])?;
    let prefix = p.get("prefix").unwrap_or_default().as_bytes().to_vec();
    if prefix.len() > state.limits.key_bytes_max {
        return Err(ApiError::too_large("prefix", prefix.len(), state.limits.key_bytes_max));
    }
    crate::auth::allow(&req, crate::auth::Scope::Read, &prefix)?;
    let (format, from) = options(&req, &p)?;
    let shards = state.map.load().data_shards();
    start(state, format, from, KeyFilter::Prefix(prefix), None, shards).await
}

/// The stream's format (`?format=`, else `Accept`) and its starting
/// position (`?from=`, else `Last-Event-ID`).
fn options(req: &HttpRequest, p: &Params) -> Result<(Format, Option<Position>), ApiError> {
    let sse_accepted = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let format = match p.one_of("format", &["lines", "sse"])? {
        Some("sse") => Format::Sse,
        Some(_) => Format::Lines,
        None if sse_accepted => Format::Sse,
        None => Format::Lines,
    };
    let last_event_id = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
    let from = match (p.get("from"), last_event_id) {
        (Some(f), _) | (None, Some(f)) => Some(Position::parse(f)?),
        (None, None) => None,
    };
    Ok((format, from))
}

async fn start(
    state: web::Data<ApiState>,
    format: Format,
    from: Option<Position>,
    filter: KeyFilter,
    key: Option<Vec<u8>>,
    shards: Vec<ShardId>,
) -> Result<HttpResponse, ApiError> {
    let slot = Slot::take(&state)?;
    // First pages, not waiting: a compacted position is a 410 before the
    // stream starts, and the start line names where the stream begins.
    // A shard the position does not name (one split off since) is read
    // from its start, which is compacted if it has dropped anything.
    let started = Instant::now();
    let firsts = shards.iter().map(|&shard| {
        let after = from.as_ref().map(|f| f.get(shard).unwrap_or(0));
        poll(state.clone(), shard, filter.clone(), after, Duration::ZERO, Duration::ZERO)
    });
    let firsts = futures::future::join_all(firsts).await;
    let mut position = from.clone().unwrap_or_default();
    let mut out = String::new();
    let (mut compacted, mut moved) = (Vec::new(), Vec::new());
    for (shard, answer) in firsts {
        match answer {
            Ok(ShardReply::Events { events, position: end }) => {
                let mut pending = String::new();
                render(format, &mut position, shard, events, end, &mut pending);
                out.push_str(&pending);
            }
            Ok(other) => return Err(crate::kv::unexpected(other)),
            Err(StoreError::Compacted { oldest, .. }) => compacted.push((shard, oldest)),
            Err(StoreError::WrongShard { .. }) if key.is_some() => moved.push(shard),
            Err(e) => return Err(e.into()),
        }
    }
    if !compacted.is_empty() {
        let mut oldest = position.clone();
        for (shard, o) in &compacted {
            oldest.set(*shard, *o);
        }
        let shards: Vec<String> = compacted.iter().map(|(s, _)| s.to_string()).collect();
        return Err(ApiError::new(
            actix_web::http::StatusCode::GONE,
            "compacted",
            format!(
                "the position is older than shard {} keeps; the oldest available position is {}: read the keys again, then watch from a new position",
                shards.join(", "),
                oldest.token()
            ),
        ));
    }
    let head = frame(format, "start", &position.token(), json!({ "shards": shards.len() }));
    let first = head + &out;
    tracing::debug!(shards = shards.len(), took_ms = started.elapsed().as_millis() as u64, "watch started");
    let mut watch = Watch {
        state,
        filter,
        key,
        position,
        polls: FuturesUnordered::new(),
        format,
        pending: Some(first),
        last_line: Instant::now(),
        done: false,
        slot,
    };
    for shard in shards {
        match moved.contains(&shard) {
            true => watch.follow_key(shard),
            false => watch.repoll(shard, Duration::ZERO),
        }
    }
    let body = futures::stream::unfold(watch, |mut w| async move {
        let chunk = w.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), w))
    });
    let content_type = match format {
        Format::Lines => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies (nginx) must pass each line on as it comes.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringstore_shared::value::StoredValue;

    #[test]
    fn a_position_round_trips_and_refuses_what_it_cannot_read() {
        let p = Position::parse("5.88,3.120").unwrap();
        assert_eq!((p.get(3), p.get(5), p.get(4)), (Some(120), Some(88), None));
        assert_eq!(p.token(), "3.120,5.88");
        for bad in ["", "3", "3.x", "a.1", "3.1,3.2", "-1.2", "3.1.2"] {
            let e = Position::parse(bad).unwrap_err();
            assert_eq!(e.status, actix_web::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    fn put(index: u64, key: &str) -> Event {
        let value = StoredValue { version: index, expires_at_ms: None, data: b"v".to_vec() };
        Event { index, kind: EventKind::Put, key: key.as_bytes().to_vec(), value: Some(value) }
    }

    #[test]
    fn each_event_carries_the_position_to_resume_after_it() {
        let mut position = Position::parse("1.4,2.10").unwrap();
        let mut out = String::new();
        // Entry 11 wrote two keys (a batch), entry 12 one.
        let events = vec![put(11, "a"), put(11, "b"), put(12, "c")];
        assert_eq!(render(Format::Lines, &mut position, 2, events, 15, &mut out), 3);
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let positions: Vec<&str> = lines.iter().map(|l| l["position"].as_str().unwrap()).collect();
        assert_eq!(positions, vec!["1.4,2.10", "1.4,2.11", "1.4,2.12"]);
        assert_eq!(lines[0]["type"], "put");
        assert_eq!(lines[0]["key"], "a");
        assert_eq!(lines[0]["value"], "v");
        assert_eq!(lines[0]["version"], 11);
        assert!(lines[0]["expires_at_ms"].is_null() && lines[0].get("expires_at_ms").is_some());
        // After the page, the position is where the shard's poll ended.
        assert_eq!(position.token(), "1.4,2.15");
    }

    #[test]
    fn sse_frames_name_the_event_and_its_position() {
        let f = frame(Format::Sse, "delete", "3.7", json!({ "key": "k" }));
        assert!(f.starts_with("event: delete\nid: 3.7\ndata: {"), "{f}");
        assert!(f.ends_with("}\n\n"));
        let binary = Event { index: 2, kind: EventKind::Delete, key: vec![0xff], value: None };
        let mut out = String::new();
        write_event(Format::Sse, 1, &binary, "1.2", &mut out);
        assert!(out.starts_with("event: delete\nid: 1.2\ndata: {"), "{out}");
        let o: serde_json::Value =
            serde_json::from_str(out.lines().nth(2).unwrap().trim_start_matches("data: ")).unwrap();
        assert_eq!(o["key_b64"], "/w==");
        assert_eq!((o["shard"].as_u64(), o["index"].as_u64(), o["position"].as_str()), (Some(1), Some(2), Some("1.2")));
        assert!(o.get("value").is_none() && o.get("expires_at_ms").is_none() && o.get("key").is_none());
        let mut out = String::new();
        let bytes = StoredValue { version: 2, expires_at_ms: Some(9), data: vec![0, 0xff] };
        write_event(Format::Lines, 1, &Event { value: Some(bytes), kind: EventKind::Put, ..binary }, "1.2", &mut out);
        let o: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!((o["value_b64"].as_str(), o["expires_at_ms"].as_u64()), (Some("AP8="), Some(9)));
    }
}
