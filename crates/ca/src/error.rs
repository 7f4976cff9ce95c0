//! Error types of the PKI and transport layer.

use std::path::PathBuf;

/// Result alias using this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a join token could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the four dash-separated fields.
    #[error(
        "malformed join token: expected RSWTKN-1-<50 chars>-<25 chars> (4 fields separated by '-'), \
         found {fields} field(s); copy the whole token printed by `rswarm join-token`"
    )]
    Malformed {
        /// Number of fields found.
        fields: usize,
    },
    /// The first field is not `RSWTKN`.
    #[error(
        "join token has prefix {found:?}, expected \"RSWTKN\"; {hint}use a token printed by `rswarm join-token`"
    )]
    WrongPrefix {
        /// The prefix found.
        found: String,
        /// Extra advice for a recognised foreign token.
        hint: &'static str,
    },
    /// The version field is not `1`.
    #[error(
        "join token version {found:?} is not supported (only version \"1\"); get a token from a manager of this rswarm release"
    )]
    UnsupportedVersion {
        /// The version found.
        found: String,
    },
    /// A field has the wrong length.
    #[error(
        "join token {field} field is {found} characters long, expected {expected}; the token was truncated or mistyped, copy it again"
    )]
    WrongLength {
        /// Which field ("ca digest" or "secret").
        field: &'static str,
        /// Expected length.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A field contains a character outside `0-9a-z`.
    #[error(
        "join token {field} field contains {found:?}, but only the characters 0-9 and a-z are allowed; copy the token again"
    )]
    InvalidCharacter {
        /// Which field.
        field: &'static str,
        /// The offending character.
        found: char,
    },
    /// A field decodes to a number larger than its byte width.
    #[error(
        "join token {field} field encodes a value larger than {bytes} bytes; the token is corrupted, copy it again"
    )]
    Overflow {
        /// Which field.
        field: &'static str,
        /// Width in bytes.
        bytes: usize,
    },
}

/// Errors of the CA, TLS and transport code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A join token could not be parsed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// PEM text did not contain what was expected.
    #[error("invalid {what} PEM: {reason}")]
    Pem {
        /// What was being read ("certificate", "private key", ...).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A certificate could not be parsed or lacks the fields rswarm needs.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A certificate signing request could not be parsed or uses an unsupported key.
    #[error("invalid certificate signing request: {0}; generate a new key and CSR and try again")]
    InvalidCsr(String),
    /// The CSR's self-signature does not verify.
    #[error(
        "the certificate signing request's signature does not verify (corrupted or tampered with); generate a new key and CSR"
    )]
    CsrSignature,
    /// The root CA certificate is not usable as a CA.
    #[error("not a usable CA certificate: {0}; restore the cluster's root CA certificate and key")]
    NotACa(String),
    /// A private key does not belong to the certificate it was paired with.
    #[error(
        "the private key does not match the certificate ({0}); make sure the key and certificate files belong together"
    )]
    KeyMismatch(String),
    /// A certificate does not chain to the cluster CA (or is expired / not yet valid).
    #[error(
        "certificate is not valid for this cluster: {0}; the node must rejoin with a fresh join token"
    )]
    NotTrusted(String),
    /// A node subject (node id / cluster id) cannot be put into a certificate.
    #[error("invalid node subject: {0}")]
    InvalidSubject(String),
    /// The requested validity cannot be represented.
    #[error("invalid certificate validity: {0}")]
    InvalidValidity(String),
    /// Certificate or key generation failed inside rcgen.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls rejected a configuration or key.
    #[error("tls configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A network address could not be turned into an endpoint.
    #[error("invalid address {addr:?}: {reason}; use host:port, for example 10.0.0.1:4242")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// A manager could not be reached.
    #[error("cannot connect to {addr}: {reason}; {hint}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The underlying failure.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// The local daemon socket could not be reached.
    #[error("cannot connect to the rswarm daemon socket {}: {reason}; {hint}", path.display())]
    UnixConnect {
        /// Socket path.
        path: PathBuf,
        /// The underlying failure.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// The local daemon socket could not be created.
    #[error("cannot listen on unix socket {}: {reason}", path.display())]
    UnixListen {
        /// Socket path.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
}
