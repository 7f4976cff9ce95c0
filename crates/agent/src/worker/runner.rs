//! One task's life on this node: a runner per assigned task drives its container through the
//! engine (pull, create, start, health checks, stop, remove) and reports each state it reaches.
//! States only move forward; a task whose run ended is never started again (the orchestrator
//! makes a new task instead).

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use rswarm_api::types::v1::{Task, TaskStatus};
use rswarm_image::ImageRef;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::{HealthConfig, HealthTracker, Transition};
use super::reporter::Report;
use super::spec;
use super::state::{parse_state, Desired, Progress, TaskState};
use crate::engine::{ContainerRecord, Engine, Status};
use crate::netagent::NetView;

/// What the worker tells a runner.
#[derive(Clone, Debug)]
pub enum Assignment {
    /// The task's latest version.
    Task(Box<Task>),
    /// The task is no longer assigned to this node.
    Gone,
}

enum Flow {
    /// Take the next step now.
    Continue,
    /// Nothing to do until the task changes.
    Idle,
    /// The task is gone and its container removed.
    Done,
    /// The agent is stopping: leave the container as it is.
    Stop,
}

/// What a pull ended with.
enum Pull {
    Ready,
    /// The task no longer wants a container, or the agent stops.
    Interrupted,
    Failed(String),
}

type Probe = Pin<Box<dyn Future<Output = bool> + Send>>;

pub struct Runner {
    engine: Engine,
    node_id: String,
    nets: NetView,
    task: Task,
    gone: bool,
    updates: watch::Receiver<Assignment>,
    reports: mpsc::Sender<Report>,
    cancel: CancellationToken,
    progress: Progress,
    container: Option<String>,
    health: Option<HealthConfig>,
    /// Health counting and when the container started.
    tracker: Option<(HealthTracker, Instant)>,
    next_check: Option<Instant>,
}

/// How long a task waits for the manager's table of its networks.
const NETWORK_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The error text of a run that ended badly, or `None` for a clean exit.
pub fn exit_error(exit_code: i64, oom_killed: bool, error: &str) -> Option<String> {
    if oom_killed {
        return Some(format!(
            "task: non-zero exit ({exit_code}): the container was killed for running out of memory (OOM)"
        ));
    }
    if exit_code == 0 && error.is_empty() {
        return None;
    }
    if error.is_empty() {
        Some(format!("task: non-zero exit ({exit_code})"))
    } else {
        Some(format!("task: non-zero exit ({exit_code}): {error}"))
    }
}

async fn probe_once(engine: Engine, id: String, health: HealthConfig) -> bool {
    match engine.exec_capture(&id, &health.argv, health.timeout).await {
        Ok(c) if c.exit_code == Some(0) => true,
        Ok(c) => {
            match c.exit_code {
                Some(code) => {
                    tracing::debug!(container = %id, code, output = %c.output.trim_end(), "health check failed")
                }
                None => {
                    tracing::debug!(container = %id, timeout = ?health.timeout, "health check timed out")
                }
            }
            false
        }
        Err(e) => {
            tracing::debug!(container = %id, error = %e, "health check could not run");
            false
        }
    }
}

impl Runner {
    pub fn new(
        engine: Engine,
        node_id: String,
        nets: NetView,
        task: Task,
        updates: watch::Receiver<Assignment>,
        reports: mpsc::Sender<Report>,
        cancel: CancellationToken,
    ) -> Runner {
        let known = parse_state(task.status.as_ref().map_or("", |s| s.state.as_str()));
        let health = spec::health_config(task.spec.as_ref());
        Runner {
            engine,
            node_id,
            nets,
            task,
            gone: false,
            updates,
            reports,
            cancel,
            progress: Progress::new(known),
            container: None,
            health,
            tracker: None,
            next_check: None,
        }
    }

    /// Drives the task until it is gone (its container removed) or the agent stops.
    pub async fn run(mut self, adopt: Option<String>) {
        if let Some(id) = adopt {
            self.adopt(id).await;
        }
        loop {
            match self.step().await {
                Flow::Continue => {}
                Flow::Done | Flow::Stop => break,
                Flow::Idle => {
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        r = self.updates.changed() => self.refresh(r.is_err()),
                    }
                }
            }
        }
        if self.gone {
            let _ = self
                .reports
                .send(Report::Forget(self.task.id.clone()))
                .await;
        }
    }

    fn refresh(&mut self, closed: bool) {
        if closed {
            self.gone = true;
            return;
        }
        let update = self.updates.borrow_and_update().clone();
        match update {
            Assignment::Task(t) => {
                // What the manager recorded is a floor: never report below it.
                let known = parse_state(t.status.as_ref().map_or("", |s| s.state.as_str()));
                self.progress.advance(known);
                self.task = *t;
            }
            Assignment::Gone => self.gone = true,
        }
    }

    fn desired(&self) -> Desired {
        if self.gone {
            Desired::Remove
        } else {
            Desired::from_wire(&self.task.desired_state)
        }
    }

    async fn report(&mut self, state: TaskState, message: &str) {
        self.send(state, message, String::new(), None, false).await;
    }

    async fn send(
        &mut self,
        state: TaskState,
        message: &str,
        err: String,
        exit_code: Option<i64>,
        repeat: bool,
    ) {
        let moved = if repeat {
            self.progress.advance_or_repeat(state)
        } else {
            self.progress.advance(state)
        };
        if !moved {
            return;
        }
        if err.is_empty() {
            tracing::info!(task = %self.task.id, %state, "task state");
        } else {
            tracing::warn!(task = %self.task.id, %state, error = %err, "task state");
        }
        let status = TaskStatus {
            state: state.as_str().to_string(),
            timestamp: now_rfc3339(),
            message: message.to_string(),
            err,
            container_id: self.container.clone().unwrap_or_default(),
            has_exit_code: exit_code.is_some(),
            exit_code: exit_code.unwrap_or(0),
        };
        let _ = self
            .reports
            .send(Report::Status {
                task_id: self.task.id.clone(),
                status,
            })
            .await;
    }

    /// Takes over a container a previous agent made for this task.
    async fn adopt(&mut self, id: String) {
        let Ok(record) = self.engine.record(&id) else {
            return;
        };
        tracing::info!(task = %self.task.id, container = %record.short_id(), status = record.state.status.as_str(), "adopting the task's container");
        self.container = Some(record.id.clone());
        if !record.is_running() || !self.desired().wants_container() {
            return;
        }
        match self.health.clone() {
            None => {
                self.send(TaskState::Running, "started", String::new(), None, true)
                    .await
            }
            Some(h) => {
                let up = u64::try_from(unix_now() - record.state.started_at).unwrap_or(0);
                let started = Instant::now()
                    .checked_sub(Duration::from_secs(up))
                    .unwrap_or_else(Instant::now);
                self.next_check = Some(Instant::now() + h.interval);
                if self.progress.current() >= TaskState::Running {
                    self.tracker = Some((HealthTracker::already_healthy(&h), started));
                    self.send(TaskState::Running, "started", String::new(), None, true)
                        .await;
                } else {
                    self.tracker = Some((HealthTracker::new(&h), started));
                    self.report(TaskState::Starting, "starting").await;
                }
            }
        }
    }

    async fn step(&mut self) -> Flow {
        let desired = self.desired();
        match desired {
            Desired::Remove => {
                if let Flow::Stop = self.teardown(true).await {
                    return Flow::Stop;
                }
                return if self.gone { Flow::Done } else { Flow::Idle };
            }
            Desired::Shutdown => {
                if let Flow::Stop = self.teardown(false).await {
                    return Flow::Stop;
                }
                return Flow::Idle;
            }
            Desired::Ready | Desired::Running => {}
        }
        if self.progress.current().is_terminal() {
            return Flow::Idle;
        }
        let Some(id) = self.container.clone() else {
            return self.prepare().await;
        };
        let record = match self.engine.record(&id) {
            Ok(r) => r,
            Err(_) => {
                self.container = None;
                self.send(
                    TaskState::Failed,
                    "failed",
                    "task: its container was removed".to_string(),
                    None,
                    false,
                )
                .await;
                return Flow::Idle;
            }
        };
        match record.state.status {
            Status::Created if desired == Desired::Running => self.start(&id).await,
            Status::Created => {
                self.report(TaskState::Ready, "prepared").await;
                Flow::Idle
            }
            Status::Running => self.supervise(&id).await,
            Status::Exited => {
                self.report_exit(&record).await;
                Flow::Idle
            }
        }
    }

    /// Accepted → preparing (pull) → create → ready.
    async fn prepare(&mut self) -> Flow {
        if self.progress.current() >= TaskState::Ready {
            // It had a container on this node, which is gone: the run cannot resume.
            self.send(
                TaskState::Failed,
                "failed",
                "task: its container no longer exists on this node".to_string(),
                None,
                false,
            )
            .await;
            return Flow::Idle;
        }
        self.report(TaskState::Accepted, "accepted").await;
        self.report(TaskState::Preparing, "preparing").await;
        let mut request = match spec::create_request(&self.task, &self.node_id) {
            Ok(r) => r,
            Err(e) => return self.reject(e.to_string()).await,
        };
        match self.nets.overlays_for(&self.task, NETWORK_WAIT).await {
            Ok((overlays, internal_only)) => {
                if internal_only {
                    // Only internal networks: no bridge, so no way out.
                    request.network = "none".into();
                }
                request.overlays = overlays;
            }
            Err(e) => return self.reject(e).await,
        }
        match self.pull().await {
            Pull::Ready => {}
            Pull::Interrupted if self.cancel.is_cancelled() => return Flow::Stop,
            Pull::Interrupted => return Flow::Continue,
            Pull::Failed(e) => return self.reject(e).await,
        }
        match self.engine.create(request).await {
            Ok(record) => {
                self.container = Some(record.id);
                self.report(TaskState::Ready, "prepared").await;
                Flow::Continue
            }
            Err(e) => self.reject(e.to_string()).await,
        }
    }

    async fn reject(&mut self, err: String) -> Flow {
        self.send(TaskState::Rejected, "rejected", err, None, false)
            .await;
        Flow::Idle
    }

    /// Pulls the task's image unless the node has it.
    async fn pull(&mut self) -> Pull {
        let Some(spec) = self.task.spec.clone() else {
            return Pull::Failed(format!("task {} has no spec", self.task.id));
        };
        match self.engine.images().resolve(&spec.image) {
            Ok(Some(_)) => return Pull::Ready,
            Ok(None) => {}
            Err(e) => return Pull::Failed(e.to_string()),
        }
        let reference = match ImageRef::from_str(&spec.image) {
            Ok(r) => r,
            Err(e) => return Pull::Failed(e.to_string()),
        };
        let creds = match spec::registry_credentials(&spec.registry_auth) {
            Ok(c) => c,
            Err(e) => return Pull::Failed(e.to_string()),
        };
        tracing::info!(task = %self.task.id, image = %reference, "pulling the task's image");
        let images = self.engine.images().clone();
        let pull = async move { images.pull(&reference, creds.as_ref(), None).await };
        tokio::pin!(pull);
        loop {
            tokio::select! {
                r = &mut pull => return match r {
                    Ok(_) => Pull::Ready,
                    Err(e) => Pull::Failed(e.to_string()),
                },
                () = self.cancel.cancelled() => return Pull::Interrupted,
                r = self.updates.changed() => {
                    self.refresh(r.is_err());
                    if !self.desired().wants_container() {
                        return Pull::Interrupted;
                    }
                }
            }
        }
    }

    /// Starting → running (at once, or at the first passing health check).
    async fn start(&mut self, id: &str) -> Flow {
        self.report(TaskState::Starting, "starting").await;
        match self.engine.start(id).await {
            Ok(()) => {
                match self.health.clone() {
                    Some(h) => {
                        self.tracker = Some((HealthTracker::new(&h), Instant::now()));
                        self.next_check = Some(Instant::now() + h.interval);
                    }
                    None => self.report(TaskState::Running, "started").await,
                }
                Flow::Continue
            }
            Err(e) => {
                self.send(TaskState::Failed, "starting", e.to_string(), None, false)
                    .await;
                Flow::Idle
            }
        }
    }

    /// Watches a running container: its exit, its health, and the task's desired state.
    async fn supervise(&mut self, id: &str) -> Flow {
        let Ok(mut exit) = self.engine.exit_watch(id) else {
            return Flow::Continue;
        };
        let health = self.health.clone();
        match &health {
            None => self.report(TaskState::Running, "started").await,
            Some(h) => {
                if self.tracker.is_none() {
                    self.tracker = Some((HealthTracker::new(h), Instant::now()));
                }
                if self.next_check.is_none() {
                    self.next_check = Some(Instant::now() + h.interval);
                }
            }
        }
        let mut probe: Option<Probe> = None;
        loop {
            let check_at = self
                .next_check
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let can_probe = health.is_some() && probe.is_none();
            let probing = probe.is_some();
            let passed = tokio::select! {
                () = self.cancel.cancelled() => return Flow::Stop,
                r = self.updates.changed() => {
                    self.refresh(r.is_err());
                    if !self.desired().wants_container() {
                        return Flow::Continue;
                    }
                    continue;
                }
                _ = exit.wait_for(Option::is_some) => return Flow::Continue,
                () = tokio::time::sleep_until(check_at), if can_probe => {
                    if let Some(h) = &health {
                        probe = Some(Box::pin(probe_once(self.engine.clone(), id.to_string(), h.clone())));
                    }
                    continue;
                }
                passed = async { match probe.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probing => passed,
            };
            probe = None;
            let Some(h) = &health else { continue };
            self.next_check = Some(Instant::now() + h.interval);
            let transition = match self.tracker.as_mut() {
                Some((tracker, started)) => tracker.record(passed, started.elapsed()),
                None => Transition::None,
            };
            match transition {
                Transition::None => {}
                Transition::Healthy => self.report(TaskState::Running, "started").await,
                Transition::Unhealthy => return self.fail_unhealthy(id).await,
            }
        }
    }

    async fn fail_unhealthy(&mut self, id: &str) -> Flow {
        tracing::warn!(task = %self.task.id, container = %id, "container unhealthy; stopping it");
        tokio::select! {
            r = self.engine.stop(id, None) => if let Err(e) = r {
                tracing::warn!(container = %id, error = %e, "cannot stop the unhealthy container");
            },
            () = self.cancel.cancelled() => return Flow::Stop,
        }
        let exit_code = self
            .engine
            .record(id)
            .ok()
            .filter(|r| !r.is_running())
            .map(|r| r.state.exit_code);
        self.send(
            TaskState::Failed,
            "unhealthy",
            "task: container unhealthy".to_string(),
            exit_code,
            false,
        )
        .await;
        Flow::Continue
    }

    async fn report_exit(&mut self, record: &ContainerRecord) {
        let code = record.state.exit_code;
        match exit_error(code, record.state.oom_killed, &record.state.error) {
            None => {
                self.send(
                    TaskState::Complete,
                    "finished",
                    String::new(),
                    Some(code),
                    false,
                )
                .await
            }
            Some(err) => {
                self.send(TaskState::Failed, "failed", err, Some(code), false)
                    .await
            }
        }
    }

    /// Stops the container (reporting `shutdown` unless the run already ended) and, with
    /// `remove`, removes it.
    async fn teardown(&mut self, remove: bool) -> Flow {
        let mut exit_code = None;
        if let Some(id) = self.container.clone() {
            match self.engine.record(&id) {
                Ok(record) => {
                    if record.is_running() {
                        tracing::info!(task = %self.task.id, container = %record.short_id(), "stopping the task's container");
                        tokio::select! {
                            r = self.engine.stop(&id, None) => if let Err(e) = r {
                                tracing::warn!(container = %id, error = %e, "cannot stop the task's container");
                            },
                            () = self.cancel.cancelled() => return Flow::Stop,
                        }
                    }
                    exit_code = self
                        .engine
                        .record(&id)
                        .ok()
                        .filter(|r| r.state.status == Status::Exited)
                        .map(|r| r.state.exit_code);
                }
                Err(_) => self.container = None,
            }
        }
        if !self.progress.current().is_terminal() {
            self.send(
                TaskState::Shutdown,
                "shutdown",
                String::new(),
                exit_code,
                false,
            )
            .await;
        }
        if remove {
            if let Some(id) = self.container.take() {
                if let Err(e) = self.engine.remove(&id, true).await {
                    tracing::warn!(task = %self.task.id, container = %id, error = %e, "cannot remove the task's container");
                    self.container = Some(id);
                }
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_errors() {
        assert_eq!(exit_error(0, false, ""), None);
        assert_eq!(
            exit_error(3, false, "").as_deref(),
            Some("task: non-zero exit (3)")
        );
        assert!(exit_error(137, true, "").unwrap().contains("OOM"));
        assert!(exit_error(0, true, "").unwrap().contains("OOM"));
        assert_eq!(
            exit_error(255, false, "the shim died").as_deref(),
            Some("task: non-zero exit (255): the shim died")
        );
    }
}
