//! tonic over our own rustls streams (TCP) and over unix sockets.
//!
//! tonic's TLS features are not used: the server accepts TCP connections and runs the rustls
//! handshake itself ([`tls_incoming`]), the client dials through a custom connector
//! ([`tls_channel`]). That keeps certificate verification and hot reload (see
//! [`crate::tls::NodeIdentity`]) in our hands. A handler finds the caller's verified identity with
//! [`peer_of`].

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::Service;

use crate::ca::parse_cert_der;
use crate::error::{Error, Result};
use crate::tls::PeerIdentity;

/// How long a server waits for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 keepalive ping interval on client channels.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client waits for a keepalive ping answer before dropping the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connection info tonic attaches to every request received over [`tls_incoming`].
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's verified identity; `None` when it presented no certificate.
    pub peer: Option<PeerIdentity>,
}

/// A server-side TLS connection whose handshake has completed.
#[derive(Debug)]
pub struct TlsConn {
    inner: server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl TlsConn {
    /// Wraps a completed handshake. Fails when the client's certificate (already verified against
    /// the cluster CA by rustls) does not name an rswarm node.
    fn new(inner: server::TlsStream<TcpStream>, remote_addr: Option<SocketAddr>) -> Result<Self> {
        let peer = match inner
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            Some(cert) => Some(PeerIdentity::from(parse_cert_der(cert)?)),
            None => None,
        };
        Ok(TlsConn {
            inner,
            info: TlsConnectInfo { remote_addr, peer },
        })
    }

    /// The connection info (also what [`peer_of`] returns inside handlers).
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and yields those whose TLS handshake succeeds, for
/// `tonic::transport::Server::serve_with_incoming(_shutdown)`.
///
/// Each handshake runs in its own task with a [`HANDSHAKE_TIMEOUT`], so a slow or silent client never
/// blocks other accepts. Failed handshakes are logged at debug level and skipped; the stream never
/// yields an error. Must be called inside a tokio runtime. Accepting stops (and the listening socket
/// closes) when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE/ENFILE or an aborted connection: back off briefly, keep serving.
                tracing::warn!(error = %e, listener = ?local, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
                    return;
                }
            };
            match TlsConn::new(stream, Some(remote)) {
                Ok(conn) => {
                    // Fails only when the server is gone; the connection is then dropped.
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "rejecting a client whose certificate names no rswarm node");
                }
            }
        });
    }
    tracing::debug!(listener = ?local, "tls listener stopped");
}

/// The TLS connection info of a request received over [`tls_incoming`]; `None` for other transports.
pub fn peer_of<T>(req: &tonic::Request<T>) -> Option<&TlsConnectInfo> {
    req.extensions().get::<TlsConnectInfo>()
}

/// True when the request arrived over a unix socket (see [`unix_incoming`]).
pub fn is_local_socket<T>(req: &tonic::Request<T>) -> bool {
    req.extensions().get::<UdsConnectInfo>().is_some()
}

fn tls_endpoint(addr: &str) -> Result<Endpoint> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| Error::InvalidAddress {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(endpoint
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

fn tls_connector(
    addr: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<
    impl Service<
            Uri,
            Response = TokioIo<client::TlsStream<TcpStream>>,
            Error = io::Error,
            Future: Send,
        > + Send
        + 'static,
> {
    let server_name =
        ServerName::try_from(server_name.to_string()).map_err(|e| Error::InvalidAddress {
            addr: server_name.to_string(),
            reason: format!("not a valid TLS server name: {e}"),
        })?;
    let connector = TlsConnector::from(config);
    let addr: Arc<str> = Arc::from(addr);
    Ok(tower::service_fn(move |_uri: Uri| {
        let (connector, server_name, addr) = (connector.clone(), server_name.clone(), addr.clone());
        async move {
            let connect = async {
                let tcp = TcpStream::connect(&*addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            };
            tokio::time::timeout(connect_timeout, connect)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TLS connection to {addr} within {connect_timeout:?}"),
                    )
                })?
        }
    }))
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over TLS with `config`, verifying the
/// server as `server_name` (normally [`crate::tls::MANAGER_SERVER_NAME`]).
///
/// Nothing is dialled until the first call; every (re)connect does TCP + TLS within
/// `connect_timeout`. HTTP/2 keepalive pings detect dead peers within a few seconds.
pub fn tls_channel(
    addr: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<Channel> {
    let endpoint = tls_endpoint(addr)?;
    let connector = tls_connector(addr, config, server_name, connect_timeout)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Like [`tls_channel`] but connects now: fails when `addr` cannot be reached (or the TLS handshake
/// fails) within `connect_timeout`.
pub async fn tls_channel_connected(
    addr: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
    connect_timeout: Duration,
) -> Result<Channel> {
    let endpoint = tls_endpoint(addr)?;
    let connector = tls_connector(addr, config, server_name, connect_timeout)?;
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| Error::Connect {
            addr: addr.to_string(),
            reason: error_chain(&e),
            hint: if find_tls_error(&e).is_some() {
                "check the address and that the rswarm manager running there belongs to this cluster"
            } else {
                "check the address and that the rswarm manager is running there"
            },
        })
}

/// A gRPC channel to the local daemon's unix socket at `path` (connects now).
pub async fn unix_channel(path: &Path) -> Result<Channel> {
    let socket: Arc<Path> = Arc::from(path);
    let connector = tower::service_fn(move |_uri: Uri| {
        let socket = socket.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*socket).await?)) }
    });
    Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let hint = match find_io_error(&e).map(io::Error::kind) {
                Some(io::ErrorKind::NotFound) => {
                    "the socket does not exist: is the rswarm daemon running?"
                }
                Some(io::ErrorKind::ConnectionRefused) => {
                    "nothing is listening on it: is the rswarm daemon running?"
                }
                Some(io::ErrorKind::PermissionDenied) => {
                    "permission denied: the socket is root-only, run the command as root"
                }
                _ => "check that the rswarm daemon is running and that you may use the socket",
            };
            Error::UnixConnect {
                path: path.to_path_buf(),
                reason: error_chain(&e),
                hint,
            }
        })
}

/// Listens on the unix socket `path` for the local control API, for
/// `tonic::transport::Server::serve_with_incoming(_shutdown)`; handlers see
/// [`is_local_socket`] = true.
///
/// Creates the parent directory (mode 0755) if missing, removes a stale socket file (but refuses to
/// take over a socket another process still listens on, or to delete a non-socket file), binds, and
/// restricts the socket to its owner (mode 0600: root-only for the daemon). Must be called inside a
/// tokio runtime.
pub fn unix_incoming(path: &Path) -> Result<UnixListenerStream> {
    let fail = |reason: String| Error::UnixListen {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| {
                    fail(format!(
                        "cannot create the directory {}: {e}; check permissions",
                        parent.display()
                    ))
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(
                    "another process is listening on it; stop the other rswarm daemon first".into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("cannot remove the stale socket file: {e}")))?;
            tracing::debug!(path = %path.display(), "removed a stale socket file");
        }
        Ok(_) => {
            return Err(fail(
                "the path exists and is not a socket; remove it or choose another socket path"
                    .into(),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("cannot inspect the path: {e}"))),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| fail(format!("bind failed: {e}; check permissions")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("cannot restrict the socket to mode 0600: {e}")))?;
    Ok(UnixListenerStream::new(listener))
}

/// `e` and its sources, joined with ": ", skipping repeated messages.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error hides its payload from `source()`.
        if let Some(tls) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cur = err.source();
    }
    None
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}
