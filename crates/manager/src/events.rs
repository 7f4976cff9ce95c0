//! Cluster events (`rswarm events`): what the store's changes mean to a user, Docker's shape
//! (`service update <id> (name=web, updatestate.new=updating, updatestate.old=completed)`).
//!
//! Every manager turns the change batches of its replica into [`ClusterEvent`]s ([`Recorder`],
//! pure) and keeps the recent ones in a bounded ring ([`EventLog`]: the last [`RING_CAPACITY`]
//! events, none older than [`RING_MAX_AGE`]) so that `--since` can replay them; older events are
//! gone. Followers get new events through a broadcast channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rswarm_api::control::v1 as pb;
use rswarm_store::service::{Service, ServiceMode, Task};
use rswarm_store::{Action, ChangeBatch, Node, Object, StateMachine, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// The most events kept for replay.
pub const RING_CAPACITY: usize = 10_000;
/// The oldest event kept for replay.
pub const RING_MAX_AGE: Duration = Duration::from_secs(3600);
/// Events waiting for a slow follower before it is told it fell behind.
const FOLLOW_BUFFER: usize = 1024;

/// One event, as `rswarm events` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEvent {
    /// Grows by one per event on this manager (deduplicates replay and follow).
    pub seq: u64,
    pub time_ms: u64,
    /// "service", "node" or "task".
    pub kind: &'static str,
    /// "create", "update" or "remove".
    pub action: &'static str,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

impl ClusterEvent {
    pub fn to_pb(&self) -> pb::Event {
        pb::Event {
            r#type: self.kind.into(),
            action: self.action.into(),
            id: self.id.clone(),
            attributes: self.attributes.clone().into_iter().collect(),
            time_unix_nano: self.time_ms.saturating_mul(1_000_000),
        }
    }
}

/// What of an object an update event compares (`<key>.old` / `<key>.new`).
type Tracked = BTreeMap<&'static str, String>;

fn tracked(object: &Object) -> Option<(&'static str, Tracked)> {
    let mut t = Tracked::new();
    let kind = match object {
        Object::Service(s) => {
            t.insert("name", s.spec.name.clone());
            t.insert("image", s.spec.task.image.clone());
            if let ServiceMode::Replicated { replicas } = &s.spec.mode {
                t.insert("replicas", replicas.to_string());
            }
            if let Some(u) = &s.update_status {
                t.insert("updatestate", u.state.as_str().to_string());
            }
            "service"
        }
        Object::Node(n) => {
            t.insert("name", n.hostname.clone());
            t.insert("state", n.status.as_str().to_string());
            t.insert("availability", n.availability.as_str().to_string());
            t.insert("role", n.role().as_str().to_string());
            "node"
        }
        Object::Task(task) => {
            t.insert("name", task_name(task));
            t.insert("state", task.status.state.as_str().to_string());
            t.insert("desiredstate", task.desired_state.as_str().to_string());
            t.insert("node.id", task.node_id.clone());
            t.insert("service.id", task.service_id.clone());
            "task"
        }
        Object::Network(n) => {
            t.insert("name", n.spec.name.clone());
            t.insert("type", n.spec.driver.clone());
            "network"
        }
        Object::Cluster(_) => return None,
    };
    Some((kind, t))
}

/// `web.1` for replicated tasks, `web.<node id>` for global ones.
pub fn task_name(t: &Task) -> String {
    let service = if t.service_name.is_empty() {
        &t.service_id
    } else {
        &t.service_name
    };
    if t.slot > 0 {
        format!("{service}.{}", t.slot)
    } else {
        format!("{service}.{}", t.node_id)
    }
}

/// Attributes every event of the object carries (Docker: `name=`), the rest only when they change.
const ALWAYS: [&str; 1] = ["name"];
/// Attributes a task event always carries.
const TASK_ALWAYS: [&str; 3] = ["name", "node.id", "service.id"];

/// Turns change batches into events. Remembers what it last saw of each object, to say what an
/// update changed. Pure: time comes from the objects (their commit time) or the caller.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: HashMap<(&'static str, String), Tracked>,
    next_seq: u64,
}

impl Recorder {
    /// Starts from the state the first batch follows.
    pub fn new(state: &StateMachine) -> Recorder {
        let mut r = Recorder::default();
        let objects = state
            .list::<Service>()
            .map(|s| Object::Service(s.clone()))
            .chain(state.list::<Node>().map(|n| Object::Node(n.clone())))
            .chain(state.list::<Task>().map(|t| Object::Task(t.clone())));
        for o in objects {
            if let Some((kind, t)) = tracked(&o) {
                r.seen.insert((kind, o.id().to_string()), t);
            }
        }
        r
    }

    /// The events of one committed transaction; `now_ms` dates removals (a removed object carries
    /// the time of its last change only).
    pub fn record(&mut self, batch: &ChangeBatch, now_ms: u64) -> Vec<ClusterEvent> {
        let mut out = Vec::new();
        for change in &batch.changes {
            let Some((kind, now)) = tracked(&change.object) else {
                continue;
            };
            let key = (kind, change.object.id().to_string());
            let meta = change.object.meta();
            let always: &[&str] = if kind == "task" {
                &TASK_ALWAYS
            } else {
                &ALWAYS
            };
            let (action, time_ms, attributes) = match change.action {
                Action::Create => {
                    let attrs = now
                        .iter()
                        .filter(|(k, _)| always.contains(k) || kind == "task" && **k == "state")
                        .map(|(k, v)| ((*k).to_string(), v.clone()))
                        .collect();
                    self.seen.insert(key, now);
                    ("create", meta.created_at_ms.max(meta.updated_at_ms), attrs)
                }
                Action::Update => {
                    let before = self.seen.insert(key, now.clone()).unwrap_or_default();
                    let mut attrs = BTreeMap::new();
                    for (k, v) in &now {
                        if always.contains(k) {
                            attrs.insert((*k).to_string(), v.clone());
                        }
                        let old = before.get(k).cloned().unwrap_or_default();
                        if &old != v && !always.contains(k) {
                            attrs.insert(format!("{k}.new"), v.clone());
                            attrs.insert(format!("{k}.old"), old);
                        }
                    }
                    ("update", meta.updated_at_ms, attrs)
                }
                Action::Delete => {
                    self.seen.remove(&key);
                    let attrs = now
                        .iter()
                        .filter(|(k, _)| always.contains(k))
                        .map(|(k, v)| ((*k).to_string(), v.clone()))
                        .collect();
                    ("remove", now_ms, attrs)
                }
            };
            self.next_seq += 1;
            out.push(ClusterEvent {
                seq: self.next_seq,
                time_ms: if time_ms == 0 { now_ms } else { time_ms },
                kind,
                action,
                id: change.object.id().to_string(),
                attributes,
            });
        }
        out
    }
}

/// `rswarm events --filter`: keys type, event, id, service, node; values of one key: any, keys: all.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    types: Vec<String>,
    actions: Vec<String>,
    ids: Vec<String>,
    services: Vec<String>,
    nodes: Vec<String>,
}

impl EventFilter {
    pub fn parse(filters: &[String]) -> Result<EventFilter, Status> {
        let mut f = EventFilter::default();
        for raw in filters {
            let (key, value) = raw.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!(
                    "bad filter {raw:?}: use key=value, for example type=service"
                ))
            })?;
            let value = value.to_string();
            match key {
                "type" if matches!(value.as_str(), "service" | "node" | "task") => {
                    f.types.push(value)
                }
                "type" => {
                    return Err(Status::invalid_argument(format!(
                        "bad filter {raw:?}: type takes service, node or task"
                    )))
                }
                // Docker says "remove" for services and nodes; accept "delete" too.
                "event" | "action" => match value.as_str() {
                    "create" | "update" | "remove" => f.actions.push(value),
                    "delete" => f.actions.push("remove".into()),
                    _ => {
                        return Err(Status::invalid_argument(format!(
                            "bad filter {raw:?}: event takes create, update or remove"
                        )))
                    }
                },
                "id" => f.ids.push(value),
                "service" => f.services.push(value),
                "node" => f.nodes.push(value),
                other => {
                    return Err(Status::invalid_argument(format!(
                        "invalid filter key {other:?}: use type, event, id, service or node"
                    )))
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, e: &ClusterEvent) -> bool {
        fn any(values: &[String], f: impl Fn(&str) -> bool) -> bool {
            values.is_empty() || values.iter().any(|v| f(v))
        }
        let attr = |k: &str| e.attributes.get(k).map_or("", String::as_str);
        any(&self.types, |t| t == e.kind)
            && any(&self.actions, |a| a == e.action)
            && any(&self.ids, |id| e.id.starts_with(id))
            && any(&self.services, |s| match e.kind {
                "service" => e.id.starts_with(s) || attr("name") == s,
                "task" => {
                    attr("service.id").starts_with(s)
                        || attr("name").rsplit_once('.').map(|(n, _)| n) == Some(s)
                }
                _ => false,
            })
            && any(&self.nodes, |n| match e.kind {
                "node" => e.id.starts_with(n) || attr("name") == n,
                "task" => attr("node.id").starts_with(n),
                _ => false,
            })
    }
}

/// The window of a request: events with `since_ms <= time <= until_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl Window {
    pub fn replays(&self, e: &ClusterEvent) -> bool {
        self.since_ms.is_some_and(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms <= u)
    }

    /// The stream is over once the clock passed `until`.
    pub fn over(&self, now_ms: u64) -> bool {
        self.until_ms.is_some_and(|u| now_ms > u)
    }
}

struct Ring {
    events: VecDeque<Arc<ClusterEvent>>,
}

/// The manager's recent events and the broadcast of new ones. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    ring: Arc<Mutex<Ring>>,
    tx: broadcast::Sender<Arc<ClusterEvent>>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    pub fn new() -> EventLog {
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        EventLog {
            ring: Arc::new(Mutex::new(Ring {
                events: VecDeque::new(),
            })),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `events` (bounded by count and age) and tells the followers.
    pub fn push(&self, events: Vec<ClusterEvent>, now_ms: u64) {
        let mut ring = self.lock();
        for e in events {
            let e = Arc::new(e);
            ring.events.push_back(e.clone());
            // No followers is fine.
            let _ = self.tx.send(e);
        }
        let oldest = now_ms.saturating_sub(RING_MAX_AGE.as_millis() as u64);
        while ring.events.len() > RING_CAPACITY
            || ring.events.front().is_some_and(|e| e.time_ms < oldest)
        {
            ring.events.pop_front();
        }
    }

    /// The kept events matching, and a receiver of every later event (subscribed before the copy,
    /// so nothing falls between; skip what has `seq <=` the last replayed).
    pub fn replay_and_follow(
        &self,
        window: Window,
        filter: &EventFilter,
    ) -> (
        Vec<Arc<ClusterEvent>>,
        u64,
        broadcast::Receiver<Arc<ClusterEvent>>,
    ) {
        let ring = self.lock();
        let rx = self.tx.subscribe();
        let last = ring.events.back().map_or(0, |e| e.seq);
        let replay = ring
            .events
            .iter()
            .filter(|e| window.replays(e) && filter.matches(e))
            .cloned()
            .collect();
        (replay, last, rx)
    }

    /// Records the store's changes until `shutdown` fires (one task per manager).
    pub fn spawn_recorder(&self, store: Store, shutdown: CancellationToken) {
        let log = self.clone();
        tokio::spawn(async move {
            loop {
                let watch = store.watch();
                let mut recorder = Recorder::new(&watch.snapshot);
                let mut events = watch.events;
                loop {
                    let batch = tokio::select! {
                        () = shutdown.cancelled() => return,
                        b = events.recv() => b,
                    };
                    match batch {
                        Ok(batch) => log.push(recorder.record(&batch, now_ms()), now_ms()),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                missed = n,
                                "the event recorder fell behind the store; some events are lost"
                            );
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        });
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::service::{ServiceSpec, UpdateState, UpdateStatus};
    use rswarm_store::{Change, Meta, NodeStatus};

    fn service(name: &str, replicas: u64, t: u64) -> Service {
        Service {
            id: "svc1".into(),
            meta: Meta {
                created_at_ms: 1000,
                updated_at_ms: t,
                ..Meta::default()
            },
            spec: ServiceSpec {
                name: name.into(),
                mode: ServiceMode::Replicated { replicas },
                ..ServiceSpec::default()
            },
            ..Service::default()
        }
    }

    fn batch(action: Action, object: Object) -> ChangeBatch {
        ChangeBatch {
            index: 1,
            changes: vec![Change {
                action,
                object: object.into(),
            }],
        }
    }

    #[test]
    fn service_life_reads_like_docker() {
        let mut r = Recorder::default();
        let e = r.record(
            &batch(Action::Create, Object::Service(service("web", 3, 1000))),
            5,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].kind, e[0].action, e[0].time_ms),
            ("service", "create", 1000)
        );
        assert_eq!(
            e[0].attributes,
            BTreeMap::from([("name".into(), "web".into())])
        );

        let mut s = service("web", 5, 2000);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Updating,
            started_at_ms: 2000,
            completed_at_ms: 0,
            message: String::new(),
        });
        let e = r.record(&batch(Action::Update, Object::Service(s.clone())), 5);
        assert_eq!(e[0].action, "update");
        assert_eq!(e[0].time_ms, 2000);
        let a = &e[0].attributes;
        assert_eq!(a["name"], "web");
        assert_eq!(a["replicas.new"], "5");
        assert_eq!(a["replicas.old"], "3");
        assert_eq!(a["updatestate.new"], "updating");
        assert_eq!(a["updatestate.old"], "");
        assert!(!a.contains_key("image.new"), "unchanged: not shown");

        let e = r.record(&batch(Action::Delete, Object::Service(s)), 9000);
        assert_eq!((e[0].action, e[0].time_ms), ("remove", 9000));
        assert!(e[1..].is_empty());
        assert_eq!(e[0].seq, 3);
    }

    #[test]
    fn node_state_changes_and_cluster_is_silent() {
        let mut n = Node {
            id: "n1".into(),
            hostname: "h2".into(),
            status: NodeStatus::Ready,
            ..Node::default()
        };
        let mut state = StateMachine::new();
        state
            .apply(
                1,
                &rswarm_store::Txn::new(vec![rswarm_store::Txn::create(n.clone())]),
            )
            .unwrap();
        let mut r = Recorder::new(&state);
        n.status = NodeStatus::Down;
        let e = r.record(&batch(Action::Update, Object::Node(n)), 7);
        assert_eq!(e[0].attributes["state.new"], "down");
        assert_eq!(e[0].attributes["state.old"], "ready");
        assert_eq!(e[0].attributes["name"], "h2");
        assert_eq!(e[0].time_ms, 7, "no commit time: the caller's clock");
        let e = r.record(
            &batch(
                Action::Update,
                Object::Cluster(rswarm_store::Cluster::default()),
            ),
            7,
        );
        assert!(e.is_empty());
    }

    fn ev(
        kind: &'static str,
        action: &'static str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> ClusterEvent {
        ClusterEvent {
            seq: 1,
            time_ms: 100,
            kind,
            action,
            id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    #[test]
    fn filters() {
        let f = |v: &[&str]| {
            EventFilter::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let svc = ev("service", "create", "abc", &[("name", "web")]);
        let task = ev(
            "task",
            "update",
            "t1",
            &[("name", "web.1"), ("service.id", "abc"), ("node.id", "n1")],
        );
        let node = ev("node", "update", "n1", &[("name", "h2")]);
        assert!(f(&[]).matches(&svc));
        assert!(f(&["type=service"]).matches(&svc));
        assert!(!f(&["type=service"]).matches(&task));
        assert!(f(&["type=service", "type=node"]).matches(&node));
        assert!(f(&["event=create"]).matches(&svc));
        assert!(!f(&["event=remove"]).matches(&svc));
        assert!(f(&["service=web"]).matches(&svc));
        assert!(f(&["service=web"]).matches(&task));
        assert!(!f(&["service=web"]).matches(&node));
        assert!(f(&["node=h2"]).matches(&node));
        assert!(f(&["node=n1"]).matches(&task));
        assert!(!f(&["type=service", "event=update"]).matches(&svc));
        for bad in ["type=container", "event=start", "colour=red", "x"] {
            assert_eq!(
                EventFilter::parse(&[bad.to_string()]).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn ring_is_bounded_by_count_and_age() {
        let log = EventLog::new();
        let now = 10_000_000;
        let old = ClusterEvent {
            time_ms: now - RING_MAX_AGE.as_millis() as u64 - 1,
            ..ev("node", "update", "n", &[])
        };
        log.push(vec![old], now);
        assert!(log.lock().events.is_empty(), "older than the age limit");
        let many = (0..RING_CAPACITY as u64 + 5)
            .map(|i| ClusterEvent {
                seq: i + 1,
                time_ms: now,
                ..ev("node", "update", "n", &[])
            })
            .collect();
        log.push(many, now);
        let ring = log.lock();
        assert_eq!(ring.events.len(), RING_CAPACITY);
        assert_eq!(ring.events.front().map(|e| e.seq), Some(6));
    }

    #[test]
    fn windows() {
        let w = Window {
            since_ms: Some(100),
            until_ms: Some(200),
        };
        let at = |t| ClusterEvent {
            time_ms: t,
            ..ev("node", "update", "n", &[])
        };
        assert!(w.replays(&at(100)) && w.replays(&at(200)));
        assert!(!w.replays(&at(99)) && !w.replays(&at(201)));
        assert!(
            !Window {
                since_ms: None,
                until_ms: None
            }
            .replays(&at(1)),
            "no since: no replay"
        );
        assert!(w.over(201) && !w.over(200));
    }
}
