//! The scheduler: gives pending tasks a node.
//!
//! A task is scheduled when its status is `Pending` and its desired state is at most `Running`.
//! Tasks that already name a node (global services pin their tasks) are only checked against that
//! node; the others get the best node that passes every filter.
//!
//! Filters, in swarmkit's pipeline order (a node is counted against the first filter it fails):
//!
//! 1. the node is `Ready` and `Active`;
//! 2. resources: the reservations of the node's tasks plus the task's own fit in the node's CPU
//!    and memory (a node that reports 0 for a resource has unknown capacity: only tasks reserving
//!    none of it fit);
//! 3. the service's placement constraints;
//! 4. the service's platforms (`os/arch`, with `x86_64` = `amd64` and `aarch64` = `arm64`);
//! 5. host ports: no published port/protocol of the task is used by another task on the node;
//! 6. `max_replicas_per_node`: fewer tasks of the service on the node than the maximum.
//!
//! A node's load counts its tasks that are assigned or further but not past `Running`, and whose
//! desired state is at most `Running` (so pending tasks pinned to a node count only once they are
//! assigned), plus what this run assigned.
//!
//! Ranking among the nodes that pass: placement preferences first (`spread=node.labels.x`: the
//! task goes to the label value — nodes without the label being one more value — that holds the
//! fewest tasks of the service, level by level), then fewest tasks of the service on the node,
//! then fewest tasks in total, then node id.
//!
//! Cost: tasks are grouped by `(service, spec_version)` (same spec, same filters); the filters run
//! once per group and node, then each placement takes O(log nodes) from an ordered tree of label
//! groups with a binary heap of nodes at each leaf, whose keys change only for the node that just
//! received a task. The node loads are built in one pass over the tasks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use rswarm_store::{Availability, Node, NodeStatus, StateMachine, Task, TaskState};

use crate::constraint::{platform_eq, Constraint, Preference};
use crate::fxhash::FxHashMap;
use crate::task::occupies_node;
use crate::validate::port_protocol;

/// The message of a task the scheduler assigned.
pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";

/// What one scheduling pass decided. Both lists hold copies of the state's tasks (with their
/// `meta` untouched) to write back with `Txn::update`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Tasks given a node: `node_id` set, status `Assigned` at `now_ms`, `err` cleared.
    pub assigned: Vec<Task>,
    /// Tasks no node can take whose `status.err` now explains why (only those whose explanation
    /// changed, so that an idle cluster is not rewritten at every pass).
    pub unschedulable: Vec<Task>,
}

/// Why a node was refused, in pipeline order (the derived order sorts the explanation).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reject {
    NotAvailable,
    Cpu,
    Memory,
    Constraint(usize),
    Platform,
    Port(u16, &'static str),
    MaxReplicas,
}

/// Everything the filters need about one group's spec, parsed once.
struct GroupSpec<'a> {
    constraints: Result<Vec<Constraint>, String>,
    preferences: Vec<Preference>,
    platforms: &'a [String],
    platforms_text: String,
    cpu: u64,
    memory: u64,
    ports: Vec<(u16, &'static str)>,
    max_per_node: u64,
    service_id: &'a str,
}

fn proto(p: &str) -> &'static str {
    port_protocol(p).unwrap_or("other")
}

impl<'a> GroupSpec<'a> {
    fn new(t: &'a Task) -> Self {
        let placement = &t.spec.placement;
        let constraints = Constraint::parse_all(&placement.constraints).map_err(|e| e.to_string());
        // Preferences that do not parse are ignored (they only rank); specs are validated anyway.
        let preferences = placement
            .preferences
            .iter()
            .filter_map(|p| Preference::parse(p).ok())
            .collect();
        GroupSpec {
            constraints,
            preferences,
            platforms: &placement.platforms,
            platforms_text: placement.platforms.join(", "),
            cpu: t.spec.resources.reserve_nano_cpus,
            memory: t.spec.resources.reserve_memory,
            ports: t
                .ports
                .iter()
                .filter(|p| p.published != 0)
                .map(|p| (p.published, proto(&p.protocol)))
                .collect(),
            max_per_node: placement.max_replicas_per_node,
            service_id: &t.service_id,
        }
    }
}

/// What the scheduler knows about one node.
struct NodeInfo<'a> {
    node: &'a Node,
    available: bool,
    tasks: u64,
    cpu: u64,
    memory: u64,
    ports: Vec<(u16, &'static str)>,
}

impl NodeInfo<'_> {
    fn add(&mut self, spec: &GroupSpec<'_>) {
        self.tasks += 1;
        self.cpu = self.cpu.saturating_add(spec.cpu);
        self.memory = self.memory.saturating_add(spec.memory);
        self.ports.extend_from_slice(&spec.ports);
    }
}

/// Runs the filter pipeline for one node. `service_tasks`: tasks of the service on the node.
fn check(spec: &GroupSpec<'_>, n: &NodeInfo<'_>, service_tasks: u64) -> Result<(), Reject> {
    if !n.available {
        return Err(Reject::NotAvailable);
    }
    let fits = |need: u64, used: u64, capacity: u64| {
        need == 0 || (capacity != 0 && used.saturating_add(need) <= capacity)
    };
    if !fits(spec.cpu, n.cpu, n.node.nano_cpus) {
        return Err(Reject::Cpu);
    }
    if !fits(spec.memory, n.memory, n.node.memory_bytes) {
        return Err(Reject::Memory);
    }
    if let Ok(constraints) = &spec.constraints {
        if let Some(i) = constraints.iter().position(|c| !c.matches(n.node)) {
            return Err(Reject::Constraint(i));
        }
    }
    if !spec.platforms.is_empty()
        && !spec
            .platforms
            .iter()
            .any(|p| platform_eq(p, &n.node.os, &n.node.arch))
    {
        return Err(Reject::Platform);
    }
    if let Some(&(port, proto)) = spec.ports.iter().find(|p| n.ports.contains(p)) {
        return Err(Reject::Port(port, proto));
    }
    if spec.max_per_node != 0 && service_tasks >= spec.max_per_node {
        return Err(Reject::MaxReplicas);
    }
    Ok(())
}

/// swarmkit-style explanation: `no suitable node (2 nodes not available for new tasks; …)`.
fn explain(spec: &GroupSpec<'_>, rejects: &BTreeMap<Reject, u64>) -> String {
    if let Err(e) = &spec.constraints {
        return format!("no suitable node (invalid placement constraint: {e})");
    }
    if rejects.is_empty() {
        return "no suitable node (no nodes in the cluster)".into();
    }
    let mut out = String::from("no suitable node (");
    for (i, (reason, &n)) in rejects.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let (nodes, has) = if n == 1 {
            ("node", "has")
        } else {
            ("nodes", "have")
        };
        let _ = match reason {
            Reject::NotAvailable => write!(out, "{n} {nodes} not available for new tasks"),
            Reject::Cpu => write!(out, "{n} {nodes} {has} insufficient CPU"),
            Reject::Memory => write!(out, "{n} {nodes} {has} insufficient memory"),
            Reject::Constraint(i) => {
                let expr = spec
                    .constraints
                    .as_ref()
                    .ok()
                    .and_then(|c| c.get(*i))
                    .map_or("", Constraint::expr);
                write!(out, "{n} {nodes} not satisfying constraint {expr}")
            }
            Reject::Platform => write!(
                out,
                "{n} {nodes} not matching platform {}",
                spec.platforms_text
            ),
            Reject::Port(port, proto) => write!(
                out,
                "{n} {nodes} {has} host port {port}/{proto} already in use"
            ),
            Reject::MaxReplicas => write!(
                out,
                "{n} {nodes} already {has} the maximum of {} tasks of this service",
                spec.max_per_node
            ),
        };
    }
    out.push(')');
    out
}

/// Label groups for placement preferences: internal branches choose the child holding the fewest
/// tasks of the service; leaves hold a min-heap of nodes keyed by
/// (service tasks, total tasks, node index).
struct Branch<'a> {
    parent: Option<usize>,
    leaf: bool,
    count: u64,
    by_value: FxHashMap<Option<&'a str>, usize>,
    children: BTreeSet<(u64, usize)>,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
}

struct Tree<'a> {
    branches: Vec<Branch<'a>>,
}

impl<'a> Tree<'a> {
    fn new(levels: usize) -> Self {
        Tree {
            branches: vec![Branch {
                parent: None,
                leaf: levels == 0,
                count: 0,
                by_value: FxHashMap::default(),
                children: BTreeSet::new(),
                heap: BinaryHeap::new(),
            }],
        }
    }

    /// Adds a node under the path of its label values (before [`Tree::seal`]).
    fn insert(&mut self, path: &[Option<&'a str>], service_tasks: u64, total: u64, idx: usize) {
        let mut b = 0;
        self.branches[0].count += service_tasks;
        for (depth, value) in path.iter().enumerate() {
            let next = match self.branches[b].by_value.get(value) {
                Some(&c) => c,
                None => {
                    let c = self.branches.len();
                    self.branches.push(Branch {
                        parent: Some(b),
                        leaf: depth + 1 == path.len(),
                        count: 0,
                        by_value: FxHashMap::default(),
                        children: BTreeSet::new(),
                        heap: BinaryHeap::new(),
                    });
                    self.branches[b].by_value.insert(*value, c);
                    c
                }
            };
            b = next;
            self.branches[b].count += service_tasks;
        }
        self.branches[b]
            .heap
            .push(Reverse((service_tasks, total, idx)));
    }

    /// Orders every branch's children by their counts, once all nodes are in.
    fn seal(&mut self) {
        for b in 1..self.branches.len() {
            if let Some(p) = self.branches[b].parent {
                let key = (self.branches[b].count, b);
                self.branches[p].children.insert(key);
            }
        }
    }

    /// Takes the best node out of the tree; returns it with its leaf.
    fn pop(&mut self) -> Option<(usize, usize)> {
        let mut b = 0;
        while !self.branches[b].leaf {
            b = self.branches[b].children.first()?.1;
        }
        let Reverse((_, _, idx)) = self.branches[b].heap.pop()?;
        Some((idx, b))
    }

    /// Records one more task of the service in `leaf` and its ancestors.
    fn count_task(&mut self, leaf: usize) {
        let mut b = leaf;
        while let Some(p) = self.branches[b].parent {
            let old = (self.branches[b].count, b);
            self.branches[p].children.remove(&old);
            self.branches[b].count += 1;
            self.branches[p].children.insert((old.0 + 1, b));
            b = p;
        }
    }

    /// Puts a node back into its leaf with its new key.
    fn push(&mut self, leaf: usize, service_tasks: u64, total: u64, idx: usize) {
        self.branches[leaf]
            .heap
            .push(Reverse((service_tasks, total, idx)));
    }

    /// Drops `leaf` (and ancestors left empty) if it has no node left.
    fn prune(&mut self, leaf: usize) {
        let mut b = leaf;
        loop {
            let empty = if self.branches[b].leaf {
                self.branches[b].heap.is_empty()
            } else {
                self.branches[b].children.is_empty()
            };
            if !empty {
                return;
            }
            let Some(p) = self.branches[b].parent else {
                return;
            };
            let key = (self.branches[b].count, b);
            self.branches[p].children.remove(&key);
            b = p;
        }
    }
}

fn wants_scheduling(t: &Task) -> bool {
    t.status.state == TaskState::Pending && t.desired_state <= TaskState::Running
}

/// One scheduling pass: assigns at most `max_batch` pending tasks (the caller commits them as one
/// transaction and calls again while tasks were assigned) and explains why the others cannot be
/// placed.
pub fn schedule(state: &StateMachine, now_ms: u64, max_batch: usize) -> Schedule {
    let mut out = Schedule::default();
    if max_batch == 0 {
        return out;
    }

    // Nodes, in id order (index order = id order: the final tie-break).
    let mut nodes: Vec<NodeInfo<'_>> = state
        .list::<Node>()
        .map(|n| NodeInfo {
            node: n,
            available: n.status == NodeStatus::Ready && n.availability == Availability::Active,
            tasks: 0,
            cpu: 0,
            memory: 0,
            ports: Vec::new(),
        })
        .collect();
    let index: FxHashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.id.as_str(), i))
        .collect();

    // One pass over all tasks: the pending ones (pinned, or grouped by service and spec version)
    // and what already occupies each node.
    let mut pinned: Vec<&Task> = Vec::new();
    let mut group_of: FxHashMap<(&str, u64), usize> = FxHashMap::default();
    let mut groups: Vec<((&str, u64), Vec<&Task>)> = Vec::new();
    let mut occupants: Vec<(&str, usize)> = Vec::new();
    for t in state.list::<Task>() {
        if wants_scheduling(t) {
            if !t.node_id.is_empty() {
                pinned.push(t);
                continue;
            }
            let key = (t.service_id.as_str(), t.spec_version);
            let g = match groups.last() {
                Some((k, _)) if *k == key => groups.len() - 1,
                _ => *group_of.entry(key).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                }),
            };
            groups[g].1.push(t);
            continue;
        }
        if !occupies_node(t) {
            continue;
        }
        let Some(&i) = index.get(t.node_id.as_str()) else {
            continue;
        };
        let n = &mut nodes[i];
        n.tasks += 1;
        n.cpu = n.cpu.saturating_add(t.spec.resources.reserve_nano_cpus);
        n.memory = n.memory.saturating_add(t.spec.resources.reserve_memory);
        n.ports.extend(
            t.ports
                .iter()
                .filter(|p| p.published != 0)
                .map(|p| (p.published, proto(&p.protocol))),
        );
        occupants.push((t.service_id.as_str(), i));
    }
    if pinned.is_empty() && groups.is_empty() {
        return out;
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));

    // Per-node task counts of the services that have pending tasks.
    let mut per_service: FxHashMap<&str, Vec<u64>> = FxHashMap::default();
    for service in pinned
        .iter()
        .map(|t| t.service_id.as_str())
        .chain(groups.iter().map(|(k, _)| k.0))
    {
        per_service
            .entry(service)
            .or_insert_with(|| vec![0; nodes.len()]);
    }
    for (service, i) in occupants {
        if let Some(counts) = per_service.get_mut(service) {
            counts[i] += 1;
        }
    }

    let mut specs: FxHashMap<(&str, u64), GroupSpec<'_>> = FxHashMap::default();
    let assign = |t: &Task, node: &Node| {
        let mut t = t.clone();
        t.node_id = node.id.clone();
        t.status.state = TaskState::Assigned;
        t.status.timestamp_ms = now_ms;
        t.status.message = ASSIGNED_MESSAGE.into();
        t.status.err.clear();
        t
    };
    fn unschedulable(t: &Task, err: String, out: &mut Schedule) {
        if t.status.err != err {
            let mut t = t.clone();
            t.status.err = err;
            out.unschedulable.push(t);
        }
    }

    // Pinned tasks first: they have no choice of node.
    for t in pinned {
        if out.assigned.len() >= max_batch {
            return out;
        }
        let spec = specs
            .entry((t.service_id.as_str(), t.spec_version))
            .or_insert_with(|| GroupSpec::new(t));
        let Some(&i) = index.get(t.node_id.as_str()) else {
            let err = format!(
                "no suitable node (node {} is not in the cluster)",
                t.node_id
            );
            unschedulable(t, err, &mut out);
            continue;
        };
        let counts = per_service
            .get_mut(t.service_id.as_str())
            .expect("counts exist for every service with pending tasks");
        let verdict = if spec.constraints.is_err() {
            Err(None)
        } else {
            check(spec, &nodes[i], counts[i]).map_err(Some)
        };
        match verdict {
            Ok(()) => {
                nodes[i].add(spec);
                counts[i] += 1;
                out.assigned.push(assign(t, nodes[i].node));
            }
            Err(reason) => {
                let rejects = reason.into_iter().map(|r| (r, 1)).collect();
                unschedulable(t, explain(spec, &rejects), &mut out);
            }
        }
    }

    // Then each group: filters once per node, then placements from the tree.
    for ((service_id, version), tasks) in groups {
        if out.assigned.len() >= max_batch {
            return out;
        }
        let spec = specs
            .entry((service_id, version))
            .or_insert_with(|| GroupSpec::new(tasks[0]));
        let counts = per_service
            .get_mut(service_id)
            .expect("counts exist for every service with pending tasks");
        debug_assert_eq!(spec.service_id, service_id);
        let mut rejects: BTreeMap<Reject, u64> = BTreeMap::new();
        let mut tree = Tree::new(spec.preferences.len());
        let mut path: Vec<Option<&str>> = Vec::with_capacity(spec.preferences.len());
        if spec.constraints.is_ok() {
            for (i, n) in nodes.iter().enumerate() {
                match check(spec, n, counts[i]) {
                    Ok(()) => {
                        path.clear();
                        path.extend(spec.preferences.iter().map(|p| p.value(n.node)));
                        tree.insert(&path, counts[i], n.tasks, i);
                    }
                    Err(r) => *rejects.entry(r).or_default() += 1,
                }
            }
            tree.seal();
        }
        let mut tasks = tasks;
        // Stable: tasks of equal slot stay in id order.
        tasks.sort_by_key(|t| t.slot);
        for t in tasks {
            if out.assigned.len() >= max_batch {
                return out;
            }
            let Some((i, leaf)) = tree.pop() else {
                unschedulable(t, explain(spec, &rejects), &mut out);
                continue;
            };
            nodes[i].add(spec);
            counts[i] += 1;
            tree.count_task(leaf);
            out.assigned.push(assign(t, nodes[i].node));
            match check(spec, &nodes[i], counts[i]) {
                Ok(()) => tree.push(leaf, counts[i], nodes[i].tasks, i),
                Err(r) => {
                    *rejects.entry(r).or_default() += 1;
                    tree.prune(leaf);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rswarm_store::{
        Availability, NodeRole, NodeStatus, PortConfig, ServiceMode, Task, TaskState, Txn,
    };

    use super::*;
    use crate::testutil::World;

    fn replicated(n: u64) -> ServiceMode {
        ServiceMode::Replicated { replicas: n }
    }

    fn per_node(tasks: &[Task]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in tasks {
            *m.entry(t.node_id.clone()).or_default() += 1;
        }
        m
    }

    fn pending(w: &mut World, service: &str, n: u64) {
        for slot in 1..=n {
            w.add_task(service, slot, "", TaskState::Pending);
        }
    }

    #[test]
    fn spreads_six_replicas_two_per_node_and_sets_the_status() {
        let mut w = World::new();
        for id in ["a", "b", "c"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", replicated(6), |_| {});
        pending(&mut w, "s", 6);
        w.update_task("t0004", |t| t.status.err = "old error".into());
        let s = schedule(&w.sm, 42, 100);
        assert!(s.unschedulable.is_empty());
        assert_eq!(s.assigned.len(), 6);
        let counts: Vec<usize> = per_node(&s.assigned).into_values().collect();
        assert_eq!(counts, vec![2, 2, 2]);
        for t in &s.assigned {
            let before = w.task(&t.id);
            assert_eq!(t.meta, before.meta, "meta untouched");
            assert_eq!(t.status.state, TaskState::Assigned);
            assert_eq!(t.status.timestamp_ms, 42);
            assert_eq!(t.status.message, ASSIGNED_MESSAGE);
            assert!(t.status.err.is_empty());
        }
        // Deterministic: slot 1 goes to the first node by id.
        assert_eq!(s.assigned[0].slot, 1);
        assert_eq!(s.assigned[0].node_id, "a");
    }

    #[test]
    fn counts_existing_tasks_and_skips_non_pending_ones() {
        let mut w = World::new();
        for id in ["a", "b"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", replicated(4), |_| {});
        w.add_service("other", replicated(3), |_| {});
        // a already runs two tasks of s; b runs three tasks of another service.
        w.add_task("s", 1, "a", TaskState::Running);
        w.add_task("s", 2, "a", TaskState::Assigned);
        for slot in 1..=3 {
            w.add_task("other", slot, "b", TaskState::Running);
        }
        // Stopped or stopping tasks do not count.
        let stopped = w.add_task("s", 9, "a", TaskState::Failed);
        let stopping = w.add_task("s", 8, "a", TaskState::Running);
        w.update_task(&stopping, |t| t.desired_state = TaskState::Shutdown);
        w.add_task("s", 3, "", TaskState::Pending);
        w.add_task("s", 4, "", TaskState::Pending);
        let removed = w.add_task("s", 5, "", TaskState::Pending);
        w.update_task(&removed, |t| t.desired_state = TaskState::Remove);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(s.assigned.len(), 2);
        assert!(
            s.assigned.iter().all(|t| t.node_id == "b"),
            "{:?}",
            s.assigned
        );
        assert!(s
            .assigned
            .iter()
            .all(|t| t.id != stopped && t.id != removed));
    }

    #[test]
    fn ties_on_service_count_go_to_the_least_loaded_node() {
        let mut w = World::new();
        for id in ["a", "b"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", replicated(1), |_| {});
        w.add_service("other", replicated(1), |_| {});
        w.add_task("other", 1, "a", TaskState::Running);
        w.add_task("s", 1, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(s.assigned[0].node_id, "b");
    }

    #[test]
    fn constraints_pin_tasks_and_explain_refusals() {
        let mut w = World::new();
        w.add_node("a", |n| {
            n.labels.insert("zone".into(), "a".into());
        });
        w.add_node("b", |n| {
            n.labels.insert("zone".into(), "b".into());
        });
        w.add_node("c", |n| n.status = NodeStatus::Down);
        w.add_node("d", |n| n.availability = Availability::Drain);
        w.add_node("e", |n| {
            n.role = Some(NodeRole::Manager);
            n.labels.insert("zone".into(), "a".into());
        });
        w.add_service("s", replicated(3), |s| {
            s.spec.task.placement.constraints =
                vec!["node.labels.zone==a".into(), "node.role==worker".into()];
        });
        pending(&mut w, "s", 3);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(s.assigned.len(), 3);
        assert!(s.assigned.iter().all(|t| t.node_id == "a"));
        w.apply(s.assigned.into_iter().map(Txn::update).collect());

        w.update_node("a", |n| {
            n.labels.insert("zone".into(), "c".into());
        });
        w.add_task("s", 4, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        assert!(s.assigned.is_empty());
        assert_eq!(s.unschedulable.len(), 1);
        assert_eq!(
            s.unschedulable[0].status.err,
            "no suitable node (2 nodes not available for new tasks; \
             2 nodes not satisfying constraint node.labels.zone==a; \
             1 node not satisfying constraint node.role==worker)"
        );
        assert_eq!(s.unschedulable[0].status.state, TaskState::Pending);
        // Written back once; the next pass finds the same text and writes nothing.
        w.apply(vec![Txn::update(s.unschedulable[0].clone())]);
        let s = schedule(&w.sm, 2, 100);
        assert!(s.unschedulable.is_empty() && s.assigned.is_empty());
    }

    #[test]
    fn explains_an_empty_cluster_and_a_bad_constraint() {
        let mut w = World::new();
        w.add_service("s", replicated(1), |_| {});
        w.add_task("s", 1, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(
            s.unschedulable[0].status.err,
            "no suitable node (no nodes in the cluster)"
        );
        w.add_node("a", |_| {});
        w.add_service("bad", replicated(1), |s| {
            s.spec.task.placement.constraints = vec!["zone=a".into()];
        });
        w.add_task("bad", 1, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        let bad = s
            .unschedulable
            .iter()
            .find(|t| t.service_id == "bad")
            .unwrap();
        assert!(
            bad.status.err.contains("invalid placement constraint")
                && bad.status.err.contains("zone=a"),
            "{}",
            bad.status.err
        );
    }

    #[test]
    fn resources_limit_placement_and_unknown_capacity_takes_only_zero_reservations() {
        let mut w = World::new();
        w.add_node("a", |n| n.memory_bytes = 1 << 30);
        w.add_node("b", |n| n.memory_bytes = 0);
        w.add_node("c", |n| n.nano_cpus = 1_000_000_000);
        w.add_service("s", replicated(5), |s| {
            s.spec.task.resources.reserve_memory = 400 << 20;
            s.spec.task.resources.reserve_nano_cpus = 500_000_000;
        });
        pending(&mut w, "s", 5);
        let s = schedule(&w.sm, 1, 100);
        // a: 2 × 400 MiB fit in 1 GiB; b: unknown memory; c: 2 × 0.5 CPU fit in 1 CPU.
        assert_eq!(
            per_node(&s.assigned),
            BTreeMap::from([("a".into(), 2), ("c".into(), 2)])
        );
        assert_eq!(s.unschedulable.len(), 1);
        assert_eq!(
            s.unschedulable[0].status.err,
            "no suitable node (1 node has insufficient CPU; 2 nodes have insufficient memory)"
        );
        // A service without reservations still fits on b.
        w.add_service("free", replicated(1), |_| {});
        w.add_task("free", 1, "", TaskState::Pending);
        w.update_node("a", |n| n.availability = Availability::Pause);
        w.update_node("c", |n| n.availability = Availability::Pause);
        let s = schedule(&w.sm, 1, 100);
        let free = s.assigned.iter().find(|t| t.service_id == "free").unwrap();
        assert_eq!(free.node_id, "b");
    }

    #[test]
    fn host_ports_conflict_with_running_tasks_and_this_runs_assignments() {
        let mut w = World::new();
        for id in ["a", "b", "c"] {
            w.add_node(id, |_| {});
        }
        let port = |published, protocol: &str| PortConfig {
            target: 80,
            published,
            protocol: protocol.into(),
        };
        w.add_service("web", replicated(3), |s| {
            s.spec.ports = vec![port(8080, "tcp")]
        });
        w.add_service("dns", replicated(1), |s| {
            s.spec.ports = vec![port(8080, "udp")]
        });
        w.add_task("dns", 1, "a", TaskState::Running);
        w.add_service("old", replicated(1), |s| {
            s.spec.ports = vec![port(8080, "")]
        });
        w.add_task("old", 1, "b", TaskState::Running);
        pending(&mut w, "web", 3);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(
            per_node(&s.assigned),
            BTreeMap::from([("a".into(), 1), ("c".into(), 1)])
        );
        assert_eq!(
            s.unschedulable[0].status.err,
            "no suitable node (3 nodes have host port 8080/tcp already in use)"
        );
    }

    #[test]
    fn max_replicas_per_node() {
        let mut w = World::new();
        for id in ["a", "b"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", replicated(5), |s| {
            s.spec.task.placement.max_replicas_per_node = 2
        });
        pending(&mut w, "s", 5);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(
            per_node(&s.assigned),
            BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
        );
        assert_eq!(
            s.unschedulable[0].status.err,
            "no suitable node (2 nodes already have the maximum of 2 tasks of this service)"
        );
    }

    #[test]
    fn platforms_normalise_architectures() {
        let mut w = World::new();
        w.add_node("a", |n| n.arch = "aarch64".into());
        w.add_node("b", |n| n.arch = "x86_64".into());
        w.add_node("c", |n| n.os = "windows".into());
        w.add_service("s", replicated(2), |s| {
            s.spec.task.placement.platforms = vec!["linux/arm64".into()];
        });
        w.add_service("x", replicated(2), |s| {
            s.spec.task.placement.platforms = vec!["linux/amd64".into()];
        });
        pending(&mut w, "s", 2);
        w.add_task("x", 1, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        let on = |svc: &str| -> Vec<&str> {
            s.assigned
                .iter()
                .filter(|t| t.service_id == svc)
                .map(|t| t.node_id.as_str())
                .collect()
        };
        assert_eq!(on("s"), vec!["a", "a"]);
        assert_eq!(on("x"), vec!["b"]);
        w.add_service("mips", replicated(1), |s| {
            s.spec.task.placement.platforms = vec!["linux/mips".into()];
        });
        w.add_task("mips", 1, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        let t = s
            .unschedulable
            .iter()
            .find(|t| t.service_id == "mips")
            .unwrap();
        assert_eq!(
            t.status.err,
            "no suitable node (3 nodes not matching platform linux/mips)"
        );
    }

    #[test]
    fn spread_preference_balances_label_values_including_unlabelled_nodes() {
        let mut w = World::new();
        // zone a: 3 nodes, zone b: 1 node, no zone: 1 node.
        for (id, zone) in [
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("a3", Some("a")),
            ("b1", Some("b")),
            ("n1", None),
        ] {
            w.add_node(id, |n| {
                if let Some(z) = zone {
                    n.labels.insert("zone".into(), z.into());
                }
            });
        }
        w.add_service("s", replicated(6), |s| {
            s.spec.task.placement.preferences = vec!["spread=node.labels.zone".into()];
        });
        pending(&mut w, "s", 6);
        let s = schedule(&w.sm, 1, 100);
        let mut by_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &s.assigned {
            let z = match t.node_id.as_str() {
                "b1" => "b",
                "n1" => "none",
                _ => "a",
            };
            *by_zone.entry(z).or_default() += 1;
        }
        assert_eq!(by_zone, BTreeMap::from([("a", 2), ("b", 2), ("none", 2)]));
        // Inside zone a, the two tasks went to different nodes.
        let a_nodes: BTreeSet<&str> = s
            .assigned
            .iter()
            .map(|t| t.node_id.as_str())
            .filter(|n| n.starts_with('a'))
            .collect();
        assert_eq!(a_nodes.len(), 2);
    }

    #[test]
    fn spread_counts_existing_tasks_per_value() {
        let mut w = World::new();
        for (id, zone) in [("a1", "a"), ("b1", "b")] {
            w.add_node(id, |n| {
                n.labels.insert("zone".into(), zone.into());
            });
        }
        w.add_service("s", replicated(4), |s| {
            s.spec.task.placement.preferences = vec!["spread=node.labels.zone".into()];
        });
        w.add_task("s", 1, "a1", TaskState::Running);
        w.add_task("s", 2, "a1", TaskState::Running);
        w.add_task("s", 3, "", TaskState::Pending);
        w.add_task("s", 4, "", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        assert!(s.assigned.iter().all(|t| t.node_id == "b1"));
    }

    #[test]
    fn pinned_tasks_are_only_checked_against_their_node() {
        let mut w = World::new();
        w.add_node("a", |_| {});
        w.add_node("b", |n| n.status = NodeStatus::Down);
        w.add_node("c", |n| {
            n.labels.insert("x".into(), "1".into());
        });
        w.add_service("g", ServiceMode::Global, |s| {
            s.spec.task.placement.constraints = vec!["node.labels.x!=1".into()];
        });
        let ta = w.add_task("g", 0, "a", TaskState::Pending);
        let tb = w.add_task("g", 0, "b", TaskState::Pending);
        let tc = w.add_task("g", 0, "c", TaskState::Pending);
        let tz = w.add_task("g", 0, "zz", TaskState::Pending);
        let s = schedule(&w.sm, 1, 100);
        assert_eq!(s.assigned.len(), 1);
        assert_eq!(
            (s.assigned[0].id.as_str(), s.assigned[0].node_id.as_str()),
            (ta.as_str(), "a")
        );
        let err = |id: &str| {
            s.unschedulable
                .iter()
                .find(|t| t.id == id)
                .unwrap()
                .status
                .err
                .clone()
        };
        assert_eq!(
            err(&tb),
            "no suitable node (1 node not available for new tasks)"
        );
        assert_eq!(
            err(&tc),
            "no suitable node (1 node not satisfying constraint node.labels.x!=1)"
        );
        assert_eq!(err(&tz), "no suitable node (node zz is not in the cluster)");
    }

    #[test]
    fn max_batch_limits_assignments() {
        let mut w = World::new();
        for id in ["a", "b"] {
            w.add_node(id, |_| {});
        }
        w.add_service("s", replicated(5), |_| {});
        pending(&mut w, "s", 5);
        let s = schedule(&w.sm, 1, 2);
        assert_eq!(s.assigned.len(), 2);
        w.apply(s.assigned.into_iter().map(Txn::update).collect());
        let s = schedule(&w.sm, 1, 2);
        assert_eq!(s.assigned.len(), 2);
        w.apply(s.assigned.into_iter().map(Txn::update).collect());
        let s = schedule(&w.sm, 1, 2);
        assert_eq!(s.assigned.len(), 1);
        w.apply(s.assigned.into_iter().map(Txn::update).collect());
        let counts: Vec<usize> = per_node(&w.tasks("s")).into_values().collect();
        assert_eq!(counts, vec![3, 2]);
        assert!(schedule(&w.sm, 1, 2).assigned.is_empty());
    }

    #[test]
    fn places_5000_tasks_on_1000_nodes_evenly() {
        let mut w = World::new();
        let mut ops = Vec::new();
        for i in 0..1000 {
            ops.push(Txn::create(rswarm_store::Node {
                id: format!("node-{i:04}"),
                status: NodeStatus::Ready,
                nano_cpus: 8_000_000_000,
                memory_bytes: 16 << 30,
                ..rswarm_store::Node::default()
            }));
        }
        w.apply(ops);
        w.add_service("s", replicated(5000), |s| {
            s.spec.task.resources.reserve_memory = 64 << 20;
        });
        let service = w.service("s");
        let mut ops = Vec::new();
        for slot in 1..=5000 {
            ops.push(Txn::create(crate::new_task(
                &service,
                crate::NewTask {
                    id: format!("task-{slot:05}"),
                    slot,
                    node_id: "",
                    attempt: 0,
                    desired_state: TaskState::Running,
                },
                1,
            )));
        }
        w.apply(ops);
        let s = schedule(&w.sm, 2, usize::MAX);
        assert_eq!(s.assigned.len(), 5000);
        assert!(s.unschedulable.is_empty());
        let counts = per_node(&s.assigned);
        assert_eq!(counts.len(), 1000);
        assert!(counts.values().all(|&c| c == 5), "uneven spread");
    }
}
