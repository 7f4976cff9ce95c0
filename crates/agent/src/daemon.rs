//! The worker daemon (`rswarm-agent`, and `rswarm join` after joining): session (with the node's
//! tasks), renewal and the local socket, each a task under one cancellation token.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rswarm_api::control::v1::control_server::ControlServer;
use rswarm_api::local::v1::containers_server::ContainersServer;
use rswarm_api::local::v1::images_server::ImagesServer;
use rswarm_api::local::v1::local_server::LocalServer;
use rswarm_api::local::v1::networks_server::NetworksServer;
use rswarm_ca::transport::unix_incoming;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::service::{ContainersService, ImagesService};
use crate::engine::{Engine, EngineOptions};
use crate::local::{left, ControlForwarder, DaemonExit, LocalService};
use crate::localnet::NetworksService;
use crate::node::NodeContext;
use crate::statedir::StateDir;
use crate::worker::Worker;
use crate::{renew, session, AgentError};

/// Where a daemon keeps its state and serves its local API, and how its container engine is set up.
#[derive(Clone, Debug)]
pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub engine: EngineOptions,
}

/// The node's container engine with its own cancellation: it outlives the servers so that a
/// leaving node can still remove its containers.
pub struct EngineHandle {
    pub engine: Engine,
    cancel: CancellationToken,
}

impl EngineHandle {
    /// Starts the engine (checks runc, shim and init; re-adopts containers).
    pub async fn start(paths: &DaemonPaths) -> Result<EngineHandle, AgentError> {
        let cancel = CancellationToken::new();
        let engine = Engine::open(&paths.state_dir, paths.engine.clone(), cancel.clone()).await?;
        Ok(EngineHandle { engine, cancel })
    }

    /// The local socket's `Images` and `Containers` services.
    pub fn services(
        &self,
    ) -> (
        ImagesServer<ImagesService>,
        ContainersServer<ContainersService>,
    ) {
        (
            ImagesServer::new(ImagesService::new(self.engine.clone())),
            ContainersServer::new(ContainersService::new(self.engine.clone())),
        )
    }

    /// Stops the engine's tasks; containers keep running unless the node is leaving.
    pub async fn stop(self, leaving: bool) {
        if leaving {
            self.engine.remove_all().await;
            self.engine.teardown().await;
        }
        self.cancel.cancel();
        self.engine.shutdown().await;
    }
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
    let engine = EngineHandle::start(&paths).await?;
    let incoming = unix_incoming(&paths.socket)?;

    let mut tasks = JoinSet::new();
    let worker = Worker::new(engine.engine.clone());
    tasks.spawn(session::run(ctx.clone(), worker, cancel.clone()));
    tasks.spawn(renew::run(ctx.clone(), cancel.clone()));
    let local = LocalService::new(ctx.clone(), None, cancel.clone(), leave.clone());
    let (images, containers) = engine.services();
    let server = tonic::transport::Server::builder()
        .add_service(LocalServer::new(local))
        .add_service(images)
        .add_service(containers)
        .add_service(NetworksServer::new(NetworksService::new(
            ctx.clone(),
            engine.engine.clone(),
        )))
        .add_service(ControlServer::new(ControlForwarder::new(ctx.clone())))
        .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "local socket server failed");
        }
    });
    cancel.cancelled().await;
    while tasks.join_next().await.is_some() {}
    engine.stop(left(&leave)).await;
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
