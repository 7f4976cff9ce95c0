use rswarm_store::{StoreError, TxnError};
use tonic::Status;

/// Errors of the manager library.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Agent(#[from] rswarm_agent::AgentError),
    #[error(transparent)]
    Ca(#[from] rswarm_ca::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Raft(#[from] rswarm_raft::Error),
    #[error(transparent)]
    RaftStorage(#[from] rswarm_raft::StorageError),
    #[error("invalid {flag}: {reason}")]
    InvalidOption { flag: &'static str, reason: String },
    #[error("cannot listen on {addr}: {source}; check that the address belongs to this host and the port is free")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Maps store errors to gRPC statuses at the API edge.
pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Txn(TxnError::NotFound { .. }) => Status::not_found(e.to_string()),
        StoreError::Txn(TxnError::Exists { .. } | TxnError::NameConflict { .. }) => {
            Status::already_exists(e.to_string())
        }
        StoreError::Txn(TxnError::VersionMismatch { .. } | TxnError::AddressConflict(_)) => {
            Status::aborted(e.to_string())
        }
        StoreError::Txn(TxnError::InUse { .. }) => Status::failed_precondition(e.to_string()),
        StoreError::NotLeader { .. } | StoreError::ShuttingDown => {
            Status::unavailable(e.to_string())
        }
        StoreError::Invalid(_) => Status::failed_precondition(e.to_string()),
        StoreError::Backend(_) => Status::internal(e.to_string()),
    }
}
