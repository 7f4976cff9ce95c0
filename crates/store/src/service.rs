//! Services and their tasks, as the store keeps them (swarmkit's data model).
//!
//! A [`Service`] is what the user asked for: a [`ServiceSpec`]. The orchestrators turn it into
//! [`Task`]s, one per replica *slot* (replicated mode) or per eligible node (global mode); the
//! scheduler gives each task a node; the node's agent runs it and reports its [`TaskStatus`]. Task
//! states only ever move forward ([`TaskState`]); a failed task is replaced by a new task in the same
//! slot, never restarted in place.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::network::{EndpointMode, NetworkAttachment, NetworkAttachmentConfig};
use crate::objects::Meta;

/// A service: the user's spec plus what the control plane keeps about its rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub meta: Meta,
    pub spec: ServiceSpec,
    /// The spec before the last update, for `service rollback`.
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped at every change of `spec`; each task records the version it was made from, so the
    /// update supervisor can tell outdated tasks.
    pub spec_version: u64,
    /// Progress of the current (or last) rolling update.
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
    /// One virtual IP per network of the spec (endpoint mode vip), allocated by the leader.
    #[serde(default)]
    pub virtual_ips: Vec<NetworkAttachment>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub task: TaskSpec,
    pub mode: ServiceMode,
    #[serde(default)]
    pub update: UpdateConfig,
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// Published ports (`-p published:target[/proto]`), published on the node that runs each task.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

/// A published port. `published == 0` picks a free host port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub target: u16,
    pub published: u16,
    /// "tcp" or "udp".
    pub protocol: String,
}

/// What every task of a service runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub image: String,
    /// Replaces the image's ENTRYPOINT when set (`--entrypoint`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD when not empty (`IMAGE ARGS…`).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub stop_signal: String,
    /// Between the stop signal and SIGKILL; 0 = the default (10 s).
    #[serde(default)]
    pub stop_grace_ms: u64,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// `--with-registry-auth`: base64 of `user:password` for the image's registry.
    #[serde(default)]
    pub registry_auth: String,
    /// Bumped by `service update --force` so that tasks are replaced although nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// The overlay networks (by id) the tasks join, in order (`eth1`, `eth2`, …).
    #[serde(default)]
    pub networks: Vec<NetworkAttachmentConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    #[default]
    Volume,
    Bind,
    Tmpfs,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind), volume name (volume; empty: anonymous), unused for tmpfs.
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// tmpfs only; 0 = unlimited.
    #[serde(default)]
    pub tmpfs_size: u64,
    /// tmpfs only; 0 = 1777.
    #[serde(default)]
    pub tmpfs_mode: u32,
}

/// CPU in nano-CPUs (1e9 = one core), memory in bytes; 0 = none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub limit_nano_cpus: u64,
    pub limit_memory: u64,
    pub reserve_nano_cpus: u64,
    pub reserve_memory: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    #[default]
    Any,
    OnFailure,
    None,
}

impl RestartCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "any" => Some(RestartCondition::Any),
            "on-failure" => Some(RestartCondition::OnFailure),
            "none" => Some(RestartCondition::None),
            _ => None,
        }
    }
}

/// Swarm's defaults: condition any, delay 5 s, unlimited attempts, no window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    pub delay_ms: u64,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// Attempts are counted within this window; 0 = over the slot's whole life.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `node.labels.zone==a`, `node.role!=manager`, … (validated when the service is stored).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `spread=node.labels.zone`, in order of precedence.
    #[serde(default)]
    pub preferences: Vec<String>,
    /// `--replicas-max-per-node`; 0 = unlimited.
    #[serde(default)]
    pub max_replicas_per_node: u64,
    /// `os/arch` pairs the image runs on; empty = any.
    #[serde(default)]
    pub platforms: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Docker's form: `["CMD-SHELL", "cmd"]`, `["CMD", "arg0", …]` or `["NONE"]`.
    pub test: Vec<String>,
    /// 0 = 30 s.
    pub interval_ms: u64,
    /// 0 = 30 s.
    pub timeout_ms: u64,
    /// 0 = 3.
    pub retries: u64,
    pub start_period_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

impl FailureAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

impl UpdateOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
    }
}

/// `--update-*` / `--rollback-*`. Swarm's defaults: parallelism 1, no delay, pause on failure,
/// monitor 5 s, max failure ratio 0, stop-first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// 0 = all at once.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    /// Fraction of failed tasks tolerated, in thousandths (0–1000).
    pub max_failure_ratio_milli: u64,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_milli: 0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at_ms: u64,
    #[serde(default)]
    pub completed_at_ms: u64,
    #[serde(default)]
    pub message: String,
}

/// Where a task is in its life. Ordered: a task's state never moves backwards (Swarm's rule).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The task has stopped for good (or will never run).
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent (or the scheduler, before one is chosen) last reported about a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When the task entered `state`, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Human-readable progress ("pulling image", "started").
    #[serde(default)]
    pub message: String,
    /// Why the task failed or cannot be scheduled (shown in `service ps`'s ERROR column).
    #[serde(default)]
    pub err: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// One instance of a service, on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub meta: Meta,
    pub service_id: String,
    /// Replicated services: 1-based slot number. Global services: 0 (the node identifies it).
    pub slot: u64,
    /// Empty until the scheduler places the task.
    #[serde(default)]
    pub node_id: String,
    pub spec: TaskSpec,
    /// The service's `spec_version` this task was made from.
    pub spec_version: u64,
    /// Ports the service publishes (copied from the service spec, for the agent and the scheduler).
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// What the orchestrators want: Ready (prepare, do not start yet: a restart delay is pending),
    /// Running, Shutdown or Remove.
    pub desired_state: TaskState,
    pub status: TaskStatus,
    /// The service's name when the task was made (`web.3` in listings, container names).
    #[serde(default)]
    pub service_name: String,
    /// How many restarts of this slot came before this task (0 for the slot's first task); the
    /// restart policy's `max_attempts` counts these. Replacements after node loss do not count.
    #[serde(default)]
    pub attempt: u64,
    /// The task's address on each network of its spec, allocated when the task is made; held
    /// while [`Task::holds_addresses`].
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    /// Not a service task: the address of a standalone container on an attachable network
    /// (`container run --network`), Swarm's network attachment. `service_name` holds the
    /// container's name, `status.container_id` its id; no orchestrator acts on it and no agent
    /// runs it: it exists for its address and the endpoint table.
    #[serde(default)]
    pub network_attachment: bool,
}

impl Task {
    /// Whether the task's addresses are still its own: until it has stopped for good.
    pub fn holds_addresses(&self) -> bool {
        !self.status.state.is_terminal()
    }

    /// Docker's task name: `web.3` for replicated tasks, `web.<node id>` for global ones, the
    /// container's name for a network attachment.
    pub fn name(&self) -> String {
        if self.network_attachment {
            self.service_name.clone()
        } else if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            format!("{}.{}", self.service_name, self.node_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_are_ordered_as_swarm_orders_them() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Failed.is_terminal());
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn service_round_trips_through_json_with_defaults() {
        let s = Service {
            id: "s1".into(),
            spec: ServiceSpec {
                name: "web".into(),
                mode: ServiceMode::Global,
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Service>(&j).unwrap(), s);
        assert_eq!(RestartPolicy::default().delay_ms, 5_000);
        assert_eq!(UpdateConfig::default().monitor_ms, 5_000);
    }
}
