//! What a shard's leader knows of its load, for splits by load: the
//! request rate, and a sample of the ring points (and keys) of the latest
//! requests, from which it proposes where to cut its window so the load
//! ends up halved, or says that one key carries so much of it that no cut
//! can help (a hot key: reported, never split).
//!
//! Pure: the actor feeds it requests with their time; tested without a
//! runtime.

use std::time::{Duration, Instant};

/// Requests kept for the distribution: the latest ones.
pub const SAMPLE_SIZE: usize = 512;
/// Key bytes kept per sample: enough to name a hot key to an operator.
pub const SAMPLE_KEY_BYTES: usize = 128;
/// The rate is counted over windows of this length.
const WINDOW: Duration = Duration::from_secs(1);
/// A cut that leaves more than this share of the load on one side does
/// not split the load: the dominant point is one hot key.
const DOMINANT_SHARE: f64 = 0.8;
/// Below this rate no key is called hot: one key read now and then is
/// all of a quiet shard's load, and nothing to report.
pub const HOT_KEY_MIN_QPS: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Requests per second over the last full window.
    pub qps: u64,
    /// The point to cut the window at so each side gets about half the
    /// sampled load (the new shard takes the points from here up).
    pub split_at: Option<u64>,
    /// A key that carries most of the load, so no cut can halve it, with
    /// its share of the sample in percent.
    pub hot_key: Option<(Vec<u8>, u8)>,
}

pub struct LoadSampler {
    samples: Vec<(u64, Vec<u8>)>,
    next: usize,
    window_start: Option<Instant>,
    in_window: u64,
    qps: u64,
}

impl Default for LoadSampler {
    fn default() -> Self {
        LoadSampler { samples: Vec::with_capacity(SAMPLE_SIZE), next: 0, window_start: None, in_window: 0, qps: 0 }
    }
}

impl LoadSampler {
    pub fn record(&mut self, point: u64, key: &[u8], now: Instant) {
        self.roll(now);
        self.in_window += 1;
        let key = key[..key.len().min(SAMPLE_KEY_BYTES)].to_vec();
        if self.samples.len() < SAMPLE_SIZE {
            self.samples.push((point, key));
        } else {
            self.samples[self.next] = (point, key);
        }
        self.next = (self.next + 1) % SAMPLE_SIZE;
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            // A window with no requests after it counts as idle.
            self.qps = if elapsed >= 2 * WINDOW { 0 } else { self.in_window };
            self.in_window = 0;
            self.window_start = Some(now);
        }
    }

    /// Forgets everything (this replica stopped leading, or its ranges
    /// changed).
    pub fn reset(&mut self) {
        *self = LoadSampler::default();
    }

    /// The rate (of the last full window as of `now`) and where to cut.
    pub fn report(&self, now: Instant) -> LoadReport {
        let qps = match self.window_start.map(|s| now.saturating_duration_since(s)) {
            Some(e) if e >= 2 * WINDOW => 0,
            Some(e) if e >= WINDOW => self.in_window,
            _ => self.qps,
        };
        let (split_at, hot_key) = cut(&self.samples);
        LoadReport { qps, split_at, hot_key: hot_key.filter(|_| qps >= HOT_KEY_MIN_QPS) }
    }
}

/// Where to cut the sampled points so the two sides are closest to equal,
/// or the dominant key when the best cut still leaves most on one side.
fn cut(samples: &[(u64, Vec<u8>)]) -> (Option<u64>, Option<(Vec<u8>, u8)>) {
    let n = samples.len();
    if n < 2 {
        return (None, None);
    }
    let mut points: Vec<u64> = samples.iter().map(|(p, _)| *p).collect();
    points.sort_unstable();
    // Cutting at points[i] (the first of a run of equal points) leaves i
    // samples below and n - i from it up.
    let mut best: Option<(usize, u64)> = None;
    for i in 1..n {
        if points[i] == points[i - 1] {
            continue;
        }
        let worse = i.max(n - i);
        if best.is_none_or(|(b, _)| worse < b) {
            best = Some((worse, points[i]));
        }
    }
    match best {
        Some((worse, at)) if (worse as f64) <= DOMINANT_SHARE * n as f64 => (Some(at), None),
        _ => {
            // One point (one key, or keys colliding on a point) dominates.
            let mut runs: Vec<(usize, u64)> = Vec::new();
            for p in &points {
                match runs.last_mut() {
                    Some((c, q)) if q == p => *c += 1,
                    _ => runs.push((1, *p)),
                }
            }
            let (count, point) = runs.into_iter().max().unwrap_or((0, 0));
            let key = samples.iter().find(|(p, _)| *p == point).map(|(_, k)| k.clone()).unwrap_or_default();
            (None, Some((key, (count * 100 / n) as u8)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(points: &[(u64, &str)], now: Instant) -> LoadSampler {
        let mut s = LoadSampler::default();
        for (p, k) in points {
            s.record(*p, k.as_bytes(), now);
        }
        s
    }

    #[test]
    fn an_even_load_is_cut_in_the_middle() {
        let now = Instant::now();
        let pts: Vec<(u64, &str)> = (0..100u64).map(|i| (i * 10, "k")).collect();
        let r = sampler(&pts, now).report(now);
        assert_eq!(r.split_at, Some(500), "50 below, 50 from it up");
        assert_eq!(r.hot_key, None);
    }

    #[test]
    fn a_hot_range_is_cut_through_its_middle() {
        let now = Instant::now();
        // 90% of requests on ten keys at points 1000..1009, the rest spread.
        let mut pts: Vec<(u64, &str)> = (0..450u64).map(|i| (1000 + i % 10, "hot")).collect();
        pts.extend((0..50u64).map(|i| (i * 100_000, "cold")));
        let r = sampler(&pts, now).report(now);
        let at = r.split_at.expect("splittable");
        assert!((1001..=1009).contains(&at), "inside the hot range: {at}");
        let above = pts.iter().filter(|(p, _)| *p >= at).count() as f64 / pts.len() as f64;
        assert!((0.3..=0.7).contains(&above), "{above}");
    }

    #[test]
    fn one_hot_key_is_reported_not_split() {
        let now = Instant::now();
        let mut pts: Vec<(u64, &str)> = (0..95).map(|_| (77, "the-key")).collect();
        pts.extend((0..5u64).map(|i| (i * 1000 + 5000, "other")));
        let s = sampler(&pts, now);
        assert_eq!(s.report(now).split_at, None);
        assert_eq!(s.report(now).hot_key, None, "100 requests in no full second: not hot");
        let r = s.report(now + Duration::from_millis(1_500));
        assert_eq!(r.hot_key, Some((b"the-key".to_vec(), 95)));
    }

    #[test]
    fn the_rate_is_the_last_full_window_and_samples_are_the_latest() {
        let t0 = Instant::now();
        let mut s = LoadSampler::default();
        for i in 0..300u64 {
            s.record(i, b"k", t0 + Duration::from_millis(i * 3)); // 300 in 0.9 s
        }
        assert_eq!(s.report(t0 + Duration::from_millis(950)).qps, 0, "no full window yet");
        assert_eq!(s.report(t0 + Duration::from_millis(1_100)).qps, 300);
        s.record(5, b"k", t0 + Duration::from_millis(1_200)); // rolls: 300 was the last full window
        assert_eq!(s.report(t0 + Duration::from_millis(1_300)).qps, 300);
        assert_eq!(s.report(t0 + Duration::from_millis(3_500)).qps, 0, "idle since");
        for i in 0..2 * SAMPLE_SIZE as u64 {
            s.record(1_000_000 + i, &[b'x'; 1000], t0);
        }
        assert_eq!(s.samples.len(), SAMPLE_SIZE);
        assert!(s.samples.iter().all(|(p, k)| *p >= 1_000_000 && k.len() == SAMPLE_KEY_BYTES));
    }
}
