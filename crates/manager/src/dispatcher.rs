//! The dispatcher: agents' sessions and heartbeats, their task assignments and status reports
//! (see [`crate::assignments`]), and the agents' side of the log broker (see [`crate::logbroker`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use rswarm_agent::ids::new_id;
use rswarm_api::dispatcher::v1::dispatcher_server::Dispatcher;
use rswarm_api::dispatcher::v1::{
    AssignmentsMessage, AssignmentsRequest, AttachNetworkRequest, AttachNetworkResponse,
    DetachNetworkRequest, DetachNetworkResponse, HeartbeatRequest, HeartbeatResponse,
    ListenSubscriptionsRequest, LogSubscription, NetworkTable, NetworksRequest, PublishLogsMessage,
    PublishLogsResponse, SessionMessage, SessionRequest, SyncAttachmentsRequest,
    SyncAttachmentsResponse, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use rswarm_ca::transport::peer_of;
use rswarm_store::{Cluster, Kind, Node, Store};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::assignments::{Hub, Report, StatusBatcher};
use crate::auth::Auth;
use crate::convert::task_status_from_pb;
use crate::error::store_status;
use crate::logbroker::{LogBroker, SubEvent};
use crate::manager_addrs;
use crate::monitor::{Description, Monitor};
use crate::netview::{self, NetView};

pub struct DispatcherService {
    store: Store,
    auth: Auth,
    monitor: Monitor,
    shutdown: CancellationToken,
    sessions: Sessions,
    statuses: StatusBatcher,
    hub: Hub,
    logs: LogBroker,
    netview: SharedNetView,
}

impl DispatcherService {
    pub fn new(
        store: Store,
        monitor: Monitor,
        logs: LogBroker,
        shutdown: CancellationToken,
    ) -> Self {
        DispatcherService {
            logs,
            auth: Auth::new(store.clone()),
            statuses: StatusBatcher::spawn(store.clone(), shutdown.clone()),
            hub: Hub::spawn(store.clone(), shutdown.clone()),
            store,
            monitor,
            shutdown,
            sessions: Sessions::default(),
            netview: SharedNetView::default(),
        }
    }
}

/// The [`NetView`] at the store's latest index, shared by every node's `Networks` stream: a
/// committed batch costs one pass over the tasks, not one per connected node per network.
#[derive(Clone, Default)]
struct SharedNetView(Arc<Mutex<Option<Arc<NetView>>>>);

impl SharedNetView {
    /// The view at the store's current index, computed by the first stream that asks for it
    /// (the others wait for it rather than compute it again).
    fn current(&self, store: &Store) -> Arc<NetView> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        store.read(|s| match &*slot {
            Some(v) if v.index() == s.index() => Arc::clone(v),
            prev => {
                let v = Arc::new(NetView::after(s, prev.as_deref()));
                *slot = Some(Arc::clone(&v));
                v
            }
        })
    }
}

/// Open sessions: session id → (node id, fires when the session ends). Assignment streams and
/// status reports belong to a session and end with it.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, (String, CancellationToken)>>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, CancellationToken)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's end token, if `session_id` is an open session of `node_id`.
    fn of(&self, node_id: &str, session_id: &str) -> Result<CancellationToken, Status> {
        match self.lock().get(session_id) {
            Some((node, ended)) if node == node_id => Ok(ended.clone()),
            _ => Err(Status::not_found("unknown session; open a new one")),
        }
    }
}

/// Removes a session from the registry and ends its streams when its task ends, however it ends.
struct SessionGuard {
    sessions: Sessions,
    session_id: String,
    ended: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.session_id);
        self.ended.cancel();
    }
}

fn session_message(store: &Store, node_id: &str, session_id: &str) -> Option<SessionMessage> {
    store.read(|s| {
        let node = s.get::<Node>(node_id)?;
        let cluster = s.get::<Cluster>(Cluster::ID)?;
        Some(SessionMessage {
            session_id: session_id.to_string(),
            heartbeat_period_ms: cluster.heartbeat_period_ms,
            manager_addrs: manager_addrs(s),
            node_id: node_id.to_string(),
            availability: node.availability.as_str().into(),
        })
    })
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = ReceiverStream<Result<SessionMessage, Status>>;
    type AssignmentsStream = ReceiverStream<Result<AssignmentsMessage, Status>>;
    type ListenSubscriptionsStream = ReceiverStream<Result<LogSubscription, Status>>;
    type NetworksStream = ReceiverStream<Result<NetworkTable, Status>>;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = self.auth.node(&req)?;
        let remote_ip = peer_of(&req)
            .and_then(|i| i.remote_addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let r = req.into_inner();
        let node_id = peer.node_id.clone();
        if self.store.get::<Node>(&node_id).is_none() {
            return Err(Status::permission_denied(format!(
                "node {node_id} is not part of the cluster (it was removed); run `rswarm leave` on it and join again"
            )));
        }
        let session_id = new_id();
        let close = CancellationToken::new();
        let description = Description::new(
            r.hostname,
            r.advertise_addr,
            remote_ip,
            (r.os, r.arch),
            r.engine_version,
            peer.not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .with_resources(r.nano_cpus, r.memory_bytes);
        self.monitor
            .open(
                node_id.clone(),
                session_id.clone(),
                description,
                close.clone(),
            )
            .await
            .map_err(store_status)?;
        // Subscribe before reading: no change can fall between the first message and the stream.
        let mut events = self.store.subscribe();
        let first = session_message(&self.store, &node_id, &session_id)
            .ok_or_else(|| Status::permission_denied("node was removed"))?;
        let (tx, rx) = mpsc::channel(16);
        // Capacity 16 and nothing sent yet: cannot fail.
        let _ = tx.try_send(Ok(first.clone()));
        tracing::info!(%node_id, %session_id, "session opened");
        let store = self.store.clone();
        let monitor = self.monitor.clone();
        let shutdown = self.shutdown.clone();
        let ended = CancellationToken::new();
        self.sessions
            .lock()
            .insert(session_id.clone(), (node_id.clone(), ended.clone()));
        let guard = SessionGuard {
            sessions: self.sessions.clone(),
            session_id: session_id.clone(),
            ended,
        };
        tokio::spawn(async move {
            let _guard = guard;
            let mut last = first;
            loop {
                tokio::select! {
                    () = tx.closed() => {
                        monitor.closed(node_id, session_id).await;
                        return;
                    }
                    // Dropping `tx` ends the agent's stream; it reconnects (or learns it was removed).
                    () = close.cancelled() => return,
                    () = shutdown.cancelled() => return,
                    ev = events.recv() => {
                        match ev {
                            Ok(batch) => {
                                let relevant = batch
                                    .changes
                                    .iter()
                                    .any(|c| matches!(c.object.kind(), Kind::Cluster | Kind::Node));
                                if !relevant {
                                    continue;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => events = store.subscribe(),
                        }
                        let Some(next) = session_message(&store, &node_id, &session_id) else {
                            return;
                        };
                        if next != last {
                            if tx.send(Ok(next.clone())).await.is_err() {
                                monitor.closed(node_id, session_id).await;
                                return;
                            }
                            last = next;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let session_id = req.into_inner().session_id;
        if !self.monitor.heartbeat(peer.node_id, session_id).await {
            return Err(Status::not_found("unknown session; open a new one"));
        }
        let period_ms = self
            .store
            .get::<Cluster>(Cluster::ID)
            .map_or(500, |c| c.heartbeat_period_ms);
        Ok(Response::new(HeartbeatResponse { period_ms }))
    }

    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let peer = self.auth.node(&req)?;
        let ended = self.sessions.of(&peer.node_id, &req.get_ref().session_id)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.hub.clone().stream(peer.node_id, tx, ended));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let r = req.into_inner();
        self.sessions.of(&peer.node_id, &r.session_id)?;
        let now = now_ms();
        let reports = r
            .updates
            .into_iter()
            .map(|u| {
                let status = u.status.ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "status update for task {} has no status",
                        u.task_id
                    ))
                })?;
                Ok(Report {
                    node_id: peer.node_id.clone(),
                    task_id: u.task_id,
                    status: task_status_from_pb(&status, now)?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        self.statuses.report(reports).await.map_err(store_status)?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn listen_subscriptions(
        &self,
        req: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        let peer = self.auth.node(&req)?;
        let ended = self.sessions.of(&peer.node_id, &req.get_ref().session_id)?;
        let (id, mut subs) = self.logs.listen(&peer.node_id);
        let (tx, rx) = mpsc::channel(4);
        let logs = self.logs.clone();
        let node_id = peer.node_id;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = ended.cancelled() => break,
                    () = tx.closed() => break,
                    s = subs.recv() => match s {
                        Some(s) => if tx.send(Ok(s)).await.is_err() { break },
                        // Replaced by a newer stream of the same node.
                        None => break,
                    },
                }
            }
            logs.unlisten(&node_id, id);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn networks(
        &self,
        req: Request<NetworksRequest>,
    ) -> Result<Response<Self::NetworksStream>, Status> {
        let peer = self.auth.node(&req)?;
        let ended = self.sessions.of(&peer.node_id, &req.get_ref().session_id)?;
        let changes = netview::Changes::of(req.get_ref());
        // Subscribe before reading: no change can fall between the first table and the stream.
        let mut events = self.store.subscribe();
        let node_id = peer.node_id;
        let views = self.netview.clone();
        let view = views.current(&self.store);
        let (mut last, mut last_port) = (view.entries(&node_id), view.data_path_port());
        drop(view);
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.try_send(Ok(netview::table(&last, last_port)));
        let store = self.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = ended.cancelled() => return,
                    () = tx.closed() => return,
                    ev = events.recv() => {
                        match ev {
                            Ok(batch) => {
                                if !batch.changes.iter().any(netview::relevant) {
                                    continue;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                        // Only a change to one of this node's networks makes a new table.
                        let view = views.current(&store);
                        let entries = view.entries(&node_id);
                        let port = view.data_path_port();
                        drop(view);
                        let Some(table) = netview::update(&last, last_port, &entries, port, changes)
                        else {
                            continue;
                        };
                        if tx.send(Ok(table)).await.is_err() {
                            return;
                        }
                        (last, last_port) = (entries, port);
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn attach_network(
        &self,
        req: Request<AttachNetworkRequest>,
    ) -> Result<Response<AttachNetworkResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let r = req.into_inner();
        self.sessions.of(&peer.node_id, &r.session_id)?;
        let network_id = self
            .store
            .read(|s| crate::networks::find_network(s, &r.network).map(|n| n.id.clone()))?;
        let ip = match r.ip.as_str() {
            "" => None,
            ip => Some(ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
                Status::invalid_argument(format!("invalid IPv4 address {ip:?} for --ip"))
            })?),
        };
        let id = new_id();
        let mut refused = None;
        self.store
            .update(|s| {
                refused = None;
                let Some(network) = s.get::<rswarm_store::Network>(&network_id) else {
                    refused = Some(Status::not_found(format!(
                        "network {} not found",
                        r.network
                    )));
                    return Ok(vec![]);
                };
                let who = rswarm_orchestrator::StandaloneContainer {
                    node_id: &peer.node_id,
                    container_id: &r.container_id,
                    container_name: &r.container_name,
                    aliases: &r.aliases,
                    ip,
                };
                match rswarm_orchestrator::attachment_task(s, network, who, id.clone(), now_ms()) {
                    Ok(t) => Ok(vec![rswarm_store::Txn::create(t)]),
                    Err(e) => {
                        refused = Some(Status::failed_precondition(e.to_string()));
                        Ok(vec![])
                    }
                }
            })
            .await
            .map_err(store_status)?;
        if let Some(e) = refused {
            return Err(e);
        }
        let response = self.store.read(|s| {
            let t = s.get::<rswarm_store::Task>(&id)?;
            let n = s.get::<rswarm_store::Network>(&network_id)?;
            let port = s.get::<Cluster>(Cluster::ID).map_or(
                rswarm_store::network::DEFAULT_DATA_PATH_PORT,
                Cluster::data_path_port,
            );
            Some(AttachNetworkResponse {
                attachment_id: id.clone(),
                network: Some(crate::netview::network_header(n)),
                addr: t.networks.first()?.addr.to_string(),
                data_path_port: port.into(),
            })
        });
        let response =
            response.ok_or_else(|| Status::aborted("the attachment was removed; try again"))?;
        tracing::info!(node = %peer.node_id, container = %r.container_id, network = %r.network, addr = %response.addr, "standalone container attached to a network");
        Ok(Response::new(response))
    }

    async fn detach_network(
        &self,
        req: Request<DetachNetworkRequest>,
    ) -> Result<Response<DetachNetworkResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let r = req.into_inner();
        self.sessions.of(&peer.node_id, &r.session_id)?;
        self.store
            .update(|s| {
                let Some(t) = s
                    .get::<rswarm_store::Task>(&r.attachment_id)
                    .filter(|t| t.network_attachment && t.node_id == peer.node_id)
                else {
                    return Ok(vec![]);
                };
                if t.status.state.is_terminal() {
                    return Ok(vec![]);
                }
                let t = rswarm_orchestrator::released_attachment(t, now_ms(), "detached");
                Ok(vec![rswarm_store::Txn::update(t)])
            })
            .await
            .map_err(store_status)?;
        Ok(Response::new(DetachNetworkResponse {}))
    }

    async fn sync_attachments(
        &self,
        req: Request<SyncAttachmentsRequest>,
    ) -> Result<Response<SyncAttachmentsResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let r = req.into_inner();
        self.sessions.of(&peer.node_id, &r.session_id)?;
        let keep: std::collections::BTreeSet<&str> = r.keep.iter().map(String::as_str).collect();
        let mut released = 0;
        self.store
            .update(|s| {
                let stale =
                    rswarm_orchestrator::stale_attachments(s, &peer.node_id, &keep, now_ms());
                released = stale.len();
                Ok(stale.into_iter().map(rswarm_store::Txn::update).collect())
            })
            .await
            .map_err(store_status)?;
        if released > 0 {
            tracing::info!(node = %peer.node_id, released, "gave back network attachments the node no longer records");
        }
        Ok(Response::new(SyncAttachmentsResponse {
            released: u32::try_from(released).unwrap_or(u32::MAX),
        }))
    }

    async fn publish_logs(
        &self,
        req: Request<Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let mut stream = req.into_inner();
        self.publish_logs_inner(&peer.node_id, &mut stream).await?;
        Ok(Response::new(PublishLogsResponse {}))
    }
}

impl DispatcherService {
    async fn publish_logs_inner(
        &self,
        node_id: &str,
        stream: &mut Streaming<PublishLogsMessage>,
    ) -> Result<(), Status> {
        let mut started: Option<(String, mpsc::Sender<SubEvent>)> = None;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    if let Some((_, tx)) = &started {
                        let why = "the node stopped sending logs before it finished".to_string();
                        let _ = tx.send(SubEvent::Done(node_id.into(), Some(why))).await;
                    }
                    return Ok(());
                }
                Err(s) => {
                    if let Some((_, tx)) = &started {
                        let why = format!("the node's log stream broke: {}", s.message());
                        let _ = tx.send(SubEvent::Done(node_id.into(), Some(why))).await;
                    }
                    return Ok(());
                }
            };
            if started
                .as_ref()
                .is_some_and(|(id, _)| *id != msg.subscription_id)
            {
                return Err(Status::invalid_argument(
                    "one PublishLogs stream carries one subscription; open another stream",
                ));
            }
            // The subscription is over: returning ends the node's stream.
            let Some(tx) = self.logs.route(node_id, &msg)? else {
                return Ok(());
            };
            if started.is_none() {
                started = Some((msg.subscription_id.clone(), tx.clone()));
                if tx.send(SubEvent::Started(node_id.into())).await.is_err() {
                    return Ok(());
                }
            }
            if !msg.lines.is_empty()
                && tx
                    .send(SubEvent::Lines(node_id.into(), msg.lines))
                    .await
                    .is_err()
            {
                return Ok(());
            }
            if msg.close {
                let _ = tx.send(SubEvent::Done(node_id.into(), None)).await;
                return Ok(());
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
