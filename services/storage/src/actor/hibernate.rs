//! The replica's side of hibernation ([`crate::hibernate`] holds the
//! rules): putting a quiet group to sleep, sleeping through ticks, waking.

use raft::eraftpb::Message as RaftMessage;
use tracing::debug;

use super::Replica;
use crate::hibernate::{follower_may_sleep, leader_may_sleep, quiesce_message, FollowerQuiet, LeaderQuiet, Wake};

impl Replica {
    /// At a tick: whether this replica sleeps through it. A sleeping
    /// follower whose leader's node is known unreachable wakes instead.
    pub(super) fn sleeps_through_tick(&mut self) -> bool {
        if !self.hibernation.asleep() {
            return false;
        }
        let leader = self.raw.raft.leader_id;
        if !self.is_leader() && leader != 0 && !self.transport.reachable(self.node, leader) {
            self.wake(Wake::LeaderUnreachable);
            return false;
        }
        true
    }

    /// After an awake tick: a leader quiet for long enough, whose group
    /// has nothing left to do, puts the group to sleep.
    pub(super) fn maybe_sleep(&mut self) {
        if !self.hibernation.tick(self.cfg.hibernate_after_ticks) || !self.is_leader() {
            return;
        }
        let r = &self.raw.raft;
        let me = self.node;
        let conf = self.raw.store().conf_state();
        let last_index = r.raft_log.last_index();
        // A group of one has no peers to hold an index: its own last counts.
        let (mut peers, mut min_matched) = (Vec::new(), last_index);
        for (id, p) in r.prs().iter().filter(|(id, _)| **id != me) {
            peers.push(*id);
            min_matched = min_matched.min(p.matched);
        }
        let quiet = LeaderQuiet {
            last_index,
            committed: r.raft_log.committed,
            applied: self.raw.store().apply_state().applied_index,
            min_matched,
            changing: r.lead_transferee.is_some()
                || r.pending_conf_index > r.raft_log.applied
                || !conf.voters_outgoing.is_empty()
                || self.compact_for_learner,
            busy: self.busy(),
            peers_reachable: peers.iter().all(|p| self.transport.reachable(me, *p)),
        };
        if !leader_may_sleep(&quiet) || self.raw.has_ready() {
            return;
        }
        let (term, commit) = (r.term, quiet.committed);
        let msgs: Vec<RaftMessage> = peers.iter().map(|p| quiesce_message(me, *p, term, commit)).collect();
        debug!(node = self.node, shard = self.shard, term, commit, "group quiet: hibernating");
        self.send(msgs);
        self.sleep();
    }

    /// A follower stepped its leader's quiesce heartbeat.
    pub(super) fn on_quiesce(&mut self, m: &RaftMessage) {
        if self.hibernation.asleep() || self.is_leader() || self.cfg.hibernate_after_ticks == 0 {
            return;
        }
        let r = &self.raw.raft;
        let s = FollowerQuiet {
            term: r.term,
            leader: r.leader_id,
            last_index: r.raft_log.last_index(),
            committed: r.raft_log.committed,
            busy: self.busy(),
        };
        if follower_may_sleep(m, &s) {
            self.sleep();
        }
    }

    /// Activity: a sleeping replica wakes (a leader heartbeats at once, so
    /// its followers wake with it), an awake one starts its quiet count
    /// over.
    pub(super) fn wake(&mut self, why: Wake) {
        if !self.hibernation.touch() {
            return;
        }
        self.metrics.hibernating.dec();
        match why {
            Wake::Request => self.metrics.wakes_request.inc(),
            Wake::Message => self.metrics.wakes_message.inc(),
            Wake::LeaderUnreachable => self.metrics.wakes_leader_unreachable.inc(),
        }
        debug!(node = self.node, shard = self.shard, reason = why.label(), "waking from hibernation");
        if self.is_leader() {
            self.raw.ping();
        }
    }

    fn sleep(&mut self) {
        self.hibernation.sleep();
        self.metrics.hibernating.inc();
    }

    /// The replica stops: it no longer counts as hibernating.
    pub(super) fn leave_hibernation(&mut self) {
        if self.hibernation.asleep() {
            self.hibernation.touch();
            self.metrics.hibernating.dec();
        }
    }

    /// Work in flight that needs ticks: retries, timeouts, a Ready.
    fn busy(&self) -> bool {
        self.pending() > 0
            || !self.reads.in_flight.is_empty()
            || !self.reads.confirmed.is_empty()
            || !self.unpersisted.is_empty()
            || !self.parked.is_empty()
            || !self.parked_reads.is_empty()
            || !self.map_watchers.is_empty()
            || !self.event_pollers.is_empty()
            || self.locks.has_queues()
            || self.campaign_until.is_some()
            || self.stepped_down_at.is_some()
    }
}
