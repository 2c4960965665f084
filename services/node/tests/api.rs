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
