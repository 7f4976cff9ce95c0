//! Three members over the real gRPC transport on 127.0.0.1 (plain HTTP/2): joins through
//! snapshots larger than gRPC's default 4 MiB limit, replication, leader failover, NotLeader.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{config, create_node, eventually, init_tracing, initial_state, node, wait_for_leader};
use rswarm_raft::{bootstrap, GrpcTransport, RaftHandle, RaftNode, RaftService};
use rswarm_store::{Node, StateMachine, StoreError, Txn};
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
    cfg.snapshot_interval = 20;
    cfg.join_peers = join_peers;
    let handle = RaftNode::start(cfg, transport, cancel.clone()).await.unwrap();
    let server = Server::builder()
        .add_service(RaftService::new(handle.clone()).into_server())
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

/// Waits until every member's replica equals `want` (same index, same objects).
async fn converge(members: &[&Member], want: &StateMachine) {
    for m in members {
        let handle = m.handle.clone();
        let want = want.clone();
        eventually(&format!("member {} to catch up", m.id), WAIT, move || {
            let handle = handle.clone();
            let want = want.clone();
            async move {
                let have = handle.replica().read(StateMachine::clone);
                (have == want).then_some(())
            }
        })
        .await;
    }
}

/// A node with a 250 KB label: 24 of them make the state (and a snapshot) about 6 MB.
fn big_node(i: usize) -> Txn {
    let mut n = node(format!("big{i}"));
    n.labels.insert("blob".into(), "x".repeat(250_000));
    Txn::new(vec![Txn::create(n)])
}

fn bootstrap_dir(dir: &Path, addr: &str) {
    bootstrap(dir, 1, addr, initial_state()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_and_fail_over() {
    init_tracing();
    // Member 1: a new cluster with a compacted log and a state bigger than 4 MiB.
    let (l1, a1) = listen().await;
    let d1 = tempfile::tempdir().unwrap();
    bootstrap_dir(d1.path(), &a1);
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
    m1.handle.add_member(2, a2.clone()).await.unwrap();
    converge(&[&m2], &state(&m1)).await;

    // Member 3 likewise; then both followers see new commits.
    let (l3, a3) = listen().await;
    let m3 = start_member(
        3,
        tempfile::tempdir().unwrap(),
        l3,
        a3.clone(),
        vec![(1, a1.clone()), (2, a2.clone())],
    )
    .await;
    m1.handle.add_member(3, a3.clone()).await.unwrap();
    for i in 0..40 {
        store1.commit(create_node(format!("b{i}"))).await.unwrap();
    }
    let want = state(&m1);
    assert_eq!(want.list::<Node>().count(), 24 + 40 + 40);
    converge(&[&m2, &m3], &want).await;
    let status = m1.handle.status();
    assert!(status.is_leader);
    assert_eq!(
        status.members.iter().map(|m| (m.id, m.addr.clone())).collect::<Vec<_>>(),
        vec![(1, a1.clone()), (2, a2.clone()), (3, a3.clone())]
    );
    for m in [&m2, &m3] {
        let h = m.handle.clone();
        eventually("the follower to know all members", WAIT, move || {
            let h = h.clone();
            async move { (h.status().members.len() == 3 && h.status().leader == Some(1)).then_some(()) }
        })
        .await;
    }

    // A follower refuses commits and membership changes, naming the leader.
    let err = m2.handle.store().commit(create_node("nope")).await.unwrap_err();
    match err {
        StoreError::NotLeader { leader_addr } => assert_eq!(leader_addr.as_deref(), Some(a1.as_str())),
        other => panic!("expected NotLeader, got {other}"),
    }
    let err = m3.handle.add_member(4, "127.0.0.1:9".into()).await.unwrap_err();
    assert!(matches!(err, rswarm_raft::Error::NotLeader { leader_addr: Some(ref a) } if *a == a1), "{err}");
    let err = m1.handle.add_member(2, a2.clone()).await.unwrap_err();
    assert!(matches!(err, rswarm_raft::Error::MemberExists(2)), "{err}");

    // The leader goes away; the other two elect a new one and carry on.
    m1.cancel.cancel();
    tokio::time::timeout(WAIT, m1.handle.wait_stopped())
        .await
        .expect("member 1 stops")
        .expect("member 1 stops cleanly");
    let (h2, h3) = (m2.handle.clone(), m3.handle.clone());
    let leader = eventually("a new leader", WAIT, move || {
        let (h2, h3) = (h2.clone(), h3.clone());
        async move {
            if h2.status().is_leader {
                Some(2)
            } else if h3.status().is_leader {
                Some(3)
            } else {
                None
            }
        }
    })
    .await;
    let (new_leader, other) = if leader == 2 { (&m2, &m3) } else { (&m3, &m2) };
    let index = new_leader
        .handle
        .store()
        .commit(create_node("after-failover"))
        .await
        .unwrap();
    assert!(index > want.index());
    let want = state(new_leader);
    assert!(want.get::<Node>("after-failover").is_some());
    converge(&[other], &want).await;

    // The remaining follower now points at the new leader.
    let h = other.handle.clone();
    let leader_id = new_leader.id;
    eventually("the follower to follow the new leader", WAIT, move || {
        let h = h.clone();
        async move { (h.status().leader == Some(leader_id)).then_some(()) }
    })
    .await;
    let err = other.handle.store().commit(create_node("nope2")).await.unwrap_err();
    match err {
        StoreError::NotLeader { leader_addr } => {
            assert_eq!(leader_addr.as_deref(), Some(new_leader.addr.as_str()))
        }
        other => panic!("expected NotLeader, got {other}"),
    }

    for m in [&m2, &m3] {
        m.cancel.cancel();
        tokio::time::timeout(WAIT, m.handle.wait_stopped())
            .await
            .expect("member stops")
            .expect("member stops cleanly");
    }
}
