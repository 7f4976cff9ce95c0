//! rswarm's cluster store.
//!
//! Typed objects ([`objects`]) live in a deterministic [`StateMachine`]. A consensus [`Backend`]
//! (embedded Raft in `rswarm-raft`; etcd later) orders and persists [`Txn`]s and applies them, in
//! commit order, to a shared [`Replica`]. Components hold a [`Store`]: they read the replica, commit
//! transactions with optimistic concurrency (each object's `meta.version`), and [`Store::watch`] for a
//! consistent snapshot plus every later change.

pub mod network;
pub mod objects;
pub mod service;
pub mod state;
mod store;

pub use network::{
    EndpointMode, Network, NetworkAttachment, NetworkAttachmentConfig, NetworkSpec, Subnet,
};
pub use objects::{
    Availability, Cluster, Kind, Meta, Node, NodeRole, NodeStatus, Object, StoreObject,
};
pub use service::{
    FailureAction, HealthCheck, Mount, MountKind, Placement, PortConfig, Resources,
    RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec, Task, TaskSpec, TaskState,
    TaskStatus, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
pub use state::{Action, Change, ChangeBatch, Op, StateMachine, Txn, TxnError};
pub use store::{Backend, BackendStatus, Member, MemoryBackend, Replica, Store, StoreError, Watch};
