//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rswarm_raft::{Message, RaftConfig, RaftHandle, Transport};
use rswarm_store::{Cluster, Node, StateMachine, Txn};

/// Logs to the test output when RUST_LOG is set (raft-rs's slog output included, via `log`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The state a cluster starts from: the cluster object created at index 1.
pub fn initial_state() -> StateMachine {
    let mut sm = StateMachine::new();
    sm.apply(
        1,
        &Txn {
            timestamp_ms: 1,
            ops: vec![Txn::create(Cluster {
                id: Cluster::ID.into(),
                cluster_id: "test-cluster".into(),
                ..Cluster::default()
            })],
        },
    )
    .expect("creating the cluster object");
    sm
}

pub fn node(id: impl Into<String>) -> Node {
    let id = id.into();
    Node {
        hostname: format!("host-{id}"),
        id,
        ..Node::default()
    }
}

pub fn create_node(id: impl Into<String>) -> Txn {
    Txn::new(vec![Txn::create(node(id))])
}

/// Fast ticks so elections take well under a second, even on a loaded machine.
pub fn config(id: u64, dir: &Path) -> RaftConfig {
    let mut c = RaftConfig::new(id, dir);
    c.tick = Duration::from_millis(50);
    c
}

/// A transport for a single-member cluster: there is no one to send to.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        assert!(
            msgs.is_empty(),
            "a single member has no one to send to: {msgs:?}"
        );
    }
    fn set_peers(&self, peers: &[(u64, String)]) {
        assert!(peers.is_empty(), "a single member has no peers: {peers:?}");
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_for_leader(handle: &RaftHandle) {
    let h = handle.clone();
    eventually("the member to lead", Duration::from_secs(20), move || {
        let h = h.clone();
        async move { h.status().is_leader.then_some(()) }
    })
    .await;
}
