//! The worker: runs the tasks the managers assign to this node as containers of the node's engine,
//! and reports their states.
//!
//! Shape (one task per concern, each with its own state, fed by bounded channels, all under the
//! agent's cancellation token):
//!
//! ```text
//!  session ──AssignmentsMessage──▶ table ──watch(Assignment)──▶ runner (one per task) ──▶ engine
//!     │                                                           │
//!     └──ReportTarget (current session)──▶ reporter ◀──Report─────┘ ──UpdateTaskStatus──▶ manager
//! ```
//!
//! The table owns the set of runners and reconciles assignment messages against them and against
//! the task containers on the node (found by their `com.docker.swarm.task.id` label, which is how
//! a restarted agent adopts the containers its predecessor left running). A runner drives one
//! task's container; the reporter batches states and resends them over each new session.
//!
//! Stopping the agent stops the runners, never the containers.

mod health;
mod reconcile;
mod reporter;
mod runner;
mod spec;
mod state;

use std::collections::{HashMap, HashSet};
use std::future::Future;

use std::sync::Arc;

use rswarm_api::dispatcher::v1::{AssignmentsMessage, NetworkTable};
use rswarm_api::types::v1::Task;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use health::{HealthConfig, HealthTracker, Transition};
pub use reconcile::{reconcile_changes, reconcile_full, Action, PresentContainer};
pub use reporter::{Outbox, Report, ReportTarget, FLUSH_INTERVAL};
pub use spec::{
    container_name, create_request, labels, publish_arg, registry_credentials, stop_timeout,
    LABEL_NODE_ID, LABEL_SERVICE_ID, LABEL_SERVICE_NAME, LABEL_TASK_ID, LABEL_TASK_NAME,
};
pub use state::{parse_state, Desired, Progress, TaskState};

use crate::engine::Engine;
use crate::netagent::NetView;
use runner::{Assignment, Runner};

/// Assignment messages waiting for the table.
const ASSIGNMENT_QUEUE: usize = 16;
/// Task states waiting for the reporter.
const REPORT_QUEUE: usize = 1024;

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The node's worker, before it runs: hand it to [`crate::session::run`].
pub struct Worker {
    engine: Engine,
}

/// The session's side of a running worker.
pub struct WorkerLink {
    /// Assignment messages of the current session, in order.
    pub assignments: mpsc::Sender<AssignmentsMessage>,
    /// The current session (`None` between sessions), for the reporter.
    pub target: watch::Sender<Option<ReportTarget>>,
    /// The node's engine, whose task containers' logs the session publishes.
    pub engine: Engine,
    /// The session's network tables, for the network agent and the runners.
    pub tables: watch::Sender<Option<Arc<NetworkTable>>>,
}

impl Worker {
    pub fn new(engine: Engine) -> Worker {
        Worker { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Returns the link the session feeds and the future that runs the worker until `cancel`
    /// fires (containers keep running).
    pub fn start(
        self,
        node_id: String,
        nets: NetView,
        tables: watch::Sender<Option<Arc<NetworkTable>>>,
        cancel: CancellationToken,
    ) -> (WorkerLink, impl Future<Output = ()> + Send + 'static) {
        let (atx, arx) = mpsc::channel(ASSIGNMENT_QUEUE);
        let (ttx, trx) = watch::channel(None);
        let (rtx, rrx) = mpsc::channel(REPORT_QUEUE);
        let engine = self.engine.clone();
        let table = Table {
            engine: self.engine,
            node_id,
            nets,
            runners: HashMap::new(),
            cleaning: HashSet::new(),
            jobs: JoinSet::new(),
            reports: rtx,
            cancel: cancel.clone(),
        };
        let driver = async move {
            tokio::join!(table.run(arx), reporter::run(rrx, trx, cancel));
        };
        (
            WorkerLink {
                assignments: atx,
                target: ttx,
                engine,
                tables,
            },
            driver,
        )
    }
}

enum Job {
    Runner,
    /// The id of a container that was removed.
    Cleanup(String),
}

/// The node's task table: which tasks have a runner.
struct Table {
    engine: Engine,
    node_id: String,
    nets: NetView,
    runners: HashMap<String, watch::Sender<Assignment>>,
    /// Containers being removed.
    cleaning: HashSet<String>,
    jobs: JoinSet<Job>,
    reports: mpsc::Sender<Report>,
    cancel: CancellationToken,
}

impl Table {
    async fn run(mut self, mut assignments: mpsc::Receiver<AssignmentsMessage>) {
        let mut open = true;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                m = assignments.recv(), if open => match m {
                    Some(m) => self.apply(m),
                    None => open = false,
                },
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Err(e) = &done {
                        tracing::error!(error = %e, "a task runner failed");
                    }
                    match done {
                        Ok(Job::Cleanup(id)) => {
                            self.cleaning.remove(&id);
                        }
                        Ok(Job::Runner) | Err(_) => self.runners.retain(|_, tx| !tx.is_closed()),
                    }
                }
            }
        }
        // Runners see the cancellation and return, leaving their containers running.
        while self.jobs.join_next().await.is_some() {}
    }

    /// The task containers on the node.
    fn present(&self) -> Vec<PresentContainer> {
        self.engine
            .list(true)
            .into_iter()
            .filter_map(|r| {
                let task_id = r.labels.get(LABEL_TASK_ID)?.clone();
                Some(PresentContainer {
                    running: r.is_running(),
                    created: r.created,
                    id: r.id,
                    task_id,
                })
            })
            .collect()
    }

    fn apply(&mut self, m: AssignmentsMessage) {
        let present = self.present();
        let driven: HashSet<String> = self.runners.keys().cloned().collect();
        let actions = if m.full {
            tracing::info!(tasks = m.tasks.len(), "full task assignment set");
            reconcile_full(&present, &driven, m.tasks)
        } else {
            tracing::debug!(
                tasks = m.tasks.len(),
                removed = m.removed.len(),
                "task assignment changes"
            );
            reconcile_changes(&present, &driven, m.tasks, &m.removed)
        };
        for action in actions {
            match action {
                Action::Update(task) => {
                    if let Some(tx) = self.runners.get(&task.id) {
                        tx.send_replace(Assignment::Task(Box::new(task)));
                    }
                }
                Action::Run { task, container } => self.spawn_runner(task, container),
                Action::Forget(id) => {
                    if let Some(tx) = self.runners.remove(&id) {
                        tx.send_replace(Assignment::Gone);
                    }
                }
                Action::RemoveContainer(id) => self.spawn_cleanup(id),
            }
        }
    }

    fn spawn_runner(&mut self, task: Task, container: Option<String>) {
        let (tx, rx) = watch::channel(Assignment::Task(Box::new(task.clone())));
        self.runners.insert(task.id.clone(), tx);
        let runner = Runner::new(
            self.engine.clone(),
            self.node_id.clone(),
            self.nets.clone(),
            task,
            rx,
            self.reports.clone(),
            self.cancel.clone(),
        );
        self.jobs.spawn(async move {
            runner.run(container).await;
            Job::Runner
        });
    }

    /// Stops (with its grace period) and removes a container no assigned task owns.
    fn spawn_cleanup(&mut self, id: String) {
        if !self.cleaning.insert(id.clone()) {
            return;
        }
        let engine = self.engine.clone();
        let cancel = self.cancel.clone();
        self.jobs.spawn(async move {
            tracing::info!(container = %id, "removing the container of a task no longer assigned");
            tokio::select! {
                r = engine.stop(&id, None) => if let Err(e) = r {
                    tracing::warn!(container = %id, error = %e, "cannot stop the container");
                },
                () = cancel.cancelled() => return Job::Cleanup(id),
            }
            if let Err(e) = engine.remove(&id, true).await {
                tracing::warn!(container = %id, error = %e, "cannot remove the container");
            }
            Job::Cleanup(id)
        });
    }
}
