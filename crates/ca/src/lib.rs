//! rswarm's cluster PKI and secure transports.
//!
//! * [`token`]: join tokens (`RSWTKN-1-<ca digest>-<secret>`), the same shape as Swarm's `SWMTKN`.
//! * [`ca`]: the root certificate authority, node certificates (CN = node id, OU = role,
//!   O = cluster id), CSRs and the renewal schedule.
//! * [`tls`]: rustls client/server configurations built around a hot-swappable [`tls::NodeIdentity`].
//! * [`transport`]: tonic over our own tokio-rustls streams (TCP) and over unix sockets.
//! * [`error`]: the error types.
//!
//! Every rustls configuration built here uses the `ring` provider explicitly, so callers need not
//! install a process-wide default provider.

pub mod ca;
pub mod error;
pub mod tls;
pub mod token;
pub mod transport;

pub use ca::{CertInfo, NodeSubject, Role, RootCa};
pub use error::{Error, Result, TokenError};
pub use tls::{NodeIdentity, PeerIdentity, MANAGER_SERVER_NAME};
pub use token::JoinToken;
