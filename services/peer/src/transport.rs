//! [`PeerTransport`]: the [`Transport`] between `ringstore node` processes.
//!
//! Each peer has one link: a task that owns a long-lived outbound TCP
//! connection and a bounded queue (its mailbox). Raft messages for the
//! peer are batched into that queue; when it is full they are dropped and
//! Raft resends, so memory never grows with a slow peer. The link drains
//! everything queued into one write, reconnects with exponential backoff,
//! and while disconnected drops what arrives (Raft retries; a request gets
//! `Unreachable`, which is safe to retry because it was never sent).
//!
//! Liveness: a link pings its peer [`PINGS_PER_LINK_TIMEOUT`] times per
//! link timeout and closes the connection when nothing at all (not even a
//! pong) arrived for a whole link timeout: a partitioned or paused peer is
//! noticed within about one election timeout even though TCP itself would
//! wait minutes. While a link is down, Raft messages for the peer are not
//! queued but reported undelivered at once (`report_unreachable`), and
//! requests fail at once with `Unreachable`, so no storage thread, router
//! or HTTP worker ever waits on a dead peer. Writes are never blocking
//! either way: the link task owns the socket and everyone else only
//! `try_send`s into its bounded queue.
//!
//! With TLS ([`NodeTls`]) every connection is mutual TLS first: a dialer
//! or acceptor without a certificate from the cluster CA naming this
//! cluster is refused during the handshake, before any frame is decoded.
//!
//! Inbound connections are served by a task each: the first frame must be
//! a hello from a member of this cluster; Raft frames go to the local
//! replica's mailbox, snapshot chunks are reassembled, and forwarded
//! client requests are answered on the same connection. An oversized
//! frame, a frame that does not decode or a bad hello closes the
//! connection and nothing else.
//!
//! All tasks run on one arbiter (thread) of their own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix::{Addr, ArbiterHandle};
use futures::future::BoxFuture;
use raft::eraftpb::Message as RaftMessage;
use ringstore_shared::codec::CodecError;
use ringstore_shared::{NodeId, ShardId, StoreError};
use ringstore_storage::messages::PeerUnreachable;
use ringstore_storage::transport::{by_destination, PeerBatch, Undelivered};
use ringstore_storage::{ShardOp, ShardRequest, ShardResult, StorageActor, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, error, info, warn};

use crate::metrics::{LinkMetrics, PEER};
use crate::tls::NodeTls;
use crate::wire::{self, Frame, Hello, Reassembly, RejectReason};

/// Batches one link may queue before new ones are dropped.
pub const SEND_QUEUE_CAPACITY: usize = 1024;
/// Serialized responses one inbound connection may queue before request
/// handling on it waits (backpressure on that peer only).
const RESPONSE_QUEUE_CAPACITY: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// One write gathers queued batches up to about this many bytes.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// Pings a link sends per link timeout: several, so one delayed pong on a
/// busy machine does not close a healthy link.
pub const PINGS_PER_LINK_TIMEOUT: u32 = 5;
/// An inbound connection that carried nothing (a dialer pings
/// [`PINGS_PER_LINK_TIMEOUT`] times per link timeout) for this many link
/// timeouts is closed: its dialer is gone or cut off.
const INBOUND_IDLE_LINK_TIMEOUTS: u32 = 3;

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub node: NodeId,
    pub cluster_id: u64,
    /// Where this node accepts peer connections.
    pub listen: SocketAddr,
    /// Every other member and its peer address (`host:port`).
    pub peers: BTreeMap<NodeId, String>,
    /// A peer that sends nothing, not even a pong, for this long is taken
    /// as gone: its connection is closed, its pending requests fail and
    /// Raft is told. About one election timeout.
    pub link_timeout: Duration,
    /// Mutual TLS with the cluster CA on every peer connection (`None`:
    /// plain TCP, for a network that is itself trusted).
    pub tls: Option<Arc<NodeTls>>,
}

/// One connection's halves: TCP's own, or a TLS stream's.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

fn tcp_halves(s: TcpStream) -> (ReadHalf, WriteHalf) {
    let (r, w) = s.into_split();
    (Box::new(r), Box::new(w))
}

fn tls_halves<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S) -> (ReadHalf, WriteHalf) {
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

/// Writes all of `buf` and flushes (TLS holds records until then).
async fn send_all(w: &mut WriteHalf, buf: &[u8]) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await
}

enum Outgoing {
    /// The Raft messages of one or many shards (a storage-thread round).
    RaftMany(PeerBatch),
    Snapshot {
        shard: ShardId,
        msg: RaftMessage,
    },
    Request {
        id: u64,
        shard: ShardId,
        op: ShardOp,
        relayed: bool,
    },
}

struct PendingRequest {
    tx: oneshot::Sender<ShardResult>,
    /// A write whose connection broke may have been applied.
    write: bool,
}

type PendingMap = Arc<Mutex<HashMap<u64, PendingRequest>>>;

struct Link {
    tx: mpsc::Sender<Outgoing>,
    pending: PendingMap,
    metrics: Arc<LinkMetrics>,
    /// Connected and heard from within the link timeout ([`LINK_UP`])?
    /// Only then is anything queued for the peer: senders learn at once.
    health: Arc<LinkHealth>,
}

/// Not connected yet since start (the peer may just be starting too).
const LINK_NEW: u8 = 0;
const LINK_UP: u8 = 1;
/// A connection failed or fell silent: the peer is cut off or gone.
const LINK_DOWN: u8 = 2;
/// A link down for less than this may just be reconnecting (after this
/// process was paused, or a peer restarted): routers still count the peer
/// as reachable rather than answer 503 at once.
const DOWN_GRACE: Duration = Duration::from_millis(300);

struct LinkHealth {
    state: AtomicU8,
    /// Microseconds after `epoch` when the link last went down.
    down_since_us: AtomicU64,
    epoch: Instant,
}

impl LinkHealth {
    fn new() -> Self {
        LinkHealth { state: AtomicU8::new(LINK_NEW), down_since_us: AtomicU64::new(0), epoch: Instant::now() }
    }
    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == LINK_UP
    }
    fn set_up(&self) {
        self.state.store(LINK_UP, Ordering::Release);
    }
    fn set_down(&self) {
        if self.state.swap(LINK_DOWN, Ordering::AcqRel) != LINK_DOWN {
            self.down_since_us.store(self.epoch.elapsed().as_micros() as u64, Ordering::Release);
        }
    }
    /// Down for longer than [`DOWN_GRACE`].
    fn known_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == LINK_DOWN
            && self.epoch.elapsed().as_micros() as u64
                > self.down_since_us.load(Ordering::Acquire) + DOWN_GRACE.as_micros() as u64
    }
}

struct Shared {
    node: NodeId,
    cluster_id: u64,
    /// Every node of the cluster map, this one included: who may connect.
    members: RwLock<Vec<NodeId>>,
    /// One link per peer; grows when nodes join (links of removed nodes
    /// stay, idle, until the process ends).
    links: RwLock<HashMap<NodeId, Arc<Link>>>,
    /// Where link tasks of peers that join later are spawned.
    arbiter: ArbiterHandle,
    /// The IP outbound connections leave from: the peer listener's, unless
    /// that is unspecified (so firewalls and peers see one address per node).
    source_ip: Option<std::net::IpAddr>,
    link_timeout: Duration,
    /// Local replicas by shard. Written when a replica starts or stops,
    /// read on every delivery: a map lookup under an uncontended RwLock.
    local: RwLock<HashMap<ShardId, Addr<StorageActor>>>,
    next_id: AtomicU64,
    /// Snapshot bytes this node may send per second, over all links.
    snapshots: SnapshotThrottle,
    tls: Option<Arc<NodeTls>>,
}

/// A token bucket over every link's snapshot chunks, so moving replicas
/// leaves the network and disks to foreground traffic. Chunks go
/// whole: the bucket may go negative by one chunk and then waits. Raft
/// messages never wait behind it; they interleave with the chunks.
struct SnapshotThrottle {
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    /// (when last refilled, tokens).
    bucket: Mutex<(Instant, f64)>,
}

impl SnapshotThrottle {
    fn new() -> Self {
        SnapshotThrottle { rate: AtomicU64::new(0), bucket: Mutex::new((Instant::now(), 0.0)) }
    }

    /// Takes `n` bytes if any tokens are left; else how long until there are.
    fn take(&self, n: usize) -> Result<(), Duration> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        // At most one second of burst.
        b.1 = (b.1 + now.duration_since(b.0).as_secs_f64() * rate as f64).min(rate as f64);
        b.0 = now;
        if b.1 > 0.0 {
            b.1 -= n as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((-b.1 + 1.0) / rate as f64))
        }
    }
}

impl Shared {
    fn local(&self, shard: ShardId) -> Option<Addr<StorageActor>> {
        self.local.read().unwrap_or_else(|e| e.into_inner()).get(&shard).cloned()
    }
    /// The link to `peer`. A read lock for one `Arc` clone: links change
    /// only when a node joins.
    fn link(&self, peer: NodeId) -> Option<Arc<Link>> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).get(&peer).cloned()
    }
}

/// Cheap to clone; every clone shares the links.
#[derive(Clone)]
pub struct PeerTransport {
    shared: Arc<Shared>,
}

/// The listening address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding the peer address {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl PeerTransport {
    /// Binds the peer listener (so a taken port fails here, at startup) and
    /// starts the accept loop and one link per peer on `arbiter`.
    pub fn start(cfg: PeerConfig, arbiter: &ArbiterHandle) -> Result<(PeerTransport, SocketAddr), BindError> {
        let std_listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| BindError { addr: cfg.listen, source })?;
        std_listener.set_nonblocking(true).map_err(|source| BindError { addr: cfg.listen, source })?;
        let bound = std_listener.local_addr().map_err(|source| BindError { addr: cfg.listen, source })?;
        let shared = Arc::new(Shared {
            node: cfg.node,
            cluster_id: cfg.cluster_id,
            members: RwLock::new(vec![cfg.node]),
            links: RwLock::default(),
            arbiter: arbiter.clone(),
            source_ip: Some(bound.ip()).filter(|ip| !ip.is_unspecified()),
            link_timeout: cfg.link_timeout,
            local: RwLock::default(),
            next_id: AtomicU64::new(1),
            snapshots: SnapshotThrottle::new(),
            tls: cfg.tls.clone(),
        });
        let s = shared.clone();
        arbiter.spawn(async move {
            match TcpListener::from_std(std_listener) {
                Ok(l) => accept_loop(s, l).await,
                Err(e) => error!("peer listener could not join the runtime: {e}"),
            }
        });
        let transport = PeerTransport { shared };
        transport.set_peers(&cfg.peers);
        // Exported from the start, so rate() and alerts see 0, not absence.
        PEER.relayed.with_label_values(&[&cfg.node.to_string()]);
        info!(node = cfg.node, %bound, peers = ?cfg.peers, tls = cfg.tls.is_some(), "peer transport started");
        Ok((transport, bound))
    }

    /// Snapshot bytes per second this node sends, over all links (0:
    /// unlimited). Set from the cluster map's rebalance settings.
    pub fn set_snapshot_rate(&self, bytes_per_sec: u64) {
        self.shared.snapshots.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Admits and links every node in `peers` not known yet (nodes that
    /// joined since). Addresses of known peers do not change: a node keeps
    /// its address for life (a StatefulSet pod's stable name).
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, String>) {
        let shared = &self.shared;
        let mut links = shared.links.write().unwrap_or_else(|e| e.into_inner());
        let mut members = shared.members.write().unwrap_or_else(|e| e.into_inner());
        for (&peer, addr) in peers {
            if peer == shared.node || links.contains_key(&peer) {
                continue;
            }
            let (tx, rx) = mpsc::channel(SEND_QUEUE_CAPACITY);
            let pending: PendingMap = Arc::default();
            let metrics = Arc::new(LinkMetrics::new(shared.node, peer));
            let health = Arc::new(LinkHealth::new());
            let state = LinkState { pending: pending.clone(), m: metrics.clone(), health: health.clone() };
            links.insert(peer, Arc::new(Link { tx, pending, metrics, health }));
            if !members.contains(&peer) {
                members.push(peer);
                members.sort_unstable();
            }
            info!(node = shared.node, peer, %addr, "linking to peer");
            shared.arbiter.spawn(run_link(shared.clone(), peer, addr.clone(), rx, state));
        }
    }

    /// Makes the local replica of `shard` reachable from peers.
    pub fn register(&self, shard: ShardId, addr: Addr<StorageActor>) {
        self.shared.local.write().unwrap_or_else(|e| e.into_inner()).insert(shard, addr);
    }

    pub fn unregister(&self, shard: ShardId) {
        self.shared.local.write().unwrap_or_else(|e| e.into_inner()).remove(&shard);
    }
}

impl Transport for PeerTransport {
    fn send_raft(&self, from: NodeId, shard: ShardId, msgs: Vec<RaftMessage>) -> Vec<Undelivered> {
        self.send_raft_many(from, vec![(shard, msgs)]).into_iter().map(|(_, lost)| lost).collect()
    }

    fn send_raft_many(&self, _from: NodeId, batch: Vec<(ShardId, Vec<RaftMessage>)>) -> Vec<(ShardId, Undelivered)> {
        let (per_dest, snapshots) = by_destination(batch);
        let mut lost = Vec::new();
        for (shard, m) in snapshots {
            let to = m.to;
            if !self.enqueue(to, Outgoing::Snapshot { shard, msg: m }) {
                lost.push((shard, Undelivered { to, snapshot: true }));
            }
        }
        for (to, share) in per_dest {
            let shards: Vec<ShardId> = share.iter().map(|(s, _)| *s).collect();
            if !self.enqueue(to, Outgoing::RaftMany(share)) {
                lost.extend(shards.into_iter().map(|s| (s, Undelivered { to, snapshot: false })));
            }
        }
        lost
    }

    /// Not known to be down: a link still connecting at start, or down only
    /// for a moment (reconnecting), counts as reachable, so a node starting
    /// beside its peers or waking from a pause does not think itself cut off.
    fn reachable(&self, _from: NodeId, to: NodeId) -> bool {
        to == self.shared.node || self.shared.link(to).is_some_and(|l| !l.health.known_down())
    }

    fn request(&self, _from: NodeId, to: NodeId, shard: ShardId, op: ShardOp) -> BoxFuture<'static, ShardResult> {
        self.forward(to, shard, op, false)
    }
}

impl PeerTransport {
    /// Sends `op` to the replica of `shard` on `to` (this node included).
    fn forward(&self, to: NodeId, shard: ShardId, op: ShardOp, relayed: bool) -> BoxFuture<'static, ShardResult> {
        let shared = &self.shared;
        if to == shared.node {
            let local = shared.local(shard);
            return Box::pin(async move {
                let Some(addr) = local else { return Err(StoreError::Unreachable { node: to }) };
                addr.send(ShardRequest(op)).await.unwrap_or_else(|_| Err(replica_stopped()))
            });
        }
        let Some(link) = shared.link(to).filter(|l| l.health.is_up()) else {
            // Unknown, or known to be down: never sent, so safe to retry
            // elsewhere at once.
            return Box::pin(async move { Err(StoreError::Unreachable { node: to }) });
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let write = !op.changes_nothing();
        lock(&link.pending).insert(id, PendingRequest { tx, write });
        let pending = link.pending.clone();
        if !self.enqueue(to, Outgoing::Request { id, shard, op, relayed }) {
            lock(&pending).remove(&id);
            return Box::pin(async move { Err(StoreError::Unreachable { node: to }) });
        }
        link.metrics.forwarded.inc();
        Box::pin(async move {
            // Dropped without an answer only if the link task ended.
            let result = rx.await.unwrap_or(Err(StoreError::Unreachable { node: to }));
            lock(&pending).remove(&id);
            result
        })
    }

    fn enqueue(&self, to: NodeId, o: Outgoing) -> bool {
        let Some(link) = self.shared.link(to) else {
            debug!(node = self.shared.node, to, "no link to unknown peer");
            return false;
        };
        if !link.health.is_up() {
            link.metrics.dropped_disconnected.inc();
            return false;
        }
        match link.tx.try_send(o) {
            Ok(()) => {
                link.metrics.queue_depth.set((SEND_QUEUE_CAPACITY - link.tx.capacity()) as i64);
                true
            }
            Err(_) => {
                link.metrics.dropped_queue_full.inc();
                false
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent across a panic elsewhere; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn replica_stopped() -> StoreError {
    StoreError::OutcomeUnknown { reason: "replica stopped before answering".into() }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("timed out")]
    Timeout,
    #[error("the peer sent nothing, not even a pong, for {0:?}")]
    Silent(Duration),
    #[error("peer refused us ({}): {detail}", reason.label())]
    Refused { reason: RejectReason, detail: String },
    #[error("unexpected frame during handshake")]
    Unexpected,
    #[error("TLS: {0}")]
    Tls(std::io::Error),
}

/// Reads one frame body; `None` on a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ConnError> {
    let mut header = [0u8; wire::FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = wire::frame_len(header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

// ---------------------------------------------------------------------
// Outbound: one link task per peer.
// ---------------------------------------------------------------------

/// What a link task shares with the senders.
struct LinkState {
    pending: PendingMap,
    m: Arc<LinkMetrics>,
    health: Arc<LinkHealth>,
}

async fn run_link(shared: Arc<Shared>, peer: NodeId, addr: String, mut rx: mpsc::Receiver<Outgoing>, st: LinkState) {
    let node = shared.node;
    let m = &st.m;
    let mut backoff = BACKOFF_MIN;
    let mut transfer = 0u64;
    let mut last_error = String::new();
    loop {
        match connect(&shared, peer, &addr).await {
            Ok(halves) => {
                m.connect_ok.inc();
                m.connected.set(1);
                st.health.set_up();
                info!(node, peer, %addr, "connected to peer");
                backoff = BACKOFF_MIN;
                last_error.clear();
                let reason = serve_link(&shared, peer, halves, &mut rx, &st.pending, m, &mut transfer).await;
                st.health.set_down();
                m.connected.set(0);
                fail_pending(&st.pending, peer);
                match reason {
                    None => return, // every sender is gone: the node is stopping
                    Some(e) => {
                        warn!(node, peer, "peer connection lost: {e}");
                        // Leaders stop pipelining to the peer and probe instead.
                        report_unreachable(&shared, peer);
                    }
                }
            }
            Err(e) => {
                st.health.set_down();
                match &e {
                    ConnError::Refused { reason: RejectReason::ClusterMismatch, .. } => {
                        m.connect_refused.inc();
                        error!(node, peer, %addr, "{e}: the peer belongs to another cluster, or this data dir does")
                    }
                    ConnError::Refused { .. } => {
                        m.connect_refused.inc();
                        error!(node, peer, %addr, "{e}")
                    }
                    ConnError::Tls(_) => {
                        m.connect_refused.inc();
                        error!(node, peer, %addr, "{e}: the peer's certificate is not from this cluster's CA or does not name this cluster, or it refused ours")
                    }
                    _ => m.connect_error.inc(),
                }
                // Log each distinct failure once, not every retry.
                let text = e.to_string();
                if text != last_error {
                    warn!(node, peer, %addr, "cannot connect to peer: {text}; retrying with backoff");
                    last_error = text;
                }
            }
        }
        // Back off; what queued up before the link went down is dropped.
        let until = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = sleep_until(until) => break,
                item = rx.recv() => match item {
                    None => return,
                    Some(o) => drop_outgoing(&shared, peer, o, &st.pending, m),
                },
            }
        }
        m.queue_depth.set(0);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(shared: &Shared, peer: NodeId, addr: &str) -> Result<(ReadHalf, WriteHalf), ConnError> {
    let dial = async {
        let mut last = None;
        for target in tokio::net::lookup_host(addr).await? {
            let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let Some(ip) = shared.source_ip.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            match socket.connect(target).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
    };
    let stream = timeout(CONNECT_TIMEOUT, dial).await.map_err(|_| ConnError::Timeout)??;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = match &shared.tls {
        None => tcp_halves(stream),
        Some(tls) => {
            // The server must prove it is of this cluster: its certificate
            // is checked against the CA and for the cluster's peer name.
            let handshake = tls.connector().connect(tls.cluster_name().clone(), stream);
            let s = timeout(HELLO_TIMEOUT, handshake).await.map_err(|_| ConnError::Timeout)?.map_err(ConnError::Tls)?;
            tls_halves(s)
        }
    };
    let mut buf = Vec::new();
    wire::encode_hello(&mut buf, &Hello { cluster_id: shared.cluster_id, from: shared.node, to: peer });
    send_all(&mut wr, &buf).await?;
    let body = timeout(HELLO_TIMEOUT, read_frame(&mut rd)).await.map_err(|_| ConnError::Timeout)??;
    match body.map(|b| wire::decode(&b)).transpose()? {
        Some(Frame::Welcome { cluster_id, node }) if cluster_id == shared.cluster_id && node == peer => Ok((rd, wr)),
        Some(Frame::Reject { reason, detail }) => Err(ConnError::Refused { reason, detail }),
        _ => Err(ConnError::Unexpected),
    }
}

/// When the peer was last heard from on a link, in microseconds since the
/// link's connection started (pings carry the same clock, so a pong is its
/// own round-trip measurement).
struct Heard {
    start: Instant,
    last_us: AtomicU64,
}

impl Heard {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn touch(&self) {
        self.last_us.store(self.now_us(), Ordering::Relaxed);
    }
    fn silent_for(&self) -> Duration {
        Duration::from_micros(self.now_us().saturating_sub(self.last_us.load(Ordering::Relaxed)))
    }
}

/// Runs one connection until it breaks or falls silent (`Some(error)`) or
/// the queue closes (`None`).
async fn serve_link(
    shared: &Arc<Shared>,
    peer: NodeId,
    (rd, mut wr): (ReadHalf, WriteHalf),
    rx: &mut mpsc::Receiver<Outgoing>,
    pending: &PendingMap,
    m: &Arc<LinkMetrics>,
    transfer: &mut u64,
) -> Option<ConnError> {
    let reader_pending = pending.clone();
    let node = shared.node;
    let link_timeout = shared.link_timeout;
    let heard = Arc::new(Heard { start: Instant::now(), last_us: AtomicU64::new(0) });
    let received = PEER.received_bytes.with_label_values(&[&node.to_string(), &peer.to_string()]);
    let (reader_heard, reader_m) = (heard.clone(), m.clone());
    let mut reader = actix_rt::spawn(async move {
        let mut rd = BufReader::new(rd);
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(body)) => {
                    reader_heard.touch();
                    received.inc_by((body.len() + wire::FRAME_HEADER_BYTES) as u64);
                    match wire::decode(&body) {
                        Ok(Frame::Response { id, result }) => {
                            if let Some(p) = lock(&reader_pending).remove(&id) {
                                let _ = p.tx.send(result);
                            }
                        }
                        Ok(Frame::Pong { seq }) => {
                            let rtt_us = reader_heard.now_us().saturating_sub(seq);
                            reader_m.ping_rtt.observe(rtt_us as f64 / 1e6);
                        }
                        Ok(_) => return ConnError::Unexpected,
                        Err(e) => return e.into(),
                    }
                }
                Ok(None) => return ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return e,
            }
        }
    });
    let ping_every = link_timeout / PINGS_PER_LINK_TIMEOUT;
    let mut ticker = tokio::time::interval(ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let silent = || {
        let quiet = heard.silent_for();
        (quiet > link_timeout).then(|| {
            m.silent.inc();
            ConnError::Silent(quiet)
        })
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut last_tick = Instant::now();
    // Snapshot chunk frames waiting for the throttle, in order.
    let mut chunks: VecDeque<(ShardId, Vec<u8>)> = VecDeque::new();
    let mut throttled = Duration::ZERO;
    loop {
        buf.clear();
        let mut snapshots = Vec::new();
        tokio::select! {
            item = rx.recv() => match item {
                Some(o) => encode(shared, peer, o, &mut buf, &mut chunks, transfer),
                None => {
                    reader.abort();
                    report_lost_snapshots(shared, peer, &pending_snapshot_shards(&chunks));
                    return None;
                }
            },
            _ = tokio::time::sleep(throttled), if !chunks.is_empty() => {}
            r = &mut reader => {
                return Some(r.unwrap_or_else(|e| ConnError::Io(std::io::Error::other(e))));
            }
            _ = ticker.tick() => {
                // A tick far later than due means this process did not run
                // (SIGSTOP, a stalled machine): the peer's pongs may be
                // waiting unread. Give them a link timeout before judging.
                if last_tick.elapsed() > ping_every * 3 {
                    debug!(node, peer, late = ?last_tick.elapsed(), "link ticker ran late; not judging the peer this time");
                    heard.touch();
                }
                last_tick = Instant::now();
                if let Some(e) = silent() {
                    reader.abort();
                    report_lost_snapshots(shared, peer, &pending_snapshot_shards(&chunks));
                    return Some(e);
                }
                wire::encode_ping(&mut buf, heard.now_us());
            }
        }
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(o) => encode(shared, peer, o, &mut buf, &mut chunks, transfer),
                Err(_) => break,
            }
        }
        // One snapshot chunk per write at most, so Raft messages queued
        // meanwhile go out between chunks.
        throttled = Duration::ZERO;
        if let Some((shard, frame)) = chunks.front() {
            match shared.snapshots.take(frame.len()) {
                Ok(()) => {
                    buf.extend_from_slice(frame);
                    m.snapshot_chunks_sent.inc();
                    snapshots.push(*shard);
                    chunks.pop_front();
                }
                Err(wait) => throttled = wait,
            }
        }
        if buf.is_empty() {
            continue;
        }
        m.queue_depth.set(rx.len() as i64);
        // A peer that stops reading (paused, cut off) fills the socket
        // buffer and the write waits; liveness is checked while it does.
        let mut write = std::pin::pin!(send_all(&mut wr, &buf));
        let written = loop {
            match timeout(ping_every, &mut write).await {
                Ok(r) => break r.map_err(ConnError::from),
                Err(_) => {
                    if let Some(e) = silent() {
                        break Err(e);
                    }
                }
            }
        };
        if let Err(e) = written {
            snapshots.extend(pending_snapshot_shards(&chunks));
            report_lost_snapshots(shared, peer, &snapshots);
            reader.abort();
            return Some(e);
        }
        m.sent_bytes.inc_by(buf.len() as u64);
    }
}

/// The shards whose snapshots have chunks not yet sent.
fn pending_snapshot_shards(chunks: &VecDeque<(ShardId, Vec<u8>)>) -> Vec<ShardId> {
    let mut shards: Vec<ShardId> = chunks.iter().map(|(s, _)| *s).collect();
    shards.dedup();
    shards
}

/// Encodes `o` into `buf`, except a snapshot, whose chunk frames queue in
/// `chunks` for the throttle.
fn encode(
    shared: &Shared,
    peer: NodeId,
    o: Outgoing,
    buf: &mut Vec<u8>,
    chunks: &mut VecDeque<(ShardId, Vec<u8>)>,
    transfer: &mut u64,
) {
    let res = match &o {
        // Each shard's frames are whole or absent: one that cannot be
        // encoded is left out, the others still go.
        Outgoing::RaftMany(batch) => {
            let mut res = Ok(());
            for (shard, msgs) in batch {
                if let Err(e) = wire::encode_raft(buf, *shard, msgs) {
                    res = Err(e);
                }
            }
            res
        }
        Outgoing::Snapshot { shard, msg } => {
            *transfer += 1;
            let mut all = Vec::new();
            let r = wire::encode_snapshot(&mut all, *shard, *transfer, msg);
            if r.is_ok() {
                info!(node = shared.node, peer, shard, bytes = all.len(), "sending snapshot");
                let mut rest = all.as_slice();
                while rest.len() >= wire::FRAME_HEADER_BYTES {
                    let mut h = [0u8; wire::FRAME_HEADER_BYTES];
                    h.copy_from_slice(&rest[..wire::FRAME_HEADER_BYTES]);
                    let n = wire::FRAME_HEADER_BYTES + u32::from_be_bytes(h) as usize;
                    let (frame, tail) = rest.split_at(n.min(rest.len()));
                    chunks.push_back((*shard, frame.to_vec()));
                    rest = tail;
                }
            }
            r
        }
        Outgoing::Request { id, shard, op, relayed } => {
            wire::encode_request(buf, *id, *shard, op, *relayed);
            Ok(())
        }
    };
    if let Err(e) = res {
        error!(node = shared.node, peer, "cannot encode an outgoing message: {e}");
        if let Outgoing::Snapshot { shard, .. } = o {
            report_lost_snapshots(shared, peer, &[shard]);
        }
    }
}

/// Every local replica learns that `peer` is gone: a leader moves the
/// peer's progress to probing instead of pipelining into the void.
fn report_unreachable(shared: &Shared, peer: NodeId) {
    let replicas: Vec<_> = shared.local.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    for addr in replicas {
        let _ = addr.try_send(PeerUnreachable { to: peer, snapshot: false });
    }
}

/// Raft must hear of a snapshot that never left, or the leader waits for it.
fn report_lost_snapshots(shared: &Shared, peer: NodeId, shards: &[ShardId]) {
    for &shard in shards {
        if let Some(addr) = shared.local(shard) {
            let _ = addr.try_send(PeerUnreachable { to: peer, snapshot: true });
        }
    }
}

fn drop_outgoing(shared: &Shared, peer: NodeId, o: Outgoing, pending: &PendingMap, m: &LinkMetrics) {
    m.dropped_disconnected.inc();
    match o {
        Outgoing::RaftMany(_) => {}
        Outgoing::Snapshot { shard, .. } => report_lost_snapshots(shared, peer, &[shard]),
        Outgoing::Request { id, .. } => {
            if let Some(p) = lock(pending).remove(&id) {
                let _ = p.tx.send(Err(StoreError::Unreachable { node: peer }));
            }
        }
    }
}

/// The connection broke: requests sent on it get no answer any more.
fn fail_pending(pending: &PendingMap, peer: NodeId) {
    for (_, p) in lock(pending).drain() {
        let err = if p.write {
            StoreError::OutcomeUnknown { reason: format!("connection to node {peer} lost") }
        } else {
            StoreError::Unreachable { node: peer }
        };
        let _ = p.tx.send(Err(err));
    }
}

// ---------------------------------------------------------------------
// Inbound.
// ---------------------------------------------------------------------

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                actix_rt::spawn(serve_inbound(shared.clone(), stream, remote));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!(node = shared.node, "peer accept failed: {e}");
                tokio::time::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

fn refused(node: NodeId, reason: &str) {
    PEER.refused.with_label_values(&[&node.to_string(), reason]).inc();
}

/// The TLS handshake of an inbound connection, and the cluster check on
/// the dialer's certificate; `None` (logged, counted) refuses it.
async fn accept_tls(
    shared: &Shared,
    tls: &NodeTls,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<(ReadHalf, WriteHalf)> {
    let node = shared.node;
    let why = match timeout(HELLO_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => match tls.check_peer(s.get_ref().1.peer_certificates()) {
            Ok(()) => return Some(tls_halves(s)),
            Err(e) => e.to_string(),
        },
        Ok(Err(e)) => format!("TLS handshake failed: {e}"),
        Err(_) => format!("no TLS handshake within {HELLO_TIMEOUT:?}"),
    };
    refused(node, "tls");
    warn!(node, %remote, reason = "tls", "refused peer: {why}");
    None
}

async fn serve_inbound(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let node = shared.node;
    let (rd, mut wr) = match &shared.tls {
        None => tcp_halves(stream),
        Some(tls) => match accept_tls(&shared, tls, stream, remote).await {
            Some(h) => h,
            None => return,
        },
    };
    let mut rd = BufReader::new(rd);
    let hello = match timeout(HELLO_TIMEOUT, read_frame(&mut rd)).await {
        Ok(Ok(Some(body))) => wire::decode(&body).ok(),
        _ => None,
    };
    let Some(Frame::Hello(hello)) = hello else {
        refused(node, RejectReason::BadHello.label());
        warn!(node, %remote, "peer connection closed: no valid hello");
        let mut buf = Vec::new();
        wire::encode_reject(&mut buf, RejectReason::BadHello, "expected a ringstore peer hello");
        let _ = send_all(&mut wr, &buf).await;
        return;
    };
    let members = shared.members.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Err(reason) = wire::check_hello(&hello, shared.cluster_id, node, &members) {
        refused(node, reason.label());
        let detail = format!(
            "node {node} is in cluster {:016x} with members {:?}; you are node {} of cluster {:016x} asking for node {}",
            shared.cluster_id, members, hello.from, hello.cluster_id, hello.to
        );
        warn!(node, %remote, reason = reason.label(), "refused peer: {detail}");
        let mut buf = Vec::new();
        wire::encode_reject(&mut buf, reason, &detail);
        let _ = send_all(&mut wr, &buf).await;
        return;
    }
    let peer = hello.from;
    let mut buf = Vec::new();
    wire::encode_welcome(&mut buf, shared.cluster_id, node);
    if send_all(&mut wr, &buf).await.is_err() {
        return;
    }
    debug!(node, peer, %remote, "accepted peer connection");
    let (resp_tx, mut resp_rx) = mpsc::channel::<Vec<u8>>(RESPONSE_QUEUE_CAPACITY);
    let writer = actix_rt::spawn(async move {
        let mut out = Vec::new();
        while let Some(first) = resp_rx.recv().await {
            out.clear();
            out.extend_from_slice(&first);
            while out.len() < WRITE_BATCH_BYTES {
                match resp_rx.try_recv() {
                    Ok(more) => out.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if send_all(&mut wr, &out).await.is_err() {
                return;
            }
        }
    });
    let (n, p) = (node.to_string(), peer.to_string());
    let received = PEER.received_bytes.with_label_values(&[&n, &p]);
    let chunks_received = PEER.snapshot_chunks.with_label_values(&[&n, "received"]);
    let mut snapshot = Reassembly::default();
    let idle = shared.link_timeout * INBOUND_IDLE_LINK_TIMEOUTS;
    let end = loop {
        let body = match timeout(idle, read_frame(&mut rd)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => break None,
            Ok(Err(e)) => break Some(("bad_frame", e.to_string())),
            // A live dialer pings several times per link timeout.
            Err(_) => break Some(("silent", format!("nothing received for {idle:?}"))),
        };
        received.inc_by((body.len() + wire::FRAME_HEADER_BYTES) as u64);
        match wire::decode(&body) {
            Ok(Frame::Raft { shard, msgs }) => deliver_raft(&shared, peer, shard, msgs),
            Ok(Frame::Ping { seq }) => {
                let mut out = Vec::new();
                wire::encode_pong(&mut out, seq);
                // A full response queue means the dialer is far behind
                // anyway; a lost pong only makes it look slower.
                let _ = resp_tx.try_send(out);
            }
            Ok(Frame::SnapshotChunk(c)) => {
                chunks_received.inc();
                match snapshot.accept(c) {
                    Ok(Some((shard, msg))) => {
                        info!(node, peer, shard, "received snapshot");
                        deliver(&shared, peer, shard, vec![msg]);
                    }
                    Ok(None) => {}
                    Err(e) => break Some(("bad_snapshot", e.to_string())),
                }
            }
            Ok(Frame::Request { id, shard, op, relayed }) => {
                let local = shared.local(shard);
                let tx = resp_tx.clone();
                let relay = (!relayed).then(|| (PeerTransport { shared: shared.clone() }, op.clone()));
                actix_rt::spawn(async move {
                    let mut result = match local {
                        Some(addr) => addr.send(ShardRequest(op)).await.unwrap_or_else(|_| Err(replica_stopped())),
                        None => Err(StoreError::Unreachable { node }),
                    };
                    // This replica does not lead but knows who does: pass the
                    // request on once (NotLeader applied nothing). The asker
                    // may be unable to reach that leader itself, as in a
                    // partition that cuts only the link between the two.
                    if let (Err(StoreError::NotLeader { hint: Some(h), .. }), Some((t, op))) = (&result, relay) {
                        if *h != peer && *h != node && t.reachable(node, *h) {
                            PEER.relayed.with_label_values(&[&node.to_string()]).inc();
                            result = t.forward(*h, shard, op, true).await;
                        }
                    }
                    let mut out = Vec::new();
                    wire::encode_response(&mut out, id, &result);
                    let _ = tx.send(out).await;
                });
            }
            Ok(other) => break Some(("unexpected_frame", format!("{other:?}").chars().take(80).collect())),
            Err(e) => break Some(("bad_frame", e.to_string())),
        }
    };
    drop(resp_tx);
    if let Some((reason, detail)) = end {
        refused(node, reason);
        warn!(node, peer, %remote, reason, "closing peer connection: {detail}");
        writer.abort();
    }
}

/// Hands a Raft frame to its replica; under the fault suite's injected
/// latency (`peer_raft_delay_ms`, test builds only) after that delay, each
/// frame on its own timer, so the link keeps its throughput.
fn deliver_raft(shared: &Arc<Shared>, peer: NodeId, shard: ShardId, msgs: Vec<RaftMessage>) {
    if let Some(delay) = injected_delay() {
        let shared = shared.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            deliver(&shared, peer, shard, msgs);
        });
        return;
    }
    deliver(shared, peer, shard, msgs)
}

fn injected_delay() -> Option<Duration> {
    fail::fail_point!("peer_raft_delay_ms", |ms| ms.and_then(|m| m.trim().parse().ok()).map(Duration::from_millis));
    None
}

fn deliver(shared: &Shared, peer: NodeId, shard: ShardId, msgs: Vec<RaftMessage>) {
    let Some(addr) = shared.local(shard) else {
        PEER.dropped.with_label_values(&[&shared.node.to_string(), &peer.to_string(), "unknown_shard"]).inc();
        return;
    };
    if addr.try_send(ringstore_storage::messages::RaftBatch(msgs)).is_err() {
        PEER.dropped.with_label_values(&[&shared.node.to_string(), &peer.to_string(), "mailbox_full"]).inc();
    }
}
