//! `POST /v1/txn`: compare keys of one shard, then run the `then` or the
//! `else` list of puts, deletes and gets, atomically, in one Raft entry
//! (see `ringstore_shared::txn`). Keys on more than one shard are a 400
//! naming the shards; a hash tag (`{user42}/a`, `{user42}/b`) keeps keys
//! together.
//!
//! With `Idempotency-Key`, a transaction sent again after a lost answer
//! runs once and answers what it did the first time.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use prometheus::{register_histogram, register_int_counter_vec, Histogram, IntCounterVec};
use ringstore_shared::apply::Outcome;
use ringstore_shared::command::Command;
use ringstore_shared::config::Limits;
use ringstore_shared::txn::{CmpOp, Compare, Target, Txn, TxnOp, TxnResult, TXN_ITEMS_MAX};
use ringstore_shared::ShardId;
use ringstore_storage::{ShardOp, ShardReply};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::kv::{deadline, request_id, route, unexpected};
use crate::params::Params;
use crate::ApiState;

/// A transaction's body: room for a full-size value and change, as its
/// entry travels in one Raft message.
pub const TXN_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Gets in one transaction: each may return a value at the value limit,
/// and the answer is kept with the request id for retries.
pub const TXN_GETS_MAX: usize = 8;

static TXNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ringstore_txns_total",
        "Transactions answered, by branch taken (then, else) or the error code",
        &["result"]
    )
    .expect("registers once")
});

static TXN_ITEMS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "ringstore_txn_items",
        "Compares and operations per POST /v1/txn",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    )
    .expect("registers once")
});

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    then: Vec<OpBody>,
    #[serde(default, rename = "else")]
    otherwise: Vec<OpBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    version: Option<u64>,
    value: Option<String>,
    value_b64: Option<String>,
    exists: Option<bool>,
    cmp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum OpBody {
    Put { key: String, value: Option<String>, value_b64: Option<String>, ttl_ms: Option<u64> },
    Get { key: String },
    Delete { key: String },
}

const SHAPE: &str = r#"must be {"compare": [{"key": "{u1}/a", "version": 3}], "then": [{"op": "put", "key": "{u1}/a", "value": "x"}], "else": [{"op": "get", "key": "{u1}/a"}]} (a compare takes one of version, value, value_b64 and exists, and cmp "=", "!=", "<" or ">"; ops are put (value or value_b64, ttl_ms), get and delete)"#;

fn b64(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("{what} is not base64")))
}

/// Validates a transaction body as the handler does, without sending
/// anything: its number of items, or the error the request would get (the
/// fuzzer's entry point).
pub fn check(body: &[u8], limits: &Limits) -> Result<usize, ApiError> {
    plan(body, limits).map(|t| t.compares.len() + t.then.len() + t.otherwise.len())
}

/// Parses and bounds a transaction: refused whole (400 or 413 naming the
/// item) before anything is sent.
fn plan(body: &[u8], limits: &Limits) -> Result<Txn, ApiError> {
    let b: TxnBody = crate::params::json_object(body, SHAPE)?;
    let items = b.compare.len() + b.then.len() + b.otherwise.len();
    if items == 0 || items > TXN_ITEMS_MAX {
        return Err(ApiError::bad_request(format!(
            "a transaction holds 1 to {TXN_ITEMS_MAX} compares and ops; this one has {items}"
        )));
    }
    let key = |at: &str, k: String| -> Result<Vec<u8>, ApiError> {
        if k.is_empty() {
            return Err(ApiError::bad_request(format!("{at}: key must not be empty")));
        }
        if k.len() > limits.key_bytes_max {
            let e = ApiError::too_large("key", k.len(), limits.key_bytes_max);
            return Err(ApiError { message: format!("{at}: {}", e.message), ..e });
        }
        Ok(k.into_bytes())
    };
    let value = |at: &str, v: Vec<u8>| -> Result<Vec<u8>, ApiError> {
        if v.len() > limits.value_bytes_max {
            let e = ApiError::too_large("value", v.len(), limits.value_bytes_max);
            return Err(ApiError { message: format!("{at}: {}", e.message), ..e });
        }
        Ok(v)
    };
    let mut compares = Vec::with_capacity(b.compare.len());
    for (i, c) in b.compare.into_iter().enumerate() {
        let at = format!("compare[{i}]");
        let op = match c.cmp.as_deref() {
            None | Some("=") | Some("==") => CmpOp::Equal,
            Some("!=") => CmpOp::NotEqual,
            Some("<") => CmpOp::Less,
            Some(">") => CmpOp::Greater,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{at}: cmp must be \"=\", \"!=\", \"<\" or \">\"; got {other:?}"
                )))
            }
        };
        let target = match (c.version, c.value, c.value_b64, c.exists) {
            (Some(v), None, None, None) => Target::Version(v),
            (None, Some(v), None, None) => Target::Value(value(&at, v.into_bytes())?),
            (None, None, Some(v), None) => Target::Value(value(&at, b64(&format!("{at}: value_b64"), &v)?)?),
            (None, None, None, Some(e)) => {
                if matches!(op, CmpOp::Less | CmpOp::Greater) {
                    return Err(ApiError::bad_request(format!("{at}: exists compares with \"=\" or \"!=\" only")));
                }
                Target::Exists(e)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{at}: a compare takes exactly one of version, value, value_b64 and exists"
                )))
            }
        };
        compares.push(Compare { key: key(&at, c.key)?, op, target });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for ((name, ops), out) in [("then", b.then), ("else", b.otherwise)].into_iter().zip(&mut branches) {
        let mut gets = 0;
        for (i, op) in ops.into_iter().enumerate() {
            let at = format!("{name}[{i}]");
            out.push(match op {
                OpBody::Put { key: k, value: v, value_b64, ttl_ms } => {
                    let v = match (v, value_b64) {
                        (Some(v), None) => v.into_bytes(),
                        (None, Some(b)) => b64(&format!("{at}: value_b64"), &b)?,
                        _ => return Err(ApiError::bad_request(format!("{at}: a put takes one of value and value_b64"))),
                    };
                    if let Some(t) = ttl_ms.filter(|t| *t == 0 || *t > limits.ttl_ms_max) {
                        return Err(ApiError::bad_request(format!(
                            "{at}: ttl_ms must be a whole number from 1 to {}; got {t}",
                            limits.ttl_ms_max
                        )));
                    }
                    TxnOp::Put { key: key(&at, k)?, value: value(&at, v)?, ttl_ms }
                }
                OpBody::Delete { key: k } => TxnOp::Delete { key: key(&at, k)? },
                OpBody::Get { key: k } => {
                    gets += 1;
                    if gets > TXN_GETS_MAX {
                        return Err(ApiError::bad_request(format!(
                            "{at}: a branch holds at most {TXN_GETS_MAX} gets (use GET /v1/kv or POST /v1/kv:batch for more)"
                        )));
                    }
                    TxnOp::Get { key: key(&at, k)? }
                }
            });
        }
    }
    let [then, otherwise] = branches;
    Ok(Txn { compares, then, otherwise })
}

/// The one shard every key of `txn` is on, by `shard_for`; otherwise a
/// 400 naming the shards and a key of each.
fn one_shard(txn: &Txn, shard_for: impl Fn(&[u8]) -> Option<ShardId>) -> Result<ShardId, ApiError> {
    let mut shards: BTreeMap<ShardId, &[u8]> = BTreeMap::new();
    for k in txn.keys() {
        let shard = shard_for(k).ok_or_else(|| {
            ApiError::from(ringstore_shared::StoreError::Unavailable { reason: "no shard owns the key yet".into() })
        })?;
        shards.entry(shard).or_insert(k);
    }
    match shards.len() {
        1 => Ok(*shards.keys().next().unwrap_or(&0)),
        _ => {
            let named: Vec<String> =
                shards.iter().map(|(s, k)| format!("shard {s} ({:?})", String::from_utf8_lossy(k))).collect();
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "cross_shard",
                format!(
                    "a transaction's keys must be on one shard; these are on {}. Keys that share a hash tag share a \
                     shard: {{user42}}/a and {{user42}}/b",
                    named.join(", ")
                ),
            ))
        }
    }
}

fn answer(succeeded: bool, results: Vec<TxnResult>, keys: &[Vec<u8>]) -> Value {
    let results: Vec<Value> = results
        .into_iter()
        .zip(keys)
        .map(|(r, key)| {
            let key = String::from_utf8_lossy(key).into_owned();
            match r {
                TxnResult::Put { version } => json!({ "op": "put", "key": key, "version": version }),
                TxnResult::Delete { deleted: Some(v) } => {
                    json!({ "op": "delete", "key": key, "deleted": true, "version": v })
                }
                TxnResult::Delete { deleted: None } => json!({ "op": "delete", "key": key, "deleted": false }),
                TxnResult::Get { value: None } => json!({ "op": "get", "key": key, "found": false }),
                TxnResult::Get { value: Some(v) } => {
                    let mut o = json!({
                        "op": "get", "key": key, "found": true, "version": v.version, "expires_at_ms": v.expires_at_ms
                    });
                    crate::kv::put_value(&mut o, v.data);
                    o
                }
            }
        })
        .collect();
    json!({ "succeeded": succeeded, "results": results })
}

pub async fn txn(req: HttpRequest, raw: web::Bytes, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let result = run(&req, &raw, &state).await;
    let label = match &result {
        Ok((true, _)) => "then",
        Ok((false, _)) => "else",
        Err(e) => e.code,
    };
    TXNS.with_label_values(&[label]).inc();
    result.map(|(_, body)| HttpResponse::Ok().json(body))
}

async fn run(req: &HttpRequest, raw: &[u8], state: &ApiState) -> Result<(bool, Value), ApiError> {
    Params::parse(req.query_string(), &[])?;
    let request = request_id(req)?;
    let timeout = deadline(req, state)?;
    let txn = plan(raw, &state.limits)?;
    // Compares and gets read; puts and deletes write.
    for op in txn.then.iter().chain(&txn.otherwise) {
        let scope = match op {
            TxnOp::Get { .. } => crate::auth::Scope::Read,
            TxnOp::Put { .. } | TxnOp::Delete { .. } => crate::auth::Scope::Write,
        };
        crate::auth::allow(req, scope, op.key())?;
    }
    for c in &txn.compares {
        crate::auth::allow(req, crate::auth::Scope::Read, &c.key)?;
    }
    TXN_ITEMS.observe(txn.items() as f64);
    let table = state.map.load();
    let shard = one_shard(&txn, |k| table.shard_for(k))?;
    // Kept to name each result's key; the command takes the transaction.
    let keys = |ops: &[TxnOp]| ops.iter().map(|o| o.key().to_vec()).collect::<Vec<_>>();
    let (then, otherwise) = (keys(&txn.then), keys(&txn.otherwise));
    let first = txn.keys().next().map(<[u8]>::to_vec).unwrap_or_default();
    let op = ShardOp::write_as(Command::Txn(txn), request);
    match route(state, first, op, timeout).await? {
        ShardReply::Outcome(Outcome::Txn { succeeded, results }) => {
            tracing::debug!(shard, succeeded, ops = results.len(), "transaction applied");
            let ops = if succeeded { &then } else { &otherwise };
            Ok((succeeded, answer(succeeded, results, ops)))
        }
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_transaction_plans_every_item_or_refuses_the_whole() {
        let txn = plan(
            br#"{"compare": [{"key": "{u}a", "version": 0}, {"key": "{u}b", "value": "x", "cmp": "!="},
                {"key": "{u}c", "value_b64": "AP8=", "cmp": ">"}, {"key": "{u}d", "exists": true}],
              "then": [{"op": "put", "key": "{u}a", "value": "1", "ttl_ms": 5}, {"op": "get", "key": "{u}b"}],
              "else": [{"op": "delete", "key": "{u}c"}]}"#,
            &l(),
        )
        .unwrap();
        assert_eq!(txn.compares[0].target, Target::Version(0));
        assert_eq!((txn.compares[1].op, &txn.compares[1].target), (CmpOp::NotEqual, &Target::Value(b"x".to_vec())));
        assert_eq!(txn.compares[2].target, Target::Value(vec![0, 255]));
        assert_eq!(txn.compares[3].target, Target::Exists(true));
        assert_eq!(txn.then[0], TxnOp::Put { key: b"{u}a".to_vec(), value: b"1".to_vec(), ttl_ms: Some(5) });
        assert_eq!(txn.otherwise, vec![TxnOp::Delete { key: b"{u}c".to_vec() }]);

        let gets = format!(r#"{{"then": [{}]}}"#, [r#"{"op": "get", "key": "k"}"#; TXN_GETS_MAX + 1].join(","));
        let many = format!(r#"{{"then": [{}]}}"#, vec![r#"{"op": "delete", "key": "k"}"#; TXN_ITEMS_MAX + 1].join(","));
        for (body, says) in [
            ("{}", "1 to 128"),
            ("[]", "must be {"),
            (r#"{"compare": [{"key": "a"}]}"#, "compare[0]: a compare takes exactly one"),
            (r#"{"compare": [{"key": "a", "version": 1, "exists": true}]}"#, "exactly one"),
            (r#"{"compare": [{"key": "a", "exists": true, "cmp": "<"}]}"#, "compare[0]: exists compares"),
            (r#"{"compare": [{"key": "a", "version": 1, "cmp": "~"}]}"#, r#"cmp must be"#),
            (r#"{"compare": [{"key": "", "version": 1}]}"#, "compare[0]: key must not be empty"),
            (r#"{"then": [{"op": "put", "key": "a"}]}"#, "then[0]: a put takes one of"),
            (r#"{"else": [{"op": "put", "key": "a", "value_b64": "*"}]}"#, "else[0]: value_b64 is not base64"),
            (r#"{"then": [{"op": "put", "key": "a", "value": "v", "ttl_ms": 0}]}"#, "then[0]: ttl_ms"),
            (r#"{"then": [{"op": "merge", "key": "a"}]}"#, "must be {"),
            (r#"{"then": [], "when": []}"#, "must be {"),
            (&gets, "then[8]: a branch holds at most 8 gets"),
            (&many, "this one has 129"),
        ] {
            let e = plan(body.as_bytes(), &l()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
            assert!(!e.message.contains("struct") && !e.message.contains("OpBody"), "{}", e.message);
        }
        let long = format!(r#"{{"then": [{{"op": "get", "key": "{}"}}]}}"#, "k".repeat(4097));
        let e = plan(long.as_bytes(), &l()).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.starts_with("then[0]: key"), "{}", e.message);
    }

    #[test]
    fn keys_on_two_shards_are_named() {
        let txn =
            plan(br#"{"compare": [{"key": "a", "exists": true}], "then": [{"op": "get", "key": "b"}]}"#, &l()).unwrap();
        assert_eq!(one_shard(&txn, |_| Some(3)).unwrap(), 3);
        let e = one_shard(&txn, |k| Some(if k == b"a" { 1 } else { 2 })).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "cross_shard"));
        assert!(e.message.contains(r#"shard 1 ("a"), shard 2 ("b")"#), "{}", e.message);
        assert!(e.message.contains("{user42}/a"), "{}", e.message);
    }

    #[test]
    fn results_name_their_keys_in_the_single_routes_shapes() {
        let ops = [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()];
        let value = ringstore_shared::value::StoredValue { version: 2, expires_at_ms: None, data: vec![0xff] };
        let results = vec![
            TxnResult::Put { version: 7 },
            TxnResult::Get { value: Some(value) },
            TxnResult::Get { value: None },
            TxnResult::Delete { deleted: Some(5) },
        ];
        assert_eq!(
            answer(true, results, &ops),
            json!({ "succeeded": true, "results": [
                { "op": "put", "key": "a", "version": 7 },
                { "op": "get", "key": "b", "found": true, "version": 2, "expires_at_ms": null, "value_b64": "/w==" },
                { "op": "get", "key": "c", "found": false },
                { "op": "delete", "key": "d", "deleted": true, "version": 5 },
            ]})
        );
    }
}
