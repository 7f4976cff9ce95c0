//! What the dispatcher tells each node to run, and how it records what nodes report.
//!
//! A node's *assignment set* is every task placed on it that the scheduler has assigned (status
//! `assigned` or later), kept until the reaper deletes the task. The stream sends the whole set
//! first, then only what an agent acts on: tasks new to the node, changes of a task's desired
//! state, and tasks that left the set. Status changes the agent itself reported are not echoed.
//! One router ([`Hub`]) reads the store's changes and posts each task id to the streams of its
//! node; a stream coalesces whatever arrived while it was sending.
//!
//! Status reports from all nodes go through one [`StatusBatcher`] task: every report that arrives
//! while a commit is in flight joins the next transaction, so a busy cluster writes few large
//! transactions and an idle one answers at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rswarm_api::dispatcher::v1::AssignmentsMessage;
use rswarm_store::{Object, StateMachine, Store, StoreError, Task, TaskState, TaskStatus, Txn};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::convert::task_to_pb;

/// What the node last heard about each task: its desired state.
pub type Sent = HashMap<String, TaskState>;

/// Network attachments are not run by agents: they are never assigned.
fn assigned_here(t: &Task, node_id: &str) -> bool {
    t.node_id == node_id && t.status.state >= TaskState::Assigned && !t.network_attachment
}

/// The node's complete set, and what was sent.
pub fn full_set(s: &StateMachine, node_id: &str) -> (AssignmentsMessage, Sent) {
    let mut sent = Sent::new();
    let tasks = s
        .list::<Task>()
        .filter(|t| assigned_here(t, node_id))
        .map(|t| {
            sent.insert(t.id.clone(), t.desired_state);
            task_to_pb(t)
        })
        .collect();
    (
        AssignmentsMessage {
            full: true,
            tasks,
            removed: Vec::new(),
        },
        sent,
    )
}

/// The changes to send for the tasks in `touched`, given what was sent; `None` when the node
/// needs to hear nothing. Updates `sent`.
pub fn diff(
    s: &StateMachine,
    node_id: &str,
    touched: &HashSet<String>,
    sent: &mut Sent,
) -> Option<AssignmentsMessage> {
    let mut msg = AssignmentsMessage::default();
    for id in touched {
        match s.get::<Task>(id).filter(|t| assigned_here(t, node_id)) {
            Some(t) => {
                if sent.get(id) != Some(&t.desired_state) {
                    sent.insert(id.clone(), t.desired_state);
                    msg.tasks.push(task_to_pb(t));
                }
            }
            None => {
                if sent.remove(id).is_some() {
                    msg.removed.push(id.clone());
                }
            }
        }
    }
    (!msg.tasks.is_empty() || !msg.removed.is_empty()).then_some(msg)
}

/// What changed for one node since its stream last looked.
#[derive(Default)]
struct Inbox {
    touched: HashSet<String>,
    /// The router fell behind the store: the stream must send the full set again.
    resync: bool,
}

struct Mailbox {
    inbox: Mutex<Inbox>,
    notify: Notify,
}

impl Mailbox {
    fn take(&self) -> Inbox {
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn post(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        self.notify.notify_one();
    }
}

/// Routes the store's task changes to the streams of the nodes they concern: one router task reads
/// every change once, so the cost of a change does not grow with the number of connected nodes.
#[derive(Clone)]
pub struct Hub {
    store: Store,
    nodes: Arc<Mutex<HashMap<String, Vec<Arc<Mailbox>>>>>,
}

impl Hub {
    /// Starts the router; it stops with `cancel`.
    pub fn spawn(store: Store, cancel: CancellationToken) -> Hub {
        // Subscribe here, not in the task: a change committed before the task first runs would
        // otherwise reach neither the router nor a stream that read its full set earlier.
        let events = store.subscribe();
        let hub = Hub {
            store,
            nodes: Arc::default(),
        };
        tokio::spawn(hub.clone().route(events, cancel));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Mailbox>>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn route(
        self,
        mut events: tokio::sync::broadcast::Receiver<Arc<rswarm_store::ChangeBatch>>,
        cancel: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                () = cancel.cancelled() => return,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(batch) => {
                    let nodes = self.lock();
                    for c in &batch.changes {
                        let Object::Task(t) = &*c.object else {
                            continue;
                        };
                        if let Some(boxes) = nodes.get(&t.node_id) {
                            for b in boxes {
                                b.post(|i| {
                                    i.touched.insert(t.id.clone());
                                });
                            }
                        }
                    }
                }
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    if matches!(ev, Err(RecvError::Closed)) {
                        events = self.store.subscribe();
                    }
                    for b in self.lock().values().flatten() {
                        b.post(|i| i.resync = true);
                    }
                }
            }
        }
    }

    /// Streams a node's assignments into `tx` until `stop` fires or the receiver goes away.
    pub async fn stream(
        self,
        node_id: String,
        tx: mpsc::Sender<Result<AssignmentsMessage, tonic::Status>>,
        stop: CancellationToken,
    ) {
        let mailbox = Arc::new(Mailbox {
            inbox: Mutex::default(),
            notify: Notify::new(),
        });
        // Register before reading the full set: no change can fall between the two.
        self.lock()
            .entry(node_id.clone())
            .or_default()
            .push(mailbox.clone());
        let _unregister = Unregister {
            hub: self.clone(),
            node_id: node_id.clone(),
            mailbox: mailbox.clone(),
        };
        let (first, mut sent) = self.store.read(|s| full_set(s, &node_id));
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                () = mailbox.notify.notified() => {}
            }
            let inbox = mailbox.take();
            let msg = if inbox.resync {
                let (full, now) = self.store.read(|s| full_set(s, &node_id));
                sent = now;
                Some(full)
            } else if inbox.touched.is_empty() {
                None
            } else {
                self.store
                    .read(|s| diff(s, &node_id, &inbox.touched, &mut sent))
            };
            if let Some(msg) = msg {
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Unregister {
    hub: Hub,
    node_id: String,
    mailbox: Arc<Mailbox>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut nodes = self.hub.lock();
        if let Some(boxes) = nodes.get_mut(&self.node_id) {
            boxes.retain(|b| !Arc::ptr_eq(b, &self.mailbox));
            if boxes.is_empty() {
                nodes.remove(&self.node_id);
            }
        }
    }
}

/// One node's report about one task.
#[derive(Debug)]
pub struct Report {
    pub node_id: String,
    pub task_id: String,
    pub status: TaskStatus,
}

struct Pending {
    reports: Vec<Report>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle to the task that writes status reports into the store.
#[derive(Clone)]
pub struct StatusBatcher {
    tx: mpsc::Sender<Pending>,
}

/// The change a report makes to a task, if any: reports from a node the task is not on, about an
/// unknown task, or moving the state backwards are ignored (Swarm's rule: states only move
/// forward).
pub fn apply_report(task: &Task, report: &Report) -> Option<Task> {
    if task.node_id != report.node_id || report.status.state < task.status.state {
        return None;
    }
    if report.status.state == task.status.state
        && report.status.err == task.status.err
        && report.status.container_id == task.status.container_id
        && report.status.exit_code == task.status.exit_code
        && report.status.message == task.status.message
    {
        return None;
    }
    let mut next = task.clone();
    next.status = report.status.clone();
    Some(next)
}

impl StatusBatcher {
    pub fn spawn(store: Store, cancel: CancellationToken) -> StatusBatcher {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_batcher(store, rx, cancel));
        StatusBatcher { tx }
    }

    /// Records the reports; resolves once they are committed (or ignored).
    pub async fn report(&self, reports: Vec<Report>) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Pending { reports, done })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

/// Largest number of reports written in one transaction.
const MAX_BATCH: usize = 2048;

async fn run_batcher(store: Store, mut rx: mpsc::Receiver<Pending>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            () = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut batch = vec![first];
        let mut count = batch[0].reports.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.reports.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let result = store
            .update(|s| {
                // The latest report per task wins; each task is written once.
                let mut next: HashMap<&str, Task> = HashMap::new();
                for r in batch.iter().flat_map(|p| &p.reports) {
                    let current = match next.get(r.task_id.as_str()) {
                        Some(t) => t.clone(),
                        None => match s.get::<Task>(&r.task_id) {
                            Some(t) => t.clone(),
                            None => continue,
                        },
                    };
                    if let Some(t) = apply_report(&current, r) {
                        next.insert(r.task_id.as_str(), t);
                    }
                }
                Ok(next.into_values().map(Txn::update).collect())
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(error = %e, reports = count, "could not record task status reports");
        }
        for p in batch {
            let _ = p.done.send(result.clone().map_err(StoreError::Backend));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::MemoryBackend;

    fn task(id: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: node.into(),
            desired_state: desired,
            status: TaskStatus {
                state,
                ..TaskStatus::default()
            },
            ..Task::default()
        }
    }

    async fn store_with(tasks: Vec<Task>) -> Store {
        let store = MemoryBackend::store(StateMachine::new());
        store
            .commit(Txn::new(tasks.into_iter().map(Txn::create).collect()))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn full_set_then_only_what_the_agent_acts_on() {
        let store = store_with(vec![
            task("a", "n1", TaskState::Assigned, TaskState::Running),
            task("b", "n1", TaskState::Pending, TaskState::Running),
            task("c", "n2", TaskState::Running, TaskState::Running),
        ])
        .await;
        let (full, mut sent) = store.read(|s| full_set(s, "n1"));
        assert!(full.full);
        assert_eq!(full.tasks.len(), 1, "pending tasks are not the node's yet");
        assert_eq!(full.tasks[0].id, "a");
        let touched: HashSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // A status change the agent reported itself: nothing to send.
        let mut a = store.get::<Task>("a").unwrap();
        a.status.state = TaskState::Running;
        store.commit(Txn::new(vec![Txn::update(a)])).await.unwrap();
        assert!(store.read(|s| diff(s, "n1", &touched, &mut sent)).is_none());
        // Desired state changes and newly assigned tasks are sent.
        let mut a = store.get::<Task>("a").unwrap();
        a.desired_state = TaskState::Shutdown;
        let mut b = store.get::<Task>("b").unwrap();
        b.status.state = TaskState::Assigned;
        store
            .commit(Txn::new(vec![Txn::update(a), Txn::update(b)]))
            .await
            .unwrap();
        let msg = store.read(|s| diff(s, "n1", &touched, &mut sent)).unwrap();
        assert!(!msg.full);
        let mut ids: Vec<&str> = msg.tasks.iter().map(|t| t.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        // A deleted task leaves the set.
        let a = store.get::<Task>("a").unwrap();
        store.commit(Txn::new(vec![Txn::delete(&a)])).await.unwrap();
        let msg = store.read(|s| diff(s, "n1", &touched, &mut sent)).unwrap();
        assert_eq!(msg.removed, ["a"]);
    }

    #[tokio::test]
    async fn hub_streams_the_full_set_then_changes_of_this_node_only() {
        let store = store_with(vec![task(
            "a",
            "n1",
            TaskState::Assigned,
            TaskState::Running,
        )])
        .await;
        let cancel = CancellationToken::new();
        let hub = Hub::spawn(store.clone(), cancel.clone());
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(hub.clone().stream("n1".into(), tx, cancel.clone()));
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.full);
        assert_eq!(first.tasks.len(), 1);
        // A task on another node, then one on this node.
        store
            .commit(Txn::new(vec![Txn::create(task(
                "x",
                "n2",
                TaskState::Assigned,
                TaskState::Running,
            ))]))
            .await
            .unwrap();
        store
            .commit(Txn::new(vec![Txn::create(task(
                "b",
                "n1",
                TaskState::Assigned,
                TaskState::Running,
            ))]))
            .await
            .unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!next.full);
        assert_eq!(
            next.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn reports_move_forward_only_and_only_from_the_tasks_node() {
        let store = store_with(vec![task(
            "a",
            "n1",
            TaskState::Running,
            TaskState::Running,
        )])
        .await;
        let batcher = StatusBatcher::spawn(store.clone(), CancellationToken::new());
        let report = |node: &str, state| Report {
            node_id: node.into(),
            task_id: "a".into(),
            status: TaskStatus {
                state,
                ..TaskStatus::default()
            },
        };
        batcher
            .report(vec![
                report("n1", TaskState::Starting),
                report("n2", TaskState::Failed),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.get::<Task>("a").unwrap().status.state,
            TaskState::Running
        );
        batcher
            .report(vec![report("n1", TaskState::Failed)])
            .await
            .unwrap();
        assert_eq!(
            store.get::<Task>("a").unwrap().status.state,
            TaskState::Failed
        );
        // Unknown tasks are ignored, not an error.
        batcher
            .report(vec![Report {
                node_id: "n1".into(),
                task_id: "gone".into(),
                status: TaskStatus::default(),
            }])
            .await
            .unwrap();
    }
}
