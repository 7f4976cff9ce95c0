//! The leader's reconciliation loops: orchestrator, scheduler, update supervisor and task reaper.
//!
//! Each loop is one task that owns nothing but its wake-up time: it reads the store, asks its pure
//! decision function (crate `rswarm-orchestrator`) for the transactions that move the cluster
//! towards what the services ask for, commits them, and sleeps until the store changes or the
//! decision function's own deadline (a restart delay, an update's monitor period) passes. Loops
//! race only through the store's optimistic concurrency: a conflicting commit is dropped and the
//! loop decides again from the new state.
//!
//! Architecture invariant: only the raft leader runs these loops; [`spawn`] starts them when this
//! manager becomes leader and stops them when it stops being leader.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rswarm_store::{
    Action, Change, Kind, Object, Op, Service, StateMachine, Store, StoreError, TaskState, Txn,
    TxnError, UpdateState,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tasks kept per slot (Swarm's `--task-history-limit` default).
pub const TASK_HISTORY: usize = 5;
/// Placements written per transaction.
pub const SCHEDULER_BATCH: usize = 1024;
/// Ops per transaction for the other loops.
const MAX_OPS: usize = 2048;
/// How often a loop decides again although nothing changed (a safety net, not a mechanism).
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// How often leadership is checked.
const LEADER_POLL: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one pass of a loop decided: the ops to commit and, when it is waiting on time, the
/// moment it must run again.
pub struct Decision {
    pub ops: Vec<Op>,
    pub wake_at_ms: Option<u64>,
}

type Step = Box<dyn FnMut(&StateMachine, u64) -> Decision + Send>;

/// Whether a committed change can alter what a loop decides. Loops skip the rest: most commits
/// are agents' status reports that only the updater (during an update) acts on.
pub type Interest = fn(&StateMachine, &Change) -> bool;

/// A reconciliation loop: its decision and the changes that wake it.
pub struct Loop {
    pub name: &'static str,
    pub step: Step,
    pub interest: Interest,
}

/// A task change matters to the orchestrator when the task appeared, went away, ended, or is not
/// simply wanted running (a pending restart delay, a shutdown, a removal).
fn orchestrator_interest(_: &StateMachine, c: &Change) -> bool {
    match &*c.object {
        Object::Task(t) => {
            c.action != Action::Update
                || t.status.state.is_terminal()
                || t.desired_state != TaskState::Running
        }
        Object::Service(_) | Object::Node(_) => true,
        Object::Cluster(_) | Object::Network(_) => false,
    }
}

/// The allocator gives new tasks their addresses; a task that stops frees addresses for tasks
/// waiting on a full network; a network's creation or removal settles waiting tasks.
fn allocator_interest(_: &StateMachine, c: &Change) -> bool {
    match &*c.object {
        Object::Task(t) => {
            (t.status.state == TaskState::New && !t.spec.networks.is_empty())
                || (t.status.state.is_terminal() && !t.networks.is_empty())
        }
        Object::Network(_) => true,
        Object::Service(_) | Object::Node(_) | Object::Cluster(_) => false,
    }
}

/// The scheduler places pending tasks; ended or removed tasks free resources and ports.
fn scheduler_interest(_: &StateMachine, c: &Change) -> bool {
    match &*c.object {
        Object::Task(t) => {
            c.action != Action::Update
                || t.status.state == TaskState::Pending
                || t.status.state.is_terminal()
                || t.desired_state > TaskState::Running
        }
        Object::Node(_) => true,
        Object::Service(_) | Object::Cluster(_) | Object::Network(_) => false,
    }
}

/// The updater watches services, and the tasks of services that are being updated.
fn updater_interest(s: &StateMachine, c: &Change) -> bool {
    match &*c.object {
        Object::Service(_) | Object::Node(_) => true,
        Object::Task(t) => s.get::<Service>(&t.service_id).is_some_and(|svc| {
            svc.update_status.as_ref().is_some_and(|u| {
                matches!(
                    u.state,
                    UpdateState::Updating | UpdateState::RollbackStarted
                )
            })
        }),
        Object::Cluster(_) | Object::Network(_) => false,
    }
}

/// The reaper deletes ended and removed tasks (and those of down or removed nodes).
fn reaper_interest(_: &StateMachine, c: &Change) -> bool {
    match &*c.object {
        Object::Task(t) => t.status.state.is_terminal() || t.desired_state >= TaskState::Shutdown,
        Object::Node(_) => true,
        Object::Service(_) | Object::Cluster(_) | Object::Network(_) => false,
    }
}

/// The loops.
pub fn loops() -> Vec<Loop> {
    let new_id = || rswarm_agent::ids::new_id();
    vec![
        Loop {
            name: "orchestrator",
            step: Box::new(move |s: &StateMachine, now| {
                let plan = rswarm_orchestrator::reconcile(s, now, &mut || new_id());
                Decision {
                    ops: plan.ops,
                    wake_at_ms: plan.wake_at_ms,
                }
            }),
            interest: orchestrator_interest,
        },
        Loop {
            name: "allocator",
            step: Box::new(|s: &StateMachine, now| Decision {
                ops: rswarm_orchestrator::allocate_tasks(s, now),
                wake_at_ms: None,
            }),
            interest: allocator_interest,
        },
        Loop {
            name: "scheduler",
            step: Box::new(|s: &StateMachine, now| {
                let sched = rswarm_orchestrator::schedule(s, now, SCHEDULER_BATCH);
                Decision {
                    ops: sched
                        .assigned
                        .into_iter()
                        .chain(sched.unschedulable)
                        .map(Txn::update)
                        .collect(),
                    wake_at_ms: None,
                }
            }),
            interest: scheduler_interest,
        },
        Loop {
            name: "updater",
            step: Box::new(move |s: &StateMachine, now| {
                let plan = rswarm_orchestrator::plan_updates(s, now, &mut || new_id());
                Decision {
                    ops: plan.ops,
                    wake_at_ms: plan.wake_at_ms,
                }
            }),
            interest: updater_interest,
        },
        Loop {
            name: "reaper",
            step: Box::new(|s: &StateMachine, _now| Decision {
                ops: rswarm_orchestrator::reap(s, TASK_HISTORY),
                wake_at_ms: None,
            }),
            interest: reaper_interest,
        },
    ]
}

/// Runs the loops whenever this manager is the leader, until `cancel` fires.
pub fn spawn(store: Store, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: Option<(CancellationToken, JoinSet<()>)> = None;
        let mut poll = tokio::time::interval(LEADER_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = poll.tick() => {}
            }
            let leader = store.status().is_leader;
            match (&running, leader) {
                (None, true) => {
                    tracing::info!(
                        "leader: starting the orchestrator, scheduler, updater and reaper"
                    );
                    let token = cancel.child_token();
                    let mut set = JoinSet::new();
                    for l in loops() {
                        set.spawn(run_loop(l, store.clone(), token.clone()));
                    }
                    running = Some((token, set));
                }
                (Some(_), false) => {
                    tracing::info!("no longer the leader: stopping the reconciliation loops");
                    if let Some((token, mut set)) = running.take() {
                        token.cancel();
                        while set.join_next().await.is_some() {}
                    }
                }
                _ => {}
            }
        }
        if let Some((token, mut set)) = running.take() {
            token.cancel();
            while set.join_next().await.is_some() {}
        }
    })
}

/// One loop: decide, commit, wait for an interesting change or a deadline.
pub async fn run_loop(l: Loop, store: Store, cancel: CancellationToken) {
    let Loop {
        name,
        mut step,
        interest,
    } = l;
    let mut events = store.subscribe();
    let mut dirty = true;
    let mut wake_at: Option<u64> = None;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if dirty {
            dirty = false;
            let now = now_ms();
            let (decision, guards) = store.read(|s| {
                let d = step(s, now);
                let g = guards(s, &d.ops);
                (d, g)
            });
            wake_at = decision.wake_at_ms;
            if !decision.ops.is_empty() {
                if let Err(e) = commit_chunks(&store, decision.ops, &guards).await {
                    match e {
                        // The state moved under the decision: decide again.
                        StoreError::Txn(
                            TxnError::VersionMismatch { .. } | TxnError::NotFound { .. },
                        ) => {}
                        StoreError::NotLeader { .. } | StoreError::ShuttingDown => return,
                        e => {
                            tracing::warn!(loop_name = name, error = %e, "could not commit; retrying");
                            tokio::select! {
                                () = cancel.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    }
                }
                // Decide again at once: the commit may have enabled more work (the next batch).
                dirty = true;
                continue;
            }
        }
        let sleep = wake_at
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms()).max(1)))
            .unwrap_or(IDLE_RECHECK)
            .min(IDLE_RECHECK);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(sleep) => dirty = true,
            ev = events.recv() => {
                let mut batches = vec![ev];
                loop {
                    match events.try_recv() {
                        Ok(b) => batches.push(Ok(b)),
                        Err(TryRecvError::Lagged(n)) => batches.push(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Closed) => {
                            batches.push(Err(RecvError::Closed));
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
                for b in batches {
                    match b {
                        Ok(batch) => {
                            if !dirty {
                                dirty = store.read(|s| batch.changes.iter().any(|c| interest(s, c)));
                            }
                        }
                        Err(RecvError::Lagged(_)) => dirty = true,
                        Err(RecvError::Closed) => {
                            events = store.subscribe();
                            dirty = true;
                        }
                    }
                }
            }
        }
    }
}

/// The version of each service that new tasks in `ops` were made from, as `state` has it.
fn guards(state: &StateMachine, ops: &[Op]) -> HashMap<String, u64> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Create {
                object: Object::Task(t),
            } => state
                .get::<Service>(&t.service_id)
                .map(|svc| (svc.id.clone(), svc.meta.version)),
            _ => None,
        })
        .collect()
}

/// Commits `ops` in chunks. Each chunk that creates tasks also checks that their services are
/// still at the version the decision read: a task is never made from a spec that changed
/// meanwhile (the updater and the orchestrator decide from separate reads).
async fn commit_chunks(
    store: &Store,
    mut ops: Vec<Op>,
    guards: &HashMap<String, u64>,
) -> Result<(), StoreError> {
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(MAX_OPS));
        let services: BTreeSet<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Create {
                    object: Object::Task(t),
                } => Some(t.service_id.as_str()),
                _ => None,
            })
            .collect();
        let checks: Vec<Op> = services
            .into_iter()
            .filter_map(|id| {
                guards.get(id).map(|&version| Op::Check {
                    kind: Kind::Service,
                    id: id.to_string(),
                    version,
                })
            })
            .collect();
        ops.extend(checks);
        store.commit(Txn::new(ops)).await?;
        ops = rest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::{MemoryBackend, ServiceSpec, Task};

    #[tokio::test]
    async fn tasks_are_not_created_from_a_spec_that_changed_meanwhile() {
        let store = MemoryBackend::store(StateMachine::new());
        store
            .commit(Txn::new(vec![Txn::create(Service {
                id: "s".into(),
                spec: ServiceSpec {
                    name: "web".into(),
                    ..ServiceSpec::default()
                },
                spec_version: 1,
                ..Service::default()
            })]))
            .await
            .unwrap();
        let task = Task {
            id: "t".into(),
            service_id: "s".into(),
            ..Task::default()
        };
        let ops = vec![Txn::create(task)];
        let g = store.read(|s| guards(s, &ops));
        // The service changes between the decision and the commit.
        let mut svc = store.get::<Service>("s").unwrap();
        svc.spec_version = 2;
        store
            .commit(Txn::new(vec![Txn::update(svc)]))
            .await
            .unwrap();
        let err = commit_chunks(&store, ops.clone(), &g).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Txn(TxnError::VersionMismatch { .. })),
            "{err}"
        );
        assert!(store.get::<Task>("t").is_none());
        // Decided again from the current state, it goes through.
        let g = store.read(|s| guards(s, &ops));
        commit_chunks(&store, ops, &g).await.unwrap();
        assert!(store.get::<Task>("t").is_some());
    }
}
