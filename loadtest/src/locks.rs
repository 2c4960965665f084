//! The `locks` workload: each operation is one acquire + release pair.
//!
//! - `--lock-mode uncontended`: every client has its own lock name.
//! - `--lock-mode contended`: every client takes the same lock, so each
//!   operation is one handoff between holders.
//!
//! Each system through its own lock protocol:
//! - ringstore: `POST /v1/locks/{name}/acquire` (waiting in its FIFO queue)
//!   and `release` with the owner and fencing token;
//! - etcd: a lease per client and the v3 Lock/Unlock RPCs (Lock waits);
//! - redis: the classic single-instance lock, `SET name token NX PX ttl`
//!   (retried every millisecond while taken) and a compare-and-delete Lua
//!   release, over RESP on one connection per client.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstore_client::LockClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::report::{peak_rss_bytes, OpRecorder, RunResult};
use crate::{Args, LockMode, System};

const TTL: Duration = Duration::from_secs(10);
/// How long a contended acquire may wait before it counts as an error.
const WAIT: Duration = Duration::from_secs(5);

const RELEASE_LUA: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

enum Locker {
    Ringstore(LockClient),
    Etcd { lock: Box<etcd_client::LockClient>, lease: i64 },
    Redis(Box<BufReader<TcpStream>>),
}

impl Locker {
    async fn connect(args: &Args, c: usize) -> anyhow::Result<Locker> {
        let endpoint = &args.endpoints[c % args.endpoints.len()];
        Ok(match args.system {
            System::Ringstore => Locker::Ringstore(LockClient::new(vec![endpoint.clone()])),
            System::Etcd => {
                let client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
                let lease = client.lease_client().grant(args.duration.as_secs() as i64 + 60, None).await?.id();
                Locker::Etcd { lock: Box::new(client.lock_client()), lease }
            }
            System::Redis => {
                let addr = endpoint.trim_start_matches("redis://");
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Locker::Redis(Box::new(BufReader::new(s)))
            }
            System::Rocksdb => anyhow::bail!("rocksdb has no locks"),
        })
    }

    /// One acquire + release of `name`.
    async fn pair(&mut self, name: &str, owner: &str, seq: u64) -> Result<(), String> {
        match self {
            Locker::Ringstore(client) => {
                let lease = client.acquire(name, owner, TTL, WAIT).await.map_err(|e| e.to_string())?;
                client.release(&lease).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Locker::Etcd { lock, lease } => {
                let key = lock
                    .lock(name, Some(etcd_client::LockOptions::new().with_lease(*lease)))
                    .await
                    .map_err(|e| e.to_string())?
                    .key()
                    .to_vec();
                lock.unlock(key).await.map(|_| ()).map_err(|e| e.to_string())
            }
            Locker::Redis(conn) => {
                let token = format!("{owner}-{seq}");
                let px = TTL.as_millis().to_string();
                let started = Instant::now();
                loop {
                    match resp(conn, &["SET", name, &token, "NX", "PX", &px]).await? {
                        Resp::Simple(s) if s == "OK" => break,
                        Resp::Nil => {
                            if started.elapsed() > WAIT {
                                return Err("lock not acquired within the wait".into());
                            }
                            actix_rt::time::sleep(Duration::from_millis(1)).await;
                        }
                        other => return Err(format!("SET answered {other:?}")),
                    }
                }
                match resp(conn, &["EVAL", RELEASE_LUA, "1", name, &token]).await? {
                    Resp::Int(1) => Ok(()),
                    other => Err(format!("release answered {other:?}")),
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
}

/// Sends one command as a RESP array of bulk strings and reads one reply.
async fn resp(conn: &mut BufReader<TcpStream>, cmd: &[&str]) -> Result<Resp, String> {
    let mut out = format!("*{}\r\n", cmd.len()).into_bytes();
    for a in cmd {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&out).await.map_err(|e| e.to_string())?;
    let mut line = String::new();
    conn.read_line(&mut line).await.map_err(|e| e.to_string())?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Resp::Simple(rest.to_string())),
        "-" => Err(format!("redis error: {rest}")),
        ":" => rest.parse().map(Resp::Int).map_err(|e| e.to_string()),
        "$" => {
            let n: i64 = rest.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
            if n < 0 {
                return Ok(Resp::Nil);
            }
            let mut b = vec![0u8; n as usize + 2];
            conn.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            b.truncate(n as usize);
            Ok(Resp::Bulk(b))
        }
        _ => Err(format!("unexpected RESP line {line:?}")),
    }
}

pub async fn run(args: &Args) -> anyhow::Result<RunResult> {
    let done = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut locker = Locker::connect(args, c).await?;
        let name = match args.lock_mode {
            LockMode::Uncontended => format!("lt-lock-{c}"),
            LockMode::Contended => "lt-lock".to_string(),
        };
        let (done, completed) = (done.clone(), completed.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut rec = OpRecorder::default();
            let owner = format!("client-{c}");
            let mut seq = 0u64;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                seq += 1;
                match locker.pair(&name, &owner, seq).await {
                    Ok(()) => {
                        rec.ok(t.elapsed());
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => rec.err(e),
                }
            }
            rec
        }));
    }
    let timeline = crate::ringstore::progress(args.duration, &completed).await;
    done.store(true, Ordering::Relaxed);
    let mut all = OpRecorder::default();
    for t in tasks {
        all.merge(t.await?);
    }
    let mut ops = std::collections::BTreeMap::new();
    ops.insert("lock", all);
    Ok(RunResult {
        ops,
        elapsed: start.elapsed(),
        timeline,
        p99_timeline: Vec::new(),
        peak_rss_bytes: args.watch_pid.and_then(peak_rss_bytes),
    })
}
