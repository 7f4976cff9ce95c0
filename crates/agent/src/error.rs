use std::path::PathBuf;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Ca(#[from] rswarm_ca::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("{} already holds an rswarm node ({}); resume it with `{resume} --state-dir {} --socket <path>`, or run `rswarm leave --force` (or remove the directory) to start over", dir.display(), dir.join("node.json").display(), dir.display())]
    AlreadyInitialised { dir: PathBuf, resume: &'static str },
    #[error("{} holds no rswarm node (no node.json); create one with `rswarm init` or `rswarm join`", .0.display())]
    NotInitialised(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is corrupt: {reason}; restore it from a backup or join the node again", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("the manager at {addr} presents a root CA whose digest does not match the join token; check that the token belongs to the cluster of that manager (see `rswarm join-token worker` on it)")]
    CaMismatch { addr: String },
    #[error("the join token was refused by the manager at {addr}: {message}")]
    TokenRefused { addr: String, message: String },
    #[error("the manager at {addr} refused the request: {message}")]
    Refused { addr: String, message: String },
    #[error("the manager at {addr} did not answer within {timeout}; check the address and that the manager is running and reachable from this host")]
    Timeout {
        addr: String,
        timeout: humantime::Duration,
    },
    #[error("this node was removed from the cluster; run `rswarm leave` on it and join again with a fresh token")]
    Removed,
}

impl AgentError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
