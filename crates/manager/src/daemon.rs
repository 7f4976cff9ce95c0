//! The manager daemon (`rswarm-manager`, and `rswarm init` after bootstrapping).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rswarm_agent::daemon::{finish, DaemonPaths, EngineHandle};
use rswarm_agent::local::{ClusterSummary, DaemonExit, LocalService};
use rswarm_agent::localnet::NetworksService;
use rswarm_agent::node::NodeContext;
use rswarm_agent::statedir::StateDir;
use rswarm_agent::{renew, session};
use rswarm_api::ca::v1::certificate_authority_server::CertificateAuthorityServer;
use rswarm_api::control::v1::control_server::ControlServer;
use rswarm_api::dispatcher::v1::dispatcher_server::DispatcherServer;
use rswarm_api::local::v1::local_server::LocalServer;
use rswarm_api::local::v1::networks_server::NetworksServer;
use rswarm_ca::transport::{tls_channel, tls_incoming, unix_incoming};
use rswarm_ca::{tls, MANAGER_SERVER_NAME};
use rswarm_raft::{GrpcTransport, RaftConfig, RaftNode, RaftService};
use rswarm_store::{Node, NodeRole, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Request;

use crate::auth::Auth;
use crate::ca_service::CaService;
use crate::control::ControlService;
use crate::dispatcher::DispatcherService;
use crate::events::EventLog;
use crate::logbroker::LogBroker;
use crate::monitor::Monitor;
use crate::orchestration;
use crate::ManagerError;

/// How long a starting manager waits to become raft leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

struct Summary(Store);

impl ClusterSummary for Summary {
    fn counts(&self) -> (u64, u64) {
        self.0.read(|s| {
            let nodes = s.list::<Node>().count() as u64;
            let managers = s
                .list::<Node>()
                .filter(|n| n.role() == NodeRole::Manager)
                .count() as u64;
            (nodes, managers)
        })
    }
}

/// Runs a manager node until `cancel` fires or the node leaves the cluster.
pub async fn run_manager(
    paths: DaemonPaths,
    cancel: CancellationToken,
) -> Result<DaemonExit, ManagerError> {
    let dir = StateDir::new(&paths.state_dir);
    let (config, identity) = dir.load()?;
    if !config.is_manager() {
        return Err(ManagerError::Invalid(format!(
            "{} holds a worker node; resume it with `rswarm-agent --state-dir {}`",
            paths.state_dir.display(),
            paths.state_dir.display()
        )));
    }
    let listen = config
        .listen_addr
        .clone()
        .ok_or_else(|| ManagerError::Invalid("node.json of a manager lacks listen_addr".into()))?;
    tracing::info!(node_id = %config.node_id, cluster_id = %config.cluster_id, %listen, "starting manager");

    // Bind first: a taken port is a clear error before anything starts.
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| ManagerError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let engine = EngineHandle::start(&paths).await?;
    let local_incoming = unix_incoming(&paths.socket)?;

    // The raft store, its peers reached over mutual TLS with this node's certificate.
    let peer_tls = tls::client_config(Some(&identity), identity.ca_pem())?;
    let raft_cancel = cancel.child_token();
    let transport = GrpcTransport::new(
        move |addr: &str| {
            tls_channel(
                addr,
                peer_tls.clone(),
                MANAGER_SERVER_NAME,
                Duration::from_secs(5),
            )
        },
        raft_cancel.clone(),
    );
    let raft = RaftNode::start(
        RaftConfig::new(config.raft_id, dir.raft_dir()),
        Arc::new(transport),
        raft_cancel.clone(),
    )
    .await?;
    let store = raft.store();
    wait_for_leader(&store, &cancel).await;

    let mut tasks = JoinSet::new();
    let (monitor, monitor_task) = Monitor::spawn(store.clone(), cancel.clone());
    tasks.spawn(async move {
        let _ = monitor_task.await;
    });
    let loops = orchestration::spawn(store.clone(), cancel.clone());
    tasks.spawn(async move {
        let _ = loops.await;
    });

    // Service logs (agents publish through the dispatcher, clients read through control) and the
    // recent cluster events.
    let logs = LogBroker::new();
    let events = EventLog::new();
    events.spawn_recorder(store.clone(), cancel.clone());

    // The cluster listener: mutual TLS, every RPC authorised by the caller's certificate.
    let auth = Auth::new(store.clone());
    let manager_only = {
        let auth = auth.clone();
        move |req: Request<()>| auth.manager(&req).map(|_| req)
    };
    let raft_peers_only = {
        let auth = auth.clone();
        move |req: Request<()>| auth.manager_node(&req).map(|_| req)
    };
    let server_tls = tls::server_config(&identity)?;
    let cluster_server = tonic::transport::Server::builder()
        .add_service(CertificateAuthorityServer::new(CaService::new(
            store.clone(),
        )))
        .add_service(DispatcherServer::new(DispatcherService::new(
            store.clone(),
            monitor.clone(),
            logs.clone(),
            cancel.clone(),
        )))
        .add_service(ControlServer::with_interceptor(
            ControlService::new(store.clone(), monitor.clone())
                .with_logs(logs.clone(), events.clone()),
            manager_only.clone(),
        ))
        // Not `RaftServer::with_interceptor`: the raft service lifts gRPC's 4 MiB message limit so
        // that snapshots larger than that reach joining managers (Swarm's join bug).
        .add_service(RaftService::new(raft.clone()).with_interceptor(raft_peers_only))
        .serve_with_incoming_shutdown(
            tls_incoming(listener, server_tls),
            cancel.clone().cancelled_owned(),
        );
    tasks.spawn(async move {
        if let Err(e) = cluster_server.await {
            tracing::error!(error = %e, "cluster listener failed");
        }
    });

    // This node's own agent: it reaches the dispatcher over TLS like every other node.
    let ctx = NodeContext::new(dir.clone(), config, identity)?;
    let agent_cancel = cancel.child_token();
    tasks.spawn(session::run(
        ctx.clone(),
        rswarm_agent::worker::Worker::new(engine.engine.clone()),
        agent_cancel.clone(),
    ));
    tasks.spawn(renew::run(ctx.clone(), agent_cancel.clone()));

    // The local socket: Local + Control, root-only.
    let leave = Arc::new(AtomicBool::new(false));
    let local = LocalService::new(
        ctx.clone(),
        Some(Arc::new(Summary(store.clone()))),
        cancel.clone(),
        leave.clone(),
    );
    let (images, containers) = engine.services();
    let local_server = tonic::transport::Server::builder()
        .add_service(LocalServer::new(local))
        .add_service(images)
        .add_service(containers)
        .add_service(NetworksServer::new(NetworksService::new(
            ctx.clone(),
            engine.engine.clone(),
        )))
        .add_service(ControlServer::with_interceptor(
            ControlService::new(store.clone(), monitor.clone())
                .with_logs(logs.clone(), events.clone()),
            manager_only,
        ))
        .serve_with_incoming_shutdown(local_incoming, cancel.clone().cancelled_owned());
    tasks.spawn(async move {
        if let Err(e) = local_server.await {
            tracing::error!(error = %e, "local socket server failed");
        }
    });

    cancel.cancelled().await;
    tracing::info!("shutting down");
    while tasks.join_next().await.is_some() {}
    engine.stop(rswarm_agent::local::left(&leave)).await;
    raft_cancel.cancel();
    if let Err(e) = raft.wait_stopped().await {
        tracing::warn!(error = %e, "raft driver stopped with an error");
    }
    Ok(finish(&dir, &paths.socket, &leave)?)
}

async fn wait_for_leader(store: &Store, cancel: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while !store.status().is_leader && tokio::time::Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = cancel.cancelled() => return,
        }
    }
    if store.status().is_leader {
        tracing::info!("this manager is the raft leader");
    } else {
        tracing::warn!("not the raft leader yet; waiting for the other managers");
    }
}
