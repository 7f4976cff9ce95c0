//! The crate's error type.

use crate::storage::StorageError;

/// Why a raft operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The durable raft storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused the operation.
    #[error("raft refused the operation: {0}")]
    Raft(#[from] raft::Error),
    /// Only the leader changes membership or commits; retry on the leader.
    #[error("this manager is not the raft leader{}; retry on the leader", leader_hint(.leader_addr))]
    NotLeader { leader_addr: Option<String> },
    /// The raft node stopped or is stopping.
    #[error("the raft node is shutting down")]
    ShuttingDown,
    /// [`crate::RaftHandle::add_member`] with an id already in the cluster.
    #[error("raft member {0} is already in the cluster; remove it first or choose another id")]
    MemberExists(u64),
    /// [`crate::RaftHandle::remove_member`] with an id not in the cluster.
    #[error("raft member {0} is not in the cluster")]
    UnknownMember(u64),
    /// raft-rs refused a membership change when it was applied.
    #[error("the raft membership change was refused: {0}")]
    ConfChange(String),
    /// A [`crate::RaftConfig`] value is out of range.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// The driver task ended with an error or a panic.
    #[error("the raft driver stopped: {0}")]
    Stopped(String),
}

fn leader_hint(addr: &Option<String>) -> String {
    match addr {
        Some(a) => format!(" (the leader is at {a})"),
        None => " (no leader is known yet)".to_string(),
    }
}
