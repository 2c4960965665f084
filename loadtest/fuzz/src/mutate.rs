//! The mutator: one to eight byte-level edits of a corpus input, of the
//! kinds that find bugs in length-prefixed binary codecs and in text
//! parsers (lengths and counts turned huge, zero or off by one; cut
//! inputs; repeated and spliced runs; text's separators and escapes).

use rand::Rng;

use crate::INPUT_BYTES_MAX;

/// Integers at the edges where length checks go wrong.
const INTERESTING: [u64; 12] = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX];
/// Bytes that mean something to the text parsers.
const TEXT_BYTES: &[u8] = b"%/{}[]\",:.=&?+-0123456789 \\\n\r\t\0\xff";

/// A random input of up to 64 bytes (for a target with no corpus).
pub fn fresh(rng: &mut impl Rng) -> Vec<u8> {
    let n = rng.gen_range(0..64);
    (0..n).map(|_| rng.gen()).collect()
}

/// `base` with one to eight edits; `other` is spliced from.
pub fn mutate(rng: &mut impl Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.gen_range(1..=8) {
        edit(rng, &mut v, other);
    }
    v.truncate(INPUT_BYTES_MAX);
    v
}

/// A position in `0..n` (0 when `n` is 0).
fn pick(rng: &mut impl Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        rng.gen_range(0..n)
    }
}

fn edit(rng: &mut impl Rng, v: &mut Vec<u8>, other: &[u8]) {
    let len = v.len();
    match rng.gen_range(0..11) {
        // Flip a bit.
        0 if len > 0 => {
            let i = pick(rng, len);
            v[i] ^= 1 << rng.gen_range(0..8);
        }
        // A random byte.
        1 if len > 0 => {
            let i = pick(rng, len);
            v[i] = rng.gen();
        }
        // An interesting integer, big-endian (as the codecs write them),
        // 1, 2, 4 or 8 bytes wide.
        2 if len > 0 => {
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
            let n = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            let bytes = n.to_be_bytes();
            let i = pick(rng, len);
            for (k, b) in bytes[8 - width..].iter().enumerate() {
                if let Some(slot) = v.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
        // Add or subtract a little from one byte (a length off by one).
        3 if len > 0 => {
            let i = pick(rng, len);
            v[i] = v[i].wrapping_add([1u8, 255, 2, 254][rng.gen_range(0..4)]);
        }
        // Cut the end off.
        4 if len > 0 => v.truncate(pick(rng, len)),
        // Remove a run.
        5 if len > 1 => {
            let i = pick(rng, len);
            let n = rng.gen_range(1..=(len - i).min(16));
            v.drain(i..i + n);
        }
        // Repeat a run in place.
        6 if len > 0 => {
            let i = pick(rng, len);
            let n = rng.gen_range(1..=(len - i).min(64));
            let run: Vec<u8> = v[i..i + n].to_vec();
            let times = rng.gen_range(1..=8);
            for _ in 0..times {
                v.splice(i..i, run.iter().copied());
            }
        }
        // Insert random bytes.
        7 => {
            let i = pick(rng, len + 1);
            let n = rng.gen_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            v.splice(i..i, bytes);
        }
        // Insert a byte that text parsers treat specially.
        8 => {
            let i = pick(rng, len + 1);
            v.insert(i, TEXT_BYTES[rng.gen_range(0..TEXT_BYTES.len())]);
        }
        // Splice: a prefix of this input, a suffix of the other.
        9 if !other.is_empty() => {
            let cut = pick(rng, len + 1);
            let from = pick(rng, other.len());
            v.truncate(cut);
            v.extend_from_slice(&other[from..]);
        }
        // Append a whole other input (two frames back to back).
        _ => v.extend_from_slice(other),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let base = b"{\"ops\":[{\"op\":\"get\",\"key\":\"a\"}]}".to_vec();
        let big = vec![7u8; INPUT_BYTES_MAX];
        let mut changed = 0;
        for _ in 0..2000 {
            let m = mutate(&mut rng, &base, &big);
            assert!(m.len() <= INPUT_BYTES_MAX);
            changed += usize::from(m != base);
        }
        assert!(changed > 1900, "only {changed} of 2000 mutations changed the input");
        // Empty inputs are fine too.
        for _ in 0..100 {
            let _ = mutate(&mut rng, &[], &[]);
        }
    }
}
