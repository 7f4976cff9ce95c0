//! rswarm's service control loops, as pure decision functions.
//!
//! Each function reads a [`StateMachine`](rswarm_store::StateMachine) (a consistent snapshot of the store) and returns what to
//! write: store [`Op`]s (or tasks to write back). Nothing here does IO, reads a clock or draws random
//! numbers: time comes in as `now_ms` and new ids from a caller-supplied generator, so every decision
//! can be tested and replayed. The manager's loops run these functions on every store change (and at
//! the `wake_at_ms` they ask for), commit the result as one transaction, and run them again; a
//! transaction that fails on a concurrent change (optimistic concurrency on `meta.version`) is simply
//! dropped, since the next run sees the new state.
//!
//! Division of labour, as in swarmkit:
//!
//! - [`validate::validate_spec`] refuses a bad [`rswarm_store::ServiceSpec`] before it is stored.
//! - [`orchestrator::reconcile`] makes the set of tasks match each service: one live task per slot
//!   (replicated) or per eligible node (global), replacements for failed tasks following the restart
//!   policy (with its delay), for tasks on nodes that are down, gone or drained, and for tasks whose
//!   node no longer satisfies the constraints; removal of tasks of deleted services and of extra
//!   slots. It writes only `desired_state` on existing tasks and creates new tasks in state
//!   `Pending`.
//! - [`allocator::allocate_tasks`] gives tasks of services on overlay networks (created `New`)
//!   their addresses and moves them to `Pending`; [`allocator::allocate_network`] and
//!   [`allocator::allocate_vips`] serve the control API.
//! - [`scheduler::schedule`] gives pending tasks a node (filters, then spread), writing `node_id`
//!   and state `Assigned`.
//! - The agents move tasks forward from `Assigned` and report their status.
//! - [`update::plan_updates`] rolls services whose spec changed onto the new spec, batch by batch,
//!   and rolls back on failure when asked to.
//! - [`reaper::reap`] deletes tasks nobody needs any more (old history, removed tasks).
//!
//! A task is *live* when its `desired_state` is at most `Running` (`Ready` or `Running`): it holds
//! its slot. Its *status* is terminal when the agent reported it stopped (`Complete` and beyond).
//!
//! The loops never write the same field: `reconcile` and `plan_updates` write `desired_state` and
//! create tasks, the scheduler writes `node_id` and the `Pending → Assigned` status step, agents
//! write the rest of the status. Plans from two functions computed on the same snapshot may touch
//! the same task; commit each plan in its own transaction (a loser fails its version check and is
//! recomputed on the next run).

pub mod allocator;
pub mod constraint;
pub mod orchestrator;
pub mod reaper;
pub mod scheduler;
pub mod update;
pub mod validate;

mod fxhash;
mod task;
#[cfg(test)]
mod testutil;

use rswarm_store::Op;

pub use allocator::{
    allocate_network, allocate_tasks, allocate_vips, attachment_task, down_node_tasks,
    released_attachment, removed_node_tasks, stale_attachments, AllocError, StandaloneContainer,
};
pub use constraint::{Constraint, ConstraintError, Preference};
pub use orchestrator::reconcile;
pub use reaper::{reap, DEFAULT_KEEP_PER_SLOT};
pub use scheduler::{schedule, Schedule};
pub use task::{is_live, new_task, NewTask};
pub use update::plan_updates;
pub use validate::{validate_spec, SpecError};

/// How long a node stays down before its tasks are `Orphaned` ([`down_node_tasks`]): swarmkit's
/// `defaultNodeDownPeriod`.
pub const NODE_DOWN_PERIOD: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// What a control loop wants written, and when it wants to run again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Store operations to commit, in one transaction.
    pub ops: Vec<Op>,
    /// The earliest future time (ms since the Unix epoch) at which the function must run again even
    /// if nothing in the store changes (a restart delay or an update delay expiring). `None`: only
    /// a store change can make it decide anything new.
    pub wake_at_ms: Option<u64>,
}

impl Plan {
    /// Asks to run again at `at_ms` (keeps the earliest of all requests).
    pub(crate) fn wake_at(&mut self, at_ms: u64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }
}
