//! The worker daemon (`rswarm-agent`, and `rswarm join` after joining): session, renewal and the
//! local socket, each a task under one cancellation token.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rswarm_api::control::v1::control_server::ControlServer;
use rswarm_api::local::v1::local_server::LocalServer;
use rswarm_ca::transport::unix_incoming;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::local::{left, ControlForwarder, DaemonExit, LocalService};
use crate::node::NodeContext;
use crate::statedir::StateDir;
use crate::{renew, session, AgentError};

/// Where a daemon keeps its state and serves its local API.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
}

/// Runs a worker node until `cancel` fires or the node leaves the cluster.
pub async fn run_worker(
    paths: DaemonPaths,
    cancel: CancellationToken,
) -> Result<DaemonExit, AgentError> {
    let dir = StateDir::new(&paths.state_dir);
    let (config, identity) = dir.load()?;
    if config.is_manager() {
        return Err(AgentError::Refused {
            addr: String::new(),
            message: format!(
                "{} holds a manager node; resume it with `rswarm-manager --state-dir {}`",
                paths.state_dir.display(),
                paths.state_dir.display()
            ),
        });
    }
    tracing::info!(node_id = %config.node_id, cluster_id = %config.cluster_id, "starting worker");
    let ctx = NodeContext::new(dir.clone(), config, identity)?;
    let leave = Arc::new(AtomicBool::new(false));
    let incoming = unix_incoming(&paths.socket)?;

    let mut tasks = JoinSet::new();
    tasks.spawn(session::run(ctx.clone(), cancel.clone()));
    tasks.spawn(renew::run(ctx.clone(), cancel.clone()));
    let local = LocalService::new(ctx.clone(), None, cancel.clone(), leave.clone());
    let server = tonic::transport::Server::builder()
        .add_service(LocalServer::new(local))
        .add_service(ControlServer::new(ControlForwarder::new(ctx.clone())))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "local socket server failed");
        }
    });
    cancel.cancelled().await;
    while tasks.join_next().await.is_some() {}
    finish(&dir, &paths.socket, &leave)
}

/// Common end of a daemon: remove the socket; on leave, erase the state dir.
pub fn finish(dir: &StateDir, socket: &Path, leave: &AtomicBool) -> Result<DaemonExit, AgentError> {
    // The socket goes last: `rswarm leave` waits for it to vanish.
    let result = if left(leave) {
        dir.erase().map(|()| {
            tracing::info!("left the cluster; state dir erased");
            DaemonExit::Left
        })
    } else {
        Ok(DaemonExit::Stopped)
    };
    let _ = std::fs::remove_file(socket);
    result
}
