//! Who may call what. Every RPC but `GetRootCa` and `JoinNode` needs a certificate from this
//! cluster's CA whose node has not been removed; the control and raft APIs need the manager role
//! (or the manager's own root-only unix socket).

use rswarm_ca::transport::{is_local_socket, peer_of};
use rswarm_ca::{PeerIdentity, Role};
use rswarm_store::{Cluster, Store};
use tonic::{Request, Status};

/// Checks callers against the cluster state.
#[derive(Clone)]
pub struct Auth {
    store: Store,
}

/// An authorised caller.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Through the daemon's root-only unix socket.
    Local,
    Node(PeerIdentity),
}

impl Auth {
    pub fn new(store: Store) -> Self {
        Auth { store }
    }

    /// A node of this cluster (any role) that has not been removed.
    pub fn node<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        let peer = peer_of(req)
            .and_then(|i| i.peer.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a client certificate of this cluster is required; use a node's certificate files (--tlscacert, --tlscert, --tlskey)",
                )
            })?;
        let (cluster_id, removed) = self.store.read(|s| {
            s.get::<Cluster>(Cluster::ID)
                .map_or((String::new(), false), |c| {
                    (
                        c.cluster_id.clone(),
                        c.removed_nodes.contains(&peer.node_id),
                    )
                })
        });
        if peer.cluster_id != cluster_id {
            return Err(Status::permission_denied(format!(
                "the certificate belongs to cluster {}, not to this cluster",
                peer.cluster_id
            )));
        }
        if removed {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster; run `rswarm leave` on it and join again",
                peer.node_id
            )));
        }
        Ok(peer)
    }

    /// A manager: the local socket, or a manager certificate.
    pub fn manager<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if is_local_socket(req) {
            return Ok(Caller::Local);
        }
        let peer = self.node(req)?;
        if peer.role != Role::Manager {
            return Err(Status::permission_denied(
                "this node is not a swarm manager: worker nodes can't be used to view or modify cluster state; run the command on a manager node",
            ));
        }
        Ok(Caller::Node(peer))
    }

    /// A manager certificate (not the local socket): for manager-to-manager APIs.
    pub fn manager_node<T>(&self, req: &Request<T>) -> Result<PeerIdentity, Status> {
        let peer = self.node(req)?;
        if peer.role != Role::Manager {
            return Err(Status::permission_denied("only managers may call this API"));
        }
        Ok(peer)
    }
}
