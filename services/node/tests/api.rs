//! REST API semantics on a real in-process cluster: versions and
//! preconditions, TTL, key encoding, limits and error bodies.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;

#[actix_rt::test]
async fn etag_if_match_and_if_none_match() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();

    // Create-only succeeds once.
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-none-match", "*")], b"v1".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let etag = r.header("etag").unwrap();
    let version = r.json()["version"].as_u64().unwrap();
    assert_eq!(etag, format!("\"{version}\""));
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-none-match", "*")], b"v2".to_vec()).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.error_code(), "precondition_failed");

    // GET returns the same ETag.
    let r = get(&url, "doc").await;
    assert_eq!(r.header("etag").unwrap(), etag);
    assert_eq!(r.body, b"v1");

    // If-Match with the current version wins once; the stale one loses.
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-match", &etag)], b"v2".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    let etag2 = r.header("etag").unwrap();
    assert_ne!(etag2, etag);
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-match", &etag)], b"v3".to_vec()).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(get(&url, "doc").await.body, b"v2");

    // Conditional DELETE.
    let r = call("DELETE", &url, "/v1/kv/doc", &[("if-match", &etag)], vec![]).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call("DELETE", &url, "/v1/kv/doc", &[("if-match", &etag2)], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(get(&url, "doc").await.status, StatusCode::NOT_FOUND);
    let r = call("DELETE", &url, "/v1/kv/doc", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");

    // If-Match on a missing key fails; create-only after delete works.
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-match", "\"1\"")], b"x".to_vec()).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = call("PUT", &url, "/v1/kv/doc", &[("if-none-match", "*")], b"again".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn ttl_expires_values_on_every_replica() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let r = call("PUT", &url, "/v1/kv/session?ttl_ms=400", &[], b"s".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&url, "session").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("x-ringstore-expires-at-ms").is_some());
    assert_eq!(put(&url, "forever", b"f").await.status, StatusCode::OK);

    eventually(Duration::from_secs(5), "linearizable read sees expiry", || {
        let u = url.clone();
        async move { get(&u, "session").await.status == StatusCode::NOT_FOUND }
    })
    .await;
    // The leader's sweep replicates the expiry, so stale reads on every
    // replica (which never consult their own clock) agree.
    for id in tc.cluster.node_ids() {
        let u = tc.cluster.url(id).unwrap();
        eventually(Duration::from_secs(5), "stale read sees expiry", || {
            let u = u.clone();
            async move { get_stale(&u, "session").await.status == StatusCode::NOT_FOUND }
        })
        .await;
        assert_eq!(get_stale(&u, "forever").await.status, StatusCode::OK);
    }
    // An expired key counts as absent for create-only.
    let r = call("PUT", &url, "/v1/kv/session", &[("if-none-match", "*")], b"new".to_vec()).await;
    assert_eq!(r.status, StatusCode::OK);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn keys_with_slashes_unicode_and_empty_values() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(2).unwrap();
    let cases: [(&str, &[u8]); 4] = [
        ("a/b/c", b"slashes"),
        ("%D0%BA%D0%BB%D1%8E%D1%87/%E2%9C%93", "ключ".as_bytes()),
        ("empty", b""),
        ("with%20space%3F", b"\x00\xff binary"),
    ];
    for (k, v) in cases {
        let r = put(&url, k, v).await;
        assert_eq!(r.status, StatusCode::OK, "{k}: {}", r.text());
    }
    for (k, v) in cases {
        let r = get(&url, k).await;
        assert_eq!(r.status, StatusCode::OK, "{k}");
        assert_eq!(r.body, v, "{k}");
    }
    // %2F and / name the same key.
    assert_eq!(get(&url, "a%2Fb%2Fc").await.body, b"slashes");
    // A prefix of a key is another key.
    assert_eq!(get(&url, "a/b").await.status, StatusCode::NOT_FOUND);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn bad_input_gets_a_json_error_and_the_node_keeps_serving() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();

    let ok_key = "k".repeat(4096);
    assert_eq!(put(&url, &ok_key, b"x").await.status, StatusCode::OK);
    let r = put(&url, &"k".repeat(4097), b"x").await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "too_large");

    let r = put(&url, "big", &vec![7u8; 1024 * 1024]).await;
    assert_eq!(r.status, StatusCode::OK, "a value of exactly 1 MiB is allowed");
    let r = put(&url, "big", &vec![7u8; 1024 * 1024 + 1]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "too_large");
    assert_eq!(get(&url, "big").await.body.len(), 1024 * 1024);

    /// method, path, headers, expected status, expected error code
    type Case = (&'static str, &'static str, Vec<(&'static str, &'static str)>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        ("PUT", "/v1/kv/x", vec![("if-match", "42")], StatusCode::BAD_REQUEST, "bad_request"),
        ("PUT", "/v1/kv/x", vec![("if-match", "W/\"42\"")], StatusCode::BAD_REQUEST, "bad_request"),
        ("PUT", "/v1/kv/x", vec![("if-none-match", "\"3\"")], StatusCode::BAD_REQUEST, "bad_request"),
        ("PUT", "/v1/kv/x?ttl_ms=0", vec![], StatusCode::BAD_REQUEST, "bad_request"),
        ("PUT", "/v1/kv/x?ttl_ms=abc", vec![], StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/v1/kv/x?consistency=maybe", vec![], StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/v1/kv/x", vec![("x-request-timeout", "0")], StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/v1/kv/", vec![], StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/v1/kv/%FF", vec![], StatusCode::BAD_REQUEST, "bad_request"),
        ("GET", "/v2/nothing", vec![], StatusCode::NOT_FOUND, "no_route"),
        ("POST", "/v1/kv/x", vec![], StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("PATCH", "/v1/kv/x", vec![], StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, path, headers, status, code) in cases {
        let r = call(method, &url, path, &headers, b"v".to_vec()).await;
        assert_eq!(r.status, status, "{method} {path} {headers:?}: {}", r.text());
        assert_eq!(r.error_code(), code, "{method} {path}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    // Nothing above changed state or broke the node.
    assert_eq!(get(&url, "x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(put(&url, "after", b"fine").await.status, StatusCode::OK);
    assert_eq!(get(&url, "after").await.body, b"fine");
    assert_eq!(call("GET", &url, "/healthz", &[], vec![]).await.status, StatusCode::OK);
    // Ready again, if a busy machine made an election happen meanwhile.
    tc.wait_ready(Duration::from_secs(10)).await;
    tc.shutdown().await;
}

#[actix_rt::test]
async fn http_as_users_of_etcd_and_consul_expect_it() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let version = put(&url, "doc", b"v1").await.json()["version"].as_u64().unwrap();
    let etag = format!("\"{version}\"");

    // HEAD: a GET's headers, no body.
    let r = call("HEAD", &url, "/v1/kv/doc", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("etag").unwrap(), etag);
    assert!(r.body.is_empty());
    assert_eq!(call("HEAD", &url, "/v1/kv/none", &[], vec![]).await.status, StatusCode::NOT_FOUND);

    // If-None-Match on a GET: 304 when the client's copy is current.
    let r = call("GET", &url, "/v1/kv/doc", &[("if-none-match", &etag)], vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag").unwrap(), etag);
    assert!(r.body.is_empty());
    let r = call("GET", &url, "/v1/kv/doc", &[("if-none-match", "\"1\", W/\"2\"")], vec![]).await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &b"v1"[..]));

    // 405 names the route's methods in Allow; OPTIONS answers with them.
    let r = call("POST", &url, "/v1/kv/doc", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow").unwrap(), "GET, HEAD, PUT, DELETE, OPTIONS");
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = call("OPTIONS", &url, "/v1/kv/doc", &[], vec![]).await;
    assert_eq!(
        (r.status, r.header("allow").unwrap().as_str()),
        (StatusCode::NO_CONTENT, "GET, HEAD, PUT, DELETE, OPTIONS")
    );
    let r = call("DELETE", &url, "/v1/locks/l/acquire", &[], vec![]).await;
    assert_eq!((r.status, r.header("allow").unwrap().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "POST, OPTIONS"));
    let r = call("PUT", &url, "/healthz", &[], vec![]).await;
    assert_eq!((r.status, r.header("allow").unwrap().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "GET, OPTIONS"));
    // A typo in a lock action is a 404 naming the actions.
    let r = call("POST", &url, "/v1/locks/l/aquire", &[], b"{}".to_vec()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::NOT_FOUND, "no_route"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("\"aquire\""), "{}", r.text());

    // One key as JSON with its metadata.
    let r = call("GET", &url, "/v1/kv/doc?meta=true", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = r.json();
    assert_eq!(
        (m["key"].as_str(), m["value"].as_str(), m["version"].as_u64()),
        (Some("doc"), Some("v1"), Some(version))
    );
    assert!(m["applied_index"].as_u64().unwrap() >= version);
    let r = call("PUT", &url, "/v1/kv/doc?meta", &[], b"x".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Durations as people write them.
    let r = call("GET", &url, "/v1/kv/doc", &[("x-request-timeout", "2s")], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Every error names what was wrong, in the JSON shape, without internals.
    let acquire = |name: &str, body: &str| {
        let (url, path, body) = (url.clone(), format!("/v1/locks/{name}/acquire"), body.as_bytes().to_vec());
        async move { call("POST", &url, &path, &[("content-type", "application/json")], body).await }
    };
    let long_name = "n".repeat(5000);
    type Check = (Resp, StatusCode, &'static str, &'static str);
    let checks: Vec<Check> = vec![
        (
            call("PUT", &url, "/v1/kv/doc?ttl_ms=-1", &[], b"x".to_vec()).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "ttl_ms",
        ),
        (call("PUT", &url, "/v1/kv/a%ZZ", &[], b"x".to_vec()).await, StatusCode::BAD_REQUEST, "bad_request", "%25"),
        (call("GET", &url, "/v1/kv?prefix=%FF", &[], vec![]).await, StatusCode::BAD_REQUEST, "bad_request", "prefix"),
        (call("GET", &url, "/v1/locks/l?x=1", &[], vec![]).await, StatusCode::BAD_REQUEST, "bad_request", "\"x\""),
        (acquire(&long_name, "{}").await, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "lock name"),
        (acquire("l", &" ".repeat(20_000)).await, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "16384"),
        (acquire("l", "[1, 2, 3]").await, StatusCode::BAD_REQUEST, "bad_request", "\"owner\""),
        (
            call("PUT", &url, "/v1/kv/doc", &[("if-match", "\"1\"")], b"x".to_vec()).await,
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "current version is",
        ),
    ];
    for (r, status, code, names) in checks {
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(names), "{message:?} should name {names}");
        for internal in ["Some(", "struct", "invalid digit"] {
            assert!(!message.contains(internal), "{message:?} leaks {internal}");
        }
    }
    // keys_only takes the usual spellings of a flag.
    let r = call("GET", &url, "/v1/kv?prefix=do&keys_only=1", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&url, "doc").await.body, b"v1", "no error changed the value");
    tc.shutdown().await;
}

#[actix_rt::test]
async fn an_acquires_deadline_follows_its_wait() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let h = [("content-type", "application/json")];
    let body = |owner: &str, ttl_ms: u64, wait_ms: u64| {
        serde_json::json!({ "owner": owner, "ttl_ms": ttl_ms, "wait_ms": wait_ms }).to_string().into_bytes()
    };
    let r = call("POST", &url, "/v1/locks/slow/acquire", &h, body("first", 6_500, 0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // No X-Request-Timeout: a wait past the default 5 s deadline is kept,
    // and the waiter is granted when the first lease ends.
    let start = std::time::Instant::now();
    let r = call("POST", &url, "/v1/locks/slow/acquire", &h, body("second", 1_000, 9_000)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(start.elapsed() > Duration::from_secs(5), "granted after {:?}", start.elapsed());
    // Past what the longest request allows: refused before it waits.
    let r = call("POST", &url, "/v1/locks/other/acquire", &h, body("third", 1_000, 59_500)).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(r.text().contains("wait_ms must be at most 59000"), "{}", r.text());
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_batch_answers_each_item_and_a_resent_one_applies_once() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let v1 = put(&url, "b/existing", b"old").await.json()["version"].as_u64().unwrap();
    let batch = |body: serde_json::Value, headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut h: Vec<(&str, &str)> = vec![("content-type", "application/json")];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            call("POST", &url, "/v1/kv:batch", &h, body.to_string().into_bytes()).await
        }
    };
    let ops = serde_json::json!({ "ops": [
        { "op": "put", "key": "b/1", "value": "one" },
        { "op": "put", "key": "b/2", "value_b64": "AP8=", "ttl_ms": 60000 },
        { "op": "put", "key": "b/existing", "value": "lost", "if_version": v1 + 1000 },
        { "op": "get", "key": "b/existing" },
        { "op": "get", "key": "b/none" },
        { "op": "delete", "key": "b/existing", "if_version": v1 },
    ]});
    let r = batch(ops, vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let res = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(res.len(), 6);
    assert_eq!(res[0]["ok"], true);
    assert!(res[1]["version"].as_u64().is_some());
    assert_eq!((res[2]["status"].as_u64(), res[2]["error"]["code"].as_str()), (Some(412), Some("precondition_failed")));
    assert_eq!((res[3]["value"].as_str(), res[3]["version"].as_u64()), (Some("old"), Some(v1)));
    assert_eq!((res[4]["status"].as_u64(), res[4]["error"]["code"].as_str()), (Some(404), Some("not_found")));
    assert_eq!(res[5]["deleted"], true);
    assert_eq!(r.json()["failed"], 2);
    // The items landed on their shards as single writes would.
    assert_eq!(get(&url, "b/1").await.body, b"one");
    assert_eq!(get(&url, "b/2").await.body, [0u8, 255]);
    assert_eq!(get(&url, "b/existing").await.status, StatusCode::NOT_FOUND);

    // Sent again with one Idempotency-Key (its answer was lost): each
    // write applies once, so the later single write stands.
    let key = ("idempotency-key", "5c2f8a4e-0d1b-4c7e-9a3f-6b8d2e1f0a9c".to_string());
    let ops = serde_json::json!({ "ops": [{ "op": "put", "key": "b/idem", "value": "first" }] });
    let first = batch(ops.clone(), vec![key.clone()]).await.json()["results"][0]["version"].as_u64().unwrap();
    assert_eq!(put(&url, "b/idem", b"later").await.status, StatusCode::OK);
    let again = batch(ops, vec![key]).await.json()["results"][0]["version"].as_u64().unwrap();
    assert_eq!(again, first, "the resent batch answers what the first did");
    assert_eq!(get(&url, "b/idem").await.body, b"later");

    // Limits: items per batch and the body, refused whole and in JSON.
    let many: Vec<_> = (0..1001).map(|i| serde_json::json!({ "op": "get", "key": format!("k{i}") })).collect();
    let r = batch(serde_json::json!({ "ops": many }), vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    let r = call("POST", &url, "/v1/kv:batch", &[], vec![b' '; 8 * 1024 * 1024 + 1]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", r.text());
    tc.shutdown().await;
}

#[actix_rt::test]
async fn the_rust_client_reads_writes_and_batches() {
    use ringstore_client::{BatchOp, BatchResult, KvClient, KvError};
    let tc = start(|_| {}).await;
    let endpoints: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let kv = KvClient::new(endpoints, Duration::from_secs(10));
    let v1 = kv.put("c/a b+ключ", b"\x00\xffbin", None).await.unwrap();
    assert_eq!(kv.get("c/a b+ключ").await.unwrap(), Some((b"\x00\xffbin".to_vec(), v1)));
    let v2 = kv.put("c/a b+ключ", b"text", Some(v1)).await.unwrap();
    assert!(matches!(kv.put("c/a b+ключ", b"late", Some(v1)).await, Err(KvError::PreconditionFailed { .. })));
    let results = kv
        .batch(&[
            BatchOp::Put { key: "c/x".into(), value: b"1".to_vec(), if_version: None },
            BatchOp::Get { key: "c/a b+ключ".into() },
            BatchOp::Get { key: "c/none".into() },
            BatchOp::Delete { key: "c/a b+ключ".into(), if_version: Some(v2) },
        ])
        .await
        .unwrap();
    assert!(matches!(results[0], BatchResult::Written { .. }));
    assert_eq!(results[1], BatchResult::Value { value: b"text".to_vec(), version: v2 });
    assert!(matches!(&results[2], BatchResult::Failed { status: 404, code, .. } if code == "not_found"));
    assert!(matches!(results[3], BatchResult::Deleted { .. }));
    assert_eq!(kv.get("c/a b+ключ").await.unwrap(), None);
    assert!(!kv.delete("c/a b+ключ").await.unwrap());
    // Following a key: a change through the client wakes the poll.
    let waiter = kv.wait_for_change("c/x", 0, Duration::from_secs(1));
    assert_eq!(waiter.await.unwrap().map(|(v, _)| v), Some(b"1".to_vec()), "a stale index answers at once");
    let (_, x) = kv.get("c/x").await.unwrap().unwrap();
    let later = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        kv.put("c/x", b"2", Some(x)).await.unwrap()
    };
    let (seen, written) = futures::join!(kv.wait_for_change("c/x", x, Duration::from_secs(20)), later);
    assert_eq!(seen.unwrap(), Some((b"2".to_vec(), written)));
    assert!(kv.delete("c/x").await.unwrap());
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_long_poll_answers_when_the_key_changes_or_the_wait_ends() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    let other = tc.cluster.url(2).unwrap();
    let v1 = put(&url, "lp", b"one").await.json()["version"].as_u64().unwrap();
    let poll = |q: String| {
        let url = url.clone();
        async move {
            let start = std::time::Instant::now();
            let r = call("GET", &url, &format!("/v1/kv/lp?{q}"), &[], vec![]).await;
            (r, start.elapsed())
        }
    };
    // A write through another node wakes a poll holding the old version.
    let writer = async {
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        put(&other, "lp", b"two").await.json()["version"].as_u64().unwrap()
    };
    let ((r, took), v2) = futures::join!(poll(format!("index={v1}&wait=20s")), writer);
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    if r.body == b"one" {
        // A leader change ends a wait early (a loaded machine's elections):
        // the answer is then the key as it was, and a new poll sees the write.
        assert_eq!(r.header("etag"), Some(format!("\"{v1}\"")));
        let (again, _) = poll(format!("index={v1}&wait=20s")).await;
        assert_eq!((again.body.as_slice(), again.header("etag")), (&b"two"[..], Some(format!("\"{v2}\""))));
    } else {
        assert_eq!((r.body.as_slice(), r.header("etag")), (&b"two"[..], Some(format!("\"{v2}\""))));
        assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(10), "answered after {took:?}");
    }
    // A stale index answers at once; an unchanged key after the wait.
    let (r, took) = poll(format!("index={v1}&wait=20s")).await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &b"two"[..]));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (r, took) = poll(format!("index={v2}&wait=600ms")).await;
    assert_eq!((r.status, r.body.as_slice()), (StatusCode::OK, &b"two"[..]));
    assert!(took >= Duration::from_millis(550), "{took:?}");
    // A delete wakes it too (404); index=0 waits for the key to exist.
    let deleter = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        call("DELETE", &other, "/v1/kv/lp", &[], vec![]).await.status
    };
    let ((mut r, _), deleted) = futures::join!(poll(format!("index={v2}&wait=20s")), deleter);
    if r.status == StatusCode::OK {
        r = poll(format!("index={v2}&wait=20s")).await.0; // cut short by a leader change
    }
    assert_eq!((r.status, deleted), (StatusCode::NOT_FOUND, StatusCode::OK));
    let creator = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        put(&other, "lp", b"three").await.status
    };
    let ((mut r, _), _) = futures::join!(poll("index=0&wait=20s&meta=true".into()), creator);
    if r.status == StatusCode::NOT_FOUND {
        r = poll("index=0&wait=20s&meta=true".into()).await.0; // cut short by a leader change
    }
    assert_eq!(r.json()["value"], "three");
    let r = call("GET", &url, "/v1/kv/lp?wait=1s", &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    tc.shutdown().await;
}

#[actix_rt::test]
async fn metrics_endpoint_counts_requests() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    assert_eq!(put(&url, "m", b"1").await.status, StatusCode::OK);
    let r = call("GET", &url, "/metrics", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    for family in [
        "ringstore_http_requests_total",
        "ringstore_http_request_duration_seconds",
        "ringstore_raft_is_leader",
        "ringstore_raft_ready_entries",
        "ringstore_rocksdb_write_seconds",
    ] {
        assert!(text.contains(family), "missing {family}");
    }
    // The route label is the pattern, never the key.
    assert!(text.contains("route=\"/v1/kv/{key:.*}\""));
    assert!(!text.contains("route=\"/v1/kv/m\""));
    tc.shutdown().await;
}

#[actix_rt::test]
async fn concurrent_create_only_writes_in_one_batch_have_exactly_one_winner() {
    let tc = start(|_| {}).await;
    let url = tc.cluster.url(1).unwrap();
    // 1. Twenty If-None-Match: * PUTs race for one key.
    // 2. They reach the leader together, so most share one Ready round and
    //    are applied from one batch: each must see the ones before it.
    let tries = (0..20).map(|i| {
        let url = url.clone();
        async move { call("PUT", &url, "/v1/kv/race", &[("if-none-match", "*")], format!("w{i}").into_bytes()).await }
    });
    let results = futures::future::join_all(tries).await;
    let won: Vec<_> = results.iter().filter(|r| r.status == StatusCode::OK).collect();
    let lost = results.iter().filter(|r| r.status == StatusCode::PRECONDITION_FAILED).count();
    assert_eq!(won.len(), 1, "statuses: {:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(lost, 19);
    let winner_version = won[0].json()["version"].as_u64().unwrap();
    let r = get(&url, "race").await;
    assert_eq!(r.header("etag").unwrap(), format!("\"{winner_version}\""));
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_full_replica_queue_answers_503_overloaded_and_recovers() {
    let tc = start(|cfg| cfg.limits.pending_requests_max = 4).await;
    let url = tc.cluster.url(1).unwrap();
    let writes = (0..64).map(|i| {
        let url = url.clone();
        async move { put(&url, &format!("o{i}"), b"x").await }
    });
    let results = futures::future::join_all(writes).await;
    let ok = results.iter().filter(|r| r.status == StatusCode::OK).count();
    let overloaded: Vec<_> = results.iter().filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!(ok + overloaded.len(), 64, "only 200 or 503 expected");
    assert!(ok >= 4, "at least the queue's worth succeeds");
    assert!(!overloaded.is_empty(), "64 concurrent writes must overflow a queue of 4");
    for r in &overloaded {
        assert_eq!(r.error_code(), "overloaded");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    }
    // Afterwards the node serves normally.
    assert_eq!(put(&url, "after", b"y").await.status, StatusCode::OK);
    tc.shutdown().await;
}

/// `POST /v1/node/handover` (a pod's preStop): the node reports not ready
/// and leads nothing afterwards, while the cluster keeps serving.
#[actix_rt::test]
async fn handover_takes_the_node_out_of_service_and_moves_its_leaderships() {
    let tc = start(|c| c.shards = 4).await;
    let c = &tc.cluster;
    let leads = |n: u64| async move {
        let mut count = 0;
        for shard in 0..=4 {
            if c.shard_status(n, shard).await.is_ok_and(|s| s.role == "leader") {
                count += 1;
            }
        }
        count
    };
    let mut node = 0;
    for n in c.node_ids() {
        if leads(n).await > 0 {
            node = n;
            break;
        }
    }
    assert!(node != 0, "some node leads a shard");
    let url = c.url(node).unwrap();
    let r = call("POST", &url, "/v1/node/handover", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["draining"], true);
    assert_eq!(leads(node).await, 0, "node {node} handed every leadership over");
    let r = call("GET", &url, "/readyz", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "out of the Service's endpoints");
    let other = c.url(c.node_ids().into_iter().find(|n| *n != node).unwrap()).unwrap();
    assert_eq!(put(&other, "after-handover", b"v").await.status, StatusCode::OK);
    let r = call("GET", &url, "/v1/node/handover", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    tc.shutdown().await;
}
