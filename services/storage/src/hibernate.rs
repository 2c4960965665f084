//! Hibernation of quiet Raft groups: when a shard's group may stop ticking
//! and heartbeating, and what wakes it. Pure rules; the replica actor asks
//! them and acts.
//!
//! A leader whose group has had nothing to do for
//! `hibernate_after_ticks` ticks (every entry committed, applied and on
//! every peer, nothing in flight, every peer's node reachable) sends each
//! peer one *quiesce* heartbeat ([`quiesce_message`]) and stops ticking: no
//! more heartbeats. A follower that gets it, and is caught up to it, stops
//! ticking too: no election timer. Idle groups then cost a timer check per
//! tick and nothing on the wire, the way TiKV's hibernate regions and
//! CockroachDB's quiesced ranges do.
//!
//! Waking needs no timer of the group: a proposal, a read or any Raft
//! message other than a heartbeat response wakes the replica that gets
//! it, and a woken leader's next message wakes its followers. A leader's
//! death is seen by the peer links (a process killed or paused, a
//! partition: see `ringstore-peer`), not by the group: a sleeping follower
//! wakes once its leader's node is known unreachable, and campaigns at once
//! (fast failover, since it has not heard from the leader for long).
//! Safety never rests on this: a sleeping follower only refuses votes for
//! longer (its election clock stands still), which keeps every lease
//! promise; a lost quiesce heartbeat leaves a follower awake, whose
//! eventual pre-vote wakes the group.

use raft::eraftpb::{Message as RaftMessage, MessageType};

/// The context of a quiesce heartbeat. Heartbeat contexts otherwise carry
/// ReadIndex request ids, which are 8-byte counters: never this.
pub const QUIESCE_CONTEXT: &[u8] = b"ringstore:quiesce";

/// What a leader knows of its group when it asks whether it may sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderQuiet {
    pub last_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// The lowest index every peer is known to hold.
    pub min_matched: u64,
    /// A leadership transfer or an unapplied configuration change.
    pub changing: bool,
    /// Client work in flight: writes, reads, lock waiters, a Ready staged
    /// or not yet durable, parked requests.
    pub busy: bool,
    /// Every peer's node is reachable (a peer that is not may need the
    /// leader's heartbeats to come back).
    pub peers_reachable: bool,
}

/// Whether a leader may put its group to sleep now.
pub fn leader_may_sleep(s: &LeaderQuiet) -> bool {
    s.last_index == s.committed
        && s.applied == s.committed
        && s.min_matched == s.last_index
        && !s.changing
        && !s.busy
        && s.peers_reachable
}

/// What a follower knows when a quiesce heartbeat from `from` arrives
/// (after it was stepped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerQuiet {
    pub term: u64,
    pub leader: u64,
    pub last_index: u64,
    pub committed: u64,
    /// Reads it forwarded and waits for, a campaign it was asked to run.
    pub busy: bool,
}

/// Whether a follower that got `m` (a quiesce heartbeat) may sleep: it is
/// from the leader it follows, of its term, and it holds everything the
/// leader committed (a follower behind stays awake to be caught up).
pub fn follower_may_sleep(m: &RaftMessage, s: &FollowerQuiet) -> bool {
    is_quiesce(m)
        && m.term == s.term
        && s.leader != 0
        && m.from == s.leader
        && s.last_index == m.commit
        && s.committed == m.commit
        && !s.busy
}

/// The heartbeat a leader sends each peer as its group goes to sleep.
/// Stepped as an ordinary heartbeat (it sets the commit index and resets
/// the election clock); the context tells the follower to sleep too.
pub fn quiesce_message(from: u64, to: u64, term: u64, commit: u64) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.term = term;
    m.commit = commit;
    m.context = QUIESCE_CONTEXT.to_vec().into();
    m
}

pub fn is_quiesce(m: &RaftMessage) -> bool {
    m.get_msg_type() == MessageType::MsgHeartbeat && m.context.as_ref() as &[u8] == QUIESCE_CONTEXT
}

/// Whether a received message wakes a sleeping replica. The answers to
/// the leader's own quiesce heartbeats do not (they would wake it at
/// once); neither does a quiesce heartbeat.
pub fn wakes(m: &RaftMessage) -> bool {
    let echo = m.get_msg_type() == MessageType::MsgHeartbeatResponse && m.context.as_ref() as &[u8] == QUIESCE_CONTEXT;
    !echo && !is_quiesce(m)
}

/// Why a sleeping replica woke: the `reason` label of
/// `ringstore_raft_hibernation_wakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A write, read, lock command or leadership change arrived.
    Request,
    /// A Raft message other than a quiesce heartbeat or its answer.
    Message,
    /// Follower: its leader's node is known unreachable.
    LeaderUnreachable,
}

impl Wake {
    pub fn label(self) -> &'static str {
        match self {
            Wake::Request => "request",
            Wake::Message => "message",
            Wake::LeaderUnreachable => "leader_unreachable",
        }
    }
}

/// A replica's hibernation clock: ticks since it last had anything to do,
/// and whether it sleeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hibernation {
    quiet_ticks: usize,
    asleep: bool,
}

impl Hibernation {
    pub fn asleep(&self) -> bool {
        self.asleep
    }

    /// Activity: the quiet count starts over. Returns whether the replica
    /// was asleep (and so has just woken).
    pub fn touch(&mut self) -> bool {
        self.quiet_ticks = 0;
        std::mem::replace(&mut self.asleep, false)
    }

    /// One tick of an awake replica; returns whether it has been quiet for
    /// `after` ticks (0: never, hibernation is off).
    pub fn tick(&mut self, after: usize) -> bool {
        self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        after > 0 && self.quiet_ticks >= after
    }

    pub fn sleep(&mut self) {
        self.asleep = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_leader() -> LeaderQuiet {
        LeaderQuiet {
            last_index: 7,
            committed: 7,
            applied: 7,
            min_matched: 7,
            changing: false,
            busy: false,
            peers_reachable: true,
        }
    }

    #[test]
    fn a_leader_sleeps_only_when_everything_is_committed_applied_and_everywhere() {
        assert!(leader_may_sleep(&quiet_leader()));
        let not = [
            LeaderQuiet { last_index: 8, ..quiet_leader() },
            LeaderQuiet { applied: 6, ..quiet_leader() },
            LeaderQuiet { min_matched: 6, ..quiet_leader() },
            LeaderQuiet { changing: true, ..quiet_leader() },
            LeaderQuiet { busy: true, ..quiet_leader() },
            LeaderQuiet { peers_reachable: false, ..quiet_leader() },
        ];
        for s in not {
            assert!(!leader_may_sleep(&s), "{s:?}");
        }
    }

    fn follower() -> FollowerQuiet {
        FollowerQuiet { term: 3, leader: 1, last_index: 7, committed: 7, busy: false }
    }

    #[test]
    fn a_follower_sleeps_on_its_leaders_quiesce_heartbeat_when_caught_up() {
        let m = quiesce_message(1, 2, 3, 7);
        assert!(follower_may_sleep(&m, &follower()));
        assert!(!follower_may_sleep(&quiesce_message(4, 2, 3, 7), &follower()), "not its leader");
        assert!(!follower_may_sleep(&quiesce_message(1, 2, 2, 7), &follower()), "an older term");
        assert!(!follower_may_sleep(&m, &FollowerQuiet { last_index: 6, committed: 6, ..follower() }), "behind");
        assert!(!follower_may_sleep(&m, &FollowerQuiet { committed: 6, ..follower() }), "commit unknown");
        assert!(!follower_may_sleep(&m, &FollowerQuiet { last_index: 8, ..follower() }), "uncommitted tail");
        assert!(!follower_may_sleep(&m, &FollowerQuiet { busy: true, ..follower() }));
        assert!(!follower_may_sleep(&m, &FollowerQuiet { leader: 0, ..follower() }));
        let mut plain = m.clone();
        plain.context = Default::default();
        assert!(!follower_may_sleep(&plain, &follower()), "an ordinary heartbeat");
    }

    #[test]
    fn only_quiesce_heartbeats_and_their_echoes_let_a_sleeper_sleep_on() {
        let q = quiesce_message(1, 2, 3, 7);
        assert!(!wakes(&q));
        let mut echo = RaftMessage::default();
        echo.set_msg_type(MessageType::MsgHeartbeatResponse);
        echo.context = QUIESCE_CONTEXT.to_vec().into();
        assert!(!wakes(&echo));
        echo.context = Default::default();
        assert!(wakes(&echo), "an ordinary heartbeat response");
        let mut append = RaftMessage::default();
        append.set_msg_type(MessageType::MsgAppend);
        assert!(wakes(&append));
        let mut read_index_heartbeat = q.clone();
        read_index_heartbeat.context = 5u64.to_be_bytes().to_vec().into();
        assert!(wakes(&read_index_heartbeat));
    }

    #[test]
    fn the_clock_counts_quiet_ticks_and_a_touch_wakes() {
        let mut h = Hibernation::default();
        assert!(!h.tick(3));
        assert!(!h.tick(3));
        assert!(h.tick(3));
        h.sleep();
        assert!(h.asleep());
        assert!(h.touch(), "was asleep");
        assert!(!h.asleep());
        assert!(!h.touch());
        assert!(!h.tick(3), "starts over");
        for _ in 0..100 {
            assert!(!h.tick(0), "0 turns hibernation off");
        }
    }
}
