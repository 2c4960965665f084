//! Key choosers: uniform, and zipfian (YCSB's generator after Gray et
//! al., "Quickly Generating Billion-Record Synthetic Databases", theta
//! 0.99), so a few keys are hot, as in real caches and coordination data.

use rand::Rng;

pub enum KeyDist {
    Uniform { n: u64 },
    Zipfian(Zipfian),
}

impl KeyDist {
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyDist::Uniform { n } => rng.gen_range(0..*n),
            KeyDist::Zipfian(z) => z.next(rng),
        }
    }
}

pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

pub const ZIPF_THETA: f64 = 0.99;

impl Zipfian {
    /// O(n) set-up (the zeta sum); n up to a few million is fine.
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(n >= 2 && theta > 0.0 && theta < 1.0);
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { n, theta, alpha, zetan, eta }
    }

    /// Rank 0 is the hottest key.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = Zipfian::new(10_000, ZIPF_THETA);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            let k = z.next(&mut rng);
            counts[k as usize] += 1;
        }
        // The hottest key alone takes several percent; the top 1% of keys
        // take far more than 1% of the draws.
        assert!(counts[0] > 5_000, "rank 0 drew {}", counts[0]);
        let top: u32 = counts[..100].iter().sum();
        assert!(top > 30_000, "top 1% drew {top}");
    }

    #[test]
    fn uniform_covers_the_range() {
        let d = KeyDist::Uniform { n: 10 };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[d.next(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
