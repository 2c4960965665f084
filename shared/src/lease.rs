//! Leader read leases: when a shard's leader may answer a linearizable
//! read from its own state, without a ReadIndex round to its followers.
//!
//! Why a lease holds: replicas run with check-quorum, so a follower that
//! heard from its leader refuses (pre-)votes until its own election timer
//! has run `election_ticks` ticks since. When a ReadIndex issued at `t`
//! is confirmed, a quorum heard from this leader at or after `t`; no other
//! leader can be elected before one of them has counted a full election
//! timeout, which takes at least `(election_ticks - 1)` tick intervals (a
//! tick may fire just after the reset) on a clock that may run fast by the
//! configured maximum drift. So until `t + lease` with
//!
//! `lease = (election_ticks - 1) * tick - max_clock_drift`
//!
//! this leader's commit index is the newest, and a read served once its
//! applied index reaches it is linearizable.
//!
//! Fast failover shortens that promise: a follower whose link to its
//! leader is down stops waiting for the full election timeout and, once
//! `fast_failover_ticks` ticks have passed since it last heard from the
//! leader ([`presume_leader_down`]), forgets it (and so will vote) and
//! campaigns. The lease is then bounded by that wait instead, measured on
//! the follower's monotonic clock:
//!
//! `lease = min((election_ticks - 1) * tick, fast_failover_ticks * tick) - max_clock_drift`
//!
//! A replica that restarts has forgotten when it last heard from anyone;
//! it refuses (pre-)votes for one election timeout after its start.
//!
//! raft-rs's own `ReadOnlyOption::LeaseBased` is not used: it trusts the
//! leader's check-quorum, which can keep a deposed leader serving for up to
//! two election timeouts, and it ignores drift.
//!
//! A leadership transfer breaks the premise (the transferee campaigns at
//! once, past the followers' refusal), so a leader that begins one stops
//! serving from its lease for [`Lease::suspend`]'s span.

use std::time::{Duration, Instant};

use crate::config::RaftConfig;

/// The lease a confirmed ReadIndex buys for `cfg`, or `None` if the timing
/// leaves nothing once the drift is subtracted (or leases are off).
pub fn lease_span(cfg: &RaftConfig) -> Option<Duration> {
    if !cfg.lease_reads {
        return None;
    }
    let ticks = u64::try_from(cfg.election_ticks.saturating_sub(1)).unwrap_or(u64::MAX);
    let mut refusal_ms = ticks.saturating_mul(cfg.tick_interval_ms);
    if let Some(wait) = failover_wait(cfg) {
        refusal_ms = refusal_ms.min(wait.as_millis() as u64);
    }
    let safe_ms = refusal_ms.checked_sub(cfg.max_clock_drift_ms)?;
    (safe_ms > 0).then(|| Duration::from_millis(safe_ms))
}

/// How long a follower whose link to its leader is down waits, from when
/// it last heard from that leader, before it forgets it; `None`: it waits
/// for its election timeout like any follower.
pub fn failover_wait(cfg: &RaftConfig) -> Option<Duration> {
    let ticks = u64::try_from(cfg.fast_failover_ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_millis(ticks.saturating_mul(cfg.tick_interval_ms)))
}

/// Whether a follower should give its leader up now: it last heard from
/// it at least `wait` ago (the leader's lease, if any, has run out by
/// then), and the transport knows the link to it is down. `link_down` is
/// asked only then: every replica asks every tick.
pub fn presume_leader_down(since_heard: Duration, wait: Option<Duration>, link_down: impl FnOnce() -> bool) -> bool {
    wait.is_some_and(|w| since_heard >= w) && link_down()
}

/// One leader's read lease.
#[derive(Debug, Default, Clone)]
pub struct Lease {
    until: Option<Instant>,
    suspended_until: Option<Instant>,
}

impl Lease {
    /// A ReadIndex issued at `issued` was confirmed by a quorum.
    pub fn confirmed(&mut self, issued: Instant, span: Duration) {
        let until = issued + span;
        if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// Whether a read arriving at `now` may be served from the lease.
    pub fn valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u) && self.suspended_until.is_none_or(|s| now >= s)
    }

    /// Whether the lease ends within `margin` of `now` (or is not held):
    /// time to renew it with a ReadIndex, so a steady stream of reads never
    /// finds it expired.
    pub fn expiring(&self, now: Instant, margin: Duration) -> bool {
        !self.valid(now + margin)
    }

    /// Leadership was lost or changed hands: nothing holds any more.
    pub fn revoke(&mut self) {
        self.until = None;
    }

    /// A leadership transfer began at `now`: no lease reads for `span`
    /// (the transferee may win at any moment within it), and confirmations
    /// of ReadIndexes issued before do not count.
    pub fn suspend(&mut self, now: Instant, span: Duration) {
        self.until = None;
        self.suspended_until = Some(now + span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(election_ticks: usize, tick: u64, drift: u64) -> RaftConfig {
        RaftConfig {
            election_ticks,
            tick_interval_ms: tick,
            max_clock_drift_ms: drift,
            fast_failover_ticks: 0,
            ..RaftConfig::default()
        }
    }

    #[test]
    fn fast_failover_bounds_the_lease_by_its_wait() {
        let c = RaftConfig { fast_failover_ticks: 5, ..cfg(10, 100, 100) };
        assert_eq!(failover_wait(&c), Some(Duration::from_millis(500)));
        assert_eq!(lease_span(&c), Some(Duration::from_millis(400)));
        // A wait longer than the election timeout changes nothing.
        let c = RaftConfig { fast_failover_ticks: 20, ..cfg(10, 100, 100) };
        assert_eq!(lease_span(&c), Some(Duration::from_millis(800)));
        assert_eq!(failover_wait(&cfg(10, 100, 100)), None);
    }

    #[test]
    fn a_follower_gives_its_leader_up_only_when_the_link_is_down_and_the_wait_is_over() {
        let wait = Some(Duration::from_millis(500));
        assert!(presume_leader_down(Duration::from_millis(500), wait, || true));
        assert!(!presume_leader_down(Duration::from_millis(499), wait, || true));
        assert!(!presume_leader_down(Duration::from_secs(5), wait, || false));
        assert!(!presume_leader_down(Duration::from_secs(5), None, || true));
        // The link is not asked about while the leader was heard lately.
        assert!(!presume_leader_down(Duration::from_millis(10), wait, || unreachable!()));
    }

    #[test]
    fn the_span_is_the_followers_refusal_less_one_tick_and_the_drift() {
        assert_eq!(lease_span(&cfg(10, 100, 100)), Some(Duration::from_millis(800)));
        assert_eq!(lease_span(&cfg(10, 100, 0)), Some(Duration::from_millis(900)));
        // Drift that eats the whole window leaves no lease.
        assert_eq!(lease_span(&cfg(3, 50, 100)), None);
        assert_eq!(lease_span(&cfg(3, 50, 200)), None);
        let off = RaftConfig { lease_reads: false, ..RaftConfig::default() };
        assert_eq!(lease_span(&off), None);
    }

    #[test]
    fn a_lease_runs_from_the_issue_of_the_read_index_not_its_answer() {
        let t0 = Instant::now();
        let span = Duration::from_millis(800);
        let mut l = Lease::default();
        assert!(!l.valid(t0));
        l.confirmed(t0, span);
        assert!(l.valid(t0 + Duration::from_millis(799)));
        assert!(!l.valid(t0 + span));
        // An older confirmation arriving late never shortens it.
        l.confirmed(t0 - Duration::from_millis(500), span);
        assert!(l.valid(t0 + Duration::from_millis(799)));
    }

    #[test]
    fn renewal_is_due_a_margin_before_the_end() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.confirmed(t0, Duration::from_millis(800));
        let margin = Duration::from_millis(200);
        assert!(!l.expiring(t0 + Duration::from_millis(500), margin));
        assert!(l.expiring(t0 + Duration::from_millis(650), margin));
    }

    #[test]
    fn losing_leadership_or_handing_it_over_ends_the_lease() {
        let t0 = Instant::now();
        let span = Duration::from_millis(800);
        let mut l = Lease::default();
        l.confirmed(t0, span);
        l.revoke();
        assert!(!l.valid(t0));

        l.confirmed(t0, span);
        l.suspend(t0, Duration::from_secs(4));
        assert!(!l.valid(t0 + Duration::from_millis(1)));
        // Confirmations during the suspension do not bring it back early.
        l.confirmed(t0 + Duration::from_secs(1), span);
        assert!(!l.valid(t0 + Duration::from_millis(1500)));
        l.confirmed(t0 + Duration::from_secs(4), span);
        assert!(l.valid(t0 + Duration::from_millis(4100)));
    }
}
