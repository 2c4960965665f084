//! Distributed locks on a real three-node cluster (in-process nodes, real
//! RocksDB and HTTP): mutual exclusion under contention, lease expiry,
//! survival of a leader crash, reentrancy, FIFO waiting, fencing.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use serde_json::{json, Value};

async fn post(base: &str, path: &str, body: Value, timeout_ms: u64) -> Resp {
    let t = timeout_ms.to_string();
    call(
        "POST",
        base,
        path,
        &[("content-type", "application/json"), ("x-request-timeout", &t)],
        body.to_string().into(),
    )
    .await
}

async fn acquire(base: &str, name: &str, owner: &str, ttl_ms: u64, wait_ms: u64) -> Resp {
    post(
        base,
        &format!("/v1/locks/{name}/acquire"),
        json!({"owner": owner, "ttl_ms": ttl_ms, "wait_ms": wait_ms}),
        20_000,
    )
    .await
}

/// Re-enters the lock `session` holds.
async fn reenter(base: &str, name: &str, owner: &str, session: &str, ttl_ms: u64) -> Resp {
    post(
        base,
        &format!("/v1/locks/{name}/acquire"),
        json!({"owner": owner, "session": session, "ttl_ms": ttl_ms}),
        5_000,
    )
    .await
}

async fn release(base: &str, name: &str, session: &str, token: u64) -> Resp {
    post(base, &format!("/v1/locks/{name}/release"), json!({"session": session, "token": token}), 5_000).await
}

fn token(r: &Resp) -> u64 {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["token"].as_u64().expect("token")
}

/// The session and token of a granted acquire.
fn held(r: &Resp) -> (String, u64) {
    let t = token(r);
    (r.json()["session"].as_str().expect("session").to_string(), t)
}

/// `ringstore_lock_events_total{event}` summed over shards (in-process
/// nodes share one registry).
async fn lock_events(url: &str, event: &str) -> f64 {
    let m = call("GET", url, "/metrics", &[], vec![]).await.text();
    let label = format!("event=\"{event}\"");
    m.lines()
        .filter(|l| l.starts_with("ringstore_lock_events_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A session no acquire issued.
const STRANGER: &str = "0123456789abcdef0123456789abcdef";

#[actix_rt::test]
async fn twenty_clients_fifty_acquisitions_never_overlap_and_tokens_increase() {
    let tc = start(|_| {}).await;
    let urls: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    // (token, entered) events in the order they happened, and who is inside.
    let log: Rc<RefCell<Vec<(u64, bool)>>> = Rc::default();
    let inside: Rc<RefCell<Option<u64>>> = Rc::default();
    let mut tasks = Vec::new();
    for c in 0..20usize {
        let (url, log, inside) = (urls[c % urls.len()].clone(), log.clone(), inside.clone());
        tasks.push(actix_rt::spawn(async move {
            let owner = format!("client-{c}");
            for _ in 0..50 {
                let r = acquire(&url, "hot", &owner, 10_000, 15_000).await;
                let (session, t) = held(&r);
                {
                    let mut cur = inside.borrow_mut();
                    assert_eq!(*cur, None, "{owner} entered while token {:?} was inside", *cur);
                    *cur = Some(t);
                    log.borrow_mut().push((t, true));
                }
                actix_rt::time::sleep(Duration::from_millis(1)).await;
                {
                    *inside.borrow_mut() = None;
                    log.borrow_mut().push((t, false));
                }
                let r = release(&url, "hot", &session, t).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.take();
    assert_eq!(log.len(), 2000);
    let entries: Vec<u64> = log.iter().filter(|(_, e)| *e).map(|(t, _)| *t).collect();
    assert!(entries.windows(2).all(|w| w[0] < w[1]), "fencing tokens strictly increase");
    // Every enter is followed by its own exit before the next enter.
    for pair in log.chunks(2) {
        assert_eq!((pair[0].0, pair[0].1, pair[1].1), (pair[1].0, true, false));
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_holder_that_stops_refreshing_loses_the_lock_to_a_waiter() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let (s1, t1) = held(&acquire(&url, "lease", "a", 400, 0).await);
    let started = Instant::now();
    let r = acquire(&url, "lease", "b", 5_000, 8_000).await;
    let t2 = token(&r);
    assert!(t2 > t1);
    assert!(started.elapsed() >= Duration::from_millis(300), "b waited for a's lease");
    assert!(r.json()["lease_remaining_ms"].as_u64().unwrap() > 4_000);
    // a's late release and refresh change nothing.
    let r = release(&url, "lease", &s1, t1).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"]["code"], "not_holder");
    assert_eq!(r.json()["holder"], "b");
    let r = post(&url, "/v1/locks/lease/refresh", json!({"session": s1, "token": t1, "ttl_ms": 1000}), 5_000).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // Nor does a re-entry of the hold that ended.
    let r = reenter(&url, "lease", "a", &s1, 1000).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.error_code(), "not_holder");
    let s = call("GET", &url, "/v1/locks/lease", &[], vec![]).await;
    assert_eq!(s.json()["holder"], "b");
    assert_eq!(s.json()["token"].as_u64(), Some(t2));
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_lock_survives_a_leader_crash_and_later_tokens_are_larger() {
    let mut tc = start(|_| {}).await;
    let leader = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
    let other = tc.cluster.node_ids().into_iter().find(|i| *i != leader).unwrap();
    let url = tc.cluster.url(other).unwrap();
    let (s1, t1) = held(&acquire(&url, "crash", "a", 3_000, 0).await);
    tc.cluster.stop_node(leader).await.unwrap();
    tc.cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    // Held by the same owner with the same token, not freed early.
    let s = call("GET", &url, "/v1/locks/crash", &[("x-request-timeout", "10000")], vec![]).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text());
    assert_eq!(s.json()["holder"], "a");
    assert_eq!(s.json()["token"].as_u64(), Some(t1));
    let r = acquire(&url, "crash", "b", 3_000, 0).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["holder"], "a");
    assert_eq!(release(&url, "crash", &s1, t1).await.status, StatusCode::OK);
    let t2 = token(&acquire(&url, "crash", "b", 3_000, 0).await);
    assert!(t2 > t1);
    tc.cluster.start_node(leader).await.unwrap();
    tc.shutdown().await;
}

#[actix_rt::test]
async fn reentrancy_wrong_session_fifo_waiters_and_wait_timeout() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(2).unwrap();
    let (sa, t) = held(&acquire(&url, "r", "a", 10_000, 0).await);
    let again = reenter(&url, "r", "a", &sa, 10_000).await;
    assert_eq!(token(&again), t, "reentrant: same token");
    assert_eq!(again.json()["hold_count"], 2);
    assert_eq!(again.json()["session"], sa);
    // Wrong session or token: 409, nothing changes.
    assert_eq!(release(&url, "r", STRANGER, t).await.status, StatusCode::CONFLICT);
    assert_eq!(release(&url, "r", &sa, t + 1).await.status, StatusCode::CONFLICT);
    let s = call("GET", &url, "/v1/locks/r", &[], vec![]).await;
    assert_eq!(s.json()["hold_count"], 2);

    // Three waiters queue in order; each release hands the lock to the next.
    let order: Rc<RefCell<Vec<String>>> = Rc::default();
    let mut waiters = Vec::new();
    for w in ["w1", "w2", "w3"] {
        let (url, order) = (url.clone(), order.clone());
        waiters.push(actix_rt::spawn(async move {
            let (s, t) = held(&acquire(&url, "r", w, 10_000, 15_000).await);
            order.borrow_mut().push(w.to_string());
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(release(&url, "r", &s, t).await.status, StatusCode::OK);
        }));
        actix_rt::time::sleep(Duration::from_millis(150)).await;
    }
    let s = call("GET", &url, "/v1/locks/r", &[], vec![]).await;
    assert_eq!(s.json()["waiters"], json!(["w1", "w2", "w3"]));
    assert_eq!(release(&url, "r", &sa, t).await.json()["hold_count"], 1);
    assert_eq!(release(&url, "r", &sa, t).await.json()["free"], true);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.borrow(), vec!["w1", "w2", "w3"], "FIFO");
    // Each of the three releases that freed the lock granted it to the
    // next waiter in the same entry (the first only dropped a hold).
    let handoffs = lock_events(&url, "handoff").await;
    assert!(handoffs >= 3.0, "handoffs in the releasing entry: {handoffs}");

    // A wait that ends without the lock: 409 with the holder and its lease.
    let (sx, t) = held(&acquire(&url, "r", "x", 10_000, 0).await);
    let started = Instant::now();
    let r = acquire(&url, "r", "y", 10_000, 400).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(r.json()["error"]["code"], "lock_held");
    assert_eq!(r.json()["holder"], "x");
    assert!(r.json()["lease_remaining_ms"].as_u64().unwrap() > 5_000);
    assert_eq!(release(&url, "r", &sx, t).await.status, StatusCode::OK);
    tc.shutdown().await;
}

/// The queue is replicated state: waiters keep their places when the
/// leader holding their requests crashes. Their routers retry at the new
/// leader under the same request ids and find their places (or grants)
/// again, and the lock still goes to them in the order they came.
#[actix_rt::test]
async fn waiters_keep_their_places_in_line_when_the_leader_crashes() {
    let mut tc = start(|_| {}).await;
    let leader = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
    let survivor = tc.cluster.node_ids().into_iter().find(|i| *i != leader).unwrap();
    let url = tc.cluster.url(survivor).unwrap();
    let (sa, ta) = held(&acquire(&url, "line", "a", 30_000, 0).await);
    let order: Rc<RefCell<Vec<(String, u64)>>> = Rc::default();
    let mut waiters = Vec::new();
    for w in ["w1", "w2", "w3"] {
        let (url, order) = (url.clone(), order.clone());
        waiters.push(actix_rt::spawn(async move {
            let r = acquire(&url, "line", w, 10_000, 15_000).await;
            let (s, t) = held(&r);
            order.borrow_mut().push((w.to_string(), t));
            actix_rt::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(release(&url, "line", &s, t).await.status, StatusCode::OK);
        }));
        actix_rt::time::sleep(Duration::from_millis(150)).await;
    }
    let s = call("GET", &url, "/v1/locks/line", &[], vec![]).await;
    assert_eq!(s.json()["waiters"], json!(["w1", "w2", "w3"]));

    tc.cluster.stop_node(leader).await.unwrap();
    tc.cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let s = call("GET", &url, "/v1/locks/line", &[("x-request-timeout", "10000")], vec![]).await;
    assert_eq!(s.json()["waiters"], json!(["w1", "w2", "w3"]), "the new leader has the same line: {}", s.text());
    assert_eq!(s.json()["holder"], "a");
    let r = post(&url, "/v1/locks/line/release", json!({"session": sa, "token": ta}), 10_000).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for w in waiters {
        w.await.unwrap();
    }
    let order = order.borrow().clone();
    let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["w1", "w2", "w3"], "FIFO across the crash");
    assert!(order.windows(2).all(|p| p[0].1 < p[1].1) && order[0].1 > ta, "tokens increase: {order:?}");
    assert!(lock_events(&url, "waiter_reattached").await >= 3.0, "each waiter re-attached at the new leader");
    tc.cluster.start_node(leader).await.unwrap();
    tc.shutdown().await;
}

/// A waiter whose wait ended is out of the line: its 409 comes from the
/// log (its dequeue), so the lock is never handed to a client that was
/// told it did not get it.
#[actix_rt::test]
async fn a_waiter_whose_wait_ended_is_not_handed_the_lock_later() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let (sa, ta) = held(&acquire(&url, "late", "a", 30_000, 0).await);
    let r = acquire(&url, "late", "impatient", 10_000, 300).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.json()["holder"], "a");
    let s = call("GET", &url, "/v1/locks/late", &[], vec![]).await;
    assert_eq!(s.json()["waiters"], json!([]), "{}", s.text());
    assert_eq!(release(&url, "late", &sa, ta).await.status, StatusCode::OK);
    let s = call("GET", &url, "/v1/locks/late", &[], vec![]).await;
    assert_eq!(s.json()["held"], false, "nobody was handed the lock: {}", s.text());
    assert!(lock_events(&url, "wait_timeout").await >= 1.0);
    tc.shutdown().await;
}

/// The line's length is a limit (`Limits::lock_waiters_max`): past it an
/// acquire that would wait gets 429 at once, and changes nothing.
#[actix_rt::test]
async fn a_full_line_refuses_a_newcomer_with_429() {
    let tc = start(|c| c.limits.lock_waiters_max = 2).await;
    let url = tc.cluster.url(1).unwrap();
    let (sa, ta) = held(&acquire(&url, "full", "a", 30_000, 0).await);
    let mut waiting = Vec::new();
    for w in ["w1", "w2"] {
        let url = url.clone();
        waiting.push(actix_rt::spawn(async move { held(&acquire(&url, "full", w, 10_000, 15_000).await) }));
    }
    eventually(Duration::from_secs(5), "two waiters queue", || {
        let url = url.clone();
        async move { call("GET", &url, "/v1/locks/full", &[], vec![]).await.json()["waiters"] == json!(["w1", "w2"]) }
    })
    .await;
    let started = Instant::now();
    let r = acquire(&url, "full", "w3", 10_000, 15_000).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "lock_queue_full");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after its wait");
    assert!(lock_events(&url, "queue_full").await >= 1.0);
    let s = call("GET", &url, "/v1/locks/full", &[], vec![]).await;
    assert_eq!(s.json()["waiters"], json!(["w1", "w2"]), "nothing changed");
    assert_eq!(release(&url, "full", &sa, ta).await.status, StatusCode::OK);
    for w in waiting {
        let (s, t) = w.await.unwrap();
        assert_eq!(release(&url, "full", &s, t).await.status, StatusCode::OK);
    }
    tc.shutdown().await;
}

/// A command sent again with the same `Idempotency-Key` (its answer was
/// lost) applies once: a re-entry does not add a second hold, a release
/// does not drop two, and a write keeps its first version.
#[actix_rt::test]
async fn an_idempotency_key_applies_each_command_once_however_often_it_is_sent() {
    let tc = start(|_| {}).await;
    let urls: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let keyed = |url: &str, path: &str, body: Value, key: &str| {
        let (url, path, key) = (url.to_string(), path.to_string(), key.to_string());
        async move {
            let headers = [("content-type", "application/json"), ("idempotency-key", key.as_str())];
            call("POST", &url, &path, &headers, body.to_string().into()).await
        }
    };
    let k1 = "11111111-2222-3333-4444-555555555555";
    let first = keyed(&urls[0], "/v1/locks/idem/acquire", json!({"owner": "a", "ttl_ms": 10_000}), k1).await;
    let (session, t) = held(&first);
    // The same acquire again, at another node: the first grant, not a
    // conflict and not a second session.
    let again = keyed(&urls[1], "/v1/locks/idem/acquire", json!({"owner": "a", "ttl_ms": 10_000}), k1).await;
    assert_eq!(held(&again), (session.clone(), t));
    let reenter = json!({"owner": "a", "session": session, "ttl_ms": 10_000});
    let k2 = "0123456789abcdef0123456789abcde2";
    for url in &urls {
        let r = keyed(url, "/v1/locks/idem/acquire", reenter.clone(), k2).await;
        assert_eq!(r.json()["hold_count"], 2, "a re-entry sent three times holds twice: {}", r.text());
    }
    let k3 = "0123456789abcdef0123456789abcde3";
    for url in &urls {
        let r = keyed(url, "/v1/locks/idem/release", json!({"session": session, "token": t}), k3).await;
        assert_eq!(r.json()["hold_count"], 1, "a release sent three times drops one hold: {}", r.text());
    }
    let s = call("GET", &urls[2], "/v1/locks/idem", &[], vec![]).await;
    assert_eq!(s.json()["hold_count"], 1);
    // Writes too: the retry answers the first version, and a later write
    // under another key still applies.
    let put_keyed = |url: &str, value: &'static str, key: &'static str| {
        let url = url.to_string();
        async move { call("PUT", &url, "/v1/kv/idem-key", &[("idempotency-key", key)], value.into()).await }
    };
    let v1 = put_keyed(&urls[0], "one", "0123456789abcdef0123456789abcde4").await.json()["version"].clone();
    let v1_again = put_keyed(&urls[1], "two", "0123456789abcdef0123456789abcde4").await.json()["version"].clone();
    assert_eq!(v1, v1_again);
    let got = call("GET", &urls[2], "/v1/kv/idem-key", &[], vec![]).await;
    assert_eq!(got.body, b"one".to_vec(), "the retry applied nothing");
    let v2 = put_keyed(&urls[0], "three", "0123456789abcdef0123456789abcde5").await.json()["version"].clone();
    assert!(v2.as_u64() > v1.as_u64());
    // A malformed key is refused before anything is proposed.
    let bad = call("PUT", &urls[0], "/v1/kv/idem-key", &[("idempotency-key", "not-hex")], b"x".to_vec()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "bad_request");
    tc.shutdown().await;
}

/// Issue 18, hole 1: a token the lock never issued was accepted and moved
/// the key's fence past the real holder's token, locking it out.
#[actix_rt::test]
async fn forged_future_and_unknown_lock_tokens_are_refused_and_do_not_move_the_fence() {
    let mut tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let (_, t) = held(&acquire(&url, "nightly", "job", 60_000, 0).await);
    let put = |url: String, token: String, body: &'static str| async move {
        call("PUT", &url, "/v1/kv/report2", &[("fencing-token", &token)], body.as_bytes().to_vec()).await
    };
    assert_eq!(put(url.clone(), format!("nightly:{t}"), "real-1").await.status, StatusCode::OK);
    for forged in [format!("nightly:{}", t + 1), "nightly:999999".to_string(), "nosuchlock:5".to_string()] {
        let r = put(url.clone(), forged.clone(), "forged").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{forged}: {}", r.text());
        assert_eq!(r.error_code(), "unknown_token", "{forged}");
        let r = call("DELETE", &url, "/v1/kv/report2", &[("fencing-token", &forged)], vec![]).await;
        assert_eq!(r.error_code(), "unknown_token", "{forged}");
    }
    assert_eq!(get(&url, "report2").await.body, b"real-1", "nothing forged was written");
    // The fence did not move: the real holder still writes, also through
    // another node and after the lock's leader changes.
    let other = tc.cluster.url(2).unwrap();
    assert_eq!(put(other.clone(), format!("nightly:{t}"), "real-2").await.status, StatusCode::OK);
    let leader = tc.cluster.wait_leader(Duration::from_secs(5)).await.unwrap();
    tc.cluster.stop_node(leader).await.unwrap();
    let alive = tc.cluster.node_ids().into_iter().find(|i| *i != leader).unwrap();
    let url = tc.cluster.url(alive).unwrap();
    let r = call(
        "PUT",
        &url,
        "/v1/kv/report2",
        &[("fencing-token", &format!("nightly:{t}")), ("x-request-timeout", "20000")],
        b"real-3".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(put(url.clone(), format!("nightly:{}", t + 1), "forged").await.error_code(), "unknown_token");
    let m = call("GET", &url, "/metrics", &[], vec![]).await.text();
    assert!(m.contains("ringstore_fencing_unknown_tokens_total"), "the refusals are counted");
    tc.cluster.start_node(leader).await.unwrap();
    tc.shutdown().await;
}

/// Issue 18, hole 3: reentrancy rested on clients picking unique owner
/// strings; two clients both calling themselves "me" shared one lock.
#[actix_rt::test]
async fn two_clients_with_one_owner_label_but_no_shared_session_exclude_each_other() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let (s1, t1) = held(&acquire(&url, "same", "me", 10_000, 0).await);
    let r = acquire(&url, "same", "me", 10_000, 0).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "the second \"me\" is a contender: {}", r.text());
    assert_eq!(r.error_code(), "lock_held");
    assert_eq!(r.json()["holder"], "me");
    assert!(r.json().get("session").is_none() && !r.text().contains(&s1), "a session is shown to its holder only");
    let s = call("GET", &url, "/v1/locks/same", &[], vec![]).await;
    assert_eq!(s.json()["hold_count"], 1);
    assert!(!s.text().contains(&s1), "status never shows the session");
    // Knowing the owner and the token (both public) does not release it.
    let r = post(&url, "/v1/locks/same/release", json!({"owner": "me", "token": t1}), 5_000).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(release(&url, "same", STRANGER, t1).await.status, StatusCode::CONFLICT);
    // A waiting second "me" gets it only after the first lets go.
    let waiting = {
        let url = url.clone();
        actix_rt::spawn(async move { held(&acquire(&url, "same", "me", 10_000, 5_000).await) })
    };
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(release(&url, "same", &s1, t1).await.json()["free"], true);
    let (s2, t2) = waiting.await.unwrap();
    assert!(s2 != s1 && t2 > t1);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_paused_holder_cannot_overwrite_its_successors_fenced_write() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let ta = token(&acquire(&url, "fence", "a", 300, 0).await);
    // a pauses past its lease; b gets the lock and writes under its fence.
    let tb = token(&acquire(&url, "fence", "b", 10_000, 5_000).await);
    assert!(tb > ta);
    let r = call("PUT", &url, "/v1/kv/guarded", &[("fencing-token", &format!("fence:{tb}"))], b"from-b".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // a wakes up and writes with its old token: refused, b's value stays.
    let r = call("PUT", &url, "/v1/kv/guarded", &[("fencing-token", &format!("fence:{ta}"))], b"from-a".to_vec()).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.error_code(), "fenced");
    let r = call("DELETE", &url, "/v1/kv/guarded", &[("fencing-token", &format!("fence:{ta}"))], vec![]).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(get(&url, "guarded").await.body, b"from-b");
    for bad in ["fence", "fence:x", ":5", "fence:0"] {
        let r = call("PUT", &url, "/v1/kv/guarded", &[("fencing-token", bad)], b"v".to_vec()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn locks_are_listed_by_prefix_across_shards_in_pages() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let mut tokens = Vec::new();
    for name in ["jobs/a", "jobs/b", "jobs/c", "other"] {
        let r = acquire(&url, name, "w", 30_000, 0).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        tokens.push(r.json()["token"].as_u64());
    }
    let b = acquire(&url, "jobs/b", "w", 30_000, 0).await;
    assert_eq!(b.status, StatusCode::CONFLICT, "held");
    let list = |q: &str| {
        let (url, path) = (url.clone(), format!("/v1/locks?{q}"));
        async move { call("GET", &url, &path, &[], vec![]).await }
    };
    let r = list("prefix=jobs/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let names: Vec<String> =
        r.json()["locks"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["jobs/a", "jobs/b", "jobs/c"]);
    let first = &r.json()["locks"][0];
    assert_eq!(
        (first["held"].as_bool(), first["holder"].as_str(), first["token"].as_u64()),
        (Some(true), Some("w"), tokens[0])
    );
    assert!(first["lease_remaining_ms"].as_u64().unwrap() > 20_000);
    assert_eq!(r.json()["next_cursor"], serde_json::Value::Null);
    // Pages of one, resumed after the cursor.
    let mut seen = Vec::new();
    let mut q = "prefix=jobs/&limit=1".to_string();
    for _ in 0..5 {
        let page = list(&q).await.json();
        seen.extend(page["locks"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_string()));
        let Some(next) = page["next_cursor"].as_str() else { break };
        q = format!("prefix=jobs/&limit=1&cursor={next}");
    }
    assert_eq!(seen, ["jobs/a", "jobs/b", "jobs/c"]);
    assert_eq!(list("").await.json()["locks"].as_array().unwrap().len(), 4);
    for bad in ["limit=0", "limit=1001", "prefix=a&prefix=b", "owner=w"] {
        let r = list(bad).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}");
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn bad_lock_requests_get_400_with_a_json_error() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let long = "n".repeat(4097);
    let cases: Vec<(String, Value, u64)> = vec![
        ("/v1/locks/l/acquire".into(), json!({"ttl_ms": 100}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "", "ttl_ms": 100}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o", "ttl_ms": 0}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o", "ttl_ms": 3_600_001}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o", "ttl_ms": 100, "wait_ms": 5_000}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o", "ttl_ms": 100, "extra": 1}), 5_000),
        ("/v1/locks/l/release".into(), json!({"owner": "o"}), 5_000),
        ("/v1/locks/l/release".into(), json!({"session": STRANGER}), 5_000),
        ("/v1/locks/l/release".into(), json!({"session": "abc", "token": 1}), 5_000),
        ("/v1/locks/l/release".into(), json!({"session": "0".repeat(32), "token": 1}), 5_000),
        ("/v1/locks/l/release".into(), json!({"session": "g".repeat(32), "token": 1}), 5_000),
        ("/v1/locks/l/refresh".into(), json!({"session": STRANGER, "token": 1}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o", "ttl_ms": 100, "session": "xyz"}), 5_000),
        ("/v1/locks/l/acquire".into(), json!({"owner": "o".repeat(257), "ttl_ms": 100}), 5_000),
    ];
    for (path, body, timeout) in cases {
        let r = post(&url, &path, body.clone(), timeout).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {body}: {}", r.text());
        assert_eq!(r.error_code(), "bad_request");
    }
    // A lock name over the key limit is refused as a key is: 413.
    let r = post(&url, &format!("/v1/locks/{long}/acquire"), json!({"owner": "o", "ttl_ms": 100}), 5_000).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", r.text());
    let r = call("POST", &url, "/v1/locks/l/acquire", &[], b"not json".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call("POST", &url, "/v1/locks/l/acquire", &[], vec![b'x'; 20_000]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = call("GET", &url, "/v1/locks/l/acquire", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // The node still serves.
    assert_eq!(acquire(&url, "l", "o", 1000, 0).await.status, StatusCode::OK);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn ringstore_lock_runs_overlapping_commands_one_after_the_other() {
    let tc = start(|_| {}).await;
    let endpoints: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let log = tc.dir.path().join("critical.log");
    let script = format!(
        "echo start $RINGSTORE_LOCK_TOKEN >> {0}; sleep 0.4; echo end $RINGSTORE_LOCK_TOKEN >> {0}; exit 3",
        log.display()
    );
    let spawn = |owner: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
            .args([
                "lock",
                "cli",
                "--ttl",
                "2s",
                "--wait",
                "20s",
                "--owner",
                owner,
                "--endpoints",
                &endpoints.join(","),
            ])
            .args(["--", "sh", "-c", &script])
            .env("RINGSTORE_LOG", "warn")
            .spawn()
            .unwrap()
    };
    let mut a = spawn("a");
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let mut b = spawn("b");
    let (sa, sb) =
        (wait_child(&mut a, Duration::from_secs(30)).await, wait_child(&mut b, Duration::from_secs(30)).await);
    assert_eq!((sa.code(), sb.code()), (Some(3), Some(3)), "exit status of the command is passed through");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let tokens: Vec<u64> = lines.iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    assert!(lines[0].starts_with("start") && lines[1].starts_with("end"), "{text}");
    assert!(lines[2].starts_with("start") && lines[3].starts_with("end"), "{text}");
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(tokens[2], tokens[3]);
    assert!(tokens[2] > tokens[0], "the second holder has a larger token: {text}");
    // Released on exit: the lock is free.
    let s = call("GET", &endpoints[0], "/v1/locks/cli", &[], vec![]).await;
    assert_eq!(s.json()["held"], false);

    // Held elsewhere and not free within --wait: exit 75, command not run.
    let (so, t) = held(&acquire(&endpoints[0], "cli", "other", 10_000, 0).await);
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ringstore"))
        .args(["lock", "cli", "--wait", "200ms", "--endpoints", &endpoints[1], "--", "sh", "-c", "exit 0"])
        .env("RINGSTORE_LOG", "warn")
        .spawn()
        .unwrap();
    assert_eq!(wait_child(&mut c, Duration::from_secs(10)).await.code(), Some(75));
    assert_eq!(release(&endpoints[0], "cli", &so, t).await.status, StatusCode::OK);
    tc.shutdown().await;
}
