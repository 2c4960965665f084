//! Watch streams on a real in-process cluster: every change once and in
//! order per key, under concurrent writers and a leader's stop; resuming
//! from a position; 410 for a position a shard no longer keeps; a prefix
//! across every shard; SSE; the per-node limit.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use awc::http::StatusCode;
use common::*;
use futures::{Stream, StreamExt};

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// An open watch: its lines, read as they come.
struct Watch {
    body: Body,
    buf: Vec<u8>,
}

impl Watch {
    /// Opens `path`; the status and, if 200, the stream (else the error body).
    async fn open(base: &str, path: &str, headers: &[(&str, &str)]) -> Result<Watch, (StatusCode, serde_json::Value)> {
        let mut req = awc::Client::builder().timeout(Duration::from_secs(30)).finish().get(format!("{base}{path}"));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = req.send().await.unwrap_or_else(|e| panic!("watch {path}: {e}"));
        if res.status() != StatusCode::OK {
            let body = res.body().await.expect("error body");
            return Err((res.status(), serde_json::from_slice(&body).unwrap_or_default()));
        }
        Ok(Watch { body: Box::pin(res), buf: Vec::new() })
    }

    /// The next line, or `None` if the stream ends or `within` passes.
    async fn line(&mut self, within: Duration) -> Option<String> {
        let until = Instant::now() + within;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let left = until.checked_duration_since(Instant::now())?;
            match actix_rt::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next JSON line that is an event (not `start` or `progress`).
    async fn event(&mut self, within: Duration) -> Option<serde_json::Value> {
        let until = Instant::now() + within;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let v: serde_json::Value = serde_json::from_str(&self.line(left).await?).expect("a JSON line");
            if v["type"] != "start" && v["type"] != "progress" {
                return Some(v);
            }
        }
    }
}

fn version(r: &Resp) -> u64 {
    r.json()["version"].as_u64().unwrap_or_else(|| panic!("no version in {}", r.text()))
}

#[actix_rt::test]
async fn a_key_watch_sees_every_change_once_in_order_across_a_leader_stop() {
    let mut tc = start(|_| {}).await;
    let key = "w/one";
    let leader = tc.cluster.wait_leader(Duration::from_secs(10)).await.expect("a leader");
    // Watch through a node that is not the leader, which stays up.
    let watcher = tc.cluster.node_ids().into_iter().find(|n| *n != leader).unwrap();
    let writer = tc.cluster.node_ids().into_iter().find(|n| *n != leader && *n != watcher).unwrap();
    let (wurl, url) = (tc.cluster.url(watcher).unwrap(), tc.cluster.url(writer).unwrap());
    let mut w = Watch::open(&wurl, &format!("/v1/watch/{key}"), &[]).await.expect("watch opens");
    let start: serde_json::Value = serde_json::from_str(&w.line(Duration::from_secs(5)).await.unwrap()).unwrap();
    assert_eq!(start["type"], "start");

    // Three writers on the key, concurrently; the leader stops halfway.
    let mut acked = Vec::new();
    for round in 0..2 {
        let writes = (0..3).map(|i| {
            let url = url.clone();
            async move {
                let mut versions = Vec::new();
                for n in 0..20 {
                    let r =
                        call("PUT", &url, &format!("/v1/kv/{key}"), &[], format!("{round}-{i}-{n}").into_bytes()).await;
                    if r.status == StatusCode::OK {
                        versions.push(version(&r));
                    }
                }
                versions
            }
        });
        for v in futures::future::join_all(writes).await {
            acked.extend(v);
        }
        if round == 0 {
            tc.cluster.stop_node(leader).await.expect("leader stops");
        }
    }
    let del = call("DELETE", &url, &format!("/v1/kv/{key}"), &[], vec![]).await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.text());
    acked.sort_unstable();
    assert!(acked.len() >= 100, "only {} of 120 writes acknowledged", acked.len());

    // Every acknowledged write comes once, in version order, then the delete.
    let mut seen = Vec::new();
    let last_position = loop {
        let e = w.event(Duration::from_secs(20)).await.expect("an event before the stream stalls");
        assert_eq!(e["key"], key);
        if e["type"] == "delete" {
            break e["position"].as_str().unwrap().to_string();
        }
        assert_eq!(e["type"], "put");
        seen.push(e["version"].as_u64().unwrap());
    };
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "versions out of order: {seen:?}");
    for v in &acked {
        assert!(seen.contains(v), "acknowledged version {v} never came: saw {seen:?}");
    }
    // What was seen and not acknowledged: writes whose answer was lost
    // with the leader (applied, so they are events).
    assert!(seen.len() <= acked.len() + 6, "{} events for {} acks", seen.len(), acked.len());

    // Resuming from the last event's position gives only what came after.
    drop(w);
    let r = put(&url, key, b"after").await;
    let after = version(&r);
    let mut w = Watch::open(&wurl, &format!("/v1/watch/{key}?from={last_position}"), &[]).await.expect("resumes");
    let e = w.event(Duration::from_secs(10)).await.expect("the write after");
    assert_eq!(
        (e["type"].as_str(), e["version"].as_u64(), e["value"].as_str()),
        (Some("put"), Some(after), Some("after"))
    );
    drop(w);
    tc.cluster.start_node(leader).await.expect("restarts");
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_prefix_watch_spans_every_shard_and_resumes_without_gaps_or_repeats() {
    let tc = start(|c| c.shards = 4).await;
    let url = tc.cluster.url(1).unwrap();
    let mut w = Watch::open(&url, "/v1/watch?prefix=p/", &[]).await.expect("watch opens");
    let start: serde_json::Value = serde_json::from_str(&w.line(Duration::from_secs(5)).await.unwrap()).unwrap();
    assert_eq!((start["type"].as_str(), start["shards"].as_u64()), (Some("start"), Some(4)));
    let start_position = start["position"].as_str().unwrap().to_string();

    let mut written = BTreeMap::new();
    for i in 0..40 {
        let key = format!("p/{i:02}");
        written.insert(key.clone(), version(&put(&url, &key, format!("v{i}").as_bytes()).await));
        // Keys outside the prefix are not sent.
        put(&url, &format!("q/{i}"), b"x").await;
    }
    let mut shards = std::collections::BTreeSet::new();
    let mut first_half = BTreeMap::new();
    let mut cut = String::new();
    for _ in 0..20 {
        let e = w.event(Duration::from_secs(10)).await.expect("an event");
        shards.insert(e["shard"].as_u64().unwrap());
        first_half.insert(e["key"].as_str().unwrap().to_string(), e["version"].as_u64().unwrap());
        cut = e["position"].as_str().unwrap().to_string();
    }
    drop(w);
    // Reconnect where the 20th event left off: the other 20, once each.
    let mut w = Watch::open(&url, &format!("/v1/watch?prefix=p/&from={cut}"), &[]).await.expect("resumes");
    let mut second_half = BTreeMap::new();
    for _ in 0..20 {
        let e = w.event(Duration::from_secs(10)).await.expect("an event");
        shards.insert(e["shard"].as_u64().unwrap());
        let k = e["key"].as_str().unwrap().to_string();
        assert!(!first_half.contains_key(&k), "{k} came again after resuming");
        assert!(second_half.insert(k.clone(), e["version"].as_u64().unwrap()).is_none(), "{k} came twice");
    }
    assert!(w.event(Duration::from_millis(500)).await.is_none(), "nothing more was written under p/");
    first_half.extend(second_half);
    assert_eq!(first_half, written);
    assert!(shards.len() >= 3, "40 keys over 4 shards came from {shards:?}");

    // From the very start position, all 40 again: nothing was dropped.
    let mut w = Watch::open(&url, &format!("/v1/watch?prefix=p/&from={start_position}"), &[]).await.expect("opens");
    let mut again = BTreeMap::new();
    for _ in 0..40 {
        let e = w.event(Duration::from_secs(10)).await.expect("an event");
        again.insert(e["key"].as_str().unwrap().to_string(), e["version"].as_u64().unwrap());
    }
    assert_eq!(again, written);
    drop(w);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_position_a_shard_no_longer_keeps_is_410_with_the_oldest_available() {
    let mut tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    put(&url, "c/k", b"1").await;
    let mut w = Watch::open(&url, "/v1/watch/c/k", &[]).await.expect("watch opens");
    let start: serde_json::Value = serde_json::from_str(&w.line(Duration::from_secs(5)).await.unwrap()).unwrap();
    let position = start["position"].as_str().unwrap().to_string();
    let shard = position.split_once('.').unwrap().0.to_string();
    drop(w);
    // Replicas keep events from when they opened: after a restart of every
    // node, position 1 is history no replica holds.
    for n in tc.cluster.node_ids() {
        tc.cluster.stop_node(n).await.expect("stops");
    }
    for n in tc.cluster.node_ids() {
        tc.cluster.start_node(n).await.expect("starts");
    }
    tc.wait_ready(Duration::from_secs(20)).await;
    let url = tc.cluster.url(1).unwrap();
    let (status, body) = Watch::open(&url, &format!("/v1/watch/c/k?from={shard}.1"), &[]).await.err().expect("refused");
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::GONE, Some("compacted")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("oldest available position is"), "{message}");
    // A fresh watch works, and bad positions are 400s that say why.
    let mut w = Watch::open(&url, "/v1/watch/c/k", &[]).await.expect("a fresh watch");
    let v = version(&put(&url, "c/k", b"2").await);
    assert_eq!(w.event(Duration::from_secs(10)).await.unwrap()["version"].as_u64(), Some(v));
    drop(w);
    // (A shard the cluster does not have is the client's mistake, not a
    // 503: schemathesis found that one.)
    for bad in ["from=x", "from=1.2,1.3", "form=1.2", "format=xml", "from=10037404018.5"] {
        let (status, body) = Watch::open(&url, &format!("/v1/watch/c/k?{bad}"), &[]).await.err().expect("refused");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn sse_streams_resume_from_last_event_id_and_the_node_limits_its_watchers() {
    let tc = start(|c| c.limits.watchers_max = 2).await;
    let url = tc.cluster.url(1).unwrap();
    let mut a = Watch::open(&url, "/v1/watch/s/k", &[("accept", "text/event-stream")]).await.expect("opens");
    let v1 = version(&put(&url, "s/k", b"one").await);
    // event: start, id:, data:, blank; then the put.
    let mut lines = Vec::new();
    while lines.iter().filter(|l: &&String| l.starts_with("data: ")).count() < 2 {
        lines.push(a.line(Duration::from_secs(10)).await.expect("an SSE line"));
    }
    assert_eq!(lines[0], "event: start");
    let put_at = lines.iter().position(|l| l == "event: put").expect("a put event");
    let id = lines[put_at + 1].strip_prefix("id: ").expect("an id").to_string();
    let data: serde_json::Value = serde_json::from_str(lines[put_at + 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!((data["version"].as_u64(), data["value"].as_str()), (Some(v1), Some("one")));

    // Two streams is this node's limit: the third is refused, until one ends.
    let b = Watch::open(&url, "/v1/watch?prefix=s/", &[]).await.expect("second opens");
    let (status, body) = Watch::open(&url, "/v1/watch/s/k", &[]).await.err().expect("third refused");
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded")));
    drop(a);
    let v2 = version(&put(&url, "s/k", b"two").await);
    let mut c = None;
    for _ in 0..100 {
        // The server notices a closed stream when a write to it fails,
        // which takes a write or two after the peer's reset: more changes.
        match Watch::open(&url, "/v1/watch/s/k", &[("last-event-id", &id)]).await {
            Ok(w) => {
                c = Some(w);
                break;
            }
            Err((StatusCode::SERVICE_UNAVAILABLE, _)) => {
                put(&url, "s/k", b"more").await;
                actix_rt::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut c = c.expect("a slot frees once a stream ends");
    // Resumed after `one`: the next event is `two`.
    let e = c.event(Duration::from_secs(10)).await.expect("the write after the id");
    assert_eq!((e["version"].as_u64(), e["value"].as_str()), (Some(v2), Some("two")));
    drop((b, c));
    let r = call("GET", &url, "/metrics", &[], vec![]).await;
    assert!(r.text().contains("ringstore_watch_ends_total"), "watch metrics are exported");
    tc.shutdown().await;
}

#[actix_rt::test]
async fn the_rust_client_resumes_a_watch_on_another_node_when_its_node_stops() {
    use ringstore_client::{ChangeKind, KvClient};
    let mut tc = start(|_| {}).await;
    let leader = tc.cluster.wait_leader(Duration::from_secs(10)).await.expect("a leader");
    let others: Vec<u64> = tc.cluster.node_ids().into_iter().filter(|n| *n != leader).collect();
    // The watcher connects to a follower first, then to the leader's node.
    let urls = vec![tc.cluster.url(others[0]).unwrap(), tc.cluster.url(leader).unwrap()];
    let writer_url = tc.cluster.url(others[1]).unwrap();
    let kv = KvClient::new(urls, Duration::from_secs(5));
    let mut w = kv.watch("rc/k", None);
    // The first change also opens the stream (from now): write until seen.
    let first = loop {
        let v = version(&put(&writer_url, "rc/k", b"0").await);
        match actix_rt::time::timeout(Duration::from_secs(2), w.next()).await {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => assert!(v < 10_000, "no change ever came"),
        }
    };
    assert_eq!((first.kind, first.value.as_deref()), (ChangeKind::Put, Some(&b"0"[..])));
    let mut acked = Vec::new();
    for i in 1..=10 {
        acked.push(version(&put(&writer_url, "rc/k", format!("{i}").as_bytes()).await));
    }
    // Its node stops; the rest arrive through the other endpoint.
    tc.cluster.stop_node(others[0]).await.expect("stops");
    for i in 11..=20 {
        acked.push(version(&put(&writer_url, "rc/k", format!("{i}").as_bytes()).await));
    }
    let mut seen = Vec::new();
    while seen.len() < acked.len() {
        let c = actix_rt::time::timeout(Duration::from_secs(40), w.next())
            .await
            .expect("a change within 40 s")
            .expect("the watch goes on");
        if c.version > first.version {
            seen.push(c.version);
        }
    }
    assert_eq!(seen, acked, "every acknowledged write once, in order, across the reconnect");
    assert!(w.position().is_some());
    tc.cluster.start_node(others[0]).await.expect("restarts");
    tc.shutdown().await;
}
