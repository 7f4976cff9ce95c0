//! The task reaper: deletes tasks nobody needs any more.
//!
//! 1. **History**: in each slot (replicated: service + slot number; global: service + node), the
//!    tasks not marked for removal are ordered from most to least recent (creation time, then
//!    attempt). Beyond the `keep_per_slot` most recent, a task is deleted when it was stopped on
//!    purpose (`desired_state` `Shutdown`) and its status is terminal. The most recent task of a
//!    slot is always kept, whatever `keep_per_slot` is: it is what tells the orchestrator that a
//!    refused restart left the slot empty on purpose.
//! 2. **Removed tasks**: a task with desired state `Remove` is deleted once its status is terminal,
//!    or when it was never assigned (no node), or when its node is down or gone (nobody will ever
//!    report it stopped; a node that comes back stops containers of tasks it no longer has).

use std::collections::BTreeMap;

use rswarm_store::{Node, NodeStatus, Op, StateMachine, Task, TaskState, Txn};

use crate::task::recency;

/// Swarm's default task history retention: 5 tasks per slot.
pub const DEFAULT_KEEP_PER_SLOT: usize = 5;

/// One reaper pass: the deletions to commit.
pub fn reap(state: &StateMachine, keep_per_slot: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut slots: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in state.list::<Task>() {
        if t.desired_state >= TaskState::Remove {
            let node_lost = t.node_id.is_empty()
                || state
                    .get::<Node>(&t.node_id)
                    .is_none_or(|n| n.status == NodeStatus::Down);
            if t.status.state.is_terminal() || node_lost {
                ops.push(Txn::delete(t));
            }
            continue;
        }
        let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
        slots
            .entry((t.service_id.as_str(), t.slot, node))
            .or_default()
            .push(t);
    }
    for mut tasks in slots.into_values() {
        if tasks.len() <= keep_per_slot {
            continue;
        }
        tasks.sort_by(|a, b| recency(b).cmp(&recency(a)));
        for t in tasks.into_iter().skip(keep_per_slot.max(1)) {
            if t.desired_state >= TaskState::Shutdown && t.status.state.is_terminal() {
                ops.push(Txn::delete(t));
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use rswarm_store::{Kind, NodeStatus, Op, ServiceMode, TaskState};

    use super::*;
    use crate::testutil::World;

    fn deleted(ops: &[Op]) -> Vec<String> {
        let mut ids: Vec<String> = ops
            .iter()
            .map(|op| match op {
                Op::Delete { kind, id, version } => {
                    assert_eq!(*kind, Kind::Task);
                    assert!(version.is_some());
                    id.clone()
                }
                other => panic!("unexpected op {other:?}"),
            })
            .collect();
        ids.sort();
        ids
    }

    /// A stopped task of `slot` created at the world's current time.
    fn history(w: &mut World, service: &str, slot: u64, node: &str) -> String {
        w.now += 1_000;
        let id = w.add_task(service, slot, node, TaskState::Failed);
        w.update_task(&id, |t| t.desired_state = TaskState::Shutdown);
        id
    }

    #[test]
    fn keeps_the_five_most_recent_tasks_per_slot() {
        let mut w = World::new();
        w.add_node("a", |_| {});
        w.add_service("s", ServiceMode::Replicated { replicas: 2 }, |_| {});
        let old: Vec<String> = (0..6).map(|_| history(&mut w, "s", 1, "a")).collect();
        w.now += 1_000;
        let running = w.add_task("s", 1, "a", TaskState::Running);
        // Slot 2: only 3 tasks, nothing to do.
        for _ in 0..3 {
            history(&mut w, "s", 2, "a");
        }
        // A stopping task still running is never deleted.
        let stopping = w.add_task("s", 1, "a", TaskState::Running);
        w.update_task(&stopping, |t| t.desired_state = TaskState::Shutdown);
        let ops = reap(&w.sm, DEFAULT_KEEP_PER_SLOT);
        // Slot 1 holds 8 tasks: the 3 oldest stopped ones go.
        assert_eq!(deleted(&ops), old[..3].to_vec());
        w.apply(ops);
        assert!(reap(&w.sm, DEFAULT_KEEP_PER_SLOT).is_empty());
        assert_eq!(w.task(&running).status.state, TaskState::Running);
    }

    #[test]
    fn global_history_is_per_node_and_the_latest_task_is_always_kept() {
        let mut w = World::new();
        w.add_node("a", |_| {});
        w.add_node("b", |_| {});
        w.add_service("g", ServiceMode::Global, |_| {});
        let on_a: Vec<String> = (0..3).map(|_| history(&mut w, "g", 0, "a")).collect();
        let on_b: Vec<String> = (0..2).map(|_| history(&mut w, "g", 0, "b")).collect();
        let ops = reap(&w.sm, 0);
        let mut expect = vec![on_a[0].clone(), on_a[1].clone(), on_b[0].clone()];
        expect.sort();
        assert_eq!(deleted(&ops), expect);
    }

    #[test]
    fn deletes_removed_tasks_once_stopped_unassigned_or_on_lost_nodes() {
        let mut w = World::new();
        w.add_node("up", |_| {});
        w.add_node("down", |n| n.status = NodeStatus::Down);
        w.add_service("s", ServiceMode::Replicated { replicas: 1 }, |_| {});
        let removed = |w: &mut World, slot, node: &str, state| {
            let id = w.add_task("s", slot, node, state);
            w.update_task(&id, |t| t.desired_state = TaskState::Remove);
            id
        };
        let stopped = removed(&mut w, 1, "up", TaskState::Shutdown);
        let still_running = removed(&mut w, 2, "up", TaskState::Running);
        let unassigned = removed(&mut w, 3, "", TaskState::Pending);
        let on_down = removed(&mut w, 4, "down", TaskState::Running);
        let on_gone = removed(&mut w, 5, "gone", TaskState::Running);
        let ops = reap(&w.sm, DEFAULT_KEEP_PER_SLOT);
        let mut expect = vec![stopped, unassigned, on_down, on_gone];
        expect.sort();
        assert_eq!(deleted(&ops), expect);
        assert!(!deleted(&ops).contains(&still_running));
    }
}
