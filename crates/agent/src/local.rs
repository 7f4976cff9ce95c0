//! The local daemon API on the node's root-only unix socket: `Local` (info, leave) on every node,
//! and on workers a `Control` that forwards to a manager with the node's own certificate (so the
//! manager decides what a worker may do, as for any remote caller).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rswarm_api::control::v1 as control;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::local::v1::local_server::Local;
use rswarm_api::local::v1::{InfoRequest, InfoResponse, LeaveRequest, LeaveResponse};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::node::NodeContext;
use crate::VERSION;

/// Cluster-wide numbers only a manager knows.
pub trait ClusterSummary: Send + Sync + 'static {
    /// (nodes, managers)
    fn counts(&self) -> (u64, u64);
}

/// Why a daemon stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonExit {
    /// Signal or shutdown: the node stays in the cluster and resumes on restart.
    Stopped,
    /// `rswarm leave`: the state dir was erased.
    Left,
}

/// Serves [`Local`].
pub struct LocalService {
    ctx: Arc<NodeContext>,
    summary: Option<Arc<dyn ClusterSummary>>,
    shutdown: CancellationToken,
    leave_requested: Arc<AtomicBool>,
}

impl LocalService {
    /// `leave_requested` is set (and `shutdown` cancelled) when the node is asked to leave; the
    /// daemon erases its state dir once everything has stopped.
    pub fn new(
        ctx: Arc<NodeContext>,
        summary: Option<Arc<dyn ClusterSummary>>,
        shutdown: CancellationToken,
        leave_requested: Arc<AtomicBool>,
    ) -> Self {
        LocalService {
            ctx,
            summary,
            shutdown,
            leave_requested,
        }
    }
}

#[tonic::async_trait]
impl Local for LocalService {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let config = self.ctx.config();
        let session = self.ctx.session.borrow().clone();
        let (nodes, managers) = self.summary.as_ref().map_or((0, 0), |s| s.counts());
        let state = if session.removed {
            "removed"
        } else if session.connected {
            "active"
        } else {
            "pending"
        };
        Ok(Response::new(InfoResponse {
            node_id: config.node_id.clone(),
            role: config.role.clone(),
            cluster_id: config.cluster_id.clone(),
            node_addr: config.advertise_addr.clone(),
            manager_addrs: config.manager_addrs.clone(),
            local_node_state: state.into(),
            version: VERSION.into(),
            state_dir: self.ctx.state_dir.path().display().to_string(),
            cert_not_after: humantime::format_rfc3339_seconds(self.ctx.identity.info().not_after)
                .to_string(),
            is_manager: config.is_manager(),
            nodes,
            managers,
            hostname: config.hostname,
        }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        if self.ctx.config().is_manager() && !req.get_ref().force {
            return Err(Status::failed_precondition(
                "you are attempting to leave the cluster on a node that is participating as a manager; \
                 removing the last manager erases all current state of the cluster; use --force to ignore this message",
            ));
        }
        tracing::info!("leaving the cluster on request");
        self.leave_requested.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
        Ok(Response::new(LeaveResponse {}))
    }
}

/// A worker's [`control::control_server::Control`]: every call goes to a manager with the node's
/// certificate, which managers refuse for workers with a message saying so.
pub struct ControlForwarder {
    ctx: Arc<NodeContext>,
}

impl ControlForwarder {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        ControlForwarder { ctx }
    }

    fn client(&self) -> Result<ControlClient<tonic::transport::Channel>, Status> {
        let addr =
            self.ctx.managers().into_iter().next().ok_or_else(|| {
                Status::unavailable("no manager address known; join the node again")
            })?;
        let channel = self
            .ctx
            .channel(&addr)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(ControlClient::new(channel))
    }
}

macro_rules! forward {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl control::control_server::Control for ControlForwarder {
            // Streams are forwarded as they come: dropping the local stream (the CLI went away)
            // drops the manager's, which ends the request there.
            type ServiceLogsStream = tonic::Streaming<control::ServiceLogsMessage>;
            type EventsStream = tonic::Streaming<control::Event>;

            async fn service_logs(
                &self,
                req: Request<control::ServiceLogsRequest>,
            ) -> Result<Response<Self::ServiceLogsStream>, Status> {
                self.client()?.service_logs(req.into_inner()).await
            }

            async fn events(
                &self,
                req: Request<control::EventsRequest>,
            ) -> Result<Response<Self::EventsStream>, Status> {
                self.client()?.events(req.into_inner()).await
            }

            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.client()?.$method(req.into_inner()).await
                }
            )*
        }
    };
}

forward! {
    list_nodes(control::ListNodesRequest) -> control::ListNodesResponse;
    get_node(control::GetNodeRequest) -> control::GetNodeResponse;
    update_node(control::UpdateNodeRequest) -> control::UpdateNodeResponse;
    remove_node(control::RemoveNodeRequest) -> control::RemoveNodeResponse;
    get_join_token(control::GetJoinTokenRequest) -> control::GetJoinTokenResponse;
    get_cluster(control::GetClusterRequest) -> control::GetClusterResponse;
    update_cluster(control::UpdateClusterRequest) -> control::GetClusterResponse;
    create_service(control::CreateServiceRequest) -> control::ServiceResponse;
    update_service(control::UpdateServiceRequest) -> control::ServiceResponse;
    get_service(control::GetServiceRequest) -> control::ServiceResponse;
    list_services(control::ListServicesRequest) -> control::ListServicesResponse;
    remove_service(control::RemoveServiceRequest) -> control::RemoveServiceResponse;
    list_tasks(control::ListTasksRequest) -> control::ListTasksResponse;
    create_network(control::CreateNetworkRequest) -> control::NetworkResponse;
    get_network(control::GetNetworkRequest) -> control::NetworkResponse;
    list_networks(control::ListNetworksRequest) -> control::ListNetworksResponse;
    remove_network(control::RemoveNetworkRequest) -> control::RemoveNetworkResponse;
}

/// Whether a daemon was asked to leave.
pub fn left(flag: &AtomicBool) -> bool {
    flag.load(Ordering::SeqCst)
}
