//! The reporter: task states go to the manager in batches over the current session. It keeps the
//! latest state of every task so that a broken session loses nothing: the next session gets them
//! all again (the manager ignores stale ones).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use rswarm_api::dispatcher::v1::dispatcher_client::DispatcherClient;
use rswarm_api::dispatcher::v1::{TaskStatusUpdate, UpdateTaskStatusRequest};
use rswarm_api::types::v1::TaskStatus;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// At most one batch per interval; the first update after a quiet spell goes at once. Sends are
/// sequential and the manager batches reports from all nodes, so this only bounds the rate.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How long one `UpdateTaskStatus` may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed send, wait this long (or for a new session) before trying again.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// What runners tell the reporter.
#[derive(Debug)]
pub enum Report {
    /// A task's new state.
    Status { task_id: String, status: TaskStatus },
    /// The task is no longer assigned: drop it once its last state went out.
    Forget(String),
}

/// Where reports go: the current session.
#[derive(Clone, Debug)]
pub struct ReportTarget {
    pub client: DispatcherClient<Channel>,
    pub session_id: String,
}

/// The latest state per task, and which of them the manager has yet to get. Pure.
#[derive(Debug, Default)]
pub struct Outbox {
    latest: HashMap<String, TaskStatus>,
    pending: BTreeSet<String>,
    forget: HashSet<String>,
}

impl Outbox {
    pub fn apply(&mut self, report: Report) {
        match report {
            Report::Status { task_id, status } => {
                self.forget.remove(&task_id);
                self.pending.insert(task_id.clone());
                self.latest.insert(task_id, status);
            }
            Report::Forget(id) => {
                if self.pending.contains(&id) {
                    self.forget.insert(id);
                } else {
                    self.latest.remove(&id);
                }
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes every pending task's latest state.
    pub fn take_batch(&mut self) -> Vec<TaskStatusUpdate> {
        let ids = std::mem::take(&mut self.pending);
        let batch = ids
            .iter()
            .filter_map(|id| {
                self.latest.get(id).map(|s| TaskStatusUpdate {
                    task_id: id.clone(),
                    status: Some(s.clone()),
                })
            })
            .collect();
        for id in ids {
            if self.forget.remove(&id) {
                self.latest.remove(&id);
            }
        }
        batch
    }

    /// A batch did not reach the manager: its tasks are pending again (with whatever state is
    /// latest by now).
    pub fn requeue(&mut self, batch: &[TaskStatusUpdate]) {
        for u in batch {
            if let Some(s) = &u.status {
                if !self.latest.contains_key(&u.task_id) {
                    // Forgotten meanwhile: still tell the manager once.
                    self.latest.insert(u.task_id.clone(), s.clone());
                    self.forget.insert(u.task_id.clone());
                }
                self.pending.insert(u.task_id.clone());
            }
        }
    }

    /// A new session: everything known goes again.
    pub fn resend_all(&mut self) {
        self.pending.extend(self.latest.keys().cloned());
    }
}

/// Runs until `cancel` fires or every runner is gone.
pub async fn run(
    mut reports: mpsc::Receiver<Report>,
    mut target: watch::Receiver<Option<ReportTarget>>,
    cancel: CancellationToken,
) {
    let mut outbox = Outbox::default();
    let mut next_allowed = Instant::now();
    let mut session = String::new();
    loop {
        while let Ok(r) = reports.try_recv() {
            outbox.apply(r);
        }
        let current = target.borrow_and_update().clone();
        if let Some(t) = &current {
            if t.session_id != session {
                session = t.session_id.clone();
                outbox.resend_all();
                next_allowed = Instant::now();
            }
        }
        let ready = current.is_some() && outbox.has_pending();
        if let (true, Some(t)) = (ready && Instant::now() >= next_allowed, &current) {
            let batch = outbox.take_batch();
            let n = batch.len();
            let mut client = t.client.clone();
            let request = UpdateTaskStatusRequest {
                session_id: t.session_id.clone(),
                updates: batch.clone(),
            };
            let sent = tokio::select! {
                r = tokio::time::timeout(SEND_TIMEOUT, client.update_task_status(request)) => r,
                () = cancel.cancelled() => return,
            };
            next_allowed = Instant::now() + FLUSH_INTERVAL;
            match sent {
                Ok(Ok(_)) => tracing::debug!(updates = n, "task states reported"),
                Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    // Sending it again cannot help.
                    tracing::error!(error = %status.message(), updates = n, "the manager refused task states; dropped them");
                }
                Ok(Err(status)) => {
                    tracing::warn!(error = %status.message(), code = ?status.code(), "cannot report task states; will retry");
                    outbox.requeue(&batch);
                    next_allowed = Instant::now() + RETRY_DELAY;
                }
                Err(_) => {
                    tracing::warn!("reporting task states timed out; will retry");
                    outbox.requeue(&batch);
                    next_allowed = Instant::now() + RETRY_DELAY;
                }
            }
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = reports.recv() => match r {
                Some(r) => outbox.apply(r),
                None => return,
            },
            r = target.changed() => if r.is_err() {
                // The session side is gone: nothing can be reported any more.
                cancel.cancelled().await;
                return;
            },
            () = tokio::time::sleep_until(next_allowed), if ready => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: &str) -> TaskStatus {
        TaskStatus {
            state: state.into(),
            ..Default::default()
        }
    }

    fn status(id: &str, state: &str) -> Report {
        Report::Status {
            task_id: id.into(),
            status: st(state),
        }
    }

    fn states(batch: &[TaskStatusUpdate]) -> Vec<(String, String)> {
        batch
            .iter()
            .map(|u| (u.task_id.clone(), u.status.clone().unwrap().state))
            .collect()
    }

    #[test]
    fn batches_keep_only_the_latest_state() {
        let mut o = Outbox::default();
        o.apply(status("a", "accepted"));
        o.apply(status("a", "preparing"));
        o.apply(status("b", "running"));
        assert!(o.has_pending());
        let batch = o.take_batch();
        assert_eq!(
            states(&batch),
            vec![
                ("a".into(), "preparing".into()),
                ("b".into(), "running".into())
            ]
        );
        assert!(!o.has_pending());
        assert!(o.take_batch().is_empty());
    }

    #[test]
    fn failed_sends_and_new_sessions_resend() {
        let mut o = Outbox::default();
        o.apply(status("a", "ready"));
        let batch = o.take_batch();
        o.apply(status("a", "running"));
        o.requeue(&batch);
        assert_eq!(
            states(&o.take_batch()),
            vec![("a".into(), "running".into())]
        );
        o.apply(status("b", "failed"));
        let _ = o.take_batch();
        o.resend_all();
        assert_eq!(
            states(&o.take_batch()),
            vec![
                ("a".into(), "running".into()),
                ("b".into(), "failed".into())
            ]
        );
    }

    #[test]
    fn forgotten_tasks_go_after_their_last_state() {
        let mut o = Outbox::default();
        o.apply(status("a", "shutdown"));
        o.apply(Report::Forget("a".into()));
        assert_eq!(
            states(&o.take_batch()),
            vec![("a".into(), "shutdown".into())]
        );
        o.resend_all();
        assert!(!o.has_pending());

        o.apply(status("b", "running"));
        let _ = o.take_batch();
        o.apply(Report::Forget("b".into()));
        o.resend_all();
        assert!(!o.has_pending());
    }
}
