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

use std::hash::{BuildHasher, Hash, Hasher};
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

#[derive(Default, Clone, Copy)]
pub struct RingHasherBuilder;

impl BuildHasher for RingHasherBuilder {
    type Hasher = RingHasher;
    fn build_hasher(&self) -> RingHasher {
        RingHasher::default()
    }
}

/// The ring of a cluster map: shards and their point intervals.
#[derive(Clone)]
pub struct Ring {
    inner: CrateRing<ShardNode, RingHasherBuilder>,
}

impl Ring {
    pub fn new(shards: impl IntoIterator<Item = ShardId>) -> Self {
        let inner = RingBuilder::new(RingHasherBuilder)
            .vnodes(VNODES_PER_SHARD)
            .nodes_iter(shards.into_iter().map(ShardNode))
            .build();
        Ring { inner }
    }

    /// The shard owning `point`; `None` only for an empty ring.
    pub fn owner(&self, point: u64) -> Option<ShardId> {
        self.inner.try_get(RingPoint(point)).map(|s| s.0)
    }

    pub fn owner_of_key(&self, key: &[u8]) -> Option<ShardId> {
        self.owner(hash64(key))
    }

    pub fn shards(&self) -> usize {
        self.inner.len()
    }

    /// Every interval of points in order, with its owner; together they
    /// cover `0..=u64::MAX` exactly once.
    pub fn ranges(&self) -> Vec<(RangeInclusive<u64>, ShardId)> {
        self.inner.resident_ranges().map(|r| (r.keys().clone(), r.node().0)).collect()
    }

    /// The intervals one shard owns. Walks the ring without collecting
    /// it: every replica asks at start, and a copy of the whole ring per
    /// replica made startup memory grow with shards squared.
    pub fn ranges_of(&self, shard: ShardId) -> Vec<RangeInclusive<u64>> {
        self.inner.resident_ranges().filter(|r| r.node().0 == shard).map(|r| r.keys().clone()).collect()
    }
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

    /// Placement is part of the on-disk format: it must never change.
    #[test]
    fn pinned_owners() {
        let ring = Ring::new(1..=16);
        let got: Vec<ShardId> =
            [0u64, 1, 1 << 63, u64::MAX, 0x0123_4567_89ab_cdef].iter().map(|p| ring.owner(*p).unwrap()).collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [ShardId; 5] = [9, 9, 7, 9, 1];
}
