//! Which ring points each shard replica on this node owns, as its applied
//! state says: one registry per node, shared by its replicas.
//!
//! All replicas of a node share one `data` column family, so two of them
//! must never own the same point. A split moves points from one replica
//! to a new one on the same node in one step ([`RangeRegistry::split`]);
//! a snapshot that would make a replica own points another one still owns
//! (a new shard's leader sending to a node whose source replica has not
//! applied the split yet) is refused until it has (TiKV checks the same
//! before it applies a region snapshot). The node also asks it before it
//! starts an empty replica, so an empty replica never waits beside a
//! source replica that will still create it by a split.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ringstore_shared::ShardId;

use crate::snapshot::PointRange;

#[derive(Default)]
pub struct RangeRegistry {
    owners: Mutex<BTreeMap<ShardId, Arc<Vec<PointRange>>>>,
}

/// Whether two sorted, disjoint interval lists share a point.
pub fn overlaps(a: &[PointRange], b: &[PointRange]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].end() < b[j].start() {
            i += 1;
        } else if b[j].end() < a[i].start() {
            j += 1;
        } else {
            return true;
        }
    }
    false
}

impl RangeRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Arc<Vec<PointRange>>>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, shard: ShardId, ranges: Arc<Vec<PointRange>>) {
        self.lock().insert(shard, ranges);
    }

    pub fn remove(&self, shard: ShardId) {
        self.lock().remove(&shard);
    }

    /// `source` now owns `left` and `target` owns `given`, in one step: at
    /// no moment does either look unowned to [`Self::owner_of_any`].
    pub fn split(&self, source: ShardId, left: Arc<Vec<PointRange>>, target: ShardId, given: Arc<Vec<PointRange>>) {
        let mut owners = self.lock();
        owners.insert(source, left);
        owners.insert(target, given);
    }

    /// A shard other than `shard` that owns a point of `ranges`.
    pub fn conflict(&self, shard: ShardId, ranges: &[PointRange]) -> Option<ShardId> {
        self.lock().iter().find(|(s, r)| **s != shard && overlaps(r, ranges)).map(|(s, _)| *s)
    }

    /// Any shard that owns a point of `ranges`.
    pub fn owner_of_any(&self, ranges: &[PointRange]) -> Option<ShardId> {
        self.lock().iter().find(|(_, r)| overlaps(r, ranges)).map(|(s, _)| *s)
    }

    pub fn owned_by(&self, shard: ShardId) -> Option<Arc<Vec<PointRange>>> {
        self.lock().get(&shard).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_sorted_interval_lists() {
        assert!(!overlaps(&[0..=9, 20..=29], &[10..=19, 30..=40]));
        assert!(overlaps(&[0..=9, 20..=29], &[10..=20]));
        assert!(overlaps(&[5..=5], &[0..=u64::MAX]));
        assert!(!overlaps(&[], &[0..=u64::MAX]));
    }

    #[test]
    fn a_split_moves_points_between_replicas_at_once() {
        let reg = RangeRegistry::default();
        reg.set(1, Arc::new(vec![0..=99]));
        reg.set(2, Arc::new(vec![100..=199]));
        assert_eq!(reg.conflict(3, &[50..=60]), Some(1), "an empty replica's snapshot waits for the split");
        assert_eq!(reg.conflict(1, &[50..=60]), None, "a replica's own points are no conflict");
        reg.split(1, Arc::new(vec![0..=49]), 3, Arc::new(vec![50..=99]));
        assert_eq!(reg.conflict(3, &[50..=60]), None);
        assert_eq!(reg.owner_of_any(&[60..=70]), Some(3));
        reg.remove(3);
        assert_eq!(reg.owner_of_any(&[60..=70]), None);
        assert_eq!(reg.owned_by(1).as_deref(), Some(&vec![0..=49]));
    }
}
