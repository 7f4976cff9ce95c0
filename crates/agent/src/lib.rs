//! The rswarm node agent.
//!
//! Everything a node runs whatever its role: its state dir ([`statedir`]), joining a cluster
//! ([`join`]), the dispatcher session that keeps it Ready ([`session`]), certificate renewal
//! ([`renew`]), the local unix-socket API ([`local`]) and the tasks the managers assign to the node
//! ([`worker`], run as containers of the [`engine`]), whose logs it publishes to managers on request
//! ([`logs`]). [`daemon::run_worker`] wires them into the
//! worker daemon; the manager daemon (crate `rswarm-manager`) reuses the same pieces for its local
//! agent.
//!
//! Architecture invariant: the agent talks to managers only through gRPC over mutual TLS with its
//! own node certificate; it never reads cluster state directly.

mod backoff;
pub mod daemon;
pub mod discovery;
pub mod engine;
mod error;
pub mod ids;
pub mod join;
pub mod local;
pub mod localnet;
pub mod logs;
pub mod netagent;
pub mod node;
pub mod renew;
pub mod session;
pub mod statedir;
pub mod worker;

pub use error::AgentError;

/// rswarm's version, as reported by `rswarm version` and in node descriptions.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default port of a manager's gRPC listener.
pub const DEFAULT_PORT: u16 = 4242;

/// `host` → `host:4242`; `host:port` unchanged (IPv6 literals in brackets).
pub fn with_default_port(addr: &str) -> String {
    let has_port = if addr.starts_with('[') {
        addr.contains("]:")
    } else {
        addr.matches(':').count() == 1
    };
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{DEFAULT_PORT}")
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

/// The machine's host name, or "localhost" when it cannot be read.
pub fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port() {
        assert_eq!(with_default_port("198.18.0.1"), "198.18.0.1:4242");
        assert_eq!(with_default_port("198.18.0.1:5000"), "198.18.0.1:5000");
        assert_eq!(with_default_port("fd00::1"), "[fd00::1]:4242");
        assert_eq!(with_default_port("[fd00::1]:7"), "[fd00::1]:7");
        assert_eq!(with_default_port("mgr.example"), "mgr.example:4242");
    }
}
