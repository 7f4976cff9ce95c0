//! The leader's loops, the dispatcher's router and status batcher together over an in-memory store,
//! with simulated agents (in-process tasks that read their node's assignments and report tasks
//! running, or failed). Real containers are the end-to-end tests' business (`tests/services.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rswarm_manager::assignments::{Hub, Report, StatusBatcher};
use rswarm_manager::orchestration;
use rswarm_store::{
    Availability, MemoryBackend, Node, NodeStatus, RestartCondition, Service, ServiceMode,
    ServiceSpec, StateMachine, Store, Task, TaskSpec, TaskState, TaskStatus, Txn,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A simulated agent: every task assigned with desired running is reported running; with
/// `fail_image`, tasks of that image fail instead. Tasks asked to shut down report shutdown.
async fn agent(
    hub: Hub,
    batcher: StatusBatcher,
    node_id: String,
    fail_image: Option<String>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(hub.stream(node_id.clone(), tx, cancel.clone()));
    while let Some(Ok(msg)) = rx.recv().await {
        let mut reports = Vec::new();
        for t in &msg.tasks {
            let state = t
                .status
                .as_ref()
                .map(|s| s.state.clone())
                .unwrap_or_default();
            let image = t.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default();
            let (next, err) = match (t.desired_state.as_str(), state.as_str()) {
                ("running", "assigned") if Some(&image) == fail_image.as_ref() => {
                    (TaskState::Failed, "task: non-zero exit (1)".to_string())
                }
                ("running", "assigned") => (TaskState::Running, String::new()),
                ("shutdown" | "remove", s)
                    if s != "shutdown" && s != "failed" && s != "complete" =>
                {
                    (TaskState::Shutdown, String::new())
                }
                _ => continue,
            };
            reports.push(Report {
                node_id: node_id.clone(),
                task_id: t.id.clone(),
                status: TaskStatus {
                    state: next,
                    timestamp_ms: now_ms(),
                    err,
                    exit_code: (next == TaskState::Failed).then_some(1),
                    ..TaskStatus::default()
                },
            });
        }
        if batcher.report(reports).await.is_err() {
            return;
        }
    }
}

struct World {
    store: Store,
    cancel: CancellationToken,
    hub: Hub,
    batcher: StatusBatcher,
    agents: BTreeMap<String, CancellationToken>,
}

impl World {
    async fn new(nodes: usize, fail_image: Option<&str>) -> World {
        let store = MemoryBackend::store(StateMachine::new());
        let ns: Vec<_> = (1..=nodes)
            .map(|i| {
                Txn::create(Node {
                    id: format!("n{i}"),
                    hostname: format!("h{i}"),
                    status: NodeStatus::Ready,
                    os: "linux".into(),
                    arch: "amd64".into(),
                    ..Node::default()
                })
            })
            .collect();
        store.commit(Txn::new(ns)).await.unwrap();
        let cancel = CancellationToken::new();
        for l in orchestration::loops() {
            tokio::spawn(orchestration::run_loop(l, store.clone(), cancel.clone()));
        }
        let mut w = World {
            hub: Hub::spawn(store.clone(), cancel.clone()),
            batcher: StatusBatcher::spawn(store.clone(), cancel.clone()),
            store,
            cancel,
            agents: BTreeMap::new(),
        };
        for i in 1..=nodes {
            w.start_agent(&format!("n{i}"), fail_image.map(str::to_string));
        }
        w
    }

    fn start_agent(&mut self, node: &str, fail_image: Option<String>) {
        let token = self.cancel.child_token();
        tokio::spawn(agent(
            self.hub.clone(),
            self.batcher.clone(),
            node.into(),
            fail_image,
            token.clone(),
        ));
        self.agents.insert(node.into(), token);
    }

    async fn set_node(&self, node: &str, f: impl Fn(&mut Node)) {
        self.store
            .update(|s| {
                let mut n = s.get::<Node>(node).unwrap().clone();
                f(&mut n);
                Ok(vec![Txn::update(n)])
            })
            .await
            .unwrap();
    }

    async fn create(&self, name: &str, replicas: u64, image: &str, restart: RestartCondition) {
        let mut task = TaskSpec {
            image: image.into(),
            ..TaskSpec::default()
        };
        task.restart.condition = restart;
        task.restart.delay_ms = 0;
        self.store
            .commit(Txn::new(vec![Txn::create(Service {
                id: format!("svc-{name}"),
                spec: ServiceSpec {
                    name: name.into(),
                    mode: ServiceMode::Replicated { replicas },
                    task,
                    ..ServiceSpec::default()
                },
                spec_version: 1,
                ..Service::default()
            })]))
            .await
            .unwrap();
    }

    /// Running tasks (desired running too) per node.
    fn running(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.store.list::<Task>() {
            if t.status.state == TaskState::Running && t.desired_state == TaskState::Running {
                *m.entry(t.node_id.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    async fn wait(&self, what: &str, mut cond: impl FnMut(&World) -> bool) -> Duration {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}: running {:?}\nservices: {:#?}\ntasks: {:#?}",
                self.running(),
                self.store
                    .list::<Service>()
                    .iter()
                    .map(|s| (
                        &s.spec.name,
                        s.spec_version,
                        &s.spec.task.image,
                        &s.update_status
                    ))
                    .collect::<Vec<_>>(),
                self.store
                    .list::<Task>()
                    .iter()
                    .map(|t| (
                        &t.service_name,
                        t.slot,
                        &t.spec.image,
                        t.spec_version,
                        t.desired_state,
                        t.status.state,
                        &t.node_id
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_spread_then_follow_node_loss_and_drain() {
    let w = World::new(3, None).await;
    w.create("web", 6, "busybox", RestartCondition::Any).await;
    w.wait("2/2/2", |w| {
        w.running() == counts(&[("n1", 2), ("n2", 2), ("n3", 2)])
    })
    .await;

    // n3 goes down: its tasks are replaced on n1 and n2 at once.
    w.agents["n3"].cancel();
    w.set_node("n3", |n| n.status = NodeStatus::Down).await;
    w.wait("3/3 after n3 went down", |w| {
        w.running() == counts(&[("n1", 3), ("n2", 3)])
    })
    .await;
    // Scale down to 2, then drain n1: everything ends on n2.
    w.store
        .update(|s| {
            let mut svc = s.get::<Service>("svc-web").unwrap().clone();
            svc.spec.mode = ServiceMode::Replicated { replicas: 2 };
            Ok(vec![Txn::update(svc)])
        })
        .await
        .unwrap();
    w.set_node("n1", |n| n.availability = Availability::Drain)
        .await;
    w.wait("2 on n2", |w| w.running() == counts(&[("n2", 2)]))
        .await;
    // The reaper deletes removed tasks once stopped; history stays bounded.
    w.wait("reaped", |w| {
        w.store
            .list::<Task>()
            .iter()
            .all(|t| t.desired_state != TaskState::Remove || t.status.state <= TaskState::Running)
    })
    .await;
    w.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tasks_follow_the_restart_policy() {
    let w = World::new(1, Some("bad")).await;
    w.create("once", 1, "bad", RestartCondition::None).await;
    w.wait("the failed task", |w| {
        w.store
            .list::<Task>()
            .iter()
            .any(|t| t.status.state == TaskState::Failed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks = w.store.list::<Task>();
    assert_eq!(
        tasks.len(),
        1,
        "restart condition none: no replacement: {tasks:?}"
    );
    assert_eq!(tasks[0].status.err, "task: non-zero exit (1)");

    w.create("again", 1, "bad", RestartCondition::OnFailure)
        .await;
    w.wait("three attempts of slot 1", |w| {
        w.store
            .list::<Task>()
            .iter()
            .filter(|t| t.service_id == "svc-again")
            .count()
            >= 3
    })
    .await;
    w.cancel.cancel();
}

impl World {
    async fn update_service(&self, name: &str, f: impl Fn(&mut ServiceSpec)) {
        let id = format!("svc-{name}");
        self.store
            .update(|s| {
                let mut svc = s.get::<Service>(&id).unwrap().clone();
                let mut spec = svc.spec.clone();
                f(&mut spec);
                svc.previous_spec = Some(svc.spec.clone());
                svc.spec = spec;
                svc.spec_version += 1;
                svc.update_status = Some(rswarm_store::UpdateStatus {
                    state: rswarm_store::UpdateState::Updating,
                    started_at_ms: now_ms(),
                    completed_at_ms: 0,
                    message: String::new(),
                });
                Ok(vec![Txn::update(svc)])
            })
            .await
            .unwrap();
    }

    fn images_running(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .store
            .list::<Task>()
            .into_iter()
            .filter(|t| {
                t.service_id == format!("svc-{service}")
                    && t.status.state == TaskState::Running
                    && t.desired_state == TaskState::Running
            })
            .map(|t| t.spec.image)
            .collect();
        v.sort();
        v
    }

    fn update_state(&self, service: &str) -> Option<rswarm_store::UpdateState> {
        self.store
            .get::<Service>(&format!("svc-{service}"))
            .and_then(|s| s.update_status.map(|u| u.state))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_complete_pause_and_roll_back() {
    let w = World::new(2, Some("bad")).await;
    w.create("web", 4, "v1", RestartCondition::Any).await;
    w.wait("4 x v1", |w| w.images_running("web") == vec!["v1"; 4])
        .await;

    // start-first, parallelism 2: never fewer than 4 running.
    w.update_service("web", |s| {
        s.task.image = "v2".into();
        s.update.parallelism = 2;
        s.update.monitor_ms = 50;
        s.update.order = rswarm_store::UpdateOrder::StartFirst;
    })
    .await;
    let start = Instant::now();
    while w.images_running("web") != vec!["v2"; 4] {
        assert!(
            w.images_running("web").len() >= 4,
            "start-first keeps the count up: {:?}",
            w.images_running("web")
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "update stuck: {:?}",
            w.images_running("web")
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    w.wait("completed", |w| {
        w.update_state("web") == Some(rswarm_store::UpdateState::Completed)
    })
    .await;

    // A failing image with failure action pause: the update pauses.
    w.update_service("web", |s| {
        s.task.image = "bad".into();
        s.update.order = rswarm_store::UpdateOrder::StopFirst;
        s.update.parallelism = 1;
        s.update.failure_action = rswarm_store::FailureAction::Pause;
    })
    .await;
    w.wait("paused", |w| {
        w.update_state("web") == Some(rswarm_store::UpdateState::Paused)
    })
    .await;

    // Same with rollback: back to v2 everywhere.
    w.create("api", 3, "v2", RestartCondition::Any).await;
    w.wait("3 x v2", |w| w.images_running("api") == vec!["v2"; 3])
        .await;
    w.update_service("api", |s| {
        s.task.image = "bad".into();
        s.update.monitor_ms = 50;
        s.rollback.monitor_ms = 50;
        s.update.failure_action = rswarm_store::FailureAction::Rollback;
    })
    .await;
    w.wait("rolled back", |w| {
        w.update_state("api") == Some(rswarm_store::UpdateState::RollbackCompleted)
            && w.images_running("api") == vec!["v2"; 3]
    })
    .await;
    w.cancel.cancel();
}
