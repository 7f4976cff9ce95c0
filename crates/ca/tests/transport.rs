//! End-to-end tests of the TLS and unix-socket transports with a tiny CertificateAuthority server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rswarm_api::ca::v1::certificate_authority_client::CertificateAuthorityClient;
use rswarm_api::ca::v1::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use rswarm_api::ca::v1::{
    GetRootCaRequest, GetRootCaResponse, JoinNodeRequest, JoinNodeResponse,
    RenewNodeCertificateRequest, RenewNodeCertificateResponse,
};
use rswarm_ca::ca::{parse_cert_der, NodeSubject, Role, RootCa};
use rswarm_ca::tls::{
    bootstrap_client_config, client_config, server_config, NodeIdentity, MANAGER_SERVER_NAME,
};
use rswarm_ca::transport::{
    is_local_socket, peer_of, tls_channel, tls_channel_connected, tls_incoming, unix_channel,
    unix_incoming,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

const TIMEOUT: Duration = Duration::from_secs(5);

/// GetRootCa answers with the caller's node id and role ("anonymous" without a certificate),
/// "local" over a unix socket.
struct Echo;

#[tonic::async_trait]
impl CertificateAuthority for Echo {
    async fn get_root_ca(
        &self,
        request: Request<GetRootCaRequest>,
    ) -> Result<Response<GetRootCaResponse>, Status> {
        let text = if is_local_socket(&request) {
            "local".to_string()
        } else {
            match peer_of(&request).and_then(|info| info.peer.as_ref()) {
                Some(peer) => format!("{}/{}/{}", peer.node_id, peer.role, peer.cluster_id),
                None => "anonymous".to_string(),
            }
        };
        Ok(Response::new(GetRootCaResponse { ca_cert_pem: text }))
    }

    async fn join_node(
        &self,
        _request: Request<JoinNodeRequest>,
    ) -> Result<Response<JoinNodeResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn renew_node_certificate(
        &self,
        _request: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

struct Cluster {
    ca: RootCa,
    server_identity: NodeIdentity,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn identity(ca: &RootCa, node_id: &str, role: Role, validity: Duration) -> NodeIdentity {
    let subject = NodeSubject {
        node_id: node_id.into(),
        role,
        cluster_id: "cluster1".into(),
    };
    let (cert, key) = ca.issue(&subject, validity).unwrap();
    NodeIdentity::from_pem(&cert, &key, ca.cert_pem()).unwrap()
}

async fn start() -> Cluster {
    let ca = RootCa::generate().unwrap();
    let server_identity = identity(&ca, "manager1", Role::Manager, Duration::from_secs(3600));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tls_incoming(listener, server_config(&server_identity).unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CertificateAuthorityServer::new(Echo))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Cluster {
        ca,
        server_identity,
        addr,
        _stop: stop,
    }
}

async fn call(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<String, Box<dyn std::error::Error>> {
    let channel = tls_channel(&addr.to_string(), config, MANAGER_SERVER_NAME, TIMEOUT)?;
    let mut client = CertificateAuthorityClient::new(channel);
    let resp = tokio::time::timeout(TIMEOUT, client.get_root_ca(GetRootCaRequest {})).await??;
    Ok(resp.into_inner().ca_cert_pem)
}

#[tokio::test]
async fn client_with_worker_cert_is_identified() {
    let c = start().await;
    let worker = identity(&c.ca, "worker7", Role::Worker, Duration::from_secs(3600));
    let config = client_config(Some(&worker), c.ca.cert_pem()).unwrap();
    assert_eq!(
        call(c.addr, config).await.unwrap(),
        "worker7/worker/cluster1"
    );
}

#[tokio::test]
async fn client_without_cert_is_anonymous() {
    let c = start().await;
    let config = client_config(None, c.ca.cert_pem()).unwrap();
    assert_eq!(call(c.addr, config).await.unwrap(), "anonymous");
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let c = start().await;
    let other = RootCa::generate().unwrap();
    let stranger = identity(&other, "worker7", Role::Worker, Duration::from_secs(3600));
    // Trusts the right CA, but presents a certificate the server cannot verify.
    let config = client_config(Some(&stranger), c.ca.cert_pem()).unwrap();
    assert!(call(c.addr, config).await.is_err());
    // The server keeps serving others.
    let config = client_config(None, c.ca.cert_pem()).unwrap();
    assert_eq!(call(c.addr, config).await.unwrap(), "anonymous");
}

#[tokio::test]
async fn bootstrap_config_reaches_an_unknown_ca() {
    let c = start().await;
    assert_eq!(
        call(c.addr, bootstrap_client_config()).await.unwrap(),
        "anonymous"
    );
}

#[tokio::test]
async fn client_trusting_another_ca_fails() {
    let c = start().await;
    let other = RootCa::generate().unwrap();
    let config = client_config(None, other.cert_pem()).unwrap();
    assert!(call(c.addr, config.clone()).await.is_err());
    let err = tls_channel_connected(&c.addr.to_string(), config, MANAGER_SERVER_NAME, TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&c.addr.to_string()), "{msg}");
    assert!(msg.contains("belongs to this cluster"), "{msg}");
}

#[tokio::test]
async fn wrong_server_name_fails() {
    let c = start().await;
    let config = client_config(None, c.ca.cert_pem()).unwrap();
    // The manager certificate is valid for "manager1" and "rswarm-manager", not "other".
    let channel = tls_channel(&c.addr.to_string(), config.clone(), "other", TIMEOUT).unwrap();
    let mut client = CertificateAuthorityClient::new(channel);
    assert!(client.get_root_ca(GetRootCaRequest {}).await.is_err());
    let channel = tls_channel(&c.addr.to_string(), config, "manager1", TIMEOUT).unwrap();
    let mut client = CertificateAuthorityClient::new(channel);
    assert!(client.get_root_ca(GetRootCaRequest {}).await.is_ok());
}

/// The server's certificate as seen by a fresh TLS client.
async fn server_cert_not_after(c: &Cluster) -> std::time::SystemTime {
    let config = client_config(None, c.ca.cert_pem()).unwrap();
    let tcp = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(MANAGER_SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    assert_eq!(certs.len(), 2, "leaf + root CA");
    assert_eq!(certs[1].as_ref(), c.ca.cert_der());
    parse_cert_der(&certs[0]).unwrap().not_after
}

#[tokio::test]
async fn server_certificate_is_hot_swapped() {
    let c = start().await;
    let before = server_cert_not_after(&c).await;
    assert_eq!(before, c.server_identity.info().not_after);

    let subject = NodeSubject {
        node_id: "manager1".into(),
        role: Role::Manager,
        cluster_id: "cluster1".into(),
    };
    let (cert, key) = c.ca.issue(&subject, Duration::from_secs(7200)).unwrap();
    c.server_identity.replace(&cert, &key).unwrap();

    let after = server_cert_not_after(&c).await;
    assert_eq!(after, c.server_identity.info().not_after);
    assert!(
        after >= before + Duration::from_secs(3000),
        "{before:?} -> {after:?}"
    );
}

#[tokio::test]
async fn client_certificate_is_hot_swapped() {
    let c = start().await;
    let node = identity(&c.ca, "node9", Role::Worker, Duration::from_secs(3600));
    let config = client_config(Some(&node), c.ca.cert_pem()).unwrap();
    assert_eq!(
        call(c.addr, config.clone()).await.unwrap(),
        "node9/worker/cluster1"
    );
    // Promoted: same config, new certificate on the next connection.
    let subject = NodeSubject {
        node_id: "node9".into(),
        role: Role::Manager,
        cluster_id: "cluster1".into(),
    };
    let (cert, key) = c.ca.issue(&subject, Duration::from_secs(3600)).unwrap();
    node.replace(&cert, &key).unwrap();
    assert_eq!(
        call(c.addr, config).await.unwrap(),
        "node9/manager/cluster1"
    );
}

#[tokio::test]
async fn slow_handshake_does_not_block_others() {
    let c = start().await;
    // A client that connects and never speaks.
    let _silent = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    // A garbage client.
    let mut garbage = tokio::net::TcpStream::connect(c.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let config = client_config(None, c.ca.cert_pem()).unwrap();
    assert_eq!(call(c.addr, config).await.unwrap(), "anonymous");
}

#[tokio::test]
async fn unreachable_address_is_reported() {
    // Bind then drop to get a closed port.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let config = bootstrap_client_config();
    let err = tls_channel_connected(
        &addr.to_string(),
        config.clone(),
        MANAGER_SERVER_NAME,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("manager is running"), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    // Lazy channels build without dialling.
    assert!(tls_channel(
        &addr.to_string(),
        config.clone(),
        MANAGER_SERVER_NAME,
        TIMEOUT
    )
    .is_ok());
    assert!(tls_channel(
        "bad address with spaces",
        config,
        MANAGER_SERVER_NAME,
        TIMEOUT
    )
    .is_err());
}

#[tokio::test]
async fn unix_socket_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/rswarm/rswarm.sock");
    let incoming = unix_incoming(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let parent_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(parent_mode & 0o700, 0o700);

    // A second daemon must not steal a live socket.
    assert!(unix_incoming(&path).is_err());

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CertificateAuthorityServer::new(Echo))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let channel = unix_channel(&path).await.unwrap();
    let mut client = CertificateAuthorityClient::new(channel);
    let resp = client.get_root_ca(GetRootCaRequest {}).await.unwrap();
    assert_eq!(resp.into_inner().ca_cert_pem, "local");
    drop(client);
    let _ = stop.send(());
    server.await.unwrap();

    // The socket file is left behind; a restart replaces the stale file.
    let incoming = unix_incoming(&path).unwrap();
    drop(incoming);

    // Errors name the socket and say what to check.
    let missing = dir.path().join("nope.sock");
    let err = unix_channel(&missing).await.unwrap_err().to_string();
    assert!(
        err.contains("nope.sock") && err.contains("daemon running"),
        "{err}"
    );

    // A regular file is never deleted.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(unix_incoming(&file).is_err());
    assert!(file.exists());
}

#[tokio::test]
async fn dropping_the_incoming_stream_closes_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = RootCa::generate().unwrap();
    let id = identity(&ca, "m1", Role::Manager, Duration::from_secs(60));
    let incoming = tls_incoming(listener, server_config(&id).unwrap());
    drop(incoming);
    // The accept loop notices within a moment and drops the listener.
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed,
        "listener still accepting after the stream was dropped"
    );
}
