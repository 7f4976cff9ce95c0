//! The replicated state machine: pure, deterministic, no IO.
//!
//! Every backend (embedded Raft, etcd) feeds the same committed transactions, in the same order, into
//! [`StateMachine::apply`]. Given equal inputs, every replica ends in an equal state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::network::{Network, NetworkAttachment, VNI_FIRST, VNI_LAST};
use crate::objects::{Kind, Object, StoreObject};
use crate::service::Service;

/// One change inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Fails if an object of that kind and id exists.
    Create { object: Object },
    /// Fails unless the object exists with `object.meta.version` as its current version.
    Update { object: Object },
    /// Fails unless the object exists (and, when `version` is given, has that version).
    Delete {
        kind: Kind,
        id: String,
        version: Option<u64>,
    },
    /// Changes nothing; fails unless the object exists with this version. Guards the other ops of
    /// a transaction that were decided from that object (tasks made from a service's spec).
    Check {
        kind: Kind,
        id: String,
        version: u64,
    },
}

/// An all-or-nothing batch of changes. `timestamp_ms` is chosen by the proposer so that applying the
/// transaction is deterministic on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub timestamp_ms: u64,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new(ops: Vec<Op>) -> Self {
        let timestamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Txn { timestamp_ms, ops }
    }

    pub fn create(object: impl StoreObject) -> Op {
        Op::Create {
            object: object.into_object(),
        }
    }

    pub fn update(object: impl StoreObject) -> Op {
        Op::Update {
            object: object.into_object(),
        }
    }

    pub fn delete<T: StoreObject>(object: &T) -> Op {
        Op::Delete {
            kind: T::KIND,
            id: object.id().to_string(),
            version: Some(object.meta().version),
        }
    }

    pub fn check<T: StoreObject>(object: &T) -> Op {
        Op::Check {
            kind: T::KIND,
            id: object.id().to_string(),
            version: object.meta().version,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Txn, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Why a transaction was rejected. The state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TxnError {
    #[error("{kind} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} name {name:?} is already in use by {kind} {id}; choose another name")]
    NameConflict {
        kind: Kind,
        name: String,
        id: String,
    },
    #[error("{kind} {id} was changed concurrently (expected version {expected}, found {actual}); read it again and retry")]
    VersionMismatch {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} {name} is in use by {by}; remove that first")]
    InUse {
        kind: Kind,
        id: String,
        name: String,
        by: String,
    },
    /// Two networks would share a VXLAN id or overlapping subnets, or two holders one address.
    #[error("{0}")]
    AddressConflict(String),
}

/// What a transaction did to one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// One applied change, as watchers see it. For deletes, `object` is the object as it was. The
/// object is shared with the state (no copy per watcher or per change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    pub object: Arc<Object>,
}

/// All changes of one committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeBatch {
    pub index: u64,
    pub changes: Vec<Change>,
}

/// The materialised cluster state at `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    index: u64,
    /// Objects are shared (`Arc`): a clone of the state, a change handed to watchers and the
    /// object in the table are one allocation.
    tables: BTreeMap<Kind, BTreeMap<String, Arc<Object>>>,
    /// Derived from `tables`: who holds each address on each network (task or service id).
    addrs: BTreeMap<(String, Ipv4Addr), String>,
}

#[derive(Deserialize)]
struct SnapshotData {
    index: u64,
    objects: Vec<Object>,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    index: u64,
    objects: Vec<&'a Object>,
}

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the last applied transaction (or snapshot).
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn get<T: StoreObject>(&self, id: &str) -> Option<&T> {
        self.tables
            .get(&T::KIND)
            .and_then(|t| t.get(id))
            .and_then(|o| T::from_object_ref(o))
    }

    /// All objects of one kind, ordered by id.
    pub fn list<T: StoreObject>(&self) -> impl Iterator<Item = &T> {
        self.tables
            .get(&T::KIND)
            .into_iter()
            .flat_map(|t| t.values())
            .filter_map(|o| T::from_object_ref(o))
    }

    /// Who holds `addr` on network `network_id` (a task or service id).
    pub fn address_holder(&self, network_id: &str, addr: Ipv4Addr) -> Option<&str> {
        self.addrs
            .get(&(network_id.to_string(), addr))
            .map(String::as_str)
    }

    /// Every address held on network `network_id`.
    pub fn addresses_on<'a>(&'a self, network_id: &'a str) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let start = (network_id.to_string(), Ipv4Addr::UNSPECIFIED);
        self.addrs
            .range(start..)
            .take_while(move |((n, _), _)| n == network_id)
            .map(|((_, a), _)| *a)
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.tables.get(&kind).map_or(0, BTreeMap::len)
    }

    fn lookup(&self, kind: Kind, id: &str) -> Option<&Arc<Object>> {
        self.tables.get(&kind).and_then(|t| t.get(id))
    }

    /// Applies a committed transaction at `index`. Either every op applies or none does; the index
    /// advances in both cases (a rejected transaction still consumed its log slot).
    pub fn apply(&mut self, index: u64, txn: &Txn) -> Result<Vec<Change>, TxnError> {
        self.index = self.index.max(index);
        // Validate against the state as the earlier ops of this transaction leave it.
        let mut staged: BTreeMap<(Kind, String), Option<Arc<Object>>> = BTreeMap::new();
        let mut changes = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            let (kind, id) = match op {
                Op::Create { object } | Op::Update { object } => {
                    (object.kind(), object.id().to_string())
                }
                Op::Delete { kind, id, .. } | Op::Check { kind, id, .. } => (*kind, id.clone()),
            };
            let current = match staged.get(&(kind, id.clone())) {
                Some(staged) => staged.clone(),
                None => self.lookup(kind, &id).cloned(),
            };
            let next = match (op, current) {
                (Op::Check { .. }, None) => return Err(TxnError::NotFound { kind, id }),
                (Op::Check { version, .. }, Some(current)) => {
                    let actual = current.meta().version;
                    if *version != actual {
                        return Err(TxnError::VersionMismatch {
                            kind,
                            id,
                            expected: *version,
                            actual,
                        });
                    }
                    continue;
                }
                (Op::Create { .. }, Some(_)) => return Err(TxnError::Exists { kind, id }),
                (Op::Create { object }, None) => {
                    let mut object = object.clone();
                    let meta = object.meta_mut();
                    meta.version = index;
                    meta.created_at_ms = txn.timestamp_ms;
                    meta.updated_at_ms = txn.timestamp_ms;
                    let object = Arc::new(object);
                    changes.push(Change {
                        action: Action::Create,
                        object: object.clone(),
                    });
                    Some(object)
                }
                (Op::Update { .. } | Op::Delete { .. }, None) => {
                    return Err(TxnError::NotFound { kind, id })
                }
                (Op::Update { object }, Some(old)) => {
                    let expected = object.meta().version;
                    let actual = old.meta().version;
                    if expected != actual {
                        return Err(TxnError::VersionMismatch {
                            kind,
                            id,
                            expected,
                            actual,
                        });
                    }
                    let mut object = object.clone();
                    let meta = object.meta_mut();
                    meta.version = index;
                    meta.created_at_ms = old.meta().created_at_ms;
                    meta.updated_at_ms = txn.timestamp_ms;
                    let object = Arc::new(object);
                    changes.push(Change {
                        action: Action::Update,
                        object: object.clone(),
                    });
                    Some(object)
                }
                (Op::Delete { version, .. }, Some(old)) => {
                    if let Some(expected) = *version {
                        let actual = old.meta().version;
                        if expected != actual {
                            return Err(TxnError::VersionMismatch {
                                kind,
                                id,
                                expected,
                                actual,
                            });
                        }
                    }
                    changes.push(Change {
                        action: Action::Delete,
                        object: old,
                    });
                    None
                }
            };
            staged.insert((kind, id), next);
        }
        self.check_names(&staged)?;
        self.check_networks(&staged)?;
        let (released, taken) = self.address_changes(&staged)?;
        for key in released {
            self.addrs.remove(&key);
        }
        self.addrs.extend(taken);
        for ((kind, id), object) in staged {
            let table = self.tables.entry(kind).or_default();
            match object {
                Some(o) => {
                    table.insert(id, o);
                }
                None => {
                    table.remove(&id);
                }
            }
        }
        Ok(changes)
    }

    /// Names that must be unique within their kind (services, networks) stay unique: a transaction
    /// that would give two objects one name is rejected.
    fn check_names(
        &self,
        staged: &BTreeMap<(Kind, String), Option<Arc<Object>>>,
    ) -> Result<(), TxnError> {
        fn name_of(o: &Object) -> Option<&str> {
            match o {
                Object::Service(s) => Some(&s.spec.name),
                Object::Network(n) => Some(&n.spec.name),
                _ => None,
            }
        }
        for ((kind, id), object) in staged {
            let Some(name) = object.as_deref().and_then(name_of) else {
                continue;
            };
            let staged_clash = staged.iter().find(|((k, other), o)| {
                k == kind && other != id && o.as_deref().and_then(name_of) == Some(name)
            });
            // Stored objects this transaction touches were checked above in their new form.
            let stored_clash = self
                .tables
                .get(kind)
                .into_iter()
                .flat_map(|t| t.iter())
                .find(|(other, o)| {
                    name_of(o) == Some(name) && !staged.contains_key(&(*kind, (*other).clone()))
                })
                .map(|(other, _)| other);
            if let Some(other) = staged_clash.map(|((_, other), _)| other).or(stored_clash) {
                return Err(TxnError::NameConflict {
                    kind: *kind,
                    name: name.to_string(),
                    id: other.clone(),
                });
            }
        }
        Ok(())
    }

    /// The object `kind`/`id` as this transaction leaves it.
    fn staged_or_stored<'a>(
        &'a self,
        staged: &'a BTreeMap<(Kind, String), Option<Arc<Object>>>,
        kind: Kind,
        id: &str,
    ) -> Option<&'a Object> {
        match staged.get(&(kind, id.to_string())) {
            Some(o) => o.as_deref(),
            None => self.lookup(kind, id).map(|o| &**o),
        }
    }

    /// Networks stay apart (VXLAN ids unique and in range, subnets disjoint, gateway inside), a
    /// network is removed only when nothing uses it, and services only name networks that exist.
    fn check_networks(
        &self,
        staged: &BTreeMap<(Kind, String), Option<Arc<Object>>>,
    ) -> Result<(), TxnError> {
        let networks = || {
            let stored = self
                .list::<Network>()
                .filter(|n| !staged.contains_key(&(Kind::Network, n.id.clone())));
            let fresh = staged.values().filter_map(|o| match o.as_deref() {
                Some(Object::Network(n)) => Some(n),
                _ => None,
            });
            stored.chain(fresh)
        };
        for ((kind, id), object) in staged {
            match (kind, object.as_deref()) {
                (Kind::Network, Some(Object::Network(n))) => {
                    if !(VNI_FIRST..=VNI_LAST).contains(&n.vni) {
                        return Err(TxnError::AddressConflict(format!(
                            "network {}: VXLAN id {} is outside {VNI_FIRST}-{VNI_LAST}",
                            n.spec.name, n.vni
                        )));
                    }
                    if !n.subnet.is_host(n.gateway) {
                        return Err(TxnError::AddressConflict(format!(
                            "network {}: gateway {} is not a host address of {}",
                            n.spec.name, n.gateway, n.subnet
                        )));
                    }
                    for other in networks().filter(|o| o.id != n.id) {
                        if other.vni == n.vni {
                            return Err(TxnError::AddressConflict(format!(
                                "network {}: VXLAN id {} is taken by network {}",
                                n.spec.name, n.vni, other.spec.name
                            )));
                        }
                        if other.subnet.overlaps(&n.subnet) {
                            return Err(TxnError::AddressConflict(format!(
                                "network {}: subnet {} overlaps {} of network {}; choose another --subnet",
                                n.spec.name, n.subnet, other.subnet, other.spec.name
                            )));
                        }
                    }
                }
                (Kind::Network, None) => {
                    let Some(Object::Network(old)) = self.lookup(Kind::Network, id).map(|o| &**o)
                    else {
                        continue;
                    };
                    if let Some(by) = self.network_user(staged, id) {
                        return Err(TxnError::InUse {
                            kind: Kind::Network,
                            id: id.clone(),
                            name: old.spec.name.clone(),
                            by,
                        });
                    }
                }
                (Kind::Service, Some(Object::Service(svc))) => {
                    let before = self.get::<Service>(id).map(|s| &s.spec.task.networks);
                    if before == Some(&svc.spec.task.networks) {
                        continue;
                    }
                    for net in &svc.spec.task.networks {
                        if self
                            .staged_or_stored(staged, Kind::Network, &net.target)
                            .is_none()
                        {
                            return Err(TxnError::NotFound {
                                kind: Kind::Network,
                                id: net.target.clone(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A service or live task (as this transaction leaves them) that uses network `id`.
    fn network_user(
        &self,
        staged: &BTreeMap<(Kind, String), Option<Arc<Object>>>,
        id: &str,
    ) -> Option<String> {
        let live = |kind: Kind| {
            let stored = self
                .tables
                .get(&kind)
                .into_iter()
                .flat_map(|t| t.iter())
                .filter(move |(oid, _)| !staged.contains_key(&(kind, (*oid).clone())))
                .map(|(_, o)| &**o);
            let fresh = staged
                .iter()
                .filter(move |((k, _), _)| *k == kind)
                .filter_map(|(_, o)| o.as_deref());
            stored.chain(fresh)
        };
        for o in live(Kind::Service) {
            if let Object::Service(s) = o {
                if s.spec.task.networks.iter().any(|n| n.target == id)
                    || s.virtual_ips.iter().any(|v| v.network_id == id)
                {
                    return Some(format!("service {}", s.spec.name));
                }
            }
        }
        for o in live(Kind::Task) {
            if let Object::Task(t) = o {
                if t.holds_addresses() && t.networks.iter().any(|n| n.network_id == id) {
                    return Some(format!("task {}", t.name()));
                }
            }
        }
        None
    }

    /// The addresses this transaction releases and takes; refuses one address for two holders,
    /// and addresses outside their network or on a network that does not exist.
    #[allow(clippy::type_complexity)]
    fn address_changes(
        &self,
        staged: &BTreeMap<(Kind, String), Option<Arc<Object>>>,
    ) -> Result<
        (
            BTreeSet<(String, Ipv4Addr)>,
            BTreeMap<(String, Ipv4Addr), String>,
        ),
        TxnError,
    > {
        fn held(o: &Object) -> &[NetworkAttachment] {
            match o {
                Object::Task(t) if t.holds_addresses() => &t.networks,
                Object::Service(s) => &s.virtual_ips,
                _ => &[],
            }
        }
        let mut released = BTreeSet::new();
        let mut taken: BTreeMap<(String, Ipv4Addr), String> = BTreeMap::new();
        for ((kind, id), object) in staged {
            if !matches!(kind, Kind::Task | Kind::Service) {
                continue;
            }
            let old = self.lookup(*kind, id).map(|o| held(o)).unwrap_or_default();
            let new = object.as_deref().map(held).unwrap_or_default();
            if old == new {
                continue;
            }
            released.extend(old.iter().map(|a| (a.network_id.clone(), a.addr)));
            for a in new {
                let key = (a.network_id.clone(), a.addr);
                if let Some(other) = taken.insert(key, id.clone()) {
                    return Err(TxnError::AddressConflict(format!(
                        "address {} on network {} given to both {other} and {id}",
                        a.addr, a.network_id
                    )));
                }
            }
        }
        for ((net, addr), holder) in &taken {
            match self.addrs.get(&(net.clone(), *addr)) {
                Some(other) if other != holder && !released.contains(&(net.clone(), *addr)) => {
                    return Err(TxnError::AddressConflict(format!(
                        "address {addr} on network {net} is held by {other}"
                    )));
                }
                _ => {}
            }
            let Some(Object::Network(n)) = self.staged_or_stored(staged, Kind::Network, net) else {
                return Err(TxnError::NotFound {
                    kind: Kind::Network,
                    id: net.clone(),
                });
            };
            if !n.subnet.is_host(*addr) || *addr == n.gateway {
                return Err(TxnError::AddressConflict(format!(
                    "address {addr} is not free for endpoints on network {} ({}, gateway {})",
                    n.spec.name, n.subnet, n.gateway
                )));
            }
        }
        Ok((released, taken))
    }

    /// Serialises the whole state (for Raft snapshots).
    pub fn snapshot(&self) -> Vec<u8> {
        let objects = self
            .tables
            .values()
            .flat_map(|t| t.values().map(|o| &**o))
            .collect();
        serde_json::to_vec(&SnapshotRef {
            index: self.index,
            objects,
        })
        .unwrap_or_default()
    }

    /// Rebuilds a state from [`StateMachine::snapshot`] output.
    pub fn restore(bytes: &[u8]) -> Result<StateMachine, serde_json::Error> {
        let data: SnapshotData = serde_json::from_slice(bytes)?;
        let mut sm = StateMachine {
            index: data.index,
            tables: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        for o in data.objects {
            let held = match &o {
                Object::Task(t) if t.holds_addresses() => t.networks.as_slice(),
                Object::Service(s) => s.virtual_ips.as_slice(),
                _ => &[],
            };
            for a in held {
                sm.addrs
                    .insert((a.network_id.clone(), a.addr), o.id().to_string());
            }
            sm.tables
                .entry(o.kind())
                .or_default()
                .insert(o.id().to_string(), Arc::new(o));
        }
        Ok(sm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Availability, Cluster, Node, NodeStatus};

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            hostname: format!("host-{id}"),
            ..Node::default()
        }
    }

    fn txn(ops: Vec<Op>) -> Txn {
        Txn {
            timestamp_ms: 1000,
            ops,
        }
    }

    #[test]
    fn create_sets_versions_and_times() {
        let mut sm = StateMachine::new();
        let changes = sm.apply(5, &txn(vec![Txn::create(node("a"))])).unwrap();
        assert_eq!(changes.len(), 1);
        let a = sm.get::<Node>("a").unwrap();
        assert_eq!(a.meta.version, 5);
        assert_eq!(a.meta.created_at_ms, 1000);
        assert_eq!(sm.index(), 5);
        assert_eq!(
            sm.apply(6, &txn(vec![Txn::create(node("a"))])),
            Err(TxnError::Exists {
                kind: Kind::Node,
                id: "a".into()
            })
        );
        assert_eq!(sm.index(), 6, "a rejected txn still advances the index");
    }

    #[test]
    fn update_requires_current_version() {
        let mut sm = StateMachine::new();
        sm.apply(1, &txn(vec![Txn::create(node("a"))])).unwrap();
        let mut a = sm.get::<Node>("a").unwrap().clone();
        a.availability = Availability::Drain;
        let stale = a.clone();
        sm.apply(
            2,
            &Txn {
                timestamp_ms: 2000,
                ops: vec![Txn::update(a)],
            },
        )
        .unwrap();
        let now = sm.get::<Node>("a").unwrap();
        assert_eq!(now.availability, Availability::Drain);
        assert_eq!(now.meta.version, 2);
        assert_eq!(now.meta.created_at_ms, 1000);
        assert_eq!(now.meta.updated_at_ms, 2000);
        let err = sm.apply(3, &txn(vec![Txn::update(stale)])).unwrap_err();
        assert!(matches!(
            err,
            TxnError::VersionMismatch {
                expected: 1,
                actual: 2,
                ..
            }
        ));
    }

    #[test]
    fn transactions_are_all_or_nothing() {
        let mut sm = StateMachine::new();
        sm.apply(1, &txn(vec![Txn::create(node("a"))])).unwrap();
        let before = sm.clone();
        let err = sm
            .apply(
                2,
                &txn(vec![Txn::create(node("b")), Txn::create(node("a"))]),
            )
            .unwrap_err();
        assert!(matches!(err, TxnError::Exists { .. }));
        assert!(sm.get::<Node>("b").is_none());
        assert_eq!(sm.list::<Node>().count(), before.list::<Node>().count());
    }

    #[test]
    fn ops_in_one_txn_see_each_other() {
        let mut sm = StateMachine::new();
        let mut n = node("a");
        let create = Txn::create(n.clone());
        n.meta.version = 7;
        n.status = NodeStatus::Ready;
        sm.apply(7, &txn(vec![create, Txn::update(n)])).unwrap();
        assert_eq!(sm.get::<Node>("a").unwrap().status, NodeStatus::Ready);
        let a = sm.get::<Node>("a").unwrap().clone();
        let changes = sm.apply(8, &txn(vec![Txn::delete(&a)])).unwrap();
        assert_eq!(changes[0].action, Action::Delete);
        assert!(sm.get::<Node>("a").is_none());
        assert!(matches!(
            sm.apply(9, &txn(vec![Txn::delete(&a)])),
            Err(TxnError::NotFound { .. })
        ));
    }

    #[test]
    fn snapshot_round_trip() {
        let mut sm = StateMachine::new();
        sm.apply(
            3,
            &txn(vec![
                Txn::create(node("a")),
                Txn::create(node("b")),
                Txn::create(Cluster {
                    id: Cluster::ID.into(),
                    cluster_id: "c1".into(),
                    ..Cluster::default()
                }),
            ]),
        )
        .unwrap();
        let restored = StateMachine::restore(&sm.snapshot()).unwrap();
        assert_eq!(restored, sm);
        assert_eq!(restored.index(), 3);
        assert_eq!(
            restored.get::<Cluster>(Cluster::ID).unwrap().cluster_id,
            "c1"
        );
    }

    #[test]
    fn snapshots_are_byte_identical_across_replicas() {
        let build = || {
            let mut sm = StateMachine::new();
            sm.apply(
                1,
                &txn(vec![
                    Txn::create(node("b")),
                    Txn::create(Cluster {
                        id: Cluster::ID.into(),
                        ..Cluster::default()
                    }),
                    Txn::create(node("a")),
                ]),
            )
            .unwrap();
            sm.snapshot()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn checks_guard_a_transaction_without_changing_anything() {
        let mut sm = StateMachine::new();
        sm.apply(1, &txn(vec![Txn::create(node("a"))])).unwrap();
        let a = sm.get::<Node>("a").unwrap().clone();
        let changes = sm
            .apply(2, &txn(vec![Txn::check(&a), Txn::create(node("b"))]))
            .unwrap();
        assert_eq!(changes.len(), 1, "a check is not a change");
        let mut a2 = a.clone();
        a2.hostname = "renamed".into();
        sm.apply(3, &txn(vec![Txn::update(a2)])).unwrap();
        let err = sm
            .apply(4, &txn(vec![Txn::check(&a), Txn::create(node("c"))]))
            .unwrap_err();
        assert!(matches!(
            err,
            TxnError::VersionMismatch {
                expected: 1,
                actual: 3,
                ..
            }
        ));
        assert!(sm.get::<Node>("c").is_none());
    }

    #[test]
    fn service_names_stay_unique() {
        use crate::service::{Service, ServiceSpec};
        let svc = |id: &str, name: &str| Service {
            id: id.into(),
            spec: ServiceSpec {
                name: name.into(),
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        let mut sm = StateMachine::new();
        sm.apply(1, &txn(vec![Txn::create(svc("a", "web"))]))
            .unwrap();
        let err = sm
            .apply(2, &txn(vec![Txn::create(svc("b", "web"))]))
            .unwrap_err();
        assert!(matches!(err, TxnError::NameConflict { ref id, .. } if id == "a"));
        assert!(sm
            .apply(
                3,
                &txn(vec![Txn::create(svc("c", "x")), Txn::create(svc("d", "x"))])
            )
            .is_err());
        // Renaming a and taking its old name in one transaction is fine.
        let mut a = sm.get::<Service>("a").unwrap().clone();
        a.spec.name = "old".into();
        sm.apply(4, &txn(vec![Txn::update(a), Txn::create(svc("e", "web"))]))
            .unwrap();
        // A deleted service frees its name.
        let e = sm.get::<Service>("e").unwrap().clone();
        sm.apply(5, &txn(vec![Txn::delete(&e), Txn::create(svc("f", "web"))]))
            .unwrap();
    }

    #[test]
    fn txn_codec_round_trip() {
        let t = txn(vec![
            Txn::create(node("a")),
            Op::Delete {
                kind: Kind::Node,
                id: "b".into(),
                version: None,
            },
        ]);
        assert_eq!(Txn::decode(&t.encode()).unwrap(), t);
    }

    mod networks {
        use super::*;
        use crate::network::{Network, NetworkAttachment, NetworkAttachmentConfig, NetworkSpec};
        use crate::service::{Task, TaskState};

        fn net(id: &str, name: &str, subnet: &str, vni: u32) -> Network {
            let subnet: crate::Subnet = subnet.parse().unwrap();
            Network {
                id: id.into(),
                meta: Meta::default(),
                spec: NetworkSpec {
                    name: name.into(),
                    driver: "overlay".into(),
                    ..NetworkSpec::default()
                },
                subnet,
                gateway: std::net::Ipv4Addr::from(subnet.first() + 1),
                vni,
            }
        }

        fn task(id: &str, network: &str, addr: &str) -> Task {
            Task {
                id: id.into(),
                service_id: "s".into(),
                networks: vec![NetworkAttachment {
                    network_id: network.into(),
                    addr: addr.parse().unwrap(),
                    aliases: vec![],
                }],
                ..Task::default()
            }
        }

        fn sm_with(objects: Vec<Op>) -> StateMachine {
            let mut sm = StateMachine::new();
            sm.apply(1, &txn(objects)).unwrap();
            sm
        }

        use crate::objects::Meta;

        #[test]
        fn networks_keep_apart() {
            let mut sm = sm_with(vec![Txn::create(net("n1", "a", "10.0.0.0/24", 4096))]);
            let vni = sm.apply(
                2,
                &txn(vec![Txn::create(net("n2", "b", "10.0.1.0/24", 4096))]),
            );
            assert!(
                matches!(vni, Err(TxnError::AddressConflict(m)) if m.contains("VXLAN id 4096"))
            );
            let overlap = sm.apply(
                3,
                &txn(vec![Txn::create(net("n2", "b", "10.0.0.0/16", 4097))]),
            );
            assert!(matches!(overlap, Err(TxnError::AddressConflict(m)) if m.contains("overlaps")));
            let name = sm.apply(
                4,
                &txn(vec![Txn::create(net("n2", "a", "10.0.1.0/24", 4097))]),
            );
            assert!(matches!(name, Err(TxnError::NameConflict { .. })));
            let mut bad_gw = net("n2", "b", "10.0.1.0/24", 4097);
            bad_gw.gateway = "10.0.2.1".parse().unwrap();
            assert!(sm.apply(5, &txn(vec![Txn::create(bad_gw)])).is_err());
            assert!(sm
                .apply(
                    6,
                    &txn(vec![Txn::create(net("n2", "b", "10.0.1.0/24", 4097))])
                )
                .is_ok());
            // Two creates in one transaction are checked against each other too.
            let both = sm.apply(
                7,
                &txn(vec![
                    Txn::create(net("n3", "c", "10.0.2.0/24", 5000)),
                    Txn::create(net("n4", "d", "10.0.2.0/25", 5001)),
                ]),
            );
            assert!(matches!(both, Err(TxnError::AddressConflict(_))));
            assert_eq!(sm.count(Kind::Network), 2);
        }

        #[test]
        fn addresses_have_one_holder_until_released() {
            let mut sm = sm_with(vec![Txn::create(net("n1", "a", "10.0.0.0/24", 4096))]);
            sm.apply(2, &txn(vec![Txn::create(task("t1", "n1", "10.0.0.2"))]))
                .unwrap();
            assert_eq!(
                sm.address_holder("n1", "10.0.0.2".parse().unwrap()),
                Some("t1")
            );
            let dup = sm.apply(3, &txn(vec![Txn::create(task("t2", "n1", "10.0.0.2"))]));
            assert!(matches!(dup, Err(TxnError::AddressConflict(m)) if m.contains("held by t1")));
            for bad in ["10.0.0.1", "10.0.0.0", "10.0.0.255", "10.0.1.2"] {
                let r = sm.apply(4, &txn(vec![Txn::create(task("t2", "n1", bad))]));
                assert!(
                    matches!(r, Err(TxnError::AddressConflict(_))),
                    "{bad}: {r:?}"
                );
            }
            let unknown = sm.apply(5, &txn(vec![Txn::create(task("t2", "nx", "10.0.0.3"))]));
            assert!(matches!(unknown, Err(TxnError::NotFound { .. })));
            // A task that stopped for good releases its address.
            let mut t1 = sm.get::<Task>("t1").unwrap().clone();
            t1.status.state = TaskState::Failed;
            sm.apply(6, &txn(vec![Txn::update(t1)])).unwrap();
            assert_eq!(sm.address_holder("n1", "10.0.0.2".parse().unwrap()), None);
            sm.apply(7, &txn(vec![Txn::create(task("t2", "n1", "10.0.0.2"))]))
                .unwrap();
            assert_eq!(sm.addresses_on("n1").count(), 1);
            // Moving an address between holders in one transaction is fine.
            let t2 = sm.get::<Task>("t2").unwrap().clone();
            sm.apply(
                8,
                &txn(vec![
                    Txn::delete(&t2),
                    Txn::create(task("t3", "n1", "10.0.0.2")),
                ]),
            )
            .unwrap();
            assert_eq!(
                sm.address_holder("n1", "10.0.0.2".parse().unwrap()),
                Some("t3")
            );
            // Snapshots rebuild the index.
            let restored = StateMachine::restore(&sm.snapshot()).unwrap();
            assert_eq!(restored, sm);
        }

        #[test]
        fn networks_in_use_stay() {
            let mut sm = sm_with(vec![Txn::create(net("n1", "a", "10.0.0.0/24", 4096))]);
            let mut svc = Service {
                id: "s".into(),
                ..Service::default()
            };
            svc.spec.name = "web".into();
            svc.spec.task.networks = vec![NetworkAttachmentConfig {
                target: "nx".into(),
                aliases: vec![],
            }];
            let unknown = sm.apply(2, &txn(vec![Txn::create(svc.clone())]));
            assert!(matches!(
                unknown,
                Err(TxnError::NotFound {
                    kind: Kind::Network,
                    ..
                })
            ));
            svc.spec.task.networks[0].target = "n1".into();
            sm.apply(3, &txn(vec![Txn::create(svc)])).unwrap();
            let n1 = sm.get::<Network>("n1").unwrap().clone();
            let err = sm.apply(4, &txn(vec![Txn::delete(&n1)])).unwrap_err();
            assert_eq!(
                err.to_string(),
                "network a is in use by service web; remove that first"
            );
            let svc = sm.get::<Service>("s").unwrap().clone();
            sm.apply(
                5,
                &txn(vec![
                    Txn::delete(&svc),
                    Txn::create(task("t1", "n1", "10.0.0.9")),
                ]),
            )
            .unwrap();
            let err = sm.apply(6, &txn(vec![Txn::delete(&n1)])).unwrap_err();
            assert!(err.to_string().contains("in use by task"), "{err}");
            let t1 = sm.get::<Task>("t1").unwrap().clone();
            sm.apply(7, &txn(vec![Txn::delete(&t1), Txn::delete(&n1)]))
                .unwrap();
            assert_eq!(sm.count(Kind::Network), 0);
        }
    }
}
