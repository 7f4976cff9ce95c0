//! `rswarm join`: fetch the root CA, pin it with the token's digest, trade the token's secret and a
//! CSR for a node certificate, and create the state dir.

use std::time::Duration;

use rswarm_api::ca::v1::certificate_authority_client::CertificateAuthorityClient;
use rswarm_api::ca::v1::{GetRootCaRequest, JoinNodeRequest};
use rswarm_ca::transport::tls_channel_connected;
use rswarm_ca::{tls, JoinToken, MANAGER_SERVER_NAME};
use tonic::Code;

use crate::statedir::{NodeConfig, StateDir};
use crate::{with_default_port, AgentError, VERSION};

/// What `rswarm join` was asked to do.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    pub token: String,
    /// `host[:port]` of a manager.
    pub manager_addr: String,
    /// This node's address as other nodes reach it (an IP).
    pub advertise_addr: String,
    pub state_dir: StateDir,
    pub hostname: String,
    /// Bound on each network step (connect, TLS, call).
    pub timeout: Duration,
}

/// Joins the cluster and creates the node's state dir. Writes nothing unless the join succeeded.
pub async fn join(opts: &JoinOptions) -> Result<NodeConfig, AgentError> {
    let token = JoinToken::parse(&opts.token).map_err(rswarm_ca::Error::from)?;
    opts.state_dir.ensure_free("rswarm-agent")?;
    let addr = with_default_port(&opts.manager_addr);
    let timeout = opts.timeout;

    // 1. The root CA, over a connection that does not yet trust anything; pinned by the digest.
    let channel = bounded(&addr, timeout, async {
        tls_channel_connected(
            &addr,
            tls::bootstrap_client_config(),
            MANAGER_SERVER_NAME,
            timeout,
        )
        .await
        .map_err(AgentError::from)
    })
    .await?;
    let ca_pem = bounded(&addr, timeout, async {
        CertificateAuthorityClient::new(channel)
            .get_root_ca(GetRootCaRequest {})
            .await
            .map(|r| r.into_inner().ca_cert_pem)
            .map_err(|s| refused(&addr, s))
    })
    .await?;
    let ca_der = pem_to_der(&ca_pem).ok_or_else(|| AgentError::Refused {
        addr: addr.clone(),
        message: "it sent an unreadable root CA certificate".into(),
    })?;
    if !token.matches_ca(&ca_der) {
        return Err(AgentError::CaMismatch { addr });
    }

    // 2. The join itself, over a connection that verifies the manager against the pinned CA.
    let (key_pem, csr_pem) = rswarm_ca::ca::generate_key_and_csr()?;
    let client_tls = tls::client_config(None, &ca_pem)?;
    let channel = bounded(&addr, timeout, async {
        tls_channel_connected(&addr, client_tls, MANAGER_SERVER_NAME, timeout)
            .await
            .map_err(AgentError::from)
    })
    .await?;
    let resp = bounded(&addr, timeout, async {
        CertificateAuthorityClient::new(channel)
            .join_node(JoinNodeRequest {
                token: opts.token.trim().to_string(),
                csr_pem,
                hostname: opts.hostname.clone(),
                advertise_addr: opts.advertise_addr.clone(),
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                engine_version: VERSION.into(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                Code::PermissionDenied | Code::Unauthenticated => AgentError::TokenRefused {
                    addr: addr.clone(),
                    message: s.message().to_string(),
                },
                _ => refused(&addr, s),
            })
    })
    .await?;

    let config = NodeConfig {
        node_id: resp.node_id,
        role: resp.role,
        cluster_id: resp.cluster_id,
        hostname: opts.hostname.clone(),
        advertise_addr: opts.advertise_addr.clone(),
        manager_addrs: if resp.manager_addrs.is_empty() {
            vec![addr.clone()]
        } else {
            resp.manager_addrs
        },
        listen_addr: None,
        raft_id: 0,
    };
    opts.state_dir
        .create(&config, &resp.ca_cert_pem, &resp.cert_pem, &key_pem, |_| {
            Ok(())
        })?;
    tracing::info!(node_id = %config.node_id, cluster_id = %config.cluster_id, "joined the cluster");
    Ok(config)
}

async fn bounded<T>(
    addr: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(AgentError::Timeout {
                addr: addr.to_string(),
                timeout: timeout.into(),
            })
        })
}

pub(crate) fn refused(addr: &str, status: tonic::Status) -> AgentError {
    if status.code() == Code::PermissionDenied && status.message().contains("removed") {
        return AgentError::Removed;
    }
    AgentError::Refused {
        addr: addr.to_string(),
        message: status.message().to_string(),
    }
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    // The CA crate's parser validates; here we only need the bytes the token digest covers.
    rswarm_ca::ca::first_cert_der(pem).ok().map(|d| d.to_vec())
}
