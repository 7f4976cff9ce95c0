//! The dispatcher session: the agent's long-lived stream to a manager plus its heartbeats. While it
//! is up the node is Ready; when it breaks the agent reconnects with backoff, trying each known
//! manager in turn.

use std::sync::Arc;
use std::time::Duration;

use rswarm_api::dispatcher::v1::dispatcher_client::DispatcherClient;
use rswarm_api::dispatcher::v1::{HeartbeatRequest, SessionMessage, SessionRequest};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::backoff::Backoff;
use crate::join::refused;
use crate::node::{NodeContext, SessionStatus};
use crate::{AgentError, VERSION};

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How long the agent waits for the session's first message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a session open until `cancel` fires or the cluster removes the node.
pub async fn run(ctx: Arc<NodeContext>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut attempt = 0usize;
    while !cancel.is_cancelled() {
        let managers = ctx.managers();
        let Some(addr) = managers.get(attempt % managers.len().max(1)).cloned() else {
            tracing::error!("no manager address known; join the node again");
            return;
        };
        attempt += 1;
        let result = one_session(&ctx, &addr, &cancel, &mut backoff).await;
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
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
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
