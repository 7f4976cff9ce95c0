//! The update supervisor: rolls a service's tasks onto its current spec, batch by batch, and rolls
//! back on failure when asked to.
//!
//! Everything it remembers lives in the store (the service's `update_status` and the tasks), so a
//! new leader continues where the old one stopped. Rules, per service:
//!
//! - A task is **outdated** when it is live, its `spec_version` is older than the service's and its
//!   spec or ports differ from the service's (swarmkit compares contents too: after a rollback,
//!   tasks never updated are already right and are left alone). Outdated tasks whose status is
//!   terminal or whose node is down, gone, drained or no longer eligible are left to
//!   [`crate::reconcile`], which replaces them from the current spec anyway.
//! - While `update_status` is `Paused` or `RollbackPaused`, nothing is done for the service (the
//!   control API resets the status when the user updates the service again).
//! - **Start**: outdated tasks and no update in progress: `update_status` becomes `Updating`
//!   (`started_at_ms` = now, message "update in progress").
//! - The update's **new tasks** are the tasks of the current spec version created since
//!   `started_at_ms`. One is **in flight** while it is live and has not been `Running` for
//!   `monitor_ms` yet (measured from its status timestamp).
//! - **Failures**: new tasks that stopped on their own (`Failed`, `Rejected`, or `Complete`: early
//!   termination) while the update runs. When `failures / new tasks` exceeds
//!   `max_failure_ratio_milli / 1000`, the failure action applies: `pause` sets `Paused` (or
//!   `RollbackPaused`) with message "update paused due to failure or early termination of task
//!   \<id\>"; `continue` ignores failures; `rollback` restores `previous_spec` (the failed spec becomes
//!   the previous one), bumps `spec_version` and sets `RollbackStarted`; the same machinery then
//!   rolls the tasks back with the `rollback` config. A rollback that fails, or a rollback without a
//!   previous spec, pauses instead.
//! - **Batches**: while anything is in flight, nothing new starts. Otherwise, once `delay_ms` has
//!   passed since the last new task became stable (the first batch starts at once), the next
//!   `parallelism` slots (0 = all) holding outdated tasks are replaced, in slot order (global: node
//!   order):
//!   - `stop-first`: the old task gets desired `Shutdown` and the new one is created in the same slot
//!     (global: on the same node) with desired `Ready` and attempt 0; [`crate::reconcile`] switches it
//!     to `Running` once the old task has stopped;
//!   - `start-first`: the new task is created with desired `Running`; once it runs, the old one
//!     gets desired `Shutdown`.
//! - **Completion**: no outdated task left and nothing in flight: `Completed` (or
//!   `RollbackCompleted`) with `completed_at_ms`. An outdated task that reconcile is about to
//!   replace (its status is terminal, or it lost its node; except a global task on a down node,
//!   which reconcile keeps) still counts: reconcile may have decided from the spec before this
//!   update or rollback, and the task it creates then is outdated too and replaced by this update.
//!
//! [`Plan::wake_at_ms`] asks for the moments a monitor period or a batch delay ends.

use std::collections::{BTreeMap, HashMap};

use rswarm_store::{
    Availability, FailureAction, Node, NodeStatus, Service, ServiceMode, StateMachine, Task,
    TaskState, Txn, UpdateOrder, UpdateState, UpdateStatus,
};

use crate::constraint::{matches_all, platform_matches, Constraint};
use crate::task::{ended_on_its_own, new_task, NewTask};
use crate::{is_live, Plan};

/// One pass of the update supervisor over every service. `new_id` gives the ids of new tasks.
pub fn plan_updates(state: &StateMachine, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in state.list::<Task>() {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let nodes: HashMap<&str, &Node> = state.list::<Node>().map(|n| (n.id.as_str(), n)).collect();
    let mut plan = Plan::default();
    for service in state.list::<Service>() {
        let tasks = by_service.remove(service.id.as_str()).unwrap_or_default();
        update_service(service, &tasks, &nodes, now_ms, new_id, &mut plan);
    }
    plan
}

fn outdated(t: &Task, s: &Service) -> bool {
    is_live(t)
        && t.spec_version < s.spec_version
        && (t.spec != s.spec.task || t.ports != s.spec.ports)
}

/// Whether reconcile leaves this live task alone (so the update supervisor may replace it).
fn healthy(t: &Task, s: &Service, nodes: &HashMap<&str, &Node>) -> bool {
    if t.status.state.is_terminal() {
        return false;
    }
    if t.node_id.is_empty() {
        return true;
    }
    let Some(node) = nodes.get(t.node_id.as_str()) else {
        return false;
    };
    if node.status == NodeStatus::Down || node.availability == Availability::Drain {
        return false;
    }
    let (constraints, platforms) = match s.spec.mode {
        ServiceMode::Global => (
            &s.spec.task.placement.constraints,
            &s.spec.task.placement.platforms[..],
        ),
        ServiceMode::Replicated { .. } => (&t.spec.placement.constraints, &[][..]),
    };
    Constraint::parse_all(constraints).is_ok_and(|c| matches_all(&c, node))
        && platform_matches(platforms, node)
}

/// A slot's outdated tasks and the update's live new tasks in it.
type SlotTasks<'a> = (Vec<&'a Task>, Vec<&'a Task>);

fn slot_key(t: &Task) -> (u64, &str) {
    if t.slot == 0 {
        (0, t.node_id.as_str())
    } else {
        (t.slot, "")
    }
}

fn update_service(
    s: &Service,
    tasks: &[&Task],
    nodes: &HashMap<&str, &Node>,
    now: u64,
    new_id: &mut dyn FnMut() -> String,
    plan: &mut Plan,
) {
    if matches!(
        s.update_status.as_ref().map(|u| u.state),
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    ) {
        return;
    }
    let stale: Vec<&Task> = tasks.iter().copied().filter(|t| outdated(t, s)).collect();
    let mut status = match &s.update_status {
        Some(u)
            if matches!(
                u.state,
                UpdateState::Updating | UpdateState::RollbackStarted
            ) =>
        {
            u.clone()
        }
        _ => {
            // Only tasks the update may replace start one: an outdated task that has already
            // ended (or sits on a down node) is the orchestrator's to replace, with the new spec.
            if !stale.iter().any(|t| healthy(t, s, nodes)) {
                return;
            }
            UpdateStatus {
                state: UpdateState::Updating,
                started_at_ms: now,
                completed_at_ms: 0,
                message: "update in progress".into(),
            }
        }
    };
    let rollback = status.state == UpdateState::RollbackStarted;
    let cfg = if rollback {
        s.spec.rollback
    } else {
        s.spec.update
    };

    // The update's new tasks, and its failures.
    let fresh: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| {
            t.spec_version == s.spec_version && t.meta.created_at_ms >= status.started_at_ms
        })
        .collect();
    let mut failures: Vec<&Task> = fresh
        .iter()
        .copied()
        .filter(|t| ended_on_its_own(t.status.state))
        .collect();
    failures.sort_by(|a, b| (a.status.timestamp_ms, &a.id).cmp(&(b.status.timestamp_ms, &b.id)));
    let too_many =
        (failures.len() as u64) * 1000 > cfg.max_failure_ratio_milli * fresh.len() as u64;
    if let (Some(first), true) = (failures.first(), too_many) {
        let cause = format!("due to failure or early termination of task {}", first.id);
        match (cfg.failure_action, rollback, &s.previous_spec) {
            (FailureAction::Continue, _, _) => {}
            (FailureAction::Rollback, false, Some(previous)) => {
                let mut s = s.clone();
                let failed = std::mem::replace(&mut s.spec, previous.clone());
                s.previous_spec = Some(failed);
                s.spec_version += 1;
                s.update_status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at_ms: now,
                    completed_at_ms: 0,
                    message: format!("update rolled back {cause}"),
                });
                plan.ops.push(Txn::update(s));
                return;
            }
            _ => {
                let (state, what) = if rollback {
                    (UpdateState::RollbackPaused, "rollback")
                } else {
                    (UpdateState::Paused, "update")
                };
                status.state = state;
                status.message = format!("{what} paused {cause}");
                write_status(s, status, plan);
                return;
            }
        }
    }

    // Slots: outdated tasks and the update's live new tasks.
    let mut slots: BTreeMap<(u64, &str), SlotTasks<'_>> = BTreeMap::new();
    for &t in &stale {
        slots.entry(slot_key(t)).or_default().0.push(t);
    }
    for &t in fresh.iter().filter(|t| is_live(t)) {
        if let Some(e) = slots.get_mut(&slot_key(t)) {
            e.1.push(t);
        }
    }
    // Start-first: once the new task runs, the old one stops.
    let mut remaining_stale = 0;
    let mut candidates = Vec::new();
    for (old, new) in slots.values() {
        if new.iter().any(|n| n.status.state == TaskState::Running) {
            for t in old {
                let mut t = (*t).clone();
                t.desired_state = TaskState::Shutdown;
                plan.ops.push(Txn::update(t));
            }
            continue;
        }
        let healthy_old: Vec<&Task> = old
            .iter()
            .copied()
            .filter(|t| healthy(t, s, nodes))
            .collect();
        if healthy_old.is_empty() {
            continue;
        }
        remaining_stale += 1;
        if new.is_empty() {
            candidates.push(healthy_old);
        }
    }

    // In flight: live new tasks not yet stable.
    let mut in_flight = false;
    let mut last_stable = None::<u64>;
    for t in fresh.iter().filter(|t| is_live(t)) {
        if t.status.state == TaskState::Running {
            let stable_at = t.status.timestamp_ms.saturating_add(cfg.monitor_ms);
            last_stable = Some(last_stable.map_or(stable_at, |l| l.max(stable_at)));
            if now < stable_at {
                in_flight = true;
                plan.wake_at(stable_at);
            }
        } else {
            in_flight = true;
        }
    }

    // An outdated task that reconcile is about to replace (it ended, or lost its node) still holds
    // its slot: the update is not over until the replacement exists. Reconcile may have read the
    // service before this update (or rollback) changed it, and then replaces the task from the
    // old spec; the update replaces that one in turn instead of declaring itself complete and
    // leaving a task of the old spec for a later, unasked-for update to find.
    let awaiting_reconcile = stale.iter().any(|t| {
        !healthy(t, s, nodes)
            && (t.status.state.is_terminal()
                || !matches!(s.spec.mode, ServiceMode::Global)
                || nodes
                    .get(t.node_id.as_str())
                    .is_none_or(|n| n.status != NodeStatus::Down))
    });

    if remaining_stale == 0 && !in_flight && !awaiting_reconcile {
        let (state, message) = if rollback {
            (UpdateState::RollbackCompleted, "rollback completed")
        } else {
            (UpdateState::Completed, "update completed")
        };
        status.state = state;
        status.completed_at_ms = now;
        status.message = message.into();
        write_status(s, status, plan);
        return;
    }
    if in_flight || candidates.is_empty() {
        write_status(s, status, plan);
        return;
    }
    if let Some(last) = last_stable {
        let next = last.saturating_add(cfg.delay_ms);
        if now < next {
            plan.wake_at(next);
            write_status(s, status, plan);
            return;
        }
    }

    // Next batch.
    let batch = if cfg.parallelism == 0 {
        candidates.len()
    } else {
        cfg.parallelism as usize
    };
    for old in candidates.into_iter().take(batch) {
        let first = old[0];
        let desired = match cfg.order {
            UpdateOrder::StopFirst => {
                for t in &old {
                    let mut t = (*t).clone();
                    t.desired_state = TaskState::Shutdown;
                    plan.ops.push(Txn::update(t));
                }
                TaskState::Ready
            }
            UpdateOrder::StartFirst => TaskState::Running,
        };
        let task = new_task(
            s,
            NewTask {
                id: new_id(),
                slot: first.slot,
                node_id: if first.slot == 0 { &first.node_id } else { "" },
                attempt: 0,
                desired_state: desired,
            },
            now,
        );
        plan.ops.push(Txn::create(task));
    }
    write_status(s, status, plan);
}

/// Writes the service's update status if it changed.
fn write_status(s: &Service, status: UpdateStatus, plan: &mut Plan) {
    if s.update_status.as_ref() != Some(&status) {
        let mut s = s.clone();
        s.update_status = Some(status);
        plan.ops.push(Txn::update(s));
    }
}

#[cfg(test)]
mod tests {
    use rswarm_store::{FailureAction, ServiceMode, TaskState, UpdateOrder, UpdateState};

    use crate::testutil::World;

    fn world(replicas: u64, f: impl FnOnce(&mut rswarm_store::Service)) -> World {
        let mut w = World::new();
        for id in ["a", "b", "c"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", ServiceMode::Replicated { replicas }, |s| {
            s.spec.task.image = "v1".into();
            s.spec.task.restart.delay_ms = 0;
            s.spec.update.monitor_ms = 1_000;
            f(s);
        });
        step_until_idle(&mut w);
        w
    }

    /// Bumps the service to image `v2`, keeping the old spec for rollback.
    fn update_image(w: &mut World, image: &str) {
        w.update_service("s", |s| {
            s.previous_spec = Some(s.spec.clone());
            s.spec.task.image = image.into();
            s.spec_version += 1;
        });
    }

    /// One round of every loop; returns whether anything changed and the earliest wake time.
    fn step(w: &mut World) -> (bool, Option<u64>) {
        let r = w.reconcile();
        let s = w.schedule();
        let a = w.agents_converge();
        let u = w.plan_updates();
        let changed = !r.ops.is_empty() || !s.assigned.is_empty() || a || !u.ops.is_empty();
        let wake = [r.wake_at_ms, u.wake_at_ms].into_iter().flatten().min();
        (changed, wake)
    }

    fn step_until_idle(w: &mut World) -> Option<u64> {
        for _ in 0..50 {
            let (changed, wake) = step(w);
            if !changed {
                return wake;
            }
        }
        panic!("loops did not settle");
    }

    /// Runs the loops, jumping the clock to each wake time, until nothing is left to do.
    fn run(w: &mut World) {
        for _ in 0..100 {
            match step_until_idle(w) {
                Some(at) => w.now = w.now.max(at),
                None => return,
            }
        }
        panic!("update did not finish");
    }

    fn images(w: &World) -> Vec<String> {
        let mut v: Vec<String> = w.live("s").into_iter().map(|t| t.spec.image).collect();
        v.sort();
        v
    }

    fn status(w: &World) -> Option<UpdateState> {
        w.service("s").update_status.map(|u| u.state)
    }

    #[test]
    fn stop_first_replaces_one_slot_at_a_time() {
        let mut w = world(3, |_| {});
        update_image(&mut w, "v2");
        let p = w.plan_updates();
        assert_eq!(status(&w), Some(UpdateState::Updating));
        assert_eq!(w.service("s").update_status.unwrap().started_at_ms, w.now);
        // One old task told to stop, one new task waiting (Ready) in its slot.
        assert_eq!(p.ops.len(), 3);
        let shut: Vec<_> = w
            .tasks("s")
            .into_iter()
            .filter(|t| t.desired_state == TaskState::Shutdown)
            .collect();
        assert_eq!(shut.len(), 1);
        let new: Vec<_> = w
            .live("s")
            .into_iter()
            .filter(|t| t.spec.image == "v2")
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(
            (new[0].slot, new[0].desired_state, new[0].attempt),
            (shut[0].slot, TaskState::Ready, 0)
        );
        // Nothing more while the new task is in flight.
        assert!(w.plan_updates().ops.is_empty());
        // The old one stops, reconcile starts the new one, it runs; the next batch waits for the
        // monitor period.
        let wake = step_until_idle(&mut w).expect("waits for the monitor period");
        assert_eq!(images(&w), vec!["v1", "v1", "v2"]);
        assert_eq!(wake, w.now + 1_000);
        run(&mut w);
        assert_eq!(images(&w), vec!["v2", "v2", "v2"]);
        let st = w.service("s").update_status.unwrap();
        assert_eq!(st.state, UpdateState::Completed);
        assert_eq!(st.completed_at_ms, w.now);
        assert_eq!(st.message, "update completed");
        // At no time were two tasks of a slot running: every old task stopped.
        assert!(w
            .tasks("s")
            .iter()
            .filter(|t| t.spec.image == "v1")
            .all(|t| t.status.state == TaskState::Shutdown));
    }

    #[test]
    fn parallelism_and_delay() {
        let mut w = world(4, |s| {
            s.spec.update.parallelism = 2;
            s.spec.update.delay_ms = 10_000;
        });
        update_image(&mut w, "v2");
        let wake = step_until_idle(&mut w).unwrap();
        assert_eq!(images(&w), vec!["v1", "v1", "v2", "v2"]);
        // Monitor period, then the delay.
        w.now = wake;
        let wake2 = step_until_idle(&mut w).unwrap();
        assert_eq!(wake2, wake + 10_000);
        assert_eq!(images(&w), vec!["v1", "v1", "v2", "v2"]);
        run(&mut w);
        assert_eq!(images(&w), vec!["v2", "v2", "v2", "v2"]);
        assert_eq!(status(&w), Some(UpdateState::Completed));
    }

    #[test]
    fn start_first_starts_the_new_task_before_stopping_the_old() {
        let mut w = world(1, |s| s.spec.update.order = UpdateOrder::StartFirst);
        update_image(&mut w, "v2");
        w.plan_updates();
        let live = w.live("s");
        assert_eq!(live.len(), 2, "old and new both live");
        let new = live.iter().find(|t| t.spec.image == "v2").unwrap().clone();
        assert_eq!(new.desired_state, TaskState::Running);
        w.schedule();
        // Not running yet: the old task stays.
        assert!(w.plan_updates().ops.is_empty());
        w.agents_converge();
        w.plan_updates();
        assert_eq!(images(&w), vec!["v2"]);
        run(&mut w);
        assert_eq!(status(&w), Some(UpdateState::Completed));
    }

    fn fail_new_tasks(w: &mut World, image: &str) {
        for t in w.live("s") {
            if t.spec.image == image && t.status.state == TaskState::Running {
                w.set_state(&t.id, TaskState::Failed);
            }
        }
    }

    #[test]
    fn pause_on_failure_then_nothing_happens() {
        let mut w = world(3, |_| {});
        update_image(&mut w, "bad");
        step_until_idle(&mut w);
        fail_new_tasks(&mut w, "bad");
        w.plan_updates();
        let st = w.service("s").update_status.unwrap();
        assert_eq!(st.state, UpdateState::Paused);
        assert!(
            st.message
                .starts_with("update paused due to failure or early termination of task t"),
            "{}",
            st.message
        );
        run(&mut w);
        assert_eq!(status(&w), Some(UpdateState::Paused));
        // The restart supervisor keeps the failed slot going; the other two are untouched.
        assert_eq!(images(&w), vec!["bad", "v1", "v1"]);
    }

    #[test]
    fn continue_ignores_failures() {
        let mut w = world(2, |s| {
            s.spec.update.failure_action = FailureAction::Continue
        });
        update_image(&mut w, "bad");
        step_until_idle(&mut w);
        fail_new_tasks(&mut w, "bad");
        run(&mut w);
        assert_eq!(images(&w), vec!["bad", "bad"]);
        assert_eq!(status(&w), Some(UpdateState::Completed));
    }

    #[test]
    fn rollback_on_failure_restores_the_previous_spec() {
        let mut w = world(3, |s| {
            s.spec.update.failure_action = FailureAction::Rollback;
            s.spec.rollback.monitor_ms = 500;
            s.spec.rollback.parallelism = 0;
        });
        update_image(&mut w, "bad");
        let version = w.service("s").spec_version;
        step_until_idle(&mut w);
        fail_new_tasks(&mut w, "bad");
        w.plan_updates();
        let s = w.service("s");
        assert_eq!(s.spec.task.image, "v1");
        assert_eq!(s.previous_spec.as_ref().unwrap().task.image, "bad");
        assert_eq!(s.spec_version, version + 1);
        let st = s.update_status.unwrap();
        assert_eq!(st.state, UpdateState::RollbackStarted);
        assert!(
            st.message.starts_with("update rolled back due to failure"),
            "{}",
            st.message
        );
        run(&mut w);
        assert_eq!(images(&w), vec!["v1", "v1", "v1"]);
        let st = w.service("s").update_status.unwrap();
        assert_eq!(st.state, UpdateState::RollbackCompleted);
        assert_eq!(st.message, "rollback completed");
    }

    /// Reconcile and the updater decide from snapshots: reconcile can replace a failed task of the
    /// update from the spec it read, after the updater rolled the service back. The rollback must
    /// not complete before that replacement exists, and must then roll it back too (no second,
    /// unasked-for "update" of the rolled-back service).
    #[test]
    fn rollback_waits_for_replacements_decided_from_the_failed_spec() {
        let mut w = world(3, |s| {
            s.spec.update.failure_action = FailureAction::Rollback;
            s.spec.rollback.monitor_ms = 500;
        });
        update_image(&mut w, "bad");
        step_until_idle(&mut w);
        fail_new_tasks(&mut w, "bad");
        // Reconcile decides the restart of the failed task from the current ("bad") spec…
        let mut ids = 1_000;
        let racing = crate::reconcile(&w.sm, w.now, &mut || {
            ids += 1;
            format!("r{ids}")
        });
        assert!(!racing.ops.is_empty());
        // …the updater rolls the service back meanwhile…
        w.plan_updates();
        assert_eq!(status(&w), Some(UpdateState::RollbackStarted));
        assert_eq!(w.service("s").spec.task.image, "v1");
        // …and sees nothing to do yet: the failed task still holds its slot.
        w.plan_updates();
        assert_eq!(
            status(&w),
            Some(UpdateState::RollbackStarted),
            "not complete while the failed slot waits for its replacement"
        );
        // Reconcile's commit lands: a "bad" task from the old spec version.
        w.apply(racing.ops);
        assert_eq!(images(&w), vec!["bad", "v1", "v1"]);
        let mut states = Vec::new();
        for _ in 0..100 {
            let wake = step_until_idle(&mut w);
            states.push(status(&w));
            match wake {
                Some(at) => w.now = w.now.max(at),
                None => break,
            }
        }
        assert_eq!(images(&w), vec!["v1", "v1", "v1"]);
        assert!(
            states.iter().all(|s| matches!(
                s,
                Some(UpdateState::RollbackStarted | UpdateState::RollbackCompleted)
            )),
            "{states:?}"
        );
        assert_eq!(status(&w), Some(UpdateState::RollbackCompleted));
    }

    #[test]
    fn global_update_replaces_on_the_same_node() {
        let mut w = World::new();
        for id in ["a", "b"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", ServiceMode::Global, |s| {
            s.spec.task.image = "v1".into();
            s.spec.update.monitor_ms = 0;
        });
        run(&mut w);
        update_image(&mut w, "v2");
        run(&mut w);
        let mut on: Vec<(String, String)> = w
            .live("s")
            .into_iter()
            .map(|t| (t.node_id, t.spec.image))
            .collect();
        on.sort();
        assert_eq!(
            on,
            vec![("a".into(), "v2".into()), ("b".into(), "v2".into())]
        );
        assert_eq!(status(&w), Some(UpdateState::Completed));
    }
}
