//! A replica's recent changes to user keys, which watchers read: the
//! events its applied Raft entries produced (put, delete, expire), in log
//! order, bounded in count and bytes.
//!
//! A watcher's position on a shard is a log index: it has seen every
//! event of the entries up to it. The log holds everything after its
//! `floor`; a position below it is [`Compacted`] and the watcher must
//! start again from a read (etcd answers the same for a revision it no
//! longer keeps). The floor rises when old events are dropped to stay in
//! bounds, when a snapshot replaces the state (the entries it covers were
//! never applied here one by one), and starts at the applied index the
//! replica opened with (events before a restart are not kept).
//!
//! Every replica applies the same entries, so every replica's log holds
//! the same events for the same indexes: a watcher may move to a new
//! leader with its position.
//!
//! A replica created with its shard (at bootstrap, or by a split) that has
//! dropped nothing holds the shard's whole history: position 0 reads it
//! from the start. That is how a prefix watcher picks up a shard split off
//! after it started, without a gap.
//!
//! Pure: no actor, no I/O; the storage actor pushes and advances it.

use std::collections::VecDeque;

use ringstore_shared::value::StoredValue;

/// Events a replica keeps at most.
pub const EVENT_LOG_EVENTS_MAX: usize = 50_000;
/// Their keys and values in bytes at most.
pub const EVENT_LOG_BYTES_MAX: usize = 4 << 20;
/// Events one page holds at most (a caller asks for fewer).
pub const EVENT_PAGE_EVENTS_MAX: usize = 1000;
/// A page's keys and values stop growing past this many bytes (it always
/// holds at least one entry's events, which the write limits bound).
pub const EVENT_PAGE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put = 0,
    Delete = 1,
    /// Deleted by the TTL sweep.
    Expire = 2,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Put => "put",
            EventKind::Delete => "delete",
            EventKind::Expire => "expire",
        }
    }
}

/// One change to one key by the entry at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub index: u64,
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// The value a put wrote (its version is `index`); `None` otherwise.
    pub value: Option<StoredValue>,
}

impl Event {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.data.len()) + 32
    }
}

/// Which keys a watcher wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    Exact(Vec<u8>),
    /// Every key starting with this (empty: all keys).
    Prefix(Vec<u8>),
}

impl KeyFilter {
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyFilter::Exact(k) => k == key,
            KeyFilter::Prefix(p) => key.starts_with(p),
        }
    }
}

/// The position asked for is older than the log keeps; `oldest` is the
/// lowest one it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("position {asked} is compacted; the oldest available is {oldest}")]
pub struct Compacted {
    pub asked: u64,
    pub oldest: u64,
}

/// What a watcher reads: the matching events after its position, and the
/// position it has now seen everything up to (which moves past entries
/// with no matching event too, so a narrow watcher does not fall below
/// the floor while others' writes pass).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub position: u64,
}

#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    bytes: usize,
    /// Positions below this are gone.
    floor: u64,
    /// Events up to here are applied and may be read; later ones were
    /// pushed by a round whose write is not done yet.
    applied: u64,
    /// Nothing of the shard's history is missing below the floor (see
    /// the module doc): position 0 reads from the floor.
    whole: bool,
    events_max: usize,
    bytes_max: usize,
}

impl EventLog {
    /// A log for a replica that opened at `applied`; `created`: the
    /// replica was created with its shard just now (its history is whole).
    pub fn new(applied: u64, created: bool) -> EventLog {
        EventLog::with_limits(applied, created, EVENT_LOG_EVENTS_MAX, EVENT_LOG_BYTES_MAX)
    }

    pub fn with_limits(applied: u64, created: bool, events_max: usize, bytes_max: usize) -> EventLog {
        EventLog { events: VecDeque::new(), bytes: 0, floor: applied, applied, whole: created, events_max, bytes_max }
    }

    /// Records an event of an entry being applied; readable once
    /// [`advance`](Self::advance) passes its index.
    pub fn push(&mut self, event: Event) {
        debug_assert!(self.events.back().is_none_or(|e| e.index <= event.index), "events out of order");
        self.bytes += event.bytes();
        self.events.push_back(event);
        while self.events.len() > self.events_max || self.bytes > self.bytes_max {
            self.drop_oldest_entry();
        }
    }

    /// Drops every event of the oldest entry kept: a position inside one
    /// entry would not say which of its events were seen.
    fn drop_oldest_entry(&mut self) {
        let Some(index) = self.events.front().map(|e| e.index) else { return };
        while self.events.front().is_some_and(|e| e.index == index) {
            if let Some(e) = self.events.pop_front() {
                self.bytes -= e.bytes();
            }
        }
        self.floor = self.floor.max(index);
        self.whole = false;
    }

    /// The replica's writes up to `applied` are done: their events may be
    /// read.
    pub fn advance(&mut self, applied: u64) {
        self.applied = self.applied.max(applied);
    }

    /// A snapshot up to `index` replaced the state: what changed before
    /// it is unknown here.
    pub fn restored(&mut self, index: u64) {
        while self.events.front().is_some_and(|e| e.index <= index) {
            self.drop_oldest_entry();
        }
        self.floor = self.floor.max(index);
        self.applied = self.applied.max(index);
        self.whole = false;
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events matching `filter` after position `after` (`None`: from now,
    /// which reads nothing and answers the current position), at most
    /// `max` of them and about [`EVENT_PAGE_BYTES_MAX`], never splitting
    /// an entry's events. A position ahead of this replica (a watcher
    /// coming from a replica that applied more) reads nothing and keeps
    /// its position.
    pub fn read(&self, after: Option<u64>, filter: &KeyFilter, max: usize) -> Result<EventPage, Compacted> {
        let Some(after) = after else {
            return Ok(EventPage { events: Vec::new(), position: self.applied });
        };
        let after = match after {
            0 if self.whole => self.floor,
            a if a < self.floor => return Err(Compacted { asked: a, oldest: self.floor }),
            a => a,
        };
        if after >= self.applied {
            return Ok(EventPage { events: Vec::new(), position: after });
        }
        let max = max.clamp(1, EVENT_PAGE_EVENTS_MAX);
        let start = self.events.partition_point(|e| e.index <= after);
        let (mut events, mut bytes, mut position) = (Vec::new(), 0, self.applied);
        let mut i = start;
        while let Some(e) = self.events.get(i) {
            if e.index > self.applied {
                break;
            }
            let full = events.len() >= max || bytes >= EVENT_PAGE_BYTES_MAX;
            if full && events.last().is_some_and(|l: &Event| l.index != e.index) {
                // Stop between entries: the position is the last one
                // whose events are all in the page.
                position = e.index - 1;
                break;
            }
            if filter.matches(&e.key) {
                bytes += e.bytes();
                events.push(e.clone());
            }
            i += 1;
        }
        Ok(EventPage { events, position })
    }

    /// Whether a read after `after` would find matching events now (for
    /// waking long polls without building their pages).
    pub fn has_after(&self, after: u64, filter: &KeyFilter) -> bool {
        let start = self.events.partition_point(|e| e.index <= after);
        self.events.range(start..).take_while(|e| e.index <= self.applied).any(|e| filter.matches(&e.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, key: &str) -> Event {
        let value = StoredValue { version: index, expires_at_ms: None, data: format!("v{index}").into_bytes() };
        Event { index, kind: EventKind::Put, key: key.as_bytes().to_vec(), value: Some(value) }
    }

    fn keys(page: &EventPage) -> Vec<(u64, String)> {
        page.events.iter().map(|e| (e.index, String::from_utf8_lossy(&e.key).into_owned())).collect()
    }

    fn all() -> KeyFilter {
        KeyFilter::Prefix(Vec::new())
    }

    #[test]
    fn reads_matching_events_after_a_position_in_order() {
        let mut log = EventLog::new(10, false);
        for (i, k) in [(11, "a/1"), (12, "b/1"), (13, "a/2")] {
            log.push(put(i, k));
        }
        log.advance(14);
        let page = log.read(Some(10), &KeyFilter::Prefix(b"a/".to_vec()), 100).unwrap();
        assert_eq!(keys(&page), vec![(11, "a/1".into()), (13, "a/2".into())]);
        // The position passes entries without matches (14: a no-op).
        assert_eq!(page.position, 14);
        let page = log.read(Some(11), &KeyFilter::Exact(b"a/1".to_vec()), 100).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.position, 14);
    }

    #[test]
    fn unapplied_events_stay_hidden_until_advance() {
        let mut log = EventLog::new(10, false);
        log.push(put(11, "a"));
        assert_eq!(log.read(Some(10), &all(), 10).unwrap(), EventPage { events: vec![], position: 10 });
        assert!(!log.has_after(10, &all()));
        log.advance(11);
        assert_eq!(keys(&log.read(Some(10), &all(), 10).unwrap()), vec![(11, "a".into())]);
        assert!(log.has_after(10, &all()));
    }

    #[test]
    fn from_now_reads_nothing_and_gives_the_applied_index() {
        let mut log = EventLog::new(5, false);
        log.push(put(6, "a"));
        log.advance(7);
        assert_eq!(log.read(None, &all(), 10).unwrap(), EventPage { events: vec![], position: 7 });
    }

    #[test]
    fn a_position_below_the_floor_is_compacted_with_the_oldest_available() {
        let mut log = EventLog::with_limits(0, false, 3, usize::MAX);
        for i in 1..=5 {
            log.push(put(i, "k"));
        }
        log.advance(5);
        assert_eq!(log.len(), 3);
        assert_eq!(log.read(Some(1), &all(), 10), Err(Compacted { asked: 1, oldest: 2 }));
        let page = log.read(Some(2), &all(), 10).unwrap();
        assert_eq!(keys(&page), vec![(3, "k".into()), (4, "k".into()), (5, "k".into())]);
    }

    #[test]
    fn an_entry_is_dropped_whole() {
        // Entry 2 wrote three keys (a batch): dropping one of them drops
        // all, so position 2 never means "some of entry 2".
        let mut log = EventLog::with_limits(0, false, 3, usize::MAX);
        log.push(put(1, "a"));
        for k in ["b", "c", "d"] {
            log.push(put(2, k));
        }
        log.push(put(3, "e"));
        log.advance(3);
        assert_eq!((log.floor(), log.len()), (2, 1));
        assert_eq!(keys(&log.read(Some(2), &all(), 10).unwrap()), vec![(3, "e".into())]);
        assert_eq!(log.read(Some(1), &all(), 10), Err(Compacted { asked: 1, oldest: 2 }));
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut log = EventLog::with_limits(0, false, usize::MAX, 200);
        for i in 1..=20 {
            log.push(put(i, "kkkkkkkkkk"));
        }
        assert!(log.bytes() <= 200);
        assert!(log.floor() > 0);
    }

    #[test]
    fn a_full_page_stops_between_entries() {
        let mut log = EventLog::new(0, false);
        log.push(put(1, "a"));
        log.push(put(2, "b"));
        log.push(put(2, "c"));
        log.push(put(3, "d"));
        log.advance(3);
        let page = log.read(Some(0), &all(), 2).unwrap();
        assert_eq!(keys(&page), vec![(1, "a".into()), (2, "b".into()), (2, "c".into())]);
        assert_eq!(page.position, 2);
        let next = log.read(Some(page.position), &all(), 2).unwrap();
        assert_eq!(keys(&next), vec![(3, "d".into())]);
        assert_eq!(next.position, 3);
    }

    #[test]
    fn a_snapshot_raises_the_floor() {
        let mut log = EventLog::new(0, false);
        log.push(put(1, "a"));
        log.advance(1);
        log.restored(50);
        assert_eq!(log.read(Some(1), &all(), 10), Err(Compacted { asked: 1, oldest: 50 }));
        assert_eq!(log.read(Some(50), &all(), 10).unwrap(), EventPage { events: vec![], position: 50 });
    }

    #[test]
    fn position_zero_reads_a_whole_history_from_its_start() {
        // A shard split off at 40: its replicas were created there.
        let mut log = EventLog::new(40, true);
        log.push(put(41, "a"));
        log.advance(41);
        assert_eq!(keys(&log.read(Some(0), &all(), 10).unwrap()), vec![(41, "a".into())]);
        // Position 5 is not "the start": compacted.
        assert_eq!(log.read(Some(5), &all(), 10), Err(Compacted { asked: 5, oldest: 40 }));
        // A replica reopened after a restart is not whole.
        let reopened = EventLog::new(40, false);
        assert_eq!(reopened.read(Some(0), &all(), 10), Err(Compacted { asked: 0, oldest: 40 }));
        // Neither is one that dropped events.
        let mut small = EventLog::with_limits(0, true, 1, usize::MAX);
        small.push(put(1, "a"));
        small.push(put(2, "b"));
        small.advance(2);
        assert_eq!(small.read(Some(0), &all(), 10), Err(Compacted { asked: 0, oldest: 1 }));
    }

    #[test]
    fn a_position_ahead_of_the_replica_waits() {
        let mut log = EventLog::new(0, false);
        log.push(put(1, "a"));
        log.advance(1);
        assert_eq!(log.read(Some(9), &all(), 10).unwrap(), EventPage { events: vec![], position: 9 });
    }
}
