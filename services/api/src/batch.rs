//! `POST /v1/kv:batch`: many independent puts, gets and deletes in one
//! request, spread over their shards at once, one answer per item in the
//! order sent; items of one key run in that order, other keys in
//! parallel. A batch is not a transaction: each item succeeds or fails
//! on its own (a failed `if_version` fails that item only).
//!
//! With `Idempotency-Key`, item `i`'s request id is the key plus `i`, so a
//! batch sent again after a lost answer applies each write once.

use std::sync::LazyLock;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use prometheus::{register_histogram, register_int_counter_vec, Histogram, IntCounterVec};
use ringstore_shared::apply::Outcome;
use ringstore_shared::command::{Command, Precondition, Request};
use ringstore_shared::config::Limits;
use ringstore_shared::StoreError;
use ringstore_storage::messages::new_request_id;
use ringstore_storage::{ShardOp, ShardReply};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::kv::{deadline, header, route};
use crate::params::Params;
use crate::request::parse_idempotency_key;
use crate::ApiState;

/// Items in one batch.
pub const BATCH_ITEMS_MAX: usize = 1_000;
/// A batch's body: room for a few full-size values, not unbounded memory.
pub const BATCH_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

static BATCH_ITEMS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "ringstore_http_batch_items",
        "Items per POST /v1/kv:batch",
        vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
    )
    .expect("registers once")
});

static BATCH_RESULTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_http_batch_item_results_total",
        "Batch items by operation and the code of their answer (ok or the error code)",
        &["op", "code"]
    )
    .expect("registers once")
});

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ops: Vec<Item>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Item {
    Put {
        key: String,
        value: Option<String>,
        value_b64: Option<String>,
        ttl_ms: Option<u64>,
        if_version: Option<u64>,
        #[serde(default)]
        if_absent: bool,
    },
    Get {
        key: String,
        #[serde(default)]
        stale: bool,
    },
    Delete {
        key: String,
        if_version: Option<u64>,
    },
}

/// One item as the shards see it.
#[derive(Debug, PartialEq, Eq)]
enum Planned {
    Write { key: Vec<u8>, cmd: Command },
    Read { key: Vec<u8>, stale: bool },
}

const SHAPE: &str = r#"must be {"ops": [{"op": "put", "key": "a", "value": "text"}, {"op": "get", "key": "b"}, {"op": "delete", "key": "c"}]} (put also takes value_b64, ttl_ms, if_version, if_absent; get takes stale)"#;

/// Validates a batch body as the handler does, without sending anything:
/// the number of items, or the error the request would get (the fuzzer's
/// entry point).
pub fn check(body: &[u8], limits: &Limits) -> Result<usize, ApiError> {
    plan(body, limits).map(|items| items.len())
}

/// Parses and bounds a batch body: the whole batch is refused (400 or
/// 413 naming the item) before any item is sent.
fn plan(body: &[u8], limits: &Limits) -> Result<Vec<(&'static str, Planned)>, ApiError> {
    let b: BatchBody = crate::params::json_object(body, SHAPE)?;
    if b.ops.is_empty() || b.ops.len() > BATCH_ITEMS_MAX {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {BATCH_ITEMS_MAX} ops; this one has {}",
            b.ops.len()
        )));
    }
    b.ops.into_iter().enumerate().map(|(i, item)| plan_item(i, item, limits)).collect()
}

fn plan_item(i: usize, item: Item, limits: &Limits) -> Result<(&'static str, Planned), ApiError> {
    let at = |e: ApiError| ApiError { message: format!("ops[{i}]: {}", e.message), ..e };
    let key = |k: String| -> Result<Vec<u8>, ApiError> {
        if k.is_empty() {
            return Err(at(ApiError::bad_request("key must not be empty")));
        }
        if k.len() > limits.key_bytes_max {
            return Err(at(ApiError::too_large("key", k.len(), limits.key_bytes_max)));
        }
        Ok(k.into_bytes())
    };
    Ok(match item {
        Item::Put { key: k, value, value_b64, ttl_ms, if_version, if_absent } => {
            let value = match (value, value_b64) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|_| at(ApiError::bad_request("value_b64 is not base64")))?,
                _ => return Err(at(ApiError::bad_request("a put takes one of value and value_b64"))),
            };
            if value.len() > limits.value_bytes_max {
                return Err(at(ApiError::too_large("value", value.len(), limits.value_bytes_max)));
            }
            if let Some(t) = ttl_ms.filter(|t| *t == 0 || *t > limits.ttl_ms_max) {
                return Err(at(ApiError::bad_request(format!(
                    "ttl_ms must be a whole number from 1 to {}; got {t}",
                    limits.ttl_ms_max
                ))));
            }
            let cond = match (if_version, if_absent) {
                (Some(v), false) => Precondition::IfVersion(v),
                (None, true) => Precondition::IfAbsent,
                (None, false) => Precondition::Always,
                (Some(_), true) => return Err(at(ApiError::bad_request("give if_version or if_absent, not both"))),
            };
            let key = key(k)?;
            ("put", Planned::Write { key: key.clone(), cmd: Command::Put { key, value, ttl_ms, cond, fence: None } })
        }
        Item::Get { key: k, stale } => ("get", Planned::Read { key: key(k)?, stale }),
        Item::Delete { key: k, if_version } => {
            let key = key(k)?;
            let cond = if_version.map_or(Precondition::Always, Precondition::IfVersion);
            ("delete", Planned::Write { key: key.clone(), cmd: Command::Delete { key, cond, fence: None } })
        }
    })
}

/// The items grouped by key, each group in the order sent.
fn by_key(items: Vec<(&'static str, Planned)>) -> Vec<Vec<(usize, &'static str, Planned)>> {
    let mut lanes: Vec<Vec<(usize, &'static str, Planned)>> = Vec::new();
    let mut lane_of: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for (i, (op, planned)) in items.into_iter().enumerate() {
        let key = match &planned {
            Planned::Write { key, .. } | Planned::Read { key, .. } => key.clone(),
        };
        let lane = *lane_of.entry(key).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push((i, op, planned));
    }
    lanes
}

/// Item `i`'s request id: derived from the batch's idempotency key, so a
/// resent batch names the same writes; fresh otherwise.
fn item_request(batch: Option<Request>, i: usize) -> Request {
    match batch {
        Some(r) => Request { id: r.id.wrapping_add(i as u128), retry: true },
        None => Request::first(new_request_id()),
    }
}

/// One item's answer, in the shape of the single-key routes' bodies.
fn answer(op: &'static str, reply: Result<ShardReply, ApiError>) -> Value {
    let v = match reply {
        Ok(ShardReply::Outcome(Outcome::Written { version })) => json!({ "ok": true, "version": version }),
        Ok(ShardReply::Outcome(Outcome::Deleted { version })) => {
            json!({ "ok": true, "deleted": true, "version": version })
        }
        Ok(ShardReply::Value { value: Some(v), .. }) => {
            let mut o = json!({ "ok": true, "version": v.version, "expires_at_ms": v.expires_at_ms });
            crate::kv::put_value(&mut o, v.data);
            o
        }
        Ok(ShardReply::Value { value: None, .. }) => error_item(StoreError::NotFound.into()),
        Ok(ShardReply::Outcome(o)) => {
            error_item(ApiError::from(StoreError::Internal(format!("unexpected outcome {o:?}"))))
        }
        Ok(other) => error_item(crate::kv::unexpected(other)),
        Err(e) => error_item(e),
    };
    let code = v["error"]["code"].as_str().unwrap_or("ok").to_string();
    BATCH_RESULTS.with_label_values(&[op, &code]).inc();
    v
}

fn error_item(e: ApiError) -> Value {
    json!({ "ok": false, "status": e.status.as_u16(), "error": { "code": e.code, "message": e.message } })
}

pub async fn batch(req: HttpRequest, raw: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Params::parse(req.query_string(), &[])?;
    let idem = parse_idempotency_key(header(req.headers(), "idempotency-key"))?;
    let timeout: Duration = deadline(&req, &state)?;
    let items = plan(&raw, &state.limits)?;
    for (i, (_, planned)) in items.iter().enumerate() {
        let (scope, key) = match planned {
            Planned::Write { key, .. } => (crate::auth::Scope::Write, key),
            Planned::Read { key, .. } => (crate::auth::Scope::Read, key),
        };
        crate::auth::allow(&req, scope, key)
            .map_err(|e| ApiError { message: format!("ops[{i}]: {}", e.message), ..e })?;
    }
    BATCH_ITEMS.observe(items.len() as f64);
    let start = std::time::Instant::now();
    let n = items.len();
    let send = |i: usize, planned: Planned| {
        let state = &state;
        async move {
            let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
            match planned {
                Planned::Write { key, cmd } => {
                    route(state, key, ShardOp::write_as(cmd, item_request(idem, i)), left).await
                }
                Planned::Read { key, stale } => route(state, key.clone(), ShardOp::Read { key, stale }, left).await,
            }
        }
    };
    // Keys run in parallel; one key's items run in the order sent, so a
    // get after a put of the same key sees it.
    let lanes = by_key(items).into_iter().map(|lane| async move {
        let mut out = Vec::with_capacity(lane.len());
        for (i, op, planned) in lane {
            out.push((i, answer(op, send(i, planned).await)));
        }
        out
    });
    let mut results = vec![Value::Null; n];
    for (i, v) in futures::future::join_all(lanes).await.into_iter().flatten() {
        results[i] = v;
    }
    let failed = results.iter().filter(|r| r["ok"] == false).count();
    tracing::debug!(items = results.len(), failed, "batch answered");
    Ok(HttpResponse::Ok().json(json!({ "results": results, "failed": failed })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_batch_plans_each_item_or_refuses_the_whole() {
        let body = br#"{"ops": [
            {"op": "put", "key": "a", "value": "x", "ttl_ms": 5, "if_version": 3},
            {"op": "put", "key": "b", "value_b64": "AP8=", "if_absent": true},
            {"op": "get", "key": "a", "stale": true},
            {"op": "delete", "key": "c"}
        ]}"#;
        let p = plan(body, &l()).unwrap();
        assert_eq!(p.iter().map(|(op, _)| *op).collect::<Vec<_>>(), ["put", "put", "get", "delete"]);
        let Planned::Write { cmd: Command::Put { value, cond, ttl_ms, .. }, .. } = &p[0].1 else { panic!() };
        assert_eq!((value.as_slice(), *cond, *ttl_ms), (&b"x"[..], Precondition::IfVersion(3), Some(5)));
        let Planned::Write { cmd: Command::Put { value, cond, .. }, .. } = &p[1].1 else { panic!() };
        assert_eq!((value.as_slice(), *cond), (&[0u8, 255][..], Precondition::IfAbsent));
        assert_eq!(p[2].1, Planned::Read { key: b"a".to_vec(), stale: true });

        let refused = |body: &str| plan(body.as_bytes(), &l()).unwrap_err();
        for (body, status, says) in [
            (r#"{"ops": []}"#, StatusCode::BAD_REQUEST, "1 to 1000"),
            (r#"[1]"#, StatusCode::BAD_REQUEST, r#"{"ops""#),
            (r#"{"ops": [{"op": "merge", "key": "a"}]}"#, StatusCode::BAD_REQUEST, r#"{"ops""#),
            (r#"{"ops": [{"op": "get", "key": "a", "value": "x"}]}"#, StatusCode::BAD_REQUEST, "value"),
            (r#"{"ops": [{"op": "get", "key": ""}]}"#, StatusCode::BAD_REQUEST, "ops[0]: key must not be empty"),
            (r#"{"ops": [{"op": "put", "key": "a"}]}"#, StatusCode::BAD_REQUEST, "ops[0]: a put takes one of"),
            (
                r#"{"ops": [{"op": "get", "key": "a"}, {"op": "put", "key": "a", "value_b64": "*"}]}"#,
                StatusCode::BAD_REQUEST,
                "ops[1]: value_b64",
            ),
            (r#"{"ops": [{"op": "put", "key": "a", "value": "v", "ttl_ms": 0}]}"#, StatusCode::BAD_REQUEST, "ttl_ms"),
            (
                r#"{"ops": [{"op": "put", "key": "a", "value": "v", "if_version": 1, "if_absent": true}]}"#,
                StatusCode::BAD_REQUEST,
                "not both",
            ),
        ] {
            let e = refused(body);
            assert_eq!(e.status, status, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
            assert!(!e.message.contains("struct") && !e.message.contains("Item"), "{}", e.message);
        }
        let long = format!(r#"{{"ops": [{{"op": "get", "key": "{}"}}]}}"#, "k".repeat(4097));
        assert_eq!(refused(&long).status, StatusCode::PAYLOAD_TOO_LARGE);
        let many = format!(r#"{{"ops": [{}]}}"#, vec![r#"{"op": "get", "key": "k"}"#; 1001].join(","));
        assert!(refused(&many).message.contains("has 1001"));
    }

    #[test]
    fn one_keys_items_keep_their_order() {
        let p = plan(
            br#"{"ops": [{"op": "put", "key": "a", "value": "1"}, {"op": "get", "key": "b"},
            {"op": "get", "key": "a"}, {"op": "delete", "key": "a"}]}"#,
            &l(),
        )
        .unwrap();
        let lanes: Vec<Vec<usize>> = by_key(p).iter().map(|l| l.iter().map(|(i, _, _)| *i).collect()).collect();
        assert_eq!(lanes, [vec![0, 2, 3], vec![1]]);
    }

    #[test]
    fn a_resent_batch_names_the_same_writes() {
        let key = Some(Request { id: u128::MAX - 1, retry: true });
        assert_eq!(item_request(key, 0).id, u128::MAX - 1);
        assert_eq!(item_request(key, 3).id, 1, "wraps");
        assert_ne!(item_request(None, 0).id, item_request(None, 0).id);
    }

    #[test]
    fn answers_keep_the_single_routes_shapes() {
        let v = answer("put", Ok(ShardReply::Outcome(Outcome::Written { version: 9 })));
        assert_eq!(v, json!({ "ok": true, "version": 9 }));
        let v = answer("get", Err(StoreError::PreconditionFailed { current: Some(2) }.into()));
        assert_eq!(
            (v["ok"].clone(), v["status"].clone(), v["error"]["code"].clone()),
            (json!(false), json!(412), json!("precondition_failed"))
        );
    }
}
