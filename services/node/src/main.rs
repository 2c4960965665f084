//! The `ringstore` binary.
//!
//! `ringstore dev` runs a three-node cluster in one process on 127.0.0.1,
//! with data under `./ringstore-data`; run it again with the same data dir
//! and every acknowledged write is back.
//!
//! `ringstore node` runs one member of a cluster of processes; see
//! [`ringstore_node::process`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ringstore_node::cluster::{ClusterConfig, LocalCluster};
use ringstore_node::config::NodeArgs;
use ringstore_shared::config::{DEFAULT_SHARDS, SHARDS_MAX};
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "ringstore", version, about = "A sharded, replicated key-value and lock service")]
struct Cli {
    /// Log filter, e.g. `info` or `ringstore=debug,raft=info`.
    #[arg(long, env = "RINGSTORE_LOG", default_value = "info,raft=warn", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a three-node cluster in this process on 127.0.0.1.
    Dev {
        /// Where the nodes keep their data (one RocksDB per node).
        #[arg(long, default_value = "./ringstore-data")]
        data_dir: PathBuf,
        /// HTTP address of node 1; nodes 2 and 3 take the next ports.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// HTTP worker threads per node.
        #[arg(long, default_value_t = 1)]
        http_workers: usize,
        /// Data shards (Raft groups of 3 replicas) on the hash ring; only
        /// used when the data dir is new.
        #[arg(long, default_value_t = DEFAULT_SHARDS)]
        shards: u64,
        /// Do not fsync the Raft log. Benchmarks only: a crash can lose
        /// acknowledged writes.
        #[arg(long)]
        unsafe_no_fsync: bool,
    },
    /// Run one member of a cluster of processes (see `--help` for flags;
    /// each also reads `RINGSTORE_<NAME>` and the `--config` TOML file).
    Node(Box<NodeArgs>),
    /// Run COMMAND while holding a lock: `ringstore lock NAME -- COMMAND...`
    /// (the fencing token is in RINGSTORE_LOCK_TOKEN).
    Lock(ringstore_node::lock_cmd::LockArgs),
    /// Exit 0 if URL answers 200 within the timeout, 1 otherwise: a
    /// container health check that needs no shell or curl in the image.
    Probe {
        /// e.g. http://127.0.0.1:8080/readyz
        #[arg(default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// The cluster CA (PEM), for an https:// URL.
        #[arg(long, env = "RINGSTORE_CA")]
        ca: Option<PathBuf>,
    },
    /// Ask a node to stop taking requests and hand its leaderships over
    /// (`POST /v1/node/handover`): a pod's preStop hook.
    Handover {
        #[arg(default_value = "http://127.0.0.1:8080")]
        endpoint: String,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// A token with the admin scope, if the node requires tokens.
        #[arg(long, env = "RINGSTORE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The cluster CA (PEM), for an https:// endpoint.
        #[arg(long, env = "RINGSTORE_CA")]
        ca: Option<PathBuf>,
    },
    /// Print the cluster map as a table: shards, replicas, leaders, progress.
    Status {
        /// Any node's HTTP URL.
        #[arg(long, env = "RINGSTORE_ENDPOINT", default_value = "http://127.0.0.1:8080")]
        endpoint: String,
        /// A token with the admin scope, if the nodes require tokens.
        #[arg(long, env = "RINGSTORE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The cluster CA (PEM), for an https:// endpoint.
        #[arg(long, env = "RINGSTORE_CA")]
        ca: Option<PathBuf>,
    },
    /// Bearer tokens for `ringstore node --auth-tokens FILE`.
    #[command(subcommand)]
    Token(TokenCmd),
    /// TLS certificates: a cluster CA, and node certificates it signs.
    #[command(subcommand)]
    Certs(CertsCmd),
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Make a new cluster CA: DIR/ca.crt (give it to nodes and clients)
    /// and DIR/ca.key (keep it apart; it signs node certificates).
    Ca {
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Replace an existing CA (every node certificate must be remade).
        #[arg(long)]
        force: bool,
    },
    /// Make DIR/NAME.crt and DIR/NAME.key, signed by DIR/ca.key, for
    /// `ringstore node --tls-cert --tls-key --tls-ca`.
    Node {
        /// File name stem, e.g. node1.
        name: String,
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The cluster's --cluster-token: peers accept only certificates
        /// naming it.
        #[arg(long, env = "RINGSTORE_CLUSTER_TOKEN", default_value = "ringstore")]
        cluster_token: String,
        /// Host names, `*.` wildcards and IP addresses clients use to reach
        /// the node (repeat the flag).
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
        #[arg(long, default_value_t = ringstore_peer::certs::NODE_DAYS_DEFAULT)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Draw a new random token: the entry for the tokens file (its hash,
    /// never the token) on stdout, the token once on stderr. Append the
    /// entry (`>> tokens.toml`), then SIGHUP the nodes.
    New {
        /// Who holds it (shown in logs and 403 messages).
        #[arg(long)]
        name: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, default_value = "read,write")]
        scopes: String,
        /// Keys and lock names it may reach start with this.
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        // No colour codes in files and container logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log filter")?)
        .init();
    ringstore_storage::arm_failpoints();
    match cli.cmd {
        Cmd::Dev { data_dir, http, http_workers, shards, unsafe_no_fsync } => {
            actix_rt::System::new().block_on(dev(data_dir, http, http_workers, shards, unsafe_no_fsync))
        }
        Cmd::Token(TokenCmd::New { name, scopes, prefix }) => {
            let scopes: Vec<&str> = scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let token = ringstore_api::auth::new_token();
            let mut entry = format!(
                "[[token]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = {scopes:?}\n",
                ringstore_api::auth::hash_token(&token)
            );
            if let Some(p) = prefix {
                entry.push_str(&format!("prefix = {p:?}\n"));
            }
            // The entry must load as written: check it the way a node will.
            ringstore_api::auth::Tokens::parse(&entry).map_err(|e| anyhow::anyhow!(e))?;
            // The entry on stdout (`>> tokens.toml`), the token on stderr:
            // it is shown once and never written to the file.
            eprintln!("token for {name:?} (shown once; send it as Authorization: Bearer <token>):\n{token}");
            println!("{entry}");
            Ok(())
        }
        Cmd::Certs(c) => certs(c),
        Cmd::Status { endpoint, token, ca } => actix_rt::System::new().block_on(async move {
            let tls = client_tls(ca.as_deref())?;
            // Name the address: the default is easy to forget on a new machine.
            let asked = |path: &str| {
                format!("GET {}{path} (another node: --endpoint or RINGSTORE_ENDPOINT)", endpoint.trim_end_matches('/'))
            };
            let token = token.as_deref();
            let v = ringstore_client::get_json(&endpoint, "/v1/cluster", token, tls.as_ref())
                .await
                .with_context(|| asked("/v1/cluster"))?;
            print!("{}", ringstore_node::status::render(&v));
            let r = ringstore_client::get_json(&endpoint, "/v1/rebalance", token, tls.as_ref())
                .await
                .with_context(|| asked("/v1/rebalance"))?;
            print!("{}", ringstore_node::status::render_rebalance(&r));
            Ok(())
        }),
        Cmd::Probe { url, timeout_ms, ca } => {
            let tls = client_tls(ca.as_deref())?;
            let ok = actix_rt::System::new().block_on(async move {
                let client = ringstore_client::tls::http_client(Duration::from_millis(timeout_ms), tls.as_ref());
                client.get(&url).send().await.is_ok_and(|r| r.status().is_success())
            });
            std::process::exit(if ok { 0 } else { 1 })
        }
        Cmd::Handover { endpoint, timeout_ms, token, ca } => {
            let tls = client_tls(ca.as_deref())?;
            let ok = actix_rt::System::new().block_on(async move {
                let client = ringstore_client::tls::http_client(Duration::from_millis(timeout_ms), tls.as_ref());
                let url = format!("{}/v1/node/handover", endpoint.trim_end_matches('/'));
                let req = ringstore_client::with_bearer(client.post(&url), token.as_deref());
                req.send().await.is_ok_and(|r| r.status().is_success())
            });
            std::process::exit(if ok { 0 } else { 1 })
        }
        Cmd::Lock(args) => {
            let code = actix_rt::System::new().block_on(ringstore_node::lock_cmd::run(args))?;
            std::process::exit(code)
        }
        Cmd::Node(args) => {
            let opts = args.resolve()?;
            actix_rt::System::new().block_on(ringstore_node::process::run(opts))
        }
    }
}

fn client_tls(ca: Option<&Path>) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    ca.map(|p| ringstore_client::tls::client_config(p).map_err(anyhow::Error::msg)).transpose().context("--ca")
}

/// Writes `text` to `path` whole (a temporary file renamed over it, so a
/// node reloading meanwhile reads the old file or the new one), readable
/// by the owner only when it is a key.
fn write_pem(path: &Path, text: &str, secret: bool, replace: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    anyhow::ensure!(replace || !path.exists(), "{} exists (--force replaces it)", path.display());
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

fn certs(c: CertsCmd) -> anyhow::Result<()> {
    use ringstore_peer::certs;
    match c {
        CertsCmd::Ca { dir, force } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = certs::new_ca()?;
            write_pem(&dir.join("ca.key"), &ca.key, true, force)?;
            write_pem(&dir.join("ca.crt"), &ca.cert, false, force)?;
            println!("wrote {0}/ca.crt and {0}/ca.key (keep ca.key off the nodes)", dir.display());
        }
        CertsCmd::Node { name, dir, cluster_token, hosts, days } => {
            anyhow::ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "the name is a file stem: letters, digits, '-' and '_'"
            );
            let ca_key = dir.join("ca.key");
            let key = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("reading {} (make one with `ringstore certs ca`)", ca_key.display()))?;
            let node = certs::new_node_cert(&key, &cluster_token, &hosts, days)?;
            // A renewal replaces the node's files; SIGHUP makes the node read them.
            write_pem(&dir.join(format!("{name}.key")), &node.key, true, true)?;
            write_pem(&dir.join(format!("{name}.crt")), &node.cert, false, true)?;
            println!(
                "wrote {0}/{name}.crt and {0}/{name}.key for cluster token {cluster_token:?}, hosts {hosts:?}, {days} days",
                dir.display()
            );
        }
    }
    Ok(())
}

async fn dev(
    data_dir: PathBuf,
    http: SocketAddr,
    http_workers: usize,
    shards: u64,
    unsafe_no_fsync: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=SHARDS_MAX).contains(&shards), "--shards must be 1..={SHARDS_MAX}");
    let mut cfg = ClusterConfig::new(&data_dir);
    cfg.shards = shards;
    cfg.http = http;
    cfg.http_workers = http_workers.max(1);
    if unsafe_no_fsync {
        warn!("--unsafe-no-fsync: the Raft log is not fsynced; a crash can lose acknowledged writes");
        cfg.raft.sync_wal = false;
    }
    let mut cluster = LocalCluster::start(cfg).await?;
    cluster.wait_leader(std::time::Duration::from_secs(10)).await?;
    let shards = cluster.map().ring().shards();
    println!("ringstore dev: 3 nodes, {shards} shard(s), data in {}", data_dir.display());
    // Who leads what, as the replicas on node 1 see it (elections may still
    // be settling for a few shards: `ringstore status` shows the rest).
    let mut led: std::collections::BTreeMap<u64, usize> = Default::default();
    for shard in 1..=shards as u64 {
        if let Ok(Some(l)) = cluster.shard_status(1, shard).await.map(|s| s.leader) {
            *led.entry(l).or_default() += 1;
        }
    }
    for id in cluster.node_ids() {
        if let Some(url) = cluster.url(id) {
            println!("  node {id}: {url}  (leads {} shard(s))", led.get(&id).copied().unwrap_or(0));
        }
    }
    if let Some(url) = cluster.url(1) {
        println!("try: curl -X PUT --data-binary 'hello' {url}/v1/kv/greeting && curl {url}/v1/kv/greeting");
    }
    ringstore_node::shutdown_signal().await;
    info!("shutting down");
    cluster.shutdown().await?;
    println!("ringstore dev: stopped cleanly");
    Ok(())
}
