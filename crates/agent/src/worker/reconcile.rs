//! What to do with an assignment message, given the task containers on the node and the tasks the
//! worker already drives. Pure: the worker applies the actions.

use std::collections::{BTreeMap, HashSet};

use rswarm_api::types::v1::Task;

/// A container on the node that carries a task label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentContainer {
    pub id: String,
    pub task_id: String,
    pub running: bool,
    /// Unix seconds.
    pub created: i64,
}

/// One step for the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A task the worker already drives: hand its runner the new version.
    Update(Task),
    /// A task new to the worker: start a runner, adopting `container` if the node has one.
    Run {
        task: Task,
        container: Option<String>,
    },
    /// A task no longer assigned: its runner stops and removes its container, then ends.
    Forget(String),
    /// A task container that belongs to no assigned task and no runner: stop and remove it.
    RemoveContainer(String),
}

/// The newest container of each task (a running one first), and the others.
fn by_task(present: &[PresentContainer]) -> (BTreeMap<&str, &PresentContainer>, Vec<&str>) {
    let mut best: BTreeMap<&str, &PresentContainer> = BTreeMap::new();
    let mut extra = Vec::new();
    for c in present {
        match best.get(c.task_id.as_str()) {
            None => {
                best.insert(&c.task_id, c);
            }
            Some(b) => {
                let better = (c.running, c.created, &c.id) > (b.running, b.created, &b.id);
                if better {
                    extra.push(b.id.as_str());
                    best.insert(&c.task_id, c);
                } else {
                    extra.push(c.id.as_str());
                }
            }
        }
    }
    (best, extra)
}

/// Later versions of a task in one message win.
fn dedup(tasks: Vec<Task>) -> Vec<Task> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<Task> = Vec::new();
    for t in tasks {
        if t.id.is_empty() {
            continue;
        }
        match seen.get(&t.id) {
            Some(&i) => out[i] = t,
            None => {
                seen.insert(t.id.clone(), out.len());
                out.push(t);
            }
        }
    }
    out
}

fn place(
    tasks: Vec<Task>,
    driven: &HashSet<String>,
    best: &BTreeMap<&str, &PresentContainer>,
    extra: &[&str],
    present: &[PresentContainer],
    actions: &mut Vec<Action>,
) {
    for task in tasks {
        if driven.contains(&task.id) {
            actions.push(Action::Update(task));
            continue;
        }
        let container = best.get(task.id.as_str()).map(|c| c.id.clone());
        // Duplicates of a task's container (an interrupted create, say) go.
        for c in present.iter().filter(|c| c.task_id == task.id) {
            if extra.contains(&c.id.as_str()) {
                actions.push(Action::RemoveContainer(c.id.clone()));
            }
        }
        actions.push(Action::Run { task, container });
    }
}

/// A full assignment set: every assigned task gets a runner; runners and containers of tasks not
/// in the set go.
pub fn reconcile_full(
    present: &[PresentContainer],
    driven: &HashSet<String>,
    tasks: Vec<Task>,
) -> Vec<Action> {
    let tasks = dedup(tasks);
    let assigned: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let (best, extra) = by_task(present);
    let mut actions = Vec::new();
    let mut forgotten: Vec<&String> = driven
        .iter()
        .filter(|id| !assigned.contains(id.as_str()))
        .collect();
    forgotten.sort();
    for id in forgotten {
        actions.push(Action::Forget(id.clone()));
    }
    for c in present {
        if !assigned.contains(c.task_id.as_str()) && !driven.contains(&c.task_id) {
            actions.push(Action::RemoveContainer(c.id.clone()));
        }
    }
    place(tasks, driven, &best, &extra, present, &mut actions);
    actions
}

/// An incremental message: changed or new tasks, and tasks no longer assigned.
pub fn reconcile_changes(
    present: &[PresentContainer],
    driven: &HashSet<String>,
    tasks: Vec<Task>,
    removed: &[String],
) -> Vec<Action> {
    let tasks = dedup(tasks);
    let (best, extra) = by_task(present);
    let mut actions = Vec::new();
    for id in removed {
        if tasks.iter().any(|t| &t.id == id) {
            continue;
        }
        if driven.contains(id) {
            actions.push(Action::Forget(id.clone()));
        } else {
            for c in present.iter().filter(|c| &c.task_id == id) {
                actions.push(Action::RemoveContainer(c.id.clone()));
            }
        }
    }
    place(tasks, driven, &best, &extra, present, &mut actions);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            desired_state: "running".into(),
            ..Default::default()
        }
    }

    fn c(id: &str, task: &str, running: bool, created: i64) -> PresentContainer {
        PresentContainer {
            id: id.into(),
            task_id: task.into(),
            running,
            created,
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn full_set_after_restart_adopts_and_cleans() {
        let present = vec![
            c("c1", "t1", true, 10),
            c("c2", "t2", false, 10),
            c("c3", "gone", true, 10),
        ];
        let actions = reconcile_full(
            &present,
            &set(&[]),
            vec![task("t1"), task("t2"), task("t3")],
        );
        assert_eq!(
            actions,
            vec![
                Action::RemoveContainer("c3".into()),
                Action::Run {
                    task: task("t1"),
                    container: Some("c1".into())
                },
                Action::Run {
                    task: task("t2"),
                    container: Some("c2".into())
                },
                Action::Run {
                    task: task("t3"),
                    container: None
                },
            ]
        );
    }

    #[test]
    fn full_set_updates_and_forgets_runners() {
        let present = vec![c("c1", "t1", true, 10), c("c2", "t2", true, 10)];
        let actions = reconcile_full(&present, &set(&["t1", "t2"]), vec![task("t1")]);
        assert_eq!(
            actions,
            vec![Action::Forget("t2".into()), Action::Update(task("t1"))]
        );
        // An empty set: everything goes.
        let actions = reconcile_full(&present, &set(&["t1"]), vec![]);
        assert_eq!(
            actions,
            vec![
                Action::Forget("t1".into()),
                Action::RemoveContainer("c2".into())
            ]
        );
    }

    #[test]
    fn duplicate_containers_keep_the_running_newest() {
        let present = vec![
            c("old", "t1", false, 5),
            c("live", "t1", true, 7),
            c("new", "t1", false, 9),
        ];
        let actions = reconcile_full(&present, &set(&[]), vec![task("t1")]);
        assert_eq!(
            actions,
            vec![
                Action::RemoveContainer("old".into()),
                Action::RemoveContainer("new".into()),
                Action::Run {
                    task: task("t1"),
                    container: Some("live".into())
                },
            ]
        );
    }

    #[test]
    fn changes() {
        let present = vec![c("c1", "t1", true, 10), c("c9", "t9", false, 10)];
        let mut t1 = task("t1");
        t1.desired_state = "shutdown".into();
        let actions = reconcile_changes(
            &present,
            &set(&["t1", "t2"]),
            vec![t1.clone(), task("t4"), task("t4")],
            &["t2".into(), "t9".into(), "t404".into()],
        );
        assert_eq!(
            actions,
            vec![
                Action::Forget("t2".into()),
                Action::RemoveContainer("c9".into()),
                Action::Update(t1),
                Action::Run {
                    task: task("t4"),
                    container: None
                },
            ]
        );
    }
}
