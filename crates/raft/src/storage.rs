//! Durable raft storage: the log, the hard state, the conf state, the snapshot metadata and the
//! member address map in one redb database file, `<data_dir>/raft.redb`; the latest snapshot's data
//! in its own file next to it, `<data_dir>/snap-<term>-<index>.snap` (16 hex digits each).
//!
//! The read side ([`raft::Storage`]) is served from an in-memory mirror of the log; every write goes
//! to disk first (on a blocking thread, committed with redb's immediate durability, i.e. fsync,
//! whenever raft requires it) and updates the mirror only after the disk write succeeded.
//!
//! Snapshot data is an envelope of the member address map and the state machine's
//! [`StateMachine::snapshot`] bytes, so a member that installs a snapshot also learns where the
//! other members are.
//!
//! # Snapshot files
//!
//! Snapshot data (tens of megabytes on a large store) never goes through a redb write
//! transaction, so that log appends never wait behind it. A snapshot is stored in two steps:
//! 1. its data is written to `snap-<term>-<index>.snap.<n>.tmp`, fsync'd, renamed to
//!    `snap-<term>-<index>.snap`, and the directory fsync'd (off the driver for a snapshot the
//!    member takes itself: the driver keeps appending and applying meanwhile);
//! 2. one small redb transaction records the snapshot (metadata, plus the file's index, term,
//!    length and SHA-256) and deletes the compacted log prefix; only then are older snapshot files
//!    removed.
//!
//! So the recorded file always exists, complete, before the record that points at it commits.
//! Recovery ([`RaftStorage::open`]) trusts the record alone and removes every other `snap-*` file:
//! a crash while writing leaves a `.tmp` file, a crash between rename and commit leaves a complete
//! file no record points at, a crash after the commit leaves the previous snapshot's file; in each
//! case the database describes a consistent snapshot + log, and the extra file is removed. A
//! record whose file is missing, short or has another digest is corruption and refuses to open.
//!
//! Data directories written before snapshot files existed kept the snapshot data in the database
//! (`state/snapshot_data`); they are still read, and the next snapshot moves it to a file.
//!
//! Architecture invariant: only the raft driver writes, and it awaits each write before the next;
//! the one write not awaited in line, a snapshot file, touches no database state until the driver
//! records it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use rswarm_store::{Replica, StateMachine};
use sha2::{Digest as _, Sha256};

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
/// The file holding the snapshot's data: see [`SnapshotFile`].
const KEY_SNAPSHOT_FILE: &str = "snapshot_file";
/// Snapshot data kept in the database itself: written by earlier versions only (read, then
/// deleted by the next snapshot).
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
    /// A snapshot file could not be written, read or removed.
    #[error("{what} {}: {source}; check the disk and the permissions of the data directory", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
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

/// First bytes of a snapshot file name; every file so named belongs to this storage.
const SNAP_PREFIX: &str = "snap-";
/// Last bytes of a complete snapshot file's name.
const SNAP_SUFFIX: &str = ".snap";
/// Last bytes of a snapshot file being written.
const TMP_SUFFIX: &str = ".tmp";

/// Makes the names of temporary files unique within the process, so that two writers (say, a
/// stopping driver's last job and its successor's) never share one.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot file a database record points at: `snap-<term>-<index>.snap` in the data
/// directory, `len` bytes whose SHA-256 is `sha256`. Stored under `state/snapshot_file` as index,
/// term and length (u64, little endian) then the digest: 56 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotFile {
    index: u64,
    term: u64,
    len: u64,
    sha256: [u8; 32],
}

impl SnapshotFile {
    const ENCODED_LEN: usize = 56;

    fn name(&self) -> String {
        snapshot_file_name(self.index, self.term)
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::ENCODED_LEN);
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&self.len.to_le_bytes());
        b.extend_from_slice(&self.sha256);
        b
    }

    fn decode(b: &[u8]) -> Result<SnapshotFile> {
        if b.len() != Self::ENCODED_LEN {
            return Err(StorageError::Corrupt(format!(
                "the snapshot file record is {} bytes, not {}",
                b.len(),
                Self::ENCODED_LEN
            )));
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[24..56]);
        Ok(SnapshotFile {
            index: u64_at(0),
            term: u64_at(8),
            len: u64_at(16),
            sha256,
        })
    }

    /// Reads the file from `dir` and checks its length and digest.
    fn read(&self, dir: &Path) -> Result<Vec<u8>> {
        let path = dir.join(self.name());
        let mut file = File::open(&path).map_err(|e| {
            StorageError::Corrupt(format!(
                "the snapshot file {} recorded in the database cannot be opened: {e}",
                path.display()
            ))
        })?;
        let len = file
            .metadata()
            .map_err(io_err("cannot read the snapshot file", &path))?
            .len();
        if len != self.len {
            return Err(StorageError::Corrupt(format!(
                "the snapshot file {} is {len} bytes, the database recorded {}",
                path.display(),
                self.len
            )));
        }
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut data)
            .map_err(io_err("cannot read the snapshot file", &path))?;
        if sha256(&data) != self.sha256 {
            return Err(StorageError::Corrupt(format!(
                "the snapshot file {} does not have the digest the database recorded",
                path.display()
            )));
        }
        Ok(data)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn snapshot_file_name(index: u64, term: u64) -> String {
    format!("{SNAP_PREFIX}{term:016x}-{index:016x}{SNAP_SUFFIX}")
}

/// fsyncs a directory, so that the renames and creations in it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync the raft data directory", dir))
}

/// Writes snapshot data durably to `<dir>/snap-<term>-<index>.snap`: a new temporary file,
/// written and fsync'd, renamed into place, then the directory fsync'd. `before_rename` runs once
/// the temporary file is durable; its error abandons the file. Blocking.
fn write_snapshot_file(
    dir: &Path,
    index: u64,
    term: u64,
    data: &[u8],
    before_rename: &mut dyn FnMut() -> Result<()>,
) -> Result<SnapshotFile> {
    let name = snapshot_file_name(index, term);
    let path = dir.join(&name);
    let tmp = dir.join(format!(
        "{name}.{}{TMP_SUFFIX}",
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("cannot create the snapshot file", &tmp))?;
        file.write_all(data)
            .map_err(io_err("cannot write the snapshot file", &tmp))?;
        file.sync_all()
            .map_err(io_err("cannot fsync the snapshot file", &tmp))?;
        drop(file);
        before_rename()?;
        std::fs::rename(&tmp, &path).map_err(io_err("cannot rename the snapshot file", &tmp))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok(SnapshotFile {
        index,
        term,
        len: data.len() as u64,
        sha256: sha256(data),
    })
}

/// Removes a snapshot file no record points at any more (best effort: a file left behind is
/// removed on the next open).
fn remove_snapshot_file(dir: &Path, file: &SnapshotFile) {
    let path = dir.join(file.name());
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old raft snapshot file; it will be removed on the next start");
        }
    }
}

/// Removes every snapshot file in `dir` but `keep`: temporary files and complete files no record
/// points at, left by a crash (see the module documentation). Called on open, with the database
/// (and so the directory) held by this process.
fn remove_stray_snapshot_files(dir: &Path, keep: Option<&str>) -> Result<()> {
    let listing =
        std::fs::read_dir(dir).map_err(io_err("cannot list the raft data directory", dir))?;
    for item in listing {
        let item = item.map_err(io_err("cannot list the raft data directory", dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with(SNAP_PREFIX)
            && (name.ends_with(SNAP_SUFFIX) || name.ends_with(TMP_SUFFIX));
        if !ours || Some(name) == keep {
            continue;
        }
        let path = item.path();
        tracing::info!(path = %path.display(), "removing a raft snapshot file no record points at (left by an interrupted snapshot)");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove the stray snapshot file", &path)(e)),
        }
    }
    Ok(())
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
    /// Singletons to delete.
    state_delete: Vec<&'static str>,
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
            for key in &self.state_delete {
                state.remove(*key).map_err(db_err)?;
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
    /// The file the snapshot's data was read from (`None`: no snapshot, or one stored in the
    /// database by an earlier version).
    snapshot_file: Option<SnapshotFile>,
    start_index: u64,
    start_term: u64,
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    members: BTreeMap<u64, String>,
}

fn load(db: &Database, dir: &Path) -> Result<Loaded> {
    let txn = db.begin_read().map_err(db_err)?;
    let state = txn.open_table(STATE).map_err(db_err)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>> {
        Ok(state.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    };
    let mut snapshot = Snapshot::default();
    let mut snapshot_file = None;
    if let Some(meta) = get(KEY_SNAPSHOT_META)? {
        let meta = decode::<SnapshotMetadata>("snapshot metadata", &meta)?;
        let data = match get(KEY_SNAPSHOT_FILE)? {
            Some(record) => {
                let file = SnapshotFile::decode(&record)?;
                if (file.index, file.term) != (meta.index, meta.term) {
                    return Err(StorageError::Corrupt(format!(
                        "the snapshot file record (index {}, term {}) does not match the snapshot metadata (index {}, term {})",
                        file.index, file.term, meta.index, meta.term
                    )));
                }
                let data = file.read(dir)?;
                snapshot_file = Some(file);
                data
            }
            None => get(KEY_SNAPSHOT_DATA)?.ok_or_else(|| {
                StorageError::Corrupt("snapshot metadata without snapshot data".to_string())
            })?,
        };
        snapshot.set_metadata(meta);
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
        snapshot_file,
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
/// Refuses if `<data_dir>/raft.redb` already exists. The snapshot file is written before the
/// database is created, so an interrupted bootstrap can be run again. Blocking (it fsyncs): call it
/// from a blocking context or `spawn_blocking`.
pub fn bootstrap(data_dir: &Path, id: u64, addr: &str, initial: StateMachine) -> Result<()> {
    let path = data_dir.join(DB_FILE);
    if path.exists() {
        return Err(StorageError::AlreadyExists(path));
    }
    if id == 0 {
        return Err(StorageError::ZeroId);
    }
    create_dir(data_dir)?;
    let members = BTreeMap::from([(id, addr.to_string())]);
    let mut meta = SnapshotMetadata {
        index: 1,
        term: 1,
        ..SnapshotMetadata::default()
    };
    meta.mut_conf_state().voters = vec![id];
    let data = encode_snapshot_data(&members, &initial.snapshot());
    let file = write_snapshot_file(data_dir, meta.index, meta.term, &data, &mut || Ok(()))?;
    let hs = HardState {
        term: 1,
        commit: 1,
        ..HardState::default()
    };
    let db = Database::create(&path).map_err(db_err)?;
    Batch {
        state: vec![
            (KEY_SNAPSHOT_META, encode(&meta)?),
            (KEY_SNAPSHOT_FILE, file.encode()),
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
    /// The data directory: the database and the snapshot files.
    dir: PathBuf,
    path: PathBuf,
    log: MemLog,
    /// The latest stored snapshot (empty when there is none yet).
    snapshot: Snapshot,
    /// Where the latest snapshot's data is on disk (`None`: no snapshot, or one in the database).
    snapshot_file: Option<SnapshotFile>,
    /// Removals of snapshot files no record points at any more, running in the background.
    removals: Vec<tokio::task::JoinHandle<()>>,
    members: BTreeMap<u64, String>,
    replica: Arc<Replica>,
    /// Set when raft asked for a snapshot the stored one cannot serve.
    snapshot_wanted: AtomicBool,
}

impl RaftStorage {
    /// Opens (or creates empty) `<data_dir>/raft.redb` and recovers: the stored snapshot restores
    /// the log mirror and the [`Replica`], then the log entries after it, then the hard state.
    /// Snapshot files left by an interrupted snapshot are removed. An empty store is a new member
    /// waiting to be added to a cluster.
    pub async fn open(data_dir: &Path) -> Result<RaftStorage> {
        let dir = data_dir.to_path_buf();
        blocking(move || RaftStorage::open_blocking(&dir)).await
    }

    fn open_blocking(data_dir: &Path) -> Result<RaftStorage> {
        create_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(db_err)?;
        create_tables(&db)?;
        let loaded = load(&db, data_dir)?;
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
        // The database is ours now (redb locks it): no one else writes snapshot files here.
        remove_stray_snapshot_files(
            data_dir,
            loaded
                .snapshot_file
                .as_ref()
                .map(SnapshotFile::name)
                .as_deref(),
        )?;
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
            dir: data_dir.to_path_buf(),
            path,
            log,
            snapshot: loaded.snapshot,
            snapshot_file: loaded.snapshot_file,
            removals: Vec::new(),
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

    /// The file holding the stored snapshot's data (`None` when there is no snapshot, or when a
    /// data directory written by an earlier version still keeps it in the database).
    pub fn snapshot_path(&self) -> Option<PathBuf> {
        self.snapshot_file.as_ref().map(|f| self.dir.join(f.name()))
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
    /// The data goes to a snapshot file first, then one transaction records it (see the module
    /// documentation); the previous snapshot file is removed after that.
    pub(crate) async fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        decoded: Option<(BTreeMap<u64, String>, StateMachine)>,
    ) -> Result<StateMachine> {
        let meta = snapshot.get_metadata().clone();
        if meta.index <= self.snapshot_index() {
            // raft-rs never does this (a snapshot it restores is past the commit index, which is
            // at or past the stored snapshot); refuse rather than replace the recorded file.
            return Err(StorageError::Corrupt(format!(
                "raft asked to install a snapshot at {}, not after the stored one at {}",
                meta.index,
                self.snapshot_index()
            )));
        }
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
            state_delete: vec![KEY_SNAPSHOT_DATA],
            durable: true,
            ..Batch::default()
        };
        let db = self.db.clone();
        let dir = self.dir.clone();
        let data = snapshot.data.clone();
        // Decoding a large state is slow: do it, and the writes, off the runtime.
        let (members, state, file) = blocking(move || {
            let (members, state) = match decoded {
                Some(d) => d,
                None => decode_snapshot(&data)?,
            };
            let file = write_snapshot_file(&dir, meta.index, meta.term, &data, &mut || Ok(()))?;
            batch.state.push((KEY_SNAPSHOT_FILE, file.encode()));
            batch.members = Some(members.clone());
            batch.commit(&db)?;
            Ok((members, state, file))
        })
        .await?;
        let old_file = self
            .snapshot_file
            .take()
            .filter(|old| old.name() != file.name());
        let old_log = std::mem::replace(
            &mut self.log,
            MemLog {
                start_index: meta.index,
                start_term: meta.term,
                entries: Vec::new(),
                hard_state: hs,
                conf_state: meta.get_conf_state().clone(),
            },
        );
        let old_snapshot = std::mem::replace(&mut self.snapshot, snapshot);
        self.remove_in_background(old_file, (old_log, old_snapshot));
        self.snapshot_file = Some(file);
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
        if self.replica.index() <= self.snapshot_index() {
            return Ok(None);
        }
        let state = self.replica.read(StateMachine::clone);
        let index = state.index();
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
            dir: self.dir.clone(),
        }))
    }

    /// Records a snapshot written by [`SnapshotJob::persist`] and deletes the log up to `keep`
    /// entries before it, on disk and in memory, in one small transaction; then removes the
    /// previous snapshot file. Returns the snapshot index, or `None` when the snapshot is stale (a
    /// newer one was stored or installed meanwhile; its file is removed).
    pub(crate) async fn finish_snapshot(
        &mut self,
        built: BuiltSnapshot,
        keep: u64,
    ) -> Result<Option<u64>> {
        let index = built.meta.index;
        if index <= self.snapshot_index() || index < self.log.start_index {
            // Its file is not the recorded one (that would take the same index and term, which a
            // stale job cannot have); check anyway, as removing the recorded file loses data.
            if self.snapshot_file.as_ref().map(SnapshotFile::name) != Some(built.file.name()) {
                self.remove_in_background(Some(built.file), built.data);
            }
            return Ok(None);
        }
        let start = index.saturating_sub(keep).max(self.log.start_index);
        let start_term = self
            .log
            .term(start)
            .map_err(|e| StorageError::Corrupt(format!("no term for log index {start}: {e}")))?;
        let batch = Batch {
            delete_through: Some(start),
            state: vec![
                (KEY_SNAPSHOT_META, encode(&built.meta)?),
                (KEY_SNAPSHOT_FILE, built.file.encode()),
                (KEY_LOG_START, encode_log_start(start, start_term)),
            ],
            state_delete: vec![KEY_SNAPSHOT_DATA],
            durable: true,
            ..Batch::default()
        };
        self.write(batch).await?;
        // Keep the tail; the compacted prefix is freed in the background.
        let kept = self
            .log
            .entries
            .split_off((start - self.log.start_index) as usize);
        let compacted = std::mem::replace(&mut self.log.entries, kept);
        self.log.start_index = start;
        self.log.start_term = start_term;
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(built.meta);
        snapshot.set_data(built.data);
        let old_snapshot = std::mem::replace(&mut self.snapshot, snapshot);
        let old_file = self
            .snapshot_file
            .replace(built.file)
            .filter(|old| self.snapshot_file.as_ref().map(SnapshotFile::name) != Some(old.name()));
        self.remove_in_background(old_file, (compacted, old_snapshot));
        Ok(Some(index))
    }

    /// Removes a snapshot file no record points at any more, and frees `garbage` (the old
    /// snapshot's data, the compacted entries), off the driver's path: unlinking a large file and
    /// freeing tens of megabytes take milliseconds. A file left behind by a crash is removed on
    /// the next open.
    fn remove_in_background(&mut self, file: Option<SnapshotFile>, garbage: impl Send + 'static) {
        self.removals.retain(|h| !h.is_finished());
        let dir = self.dir.clone();
        self.removals.push(tokio::task::spawn_blocking(move || {
            if let Some(file) = file {
                remove_snapshot_file(&dir, &file);
            }
            drop(garbage);
        }));
    }

    /// Waits for the background removals of old snapshot files, so that nothing touches the data
    /// directory once the driver has stopped.
    pub(crate) async fn wait_removals(&mut self) {
        for removal in self.removals.drain(..) {
            let _ = removal.await;
        }
    }

    /// [`RaftStorage::begin_snapshot`], persist and [`RaftStorage::finish_snapshot`] in one go.
    #[cfg(test)]
    pub(crate) async fn compact(&mut self, keep: u64) -> Result<Option<u64>> {
        let Some(job) = self.begin_snapshot()? else {
            return Ok(None);
        };
        let built = blocking(move || job.persist(&mut || Ok(()))).await?;
        self.finish_snapshot(built, keep).await
    }
}

/// A snapshot being made: everything captured at the applied index, so that the slow part
/// ([`SnapshotJob::persist`]: serialising the state and writing the snapshot file) can run off the
/// driver.
pub(crate) struct SnapshotJob {
    meta: SnapshotMetadata,
    members: BTreeMap<u64, String>,
    state: StateMachine,
    dir: PathBuf,
}

impl SnapshotJob {
    /// Index the snapshot is taken at.
    pub(crate) fn index(&self) -> u64 {
        self.meta.index
    }

    /// Serialises the state and writes it durably to its snapshot file, not recorded anywhere yet
    /// (see [`RaftStorage::finish_snapshot`]). `before_rename` runs once the temporary file is
    /// durable (the driver's cancellation check; a test's pause); its error abandons the file.
    /// Blocking and CPU-bound: run it on a blocking thread.
    pub(crate) fn persist(
        self,
        before_rename: &mut dyn FnMut() -> Result<()>,
    ) -> Result<BuiltSnapshot> {
        let data = encode_snapshot_data(&self.members, &self.state.snapshot());
        drop(self.state);
        let file = write_snapshot_file(
            &self.dir,
            self.meta.index,
            self.meta.term,
            &data,
            before_rename,
        )?;
        Ok(BuiltSnapshot {
            meta: self.meta,
            data: Bytes::from(data),
            file,
        })
    }
}

/// A snapshot whose file is written, ready to be recorded by [`RaftStorage::finish_snapshot`].
pub(crate) struct BuiltSnapshot {
    meta: SnapshotMetadata,
    data: Bytes,
    file: SnapshotFile,
}

impl BuiltSnapshot {
    /// Index the snapshot was taken at.
    pub(crate) fn index(&self) -> u64 {
        self.meta.index
    }
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
        let built = job.persist(&mut || Ok(())).unwrap();
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
        let old = s
            .begin_snapshot()
            .unwrap()
            .unwrap()
            .persist(&mut || Ok(()))
            .unwrap();
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

/// The snapshot file layout at every point where a crash can interrupt it.
#[cfg(test)]
mod snapshot_file_tests {
    use super::*;
    use rswarm_store::{Node, Txn};
    use std::sync::mpsc;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from(format!("entry-{index}")),
            ..Entry::default()
        }
    }

    fn create_node(s: &RaftStorage, index: u64) {
        let txn = Txn {
            timestamp_ms: index,
            ops: vec![Txn::create(Node {
                id: format!("n{index}"),
                ..Node::default()
            })],
        };
        s.replica().apply(index, &txn).unwrap();
    }

    /// A store with a snapshot (file) at 10 and the log 6..=30, entries applied through 25.
    async fn store_with_snapshot(dir: &Path) -> RaftStorage {
        let mut s = RaftStorage::open(dir).await.unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        s.set_conf_state(cs, BTreeMap::from([(1, "a:1".to_string())]))
            .await
            .unwrap();
        s.append((1..=30).map(|i| entry(i, 2)).collect(), None, true)
            .await
            .unwrap();
        for i in 1..=10 {
            create_node(&s, i);
        }
        assert_eq!(s.compact(5).await.unwrap(), Some(10));
        for i in 11..=25 {
            create_node(&s, i);
        }
        s.wait_removals().await;
        s
    }

    /// Names of the `snap-*` files in `dir`, sorted.
    fn snap_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(SNAP_PREFIX))
            .collect();
        names.sort();
        names
    }

    fn stored_state(s: &RaftStorage) -> StateMachine {
        decode_snapshot(&s.snapshot.data).unwrap().1
    }

    fn db_has_snapshot_data(path: &Path) -> bool {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let state = txn.open_table(STATE).unwrap();
        state.get(KEY_SNAPSHOT_DATA).unwrap().is_some()
    }

    #[tokio::test]
    async fn snapshot_files_are_named_by_term_and_index_and_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_snapshot(dir.path()).await;
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-000000000000000a.snap"]
        );
        assert_eq!(
            s.snapshot_path().unwrap(),
            dir.path()
                .join("snap-0000000000000002-000000000000000a.snap")
        );
        assert_eq!(s.compact(5).await.unwrap(), Some(25));
        s.wait_removals().await;
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-0000000000000019.snap"],
            "the previous file is removed once the new one is recorded"
        );
        let expected = s.replica().read(StateMachine::clone);
        assert_eq!(stored_state(&s), expected);
        drop(s);
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 25);
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 30);
        assert_eq!(s.replica().read(StateMachine::clone), expected);
    }

    /// Crash while the temporary file is written (or before its rename): the database still
    /// describes the previous snapshot, and the temporary file is removed.
    #[tokio::test]
    async fn crash_while_writing_leaves_a_temporary_file_that_open_removes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_snapshot(dir.path()).await;
        let before = stored_state(&s);
        let entries = all_entries(&s);
        drop(s);
        // A torn temporary file of the next snapshot, and one complete but never renamed.
        let name = snapshot_file_name(25, 2);
        std::fs::write(
            dir.path().join(format!("{name}.3{TMP_SUFFIX}")),
            b"RSWSNAP1\x02",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.4{TMP_SUFFIX}")),
            encode_snapshot_data(&BTreeMap::new(), &StateMachine::new().snapshot()),
        )
        .unwrap();
        // Not ours: left alone.
        std::fs::write(dir.path().join("notes.txt"), b"keep me").unwrap();

        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 10);
        assert_eq!(stored_state(&s), before);
        assert_eq!(s.replica().read(StateMachine::clone), before);
        assert_eq!(all_entries(&s), entries, "the log is untouched");
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-000000000000000a.snap"]
        );
        assert!(dir.path().join("notes.txt").exists());
    }

    /// Crash after the rename, before the transaction that records the file: the file is complete
    /// but nothing points at it, so the previous snapshot and the whole log stand; open removes
    /// the file, and the same snapshot can be taken again.
    #[tokio::test]
    async fn crash_before_the_record_leaves_an_unrecorded_file_that_open_removes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_snapshot(dir.path()).await;
        let before = stored_state(&s);
        let entries = all_entries(&s);
        let job = s.begin_snapshot().unwrap().unwrap();
        assert_eq!(job.index(), 25);
        let built = job.persist(&mut || Ok(())).unwrap();
        assert_eq!(
            snap_files(dir.path()),
            [
                "snap-0000000000000002-000000000000000a.snap",
                "snap-0000000000000002-0000000000000019.snap"
            ]
        );
        drop((built, s));

        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 10);
        assert_eq!(stored_state(&s), before);
        assert_eq!(all_entries(&s), entries, "no entry was compacted");
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-000000000000000a.snap"]
        );
        // The replica restarts from the snapshot at 10: apply 11..=25 again, snapshot again.
        for i in 11..=25 {
            create_node(&s, i);
        }
        assert_eq!(s.compact(5).await.unwrap(), Some(25));
        s.wait_removals().await;
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-0000000000000019.snap"]
        );
    }

    /// Crash after the record committed, before the previous file was removed: the new snapshot
    /// and the compacted log stand, and open removes the previous file.
    #[tokio::test]
    async fn crash_after_the_record_leaves_the_previous_file_that_open_removes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_snapshot(dir.path()).await;
        let old = s.snapshot_path().unwrap();
        let old_bytes = std::fs::read(&old).unwrap();
        assert_eq!(s.compact(5).await.unwrap(), Some(25));
        s.wait_removals().await;
        let expected = s.replica().read(StateMachine::clone);
        drop(s);
        assert!(!old.exists());
        std::fs::write(&old, old_bytes).unwrap();

        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 25);
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.replica().read(StateMachine::clone), expected);
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-0000000000000019.snap"]
        );
    }

    /// The recorded file exists by construction; if it is gone or damaged anyway, open refuses
    /// rather than start from a wrong state.
    #[tokio::test]
    async fn a_missing_or_damaged_recorded_file_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_snapshot(dir.path()).await;
        let path = s.snapshot_path().unwrap();
        drop(s);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        for (what, bytes) in [
            ("truncated", Some(&good[..good.len() - 1])),
            ("flipped", Some(&flipped[..])),
            ("missing", None),
        ] {
            match bytes {
                Some(b) => std::fs::write(&path, b).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            let err = RaftStorage::open(dir.path())
                .await
                .err()
                .unwrap_or_else(|| panic!("a {what} snapshot file opened"));
            assert!(matches!(err, StorageError::Corrupt(_)), "{what}: {err}");
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(
            RaftStorage::open(dir.path())
                .await
                .unwrap()
                .snapshot_index(),
            10
        );
    }

    /// A snapshot from the leader follows the same layout: its file, one transaction, then the
    /// previous file goes. An unrecorded file of an interrupted install is removed on open.
    #[tokio::test]
    async fn an_installed_snapshot_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_snapshot(dir.path()).await;
        let sm = {
            let mut sm = StateMachine::new();
            sm.apply(
                40,
                &Txn {
                    timestamp_ms: 1,
                    ops: vec![Txn::create(Node {
                        id: "from-leader".into(),
                        ..Node::default()
                    })],
                },
            )
            .unwrap();
            sm
        };
        let members = BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".to_string())]);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 40;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.set_data(Bytes::from(encode_snapshot_data(&members, &sm.snapshot())));
        // An interrupted earlier install of a snapshot at 35 left its file behind.
        let stray = write_snapshot_file(dir.path(), 35, 3, b"stray", &mut || Ok(())).unwrap();
        assert_eq!(s.install_snapshot(snap, None).await.unwrap(), sm);
        s.wait_removals().await;
        assert_eq!(
            snap_files(dir.path()),
            [
                stray.name().as_str(),
                "snap-0000000000000003-0000000000000028.snap"
            ],
            "the previous snapshot's file is gone; the stray one waits for the next open"
        );
        assert_eq!(s.first_index().unwrap(), 41);
        drop(s);
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 40);
        assert_eq!(s.members(), &members);
        assert_eq!(s.replica().read(StateMachine::clone), sm);
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000003-0000000000000028.snap"]
        );
    }

    /// A data directory from before snapshot files (the data inside the database) opens, and the
    /// next snapshot moves the data to a file.
    #[tokio::test]
    async fn a_snapshot_kept_in_the_database_still_opens_and_moves_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut initial = StateMachine::new();
        initial.apply(1, &Txn::default()).unwrap();
        {
            // What `bootstrap` wrote before.
            let db = Database::create(&path).unwrap();
            let mut meta = SnapshotMetadata {
                index: 1,
                term: 1,
                ..SnapshotMetadata::default()
            };
            meta.mut_conf_state().voters = vec![1];
            let members = BTreeMap::from([(1, "a:1".to_string())]);
            Batch {
                state: vec![
                    (KEY_SNAPSHOT_META, encode(&meta).unwrap()),
                    (
                        KEY_SNAPSHOT_DATA,
                        encode_snapshot_data(&members, &initial.snapshot()),
                    ),
                    (KEY_CONF_STATE, encode(meta.get_conf_state()).unwrap()),
                ],
                members: Some(members),
                durable: true,
                ..Batch::default()
            }
            .commit(&db)
            .unwrap();
        }
        let mut s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 1);
        assert_eq!(s.snapshot_path(), None);
        assert_eq!(s.replica().read(StateMachine::clone), initial);
        s.append((2..=5).map(|i| entry(i, 1)).collect(), None, true)
            .await
            .unwrap();
        for i in 2..=5 {
            create_node(&s, i);
        }
        assert_eq!(s.compact(0).await.unwrap(), Some(5));
        s.wait_removals().await;
        let expected = s.replica().read(StateMachine::clone);
        drop(s);
        assert!(!db_has_snapshot_data(&path), "the old record is deleted");
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000001-0000000000000005.snap"]
        );
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 5);
        assert_eq!(s.replica().read(StateMachine::clone), expected);
    }

    /// `bootstrap` writes its snapshot file before the database: run again after a crash in
    /// between, it succeeds, and the file it left is replaced.
    #[tokio::test]
    async fn an_interrupted_bootstrap_can_be_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let name = snapshot_file_name(1, 1);
        std::fs::write(dir.path().join(&name), b"half a bootstrap").unwrap();
        std::fs::write(dir.path().join(format!("{name}.0{TMP_SUFFIX}")), b"half").unwrap();
        let mut initial = StateMachine::new();
        initial.apply(1, &Txn::default()).unwrap();
        bootstrap(dir.path(), 1, "a:1", initial.clone()).unwrap();
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.replica().read(StateMachine::clone), initial);
        assert_eq!(snap_files(dir.path()), [name]);
    }

    /// The snapshot file is written without the database: appends (fsync'd) go on while it is,
    /// and recording it afterwards compacts only what it covers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_go_on_while_a_snapshot_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store_with_snapshot(dir.path()).await;
        let job = s.begin_snapshot().unwrap().unwrap();
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            job.persist(&mut || {
                reached_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        });
        // The snapshot's temporary file is durable, not yet in place.
        reached.recv().unwrap();
        assert!(snap_files(dir.path())
            .iter()
            .any(|n| n.ends_with(TMP_SUFFIX)));
        for i in 31..=60 {
            s.append(vec![entry(i, 2)], None, true).await.unwrap();
        }
        s.set_conf_state(
            ConfState {
                voters: vec![1],
                ..ConfState::default()
            },
            BTreeMap::from([(1, "a:1".to_string())]),
        )
        .await
        .unwrap();
        release.send(()).unwrap();
        let built = writer.join().unwrap().unwrap();
        assert_eq!(s.finish_snapshot(built, 5).await.unwrap(), Some(25));
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 60);
        s.wait_removals().await;
        drop(s);
        let s = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(s.snapshot_index(), 25);
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 60);
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-0000000000000019.snap"]
        );
    }

    /// A job abandoned before its rename (the driver stopped) leaves nothing behind.
    #[tokio::test]
    async fn an_abandoned_snapshot_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = store_with_snapshot(dir.path()).await;
        let job = s.begin_snapshot().unwrap().unwrap();
        let err = job
            .persist(&mut || Err(StorageError::Task("stopping".into())))
            .err()
            .unwrap();
        assert!(matches!(err, StorageError::Task(_)), "{err}");
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000002-000000000000000a.snap"]
        );
    }

    fn all_entries(s: &RaftStorage) -> Vec<Entry> {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    #[test]
    fn the_file_record_round_trips_and_rejects_a_wrong_length() {
        let f = SnapshotFile {
            index: 7,
            term: 3,
            len: 1234,
            sha256: sha256(b"x"),
        };
        assert_eq!(SnapshotFile::decode(&f.encode()).unwrap(), f);
        assert!(SnapshotFile::decode(&f.encode()[..55]).is_err());
        assert_eq!(f.name(), "snap-0000000000000003-0000000000000007.snap");
    }
}
