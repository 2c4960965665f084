//! `ringstore node`: one member of a cluster of processes.
//!
//! Startup: open RocksDB, settle the identity (bootstrap an empty data dir
//! from `--initial-cluster`, join a running cluster with `--join`, or
//! rejoin with the stored one, refusing a data dir of another node or
//! cluster), take the last cluster map this node followed (or derive the
//! bootstrap map from the identity), start the peer transport on its own
//! thread, this node's shard replicas on the storage threads, the map
//! keeper and follower, the Rebalancer, then the HTTP server.
//!
//! Shutdown on SIGTERM or Ctrl-C: report not-ready, hand the leadership of
//! every shard it leads to the most up-to-date follower, let in-flight
//! requests finish, stop the replicas, flush RocksDB, exit 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Arbiter;
use anyhow::Context as _;
use ringstore_peer::{PeerConfig, PeerTransport};
use ringstore_rebalancer::{Rebalancer, REPLICATION};
use ringstore_router::{map as routing_map, MapCell, RoutingTable};
use ringstore_shared::cluster_map::{ClusterMap, NodeInfo, NodeState};
use ringstore_shared::config::DEFAULT_SHARDS;
use ringstore_shared::NodeId;
use ringstore_storage::{Engine, LeaderHints};
use tracing::{info, warn};

use crate::config::NodeOptions;
use crate::identity::{self, Bootstrap, Identity, IDENTITY_KEY};
use crate::join::{self, JoinError};
use crate::{follow, replicas};

/// How long a restarted node that was given `--join` tries to confirm
/// that the cluster still knows it before starting anyway.
const REJOIN_CHECK: Duration = Duration::from_secs(10);

/// Every node of `map` but `node`, with its peer address.
fn peers_of(map: &ClusterMap, node: NodeId) -> std::collections::BTreeMap<NodeId, String> {
    map.nodes.iter().filter(|(id, _)| **id != node).map(|(id, n)| (*id, n.peer.clone())).collect()
}

pub async fn run(o: NodeOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&o.data_dir).with_context(|| format!("creating {}", o.data_dir.display()))?;
    let dir = o.data_dir.canonicalize().unwrap_or_else(|_| o.data_dir.clone());
    let tls = match &o.tls {
        Some(files) => Some(
            ringstore_peer::NodeTls::load(files.clone(), &o.cluster_token)
                .context("TLS (--tls-cert, --tls-key, --tls-ca, --cluster-token)")?,
        ),
        None => {
            warn!("no --tls-cert: the client port speaks plain HTTP and peers plain TCP; use TLS outside a trusted network");
            None
        }
    };
    let join_tls = tls.as_ref().map(|t| t.http_client_config()).transpose().context("TLS client configuration")?;
    let (engine, ident) = open_with_identity(&o, join_tls.as_ref()).await?;
    let node = ident.node;
    if let Some(given) = o.shards.filter(|n| *n != ident.shards) {
        warn!(stored = ident.shards, given, "the data dir was bootstrapped with {} shards; keeping them", ident.shards);
    }
    let bootstrap = (!ident.joined).then(|| bootstrap_map(&ident)).transpose()?;
    let map = match (follow::stored_map(&engine)?, &bootstrap) {
        (Some(stored), _) => stored,
        (None, Some(boot)) => boot.clone(),
        (None, None) => anyhow::bail!("node {node} joined a cluster but its data dir holds no cluster map"),
    };

    let peer_thread = Arbiter::new();
    let (transport, peer_bound) = PeerTransport::start(
        PeerConfig {
            node,
            cluster_id: ident.cluster_id,
            listen: o.peer_addr,
            peers: peers_of(&map, node),
            // A peer silent for an election timeout is as good as gone to
            // Raft too: its shards elect elsewhere.
            link_timeout: Duration::from_millis(o.raft.election_timeout_ms()),
            tls: tls.clone(),
        },
        &peer_thread.handle(),
    )?;
    let peers: Arc<dyn ringstore_storage::Transport> = Arc::new(transport.clone());
    let leaders = Arc::new(LeaderHints::new(Duration::from_millis(o.raft.election_timeout_ms())));
    let registry = transport.clone();
    let replicas = replicas::start(
        node,
        &map,
        &engine,
        peers.clone(),
        &leaders,
        &o.raft,
        &o.limits,
        Box::new(move |s, a| match a {
            Some(a) => registry.register(s, a),
            None => registry.unregister(s),
        }),
        o.storage_threads,
    )?;

    let routing = MapCell::new(node, RoutingTable::from_map(&map), leaders);
    let keeper = actix_rt::spawn(routing_map::keep_in_sync(routing.clone(), peers.clone(), bootstrap));
    let linker = transport.clone();
    let follower = actix_rt::spawn(follow::follow_map(
        routing.clone(),
        replicas.clone(),
        engine.clone(),
        Box::new(move |m| {
            linker.set_peers(&peers_of(m, node));
            linker.set_snapshot_rate(m.rebalance.max_bytes_per_sec);
        }),
    ));
    let rebalancer = actix::Actor::start(Rebalancer::new(routing.clone(), peers.clone(), REPLICATION));
    let draining = Arc::new(AtomicBool::new(false));
    let shards_here = replicas.clone();
    let handover = replicas.handover(Duration::from_millis(o.raft.election_timeout_ms() * 3));
    let auth = match &o.auth_tokens {
        Some(file) => {
            let auth = ringstore_api::auth::Auth::from_file(file, o.auth_metrics)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("--auth-tokens {}", file.display()))?;
            Arc::new(auth)
        }
        None => {
            warn!("no --auth-tokens: anyone who reaches the HTTP port may read, write and administer");
            Arc::new(ringstore_api::auth::Auth::off())
        }
    };
    ringstore_peer::metrics::PEER.tls_enabled.with_label_values(&[&node.to_string()]).set(i64::from(tls.is_some()));
    let auth_file = o.auth_tokens.clone().map(|p| (auth.clone(), p));
    actix_rt::spawn(reload_on_change(node, auth_file, tls.clone()));
    let (server, http_bound) = crate::http::start(crate::http::HttpOptions {
        node,
        addr: o.http,
        workers: o.http_workers,
        map: routing,
        local_shards: Arc::new(move || shards_here.shards()),
        transport: peers,
        cluster_id: ident.cluster_id,
        handover,
        limits: o.limits.clone(),
        draining: draining.clone(),
        shutdown_timeout_s: o.shutdown_timeout_s,
        auth,
        rate_limit: o.rate_limit,
        tls: tls.clone(),
    })?;
    if !o.raft.sync_wal {
        warn!("--unsafe-no-fsync: the Raft log is not fsynced; a crash can lose acknowledged writes");
    }
    println!(
        "ringstore node {node}: cluster {:016x}, {} shard(s) ({} here), http {}://{http_bound}, peers on {peer_bound}{}, data in {}",
        ident.cluster_id,
        ident.shards,
        replicas.shards().len(),
        if tls.is_some() { "https" } else { "http" },
        if tls.is_some() { " (mutual TLS)" } else { "" },
        dir.display()
    );

    crate::shutdown_signal().await;
    info!(node, "shutting down: draining");
    draining.store(true, Ordering::Relaxed);
    rebalancer.do_send(ringstore_rebalancer::actor::Stop);
    replicas.hand_over_leadership(Duration::from_millis(o.raft.election_timeout_ms() * 3)).await;
    // Waits for in-flight requests (up to the shutdown timeout); the peer
    // transport still runs, so forwarded work can complete.
    server.stop(true).await;
    keeper.abort();
    follower.abort();
    replicas.stop().await?;
    engine.flush().context("flushing RocksDB")?;
    peer_thread.stop();
    info!(node, "stopped cleanly");
    println!("ringstore node {node}: stopped cleanly");
    Ok(())
}

/// The map every member derives from the identity alone: the members and
/// the shard count fix the placement and the ring, so nodes agree on it
/// without talking (the meta shard will hold later versions).
fn bootstrap_map(ident: &Identity) -> anyhow::Result<ClusterMap> {
    let nodes = ident.members.iter().map(|(id, peer)| (*id, NodeInfo::new("", peer.clone(), NodeState::Up))).collect();
    ClusterMap::bootstrap(nodes, ident.shards, REPLICATION).context("placing the shards")
}

/// Opens RocksDB and settles who this data dir belongs to.
async fn open_with_identity(
    o: &NodeOptions,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<(Arc<Engine>, Identity)> {
    let label = o.id.map(|i| i.to_string()).unwrap_or_else(|| "0".into());
    let engine = Engine::open(&o.data_dir, &label)?;
    let stored = engine
        .meta_get(IDENTITY_KEY)?
        .map(|b| Identity::decode(&b))
        .transpose()
        .with_context(|| format!("reading the identity in {}", o.data_dir.display()))?;
    // With both flags (one setting for every pod of a StatefulSet), the
    // initial members bootstrap and every other node joins.
    let initial_member = match (&o.initial_cluster, o.id) {
        (Some(ic), Some(id)) => identity::parse_initial_cluster(ic)?.contains_key(&id),
        _ => false,
    };
    let via = |url| join::Via { url, tls, token: o.join_token.as_deref() };
    if let Some(url) = o.join.as_deref().filter(|_| !initial_member) {
        match &stored {
            None => {
                let a =
                    join::join(via(url), &o.advertise_peer, &o.advertise_http, o.id, None, join::JOIN_TRYING).await?;
                let ident = Identity {
                    node: a.id,
                    cluster_id: a.cluster_id,
                    members: peers_of(&a.map, 0),
                    shards: a.shards,
                    joined: true,
                };
                // The map first: an identity without its map cannot start.
                follow::store_map(&engine, &a.map)?;
                engine.meta_put(IDENTITY_KEY, &ident.encode())?;
                engine.check_or_set_identity(ident.node)?;
                info!(node = ident.node, cluster = format!("{:016x}", ident.cluster_id), "joined as a new node");
                drop(engine);
                let engine = Engine::open(&o.data_dir, &ident.node.to_string())?;
                return Ok((engine, ident));
            }
            Some(s) if s.joined => {
                // A restart: the cluster must not have removed this node or
                // be another cluster; if it cannot answer, start anyway.
                let check = join::join(
                    via(url),
                    &o.advertise_peer,
                    &o.advertise_http,
                    Some(s.node),
                    Some(s.cluster_id),
                    REJOIN_CHECK,
                );
                match check.await {
                    Ok(_) => {}
                    Err(e @ JoinError::Refused { .. }) => return Err(e.into()),
                    Err(e) => warn!("{e}; starting with the stored identity"),
                }
            }
            // Bootstrapped with the cluster: it never joined.
            Some(_) => {}
        }
    }
    let initial = o.initial_cluster.as_deref().map(identity::parse_initial_cluster).transpose()?.map(|members| {
        Bootstrap { token: o.cluster_token.as_str(), members, shards: o.shards.unwrap_or(DEFAULT_SHARDS) }
    });
    let (ident, fresh) =
        identity::resolve(stored, o.id, initial).with_context(|| format!("data dir {}", o.data_dir.display()))?;
    if fresh {
        engine.meta_put(IDENTITY_KEY, &ident.encode())?;
        info!(node = ident.node, cluster = format!("{:016x}", ident.cluster_id), "bootstrapped a new data dir");
    } else {
        info!(node = ident.node, cluster = format!("{:016x}", ident.cluster_id), "rejoining with the stored identity");
    }
    engine.check_or_set_identity(ident.node).with_context(|| format!("data dir {}", o.data_dir.display()))?;
    if o.id.is_none() {
        // Metrics carry the node id: reopen under the right label.
        drop(engine);
        let engine = Engine::open(&o.data_dir, &ident.node.to_string())?;
        return Ok((engine, ident));
    }
    Ok((engine, ident))
}

/// How often the tokens and TLS files are checked for a change (a
/// Kubernetes Secret, updated in place, needs no signal).
const FILES_POLL: Duration = Duration::from_secs(30);

/// What identifies one state of the files: size and modification time.
fn fingerprint(paths: &[std::path::PathBuf]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// Reads the tokens file and the TLS files again on SIGHUP and when they
/// change (a rotated Secret); what does not load is logged and what is in
/// force stays.
async fn reload_on_change(
    node: ringstore_shared::NodeId,
    auth: Option<(Arc<ringstore_api::auth::Auth>, std::path::PathBuf)>,
    tls: Option<Arc<ringstore_peer::NodeTls>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut paths: Vec<std::path::PathBuf> = auth.iter().map(|(_, p)| p.clone()).collect();
    if let Some(t) = &tls {
        let f = t.files();
        paths.extend([f.cert.clone(), f.key.clone(), f.ca.clone()]);
    }
    if paths.is_empty() {
        return;
    }
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|e| warn!("cannot listen for SIGHUP; tokens and certificates reload when their files change: {e}"))
        .ok();
    let mut seen = fingerprint(&paths);
    let mut poll = tokio::time::interval(FILES_POLL);
    poll.tick().await;
    let reloads = &ringstore_peer::metrics::PEER.tls_reloads;
    loop {
        let why = tokio::select! {
            got = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if got.is_none() {
                    return;
                }
                seen = fingerprint(&paths);
                "SIGHUP"
            }
            _ = poll.tick() => {
                let now = fingerprint(&paths);
                if now == seen {
                    continue;
                }
                seen = now;
                "files changed"
            }
        };
        if let Some((auth, _)) = &auth {
            match auth.reload() {
                Ok(n) => info!(tokens = n, "{why}: tokens file read again"),
                Err(e) => tracing::error!("{why}: tokens file refused, the previous tokens stay: {e}"),
            }
        }
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => {
                    reloads.with_label_values(&[&node.to_string(), "ok"]).inc();
                    info!(cert = %tls.files().cert.display(), "{why}: TLS certificate, key and CA read again; new connections use them")
                }
                Err(e) => {
                    reloads.with_label_values(&[&node.to_string(), "error"]).inc();
                    tracing::error!("{why}: TLS files refused, the previous certificate stays: {e}")
                }
            }
        }
    }
}
