//! Bearer tokens on a real in-process cluster: requests without a token,
//! with an unknown one or with one whose scope or prefix does not cover
//! them get 401 or 403 and change nothing; admin routes need admin;
//! health stays open; a reloaded file takes effect and a broken one does
//! not replace the tokens in force; a flooding token is rate limited while
//! another is served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use ringstore_api::auth::{hash_token, Auth};
use serde_json::json;

const APP: &str = "rs_app-token-for-tests";
const READER: &str = "rs_reader-token-for-tests";
const OPS: &str = "rs_ops-token-for-tests";

fn tokens_file(with_app: bool) -> String {
    let mut f = format!(
        "[[token]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n\n\
         [[token]]\nname = \"ops\"\nsha256 = \"{}\"\nscopes = [\"admin\", \"read\", \"write\"]\n\n",
        hash_token(READER),
        hash_token(OPS)
    );
    if with_app {
        f.push_str(&format!(
            "[[token]]\nname = \"app\"\nsha256 = \"{}\"\nscopes = [\"read\", \"write\"]\nprefix = \"app/\"\n",
            hash_token(APP)
        ));
    }
    f
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[actix_rt::test]
async fn tokens_decide_who_may_do_what() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, tokens_file(true)).unwrap();
    let auth = Arc::new(Auth::from_file(&file, true).unwrap());
    let tc = start(|c| {
        c.shards = 4;
        c.auth = auth.clone();
    })
    .await;
    let url = tc.cluster.url(1).unwrap();
    let (app, reader, ops) = (bearer(APP), bearer(READER), bearer(OPS));
    let as_ = |t: &str| vec![("authorization", t.to_string())];
    let send = |method: &'static str, path: String, who: Vec<(&'static str, String)>, body: Vec<u8>| {
        let url = url.clone();
        async move {
            let h: Vec<(&str, &str)> = who.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(method, &url, &path, &h, body).await
        }
    };

    // No token, an unknown one: 401 with a challenge, and nothing written.
    let r = send("PUT", "/v1/kv/app/a".into(), vec![], b"x".to_vec()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{}", r.text());
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer realm=\"ringstore\""));
    let r = send("PUT", "/v1/kv/app/a".into(), as_("Bearer rs_nobody"), b"x".to_vec()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").unwrap_or_default().contains("invalid_token"));
    assert!(!r.text().contains("rs_nobody"), "the token is not echoed: {}", r.text());
    let r = send("GET", "/v1/kv/app/a".into(), as_(&ops), vec![]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "the refused writes changed nothing");

    // Scopes: a reader reads and may not write.
    let r = send("PUT", "/v1/kv/app/a".into(), as_(&reader), b"x".to_vec()).await;
    assert_eq!((r.status, r.error_code().as_str()), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(r.text().contains("lacks the write scope"), "{}", r.text());
    assert_eq!(send("PUT", "/v1/kv/app/a".into(), as_(&app), b"x".to_vec()).await.status, StatusCode::OK);
    assert_eq!(send("GET", "/v1/kv/app/a".into(), as_(&reader), vec![]).await.body, b"x");

    // A prefix: keys, scans, batches, transactions, watches and locks
    // outside it are refused, inside it served.
    let r = send("PUT", "/v1/kv/other/a".into(), as_(&app), b"x".to_vec()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("under \\\"app/\\\""), "{}", r.text());
    assert_eq!(send("GET", "/v1/kv?prefix=".into(), as_(&app), vec![]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send("GET", "/v1/kv?prefix=app/".into(), as_(&app), vec![]).await.status, StatusCode::OK);
    assert_eq!(send("DELETE", "/v1/kv?prefix=ap".into(), as_(&app), vec![]).await.status, StatusCode::FORBIDDEN);
    let batch = json!({ "ops": [{ "op": "put", "key": "app/b", "value": "1" }, { "op": "get", "key": "other/b" }] });
    let r = send("POST", "/v1/kv:batch".into(), as_(&app), batch.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("ops[1]"), "{}", r.text());
    assert_eq!(
        send("GET", "/v1/kv/app/b".into(), as_(&ops), vec![]).await.status,
        StatusCode::NOT_FOUND,
        "refused whole"
    );
    let txn = json!({ "compare": [{ "key": "{t}x", "exists": false }], "then": [{ "op": "put", "key": "app/{t}", "value": "1" }] });
    let r = send("POST", "/v1/txn".into(), as_(&app), txn.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a compare outside the prefix: {}", r.text());
    let lock = json!({ "owner": "o", "ttl_ms": 5000 });
    let r = send("POST", "/v1/locks/jobs/x/acquire".into(), as_(&app), lock.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send("POST", "/v1/locks/app/x/acquire".into(), as_(&app), lock.to_string().into_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(send("GET", "/v1/watch/other/a".into(), as_(&app), vec![]).await.status, StatusCode::FORBIDDEN);

    // Admin routes need admin; health stays open; metrics need a token here.
    assert_eq!(send("GET", "/v1/cluster".into(), as_(&app), vec![]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send("GET", "/v1/cluster".into(), as_(&ops), vec![]).await.status, StatusCode::OK);
    assert_eq!(send("POST", "/v1/rebalance/pause".into(), as_(&reader), vec![]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send("GET", "/healthz".into(), vec![], vec![]).await.status, StatusCode::OK);
    assert_eq!(send("GET", "/readyz".into(), vec![], vec![]).await.status, StatusCode::OK);
    assert_eq!(send("OPTIONS", "/v1/kv/app/a".into(), vec![], vec![]).await.status, StatusCode::NO_CONTENT);
    assert_eq!(send("GET", "/metrics".into(), vec![], vec![]).await.status, StatusCode::UNAUTHORIZED);
    let m = send("GET", "/metrics".into(), as_(&reader), vec![]).await;
    assert!(m.text().contains("ringstore_auth_requests_total{result=\"forbidden\"}"), "auth is metered");

    // The Rust client sends its token.
    let kv = ringstore_client::KvClient::new(vec![url.clone()], Duration::from_secs(5)).with_token(APP);
    assert_eq!(kv.get("app/a").await.unwrap().map(|(v, _)| v), Some(b"x".to_vec()));
    assert!(kv.put("other/a", b"y", None).await.is_err());

    // Reload: the app token is withdrawn; a broken file changes nothing.
    std::fs::write(&file, tokens_file(false)).unwrap();
    assert_eq!(auth.reload(), Ok(2));
    assert_eq!(send("GET", "/v1/kv/app/a".into(), as_(&app), vec![]).await.status, StatusCode::UNAUTHORIZED);
    std::fs::write(&file, "[[token]]\nname = 3").unwrap();
    assert!(auth.reload().is_err());
    assert_eq!(send("GET", "/v1/kv/app/a".into(), as_(&reader), vec![]).await.status, StatusCode::OK);
    tc.shutdown().await;
}

#[actix_rt::test]
async fn a_flooding_token_gets_429s_and_another_token_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, tokens_file(true)).unwrap();
    let tc = start(|c| {
        c.auth = Arc::new(Auth::from_file(&file, false).unwrap());
        c.rate_limit = Some(ringstore_api::limit::RateLimit { per_second: 1.0, burst: 10.0 });
    })
    .await;
    let url = tc.cluster.url(1).unwrap();
    let get = |token: &'static str| {
        let url = url.clone();
        async move { call("GET", &url, "/v1/kv/app/k", &[("authorization", &bearer(token))], vec![]).await }
    };
    // 40 at once from one token: its burst of 10 passes (404: no key),
    // the rest are 429 with Retry-After, in the JSON error shape.
    let flood = futures::future::join_all((0..40).map(|_| get(APP))).await;
    let served = flood.iter().filter(|r| r.status == StatusCode::NOT_FOUND).count();
    let shed: Vec<_> = flood.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    // The bucket refills at 1/s while the 40 are served: a few more may pass.
    assert!((10..=14).contains(&served), "served {served} of 40 with a burst of 10");
    assert_eq!(served + shed.len(), 40);
    assert_eq!(shed[0].error_code(), "rate_limited");
    assert_eq!(shed[0].header("retry-after").as_deref(), Some("1"));
    // Another token has its own bucket; health is never limited.
    for _ in 0..5 {
        assert_eq!(get(READER).await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(call("GET", &url, "/readyz", &[], vec![]).await.status, StatusCode::OK);
    // The flooding token is served again once its bucket refills.
    actix_rt::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(APP).await.status, StatusCode::NOT_FOUND);
    tc.shutdown().await;
}
