//! Certificate renewal: at a random point between 50 % and 80 % of the node certificate's lifetime,
//! a fresh key and CSR are signed by a manager, written to the state dir, and swapped into the live
//! TLS identity (new connections use it at once; no restart).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rswarm_api::ca::v1::certificate_authority_client::CertificateAuthorityClient;
use rswarm_api::ca::v1::RenewNodeCertificateRequest;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::join::refused;
use crate::node::NodeContext;
use crate::AgentError;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Renews the node certificate whenever it is due, until `cancel` fires.
pub async fn run(ctx: Arc<NodeContext>, cancel: CancellationToken) {
    loop {
        let info = ctx.identity.info();
        let delay = rswarm_ca::ca::renewal_delay(
            info.not_before,
            info.not_after,
            SystemTime::now(),
            &mut rand::rng(),
        );
        tracing::debug!(in_secs = delay.as_secs(), "next certificate renewal");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
        let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match renew_once(&ctx).await {
                Ok(()) => break,
                Err(AgentError::Removed) => {
                    tracing::error!("{}", AgentError::Removed);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry.next_delay()) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// One renewal, trying each known manager.
pub async fn renew_once(ctx: &NodeContext) -> Result<(), AgentError> {
    let (key_pem, csr_pem) = rswarm_ca::ca::generate_key_and_csr()?;
    let mut last = None;
    for addr in ctx.managers() {
        let mut client = CertificateAuthorityClient::new(ctx.channel(&addr)?);
        let call = client.renew_node_certificate(RenewNodeCertificateRequest {
            csr_pem: csr_pem.clone(),
        });
        let resp = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                last = Some(refused(&addr, s));
                continue;
            }
            Err(_) => {
                last = Some(AgentError::Timeout {
                    addr,
                    timeout: CALL_TIMEOUT.into(),
                });
                continue;
            }
        };
        // Validates (chain, key match, validity) before anything is written.
        ctx.identity.replace(&resp.cert_pem, &key_pem)?;
        ctx.state_dir.save_cert(&resp.cert_pem, &key_pem)?;
        let info = ctx.identity.info();
        tracing::info!(
            not_after = %humantime::format_rfc3339_seconds(info.not_after),
            "node certificate renewed"
        );
        return Ok(());
    }
    Err(last.unwrap_or_else(|| AgentError::Refused {
        addr: String::new(),
        message: "no manager address known".into(),
    }))
}
