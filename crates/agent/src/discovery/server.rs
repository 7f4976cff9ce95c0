//! Serving one container's DNS (IO): one task reads the UDP socket, one accepts TCP
//! connections; both answer from the latest [`Snapshot`] and forward other names to the
//! upstream servers from the agent's own network namespace (the tasks run on the caller's
//! runtime, whose threads are in it).
//!
//! Work is bounded per container: at most [`MAX_UDP_FORWARDS`] forwarded UDP queries in flight
//! (more get SERVFAIL at once), at most [`MAX_TCP_CONNS`] TCP connections (more are closed),
//! each idle at most [`TCP_IDLE`].

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::message::{self, Reply, Transport};
use super::Snapshot;

/// How long each upstream server gets to answer a forwarded query.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded UDP queries in flight per container.
pub(crate) const MAX_UDP_FORWARDS: usize = 64;
/// TCP connections per container.
pub(crate) const MAX_TCP_CONNS: usize = 16;
/// How long a TCP connection may wait for the next query (or take to receive a reply).
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// A query over UDP larger than this is cut (and then undecodable); EDNS clients offer at most
/// 4096 in practice.
const UDP_RECV: usize = 4096;
/// A pause after a failing receive or accept, so a broken socket can't spin.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a container's server tasks share.
pub(crate) struct Ctx {
    pub(crate) container_id: String,
    pub(crate) network_ids: Vec<String>,
    pub(crate) snapshot: watch::Receiver<Arc<Snapshot>>,
    pub(crate) upstream: Arc<[SocketAddr]>,
}

impl Ctx {
    fn reply(&self, packet: &[u8], transport: Transport) -> Reply {
        let snap = self.snapshot.borrow().clone();
        message::reply(
            packet,
            &snap.zone,
            &self.network_ids,
            transport,
            &mut rand::rng(),
        )
    }
}

/// A forwarded UDP query: where to send the reply, and the reply (`None`: nothing to send).
type Forward = Pin<Box<dyn Future<Output = (SocketAddr, Option<Vec<u8>>)> + Send>>;

/// Answers queries on `sock` until `cancel`.
pub(crate) async fn serve_udp(sock: UdpSocket, ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut buf = vec![0u8; UDP_RECV];
    let mut forwards: FuturesUnordered<Forward> = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some((peer, resp)) = forwards.next(), if !forwards.is_empty() => {
                if let Some(resp) = resp {
                    send(&sock, &resp, peer).await;
                }
            }
            r = sock.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(container = %ctx.container_id, error = %e, "DNS receive failed");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                };
                let packet = &buf[..n];
                match ctx.reply(packet, Transport::Udp) {
                    Reply::Answer(resp) => send(&sock, &resp, peer).await,
                    Reply::Ignore => {}
                    Reply::Forward if forwards.len() >= MAX_UDP_FORWARDS => {
                        tracing::debug!(container = %ctx.container_id, "too many DNS queries in flight; answering SERVFAIL");
                        if let Some(resp) = message::servfail(packet) {
                            send(&sock, &resp, peer).await;
                        }
                    }
                    Reply::Forward => {
                        let packet = packet.to_vec();
                        let upstream = Arc::clone(&ctx.upstream);
                        forwards.push(Box::pin(async move {
                            let resp = match forward_udp(&packet, &upstream).await {
                                Some(resp) => Some(resp),
                                None => message::servfail(&packet),
                            };
                            (peer, resp)
                        }));
                    }
                }
            }
        }
    }
    tracing::debug!(container = %ctx.container_id, "DNS over UDP stopped");
}

async fn send(sock: &UdpSocket, resp: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(resp, peer).await {
        tracing::debug!(%peer, error = %e, "cannot send a DNS reply");
    }
}

/// Accepts connections on `listener` until `cancel`, each served by a task of its own.
pub(crate) async fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNS));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(connection(stream, Arc::clone(&ctx), cancel.clone(), permit));
                    }
                    Err(_) => {
                        tracing::debug!(container = %ctx.container_id, %peer, "too many DNS connections; closing a new one");
                    }
                },
                Err(e) => {
                    tracing::debug!(container = %ctx.container_id, error = %e, "DNS accept failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }
    tracing::debug!(container = %ctx.container_id, "DNS over TCP stopped");
}

async fn connection(
    stream: TcpStream,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    tokio::select! {
        () = cancel.cancelled() => {}
        r = serve_connection(stream, &ctx) => if let Err(e) = r {
            tracing::trace!(container = %ctx.container_id, error = %e, "DNS connection ended");
        }
    }
}

async fn serve_connection(mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    loop {
        let packet = match tokio::time::timeout(TCP_IDLE, read_frame(&mut stream)).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let resp = match ctx.reply(&packet, Transport::Tcp) {
            Reply::Answer(resp) => Some(resp),
            Reply::Ignore => None,
            Reply::Forward => match forward_tcp(&packet, &ctx.upstream).await {
                Some(resp) => Some(resp),
                None => message::servfail(&packet),
            },
        };
        if let Some(resp) = resp {
            tokio::time::timeout(TCP_IDLE, write_frame(&mut stream, &resp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the client does not read")
                })??;
        }
    }
}

/// One length-prefixed DNS message; `None` at a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let len = match stream.read_u16().await {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a DNS message over 64 KiB"))?;
    let mut frame = Vec::with_capacity(msg.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    stream.write_all(&frame).await
}

/// Whether `resp` answers `query` (same id, QR set).
fn answers(query: &[u8], resp: &[u8]) -> bool {
    resp.len() >= 12 && query.len() >= 2 && resp[..2] == query[..2] && resp[2] & 0x80 != 0
}

/// `packet` relayed to each upstream server in turn over UDP, [`FORWARD_TIMEOUT`] each; the
/// first reply, as it came. `None` when none answered.
async fn forward_udp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        match tokio::time::timeout(FORWARD_TIMEOUT, udp_exchange(packet, *server)).await {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "upstream DNS server failed"),
            Err(_) => tracing::debug!(%server, "upstream DNS server did not answer in time"),
        }
    }
    None
}

fn unspecified_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    }
}

async fn udp_exchange(packet: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(unspecified_for(server)).await?;
    sock.connect(server).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; message::TCP_MAX];
    loop {
        let n = sock.recv(&mut buf).await?;
        if answers(packet, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

/// Like [`forward_udp`], over TCP.
async fn forward_tcp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        match tokio::time::timeout(FORWARD_TIMEOUT, tcp_exchange(packet, *server)).await {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(e)) => {
                tracing::debug!(%server, error = %e, "upstream DNS server failed over TCP")
            }
            Err(_) => {
                tracing::debug!(%server, "upstream DNS server did not answer in time over TCP")
            }
        }
    }
    None
}

async fn tcp_exchange(packet: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    write_frame(&mut stream, packet).await?;
    match read_frame(&mut stream).await? {
        Some(resp) if answers(packet, &resp) => Ok(resp),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a reply to another query",
        )),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_match_by_id_and_qr() {
        let q = [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut r = q;
        r[2] |= 0x80;
        assert!(answers(&q, &r));
        assert!(!answers(&q, &q));
        let mut other = r;
        other[1] = 0x35;
        assert!(!answers(&q, &other));
        assert!(!answers(&q, &r[..11]));
    }
}
