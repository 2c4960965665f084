//! `ringstore-loadtest`: drives a system with a workload for a fixed time
//! and reports throughput and latency percentiles (HDR histograms).
//!
//! Systems: `ringstore` (HTTP, any node), `etcd` (gRPC KV API), `rocksdb` (raw synced writes into
//! a RocksDB of its own, the physical limit a replicated write cannot beat).
//! Workloads (YCSB-like): `a` 50% reads / 50% updates, `b` 95/5, `c`
//! read-only, `w` write-only; keys `uniform` or `zipfian`. A report is a
//! summary table, a JSON file (`--out`) and an SVG plot beside it.
//! Workload `locks` runs acquire + release pairs against ringstore, etcd
//! (Lock RPC) or a single Redis (`SET NX PX` + Lua release).

mod keys;
mod locks;
// Each binary uses part of the plot helpers.
#[allow(dead_code)]
mod plot;
mod report;
mod ringstore;
mod rocksdb_raw;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ringstore,
    /// etcd v3 through its native gRPC API; `--endpoints` are its client URLs.
    Etcd,
    Rocksdb,
    /// A single Redis (`--endpoints redis://HOST:PORT`); `locks` workload only.
    Redis,
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% GET, 50% PUT.
    A,
    /// 95% GET, 5% PUT.
    B,
    /// GET only.
    C,
    /// PUT only.
    W,
    /// Acquire + release pairs (see `--lock-mode`).
    Locks,
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Each client its own lock.
    Uncontended,
    /// All clients one lock: each operation is a handoff.
    Contended,
}

impl Workload {
    pub fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::W | Workload::Locks => 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    Uniform,
    Zipfian,
}

#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "ringstore-loadtest", about = "Load generator for ringstore and its baselines")]
pub struct Args {
    #[arg(long, value_enum, default_value = "ringstore")]
    pub system: System,
    #[arg(long, value_enum, default_value = "w")]
    pub workload: Workload,
    /// HTTP base URLs; clients are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub endpoints: Vec<String>,
    /// The cluster CA (PEM), for https:// endpoints (ringstore only).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Concurrent clients (closed loop: each waits for its answer).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// How long to run, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Dist,
    /// Open loop: total requests per second, spread over the clients.
    /// Without it, each client sends its next request when the last returns.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write keys 0..N before the timed run, so reads find values.
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Seed of the key and operation choices (client i uses seed + i).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Report the peak RSS (VmHWM) of this process (e.g. the server's).
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// `rocksdb` only: data directory (default: a temp dir on the same disk as /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keys per write: `rocksdb`, one synced write batch; `ringstore`
    /// workload w, one `POST /v1/kv:batch` of that many puts. Each key
    /// counts as one write, with the batch's latency.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// `locks` workload: one lock per client or one for all.
    #[arg(long, value_enum, default_value = "uncontended")]
    pub lock_mode: LockMode,
    /// Label printed in the summary and stored in the report.
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Every run stops by itself: at most this long, whatever `--duration` says.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() || d > DURATION_MAX {
        return Err(format!("duration must be between 1ms and {DURATION_MAX:?}"));
    }
    Ok(d)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.clients > 0 && args.clients <= 4096, "--clients must be 1..=4096");
    anyhow::ensure!(args.keys > 0, "--keys must be positive");
    anyhow::ensure!(args.batch > 0 && args.batch <= 10_000, "--batch must be 1..=10000");
    anyhow::ensure!(args.rate.is_none_or(|r| r > 0.0 && r <= 1e7), "--rate must be in (0, 1e7]");
    anyhow::ensure!(args.preload <= args.keys, "--preload cannot exceed --keys");
    if matches!(args.system, System::Rocksdb) {
        anyhow::ensure!(matches!(args.workload, Workload::W), "--system rocksdb runs workload w only");
    }
    if args.batch > 1 && matches!(args.system, System::Ringstore) {
        anyhow::ensure!(matches!(args.workload, Workload::W), "--batch with ringstore runs workload w only");
        anyhow::ensure!(args.batch <= 1_000, "a ringstore batch holds at most 1000 puts");
    }
    anyhow::ensure!(args.batch == 1 || !matches!(args.system, System::Etcd), "--batch is not for etcd");
    let locks = matches!(args.workload, Workload::Locks);
    anyhow::ensure!(!matches!(args.system, System::Redis) || locks, "--system redis runs workload locks only");
    let result = match args.system {
        _ if locks => actix_rt::System::new().block_on(locks::run(&args))?,
        System::Ringstore | System::Etcd => actix_rt::System::new().block_on(ringstore::run(&args))?,
        System::Rocksdb => rocksdb_raw::run(&args)?,
        System::Redis => unreachable!("checked above"),
    };
    let report = report::Report::new(&args, result);
    report.print_summary();
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        let svg_path = path.with_extension("svg");
        let title = format!("{} — ops/s (blue), p99 ms (red)", report.title());
        std::fs::write(&svg_path, plot::svg(&title, &report.timeline_ops_per_sec, &report.timeline_p99_ms))?;
        println!("report written to {} and {}", path.display(), svg_path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "0s", "5h", "x", "99999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
