//! Histories: what the clients asked and what they were told, on one clock.
//!
//! A [`Call`] is Jepsen's invoke/complete pair: the operation, when it was
//! invoked and when its answer came (microseconds since the run began, one
//! `Instant` for every client and the nemesis), and whether it is known to
//! have happened (`Ok`), known not to have (`Fail`), or may have happened
//! at any time after its invocation (`Info`: a timeout, a 503, a lost
//! connection). Checkers treat an `Info` call as still running at the end
//! of time.

use serde::{Deserialize, Serialize};

/// Microseconds since the run's start.
pub type Micros = u64;

/// A logical client. A client whose call ended `Info` continues under a new
/// process id, since its old call may still be in flight (Jepsen's rule):
/// each process is sequential.
pub type ProcessId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened, with the recorded result.
    Ok,
    /// It did not happen (a definite refusal: 412, 409, 4xx, connection refused).
    Fail,
    /// Unknown: may have happened, at any time after the invocation.
    Info,
}

/// One operation on a register (a key whose values are unique numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum RegisterOp {
    /// A linearizable read; `value` is what it returned (None: 404).
    Read {
        value: Option<u64>,
    },
    Write {
        value: u64,
    },
    /// A write under `If-Match` on the version the client read with `from`
    /// (`If-None-Match: *` when `from` is None). Values are unique, so a
    /// version names exactly one value.
    Cas {
        from: Option<u64>,
        to: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call<O> {
    pub process: ProcessId,
    pub op: O,
    pub outcome: Outcome,
    pub invoke_us: Micros,
    /// When the client had its answer or gave up.
    pub complete_us: Micros,
    /// The node the request went to.
    pub node: u64,
}

impl<O> Call<O> {
    /// When the call's effect can no longer happen: its completion, or
    /// never for an `Info` call.
    pub fn end_us(&self) -> Micros {
        match self.outcome {
            Outcome::Info => Micros::MAX,
            _ => self.complete_us,
        }
    }
}

/// A register key's calls, and the stale (`consistency=stale`) reads of it,
/// which are checked only for what they promise.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyHistory {
    pub key: String,
    pub calls: Vec<Call<RegisterOp>>,
    pub stale_reads: Vec<Call<RegisterOp>>,
}
