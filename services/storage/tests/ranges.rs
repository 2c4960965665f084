//! Two shards on one node, each owning half of the ring, on one RocksDB:
//! each serves only its own keys (others get `WrongShard`), and each
//! one's snapshot holds exactly its own keys. This is what lets many shard
//! replicas share a node's `data` column family.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::Storage as _;
use ringstore_shared::command::{Command, Precondition};
use ringstore_shared::hash::key_point;
use ringstore_shared::keys::{is_request_key, is_user_key, split_data_key};
use ringstore_shared::{ShardId, StoreError};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::log_store::LogStore;
use ringstore_storage::snapshot::{PointRange, SnapshotData};
use ringstore_storage::{Engine, LocalTransport, ReplicaConfig, ShardOp, ShardReply, ShardRequest, StorageActor};

const HALF: u64 = 1 << 63;

fn ranges(shard: ShardId) -> Vec<PointRange> {
    if shard == 1 {
        vec![0..=HALF - 1]
    } else {
        vec![HALF..=u64::MAX]
    }
}

#[actix_rt::test]
async fn each_shard_serves_and_snapshots_only_its_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), "1").unwrap();
    let transport = LocalTransport::new();
    let mut actors = Vec::new();
    for shard in [1, 2] {
        let cfg = ReplicaConfig {
            node: 1,
            shard,
            ranges: ranges(shard),
            epoch: 1,
            initial_voters: vec![1],
            raft: ringstore_shared::config::RaftConfig { tick_interval_ms: 20, ..Default::default() },
            limits: Default::default(),
            leaders: Default::default(),
            registry: Default::default(),
            on_split: Arc::new(|_, _, _| {}),
            split_off: None,
        };
        let a = StorageActor::start(
            cfg,
            engine.clone(),
            Arc::new(transport.clone()),
            Arc::new(SystemClock),
            &actix::Arbiter::current(),
        )
        .unwrap();
        transport.register(1, shard, a.clone());
        actors.push(a);
    }
    // Single-voter groups elect themselves.
    for a in &actors {
        let start = Instant::now();
        loop {
            if let Ok(Ok(ShardReply::Status(s))) = a.send(ShardRequest(ShardOp::Status)).await {
                if s.role == "leader" {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no leader");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut mine = [0usize; 3];
    for i in 0..200 {
        let key = format!("key-{i}").into_bytes();
        let owner = if key_point(&key) < HALF { 1 } else { 2 };
        let put = |k: Vec<u8>| {
            ShardOp::write(Command::Put {
                key: k,
                value: b"v".to_vec(),
                ttl_ms: None,
                cond: Precondition::Always,
                fence: None,
            })
        };
        let other = 3 - owner;
        let r = actors[other - 1].send(ShardRequest(put(key.clone()))).await.unwrap();
        assert_eq!(r.unwrap_err(), StoreError::WrongShard { shard: other as u64, epoch: 1 });
        let r = actors[owner - 1].send(ShardRequest(ShardOp::Read { key: key.clone(), stale: true })).await;
        assert!(matches!(r, Ok(Ok(ShardReply::Value { value: None, .. }))));
        assert!(actors[owner - 1].send(ShardRequest(put(key))).await.unwrap().is_ok());
        mine[owner] += 1;
    }
    assert!(mine[1] > 50 && mine[2] > 50, "{mine:?}");
    for shard in [1u64, 2] {
        let (store, _) = LogStore::open(engine.clone(), shard, &[1], Arc::new(ranges(shard))).unwrap();
        // Built off the storage thread: the first ask starts it.
        let start = Instant::now();
        let snap = loop {
            match store.snapshot(0, 2) {
                Ok(s) => break s,
                Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "snapshot not built");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let data = SnapshotData::decode(&snap.data).unwrap();
        let users = data.kvs.iter().filter(|(k, _)| split_data_key(k).is_some_and(|(_, u)| is_user_key(u))).count();
        assert_eq!(users, mine[shard as usize], "shard {shard} snapshot holds exactly its keys");
        // Each put's request record rides along (a retry after a snapshot
        // install still finds its first answer).
        let requests = data.kvs.iter().filter(|(k, _)| is_request_key(k)).count();
        assert_eq!(requests, mine[shard as usize], "shard {shard} snapshot holds its request records");
        for (k, _) in &data.kvs {
            let (point, _) = split_data_key(k).unwrap();
            assert!(ranges(shard)[0].contains(&point));
        }
    }
}
