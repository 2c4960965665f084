//! `key_point`: the function that puts a key on the ring, and `hash64`
//! under it.
//!
//! It is FNV-1a over the key bytes followed by the splitmix64 finalizer.
//! FNV-1a alone has weak avalanche on short keys; the finalizer spreads
//! every input bit over the whole output so ring points are uniform.
//! The output is part of the on-disk format (data keys start with it), so
//! it must never change: `pinned_vectors` below fails if it does.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The ring point of a user key or lock name: [`hash64`] of its hash tag
/// if it has one, of the whole key otherwise.
pub fn key_point(key: &[u8]) -> u64 {
    hash64(hash_tag(key))
}

/// The part of `key` that places it, as Redis Cluster does: the bytes
/// between the first `{` and the first `}` after it, if that is not
/// empty; the whole key otherwise. `{user42}/cart` and `{user42}/orders`
/// share a ring point, so they share a shard (and a split cannot part
/// them), and one transaction can hold both.
///
/// Placement is part of the on-disk format: a data dir written before
/// hash tags keeps keys with braces at the point of the whole key, which
/// the storage engine checks at open (see `Engine::check_or_set_placement`).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else { return key };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// FNV-1a and splitmix64: the hash of bytes (keys go through [`key_point`]).
pub fn hash64(key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    splitmix64(h)
}

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_vectors() {
        // Changing these values moves every stored key: never update them
        // without a data migration.
        assert_eq!(hash64(b""), 0xc381_7c01_6ba4_ff30);
        assert_eq!(hash64(b"a"), 0x5f29_c2aa_dd9b_8527);
        assert_eq!(hash64(b"user/42"), 0x8c88_bea9_edcd_9ca7);
        assert_eq!(hash64("ключ".as_bytes()), 0xb69a_f5e2_123c_01d3);
    }

    #[test]
    fn hash_tags_place_keys_as_redis_cluster_does() {
        assert_eq!(hash_tag(b"{user42}/cart"), b"user42");
        assert_eq!(hash_tag(b"orders/{user42}"), b"user42");
        assert_eq!(key_point(b"{user42}/cart"), key_point(b"x{user42}y{other}"));
        assert_eq!(key_point(b"{user42}/cart"), hash64(b"user42"));
        // No tag: the whole key, so keys without braces keep their points.
        for k in [&b"plain"[..], b"{}", b"{}{a}", b"{open", b"close}", b"}{", b""] {
            assert_eq!(hash_tag(k), k, "{:?}", String::from_utf8_lossy(k));
            assert_eq!(key_point(k), hash64(k));
        }
        assert_eq!(hash_tag(b"a{b}}c"), b"b");
        assert_eq!(hash_tag(b"a{{b}c"), b"{b");
    }

    #[test]
    fn spreads_sequential_keys_over_the_ring() {
        // 16 equal buckets of the u64 space; sequential keys must fill them
        // evenly (within 20%), or the ring would be lopsided.
        let mut buckets = [0u32; 16];
        for i in 0..16_000 {
            let p = hash64(format!("key-{i}").as_bytes());
            buckets[(p >> 60) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "uneven: {buckets:?}");
    }
}
