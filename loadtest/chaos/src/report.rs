//! The end-of-run summary: what was checked, the faults and how available
//! the cluster stayed through each, and the verdict.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::history::{Call, Micros, RegisterOp};
use crate::schedule::FaultKind;

#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkloadSummary {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl WorkloadSummary {
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultSummary {
    pub count: usize,
    pub secs: f64,
    /// Requests that ended (answered, refused or given up) during the fault.
    pub answers: usize,
    pub ok_answers: usize,
    /// Register calls invoked while a fault of this kind was on.
    pub register_calls: usize,
}

impl FaultSummary {
    /// The share of requests that succeeded (Jepsen's availability).
    pub fn ok_share(&self) -> f64 {
        self.ok_answers as f64 / self.answers.max(1) as f64
    }

    pub fn ok_per_sec(&self) -> f64 {
        self.ok_answers as f64 / self.secs.max(0.001)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyFailure {
    pub key: String,
    /// The calls that prove it, in invocation order.
    pub window: Vec<Call<RegisterOp>>,
    /// Calls still running at this instant count as unknown.
    pub until_us: Micros,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: u64,
    pub elapsed: Duration,
    pub registers: WorkloadSummary,
    pub stale_reads: WorkloadSummary,
    pub register_keys: usize,
    pub keys_linearizable: usize,
    pub keys_unknown: usize,
    pub grants: usize,
    pub fenced_writes: WorkloadSummary,
    pub appends: WorkloadSummary,
    pub append_keys: usize,
    pub not_sent: u64,
    pub refused: u64,
    pub calm_ok_per_sec: f64,
    /// The share of requests that succeeded outside the faults.
    pub calm_ok_share: f64,
    pub faults: BTreeMap<FaultKind, FaultSummary>,
    pub linearizability_failures: Vec<KeyFailure>,
    pub stale_read_anomalies: Vec<String>,
    pub lock_anomalies: Vec<String>,
    pub set_anomalies: Vec<String>,
    /// Why the schedule stopped before its end, if it did. The history up
    /// to then is checked all the same.
    pub nemesis_error: Option<String>,
}

impl Report {
    /// No anomaly found, and every key decided.
    pub fn valid(&self) -> bool {
        self.linearizability_failures.is_empty()
            && self.stale_read_anomalies.is_empty()
            && self.lock_anomalies.is_empty()
            && self.set_anomalies.is_empty()
            && self.keys_unknown == 0
    }
}

fn op(c: &Call<RegisterOp>) -> String {
    let what = match c.op {
        RegisterOp::Read { value } => format!("read -> {value:?}"),
        RegisterOp::Write { value } => format!("write {value}"),
        RegisterOp::Cas { from, to } => format!("cas {from:?} -> {to}"),
    };
    format!(
        "  p{:<4} n{} {:>10.3}..{:<10.3} {:?} {}",
        c.process,
        c.node,
        c.invoke_us as f64 / 1e6,
        c.complete_us as f64 / 1e6,
        c.outcome,
        what
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ringstore-chaos: seed {}, {} nodes, {:.0} s", self.seed, self.nodes, self.elapsed.as_secs_f64())?;
        writeln!(f)?;
        writeln!(f, "{:<22} {:>7} {:>7} {:>7} {:>7}  checked", "workload", "calls", "ok", "fail", "info")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, s: &WorkloadSummary, checked: String| {
            writeln!(f, "{name:<22} {:>7} {:>7} {:>7} {:>7}  {checked}", s.total(), s.ok, s.fail, s.info)
        };
        row(
            f,
            "registers",
            &self.registers,
            format!(
                "{} keys: {} linearizable, {} not, {} unknown",
                self.register_keys,
                self.keys_linearizable,
                self.linearizability_failures.len(),
                self.keys_unknown
            ),
        )?;
        row(f, "stale reads", &self.stale_reads, format!("{} phantom values", self.stale_read_anomalies.len()))?;
        row(
            f,
            "fenced writes",
            &self.fenced_writes,
            format!("{} grants; {} lock anomalies", self.grants, self.lock_anomalies.len()),
        )?;
        row(
            f,
            "appends",
            &self.appends,
            format!("{} lists; {} lost/duplicate/phantom", self.append_keys, self.set_anomalies.len()),
        )?;
        writeln!(f, "(never sent: {}; refused for other reasons: {})", self.not_sent, self.refused)?;
        writeln!(f)?;
        writeln!(f, "{:<26} {:>5} {:>7} {:>10} {:>8} {:>6}", "fault", "times", "secs", "reg calls", "ok/s", "ok %")?;
        writeln!(
            f,
            "{:<26} {:>5} {:>7} {:>10} {:>8.0} {:>5.1}%",
            "(no fault)",
            "",
            "",
            "",
            self.calm_ok_per_sec,
            self.calm_ok_share * 100.0
        )?;
        for (kind, s) in &self.faults {
            writeln!(
                f,
                "{:<26} {:>5} {:>7.1} {:>10} {:>8.0} {:>5.1}%",
                kind.label(),
                s.count,
                s.secs,
                s.register_calls,
                s.ok_per_sec(),
                s.ok_share() * 100.0
            )?;
        }
        writeln!(f, "(closed-loop clients: a request that waits out its deadline holds its client, so ok/s falls more than ok %)")?;
        writeln!(f)?;
        for k in &self.linearizability_failures {
            writeln!(
                f,
                "NOT LINEARIZABLE: {} (window of {} calls, until {:.3} s):",
                k.key,
                k.window.len(),
                k.until_us as f64 / 1e6
            )?;
            for c in &k.window {
                // The call whose answer no order of the others explains.
                let last = c.complete_us.saturating_add(1) == k.until_us;
                writeln!(f, "{}{}", op(c), if last { "   <- no order of the calls above explains this" } else { "" })?;
            }
        }
        for a in self.stale_read_anomalies.iter().chain(&self.lock_anomalies).chain(&self.set_anomalies) {
            writeln!(f, "ANOMALY: {a}")?;
        }
        if let Some(e) = &self.nemesis_error {
            writeln!(f, "THE NEMESIS STOPPED EARLY: {e} (the history up to then is checked below)")?;
        }
        let verdict = if self.valid() {
            "VALID"
        } else if self.keys_unknown > 0
            && self.linearizability_failures.is_empty()
            && self.lock_anomalies.is_empty()
            && self.set_anomalies.is_empty()
            && self.stale_read_anomalies.is_empty()
        {
            "UNKNOWN (search budget exhausted on some keys)"
        } else {
            "INVALID"
        };
        writeln!(f, "verdict: {verdict}")
    }
}
