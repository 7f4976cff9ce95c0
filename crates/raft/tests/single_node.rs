//! One member on a real data directory: commit, conflict, watch, restart, compaction.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    config, create_node, eventually, init_tracing, initial_state, wait_for_leader, NoPeers,
};
use raft::Storage as _;
use redb::{ReadableDatabase as _, ReadableTable as _};
use rswarm_raft::{bootstrap, RaftHandle, RaftNode, RaftStorage};
use rswarm_store::{Action, Kind, Node, StateMachine, StoreError, Txn, TxnError};
use tokio_util::sync::CancellationToken;

async fn start(dir: &std::path::Path, snapshot_interval: u64) -> (RaftHandle, CancellationToken) {
    let cancel = CancellationToken::new();
    let mut cfg = config(1, dir);
    cfg.snapshot_interval = snapshot_interval;
    cfg.log_entries_for_slow_followers = 10;
    let handle = RaftNode::start(cfg, Arc::new(NoPeers), cancel.clone())
        .await
        .expect("start the member");
    (handle, cancel)
}

async fn stop(handle: &RaftHandle, cancel: &CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(20), handle.wait_stopped())
        .await
        .expect("the driver stops in time")
        .expect("the driver stops cleanly");
}

/// Commits 200 node creations: 100 one after the other, 100 at once. Returns their indexes.
async fn commit_200(handle: &RaftHandle, prefix: &str) -> Vec<u64> {
    let store = handle.store();
    let started = Instant::now();
    let mut indexes = Vec::new();
    for i in 0..100 {
        indexes.push(
            store
                .commit(create_node(format!("{prefix}{i}")))
                .await
                .unwrap(),
        );
    }
    let sequential = started.elapsed();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "sequential commits get increasing indexes: {indexes:?}"
    );
    let started = Instant::now();
    let concurrent = futures::future::join_all((100..200).map(|i| {
        let store = store.clone();
        async move { store.commit(create_node(format!("{prefix}{i}"))).await }
    }))
    .await;
    let concurrent_time = started.elapsed();
    indexes.extend(concurrent.into_iter().map(Result::unwrap));
    eprintln!(
        "100 sequential commits: {:.0}/s; 100 concurrent commits: {:.0}/s",
        100.0 / sequential.as_secs_f64(),
        100.0 / concurrent_time.as_secs_f64()
    );
    let unique: HashSet<u64> = indexes.iter().copied().collect();
    assert_eq!(unique.len(), 200, "every commit has its own index");
    indexes
}

/// Waits for the restarted member to lead and apply its new term's no-op, then checks that its
/// state is the old one plus that no-op.
async fn assert_recovered(handle: &RaftHandle, before: &StateMachine) {
    wait_for_leader(handle).await;
    let replica = handle.replica();
    let last = before.index();
    eventually(
        "the new term's no-op to apply",
        Duration::from_secs(20),
        || {
            let replica = replica.clone();
            async move { (replica.index() > last).then_some(()) }
        },
    )
    .await;
    let after = replica.read(StateMachine::clone);
    assert_eq!(
        after.index(),
        last + 1,
        "only the new leader's no-op is new"
    );
    let mut expected = before.clone();
    expected.apply(after.index(), &Txn::default()).unwrap();
    assert_eq!(after, expected, "the restarted replica equals the old one");
    // Snapshot bytes are not canonical (the store serialises hash-map order), so compare what
    // they decode to.
    assert!(StateMachine::restore(&after.snapshot()).unwrap() == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    bootstrap(dir.path(), 1, "127.0.0.1:7001", initial_state()).unwrap();
    let (handle, cancel) = start(dir.path(), 10_000).await;
    wait_for_leader(&handle).await;
    let status = handle.status();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].addr, "127.0.0.1:7001");
    let store = handle.store();
    assert_eq!(store.list::<Node>().len(), 0);
    assert!(store
        .get::<rswarm_store::Cluster>(rswarm_store::Cluster::ID)
        .is_some());

    let mut watch = store.watch();
    let indexes = commit_200(&handle, "n").await;
    assert_eq!(store.list::<Node>().len(), 200);

    // The watch sees every creation, in index order.
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.events.recv())
            .await
            .expect("a change batch in time")
            .expect("the watch is open");
        for change in &batch.changes {
            assert_eq!(change.action, Action::Create);
            assert_eq!(change.object.kind(), Kind::Node);
            seen.push(batch.index);
        }
    }
    let mut sorted = indexes.clone();
    sorted.sort_unstable();
    assert_eq!(seen, sorted);

    // A conflicting transaction is rejected and the node carries on.
    let err = store.commit(create_node("n0")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Txn(TxnError::Exists { kind: Kind::Node, ref id }) if id == "n0"),
        "{err}"
    );
    let next = store.commit(create_node("after-conflict")).await.unwrap();
    assert!(next > *sorted.last().unwrap());

    let before = handle.replica().read(StateMachine::clone);
    // The status is published before commit results are sent.
    assert_eq!(handle.status().applied, before.index());
    stop(&handle, &cancel).await;
    let err = store.commit(create_node("too-late")).await.unwrap_err();
    assert!(matches!(err, StoreError::ShuttingDown), "{err}");
    assert!(!handle.status().is_leader);

    let (handle, cancel) = start(dir.path(), 10_000).await;
    assert_recovered(&handle, &before).await;
    let store = handle.store();
    let later = store.commit(create_node("after-restart")).await.unwrap();
    assert!(
        later > before.index() + 1,
        "{later} after {}",
        before.index()
    );
    assert!(store.get::<Node>("after-restart").is_some());
    stop(&handle, &cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_log_recovers_the_same_state() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    bootstrap(dir.path(), 1, "127.0.0.1:7001", initial_state()).unwrap();
    let (handle, cancel) = start(dir.path(), 50).await;
    wait_for_leader(&handle).await;
    commit_200(&handle, "c").await;
    // Updates, so that the log holds more than creations.
    let store = handle.store();
    for i in 0..20 {
        store
            .update(|sm| {
                let mut n = sm.get::<Node>(&format!("c{i}")).cloned().unwrap();
                n.labels.insert("round".into(), "2".into());
                Ok(vec![Txn::update(n)])
            })
            .await
            .unwrap();
    }
    let before = handle.replica().read(StateMachine::clone);
    stop(&handle, &cancel).await;

    // On disk: a recent snapshot (one is taken every 50 entries, in the background, so the last
    // may still have been in the making) and the log from 10 entries before it.
    let storage = RaftStorage::open(dir.path()).await.unwrap();
    let snap = storage.snapshot_index();
    assert!(
        snap + 100 > before.index() && snap >= 150,
        "snapshot at {snap}, applied {}",
        before.index()
    );
    assert!(
        storage.entry_count() < 100 + 10,
        "{} entries kept",
        storage.entry_count()
    );
    assert_eq!(storage.first_index().unwrap(), snap - 10 + 1);
    // The snapshot's data is in its own file, the only snapshot file left.
    let snap_path = storage.snapshot_path().expect("the snapshot is in a file");
    let snap_files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap-"))
        })
        .collect();
    assert_eq!(snap_files, [snap_path]);
    let path = storage.path().to_path_buf();
    drop(storage);
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let entries = txn
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("entries"))
        .unwrap();
    let first_on_disk = entries.first().unwrap().map(|(k, _)| k.value());
    assert_eq!(
        first_on_disk,
        Some(snap - 10 + 1),
        "older entries are deleted on disk"
    );
    drop((entries, txn, db));

    let (handle, cancel) = start(dir.path(), 50).await;
    assert_recovered(&handle, &before).await;
    let n = handle.store().get::<Node>("c3").unwrap();
    assert_eq!(n.labels.get("round").map(String::as_str), Some("2"));
    stop(&handle, &cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_member_waits_to_be_added() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (handle, cancel) = start(dir.path(), 10_000).await;
    // Several election timeouts pass without it campaigning: it is not a voter anywhere.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = handle.status();
    assert!(!status.is_leader);
    assert_eq!(status.leader, None);
    assert_eq!(status.applied, 0);
    let err = handle.store().commit(create_node("x")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotLeader { leader_addr: None }),
        "{err}"
    );
    let err = handle
        .add_member(2, "127.0.0.1:9".into())
        .await
        .unwrap_err();
    assert!(matches!(err, rswarm_raft::Error::NotLeader { .. }), "{err}");
    stop(&handle, &cancel).await;
}
