//! Configuration of `ringstore node`: flags, `RINGSTORE_*` environment
//! variables and an optional TOML file, in that order of precedence, over
//! built-in defaults. Every setting has the same name in all three
//! (`--raft-tick-ms`, `RINGSTORE_RAFT_TICK_MS`, `raft_tick_ms`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use ringstore_shared::config::{Limits, RaftConfig, SHARDS_MAX};
use ringstore_shared::NodeId;
use serde::Deserialize;

use crate::replicas::{default_storage_threads, STORAGE_THREADS_MAX};

#[derive(Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// TOML file with any of the settings below (flags and environment win).
    #[arg(long, env = "RINGSTORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id; needed to bootstrap a new data dir.
    #[arg(long, env = "RINGSTORE_ID")]
    pub id: Option<NodeId>,
    /// Take the node id from the host name's trailing ordinal plus one
    /// (`ringstore-0` is node 1): one setting for every pod of a
    /// StatefulSet.
    #[arg(long, env = "RINGSTORE_ID_FROM_HOSTNAME")]
    pub id_from_hostname: bool,
    /// Where this node keeps its RocksDB [default: ./ringstore-node]
    #[arg(long, env = "RINGSTORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client HTTP address [default: 127.0.0.1:8080]
    #[arg(long, env = "RINGSTORE_HTTP")]
    pub http: Option<SocketAddr>,
    /// Peer (Raft) listen address [default: 127.0.0.1:7080]
    #[arg(long, env = "RINGSTORE_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Members as `1=HOST:PORT,2=HOST:PORT,...` (peer addresses). Used to
    /// bootstrap an empty data dir; on restart the stored identity is used
    /// and this, if given, must describe the same cluster.
    #[arg(long, env = "RINGSTORE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through any member's HTTP address
    /// (`http://host:port`): an empty data dir gets an id from the cluster
    /// (or keeps `--id`), then replicas move here. Ignored, apart from a
    /// check that the cluster still knows this node, on a restart.
    #[arg(long, env = "RINGSTORE_JOIN")]
    pub join: Option<String>,
    /// A token with the admin scope for --join, when the cluster requires
    /// tokens (environment or file: keep it off command lines)
    #[arg(long, env = "RINGSTORE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The peer address other nodes dial [default: the peer listen address]
    #[arg(long, env = "RINGSTORE_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// The HTTP address clients and other nodes use [default: the HTTP address]
    #[arg(long, env = "RINGSTORE_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// Mixed into the cluster id, so two clusters with the same member list
    /// stay apart [default: ringstore]
    #[arg(long, env = "RINGSTORE_CLUSTER_TOKEN")]
    pub cluster_token: Option<String>,
    /// Data shards (Raft groups on the hash ring) of a new cluster; every
    /// member must be bootstrapped with the same count, which is fixed
    /// after [default: 16]
    #[arg(long, env = "RINGSTORE_SHARDS")]
    pub shards: Option<u64>,
    /// HTTP worker threads [default: 2]
    #[arg(long, env = "RINGSTORE_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Threads that run this node's shard replicas, 1..=64 [default: half
    /// the usable cores, 1..=8]
    #[arg(long, env = "RINGSTORE_STORAGE_THREADS")]
    pub storage_threads: Option<usize>,
    /// Request deadline when a client sends no X-Request-Timeout [default: 5000]
    #[arg(long, env = "RINGSTORE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Watch streams this node serves at once; more get 503 [default: 4096]
    #[arg(long, env = "RINGSTORE_WATCHERS_MAX")]
    pub watchers_max: Option<usize>,
    /// Raft tick [default: 100]
    #[arg(long, env = "RINGSTORE_RAFT_TICK_MS")]
    pub raft_tick_ms: Option<u64>,
    /// Election timeout in ticks [default: 10]
    #[arg(long, env = "RINGSTORE_RAFT_ELECTION_TICKS")]
    pub raft_election_ticks: Option<usize>,
    /// Largest drift of any node's clock over one election timeout, taken
    /// off leader read leases [default: 100]
    #[arg(long, env = "RINGSTORE_RAFT_MAX_CLOCK_DRIFT_MS")]
    pub raft_max_clock_drift_ms: Option<u64>,
    /// A follower cut off from its leader's node campaigns after this many
    /// ticks without word from it; 0: after an election timeout [default: 5]
    #[arg(long, env = "RINGSTORE_RAFT_FAST_FAILOVER_TICKS")]
    pub raft_fast_failover_ticks: Option<usize>,
    /// A shard's group quiet for this many ticks stops ticking and
    /// heartbeating until a request or message wakes it; 0: never
    /// [default: 10]
    #[arg(long, env = "RINGSTORE_RAFT_HIBERNATE_AFTER_TICKS")]
    pub raft_hibernate_after_ticks: Option<usize>,
    /// Every linearizable read takes a ReadIndex round (no leader leases)
    #[arg(long, env = "RINGSTORE_NO_LEASE_READS")]
    pub no_lease_reads: bool,
    /// Compact the Raft log after this many applied entries [default: 10000]
    #[arg(long, env = "RINGSTORE_RAFT_LOG_GC_THRESHOLD")]
    pub raft_log_gc_threshold: Option<u64>,
    /// Entries kept after compaction [default: 1000]
    #[arg(long, env = "RINGSTORE_RAFT_LOG_GC_KEEP")]
    pub raft_log_gc_keep: Option<u64>,
    /// Seconds in-flight requests get to finish on SIGTERM [default: 10]
    #[arg(long, env = "RINGSTORE_SHUTDOWN_TIMEOUT_S")]
    pub shutdown_timeout_s: Option<u64>,
    /// Do not fsync the Raft log. Benchmarks only: a crash can lose
    /// acknowledged writes.
    #[arg(long, env = "RINGSTORE_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
    /// Require bearer tokens: this TOML file lists their SHA-256 hashes,
    /// scopes and prefixes (`ringstore token new` makes entries); read
    /// again on SIGHUP or when it changes. Without it anyone who reaches the port may do anything
    #[arg(long, env = "RINGSTORE_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// With --auth-tokens: /metrics needs a token with the read scope too
    #[arg(long, env = "RINGSTORE_AUTH_METRICS")]
    pub auth_metrics: bool,
    /// Requests per second each client may send (per token, or per
    /// address without tokens); beyond, 429 with Retry-After [default: no limit]
    #[arg(long, env = "RINGSTORE_RATE_LIMIT_RPS")]
    pub rate_limit_rps: Option<f64>,
    /// Requests a client may send at once before the rate applies
    /// [default: one second's worth]
    #[arg(long, env = "RINGSTORE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<f64>,
    /// This node's certificate (PEM, `ringstore certs node`): HTTPS on the
    /// client port and mutual TLS between peers. Needs --tls-key and
    /// --tls-ca; all three are read again on SIGHUP or when they change
    #[arg(long, env = "RINGSTORE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, env = "RINGSTORE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed
    /// that names this cluster token
    #[arg(long, env = "RINGSTORE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// The file form: the same names, all optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<NodeId>,
    id_from_hostname: Option<bool>,
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    initial_cluster: Option<String>,
    join: Option<String>,
    join_token: Option<String>,
    advertise_peer: Option<String>,
    advertise_http: Option<String>,
    cluster_token: Option<String>,
    shards: Option<u64>,
    http_workers: Option<usize>,
    storage_threads: Option<usize>,
    request_timeout_ms: Option<u64>,
    watchers_max: Option<usize>,
    raft_tick_ms: Option<u64>,
    raft_election_ticks: Option<usize>,
    raft_max_clock_drift_ms: Option<u64>,
    raft_fast_failover_ticks: Option<usize>,
    raft_hibernate_after_ticks: Option<usize>,
    no_lease_reads: Option<bool>,
    raft_log_gc_threshold: Option<u64>,
    raft_log_gc_keep: Option<u64>,
    shutdown_timeout_s: Option<u64>,
    unsafe_no_fsync: Option<bool>,
    auth_tokens: Option<PathBuf>,
    auth_metrics: Option<bool>,
    rate_limit_rps: Option<f64>,
    rate_limit_burst: Option<f64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

/// Everything `ringstore node` runs with, after merging.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: Option<NodeId>,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub peer_addr: SocketAddr,
    pub initial_cluster: Option<String>,
    pub join: Option<String>,
    pub join_token: Option<String>,
    pub advertise_peer: String,
    pub advertise_http: String,
    pub cluster_token: String,
    /// Data shards a new cluster is bootstrapped with; `None`: not given
    /// (the default for a new data dir, nothing to compare on a restart).
    pub shards: Option<u64>,
    pub http_workers: usize,
    pub storage_threads: usize,
    pub shutdown_timeout_s: u64,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// The tokens file, if authentication is on.
    pub auth_tokens: Option<PathBuf>,
    pub auth_metrics: bool,
    pub rate_limit: Option<ringstore_api::limit::RateLimit>,
    /// HTTPS and peer mTLS, if on.
    pub tls: Option<ringstore_peer::TlsFiles>,
}

impl NodeArgs {
    pub fn resolve(self) -> anyhow::Result<NodeOptions> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let mut raft = RaftConfig::default();
        let mut limits = Limits::default();
        if let Some(v) = self.raft_tick_ms.or(file.raft_tick_ms) {
            anyhow::ensure!(v > 0, "raft_tick_ms must be positive");
            raft.tick_interval_ms = v;
        }
        if let Some(v) = self.raft_election_ticks.or(file.raft_election_ticks) {
            anyhow::ensure!(v > raft.heartbeat_ticks, "raft_election_ticks must exceed the heartbeat ticks");
            raft.election_ticks = v;
        }
        if let Some(v) = self.raft_max_clock_drift_ms.or(file.raft_max_clock_drift_ms) {
            raft.max_clock_drift_ms = v;
        }
        if let Some(v) = self.raft_fast_failover_ticks.or(file.raft_fast_failover_ticks) {
            raft.fast_failover_ticks = v;
        }
        if let Some(v) = self.raft_hibernate_after_ticks.or(file.raft_hibernate_after_ticks) {
            raft.hibernate_after_ticks = v;
        }
        if self.no_lease_reads || file.no_lease_reads.unwrap_or(false) {
            raft.lease_reads = false;
        }
        if let Some(v) = self.raft_log_gc_threshold.or(file.raft_log_gc_threshold) {
            raft.log_gc_threshold_entries = v.max(1);
        }
        if let Some(v) = self.raft_log_gc_keep.or(file.raft_log_gc_keep) {
            raft.log_gc_keep_entries = v;
        }
        if self.unsafe_no_fsync || file.unsafe_no_fsync.unwrap_or(false) {
            raft.sync_wal = false;
        }
        if let Some(v) = self.request_timeout_ms.or(file.request_timeout_ms) {
            anyhow::ensure!(
                (1..=limits.request_timeout_ms_max).contains(&v),
                "request_timeout_ms must be in 1..={}",
                limits.request_timeout_ms_max
            );
            limits.request_timeout_ms_default = v;
        }
        if let Some(v) = self.watchers_max.or(file.watchers_max) {
            limits.watchers_max = v;
        }
        let rate_limit = match self.rate_limit_rps.or(file.rate_limit_rps) {
            Some(rps) => {
                anyhow::ensure!(rps.is_finite() && rps > 0.0, "rate_limit_rps must be a positive number");
                let burst = self.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(rps);
                anyhow::ensure!(burst.is_finite() && burst >= 1.0, "rate_limit_burst must be at least 1");
                Some(ringstore_api::limit::RateLimit { per_second: rps, burst })
            }
            None => None,
        };
        let shards = self.shards.or(file.shards);
        if let Some(n) = shards {
            anyhow::ensure!((1..=SHARDS_MAX).contains(&n), "shards must be in 1..={SHARDS_MAX}");
        }
        let storage_threads = self.storage_threads.or(file.storage_threads).unwrap_or_else(default_storage_threads);
        anyhow::ensure!(
            (1..=STORAGE_THREADS_MAX).contains(&storage_threads),
            "storage_threads must be in 1..={STORAGE_THREADS_MAX}, not {storage_threads}"
        );
        let http = self.http.or(file.http).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let peer_addr = self.peer_addr.or(file.peer_addr).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7080)));
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key), self.tls_ca.or(file.tls_ca)) {
            (Some(cert), Some(key), Some(ca)) => Some(ringstore_peer::TlsFiles { cert, key, ca }),
            (None, None, None) => None,
            _ => anyhow::bail!("tls_cert, tls_key and tls_ca go together: give all three or none"),
        };
        let join = self.join.or(file.join);
        if let Some(j) = &join {
            let scheme = if tls.is_some() { "https://" } else { "http://" };
            anyhow::ensure!(j.starts_with(scheme), "join must be an {scheme} URL of a member, not {j:?}");
        }
        let id = match (self.id.or(file.id), self.id_from_hostname || file.id_from_hostname.unwrap_or(false)) {
            (Some(id), _) => Some(id),
            (None, true) => Some(id_from_hostname(&hostname()?)?),
            (None, false) => None,
        };
        Ok(NodeOptions {
            id,
            data_dir: self.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./ringstore-node")),
            http,
            peer_addr,
            initial_cluster: self.initial_cluster.or(file.initial_cluster),
            join,
            join_token: self.join_token.or(file.join_token),
            advertise_peer: self.advertise_peer.or(file.advertise_peer).unwrap_or_else(|| peer_addr.to_string()),
            advertise_http: self.advertise_http.or(file.advertise_http).unwrap_or_else(|| http.to_string()),
            cluster_token: self.cluster_token.or(file.cluster_token).unwrap_or_else(|| "ringstore".into()),
            shards,
            http_workers: self.http_workers.or(file.http_workers).unwrap_or(2).max(1),
            storage_threads,
            shutdown_timeout_s: self.shutdown_timeout_s.or(file.shutdown_timeout_s).unwrap_or(10),
            raft,
            limits,
            auth_tokens: self.auth_tokens.or(file.auth_tokens),
            auth_metrics: self.auth_metrics || file.auth_metrics.unwrap_or(false),
            rate_limit,
            tls,
        })
    }
}

/// This machine's (pod's, container's) host name.
fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return Ok(h);
        }
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    Ok(h.trim().to_string())
}

/// `ringstore-3` (a StatefulSet pod) -> node 4: ids start at 1, ordinals at 0.
pub fn id_from_hostname(host: &str) -> anyhow::Result<NodeId> {
    let short = host.split('.').next().unwrap_or(host);
    let ordinal = short
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<NodeId>().ok())
        .with_context(|| format!("host name {host:?} does not end in -ORDINAL (a StatefulSet pod's does)"))?;
    ordinal.checked_add(1).context("ordinal too large")
}

fn read_file(p: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statefulset_host_names_give_ids_from_one() {
        assert_eq!(id_from_hostname("ringstore-0").unwrap(), 1);
        assert_eq!(id_from_hostname("ringstore-12.ringstore-peers.default.svc").unwrap(), 13);
        assert_eq!(id_from_hostname("my-ring-store-4").unwrap(), 5);
        for bad in ["ringstore", "ringstore-", "ringstore-x", "", "-"] {
            assert!(id_from_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 2\nhttp = \"127.0.0.1:9000\"\nraft_tick_ms = 50\ninitial_cluster = \"1=a:1,2=b:2\"\n",
        )
        .unwrap();
        let args = NodeArgs { config: Some(path.clone()), id: Some(3), ..Default::default() };
        let o = args.resolve().unwrap();
        assert_eq!(o.id, Some(3), "flag wins");
        assert_eq!(o.http.port(), 9000, "file wins over default");
        assert_eq!(o.raft.tick_interval_ms, 50);
        assert_eq!(o.peer_addr.port(), 7080, "default");
        assert_eq!(o.initial_cluster.as_deref(), Some("1=a:1,2=b:2"));
        assert!(o.raft.sync_wal);

        std::fs::write(&path, "idd = 2\n").unwrap();
        let err = NodeArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        assert_eq!(o.shards, None, "not given");
        std::fs::write(&path, "shards = 0\n").unwrap();
        assert!(NodeArgs { config: Some(path.clone()), ..Default::default() }.resolve().is_err());
        std::fs::write(&path, "raft_tick_ms = 0\n").unwrap();
        assert!(NodeArgs { config: Some(path.clone()), ..Default::default() }.resolve().is_err());
        assert_eq!(o.storage_threads, default_storage_threads());
        std::fs::write(&path, "storage_threads = 3\n").unwrap();
        assert_eq!(NodeArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap().storage_threads, 3);
        for bad in ["storage_threads = 0\n", "storage_threads = 65\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(NodeArgs { config: Some(path.clone()), ..Default::default() }.resolve().is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_files_go_together_and_make_join_https() {
        let p = |s: &str| Some(PathBuf::from(s));
        let all = NodeArgs { tls_cert: p("n.crt"), tls_key: p("n.key"), tls_ca: p("ca.crt"), ..Default::default() };
        let o = all.clone().resolve().unwrap();
        assert_eq!(o.tls.unwrap().ca, PathBuf::from("ca.crt"));
        let partial = NodeArgs { tls_cert: p("n.crt"), tls_key: p("n.key"), ..Default::default() };
        let err = partial.resolve().unwrap_err().to_string();
        assert!(err.contains("give all three"), "{err}");
        let plain_join = NodeArgs { join: Some("http://a:8080".into()), ..all.clone() };
        assert!(plain_join.resolve().unwrap_err().to_string().contains("https://"));
        assert!(NodeArgs { join: Some("https://a:8080".into()), ..all }.resolve().is_ok());
        assert!(NodeArgs { join: Some("https://a:8080".into()), ..Default::default() }.resolve().is_err());
    }
}
