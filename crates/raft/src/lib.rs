//! rswarm's embedded Raft backend for the cluster store.
//!
//! Built on raft-rs's sans-IO `RawNode`. One driver task per member owns the `RawNode` and the
//! durable log ([`storage`]: a redb file, plus the latest snapshot in a file of its own), applies
//! committed transactions to the store's [`rswarm_store::Replica`] and serves commits from
//! [`RaftHandle::store`]. Members talk over [`transport::GrpcTransport`] /
//! [`transport::RaftService`] (`rswarm.raft.v1`).
//!
//! Life of a member:
//! - a new cluster: [`bootstrap`] the data directory, then [`RaftNode::start`] (it is leader within
//!   a tick or so);
//! - a restart: [`RaftNode::start`] on the same data directory;
//! - joining: [`RaftNode::start`] on an empty data directory (with [`RaftConfig::join_peers`]),
//!   then the leader's [`RaftHandle::add_member`]; the member catches up from a snapshot.

mod error;
mod node;
pub mod storage;
pub mod transport;

pub use error::Error;
pub use node::{RaftConfig, RaftHandle, RaftNode};
pub use storage::{bootstrap, RaftStorage, StorageError};
pub use transport::{GrpcTransport, PeerReporter, RaftService, Transport};

/// raft-rs's message type, as carried by [`Transport`] and [`RaftHandle::step`].
pub use raft::eraftpb::Message;
/// Delivery outcome of a snapshot, for [`PeerReporter::snapshot_status`].
pub use raft::SnapshotStatus;
