//! The payload of a shard snapshot: every data key of the shard, the
//! applied leader stamp and (meta shard) the cluster map, as
//! `[format=2][stamp BE8][count BE8]`, then `[klen BE4][key][vlen BE4][value]`
//! per pair, then `[present u8]([mlen BE4][map])`. Format 1 has no map.
//!
//! Snapshots are built whole in memory; the peer transport sends them in
//! chunks.

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed snapshot: {0}")]
pub struct SnapshotDecodeError(&'static str);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotData {
    pub applied_stamp_ms: u64,
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The meta shard's cluster map (encoded); `None` elsewhere.
    pub map: Option<Vec<u8>>,
}

/// An interval of ring points a shard owns.
pub type PointRange = std::ops::RangeInclusive<u64>;

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
        let mut b = Vec::with_capacity(22 + size + self.map.as_ref().map_or(0, Vec::len));
        b.push(FORMAT_V2);
        b.extend_from_slice(&self.applied_stamp_ms.to_be_bytes());
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

    pub fn decode(mut b: &[u8]) -> Result<Self, SnapshotDecodeError> {
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
        let format = take(&mut b, 1)?[0];
        if format != FORMAT_V1 && format != FORMAT_V2 {
            return Err(SnapshotDecodeError("unknown format"));
        }
        let applied_stamp_ms = u64_of(take(&mut b, 8)?);
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
        Ok(SnapshotData { applied_stamp_ms, kvs, map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        for map in [None, Some(vec![7, 8, 9])] {
            let kvs = vec![(b"k1".to_vec(), b"v1".to_vec()), (vec![], vec![])];
            let d = SnapshotData { applied_stamp_ms: 77, kvs, map };
            let bytes = d.encode();
            assert_eq!(SnapshotData::decode(&bytes).unwrap(), d);
            for cut in 0..bytes.len() {
                assert!(SnapshotData::decode(&bytes[..cut]).is_err());
            }
        }
        // Format 1 (before the map) still decodes, without a map.
        let v1 = [&[FORMAT_V1][..], &5u64.to_be_bytes(), &0u64.to_be_bytes()].concat();
        assert_eq!(SnapshotData::decode(&v1).unwrap(), SnapshotData { applied_stamp_ms: 5, kvs: vec![], map: None });
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
