//! Network allocation, as pure decisions (swarmkit's allocator): subnets and VXLAN ids for new
//! networks, one address per network for each new task, one virtual IP per network for services
//! in VIP mode.
//!
//! Tasks of services on networks are created in state `New`; [`allocate_tasks`] gives each its
//! addresses and moves it to `Pending`, where the scheduler takes over. The store refuses any
//! transaction that would give one address to two holders, so decisions from a stale snapshot
//! fail and are made again.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use rswarm_store::network::{VNI_FIRST, VNI_LAST};
use rswarm_store::{
    Cluster, Network, NetworkAttachment, NetworkSpec, Op, Service, StateMachine, Subnet, Task,
    TaskState, Txn,
};

/// The longest prefix `--subnet` may have: a /29 leaves 5 addresses for endpoints.
pub const MAX_SUBNET_PREFIX: u8 = 29;

/// Why a network or an address cannot be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("subnet {subnet} is too small: use a /{MAX_SUBNET_PREFIX} or larger")]
    SubnetTooSmall { subnet: Subnet },
    #[error("subnet {subnet} overlaps {other} of network {network}; choose another --subnet")]
    SubnetOverlap {
        subnet: Subnet,
        other: Subnet,
        network: String,
    },
    #[error("gateway {gateway} is not a host address of subnet {subnet}")]
    BadGateway { gateway: Ipv4Addr, subnet: Subnet },
    #[error("a gateway needs a --subnet")]
    GatewayWithoutSubnet,
    #[error("the address pools ({pools}) have no free /{size} left: remove unused networks, or create the network with --subnet")]
    PoolExhausted { pools: String, size: u8 },
    #[error("every VXLAN id ({VNI_FIRST}-{VNI_LAST}) is in use: remove unused networks")]
    VniExhausted,
    #[error("network {0} is not attachable: standalone containers may join only networks created with --attachable")]
    NotAttachable(String),
    #[error("user specified IP address is supported only when connecting to networks with user configured subnets: network {0} has none")]
    IpWithoutSubnet(String),
    #[error("address {ip} is not a host address of network {network} ({subnet}) or is its gateway: choose another --ip")]
    IpOutsideSubnet {
        ip: Ipv4Addr,
        network: String,
        subnet: Subnet,
    },
    #[error("address {ip} is already in use on network {network}: choose another --ip")]
    IpInUse { ip: Ipv4Addr, network: String },
    #[error("network {network} ({subnet}) has {free} free addresses, {needed} needed: create the service on a larger network")]
    NetworkFull {
        network: String,
        subnet: Subnet,
        free: u64,
        needed: u64,
    },
}

/// What a new network gets: subnet, gateway and VXLAN id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkAllocation {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

/// Allocates a subnet (the user's, checked, or the first free one cut from the cluster's
/// pools), a gateway (the user's, or the subnet's first host) and the lowest free VXLAN id.
pub fn allocate_network(
    cluster: &Cluster,
    existing: &[&Network],
    spec: &NetworkSpec,
) -> Result<NetworkAllocation, AllocError> {
    let subnet = match spec.subnet {
        Some(subnet) => {
            if subnet.prefix_len > MAX_SUBNET_PREFIX {
                return Err(AllocError::SubnetTooSmall { subnet });
            }
            if let Some(other) = existing.iter().find(|n| n.subnet.overlaps(&subnet)) {
                return Err(AllocError::SubnetOverlap {
                    subnet,
                    other: other.subnet,
                    network: other.spec.name.clone(),
                });
            }
            subnet
        }
        None => {
            if spec.gateway.is_some() {
                return Err(AllocError::GatewayWithoutSubnet);
            }
            let taken: Vec<Subnet> = existing.iter().map(|n| n.subnet).collect();
            let size = cluster.subnet_size();
            let pools = cluster.addr_pools();
            pools
                .iter()
                .find_map(|pool| first_free_subnet(*pool, size, &taken))
                .ok_or_else(|| AllocError::PoolExhausted {
                    pools: pools
                        .iter()
                        .map(Subnet::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    size,
                })?
        }
    };
    let gateway = match spec.gateway {
        Some(gw) if subnet.is_host(gw) => gw,
        Some(gateway) => return Err(AllocError::BadGateway { gateway, subnet }),
        None => Ipv4Addr::from(subnet.first() + 1),
    };
    let used: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
    let vni = (VNI_FIRST..=VNI_LAST)
        .find(|v| !used.contains(v))
        .ok_or(AllocError::VniExhausted)?;
    Ok(NetworkAllocation {
        subnet,
        gateway,
        vni,
    })
}

/// The first `/size` inside `pool` that overlaps none of `taken`.
fn first_free_subnet(pool: Subnet, size: u8, taken: &[Subnet]) -> Option<Subnet> {
    if size < pool.prefix_len || size > 32 {
        return None;
    }
    let step = 1u64 << (32 - u32::from(size));
    let mut at = u64::from(pool.first());
    let end = u64::from(pool.last());
    while at + step - 1 <= end {
        let candidate = Subnet::new(Ipv4Addr::from(at as u32), size)?;
        match taken.iter().find(|t| t.overlaps(&candidate)) {
            None => return Some(candidate),
            // Skip past the taken subnet, aligned to our size.
            Some(t) => {
                let next = u64::from(t.last()) + 1;
                at = next.div_ceil(step) * step;
            }
        }
    }
    None
}

/// Free addresses, network by network, within one decision: what the store holds plus what this
/// decision has handed out already.
pub struct Addresses<'a> {
    state: &'a StateMachine,
    given: HashMap<String, BTreeSet<Ipv4Addr>>,
    cursor: HashMap<String, u32>,
}

impl<'a> Addresses<'a> {
    pub fn new(state: &'a StateMachine) -> Self {
        Addresses {
            state,
            given: HashMap::new(),
            cursor: HashMap::new(),
        }
    }

    /// The lowest free endpoint address of `network` (above the last one this decision gave).
    pub fn take(&mut self, network: &Network) -> Option<Ipv4Addr> {
        let s = network.subnet;
        let first = if s.prefix_len >= 31 {
            s.first()
        } else {
            s.first() + 1
        };
        let last = if s.prefix_len >= 31 {
            s.last()
        } else {
            s.last() - 1
        };
        let start = self.cursor.get(&network.id).copied().unwrap_or(first);
        let given = self.given.entry(network.id.clone()).or_default();
        let mut v = start;
        while v <= last {
            let ip = Ipv4Addr::from(v);
            if ip != network.gateway
                && !given.contains(&ip)
                && self.state.address_holder(&network.id, ip).is_none()
            {
                given.insert(ip);
                self.cursor.insert(network.id.clone(), v + 1);
                return Some(ip);
            }
            v += 1;
        }
        None
    }

    /// Addresses of `network` neither held nor given in this decision.
    pub fn free(&self, network: &Network) -> u64 {
        let s = network.subnet;
        let hosts = if s.prefix_len >= 31 {
            u64::from(s.last() - s.first()) + 1
        } else {
            u64::from(s.last() - s.first()) - 1
        };
        let held = self.state.addresses_on(&network.id).count() as u64
            + self.given.get(&network.id).map_or(0, |g| g.len() as u64);
        hosts.saturating_sub(held + 1)
    }
}

/// Gives every `New` task its addresses and moves it to `Pending`. A task whose network is gone
/// is rejected; a task whose network is full waits in `New`, saying so.
pub fn allocate_tasks(state: &StateMachine, now_ms: u64) -> Vec<Op> {
    let mut addrs = Addresses::new(state);
    let mut ops = Vec::new();
    for t in state.list::<Task>() {
        if t.status.state != TaskState::New || t.desired_state > TaskState::Running {
            continue;
        }
        let mut next = t.clone();
        next.status.timestamp_ms = now_ms;
        match attach(state, &mut addrs, t) {
            Ok(networks) => {
                next.networks = networks;
                next.status.state = TaskState::Pending;
                next.status.message = "pending task scheduling".into();
                next.status.err.clear();
            }
            Err(Unallocatable::Gone(target)) => {
                next.status.state = TaskState::Rejected;
                next.status.err = format!("network {target} not found");
            }
            Err(Unallocatable::Full(name)) => {
                let err = format!("no free address on network {name}");
                if next.status.err == err {
                    continue;
                }
                next.status.err = err;
            }
        }
        ops.push(Txn::update(next));
    }
    ops
}

enum Unallocatable {
    Gone(String),
    Full(String),
}

fn attach(
    state: &StateMachine,
    addrs: &mut Addresses<'_>,
    t: &Task,
) -> Result<Vec<NetworkAttachment>, Unallocatable> {
    let mut out = Vec::with_capacity(t.spec.networks.len());
    for cfg in &t.spec.networks {
        let network = state
            .get::<Network>(&cfg.target)
            .ok_or_else(|| Unallocatable::Gone(cfg.target.clone()))?;
        let addr = addrs
            .take(network)
            .ok_or_else(|| Unallocatable::Full(network.spec.name.clone()))?;
        let mut aliases = cfg.aliases.clone();
        aliases.retain(|a| !a.is_empty());
        out.push(NetworkAttachment {
            network_id: network.id.clone(),
            addr,
            aliases,
        });
    }
    Ok(out)
}

/// What identifies a standalone container asking for an address (see [`attachment_task`]).
pub struct StandaloneContainer<'a> {
    pub node_id: &'a str,
    pub container_id: &'a str,
    pub container_name: &'a str,
    /// More names it answers to on the network.
    pub aliases: &'a [String],
    /// The address it asks for (`--ip`); `None`: the lowest free one.
    pub ip: Option<Ipv4Addr>,
}

/// A network attachment for a standalone container on an attachable network: a task that is
/// never scheduled or run, holding the container's address (running from the start, on the
/// caller's node).
pub fn attachment_task(
    state: &StateMachine,
    network: &Network,
    container: StandaloneContainer<'_>,
    id: String,
    now_ms: u64,
) -> Result<Task, AllocError> {
    if !network.spec.attachable {
        return Err(AllocError::NotAttachable(network.spec.name.clone()));
    }
    let addr = match container.ip {
        Some(ip) => {
            let name = || network.spec.name.clone();
            if network.spec.subnet.is_none() {
                return Err(AllocError::IpWithoutSubnet(name()));
            }
            if !network.subnet.is_host(ip) || ip == network.gateway {
                return Err(AllocError::IpOutsideSubnet {
                    ip,
                    network: name(),
                    subnet: network.subnet,
                });
            }
            if state.address_holder(&network.id, ip).is_some() {
                return Err(AllocError::IpInUse {
                    ip,
                    network: name(),
                });
            }
            ip
        }
        None => Addresses::new(state)
            .take(network)
            .ok_or_else(|| AllocError::NetworkFull {
                network: network.spec.name.clone(),
                subnet: network.subnet,
                free: 0,
                needed: 1,
            })?,
    };
    Ok(Task {
        id,
        service_name: container.container_name.to_string(),
        node_id: container.node_id.to_string(),
        spec: rswarm_store::TaskSpec {
            networks: vec![rswarm_store::NetworkAttachmentConfig {
                target: network.id.clone(),
                aliases: container.aliases.to_vec(),
            }],
            ..Default::default()
        },
        desired_state: TaskState::Running,
        status: rswarm_store::TaskStatus {
            state: TaskState::Running,
            timestamp_ms: now_ms,
            message: "attached".into(),
            container_id: container.container_id.to_string(),
            ..Default::default()
        },
        networks: vec![NetworkAttachment {
            network_id: network.id.clone(),
            addr,
            aliases: container.aliases.to_vec(),
        }],
        network_attachment: true,
        ..Task::default()
    })
}

/// Attachment `t` given back: stopped for good, so its address is free (the reaper deletes it).
pub fn released_attachment(t: &Task, now_ms: u64, why: &str) -> Task {
    let mut t = t.clone();
    t.status.state = TaskState::Shutdown;
    t.status.timestamp_ms = now_ms;
    t.status.message = why.into();
    t.desired_state = TaskState::Remove;
    t
}

/// The attachments of node `node_id` that still hold an address but that the node no longer
/// records (`keep` holds the ones it does), given back.
pub fn stale_attachments(
    state: &StateMachine,
    node_id: &str,
    keep: &BTreeSet<&str>,
    now_ms: u64,
) -> Vec<Task> {
    state
        .list::<Task>()
        .filter(|t| {
            t.network_attachment
                && t.node_id == node_id
                && t.holds_addresses()
                && !keep.contains(t.id.as_str())
        })
        .map(|t| released_attachment(t, now_ms, "released: no container of its node holds it"))
        .collect()
}

/// What removing node `node_id` does to the tasks that still hold addresses there: its service
/// tasks become `Orphaned` (stopped for good: the orchestrator has replaced them, and nobody will
/// report them again) and its standalone containers' attachments are given back.
pub fn removed_node_tasks(state: &StateMachine, node_id: &str, now_ms: u64) -> Vec<Task> {
    let mut out = stale_attachments(state, node_id, &BTreeSet::new(), now_ms);
    out.extend(orphaned(
        state,
        node_id,
        now_ms,
        "its node was removed",
        Task::holds_addresses,
    ));
    out
}

/// What a node down for [`NODE_DOWN_PERIOD`](crate::NODE_DOWN_PERIOD) does to its service tasks
/// that were assigned and not yet ended (swarmkit's rule): they become `Orphaned`, which frees
/// their addresses. Nobody can tell whether they still run, and the replicated ones were replaced
/// elsewhere long ago; if the node comes back, its agent stops them. Its standalone containers'
/// attachments are kept: those containers are the user's, and the node may return with them.
pub fn down_node_tasks(state: &StateMachine, node_id: &str, now_ms: u64) -> Vec<Task> {
    let assigned = |t: &Task| (TaskState::Assigned..=TaskState::Running).contains(&t.status.state);
    orphaned(
        state,
        node_id,
        now_ms,
        "its node was down for too long",
        assigned,
    )
    .collect()
}

/// Node `node_id`'s service tasks that `pick` picks, made `Orphaned`.
fn orphaned<'a>(
    state: &'a StateMachine,
    node_id: &'a str,
    now_ms: u64,
    why: &'a str,
    pick: impl Fn(&Task) -> bool + 'a,
) -> impl Iterator<Item = Task> + 'a {
    state
        .list::<Task>()
        .filter(move |t| !t.network_attachment && t.node_id == node_id && pick(t))
        .map(move |t| {
            let mut t = t.clone();
            t.status.state = TaskState::Orphaned;
            t.status.timestamp_ms = now_ms;
            t.status.message = why.into();
            t
        })
}

/// The virtual IPs `service` needs for its spec: kept from `service.virtual_ips` where the network
/// stays, new ones allocated, none in dnsrr mode. Also checks that every network has room for
/// `needed` more task addresses.
pub fn allocate_vips(
    state: &StateMachine,
    service: &Service,
    needed: u64,
) -> Result<Vec<NetworkAttachment>, AllocError> {
    let mut addrs = Addresses::new(state);
    let mut vips = Vec::new();
    for cfg in &service.spec.task.networks {
        let Some(network) = state.get::<Network>(&cfg.target) else {
            continue;
        };
        let free = addrs.free(network);
        let wants_vip = service.spec.endpoint_mode == rswarm_store::EndpointMode::Vip;
        let kept = service
            .virtual_ips
            .iter()
            .find(|v| v.network_id == network.id)
            .filter(|_| wants_vip);
        let extra = u64::from(wants_vip && kept.is_none());
        if free < needed + extra {
            return Err(AllocError::NetworkFull {
                network: network.spec.name.clone(),
                subnet: network.subnet,
                free: free.saturating_sub(extra),
                needed,
            });
        }
        if !wants_vip {
            continue;
        }
        let addr = match kept {
            Some(v) => v.addr,
            None => addrs.take(network).ok_or(AllocError::NetworkFull {
                network: network.spec.name.clone(),
                subnet: network.subnet,
                free: 0,
                needed,
            })?,
        };
        vips.push(NetworkAttachment {
            network_id: network.id.clone(),
            addr,
            aliases: Vec::new(),
        });
    }
    Ok(vips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::{NetworkAttachmentConfig, Object, ServiceSpec, TaskSpec};

    fn net(id: &str, subnet: &str, vni: u32) -> Network {
        let subnet: Subnet = subnet.parse().unwrap();
        Network {
            id: id.into(),
            meta: Default::default(),
            spec: NetworkSpec {
                name: format!("net-{id}"),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            },
            subnet,
            gateway: Ipv4Addr::from(subnet.first() + 1),
            vni,
        }
    }

    fn state_with(objects: Vec<Object>) -> StateMachine {
        let mut sm = StateMachine::new();
        let ops = objects
            .into_iter()
            .map(|object| Op::Create { object })
            .collect();
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
    fn networks_get_free_subnets_and_vnis() {
        let cluster = Cluster::default();
        let a = net("a", "10.0.0.0/24", 4096);
        let b = net("b", "10.0.1.0/24", 4098);
        let big = net("c", "10.0.4.0/22", 4097);
        let alloc = allocate_network(&cluster, &[&a, &b, &big], &NetworkSpec::default()).unwrap();
        assert_eq!(alloc.subnet.to_string(), "10.0.2.0/24");
        assert_eq!(alloc.gateway.to_string(), "10.0.2.1");
        assert_eq!(alloc.vni, 4099);

        let mut spec = NetworkSpec {
            subnet: Some("10.0.4.0/24".parse().unwrap()),
            ..NetworkSpec::default()
        };
        let err = allocate_network(&cluster, &[&a, &big], &spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet 10.0.4.0/24 overlaps 10.0.4.0/22 of network net-c; choose another --subnet"
        );
        spec.subnet = Some("10.9.0.0/30".parse().unwrap());
        assert!(matches!(
            allocate_network(&cluster, &[], &spec),
            Err(AllocError::SubnetTooSmall { .. })
        ));
        spec.subnet = Some("10.9.0.0/24".parse().unwrap());
        spec.gateway = Some("10.9.0.254".parse().unwrap());
        assert_eq!(
            allocate_network(&cluster, &[], &spec)
                .unwrap()
                .gateway
                .to_string(),
            "10.9.0.254"
        );
        spec.gateway = Some("10.9.1.1".parse().unwrap());
        assert!(matches!(
            allocate_network(&cluster, &[], &spec),
            Err(AllocError::BadGateway { .. })
        ));
    }

    #[test]
    fn pools_run_out_with_a_clear_error() {
        let cluster = Cluster {
            default_addr_pool: vec!["10.50.0.0/23".parse().unwrap()],
            subnet_size: 24,
            ..Cluster::default()
        };
        let a = net("a", "10.50.0.0/24", 4096);
        let b = net("b", "10.50.1.0/24", 4097);
        let ok = allocate_network(&cluster, &[&a], &NetworkSpec::default()).unwrap();
        assert_eq!(ok.subnet.to_string(), "10.50.1.0/24");
        let err = allocate_network(&cluster, &[&a, &b], &NetworkSpec::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the address pools (10.50.0.0/23) have no free /24 left: remove unused networks, or create the network with --subnet"
        );
        // Unaligned taken subnets are skipped over.
        let odd = net("o", "10.50.0.128/25", 4096);
        let ok = allocate_network(&cluster, &[&odd], &NetworkSpec::default()).unwrap();
        assert_eq!(ok.subnet.to_string(), "10.50.1.0/24");
    }

    fn svc_task(id: &str, networks: &[&str]) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            desired_state: TaskState::Running,
            spec: TaskSpec {
                networks: networks
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: n.to_string(),
                        aliases: vec!["db".into()],
                    })
                    .collect(),
                ..TaskSpec::default()
            },
            ..Task::default()
        }
    }

    #[test]
    fn tasks_get_distinct_addresses_then_pending() {
        let n = net("n", "10.0.0.0/29", 4096);
        let mut sm = state_with(vec![
            Object::Network(n),
            Object::Task(svc_task("t1", &["n"])),
            Object::Task(svc_task("t2", &["n"])),
            Object::Task(svc_task("t3", &["gone"])),
        ]);
        let ops = allocate_tasks(&sm, 5);
        sm.apply(
            2,
            &Txn {
                timestamp_ms: 5,
                ops,
            },
        )
        .unwrap();
        let t1 = sm.get::<Task>("t1").unwrap();
        let t2 = sm.get::<Task>("t2").unwrap();
        assert_eq!(t1.status.state, TaskState::Pending);
        assert_eq!(t1.networks[0].addr.to_string(), "10.0.0.2");
        assert_eq!(t1.networks[0].aliases, vec!["db".to_string()]);
        assert_eq!(t2.networks[0].addr.to_string(), "10.0.0.3");
        let t3 = sm.get::<Task>("t3").unwrap();
        assert_eq!(t3.status.state, TaskState::Rejected);
        assert_eq!(t3.status.err, "network gone not found");
        // A /29 has 6 hosts, one of them the gateway: 5 endpoints.
        let more: Vec<Op> = (4..=8)
            .map(|i| Txn::create(svc_task(&format!("t{i}"), &["n"])))
            .collect();
        sm.apply(
            3,
            &Txn {
                timestamp_ms: 6,
                ops: more,
            },
        )
        .unwrap();
        let ops = allocate_tasks(&sm, 7);
        sm.apply(
            4,
            &Txn {
                timestamp_ms: 7,
                ops,
            },
        )
        .unwrap();
        let waiting: Vec<&Task> = sm
            .list::<Task>()
            .filter(|t| t.status.state == TaskState::New)
            .collect();
        assert_eq!(waiting.len(), 2);
        assert!(waiting
            .iter()
            .all(|t| t.status.err == "no free address on network net-n"));
        // Nothing changes while nothing is freed.
        assert!(allocate_tasks(&sm, 8).is_empty());
    }

    #[test]
    fn standalone_containers_join_only_attachable_networks() {
        let mut n = net("n", "10.0.0.0/24", 4096);
        let sm = state_with(vec![Object::Network(n.clone())]);
        let aliases = ["db".to_string()];
        let who = || StandaloneContainer {
            node_id: "node1",
            container_id: "c1",
            container_name: "web",
            aliases: &aliases,
            ip: None,
        };
        let err = attachment_task(&sm, &n, who(), "a1".into(), 1).unwrap_err();
        assert!(err.to_string().contains("not attachable"), "{err}");
        n.spec.attachable = true;
        let t = attachment_task(&sm, &n, who(), "a1".into(), 1).unwrap();
        assert!(t.network_attachment && t.holds_addresses());
        assert_eq!(t.networks[0].addr.to_string(), "10.0.0.2");
        assert_eq!(t.networks[0].aliases, aliases);
        assert_eq!((t.name(), t.node_id.as_str()), ("web".to_string(), "node1"));
        assert_eq!(t.status.state, TaskState::Running);
    }

    #[test]
    fn a_standalone_container_gets_the_address_it_asks_for_when_free() {
        let mut n = net("n", "10.0.0.0/24", 4096);
        n.spec.attachable = true;
        let asking = |ip: &str| StandaloneContainer {
            node_id: "node1",
            container_id: "c1",
            container_name: "web",
            aliases: &[],
            ip: Some(ip.parse().unwrap()),
        };
        let sm = state_with(vec![Object::Network(n.clone())]);
        let err = attachment_task(&sm, &n, asking("10.0.0.9"), "a1".into(), 1).unwrap_err();
        assert!(matches!(err, AllocError::IpWithoutSubnet(_)), "{err}");
        n.spec.subnet = Some(n.subnet);
        let sm = state_with(vec![Object::Network(n.clone())]);
        let t = attachment_task(&sm, &n, asking("10.0.0.9"), "a1".into(), 1).unwrap();
        assert_eq!(t.networks[0].addr.to_string(), "10.0.0.9");
        for bad in ["10.0.1.9", "10.0.0.0", "10.0.0.255", "10.0.0.1"] {
            let err = attachment_task(&sm, &n, asking(bad), "a2".into(), 1).unwrap_err();
            assert!(
                matches!(err, AllocError::IpOutsideSubnet { .. }),
                "{bad}: {err}"
            );
        }
        let sm = state_with(vec![Object::Network(n.clone()), Object::Task(t)]);
        let err = attachment_task(&sm, &n, asking("10.0.0.9"), "a2".into(), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.9 is already in use on network net-n: choose another --ip"
        );
    }

    #[test]
    fn a_node_keeps_only_the_attachments_it_records() {
        let mut n = net("n", "10.0.0.0/24", 4096);
        n.spec.attachable = true;
        let sm0 = state_with(vec![Object::Network(n.clone())]);
        let attach = |id: &str, node: &str| {
            let who = StandaloneContainer {
                node_id: node,
                container_id: "c",
                container_name: id,
                aliases: &[],
                ip: None,
            };
            let mut t = attachment_task(&sm0, &n, who, id.into(), 1).unwrap();
            // Distinct addresses, as the store holds them.
            t.networks[0].addr = Ipv4Addr::new(10, 0, 0, 10 + id.as_bytes()[1] - b'0');
            t
        };
        let gone = released_attachment(&attach("a4", "node1"), 2, "detached");
        assert_eq!(
            (gone.status.state, gone.desired_state),
            (TaskState::Shutdown, TaskState::Remove)
        );
        let service_task = Task {
            id: "t5".into(),
            node_id: "node1".into(),
            ..attach("t5", "node1")
        };
        let service_task = Task {
            network_attachment: false,
            ..service_task
        };
        let sm = state_with(vec![
            Object::Network(n.clone()),
            Object::Task(attach("a1", "node1")),
            Object::Task(attach("a2", "node1")),
            Object::Task(attach("a3", "node2")),
            Object::Task(gone),
            Object::Task(service_task),
        ]);
        let keep = BTreeSet::from(["a1"]);
        let released = stale_attachments(&sm, "node1", &keep, 9);
        let ids: Vec<&str> = released.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a2"]);
        assert_eq!(released[0].status.state, TaskState::Shutdown);
        assert_eq!(released[0].status.timestamp_ms, 9);
        assert!(!released[0].holds_addresses());
        // Removing node1 frees every address held there: its attachments and its service task.
        let gone = removed_node_tasks(&sm, "node1", 10);
        let mut ids: Vec<(&str, TaskState)> = gone
            .iter()
            .map(|t| (t.id.as_str(), t.status.state))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                ("a1", TaskState::Shutdown),
                ("a2", TaskState::Shutdown),
                ("t5", TaskState::Orphaned),
            ]
        );
        assert!(gone.iter().all(|t| !t.holds_addresses()));
    }

    #[test]
    fn a_long_down_node_orphans_its_assigned_to_running_service_tasks_only() {
        let task = |id: &str, node: &str, state: TaskState, attachment: bool| {
            Object::Task(Task {
                id: id.into(),
                node_id: node.into(),
                network_attachment: attachment,
                status: rswarm_store::TaskStatus {
                    state,
                    ..Default::default()
                },
                ..Task::default()
            })
        };
        let sm = state_with(vec![
            task("pending", "node1", TaskState::Pending, false),
            task("assigned", "node1", TaskState::Assigned, false),
            task("running", "node1", TaskState::Running, false),
            task("done", "node1", TaskState::Complete, false),
            task("container", "node1", TaskState::Running, true),
            task("elsewhere", "node2", TaskState::Running, false),
        ]);
        let orphaned = down_node_tasks(&sm, "node1", 7);
        let ids: Vec<&str> = orphaned.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["assigned", "running"]);
        for t in &orphaned {
            assert_eq!(t.status.state, TaskState::Orphaned);
            assert_eq!(t.status.timestamp_ms, 7);
            assert!(!t.holds_addresses());
        }
    }

    #[test]
    fn vips_are_kept_allocated_and_checked_for_room() {
        let n = net("n", "10.0.0.0/29", 4096);
        let sm = state_with(vec![Object::Network(n)]);
        let mut svc = Service {
            id: "s".into(),
            spec: ServiceSpec {
                task: TaskSpec {
                    networks: vec![NetworkAttachmentConfig {
                        target: "n".into(),
                        aliases: vec![],
                    }],
                    ..TaskSpec::default()
                },
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        let vips = allocate_vips(&sm, &svc, 3).unwrap();
        assert_eq!(vips[0].addr.to_string(), "10.0.0.2");
        svc.virtual_ips = vec![NetworkAttachment {
            network_id: "n".into(),
            addr: "10.0.0.6".parse().unwrap(),
            aliases: vec![],
        }];
        assert_eq!(
            allocate_vips(&sm, &svc, 3).unwrap()[0].addr.to_string(),
            "10.0.0.6"
        );
        let err = allocate_vips(
            &sm,
            &Service {
                virtual_ips: vec![],
                ..svc.clone()
            },
            5,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("has 4 free addresses, 5 needed"),
            "{err}"
        );
        svc.spec.endpoint_mode = rswarm_store::EndpointMode::Dnsrr;
        assert!(allocate_vips(&sm, &svc, 5).unwrap().is_empty());
    }
}
