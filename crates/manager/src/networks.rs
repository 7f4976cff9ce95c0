//! The network half of the control API: create (the leader allocates subnet, gateway and VXLAN
//! id), inspect, list and remove overlay networks; and how services name their networks.

use rswarm_api::control::v1 as pb;
use rswarm_store::{
    Cluster, Network, NetworkAttachmentConfig, Service, ServiceSpec, StateMachine, Store,
    StoreError, Task, Txn,
};
use tonic::Status;

use crate::convert::{network_spec_from_pb, network_to_pb};
use crate::error::store_status;

/// Names Docker reserves for its local networks.
const RESERVED: [&str; 3] = ["bridge", "host", "none"];

/// Finds a network by id, name, or unique id prefix.
pub fn find_network<'a>(s: &'a StateMachine, key: &str) -> Result<&'a Network, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("a network name or id is required"));
    }
    if let Some(n) = s.get::<Network>(key) {
        return Ok(n);
    }
    if let Some(n) = s.list::<Network>().find(|n| n.spec.name == key) {
        return Ok(n);
    }
    let by_prefix: Vec<&Network> = s
        .list::<Network>()
        .filter(|n| n.id.starts_with(key))
        .collect();
    match by_prefix.as_slice() {
        [n] => Ok(n),
        [] => Err(Status::not_found(format!("network {key} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "network {key} is ambiguous: more than one network id starts with it; use the name or a longer id"
        ))),
    }
}

/// Docker's rule for network names.
fn check_name(name: &str) -> Result<(), Status> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 64;
    if !ok {
        return Err(Status::invalid_argument(format!(
            "invalid network name {name:?}: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(Status::invalid_argument(format!(
            "network name {name:?} is reserved for a local network; choose another name"
        )));
    }
    Ok(())
}

/// Who uses a network now: service names and the number of tasks holding an address on it.
fn users(s: &StateMachine, n: &Network) -> (Vec<String>, u64) {
    let mut services: Vec<String> = s
        .list::<Service>()
        .filter(|svc| svc.spec.task.networks.iter().any(|c| c.target == n.id))
        .map(|svc| svc.spec.name.clone())
        .collect();
    services.sort();
    let tasks = s
        .list::<Task>()
        .filter(|t| t.holds_addresses() && t.networks.iter().any(|a| a.network_id == n.id))
        .count() as u64;
    (services, tasks)
}

fn to_pb(s: &StateMachine, n: &Network) -> pb::NetworkResponse {
    let (services, tasks) = users(s, n);
    let (endpoints, peers) = endpoints(s, n);
    pb::NetworkResponse {
        network: Some(rswarm_api::types::v1::Network {
            endpoints,
            peers,
            ..network_to_pb(n, services, tasks)
        }),
    }
}

/// The addresses held on `n` by placed tasks and standalone containers (by node, then name),
/// and the nodes they are on (by hostname).
fn endpoints(
    s: &StateMachine,
    n: &Network,
) -> (
    Vec<rswarm_api::types::v1::NetworkEndpoint>,
    Vec<rswarm_api::types::v1::NetworkPeer>,
) {
    use rswarm_api::types::v1::{NetworkEndpoint, NetworkPeer};
    let mut endpoints = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for t in s.list::<Task>() {
        if t.node_id.is_empty() || !t.holds_addresses() {
            continue;
        }
        let Some(a) = t.networks.iter().find(|a| a.network_id == n.id) else {
            continue;
        };
        let service = if t.network_attachment {
            String::new()
        } else {
            s.get::<Service>(&t.service_id)
                .map(|svc| svc.spec.name.clone())
                .unwrap_or_else(|| t.service_name.clone())
        };
        endpoints.push(NetworkEndpoint {
            task_id: t.id.clone(),
            // The container's name on its node (`web.1.<task id>` for a service's task).
            name: if t.network_attachment {
                t.name()
            } else {
                format!("{}.{}", t.name(), t.id)
            },
            container_id: t.status.container_id.clone(),
            node_id: t.node_id.clone(),
            addr: format!("{}/{}", a.addr, n.subnet.prefix_len),
            mac: rswarm_network::mac_for_ip(a.addr),
            service,
        });
        nodes.insert(t.node_id.as_str());
    }
    endpoints.sort_by(|a, b| (&a.node_id, &a.name).cmp(&(&b.node_id, &b.name)));
    let mut peers: Vec<NetworkPeer> = nodes
        .into_iter()
        .filter_map(|id| s.get::<rswarm_store::Node>(id))
        .map(|node| NetworkPeer {
            node_id: node.id.clone(),
            hostname: node.hostname.clone(),
            addr: crate::netview::vtep_of(node).unwrap_or_else(|| node.addr.clone()),
        })
        .collect();
    peers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    (endpoints, peers)
}

pub async fn create(
    store: &Store,
    req: pb::CreateNetworkRequest,
) -> Result<pb::NetworkResponse, Status> {
    let spec = network_spec_from_pb(
        req.spec
            .ok_or_else(|| Status::invalid_argument("a network spec is required"))?,
    )?;
    check_name(&spec.name)?;
    let id = rswarm_agent::ids::new_id();
    store
        .update(|s| {
            let cluster = s
                .get::<Cluster>(Cluster::ID)
                .ok_or_else(|| StoreError::Invalid("the cluster is not initialised".into()))?;
            if let Some(other) = s.list::<Network>().find(|n| n.spec.name == spec.name) {
                return Err(StoreError::Txn(rswarm_store::TxnError::NameConflict {
                    kind: rswarm_store::Kind::Network,
                    name: spec.name.clone(),
                    id: other.id.clone(),
                }));
            }
            let existing: Vec<&Network> = s.list::<Network>().collect();
            let alloc = rswarm_orchestrator::allocate_network(cluster, &existing, &spec)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            Ok(vec![Txn::create(Network {
                id: id.clone(),
                meta: Default::default(),
                spec: spec.clone(),
                subnet: alloc.subnet,
                gateway: alloc.gateway,
                vni: alloc.vni,
            })])
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => Status::failed_precondition(m),
            other => store_status(other),
        })?;
    store.read(|s| {
        let n = s
            .get::<Network>(&id)
            .ok_or_else(|| Status::not_found(format!("network {id} was removed")))?;
        tracing::info!(network = %n.spec.name, id = %n.id, subnet = %n.subnet, vni = n.vni, "network created");
        Ok(to_pb(s, n))
    })
}

pub fn get(store: &Store, key: &str) -> Result<pb::NetworkResponse, Status> {
    store.read(|s| find_network(s, key).map(|n| to_pb(s, n)))
}

pub fn list(store: &Store) -> pb::ListNetworksResponse {
    store.read(|s| pb::ListNetworksResponse {
        networks: s
            .list::<Network>()
            .map(|n| {
                let (services, tasks) = users(s, n);
                network_to_pb(n, services, tasks)
            })
            .collect(),
    })
}

/// Removes a network nobody uses; the store refuses it while a service names it or a task holds
/// an address on it.
pub async fn remove(store: &Store, key: &str) -> Result<pb::RemoveNetworkResponse, Status> {
    let id = store.read(|s| find_network(s, key).map(|n| n.id.clone()))?;
    store
        .update(|s| Ok(s.get::<Network>(&id).map(Txn::delete).into_iter().collect()))
        .await
        .map_err(store_status)?;
    tracing::info!(network = %id, "network removed");
    Ok(pb::RemoveNetworkResponse { id })
}

/// Replaces the network names (or id prefixes) a service spec gives by network ids, refusing
/// unknown networks and a network named twice.
pub fn resolve_networks(s: &StateMachine, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut seen: Vec<String> = Vec::new();
    let mut resolved: Vec<NetworkAttachmentConfig> = Vec::new();
    for cfg in &spec.task.networks {
        let n = find_network(s, &cfg.target).map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                Status::not_found(format!(
                    "network {} not found: create it with `rswarm network create {}` first",
                    cfg.target, cfg.target
                ))
            } else {
                e
            }
        })?;
        if seen.contains(&n.id) {
            return Err(Status::invalid_argument(format!(
                "network {} is attached more than once; give it once with all its aliases",
                n.spec.name
            )));
        }
        seen.push(n.id.clone());
        resolved.push(NetworkAttachmentConfig {
            target: n.id.clone(),
            aliases: cfg.aliases.clone(),
        });
    }
    spec.task.networks = resolved;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker() {
        assert!(check_name("web-net_1.a").is_ok());
        for bad in ["", "-x", "a b", "bridge", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
