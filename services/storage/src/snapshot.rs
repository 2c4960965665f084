//! The payload of a shard snapshot: every data key of the shard, the
//! applied leader stamp, the ring points the shard owns (with the epoch of
//! the split that last changed them) and (meta shard) the cluster map, as
//! `[format=3][stamp BE8][ranges epoch BE8][n BE4]([lo BE8][hi BE8])*n
//! [count BE8]`, then `[klen BE4][key][vlen BE4][value]` per pair, then
//! `[present u8]([mlen BE4][map])`. Format 2 has no ranges, format 1 no map.
//! The ranges come first so a receiver can check them
//! ([`SnapshotData::peek_ranges`]) before it decodes the rest.
//!
//! Snapshots are built whole in memory; the peer transport sends them in
//! chunks.

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed snapshot: {0}")]
pub struct SnapshotDecodeError(&'static str);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotData {
    pub applied_stamp_ms: u64,
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The meta shard's cluster map (encoded); `None` elsewhere.
    pub map: Option<Vec<u8>>,
    /// The shard's ranges and their epoch; `None` in formats before 3.
    pub ranges: Option<OwnedRanges>,
}

/// The ring points a shard owns, and the map epoch of the split that last
/// changed them (0: as bootstrapped). Replicated state of the shard: a
/// split changes it on every replica at the same log index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnedRanges {
    pub epoch: u64,
    pub ranges: Vec<PointRange>,
}

impl OwnedRanges {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + 16 * self.ranges.len());
        self.put(&mut b);
        b
    }

    fn put(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&(self.ranges.len() as u32).to_be_bytes());
        for r in &self.ranges {
            b.extend_from_slice(&r.start().to_be_bytes());
            b.extend_from_slice(&r.end().to_be_bytes());
        }
    }

    pub fn decode(mut b: &[u8]) -> Result<Self, SnapshotDecodeError> {
        let r = Self::take(&mut b)?;
        if !b.is_empty() {
            return Err(SnapshotDecodeError("trailing bytes after ranges"));
        }
        Ok(r)
    }

    /// Sorted and disjoint: what `StorageActor::owns` binary-searches.
    fn take(b: &mut &[u8]) -> Result<Self, SnapshotDecodeError> {
        let epoch = u64_of(take(b, 8)?);
        let n = u32_of(take(b, 4)?);
        let mut ranges: Vec<PointRange> = Vec::with_capacity(n.min(b.len() / 16));
        for _ in 0..n {
            let (lo, hi) = (u64_of(take(b, 8)?), u64_of(take(b, 8)?));
            if lo > hi || ranges.last().is_some_and(|l| *l.end() >= lo) {
                return Err(SnapshotDecodeError("ranges not sorted and disjoint"));
            }
            ranges.push(lo..=hi);
        }
        Ok(OwnedRanges { epoch, ranges })
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SnapshotDecodeError> {
    if b.len() < n {
        return Err(SnapshotDecodeError("truncated"));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn u64_of(s: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    u64::from_be_bytes(a)
}

fn u32_of(s: &[u8]) -> usize {
    u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize
}

/// An interval of ring points a shard owns.
pub type PointRange = std::ops::RangeInclusive<u64>;

/// Whether `point` lies in `ranges` (sorted, disjoint): a binary search.
pub fn contains_point(ranges: &[PointRange], point: u64) -> bool {
    let i = ranges.partition_point(|r| *r.end() < point);
    ranges.get(i).is_some_and(|r| r.contains(&point))
}

/// The whole ring, owned by one shard until the ring is split.
pub fn whole_ring() -> Vec<PointRange> {
    vec![0..=u64::MAX]
}

/// `data` column family bounds `[from, to)` of the keys whose ring point is
/// in `r`. Above `u64::MAX` the bound is `[0xff; 9]`, which is above every
/// data key: after the point come UTF-8 bytes or the 0xFE system prefix,
/// never 0xff.
pub fn data_bounds(r: &PointRange) -> (Vec<u8>, Vec<u8>) {
    let from = r.start().to_be_bytes().to_vec();
    let to = match r.end().checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    (from, to)
}

/// Bounds of the whole ring.
pub fn shard_data_bounds() -> (Vec<u8>, Vec<u8>) {
    data_bounds(&(0..=u64::MAX))
}

impl SnapshotData {
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.kvs.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let ranges = self.ranges.as_ref().map_or(0, |r| 12 + 16 * r.ranges.len());
        let mut b = Vec::with_capacity(22 + ranges + size + self.map.as_ref().map_or(0, Vec::len));
        b.push(if self.ranges.is_some() { FORMAT_V3 } else { FORMAT_V2 });
        b.extend_from_slice(&self.applied_stamp_ms.to_be_bytes());
        if let Some(r) = &self.ranges {
            r.put(&mut b);
        }
        b.extend_from_slice(&(self.kvs.len() as u64).to_be_bytes());
        for (k, v) in &self.kvs {
            b.extend_from_slice(&(k.len() as u32).to_be_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&(v.len() as u32).to_be_bytes());
            b.extend_from_slice(v);
        }
        match &self.map {
            None => b.push(0),
            Some(m) => {
                b.push(1);
                b.extend_from_slice(&(m.len() as u32).to_be_bytes());
                b.extend_from_slice(m);
            }
        }
        b
    }

    /// The ranges a snapshot carries, read without decoding its pairs:
    /// what a receiver checks against its node's other replicas first.
    pub fn peek_ranges(mut b: &[u8]) -> Result<Option<OwnedRanges>, SnapshotDecodeError> {
        let format = take(&mut b, 1)?[0];
        take(&mut b, 8)?;
        match format {
            FORMAT_V3 => Ok(Some(OwnedRanges::take(&mut b)?)),
            FORMAT_V1 | FORMAT_V2 => Ok(None),
            _ => Err(SnapshotDecodeError("unknown format")),
        }
    }

    pub fn decode(mut b: &[u8]) -> Result<Self, SnapshotDecodeError> {
        let format = take(&mut b, 1)?[0];
        if !(FORMAT_V1..=FORMAT_V3).contains(&format) {
            return Err(SnapshotDecodeError("unknown format"));
        }
        let applied_stamp_ms = u64_of(take(&mut b, 8)?);
        let ranges = match format {
            FORMAT_V3 => Some(OwnedRanges::take(&mut b)?),
            _ => None,
        };
        let count = u64_of(take(&mut b, 8)?);
        let mut kvs = Vec::with_capacity((count as usize).min(b.len() / 8));
        for _ in 0..count {
            let kl = u32_of(take(&mut b, 4)?);
            let k = take(&mut b, kl)?.to_vec();
            let vl = u32_of(take(&mut b, 4)?);
            let v = take(&mut b, vl)?.to_vec();
            kvs.push((k, v));
        }
        let map = match format {
            FORMAT_V1 => None,
            _ => match take(&mut b, 1)?[0] {
                0 => None,
                1 => {
                    let ml = u32_of(take(&mut b, 4)?);
                    Some(take(&mut b, ml)?.to_vec())
                }
                _ => return Err(SnapshotDecodeError("bad map marker")),
            },
        };
        if !b.is_empty() {
            return Err(SnapshotDecodeError("trailing bytes"));
        }
        Ok(SnapshotData { applied_stamp_ms, kvs, map, ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let owned = OwnedRanges { epoch: 4, ranges: vec![0..=9, 20..=u64::MAX] };
        for (map, ranges) in [(None, None), (Some(vec![7, 8, 9]), Some(owned.clone())), (None, Some(owned.clone()))] {
            let kvs = vec![(b"k1".to_vec(), b"v1".to_vec()), (vec![], vec![])];
            let d = SnapshotData { applied_stamp_ms: 77, kvs, map, ranges };
            let bytes = d.encode();
            assert_eq!(SnapshotData::decode(&bytes).unwrap(), d);
            assert_eq!(SnapshotData::peek_ranges(&bytes).unwrap(), d.ranges);
            for cut in 0..bytes.len() {
                assert!(SnapshotData::decode(&bytes[..cut]).is_err());
            }
        }
        // Format 1 (before the map) still decodes, without a map.
        let v1 = [&[FORMAT_V1][..], &5u64.to_be_bytes(), &0u64.to_be_bytes()].concat();
        assert_eq!(
            SnapshotData::decode(&v1).unwrap(),
            SnapshotData { applied_stamp_ms: 5, kvs: vec![], map: None, ranges: None }
        );
        assert_eq!(OwnedRanges::decode(&owned.encode()).unwrap(), owned);
        let unsorted = OwnedRanges { epoch: 1, ranges: vec![5..=9, 0..=1] };
        assert!(OwnedRanges::decode(&unsorted.encode()).is_err());
    }

    #[test]
    fn range_bounds_split_keys_by_ring_point() {
        let (lo, hi) = data_bounds(&(10..=20));
        let key = |p: u64, k: &[u8]| {
            let mut v = p.to_be_bytes().to_vec();
            v.extend_from_slice(k);
            v
        };
        for (p, inside) in [(9, false), (10, true), (20, true), (21, false)] {
            let k = key(p, "zz\u{10FFFF}".as_bytes());
            assert_eq!(k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice(), inside, "point {p}");
        }
    }

    #[test]
    fn bounds_cover_every_utf8_key() {
        let (lo, hi) = shard_data_bounds();
        let mut k = u64::MAX.to_be_bytes().to_vec();
        k.extend_from_slice("\u{10FFFF}".as_bytes());
        assert!(k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice());
    }
}
