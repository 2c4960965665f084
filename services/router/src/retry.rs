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

pub fn next_step(result: &ShardResult, target: NodeId, members: &[NodeId], attempt: u32, local_only: bool) -> Step {
    let err = match result {
        Ok(_) => return Step::Done,
        Err(e) => e,
    };
    if local_only {
        return Step::Done;
    }
    match err {
        // A known leader is worth trying at once.
        StoreError::NotLeader { hint: Some(h), .. } if *h != target => {
            Step::Retry { to: *h, backoff: Duration::ZERO, reason: "not_leader" }
        }
        // Election in progress: wait a little, then ask someone else.
        StoreError::NotLeader { .. } => {
            Step::Retry { to: next_member(members, target), backoff: backoff(attempt), reason: "not_leader" }
        }
        StoreError::Dropped { .. } => Step::Retry { to: target, backoff: backoff(attempt), reason: "dropped" },
        // Never delivered: try another member.
        StoreError::Unreachable { .. } => {
            Step::Retry { to: next_member(members, target), backoff: backoff(attempt), reason: "unreachable" }
        }
        _ => Step::Done,
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
            next_step(&nl(Some(3)), 1, M, 0, false),
            Step::Retry { to: 3, backoff: Duration::ZERO, reason: "not_leader" }
        );
    }

    #[test]
    fn without_a_hint_rotates_with_growing_bounded_backoff() {
        let s0 = next_step(&nl(None), 3, M, 0, false);
        assert_eq!(s0, Step::Retry { to: 1, backoff: Duration::from_millis(5), reason: "not_leader" });
        let Step::Retry { backoff, .. } = next_step(&nl(None), 1, M, 30, false) else { panic!() };
        assert_eq!(backoff, BACKOFF_MAX);
    }

    #[test]
    fn a_hint_pointing_at_the_target_itself_is_not_followed_blindly() {
        let Step::Retry { to, .. } = next_step(&nl(Some(2)), 2, M, 0, false) else { panic!() };
        assert_eq!(to, 3);
    }

    #[test]
    fn outcomes_that_may_have_applied_are_never_retried() {
        for e in [
            StoreError::Timeout { timeout_ms: 1 },
            StoreError::Unavailable { reason: "replica stopped; outcome unknown".into() },
            StoreError::PreconditionFailed { current: Some(1) },
            StoreError::NotFound,
        ] {
            assert_eq!(next_step(&Err(e), 1, M, 0, false), Step::Done);
        }
    }

    #[test]
    fn dropped_and_unreachable_are_retried() {
        let d = Err(StoreError::Dropped { reason: "x" });
        assert!(matches!(next_step(&d, 1, M, 0, false), Step::Retry { to: 1, .. }));
        let u = Err(StoreError::Unreachable { node: 2 });
        assert!(matches!(next_step(&u, 2, M, 0, false), Step::Retry { to: 3, .. }));
    }

    #[test]
    fn local_only_requests_are_not_retried() {
        assert_eq!(next_step(&nl(None), 1, M, 0, true), Step::Done);
    }
}
