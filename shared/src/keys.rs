//! Keys of the `data` column family: `key_point(key) BE ++ user_key`
//! (the ring point of the key's hash tag, or of the whole key).
//!
//! Lock records and fence records live in the same family, at the ring
//! point of the lock name or data key, behind the byte [`SYSTEM_PREFIX`]
//! (0xFE never occurs in UTF-8, and user keys are UTF-8): they move with
//! their range and ride in snapshots, and never collide with a user key.
//!
//! Because the 8-byte ring point leads, one interval of ring points is one
//! contiguous RocksDB key range: moving a range is a range scan and
//! dropping one is `delete_range`.

use crate::hash::key_point;

/// Length of the ring point prefix of every data key.
pub const RING_POINT_LEN: usize = 8;

/// The `data` column family key of a user key.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(RING_POINT_LEN + user_key.len());
    k.extend_from_slice(&key_point(user_key).to_be_bytes());
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

/// First byte after the ring point of every non-user record.
pub const SYSTEM_PREFIX: u8 = 0xFE;
const KIND_LOCK: u8 = b'L';
const KIND_FENCE: u8 = b'F';
const KIND_REQUEST: u8 = b'Q';

fn system_key(point_of: &[u8], kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(RING_POINT_LEN + 2 + rest.len());
    k.extend_from_slice(&key_point(point_of).to_be_bytes());
    k.push(SYSTEM_PREFIX);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// Where the record of lock `name` lives (at the ring point of the name).
pub fn lock_key(name: &[u8]) -> Vec<u8> {
    system_key(name, KIND_LOCK, name)
}

/// Where the fences of data key `user_key` live (beside the key).
pub fn fence_key(user_key: &[u8]) -> Vec<u8> {
    system_key(user_key, KIND_FENCE, user_key)
}

/// Where a shard remembers what write request `id` did: beside the key
/// (or lock name) it wrote, so the record moves with that key's range.
pub fn request_key(routing_key: &[u8], id: u128) -> Vec<u8> {
    system_key(routing_key, KIND_REQUEST, &id.to_be_bytes())
}

/// Whether a `data` family key is a request record.
pub fn is_request_key(data_key: &[u8]) -> bool {
    matches!(split_data_key(data_key), Some((_, [SYSTEM_PREFIX, KIND_REQUEST, id @ ..])) if id.len() == 16)
}

/// Whether the part after the ring point is a user key (not a lock or fence).
pub fn is_user_key(after_point: &[u8]) -> bool {
    after_point.first() != Some(&SYSTEM_PREFIX)
}

/// The lock name of a `data` family key, if it is a lock record.
pub fn lock_name_of(data_key: &[u8]) -> Option<&[u8]> {
    let (_, rest) = split_data_key(data_key)?;
    match rest {
        [SYSTEM_PREFIX, KIND_LOCK, name @ ..] => Some(name),
        _ => None,
    }
}

/// Whether a `data` family record sits at a point other than its key's
/// (a user key, lock name or fenced key with a hash tag, written before
/// hash tags placed it: see `hash::hash_tag`). Request records name no
/// key and are never misplaced.
pub fn misplaced(data_key: &[u8]) -> bool {
    let Some((point, rest)) = split_data_key(data_key) else { return false };
    let key = match rest {
        [SYSTEM_PREFIX, KIND_LOCK | KIND_FENCE, key @ ..] => key,
        [SYSTEM_PREFIX, ..] => return false,
        user => user,
    };
    key.contains(&b'{') && key_point(key) != point
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash64;

    #[test]
    fn system_records_never_collide_with_user_keys() {
        let l = lock_key(b"jobs/nightly");
        assert_eq!(lock_name_of(&l), Some(b"jobs/nightly".as_slice()));
        assert_eq!(&l[..8], &hash64(b"jobs/nightly").to_be_bytes());
        let f = fence_key(b"k");
        assert_eq!(&f[..8], &data_key(b"k")[..8], "fences sit at their key's ring point");
        assert_eq!(lock_name_of(&f), None);
        assert!(!is_user_key(&l[8..]) && !is_user_key(&f[8..]));
        // No UTF-8 string starts with 0xFE, so no user key is a system key.
        assert!(std::str::from_utf8(&[SYSTEM_PREFIX]).is_err());
        assert!(is_user_key(&data_key("ключ".as_bytes())[8..]));
        assert!(l.as_slice() < [0xff; 9].as_slice());
    }

    #[test]
    fn records_placed_before_hash_tags_are_found() {
        let old_point = |key: &[u8], rest: &[u8]| [&hash64(key).to_be_bytes()[..], rest].concat();
        assert!(misplaced(&old_point(b"{u1}/cart", b"{u1}/cart")));
        assert!(misplaced(&old_point(b"{u1}", &[&[SYSTEM_PREFIX, KIND_LOCK][..], b"{u1}"].concat())));
        assert!(misplaced(&old_point(b"a{u1}", &[&[SYSTEM_PREFIX, KIND_FENCE][..], b"a{u1}"].concat())));
        for ok in [data_key(b"{u1}/cart"), data_key(b"plain"), data_key(b"{}"), lock_key(b"{u1}"), fence_key(b"a{b}")] {
            assert!(!misplaced(&ok));
        }
        assert!(!misplaced(&request_key(b"{u1}/cart", 7)));
        assert!(!misplaced(b"short"));
    }

    #[test]
    fn round_trip_and_point_leads() {
        let k = data_key("a/b/ключ".as_bytes());
        let (p, user) = split_data_key(&k).unwrap();
        assert_eq!(user, "a/b/ключ".as_bytes());
        assert_eq!(p, hash64(user));
        assert_eq!(&k[..8], &p.to_be_bytes());
        assert!(split_data_key(b"short").is_none());
        let tagged = data_key(b"{u1}/cart");
        assert_eq!(split_data_key(&tagged).unwrap().0, hash64(b"u1"), "a hash tag places the key");
        assert_eq!(&lock_key(b"{u1}/lock")[..8], &tagged[..8], "and a lock name the same way");
        assert_eq!(split_data_key(&data_key(b"")).unwrap().1, b"");
    }
}
