//! Where a request goes next, decided from the last answer alone. Pure, so
//! the policy is tested without actors or sockets.

use std::time::Duration;

use ringstore_shared::{NodeId, StoreError};
use ringstore_storage::ShardResult;

/// Upper bound of the pause between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);
const BACKOFF_BASE_MS: u64 = 5;

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Give `result` to the client.
    Done,
    Retry {
        to: NodeId,
        backoff: Duration,
        reason: &'static str,
    },
}

fn backoff(attempt: u32) -> Duration {
    let ms = BACKOFF_BASE_MS.saturating_mul(1u64 << attempt.min(8));
    Duration::from_millis(ms).min(BACKOFF_MAX)
}

fn next_member(members: &[NodeId], current: NodeId) -> NodeId {
    match members.iter().position(|m| *m == current) {
        Some(i) => members[(i + 1) % members.len()],
        None => members.first().copied().unwrap_or(current),
    }
}

/// `local_leader` is the leader this node's own replica of the shard knows
/// now, if any: fresher than a hint in an old answer, and the first place to
/// try when the answer named nobody. `idempotent`: sending the request
/// again cannot apply it twice (it changes nothing, or it is a write whose
/// request id the state machine deduplicates), so an answer lost on the way
/// is retried too.
pub fn next_step(
    result: &ShardResult,
    target: NodeId,
    members: &[NodeId],
    attempt: u32,
    local_only: bool,
    local_leader: Option<NodeId>,
    idempotent: bool,
) -> Step {
    let err = match result {
        Ok(_) => return Step::Done,
        Err(e) => e,
    };
    if local_only {
        return Step::Done;
    }
    let elsewhere = || local_leader.filter(|l| *l != target).unwrap_or_else(|| next_member(members, target));
    match err {
        // A known leader is worth trying at once.
        StoreError::NotLeader { hint: Some(h), .. } if *h != target => {
            Step::Retry { to: *h, backoff: Duration::ZERO, reason: "not_leader" }
        }
        // Election in progress: wait a little, then ask someone else.
        StoreError::NotLeader { .. } => {
            Step::Retry { to: elsewhere(), backoff: backoff(attempt), reason: "not_leader" }
        }
        StoreError::Dropped { .. } => Step::Retry { to: target, backoff: backoff(attempt), reason: "dropped" },
        // Never delivered: try another member.
        StoreError::Unreachable { .. } => {
            Step::Retry { to: elsewhere(), backoff: backoff(attempt), reason: "unreachable" }
        }
        // Delivered, answer lost (a leader cut off, a link that fell
        // silent): the leader is most likely elsewhere now.
        StoreError::OutcomeUnknown { .. } if idempotent => {
            Step::Retry { to: elsewhere(), backoff: backoff(attempt), reason: "outcome_unknown" }
        }
        _ => Step::Done,
    }
}

/// What this node's own replica of a shard says about its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalLeader {
    /// No local replica, or it leads, or its leader is reachable.
    Fine,
    /// It knows a leader on another node that this node cannot reach, or
    /// it leads itself (and, cut off, can commit nothing).
    CutOff,
    /// It has known no leader for this long.
    None(Duration),
}

/// Whether a request should stop waiting for a leader and answer 503 now:
/// this node reaches fewer than a majority of the shard's `members`
/// (itself included), so no election can end on its side and no leader on
/// the other side can be reached through it; and its replica's leader is
/// on the other side, or it has known none for longer than `grace` (an
/// election would have ended by then). A node that still reaches a
/// majority keeps trying: a leader may be one relay away.
pub fn give_up_leaderless(local: LocalLeader, grace: Duration, reachable: usize, members: usize) -> bool {
    let cut_off = reachable * 2 <= members;
    cut_off
        && match local {
            LocalLeader::Fine => false,
            LocalLeader::CutOff => true,
            LocalLeader::None(d) => d >= grace,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[NodeId] = &[1, 2, 3];

    fn nl(hint: Option<NodeId>) -> ShardResult {
        Err(StoreError::NotLeader { shard: 1, hint })
    }

    #[test]
    fn follows_a_leader_hint_immediately() {
        assert_eq!(
            next_step(&nl(Some(3)), 1, M, 0, false, None, false),
            Step::Retry { to: 3, backoff: Duration::ZERO, reason: "not_leader" }
        );
    }

    #[test]
    fn without_a_hint_rotates_with_growing_bounded_backoff() {
        let s0 = next_step(&nl(None), 3, M, 0, false, None, false);
        assert_eq!(s0, Step::Retry { to: 1, backoff: Duration::from_millis(5), reason: "not_leader" });
        let Step::Retry { backoff, .. } = next_step(&nl(None), 1, M, 30, false, None, false) else { panic!() };
        assert_eq!(backoff, BACKOFF_MAX);
    }

    #[test]
    fn a_hint_pointing_at_the_target_itself_is_not_followed_blindly() {
        let Step::Retry { to, .. } = next_step(&nl(Some(2)), 2, M, 0, false, None, false) else { panic!() };
        assert_eq!(to, 3);
    }

    #[test]
    fn outcomes_that_may_have_applied_are_never_retried() {
        for e in [
            StoreError::Timeout { timeout_ms: 1 },
            StoreError::Unavailable { reason: "no quorum".into() },
            StoreError::OutcomeUnknown { reason: "replica stopped".into() },
            StoreError::PreconditionFailed { current: Some(1) },
            StoreError::NotFound,
        ] {
            assert_eq!(next_step(&Err(e), 1, M, 0, false, None, false), Step::Done);
        }
    }

    #[test]
    fn a_lost_answer_is_retried_only_when_a_retry_cannot_apply_twice() {
        let lost = Err(StoreError::OutcomeUnknown { reason: "connection lost".into() });
        assert_eq!(next_step(&lost, 1, M, 0, false, None, false), Step::Done);
        assert!(matches!(
            next_step(&lost, 1, M, 0, false, Some(3), true),
            Step::Retry { to: 3, reason: "outcome_unknown", .. }
        ));
        let timeout = Err(StoreError::Timeout { timeout_ms: 5 });
        assert_eq!(next_step(&timeout, 1, M, 0, false, None, true), Step::Done, "the deadline is the client's");
    }

    #[test]
    fn dropped_and_unreachable_are_retried() {
        let d = Err(StoreError::Dropped { reason: "x" });
        assert!(matches!(next_step(&d, 1, M, 0, false, None, false), Step::Retry { to: 1, .. }));
        let u = Err(StoreError::Unreachable { node: 2 });
        assert!(matches!(next_step(&u, 2, M, 0, false, None, false), Step::Retry { to: 3, .. }));
    }

    #[test]
    fn what_the_local_replica_knows_beats_rotation_but_not_a_fresh_hint() {
        let u = Err(StoreError::Unreachable { node: 1 });
        assert!(matches!(next_step(&u, 1, M, 0, false, Some(3), false), Step::Retry { to: 3, .. }));
        // The local view still names the node that just failed: rotate.
        assert!(matches!(next_step(&u, 1, M, 0, false, Some(1), false), Step::Retry { to: 2, .. }));
        assert!(matches!(next_step(&nl(None), 2, M, 0, false, Some(1), false), Step::Retry { to: 1, .. }));
        assert!(matches!(next_step(&nl(Some(2)), 1, M, 0, false, Some(3), false), Step::Retry { to: 2, .. }));
    }

    #[test]
    fn a_cut_off_node_gives_up_after_the_grace_a_connected_one_never() {
        let g = Duration::from_millis(500);
        let none = |ms| LocalLeader::None(Duration::from_millis(ms));
        assert!(!give_up_leaderless(LocalLeader::Fine, g, 1, 3), "a reachable leader, or this node leads");
        assert!(!give_up_leaderless(none(200), g, 1, 3), "an election may still end");
        assert!(give_up_leaderless(none(500), g, 1, 3));
        assert!(give_up_leaderless(LocalLeader::CutOff, g, 1, 3), "its leader is on the other side");
        assert!(!give_up_leaderless(none(5000), g, 2, 3), "reaches a majority: a leader may be a relay away");
        assert!(!give_up_leaderless(LocalLeader::CutOff, g, 2, 3));
        assert!(give_up_leaderless(none(500), g, 2, 5));
        assert!(!give_up_leaderless(none(500), g, 3, 5));
    }

    #[test]
    fn local_only_requests_are_not_retried() {
        assert_eq!(next_step(&nl(None), 1, M, 0, true, None, false), Step::Done);
    }
}
