//! Transactions and deletes by prefix on a real in-process cluster of
//! four shards: hash tags keep keys together, a transaction is atomic and
//! answers once when sent again, keys of two shards are a 400 naming them,
//! concurrent compare-and-swap transfers keep their total, and a prefix
//! delete counts what it removed on every shard.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use serde_json::json;

async fn txn(url: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    call("POST", url, "/v1/txn", &h, body.to_string().into_bytes()).await
}

fn encoded(key: &str) -> String {
    key.replace('{', "%7B").replace('}', "%7D")
}

#[actix_rt::test]
async fn a_transaction_compares_and_runs_one_branch_atomically() {
    let tc = start(|c| c.shards = 4).await;
    let url = tc.cluster.url(1).unwrap();
    let (a, b) = ("{acct7}/balance", "{acct7}/log");

    // Create both only if absent: one entry, one version for both.
    let create = json!({
        "compare": [{ "key": a, "exists": false }, { "key": b, "version": 0 }],
        "then": [
            { "op": "put", "key": a, "value": "100" },
            { "op": "put", "key": b, "value": "opened" },
            { "op": "get", "key": a },
        ],
        "else": [{ "op": "get", "key": a }],
    });
    let r = txn(&url, create.clone(), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["succeeded"], true);
    let version = v["results"][0]["version"].as_u64().unwrap();
    assert_eq!(v["results"][1]["version"].as_u64(), Some(version), "one entry, one version");
    assert_eq!((v["results"][2]["value"].as_str(), v["results"][2]["version"].as_u64()), (Some("100"), Some(version)));
    assert_eq!(get(&url, &encoded(b)).await.body, b"opened");

    // Again: the compare fails now, so the else branch reads.
    let v = txn(&url, create, &[]).await.json();
    assert_eq!(v["succeeded"], false);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["value"], "100");

    // Compare-and-swap on a value, and a delete, through another node.
    let url2 = tc.cluster.url(2).unwrap();
    let cas = json!({
        "compare": [{ "key": a, "value": "100" }, { "key": a, "version": version, "cmp": "=" }],
        "then": [{ "op": "put", "key": a, "value": "70" }, { "op": "delete", "key": b }],
    });
    let v = txn(&url2, cas.clone(), &[]).await.json();
    assert_eq!(v["succeeded"], true, "{v}");
    assert_eq!(
        (v["results"][1]["deleted"].as_bool(), v["results"][1]["version"].as_u64()),
        (Some(true), Some(version))
    );
    assert_eq!(get(&url, &encoded(b)).await.status, StatusCode::NOT_FOUND);
    let v = txn(&url2, cas, &[]).await.json();
    assert_eq!((v["succeeded"].as_bool(), v["results"].as_array().map(Vec::len)), (Some(false), Some(0)));

    // A transaction whose answer was lost, sent again with its
    // Idempotency-Key, runs once: the later write stands.
    let key = [("idempotency-key", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")];
    let bump = json!({ "then": [{ "op": "put", "key": "{acct7}/n", "value": "first" }] });
    let first = txn(&url, bump.clone(), &key).await.json()["results"][0]["version"].as_u64().unwrap();
    assert_eq!(put(&url, &encoded("{acct7}/n"), b"later").await.status, StatusCode::OK);
    let again = txn(&url, bump, &key).await.json()["results"][0]["version"].as_u64().unwrap();
    assert_eq!(again, first, "the resent transaction answers what the first did");
    assert_eq!(get(&url, &encoded("{acct7}/n")).await.body, b"later");

    // Keys of two shards: a 400 that names them. Eight random keys over
    // four shards are all on one with a chance of 4^-7.
    let ops: Vec<_> = (0..8).map(|i| json!({ "op": "get", "key": format!("spread/{i}") })).collect();
    let r = txn(&url, json!({ "then": ops }), &[]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "cross_shard"), "{}", r.text());
    assert!(r.text().contains("shard ") && r.text().contains("hash tag"), "{}", r.text());

    // Bounds, in the JSON error shape.
    let r = txn(&url, json!({ "then": [{ "op": "put", "key": a }] }), &[]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(r.text().contains("then[0]"), "{}", r.text());
    let r = call("POST", &url, "/v1/txn", &[], vec![b' '; 2 * 1024 * 1024 + 1]).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"), "{}", r.text());
    let r = call("GET", &url, "/v1/txn", &[], vec![]).await;
    assert_eq!((r.status, r.header("allow").as_deref()), (StatusCode::METHOD_NOT_ALLOWED, Some("POST, OPTIONS")));
    tc.shutdown().await;
}

#[actix_rt::test]
async fn concurrent_transfers_keep_the_total() {
    // Two accounts under one tag; 8 clients move 1 at a time with a
    // compare on both versions, retrying when the compare fails. Atomic
    // transactions keep the sum; any lost update would change it.
    let tc = start(|c| c.shards = 4).await;
    let urls: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let (x, y) = ("{bank}/x", "{bank}/y");
    let init =
        json!({ "then": [{ "op": "put", "key": x, "value": "500" }, { "op": "put", "key": y, "value": "500" }] });
    assert_eq!(txn(&urls[0], init, &[]).await.status, StatusCode::OK);
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = (0..8).map(|c| {
        let url = urls[c % urls.len()].clone();
        let moved = moved.clone();
        async move {
            let read = json!({ "then": [{ "op": "get", "key": x }, { "op": "get", "key": y }] });
            for _ in 0..60 {
                let v = txn(&url, read.clone(), &[]).await.json();
                let (rx, ry) = (&v["results"][0], &v["results"][1]);
                let n = |r: &serde_json::Value| r["value"].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap();
                let (from, to, fx, ty) = if c % 2 == 0 { (x, y, rx, ry) } else { (y, x, ry, rx) };
                let w = json!({
                    "compare": [
                        { "key": from, "version": fx["version"] },
                        { "key": to, "version": ty["version"] },
                    ],
                    "then": [
                        { "op": "put", "key": from, "value": (n(fx) - 1).to_string() },
                        { "op": "put", "key": to, "value": (n(ty) + 1).to_string() },
                    ],
                });
                let r = txn(&url, w, &[]).await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                if r.json()["succeeded"] == true {
                    moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    futures::future::join_all(clients).await;
    let total = |k: &str| {
        let url = urls[0].clone();
        let k = encoded(k);
        async move { String::from_utf8(get(&url, &k).await.body).unwrap().parse::<i64>().unwrap() }
    };
    let (fx, fy) = (total(x).await, total(y).await);
    assert_eq!(fx + fy, 1000, "x={fx} y={fy}");
    assert!(moved.load(std::sync::atomic::Ordering::Relaxed) > 0, "some transfer went through");
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_prefix_delete_counts_what_it_removed_on_every_shard() {
    let tc = start(|c| c.shards = 4).await;
    let url = tc.cluster.url(1).unwrap();
    let ops: Vec<_> = (0..1000).map(|i| json!({ "op": "put", "key": format!("del/{i:04}"), "value": "x" })).collect();
    let h = [("content-type", "application/json")];
    let r = call("POST", &url, "/v1/kv:batch", &h, json!({ "ops": ops }).to_string().into_bytes()).await;
    assert_eq!(r.json()["failed"], 0, "{}", r.text());
    let ops: Vec<_> =
        (1000..1500).map(|i| json!({ "op": "put", "key": format!("del/{i:04}"), "value": "x" })).collect();
    call("POST", &url, "/v1/kv:batch", &h, json!({ "ops": ops }).to_string().into_bytes()).await;
    assert_eq!(put(&url, "delete-not/1", b"stays").await.status, StatusCode::OK);

    let r = call("DELETE", &url, "/v1/kv?prefix=del/", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["deleted"], 1500, "more than one page per shard, every shard");
    let left = call("GET", &url, "/v1/kv?prefix=del&keys_only=true", &[], vec![]).await.json();
    assert_eq!(left["items"], json!([{ "key": "delete-not/1", "version": left["items"][0]["version"] }]));
    let r = call("DELETE", &url, "/v1/kv?prefix=del/", &[], vec![]).await;
    assert_eq!(r.json()["deleted"], 0);

    for (q, code) in [("", "bad_request"), ("?prefix=", "bad_request"), ("?prefix=a&limit=3", "bad_request")] {
        let r = call("DELETE", &url, &format!("/v1/kv{q}"), &[], vec![]).await;
        assert_eq!((r.status, r.error_code().as_str()), (StatusCode::BAD_REQUEST, code), "{q}: {}", r.text());
    }
    tc.shutdown().await;
}

#[actix_rt::test]
async fn the_rust_client_runs_transactions_and_prefix_deletes() {
    use ringstore_client::{Cmp, Compare, KvClient, TxnOp, TxnResult};
    let tc = start(|c| c.shards = 4).await;
    let endpoints: Vec<String> = tc.cluster.node_ids().iter().map(|i| tc.cluster.url(*i).unwrap()).collect();
    let kv = KvClient::new(endpoints, Duration::from_secs(10));
    let (a, b) = ("{rc}/a".to_string(), "{rc}/b".to_string());
    let answer = kv
        .txn(
            &[Compare::Exists { key: a.clone(), exists: false }],
            &[TxnOp::Put { key: a.clone(), value: b"1".to_vec() }, TxnOp::Put { key: b.clone(), value: vec![0xff] }],
            &[],
        )
        .await
        .unwrap();
    assert!(answer.succeeded);
    let TxnResult::Written { version } = answer.results[0] else { panic!("{answer:?}") };
    let answer = kv
        .txn(
            &[Compare::Version { key: a.clone(), cmp: Cmp::Greater, version }],
            &[TxnOp::Delete { key: a.clone() }],
            &[TxnOp::Get { key: b.clone() }, TxnOp::Get { key: "{rc}/none".into() }],
        )
        .await
        .unwrap();
    assert!(!answer.succeeded);
    assert_eq!(answer.results, [TxnResult::Value(Some((vec![0xff], version))), TxnResult::Value(None)]);
    assert_eq!(kv.get(&a).await.unwrap(), Some((b"1".to_vec(), version)), "a key path with braces");
    assert_eq!(kv.delete_prefix("{rc}/").await.unwrap(), 2);
    assert_eq!(kv.get(&b).await.unwrap(), None);
    tc.shutdown().await;
}
