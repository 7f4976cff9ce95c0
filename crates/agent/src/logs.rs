//! The node's side of `rswarm service logs` (swarmkit's log publisher).
//!
//! Nodes never listen: for each session the agent keeps a `ListenSubscriptions` stream open to its
//! manager; each subscription names tasks of this node. The agent finds each task's container by
//! its `com.docker.swarm.task.id` label, reads its json-file log with the engine's reader, and
//! sends the lines back on one `PublishLogs` stream per subscription: an empty message first (the
//! node has started), then batches of lines, then `close` once everything was sent (never while
//! following). A subscription stops when the manager says it is closed, when the manager ends the
//! publish stream, or when the session ends.
//!
//! Bounded: the engine's reader buffers 256 lines per container, batches wait in a queue of
//! [`PUBLISH_QUEUE`], and gRPC flow control slows the readers down when the manager (or its
//! client) is slow.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use rswarm_api::dispatcher::v1::dispatcher_client::DispatcherClient;
use rswarm_api::dispatcher::v1::{
    ListenSubscriptionsRequest, LogSubscription, PublishLogsMessage, TaskLogLine,
};
use rswarm_runtime::logs::{read_logs, LogReadOptions, LogStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::engine::Engine;
use crate::worker::LABEL_TASK_ID;

/// Batches waiting to be sent on one publish stream.
const PUBLISH_QUEUE: usize = 4;
/// The most lines in one published batch.
const BATCH_LINES: usize = 256;
/// How long to wait before reopening a broken subscription stream.
const RETRY: Duration = Duration::from_secs(1);

/// A container of the node that belongs to a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskContainer {
    pub task_id: String,
    pub container_id: String,
    /// Creation time (seconds): the newest container of a task wins.
    pub created: i64,
}

/// The container to read for each wanted task (the newest, when a task has several), in the
/// order of `wanted`; tasks without a container on this node have no logs here.
pub fn containers_for(wanted: &[String], present: &[TaskContainer]) -> Vec<(String, String)> {
    wanted
        .iter()
        .filter_map(|task| {
            present
                .iter()
                .filter(|c| &c.task_id == task)
                .max_by_key(|c| c.created)
                .map(|c| (task.clone(), c.container_id.clone()))
        })
        .collect()
}

/// Parses a subscription's read options.
pub fn read_options(sub: &LogSubscription) -> Result<LogReadOptions, String> {
    let since = if sub.since.is_empty() {
        None
    } else {
        Some(
            time::OffsetDateTime::parse(&sub.since, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("invalid since {:?}: {e}", sub.since))?,
        )
    };
    Ok(LogReadOptions {
        follow: sub.follow,
        tail: sub
            .tail_set
            .then(|| usize::try_from(sub.tail).unwrap_or(usize::MAX)),
        since,
        // The time travels with each line; the client decides whether to show it.
        timestamps: false,
    })
}

/// Keeps the session's subscription stream open and serves its subscriptions until the future is
/// dropped (the session ended); then every subscription of the session stops.
pub async fn listen(client: DispatcherClient<Channel>, session_id: String, engine: Engine) {
    let session = CancellationToken::new();
    let _stop_all = session.clone().drop_guard();
    let mut subs: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let request = ListenSubscriptionsRequest {
            session_id: session_id.clone(),
        };
        match client.clone().listen_subscriptions(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(sub)) if sub.close => {
                            if let Some(c) = subs.remove(&sub.id) {
                                c.cancel();
                            }
                        }
                        Ok(Some(sub)) => {
                            subs.retain(|_, c| !c.is_cancelled());
                            let cancel = session.child_token();
                            subs.insert(sub.id.clone(), cancel.clone());
                            tokio::spawn(publish(client.clone(), engine.clone(), sub, cancel));
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == Code::NotFound => {
                            // The session is over; the session loop opens a new one.
                            return std::future::pending().await;
                        }
                        Err(s) => {
                            tracing::debug!(error = %s.message(), "the log subscription stream failed; reopening");
                            break;
                        }
                    }
                }
            }
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {
                if s.code() == Code::Unimplemented {
                    tracing::warn!(
                        "the manager has no log broker; `service logs` will not show this node"
                    );
                }
                return std::future::pending().await;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "cannot open the log subscription stream; retrying");
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn task_containers(engine: &Engine) -> Vec<TaskContainer> {
    engine
        .list(true)
        .into_iter()
        .filter_map(|r| {
            Some(TaskContainer {
                task_id: r.labels.get(LABEL_TASK_ID)?.clone(),
                container_id: r.id,
                created: r.created,
            })
        })
        .collect()
}

/// Serves one subscription until it is complete, cancelled, or the manager ends it.
async fn publish(
    mut client: DispatcherClient<Channel>,
    engine: Engine,
    sub: LogSubscription,
    cancel: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    let id = sub.id.clone();
    let produce = produce(engine, sub, tx);
    tokio::pin!(produce);
    let call = client.publish_logs(ReceiverStream::new(rx));
    tokio::pin!(call);
    let mut produced = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = &mut call => {
                if let Err(s) = r {
                    tracing::debug!(subscription = %id, error = %s.message(), "the manager refused this node's logs");
                }
                return;
            }
            () = &mut produce, if !produced => produced = true,
        }
    }
}

fn message(id: &str, lines: Vec<TaskLogLine>, close: bool) -> PublishLogsMessage {
    PublishLogsMessage {
        subscription_id: id.to_string(),
        lines,
        close,
    }
}

/// Reads the subscription's containers and queues the batches; returns once everything was
/// queued (without follow) or never (with follow: the manager or the session ends it).
async fn produce(engine: Engine, sub: LogSubscription, tx: mpsc::Sender<PublishLogsMessage>) {
    if tx.send(message(&sub.id, vec![], false)).await.is_err() {
        return;
    }
    let opts = match read_options(&sub) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(subscription = %sub.id, error = %e, "bad log subscription");
            let _ = tx.send(message(&sub.id, vec![], true)).await;
            return;
        }
    };
    let mut readers = Vec::new();
    for (task_id, container) in containers_for(&sub.task_ids, &task_containers(&engine)) {
        let running = engine
            .record(&container)
            .map(|r| r.is_running())
            .unwrap_or(false);
        let mut exit = engine.exit_watch(&container).ok();
        let stop = async move {
            if let (true, Some(exit)) = (running, exit.as_mut()) {
                let _ = exit.wait_for(Option::is_some).await;
            }
        };
        let path = engine.bundle(&container).join("json.log");
        let lines = read_logs(path, opts.clone(), stop).await;
        readers.push(
            lines
                .filter_map(move |item| {
                    let task_id = task_id.clone();
                    async move {
                        match item {
                            Ok(entry) => Some(TaskLogLine {
                                task_id,
                                stream: match entry.stream {
                                    LogStream::Stdout => 1,
                                    LogStream::Stderr => 2,
                                },
                                data: entry.line,
                                time: humantime::format_rfc3339_nanos(SystemTime::from(
                                    entry.time,
                                ))
                                .to_string(),
                            }),
                            Err(e) => {
                                tracing::warn!(task = %task_id, error = %e, "cannot read a task's log");
                                None
                            }
                        }
                    }
                })
                .boxed(),
        );
    }
    let mut batches = stream::select_all(readers).ready_chunks(BATCH_LINES);
    while let Some(lines) = batches.next().await {
        if tx.send(message(&sub.id, lines, false)).await.is_err() {
            return;
        }
    }
    if sub.follow {
        // Every followed container has exited; stay subscribed until the manager ends it.
        std::future::pending::<()>().await;
    }
    let _ = tx.send(message(&sub.id, vec![], true)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(task: &str, id: &str, created: i64) -> TaskContainer {
        TaskContainer {
            task_id: task.into(),
            container_id: id.into(),
            created,
        }
    }

    #[test]
    fn newest_container_per_wanted_task() {
        let present = [
            c("t1", "a", 1),
            c("t1", "b", 5),
            c("t2", "c", 2),
            c("x", "d", 9),
        ];
        let wanted = ["t2".to_string(), "t1".to_string(), "t3".to_string()];
        assert_eq!(
            containers_for(&wanted, &present),
            [
                ("t2".to_string(), "c".to_string()),
                ("t1".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn options() {
        let sub = LogSubscription {
            tail_set: true,
            tail: 3,
            follow: true,
            since: "2026-01-02T15:04:05Z".into(),
            ..LogSubscription::default()
        };
        let o = read_options(&sub).unwrap();
        assert_eq!(o.tail, Some(3));
        assert!(o.follow);
        assert!(o.since.is_some());
        assert_eq!(
            read_options(&LogSubscription::default()).unwrap().tail,
            None
        );
        let bad = LogSubscription {
            since: "yesterday".into(),
            ..LogSubscription::default()
        };
        assert!(read_options(&bad).is_err());
    }
}
