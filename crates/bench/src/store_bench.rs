//! Committed writes per second of a single-member raft store on a real directory (fsync on).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rswarm_raft::{bootstrap, Message, RaftConfig, RaftHandle, RaftNode, Transport};
use rswarm_store::{Cluster, Node, StateMachine, Txn};
use tokio_util::sync::CancellationToken;

use crate::stats::Summary;

/// How long a member gets to become leader, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one commit may take before the run is declared stuck.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of one concurrency level.
#[derive(Clone, Debug)]
pub struct StoreResult {
    pub concurrency: usize,
    /// How long new commits were started.
    pub duration: Duration,
    pub commits: usize,
    /// Until the last commit resolved.
    pub elapsed: Duration,
    pub latency: Summary,
}

impl StoreResult {
    pub fn per_sec(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A single member has no one to talk to.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, _msgs: Vec<Message>) {}
    fn set_peers(&self, _peers: &[(u64, String)]) {}
}

/// A single-member raft store in a directory. Stops the member when dropped (also on error), so
/// the driver releases the directory.
pub struct Member {
    handle: RaftHandle,
    cancel: CancellationToken,
}

impl Member {
    /// Bootstraps a fresh store in `dir` (which must not exist) and waits until it leads.
    pub async fn start(dir: &Path) -> anyhow::Result<Member> {
        let raft_dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut initial = StateMachine::new();
            initial.apply(
                1,
                &Txn {
                    timestamp_ms: 1,
                    ops: vec![Txn::create(Cluster {
                        id: Cluster::ID.into(),
                        cluster_id: "bench".into(),
                        ..Cluster::default()
                    })],
                },
            )?;
            bootstrap(&raft_dir, 1, "127.0.0.1:0", initial)?;
            anyhow::Ok(())
        })
        .await
        .context("the bootstrap task failed")??;
        let cancel = CancellationToken::new();
        let handle = RaftNode::start(
            RaftConfig::new(1, dir),
            Arc::new(NoPeers),
            cancel.child_token(),
        )
        .await
        .context("cannot start the raft member")?;
        let member = Member { handle, cancel };
        let deadline = Instant::now() + START_TIMEOUT;
        while !member.handle.status().is_leader {
            if Instant::now() > deadline {
                bail!("the single raft member did not lead within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(member)
    }

    /// The store handle over this member.
    pub fn store(&self) -> rswarm_store::Store {
        self.handle.store()
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(STOP_TIMEOUT, self.handle.wait_stopped())
            .await
            .context("the raft member did not stop in time")?
            .context("the raft member stopped with an error")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn create_node(id: String) -> Txn {
    Txn::new(vec![Txn::create(Node {
        hostname: format!("host-{id}"),
        addr: "127.0.0.1".into(),
        id,
        ..Node::default()
    })])
}

/// Bootstraps a fresh store in `dir` (created, must not exist), then keeps `concurrency` commits
/// in flight for `duration`, each creating a new node. Commits started before the deadline are
/// waited for and counted; the rate is over the time until the last one resolved.
pub async fn run_level(
    dir: &Path,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<StoreResult> {
    let member = Member::start(dir).await?;
    let store = member.handle.store();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let store = store.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                tokio::time::timeout(
                    COMMIT_TIMEOUT,
                    store.commit(create_node(format!("w{worker}-{seq}"))),
                )
                .await
                .context("a commit took too long")?
                .context("a commit failed")?;
                latencies.push(t0.elapsed());
                seq += 1;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("a commit task panicked")??);
    }
    let elapsed = start.elapsed();
    member.stop().await?;
    let latency = Summary::of(&latencies).context("no commit finished")?;
    Ok(StoreResult {
        concurrency,
        duration,
        commits: latencies.len(),
        elapsed,
        latency,
    })
}
