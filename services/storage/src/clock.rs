//! Wall clock behind a trait so tests can drive TTL time.

use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // The fault suite's clock skew of one node (`return(<±ms>)`); only
        // builds with the `failpoints` feature have it.
        fail::fail_point!("clock_offset_ms", |offset| skewed(now, offset.as_deref()));
        now
    }
}

/// `now` moved by a signed offset in milliseconds (unchanged if it does not parse).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn skewed(now: u64, offset: Option<&str>) -> u64 {
    match offset.and_then(|o| o.trim().parse::<i64>().ok()) {
        Some(o) if o >= 0 => now.saturating_add(o as u64),
        Some(o) => now.saturating_sub(o.unsigned_abs()),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::skewed;

    #[test]
    fn a_skew_moves_the_clock_either_way_and_ignores_garbage() {
        assert_eq!(skewed(10_000, Some("2500")), 12_500);
        assert_eq!(skewed(10_000, Some("-2500")), 7_500);
        assert_eq!(skewed(1_000, Some("-2500")), 0);
        assert_eq!(skewed(10_000, Some("soon")), 10_000);
        assert_eq!(skewed(10_000, None), 10_000);
    }
}
