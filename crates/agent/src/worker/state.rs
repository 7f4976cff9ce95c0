//! Task states as the agent reports them, in swarmkit's order: a task's state only moves forward.

pub use rswarm_store::TaskState;

/// Parses the wire spelling; an empty or unknown string is `New` (proto3's default).
pub fn parse_state(s: &str) -> TaskState {
    TaskState::parse(s).unwrap_or(TaskState::New)
}

/// What the manager wants of a task, from its `desired_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desired {
    /// `ready`: prepare the container, do not start it.
    Ready,
    /// `running` (or anything below it): prepare and start.
    Running,
    /// `shutdown`, `complete`, `failed`…: stop the container, keep it.
    Shutdown,
    /// `remove` (or above): stop and remove the container.
    Remove,
}

impl Desired {
    pub fn from_wire(s: &str) -> Desired {
        match parse_state(s) {
            TaskState::Ready => Desired::Ready,
            s if s <= TaskState::Running => Desired::Running,
            s if s >= TaskState::Remove => Desired::Remove,
            _ => Desired::Shutdown,
        }
    }

    /// Whether the container should exist and run (or be ready to).
    pub fn wants_container(self) -> bool {
        matches!(self, Desired::Ready | Desired::Running)
    }
}

/// The highest state reported so far for one task: reports only ever move it forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    current: TaskState,
}

impl Progress {
    /// Starts at what the manager last recorded for the task.
    pub fn new(known: TaskState) -> Progress {
        Progress { current: known }
    }

    pub fn current(self) -> TaskState {
        self.current
    }

    /// Moves to `next` if it is ahead; returns whether it did (and so whether to report it).
    pub fn advance(&mut self, next: TaskState) -> bool {
        if next > self.current {
            self.current = next;
            true
        } else {
            false
        }
    }

    /// Like [`Progress::advance`], but also accepts the current state again (a re-report).
    pub fn advance_or_repeat(&mut self, next: TaskState) -> bool {
        if next >= self.current {
            self.current = next;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_spelling() {
        for w in TaskState::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for s in TaskState::ALL {
            assert_eq!(parse_state(s.as_str()), s);
        }
        assert_eq!(parse_state(""), TaskState::New);
        assert!(TaskState::Complete.is_terminal());
        assert!(TaskState::Rejected.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }

    #[test]
    fn desired() {
        assert_eq!(Desired::from_wire("running"), Desired::Running);
        assert_eq!(Desired::from_wire("ready"), Desired::Ready);
        assert_eq!(Desired::from_wire("shutdown"), Desired::Shutdown);
        assert_eq!(Desired::from_wire("complete"), Desired::Shutdown);
        assert_eq!(Desired::from_wire("remove"), Desired::Remove);
        assert_eq!(Desired::from_wire("orphaned"), Desired::Remove);
        assert!(Desired::Ready.wants_container());
        assert!(!Desired::Shutdown.wants_container());
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut p = Progress::new(TaskState::Assigned);
        assert!(p.advance(TaskState::Accepted));
        assert!(p.advance(TaskState::Running));
        assert!(!p.advance(TaskState::Starting));
        assert!(!p.advance(TaskState::Running));
        assert!(p.advance_or_repeat(TaskState::Running));
        assert!(!p.advance_or_repeat(TaskState::Ready));
        assert!(p.advance(TaskState::Failed));
        assert!(!p.advance(TaskState::Shutdown));
        assert_eq!(p.current(), TaskState::Failed);
    }
}
