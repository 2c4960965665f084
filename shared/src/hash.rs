//! `hash64`: the function that puts a key on the ring.
//!
//! It is FNV-1a over the key bytes followed by the splitmix64 finalizer.
//! FNV-1a alone has weak avalanche on short keys; the finalizer spreads
//! every input bit over the whole output so ring points are uniform.
//! The output is part of the on-disk format (data keys start with it), so
//! it must never change: `pinned_vectors` below fails if it does.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The ring point of a user key.
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
