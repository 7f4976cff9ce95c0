//! Small helpers about tasks shared by the loops.

use rswarm_store::{Service, Task, TaskState, TaskStatus};

/// A task is live when the orchestrators still want it to run (`desired_state` `Ready` or
/// `Running`): it holds its slot (replicated) or its node (global).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// A task counts against its node (resources, ports, task counts) from the moment it is assigned
/// until it stops, as long as nobody asked it to stop.
pub(crate) fn occupies_node(t: &Task) -> bool {
    !t.node_id.is_empty()
        && t.status.state >= TaskState::Assigned
        && t.status.state <= TaskState::Running
        && t.desired_state <= TaskState::Running
}

/// The task stopped by itself (exited, failed to start, or was refused by its node), as opposed
/// to being stopped by the system (`Shutdown` at the orchestrators' request, `Orphaned`).
pub(crate) fn ended_on_its_own(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    )
}

/// Ordering key for "most recent task of a slot": creation time, then attempt, then id.
pub(crate) fn recency(t: &Task) -> (u64, u64, &str) {
    (t.meta.created_at_ms, t.attempt, &t.id)
}

/// What distinguishes a new task from the others of its service (see [`new_task`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask<'a> {
    /// The new task's id (from the caller's id generator).
    pub id: String,
    /// Replicated: the 1-based slot. Global: 0.
    pub slot: u64,
    /// Global: the node the task is for. Replicated: empty (the scheduler picks).
    pub node_id: &'a str,
    /// Restarts of this slot before this task (0 for a new slot or an update).
    pub attempt: u64,
    /// `Running`, or `Ready` when the task must not start yet (restart delay, stop-first update).
    pub desired_state: TaskState,
}

/// A new task of `service`, from its current spec, in state `Pending` at `now_ms` (message
/// "pending task scheduling"), or `New` when it needs addresses on networks first (the
/// allocator moves it on).
pub fn new_task(service: &Service, n: NewTask<'_>, now_ms: u64) -> Task {
    let (state, message) = if service.spec.task.networks.is_empty() {
        (TaskState::Pending, "pending task scheduling")
    } else {
        (TaskState::New, "created")
    };
    Task {
        id: n.id,
        meta: Default::default(),
        service_id: service.id.clone(),
        slot: n.slot,
        node_id: n.node_id.to_string(),
        spec: service.spec.task.clone(),
        spec_version: service.spec_version,
        ports: service.spec.ports.clone(),
        desired_state: n.desired_state,
        status: TaskStatus {
            state,
            timestamp_ms: now_ms,
            message: message.into(),
            ..TaskStatus::default()
        },
        service_name: service.spec.name.clone(),
        attempt: n.attempt,
        networks: Vec::new(),
        network_attachment: false,
    }
}
