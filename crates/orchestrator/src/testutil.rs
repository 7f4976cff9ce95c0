//! A small in-memory cluster for the unit tests.

use rswarm_store::{
    Availability, Node, NodeStatus, Op, Service, ServiceMode, ServiceSpec, StateMachine, Task,
    TaskSpec, TaskState, Txn,
};

use crate::task::{new_task, NewTask};

pub(crate) struct World {
    pub sm: StateMachine,
    index: u64,
    /// Timestamp of the next transaction (and the `now_ms` tests pass).
    pub now: u64,
    next_id: u64,
}

impl World {
    pub fn new() -> Self {
        World {
            sm: StateMachine::new(),
            index: 0,
            now: 1_000_000,
            next_id: 0,
        }
    }

    pub fn apply(&mut self, ops: Vec<Op>) {
        self.index += 1;
        let txn = Txn {
            timestamp_ms: self.now,
            ops,
        };
        self.sm
            .apply(self.index, &txn)
            .expect("transaction applies");
    }

    /// A generator of ids `t1`, `t2`, … (shared by all calls of this world).
    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("t{:04}", self.next_id)
    }

    pub fn add_node(&mut self, id: &str, f: impl FnOnce(&mut Node)) {
        let mut n = Node {
            id: id.into(),
            hostname: format!("host-{id}"),
            os: "linux".into(),
            arch: "x86_64".into(),
            status: NodeStatus::Ready,
            availability: Availability::Active,
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            ..Node::default()
        };
        f(&mut n);
        self.apply(vec![Txn::create(n)]);
    }

    pub fn update_node(&mut self, id: &str, f: impl FnOnce(&mut Node)) {
        let mut n = self.sm.get::<Node>(id).expect("node exists").clone();
        f(&mut n);
        self.apply(vec![Txn::update(n)]);
    }

    pub fn remove_node(&mut self, id: &str) {
        let n = self.sm.get::<Node>(id).expect("node exists").clone();
        self.apply(vec![Txn::delete(&n)]);
    }

    pub fn add_service(&mut self, id: &str, mode: ServiceMode, f: impl FnOnce(&mut Service)) {
        let mut s = Service {
            id: id.into(),
            spec: ServiceSpec {
                name: format!("svc-{id}"),
                task: TaskSpec {
                    image: "busybox".into(),
                    ..TaskSpec::default()
                },
                mode,
                ..ServiceSpec::default()
            },
            spec_version: 1,
            ..Service::default()
        };
        f(&mut s);
        self.apply(vec![Txn::create(s)]);
    }

    pub fn update_service(&mut self, id: &str, f: impl FnOnce(&mut Service)) {
        let mut s = self.sm.get::<Service>(id).expect("service exists").clone();
        f(&mut s);
        self.apply(vec![Txn::update(s)]);
    }

    pub fn service(&self, id: &str) -> Service {
        self.sm.get::<Service>(id).expect("service exists").clone()
    }

    /// Creates a task of `service` in `slot` on `node` (empty: unassigned) in `state`.
    pub fn add_task(&mut self, service: &str, slot: u64, node: &str, state: TaskState) -> String {
        let s = self.service(service);
        let id = self.id();
        let mut t = new_task(
            &s,
            NewTask {
                id: id.clone(),
                slot,
                node_id: node,
                attempt: 0,
                desired_state: TaskState::Running,
            },
            self.now,
        );
        t.status.state = state;
        self.apply(vec![Txn::create(t)]);
        id
    }

    pub fn update_task(&mut self, id: &str, f: impl FnOnce(&mut Task)) {
        let mut t = self.task(id);
        f(&mut t);
        self.apply(vec![Txn::update(t)]);
    }

    /// Sets a task's observed state, as an agent would.
    pub fn set_state(&mut self, id: &str, state: TaskState) {
        let now = self.now;
        self.update_task(id, |t| {
            t.status.state = state;
            t.status.timestamp_ms = now;
            if state == TaskState::Failed {
                t.status.exit_code = Some(1);
            }
            if state == TaskState::Complete {
                t.status.exit_code = Some(0);
            }
        });
    }

    pub fn task(&self, id: &str) -> Task {
        self.sm.get::<Task>(id).expect("task exists").clone()
    }

    pub fn tasks(&self, service: &str) -> Vec<Task> {
        self.sm
            .list::<Task>()
            .filter(|t| t.service_id == service)
            .cloned()
            .collect()
    }

    pub fn live(&self, service: &str) -> Vec<Task> {
        self.tasks(service)
            .into_iter()
            .filter(crate::is_live)
            .collect()
    }

    /// Plays the agents: every live task that is assigned moves to `Running`; every task whose
    /// desired state is `Shutdown` or beyond and that still runs moves to `Shutdown`.
    pub fn agents_converge(&mut self) -> bool {
        let now = self.now;
        let mut ops = Vec::new();
        for t in self.sm.list::<Task>() {
            let mut t = t.clone();
            if t.desired_state == TaskState::Running
                && t.status.state >= TaskState::Assigned
                && t.status.state < TaskState::Running
            {
                t.status.state = TaskState::Running;
            } else if t.desired_state >= TaskState::Shutdown
                && !t.status.state.is_terminal()
                && !t.node_id.is_empty()
            {
                t.status.state = TaskState::Shutdown;
            } else {
                continue;
            }
            t.status.timestamp_ms = now;
            ops.push(Txn::update(t));
        }
        let moved = !ops.is_empty();
        if moved {
            self.apply(ops);
        }
        moved
    }

    /// Runs the scheduler and commits its result.
    pub fn schedule(&mut self) -> crate::Schedule {
        let s = crate::schedule(&self.sm, self.now, usize::MAX);
        let ops: Vec<Op> = s
            .assigned
            .iter()
            .chain(&s.unschedulable)
            .cloned()
            .map(Txn::update)
            .collect();
        if !ops.is_empty() {
            self.apply(ops);
        }
        s
    }

    /// Runs reconcile and commits its plan.
    pub fn reconcile(&mut self) -> crate::Plan {
        let mut ids = self.next_id;
        let plan = crate::reconcile(&self.sm, self.now, &mut || {
            ids += 1;
            format!("t{ids:04}")
        });
        self.next_id = ids;
        if !plan.ops.is_empty() {
            self.apply(plan.ops.clone());
        }
        plan
    }

    /// Runs the update supervisor and commits its plan.
    pub fn plan_updates(&mut self) -> crate::Plan {
        let mut ids = self.next_id;
        let plan = crate::plan_updates(&self.sm, self.now, &mut || {
            ids += 1;
            format!("t{ids:04}")
        });
        self.next_id = ids;
        if !plan.ops.is_empty() {
            self.apply(plan.ops.clone());
        }
        plan
    }
}
