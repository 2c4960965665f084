//! [`KvClient::txn`]: compare keys of one shard, then run one list of
//! operations or the other, atomically (`POST /v1/txn`). Keys that share a
//! hash tag (`{user42}/a`, `{user42}/b`) are on one shard.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::kv::{error, json_of, unparsable, value_of, KvClient, KvError};

/// How a key's state compares with a compare's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl Cmp {
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Equal => "=",
            Cmp::NotEqual => "!=",
            Cmp::Less => "<",
            Cmp::Greater => ">",
        }
    }
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's version (0 when it does not exist) against `version`.
    Version { key: String, cmp: Cmp, version: u64 },
    /// The key's value, bytewise (a missing key fails it).
    Value { key: String, cmp: Cmp, value: Vec<u8> },
    /// Whether the key exists.
    Exists { key: String, exists: bool },
}

/// One operation of a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Get { key: String },
    Delete { key: String },
}

/// One operation's answer, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    Written {
        version: u64,
    },
    /// The version deleted, `None` if the key did not exist.
    Deleted {
        version: Option<u64>,
    },
    /// The value and version, `None` if the key did not exist.
    Value(Option<(Vec<u8>, u64)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAnswer {
    /// Every compare held and `then` ran; otherwise `otherwise` ran.
    pub succeeded: bool,
    pub results: Vec<TxnResult>,
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn body(compare: &[Compare], then: &[TxnOp], otherwise: &[TxnOp]) -> Value {
    let compare: Vec<Value> = compare
        .iter()
        .map(|c| match c {
            Compare::Version { key, cmp, version } => json!({ "key": key, "cmp": cmp.as_str(), "version": version }),
            Compare::Value { key, cmp, value } => json!({ "key": key, "cmp": cmp.as_str(), "value_b64": b64(value) }),
            Compare::Exists { key, exists } => json!({ "key": key, "exists": exists }),
        })
        .collect();
    let ops = |ops: &[TxnOp]| -> Vec<Value> {
        ops.iter()
            .map(|op| match op {
                TxnOp::Put { key, value } => json!({ "op": "put", "key": key, "value_b64": b64(value) }),
                TxnOp::Get { key } => json!({ "op": "get", "key": key }),
                TxnOp::Delete { key } => json!({ "op": "delete", "key": key }),
            })
            .collect()
    };
    json!({ "compare": compare, "then": ops(then), "else": ops(otherwise) })
}

fn results(v: &Value) -> Result<TxnAnswer, KvError> {
    let succeeded = v["succeeded"].as_bool().ok_or_else(|| unparsable("no succeeded"))?;
    let results = v["results"].as_array().ok_or_else(|| unparsable("no results"))?;
    let results = results
        .iter()
        .map(|r| {
            Ok(match r["op"].as_str() {
                Some("put") => TxnResult::Written { version: r["version"].as_u64().unwrap_or(0) },
                Some("delete") => TxnResult::Deleted { version: r["version"].as_u64() },
                Some("get") if r["found"] == true => {
                    TxnResult::Value(Some((value_of(r)?, r["version"].as_u64().unwrap_or(0))))
                }
                Some("get") => TxnResult::Value(None),
                _ => return Err(unparsable("a result without its op")),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(TxnAnswer { succeeded, results })
}

impl KvClient {
    /// If every `compare` holds, runs `then`, otherwise `otherwise`, in
    /// one atomic step on the keys' shard. Sent again after a lost answer,
    /// it runs once (the call's idempotency key). Keys on two shards are a
    /// 400 (`cross_shard`): give keys that go together one hash tag.
    pub async fn txn(&self, compare: &[Compare], then: &[TxnOp], otherwise: &[TxnOp]) -> Result<TxnAnswer, KvError> {
        let b = body(compare, then, otherwise).to_string().into_bytes();
        let (status, answer) =
            self.send(awc::http::Method::POST, "/v1/txn", Some(("application/json", b)), &[], None).await?;
        match status {
            200 => results(&json_of(&answer)?),
            s => Err(error(s, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_answers_match_the_api() {
        let b = body(
            &[
                Compare::Version { key: "{u}a".into(), cmp: Cmp::Equal, version: 0 },
                Compare::Value { key: "{u}b".into(), cmp: Cmp::Greater, value: vec![0xff] },
                Compare::Exists { key: "{u}c".into(), exists: true },
            ],
            &[TxnOp::Put { key: "{u}a".into(), value: b"x".to_vec() }],
            &[TxnOp::Get { key: "{u}a".into() }, TxnOp::Delete { key: "{u}b".into() }],
        );
        assert_eq!(
            b,
            json!({
                "compare": [
                    { "key": "{u}a", "cmp": "=", "version": 0 },
                    { "key": "{u}b", "cmp": ">", "value_b64": "/w==" },
                    { "key": "{u}c", "exists": true },
                ],
                "then": [{ "op": "put", "key": "{u}a", "value_b64": "eA==" }],
                "else": [{ "op": "get", "key": "{u}a" }, { "op": "delete", "key": "{u}b" }],
            })
        );
        let answer = json!({ "succeeded": false, "results": [
            { "op": "get", "key": "{u}a", "found": true, "version": 4, "value": "v" },
            { "op": "get", "key": "{u}x", "found": false },
            { "op": "delete", "key": "{u}b", "deleted": false },
            { "op": "put", "key": "{u}a", "version": 9 },
        ]});
        assert_eq!(
            results(&answer).unwrap(),
            TxnAnswer {
                succeeded: false,
                results: vec![
                    TxnResult::Value(Some((b"v".to_vec(), 4))),
                    TxnResult::Value(None),
                    TxnResult::Deleted { version: None },
                    TxnResult::Written { version: 9 },
                ],
            }
        );
        assert!(results(&json!({ "results": [] })).is_err());
    }
}
