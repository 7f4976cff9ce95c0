//! The orchestrators (replicated and global), the restart supervisor and the constraint enforcer,
//! as one pure reconcile pass.
//!
//! [`reconcile`] only creates tasks (status `Pending`) and raises `desired_state` on existing
//! tasks; it never touches a task's status, and never lowers a desired state. Rolling updates are
//! not its business: a live task made from an older spec is left alone (see [`crate::update`]);
//! tasks it creates use the service's current spec.
//!
//! # Slots
//!
//! Replicated tasks live in numbered slots, global tasks in one "slot" per node. A task is *live*
//! while its desired state is `Ready` or `Running`. A slot is *occupied* when it has a live task,
//! or when its most recent task (by creation time, then attempt) ended on its own (`Complete`,
//! `Failed`, `Rejected`), was stopped (`desired_state == Shutdown`) and the restart policy refuses to
//! restart it: such a slot stays empty on purpose and is not refilled (swarmkit's rule). A slot
//! whose tasks were all removed (`desired_state == Remove`) is free for reuse.
//!
//! # Live tasks
//!
//! Each live task is examined, first match wins:
//!
//! 1. **Stopped** (status `Complete` or beyond): desired `Shutdown`, and a replacement in the same
//!    slot (global: same node):
//!    - if it ended on its own, per its restart policy: condition `none` never; `on-failure` unless
//!      it completed with exit code 0; `any` always; with `max_attempts` > 0 the replacement's
//!      attempt (old attempt + 1) may not exceed it, and with `window_ms` > 0 only restarts (tasks
//!      with attempt > 0, one per attempt number) created within the window before the failure
//!      count. The history is what the store keeps of the slot (the reaper keeps
//!      [`crate::DEFAULT_KEEP_PER_SLOT`]), so a window can count at most that many restarts. With
//!      a restart delay the replacement is created with desired state `Ready` and gets `Running`
//!      once `created_at_ms + delay_ms` has passed (the delay runs from the restart decision, as in
//!      swarmkit, on the leader's clock); [`Plan::wake_at_ms`] asks for that moment;
//!    - if the system stopped it (`Shutdown` or `Orphaned` while it should run): a replacement at
//!      once, attempt unchanged.
//! 2. **Node down or gone** (replicated): desired `Shutdown` and an immediate replacement (attempt
//!    unchanged, no delay) that the scheduler places elsewhere. Global: a gone node's tasks get
//!    `Remove`; a down node keeps its task.
//! 3. **Node drained**: replicated: `Shutdown` + immediate replacement; global: `Shutdown`.
//! 4. **Node no longer satisfies the constraints** (labels changed): replicated (the task's own
//!    constraints): `Shutdown` + immediate replacement; global (the service's constraints and
//!    platforms): `Shutdown`.
//!
//! A replacement is only made when no other live task remains in the slot. A node that comes back
//! keeps its old tasks with desired `Shutdown`: its agent stops them.
//!
//! A live task with desired `Ready` is switched to `Running` when no other task of its slot is
//! still stopping on a reachable node (stop-first updates) and, for a restart (attempt > 0), when
//! its restart delay has passed.
//!
//! # Counts
//!
//! Replicated with N replicas: while fewer than N slots are occupied, new tasks go to the lowest
//! free slot numbers (attempt 0). While more are occupied, slots are removed (every task of the slot
//! gets desired `Remove`), choosing first slots without a running task, then slots whose node holds
//! the most tasks of the service (the k-th slot on a node, in slot order, ranks k), then the highest
//! slot numbers.
//!
//! Global: a node that is not drained and satisfies the service's constraints and platforms gets a
//! task pinned to it when its slot is free, unless it is paused. Down nodes are not excluded: their
//! task waits, pending, until the node is back.
//!
//! Tasks of a deleted service, or in no valid slot for the mode (slot 0 in a replicated service,
//! slot > 0 or no node in a global one), get desired `Remove`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rswarm_store::{
    Availability, Node, NodeStatus, RestartCondition, Service, ServiceMode, StateMachine, Task,
    TaskState, Txn,
};

use crate::constraint::{matches_all, platform_matches, Constraint};
use crate::task::{ended_on_its_own, new_task, recency, NewTask};
use crate::{is_live, Plan};

/// One reconcile pass over every service. `new_id` gives the ids of the tasks it creates.
pub fn reconcile(state: &StateMachine, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    // Network attachments of standalone containers are nobody's to orchestrate.
    for t in state.list::<Task>().filter(|t| !t.network_attachment) {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let mut ctx = Ctx {
        nodes: state.list::<Node>().map(|n| (n.id.as_str(), n)).collect(),
        now: now_ms,
        new_id,
        plan: Plan::default(),
        constraints: HashMap::new(),
    };
    for service in state.list::<Service>() {
        let tasks = by_service.remove(service.id.as_str()).unwrap_or_default();
        match service.spec.mode {
            ServiceMode::Replicated { replicas } => {
                reconcile_replicated(&mut ctx, service, &tasks, replicas)
            }
            ServiceMode::Global => reconcile_global(&mut ctx, service, &tasks),
        }
    }
    // What is left belongs to services that no longer exist.
    for tasks in by_service.values() {
        for t in tasks {
            set_desired(&mut ctx.plan, t, TaskState::Remove);
        }
    }
    ctx.plan
}

struct Ctx<'a, 'f> {
    nodes: HashMap<&'a str, &'a Node>,
    now: u64,
    new_id: &'f mut dyn FnMut() -> String,
    plan: Plan,
    /// Parsed constraints per (service, spec version); `None` when they do not parse.
    constraints: HashMap<(&'a str, u64), Option<Vec<Constraint>>>,
}

impl<'a> Ctx<'a, '_> {
    fn constraints_of(&mut self, t: &'a Task) -> Option<&Vec<Constraint>> {
        self.constraints
            .entry((t.service_id.as_str(), t.spec_version))
            .or_insert_with(|| parse_constraints(&t.spec.placement.constraints, &t.service_id))
            .as_ref()
    }

    fn create(&mut self, service: &Service, slot: u64, node_id: &str, r: Replacement) {
        let task = new_task(
            service,
            NewTask {
                id: (self.new_id)(),
                slot,
                node_id,
                attempt: r.attempt,
                desired_state: r.desired,
            },
            self.now,
        );
        if r.desired == TaskState::Ready && task.attempt > 0 {
            let at = self.now.saturating_add(task.spec.restart.delay_ms);
            self.plan.wake_at(at);
        }
        self.plan.ops.push(Txn::create(task));
    }

    /// Whether a node exists and is not known to be down.
    fn node_reachable(&self, id: &str) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|n| n.status != NodeStatus::Down)
    }

    /// Switches a live `Ready` task to `Running` when nothing holds it back (see the module doc).
    fn maybe_start(&mut self, t: &Task, slot_tasks: &[&Task]) {
        if t.desired_state != TaskState::Ready || t.status.state.is_terminal() {
            return;
        }
        let blocked = slot_tasks.iter().any(|o| {
            o.id != t.id
                && !is_live(o)
                && o.status.state >= TaskState::Assigned
                && o.status.state <= TaskState::Running
                && self.node_reachable(&o.node_id)
        });
        if blocked {
            return;
        }
        let start_at = if t.attempt > 0 {
            t.meta.created_at_ms.saturating_add(t.spec.restart.delay_ms)
        } else {
            0
        };
        if self.now >= start_at {
            set_desired(&mut self.plan, t, TaskState::Running);
        } else {
            self.plan.wake_at(start_at);
        }
    }
}

fn parse_constraints(exprs: &[String], service_id: &str) -> Option<Vec<Constraint>> {
    match Constraint::parse_all(exprs) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(service = service_id, error = %e, "ignoring placement constraints that do not parse");
            None
        }
    }
}

/// Raises a task's desired state (never lowers it).
fn set_desired(plan: &mut Plan, t: &Task, desired: TaskState) {
    if desired > t.desired_state {
        let mut t = t.clone();
        t.desired_state = desired;
        plan.ops.push(Txn::update(t));
    }
}

/// A task to create in place of a stopped one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Replacement {
    attempt: u64,
    desired: TaskState,
}

impl Replacement {
    const FRESH: Replacement = Replacement {
        attempt: 0,
        desired: TaskState::Running,
    };

    /// Replacement after a loss the task is not to blame for: same attempt, no delay (a task
    /// waiting out a restart delay keeps waiting).
    fn after_loss(t: &Task) -> Replacement {
        Replacement {
            attempt: t.attempt,
            desired: if t.desired_state == TaskState::Ready {
                TaskState::Ready
            } else {
                TaskState::Running
            },
        }
    }

    /// Replacement of a task that stopped: per its restart policy when it ended on its own.
    fn after_stop(t: &Task, history: &[&Task], delay_ms: u64) -> Option<Replacement> {
        if !ended_on_its_own(t.status.state) {
            return Some(Replacement::after_loss(t));
        }
        restart_allowed(t, history).then_some(Replacement {
            attempt: t.attempt + 1,
            desired: if delay_ms > 0 {
                TaskState::Ready
            } else {
                TaskState::Running
            },
        })
    }
}

/// Whether the restart policy lets a task that ended on its own be replaced.
fn restart_allowed(t: &Task, history: &[&Task]) -> bool {
    let policy = t.spec.restart;
    match policy.condition {
        RestartCondition::None => return false,
        RestartCondition::OnFailure => {
            if t.status.state == TaskState::Complete && t.status.exit_code.unwrap_or(0) == 0 {
                return false;
            }
        }
        RestartCondition::Any => {}
    }
    if policy.max_attempts == 0 {
        return true;
    }
    if policy.window_ms == 0 {
        return t.attempt < policy.max_attempts;
    }
    let end = t.status.timestamp_ms.max(t.meta.created_at_ms);
    let start = end.saturating_sub(policy.window_ms);
    let restarts: BTreeSet<u64> = history
        .iter()
        .filter(|h| h.attempt > 0 && h.meta.created_at_ms >= start && h.meta.created_at_ms <= end)
        .map(|h| h.attempt)
        .collect();
    (restarts.len() as u64) < policy.max_attempts
}

/// The most recent task of a slot holds the slot empty on purpose: it ended on its own, was
/// stopped, and may not be restarted.
fn refused_slot_holder<'a>(slot_tasks: &[&'a Task]) -> Option<&'a Task> {
    let last = slot_tasks
        .iter()
        .copied()
        .max_by(|a, b| recency(a).cmp(&recency(b)))?;
    (last.desired_state == TaskState::Shutdown
        && ended_on_its_own(last.status.state)
        && !restart_allowed(last, slot_tasks))
    .then_some(last)
}

/// What reconcile decided for one slot.
struct SlotPlan<'a> {
    slot: u64,
    tasks: Vec<&'a Task>,
    /// Live tasks that stay live.
    keep: Vec<&'a Task>,
    /// Live tasks to stop.
    stop: Vec<&'a Task>,
    replacement: Option<Replacement>,
    /// An earlier task whose refused restart keeps the slot occupied.
    refused: Option<&'a Task>,
    /// Scale-down chose this slot.
    remove: bool,
}

impl SlotPlan<'_> {
    fn occupied(&self) -> bool {
        !self.keep.is_empty()
            || !self.stop.is_empty()
            || self.replacement.is_some()
            || self.refused.is_some()
    }

    fn running(&self) -> bool {
        self.keep
            .iter()
            .any(|t| t.status.state == TaskState::Running)
    }
}

enum Fault {
    Stopped,
    NodeLost,
    Drained,
    Constraint,
}

fn reconcile_replicated<'a>(
    ctx: &mut Ctx<'a, '_>,
    service: &Service,
    tasks: &[&'a Task],
    replicas: u64,
) {
    let mut slots: BTreeMap<u64, Vec<&'a Task>> = BTreeMap::new();
    for &t in tasks {
        if t.slot == 0 {
            set_desired(&mut ctx.plan, t, TaskState::Remove);
        } else {
            slots.entry(t.slot).or_default().push(t);
        }
    }
    let delay = service.spec.task.restart.delay_ms;
    let mut plans: Vec<SlotPlan<'a>> = Vec::with_capacity(slots.len());
    for (slot, slot_tasks) in slots {
        let mut sp = SlotPlan {
            slot,
            keep: Vec::new(),
            stop: Vec::new(),
            replacement: None,
            refused: None,
            remove: false,
            tasks: Vec::new(),
        };
        for &t in slot_tasks.iter().filter(|t| is_live(t)) {
            let fault = if t.status.state.is_terminal() {
                Some(Fault::Stopped)
            } else if t.node_id.is_empty() {
                None
            } else {
                match ctx.nodes.get(t.node_id.as_str()).copied() {
                    None => Some(Fault::NodeLost),
                    Some(n) if n.status == NodeStatus::Down => Some(Fault::NodeLost),
                    Some(n) if n.availability == Availability::Drain => Some(Fault::Drained),
                    Some(n) => match ctx.constraints_of(t) {
                        Some(c) if !matches_all(c, n) => Some(Fault::Constraint),
                        _ => None,
                    },
                }
            };
            let replacement = match fault {
                None => {
                    sp.keep.push(t);
                    continue;
                }
                Some(Fault::Stopped) => Replacement::after_stop(t, &slot_tasks, delay),
                Some(Fault::NodeLost | Fault::Drained | Fault::Constraint) => {
                    Some(Replacement::after_loss(t))
                }
            };
            sp.stop.push(t);
            sp.replacement = sp.replacement.or(replacement);
        }
        if !sp.keep.is_empty() {
            sp.replacement = None;
        }
        if sp.keep.is_empty() && sp.stop.is_empty() {
            sp.refused = refused_slot_holder(&slot_tasks);
        }
        sp.tasks = slot_tasks;
        plans.push(sp);
    }

    // Scale.
    let occupied: Vec<usize> = (0..plans.len()).filter(|&i| plans[i].occupied()).collect();
    let mut new_slots = Vec::new();
    if (occupied.len() as u64) < replicas {
        let taken: BTreeSet<u64> = occupied.iter().map(|&i| plans[i].slot).collect();
        let missing = replicas - occupied.len() as u64;
        new_slots.extend((1..).filter(|s| !taken.contains(s)).take(missing as usize));
    } else if (occupied.len() as u64) > replicas {
        let excess = occupied.len() - replicas as usize;
        // Rank each slot as the k-th slot on its node (running slots first, then by slot).
        let mut order = occupied.clone();
        order.sort_by_key(|&i| (!plans[i].running(), plans[i].slot));
        let mut per_node: HashMap<&str, u64> = HashMap::new();
        let mut rank: HashMap<usize, u64> = HashMap::new();
        for &i in &order {
            let p = &plans[i];
            let r = match (p.keep.as_slice(), p.replacement) {
                ([t], None) if !t.node_id.is_empty() => {
                    let c = per_node.entry(t.node_id.as_str()).or_default();
                    *c += 1;
                    *c
                }
                _ => u64::MAX,
            };
            rank.insert(i, r);
        }
        let mut victims = occupied;
        victims.sort_by_key(|&i| {
            (
                plans[i].running(),
                std::cmp::Reverse(rank[&i]),
                std::cmp::Reverse(plans[i].slot),
            )
        });
        for &i in victims.iter().take(excess) {
            plans[i].remove = true;
        }
    }

    // Emit.
    for sp in &plans {
        if sp.remove {
            for t in &sp.tasks {
                set_desired(&mut ctx.plan, t, TaskState::Remove);
            }
            continue;
        }
        for t in &sp.stop {
            set_desired(&mut ctx.plan, t, TaskState::Shutdown);
        }
        if let Some(r) = sp.replacement {
            ctx.create(service, sp.slot, "", r);
        }
        for t in &sp.keep {
            ctx.maybe_start(t, &sp.tasks);
        }
    }
    for slot in new_slots {
        ctx.create(service, slot, "", Replacement::FRESH);
    }
}

fn reconcile_global<'a>(ctx: &mut Ctx<'a, '_>, service: &'a Service, tasks: &[&'a Task]) {
    let mut by_node: BTreeMap<&'a str, Vec<&'a Task>> = BTreeMap::new();
    for &t in tasks {
        if t.slot != 0 || t.node_id.is_empty() {
            set_desired(&mut ctx.plan, t, TaskState::Remove);
        } else {
            by_node.entry(t.node_id.as_str()).or_default().push(t);
        }
    }
    let placement = &service.spec.task.placement;
    let constraints = parse_constraints(&placement.constraints, &service.id);
    let delay = service.spec.task.restart.delay_ms;
    let mut node_ids: BTreeSet<&'a str> = ctx.nodes.keys().copied().collect();
    node_ids.extend(by_node.keys().copied());
    for node_id in node_ids {
        let node_tasks = by_node.remove(node_id).unwrap_or_default();
        let Some(node) = ctx.nodes.get(node_id).copied() else {
            for t in &node_tasks {
                set_desired(&mut ctx.plan, t, TaskState::Remove);
            }
            continue;
        };
        // `None`: the constraints do not parse; keep what runs, start nothing.
        let fits = constraints
            .as_ref()
            .map(|c| matches_all(c, node) && platform_matches(&placement.platforms, node));
        let can_run = node.availability != Availability::Drain && fits != Some(false);
        let can_start = can_run && node.availability == Availability::Active && fits == Some(true);

        let mut keep = Vec::new();
        let mut stopped_any = false;
        let mut replacement = None;
        for &t in node_tasks.iter().filter(|t| is_live(t)) {
            if !can_run {
                set_desired(&mut ctx.plan, t, TaskState::Shutdown);
                stopped_any = true;
            } else if t.status.state.is_terminal() {
                set_desired(&mut ctx.plan, t, TaskState::Shutdown);
                stopped_any = true;
                if can_start && replacement.is_none() {
                    replacement = Replacement::after_stop(t, &node_tasks, delay);
                }
            } else {
                keep.push(t);
            }
        }
        if !keep.is_empty() {
            replacement = None;
        }
        if let Some(r) = replacement {
            ctx.create(service, 0, node_id, r);
        } else if keep.is_empty()
            && !stopped_any
            && can_start
            && refused_slot_holder(&node_tasks).is_none()
        {
            ctx.create(service, 0, node_id, Replacement::FRESH);
        }
        for t in keep {
            ctx.maybe_start(t, &node_tasks);
        }
    }
}

#[cfg(test)]
mod tests {
    use rswarm_store::{
        Availability, NodeStatus, RestartCondition, RestartPolicy, ServiceMode, TaskState,
    };

    use crate::is_live;
    use crate::testutil::World;

    fn replicated(n: u64) -> ServiceMode {
        ServiceMode::Replicated { replicas: n }
    }

    fn no_delay(w: &mut World, service: &str) {
        w.update_service(service, |s| s.spec.task.restart.delay_ms = 0);
    }

    /// Reconcile, schedule and let the agents run everything, until nothing changes.
    fn converge(w: &mut World) {
        for _ in 0..10 {
            let p = w.reconcile();
            let s = w.schedule();
            let moved = w.agents_converge();
            if p.ops.is_empty() && s.assigned.is_empty() && !moved {
                return;
            }
        }
        panic!("did not converge");
    }

    fn slots(w: &World, service: &str) -> Vec<u64> {
        let mut s: Vec<u64> = w.live(service).iter().map(|t| t.slot).collect();
        s.sort();
        s
    }

    fn three_nodes() -> World {
        let mut w = World::new();
        for id in ["a", "b", "c"] {
            w.add_node(id, |_| {});
        }
        w
    }

    #[test]
    fn creates_missing_replicas_with_the_service_spec() {
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |s| {
            s.spec_version = 7;
            s.spec.ports = vec![rswarm_store::PortConfig {
                target: 80,
                published: 8080,
                protocol: "tcp".into(),
            }];
        });
        let p = w.reconcile();
        assert_eq!(p.ops.len(), 3);
        assert_eq!(p.wake_at_ms, None);
        let tasks = w.tasks("s");
        assert_eq!(slots(&w, "s"), vec![1, 2, 3]);
        let svc = w.service("s");
        for t in &tasks {
            assert_eq!(t.status.state, TaskState::Pending);
            assert_eq!(t.status.message, "pending task scheduling");
            assert_eq!(t.status.timestamp_ms, w.now);
            assert_eq!(t.desired_state, TaskState::Running);
            assert_eq!(t.spec_version, 7);
            assert_eq!(t.spec, svc.spec.task);
            assert_eq!(t.ports, svc.spec.ports);
            assert_eq!(t.service_name, "svc-s");
            assert!(t.node_id.is_empty());
            assert_eq!(t.attempt, 0);
        }
        assert!(
            w.reconcile().ops.is_empty(),
            "a second pass changes nothing"
        );
    }

    #[test]
    fn scales_up_into_the_lowest_free_slots_and_down_from_the_highest() {
        let mut w = three_nodes();
        w.add_service("s", replicated(4), |_| {});
        w.add_task("s", 2, "a", TaskState::Running);
        w.add_task("s", 5, "b", TaskState::Running);
        w.reconcile();
        assert_eq!(slots(&w, "s"), vec![1, 2, 3, 5]);
        // The two new tasks are not running yet: they go first.
        w.update_service("s", |s| s.spec.mode = replicated(2));
        w.reconcile();
        assert_eq!(slots(&w, "s"), vec![2, 5]);

        // All else equal, the highest slots go.
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |_| {});
        converge(&mut w);
        w.update_service("s", |s| s.spec.mode = replicated(1));
        w.reconcile();
        assert_eq!(slots(&w, "s"), vec![1]);
        assert!(w
            .tasks("s")
            .iter()
            .filter(|t| t.slot > 1)
            .all(|t| t.desired_state == TaskState::Remove));
    }

    #[test]
    fn scale_down_prefers_tasks_not_running_then_crowded_nodes_then_high_slots() {
        let mut w = three_nodes();
        w.add_service("s", replicated(6), |_| {});
        converge(&mut w);
        assert_eq!(slots(&w, "s"), vec![1, 2, 3, 4, 5, 6]);
        // Slot 2 is still starting: it goes first; then one of the two copies on each node.
        let t2 = w.live("s").into_iter().find(|t| t.slot == 2).unwrap();
        w.set_state(&t2.id, TaskState::Starting);
        w.update_service("s", |s| s.spec.mode = replicated(3));
        w.reconcile();
        let removed: Vec<_> = w
            .tasks("s")
            .into_iter()
            .filter(|t| t.desired_state == TaskState::Remove)
            .collect();
        assert_eq!(removed.len(), 3);
        assert!(removed.iter().any(|t| t.slot == 2));
        let mut per_node = std::collections::BTreeMap::new();
        for t in w.live("s") {
            *per_node.entry(t.node_id.clone()).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 3, "one task left per node: {per_node:?}");
        // Scaling up again reuses the freed slot numbers.
        w.update_service("s", |s| s.spec.mode = replicated(6));
        w.reconcile();
        assert_eq!(slots(&w, "s"), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn restart_any_replaces_with_delay_then_starts_at_the_wake_time() {
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |s| {
            s.spec.task.restart = RestartPolicy {
                delay_ms: 5_000,
                ..RestartPolicy::default()
            };
        });
        converge(&mut w);
        let old = w.live("s").pop().unwrap();
        w.now += 1_000;
        w.set_state(&old.id, TaskState::Complete);
        let p = w.reconcile();
        assert_eq!(p.wake_at_ms, Some(w.now + 5_000));
        let old = w.task(&old.id);
        assert_eq!(old.desired_state, TaskState::Shutdown);
        assert_eq!(old.status.state, TaskState::Complete, "status untouched");
        let new = w.live("s").pop().unwrap();
        assert_eq!((new.slot, new.attempt), (1, 1));
        assert_eq!(new.desired_state, TaskState::Ready);
        // The scheduler places it meanwhile; it does not start before the delay.
        w.schedule();
        w.now += 4_999;
        let p = w.reconcile();
        assert!(p.ops.is_empty());
        assert_eq!(p.wake_at_ms, Some(w.now + 1));
        w.now += 1;
        let p = w.reconcile();
        assert_eq!(p.ops.len(), 1);
        assert_eq!(p.wake_at_ms, None);
        assert_eq!(w.task(&new.id).desired_state, TaskState::Running);
    }

    #[test]
    fn restart_conditions() {
        for (condition, end, restarts) in [
            (RestartCondition::None, TaskState::Failed, false),
            (RestartCondition::OnFailure, TaskState::Complete, false),
            (RestartCondition::OnFailure, TaskState::Failed, true),
            (RestartCondition::OnFailure, TaskState::Rejected, true),
            (RestartCondition::Any, TaskState::Complete, true),
        ] {
            let mut w = three_nodes();
            w.add_service("s", replicated(1), |s| {
                s.spec.task.restart.condition = condition;
                s.spec.task.restart.delay_ms = 0;
            });
            converge(&mut w);
            let old = w.live("s").pop().unwrap();
            w.set_state(&old.id, end);
            let p = w.reconcile();
            assert_eq!(w.task(&old.id).desired_state, TaskState::Shutdown);
            assert_eq!(
                w.live("s").len(),
                usize::from(restarts),
                "{condition:?} {end:?}"
            );
            assert_eq!(p.wake_at_ms, None);
            if restarts {
                assert_eq!(w.live("s")[0].desired_state, TaskState::Running);
            } else {
                // The slot stays empty on purpose: later passes do not refill it.
                assert!(w.reconcile().ops.is_empty(), "{condition:?} {end:?}");
                assert!(w.live("s").is_empty());
            }
        }
    }

    #[test]
    fn restart_max_attempts() {
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |s| {
            s.spec.task.restart.delay_ms = 0;
            s.spec.task.restart.max_attempts = 2;
        });
        converge(&mut w);
        let mut attempts = Vec::new();
        for _ in 0..4 {
            let Some(t) = w.live("s").pop() else { break };
            attempts.push(t.attempt);
            w.now += 10;
            w.set_state(&t.id, TaskState::Failed);
            converge(&mut w);
        }
        assert_eq!(attempts, vec![0, 1, 2]);
        assert!(w.live("s").is_empty());
        assert!(w.reconcile().ops.is_empty());
    }

    #[test]
    fn restart_window_counts_only_recent_restarts() {
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |s| {
            s.spec.task.restart.delay_ms = 0;
            s.spec.task.restart.max_attempts = 1;
            s.spec.task.restart.window_ms = 10_000;
        });
        converge(&mut w);
        // First failure: no restart in the window yet.
        let t0 = w.live("s").pop().unwrap();
        w.now += 100;
        w.set_state(&t0.id, TaskState::Failed);
        converge(&mut w);
        let t1 = w.live("s").pop().expect("restarted once");
        assert_eq!(t1.attempt, 1);
        // Failing again soon: one restart in the window already.
        w.now += 100;
        w.set_state(&t1.id, TaskState::Failed);
        converge(&mut w);
        assert!(w.live("s").is_empty());

        // Same story, but the second failure comes after the window.
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |s| {
            s.spec.task.restart.delay_ms = 0;
            s.spec.task.restart.max_attempts = 1;
            s.spec.task.restart.window_ms = 10_000;
        });
        converge(&mut w);
        let t0 = w.live("s").pop().unwrap();
        w.set_state(&t0.id, TaskState::Failed);
        converge(&mut w);
        let t1 = w.live("s").pop().unwrap();
        w.now += 20_000;
        w.set_state(&t1.id, TaskState::Failed);
        converge(&mut w);
        let t2 = w
            .live("s")
            .pop()
            .expect("the earlier restart is out of the window");
        assert_eq!(t2.attempt, 2);
    }

    #[test]
    fn node_down_replaces_at_once_without_counting_an_attempt() {
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |_| {});
        converge(&mut w);
        let on_a = w.live("s").into_iter().find(|t| t.node_id == "a").unwrap();
        w.update_node("a", |n| n.status = NodeStatus::Down);
        let p = w.reconcile();
        assert_eq!(p.wake_at_ms, None);
        let old = w.task(&on_a.id);
        assert_eq!(old.desired_state, TaskState::Shutdown);
        assert_eq!(old.status.state, TaskState::Running, "status untouched");
        let new = w
            .live("s")
            .into_iter()
            .find(|t| t.slot == on_a.slot)
            .unwrap();
        assert_eq!(new.desired_state, TaskState::Running);
        assert_eq!(new.attempt, on_a.attempt);
        let s = w.schedule();
        assert_ne!(s.assigned[0].node_id, "a");
        // The node comes back: its old task stays shut down, nothing new is made.
        w.update_node("a", |n| n.status = NodeStatus::Ready);
        assert!(w.reconcile().ops.is_empty());
        assert_eq!(w.task(&on_a.id).desired_state, TaskState::Shutdown);
    }

    #[test]
    fn node_removed_from_the_store_replaces_its_tasks() {
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |_| {});
        converge(&mut w);
        let on_b = w.live("s").into_iter().find(|t| t.node_id == "b").unwrap();
        w.remove_node("b");
        w.reconcile();
        assert_eq!(w.task(&on_b.id).desired_state, TaskState::Shutdown);
        assert_eq!(w.live("s").len(), 3);
    }

    #[test]
    fn drain_moves_tasks_elsewhere() {
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |_| {});
        converge(&mut w);
        w.update_node("c", |n| n.availability = Availability::Drain);
        converge(&mut w);
        let live = w.live("s");
        assert_eq!(live.len(), 3);
        assert!(live.iter().all(|t| t.node_id != "c"));
        assert!(w
            .tasks("s")
            .iter()
            .filter(|t| t.node_id == "c")
            .all(
                |t| t.desired_state == TaskState::Shutdown && t.status.state == TaskState::Shutdown
            ));
    }

    #[test]
    fn pause_keeps_tasks() {
        let mut w = three_nodes();
        w.add_service("s", replicated(3), |_| {});
        converge(&mut w);
        w.update_node("c", |n| n.availability = Availability::Pause);
        assert!(w.reconcile().ops.is_empty());
    }

    #[test]
    fn constraint_change_moves_tasks() {
        let mut w = three_nodes();
        for id in ["a", "b", "c"] {
            w.update_node(id, |n| {
                n.labels.insert("disk".into(), "ssd".into());
            });
        }
        w.add_service("s", replicated(3), |s| {
            s.spec.task.placement.constraints = vec!["node.labels.disk==ssd".into()];
        });
        converge(&mut w);
        let on_a = w.live("s").into_iter().find(|t| t.node_id == "a").unwrap();
        w.update_node("a", |n| {
            n.labels.remove("disk");
        });
        w.reconcile();
        assert_eq!(w.task(&on_a.id).desired_state, TaskState::Shutdown);
        let new = w
            .live("s")
            .into_iter()
            .find(|t| t.slot == on_a.slot)
            .unwrap();
        assert_eq!((new.attempt, new.desired_state), (0, TaskState::Running));
        converge(&mut w);
        assert!(w.live("s").iter().all(|t| t.node_id != "a"));
    }

    #[test]
    fn unassigned_tasks_and_outdated_tasks_are_left_alone() {
        let mut w = three_nodes();
        w.add_service("s", replicated(2), |_| {});
        w.add_task("s", 1, "", TaskState::Pending);
        w.add_task("s", 2, "a", TaskState::Running);
        w.update_service("s", |s| {
            s.spec_version += 1;
            s.spec.task.image = "nginx".into();
        });
        assert!(w.reconcile().ops.is_empty());
    }

    #[test]
    fn deleted_service_and_stray_tasks_are_removed() {
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |_| {});
        w.add_service("g", ServiceMode::Global, |_| {});
        let a = w.add_task("s", 1, "a", TaskState::Running);
        let b = w.add_task("s", 1, "a", TaskState::Failed);
        w.update_task(&b, |t| t.desired_state = TaskState::Shutdown);
        let stray = w.add_task("s", 0, "a", TaskState::Running);
        let stray_g = w.add_task("g", 3, "a", TaskState::Running);
        w.reconcile();
        assert_eq!(w.task(&stray).desired_state, TaskState::Remove);
        assert_eq!(w.task(&stray_g).desired_state, TaskState::Remove);
        let s = w.service("s");
        w.apply(vec![rswarm_store::Txn::delete(&s)]);
        w.reconcile();
        assert_eq!(w.task(&a).desired_state, TaskState::Remove);
        assert_eq!(w.task(&b).desired_state, TaskState::Remove);
    }

    #[test]
    fn global_follows_nodes_join_drain_pause_constraints_and_removal() {
        let mut w = three_nodes();
        w.update_node("c", |n| {
            n.labels.insert("role".into(), "edge".into());
        });
        w.add_service("g", ServiceMode::Global, |s| {
            s.spec.task.placement.constraints = vec!["node.labels.role!=db".into()];
        });
        no_delay(&mut w, "g");
        converge(&mut w);
        let on = |w: &World| -> Vec<String> {
            let mut v: Vec<String> = w.live("g").into_iter().map(|t| t.node_id).collect();
            v.sort();
            v
        };
        assert_eq!(on(&w), vec!["a", "b", "c"]);
        assert!(w
            .live("g")
            .iter()
            .all(|t| t.slot == 0 && t.status.state == TaskState::Running));

        // Join.
        w.add_node("d", |_| {});
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "c", "d"]);

        // Drain: shut down, no replacement anywhere; undrain: back.
        w.update_node("d", |n| n.availability = Availability::Drain);
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "c"]);
        w.update_node("d", |n| n.availability = Availability::Active);
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "c", "d"]);

        // Pause keeps the task; a task that stops on a paused node is not restarted.
        w.update_node("d", |n| n.availability = Availability::Pause);
        assert!(w.reconcile().ops.is_empty());
        let on_d = w.live("g").into_iter().find(|t| t.node_id == "d").unwrap();
        w.set_state(&on_d.id, TaskState::Failed);
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "c"]);
        w.update_node("d", |n| n.availability = Availability::Active);
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "c", "d"]);

        // Constraint no longer satisfied.
        w.update_node("c", |n| {
            n.labels.insert("role".into(), "db".into());
        });
        converge(&mut w);
        assert_eq!(on(&w), vec!["a", "b", "d"]);

        // Down: the task stays; no replacement elsewhere.
        w.update_node("b", |n| n.status = NodeStatus::Down);
        assert!(w.reconcile().ops.is_empty());

        // Removed from the store: tasks get Remove.
        let on_b: Vec<_> = w
            .tasks("g")
            .into_iter()
            .filter(|t| t.node_id == "b")
            .collect();
        w.remove_node("b");
        w.reconcile();
        for t in on_b {
            assert_eq!(w.task(&t.id).desired_state, TaskState::Remove);
        }
        assert_eq!(on(&w), vec!["a", "d"]);
    }

    #[test]
    fn global_restarts_on_the_same_node_per_policy() {
        let mut w = three_nodes();
        w.add_service("g", ServiceMode::Global, |s| {
            s.spec.task.restart.condition = RestartCondition::OnFailure;
            s.spec.task.restart.delay_ms = 0;
        });
        converge(&mut w);
        let on_a = w.live("g").into_iter().find(|t| t.node_id == "a").unwrap();
        w.set_state(&on_a.id, TaskState::Failed);
        w.reconcile();
        let new = w.live("g").into_iter().find(|t| t.node_id == "a").unwrap();
        assert_eq!(
            (new.attempt, new.slot, new.desired_state),
            (1, 0, TaskState::Running)
        );
        converge(&mut w);
        let on_b = w.live("g").into_iter().find(|t| t.node_id == "b").unwrap();
        w.set_state(&on_b.id, TaskState::Complete);
        converge(&mut w);
        assert!(
            w.live("g").iter().all(|t| t.node_id != "b"),
            "completed: not restarted"
        );
        assert!(w.reconcile().ops.is_empty());
    }

    #[test]
    fn global_skips_nodes_of_other_platforms() {
        let mut w = three_nodes();
        w.update_node("c", |n| n.arch = "arm64".into());
        w.add_service("g", ServiceMode::Global, |s| {
            s.spec.task.placement.platforms = vec!["linux/amd64".into()];
        });
        w.reconcile();
        let mut nodes: Vec<String> = w.live("g").into_iter().map(|t| t.node_id).collect();
        nodes.sort();
        assert_eq!(nodes, vec!["a", "b"]);
    }

    #[test]
    fn ready_task_waits_for_the_previous_task_to_stop() {
        let mut w = three_nodes();
        w.add_service("s", replicated(1), |_| {});
        converge(&mut w);
        let old = w.live("s").pop().unwrap();
        // A stop-first update: old told to stop, new one created Ready.
        w.update_task(&old.id, |t| t.desired_state = TaskState::Shutdown);
        let svc = w.service("s");
        let id = w.id();
        let new = crate::new_task(
            &svc,
            crate::NewTask {
                id: id.clone(),
                slot: 1,
                node_id: "",
                attempt: 0,
                desired_state: TaskState::Ready,
            },
            w.now,
        );
        w.apply(vec![rswarm_store::Txn::create(new)]);
        let p = w.reconcile();
        assert!(p.ops.is_empty() && p.wake_at_ms.is_none());
        w.set_state(&old.id, TaskState::Shutdown);
        w.reconcile();
        assert_eq!(w.task(&id).desired_state, TaskState::Running);
        assert!(is_live(&w.task(&id)));
    }
}
