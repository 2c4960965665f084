//! ringstore's fault suite: Jepsen-style nemeses on real `ringstore node`
//! processes, clients that record histories, and checkers.
//!
//! - [`history`]: calls (invoke/complete pairs) on one clock.
//! - [`linearizable`]: per-key Wing–Gong–Lowe linearizability checking
//!   with memoisation, and the minimal window that proves a violation.
//! - [`locks`]: lock safety from grants and fenced writes.
//! - [`sets`]: lost, duplicated and phantom writes of a list-append workload.
//! - [`schedule`]: the nemesis schedule from a seed (pure).
//! - [`timeline`]: an SVG of a violating window.
//! - [`workload`], [`nemesis`], [`run`], [`report`]: the run itself.
//!
//! The checkers and the schedule are pure and unit-tested on crafted
//! histories; `services/node/tests/chaos.rs` runs a short schedule against
//! the real binary in `make test`, and `ringstore-chaos` runs long ones.

pub mod history;
pub mod linearizable;
pub mod locks;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sets;
pub mod timeline;
pub mod workload;
