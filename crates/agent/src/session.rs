//! The dispatcher session: the agent's long-lived stream to a manager plus its heartbeats. While it
//! is up the node is Ready; when it breaks the agent reconnects with backoff, trying each known
//! manager in turn.
//!
//! While a session is up it also carries the node's work: the assignments stream feeds the
//! [`Worker`], the worker's reporter sends task states over the same session, and the log
//! publisher ([`crate::logs`]) answers the manager's log subscriptions. All end with the session
//! and start again with the next one.

use std::sync::Arc;
use std::time::Duration;

use rswarm_api::dispatcher::v1::dispatcher_client::DispatcherClient;
use rswarm_api::dispatcher::v1::{
    AssignmentsRequest, HeartbeatRequest, SessionMessage, SessionRequest,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::backoff::Backoff;
use crate::join::refused;
use crate::node::{NodeContext, SessionStatus};
use crate::worker::{ReportTarget, Worker, WorkerLink};
use crate::{AgentError, VERSION};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long the agent waits for the session's first message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before reopening an assignments stream that ended within a live session.
const ASSIGNMENTS_RETRY: Duration = Duration::from_millis(200);

/// Keeps a session open until `cancel` fires or the cluster removes the node, and runs `worker`
/// (the node's tasks) until `cancel` fires.
pub async fn run(ctx: Arc<NodeContext>, worker: Worker, cancel: CancellationToken) {
    let config = ctx.config();
    worker
        .engine()
        .set_cluster_networks(Arc::new(crate::netagent::SessionNetworks::new(ctx.clone())));
    let (net_agent, nets) = crate::netagent::channel(
        worker.engine().clone(),
        &config.advertise_addr,
        &ctx.networks,
    );
    let (link, driver) = worker.start(config.node_id, nets, ctx.networks.clone(), cancel.clone());
    tokio::join!(
        driver,
        net_agent.run(cancel.clone()),
        sessions(ctx, link, cancel)
    );
}

async fn sessions(ctx: Arc<NodeContext>, link: WorkerLink, cancel: CancellationToken) {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut attempt = 0usize;
    while !cancel.is_cancelled() {
        let managers = ctx.managers();
        let Some(addr) = managers.get(attempt % managers.len().max(1)).cloned() else {
            tracing::error!("no manager address known; join the node again");
            return;
        };
        attempt += 1;
        let result = one_session(&ctx, &link, &addr, &cancel, &mut backoff).await;
        link.target.send_replace(None);
        ctx.session.send_modify(|s| {
            s.connected = false;
            s.session_id.clear();
        });
        match result {
            Ok(()) if cancel.is_cancelled() => return,
            Ok(()) => {
                tracing::info!(manager = %addr, "session closed by the manager; reconnecting")
            }
            Err(AgentError::Removed) => {
                tracing::error!("{}", AgentError::Removed);
                ctx.session.send_modify(|s| s.removed = true);
                return;
            }
            Err(e) => tracing::warn!(manager = %addr, error = %e, "session failed; reconnecting"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn one_session(
    ctx: &NodeContext,
    link: &WorkerLink,
    addr: &str,
    cancel: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), AgentError> {
    let mut client = DispatcherClient::new(ctx.channel(addr)?);
    let config = ctx.config();
    let request = SessionRequest {
        hostname: config.hostname.clone(),
        advertise_addr: config.advertise_addr.clone(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        engine_version: VERSION.into(),
        nano_cpus: node_nano_cpus(),
        memory_bytes: node_memory_bytes(),
    };
    let open = async {
        let mut stream = client
            .session(request)
            .await
            .map_err(|s| refused(addr, s))?
            .into_inner();
        let first = stream
            .message()
            .await
            .map_err(|s| refused(addr, s))?
            .ok_or_else(|| AgentError::Refused {
                addr: addr.to_string(),
                message: "the session closed before it started".into(),
            })?;
        Ok::<_, AgentError>((stream, first))
    };
    let (mut stream, first) = tokio::select! {
        r = tokio::time::timeout(OPEN_TIMEOUT, open) => r.map_err(|_| AgentError::Timeout {
            addr: addr.to_string(),
            timeout: OPEN_TIMEOUT.into(),
        })??,
        () = cancel.cancelled() => return Ok(()),
    };
    backoff.reset();
    let session_id = first.session_id.clone();
    let mut period = apply(ctx, addr, &first);
    tracing::info!(manager = %addr, session = %session_id, "session established");
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    link.target.send_replace(Some(ReportTarget {
        client: client.clone(),
        session_id: session_id.clone(),
    }));
    let assignments = assignments(
        client.clone(),
        session_id.clone(),
        addr,
        link.assignments.clone(),
    );
    tokio::pin!(assignments);
    // Service logs: the manager's log subscriptions for this node, for this session.
    let logs = crate::logs::listen(client.clone(), session_id.clone(), link.engine.clone());
    tokio::pin!(logs);
    // Overlay networks: the node's network table, whole at every change.
    let networks = crate::netagent::follow(
        client.clone(),
        session_id.clone(),
        addr.to_string(),
        link.tables.clone(),
    );
    tokio::pin!(networks);
    // Addresses on attachable networks: the cluster gives back those no container here holds.
    let attachments = async {
        link.engine.sync_cluster_attachments().await;
        std::future::pending::<()>().await;
    };
    tokio::pin!(attachments);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = &mut assignments => return r,
            // Never end by themselves; dropped with the session.
            () = &mut logs => {}
            () = &mut networks => {}
            () = &mut attachments => {}
            msg = stream.message() => match msg {
                Ok(Some(m)) => {
                    let p = apply(ctx, addr, &m);
                    if p != period {
                        period = p;
                        ticker = tokio::time::interval(period);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(refused(addr, s)),
            },
            _ = ticker.tick() => {
                let beat = client.heartbeat(HeartbeatRequest { session_id: session_id.clone() });
                match tokio::time::timeout(period.max(Duration::from_millis(200)), beat).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) if s.code() == Code::NotFound => {
                        tracing::info!(manager = %addr, "the manager no longer knows this session");
                        return Ok(());
                    }
                    Ok(Err(s)) => return Err(refused(addr, s)),
                    Err(_) => tracing::warn!(manager = %addr, "heartbeat timed out"),
                }
            }
        }
    }
}

/// Feeds the worker the session's assignments, reopening the stream if it ends while the session
/// lives. Returns when the manager no longer knows the session.
async fn assignments(
    mut client: DispatcherClient<Channel>,
    session_id: String,
    addr: &str,
    worker: mpsc::Sender<rswarm_api::dispatcher::v1::AssignmentsMessage>,
) -> Result<(), AgentError> {
    loop {
        let request = AssignmentsRequest {
            session_id: session_id.clone(),
        };
        match client.assignments(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => {
                            if worker.send(m).await.is_err() {
                                // The worker stopped (the agent is stopping): keep the session.
                                return std::future::pending().await;
                            }
                        }
                        Ok(None) => {
                            tracing::debug!(manager = %addr, "the assignments stream ended; reopening");
                            break;
                        }
                        Err(s) if s.code() == Code::NotFound => {
                            tracing::info!(manager = %addr, "the manager no longer knows this session");
                            return Ok(());
                        }
                        Err(s) => {
                            tracing::warn!(manager = %addr, error = %s.message(), "the assignments stream failed; reopening");
                            break;
                        }
                    }
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::info!(manager = %addr, "the manager no longer knows this session");
                return Ok(());
            }
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::warn!(manager = %addr, "the manager does not assign tasks; running none");
                return std::future::pending().await;
            }
            Err(s) => {
                tracing::warn!(manager = %addr, error = %s.message(), "cannot open the assignments stream; retrying");
            }
        }
        tokio::time::sleep(ASSIGNMENTS_RETRY).await;
    }
}

/// What the scheduler may use of this node's CPUs: 1e9 per CPU this process may run on.
fn node_nano_cpus() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u64::try_from(cpus)
        .unwrap_or(1)
        .saturating_mul(1_000_000_000)
}

/// The node's memory in bytes (`MemTotal` of `/proc/meminfo`); 0 when unknown.
fn node_memory_bytes() -> u64 {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => mem_total(&text).unwrap_or(0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/meminfo; reporting no memory");
            0
        }
    }
}

/// `MemTotal:  16318464 kB` → bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next().map(str::to_ascii_lowercase).as_deref() {
        None => 1,
        Some("kb") => 1024,
        Some("mb") => 1024 * 1024,
        Some("gb") => 1024 * 1024 * 1024,
        Some(_) => return None,
    };
    value.checked_mul(factor)
}

/// Applies a session message; returns the heartbeat period to use.
fn apply(ctx: &NodeContext, addr: &str, m: &SessionMessage) -> Duration {
    let period = Duration::from_millis(m.heartbeat_period_ms.max(50));
    ctx.set_managers(m.manager_addrs.clone());
    ctx.session.send_modify(|s| {
        *s = SessionStatus {
            connected: true,
            session_id: m.session_id.clone(),
            manager: addr.to_string(),
            heartbeat_period: period,
            removed: false,
        }
    });
    period
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16318464 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(16_318_464 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
        assert!(node_nano_cpus() >= 1_000_000_000);
    }
}
