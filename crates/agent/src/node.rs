//! What every task of a node daemon shares: who the node is, its identity, and its channels to the
//! managers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rswarm_ca::transport::tls_channel;
use rswarm_ca::{tls, NodeIdentity, MANAGER_SERVER_NAME};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::statedir::{NodeConfig, StateDir};
use crate::AgentError;

/// How long one connection attempt to a manager may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's view of its dispatcher session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStatus {
    pub connected: bool,
    pub session_id: String,
    pub manager: String,
    pub heartbeat_period: Duration,
    /// The cluster removed this node; it stops trying.
    pub removed: bool,
}

/// Shared by the session, renewal and local-API tasks of one node.
pub struct NodeContext {
    pub state_dir: StateDir,
    pub identity: NodeIdentity,
    pub session: watch::Sender<SessionStatus>,
    /// The latest overlay network table from the managers: fed by the session, read by the
    /// network agent, the task runners and the local API.
    pub networks: watch::Sender<crate::netagent::Table>,
    config: Mutex<NodeConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl NodeContext {
    pub fn new(
        state_dir: StateDir,
        config: NodeConfig,
        identity: NodeIdentity,
    ) -> Result<Arc<Self>, AgentError> {
        let client_tls = tls::client_config(Some(&identity), identity.ca_pem())?;
        let (session, _) = watch::channel(SessionStatus::default());
        Ok(Arc::new(NodeContext {
            state_dir,
            identity,
            session,
            networks: watch::Sender::new(None),
            config: Mutex::new(config),
            client_tls,
            channels: Mutex::new(HashMap::new()),
        }))
    }

    pub fn config(&self) -> NodeConfig {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn managers(&self) -> Vec<String> {
        self.config().manager_addrs
    }

    /// Records the managers' addresses the cluster announced, persisting them when they changed.
    pub fn set_managers(&self, addrs: Vec<String>) {
        if addrs.is_empty() {
            return;
        }
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if config.manager_addrs == addrs {
            return;
        }
        config.manager_addrs = addrs;
        if let Err(e) = self.state_dir.save_config(&config) {
            tracing::warn!(error = %e, "could not persist the new manager list");
        }
    }

    /// A (lazily connecting, cached) mutual-TLS channel to the manager at `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, AgentError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = tls_channel(
            addr,
            self.client_tls.clone(),
            MANAGER_SERVER_NAME,
            CONNECT_TIMEOUT,
        )?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
