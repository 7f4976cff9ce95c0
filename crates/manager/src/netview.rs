//! What each node must know about overlay networks: the networks of its tasks, every endpoint on
//! them (for FDB and neighbour entries and DNS), and the services on them (for DNS and virtual
//! IPs). [`NetView`] computes it from the store for every node at once (pure); the dispatcher's
//! `Networks` stream sends it whole to the node whenever it changes.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rswarm_api::dispatcher::v1 as pb;
use rswarm_store::{
    Change, Cluster, EndpointMode, Network, NetworkAttachment, NetworkAttachmentConfig, Node,
    Object, Service, StateMachine, Task, TaskState,
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

/// Every node's table at one store index, from one pass over the tasks and services
/// (O(tasks + endpoints)); the dispatcher shares one view among all the nodes' streams, so a
/// committed batch costs that pass once instead of once per connected node per network. A view
/// made [`after`](Self::after) another keeps the other's entry (the same allocation) for each
/// network whose entry did not change, so a node's stream tells by pointer whether any of its
/// networks changed, and only nodes on a changed network get a new table.
#[derive(Debug)]
pub struct NetView {
    index: u64,
    data_path_port: u32,
    /// Each network some placed task holds an address on, with all its endpoints and services.
    networks: HashMap<String, Arc<pb::NodeNetwork>>,
    /// The networks of each node's placed tasks.
    nodes: HashMap<String, BTreeSet<String>>,
}

impl NetView {
    pub fn of(s: &StateMachine) -> NetView {
        NetView::after(s, None)
    }

    /// The view of `s`, sharing `prev`'s entries where they are unchanged.
    pub fn after(s: &StateMachine, prev: Option<&NetView>) -> NetView {
        let data_path_port = s.get::<Cluster>(Cluster::ID).map_or(
            rswarm_store::network::DEFAULT_DATA_PATH_PORT,
            Cluster::data_path_port,
        );
        let mut vteps: HashMap<&str, Option<String>> = HashMap::new();
        let mut nodes: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut endpoints: HashMap<&str, Vec<pb::Endpoint>> = HashMap::new();
        for t in s.list::<Task>() {
            if t.node_id.is_empty() || !t.holds_addresses() {
                continue;
            }
            let vtep = vteps
                .entry(t.node_id.as_str())
                .or_insert_with(|| s.get::<Node>(&t.node_id).and_then(vtep_of))
                .clone();
            for (i, a) in t.networks.iter().enumerate() {
                // A task's first address on a network is its endpoint there.
                if t.networks[..i].iter().any(|b| b.network_id == a.network_id) {
                    continue;
                }
                nodes
                    .entry(t.node_id.clone())
                    .or_default()
                    .insert(a.network_id.clone());
                let Some(vtep) = vtep.clone() else {
                    continue;
                };
                endpoints
                    .entry(a.network_id.as_str())
                    .or_default()
                    .push(endpoint(t, a, vtep));
            }
        }
        let used: BTreeSet<&str> = nodes.values().flatten().map(String::as_str).collect();
        let mut services: HashMap<&str, Vec<pb::ServiceRecord>> = HashMap::new();
        for svc in s.list::<Service>() {
            for (i, cfg) in svc.spec.task.networks.iter().enumerate() {
                let id = cfg.target.as_str();
                // The first attachment to a network names the service's aliases there.
                if !used.contains(id) || svc.spec.task.networks[..i].iter().any(|c| c.target == id)
                {
                    continue;
                }
                services
                    .entry(id)
                    .or_default()
                    .push(service_record(svc, cfg, id));
            }
        }
        let networks = used
            .iter()
            .filter_map(|id| s.get::<Network>(id))
            .map(|n| {
                let entry = pb::NodeNetwork {
                    endpoints: endpoints.remove(n.id.as_str()).unwrap_or_default(),
                    services: services.remove(n.id.as_str()).unwrap_or_default(),
                    ..network_header(n)
                };
                let entry = match prev.and_then(|p| p.networks.get(&n.id)) {
                    Some(old) if **old == entry => Arc::clone(old),
                    _ => Arc::new(entry),
                };
                (n.id.clone(), entry)
            })
            .collect();
        NetView {
            index: s.index(),
            data_path_port: data_path_port.into(),
            networks,
            nodes,
        }
    }

    /// The store index this view was computed at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The VXLAN port every node's table carries.
    pub fn data_path_port(&self) -> u32 {
        self.data_path_port
    }

    /// The entries of node `node_id`'s networks, shared with the view.
    pub fn entries(&self, node_id: &str) -> Vec<Arc<pb::NodeNetwork>> {
        self.nodes
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.networks.get(id).cloned())
            .collect()
    }

    /// The table node `node_id` needs. Networks are those on which one of the node's tasks holds
    /// an address; a node without such tasks gets an empty table (and removes its devices).
    pub fn node_table(&self, node_id: &str) -> pb::NetworkTable {
        table(&self.entries(node_id), self.data_path_port)
    }
}

/// A node's table from its networks' entries.
pub fn table(entries: &[Arc<pb::NodeNetwork>], data_path_port: u32) -> pb::NetworkTable {
    pb::NetworkTable {
        networks: entries.iter().map(|e| (**e).clone()).collect(),
        data_path_port,
        partial: false,
        gone: Vec::new(),
    }
}

/// What an agent applies besides whole tables (`NetworksRequest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changes {
    /// Whole tables only.
    Whole,
    /// Partial tables: the networks that changed, whole.
    Networks,
    /// Partial tables, and of a network the node had, only the endpoints that changed.
    Endpoints,
}

impl Changes {
    /// What an agent asked for.
    pub fn of(req: &pb::NetworksRequest) -> Changes {
        match (req.partial_tables, req.partial_endpoints) {
            (false, _) => Changes::Whole,
            (true, false) => Changes::Networks,
            (true, true) => Changes::Endpoints,
        }
    }
}

/// What a node whose last table held `last` (at VXLAN port `last_port`) is sent now that its
/// entries are `entries` (at `port`): `None` when none of its networks changed. With partial
/// `changes` (what the agent applies) and the same port, only the entries that changed (with
/// [`Changes::Endpoints`], of a network it had, only the endpoints that changed) and the ids of
/// the networks it left; its whole table otherwise. Entries of views made one
/// [`after`](NetView::after) the other differ by pointer exactly where they differ by value.
pub fn update(
    last: &[Arc<pb::NodeNetwork>],
    last_port: u32,
    entries: &[Arc<pb::NodeNetwork>],
    port: u32,
    changes: Changes,
) -> Option<pb::NetworkTable> {
    if port == last_port && same_entries(entries, last) {
        return None;
    }
    if changes == Changes::Whole || port != last_port {
        return Some(table(entries, port));
    }
    let before: HashMap<&str, &Arc<pb::NodeNetwork>> =
        last.iter().map(|e| (e.id.as_str(), e)).collect();
    let networks: Vec<pb::NodeNetwork> = entries
        .iter()
        .filter_map(|e| match before.get(e.id.as_str()) {
            Some(b) if Arc::ptr_eq(b, e) => None,
            Some(b) if changes == Changes::Endpoints => Some(endpoint_change(b, e)),
            _ => Some((**e).clone()),
        })
        .collect();
    let now: std::collections::HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let gone: Vec<String> = last
        .iter()
        .filter(|e| !now.contains(e.id.as_str()))
        .map(|e| e.id.clone())
        .collect();
    Some(pb::NetworkTable {
        networks,
        data_path_port: port,
        partial: true,
        gone,
    })
}

/// Network `now` as a change to `before`: its fields whole, its endpoints only those that are new
/// or changed (by task id), and the task ids of those that left.
fn endpoint_change(before: &pb::NodeNetwork, now: &pb::NodeNetwork) -> pb::NodeNetwork {
    let old: HashMap<&str, &pb::Endpoint> = before
        .endpoints
        .iter()
        .map(|e| (e.task_id.as_str(), e))
        .collect();
    let current: std::collections::HashSet<&str> =
        now.endpoints.iter().map(|e| e.task_id.as_str()).collect();
    pb::NodeNetwork {
        id: now.id.clone(),
        name: now.name.clone(),
        vni: now.vni,
        subnet: now.subnet.clone(),
        gateway: now.gateway.clone(),
        mtu: now.mtu,
        internal: now.internal,
        endpoints: now
            .endpoints
            .iter()
            .filter(|e| old.get(e.task_id.as_str()) != Some(e))
            .cloned()
            .collect(),
        services: now.services.clone(),
        attachable: now.attachable,
        labels: now.labels.clone(),
        created_at: now.created_at.clone(),
        endpoints_partial: true,
        gone_endpoints: before
            .endpoints
            .iter()
            .filter(|e| !current.contains(e.task_id.as_str()))
            .map(|e| e.task_id.clone())
            .collect(),
    }
}

/// Whether two lists of entries are the same shared entries: entries of views made one
/// [`after`](NetView::after) the other differ by pointer exactly where they differ by value.
pub fn same_entries(a: &[Arc<pb::NodeNetwork>], b: &[Arc<pb::NodeNetwork>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Task `t`'s endpoint at address `a`, on a node whose VTEP is `vtep`.
fn endpoint(t: &Task, a: &NetworkAttachment, vtep: String) -> pb::Endpoint {
    pb::Endpoint {
        task_id: t.id.clone(),
        ip: a.addr.to_string(),
        node_addr: vtep,
        node_id: t.node_id.clone(),
        task_name: t.name(),
        service_id: t.service_id.clone(),
        running: t.status.state == TaskState::Running && t.desired_state == TaskState::Running,
        // A service's aliases name the service (its record), not each task.
        aliases: if t.network_attachment {
            a.aliases.clone()
        } else {
            Vec::new()
        },
    }
}

/// Service `svc`'s record on network `network_id`, which its attachment `cfg` names.
fn service_record(
    svc: &Service,
    cfg: &NetworkAttachmentConfig,
    network_id: &str,
) -> pb::ServiceRecord {
    let vip = match svc.spec.endpoint_mode {
        EndpointMode::Vip => svc
            .virtual_ips
            .iter()
            .find(|v| v.network_id == network_id)
            .map(|v| v.addr.to_string())
            .unwrap_or_default(),
        EndpointMode::Dnsrr => String::new(),
    };
    pb::ServiceRecord {
        service_id: svc.id.clone(),
        name: svc.spec.name.clone(),
        aliases: cfg.aliases.clone(),
        vip,
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
        attachable: n.spec.attachable,
        labels: n.spec.labels.clone().into_iter().collect(),
        created_at: crate::rfc3339_ms(n.meta.created_at_ms),
        endpoints_partial: false,
        gone_endpoints: Vec::new(),
    }
}

/// Node `node_id`'s table by a scan of every task per network of the node, as the dispatcher
/// computed it for each node before [`NetView`] (O(tasks × its networks) per node). Kept as the
/// reference [`NetView`] is tested against and `rswarm-bench-sched` compares it with.
#[doc(hidden)]
pub fn scan_node_table(s: &StateMachine, node_id: &str) -> pb::NetworkTable {
    let placed = |t: &&Task| !t.node_id.is_empty() && t.holds_addresses();
    let mine: BTreeSet<&str> = s
        .list::<Task>()
        .filter(placed)
        .filter(|t| t.node_id == node_id)
        .flat_map(|t| t.networks.iter().map(|a| a.network_id.as_str()))
        .collect();
    let mut networks = Vec::new();
    for id in mine {
        let Some(n) = s.get::<Network>(id) else {
            continue;
        };
        let endpoints = s
            .list::<Task>()
            .filter(placed)
            .filter_map(|t| {
                let a = t.networks.iter().find(|a| a.network_id == n.id)?;
                let vtep = s.get::<Node>(&t.node_id).and_then(vtep_of)?;
                Some(endpoint(t, a, vtep))
            })
            .collect();
        let services = s
            .list::<Service>()
            .filter_map(|svc| {
                let cfg = svc.spec.task.networks.iter().find(|c| c.target == n.id)?;
                Some(service_record(svc, cfg, &n.id))
            })
            .collect();
        networks.push(pb::NodeNetwork {
            endpoints,
            services,
            ..network_header(n)
        });
    }
    let port = s.get::<Cluster>(Cluster::ID).map_or(
        rswarm_store::network::DEFAULT_DATA_PATH_PORT,
        Cluster::data_path_port,
    );
    pb::NetworkTable {
        networks,
        data_path_port: port.into(),
        ..pb::NetworkTable::default()
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
    use rswarm_store::{NetworkSpec, Op, ServiceSpec, TaskSpec, TaskStatus, Txn};

    /// Network `id` (named `net-<id>`) on a /24 `subnet` with its .1 as the gateway.
    fn net(id: &str, subnet: &str, vni: u32) -> Network {
        Network {
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
        }
    }

    fn state() -> StateMachine {
        let mut sm = StateMachine::new();
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

    /// A bigger state: 6 nodes (one without an IPv4 address), 4 networks (one unused), 3
    /// services (one dnsrr, one on a network twice) and 60 tasks in every state, some unplaced,
    /// some with two addresses on one network or on two networks.
    fn mixed_state() -> StateMachine {
        let mut ops: Vec<Op> = Vec::new();
        for (i, id) in ["a", "b", "c", "unused"].iter().enumerate() {
            let vni = 4096 + u32::try_from(i).unwrap();
            ops.push(Txn::create(net(id, &format!("10.0.{i}.0/24"), vni)));
        }
        for n in 1..=6 {
            let addr = if n == 6 {
                "[2001:db8::6]:4242".to_string()
            } else {
                format!("198.18.0.{n}")
            };
            ops.push(Txn::create(Node {
                id: format!("n{n}"),
                addr,
                ..Node::default()
            }));
        }
        let subnet_of = |net: &str| ["a", "b", "c"].iter().position(|n| *n == net).unwrap();
        let cfg = |target: &str, alias: &str| NetworkAttachmentConfig {
            target: target.into(),
            aliases: vec![alias.into()],
        };
        let services = [
            ("s0", vec![cfg("a", "x"), cfg("b", "y")], EndpointMode::Vip),
            ("s1", vec![cfg("b", "p"), cfg("b", "q")], EndpointMode::Vip),
            (
                "s2",
                vec![cfg("a", "r"), cfg("c", "m")],
                EndpointMode::Dnsrr,
            ),
        ];
        for (k, (id, networks, mode)) in services.into_iter().enumerate() {
            let mut svc = Service {
                id: id.into(),
                spec: ServiceSpec {
                    name: format!("svc{k}"),
                    endpoint_mode: mode,
                    task: TaskSpec {
                        networks: networks.clone(),
                        ..TaskSpec::default()
                    },
                    ..ServiceSpec::default()
                },
                ..Service::default()
            };
            svc.virtual_ips = networks
                .iter()
                .enumerate()
                .map(|(j, c)| NetworkAttachment {
                    network_id: c.target.clone(),
                    addr: format!("10.0.{}.{}", subnet_of(&c.target), 2 + 2 * k + j)
                        .parse()
                        .unwrap(),
                    aliases: vec![],
                })
                .collect();
            ops.push(Txn::create(svc));
        }
        let states = [
            TaskState::New,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Running,
            TaskState::Failed,
            TaskState::Shutdown,
        ];
        let nets = ["a", "b", "c"];
        for i in 0..60u8 {
            let net = nets[usize::from(i) % nets.len()];
            let m = subnet_of(net);
            let mut networks = vec![NetworkAttachment {
                network_id: net.into(),
                addr: format!("10.0.{m}.{}", 10 + i).parse().unwrap(),
                aliases: vec![],
            }];
            if i % 7 == 0 {
                networks.push(NetworkAttachment {
                    network_id: net.into(),
                    addr: format!("10.0.{m}.{}", 100 + i).parse().unwrap(),
                    aliases: vec![],
                });
            }
            if i % 5 == 0 {
                networks.push(NetworkAttachment {
                    network_id: "a".into(),
                    addr: format!("10.0.0.{}", 170 + i / 5).parse().unwrap(),
                    aliases: vec![],
                });
            }
            let node = if i % 11 == 0 {
                String::new()
            } else {
                format!("n{}", i % 6 + 1)
            };
            ops.push(Txn::create(Task {
                id: format!("t{i:02}"),
                service_id: format!("s{}", i % 3),
                service_name: format!("svc{}", i % 3),
                slot: u64::from(i),
                node_id: node,
                desired_state: if i % 13 == 0 {
                    TaskState::Shutdown
                } else {
                    TaskState::Running
                },
                status: TaskStatus {
                    state: states[usize::from(i) % states.len()],
                    ..TaskStatus::default()
                },
                networks,
                ..Task::default()
            }));
        }
        let mut sm = StateMachine::new();
        sm.apply(1, &Txn::new(ops)).unwrap();
        sm
    }

    #[test]
    fn the_shared_view_gives_every_node_the_table_a_scan_gives() {
        for s in [state(), mixed_state()] {
            let view = NetView::of(&s);
            assert_eq!(view.index(), s.index());
            for n in ["n1", "n2", "n3", "n4", "n5", "n6", "nx", ""] {
                assert_eq!(view.node_table(n), scan_node_table(&s, n), "node {n}");
            }
        }
        let s = mixed_state();
        let t = NetView::of(&s).node_table("n2");
        assert!(t.networks.len() >= 2, "{t:?}");
        assert!(t.networks.iter().any(|n| !n.services.is_empty()));
    }

    #[test]
    fn a_later_view_shares_the_entries_that_did_not_change() {
        let mut s = mixed_state();
        let before = NetView::of(&s);
        let same = NetView::after(&s, Some(&before));
        for n in ["n1", "n2", "n3", "n4", "n5"] {
            assert!(same_entries(&before.entries(n), &same.entries(n)), "{n}");
        }
        // t02 (n3, network c) stops running: only the nodes on network c see a change.
        let mut t = s.get::<Task>("t02").unwrap().clone();
        assert_eq!(t.networks[0].network_id, "c");
        t.status.state = TaskState::Failed;
        s.apply(2, &Txn::new(vec![Txn::update(t)])).unwrap();
        let after = NetView::after(&s, Some(&same));
        for n in ["n1", "n2", "n3", "n4", "n5", "n6"] {
            let on_c = before.nodes.get(n).is_some_and(|nets| nets.contains("c"));
            assert_eq!(
                same_entries(&same.entries(n), &after.entries(n)),
                !on_c,
                "{n}"
            );
            assert_eq!(after.node_table(n), scan_node_table(&s, n), "{n}");
        }
    }

    #[test]
    fn partial_updates_carry_only_the_changed_networks_and_rebuild_the_whole_table() {
        use rswarm_agent::netagent::apply_table;
        let mut s = mixed_state();
        let before = NetView::of(&s);
        let port = before.data_path_port();
        // t02 (n3, network c) stops running.
        let mut t = s.get::<Task>("t02").unwrap().clone();
        t.status.state = TaskState::Failed;
        s.apply(2, &Txn::new(vec![Txn::update(t)])).unwrap();
        let after = NetView::after(&s, Some(&before));
        for n in ["n1", "n2", "n3", "n4", "n5", "n6"] {
            let (last, now) = (before.entries(n), after.entries(n));
            let on_c = now.iter().any(|e| e.id == "c");
            let whole = update(&last, port, &now, port, Changes::Whole);
            let partial = update(&last, port, &now, port, Changes::Networks);
            let endpoints = update(&last, port, &now, port, Changes::Endpoints);
            if !on_c {
                assert_eq!((whole, partial, endpoints), (None, None, None), "{n}");
                continue;
            }
            assert_eq!(whole, Some(table(&now, port)), "{n}");
            let partial = partial.unwrap();
            assert!(partial.partial && partial.gone.is_empty(), "{n}");
            let ids: Vec<&str> = partial.networks.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["c"], "{n}");
            assert!(!partial.networks[0].endpoints_partial);
            // The agent's merge gives back what a scan gives.
            let merged = apply_table(Some(&table(&last, port)), partial).unwrap();
            assert_eq!(merged, scan_node_table(&s, n), "{n}");
            // With endpoint changes, network c carries only t02 leaving.
            let endpoints = endpoints.unwrap();
            let c = &endpoints.networks[0];
            assert!(c.endpoints_partial && c.endpoints.is_empty(), "{n}: {c:?}");
            assert_eq!(c.gone_endpoints, ["t02"], "{n}");
            let c_now = now.iter().find(|e| e.id == "c").unwrap();
            assert_eq!(c.services, c_now.services, "{n}");
            let merged = apply_table(Some(&table(&last, port)), endpoints).unwrap();
            assert_eq!(merged, scan_node_table(&s, n), "{n}");
        }
        // Networks a node joins come whole, those it leaves by id; a new port sends all.
        let e = |id: &str| {
            Arc::new(pb::NodeNetwork {
                id: id.into(),
                ..pb::NodeNetwork::default()
            })
        };
        let (a, b, c) = (e("a"), e("b"), e("c"));
        let last = vec![a.clone(), b.clone()];
        let now = vec![a.clone(), c.clone()];
        let u = update(&last, port, &now, port, Changes::Endpoints).unwrap();
        assert_eq!(u.networks, vec![(*c).clone()]);
        assert_eq!(u.gone, ["b"]);
        assert_eq!(u.data_path_port, port);
        let u = update(&last, port, &last, port + 1, Changes::Endpoints).unwrap();
        assert!(!u.partial && u.networks.len() == 2, "{u:?}");
        assert_eq!(
            update(&last, port, &last.clone(), port, Changes::Endpoints),
            None
        );
    }

    #[test]
    fn nodes_see_only_their_networks_with_every_endpoint() {
        let s = state();
        let view = NetView::of(&s);
        let t1 = view.node_table("n1");
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
        let t3 = view.node_table("n3");
        assert_eq!(t3.networks.len(), 1);
        assert_eq!(t3.networks[0].vni, 4097);
        assert!(view.node_table("nx").networks.is_empty());
    }
}
