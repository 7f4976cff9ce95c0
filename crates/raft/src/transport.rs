//! Moving raft messages between members: the [`Transport`] the driver sends through, the gRPC
//! implementation ([`GrpcTransport`]) and the gRPC service that receives ([`RaftService`]).
//!
//! Each message is a raft-rs `eraftpb::Message`, protobuf-encoded into
//! `rswarm.raft.v1.RaftMessage.message`. Ordinary messages flow over one long-lived client stream
//! per peer; a snapshot goes over a stream of its own so that its delivery is confirmed (and
//! reported to raft) and so that it does not hold up heartbeats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;
use rswarm_api::raft::v1::raft_client::RaftClient;
use rswarm_api::raft::v1::raft_server::{Raft, RaftServer};
use rswarm_api::raft::v1::{RaftMessage, SendResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::Error;
use crate::node::RaftHandle;

/// Largest raft message accepted or sent over gRPC. Snapshots travel as one message, so this is
/// far above gRPC's 4 MiB default (Swarm's limit that blocks manager joins on big stores).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Messages queued per peer before new ones are dropped (raft retransmits).
const PEER_QUEUE: usize = 4096;
/// Messages buffered inside one open gRPC stream.
const STREAM_QUEUE: usize = 256;
/// How long one message may wait for room in a stream before the stream is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot may take to reach a peer.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// A peer that stays unreachable is warned about on every this many failures (about a minute).
const FAILURE_WARN_EVERY: u64 = 20;
/// At most one "queue full" warning per peer per this period.
const DROP_WARN_PERIOD: Duration = Duration::from_secs(5);

/// A boxed error, as returned by a [`GrpcTransport`] channel factory.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes a gRPC channel to a member's raft address (`host:port`). The manager injects one that
/// speaks mutual TLS.
pub type ChannelFactory = Arc<dyn Fn(&str) -> Result<Channel, BoxError> + Send + Sync>;

/// Sends raft messages to the other members. Implementations must not block: queue and return.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their recipients (`msg.to`); undeliverable ones are dropped.
    fn send(&self, msgs: Vec<Message>);
    /// The other members and their addresses. The driver calls it on start and whenever the
    /// member map changes.
    fn set_peers(&self, peers: &[(u64, String)]);
    /// Hands the transport a way to tell raft about failed deliveries. The driver calls it once,
    /// on start, before [`Transport::set_peers`].
    fn attach(&self, reporter: PeerReporter) {
        let _ = reporter;
    }
}

/// What a transport tells the driver about a peer.
#[derive(Debug)]
pub(crate) enum Report {
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
}

/// Tells the raft driver about delivery failures, so that raft probes the peer again or resends
/// a snapshot. Cheap to clone; never blocks (reports are dropped when the driver is busy).
#[derive(Clone, Debug)]
pub struct PeerReporter {
    tx: mpsc::Sender<Report>,
}

impl PeerReporter {
    pub(crate) fn new(tx: mpsc::Sender<Report>) -> Self {
        PeerReporter { tx }
    }

    /// A message to `id` could not be delivered.
    pub fn unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Report::Unreachable(id));
    }

    /// A snapshot to `id` was delivered ([`SnapshotStatus::Finish`]) or not
    /// ([`SnapshotStatus::Failure`]).
    pub fn snapshot_status(&self, id: u64, status: SnapshotStatus) {
        let _ = self.tx.try_send(Report::Snapshot(id, status));
    }
}

type SharedReporter = Arc<Mutex<Option<PeerReporter>>>;

fn reporter_of(shared: &SharedReporter) -> Option<PeerReporter> {
    shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
    stop: CancellationToken,
    dropped: u64,
    last_drop_warning: Option<Instant>,
}

/// A [`Transport`] over gRPC: one task per peer owning a bounded queue and one open client stream
/// (`rswarm.raft.v1.Raft/Send`), reopened with backoff after a failure.
pub struct GrpcTransport {
    connect: ChannelFactory,
    cancel: CancellationToken,
    reporter: SharedReporter,
    peers: Mutex<HashMap<u64, Peer>>,
}

impl GrpcTransport {
    /// A transport whose channels come from `connect` (called with a peer's `host:port`). The
    /// per-peer tasks stop when `cancel` fires, when the peer is removed, or when the transport
    /// is dropped.
    pub fn new<F, E>(connect: F, cancel: CancellationToken) -> Self
    where
        F: Fn(&str) -> Result<Channel, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        Self::with_factory(
            Arc::new(move |addr: &str| connect(addr).map_err(Into::into)),
            cancel,
        )
    }

    /// Like [`GrpcTransport::new`], with an already shared factory.
    pub fn with_factory(connect: ChannelFactory, cancel: CancellationToken) -> Self {
        GrpcTransport {
            connect,
            cancel,
            reporter: Arc::new(Mutex::new(None)),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        for peer in self.peers().values() {
            peer.stop.cancel();
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let mut peers = self.peers();
        for msg in msgs {
            let to = msg.to;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let Some(peer) = peers.get_mut(&to) else {
                tracing::debug!(to, "no address for raft member; dropping a message");
                if let Some(r) = reporter_of(&self.reporter) {
                    r.unreachable(to);
                    if is_snapshot {
                        r.snapshot_status(to, SnapshotStatus::Failure);
                    }
                }
                continue;
            };
            match peer.queue.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    peer.dropped += 1;
                    let now = Instant::now();
                    if peer
                        .last_drop_warning
                        .is_none_or(|t| now.duration_since(t) >= DROP_WARN_PERIOD)
                    {
                        tracing::warn!(
                            to,
                            addr = %peer.addr,
                            dropped = peer.dropped,
                            "the send queue to a raft peer is full; dropping messages (raft retransmits)"
                        );
                        peer.last_drop_warning = Some(now);
                    }
                    if is_snapshot {
                        if let Some(r) = reporter_of(&self.reporter) {
                            r.snapshot_status(to, SnapshotStatus::Failure);
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(to, "the sender task of a raft peer has stopped");
                }
            }
        }
    }

    fn set_peers(&self, wanted: &[(u64, String)]) {
        let mut peers = self.peers();
        peers.retain(|id, peer| {
            let keep = wanted.iter().any(|(i, a)| i == id && *a == peer.addr);
            if !keep {
                tracing::info!(id, addr = %peer.addr, "stopped sending to a raft peer");
                peer.stop.cancel();
            }
            keep
        });
        for (id, addr) in wanted {
            if peers.contains_key(id) {
                continue;
            }
            let (queue, rx) = mpsc::channel(PEER_QUEUE);
            let stop = self.cancel.child_token();
            let task = PeerTask {
                id: *id,
                addr: addr.clone(),
                rx,
                connect: self.connect.clone(),
                reporter: self.reporter.clone(),
                stop: stop.clone(),
                channel: None,
                stream: None,
                backoff: MIN_BACKOFF,
                failures: 0,
                warn_at: 0,
                snapshot_failures: Arc::new(AtomicU64::new(0)),
                down_until: None,
            };
            tokio::spawn(task.run());
            tracing::info!(id, addr = %addr, "sending to a raft peer");
            peers.insert(
                *id,
                Peer {
                    addr: addr.clone(),
                    queue,
                    stop,
                    dropped: 0,
                    last_drop_warning: None,
                },
            );
        }
    }

    fn attach(&self, reporter: PeerReporter) {
        *self.reporter.lock().unwrap_or_else(|e| e.into_inner()) = Some(reporter);
    }
}

/// One open client stream to a peer.
struct OpenStream {
    tx: mpsc::Sender<RaftMessage>,
    call: JoinHandle<Result<(), tonic::Status>>,
    opened: Instant,
}

/// Owns the queue and the stream to one peer.
struct PeerTask {
    id: u64,
    addr: String,
    rx: mpsc::Receiver<Message>,
    connect: ChannelFactory,
    reporter: SharedReporter,
    stop: CancellationToken,
    channel: Option<Channel>,
    stream: Option<OpenStream>,
    backoff: Duration,
    /// Failures in a row.
    failures: u64,
    /// The failure count at which to warn again.
    warn_at: u64,
    /// Snapshot sends that failed in a row (shared with the snapshot tasks).
    snapshot_failures: Arc<AtomicU64>,
    /// While set and in the future, messages are dropped instead of sent.
    down_until: Option<Instant>,
}

impl PeerTask {
    async fn run(mut self) {
        loop {
            let msg = tokio::select! {
                () = self.stop.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(m) => m,
                    None => break,
                },
            };
            self.deliver(msg).await;
        }
        if let Some(s) = self.stream.take() {
            // Closing the sender ends the stream; the call then finishes by itself.
            drop(s.tx);
        }
    }

    fn report_unreachable(&self) {
        if let Some(r) = reporter_of(&self.reporter) {
            r.unreachable(self.id);
        }
    }

    fn report_snapshot(&self, status: SnapshotStatus) {
        if let Some(r) = reporter_of(&self.reporter) {
            r.snapshot_status(self.id, status);
        }
    }

    /// Marks the peer down for a backoff period and tells raft. Warns on the first failure in a
    /// row and then about once a minute.
    fn failed(&mut self, reason: &str, lived: Option<Duration>) {
        if lived.is_some_and(|d| d >= MAX_BACKOFF) {
            self.backoff = MIN_BACKOFF;
            self.failures = 0;
            self.warn_at = 0;
        }
        if self.failures >= self.warn_at {
            self.warn_at = self.failures + FAILURE_WARN_EVERY;
            tracing::warn!(
                to = self.id,
                addr = %self.addr,
                failures = self.failures + 1,
                retry_in_ms = self.backoff.as_millis() as u64,
                "cannot reach raft peer: {reason}"
            );
        } else {
            tracing::debug!(to = self.id, addr = %self.addr, "cannot reach raft peer: {reason}");
        }
        self.failures += 1;
        self.down_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.report_unreachable();
    }

    fn dropped(&self, msg: &Message) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.report_snapshot(SnapshotStatus::Failure);
        }
    }

    async fn deliver(&mut self, msg: Message) {
        if let Some(until) = self.down_until {
            if Instant::now() < until {
                self.dropped(&msg);
                return;
            }
            self.down_until = None;
        }
        let channel = match &self.channel {
            Some(c) => c.clone(),
            None => match (self.connect)(&self.addr) {
                Ok(c) => {
                    self.channel = Some(c.clone());
                    c
                }
                Err(e) => {
                    self.failed(&format!("cannot make a channel: {e}"), None);
                    self.dropped(&msg);
                    return;
                }
            },
        };
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(to = self.id, error = %e, "cannot encode a raft message; dropping it");
                self.dropped(&msg);
                return;
            }
        };
        let item = RaftMessage { message: bytes };
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.send_snapshot(channel, item, msg.get_snapshot().get_metadata().index);
            return;
        }
        if let Some(done) = self.stream.take_if(|s| s.call.is_finished()) {
            let lived = done.opened.elapsed();
            match done.call.await {
                Ok(Ok(())) => tracing::debug!(to = self.id, "raft stream closed by the peer"),
                Ok(Err(status)) => {
                    self.failed(&status.to_string(), Some(lived));
                    return;
                }
                Err(e) => {
                    self.failed(&format!("stream task failed: {e}"), Some(lived));
                    return;
                }
            }
        }
        let stream = self.stream.get_or_insert_with(|| open_stream(channel));
        match tokio::time::timeout(SEND_TIMEOUT, stream.tx.send(item)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The stream ended; its call result says why.
                if let Some(s) = self.stream.take() {
                    let lived = s.opened.elapsed();
                    let reason = match tokio::time::timeout(Duration::from_secs(1), s.call).await {
                        Ok(Ok(Err(status))) => status.to_string(),
                        Ok(Ok(Ok(()))) => "the peer closed the stream".to_string(),
                        Ok(Err(e)) => format!("stream task failed: {e}"),
                        Err(_) => "the stream closed".to_string(),
                    };
                    self.failed(&reason, Some(lived));
                }
            }
            Err(_) => {
                if let Some(s) = self.stream.take() {
                    s.call.abort();
                    self.failed("the stream is stuck (no progress for 10 s)", None);
                }
            }
        }
    }

    /// Sends a snapshot over a stream of its own and reports the outcome to raft.
    fn send_snapshot(&self, channel: Channel, item: RaftMessage, index: u64) {
        let (id, addr) = (self.id, self.addr.clone());
        let reporter = self.reporter.clone();
        let stop = self.stop.clone();
        let failures = self.snapshot_failures.clone();
        let bytes = item.message.len();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut client = RaftClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
            let call = client.send(tokio_stream::iter([item]));
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(SNAPSHOT_TIMEOUT, call) => r,
            };
            let reason = match outcome {
                Ok(Ok(_)) => {
                    failures.store(0, Ordering::Relaxed);
                    tracing::info!(
                        to = id,
                        index,
                        bytes,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "sent a raft snapshot"
                    );
                    if let Some(r) = reporter_of(&reporter) {
                        r.snapshot_status(id, SnapshotStatus::Finish);
                    }
                    return;
                }
                Ok(Err(status)) => status.to_string(),
                Err(_) => "timed out".to_string(),
            };
            // Raft resends as soon as it hears of the failure: hold the report back a while, so
            // that an unreachable peer is not sent a whole snapshot many times a second.
            let failed = failures.fetch_add(1, Ordering::Relaxed);
            let delay = backoff_after(failed);
            if failed == 0 || failed.checked_rem(FAILURE_WARN_EVERY) == Some(0) {
                tracing::warn!(
                    to = id,
                    %addr,
                    index,
                    bytes,
                    failures = failed + 1,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot send a raft snapshot: {reason}"
                );
            } else {
                tracing::debug!(to = id, index, "cannot send a raft snapshot: {reason}");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            if let Some(r) = reporter_of(&reporter) {
                r.unreachable(id);
                r.snapshot_status(id, SnapshotStatus::Failure);
            }
        });
    }
}

/// The backoff after `failures` failures in a row: doubling from [`MIN_BACKOFF`] up to
/// [`MAX_BACKOFF`].
fn backoff_after(failures: u64) -> Duration {
    let factor = 1u32 << failures.min(16);
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

fn open_stream(channel: Channel) -> OpenStream {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let mut client = RaftClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let call = tokio::spawn(async move {
        client
            .send(ReceiverStream::new(rx))
            .await
            .map(|_: tonic::Response<SendResponse>| ())
    });
    OpenStream {
        tx,
        call,
        opened: Instant::now(),
    }
}

/// The receiving side: `rswarm.raft.v1.Raft` feeding every message to the local raft node.
/// Authorisation is the caller's business (the manager wraps the service in an interceptor).
#[derive(Clone)]
pub struct RaftService {
    handle: RaftHandle,
}

impl RaftService {
    /// A service stepping received messages into `handle`'s node.
    pub fn new(handle: RaftHandle) -> Self {
        RaftService { handle }
    }

    /// The tonic server for this service, accepting messages up to [`MAX_MESSAGE_BYTES`] (large
    /// snapshots are single messages).
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// [`RaftService::into_server`] behind an interceptor (the manager's peer authorisation).
    /// Use this rather than `RaftServer::with_interceptor`, which keeps gRPC's 4 MiB limit and
    /// so refuses snapshots of larger stores.
    pub fn with_interceptor<F>(
        self,
        interceptor: F,
    ) -> InterceptedService<RaftServer<RaftService>, F>
    where
        F: tonic::service::Interceptor,
    {
        InterceptedService::new(self.into_server(), interceptor)
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn send(
        &self,
        request: tonic::Request<tonic::Streaming<RaftMessage>>,
    ) -> Result<tonic::Response<SendResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        while let Some(item) = stream.message().await? {
            let msg = Message::parse_from_bytes(&item.message)
                .map_err(|e| tonic::Status::invalid_argument(format!("not a raft message: {e}")))?;
            self.handle.step(msg).await.map_err(|e| match e {
                Error::Storage(_) => tonic::Status::invalid_argument(e.to_string()),
                _ => tonic::Status::unavailable(e.to_string()),
            })?;
        }
        Ok(tonic::Response::new(SendResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_after(0), MIN_BACKOFF);
        assert_eq!(backoff_after(1), MIN_BACKOFF * 2);
        assert_eq!(backoff_after(3), MIN_BACKOFF * 8);
        assert_eq!(backoff_after(10), MAX_BACKOFF);
        assert_eq!(backoff_after(u64::MAX), MAX_BACKOFF);
    }
}
