//! rustls configurations for rswarm nodes, built around a hot-swappable [`NodeIdentity`].
//!
//! Every configuration uses the `ring` provider explicitly (no process-wide default needed) and
//! negotiates ALPN `h2` (gRPC). Servers resolve their certificate through the identity on every
//! handshake, and clients present the identity's current certificate, so a renewed certificate takes
//! effect for the next connection without a restart.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::ca::{first_cert_der, parse_cert_der, pem_encode, CertInfo, Role};
use crate::error::{Error, Result};

/// The DNS name every manager certificate carries and clients verify managers against.
pub const MANAGER_SERVER_NAME: &str = "rswarm-manager";

/// The ALPN protocol negotiated by all rswarm TLS connections.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider used by every configuration of this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The authenticated identity of the peer of a TLS connection, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// CN.
    pub node_id: String,
    /// OU.
    pub role: Role,
    /// O.
    pub cluster_id: String,
    /// When the peer's certificate expires.
    pub not_after: SystemTime,
}

impl From<CertInfo> for PeerIdentity {
    fn from(info: CertInfo) -> Self {
        PeerIdentity {
            node_id: info.node_id,
            role: info.role,
            cluster_id: info.cluster_id,
            not_after: info.not_after,
        }
    }
}

struct Current {
    certified: Arc<CertifiedKey>,
    cert_pem: String,
    info: CertInfo,
}

struct IdentityInner {
    current: RwLock<Arc<Current>>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

/// This node's TLS identity: its current certificate and key, plus the cluster CA.
///
/// Cheap to clone (shared). [`NodeIdentity::replace`] swaps in a renewed certificate; every
/// configuration built from the identity picks it up on its next handshake.
#[derive(Clone)]
pub struct NodeIdentity {
    inner: Arc<IdentityInner>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("info", &self.info())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads an identity. The certificate must match the key, chain to the CA in `ca_pem` and be
    /// currently valid.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self> {
        let provider = provider();
        let ca_der = first_cert_der(ca_pem)?;
        let verifier = client_verifier(&ca_der, provider.clone(), false)?;
        let current = load_current(&provider, &ca_der, verifier.as_ref(), cert_pem, key_pem)?;
        Ok(NodeIdentity {
            inner: Arc::new(IdentityInner {
                current: RwLock::new(Arc::new(current)),
                ca_pem: pem_encode("CERTIFICATE", &ca_der),
                ca_der,
                verifier,
                provider,
            }),
        })
    }

    /// Replaces the certificate and key (after renewal or a role change). The new pair is validated
    /// like in [`NodeIdentity::from_pem`]; on error the current identity stays in place.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let current = self.inner.load(cert_pem, key_pem)?;
        tracing::info!(
            node_id = %current.info.node_id,
            role = %current.info.role,
            not_after = ?current.info.not_after,
            "node certificate replaced"
        );
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(current);
        Ok(())
    }

    /// What the current certificate says.
    pub fn info(&self) -> CertInfo {
        self.current().info.clone()
    }

    /// The current certificate (leaf only), PEM.
    pub fn cert_pem(&self) -> String {
        self.current().cert_pem.clone()
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.inner.ca_pem
    }

    /// The cluster CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.inner.ca_der
    }

    /// The chain (leaf + root CA) and key presented to peers right now.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current().certified.clone()
    }

    fn current(&self) -> Arc<Current> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl IdentityInner {
    fn load(&self, cert_pem: &str, key_pem: &str) -> Result<Current> {
        load_current(
            &self.provider,
            &self.ca_der,
            self.verifier.as_ref(),
            cert_pem,
            key_pem,
        )
    }
}

/// Parses and validates a certificate + key: the key matches, the certificate chains to `ca_der`, is
/// currently valid and names an rswarm node.
fn load_current(
    provider: &CryptoProvider,
    ca_der: &CertificateDer<'static>,
    verifier: &dyn ClientCertVerifier,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Current> {
    let leaf = first_cert_der(cert_pem)?;
    let info = parse_cert_der(&leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
        what: "private key",
        reason: format!("no private key block found ({e})"),
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(vec![leaf.clone(), ca_der.clone()], signing_key);
    certified
        .keys_match()
        .map_err(|e| Error::KeyMismatch(e.to_string()))?;
    verifier
        .verify_client_cert(&leaf, &[], UnixTime::now())
        .map_err(|e| Error::NotTrusted(e.to_string()))?;
    Ok(Current {
        certified: Arc::new(certified),
        cert_pem: pem_encode("CERTIFICATE", &leaf),
        info,
    })
}

/// Resolves the server or client certificate from the identity at handshake time.
#[derive(Debug)]
struct IdentityResolver(NodeIdentity);

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der.clone())
        .map_err(|e| Error::NotACa(format!("cannot use it as a trust anchor: {e}")))?;
    Ok(roots)
}

fn client_verifier(
    ca_der: &CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    allow_unauthenticated: bool,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_der)?), provider);
    let builder = if allow_unauthenticated {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))
}

/// Server configuration for a node's gRPC listener.
///
/// * The server certificate is resolved through `identity` on every handshake.
/// * Client certificates are optional (anonymous clients may call the public CA RPCs), but one that is
///   presented must chain to the cluster CA, or the handshake fails.
/// * ALPN `h2`.
/// * No TLS session resumption (tickets or session cache): every connection authenticates with the
///   certificates current at that moment.
pub fn server_config(identity: &NodeIdentity) -> Result<Arc<ServerConfig>> {
    let provider = identity.inner.provider.clone();
    let verifier = client_verifier(&identity.inner.ca_der, provider.clone(), true)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(IdentityResolver(identity.clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: a resumed session would carry the peer identity of the first handshake,
    // so a renewed, promoted or demoted certificate would go unnoticed. gRPC connections are
    // long-lived, full handshakes cost little.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client configuration trusting only the cluster CA in `ca_pem`.
///
/// With an identity, the client presents the identity's current certificate (hot-swappable);
/// without, it connects anonymously. Verify servers under [`MANAGER_SERVER_NAME`]. ALPN `h2`, no
/// session resumption.
pub fn client_config(identity: Option<&NodeIdentity>, ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let ca_der = first_cert_der(ca_pem)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca_der)?);
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_cert_resolver(Arc::new(IdentityResolver(identity.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection does a full handshake, presenting the identity's current certificate (see
    // `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// **DANGER: a client configuration that accepts ANY server certificate.**
///
/// It exists for one purpose only: downloading the root CA certificate (`GetRootCa`) while joining,
/// *before* the CA is known. The caller MUST then check the downloaded certificate against the join
/// token's digest ([`crate::JoinToken::matches_ca`]) and use [`client_config`] with that CA for every
/// further call. Never send secrets (the join token, keys) over a connection made with this config:
/// an attacker in the middle can read them.
///
/// The handshake signatures are still verified (the server proves it holds the key of the
/// certificate it sent), but nothing vouches for that certificate. No client certificate is sent.
pub fn bootstrap_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Accepts any server certificate, but checks the handshake signatures against it.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{NodeSubject, RootCa};
    use std::time::Duration;

    fn subject(node_id: &str, role: Role) -> NodeSubject {
        NodeSubject {
            node_id: node_id.into(),
            role,
            cluster_id: "c1".into(),
        }
    }

    #[test]
    fn identity_loads_and_replaces() {
        let ca = RootCa::generate().unwrap();
        let (cert, key) = ca
            .issue(&subject("node1", Role::Worker), Duration::from_secs(3600))
            .unwrap();
        let id = NodeIdentity::from_pem(&cert, &key, ca.cert_pem()).unwrap();
        assert_eq!(id.info().node_id, "node1");
        assert_eq!(id.info().role, Role::Worker);
        assert_eq!(id.cert_pem(), cert);
        assert_eq!(id.ca_pem(), ca.cert_pem());
        let chain = &id.certified_key().cert;
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].as_ref(), ca.cert_der());

        // Promotion: a manager cert for the same node.
        let (cert2, key2) = ca
            .issue(&subject("node1", Role::Manager), Duration::from_secs(7200))
            .unwrap();
        let clone = id.clone();
        clone.replace(&cert2, &key2).unwrap();
        assert_eq!(id.info().role, Role::Manager);
        assert_eq!(id.cert_pem(), cert2);

        // A key that does not match: refused, old identity kept.
        let err = id.replace(&cert, &key2).unwrap_err();
        assert!(matches!(err, Error::KeyMismatch(_)), "{err}");
        assert_eq!(id.cert_pem(), cert2);

        // A certificate from another CA: refused, old identity kept.
        let other = RootCa::generate().unwrap();
        let (cert3, key3) = other
            .issue(&subject("node1", Role::Manager), Duration::from_secs(3600))
            .unwrap();
        let err = id.replace(&cert3, &key3).unwrap_err();
        assert!(matches!(err, Error::NotTrusted(_)), "{err}");
        assert_eq!(id.cert_pem(), cert2);
        assert!(NodeIdentity::from_pem(&cert3, &key3, ca.cert_pem()).is_err());

        // Garbage.
        assert!(id.replace("junk", &key2).is_err());
        assert!(id.replace(&cert2, "junk").is_err());
        assert_eq!(id.cert_pem(), cert2);
    }

    #[test]
    fn configs_build() {
        let ca = RootCa::generate().unwrap();
        let (cert, key) = ca
            .issue(&subject("m1", Role::Manager), Duration::from_secs(3600))
            .unwrap();
        let id = NodeIdentity::from_pem(&cert, &key, ca.cert_pem()).unwrap();
        let s = server_config(&id).unwrap();
        assert_eq!(s.alpn_protocols, vec![b"h2".to_vec()]);
        let c = client_config(Some(&id), ca.cert_pem()).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        let c = client_config(None, ca.cert_pem()).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(client_config(None, "junk").is_err());
        assert_eq!(
            bootstrap_client_config().alpn_protocols,
            vec![b"h2".to_vec()]
        );
    }
}
