//! The control API: nodes, join tokens, cluster info, services (in [`crate::services`]), service
//! logs (through [`crate::logbroker`]) and cluster events ([`crate::events`]). Managers only (see
//! [`crate::auth`]).

use std::time::Duration;

use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_server::Control;
use rswarm_ca::JoinToken;
use rswarm_store::{
    Availability, BackendStatus, Cluster, Node, NodeRole, NodeStatus, StateMachine, Store,
    StoreError, Txn,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::bootstrap::validate_settings;
use crate::error::store_status;
use crate::events::{now_ms, EventFilter, EventLog, Window};
use crate::logbroker::{plan_logs, LogBroker};
use crate::monitor::Monitor;
use crate::services;
use crate::{manager_addrs, rfc3339_ms};

pub struct ControlService {
    store: Store,
    monitor: Monitor,
    logs: LogBroker,
    events: EventLog,
}

/// Events waiting for one `rswarm events` client.
const EVENTS_QUEUE: usize = 64;

impl ControlService {
    /// A control API whose log broker and event log are its own (nothing feeds them): use
    /// [`ControlService::with_logs`] to share the daemon's.
    pub fn new(store: Store, monitor: Monitor) -> Self {
        ControlService {
            store,
            monitor,
            logs: LogBroker::new(),
            events: EventLog::new(),
        }
    }

    /// Serves `ServiceLogs` through `logs` (which the dispatcher feeds) and `Events` from
    /// `events` (which the daemon's recorder fills).
    pub fn with_logs(mut self, logs: LogBroker, events: EventLog) -> Self {
        self.logs = logs;
        self.events = events;
        self
    }
}

/// Finds a node by id, unique id prefix, or unique hostname.
pub fn find_node<'a>(s: &'a StateMachine, key: &str) -> Result<&'a Node, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(
            "a node id or hostname is required",
        ));
    }
    if let Some(n) = s.get::<Node>(key) {
        return Ok(n);
    }
    let by_prefix: Vec<&Node> = s.list::<Node>().filter(|n| n.id.starts_with(key)).collect();
    let by_name: Vec<&Node> = s.list::<Node>().filter(|n| n.hostname == key).collect();
    match (by_prefix.as_slice(), by_name.as_slice()) {
        ([n], _) | ([], [n]) => Ok(n),
        ([], []) => Err(Status::not_found(format!("node {key} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "node {key} is ambiguous: more than one node matches; use a longer id prefix"
        ))),
    }
}

/// Docker's `node ls --filter` values, grouped by key: every key must match, any value of a key
/// may.
#[derive(Debug, Default)]
pub struct NodeFilter {
    ids: Vec<String>,
    names: Vec<String>,
    roles: Vec<String>,
    labels: Vec<(String, Option<String>)>,
    memberships: Vec<String>,
}

impl NodeFilter {
    /// Parses `key=value` filters; unknown keys and malformed values are refused.
    pub fn parse(filters: &[String]) -> Result<NodeFilter, Status> {
        let mut f = NodeFilter::default();
        for raw in filters {
            let (key, value) = raw.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!(
                    "bad filter {raw:?}: use key=value, for example role=manager"
                ))
            })?;
            let value = value.to_string();
            match key {
                "id" => f.ids.push(value),
                "name" => f.names.push(value),
                "role" if value == "manager" || value == "worker" => f.roles.push(value),
                "membership" if value == "accepted" || value == "pending" => {
                    f.memberships.push(value)
                }
                "label" | "node.label" => f.labels.push(match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value, None),
                }),
                "role" | "membership" => {
                    return Err(Status::invalid_argument(format!(
                        "bad filter {raw:?}: role takes manager or worker, membership takes accepted or pending"
                    )))
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "invalid filter key {other:?}: use id, name, role, label, node.label or membership"
                    )))
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, n: &Node) -> bool {
        fn any<T>(values: &[T], f: impl Fn(&T) -> bool) -> bool {
            values.is_empty() || values.iter().any(f)
        }
        any(&self.ids, |id| n.id.starts_with(id.as_str()))
            && any(&self.names, |name| n.hostname.contains(name.as_str()))
            && any(&self.roles, |r| r == n.role().as_str())
            // Every node in the store was admitted by its join token.
            && any(&self.memberships, |m| m == "accepted")
            && any(&self.labels, |(k, v)| match (n.labels.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }
}

fn manager_status(node: &Node, raft: &BackendStatus) -> String {
    if node.role() != NodeRole::Manager {
        return String::new();
    }
    if raft.leader == Some(node.raft_id) {
        "leader".into()
    } else if node.status == NodeStatus::Ready {
        "reachable".into()
    } else {
        "unreachable".into()
    }
}

/// The API form of a node.
pub fn node_to_pb(node: &Node, raft: &BackendStatus) -> pb::Node {
    pb::Node {
        id: node.id.clone(),
        version: node.meta.version,
        hostname: node.hostname.clone(),
        role: node.role().as_str().into(),
        availability: node.availability.as_str().into(),
        labels: node.labels.clone().into_iter().collect(),
        status: node.status.as_str().into(),
        status_message: node.status_message.clone(),
        addr: node.addr.clone(),
        os: node.os.clone(),
        arch: node.arch.clone(),
        engine_version: node.engine_version.clone(),
        manager_status: manager_status(node, raft),
        created_at: rfc3339_ms(node.meta.created_at_ms),
        updated_at: rfc3339_ms(node.meta.updated_at_ms),
        cert_not_after: rfc3339_ms(node.cert_not_after.saturating_mul(1000)),
    }
}

fn cluster(s: &StateMachine) -> Result<&Cluster, StoreError> {
    s.get::<Cluster>(Cluster::ID)
        .ok_or_else(|| StoreError::Invalid("the cluster is not initialised".into()))
}

#[tonic::async_trait]
impl Control for ControlService {
    type ServiceLogsStream = ReceiverStream<Result<pb::ServiceLogsMessage, Status>>;
    type EventsStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let r = req.into_inner();
        if !r.since.is_empty() && humantime::parse_rfc3339_weak(&r.since).is_err() {
            return Err(Status::invalid_argument(format!(
                "invalid since {:?}: use RFC 3339, e.g. 2026-01-02T15:04:05Z",
                r.since
            )));
        }
        let plan = self.store.read(|s| plan_logs(s, &r.target))?;
        Ok(Response::new(ReceiverStream::new(self.logs.serve(plan, r))))
    }

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let filter = EventFilter::parse(&r.filters)?;
        let nonzero = |v: u64| (v != 0).then_some(v);
        let window = Window {
            since_ms: nonzero(r.since_unix_ms),
            until_ms: nonzero(r.until_unix_ms),
        };
        if let (Some(since), Some(until)) = (window.since_ms, window.until_ms) {
            if since > until {
                return Err(Status::invalid_argument(
                    "--since is after --until: give a --since before the --until",
                ));
            }
        }
        let (replay, mut last, mut rx) = self.events.replay_and_follow(window, &filter);
        let (tx, out) = mpsc::channel(EVENTS_QUEUE);
        tokio::spawn(async move {
            for e in replay {
                if tx.send(Ok(e.to_pb())).await.is_err() {
                    return;
                }
            }
            loop {
                let now = now_ms();
                if window.over(now) {
                    return;
                }
                let left = window.until_ms.map_or(Duration::from_secs(3600), |u| {
                    Duration::from_millis(u + 1 - now)
                });
                let e = tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(left) => continue,
                    e = rx.recv() => e,
                };
                match e {
                    Ok(e) => {
                        if e.seq <= last {
                            continue;
                        }
                        last = e.seq;
                        if window.until_ms.is_some_and(|u| e.time_ms > u) {
                            return;
                        }
                        if filter.matches(&e) && tx.send(Ok(e.to_pb())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "this client fell behind and missed {n} events; run `rswarm events --since …` again to replay them"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let filter = NodeFilter::parse(&req.get_ref().filters)?;
        let raft = self.store.status();
        let nodes = self.store.read(|s| {
            s.list::<Node>()
                .filter(|n| filter.matches(n))
                .map(|n| node_to_pb(n, &raft))
                .collect()
        });
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        let raft = self.store.status();
        let node = self
            .store
            .read(|s| find_node(s, &req.get_ref().node).map(|n| node_to_pb(n, &raft)))?;
        Ok(Response::new(pb::GetNodeResponse { node: Some(node) }))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        let r = req.into_inner();
        let availability = match r.availability.as_str() {
            "" => None,
            a => Some(Availability::parse(a).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid availability {a:?}: use active, pause or drain"
                ))
            })?),
        };
        for key in r.label_add.keys().chain(r.label_rm.iter()) {
            if key.is_empty() {
                return Err(Status::invalid_argument("a label key must not be empty"));
            }
        }
        let id = self
            .store
            .read(|s| find_node(s, &r.node).map(|n| n.id.clone()))?;
        self.store
            .update(|s| {
                let Some(node) = s.get::<Node>(&id) else {
                    return Err(StoreError::Invalid(format!("node {id} was removed")));
                };
                let mut next = node.clone();
                if let Some(a) = availability {
                    next.availability = a;
                }
                for (k, v) in &r.label_add {
                    next.labels.insert(k.clone(), v.clone());
                }
                for k in &r.label_rm {
                    next.labels.remove(k);
                }
                if next == *node {
                    return Ok(vec![]);
                }
                Ok(vec![Txn::update(next)])
            })
            .await
            .map_err(store_status)?;
        let raft = self.store.status();
        let node = self
            .store
            .get::<Node>(&id)
            .map(|n| node_to_pb(&n, &raft))
            .ok_or_else(|| Status::not_found(format!("node {id} was removed")))?;
        Ok(Response::new(pb::UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let r = req.into_inner();
        let node = self.store.read(|s| find_node(s, &r.node).cloned())?;
        if node.role() == NodeRole::Manager {
            return Err(Status::failed_precondition(format!(
                "node {} is a cluster manager and a member of the raft cluster; it cannot be removed (to dismantle the cluster, run `rswarm leave --force` on it)",
                node.id
            )));
        }
        if node.status != NodeStatus::Down && !r.force {
            return Err(Status::failed_precondition(format!(
                "node {} is not down and can't be removed; stop its agent first, or use --force",
                node.id
            )));
        }
        self.store
            .update(|s| {
                let Some(current) = s.get::<Node>(&node.id) else {
                    return Ok(vec![]);
                };
                let mut c = cluster(s)?.clone();
                c.removed_nodes.insert(node.id.clone());
                // Its tasks' and containers' addresses: nobody will ever give them back.
                let released = rswarm_orchestrator::removed_node_tasks(s, &node.id, now_ms());
                let mut ops = vec![Txn::delete(current), Txn::update(c)];
                ops.extend(released.into_iter().map(Txn::update));
                Ok(ops)
            })
            .await
            .map_err(store_status)?;
        self.monitor.removed(node.id.clone()).await;
        tracing::info!(node_id = %node.id, force = r.force, "node removed");
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn get_join_token(
        &self,
        req: Request<pb::GetJoinTokenRequest>,
    ) -> Result<Response<pb::GetJoinTokenResponse>, Status> {
        let r = req.into_inner();
        let worker = match r.role.as_str() {
            "worker" => true,
            "manager" => false,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown role {other:?}: use worker or manager"
                )))
            }
        };
        if r.rotate {
            self.store
                .update(|s| {
                    let mut c = cluster(s)?.clone();
                    let ca_der = rswarm_ca::ca::first_cert_der(&c.root_ca_cert_pem)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?;
                    let token = JoinToken::generate(&ca_der).encode();
                    if worker {
                        c.worker_token = token;
                    } else {
                        c.manager_token = token;
                    }
                    Ok(vec![Txn::update(c)])
                })
                .await
                .map_err(store_status)?;
            tracing::info!(role = %r.role, "join token rotated");
        }
        let (token, addrs) = self
            .store
            .read(|s| {
                cluster(s).map(|c| {
                    let t = if worker {
                        &c.worker_token
                    } else {
                        &c.manager_token
                    };
                    (t.clone(), manager_addrs(s))
                })
            })
            .map_err(store_status)?;
        Ok(Response::new(pb::GetJoinTokenResponse {
            token,
            manager_addrs: addrs,
        }))
    }

    async fn get_cluster(
        &self,
        _req: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        Ok(Response::new(self.cluster_info()?))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        services::create(&self.store, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        services::update(&self.store, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceResponse>, Status> {
        services::get(&self.store, &req.get_ref().service).map(Response::new)
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        services::list(&self.store, req.get_ref()).map(Response::new)
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        services::remove(&self.store, &req.get_ref().service)
            .await
            .map(Response::new)
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        services::list_tasks(&self.store, req.get_ref()).map(Response::new)
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::NetworkResponse>, Status> {
        crate::networks::create(&self.store, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::NetworkResponse>, Status> {
        crate::networks::get(&self.store, &req.into_inner().network).map(Response::new)
    }

    async fn list_networks(
        &self,
        _req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        Ok(Response::new(crate::networks::list(&self.store)))
    }

    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        crate::networks::remove(&self.store, &req.into_inner().network)
            .await
            .map(Response::new)
    }

    async fn update_cluster(
        &self,
        req: Request<pb::UpdateClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        let r = req.into_inner();
        let nonzero = |v: u64| (v != 0).then_some(v);
        let heartbeat = nonzero(r.heartbeat_period_ms);
        let cert_expiry = nonzero(r.cert_expiry_secs);
        validate_settings(
            heartbeat.map(Duration::from_millis),
            cert_expiry.map(Duration::from_secs),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.store
            .update(|s| {
                let current = cluster(s)?;
                let mut c = current.clone();
                c.heartbeat_period_ms = heartbeat.unwrap_or(c.heartbeat_period_ms);
                c.cert_expiry_secs = cert_expiry.unwrap_or(c.cert_expiry_secs);
                Ok(if c == *current {
                    vec![]
                } else {
                    vec![Txn::update(c)]
                })
            })
            .await
            .map_err(store_status)?;
        tracing::info!(?heartbeat, ?cert_expiry, "cluster settings updated");
        Ok(Response::new(self.cluster_info()?))
    }
}

impl ControlService {
    fn cluster_info(&self) -> Result<pb::GetClusterResponse, Status> {
        let raft = self.store.status();
        self.store
            .read(|s| {
                cluster(s).map(|c| {
                    let ca_digest = rswarm_ca::ca::first_cert_der(&c.root_ca_cert_pem)
                        .map(|d| rswarm_ca::token::digest_hex(&rswarm_ca::token::ca_digest(&d)))
                        .unwrap_or_default();
                    pb::GetClusterResponse {
                        id: c.cluster_id.clone(),
                        created_at: rfc3339_ms(c.meta.created_at_ms),
                        heartbeat_period_ms: c.heartbeat_period_ms,
                        cert_expiry_secs: c.cert_expiry_secs,
                        nodes: s.list::<Node>().count() as u64,
                        managers: s
                            .list::<Node>()
                            .filter(|n| n.role() == NodeRole::Manager)
                            .count() as u64,
                        raft_index: raft.applied,
                        ca_digest,
                        default_addr_pool: c.addr_pools().iter().map(|p| p.to_string()).collect(),
                        subnet_size: c.subnet_size().into(),
                        data_path_port: c.data_path_port().into(),
                    }
                })
            })
            .map_err(store_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::Txn;

    fn state(nodes: &[(&str, &str)]) -> StateMachine {
        let mut s = StateMachine::new();
        let ops = nodes
            .iter()
            .map(|(id, host)| {
                Txn::create(Node {
                    id: (*id).into(),
                    hostname: (*host).into(),
                    ..Node::default()
                })
            })
            .collect();
        s.apply(1, &Txn::new(ops)).unwrap();
        s
    }

    #[test]
    fn find_by_id_prefix_and_hostname() {
        let s = state(&[("abc1", "h1"), ("abd2", "h2"), ("xyz", "h2")]);
        assert_eq!(find_node(&s, "abc1").unwrap().id, "abc1");
        assert_eq!(find_node(&s, "abc").unwrap().id, "abc1");
        assert_eq!(find_node(&s, "h1").unwrap().id, "abc1");
        assert_eq!(
            find_node(&s, "ab").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            find_node(&s, "h2").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            find_node(&s, "nope").unwrap_err().code(),
            tonic::Code::NotFound
        );
    }

    #[test]
    fn filters_match_like_docker() {
        let mut s = state(&[("abc1", "web-1"), ("abd2", "db-1")]);
        let mut db = s.get::<Node>("abd2").cloned().unwrap();
        db.labels.insert("zone".into(), "a".into());
        db.role = Some(NodeRole::Manager);
        s.apply(2, &Txn::new(vec![Txn::update(db)])).unwrap();
        let pick = |filters: &[&str]| -> Vec<String> {
            let f = NodeFilter::parse(&filters.iter().map(|f| f.to_string()).collect::<Vec<_>>())
                .unwrap();
            s.list::<Node>()
                .filter(|n| f.matches(n))
                .map(|n| n.id.clone())
                .collect()
        };
        assert_eq!(pick(&[]), ["abc1", "abd2"]);
        assert_eq!(pick(&["role=manager"]), ["abd2"]);
        assert_eq!(pick(&["role=worker"]), ["abc1"]);
        assert_eq!(pick(&["name=web"]), ["abc1"]);
        assert_eq!(pick(&["id=ab"]), ["abc1", "abd2"]);
        assert_eq!(
            pick(&["id=abc", "id=abd"]),
            ["abc1", "abd2"],
            "values of one key: any"
        );
        assert_eq!(
            pick(&["id=ab", "role=worker"]),
            ["abc1"],
            "different keys: all"
        );
        assert_eq!(pick(&["label=zone"]), ["abd2"]);
        assert_eq!(pick(&["node.label=zone=a"]), ["abd2"]);
        assert!(pick(&["node.label=zone=b"]).is_empty());
        assert!(pick(&["membership=pending"]).is_empty());
        for bad in ["role=boss", "colour=red", "nokey"] {
            assert_eq!(
                NodeFilter::parse(&[bad.to_string()]).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn leader_is_marked() {
        let n = Node {
            role: Some(NodeRole::Manager),
            raft_id: 7,
            ..Node::default()
        };
        let status = BackendStatus {
            leader: Some(7),
            ..BackendStatus::default()
        };
        assert_eq!(node_to_pb(&n, &status).manager_status, "leader");
        let w = Node::default();
        assert_eq!(node_to_pb(&w, &status).manager_status, "");
    }
}
