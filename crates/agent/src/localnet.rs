//! The node's own view of networks, as `docker network ls` and `docker network inspect` show it
//! on any node of a swarm, workers included:
//! - the predefined local networks `bridge`, `host` and `none`, each with this node's running
//!   containers on it;
//! - the cluster's overlay networks this node takes part in (those of the managers' latest table,
//!   and those a running container of the node is on), with every endpoint the table knows and
//!   this node's containers named as they are here.
//!
//! [`node_networks`] is pure (facts in, API networks out); [`NetworksService`] gathers the facts
//! and serves them on the local socket.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rswarm_api::dispatcher::v1::{NetworkTable, NodeNetwork};
use rswarm_api::local::v1::networks_server::Networks;
use rswarm_api::local::v1::{ListNodeNetworksRequest, ListNodeNetworksResponse};
use rswarm_api::types::v1::{Network, NetworkEndpoint, NetworkPeer, NetworkSpec};
use rswarm_network::{BridgeConfig, NetworkMode};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::engine::{ContainerRecord, Engine};
use crate::node::NodeContext;
use crate::worker::{LABEL_SERVICE_NAME, LABEL_TASK_ID};

/// The scope of a node's own networks.
pub const LOCAL_SCOPE: &str = "local";
/// The scope of the cluster's networks.
pub const SWARM_SCOPE: &str = "swarm";
/// The predefined local networks: (name, driver), as Docker names them.
pub const PREDEFINED: [(&str, &str); 3] =
    [("bridge", "bridge"), ("host", "host"), ("none", "null")];

/// What the node knows, for [`node_networks`].
pub struct NodeFacts<'a> {
    pub node_id: &'a str,
    /// When the node's local networks came to be (RFC 3339): its state dir's creation.
    pub created_at: &'a str,
    pub bridge: &'a BridgeConfig,
    pub gateway: Ipv4Addr,
    /// Every container of the node; only running ones are on a network.
    pub containers: &'a [ContainerRecord],
    /// The managers' latest network table for this node.
    pub table: Option<&'a NetworkTable>,
}

/// A local network's id: 64 hex digits, stable for the node (Docker's are random per daemon and
/// kept; these are derived from the node id so they need no state).
pub fn local_id(node_id: &str, name: &str) -> String {
    hex::encode(Sha256::digest(format!("{node_id}/{name}").as_bytes()))
}

/// The node's networks: `bridge`, `host`, `none`, then its overlay networks by id.
pub fn node_networks(f: &NodeFacts<'_>) -> Vec<Network> {
    let running: Vec<&ContainerRecord> = f.containers.iter().filter(|c| c.is_running()).collect();
    let mut out: Vec<Network> = PREDEFINED
        .iter()
        .map(|(name, driver)| local_network(f, &running, name, driver))
        .collect();
    let mut overlays: BTreeMap<&str, Overlay<'_>> = BTreeMap::new();
    for n in f.table.map(|t| t.networks.as_slice()).unwrap_or_default() {
        overlays.entry(n.id.as_str()).or_default().table = Some(n);
    }
    for c in &running {
        for o in &c.overlays {
            let entry = overlays.entry(o.network_id.as_str()).or_default();
            let mac = c
                .overlay_attachments
                .iter()
                .find(|a| a.vni == o.vni)
                .map(|a| a.mac.clone())
                .unwrap_or_else(|| rswarm_network::mac_for_ip(o.ip));
            entry.local.push((c, o, mac));
        }
    }
    out.extend(
        overlays
            .into_iter()
            .map(|(id, o)| overlay_network(f, id, &o)),
    );
    out
}

fn local_network(
    f: &NodeFacts<'_>,
    running: &[&ContainerRecord],
    name: &str,
    driver: &str,
) -> Network {
    let (subnet, gateway, mtu) = if name == "bridge" {
        (
            f.bridge.subnet.trunc().to_string(),
            f.gateway.to_string(),
            f.bridge.mtu,
        )
    } else {
        (String::new(), String::new(), 0)
    };
    let endpoints = running
        .iter()
        .filter_map(|c| match (&c.network, name) {
            (NetworkMode::Bridge, "bridge") => c
                .attachment
                .as_ref()
                .map(|a| endpoint(f, c, format!("{}/{}", a.ip, a.prefix_len), a.mac.clone())),
            (NetworkMode::Host, "host") | (NetworkMode::None, "none") => {
                Some(endpoint(f, c, String::new(), String::new()))
            }
            _ => None,
        })
        .collect();
    let mut options = std::collections::HashMap::new();
    if name == "bridge" {
        for (k, v) in [
            ("com.docker.network.bridge.default_bridge", "true"),
            ("com.docker.network.bridge.enable_ip_masquerade", "true"),
            ("com.docker.network.bridge.host_binding_ipv4", "0.0.0.0"),
        ] {
            options.insert(k.to_string(), v.to_string());
        }
        options.insert(
            "com.docker.network.bridge.name".into(),
            f.bridge.bridge_name.clone(),
        );
        options.insert("com.docker.network.driver.mtu".into(), mtu.to_string());
    }
    Network {
        id: local_id(f.node_id, name),
        spec: Some(NetworkSpec {
            name: name.into(),
            driver: driver.into(),
            subnet: subnet.clone(),
            gateway: gateway.clone(),
            ..NetworkSpec::default()
        }),
        subnet,
        gateway,
        created_at: f.created_at.into(),
        endpoints,
        scope: LOCAL_SCOPE.into(),
        options,
        ..Network::default()
    }
}

/// This node's container `c` as an endpoint.
fn endpoint(f: &NodeFacts<'_>, c: &ContainerRecord, addr: String, mac: String) -> NetworkEndpoint {
    NetworkEndpoint {
        task_id: c.labels.get(LABEL_TASK_ID).cloned().unwrap_or_default(),
        name: c.name.clone(),
        container_id: c.id.clone(),
        node_id: f.node_id.into(),
        addr,
        mac,
        service: c
            .labels
            .get(LABEL_SERVICE_NAME)
            .cloned()
            .unwrap_or_default(),
    }
}

/// One overlay network as the node knows it.
#[derive(Default)]
struct Overlay<'a> {
    table: Option<&'a NodeNetwork>,
    /// This node's running containers on it, with their request and MAC.
    local: Vec<(
        &'a ContainerRecord,
        &'a crate::engine::OverlayRequest,
        String,
    )>,
}

fn overlay_network(f: &NodeFacts<'_>, id: &str, o: &Overlay<'_>) -> Network {
    let t = o.table.cloned().unwrap_or_default();
    let first = o.local.first().map(|(_, r, _)| *r);
    let name = if t.name.is_empty() {
        first.map(|r| r.name.clone()).unwrap_or_default()
    } else {
        t.name.clone()
    };
    let subnet = if t.subnet.is_empty() {
        first
            .map(|r| r.subnet.trunc().to_string())
            .unwrap_or_default()
    } else {
        t.subnet.clone()
    };
    let prefix = subnet
        .split_once('/')
        .map(|(_, p)| p.to_string())
        .unwrap_or_else(|| "32".into());
    let vni = if t.vni == 0 {
        first.map_or(0, |r| r.vni)
    } else {
        t.vni
    };
    let service_name = |service_id: &str| {
        t.services
            .iter()
            .find(|s| s.service_id == service_id)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    };
    let mut endpoints: Vec<NetworkEndpoint> = Vec::new();
    let mut peers: BTreeMap<&str, &str> = BTreeMap::new();
    for e in &t.endpoints {
        peers.insert(e.node_id.as_str(), e.node_addr.as_str());
        let mine = o
            .local
            .iter()
            .find(|(_, r, _)| r.ip.to_string() == e.ip && e.node_id == f.node_id);
        endpoints.push(match mine {
            Some((c, _, mac)) => NetworkEndpoint {
                task_id: e.task_id.clone(),
                service: service_name(&e.service_id),
                ..endpoint(f, c, format!("{}/{prefix}", e.ip), mac.clone())
            },
            None => NetworkEndpoint {
                task_id: e.task_id.clone(),
                name: e.task_name.clone(),
                container_id: String::new(),
                node_id: e.node_id.clone(),
                addr: format!("{}/{prefix}", e.ip),
                mac: e
                    .ip
                    .parse()
                    .map(rswarm_network::mac_for_ip)
                    .unwrap_or_default(),
                service: service_name(&e.service_id),
            },
        });
    }
    // Containers of this node the table does not list (yet, or any more).
    for (c, r, mac) in &o.local {
        if !endpoints.iter().any(|e| e.container_id == c.id) {
            endpoints.push(endpoint(
                f,
                c,
                format!("{}/{}", r.ip, r.subnet.prefix_len()),
                mac.clone(),
            ));
        }
    }
    endpoints.sort_by(|a, b| (&a.node_id, &a.name).cmp(&(&b.node_id, &b.name)));
    let mut services: Vec<String> = t.services.iter().map(|s| s.name.clone()).collect();
    services.sort();
    services.dedup();
    Network {
        id: id.into(),
        spec: Some(NetworkSpec {
            name,
            driver: "overlay".into(),
            subnet: subnet.clone(),
            gateway: t.gateway.clone(),
            attachable: t.attachable,
            internal: t.internal,
            mtu: t.mtu,
            labels: t.labels.clone(),
        }),
        subnet,
        gateway: t.gateway.clone(),
        vni,
        created_at: t.created_at.clone(),
        services,
        tasks: t
            .endpoints
            .iter()
            .filter(|e| !e.service_id.is_empty())
            .count() as u64,
        endpoints,
        // The table knows each node by id and address only.
        peers: peers
            .into_iter()
            .map(|(node_id, addr)| NetworkPeer {
                node_id: node_id.into(),
                hostname: node_id.into(),
                addr: addr.into(),
            })
            .collect(),
        scope: SWARM_SCOPE.into(),
        ..Network::default()
    }
}

/// Serves `Networks` on the local socket.
pub struct NetworksService {
    ctx: Arc<NodeContext>,
    engine: Engine,
}

impl NetworksService {
    pub fn new(ctx: Arc<NodeContext>, engine: Engine) -> Self {
        NetworksService { ctx, engine }
    }
}

/// When `dir` was made (its modification time where the file system keeps no birth time).
fn created_at(dir: &std::path::Path) -> String {
    std::fs::metadata(dir)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Networks for NetworksService {
    async fn list(
        &self,
        _req: Request<ListNodeNetworksRequest>,
    ) -> Result<Response<ListNodeNetworksResponse>, Status> {
        let node_id = self.ctx.config().node_id;
        let (bridge, gateway) = self.engine.bridge_config();
        let containers = self.engine.list(true);
        let table = self.ctx.networks.borrow().clone();
        let created = created_at(self.ctx.state_dir.path());
        let networks = node_networks(&NodeFacts {
            node_id: &node_id,
            created_at: &created,
            bridge: &bridge,
            gateway,
            containers: &containers,
            table: table.as_deref(),
        });
        Ok(Response::new(ListNodeNetworksResponse { networks }))
    }
}

#[cfg(test)]
mod tests {
    use rswarm_api::dispatcher::v1::{Endpoint, ServiceRecord};
    use rswarm_network::{Attachment, OverlayAttachment};

    use super::*;
    use crate::engine::{OverlayRequest, Status};

    const ME: &str = "node1";

    fn record(id: &str, name: &str, network: NetworkMode, running: bool) -> ContainerRecord {
        let mut r = ContainerRecord::for_test(id, name, network);
        if running {
            r.state.status = Status::Running;
        }
        r
    }

    fn on_bridge(mut r: ContainerRecord, ip: &str) -> ContainerRecord {
        let ip: Ipv4Addr = ip.parse().unwrap();
        r.attachment = Some(Attachment {
            container_id: r.id.clone(),
            ip,
            prefix_len: 16,
            gateway: "10.213.0.1".parse().unwrap(),
            mac: rswarm_network::mac_for_ip(ip),
            host_veth: "rvx".into(),
            ports: Vec::new(),
        });
        r
    }

    fn on_overlay(mut r: ContainerRecord, network: &str, vni: u32, ip: &str) -> ContainerRecord {
        let ip: Ipv4Addr = ip.parse().unwrap();
        r.overlays.push(OverlayRequest {
            network_id: network.into(),
            name: format!("{network}-name"),
            vni,
            subnet: "10.0.1.0/24".parse().unwrap(),
            mtu: 0,
            ip,
            local_ip: "198.18.0.1".parse().unwrap(),
            port: 4789,
            cluster_attachment: None,
            aliases: Vec::new(),
        });
        r.overlay_attachments.push(OverlayAttachment {
            vni,
            container_id: r.id.clone(),
            ip,
            prefix_len: 24,
            ifname: "eth1".into(),
            host_veth: "rv0000000".into(),
            mac: "02:42:0a:00:01:05".into(),
        });
        r
    }

    fn endpoint(task: &str, ip: &str, node: &str, addr: &str, service: &str) -> Endpoint {
        Endpoint {
            task_id: task.into(),
            ip: ip.into(),
            node_addr: addr.into(),
            node_id: node.into(),
            task_name: format!("web.{task}"),
            service_id: service.into(),
            running: true,
            ..Endpoint::default()
        }
    }

    fn view(containers: &[ContainerRecord], table: Option<&NetworkTable>) -> Vec<Network> {
        let bridge = BridgeConfig::for_state_dir(std::path::Path::new("/var/lib/rswarm"));
        node_networks(&NodeFacts {
            node_id: ME,
            created_at: "2026-11-29T10:00:00Z",
            bridge: &bridge,
            gateway: "10.213.0.1".parse().unwrap(),
            containers,
            table,
        })
    }

    fn find<'a>(v: &'a [Network], name: &str) -> &'a Network {
        v.iter()
            .find(|n| n.spec.as_ref().unwrap().name == name)
            .unwrap_or_else(|| panic!("no network {name} in {v:?}"))
    }

    #[test]
    fn local_networks_have_stable_ids_and_this_nodes_running_containers() {
        let containers = vec![
            on_bridge(record("c1", "web", NetworkMode::Bridge, true), "10.213.0.5"),
            on_bridge(
                record("c2", "old", NetworkMode::Bridge, false),
                "10.213.0.6",
            ),
            record("c3", "agent", NetworkMode::Host, true),
            record("c4", "quiet", NetworkMode::None, true),
            record("c5", "sidecar", NetworkMode::Container("c1".into()), true),
        ];
        let v = view(&containers, None);
        let names: Vec<&str> = v
            .iter()
            .map(|n| n.spec.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(names, ["bridge", "host", "none"]);

        let bridge = find(&v, "bridge");
        assert_eq!(bridge.scope, LOCAL_SCOPE);
        assert_eq!(bridge.id, local_id(ME, "bridge"));
        assert_eq!(bridge.id.len(), 64);
        assert_ne!(bridge.id, local_id("node2", "bridge"));
        assert_eq!(bridge.spec.as_ref().unwrap().driver, "bridge");
        assert_eq!(
            (bridge.subnet.as_str(), bridge.gateway.as_str()),
            ("10.213.0.0/16", "10.213.0.1")
        );
        assert_eq!(bridge.created_at, "2026-11-29T10:00:00Z");
        assert!(bridge.options["com.docker.network.bridge.name"].starts_with("rsw"));
        assert_eq!(bridge.options["com.docker.network.driver.mtu"], "1500");
        assert_eq!(
            bridge.endpoints.len(),
            1,
            "the stopped one is on no network"
        );
        let e = &bridge.endpoints[0];
        assert_eq!(
            (e.name.as_str(), e.container_id.as_str(), e.node_id.as_str()),
            ("web", "c1", ME)
        );
        assert_eq!(e.addr, "10.213.0.5/16");
        assert_eq!(
            e.mac,
            rswarm_network::mac_for_ip("10.213.0.5".parse().unwrap())
        );

        let host = find(&v, "host");
        assert_eq!(host.spec.as_ref().unwrap().driver, "host");
        assert_eq!(host.endpoints.len(), 1);
        assert_eq!(
            (
                host.endpoints[0].name.as_str(),
                host.endpoints[0].addr.as_str()
            ),
            ("agent", "")
        );
        assert!(host.subnet.is_empty() && host.options.is_empty());
        let none = find(&v, "none");
        assert_eq!(none.spec.as_ref().unwrap().driver, "null");
        assert_eq!(none.endpoints[0].name, "quiet");
    }

    #[test]
    fn overlays_come_from_the_table_with_this_nodes_containers_named_as_here() {
        let mut task = on_overlay(
            record("c1", "web.1.t1", NetworkMode::Bridge, true),
            "net1",
            4097,
            "10.0.1.5",
        );
        task.labels.insert(LABEL_TASK_ID.into(), "t1".into());
        task.labels.insert(LABEL_SERVICE_NAME.into(), "web".into());
        let table = NetworkTable {
            networks: vec![
                NodeNetwork {
                    id: "net1".into(),
                    name: "front".into(),
                    vni: 4097,
                    subnet: "10.0.1.0/24".into(),
                    gateway: "10.0.1.1".into(),
                    attachable: true,
                    created_at: "2026-11-29T11:00:00Z".into(),
                    endpoints: vec![
                        endpoint("t2", "10.0.1.6", "node2", "198.18.0.2", "s1"),
                        endpoint("t1", "10.0.1.5", ME, "198.18.0.1", "s1"),
                    ],
                    services: vec![ServiceRecord {
                        service_id: "s1".into(),
                        name: "web".into(),
                        ..ServiceRecord::default()
                    }],
                    ..NodeNetwork::default()
                },
                // Assigned, no container yet: the node takes part in it all the same.
                NodeNetwork {
                    id: "net2".into(),
                    name: "back".into(),
                    vni: 4098,
                    subnet: "10.0.2.0/24".into(),
                    internal: true,
                    ..NodeNetwork::default()
                },
            ],
            ..NetworkTable::default()
        };
        let v = view(&[task.clone()], Some(&table));
        assert_eq!(v.len(), 5);
        let front = find(&v, "front");
        assert_eq!(
            (front.id.as_str(), front.scope.as_str()),
            ("net1", SWARM_SCOPE)
        );
        let sp = front.spec.as_ref().unwrap();
        assert_eq!(sp.driver, "overlay");
        assert!(sp.attachable && !sp.internal);
        assert_eq!((front.vni, front.gateway.as_str()), (4097, "10.0.1.1"));
        assert_eq!(front.created_at, "2026-11-29T11:00:00Z");
        assert_eq!(front.services, ["web"]);
        assert_eq!(front.tasks, 2);
        assert_eq!(front.endpoints.len(), 2);
        let mine = front.endpoints.iter().find(|e| e.node_id == ME).unwrap();
        assert_eq!(
            (
                mine.name.as_str(),
                mine.container_id.as_str(),
                mine.task_id.as_str()
            ),
            ("web.1.t1", "c1", "t1")
        );
        assert_eq!(
            (mine.addr.as_str(), mine.mac.as_str()),
            ("10.0.1.5/24", "02:42:0a:00:01:05")
        );
        assert_eq!(mine.service, "web");
        let theirs = front
            .endpoints
            .iter()
            .find(|e| e.node_id == "node2")
            .unwrap();
        assert_eq!(
            (theirs.name.as_str(), theirs.container_id.as_str()),
            ("web.t2", "")
        );
        assert_eq!(
            theirs.mac,
            rswarm_network::mac_for_ip("10.0.1.6".parse().unwrap())
        );
        let peers: Vec<(&str, &str)> = front
            .peers
            .iter()
            .map(|p| (p.node_id.as_str(), p.addr.as_str()))
            .collect();
        assert_eq!(peers, [(ME, "198.18.0.1"), ("node2", "198.18.0.2")]);
        assert!(find(&v, "back").spec.as_ref().unwrap().internal);

        // No table yet (a restarted agent before its session): the records say enough.
        let v = view(&[task], None);
        let front = find(&v, "net1-name");
        assert_eq!((front.id.as_str(), front.vni), ("net1", 4097));
        assert_eq!(front.subnet, "10.0.1.0/24");
        assert_eq!(front.endpoints.len(), 1);
        assert_eq!(front.endpoints[0].container_id, "c1");
        assert_eq!(front.endpoints[0].addr, "10.0.1.5/24");
    }

    #[test]
    fn a_stopped_containers_overlay_is_not_the_nodes() {
        let stopped = on_overlay(
            record("c1", "db", NetworkMode::Bridge, false),
            "net1",
            4097,
            "10.0.1.5",
        );
        assert_eq!(view(&[stopped], None).len(), 3);
    }
}
