//! The rswarm manager.
//!
//! [`bootstrap`] creates a cluster; [`daemon::run_manager`] runs a manager node: the raft-backed
//! [`rswarm_store::Store`], the gRPC services ([`ca_service`], [`dispatcher`], [`control`], raft) on
//! a mutual-TLS listener, node liveness ([`monitor`]), the local unix-socket API, and the node's own
//! agent (crate `rswarm-agent`), which reaches this manager over TLS like any other node. Service
//! logs travel through the [`logbroker`] over the agents' sessions; [`events`] keeps the recent
//! cluster events for `rswarm events`.
//!
//! Architecture invariant: only the monitor task writes node status; services write through the
//! store's optimistic transactions, never around them.

pub mod assignments;
pub mod auth;
pub mod bootstrap;
pub mod ca_service;
pub mod control;
pub mod convert;
pub mod daemon;
pub mod dispatcher;
mod error;
pub mod events;
pub mod logbroker;
pub mod monitor;
pub mod netview;
pub mod networks;
pub mod orchestration;
pub mod services;

pub use bootstrap::{bootstrap, InitOptions, InitOutcome};
pub use error::{store_status, ManagerError};

use rswarm_store::{Node, NodeRole, StateMachine};

/// `host:port` of every manager, as agents dial them.
pub fn manager_addrs(s: &StateMachine) -> Vec<String> {
    s.list::<Node>()
        .filter(|n| n.role() == NodeRole::Manager && !n.manager_addr.is_empty())
        .map(|n| n.manager_addr.clone())
        .collect()
}

/// RFC 3339 (seconds) for milliseconds since the epoch; empty for 0.
pub fn rfc3339_ms(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
