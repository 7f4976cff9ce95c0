//! Three members over the real gRPC transport on 127.0.0.1 (plain HTTP/2): joins through
//! snapshots larger than gRPC's default 4 MiB limit, replication, leader failover, removal,
//! NotLeader answers. Leadership may move at any time on a loaded machine, so the test always
//! asks who leads rather than assuming it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, create_node, eventually, init_tracing, initial_state, node, wait_for_leader};
use rswarm_raft::{bootstrap, Error, GrpcTransport, RaftHandle, RaftNode, RaftService};
use rswarm_store::{Node, StateMachine, StoreError, Txn, TxnError};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};

const WAIT: Duration = Duration::from_secs(60);

struct Member {
    id: u64,
    addr: String,
    handle: RaftHandle,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Starts a member on `dir` with a gRPC transport and a raft server on `listener`.
async fn start_member(
    id: u64,
    dir: tempfile::TempDir,
    listener: TcpListener,
    addr: String,
    join_peers: Vec<(u64, String)>,
) -> Member {
    let cancel = CancellationToken::new();
    let transport = Arc::new(GrpcTransport::new(
        |addr: &str| Channel::from_shared(format!("http://{addr}")).map(|e| e.connect_lazy()),
        cancel.clone(),
    ));
    let mut cfg = config(id, dir.path());
    // Compact often and keep no entries: followers must catch up through snapshots.
    cfg.snapshot_interval = 20;
    cfg.log_entries_for_slow_followers = 0;
    cfg.join_peers = join_peers;
    let handle = RaftNode::start(cfg, transport, cancel.clone())
        .await
        .unwrap();
    // Behind an interceptor, as the manager serves it (which authorises peers there).
    let server = Server::builder()
        .add_service(RaftService::new(handle.clone()).with_interceptor(Ok))
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            cancel.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    Member {
        id,
        addr,
        handle,
        cancel,
        _dir: dir,
    }
}

fn state(m: &Member) -> StateMachine {
    m.handle.replica().read(StateMachine::clone)
}

/// The member that currently leads (waits for one).
async fn leader<'a>(members: &[&'a Member]) -> &'a Member {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(m) = members
            .iter()
            .filter(|m| m.handle.status().is_leader)
            .max_by_key(|m| m.handle.status().term)
        {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader among the members"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates node `id` through whichever member leads, retrying while leadership moves.
async fn create_through_leader(members: &[&Member], id: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut retried = false;
    loop {
        let l = leader(members).await;
        match l.handle.store().commit(create_node(id)).await {
            Ok(_) => return,
            // An earlier attempt was committed although its leader stepped down before answering.
            Err(StoreError::Txn(TxnError::Exists { .. })) if retried => return,
            Err(StoreError::NotLeader { .. }) => {}
            Err(e) => panic!("committing {id}: {e}"),
        }
        retried = true;
        assert!(tokio::time::Instant::now() < deadline, "cannot commit {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds or removes a member through whichever member leads, retrying while leadership moves.
async fn change_membership(members: &[&Member], add: Option<&Member>, remove: Option<u64>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut retried = false;
    loop {
        let l = leader(members).await;
        let result = match (add, remove) {
            (Some(m), _) => l.handle.add_member(m.id, m.addr.clone()).await,
            (None, Some(id)) => l.handle.remove_member(id).await,
            (None, None) => return,
        };
        match result {
            Ok(()) => return,
            Err(Error::MemberExists(_) | Error::UnknownMember(_)) if retried => return,
            Err(Error::NotLeader { .. }) => {}
            Err(e) => panic!("changing membership: {e}"),
        }
        retried = true;
        assert!(
            tokio::time::Instant::now() < deadline,
            "cannot change membership"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every member's replica is the same and at least at `min_index`.
async fn converge(members: &[&Member], min_index: u64) -> StateMachine {
    let handles: Vec<RaftHandle> = members.iter().map(|m| m.handle.clone()).collect();
    eventually("the replicas to converge", WAIT, move || {
        let states: Vec<StateMachine> = handles
            .iter()
            .map(|h| h.replica().read(StateMachine::clone))
            .collect();
        async move {
            let first = states.first()?;
            (first.index() >= min_index && states.iter().all(|s| s == first)).then(|| first.clone())
        }
    })
    .await
}

/// A node with a 250 KB label: 24 of them make the state (and a snapshot) about 6 MB.
fn big_node(i: usize) -> Txn {
    let mut n = node(format!("big{i}"));
    n.labels.insert("blob".into(), "x".repeat(250_000));
    Txn::new(vec![Txn::create(n)])
}

/// Asks a follower to commit and to change membership until it answers NotLeader naming the
/// current leader (it may briefly name an older one, or none, while leadership moves).
async fn assert_follower_redirects(members: &[&Member]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let l = leader(members).await;
        let f = members.iter().find(|m| m.id != l.id).expect("a follower");
        let commit = f.handle.store().commit(create_node("refused")).await;
        // Removing a member that does not exist is harmless should `f` lead by now.
        let change = f.handle.remove_member(99).await;
        let outcome = format!("{commit:?} / {change:?}");
        if let (
            Err(StoreError::NotLeader {
                leader_addr: Some(a),
            }),
            Err(Error::NotLeader {
                leader_addr: Some(b),
            }),
        ) = (commit, change)
        {
            if a == l.addr && b == l.addr {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a follower never named the leader {}: {outcome}",
            l.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_fail_over() {
    init_tracing();
    // Member 1: a new cluster with a compacted log and a state bigger than 4 MiB.
    let (l1, a1) = listen().await;
    let d1 = tempfile::tempdir().unwrap();
    bootstrap(d1.path(), 1, &a1, initial_state()).unwrap();
    let m1 = start_member(1, d1, l1, a1.clone(), Vec::new()).await;
    wait_for_leader(&m1.handle).await;
    let store1 = m1.handle.store();
    for i in 0..24 {
        store1.commit(big_node(i)).await.unwrap();
    }
    for i in 0..40 {
        store1.commit(create_node(format!("a{i}"))).await.unwrap();
    }
    let s1 = state(&m1);
    assert!(s1.snapshot().len() > 5 << 20, "the state is over 5 MiB");

    // Member 2 joins from an empty data directory and catches up through a snapshot.
    let (l2, a2) = listen().await;
    let m2 = start_member(
        2,
        tempfile::tempdir().unwrap(),
        l2,
        a2.clone(),
        vec![(1, a1.clone())],
    )
    .await;
    change_membership(&[&m1], Some(&m2), None).await;
    converge(&[&m1, &m2], s1.index() + 1).await;

    // Member 3 likewise; then every member sees new commits.
    let (l3, a3) = listen().await;
    let m3 = start_member(
        3,
        tempfile::tempdir().unwrap(),
        l3,
        a3.clone(),
        vec![(1, a1.clone()), (2, a2.clone())],
    )
    .await;
    let all = [&m1, &m2, &m3];
    change_membership(&all[..2], Some(&m3), None).await;
    for i in 0..40 {
        create_through_leader(&all, &format!("b{i}")).await;
    }
    let l = leader(&all).await;
    let want = state(l);
    let got = converge(&all, want.index()).await;
    assert_eq!(got.list::<Node>().count(), 24 + 40 + 40);
    assert!(got.get::<Node>("big23").is_some() && got.get::<Node>("b39").is_some());
    let expected_members = vec![(1, a1.clone()), (2, a2.clone()), (3, a3.clone())];
    for m in all {
        let h = m.handle.clone();
        let want = expected_members.clone();
        eventually("every member to know all members", WAIT, move || {
            let got: Vec<(u64, String)> = h
                .status()
                .members
                .iter()
                .map(|m| (m.id, m.addr.clone()))
                .collect();
            let want = want.clone();
            async move { (got == want).then_some(()) }
        })
        .await;
    }

    // Followers refuse commits and membership changes, naming the leader; the leader refuses a
    // duplicate member.
    assert_follower_redirects(&all).await;
    let l = leader(&all).await;
    match l.handle.add_member(2, a2.clone()).await {
        Err(Error::MemberExists(2)) | Err(Error::NotLeader { .. }) => {}
        other => panic!("adding member 2 again: {other:?}"),
    }

    // The leader goes away; the other two elect a new one and carry on.
    let old = leader(&all).await;
    let before = state(old).index();
    old.cancel.cancel();
    tokio::time::timeout(WAIT, old.handle.wait_stopped())
        .await
        .expect("the old leader stops")
        .expect("the old leader stops cleanly");
    let rest: Vec<&Member> = all.iter().copied().filter(|m| m.id != old.id).collect();
    let new_leader = leader(&rest).await;
    assert_ne!(new_leader.id, old.id);
    create_through_leader(&rest, "after-failover").await;
    let s = converge(&rest, before + 1).await;
    assert!(s.get::<Node>("after-failover").is_some());
    assert_follower_redirects(&rest).await;

    // The dead member is removed; the remaining two carry on as a two-member cluster.
    change_membership(&rest, None, Some(old.id)).await;
    let l = leader(&rest).await;
    match l.handle.remove_member(old.id).await {
        Err(Error::UnknownMember(id)) if id == old.id => {}
        Err(Error::NotLeader { .. }) => {}
        other => panic!("removing member {} again: {other:?}", old.id),
    }
    create_through_leader(&rest, "after-removal").await;
    let s = converge(&rest, 0).await;
    assert!(s.get::<Node>("after-removal").is_some());
    for m in &rest {
        let h = m.handle.clone();
        eventually("every member to drop the removed one", WAIT, move || {
            let n = h.status().members.len();
            async move { (n == 2).then_some(()) }
        })
        .await;
    }

    // Without its follower the leader cannot commit: a pending commit fails with NotLeader once
    // the leader notices it lost its quorum and steps down.
    let l = leader(&rest).await;
    let f = rest.iter().find(|m| m.id != l.id).expect("a follower");
    f.cancel.cancel();
    tokio::time::timeout(WAIT, f.handle.wait_stopped())
        .await
        .expect("the follower stops")
        .expect("the follower stops cleanly");
    let lost = tokio::time::timeout(WAIT, l.handle.store().commit(create_node("lost")))
        .await
        .expect("a commit without quorum resolves");
    assert!(
        matches!(lost, Err(StoreError::NotLeader { .. })),
        "{lost:?}"
    );
    assert!(!l.handle.status().is_leader);

    for m in &rest {
        m.cancel.cancel();
        tokio::time::timeout(WAIT, m.handle.wait_stopped())
            .await
            .expect("member stops")
            .expect("member stops cleanly");
    }
}
