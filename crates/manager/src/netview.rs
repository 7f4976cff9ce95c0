//! What each node must know about overlay networks: the networks of its tasks, every endpoint on
//! them (for FDB and neighbour entries and DNS), and the services on them (for DNS and virtual
//! IPs). [`node_table`] computes it from the store (pure); the dispatcher's `Networks` stream sends
//! it whole to the node whenever it changes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use rswarm_api::dispatcher::v1 as pb;
use rswarm_store::{
    Change, Cluster, EndpointMode, Network, Node, Object, Service, StateMachine, Task, TaskState,
};

/// The IPv4 address in a node's advertise address (`ip` or `ip:port`).
pub fn vtep_of(node: &Node) -> Option<String> {
    let ip: IpAddr = node
        .addr
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| node.addr.parse::<IpAddr>())
        .ok()?;
    ip.is_ipv4().then(|| ip.to_string())
}

/// The table node `node_id` needs. Networks are those on which one of the node's tasks holds an
/// address; a node without such tasks gets an empty table (and removes its devices).
pub fn node_table(s: &StateMachine, node_id: &str) -> pb::NetworkTable {
    let port = s.get::<Cluster>(Cluster::ID).map_or(
        rswarm_store::network::DEFAULT_DATA_PATH_PORT,
        Cluster::data_path_port,
    );
    let placed = |t: &&Task| !t.node_id.is_empty() && t.holds_addresses();
    let mine: BTreeSet<&str> = s
        .list::<Task>()
        .filter(placed)
        .filter(|t| t.node_id == node_id)
        .flat_map(|t| t.networks.iter().map(|a| a.network_id.as_str()))
        .collect();
    let mut networks = Vec::with_capacity(mine.len());
    for id in mine {
        let Some(n) = s.get::<Network>(id) else {
            continue;
        };
        networks.push(network_entry(s, n, placed));
    }
    pb::NetworkTable {
        networks,
        data_path_port: port.into(),
    }
}

/// A network's own fields, without endpoints and services.
pub fn network_header(n: &Network) -> pb::NodeNetwork {
    pb::NodeNetwork {
        id: n.id.clone(),
        name: n.spec.name.clone(),
        vni: n.vni,
        subnet: n.subnet.to_string(),
        gateway: n.gateway.to_string(),
        mtu: n.spec.mtu,
        internal: n.spec.internal,
        endpoints: Vec::new(),
        services: Vec::new(),
    }
}

fn network_entry(
    s: &StateMachine,
    n: &Network,
    placed: impl Fn(&&Task) -> bool,
) -> pb::NodeNetwork {
    let mut endpoints = Vec::new();
    for t in s.list::<Task>().filter(&placed) {
        let Some(a) = t.networks.iter().find(|a| a.network_id == n.id) else {
            continue;
        };
        let Some(vtep) = s.get::<Node>(&t.node_id).and_then(vtep_of) else {
            continue;
        };
        endpoints.push(pb::Endpoint {
            task_id: t.id.clone(),
            ip: a.addr.to_string(),
            node_addr: vtep,
            node_id: t.node_id.clone(),
            task_name: t.name(),
            service_id: t.service_id.clone(),
            running: t.status.state == TaskState::Running && t.desired_state == TaskState::Running,
        });
    }
    let services = s
        .list::<Service>()
        .filter_map(|svc| {
            let cfg = svc.spec.task.networks.iter().find(|c| c.target == n.id)?;
            let vip = match svc.spec.endpoint_mode {
                EndpointMode::Vip => svc
                    .virtual_ips
                    .iter()
                    .find(|v| v.network_id == n.id)
                    .map(|v| v.addr.to_string())
                    .unwrap_or_default(),
                EndpointMode::Dnsrr => String::new(),
            };
            Some(pb::ServiceRecord {
                service_id: svc.id.clone(),
                name: svc.spec.name.clone(),
                aliases: cfg.aliases.clone(),
                vip,
            })
        })
        .collect();
    pb::NodeNetwork {
        endpoints,
        services,
        ..network_header(n)
    }
}

/// Whether a committed change can alter some node's table.
pub fn relevant(c: &Change) -> bool {
    match &*c.object {
        Object::Task(t) => !t.networks.is_empty(),
        Object::Service(s) => !s.spec.task.networks.is_empty() || !s.virtual_ips.is_empty(),
        Object::Network(_) | Object::Node(_) | Object::Cluster(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::{
        NetworkAttachment, NetworkAttachmentConfig, NetworkSpec, Op, ServiceSpec, TaskSpec,
        TaskStatus, Txn,
    };

    fn state() -> StateMachine {
        let mut sm = StateMachine::new();
        let net = |id: &str, subnet: &str, vni| Network {
            id: id.into(),
            meta: Default::default(),
            spec: NetworkSpec {
                name: format!("net-{id}"),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            },
            subnet: subnet.parse().unwrap(),
            gateway: subnet.replace(".0/24", ".1").parse().unwrap(),
            vni,
        };
        let node = |id: &str, addr: &str| Node {
            id: id.into(),
            addr: addr.into(),
            ..Node::default()
        };
        let task = |id: &str, node: &str, net: &str, ip: &str, state| Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "web".into(),
            slot: id[1..].parse().unwrap(),
            node_id: node.into(),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                ..TaskStatus::default()
            },
            networks: vec![NetworkAttachment {
                network_id: net.into(),
                addr: ip.parse().unwrap(),
                aliases: vec![],
            }],
            ..Task::default()
        };
        let mut svc = Service {
            id: "s".into(),
            spec: ServiceSpec {
                name: "web".into(),
                task: TaskSpec {
                    networks: vec![NetworkAttachmentConfig {
                        target: "a".into(),
                        aliases: vec!["www".into()],
                    }],
                    ..TaskSpec::default()
                },
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        svc.virtual_ips = vec![NetworkAttachment {
            network_id: "a".into(),
            addr: "10.0.0.2".parse().unwrap(),
            aliases: vec![],
        }];
        let ops: Vec<Op> = vec![
            Txn::create(net("a", "10.0.0.0/24", 4096)),
            Txn::create(net("b", "10.0.1.0/24", 4097)),
            Txn::create(node("n1", "198.18.0.1")),
            Txn::create(node("n2", "198.18.0.2:4242")),
            Txn::create(node("n3", "198.18.0.3")),
            Txn::create(svc),
            Txn::create(task("t1", "n1", "a", "10.0.0.3", TaskState::Running)),
            Txn::create(task("t2", "n2", "a", "10.0.0.4", TaskState::Assigned)),
            Txn::create(task("t3", "n3", "b", "10.0.1.3", TaskState::Running)),
            Txn::create(task("t4", "n2", "a", "10.0.0.5", TaskState::Failed)),
        ];
        sm.apply(
            1,
            &Txn {
                timestamp_ms: 1,
                ops,
            },
        )
        .unwrap();
        sm
    }

    #[test]
    fn nodes_see_only_their_networks_with_every_endpoint() {
        let s = state();
        let t1 = node_table(&s, "n1");
        assert_eq!(t1.data_path_port, 4789);
        assert_eq!(t1.networks.len(), 1);
        let a = &t1.networks[0];
        assert_eq!((a.vni, a.subnet.as_str()), (4096, "10.0.0.0/24"));
        let eps: Vec<(&str, &str, bool)> = a
            .endpoints
            .iter()
            .map(|e| (e.ip.as_str(), e.node_addr.as_str(), e.running))
            .collect();
        // The failed task holds nothing; the assigned one is programmed before it runs.
        assert_eq!(
            eps,
            vec![
                ("10.0.0.3", "198.18.0.1", true),
                ("10.0.0.4", "198.18.0.2", false)
            ]
        );
        assert_eq!(a.services.len(), 1);
        assert_eq!(a.services[0].vip, "10.0.0.2");
        assert_eq!(a.services[0].aliases, vec!["www".to_string()]);
        let t3 = node_table(&s, "n3");
        assert_eq!(t3.networks.len(), 1);
        assert_eq!(t3.networks[0].vni, 4097);
        assert!(node_table(&s, "nx").networks.is_empty());
    }
}
