//! A replica move at the storage layer, on two nodes' RocksDBs in one
//! process: an empty replica on node 2 becomes a learner of node 1's shard,
//! gets the data by snapshot (the log from index 1 would lack the bootstrap
//! configuration), is promoted, takes leadership, removes node 1; node 1's
//! replica is then destroyed and leaves no key and no Raft state behind.
//! A write arriving during the leadership transfer is sent on to the new
//! leader. Steps out of order are refused with a reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use ringstore_shared::command::{Command, Precondition};
use ringstore_shared::config::RaftConfig;
use ringstore_shared::{NodeId, StoreError};
use ringstore_storage::clock::SystemClock;
use ringstore_storage::log_store::LogStore;
use ringstore_storage::messages::{DestroyReplica, PeerChange};
use ringstore_storage::snapshot::whole_ring;
use ringstore_storage::{
    Engine, LocalTransport, ReplicaConfig, ReplicaStatus, ShardOp, ShardReply, ShardRequest, ShardResult, StorageActor,
};

const KEYS: usize = 300;

fn start(node: NodeId, voters: &[NodeId], engine: &Arc<Engine>, t: &LocalTransport) -> Addr<StorageActor> {
    let cfg = ReplicaConfig {
        node,
        shard: 1,
        ranges: whole_ring(),
        epoch: 1,
        initial_voters: voters.to_vec(),
        raft: RaftConfig { tick_interval_ms: 20, ..Default::default() },
        limits: Default::default(),
        leaders: Default::default(),
        registry: Default::default(),
        on_split: Arc::new(|_, _, _| {}),
        split_off: None,
    };
    let a = StorageActor::start(
        cfg,
        engine.clone(),
        Arc::new(t.clone()),
        Arc::new(SystemClock),
        &actix::Arbiter::current(),
    )
    .unwrap();
    t.register(node, 1, a.clone());
    a
}

async fn send(a: &Addr<StorageActor>, op: ShardOp) -> ShardResult {
    a.send(ShardRequest(op)).await.unwrap()
}

async fn status(a: &Addr<StorageActor>) -> ReplicaStatus {
    match send(a, ShardOp::Status).await {
        Ok(ShardReply::Status(s)) => s,
        other => panic!("{other:?}"),
    }
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < Duration::from_secs(20), "not within 20 s: {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(i: usize) -> ShardOp {
    ShardOp::write(Command::Put {
        key: format!("k{i}").into_bytes(),
        value: format!("v{i}").into_bytes(),
        ttl_ms: None,
        cond: Precondition::Always,
        fence: None,
    })
}

#[actix_rt::test]
async fn a_replica_moves_from_node_1_to_node_2_and_the_source_leaves_nothing_behind() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e1, e2) = (Engine::open(d1.path(), "1").unwrap(), Engine::open(d2.path(), "2").unwrap());
    let t = LocalTransport::new();
    let a1 = start(1, &[1], &e1, &t);
    until("node 1 leads its single-voter shard", async || status(&a1).await.role == "leader").await;
    for i in 0..KEYS {
        assert!(send(&a1, put(i)).await.is_ok());
    }

    // Out of order: nothing to leave, no such voter to lead, self-removal.
    let r = send(&a1, ShardOp::ChangePeers(PeerChange::LeaveJoint)).await;
    assert!(matches!(r, Err(StoreError::BadRequest(ref m)) if m.contains("not in a joint")), "{r:?}");
    let r = send(&a1, ShardOp::TransferLeader { to: 2 }).await;
    assert!(matches!(r, Err(StoreError::BadRequest(ref m)) if m.contains("not a voter")), "{r:?}");
    let r = send(&a1, ShardOp::ChangePeers(PeerChange::Remove(1))).await;
    assert!(matches!(r, Err(StoreError::BadRequest(ref m)) if m.contains("transfer leadership")), "{r:?}");

    // 1. An empty replica on node 2, then a learner: it gets a snapshot.
    let a2 = start(2, &[], &e2, &t);
    let s = match send(&a1, ShardOp::ChangePeers(PeerChange::AddLearner(2))).await {
        Ok(ShardReply::Status(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!((s.voters.clone(), s.learners.clone()), (vec![1], vec![2]));
    assert!(s.first_index > 1, "the leader's log no longer starts at 1: {s:?}");
    until("node 2 holds every key", async || {
        status(&a2).await.key_count == Some(KEYS as u64) && status(&a2).await.learners == vec![2]
    })
    .await;
    let r = send(&a2, ShardOp::Read { key: b"k7".to_vec(), stale: true }).await;
    assert!(matches!(r, Ok(ShardReply::Value { value: Some(ref v), .. }) if v.data == b"v7"), "{r:?}");

    // 2. Promote, hand leadership over, remove node 1.
    let r = send(&a1, ShardOp::ChangePeers(PeerChange::Promote { add: 2, remove: None })).await;
    assert!(matches!(r, Ok(ShardReply::Status(ref s)) if s.voters == vec![1, 2]), "{r:?}");
    until("node 2 applied its promotion", async || status(&a2).await.voters == vec![1, 2]).await;
    // A write and a read that reach node 1 right behind the transfer (the
    // mailbox keeps their order) wait while leadership moves, then are sent
    // on to the new leader: never dropped into the router's backoff.
    let transfer = a1.send(ShardRequest(ShardOp::TransferLeader { to: 2 }));
    let write = a1.send(ShardRequest(put(KEYS + 1)));
    let read = a1.send(ShardRequest(ShardOp::Read { key: b"k7".to_vec(), stale: false }));
    assert!(transfer.await.unwrap().is_ok());
    for r in [write.await.unwrap(), read.await.unwrap()] {
        assert!(matches!(r, Err(StoreError::NotLeader { hint: Some(2), .. })), "{r:?}");
    }
    until("node 2 leads", async || status(&a2).await.role == "leader").await;
    let r = send(&a2, ShardOp::ChangePeers(PeerChange::Remove(1))).await;
    assert!(matches!(r, Ok(ShardReply::Status(ref s)) if s.voters == vec![2]), "{r:?}");
    assert!(send(&a2, put(KEYS)).await.is_ok(), "the shard takes writes on node 2 alone");

    // 3. Node 1's replica is destroyed: no key, no Raft state left.
    t.unregister(1, 1);
    assert_eq!(a1.send(DestroyReplica).await.unwrap(), Ok(()));
    let (_, fresh) = LogStore::open(e1.clone(), 1, &[], Arc::new(whole_ring())).unwrap();
    assert!(fresh, "node 1 has no Raft state for the shard any more");
    let mut left = 0;
    e1.scan(ringstore_storage::engine::Cf::Data, &[], &[0xff; 9], |_, _| {
        left += 1;
        true
    })
    .unwrap();
    assert_eq!(left, 0, "node 1 kept {left} data keys");
    assert_eq!(status(&a2).await.key_count, Some(KEYS as u64 + 1));
}
