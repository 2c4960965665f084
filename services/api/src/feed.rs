//! Shared watch feeds: one long poll per shard per node, however many
//! watch streams the node serves.
//!
//! A [`Feed`] follows every change of one shard (an `Events` poll with an
//! empty prefix, on the shard's leader) into a bounded [`EventLog`] of its
//! own, and wakes the streams waiting on it. A stream whose position lies
//! inside that log reads its pages there, filtered for its key or prefix;
//! one that is behind the log (it resumed from an old position, or fell
//! behind) or starts "from now" polls the shard itself until it is inside.
//! So the shard's leader serves one poll per node instead of one per
//! stream, and a node with a thousand streams of one prefix asks each shard
//! once per page, not a thousand times.
//!
//! The log holds the shard's events in order with their indexes, the same
//! pages a direct poll would read: a stream sees every change once and in
//! order whichever way it reads. A feed nobody read for [`FEED_IDLE`] stops.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::web;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use ringstore_router::Route;
use ringstore_shared::{ShardId, StoreError};
use ringstore_storage::events::{EventLog, KeyFilter};
use ringstore_storage::{ShardOp, ShardReply};

use crate::ApiState;

/// Events one feed keeps (a stream further behind polls its shard).
pub const FEED_EVENTS_MAX: usize = 20_000;
/// And their bytes.
pub const FEED_BYTES_MAX: usize = 8 << 20;
/// Events one poll of the feed asks for (the shard's page limit).
const FEED_PAGE_EVENTS: usize = 1000;
/// A feed nobody read for this long stops (a quiet stream reads at least
/// every `WATCH_POLL_WAIT`).
pub const FEED_IDLE: Duration = Duration::from_secs(30);
/// How long the feed's poll waits at the shard.
const FEED_WAIT: Duration = Duration::from_secs(10);
const FEED_SLACK: Duration = Duration::from_secs(2);
const FEED_RETRY: Duration = Duration::from_millis(200);

static FEEDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ringstore_watch_feeds",
        "Shared watch feeds this node runs (one per watched shard)",
        &["node"]
    )
    .expect("registers once")
});
static FEED_POLLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_watch_feed_polls_total",
        "Polls of a shard by this node's shared watch feeds, by result: events, empty, compacted (the feed fell behind and starts again from now), error",
        &["node", "result"]
    )
    .expect("registers once")
});
static STREAM_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_watch_stream_reads_total",
        "Pages watch streams read, by source: feed (the node's shared feed) or shard (a poll of the shard, for a stream behind its feed or starting)",
        &["node", "source"]
    )
    .expect("registers once")
});

/// Counts a stream's page by where it came from.
pub fn count_read(node: u64, from_feed: bool) {
    let source = if from_feed { "feed" } else { "shard" };
    STREAM_READS.with_label_values(&[&node.to_string(), source]).inc();
}

/// The node's feeds, by shard.
#[derive(Default)]
pub struct Feeds {
    shards: Mutex<HashMap<ShardId, Arc<Feed>>>,
}

pub struct Feed {
    log: Mutex<EventLog>,
    /// The log's applied position; sent on every page.
    applied: tokio::sync::watch::Sender<u64>,
    /// When a stream last asked for this feed (under the registry lock).
    last_read: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays valid if a holder panicked: every update is whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Feeds {
    /// `shard`'s feed, started on this worker if the node has none.
    fn feed(&self, shard: ShardId, state: &web::Data<ApiState>) -> Arc<Feed> {
        let mut shards = lock(&self.shards);
        if let Some(f) = shards.get(&shard) {
            *lock(&f.last_read) = Instant::now();
            return f.clone();
        }
        // Nothing is known until its first page (position 0 until then):
        // streams poll the shard meanwhile.
        let log = EventLog::with_limits(0, false, FEED_EVENTS_MAX, FEED_BYTES_MAX);
        let f = Arc::new(Feed {
            log: Mutex::new(log),
            applied: tokio::sync::watch::Sender::new(0),
            last_read: Mutex::new(Instant::now()),
        });
        shards.insert(shard, f.clone());
        FEEDS.with_label_values(&[&state.node.to_string()]).inc();
        tracing::info!(node = state.node, shard, "watch feed started");
        actix_web::rt::spawn(run(shard, f.clone(), state.clone()));
        f
    }

    /// Stops `feed` if no stream asked for it lately, or anyway when
    /// `gone` (its shard left the map); under the registry lock, so a
    /// stream never gets a feed that has stopped.
    fn stop_if_idle(&self, shard: ShardId, feed: &Arc<Feed>, gone: bool) -> bool {
        let mut shards = lock(&self.shards);
        if !gone && lock(&feed.last_read).elapsed() < FEED_IDLE {
            return false;
        }
        if shards.get(&shard).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            shards.remove(&shard);
        }
        true
    }
}

/// The feed's loop: poll the shard for every change after the log's
/// position and append what comes back.
async fn run(shard: ShardId, feed: Arc<Feed>, state: web::Data<ApiState>) {
    let node = state.node.to_string();
    let polls = |result: &str| FEED_POLLS.with_label_values(&[&node, result]).inc();
    let mut after: Option<u64> = None;
    loop {
        let gone = state.map.load().replicas(shard).is_none();
        if state.feeds.stop_if_idle(shard, &feed, gone) {
            break;
        }
        let op = ShardOp::Events {
            filter: KeyFilter::Prefix(Vec::new()),
            after,
            max: FEED_PAGE_EVENTS,
            wait_ms: if after.is_some() { FEED_WAIT.as_millis() as u64 } else { 0 },
        };
        let route = Route { key: Vec::new(), op, timeout: FEED_WAIT + FEED_SLACK, shard: Some(shard) };
        let answer = state
            .router
            .send(route)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable { reason: "router stopped".into() }));
        match answer {
            Ok(ShardReply::Events { events, position }) => {
                polls(if events.is_empty() { "empty" } else { "events" });
                let position = {
                    let mut log = lock(&feed.log);
                    match after {
                        // The first page, or the first after falling behind:
                        // the log starts here, nothing before it is known.
                        None => log.restored(position),
                        Some(_) => {
                            for e in events {
                                log.push(e);
                            }
                            log.advance(position);
                        }
                    }
                    log.applied()
                };
                after = Some(position);
                feed.applied.send_replace(position);
            }
            Err(StoreError::Compacted { asked, oldest }) => {
                polls("compacted");
                tracing::warn!(shard, asked, oldest, "watch feed fell behind its shard; starting again from now");
                after = None;
            }
            Ok(other) => {
                polls("error");
                tracing::warn!(shard, reply = ?other, "watch feed got an unexpected reply");
                tokio::time::sleep(FEED_RETRY).await;
            }
            Err(e) => {
                polls("error");
                tracing::debug!(shard, error = %e, "watch feed poll failed; asking again");
                tokio::time::sleep(FEED_RETRY).await;
            }
        }
    }
    FEEDS.with_label_values(&[&node]).dec();
    tracing::info!(node = state.node, shard, "watch feed stopped");
}

/// A stream's next page of `shard` after `after`, from the node's feed:
/// matching events, or none once `wait` passed, with the position they
/// reach. `None` when the feed cannot serve it (the position is behind
/// what the feed keeps, or a watched key moved to another shard): the
/// stream polls the shard itself.
pub async fn read(
    state: &web::Data<ApiState>,
    shard: ShardId,
    filter: &KeyFilter,
    mut after: u64,
    max: usize,
    wait: Duration,
) -> Option<ShardReply> {
    if let KeyFilter::Exact(key) = filter {
        // A key split off elsewhere: the shard answers `WrongShard` once
        // it delivered the key's last events here, and the stream follows.
        if state.map.load().shard_for(key) != Some(shard) {
            return None;
        }
    }
    let feed = state.feeds.feed(shard, state);
    if *feed.applied.borrow() == 0 {
        // Not started: it cannot say yet whether `after` is too old.
        return None;
    }
    let mut applied = feed.applied.subscribe();
    let until = tokio::time::Instant::now() + wait;
    loop {
        applied.borrow_and_update();
        let page = lock(&feed.log).read(Some(after), filter, max).ok()?;
        if !page.events.is_empty() {
            return Some(ShardReply::Events { events: page.events, position: page.position });
        }
        // Nothing for this stream yet: its position still moves past
        // other keys' changes, so it never falls behind while it waits.
        after = after.max(page.position);
        match tokio::time::timeout_at(until, applied.changed()).await {
            Ok(Ok(())) => {}
            _ => return Some(ShardReply::Events { events: Vec::new(), position: after }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert_eq!(*lock(&m), 5);
    }
}
