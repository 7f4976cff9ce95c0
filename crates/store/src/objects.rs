//! The typed cluster objects kept in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::network::{Network, Subnet};
use crate::service::{Service, Task};

/// Bookkeeping every stored object carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Store index of the last change to this object; the optimistic-concurrency token.
    pub version: u64,
    /// Milliseconds since the Unix epoch, set by the store when the object was created.
    pub created_at_ms: u64,
    /// Milliseconds since the Unix epoch, set by the store on every change.
    pub updated_at_ms: u64,
}

/// The kinds of object the store holds. New kinds (networks, …) are added here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
        })
    }
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Worker,
    Manager,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the scheduler may place work on a node (Docker's `--availability`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    /// Parses Docker's spelling: `active`, `pause` or `drain`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            _ => None,
        }
    }
}

/// Liveness of a node's agent as the leader sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Unknown,
    Ready,
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub meta: Meta,
    pub role: Option<NodeRole>,
    pub hostname: String,
    /// Address other nodes reach this node at (the advertise address).
    pub addr: String,
    pub os: String,
    pub arch: String,
    pub engine_version: String,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
    pub status: NodeStatus,
    pub status_message: String,
    /// Expiry of the node's current certificate, seconds since the Unix epoch.
    pub cert_not_after: u64,
    /// Raft member id for managers, 0 for workers.
    pub raft_id: u64,
    /// For managers: the address their gRPC listener is reachable at (`host:port`).
    pub manager_addr: String,
    /// CPUs (1e9 per core) and memory (bytes) the node offers, as its agent reported them.
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Node {
    pub fn role(&self) -> NodeRole {
        self.role.unwrap_or(NodeRole::Worker)
    }
}

/// Cluster-wide settings and secrets. There is exactly one, with id [`Cluster::ID`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Always [`Cluster::ID`]; the cluster's own identifier is `cluster_id`.
    pub id: String,
    pub meta: Meta,
    pub cluster_id: String,
    pub root_ca_cert_pem: String,
    pub root_ca_key_pem: String,
    pub worker_token: String,
    pub manager_token: String,
    pub heartbeat_period_ms: u64,
    pub cert_expiry_secs: u64,
    /// Nodes removed with `node rm`: their certificates are refused from then on.
    pub removed_nodes: BTreeSet<String>,
    /// Where overlay subnets are cut from (`init --default-addr-pool`); empty: 10.0.0.0/8.
    #[serde(default)]
    pub default_addr_pool: Vec<Subnet>,
    /// Prefix length of those subnets (`--default-addr-pool-mask-length`); 0: 24.
    #[serde(default)]
    pub subnet_size: u8,
    /// The VXLAN UDP port (`--data-path-port`); 0: 4789.
    #[serde(default)]
    pub data_path_port: u16,
}

impl Cluster {
    pub const ID: &'static str = "cluster";

    /// The address pools overlay subnets come from.
    pub fn addr_pools(&self) -> Vec<Subnet> {
        if self.default_addr_pool.is_empty() {
            vec![crate::network::DEFAULT_ADDR_POOL
                .parse()
                .unwrap_or_default()]
        } else {
            self.default_addr_pool.clone()
        }
    }

    pub fn subnet_size(&self) -> u8 {
        if self.subnet_size == 0 {
            crate::network::DEFAULT_SUBNET_SIZE
        } else {
            self.subnet_size
        }
    }

    pub fn data_path_port(&self) -> u16 {
        if self.data_path_port == 0 {
            crate::network::DEFAULT_DATA_PATH_PORT
        } else {
            self.data_path_port
        }
    }
}

/// Any stored object.
// Variants differ in size (a service spec is large); objects live one per map entry, and boxing
// would cost an allocation and an indirection on every read for little memory.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    Service(Service),
    Task(Task),
    Network(Network),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Network(_) => Kind::Network,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Object::Cluster(o) => &o.id,
            Object::Node(o) => &o.id,
            Object::Service(o) => &o.id,
            Object::Task(o) => &o.id,
            Object::Network(o) => &o.id,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Cluster(o) => &o.meta,
            Object::Node(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
            Object::Network(o) => &o.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Cluster(o) => &mut o.meta,
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
        }
    }
}

/// Typed access to one kind of [`Object`].
pub trait StoreObject: Clone + Sized + Send + Sync + 'static {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn meta(&self) -> &Meta;
    fn into_object(self) -> Object;
    fn from_object_ref(o: &Object) -> Option<&Self>;
}

macro_rules! store_object {
    ($ty:ident) => {
        impl StoreObject for $ty {
            const KIND: Kind = Kind::$ty;
            fn id(&self) -> &str {
                &self.id
            }
            fn meta(&self) -> &Meta {
                &self.meta
            }
            fn into_object(self) -> Object {
                Object::$ty(self)
            }
            fn from_object_ref(o: &Object) -> Option<&Self> {
                match o {
                    Object::$ty(x) => Some(x),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}

store_object!(Cluster);
store_object!(Node);
store_object!(Service);
store_object!(Task);
store_object!(Network);
