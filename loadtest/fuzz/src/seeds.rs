//! Valid inputs for each target, from the real encoders: the corpus the
//! mutations start from (`ringstore-fuzz --write-corpus` writes them).

use std::collections::BTreeMap;
use std::sync::Arc;

use raft::eraftpb::{Entry, Message as RaftMessage, MessageType, Snapshot};
use ringstore_peer::wire::{self, Hello, RejectReason};
use ringstore_shared::cluster_map::{ClusterMap, NodeInfo, NodeState};
use ringstore_shared::command::{self, Request};
use ringstore_shared::lock::{FenceRecord, Holder, LockRecord, Queued};
use ringstore_shared::value::StoredValue;
use ringstore_shared::StoreError;
use ringstore_storage::{ShardOp, ShardReply};

use crate::targets::{self, Parser, Target};

pub fn of(target: Target) -> Vec<Vec<u8>> {
    match target {
        Target::PeerFrame => peer_frames(),
        Target::SnapshotStream => snapshot_streams(),
        Target::EntryCodecs => entry_codecs(),
        Target::HttpRequest => http_requests(),
    }
}

fn raft_messages() -> Vec<RaftMessage> {
    let mut append = RaftMessage::default();
    append.set_msg_type(MessageType::MsgAppend);
    append.to = 2;
    append.from = 1;
    append.term = 7;
    append.log_term = 6;
    append.index = 41;
    append.commit = 40;
    let entries: Vec<Entry> = command::samples()
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, p)| Entry { term: 7, index: 42 + i as u64, data: p.encode().into(), ..Default::default() })
        .collect();
    append.set_entries(entries.into());
    let mut heartbeat = RaftMessage::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.to = 3;
    heartbeat.commit = 12;
    heartbeat.context = b"read-index-ctx".to_vec().into();
    let mut vote = RaftMessage::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.term = 9;
    vote.index = 100;
    vote.log_term = 8;
    vec![append, heartbeat, vote]
}

fn snapshot_message(bytes: usize) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.to = 3;
    let mut s = Snapshot { data: (0..bytes).map(|i| (i * 7) as u8).collect::<Vec<u8>>().into(), ..Default::default() };
    s.mut_metadata().index = 99;
    s.mut_metadata().term = 4;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    m.set_snapshot(s);
    m
}

fn peer_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        f(&mut b);
        out.push(b);
    };
    push(&|b| wire::encode_hello(b, &Hello { cluster_id: 0xfeed, from: 2, to: 1 }));
    push(&|b| wire::encode_welcome(b, 0xfeed, 1));
    push(&|b| wire::encode_reject(b, RejectReason::ClusterMismatch, "another cluster"));
    push(&|b| wire::encode_ping(b, 12345));
    push(&|b| wire::encode_pong(b, 12345));
    for m in raft_messages() {
        push(&|b| wire::encode_raft(b, 3, std::slice::from_ref(&m)).expect("encodes"));
    }
    push(&|b| wire::encode_raft(b, 1, &raft_messages()).expect("encodes"));
    let ops = [
        ShardOp::Write { cmd: Arc::new(command::samples()[1].cmd.clone()), request: Request { id: 17, retry: true } },
        ShardOp::Read { key: b"k".to_vec(), stale: false },
        ShardOp::Status,
        ShardOp::Acquire {
            name: "lock".into(),
            owner: "me".into(),
            ttl_ms: 5000,
            wait_ms: 100,
            session: Some(7),
            request: Request::first(3),
        },
        ShardOp::LockStatus { name: "lock".into() },
        ShardOp::Scan { prefix: b"app/".to_vec(), after: Some(b"app/a".to_vec()), limit: 100, keys_only: true },
    ];
    for (i, op) in ops.iter().enumerate() {
        push(&|b| wire::encode_request(b, i as u64, 2, op, i % 2 == 0));
    }
    let results: [ringstore_storage::ShardResult; 5] = [
        Ok(ShardReply::Value {
            value: Some(StoredValue { version: 5, expires_at_ms: Some(99), data: b"v".to_vec() }),
            applied_index: 9,
        }),
        Ok(ShardReply::Items {
            items: vec![(b"a".to_vec(), StoredValue { version: 1, expires_at_ms: None, data: vec![1, 2] })],
            more: true,
            epoch: 3,
        }),
        Ok(ShardReply::Map(Some(vec![1, 2, 3]))),
        Err(StoreError::NotLeader { shard: 2, hint: Some(3) }),
        Err(StoreError::Unreachable { node: 4 }),
    ];
    for (i, r) in results.iter().enumerate() {
        push(&|b| wire::encode_response(b, i as u64, r));
    }
    push(&|b| wire::encode_snapshot(b, 5, 1, &snapshot_message(300)).expect("encodes"));
    out
}

fn snapshot_streams() -> Vec<Vec<u8>> {
    // One chunk as nodes send it (1 MiB chunks), and streams of several
    // small chunks, so mutations reach the order and digest checks.
    let mut out = Vec::new();
    let mut one = Vec::new();
    wire::encode_snapshot(&mut one, 2, 1, &snapshot_message(64)).expect("encodes");
    out.push(one);
    for (i, (bytes, chunk)) in [(600usize, 128usize), (2000, 700), (3000, 1000)].into_iter().enumerate() {
        let mut b = Vec::new();
        wire::encode_snapshot_in(&mut b, 3, i as u64 + 2, &snapshot_message(bytes), chunk).expect("encodes");
        out.push(b);
    }
    out
}

fn entry_codecs() -> Vec<Vec<u8>> {
    let tagged = |tag: u8, bytes: Vec<u8>| {
        let mut v = vec![tag];
        v.extend(bytes);
        v
    };
    let mut out: Vec<Vec<u8>> =
        command::samples().iter().map(|p| tagged(targets::CODEC_PROPOSAL, p.encode())).collect();
    let nodes: BTreeMap<u64, NodeInfo> = (1..=4)
        .map(|i| (i, NodeInfo::new(format!("10.0.0.{i}:8080"), format!("10.0.0.{i}:7080"), NodeState::Up)))
        .collect();
    if let Ok(map) = ClusterMap::bootstrap(nodes, 8, 3) {
        out.push(tagged(targets::CODEC_CLUSTER_MAP, map.encode()));
        out.push(tagged(targets::CODEC_CLUSTER_MAP, map.next().encode()));
    }
    for v in [
        StoredValue { version: 1, expires_at_ms: None, data: vec![] },
        StoredValue { version: u64::MAX, expires_at_ms: Some(1_700_000_000_000), data: b"hello".to_vec() },
    ] {
        out.push(tagged(targets::CODEC_VALUE, v.encode()));
    }
    let record = LockRecord {
        holder: Some(Holder {
            owner: "worker-1".into(),
            session: 3,
            token: 9,
            hold_count: 2,
            expires_at_ms: 5000,
            granted_term: 4,
        }),
        last_token: 9,
        queue: vec![Queued { owner: "worker-2".into(), session: 4, wait_until_ms: 6000, ttl_ms: 1000 }],
    };
    out.push(tagged(targets::CODEC_LOCK, record.encode()));
    out.push(tagged(targets::CODEC_LOCK, LockRecord::default().encode()));
    let fences = FenceRecord { highest: vec![("lock-a".into(), 4), ("lock-b".into(), u64::MAX)] };
    out.push(tagged(targets::CODEC_FENCES, fences.encode()));
    out
}

fn http_requests() -> Vec<Vec<u8>> {
    let cases: &[(Parser, &str)] = &[
        (
            Parser::BatchBody,
            r#"{"ops":[{"op":"put","key":"a","value":"x","ttl_ms":1000},{"op":"get","key":"b","stale":true},{"op":"delete","key":"c"},{"op":"put","key":"d","value_b64":"AAE=","if_version":3},{"op":"put","key":"e","value":"","if_absent":true}]}"#,
        ),
        (
            Parser::TxnBody,
            r#"{"compare":[{"key":"{u}/a","version":3},{"key":"{u}/b","value":"x","cmp":"!="},{"key":"{u}/c","exists":false}],"then":[{"op":"put","key":"{u}/a","value":"y","ttl_ms":5}],"else":[{"op":"get","key":"{u}/a"},{"op":"delete","key":"{u}/b"}]}"#,
        ),
        (Parser::KvQuery, "index=5&wait=2s&meta=true&consistency=stale"),
        (Parser::KvQuery, "ttl_ms=1000"),
        (Parser::ScanQuery, "prefix=app%2F&limit=10&keys_only=true&cursor=YXBwL2E"),
        (Parser::KeyPath, "users%2F42/%F0%9F%94%91"),
        (Parser::KeyPath, "{user42}/profile"),
        (Parser::LockPath, "jobs/nightly/acquire"),
        (Parser::FencingToken, "jobs%2Fnightly:42"),
        (Parser::IfMatch, "\"42\"\n*"),
        (Parser::IfNoneMatch, "\"1\", \"2\""),
        (Parser::IdempotencyKey, "0123456789abcdef0123456789abcdef"),
        (Parser::RequestTimeout, "1500ms"),
        (Parser::RequestTimeout, "2s"),
        (Parser::WatchPosition, "1.42,2.7,16.100"),
        (Parser::Duration, "250ms"),
    ];
    cases
        .iter()
        .map(|(p, s)| {
            let mut v = vec![*p as u8];
            v.extend_from_slice(s.as_bytes());
            v
        })
        .collect()
}
