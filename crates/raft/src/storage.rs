//! Durable raft storage: the log, the hard state, the conf state, the latest snapshot and the member
//! address map, all in one redb database file, `<data_dir>/raft.redb`.
//!
//! The read side ([`raft::Storage`]) is served from an in-memory mirror of the log; every write goes
//! to disk first (on a blocking thread, committed with redb's immediate durability, i.e. fsync,
//! whenever raft requires it) and updates the mirror only after the disk write succeeded.
//!
//! Snapshot data is an envelope of the member address map and the state machine's
//! [`StateMachine::snapshot`] bytes, so a member that installs a snapshot also learns where the
//! other members are.
//!
//! Architecture invariant: only the raft driver writes, and it awaits each write before the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rswarm_store::{Replica, StateMachine};

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "raft.redb";

/// Log entries by index, each a protobuf-encoded `eraftpb::Entry`.
const ENTRIES: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("entries");
/// Singletons: hard state, conf state, snapshot metadata and snapshot data.
const STATE: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("state");
/// Raft member id → the address its raft endpoint is reachable at.
const MEMBERS: TableDefinition<'static, u64, &'static str> = TableDefinition::new("members");

const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";
/// Index and term (16 bytes, little endian) of the compaction point: the last entry deleted from
/// the log. It is at or before the snapshot index (entries are kept for slow followers).
const KEY_LOG_START: &str = "log_start";

/// First bytes of every snapshot data envelope (format version 1).
const SNAPSHOT_MAGIC: &[u8; 8] = b"RSWSNAP1";

/// Why the raft storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database itself failed (IO error, lock held by another process, ...).
    #[error("the raft database failed: {0}; check the disk and the permissions of the data directory, and that no other rswarm process uses it")]
    Db(#[from] redb::Error),
    /// [`bootstrap`] found an existing database.
    #[error("a raft database already exists at {}; this manager was initialised before (start it without bootstrapping, or empty the data directory to start over)", .0.display())]
    AlreadyExists(PathBuf),
    /// The data directory could not be created.
    #[error("cannot create the raft data directory {}: {source}; check the path and its permissions", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Stored (or received) data does not decode or is inconsistent.
    #[error("the raft data is corrupt: {0}; restore the data directory from a backup, or remove this manager from the cluster and rejoin it with an empty data directory")]
    Corrupt(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("the raft storage task failed: {0}")]
    Task(String),
    /// Raft member ids must not be zero.
    #[error("raft member id 0 is reserved; choose a non-zero id")]
    ZeroId,
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

fn db_err<E: Into<redb::Error>>(e: E) -> StorageError {
    StorageError::Db(e.into())
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| StorageError::Corrupt(format!("cannot encode a raft record: {e}")))
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

/// Runs blocking database work off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

/// Builds snapshot data: the member map, then the state machine bytes.
pub(crate) fn encode_snapshot_data(members: &BTreeMap<u64, String>, state: &[u8]) -> Vec<u8> {
    let addrs: usize = members.values().map(String::len).sum();
    let mut out =
        Vec::with_capacity(SNAPSHOT_MAGIC.len() + 4 + members.len() * 12 + addrs + state.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    // Member counts and address lengths are tiny; saturate rather than wrap on absurd input.
    out.extend_from_slice(
        &u32::try_from(members.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (id, addr) in members {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&u32::try_from(addr.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out.extend_from_slice(state);
    out
}

/// Splits snapshot data into the member map and the state machine bytes.
pub(crate) fn decode_snapshot_data(data: &[u8]) -> Result<(BTreeMap<u64, String>, &[u8])> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if data.len() < n {
            return Err(StorageError::Corrupt(
                "snapshot data is truncated".to_string(),
            ));
        }
        let (head, tail) = data.split_at(n);
        *data = tail;
        Ok(head)
    }
    fn u32_le(bytes: &[u8]) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(bytes);
        u32::from_le_bytes(b)
    }
    fn u64_le(bytes: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        u64::from_le_bytes(b)
    }
    let mut rest = data;
    if take(&mut rest, SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
        return Err(StorageError::Corrupt(
            "snapshot data does not start with the rswarm snapshot header".to_string(),
        ));
    }
    let count = u32_le(take(&mut rest, 4)?);
    let mut members = BTreeMap::new();
    for _ in 0..count {
        let id = u64_le(take(&mut rest, 8)?);
        let len = u32_le(take(&mut rest, 4)?) as usize;
        let addr = std::str::from_utf8(take(&mut rest, len)?).map_err(|_| {
            StorageError::Corrupt(format!(
                "the address of member {id} in a snapshot is not UTF-8"
            ))
        })?;
        members.insert(id, addr.to_string());
    }
    Ok((members, rest))
}

/// Decodes snapshot data into the member map and the state machine.
pub(crate) fn decode_snapshot(data: &[u8]) -> Result<(BTreeMap<u64, String>, StateMachine)> {
    let (members, state) = decode_snapshot_data(data)?;
    let sm = StateMachine::restore(state)
        .map_err(|e| StorageError::Corrupt(format!("snapshot state does not decode: {e}")))?;
    Ok((members, sm))
}

fn encode_log_start(index: u64, term: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&term.to_le_bytes());
    b
}

fn decode_log_start(b: &[u8]) -> Result<(u64, u64)> {
    let bad = || StorageError::Corrupt("the log start record is not 16 bytes".to_string());
    let index = u64::from_le_bytes(b.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let term = u64::from_le_bytes(
        b.get(8..16)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    if b.len() != 16 {
        return Err(bad());
    }
    Ok((index, term))
}

/// Whether `id` is a member (voter or learner, incoming or outgoing) in `cs`.
fn conf_contains(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id)
        || cs.learners.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners_next.contains(&id)
}

/// One database write transaction.
#[derive(Default)]
struct Batch {
    /// Delete entries with index >= this (a conflicting suffix, or everything).
    delete_from: Option<u64>,
    /// Delete entries with index <= this (compaction).
    delete_through: Option<u64>,
    entries: Vec<(u64, Vec<u8>)>,
    state: Vec<(&'static str, Vec<u8>)>,
    /// Replace the whole member map.
    members: Option<BTreeMap<u64, String>>,
    /// fsync on commit.
    durable: bool,
}

impl Batch {
    fn commit(self, db: &Database) -> Result<()> {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(if self.durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_err)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(db_err)?;
            if let Some(from) = self.delete_from {
                entries.retain_in(from.., |_, _| false).map_err(db_err)?;
            }
            if let Some(through) = self.delete_through {
                entries
                    .retain_in(..=through, |_, _| false)
                    .map_err(db_err)?;
            }
            for (index, bytes) in &self.entries {
                entries.insert(*index, bytes.as_slice()).map_err(db_err)?;
            }
            let mut state = txn.open_table(STATE).map_err(db_err)?;
            for (key, bytes) in &self.state {
                state.insert(*key, bytes.as_slice()).map_err(db_err)?;
            }
            if let Some(map) = &self.members {
                let mut members = txn.open_table(MEMBERS).map_err(db_err)?;
                members.retain(|_, _| false).map_err(db_err)?;
                for (id, addr) in map {
                    members.insert(*id, addr.as_str()).map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)
    }
}

/// The in-memory mirror of the durable log. `start_index` is the compaction point: the entry
/// there is gone but its term is kept for log matching.
#[derive(Default)]
struct MemLog {
    start_index: u64,
    start_term: u64,
    /// `entries[i].index == start_index + 1 + i`.
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
}

impl MemLog {
    fn first_index(&self) -> u64 {
        self.start_index + 1
    }

    fn last_index(&self) -> u64 {
        self.start_index + self.entries.len() as u64
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.start_index {
            return Ok(self.start_term);
        }
        if idx < self.start_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_index() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.start_index - 1) as usize].term)
    }
}

/// What a database holds, as loaded on open.
struct Loaded {
    snapshot: Snapshot,
    start_index: u64,
    start_term: u64,
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    members: BTreeMap<u64, String>,
}

fn load(db: &Database) -> Result<Loaded> {
    let txn = db.begin_read().map_err(db_err)?;
    let state = txn.open_table(STATE).map_err(db_err)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>> {
        Ok(state.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    };
    let mut snapshot = Snapshot::default();
    if let Some(meta) = get(KEY_SNAPSHOT_META)? {
        snapshot.set_metadata(decode::<SnapshotMetadata>("snapshot metadata", &meta)?);
        let data = get(KEY_SNAPSHOT_DATA)?.ok_or_else(|| {
            StorageError::Corrupt("snapshot metadata without snapshot data".to_string())
        })?;
        snapshot.set_data(Bytes::from(data));
    }
    let (start_index, start_term) = match get(KEY_LOG_START)? {
        Some(b) => decode_log_start(&b)?,
        None => (snapshot.get_metadata().index, snapshot.get_metadata().term),
    };
    if start_index > snapshot.get_metadata().index {
        return Err(StorageError::Corrupt(format!(
            "the log starts after {start_index}, beyond the snapshot at {}",
            snapshot.get_metadata().index
        )));
    }
    let hard_state = match get(KEY_HARD_STATE)? {
        Some(b) => decode::<HardState>("hard state", &b)?,
        None => HardState::default(),
    };
    let conf_state = match get(KEY_CONF_STATE)? {
        Some(b) => decode::<ConfState>("conf state", &b)?,
        None => snapshot.get_metadata().get_conf_state().clone(),
    };
    let table = txn.open_table(ENTRIES).map_err(db_err)?;
    let mut entries = Vec::new();
    for item in table.range((start_index + 1)..).map_err(db_err)? {
        let (index, bytes) = item.map_err(db_err)?;
        let index = index.value();
        let entry: Entry = decode("log entry", bytes.value())?;
        let expected = start_index + 1 + entries.len() as u64;
        if entry.index != index || index != expected {
            return Err(StorageError::Corrupt(format!(
                "log entry {index} is out of order (expected {expected}, the entry says {})",
                entry.index
            )));
        }
        entries.push(entry);
    }
    let mut members = BTreeMap::new();
    let table = txn.open_table(MEMBERS).map_err(db_err)?;
    for item in table.iter().map_err(db_err)? {
        let (id, addr) = item.map_err(db_err)?;
        members.insert(id.value(), addr.value().to_string());
    }
    Ok(Loaded {
        snapshot,
        start_index,
        start_term,
        entries,
        hard_state,
        conf_state,
        members,
    })
}

/// Creates the tables so that read transactions find them.
fn create_tables(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(ENTRIES).map_err(db_err)?;
    txn.open_table(STATE).map_err(db_err)?;
    txn.open_table(MEMBERS).map_err(db_err)?;
    txn.commit().map_err(db_err)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates the raft store of a new single-member cluster in `data_dir`: a snapshot at index 1,
/// term 1 holding `initial` (the caller applied the cluster-creating transaction at index 1), a
/// conf state with `id` as the only voter, and the member map `{id: addr}`.
///
/// Refuses if `<data_dir>/raft.redb` already exists. Blocking (it fsyncs): call it from a blocking
/// context or `spawn_blocking`.
pub fn bootstrap(data_dir: &Path, id: u64, addr: &str, initial: StateMachine) -> Result<()> {
    let path = data_dir.join(DB_FILE);
    if path.exists() {
        return Err(StorageError::AlreadyExists(path));
    }
    if id == 0 {
        return Err(StorageError::ZeroId);
    }
    create_dir(data_dir)?;
    let db = Database::create(&path).map_err(db_err)?;
    let members = BTreeMap::from([(id, addr.to_string())]);
    let mut meta = SnapshotMetadata {
        index: 1,
        term: 1,
        ..SnapshotMetadata::default()
    };
    meta.mut_conf_state().voters = vec![id];
    let data = encode_snapshot_data(&members, &initial.snapshot());
    let hs = HardState {
        term: 1,
        commit: 1,
        ..HardState::default()
    };
    Batch {
        state: vec![
            (KEY_SNAPSHOT_META, encode(&meta)?),
            (KEY_SNAPSHOT_DATA, data),
            (KEY_CONF_STATE, encode(meta.get_conf_state())?),
            (KEY_HARD_STATE, encode(&hs)?),
        ],
        members: Some(members),
        durable: true,
        ..Batch::default()
    }
    .commit(&db)?;
    tracing::info!(id, addr, path = %path.display(), "bootstrapped a new single-member raft store");
    Ok(())
}

/// The durable raft storage of one member. Implements [`raft::Storage`] for the driver's
/// `RawNode`; only the driver writes to it.
pub struct RaftStorage {
    db: Arc<Database>,
    path: PathBuf,
    log: MemLog,
    /// The latest stored snapshot (empty when there is none yet).
    snapshot: Snapshot,
    members: BTreeMap<u64, String>,
    replica: Arc<Replica>,
    /// Set when raft asked for a snapshot the stored one cannot serve.
    snapshot_wanted: AtomicBool,
}

impl RaftStorage {
    /// Opens (or creates empty) `<data_dir>/raft.redb` and recovers: the stored snapshot restores
    /// the log mirror and the [`Replica`], then the log entries after it, then the hard state.
    /// An empty store is a new member waiting to be added to a cluster.
    pub async fn open(data_dir: &Path) -> Result<RaftStorage> {
        let dir = data_dir.to_path_buf();
        blocking(move || RaftStorage::open_blocking(&dir)).await
    }

    fn open_blocking(data_dir: &Path) -> Result<RaftStorage> {
        create_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(db_err)?;
        create_tables(&db)?;
        let loaded = load(&db)?;
        let meta = loaded.snapshot.get_metadata();
        let state = if loaded.snapshot.is_empty() {
            StateMachine::new()
        } else {
            decode_snapshot(&loaded.snapshot.data)?.1
        };
        let mut hard_state = loaded.hard_state;
        // The commit index is not always persisted durably; it is never below the snapshot.
        hard_state.commit = hard_state.commit.max(meta.index);
        hard_state.term = hard_state.term.max(meta.term);
        let log = MemLog {
            start_index: loaded.start_index,
            start_term: loaded.start_term,
            entries: loaded.entries,
            hard_state,
            conf_state: loaded.conf_state,
        };
        if log.hard_state.commit > log.last_index() || meta.index > log.last_index() {
            return Err(StorageError::Corrupt(format!(
                "the commit index {} or the snapshot index {} is beyond the last log entry {}",
                log.hard_state.commit,
                meta.index,
                log.last_index()
            )));
        }
        tracing::info!(
            path = %path.display(),
            snapshot_index = meta.index,
            first_index = log.first_index(),
            last_index = log.last_index(),
            term = log.hard_state.term,
            commit = log.hard_state.commit,
            "opened the raft store"
        );
        Ok(RaftStorage {
            db: Arc::new(db),
            path,
            log,
            snapshot: loaded.snapshot,
            members: loaded.members,
            replica: Replica::new(state),
            snapshot_wanted: AtomicBool::new(false),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replica restored from the stored snapshot; the driver applies committed entries to it.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    /// Member id → raft address, as of the last applied membership change.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// The persisted hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.log.hard_state
    }

    /// The conf state as of the last applied membership change.
    pub fn conf_state(&self) -> &ConfState {
        &self.log.conf_state
    }

    /// Index of the stored snapshot (0 when there is none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// Number of log entries kept (after the compaction point).
    pub fn entry_count(&self) -> usize {
        self.log.entries.len()
    }

    async fn write(&self, batch: Batch) -> Result<()> {
        let db = self.db.clone();
        blocking(move || batch.commit(&db)).await
    }

    /// Persists new log entries (replacing any conflicting suffix) and the hard state in one
    /// transaction, fsync'd when `sync` (raft's `must_sync`).
    pub(crate) async fn append(
        &mut self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
        sync: bool,
    ) -> Result<()> {
        let mut batch = Batch {
            durable: sync || !entries.is_empty(),
            ..Batch::default()
        };
        if let Some(first) = entries.first() {
            if first.index <= self.log.start_index || first.index > self.log.last_index() + 1 {
                return Err(StorageError::Corrupt(format!(
                    "raft asked to append entries from {} to a log holding {}..={}",
                    first.index,
                    self.log.first_index(),
                    self.log.last_index()
                )));
            }
            if first.index <= self.log.last_index() {
                batch.delete_from = Some(first.index);
            }
            for e in &entries {
                batch.entries.push((e.index, encode(e)?));
            }
        }
        if let Some(hs) = &hard_state {
            batch.state.push((KEY_HARD_STATE, encode(hs)?));
        }
        self.write(batch).await?;
        if let Some(first) = entries.first() {
            let keep = (first.index - self.log.start_index - 1) as usize;
            self.log.entries.truncate(keep);
            self.log.entries.extend(entries);
        }
        if let Some(hs) = hard_state {
            self.log.hard_state = hs;
        }
        Ok(())
    }

    /// Records a new commit index. Not fsync'd: a lost commit index is recovered from the log.
    pub(crate) async fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.log.hard_state.clone();
        hs.commit = commit;
        self.write(Batch {
            state: vec![(KEY_HARD_STATE, encode(&hs)?)],
            ..Batch::default()
        })
        .await?;
        self.log.hard_state = hs;
        Ok(())
    }

    /// Persists a snapshot received from the leader: it replaces the whole log, the conf state and
    /// the member map. Returns the state machine to restore the replica with. `decoded` is the
    /// snapshot's data already decoded (see [`decode_snapshot`]); without it, it is decoded here.
    pub(crate) async fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        decoded: Option<(BTreeMap<u64, String>, StateMachine)>,
    ) -> Result<StateMachine> {
        let meta = snapshot.get_metadata().clone();
        let mut hs = self.log.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let mut batch = Batch {
            delete_from: Some(0),
            state: vec![
                (KEY_SNAPSHOT_META, encode(&meta)?),
                (KEY_LOG_START, encode_log_start(meta.index, meta.term)),
                (KEY_CONF_STATE, encode(meta.get_conf_state())?),
                (KEY_HARD_STATE, encode(&hs)?),
            ],
            durable: true,
            ..Batch::default()
        };
        let db = self.db.clone();
        let data = snapshot.data.clone();
        // Decoding a large state is slow: do it, and the write, off the runtime.
        let (members, state) = blocking(move || {
            let (members, state) = match decoded {
                Some(d) => d,
                None => decode_snapshot(&data)?,
            };
            batch.state.push((KEY_SNAPSHOT_DATA, data.to_vec()));
            batch.members = Some(members.clone());
            batch.commit(&db)?;
            Ok((members, state))
        })
        .await?;
        self.log = MemLog {
            start_index: meta.index,
            start_term: meta.term,
            entries: Vec::new(),
            hard_state: hs,
            conf_state: meta.get_conf_state().clone(),
        };
        self.snapshot = snapshot;
        self.members = members;
        Ok(state)
    }

    /// Persists the conf state and member map after a membership change was applied.
    pub(crate) async fn set_conf_state(
        &mut self,
        conf_state: ConfState,
        members: BTreeMap<u64, String>,
    ) -> Result<()> {
        self.write(Batch {
            state: vec![(KEY_CONF_STATE, encode(&conf_state)?)],
            members: Some(members.clone()),
            durable: true,
            ..Batch::default()
        })
        .await?;
        self.log.conf_state = conf_state;
        self.members = members;
        Ok(())
    }

    /// Replaces the member map alone (a new member's hint of where the cluster is).
    pub(crate) async fn set_members(&mut self, members: BTreeMap<u64, String>) -> Result<()> {
        self.write(Batch {
            members: Some(members.clone()),
            durable: true,
            ..Batch::default()
        })
        .await?;
        self.members = members;
        Ok(())
    }

    /// Whether raft asked for a snapshot the stored one cannot serve (see
    /// [`Storage::snapshot`]); clears the request.
    pub(crate) fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    /// Captures what a snapshot at the applied index needs: a copy of the replica, its term, the
    /// conf state and the member map. `None` when the stored snapshot is already there. The
    /// replica's index must be the raft applied index (the driver calls this between Readies).
    pub(crate) fn begin_snapshot(&self) -> Result<Option<SnapshotJob>> {
        let state = self.replica.read(StateMachine::clone);
        let index = state.index();
        if index <= self.snapshot_index() {
            return Ok(None);
        }
        let term = self.log.term(index).map_err(|e| {
            StorageError::Corrupt(format!("no term for applied index {index}: {e}"))
        })?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(self.log.conf_state.clone());
        Ok(Some(SnapshotJob {
            meta,
            members: self.members.clone(),
            state,
        }))
    }

    /// Stores a snapshot built from [`RaftStorage::begin_snapshot`] and deletes the log up to
    /// `keep` entries before it, on disk and in memory. Returns the snapshot index, or `None` when
    /// the snapshot is stale (a newer one was stored or installed meanwhile).
    pub(crate) async fn finish_snapshot(
        &mut self,
        built: BuiltSnapshot,
        keep: u64,
    ) -> Result<Option<u64>> {
        let index = built.meta.index;
        if index <= self.snapshot_index() || index < self.log.start_index {
            return Ok(None);
        }
        let start = index.saturating_sub(keep).max(self.log.start_index);
        let start_term = self
            .log
            .term(start)
            .map_err(|e| StorageError::Corrupt(format!("no term for log index {start}: {e}")))?;
        let meta_bytes = encode(&built.meta)?;
        let data = Bytes::from(built.data);
        let db = self.db.clone();
        let bytes = data.clone();
        blocking(move || {
            Batch {
                delete_through: Some(start),
                state: vec![
                    (KEY_SNAPSHOT_META, meta_bytes),
                    (KEY_SNAPSHOT_DATA, bytes.to_vec()),
                    (KEY_LOG_START, encode_log_start(start, start_term)),
                ],
                durable: true,
                ..Batch::default()
            }
            .commit(&db)
        })
        .await?;
        let drop = (start - self.log.start_index) as usize;
        self.log.entries.drain(..drop);
        self.log.start_index = start;
        self.log.start_term = start_term;
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(built.meta);
        snapshot.set_data(data);
        self.snapshot = snapshot;
        Ok(Some(index))
    }

    /// [`RaftStorage::begin_snapshot`], build and [`RaftStorage::finish_snapshot`] in one go.
    #[cfg(test)]
    pub(crate) async fn compact(&mut self, keep: u64) -> Result<Option<u64>> {
        let Some(job) = self.begin_snapshot()? else {
            return Ok(None);
        };
        let built = blocking(move || Ok(job.build())).await?;
        self.finish_snapshot(built, keep).await
    }
}

/// A snapshot being made: everything captured at the applied index, so that the slow part
/// ([`SnapshotJob::build`], serialising the state) can run off the driver.
pub(crate) struct SnapshotJob {
    meta: SnapshotMetadata,
    members: BTreeMap<u64, String>,
    state: StateMachine,
}

impl SnapshotJob {
    /// Index the snapshot is taken at.
    pub(crate) fn index(&self) -> u64 {
        self.meta.index
    }

    /// Serialises the state into snapshot data. CPU-bound: run it on a blocking thread.
    pub(crate) fn build(self) -> BuiltSnapshot {
        BuiltSnapshot {
            data: encode_snapshot_data(&self.members, &self.state.snapshot()),
            meta: self.meta,
        }
    }
}

/// A snapshot ready to be stored by [`RaftStorage::finish_snapshot`].
pub(crate) struct BuiltSnapshot {
    meta: SnapshotMetadata,
    data: Vec<u8>,
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.log.hard_state.clone(),
            self.log.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.log.start_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.log.last_index() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let offset = self.log.start_index + 1;
        let mut entries =
            self.log.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    /// The stored snapshot when it is at least `request_index` and includes `to`. Otherwise (e.g.
    /// `to` was added after the stored snapshot was taken, and would refuse a snapshot whose conf
    /// state lacks it) this asks the driver for a new one and returns
    /// `SnapshotTemporarilyUnavailable`; raft asks again on a later heartbeat response.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        if !self.snapshot.is_empty()
            && meta.index >= request_index
            && conf_contains(meta.get_conf_state(), to)
        {
            return Ok(self.snapshot.clone());
        }
        if !self.snapshot_wanted.swap(true, Ordering::Relaxed) {
            tracing::info!(
                to,
                request_index,
                stored = meta.index,
                "raft member needs a newer snapshot; making one"
            );
        }
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::{Node, Txn};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(format!("entry-{index}")),
            ..Entry::default()
        }
    }

    fn state_with_nodes(index: u64, count: usize) -> StateMachine {
        let mut sm = StateMachine::new();
        let ops = (0..count)
            .map(|i| {
                Txn::create(Node {
                    id: format!("n{i}"),
                    ..Node::default()
                })
            })
            .collect();
        sm.apply(
            index,
            &Txn {
                timestamp_ms: 7,
                ops,
            },
        )
        .unwrap();
        sm
    }

    fn snapshot(index: u64, term: u64, voters: Vec<u64>, sm: &StateMachine) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = voters;
        let members = BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
        s.set_data(Bytes::from(encode_snapshot_data(&members, &sm.snapshot())));
        s
    }

    fn disk_entry_indexes(path: &Path) -> Vec<u64> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(ENTRIES).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    }

    fn all_entries(s: &RaftStorage) -> Vec<Entry> {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    #[tokio::test]
    async fn recovery_restores_log_state_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let sm = state_with_nodes(5, 3);
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert!(!s.initial_state().unwrap().initialized());

        let restored = s
            .install_snapshot(snapshot(5, 2, vec![1], &sm), None)
            .await
            .unwrap();
        assert_eq!(restored, sm);
        s.append((6..=20).map(|i| entry(i, 2 + i / 10)).collect(), None, true)
            .await
            .unwrap();
        let hs = HardState {
            term: 4,
            vote: 2,
            commit: 18,
            ..HardState::default()
        };
        s.append(Vec::new(), Some(hs.clone()), true).await.unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let members: BTreeMap<u64, String> =
            (1..=3).map(|i| (i, format!("127.0.0.1:{i}"))).collect();
        s.set_conf_state(cs.clone(), members.clone()).await.unwrap();

        let before = (
            s.initial_state().unwrap(),
            all_entries(&s),
            s.first_index().unwrap(),
            s.last_index().unwrap(),
            (5..=20).map(|i| s.term(i).unwrap()).collect::<Vec<_>>(),
        );
        assert_eq!(before.2, 6);
        assert_eq!(before.3, 20);
        drop(s);

        let s = RaftStorage::open(dir.path()).await.unwrap();
        let after = (
            s.initial_state().unwrap(),
            all_entries(&s),
            s.first_index().unwrap(),
            s.last_index().unwrap(),
            (5..=20).map(|i| s.term(i).unwrap()).collect::<Vec<_>>(),
        );
        assert_eq!(after.0.hard_state, hs);
        assert_eq!(after.0.conf_state, cs);
        assert_eq!(before.0.hard_state, after.0.hard_state);
        assert_eq!(before.1, after.1);
        assert_eq!(before.2, after.2);
        assert_eq!(before.3, after.3);
        assert_eq!(before.4, after.4);
        assert_eq!(s.members(), &members);
        assert_eq!(s.replica().read(StateMachine::clone), sm);
        assert_eq!(
            s.term(4),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );
        assert_eq!(
            s.entries(5, 7, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );
    }

    #[tokio::test]
    async fn append_replaces_a_conflicting_suffix_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        s.append((1..=10).map(|i| entry(i, 1)).collect(), None, true)
            .await
            .unwrap();
        s.append(vec![entry(6, 2), entry(7, 2)], None, true)
            .await
            .unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        let path = s.path().to_path_buf();
        drop(s);
        assert_eq!(disk_entry_indexes(&path), (1..=7).collect::<Vec<_>>());
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.last_index().unwrap(), 7);
        assert_eq!(s.term(7).unwrap(), 2);
        assert_eq!(s.term(5).unwrap(), 1);
    }

    #[tokio::test]
    async fn compaction_writes_a_snapshot_and_deletes_entries_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        s.set_conf_state(cs, BTreeMap::from([(1, "a:1".to_string())]))
            .await
            .unwrap();
        s.append((1..=30).map(|i| entry(i, 1 + i / 20)).collect(), None, true)
            .await
            .unwrap();
        // The driver applies entries to the replica before compacting.
        for i in 1..=25 {
            let txn = Txn {
                timestamp_ms: i,
                ops: vec![Txn::create(Node {
                    id: format!("n{i}"),
                    ..Node::default()
                })],
            };
            s.replica().apply(i, &txn).unwrap();
        }
        assert_eq!(s.compact(0).await.unwrap(), Some(25));
        assert_eq!(s.compact(0).await.unwrap(), None);
        assert_eq!(s.first_index().unwrap(), 26);
        assert_eq!(s.last_index().unwrap(), 30);
        assert_eq!(s.term(25).unwrap(), 2);
        let expected = s.replica().read(StateMachine::clone);
        let snap = s.snapshot(0, 1).unwrap();
        assert_eq!(snap.get_metadata().index, 25);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(decode_snapshot(&snap.data).unwrap().1, expected);
        let path = s.path().to_path_buf();
        drop(s);
        assert_eq!(disk_entry_indexes(&path), (26..=30).collect::<Vec<_>>());

        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.first_index().unwrap(), 26);
        assert_eq!(s.last_index().unwrap(), 30);
        assert_eq!(s.term(25).unwrap(), 2);
        assert_eq!(s.snapshot_index(), 25);
        assert_eq!(s.replica().read(StateMachine::clone), expected);
        assert_eq!(s.members().get(&1).map(String::as_str), Some("a:1"));
    }

    #[tokio::test]
    async fn compaction_keeps_entries_for_slow_followers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        s.append((1..=40).map(|i| entry(i, 3)).collect(), None, true)
            .await
            .unwrap();
        for i in 1..=30 {
            s.replica().skip(i);
        }
        assert_eq!(s.compact(10).await.unwrap(), Some(30));
        assert_eq!(s.snapshot_index(), 30);
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.term(20).unwrap(), 3);
        for i in 31..=35 {
            s.replica().skip(i);
        }
        // The next snapshot moves the log start along; it never goes backwards.
        assert_eq!(s.compact(10).await.unwrap(), Some(35));
        assert_eq!(s.first_index().unwrap(), 26);
        assert_eq!(s.compact(100).await.unwrap(), None);
        let path = s.path().to_path_buf();
        drop(s);
        assert_eq!(disk_entry_indexes(&path), (26..=40).collect::<Vec<_>>());
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 35);
        assert_eq!(s.first_index().unwrap(), 26);
        assert_eq!(s.last_index().unwrap(), 40);
        assert_eq!(s.term(25).unwrap(), 3);
        assert_eq!(
            s.replica().index(),
            35,
            "the replica comes from the snapshot"
        );
    }

    #[tokio::test]
    async fn a_member_missing_from_the_stored_snapshot_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        bootstrap(dir.path(), 1, "127.0.0.1:1", state_with_nodes(1, 1)).unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        // The stored snapshot (index 1, voters [1]) is fine for member 1...
        assert_eq!(s.snapshot(0, 1).unwrap().get_metadata().index, 1);
        assert!(!s.take_snapshot_request());
        // ...but member 2, added at index 3, would refuse it.
        s.append(vec![entry(2, 2), entry(3, 2)], None, true)
            .await
            .unwrap();
        s.replica().skip(2);
        s.replica().skip(3);
        let cs = ConfState {
            voters: vec![1, 2],
            ..ConfState::default()
        };
        let members = BTreeMap::from([(1, "127.0.0.1:1".into()), (2, "127.0.0.1:2".into())]);
        s.set_conf_state(cs.clone(), members.clone()).await.unwrap();
        let unavailable = Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ));
        assert_eq!(s.snapshot(0, 2), unavailable);
        assert!(
            s.take_snapshot_request(),
            "the driver is asked for a snapshot"
        );
        assert!(!s.take_snapshot_request(), "the request is taken once");

        // The driver builds one off its loop and stores it.
        let job = s.begin_snapshot().unwrap().unwrap();
        assert_eq!(job.index(), 3);
        let built = job.build();
        assert_eq!(s.finish_snapshot(built, 0).await.unwrap(), Some(3));
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 3);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.get_metadata().get_conf_state(), &cs);
        let (got_members, sm) = decode_snapshot(&snap.data).unwrap();
        assert_eq!(got_members, members);
        assert_eq!(sm.index(), 3);
        assert!(sm.get::<Node>("n0").is_some());
        assert!(
            s.begin_snapshot().unwrap().is_none(),
            "nothing newer to snapshot"
        );

        // A request for a later index than anything applied must wait.
        assert_eq!(s.snapshot(4, 2), unavailable);
    }

    #[tokio::test]
    async fn a_stale_snapshot_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        s.append((1..=10).map(|i| entry(i, 1)).collect(), None, true)
            .await
            .unwrap();
        for i in 1..=5 {
            s.replica().skip(i);
        }
        let old = s.begin_snapshot().unwrap().unwrap().build();
        // Meanwhile the leader sends a newer snapshot, which replaces the log.
        let sm = state_with_nodes(20, 2);
        s.install_snapshot(snapshot(20, 2, vec![1], &sm), None)
            .await
            .unwrap();
        assert_eq!(s.finish_snapshot(old, 0).await.unwrap(), None);
        assert_eq!(s.snapshot_index(), 20);
        assert_eq!(s.first_index().unwrap(), 21);
    }

    #[tokio::test]
    async fn bootstrap_creates_a_single_member_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let initial = state_with_nodes(1, 2);
        bootstrap(dir.path(), 7, "10.0.0.1:4242", initial.clone()).unwrap();
        let err = bootstrap(dir.path(), 7, "10.0.0.1:4242", initial.clone()).unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists(_)), "{err}");
        let s = RaftStorage::open(dir.path()).await.unwrap();
        let rs = s.initial_state().unwrap();
        assert_eq!(rs.conf_state.voters, vec![7]);
        assert_eq!(rs.hard_state.term, 1);
        assert_eq!(rs.hard_state.commit, 1);
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 1);
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(s.replica().read(StateMachine::clone), initial);
        assert_eq!(
            s.members(),
            &BTreeMap::from([(7, "10.0.0.1:4242".to_string())])
        );
    }

    #[test]
    fn snapshot_envelope_round_trips_and_rejects_garbage() {
        let members = BTreeMap::from([(1, "a:1".to_string()), (99, "[::1]:7".to_string())]);
        let data = encode_snapshot_data(&members, b"{state}");
        let (m, state) = decode_snapshot_data(&data).unwrap();
        assert_eq!(m, members);
        assert_eq!(state, b"{state}");
        assert!(decode_snapshot_data(b"{\"index\":1}").is_err());
        assert!(decode_snapshot_data(&data[..20]).is_err());
        assert!(
            decode_snapshot(&data).is_err(),
            "state is not a StateMachine"
        );
    }

    #[tokio::test]
    async fn entries_respect_bounds_and_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        s.append((1..=5).map(|i| entry(i, 1)).collect(), None, true)
            .await
            .unwrap();
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(s.entries(2, 5, None, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(2, 5, Some(0), ctx()).unwrap().len(), 1);
        assert_eq!(
            s.entries(2, 7, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        );
        assert_eq!(
            s.term(6),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        );
    }
}
