//! Node liveness: one task owns every node's session and last heartbeat, and is the only writer of
//! node status (Ready/Down) to the store.
//!
//! A node is Down when its session stream closes (its agent died or disconnected: seen at once) or
//! when no heartbeat arrived for [`MISSED_BEATS`] periods (host or network gone). A restarted
//! manager gives every node [`MISSED_BEATS`] periods to reconnect before marking it Down.
//!
//! A node Down for [`NODE_DOWN_PERIOD`] (24 h, as swarmkit) has its assigned-to-running service
//! tasks made `Orphaned` ([`rswarm_orchestrator::down_node_tasks`]), which frees their network
//! addresses. The clock starts when this monitor saw the node go down, or when it started for nodes
//! already down (a new leader starts it anew, as swarmkit's).

use std::collections::HashMap;
use std::time::Duration;

use rswarm_orchestrator::NODE_DOWN_PERIOD;
use rswarm_store::{Cluster, Node, NodeStatus, Store, StoreError, Txn};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Heartbeat periods without a beat before a node is Down.
pub const MISSED_BEATS: u32 = 3;

/// What an agent says about itself when it opens a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Description {
    pub hostname: String,
    pub addr: String,
    pub os: String,
    pub arch: String,
    pub engine_version: String,
    pub cert_not_after: u64,
    /// CPUs (1e9 per core) and memory in bytes the node offers.
    pub resources: (u64, u64),
}

impl Description {
    /// What a node reports about itself; `addr` falls back to the address it called from.
    pub fn new(
        hostname: String,
        advertise_addr: String,
        remote_ip: String,
        platform: (String, String),
        engine_version: String,
        cert_not_after: u64,
    ) -> Self {
        Description {
            hostname,
            addr: if advertise_addr.is_empty() {
                remote_ip
            } else {
                advertise_addr
            },
            os: platform.0,
            arch: platform.1,
            engine_version,
            cert_not_after,
            resources: (0, 0),
        }
    }

    /// The CPUs (nano) and memory (bytes) the node offers to the scheduler.
    pub fn with_resources(mut self, nano_cpus: u64, memory_bytes: u64) -> Self {
        self.resources = (nano_cpus, memory_bytes);
        self
    }

    /// Writes the description into a node object.
    pub fn apply_to(&self, node: &mut Node) {
        node.hostname.clone_from(&self.hostname);
        node.addr.clone_from(&self.addr);
        node.os.clone_from(&self.os);
        node.arch.clone_from(&self.arch);
        node.engine_version.clone_from(&self.engine_version);
        node.cert_not_after = self.cert_not_after;
        (node.nano_cpus, node.memory_bytes) = self.resources;
    }
}

enum Msg {
    Open {
        node_id: String,
        session_id: String,
        description: Description,
        close: CancellationToken,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Heartbeat {
        node_id: String,
        session_id: String,
        reply: oneshot::Sender<bool>,
    },
    Closed {
        node_id: String,
        session_id: String,
    },
    Removed {
        node_id: String,
    },
}

/// Handle to the monitor task.
#[derive(Clone)]
pub struct Monitor {
    tx: mpsc::Sender<Msg>,
}

struct Session {
    id: String,
    last_beat: Instant,
    close: CancellationToken,
}

impl Monitor {
    /// Spawns the monitor task; it stops with `cancel`.
    pub fn spawn(
        store: Store,
        cancel: CancellationToken,
    ) -> (Monitor, tokio::task::JoinHandle<()>) {
        Self::spawn_with(store, cancel, NODE_DOWN_PERIOD)
    }

    /// [`spawn`](Self::spawn) with another period before a down node's tasks are orphaned.
    pub fn spawn_with(
        store: Store,
        cancel: CancellationToken,
        down_period: Duration,
    ) -> (Monitor, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(store, rx, cancel, down_period));
        (Monitor { tx }, task)
    }

    /// Registers a session (replacing any older one of the node) and marks the node Ready.
    pub async fn open(
        &self,
        node_id: String,
        session_id: String,
        description: Description,
        close: CancellationToken,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Open {
                node_id,
                session_id,
                description,
                close,
                reply,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Records a heartbeat; false when the session is unknown (the agent must open a new one).
    pub async fn heartbeat(&self, node_id: String, session_id: String) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Heartbeat {
                node_id,
                session_id,
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// The session's stream closed.
    pub async fn closed(&self, node_id: String, session_id: String) {
        let _ = self
            .tx
            .send(Msg::Closed {
                node_id,
                session_id,
            })
            .await;
    }

    /// The node was removed: close its session.
    pub async fn removed(&self, node_id: String) {
        let _ = self.tx.send(Msg::Removed { node_id }).await;
    }
}

fn period(store: &Store) -> Duration {
    let ms = store
        .get::<Cluster>(Cluster::ID)
        .map_or(500, |c| c.heartbeat_period_ms.max(1));
    Duration::from_millis(ms)
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    cancel: CancellationToken,
    down_period: Duration,
) {
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let started = Instant::now();
    // Since when each node is down, as far as this monitor knows.
    let mut down_since: HashMap<String, Instant> = store
        .list::<Node>()
        .into_iter()
        .filter(|n| n.status == NodeStatus::Down)
        .map(|n| (n.id, started))
        .collect();
    let mut startup_sweep_done = false;
    let mut tick = tokio::time::interval(period(&store) / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                handle(&store, &mut sessions, &mut down_since, msg).await;
            }
            _ = tick.tick() => {
                let p = period(&store);
                if tick.period() != p / 4 {
                    // `rswarm swarm update --dispatcher-heartbeat` changed the period.
                    tick = tokio::time::interval(p / 4);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                let deadline = p * MISSED_BEATS;
                let now = Instant::now();
                let expired: Vec<String> = sessions
                    .iter()
                    .filter(|(_, s)| now.duration_since(s.last_beat) > deadline)
                    .map(|(n, _)| n.clone())
                    .collect();
                for node_id in expired {
                    if let Some(s) = sessions.remove(&node_id) {
                        s.close.cancel();
                    }
                    tracing::info!(%node_id, "no heartbeat for {} periods; node is down", MISSED_BEATS);
                    let _ = set_status(&store, &node_id, NodeStatus::Down, "heartbeat failure", None).await;
                    down_since.entry(node_id).or_insert(now);
                }
                if !startup_sweep_done && now.duration_since(started) > deadline {
                    startup_sweep_done = true;
                    let stale: Vec<String> = store
                        .list::<Node>()
                        .into_iter()
                        .filter(|n| n.status != NodeStatus::Down && !sessions.contains_key(&n.id))
                        .map(|n| n.id)
                        .collect();
                    for node_id in stale {
                        let _ = set_status(&store, &node_id, NodeStatus::Down, "no session since the manager started", None).await;
                        down_since.entry(node_id).or_insert(now);
                    }
                }
                let overdue: Vec<String> = down_since
                    .iter()
                    .filter(|(_, since)| now.duration_since(**since) >= down_period)
                    .map(|(n, _)| n.clone())
                    .collect();
                for node_id in overdue {
                    down_since.remove(&node_id);
                    orphan_tasks(&store, &node_id, down_period).await;
                }
            }
        }
    }
}

async fn handle(
    store: &Store,
    sessions: &mut HashMap<String, Session>,
    down_since: &mut HashMap<String, Instant>,
    msg: Msg,
) {
    match msg {
        Msg::Open {
            node_id,
            session_id,
            description,
            close,
            reply,
        } => {
            if let Some(old) = sessions.insert(
                node_id.clone(),
                Session {
                    id: session_id,
                    last_beat: Instant::now(),
                    close,
                },
            ) {
                old.close.cancel();
            }
            let r = set_status(store, &node_id, NodeStatus::Ready, "", Some(&description)).await;
            if r.is_err() {
                sessions.remove(&node_id);
            } else {
                down_since.remove(&node_id);
            }
            let _ = reply.send(r);
        }
        Msg::Heartbeat {
            node_id,
            session_id,
            reply,
        } => {
            let known = match sessions.get_mut(&node_id) {
                Some(s) if s.id == session_id => {
                    s.last_beat = Instant::now();
                    true
                }
                _ => false,
            };
            let _ = reply.send(known);
        }
        Msg::Closed {
            node_id,
            session_id,
        } => {
            if sessions.get(&node_id).is_some_and(|s| s.id == session_id) {
                sessions.remove(&node_id);
                tracing::info!(%node_id, "session closed; node is down");
                let _ = set_status(store, &node_id, NodeStatus::Down, "session closed", None).await;
                down_since.entry(node_id).or_insert_with(Instant::now);
            }
        }
        Msg::Removed { node_id } => {
            if let Some(s) = sessions.remove(&node_id) {
                s.close.cancel();
            }
            down_since.remove(&node_id);
        }
    }
}

/// Makes the service tasks of node `node_id`, down for `period`, `Orphaned` (if it is still down).
async fn orphan_tasks(store: &Store, node_id: &str, period: Duration) {
    let now_ms = crate::events::now_ms();
    let mut count = 0;
    let result = store
        .update(|s| {
            if s.get::<Node>(node_id)
                .is_none_or(|n| n.status != NodeStatus::Down)
            {
                return Ok(vec![]);
            }
            let tasks = rswarm_orchestrator::down_node_tasks(s, node_id, now_ms);
            count = tasks.len();
            Ok(tasks.into_iter().map(Txn::update).collect())
        })
        .await;
    match result {
        Ok(_) if count > 0 => tracing::info!(
            %node_id,
            tasks = count,
            "node down for {}; its tasks are orphaned",
            humantime::format_duration(period)
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(%node_id, error = %e, "could not orphan the tasks of a down node"),
    }
}

/// Writes a node's status (and description) if it changed.
async fn set_status(
    store: &Store,
    node_id: &str,
    status: NodeStatus,
    message: &str,
    description: Option<&Description>,
) -> Result<(), StoreError> {
    let result = store
        .update(|s| {
            let Some(node) = s.get::<Node>(node_id) else {
                return Ok(vec![]);
            };
            let mut next = node.clone();
            next.status = status;
            next.status_message = message.to_string();
            if let Some(d) = description {
                d.apply_to(&mut next);
            }
            if next == *node {
                return Ok(vec![]);
            }
            Ok(vec![Txn::update(next)])
        })
        .await
        .map(|_| ());
    if let Err(e) = &result {
        tracing::warn!(%node_id, error = %e, "could not record node status");
    }
    result
}

#[cfg(test)]
mod tests {
    use rswarm_store::{MemoryBackend, Op, StateMachine, Task, TaskState, TaskStatus};

    use super::*;

    fn task(id: &str, node: &str, attachment: bool) -> Op {
        Txn::create(Task {
            id: id.into(),
            node_id: node.into(),
            network_attachment: attachment,
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                ..TaskStatus::default()
            },
            ..Task::default()
        })
    }

    fn state(store: &Store, id: &str) -> TaskState {
        store.get::<Task>(id).expect("task").status.state
    }

    async fn session(monitor: &Monitor, node: &str, id: &str) {
        monitor
            .open(
                node.into(),
                id.into(),
                Description::default(),
                CancellationToken::new(),
            )
            .await
            .expect("open");
    }

    /// Waits (in paused time) until task `id` is in `want`, for at most `limit`.
    async fn reaches(store: &Store, id: &str, want: TaskState, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if state(store, id) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state(store, id) == want
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_down_for_the_period_has_its_service_tasks_orphaned() {
        let store = MemoryBackend::store(StateMachine::new());
        let mut ops = Vec::new();
        for n in ["n1", "n2"] {
            ops.push(Txn::create(Node {
                id: n.into(),
                status: NodeStatus::Ready,
                ..Node::default()
            }));
        }
        ops.extend([
            task("t1", "n1", false),
            task("a1", "n1", true),
            task("t2", "n2", false),
        ]);
        store.commit(Txn::new(ops)).await.expect("commit");
        let cancel = CancellationToken::new();
        let period = Duration::from_secs(3600);
        let (monitor, task) = Monitor::spawn_with(store.clone(), cancel.clone(), period);
        session(&monitor, "n1", "s1").await;
        session(&monitor, "n2", "s2").await;
        // n1 goes down for good. n2 goes down, comes back, and goes down again later: its period
        // starts over.
        monitor.closed("n1".into(), "s1".into()).await;
        monitor.closed("n2".into(), "s2".into()).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        session(&monitor, "n2", "s3").await;
        // Alive (heartbeats every 250 ms) for 10 minutes.
        for _ in 0..2400 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(monitor.heartbeat("n2".into(), "s3".into()).await);
        }
        monitor.closed("n2".into(), "s3".into()).await;
        assert_eq!(store.get::<Node>("n1").unwrap().status, NodeStatus::Down);

        let margin = Duration::from_secs(1);
        assert!(
            !reaches(
                &store,
                "t1",
                TaskState::Orphaned,
                period - Duration::from_secs(1200) - margin
            )
            .await,
            "orphaned before its period"
        );
        assert!(reaches(&store, "t1", TaskState::Orphaned, 2 * margin).await);
        let t1 = store.get::<Task>("t1").unwrap();
        assert!(!t1.holds_addresses());
        assert_eq!(t1.status.message, "its node was down for too long");
        assert_eq!(
            state(&store, "a1"),
            TaskState::Running,
            "a standalone container's attachment is the user's: kept"
        );
        // n2's period runs from its second fall, 20 minutes after n1's.
        assert!(
            !reaches(
                &store,
                "t2",
                TaskState::Orphaned,
                Duration::from_secs(1200) - margin
            )
            .await,
            "n2's period ran from its first fall"
        );
        assert!(reaches(&store, "t2", TaskState::Orphaned, 2 * margin).await);
        cancel.cancel();
        task.await.expect("monitor");
    }
}
