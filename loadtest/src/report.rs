//! Results: per-operation HDR histograms, the per-second timeline, and the
//! JSON report and printed summary made from them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;

/// Raw measurements of one run.
pub struct RunResult {
    pub ops: BTreeMap<&'static str, OpRecorder>,
    pub elapsed: Duration,
    /// Successful operations completed in each second of the run.
    pub timeline: Vec<u64>,
    /// p99 latency (ms) of the operations of each second.
    pub p99_timeline: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
}

pub struct OpRecorder {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl Default for OpRecorder {
    fn default() -> Self {
        OpRecorder {
            // 1 µs .. 60 s, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            errors: 0,
            error_samples: Vec::new(),
        }
    }
}

impl OpRecorder {
    pub fn ok(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.hist.record(us);
    }
    pub fn err(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 {
            self.error_samples.push(e);
        }
    }
    pub fn merge(&mut self, o: OpRecorder) {
        let _ = self.hist.add(&o.hist);
        self.errors += o.errors;
        for e in o.error_samples {
            if self.error_samples.len() < 5 {
                self.error_samples.push(e);
            }
        }
    }
}

#[derive(Serialize)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub error_samples: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub label: String,
    pub params: Args,
    pub elapsed_s: f64,
    pub operations: BTreeMap<&'static str, OpStats>,
    pub timeline_ops_per_sec: Vec<u64>,
    pub timeline_p99_ms: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    pub fn new(args: &Args, r: RunResult) -> Self {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let operations = r
            .ops
            .into_iter()
            .map(|(name, rec)| {
                let h = &rec.hist;
                (
                    name,
                    OpStats {
                        count: h.len(),
                        errors: rec.errors,
                        ops_per_sec: h.len() as f64 / secs,
                        p50_ms: ms(h.value_at_quantile(0.50)),
                        p99_ms: ms(h.value_at_quantile(0.99)),
                        p999_ms: ms(h.value_at_quantile(0.999)),
                        max_ms: ms(h.max()),
                        error_samples: rec.error_samples,
                    },
                )
            })
            .collect();
        Report {
            label: args.label.clone(),
            params: args.clone(),
            elapsed_s: secs,
            operations,
            timeline_ops_per_sec: r.timeline,
            timeline_p99_ms: r.p99_timeline,
            peak_rss_bytes: r.peak_rss_bytes,
        }
    }

    pub fn title(&self) -> String {
        if self.label.is_empty() {
            format!("{:?} workload {:?}", self.params.system, self.params.workload)
        } else {
            self.label.clone()
        }
    }

    pub fn print_summary(&self) {
        let label = self.title();
        println!();
        println!(
            "{label}: {} clients, {:.1} s, value {} B",
            self.params.clients, self.elapsed_s, self.params.value_size
        );
        println!(
            "{:<8} {:>10} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "errors", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, s) in &self.operations {
            println!(
                "{:<8} {:>10} {:>8} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name, s.count, s.errors, s.ops_per_sec, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
            );
            for e in &s.error_samples {
                println!("  error sample: {e}");
            }
        }
        if let Some(rss) = self.peak_rss_bytes {
            println!("peak RSS of watched process: {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
        }
    }
}

/// Peak resident set size (VmHWM) of a process, from /proc.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
