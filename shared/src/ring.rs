//! The hash ring: which shard owns a ring point.
//!
//! Built on the `consistent_hash_ring` crate: every shard has
//! [`VNODES_PER_SHARD`] virtual nodes, and a point belongs to the shard of
//! the first virtual node at or after it (wrapping). Because a point is
//! looked up *as is* (not re-hashed), each shard owns contiguous intervals
//! of ring points, and since every data key starts with its ring point
//! (see [`crate::keys`]) an interval is one contiguous RocksDB key range.
//!
//! The crate hashes through a `BuildHasher`; [`RingHasher`] gives it
//! three behaviours, one per input kind, all fixed forever:
//! - a [`RingPoint`] (written as `u128`) is its own position: no hashing;
//! - a shard id (written as bytes by [`ShardNode`]) goes through
//!   [`hash64`], placing its first virtual node;
//! - a previous position (written as `u64` by the crate's vnode chain)
//!   goes through the splitmix64 finalizer, placing the next one.
//!
//! Positions are pinned by a test: changing them would move data.
//!
//! The crate builds a ring by inserting each virtual node into a sorted
//! `Vec`, which is quadratic: a million virtual nodes (1,000 shards) took
//! minutes. [`Ring::with_layout`] therefore places the virtual nodes
//! itself, exactly as the crate would (same chain, same collision rule),
//! and hands them to the crate one per [`VNode`], in ascending order, so
//! every insert is an append. That ring hashes through [`VNodeHasher`]:
//! positions as they are, and the crate's step to a node's next position
//! (which it clears) one point up, where an ascending build has nothing
//! yet. A test checks the result against the crate's own build.
//!
//! The ring can grow without moving a virtual node. Its *origins* (the
//! shards a cluster was bootstrapped with) place the vnodes, forever;
//! each shard owns the intervals of one origin clipped to a window of
//! points, its [`ShardRange`]. A bootstrapped shard is its own origin with
//! the whole window. A split cuts one shard's window in two: the new shard
//! takes the upper part, and because both halves stay on the nodes where
//! the data already is, a split copies nothing (see `docs/ARCHITECTURE.md`,
//! "Range moves").

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::ops::RangeInclusive;

use consistent_hash_ring::{Ring as CrateRing, RingBuilder};

use crate::hash::{hash64, splitmix64};
use crate::ShardId;

/// Virtual nodes per shard: enough that 16 shards own shares within a few
/// percent of each other.
pub const VNODES_PER_SHARD: usize = 1024;

/// A position on the ring, looked up without re-hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPoint(pub u64);

impl Hash for RingPoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from(self.0));
    }
}

/// A shard as a ring node; hashed by its id's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShardNode(pub ShardId);

impl Hash for ShardNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0.to_be_bytes());
    }
}

/// One virtual node handed to the crate: hashed as its position, so the
/// crate puts it exactly there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VNode {
    origin: ShardId,
    point: u64,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        RingPoint(self.point).hash(state);
    }
}

/// The positions of every origin's virtual nodes, as the crate's
/// `insert_weight` chain puts them when the origins are inserted in
/// ascending order: a later origin's vnode replaces an earlier one at the
/// same position, and each chain's next position after its last removes
/// whatever sits there.
fn place_vnodes(origins: &[ShardId]) -> BTreeMap<u64, ShardId> {
    let h = RingHasherBuilder::default();
    let mut out = BTreeMap::new();
    for &o in origins {
        let mut point = h.hash_one(ShardNode(o));
        for _ in 0..VNODES_PER_SHARD {
            out.insert(point, o);
            point = h.hash_one(point);
        }
        while out.remove(&point).is_some() {
            point = h.hash_one(point);
        }
    }
    out
}

/// The hasher of the ring of [`VNode`]s: a position (`u128`) is itself;
/// the crate's next-position step (`u64`) is one point up. After inserting
/// a vnode the crate removes whatever sits at its next position; built in
/// ascending order nothing does (no vnode sits at `u64::MAX`, whose next
/// position would wrap to 0: a test checks every origin a cluster can be
/// bootstrapped with).
#[derive(Default, Clone, Copy)]
pub struct VNodeHasher(u64);

impl Hasher for VNodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_add(1);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub type VNodeHasherBuilder = BuildHasherDefault<VNodeHasher>;

/// See the module docs: identity for points, `hash64` for shard ids,
/// splitmix64 for the vnode chain.
#[derive(Default, Clone, Copy)]
pub struct RingHasher(u64);

impl Hasher for RingHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = splitmix64(v);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub type RingHasherBuilder = BuildHasherDefault<RingHasher>;

/// What a shard owns: the intervals of `origin`'s virtual nodes whose
/// points lie in `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub origin: ShardId,
    pub lo: u64,
    pub hi: u64,
}

impl ShardRange {
    /// A bootstrapped shard: all of its own intervals.
    pub fn whole(origin: ShardId) -> Self {
        ShardRange { origin, lo: 0, hi: u64::MAX }
    }

    /// The two halves of a split at `at`: the source keeps `lo..at`, the
    /// new shard takes `at..=hi`. `None` unless both halves are non-empty.
    pub fn split_at(&self, at: u64) -> Option<(ShardRange, ShardRange)> {
        (at > self.lo && at <= self.hi).then(|| (ShardRange { hi: at - 1, ..*self }, ShardRange { lo: at, ..*self }))
    }

    fn contains(&self, point: u64) -> bool {
        (self.lo..=self.hi).contains(&point)
    }
}

/// The ring of a cluster map: shards and their point intervals.
#[derive(Clone)]
pub struct Ring {
    inner: CrateRing<VNode, VNodeHasherBuilder>,
    /// Per origin, the shards carved out of it, by window (sorted by `lo`).
    windows: BTreeMap<ShardId, Vec<(u64, u64, ShardId)>>,
}

impl Ring {
    /// A ring whose shards are all origins, each owning all of its intervals.
    pub fn new(shards: impl IntoIterator<Item = ShardId>) -> Self {
        let layout: BTreeMap<ShardId, ShardRange> = shards.into_iter().map(|s| (s, ShardRange::whole(s))).collect();
        Ring::with_layout(&layout)
    }

    /// A ring from each shard's [`ShardRange`]. Windows of one origin are
    /// expected not to overlap (the map's edits keep them so); where they
    /// would, the lower shard id wins.
    pub fn with_layout(layout: &BTreeMap<ShardId, ShardRange>) -> Self {
        let mut origins: Vec<ShardId> = layout.values().map(|r| r.origin).collect();
        origins.sort_unstable();
        origins.dedup();
        let mut inner = RingBuilder::new(VNodeHasherBuilder::default()).vnodes(1).build();
        for (point, origin) in place_vnodes(&origins) {
            inner.insert(VNode { origin, point });
        }
        let mut windows: BTreeMap<ShardId, Vec<(u64, u64, ShardId)>> = BTreeMap::new();
        for (shard, r) in layout {
            windows.entry(r.origin).or_default().push((r.lo, r.hi, *shard));
        }
        for w in windows.values_mut() {
            w.sort_unstable();
        }
        Ring { inner, windows }
    }

    /// The shard owning `point`; `None` for an empty ring, or for a point
    /// no window covers (a layout with a gap, which edits never make).
    pub fn owner(&self, point: u64) -> Option<ShardId> {
        let origin = self.inner.try_get(RingPoint(point))?.origin;
        self.window_owner(origin, point)
    }

    fn window_owner(&self, origin: ShardId, point: u64) -> Option<ShardId> {
        let w = self.windows.get(&origin)?;
        let i = w.partition_point(|(lo, _, _)| *lo <= point);
        let (lo, hi, shard) = w.get(i.checked_sub(1)?)?;
        ShardRange { origin, lo: *lo, hi: *hi }.contains(point).then_some(*shard)
    }

    pub fn owner_of_key(&self, key: &[u8]) -> Option<ShardId> {
        self.owner(crate::hash::key_point(key))
    }

    /// Each origin's intervals in ring order: the crate's resident ranges
    /// (one per virtual node, as each is its own crate node) with runs of
    /// one origin joined, as the crate joins runs of one node.
    fn origin_ranges(&self) -> impl Iterator<Item = (RangeInclusive<u64>, ShardId)> + '_ {
        let mut raw = self.inner.resident_ranges().map(|r| (r.keys().clone(), r.node().origin)).peekable();
        std::iter::from_fn(move || {
            let (mut keys, origin) = raw.next()?;
            while let Some((next, _)) = raw.next_if(|(_, o)| *o == origin) {
                keys = *keys.start()..=*next.end();
            }
            Some((keys, origin))
        })
    }

    /// How many shards own points.
    pub fn shards(&self) -> usize {
        self.windows.values().map(Vec::len).sum()
    }

    /// Every interval of points in order, with its owner; together they
    /// cover `0..=u64::MAX` exactly once. Intervals of one origin are cut
    /// where its windows meet.
    pub fn ranges(&self) -> Vec<(RangeInclusive<u64>, ShardId)> {
        self.shard_ranges().collect()
    }

    /// [`Self::ranges`] as it walks the ring: each origin's intervals cut
    /// by that origin's windows.
    fn shard_ranges(&self) -> impl Iterator<Item = (RangeInclusive<u64>, ShardId)> + '_ {
        self.origin_ranges().flat_map(move |(keys, origin)| {
            let windows = self.windows.get(&origin).map(Vec::as_slice).unwrap_or_default();
            windows.iter().filter_map(move |(lo, hi, shard)| clip(&keys, *lo, *hi).map(|c| (c, *shard)))
        })
    }

    /// Every shard's intervals, in order, from one walk of the ring: a
    /// node starting or following a map with many shards asks for all of
    /// them, and [`Self::ranges_of`] per shard walks the whole ring once
    /// per shard (262,144 intervals per walk at 256 shards).
    pub fn ranges_by_shard(&self) -> HashMap<ShardId, Vec<RangeInclusive<u64>>> {
        let mut out: HashMap<ShardId, Vec<RangeInclusive<u64>>> = HashMap::new();
        for (c, shard) in self.shard_ranges() {
            out.entry(shard).or_default().push(c);
        }
        out
    }

    /// The intervals one shard owns. Walks the ring without collecting
    /// it: every replica asks at start, and a copy of the whole ring per
    /// replica made startup memory grow with shards squared.
    pub fn ranges_of(&self, shard: ShardId) -> Vec<RangeInclusive<u64>> {
        let Some((origin, lo, hi)) =
            self.windows.iter().find_map(|(o, w)| w.iter().find(|x| x.2 == shard).map(|x| (*o, x.0, x.1)))
        else {
            return Vec::new();
        };
        self.origin_ranges().filter(|(_, o)| *o == origin).filter_map(|(keys, _)| clip(&keys, lo, hi)).collect()
    }
}

fn clip(r: &RangeInclusive<u64>, lo: u64, hi: u64) -> Option<RangeInclusive<u64>> {
    let (s, e) = ((*r.start()).max(lo), (*r.end()).min(hi));
    (s <= e).then_some(s..=e)
}

/// `ranges` without `remove`, or `None` unless every interval of `remove`
/// lies inside one of `ranges`. Both sorted, neither overlapping itself.
/// A split takes the new shard's intervals out of its source with this, on
/// every replica alike, so it must refuse rather than guess.
pub fn subtract(ranges: &[RangeInclusive<u64>], remove: &[RangeInclusive<u64>]) -> Option<Vec<RangeInclusive<u64>>> {
    let mut out = Vec::with_capacity(ranges.len() + remove.len());
    let mut rm = remove.iter().peekable();
    for r in ranges {
        let mut start = *r.start();
        let mut open = true;
        while let Some(x) = rm.peek() {
            if *x.start() > *r.end() {
                break;
            }
            if *x.start() < start || *x.end() > *r.end() {
                return None; // straddles or falls outside this interval
            }
            if *x.start() > start {
                out.push(start..=*x.start() - 1);
            }
            let next = x.end().checked_add(1);
            rm.next();
            match next {
                Some(n) if n <= *r.end() => start = n,
                _ => {
                    open = false;
                    break;
                }
            }
        }
        if open {
            out.push(start..=*r.end());
        }
    }
    rm.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_owned_by_the_shard_whose_interval_holds_it() {
        let ring = Ring::new(1..=16);
        let ranges = ring.ranges();
        // Contiguous, ordered, covering the whole space.
        assert_eq!(*ranges[0].0.start(), 0);
        assert_eq!(*ranges.last().unwrap().0.end(), u64::MAX);
        for w in ranges.windows(2) {
            assert_eq!(w[0].0.end().wrapping_add(1), *w[1].0.start());
        }
        for (r, s) in ranges.iter().step_by(37) {
            assert_eq!(ring.owner(*r.start()), Some(*s));
            assert_eq!(ring.owner(*r.end()), Some(*s));
        }
    }

    #[test]
    fn sixteen_shards_share_keys_within_thirty_percent() {
        let ring = Ring::new(1..=16);
        let mut count = [0u32; 17];
        for i in 0..200_000u32 {
            count[ring.owner_of_key(format!("key-{i}").as_bytes()).unwrap() as usize] += 1;
        }
        let (min, max) = (count[1..].iter().min().unwrap(), count[1..].iter().max().unwrap());
        assert!(f64::from(*max) / f64::from(*min) <= 1.3, "{count:?}");
    }

    #[test]
    fn adding_a_shard_moves_only_its_share() {
        let before = Ring::new(1..=4);
        let after = Ring::new(1..=5);
        let mut moved = 0;
        for i in 0..20_000u32 {
            let k = format!("k{i}");
            let (a, b) = (before.owner_of_key(k.as_bytes()), after.owner_of_key(k.as_bytes()));
            if a != b {
                assert_eq!(b, Some(5), "keys only move to the new shard");
                moved += 1;
            }
        }
        assert!((2_500..5_500).contains(&moved), "about a fifth moves: {moved}");
    }

    /// The crate's own (quadratic) build of the same origins, as rings were
    /// built before [`place_vnodes`].
    fn crate_built(origins: impl Iterator<Item = ShardId>) -> CrateRing<ShardNode, RingHasherBuilder> {
        RingBuilder::new(RingHasherBuilder::default())
            .vnodes(VNODES_PER_SHARD)
            .nodes_iter(origins.map(ShardNode))
            .build()
    }

    #[test]
    fn placing_vnodes_ourselves_gives_the_crates_own_ring() {
        for n in [1u64, 2, 16, 64] {
            let ours = Ring::new(1..=n);
            let theirs = crate_built(1..=n);
            let ranges: Vec<_> = theirs.resident_ranges().map(|r| (r.keys().clone(), r.node().0)).collect();
            assert_eq!(ours.ranges(), ranges, "{n} shards");
            let mut p = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..5_000 {
                p = splitmix64(p);
                assert_eq!(ours.owner(p), theirs.try_get(RingPoint(p)).map(|s| s.0), "{n} shards, point {p}");
            }
            for edge in [0, u64::MAX, *ranges[0].0.end(), ranges[0].0.end().wrapping_add(1)] {
                assert_eq!(ours.owner(edge), theirs.try_get(RingPoint(edge)).map(|s| s.0));
            }
        }
    }

    #[test]
    fn no_virtual_node_of_a_bootstrappable_origin_sits_at_the_end_of_the_ring() {
        let max = crate::config::SHARDS_MAX;
        let placed = place_vnodes(&(1..=max).collect::<Vec<_>>());
        assert!(!placed.contains_key(&u64::MAX), "the ascending build would clear the vnode at 0");
        let ring = Ring::new(1..=max);
        assert_eq!(ring.ranges_by_shard().len(), max as usize, "every origin owns points");
    }

    /// Placement is part of the on-disk format: it must never change.
    #[test]
    fn pinned_owners() {
        let ring = Ring::new(1..=16);
        let got: Vec<ShardId> =
            [0u64, 1, 1 << 63, u64::MAX, 0x0123_4567_89ab_cdef].iter().map(|p| ring.owner(*p).unwrap()).collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [ShardId; 5] = [9, 9, 7, 9, 1];

    fn split_layout() -> BTreeMap<ShardId, ShardRange> {
        let mut layout: BTreeMap<ShardId, ShardRange> = (1..=4).map(|s| (s, ShardRange::whole(s))).collect();
        let (a, b) = layout[&2].split_at(1 << 63).unwrap();
        layout.insert(2, a);
        layout.insert(5, b);
        layout
    }

    #[test]
    fn a_split_gives_the_new_shard_part_of_one_source_and_nothing_else_moves() {
        let before = Ring::new(1..=4);
        let after = Ring::with_layout(&split_layout());
        assert_eq!(after.shards(), 5);
        let mut moved = 0;
        for i in 0..20_000u32 {
            let k = format!("k{i}");
            let (a, b) = (before.owner_of_key(k.as_bytes()), after.owner_of_key(k.as_bytes()));
            if a != b {
                assert_eq!((a, b), (Some(2), Some(5)), "only shard 2's keys move, only to shard 5");
                moved += 1;
            }
        }
        assert!((1_500..3_500).contains(&moved), "about half of a quarter: {moved}");
        // The intervals still tile the ring, and each shard's own listing agrees.
        let ranges = after.ranges();
        assert_eq!(*ranges[0].0.start(), 0);
        assert_eq!(*ranges.last().unwrap().0.end(), u64::MAX);
        for w in ranges.windows(2) {
            assert_eq!(w[0].0.end().wrapping_add(1), *w[1].0.start());
        }
        let by_shard = after.ranges_by_shard();
        assert_eq!(by_shard.len(), 5);
        for s in 1..=5 {
            let own: Vec<_> = ranges.iter().filter(|(_, o)| *o == s).map(|(r, _)| r.clone()).collect();
            assert_eq!(after.ranges_of(s), own, "shard {s}");
            assert_eq!(by_shard[&s], own, "shard {s}, all at once");
            for r in own.iter().step_by(7) {
                assert_eq!(after.owner(*r.start()), Some(s));
                assert_eq!(after.owner(*r.end()), Some(s));
            }
        }
        // The source keeps exactly what it had minus what the new shard took.
        let left = subtract(&before.ranges_of(2), &after.ranges_of(5)).unwrap();
        assert_eq!(left, after.ranges_of(2));
    }

    #[test]
    fn a_single_shard_ring_can_split() {
        let mut layout = BTreeMap::from([(1, ShardRange::whole(1))]);
        let (a, b) = layout[&1].split_at(1 << 62).unwrap();
        layout.insert(1, a);
        layout.insert(2, b);
        let ring = Ring::with_layout(&layout);
        assert_eq!(ring.ranges_of(1), vec![0..=(1 << 62) - 1]);
        assert_eq!(ring.ranges_of(2), vec![(1 << 62)..=u64::MAX]);
        assert!(ShardRange::whole(1).split_at(0).is_none(), "an empty half is no split");
        assert!(ShardRange { origin: 1, lo: 5, hi: 5 }.split_at(5).is_none());
    }

    #[test]
    fn subtract_takes_out_inner_intervals_and_refuses_straddlers() {
        let rs = vec![0..=9, 20..=29, 40..=u64::MAX];
        assert_eq!(subtract(&rs, &[]), Some(rs.clone()));
        assert_eq!(subtract(&rs, &[0..=9]), Some(vec![20..=29, 40..=u64::MAX]));
        assert_eq!(subtract(&rs, &[3..=4, 6..=9, 20..=20]), Some(vec![0..=2, 5..=5, 21..=29, 40..=u64::MAX]));
        assert_eq!(subtract(&rs, &[50..=u64::MAX]), Some(vec![0..=9, 20..=29, 40..=49]));
        assert_eq!(subtract(&rs, &[8..=21]), None, "straddles two intervals");
        assert_eq!(subtract(&rs, &[10..=12]), None, "outside every interval");
        assert_eq!(subtract(&rs, &[45..=50, 41..=42]), None, "unsorted");
    }
}
