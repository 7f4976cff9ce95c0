//! Node liveness: one task owns every node's session and last heartbeat, and is the only writer of
//! node status (Ready/Down) to the store.
//!
//! A node is Down when its session stream closes (its agent died or disconnected: seen at once) or
//! when no heartbeat arrived for [`MISSED_BEATS`] periods (host or network gone). A restarted
//! manager gives every node [`MISSED_BEATS`] periods to reconnect before marking it Down.

use std::collections::HashMap;
use std::time::Duration;

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
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(store, rx, cancel));
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

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>, cancel: CancellationToken) {
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let started = Instant::now();
    let mut startup_sweep_done = false;
    let mut tick = tokio::time::interval(period(&store) / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                handle(&store, &mut sessions, msg).await;
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
                    }
                }
            }
        }
    }
}

async fn handle(store: &Store, sessions: &mut HashMap<String, Session>, msg: Msg) {
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
            }
        }
        Msg::Removed { node_id } => {
            if let Some(s) = sessions.remove(&node_id) {
                s.close.cancel();
            }
        }
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
