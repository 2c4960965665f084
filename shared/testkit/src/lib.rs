//! Fixtures for tests and benchmarks that need real processes: a child
//! that dies with its handle, free ports, and [`ProcCluster`], a cluster of
//! `ringstore node` processes on 127.0.0.1 that can be killed (`-9`),
//! paused (`-STOP`/`-CONT`), stopped gracefully (`-TERM`) and restarted
//! with the same data dir. Each node's stdout and stderr go to
//! `<dir>/node-<id>.log`, kept across restarts. Started with
//! [`ProcCluster::start_partitionable`], each node gets a loopback address
//! of its own, so [`netfilter::Partition`] can cut the links between nodes.

pub mod netfilter;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A child process killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// Ports handed out lie below Linux's ephemeral range (32768 up): a port
/// from `bind(0)` is an ephemeral one, which the kernel may give the next
/// moment to another test's listener or outgoing connection, and a node
/// then fails to bind it (or a client meets another node's peer port).
const PORT_FIRST: u32 = 10_000;
const PORT_SPAN: u32 = 22_000;

/// A port that was free a moment ago on `ip`: the next one of this
/// process's sequence (which never repeats a port within a run; its start
/// depends on the process id, so concurrent test processes rarely meet)
/// that binds.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = (std::process::id() % 110) * 200;
    for _ in 0..PORT_SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (PORT_FIRST + (offset + n) % PORT_SPAN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A loopback /24 no other cluster of this machine's tests uses: by
/// process id and a counter, so parallel tests never cut each other.
fn private_loopback_block() -> [u8; 2] {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    // 127.0.x.x stays for everything else on this machine.
    [(1 + pid % 250) as u8, ((pid / 250 + n) % 256) as u8]
}

pub type NodeId = u64;

struct ProcNode {
    child: Option<KillOnDrop>,
    ip: Ipv4Addr,
    http: u16,
    peer: u16,
    /// Joined through this member's URL instead of bootstrapping.
    join: Option<String>,
}

pub struct ProcCluster {
    bin: PathBuf,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    nodes: BTreeMap<NodeId, ProcNode>,
    initial_cluster: String,
    extra: Vec<String>,
    /// Environment variables the next spawns get (failpoints).
    env: Vec<(String, String)>,
}

impl ProcCluster {
    /// Starts `n` nodes (ids 1..=n) of the `ringstore` binary `bin`, each
    /// with `extra` flags, data under a new temp dir (or `dir`).
    pub fn start(bin: &Path, n: u64, extra: &[&str], dir: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_on(bin, n, extra, dir, &[], |_| Ipv4Addr::LOCALHOST)
    }

    /// Like [`ProcCluster::start`], every process with `env` set (see
    /// [`ProcCluster::set_env`]).
    pub fn start_env(bin: &Path, n: u64, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on(bin, n, extra, None, env, |_| Ipv4Addr::LOCALHOST)
    }

    /// Like [`ProcCluster::start`], but node `id` listens (HTTP and peer)
    /// on `127.a.b.<id>` of a block of its own and peers dial from it, so
    /// a [`netfilter::Partition`] can cut any pair of nodes.
    pub fn start_partitionable(bin: &Path, n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let [a, b] = private_loopback_block();
        Self::start_on(bin, n, extra, None, &[], |id| Ipv4Addr::new(127, a, b, id as u8))
    }

    fn start_on(
        bin: &Path,
        n: u64,
        extra: &[&str],
        dir: Option<&Path>,
        env: &[(&str, &str)],
        ip: impl Fn(NodeId) -> Ipv4Addr,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(n < 255, "at most 254 nodes");
        let (temp, dir) = match dir {
            Some(d) => (None, d.to_path_buf()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let ip = ip(id);
            nodes.insert(id, ProcNode { child: None, ip, http: free_port_on(ip), peer: free_port_on(ip), join: None });
        }
        let initial_cluster =
            nodes.iter().map(|(id, p)| format!("{id}={}:{}", p.ip, p.peer)).collect::<Vec<_>>().join(",");
        let mut c = ProcCluster {
            bin: bin.to_path_buf(),
            dir,
            _temp: temp,
            nodes,
            initial_cluster,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        c.set_env(env);
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// Starts node `id` (not a member yet) with `--join` through member
    /// `via`, on the loopback address its cluster uses.
    pub fn join(&mut self, id: NodeId, via: NodeId) -> anyhow::Result<()> {
        anyhow::ensure!(!self.nodes.contains_key(&id), "node {id} exists");
        let v = &self.nodes[&via];
        let ip = if v.ip == Ipv4Addr::LOCALHOST {
            v.ip
        } else {
            let o = v.ip.octets();
            Ipv4Addr::new(o[0], o[1], o[2], id as u8)
        };
        let join = Some(self.url(via));
        self.nodes.insert(id, ProcNode { child: None, ip, http: free_port_on(ip), peer: free_port_on(ip), join });
        self.spawn(id)
    }

    /// Stops node `id` (if running) and forgets it: a node drained and
    /// removed from the cluster is no longer one of its members here.
    pub fn forget(&mut self, id: NodeId) {
        if let Some(mut n) = self.nodes.remove(&id) {
            n.child.take(); // KillOnDrop
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    pub fn log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    pub fn url(&self, id: NodeId) -> String {
        format!("http://{}:{}", self.nodes[&id].ip, self.nodes[&id].http)
    }

    /// The address node `id` listens and dials from.
    pub fn ip(&self, id: NodeId) -> Ipv4Addr {
        self.nodes[&id].ip
    }

    pub fn peer_port(&self, id: NodeId) -> u16 {
        self.nodes[&id].peer
    }

    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// The flags node `id` runs with.
    pub fn args(&self, id: NodeId) -> Vec<String> {
        let n = &self.nodes[&id];
        let mut a = vec![
            "node".to_string(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            self.data_dir(id).display().to_string(),
            "--http".into(),
            format!("{}:{}", n.ip, n.http),
            "--peer-addr".into(),
            format!("{}:{}", n.ip, n.peer),
        ];
        match &n.join {
            Some(url) => a.extend(["--join".into(), url.clone()]),
            None => a.extend(["--initial-cluster".into(), self.initial_cluster.clone()]),
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Environment variables for the processes spawned from now on (as
    /// `FAILPOINTS` to arm failpoints); an empty list for none.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// The nodes whose process has exited (a failpoint aborted it), now
    /// reaped so they can be spawned again.
    pub fn reap_exited(&mut self) -> Vec<NodeId> {
        let mut gone = Vec::new();
        for (id, n) in self.nodes.iter_mut() {
            if let Some(c) = n.child.as_mut() {
                if matches!(c.0.try_wait(), Ok(Some(_))) {
                    n.child = None;
                    gone.push(*id);
                }
            }
        }
        gone
    }

    /// A `ringstore` command with stdout and stderr appended to `log`.
    pub fn command(&self, args: &[String], log: &Path) -> anyhow::Result<Command> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.args(args)
            .env("RINGSTORE_LOG", std::env::var("RINGSTORE_LOG").unwrap_or_else(|_| "info,raft=warn".into()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Ok(cmd)
    }

    /// (Re)starts node `id` with its usual flags.
    pub fn spawn(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.spawn_with(id, &self.args(id))
    }

    pub fn spawn_with(&mut self, id: NodeId, args: &[String]) -> anyhow::Result<()> {
        if self.is_running(id) {
            bail!("node {id} is already running");
        }
        let child = self.command(args, &self.log_path(id))?.spawn().with_context(|| format!("{:?}", self.bin))?;
        self.nodes.get_mut(&id).context("unknown node")?.child = Some(KillOnDrop(child));
        Ok(())
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(|c| c.0.id())
    }

    fn signal(&self, id: NodeId, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid(id).with_context(|| format!("node {id} is not running"))?;
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status()?.success();
        anyhow::ensure!(ok, "kill {sig} {pid} failed");
        Ok(())
    }

    /// `kill -9`, and reaps the process.
    pub fn kill9(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.signal(id, "-KILL")?;
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            c.0.wait()?;
        }
        Ok(())
    }

    pub fn pause(&self, id: NodeId) -> anyhow::Result<()> {
        self.signal(id, "-STOP")
    }

    pub fn resume(&self, id: NodeId) -> anyhow::Result<()> {
        self.signal(id, "-CONT")
    }

    /// SIGTERM, then waits up to `within` for the exit status.
    pub fn terminate(&mut self, id: NodeId, within: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(id, "-TERM")?;
        let mut c = self.nodes.get_mut(&id).and_then(|n| n.child.take()).context("not running")?;
        let start = Instant::now();
        loop {
            if let Some(s) = c.0.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > within {
                bail!("node {id} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node `id`'s replica of the first data shard (`/readyz` carries it;
    /// the meta shard is listed there too), if it answers.
    pub async fn replica(&self, id: NodeId) -> Option<serde_json::Value> {
        let client = awc::Client::builder().timeout(Duration::from_secs(1)).finish();
        let mut res = client.get(format!("{}/readyz", self.url(id))).send().await.ok()?;
        let body: serde_json::Value = res.json().await.ok()?;
        body["shards"].as_array()?.iter().find(|s| s["shard"] == 1).cloned()
    }

    /// The leader with the highest term among running nodes, waiting up to `within`.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<NodeId> {
        let start = Instant::now();
        loop {
            let mut best: Option<(u64, NodeId)> = None;
            for id in self.ids().into_iter().filter(|i| self.is_running(*i)) {
                if let Some(r) = self.replica(id).await {
                    if r["role"] == "leader" {
                        let term = r["term"].as_u64().unwrap_or(0);
                        best = best.max(Some((term, id)));
                    }
                }
            }
            if let Some((_, id)) = best {
                return Ok(id);
            }
            if start.elapsed() > within {
                bail!("no leader within {within:?}");
            }
            actix_rt::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
