//! The certificate authority service: root CA download, joins, renewals.

use std::time::{Duration, UNIX_EPOCH};

use rswarm_agent::ids::new_id;
use rswarm_api::ca::v1::certificate_authority_server::CertificateAuthority;
use rswarm_api::ca::v1::{
    GetRootCaRequest, GetRootCaResponse, JoinNodeRequest, JoinNodeResponse,
    RenewNodeCertificateRequest, RenewNodeCertificateResponse,
};
use rswarm_ca::transport::peer_of;
use rswarm_ca::{JoinToken, NodeSubject, Role, RootCa};
use rswarm_store::{Cluster, Node, NodeRole, NodeStatus, Store, StoreError, Txn};
use tonic::{Request, Response, Status};

use crate::auth::Auth;
use crate::error::store_status;
use crate::manager_addrs;
use crate::monitor::Description;

pub struct CaService {
    store: Store,
    auth: Auth,
}

impl CaService {
    pub fn new(store: Store) -> Self {
        CaService {
            auth: Auth::new(store.clone()),
            store,
        }
    }

    fn cluster(&self) -> Result<Cluster, Status> {
        self.store
            .get::<Cluster>(Cluster::ID)
            .ok_or_else(|| Status::unavailable("the cluster is not initialised yet"))
    }
}

fn root_ca(cluster: &Cluster) -> Result<RootCa, Status> {
    RootCa::from_pem(&cluster.root_ca_cert_pem, &cluster.root_ca_key_pem)
        .map_err(|e| Status::internal(format!("the cluster's root CA is unusable: {e}")))
}

fn not_after_secs(cert_pem: &str) -> u64 {
    rswarm_ca::ca::parse_cert_pem(cert_pem)
        .ok()
        .and_then(|i| i.not_after.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Which role a presented token grants, comparing secrets in constant time.
fn token_role(presented: &JoinToken, cluster: &Cluster) -> Option<Role> {
    let matches = |stored: &str| {
        JoinToken::parse(stored)
            .map(|t| t.ca_digest() == presented.ca_digest() && t.secret_matches(presented))
            .unwrap_or(false)
    };
    if matches(&cluster.worker_token) {
        Some(Role::Worker)
    } else if matches(&cluster.manager_token) {
        Some(Role::Manager)
    } else {
        None
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn get_root_ca(
        &self,
        _req: Request<GetRootCaRequest>,
    ) -> Result<Response<GetRootCaResponse>, Status> {
        Ok(Response::new(GetRootCaResponse {
            ca_cert_pem: self.cluster()?.root_ca_cert_pem,
        }))
    }

    async fn join_node(
        &self,
        req: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeResponse>, Status> {
        let remote_ip = peer_of(&req)
            .and_then(|i| i.remote_addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let r = req.into_inner();
        let token = JoinToken::parse(&r.token)
            .map_err(|e| Status::invalid_argument(format!("invalid join token: {e}")))?;
        let cluster = self.cluster()?;
        let role = token_role(&token, &cluster).ok_or_else(|| {
            Status::permission_denied(
                "invalid join token: it was rotated or belongs to another cluster; get a current one with `rswarm join-token worker` on a manager",
            )
        })?;
        if role == Role::Manager {
            return Err(Status::unimplemented(
                "joining as a manager is not supported yet: this cluster runs a single manager; join this node as a worker (`rswarm join-token worker`)",
            ));
        }
        let ca = root_ca(&cluster)?;
        let node_id = new_id();
        let subject = NodeSubject {
            node_id: node_id.clone(),
            role,
            cluster_id: cluster.cluster_id.clone(),
        };
        let cert_pem = ca
            .sign_csr(
                &r.csr_pem,
                &subject,
                Duration::from_secs(cluster.cert_expiry_secs),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut node = Node {
            id: node_id.clone(),
            role: Some(NodeRole::Worker),
            status: NodeStatus::Unknown,
            ..Node::default()
        };
        Description::new(
            r.hostname,
            r.advertise_addr,
            remote_ip,
            (r.os, r.arch),
            r.engine_version,
            not_after_secs(&cert_pem),
        )
        .apply_to(&mut node);
        self.store
            .commit(Txn::new(vec![Txn::create(node)]))
            .await
            .map_err(store_status)?;
        tracing::info!(%node_id, %role, "node joined");
        Ok(Response::new(JoinNodeResponse {
            node_id,
            role: role.to_string(),
            cluster_id: cluster.cluster_id,
            cert_pem,
            ca_cert_pem: cluster.root_ca_cert_pem,
            manager_addrs: self.store.read(manager_addrs),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let peer = self.auth.node(&req)?;
        let cluster = self.cluster()?;
        let node = self
            .store
            .get::<Node>(&peer.node_id)
            .ok_or_else(|| Status::permission_denied("node was removed from the cluster"))?;
        // The store decides the role, so a promotion or demotion takes effect at renewal.
        let role = match node.role() {
            NodeRole::Manager => Role::Manager,
            NodeRole::Worker => Role::Worker,
        };
        let subject = NodeSubject {
            node_id: peer.node_id.clone(),
            role,
            cluster_id: cluster.cluster_id.clone(),
        };
        let ca = root_ca(&cluster)?;
        let cert_pem = ca
            .sign_csr(
                &req.get_ref().csr_pem,
                &subject,
                Duration::from_secs(cluster.cert_expiry_secs),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let not_after = not_after_secs(&cert_pem);
        self.store
            .update(|s| {
                let Some(n) = s.get::<Node>(&peer.node_id) else {
                    return Err(StoreError::Invalid(
                        "node was removed from the cluster".into(),
                    ));
                };
                let mut n = n.clone();
                n.cert_not_after = not_after;
                Ok(vec![Txn::update(n)])
            })
            .await
            .map_err(store_status)?;
        tracing::info!(node_id = %peer.node_id, "node certificate renewed");
        Ok(Response::new(RenewNodeCertificateResponse {
            cert_pem,
            ca_cert_pem: cluster.root_ca_cert_pem,
        }))
    }
}
