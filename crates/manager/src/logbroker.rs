//! The log broker (`rswarm service logs`), swarmkit's shape: agents never listen, so logs travel
//! over the agents' own connections to this manager.
//!
//! ```text
//!  CLI ──ServiceLogs──▶ control ──plan_logs (store)──▶ LogBroker::subscribe ──LogSubscription──▶
//!       ◀─lines/errors── forward task ◀──SubEvent── PublishLogs ◀── agent (reads its containers' logs)
//! ```
//!
//! [`plan_logs`] (pure) decides which tasks on which nodes a request covers and which nodes are
//! down. Each node's agent keeps a `ListenSubscriptions` stream open for its session; the broker
//! posts subscriptions there, and the agent answers with one `PublishLogs` stream per
//! subscription: an empty message first (it started), lines, and `close` when it has sent
//! everything (not when following). A node that disconnects, breaks its stream, or does not answer
//! within [`ANSWER_TIMEOUT`] is reported and skipped: a request never waits on a dead node.
//!
//! Everything is bounded: subscriptions to a node wait in a channel of [`LISTEN_QUEUE`], lines in
//! one of [`LINE_QUEUE`] batches per subscription; a slow client slows the agents down (gRPC flow
//! control) instead of growing memory. A subscription ends when its client goes away, and the
//! agents are told to stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rswarm_api::control::v1 as pb;
use rswarm_api::dispatcher::v1::{LogSubscription, PublishLogsMessage, TaskLogLine};
use rswarm_store::{Node, NodeStatus, StateMachine, Task};
use tokio::sync::mpsc;
use tonic::Status;

use crate::events::task_name;
use crate::services::find_service;

/// Subscriptions waiting to be sent to one node.
pub const LISTEN_QUEUE: usize = 64;
/// Batches of lines (or node results) waiting for one subscription's client.
pub const LINE_QUEUE: usize = 64;
/// Messages waiting for the client's stream.
const CLIENT_QUEUE: usize = 16;
/// How long a node may take to start answering a subscription.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a log request covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogPlan {
    /// Reachable nodes (by the store) and their tasks whose logs are wanted.
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Nodes that cannot answer, with why.
    pub errors: Vec<pb::NodeLogError>,
    /// task id → (task name, node id).
    pub tasks: HashMap<String, (String, String)>,
    /// node id → hostname.
    pub node_names: HashMap<String, String>,
}

/// The tasks (and their nodes) whose logs `target` (a service name, id or id prefix, or a task id
/// or id prefix) asks for: every task of the service placed on a node, in any state, since its
/// container may still hold logs. Nodes that are down are reported, not asked.
pub fn plan_logs(s: &StateMachine, target: &str) -> Result<LogPlan, Status> {
    let tasks: Vec<&Task> = match find_service(s, target) {
        Ok(svc) => s
            .list::<Task>()
            .filter(|t| t.service_id == svc.id)
            .collect(),
        Err(e) if e.code() == tonic::Code::NotFound => {
            let by_task: Vec<&Task> = s
                .list::<Task>()
                .filter(|t| t.id.starts_with(target))
                .collect();
            match by_task.as_slice() {
                [t] => vec![*t],
                [] => {
                    return Err(Status::not_found(format!(
                        "no such service or task: {target}; see `rswarm service ls` and `rswarm service ps`"
                    )))
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "task {target} is ambiguous: more than one task id starts with it; use a longer id"
                    )))
                }
            }
        }
        Err(e) => return Err(e),
    };
    let mut plan = LogPlan::default();
    let mut down: BTreeMap<String, pb::NodeLogError> = BTreeMap::new();
    for t in tasks.into_iter().filter(|t| !t.node_id.is_empty()) {
        plan.tasks
            .insert(t.id.clone(), (task_name(t), t.node_id.clone()));
        let node = s.get::<Node>(&t.node_id);
        let name = node.map_or_else(|| t.node_id.clone(), |n| n.hostname.clone());
        plan.node_names.insert(t.node_id.clone(), name.clone());
        let why = match node {
            None => Some("node was removed from the cluster"),
            Some(n) if n.status == NodeStatus::Down => Some("node is down"),
            Some(_) => None,
        };
        match why {
            Some(message) => {
                down.entry(t.node_id.clone())
                    .or_insert_with(|| pb::NodeLogError {
                        node_id: t.node_id.clone(),
                        node_name: name,
                        message: message.into(),
                    });
            }
            None => plan
                .nodes
                .entry(t.node_id.clone())
                .or_default()
                .push(t.id.clone()),
        }
    }
    plan.errors = down.into_values().collect();
    Ok(plan)
}

/// Checks a node's published batch against its subscription: every line must be of a task the
/// subscription asked this node for (which the store placed on this node).
pub fn check_lines(allowed: &HashSet<String>, lines: &[TaskLogLine]) -> Result<(), Status> {
    match lines.iter().find(|l| !allowed.contains(&l.task_id)) {
        Some(l) => Err(Status::permission_denied(format!(
            "task {} is not one of this node's tasks in the subscription; a node may publish only the logs it was asked for",
            l.task_id
        ))),
        None => Ok(()),
    }
}

/// What a subscription's forward task hears.
#[derive(Debug)]
pub enum SubEvent {
    /// The node started answering.
    Started(String),
    Lines(String, Vec<TaskLogLine>),
    /// The node is done: `None` when it sent everything, else why it stopped.
    Done(String, Option<String>),
}

struct Listener {
    id: u64,
    tx: mpsc::Sender<LogSubscription>,
}

struct Sub {
    /// node id → the tasks it was asked for.
    nodes: HashMap<String, HashSet<String>>,
    tx: mpsc::Sender<SubEvent>,
}

#[derive(Default)]
struct State {
    listeners: HashMap<String, Listener>,
    subs: HashMap<String, Sub>,
}

/// The manager's log broker. Cheap to clone.
#[derive(Clone, Default)]
pub struct LogBroker {
    state: Arc<Mutex<State>>,
    next: Arc<AtomicU64>,
}

/// Sends without waiting; when the queue is full, from a task (a node result must not be lost,
/// and the caller holds a lock).
fn post(tx: &mpsc::Sender<SubEvent>, ev: SubEvent) {
    if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(ev).await;
        });
    }
}

impl LogBroker {
    pub fn new() -> LogBroker {
        LogBroker::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A node's session opened its subscription stream; returns its id (for [`Self::unlisten`])
    /// and the subscriptions to send it. Replaces an older stream of the same node.
    pub fn listen(&self, node_id: &str) -> (u64, mpsc::Receiver<LogSubscription>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LISTEN_QUEUE);
        self.lock()
            .listeners
            .insert(node_id.to_string(), Listener { id, tx });
        (id, rx)
    }

    /// The node's stream `id` ended: subscriptions still waiting on it learn that it is gone.
    pub fn unlisten(&self, node_id: &str, id: u64) {
        let mut st = self.lock();
        if st.listeners.get(node_id).is_some_and(|l| l.id == id) {
            st.listeners.remove(node_id);
            for sub in st.subs.values() {
                if sub.nodes.contains_key(node_id) {
                    post(
                        &sub.tx,
                        SubEvent::Done(node_id.to_string(), Some("node disconnected".into())),
                    );
                }
            }
        }
    }

    /// Asks the plan's nodes for their lines. Returns the subscription id, its events, and the
    /// nodes that could not be asked.
    pub fn subscribe(
        &self,
        plan: &LogPlan,
        req: &pb::ServiceLogsRequest,
    ) -> (String, mpsc::Receiver<SubEvent>, Vec<pb::NodeLogError>) {
        let id = format!("sub-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(LINE_QUEUE);
        let mut errors = Vec::new();
        let mut nodes = HashMap::new();
        let mut st = self.lock();
        for (node_id, tasks) in &plan.nodes {
            let msg = LogSubscription {
                id: id.clone(),
                task_ids: tasks.clone(),
                follow: req.follow,
                tail_set: req.tail_set,
                tail: req.tail,
                since: req.since.clone(),
                close: false,
            };
            let error = |message: &str| pb::NodeLogError {
                node_id: node_id.clone(),
                node_name: plan.node_names.get(node_id).cloned().unwrap_or_default(),
                message: message.into(),
            };
            match st.listeners.get(node_id) {
                None => errors.push(error(
                    "node is not connected to this manager (it may be starting, or connected to another manager)",
                )),
                Some(l) => match l.tx.try_send(msg) {
                    Ok(()) => {
                        nodes.insert(node_id.clone(), tasks.iter().cloned().collect());
                    }
                    Err(_) => errors.push(error("node is not taking log requests (too many at once)")),
                },
            }
        }
        st.subs.insert(id.clone(), Sub { nodes, tx });
        (id, rx, errors)
    }

    /// The subscription's client went away: forget it and tell its nodes to stop.
    pub fn unsubscribe(&self, id: &str) {
        let mut st = self.lock();
        let Some(sub) = st.subs.remove(id) else {
            return;
        };
        for node_id in sub.nodes.keys() {
            if let Some(l) = st.listeners.get(node_id) {
                // A full queue: the node will find the subscription gone when it publishes.
                let _ = l.tx.try_send(LogSubscription {
                    id: id.to_string(),
                    close: true,
                    ..LogSubscription::default()
                });
            }
        }
    }

    /// Where a node's published batch goes: `Ok(None)` when the subscription is over (the node
    /// should stop), an error when the node may not publish it.
    pub fn route(
        &self,
        node_id: &str,
        msg: &PublishLogsMessage,
    ) -> Result<Option<mpsc::Sender<SubEvent>>, Status> {
        let st = self.lock();
        let Some(sub) = st.subs.get(&msg.subscription_id) else {
            return Ok(None);
        };
        let Some(allowed) = sub.nodes.get(node_id) else {
            return Err(Status::permission_denied(format!(
                "subscription {} did not ask node {node_id} for logs",
                msg.subscription_id
            )));
        };
        check_lines(allowed, &msg.lines)?;
        Ok(Some(sub.tx.clone()))
    }

    /// Runs one `ServiceLogs` request: subscribes, forwards lines and node errors to `out`,
    /// and ends (unsubscribing) when every node is done (without follow) or the client is gone.
    pub fn serve(
        &self,
        plan: LogPlan,
        req: pb::ServiceLogsRequest,
    ) -> mpsc::Receiver<Result<pb::ServiceLogsMessage, Status>> {
        let (out, rx) = mpsc::channel(CLIENT_QUEUE);
        let (sub_id, mut events, errors) = self.subscribe(&plan, &req);
        let broker = self.clone();
        let error = move |plan: &LogPlan, node_id: &str, message: String| pb::NodeLogError {
            node_id: node_id.to_string(),
            node_name: plan.node_names.get(node_id).cloned().unwrap_or_default(),
            message,
        };
        tokio::spawn(async move {
            let mut pending: HashSet<String> = plan
                .nodes
                .keys()
                .filter(|n| !errors.iter().any(|e| &e.node_id == *n))
                .cloned()
                .collect();
            let mut unanswered = pending.clone();
            let mut first: Vec<pb::NodeLogError> = plan.errors.clone();
            first.extend(errors);
            let deadline = tokio::time::sleep(ANSWER_TIMEOUT);
            tokio::pin!(deadline);
            let mut ok = first.is_empty()
                || out
                    .send(Ok(pb::ServiceLogsMessage {
                        lines: vec![],
                        errors: first,
                    }))
                    .await
                    .is_ok();
            while ok && (req.follow || !pending.is_empty()) {
                let msg = tokio::select! {
                    () = out.closed() => break,
                    () = &mut deadline, if !unanswered.is_empty() => {
                        let errors = unanswered
                            .drain()
                            .map(|n| {
                                pending.remove(&n);
                                error(&plan, &n, format!("node did not answer within {}s", ANSWER_TIMEOUT.as_secs()))
                            })
                            .collect();
                        pb::ServiceLogsMessage { lines: vec![], errors }
                    }
                    ev = events.recv() => match ev {
                        // Cannot happen: the broker holds a sender until unsubscribe.
                        None => break,
                        Some(SubEvent::Started(n)) => {
                            unanswered.remove(&n);
                            continue;
                        }
                        Some(SubEvent::Lines(n, lines)) => {
                            unanswered.remove(&n);
                            let node_name = plan.node_names.get(&n).cloned().unwrap_or_default();
                            let lines = lines
                                .into_iter()
                                .map(|l| pb::LogLine {
                                    task_name: plan.tasks.get(&l.task_id).map(|t| t.0.clone()).unwrap_or_default(),
                                    task_id: l.task_id,
                                    node_id: n.clone(),
                                    node_name: node_name.clone(),
                                    stream: l.stream,
                                    data: l.data,
                                    time: l.time,
                                })
                                .collect();
                            pb::ServiceLogsMessage { lines, errors: vec![] }
                        }
                        Some(SubEvent::Done(n, why)) => {
                            unanswered.remove(&n);
                            if !pending.remove(&n) {
                                continue;
                            }
                            match why {
                                None => continue,
                                Some(why) => pb::ServiceLogsMessage {
                                    lines: vec![],
                                    errors: vec![error(&plan, &n, why)],
                                },
                            }
                        }
                    },
                };
                ok = out.send(Ok(msg)).await.is_ok();
            }
            broker.unsubscribe(&sub_id);
            tracing::debug!(subscription = %sub_id, "log subscription ended");
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::{Service, ServiceSpec, TaskState, TaskStatus, Txn};

    fn state() -> StateMachine {
        let mut s = StateMachine::new();
        let node = |id: &str, host: &str, status| Node {
            id: id.into(),
            hostname: host.into(),
            status,
            ..Node::default()
        };
        let task = |id: &str, slot, node: &str| Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            status: TaskStatus {
                state: TaskState::Running,
                ..TaskStatus::default()
            },
            ..Task::default()
        };
        let ops = vec![
            Txn::create(node("n1", "h1", NodeStatus::Ready)),
            Txn::create(node("n2", "h2", NodeStatus::Ready)),
            Txn::create(node("n3", "h3", NodeStatus::Down)),
            Txn::create(Service {
                id: "svc".into(),
                spec: ServiceSpec {
                    name: "web".into(),
                    ..ServiceSpec::default()
                },
                ..Service::default()
            }),
            Txn::create(task("t1", 1, "n1")),
            Txn::create(task("t2", 2, "n2")),
            Txn::create(task("t3", 3, "n3")),
            Txn::create(task("t4", 4, "n1")),
            Txn::create(task("t5", 5, "")),
            Txn::create(Task {
                service_id: "other".into(),
                ..task("x1", 1, "n2")
            }),
        ];
        s.apply(1, &Txn::new(ops)).unwrap();
        s
    }

    #[test]
    fn a_service_covers_its_placed_tasks_and_reports_down_nodes() {
        let p = plan_logs(&state(), "web").unwrap();
        assert_eq!(
            p.nodes,
            BTreeMap::from([
                ("n1".to_string(), vec!["t1".to_string(), "t4".to_string()]),
                ("n2".to_string(), vec!["t2".to_string()]),
            ])
        );
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].node_name, "h3");
        assert_eq!(p.errors[0].message, "node is down");
        assert_eq!(p.tasks["t3"], ("web.3".to_string(), "n3".to_string()));
        assert!(!p.tasks.contains_key("t5"), "unplaced: no logs anywhere");
        assert_eq!(plan_logs(&state(), "sv").unwrap(), p, "id prefix");
    }

    #[test]
    fn a_task_covers_itself() {
        let p = plan_logs(&state(), "t2").unwrap();
        assert_eq!(
            p.nodes,
            BTreeMap::from([("n2".to_string(), vec!["t2".to_string()])])
        );
        assert_eq!(
            plan_logs(&state(), "t").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            plan_logs(&state(), "nope").unwrap_err().code(),
            tonic::Code::NotFound
        );
    }

    #[test]
    fn nodes_publish_only_what_they_were_asked() {
        let allowed: HashSet<String> = ["t1".to_string()].into();
        let line = |t: &str| TaskLogLine {
            task_id: t.into(),
            ..TaskLogLine::default()
        };
        assert!(check_lines(&allowed, &[line("t1")]).is_ok());
        assert_eq!(
            check_lines(&allowed, &[line("t1"), line("t2")])
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
    }

    #[tokio::test]
    async fn serve_ends_when_nodes_are_done_or_gone() {
        let broker = LogBroker::new();
        let (l1, mut sub1) = broker.listen("n1");
        let (_l2, _sub2) = broker.listen("n2");
        let plan = plan_logs(&state(), "web").unwrap();
        let mut rx = broker.serve(plan, pb::ServiceLogsRequest::default());
        // The down node first.
        let m = rx.recv().await.unwrap().unwrap();
        assert_eq!(m.errors[0].node_name, "h3");
        let s = sub1.recv().await.unwrap();
        assert_eq!(s.task_ids, ["t1", "t4"]);
        // n1 publishes a line of its own and finishes; a line of another node's task is refused.
        let bad = PublishLogsMessage {
            subscription_id: s.id.clone(),
            lines: vec![TaskLogLine {
                task_id: "t2".into(),
                ..TaskLogLine::default()
            }],
            close: false,
        };
        assert!(broker.route("n1", &bad).is_err());
        let tx = broker
            .route(
                "n1",
                &PublishLogsMessage {
                    subscription_id: s.id.clone(),
                    ..PublishLogsMessage::default()
                },
            )
            .unwrap()
            .unwrap();
        tx.send(SubEvent::Lines(
            "n1".into(),
            vec![TaskLogLine {
                task_id: "t1".into(),
                stream: 1,
                data: b"hello\n".to_vec(),
                time: String::new(),
            }],
        ))
        .await
        .unwrap();
        tx.send(SubEvent::Done("n1".into(), None)).await.unwrap();
        let m = rx.recv().await.unwrap().unwrap();
        assert_eq!(m.lines[0].task_name, "web.1");
        assert_eq!(m.lines[0].node_name, "h1");
        // n2's session ends: reported, and the request is over.
        broker.unlisten("n2", 99); // not its current stream: ignored
        drop(broker.listen("n2"));
        let _ = l1;
        let n2 = broker.lock().listeners.get("n2").map(|l| l.id).unwrap();
        broker.unlisten("n2", n2);
        let m = rx.recv().await.unwrap().unwrap();
        assert_eq!(m.errors[0].node_name, "h2");
        assert_eq!(m.errors[0].message, "node disconnected");
        assert!(
            rx.recv().await.is_none(),
            "every node done: the stream ends"
        );
        assert!(broker.lock().subs.is_empty(), "unsubscribed");
    }
}
