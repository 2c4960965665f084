//! The tail of a replica's Raft log, kept in memory (TiKV's entry cache).
//!
//! raft-rs reads entries back through `Storage` once they are persisted:
//! the committed entries it hands to apply, and a leader's appends to its
//! followers. Read from RocksDB, that was an iterator per Ready (4.6% of a
//! node's CPU under writes, perf, docs/BENCHMARKS.md). The cache holds the
//! entries written since the last applied index, so those reads come from
//! memory; anything older (a follower far behind) is read from RocksDB.
//!
//! The cache only ever holds what the `raft` family holds: entries join
//! once their write is done, a conflicting tail is replaced as the log
//! replaces it, and compaction and snapshots drop what they delete.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// At most this many entries per replica.
pub const ENTRY_CACHE_ENTRIES_MAX: usize = 1024;
/// At most this many bytes of entries per replica (encoded size).
pub const ENTRY_CACHE_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Applied entries kept, for a follower a little behind.
pub const ENTRY_CACHE_KEEP_APPLIED: u64 = 16;

#[derive(Debug, Default)]
pub struct EntryCache {
    /// Consecutive indexes.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    /// Adds entries just written to the log (consecutive, as raft-rs
    /// appends them). Cached entries from the first new index on are
    /// replaced, as the log's conflicting tail is; a gap empties the cache.
    pub fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first() else { return };
        match self.entries.front().map(|(e, _)| e.index) {
            Some(front) if first.index <= front => self.clear(),
            Some(_) => {
                let last = self.last_index().unwrap_or(0);
                if first.index > last + 1 {
                    self.clear();
                } else {
                    while self.last_index().is_some_and(|l| l >= first.index) {
                        self.pop_back();
                    }
                }
            }
            None => {}
        }
        for e in new {
            let size = e.compute_size() as usize;
            self.bytes += size;
            self.entries.push_back((e.clone(), size));
        }
        while self.entries.len() > ENTRY_CACHE_ENTRIES_MAX
            || (self.bytes > ENTRY_CACHE_BYTES_MAX && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Drops entries up to and including `index` (applied or compacted).
    pub fn trim_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.index <= index) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The term of entry `index`, if cached.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.get(index).map(|(e, _)| e.term)
    }

    /// Entries `[low, high)` if all are cached, cut at `max_size` bytes as
    /// raft-rs asks (at least one entry). `None`: read them from the log.
    pub fn range(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        if low >= high {
            return Some(Vec::new());
        }
        let front = self.entries.front()?.0.index;
        if low < front || high - 1 > self.last_index()? {
            return None;
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for (e, s) in self.entries.range((low - front) as usize..(high - front) as usize) {
            size += *s as u64;
            if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    fn get(&self, index: u64) -> Option<&(Entry, usize)> {
        let front = self.entries.front()?.0.index;
        index.checked_sub(front).and_then(|i| self.entries.get(i as usize))
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.index)
    }

    fn pop_front(&mut self) {
        if let Some((_, s)) = self.entries.pop_front() {
            self.bytes -= s;
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, s)) = self.entries.pop_back() {
            self.bytes -= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64, len: usize) -> Entry {
        Entry { index, term, data: vec![7u8; len].into(), ..Default::default() }
    }

    fn indexes(v: &[Entry]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn appended_entries_are_served_until_trimmed() {
        let mut c = EntryCache::default();
        assert_eq!(c.range(1, 2, None), None);
        c.append(&[e(5, 1, 10), e(6, 1, 10), e(7, 2, 10)]);
        assert_eq!(indexes(&c.range(5, 8, None).expect("cached")), vec![(5, 1), (6, 1), (7, 2)]);
        assert_eq!(indexes(&c.range(6, 7, None).expect("cached")), vec![(6, 1)]);
        assert_eq!(c.range(4, 6, None), None, "below the cache: read from the log");
        assert_eq!(c.range(6, 9, None), None, "past the cache");
        assert_eq!(c.range(6, 6, None), Some(Vec::new()));
        assert_eq!((c.term(7), c.term(4), c.term(8)), (Some(2), None, None));
        c.trim_to(6);
        assert_eq!(c.len(), 1);
        assert_eq!(c.range(6, 8, None), None);
        assert_eq!(indexes(&c.range(7, 8, None).expect("cached")), vec![(7, 2)]);
        c.trim_to(100);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_conflicting_append_replaces_the_tail_and_a_gap_starts_over() {
        let mut c = EntryCache::default();
        c.append(&[e(1, 1, 1), e(2, 1, 1), e(3, 1, 1), e(4, 1, 1)]);
        c.append(&[e(3, 2, 1)]);
        assert_eq!(indexes(&c.range(1, 4, None).expect("cached")), vec![(1, 1), (2, 1), (3, 2)]);
        assert_eq!(c.range(1, 5, None), None, "entry 4 went with the replaced tail");
        c.append(&[e(4, 2, 1), e(5, 2, 1)]);
        assert_eq!(c.len(), 5);
        c.append(&[e(9, 3, 1)]);
        assert_eq!(indexes(&c.range(9, 10, None).expect("cached")), vec![(9, 3)]);
        assert_eq!(c.len(), 1, "a gap leaves only the new entries");
        c.append(&[e(2, 4, 1)]);
        assert_eq!(c.len(), 1, "a rewrite from before the cache starts over too");
        assert_eq!(c.term(2), Some(4));
        let sizes: usize = (0..1).map(|_| e(2, 4, 1).compute_size() as usize).sum();
        assert_eq!(c.bytes(), sizes);
    }

    #[test]
    fn the_cache_stays_within_its_bounds_and_max_size_cuts_a_range() {
        let mut c = EntryCache::default();
        let many: Vec<Entry> = (1..=(ENTRY_CACHE_ENTRIES_MAX as u64 + 10)).map(|i| e(i, 1, 1)).collect();
        c.append(&many);
        assert_eq!(c.len(), ENTRY_CACHE_ENTRIES_MAX);
        assert_eq!(c.term(10), None);
        assert_eq!(c.term(11), Some(1));

        let mut c = EntryCache::default();
        let big = ENTRY_CACHE_BYTES_MAX / 3;
        c.append(&[e(1, 1, big), e(2, 1, big), e(3, 1, big), e(4, 1, big)]);
        assert!(c.bytes() <= ENTRY_CACHE_BYTES_MAX);
        assert_eq!(c.len(), 2);
        c.append(&[e(5, 1, ENTRY_CACHE_BYTES_MAX * 2)]);
        assert_eq!(c.len(), 1, "one entry over the byte bound is still kept");

        let mut c = EntryCache::default();
        c.append(&[e(1, 1, 100), e(2, 1, 100), e(3, 1, 100)]);
        let one = e(1, 1, 100).compute_size() as u64;
        assert_eq!(c.range(1, 4, Some(2 * one)).expect("cached").len(), 2);
        assert_eq!(c.range(1, 4, Some(0)).expect("cached").len(), 1, "at least one entry");
        assert_eq!(c.range(1, 4, Some(10 * one)).expect("cached").len(), 3);
    }
}
