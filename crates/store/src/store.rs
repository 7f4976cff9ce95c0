//! The store handle callers use, the replica every backend applies into, and the backend trait.

use std::sync::{Arc, Mutex, RwLock};

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use crate::objects::StoreObject;
use crate::state::{ChangeBatch, Op, StateMachine, Txn, TxnError};

/// How many change batches a slow watcher may fall behind before it must re-watch.
const WATCH_BUFFER: usize = 4096;
/// How often [`Store::update`] re-reads and retries after a concurrent change.
const UPDATE_RETRIES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("this manager is not the leader of the cluster store{}", leader_hint(.leader_addr))]
    NotLeader { leader_addr: Option<String> },
    #[error("the cluster store is shutting down")]
    ShuttingDown,
    #[error("the cluster store failed: {0}")]
    Backend(String),
    #[error("{0}")]
    Invalid(String),
}

fn leader_hint(addr: &Option<String>) -> String {
    match addr {
        Some(a) => format!(" (the leader is at {a})"),
        None => String::new(),
    }
}

/// A raft (or etcd) member as the backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
}

/// What the consensus backend reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStatus {
    pub is_leader: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub applied: u64,
    pub members: Vec<Member>,
}

/// A consensus backend: orders and durably commits transactions, then applies them, in order, to
/// the [`Replica`] it was built with.
pub trait Backend: Send + Sync + 'static {
    /// Commits `txn`. Resolves once the transaction has been applied to the local replica, with its
    /// index, or with the [`TxnError`] that rejected it.
    fn commit(&self, txn: Txn) -> BoxFuture<'static, Result<u64, StoreError>>;
    fn status(&self) -> BackendStatus;
}

struct ReplicaInner {
    state: StateMachine,
    events: broadcast::Sender<Arc<ChangeBatch>>,
}

/// The local materialised state, shared between the backend (which applies committed transactions)
/// and the [`Store`] handles (which read and watch).
pub struct Replica {
    inner: RwLock<ReplicaInner>,
}

impl Replica {
    pub fn new(state: StateMachine) -> Arc<Self> {
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        Arc::new(Replica {
            inner: RwLock::new(ReplicaInner { state, events }),
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReplicaInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, ReplicaInner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one committed transaction and tells the watchers.
    pub fn apply(&self, index: u64, txn: &Txn) -> Result<(), TxnError> {
        let mut inner = self.write();
        let changes = inner.state.apply(index, txn)?;
        if !changes.is_empty() {
            // No receivers is fine.
            let _ = inner.events.send(Arc::new(ChangeBatch { index, changes }));
        }
        Ok(())
    }

    /// Advances the index over a log entry that carries no transaction (e.g. a raft no-op).
    pub fn skip(&self, index: u64) {
        let mut inner = self.write();
        let _ = inner.state.apply(index, &Txn::default());
    }

    /// Replaces the whole state (a snapshot was installed). Watchers see their stream end and must
    /// watch again.
    pub fn restore(&self, state: StateMachine) {
        let mut inner = self.write();
        inner.state = state;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        inner.events = events;
    }

    pub fn read<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        f(&self.read_inner().state)
    }

    pub fn index(&self) -> u64 {
        self.read_inner().state.index()
    }

    /// Every change from now on, without a copy of the state (cheaper than [`Replica::watch`] for
    /// watchers that read what they need from the store on each change).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeBatch>> {
        self.read_inner().events.subscribe()
    }

    /// A consistent copy of the state plus every change after it.
    pub fn watch(&self) -> Watch {
        let inner = self.read_inner();
        Watch {
            snapshot: inner.state.clone(),
            events: inner.events.subscribe(),
        }
    }
}

/// A watch: the state at `snapshot.index()` and every later change batch, in order. When `events`
/// reports `Lagged` or `Closed`, the watcher must call [`Store::watch`] again.
pub struct Watch {
    pub snapshot: StateMachine,
    pub events: broadcast::Receiver<Arc<ChangeBatch>>,
}

/// The handle every component uses to read, change and watch cluster state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    replica: Arc<Replica>,
    backend: Arc<dyn Backend>,
}

impl Store {
    pub fn new(replica: Arc<Replica>, backend: Arc<dyn Backend>) -> Self {
        Store { replica, backend }
    }

    pub fn read<R>(&self, f: impl FnOnce(&StateMachine) -> R) -> R {
        self.replica.read(f)
    }

    pub fn get<T: StoreObject>(&self, id: &str) -> Option<T> {
        self.replica.read(|s| s.get::<T>(id).cloned())
    }

    pub fn list<T: StoreObject>(&self) -> Vec<T> {
        self.replica.read(|s| s.list::<T>().cloned().collect())
    }

    pub fn index(&self) -> u64 {
        self.replica.index()
    }

    pub fn watch(&self) -> Watch {
        self.replica.watch()
    }

    /// Every change from now on, without a snapshot; see [`Replica::subscribe`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeBatch>> {
        self.replica.subscribe()
    }

    pub fn status(&self) -> BackendStatus {
        self.backend.status()
    }

    /// Commits a transaction; resolves once it is applied locally.
    pub async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.backend.commit(txn).await
    }

    /// Read-modify-write with optimistic concurrency: `f` reads the current state and returns the
    /// ops to commit (none: nothing to do, returns the current index). On a version conflict the
    /// state is read again and `f` runs again.
    pub async fn update<F>(&self, mut f: F) -> Result<u64, StoreError>
    where
        F: FnMut(&StateMachine) -> Result<Vec<Op>, StoreError>,
    {
        let mut attempt = 0;
        loop {
            let ops = self.replica.read(&mut f)?;
            if ops.is_empty() {
                return Ok(self.index());
            }
            match self.commit(Txn::new(ops)).await {
                Err(StoreError::Txn(
                    TxnError::VersionMismatch { .. } | TxnError::AddressConflict(_),
                )) if attempt < UPDATE_RETRIES => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A backend that is neither replicated nor durable: it applies transactions straight to the
/// replica. For pure-logic tests and benchmarks only; daemons use the Raft (or etcd) backend.
pub struct MemoryBackend {
    replica: Arc<Replica>,
    lock: Mutex<()>,
}

impl MemoryBackend {
    pub fn store(state: StateMachine) -> Store {
        let replica = Replica::new(state);
        let backend = Arc::new(MemoryBackend {
            replica: replica.clone(),
            lock: Mutex::new(()),
        });
        Store::new(replica, backend)
    }
}

impl Backend for MemoryBackend {
    fn commit(&self, txn: Txn) -> BoxFuture<'static, Result<u64, StoreError>> {
        let result = {
            let _serial = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let index = self.replica.index() + 1;
            self.replica.apply(index, &txn).map(|()| index)
        };
        Box::pin(async move { result.map_err(StoreError::from) })
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            is_leader: true,
            leader: Some(1),
            term: 1,
            applied: self.replica.index(),
            members: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Availability, Node};
    use crate::state::Action;

    #[tokio::test]
    async fn watch_gives_snapshot_then_changes() {
        let store = MemoryBackend::store(StateMachine::new());
        store
            .commit(Txn::new(vec![Txn::create(Node {
                id: "a".into(),
                ..Node::default()
            })]))
            .await
            .unwrap();
        let mut watch = store.watch();
        assert_eq!(watch.snapshot.list::<Node>().count(), 1);
        store
            .update(|s| {
                let mut n = s
                    .get::<Node>("a")
                    .cloned()
                    .ok_or_else(|| StoreError::Invalid("gone".into()))?;
                n.availability = Availability::Pause;
                Ok(vec![Txn::update(n)])
            })
            .await
            .unwrap();
        let batch = watch.events.recv().await.unwrap();
        assert_eq!(batch.index, 2);
        assert_eq!(batch.changes[0].action, Action::Update);
    }

    #[tokio::test]
    async fn subscribers_see_later_changes_only() {
        let store = MemoryBackend::store(StateMachine::new());
        store
            .commit(Txn::new(vec![Txn::create(Node {
                id: "before".into(),
                ..Node::default()
            })]))
            .await
            .unwrap();
        let mut events = store.subscribe();
        store
            .commit(Txn::new(vec![Txn::create(Node {
                id: "after".into(),
                ..Node::default()
            })]))
            .await
            .unwrap();
        let batch = events.recv().await.unwrap();
        assert_eq!(batch.changes.len(), 1);
        assert_eq!(batch.changes[0].object.id(), "after");
        assert!(events.try_recv().is_err(), "nothing else was committed");
    }

    #[tokio::test]
    async fn update_retries_after_a_concurrent_change() {
        let store = MemoryBackend::store(StateMachine::new());
        store
            .commit(Txn::new(vec![Txn::create(Node {
                id: "a".into(),
                ..Node::default()
            })]))
            .await
            .unwrap();
        // Someone else changes the node between our first read and our commit.
        let stale = store.get::<Node>("a").unwrap();
        let mut theirs = stale.clone();
        theirs.labels.insert("x".into(), "1".into());
        store
            .commit(Txn::new(vec![Txn::update(theirs)]))
            .await
            .unwrap();
        let mut runs = 0;
        store
            .update(|s| {
                runs += 1;
                let mut n = if runs == 1 {
                    stale.clone()
                } else {
                    s.get::<Node>("a").cloned().unwrap()
                };
                n.availability = Availability::Drain;
                Ok(vec![Txn::update(n)])
            })
            .await
            .unwrap();
        assert_eq!(runs, 2);
        let n = store.get::<Node>("a").unwrap();
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels.get("x").map(String::as_str), Some("1"));
    }
}
