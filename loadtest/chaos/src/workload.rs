//! The clients: register, lock and list-append workloads over HTTP, each
//! call recorded with its invocation and answer times on the run's clock.
//!
//! All clients share one single-threaded actix runtime, so the recorder is
//! a plain `RefCell`. A client whose call ended unknown goes on as a new
//! process (its old call may still be in flight). Every client stops at
//! the run's end; each call is bounded by the client's timeout.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::error::{ConnectError, SendRequestError};
use awc::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::history::{Call, KeyHistory, Micros, Outcome, ProcessId, RegisterOp};
use crate::locks::{FencedWrite, Grant, WriteResult};
use crate::sets::{self, Append};

/// Server-side deadline of each request (a waiting acquire gets its wait
/// on top); the client waits [`CLIENT_GRACE`] longer before it gives up.
const SERVER_TIMEOUT_MS: u64 = 1_000;
const CLIENT_GRACE: Duration = Duration::from_millis(1_500);
/// Registers and append lists live this long before new keys take over,
/// which keeps each key's history small enough to check exhaustively.
pub const KEY_GENERATION: Duration = Duration::from_secs(8);
pub const REGISTER_KEYS: u64 = 6;
pub const APPEND_KEYS: u64 = 2;
pub const LOCK_TTL_MS: u64 = 1_500;
pub const LOCK_WAIT_MS: u64 = 1_000;

/// Everything the clients saw.
#[derive(Default, Serialize)]
pub struct Recorded {
    pub registers: BTreeMap<String, KeyHistory>,
    pub grants: Vec<Grant>,
    pub fenced_writes: Vec<FencedWrite>,
    pub appends: Vec<Append>,
    pub append_keys: BTreeSet<String>,
    /// Every request's answer time and whether it succeeded (availability).
    pub answers: Vec<(Micros, bool)>,
    /// Requests that were never sent (the node was down): not in the histories.
    pub not_sent: u64,
    /// Definite refusals other than the ones the checkers use (counted only).
    pub refused: u64,
}

pub struct Ctx {
    pub urls: Vec<(u64, String)>,
    pub client: awc::Client,
    pub start: Instant,
    pub rec: RefCell<Recorded>,
    pub stop: Cell<bool>,
    next_value: Cell<u64>,
    next_process: Cell<ProcessId>,
    pub locks: Vec<String>,
}

impl Ctx {
    pub fn new(urls: Vec<(u64, String)>, start: Instant, locks: usize) -> Rc<Self> {
        let client = awc::Client::builder().disable_redirects().finish();
        Rc::new(Ctx {
            urls,
            client,
            start,
            rec: RefCell::default(),
            stop: Cell::new(false),
            next_value: Cell::new(1),
            next_process: Cell::new(0),
            locks: (0..locks).map(|l| format!("chaos-lock-{l}")).collect(),
        })
    }

    pub fn now_us(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    fn value(&self) -> u64 {
        let v = self.next_value.get();
        self.next_value.set(v + 1);
        v
    }

    fn process(&self) -> ProcessId {
        let p = self.next_process.get();
        self.next_process.set(p + 1);
        p
    }

    fn answered(&self, at: Micros, ok: bool) {
        self.rec.borrow_mut().answers.push((at, ok));
    }
}

/// What a request came to.
enum Reply {
    Answer {
        status: StatusCode,
        body: Vec<u8>,
        version: Option<u64>,
    },
    /// Never reached the server (connection refused): nothing happened.
    NotSent,
    /// Sent, no answer: may have happened.
    Unknown,
}

async fn send(req: awc::ClientRequest, body: Option<Vec<u8>>) -> Reply {
    send_within(req, body, SERVER_TIMEOUT_MS).await
}

async fn send_within(req: awc::ClientRequest, body: Option<Vec<u8>>, server_timeout_ms: u64) -> Reply {
    let req = req
        .insert_header(("X-Request-Timeout", server_timeout_ms.to_string()))
        .timeout(Duration::from_millis(server_timeout_ms) + CLIENT_GRACE);
    let res = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    };
    let mut res = match res {
        Ok(r) => r,
        // awc reports a connection that closed after the request went out
        // as a connect error too: that one may have been applied.
        Err(SendRequestError::Connect(ConnectError::Disconnected)) => return Reply::Unknown,
        Err(SendRequestError::Connect(_)) => return Reply::NotSent,
        Err(_) => return Reply::Unknown,
    };
    let version =
        res.headers().get("etag").and_then(|v| v.to_str().ok()).and_then(|v| v.trim_matches('"').parse().ok());
    match res.body().limit(1 << 20).await {
        Ok(b) => Reply::Answer { status: res.status(), body: b.to_vec(), version },
        Err(_) => Reply::Unknown,
    }
}

fn pick_node(ctx: &Ctx, rng: &mut StdRng) -> (u64, String) {
    ctx.urls[rng.gen_range(0..ctx.urls.len())].clone()
}

fn kv_url(base: &str, key: &str) -> String {
    format!("{base}/v1/kv/{key}")
}

fn parse_value(body: &[u8]) -> u64 {
    // A value nobody wrote (unparsable) reads as one no write can explain.
    std::str::from_utf8(body).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// A linearizable or stale read; `None` when it said nothing.
async fn read(ctx: &Ctx, node: &(u64, String), key: &str, stale: bool) -> (Option<Call<RegisterOp>>, Option<u64>) {
    let url = if stale { format!("{}?consistency=stale", kv_url(&node.1, key)) } else { kv_url(&node.1, key) };
    let invoke_us = ctx.now_us();
    let reply = send(ctx.client.get(url), None).await;
    let complete_us = ctx.now_us();
    let (value, version) = match reply {
        Reply::Answer { status, body, version } if status == StatusCode::OK => (Some(parse_value(&body)), version),
        Reply::Answer { status, .. } if status == StatusCode::NOT_FOUND => (None, None),
        _ => {
            ctx.answered(complete_us, false);
            return (None, None);
        }
    };
    ctx.answered(complete_us, true);
    let call =
        Call { process: 0, op: RegisterOp::Read { value }, outcome: Outcome::Ok, invoke_us, complete_us, node: node.0 };
    (Some(call), version)
}

/// A write, or a CAS under `If-Match` (`Some(version)`) / `If-None-Match`
/// (`Some(None)` precondition: absent). The outcome, or None when it was
/// never sent or refused for a reason the checkers do not use.
async fn write(
    ctx: &Ctx,
    node: &(u64, String),
    key: &str,
    value: u64,
    precondition: Option<Option<u64>>,
) -> (Option<Outcome>, Micros, Micros) {
    let mut req = ctx.client.put(kv_url(&node.1, key));
    match precondition {
        Some(Some(v)) => req = req.insert_header(("If-Match", format!("\"{v}\""))),
        Some(None) => req = req.insert_header(("If-None-Match", "*")),
        None => {}
    }
    let invoke_us = ctx.now_us();
    let reply = send(req, Some(value.to_string().into_bytes())).await;
    let complete_us = ctx.now_us();
    let outcome = match reply {
        Reply::Answer { status, .. } if status == StatusCode::OK => Some(Outcome::Ok),
        Reply::Answer { status, .. } if status == StatusCode::PRECONDITION_FAILED && precondition.is_some() => {
            Some(Outcome::Fail)
        }
        Reply::Answer { status, .. } if status.is_server_error() => Some(Outcome::Info),
        Reply::Answer { .. } => {
            ctx.rec.borrow_mut().refused += 1;
            None
        }
        Reply::NotSent => {
            ctx.rec.borrow_mut().not_sent += 1;
            None
        }
        Reply::Unknown => Some(Outcome::Info),
    };
    ctx.answered(complete_us, outcome == Some(Outcome::Ok) || outcome == Some(Outcome::Fail));
    (outcome, invoke_us, complete_us)
}

fn generation(ctx: &Ctx) -> u64 {
    ctx.start.elapsed().as_micros() as u64 / KEY_GENERATION.as_micros() as u64
}

fn record_register(ctx: &Ctx, key: &str, call: Call<RegisterOp>, stale: bool) {
    let mut rec = ctx.rec.borrow_mut();
    let h = rec
        .registers
        .entry(key.to_string())
        .or_insert_with(|| KeyHistory { key: key.to_string(), ..Default::default() });
    if stale {
        h.stale_reads.push(call);
    } else {
        h.calls.push(call);
    }
}

/// Reads (linearizable and stale), writes of unique values, and CAS.
pub async fn register_client(ctx: Rc<Ctx>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = ctx.process();
    while !ctx.stop.get() {
        actix_rt::time::sleep(Duration::from_millis(rng.gen_range(1..15))).await;
        let key = format!("chaos/reg/{}/{}", generation(&ctx), rng.gen_range(0..REGISTER_KEYS));
        let node = pick_node(&ctx, &mut rng);
        let dice = rng.gen_range(0..100);
        if dice < 50 {
            let stale = dice >= 40;
            if let (Some(call), _) = read(&ctx, &node, &key, stale).await {
                record_register(&ctx, &key, Call { process, ..call }, stale);
            }
        } else if dice < 75 {
            let value = ctx.value();
            let (outcome, invoke_us, complete_us) = write(&ctx, &node, &key, value, None).await;
            if let Some(outcome) = outcome {
                let op = RegisterOp::Write { value };
                record_register(&ctx, &key, Call { process, op, outcome, invoke_us, complete_us, node: node.0 }, false);
                if outcome == Outcome::Info {
                    process = ctx.process();
                }
            }
        } else {
            let (Some(read_call), version) = read(&ctx, &node, &key, false).await else { continue };
            let RegisterOp::Read { value: from } = read_call.op else { continue };
            record_register(&ctx, &key, Call { process, ..read_call }, false);
            if from.is_some() && version.is_none() {
                continue; // no ETag: nothing to compare against
            }
            let to = ctx.value();
            let pre = Some(from.and(version));
            let (outcome, invoke_us, complete_us) = write(&ctx, &node, &key, to, pre).await;
            if let Some(outcome) = outcome {
                let op = RegisterOp::Cas { from, to };
                record_register(&ctx, &key, Call { process, op, outcome, invoke_us, complete_us, node: node.0 }, false);
                if outcome == Outcome::Info {
                    process = ctx.process();
                }
            }
        }
    }
}

fn json_field(body: &[u8], field: &str) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(body).ok().map(|v| v[field].clone())
}

/// Acquire (waiting), one to three fenced writes, release.
pub async fn lock_client(ctx: Rc<Ctx>, seed: u64, lock: String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = ctx.process();
    let key = format!("chaos/fence/{lock}");
    while !ctx.stop.get() {
        actix_rt::time::sleep(Duration::from_millis(rng.gen_range(1..30))).await;
        let node = pick_node(&ctx, &mut rng);
        let body = serde_json::json!({"owner": format!("p{process}"), "ttl_ms": LOCK_TTL_MS, "wait_ms": LOCK_WAIT_MS});
        let idem: u128 = rng.gen();
        let req = ctx
            .client
            .post(format!("{}/v1/locks/{lock}/acquire", node.1))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Idempotency-Key", format!("{idem:032x}")));
        let invoke_us = ctx.now_us();
        let reply = send_within(req, Some(body.to_string().into_bytes()), SERVER_TIMEOUT_MS + LOCK_WAIT_MS).await;
        let complete_us = ctx.now_us();
        let (token, session) = match reply {
            Reply::Answer { status, body, .. } if status == StatusCode::OK => {
                let token = json_field(&body, "token").and_then(|t| t.as_u64());
                let session = json_field(&body, "session").and_then(|s| s.as_str().map(str::to_string));
                match (token, session) {
                    (Some(t), Some(s)) => (t, s),
                    _ => {
                        ctx.answered(complete_us, false);
                        continue;
                    }
                }
            }
            Reply::Answer { status, .. } if !status.is_server_error() => {
                ctx.answered(complete_us, true); // lock_held after the wait: an answer
                continue;
            }
            Reply::NotSent => {
                ctx.rec.borrow_mut().not_sent += 1;
                ctx.answered(complete_us, false);
                continue;
            }
            _ => {
                ctx.answered(complete_us, false);
                process = ctx.process();
                continue;
            }
        };
        ctx.answered(complete_us, true);
        ctx.rec.borrow_mut().grants.push(Grant {
            process,
            lock: lock.clone(),
            session: session.clone(),
            token,
            invoke_us,
            complete_us,
        });
        for _ in 0..rng.gen_range(1..=3) {
            let value = ctx.value();
            let req = ctx.client.put(kv_url(&node.1, &key)).insert_header(("Fencing-Token", format!("{lock}:{token}")));
            let invoke_us = ctx.now_us();
            let reply = send(req, Some(value.to_string().into_bytes())).await;
            let complete_us = ctx.now_us();
            let result = match reply {
                Reply::Answer { status, body, .. } if status == StatusCode::OK => {
                    match json_field(&body, "version").and_then(|v| v.as_u64()) {
                        Some(version) => WriteResult::Accepted { version },
                        None => WriteResult::Info,
                    }
                }
                Reply::Answer { status, body, .. } if status == StatusCode::CONFLICT => {
                    let code = json_field(&body, "error").map(|e| e["code"].clone());
                    if code.as_ref().and_then(|c| c.as_str()) == Some("fenced") {
                        WriteResult::Fenced
                    } else {
                        WriteResult::Refused
                    }
                }
                Reply::Answer { status, .. } if status.is_server_error() => WriteResult::Info,
                Reply::Answer { .. } | Reply::NotSent => WriteResult::Refused,
                Reply::Unknown => WriteResult::Info,
            };
            ctx.answered(complete_us, matches!(result, WriteResult::Accepted { .. } | WriteResult::Fenced));
            ctx.rec.borrow_mut().fenced_writes.push(FencedWrite {
                process,
                lock: lock.clone(),
                token,
                value,
                result,
                invoke_us,
                complete_us,
            });
            if result == WriteResult::Info {
                process = ctx.process();
            }
            actix_rt::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        }
        let body = serde_json::json!({"session": session, "token": token});
        let req = ctx
            .client
            .post(format!("{}/v1/locks/{lock}/release", node.1))
            .insert_header(("Content-Type", "application/json"));
        let reply = send(req, Some(body.to_string().into_bytes())).await;
        ctx.answered(ctx.now_us(), matches!(reply, Reply::Answer { status, .. } if !status.is_server_error()));
    }
}

/// Read-modify-write appends of unique elements under `If-Match`.
pub async fn append_client(ctx: Rc<Ctx>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = ctx.process();
    while !ctx.stop.get() {
        actix_rt::time::sleep(Duration::from_millis(rng.gen_range(1..20))).await;
        let key = format!("chaos/append/{}/{}", generation(&ctx), rng.gen_range(0..APPEND_KEYS));
        ctx.rec.borrow_mut().append_keys.insert(key.clone());
        let node = pick_node(&ctx, &mut rng);
        let reply = send(ctx.client.get(kv_url(&node.1, &key)), None).await;
        let (list, pre) = match reply {
            Reply::Answer { status, body, version } if status == StatusCode::OK => {
                match (std::str::from_utf8(&body).ok().and_then(sets::decode), version) {
                    (Some(l), Some(v)) => (l, Some(v)),
                    // Garbage is left to the final read's phantom check.
                    _ => continue,
                }
            }
            Reply::Answer { status, .. } if status == StatusCode::NOT_FOUND => (Vec::new(), None),
            _ => continue,
        };
        let element = ctx.value();
        let mut next = list;
        next.push(element);
        let mut req = ctx.client.put(kv_url(&node.1, &key));
        req = match pre {
            Some(v) => req.insert_header(("If-Match", format!("\"{v}\""))),
            None => req.insert_header(("If-None-Match", "*")),
        };
        let invoke_us = ctx.now_us();
        let reply = send(req, Some(sets::encode(&next).into_bytes())).await;
        let complete_us = ctx.now_us();
        let outcome = match reply {
            Reply::Answer { status, .. } if status == StatusCode::OK => Outcome::Ok,
            Reply::Answer { status, .. } if status.is_server_error() => Outcome::Info,
            Reply::Answer { .. } | Reply::NotSent => Outcome::Fail,
            Reply::Unknown => Outcome::Info,
        };
        ctx.answered(complete_us, outcome != Outcome::Info);
        ctx.rec.borrow_mut().appends.push(Append { process, key, element, outcome, invoke_us, complete_us });
        if outcome == Outcome::Info {
            process = ctx.process();
        }
    }
}

/// The final list of each append key, read (linearizable) once the faults
/// are healed, retrying for up to `within`.
pub async fn final_lists(ctx: &Ctx, within: Duration) -> BTreeMap<String, Option<Vec<u64>>> {
    let keys: Vec<String> = ctx.rec.borrow().append_keys.iter().cloned().collect();
    let deadline = Instant::now() + within;
    let mut out = BTreeMap::new();
    for key in keys {
        let mut got = None;
        let mut attempt = 0usize;
        while got.is_none() && Instant::now() < deadline {
            let node = &ctx.urls[attempt % ctx.urls.len()];
            attempt += 1;
            match send(ctx.client.get(kv_url(&node.1, &key)), None).await {
                Reply::Answer { status, body, .. } if status == StatusCode::OK => {
                    // Unparsable: a list with a value no append wrote.
                    got = Some(std::str::from_utf8(&body).ok().and_then(sets::decode).unwrap_or(vec![u64::MAX]));
                }
                Reply::Answer { status, .. } if status == StatusCode::NOT_FOUND => got = Some(Vec::new()),
                _ => actix_rt::time::sleep(Duration::from_millis(100)).await,
            }
        }
        out.insert(key, got);
    }
    out
}
