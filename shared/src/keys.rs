//! Keys of the `data` column family: `ring_point(key) BE ++ user_key`.
//!
//! Because the 8-byte ring point leads, one interval of ring points is one
//! contiguous RocksDB key range: moving a range is a range scan and
//! dropping one is `delete_range`.

use crate::hash::hash64;

/// Length of the ring point prefix of every data key.
pub const RING_POINT_LEN: usize = 8;

/// The `data` column family key of a user key.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(RING_POINT_LEN + user_key.len());
    k.extend_from_slice(&hash64(user_key).to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// Splits a data key into its ring point and user key; `None` if it is
/// shorter than a ring point (never written by ringstore).
pub fn split_data_key(data_key: &[u8]) -> Option<(u64, &[u8])> {
    if data_key.len() < RING_POINT_LEN {
        return None;
    }
    let (p, k) = data_key.split_at(RING_POINT_LEN);
    let mut a = [0u8; 8];
    a.copy_from_slice(p);
    Some((u64::from_be_bytes(a), k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_point_leads() {
        let k = data_key("a/b/ключ".as_bytes());
        let (p, user) = split_data_key(&k).unwrap();
        assert_eq!(user, "a/b/ключ".as_bytes());
        assert_eq!(p, hash64(user));
        assert_eq!(&k[..8], &p.to_be_bytes());
        assert!(split_data_key(b"short").is_none());
        assert_eq!(split_data_key(&data_key(b"")).unwrap().1, b"");
    }
}
