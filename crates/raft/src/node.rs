//! The raft driver: one task owning the raft-rs `RawNode` and the durable storage, fed by bounded
//! channels, and the [`RaftHandle`] the rest of the manager talks to.
//!
//! Ready loop (raft-rs's documented order), once per batch of inputs:
//! 1. send the leader's messages (they need not wait for the disk);
//! 2. install a snapshot received from the leader (persist, then restore the replica);
//! 3. persist new entries and the hard state in one fsync'd transaction (all proposals drained
//!    into this Ready share it: group commit);
//! 4. send the messages that had to wait for persistence (votes, follower responses);
//! 5. apply committed entries to the replica and resolve the proposals waiting on them;
//! 6. `advance`, then the LightReady likewise (commit index, messages, committed entries), then
//!    `advance_apply`;
//! 7. every `snapshot_interval` applied entries (or when raft needs a snapshot for a member the
//!    stored one lacks), copy the replica, then serialise it and write it to its snapshot file on
//!    a blocking thread; the loop keeps running (appending, applying, resolving) meanwhile. When
//!    the file is durable, one small transaction records it and compacts the log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, StateRole, Storage as _};
use rswarm_store::{Backend, BackendStatus, Member, Replica, StateMachine, Store, StoreError, Txn};
use slog::Drain as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::storage::{decode_snapshot, BuiltSnapshot, RaftStorage, StorageError};
use crate::transport::{PeerReporter, Report, Transport};

const PROPOSAL_QUEUE: usize = 1024;
const MESSAGE_QUEUE: usize = 4096;
const MEMBERSHIP_QUEUE: usize = 16;
const REPORT_QUEUE: usize = 1024;
/// Inputs taken from each channel per loop iteration before the Ready is handled.
const DRAIN_LIMIT: usize = 1024;
/// How long to wait before trying again after a snapshot could not be written.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

/// Settings of one raft member.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This member's raft id (non-zero, unique in the cluster, never reused).
    pub id: u64,
    /// Directory holding `raft.redb` and the latest snapshot's file (see [`crate::storage`]).
    pub data_dir: PathBuf,
    /// Length of one raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots (each snapshot compacts the log).
    pub snapshot_interval: u64,
    /// Log entries kept before each snapshot, so that a follower slightly behind catches up from
    /// the log rather than with a whole snapshot (Swarm keeps 500).
    pub log_entries_for_slow_followers: u64,
    /// Largest append message, in bytes (at least one entry is always sent).
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// For a new member with no raft state yet: the existing members (id, raft address), so that
    /// it can answer the leader before the first snapshot tells it the member map. Ignored once
    /// the member has state.
    pub join_peers: Vec<(u64, String)>,
}

impl RaftConfig {
    /// Defaults: tick 100 ms, election 10 ticks, heartbeat 1 tick, snapshot every 10,000 entries
    /// keeping 500 before it, 1 MiB per append message, 256 messages in flight.
    pub fn new(id: u64, data_dir: impl Into<PathBuf>) -> Self {
        RaftConfig {
            id,
            data_dir: data_dir.into(),
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_interval: 10_000,
            log_entries_for_slow_followers: 500,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            join_peers: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.id == 0 {
            return Err(Error::Config("the raft id must not be 0".into()));
        }
        if self.tick.is_zero() {
            return Err(Error::Config("the raft tick must be longer than 0".into()));
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::Config(format!(
                "election_ticks ({}) must be larger than heartbeat_ticks ({}), which must be at least 1",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.snapshot_interval == 0 {
            return Err(Error::Config("snapshot_interval must be at least 1".into()));
        }
        if self.max_inflight_msgs == 0 {
            return Err(Error::Config("max_inflight_msgs must be at least 1".into()));
        }
        Ok(())
    }
}

/// A message from a peer; a snapshot comes with its data already decoded (off the driver).
struct Incoming {
    msg: Message,
    snapshot: Option<DecodedSnapshot>,
}

/// A received snapshot's data, decoded by [`RaftHandle::step`].
struct DecodedSnapshot {
    index: u64,
    term: u64,
    members: BTreeMap<u64, String>,
    state: StateMachine,
}

/// A transaction waiting to be proposed.
struct Proposal {
    data: Vec<u8>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

enum MemberChange {
    Add { id: u64, addr: String },
    Remove { id: u64 },
}

struct MemberRequest {
    change: MemberChange,
    reply: oneshot::Sender<Result<(), Error>>,
}

enum Waiter {
    Commit(oneshot::Sender<Result<u64, StoreError>>),
    Member(oneshot::Sender<Result<(), Error>>),
}

impl Waiter {
    fn fail(self, not_leader: Option<Option<String>>) {
        match self {
            Waiter::Commit(tx) => {
                let _ = tx.send(Err(match not_leader {
                    Some(leader_addr) => StoreError::NotLeader { leader_addr },
                    None => StoreError::ShuttingDown,
                }));
            }
            Waiter::Member(tx) => {
                let _ = tx.send(Err(match not_leader {
                    Some(leader_addr) => Error::NotLeader { leader_addr },
                    None => Error::ShuttingDown,
                }));
            }
        }
    }
}

/// The result of an applied proposal, to be sent to its waiter.
enum Resolution {
    Commit(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Member(oneshot::Sender<Result<(), Error>>, Result<(), Error>),
}

impl Resolution {
    fn send(self) {
        match self {
            Resolution::Commit(tx, r) => {
                let _ = tx.send(r);
            }
            Resolution::Member(tx, r) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// A proposal in the log, waiting to be applied.
struct Pending {
    /// The leader term it was proposed in; only an entry of this term resolves it.
    term: u64,
    waiter: Waiter,
}

/// Entry context: the proposing member's id and its proposal id.
fn encode_context(node: u64, proposal: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_le_bytes());
    ctx.extend_from_slice(&proposal.to_le_bytes());
    ctx
}

fn decode_context(ctx: &[u8]) -> Option<(u64, u64)> {
    let node = u64::from_le_bytes(ctx.get(..8)?.try_into().ok()?);
    let proposal = u64::from_le_bytes(ctx.get(8..16)?.try_into().ok()?);
    Some((node, proposal))
}

/// Whether `id` appears anywhere in the conf state.
fn in_conf(cs: &raft::eraftpb::ConfState, id: u64) -> bool {
    cs.voters.contains(&id)
        || cs.learners.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners_next.contains(&id)
}

/// Called on the snapshot thread with the snapshot's index once its temporary file is durable,
/// before it is renamed into place: lets a test hold a snapshot in the middle of being persisted.
pub(crate) type SnapshotHook = Arc<dyn Fn(u64) + Send + Sync>;

type SnapshotOutcome = Result<Result<BuiltSnapshot, StorageError>, JoinError>;

/// A snapshot being serialised and written to its file on a blocking thread.
struct SnapshotTask {
    handle: JoinHandle<Result<BuiltSnapshot, StorageError>>,
    /// Tells the thread to abandon its file before renaming it into place: the driver stopped
    /// (set on drop, so a panicking driver sets it too).
    cancel: Arc<AtomicBool>,
}

impl Drop for SnapshotTask {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Waits for the snapshot task, if there is one.
async fn wait_job(job: &mut Option<SnapshotTask>) -> SnapshotOutcome {
    match job {
        Some(task) => (&mut task.handle).await,
        None => std::future::pending().await,
    }
}

/// Starts raft members.
pub struct RaftNode;

impl RaftNode {
    /// Opens the storage in `config.data_dir` (bootstrapped, a restart, or empty: a new member
    /// waiting to be added), restores the replica from the stored snapshot and spawns the driver
    /// task, which runs until `cancel` fires. A single-voter cluster campaigns at once.
    pub async fn start(
        config: RaftConfig,
        transport: Arc<dyn Transport>,
        cancel: CancellationToken,
    ) -> Result<RaftHandle, Error> {
        Self::start_with_hook(config, transport, cancel, None).await
    }

    /// [`RaftNode::start`], with a hook into snapshot persistence (tests).
    pub(crate) async fn start_with_hook(
        config: RaftConfig,
        transport: Arc<dyn Transport>,
        cancel: CancellationToken,
        snapshot_hook: Option<SnapshotHook>,
    ) -> Result<RaftHandle, Error> {
        config.validate()?;
        let mut storage = RaftStorage::open(&config.data_dir).await?;
        let initialized = storage.initial_state()?.initialized();
        if !initialized && !config.join_peers.is_empty() {
            let mut members = storage.members().clone();
            for (id, addr) in &config.join_peers {
                members.entry(*id).or_insert_with(|| addr.clone());
            }
            if &members != storage.members() {
                storage.set_members(members).await?;
            }
        }
        let replica = storage.replica().clone();
        let applied = storage.snapshot_index();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config.validate()?;
        let conf_state = storage.conf_state().clone();
        // raft-rs logs every message at debug level, snapshots included (megabytes formatted
        // inside the driver): pass on info and above only.
        let logger = slog::Logger::root(
            slog_stdlog::StdLog.filter_level(slog::Level::Info).fuse(),
            slog::o!(),
        );
        let mut raw = RawNode::new(&raft_config, storage, &logger)?;
        if conf_state.voters == [config.id] && conf_state.learners.is_empty() {
            // The only voter: no one else can win, so do not wait an election timeout.
            raw.campaign()?;
        }
        tracing::info!(
            id = config.id,
            applied,
            voters = ?conf_state.voters,
            initialized,
            "raft member starting"
        );

        let (proposals_tx, proposals) = mpsc::channel(PROPOSAL_QUEUE);
        let (messages_tx, messages) = mpsc::channel(MESSAGE_QUEUE);
        let (membership_tx, membership) = mpsc::channel(MEMBERSHIP_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let (status_tx, status_rx) = watch::channel(BackendStatus::default());
        let (exit_tx, exit_rx) = watch::channel(None);
        transport.attach(PeerReporter::new(reports_tx));

        let driver = Driver {
            id: config.id,
            raw,
            replica: replica.clone(),
            transport,
            snapshot_interval: config.snapshot_interval,
            keep_entries: config.log_entries_for_slow_followers,
            next_proposal: 0,
            pending: HashMap::new(),
            member_queue: VecDeque::new(),
            peers: None,
            status: status_tx,
            leadership: (StateRole::Follower, 0),
            decoded_snapshot: None,
            resolved: Vec::new(),
            snapshot_hook,
            snapshot_retry_at: None,
        };
        let inbox = Inbox {
            proposals,
            messages,
            membership,
            reports,
        };
        let tick = config.tick;
        let driver_cancel = cancel.clone();
        let id = config.id;
        tokio::spawn(async move {
            let outcome = AssertUnwindSafe(driver.run(inbox, driver_cancel, tick))
                .catch_unwind()
                .await;
            let outcome = match outcome {
                Ok(Ok(())) => {
                    tracing::info!(id, "raft member stopped");
                    Ok(())
                }
                Ok(Err(e)) => {
                    tracing::error!(id, error = %e, "raft member failed");
                    Err(e.to_string())
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".to_string());
                    tracing::error!(id, panic = %what, "raft member panicked");
                    Err(format!("panicked: {what}"))
                }
            };
            let _ = exit_tx.send(Some(outcome));
        });

        Ok(RaftHandle {
            inner: Arc::new(Shared {
                id: config.id,
                replica,
                proposals: proposals_tx,
                messages: messages_tx,
                membership: membership_tx,
                status: status_rx,
                exit: exit_rx,
                cancel,
            }),
        })
    }
}

struct Shared {
    id: u64,
    replica: Arc<Replica>,
    proposals: mpsc::Sender<Proposal>,
    messages: mpsc::Sender<Incoming>,
    membership: mpsc::Sender<MemberRequest>,
    status: watch::Receiver<BackendStatus>,
    exit: watch::Receiver<Option<Result<(), String>>>,
    cancel: CancellationToken,
}

/// The manager's handle on its raft member. Cheap to clone. It is also the member's
/// [`rswarm_store::Backend`].
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<Shared>,
}

impl RaftHandle {
    /// This member's raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// A [`Store`] over this member's replica whose commits go through raft.
    pub fn store(&self) -> Store {
        Store::new(self.inner.replica.clone(), Arc::new(self.clone()))
    }

    /// The replica the driver applies committed entries to.
    pub fn replica(&self) -> Arc<Replica> {
        self.inner.replica.clone()
    }

    /// Leadership, term, applied index and members, as of the driver's last loop iteration.
    pub fn status(&self) -> BackendStatus {
        self.inner.status.borrow().clone()
    }

    /// Every change of [`RaftHandle::status`] (e.g. to start leader-only work).
    pub fn watch_status(&self) -> watch::Receiver<BackendStatus> {
        self.inner.status.clone()
    }

    async fn member_change(&self, change: MemberChange) -> Result<(), Error> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .membership
            .send(MemberRequest { change, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Adds a voting member reachable at `addr` (its raft `host:port`). Resolves once the change
    /// is applied on this member (the leader). The new member starts from an empty data
    /// directory and catches up from a snapshot.
    pub async fn add_member(&self, id: u64, addr: String) -> Result<(), Error> {
        self.member_change(MemberChange::Add { id, addr }).await
    }

    /// Removes a member. Resolves once the change is applied on this member (the leader).
    pub async fn remove_member(&self, id: u64) -> Result<(), Error> {
        self.member_change(MemberChange::Remove { id }).await
    }

    /// Feeds a message received from a peer to the driver (waits while its queue is full). A
    /// snapshot's data is decoded here first, so that a large one does not stall the driver (and
    /// with it the heartbeats) and a corrupt one is refused before raft accepts it.
    pub async fn step(&self, msg: Message) -> Result<(), Error> {
        let snapshot = if msg.get_msg_type() == MessageType::MsgSnapshot {
            let meta = msg.get_snapshot().get_metadata();
            let (index, term) = (meta.index, meta.term);
            let data = msg.get_snapshot().data.clone();
            let (members, state) = tokio::task::spawn_blocking(move || decode_snapshot(&data))
                .await
                .map_err(|e| Error::Stopped(format!("decoding a snapshot failed: {e}")))?
                .inspect_err(|e| {
                    tracing::warn!(from = msg.from, index, error = %e, "refusing a raft snapshot");
                })?;
            Some(DecodedSnapshot {
                index,
                term,
                members,
                state,
            })
        } else {
            None
        };
        self.inner
            .messages
            .send(Incoming { msg, snapshot })
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// Whether the driver task has exited.
    pub fn is_stopped(&self) -> bool {
        self.inner.exit.borrow().is_some()
    }

    /// Waits for the driver task to exit (after the cancellation token fired, or on a fatal
    /// error), after it released the storage. Returns why it stopped if that was not a cancel.
    pub async fn wait_stopped(&self) -> Result<(), Error> {
        let mut exit = self.inner.exit.clone();
        let outcome = match exit.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => Some(Err("the driver task was aborted".to_string())),
        };
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Stopped(e)),
            None => Err(Error::Stopped("the driver task was aborted".to_string())),
        }
    }
}

impl Backend for RaftHandle {
    fn commit(&self, txn: Txn) -> BoxFuture<'static, Result<u64, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.cancel.is_cancelled() {
                return Err(StoreError::ShuttingDown);
            }
            let (reply, rx) = oneshot::channel();
            let proposal = Proposal {
                data: txn.encode(),
                reply,
            };
            inner
                .proposals
                .send(proposal)
                .await
                .map_err(|_| StoreError::ShuttingDown)?;
            rx.await.map_err(|_| StoreError::ShuttingDown)?
        })
    }

    fn status(&self) -> BackendStatus {
        RaftHandle::status(self)
    }
}

struct Inbox {
    proposals: mpsc::Receiver<Proposal>,
    messages: mpsc::Receiver<Incoming>,
    membership: mpsc::Receiver<MemberRequest>,
    reports: mpsc::Receiver<Report>,
}

struct Driver {
    id: u64,
    raw: RawNode<RaftStorage>,
    replica: Arc<Replica>,
    transport: Arc<dyn Transport>,
    snapshot_interval: u64,
    keep_entries: u64,
    next_proposal: u64,
    pending: HashMap<u64, Pending>,
    /// Membership changes not yet proposed (raft takes one at a time).
    member_queue: VecDeque<MemberRequest>,
    /// The peers last given to the transport.
    peers: Option<Vec<(u64, String)>>,
    status: watch::Sender<BackendStatus>,
    /// Role and term when pending proposals were last checked.
    leadership: (StateRole, u64),
    /// The last snapshot received, decoded, until raft hands it back in a Ready.
    decoded_snapshot: Option<DecodedSnapshot>,
    /// Results of applied proposals, sent once the status is published.
    resolved: Vec<Resolution>,
    snapshot_hook: Option<SnapshotHook>,
    /// After a snapshot failed: not before this.
    snapshot_retry_at: Option<Instant>,
}

impl Driver {
    async fn run(
        mut self,
        mut inbox: Inbox,
        cancel: CancellationToken,
        tick: Duration,
    ) -> Result<(), Error> {
        self.sync_peers();
        self.publish_status();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A snapshot being serialised and written on a blocking thread.
        let mut job: Option<SnapshotTask> = None;
        let result = loop {
            let mut built = None;
            // Every branch is cancel-safe; the disk writes happen outside the select.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                _ = ticker.tick() => {
                    self.raw.tick();
                }
                Some(msg) = inbox.messages.recv() => self.step(msg),
                Some(report) = inbox.reports.recv() => self.report(report),
                done = wait_job(&mut job) => {
                    job = None;
                    built = Some(done);
                }
                Some(req) = inbox.membership.recv() => self.queue_member_change(req),
                Some(p) = inbox.proposals.recv() => self.propose(p),
            }
            self.drain(&mut inbox);
            if let Err(e) = self.process(built, &mut job).await {
                break Err(e);
            }
        };
        // Nothing writes into the data directory once the driver has stopped: a snapshot thread
        // abandons its file (unless it is in place already; the next start removes it then), and
        // is waited for, as are removals of old snapshot files.
        if let Some(task) = &job {
            task.cancel.store(true, Ordering::Relaxed);
        }
        self.shutdown();
        if let Some(mut task) = job.take() {
            let _ = (&mut task.handle).await;
        }
        self.raw.mut_store().wait_removals().await;
        result
    }

    /// Takes whatever else is queued so that it all lands in one Ready (one fsync).
    fn drain(&mut self, inbox: &mut Inbox) {
        for _ in 0..DRAIN_LIMIT {
            match inbox.messages.try_recv() {
                Ok(m) => self.step(m),
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match inbox.reports.try_recv() {
                Ok(r) => self.report(r),
                Err(_) => break,
            }
        }
        for _ in 0..MEMBERSHIP_QUEUE {
            match inbox.membership.try_recv() {
                Ok(r) => self.queue_member_change(r),
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match inbox.proposals.try_recv() {
                Ok(p) => self.propose(p),
                Err(_) => break,
            }
        }
    }

    async fn process(
        &mut self,
        built: Option<SnapshotOutcome>,
        job: &mut Option<SnapshotTask>,
    ) -> Result<(), Error> {
        self.propose_member_changes();
        self.handle_readies().await?;
        if self.raw.snap().is_none() {
            // Raft did not take the received snapshot (or installed it already).
            self.decoded_snapshot = None;
        }
        // A conf change applied above may let the next queued one go.
        if !self.member_queue.is_empty() {
            self.propose_member_changes();
            self.handle_readies().await?;
        }
        match built {
            Some(Ok(Ok(built))) => {
                // The file is durable: record it and compact the log (a small transaction).
                let keep = self.keep_entries;
                let taken = built.index();
                match self.raw.mut_store().finish_snapshot(built, keep).await? {
                    Some(index) => tracing::info!(
                        id = self.id,
                        index,
                        "took a raft snapshot and compacted the log"
                    ),
                    None => tracing::debug!(
                        id = self.id,
                        index = taken,
                        "discarded a raft snapshot a newer one replaced meanwhile"
                    ),
                }
            }
            Some(Ok(Err(e))) => {
                tracing::error!(id = self.id, error = %e, "writing a raft snapshot failed; will retry in {SNAPSHOT_RETRY:?}");
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
            Some(Err(e)) => {
                tracing::error!(id = self.id, error = %e, "the raft snapshot task failed; will retry in {SNAPSHOT_RETRY:?}");
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY);
            }
            None => {}
        }
        self.maybe_start_snapshot(job)?;
        // Publish first, so that whoever a result wakes sees a status at least that new.
        self.publish_status();
        for r in self.resolved.drain(..) {
            r.send();
        }
        self.check_leadership();
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn leader_addr(&self) -> Option<String> {
        let leader = self.raw.raft.leader_id;
        self.raw.store().members().get(&leader).cloned()
    }

    fn next_proposal_id(&mut self) -> u64 {
        self.next_proposal += 1;
        self.next_proposal
    }

    fn step(&mut self, incoming: Incoming) {
        let Incoming { msg, snapshot } = incoming;
        if msg.to != self.id {
            tracing::debug!(
                to = msg.to,
                from = msg.from,
                "dropping a raft message addressed to another member"
            );
            return;
        }
        if snapshot.is_some() {
            self.decoded_snapshot = snapshot;
        }
        let (from, kind) = (msg.from, msg.get_msg_type());
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(from, ?kind, error = %e, "raft ignored a message");
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Unreachable(id) => self.raw.report_unreachable(id),
            Report::Snapshot(id, status) => self.raw.report_snapshot(id, status),
        }
    }

    fn propose(&mut self, p: Proposal) {
        if !self.is_leader() {
            let _ = p.reply.send(Err(StoreError::NotLeader {
                leader_addr: self.leader_addr(),
            }));
            return;
        }
        let pid = self.next_proposal_id();
        match self.raw.propose(encode_context(self.id, pid), p.data) {
            Ok(()) => {
                let term = self.raw.raft.term;
                self.pending.insert(
                    pid,
                    Pending {
                        term,
                        waiter: Waiter::Commit(p.reply),
                    },
                );
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = p.reply.send(Err(StoreError::NotLeader {
                    leader_addr: self.leader_addr(),
                }));
            }
            Err(e) => {
                let _ = p.reply.send(Err(StoreError::Backend(format!(
                    "raft refused the proposal: {e}"
                ))));
            }
        }
    }

    fn queue_member_change(&mut self, req: MemberRequest) {
        if !self.is_leader() {
            let _ = req.reply.send(Err(Error::NotLeader {
                leader_addr: self.leader_addr(),
            }));
            return;
        }
        self.member_queue.push_back(req);
    }

    /// Proposes the next queued membership change once raft has none pending.
    fn propose_member_changes(&mut self) {
        while self.is_leader() && !self.raw.raft.has_pending_conf() {
            let Some(req) = self.member_queue.pop_front() else {
                return;
            };
            let conf = self.raw.store().conf_state().clone();
            let mut cc = ConfChange::default();
            match &req.change {
                MemberChange::Add { id, addr } => {
                    if *id == 0 {
                        let _ = req
                            .reply
                            .send(Err(Error::Config("raft member id 0 is reserved".into())));
                        continue;
                    }
                    if in_conf(&conf, *id) {
                        let _ = req.reply.send(Err(Error::MemberExists(*id)));
                        continue;
                    }
                    cc.set_change_type(ConfChangeType::AddNode);
                    cc.node_id = *id;
                    cc.context = addr.clone().into_bytes().into();
                }
                MemberChange::Remove { id } => {
                    if !in_conf(&conf, *id) {
                        let _ = req.reply.send(Err(Error::UnknownMember(*id)));
                        continue;
                    }
                    cc.set_change_type(ConfChangeType::RemoveNode);
                    cc.node_id = *id;
                }
            }
            let pid = self.next_proposal_id();
            match self
                .raw
                .propose_conf_change(encode_context(self.id, pid), cc)
            {
                Ok(()) => {
                    let term = self.raw.raft.term;
                    self.pending.insert(
                        pid,
                        Pending {
                            term,
                            waiter: Waiter::Member(req.reply),
                        },
                    );
                }
                Err(raft::Error::ProposalDropped) => {
                    let _ = req.reply.send(Err(Error::NotLeader {
                        leader_addr: self.leader_addr(),
                    }));
                }
                Err(e) => {
                    let _ = req.reply.send(Err(Error::Raft(e)));
                }
            }
        }
    }

    async fn handle_readies(&mut self) -> Result<(), Error> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                tracing::info!(
                    id = self.id,
                    role = ?ss.raft_state,
                    leader = ss.leader_id,
                    term = self.raw.raft.term,
                    "raft role changed"
                );
            }
            // 1. A leader may send before persisting (raft thesis 10.2.1).
            if !rd.messages().is_empty() {
                self.transport.send(rd.take_messages());
            }
            // 2. A snapshot from the leader replaces the log and the state.
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
                let decoded = self
                    .decoded_snapshot
                    .take()
                    .filter(|d| d.index == index && d.term == term)
                    .map(|d| (d.members, d.state));
                let state = self
                    .raw
                    .mut_store()
                    .install_snapshot(snapshot, decoded)
                    .await?;
                self.replica.restore(state);
                self.sync_peers();
                tracing::info!(
                    id = self.id,
                    index,
                    term,
                    "installed a raft snapshot from the leader"
                );
            }
            // 3. Entries and hard state: one transaction, fsync'd when raft needs it.
            let entries = rd.take_entries();
            let hard_state = rd.hs().cloned();
            if !entries.is_empty() || hard_state.is_some() {
                let sync = rd.must_sync();
                self.raw
                    .mut_store()
                    .append(entries, hard_state, sync)
                    .await?;
            }
            // 4. Messages that must follow persistence.
            if !rd.persisted_messages().is_empty() {
                self.transport.send(rd.take_persisted_messages());
            }
            // 5. Apply what is committed.
            self.apply_entries(rd.take_committed_entries()).await?;
            // 6. Advance; the light ready carries what became committed meanwhile.
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit).await?;
            }
            if !light.messages().is_empty() {
                self.transport.send(light.take_messages());
            }
            self.apply_entries(light.take_committed_entries()).await?;
            self.raw.advance_apply();
        }
        Ok(())
    }

    async fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        for entry in entries {
            let index = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let result = if entry.data.is_empty() {
                        // A new leader's no-op.
                        self.replica.skip(index);
                        Ok(index)
                    } else {
                        match Txn::decode(&entry.data) {
                            Ok(txn) => self
                                .replica
                                .apply(index, &txn)
                                .map(|()| index)
                                .map_err(StoreError::Txn),
                            Err(e) => {
                                tracing::error!(index, error = %e, "a committed raft entry is not a transaction; skipping it");
                                self.replica.skip(index);
                                Err(StoreError::Backend(format!(
                                    "the committed entry {index} is not a transaction: {e}"
                                )))
                            }
                        }
                    };
                    match self.take_waiter(&entry) {
                        Some(Waiter::Commit(tx)) => {
                            self.resolved.push(Resolution::Commit(tx, result));
                        }
                        Some(Waiter::Member(tx)) => {
                            self.resolved.push(Resolution::Member(
                                tx,
                                Err(Error::ConfChange(
                                    "the membership change was dropped by raft".into(),
                                )),
                            ));
                        }
                        None => {}
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = self.apply_conf_change(&entry).await?;
                    self.replica.skip(index);
                    match self.take_waiter(&entry) {
                        Some(Waiter::Member(tx)) => {
                            self.resolved.push(Resolution::Member(tx, result));
                        }
                        Some(Waiter::Commit(tx)) => {
                            self.resolved.push(Resolution::Commit(
                                tx,
                                Err(StoreError::Backend(
                                    "the proposal was committed as a membership change".into(),
                                )),
                            ));
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The proposer waiting on `entry`, if it was proposed here in this leader term.
    fn take_waiter(&mut self, entry: &Entry) -> Option<Waiter> {
        let (node, pid) = decode_context(&entry.context)?;
        if node != self.id {
            return None;
        }
        if self.pending.get(&pid)?.term != entry.term {
            return None;
        }
        self.pending.remove(&pid).map(|p| p.waiter)
    }

    /// Applies a committed membership change; the outer error is fatal (storage), the inner one
    /// goes to the proposer.
    async fn apply_conf_change(&mut self, entry: &Entry) -> Result<Result<(), Error>, Error> {
        let index = entry.index;
        let mut members: BTreeMap<u64, String> = self.raw.store().members().clone();
        let applied = if entry.get_entry_type() == EntryType::EntryConfChange {
            match ConfChange::parse_from_bytes(&entry.data) {
                Ok(cc) => {
                    let r = self.raw.apply_conf_change(&cc);
                    if r.is_ok() {
                        match cc.get_change_type() {
                            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                let addr = String::from_utf8_lossy(&cc.context).into_owned();
                                members.insert(cc.node_id, addr);
                            }
                            ConfChangeType::RemoveNode => {
                                members.remove(&cc.node_id);
                            }
                        }
                    }
                    r
                }
                Err(e) => Err(raft::Error::CodecError(e)),
            }
        } else {
            match ConfChangeV2::parse_from_bytes(&entry.data) {
                Ok(cc) => self.raw.apply_conf_change(&cc),
                Err(e) => Err(raft::Error::CodecError(e)),
            }
        };
        let conf_state = match applied {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(index, error = %e, "raft refused a committed membership change");
                return Ok(Err(Error::ConfChange(e.to_string())));
            }
        };
        members.retain(|id, _| in_conf(&conf_state, *id));
        tracing::info!(
            id = self.id,
            index,
            voters = ?conf_state.voters,
            members = ?members,
            "applied a raft membership change"
        );
        if !in_conf(&conf_state, self.id) {
            tracing::warn!(
                id = self.id,
                "this member was removed from the raft cluster"
            );
        }
        self.raw
            .mut_store()
            .set_conf_state(conf_state, members)
            .await?;
        self.sync_peers();
        Ok(Ok(()))
    }

    /// Fails the proposals of a leadership this member no longer holds.
    fn check_leadership(&mut self) {
        let now = (self.raw.raft.state, self.raw.raft.term);
        if now == self.leadership {
            return;
        }
        self.leadership = now;
        let leader_term = (now.0 == StateRole::Leader).then_some(now.1);
        let leader_addr = self.leader_addr();
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| Some(p.term) != leader_term)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in lost {
            if let Some(p) = self.pending.remove(&pid) {
                p.waiter.fail(Some(leader_addr.clone()));
            }
        }
        if leader_term.is_none() {
            for req in self.member_queue.drain(..) {
                let _ = req.reply.send(Err(Error::NotLeader {
                    leader_addr: leader_addr.clone(),
                }));
            }
        }
    }

    /// Every `snapshot_interval` applied entries, or when raft needs one the stored snapshot
    /// cannot serve: copies the replica (here, at the applied index) and starts serialising and
    /// writing it on a blocking thread.
    fn maybe_start_snapshot(&mut self, job: &mut Option<SnapshotTask>) -> Result<(), Error> {
        if job.is_some() {
            return Ok(());
        }
        if let Some(at) = self.snapshot_retry_at {
            if Instant::now() < at {
                return Ok(());
            }
            self.snapshot_retry_at = None;
        }
        let store = self.raw.store();
        let due =
            self.replica.index().saturating_sub(store.snapshot_index()) >= self.snapshot_interval;
        let wanted = store.take_snapshot_request();
        if !due && !wanted {
            return Ok(());
        }
        if let Some(snapshot) = store.begin_snapshot()? {
            let index = snapshot.index();
            tracing::debug!(id = self.id, index, wanted, "taking a raft snapshot");
            let cancel = Arc::new(AtomicBool::new(false));
            let hook = self.snapshot_hook.clone();
            let stop = cancel.clone();
            let handle = tokio::task::spawn_blocking(move || {
                snapshot.persist(&mut || {
                    if let Some(hook) = &hook {
                        hook(index);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Err(StorageError::Task(
                            "the raft driver stopped; snapshot abandoned".into(),
                        ));
                    }
                    Ok(())
                })
            });
            *job = Some(SnapshotTask { handle, cancel });
        }
        Ok(())
    }

    /// Tells the transport about the other members when the member map changed.
    fn sync_peers(&mut self) {
        let peers: Vec<(u64, String)> = self
            .raw
            .store()
            .members()
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        if self.peers.as_ref() != Some(&peers) {
            self.transport.set_peers(&peers);
            self.peers = Some(peers);
        }
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let status = BackendStatus {
            is_leader: raft.state == StateRole::Leader,
            leader: (raft.leader_id != raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            applied: self.replica.index(),
            members: self
                .raw
                .store()
                .members()
                .iter()
                .map(|(id, addr)| Member {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect(),
        };
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }

    fn shutdown(&mut self) {
        // Applied before the stop: those results stand.
        for r in self.resolved.drain(..) {
            r.send();
        }
        for (_, p) in self.pending.drain() {
            p.waiter.fail(None);
        }
        for req in self.member_queue.drain(..) {
            let _ = req.reply.send(Err(Error::ShuttingDown));
        }
        self.status.send_modify(|s| {
            s.is_leader = false;
            s.leader = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_and_rejects_short_input() {
        assert_eq!(decode_context(&encode_context(3, 99)), Some((3, 99)));
        assert_eq!(decode_context(b""), None);
        assert_eq!(decode_context(&[1; 15]), None);
    }

    #[test]
    fn config_validation_catches_bad_values() {
        let ok = RaftConfig::new(1, "/tmp/x");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.id = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.election_ticks = 1;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.snapshot_interval = 0;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.tick = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}

/// The driver keeps committing while a snapshot is being persisted.
#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::storage::bootstrap;
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;

    struct NoPeers;

    impl Transport for NoPeers {
        fn send(&self, _msgs: Vec<Message>) {}
        fn set_peers(&self, _peers: &[(u64, String)]) {}
    }

    fn create_node(id: String) -> Txn {
        Txn::new(vec![Txn::create(rswarm_store::Node {
            id,
            ..rswarm_store::Node::default()
        })])
    }

    fn snap_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("snap-"))
            .collect();
        names.sort();
        names
    }

    /// A bootstrapped single-member data dir, and a hook that holds the first snapshot just before
    /// its file is renamed into place: `held` yields its index, sending on `release` lets it go.
    fn bootstrap_with_held_snapshot(
        dir: &std::path::Path,
    ) -> (SnapshotHook, std_mpsc::Receiver<u64>, std_mpsc::Sender<()>) {
        let mut initial = StateMachine::new();
        initial.apply(1, &Txn::default()).unwrap();
        bootstrap(dir, 1, "127.0.0.1:1", initial).unwrap();
        let (held_tx, held) = std_mpsc::channel::<u64>();
        let (release, release_rx) = std_mpsc::channel::<()>();
        // Only the first snapshot waits; later ones go straight through.
        let gate = Arc::new(Mutex::new(Some((held_tx, release_rx))));
        let hook: SnapshotHook = Arc::new(move |index| {
            let first = gate.lock().unwrap().take();
            if let Some((held_tx, release_rx)) = first {
                held_tx.send(index).unwrap();
                let _ = release_rx.recv();
            }
        });
        (hook, held, release)
    }

    /// The first snapshot is held just before its file is renamed into place (the data written
    /// and fsync'd, nothing recorded) until the test lets it go: every commit made meanwhile must
    /// resolve. Deterministic: the commits cannot finish before the hold unless the driver runs
    /// independently of the snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_resolve_while_a_snapshot_is_being_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let (hook, held, release) = bootstrap_with_held_snapshot(dir.path());
        let mut config = RaftConfig::new(1, dir.path());
        config.tick = Duration::from_millis(20);
        config.snapshot_interval = 20;
        config.log_entries_for_slow_followers = 0;
        let cancel = CancellationToken::new();
        let handle =
            RaftNode::start_with_hook(config, Arc::new(NoPeers), cancel.clone(), Some(hook))
                .await
                .unwrap();
        let store = handle.store();
        let held = tokio::task::spawn_blocking(move || held.recv().unwrap());
        let mut n = 0;
        // Commit until the snapshot (due after 20 applied entries) is held.
        while !held.is_finished() {
            store
                .commit(create_node(format!("before-{n}")))
                .await
                .expect("commit before the snapshot");
            n += 1;
            assert!(n < 1000, "no snapshot was started");
        }
        let index = held.await.unwrap();
        assert!(index >= 20, "snapshot at {index}");
        // While it is held: its file is a durable temporary file, the bootstrap snapshot is still
        // the recorded one, and commits go on.
        let files = snap_files(dir.path());
        assert!(
            files.contains(&"snap-0000000000000001-0000000000000001.snap".to_string())
                && files.iter().any(|f| f.ends_with(".tmp")),
            "{files:?}"
        );
        let during = futures::future::join_all((0..100).map(|i| {
            let store = store.clone();
            async move {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    store.commit(create_node(format!("during-{i}"))),
                )
                .await
                .expect("a commit resolves while the snapshot is held")
            }
        }))
        .await;
        let mut last = 0;
        for r in during {
            last = last.max(r.expect("commit while the snapshot is held"));
        }
        assert!(last > index + 100 - 1, "committed through {last}");
        assert_eq!(store.list::<rswarm_store::Node>().len(), n + 100);

        // Let it go: the snapshot is recorded and replaces the bootstrap one (and, as more than
        // 20 entries were applied meanwhile, the next one follows at once).
        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let files = snap_files(dir.path());
            let recorded: Vec<u64> = files
                .iter()
                .filter_map(|f| f.strip_suffix(".snap"))
                .filter_map(|f| u64::from_str_radix(f.rsplit('-').next()?, 16).ok())
                .collect();
            if files.len() == 1 && recorded.len() == 1 && recorded[0] >= index {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{files:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
        handle.wait_stopped().await.unwrap();
        let storage = RaftStorage::open(dir.path()).await.unwrap();
        assert!(storage.snapshot_index() >= index);
        assert_eq!(
            storage
                .replica()
                .read(|s| s.count(rswarm_store::Kind::Node)),
            n + 100,
            "the restart replays the log after the snapshot"
        );
    }

    /// A driver stopped while its snapshot is being written abandons the file: once it reports
    /// stopped, nothing more is written, and only the recorded snapshot is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_driver_abandons_its_snapshot_file() {
        let dir = tempfile::tempdir().unwrap();
        let (hook, held, release) = bootstrap_with_held_snapshot(dir.path());
        let mut config = RaftConfig::new(1, dir.path());
        config.tick = Duration::from_millis(20);
        config.snapshot_interval = 5;
        let cancel = CancellationToken::new();
        let handle =
            RaftNode::start_with_hook(config, Arc::new(NoPeers), cancel.clone(), Some(hook))
                .await
                .unwrap();
        let store = handle.store();
        let held = tokio::task::spawn_blocking(move || held.recv().unwrap());
        let mut n = 0;
        while !held.is_finished() {
            store.commit(create_node(format!("n{n}"))).await.unwrap();
            n += 1;
            assert!(n < 1000, "no snapshot was started");
        }
        held.await.unwrap();
        cancel.cancel();
        // The driver flags the snapshot thread before it gives up leadership in its status.
        let mut status = handle.watch_status();
        tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| !s.is_leader))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !handle.is_stopped(),
            "the driver waits for the snapshot thread"
        );
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), handle.wait_stopped())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            snap_files(dir.path()),
            ["snap-0000000000000001-0000000000000001.snap"]
        );
        let storage = RaftStorage::open(dir.path()).await.unwrap();
        assert_eq!(
            storage.snapshot_index(),
            1,
            "the abandoned snapshot was not recorded"
        );
        assert!(
            storage.last_index().unwrap() > n as u64,
            "the log still holds every commit"
        );
    }
}
