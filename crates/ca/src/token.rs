//! Join tokens: `RSWTKN-1-<ca digest>-<secret>`.
//!
//! The format is Swarm's `SWMTKN-1-…` with another prefix:
//!
//! * `<ca digest>`: SHA-256 of the root CA certificate (DER), as a base36 number (`0-9a-z`), left-padded
//!   with `0` to 50 characters. A joiner downloads the CA certificate over an unauthenticated TLS
//!   connection and pins it with this digest.
//! * `<secret>`: 16 random bytes as a base36 number, left-padded to 25 characters. The manager checks it
//!   to admit the node (and pick its role: workers and managers have different tokens).

use std::fmt;
use std::str::FromStr;

use num_bigint::BigUint;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::TokenError;

/// The token prefix.
pub const TOKEN_PREFIX: &str = "RSWTKN";
/// The only token version.
pub const TOKEN_VERSION: &str = "1";
/// Length of the base36 CA digest field.
pub const DIGEST_FIELD_LEN: usize = 50;
/// Length of the base36 secret field.
pub const SECRET_FIELD_LEN: usize = 25;

/// A parsed join token: the digest of the cluster's root CA certificate and the admission secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: [u8; 32],
    secret: [u8; 16],
}

impl fmt::Debug for JoinToken {
    /// Shows the CA digest, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &digest_hex(&self.ca_digest))
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl JoinToken {
    /// A new token for the CA certificate `ca_cert_der`, with a fresh random secret.
    pub fn generate(ca_cert_der: &[u8]) -> Self {
        let mut secret = [0u8; 16];
        rand::rng().fill(&mut secret);
        Self {
            ca_digest: ca_digest(ca_cert_der),
            secret,
        }
    }

    /// Builds a token from its parts.
    pub fn from_parts(ca_digest: [u8; 32], secret: [u8; 16]) -> Self {
        Self { ca_digest, secret }
    }

    /// The token text, `RSWTKN-1-<50 chars>-<25 chars>`.
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            encode_base36(&self.ca_digest, DIGEST_FIELD_LEN),
            encode_base36(&self.secret, SECRET_FIELD_LEN)
        )
    }

    /// Parses token text. Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        let fields: Vec<&str> = s.split('-').collect();
        if fields.len() != 4 {
            // Check the prefix first: a foreign token deserves the more useful error.
            if let Some(first) = fields.first() {
                if !first.is_empty() && *first != TOKEN_PREFIX && fields.len() > 1 {
                    return Err(wrong_prefix(first));
                }
            }
            return Err(TokenError::Malformed {
                fields: fields.len(),
            });
        }
        if fields[0] != TOKEN_PREFIX {
            return Err(wrong_prefix(fields[0]));
        }
        if fields[1] != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion {
                found: fields[1].to_string(),
            });
        }
        let ca_digest = decode_base36::<32>(fields[2], DIGEST_FIELD_LEN, "ca digest")?;
        let secret = decode_base36::<16>(fields[3], SECRET_FIELD_LEN, "secret")?;
        Ok(Self { ca_digest, secret })
    }

    /// SHA-256 of the root CA certificate this token pins.
    pub fn ca_digest(&self) -> &[u8; 32] {
        &self.ca_digest
    }

    /// The admission secret. Treat as a password.
    pub fn secret(&self) -> &[u8; 16] {
        &self.secret
    }

    /// True when `ca_cert_der` is the CA certificate this token pins.
    pub fn matches_ca(&self, ca_cert_der: &[u8]) -> bool {
        constant_time_eq(&self.ca_digest, &ca_digest(ca_cert_der))
    }

    /// True when both tokens carry the same secret (constant-time comparison).
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        constant_time_eq(&self.secret, &other.secret)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// SHA-256 of a certificate's DER bytes.
pub fn ca_digest(ca_cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(ca_cert_der).into()
}

/// A digest as `sha256:<lowercase hex>`.
pub fn digest_hex(d: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in d {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn wrong_prefix(found: &str) -> TokenError {
    let hint = if found == "SWMTKN" {
        "this is a Docker Swarm token, not an rswarm one; "
    } else {
        ""
    };
    TokenError::WrongPrefix {
        found: found.chars().take(16).collect(),
        hint,
    }
}

fn encode_base36(bytes: &[u8], width: usize) -> String {
    let digits = BigUint::from_bytes_be(bytes).to_str_radix(36);
    format!("{digits:0>width$}")
}

fn decode_base36<const N: usize>(
    field: &str,
    width: usize,
    name: &'static str,
) -> Result<[u8; N], TokenError> {
    if let Some(c) = field
        .chars()
        .find(|c| !(c.is_ascii_digit() || c.is_ascii_lowercase()))
    {
        return Err(TokenError::InvalidCharacter {
            field: name,
            found: c,
        });
    }
    if field.len() != width {
        return Err(TokenError::WrongLength {
            field: name,
            expected: width,
            found: field.len(),
        });
    }
    let value = BigUint::parse_bytes(field.as_bytes(), 36).ok_or(TokenError::InvalidCharacter {
        field: name,
        found: '?',
    })?;
    let bytes = value.to_bytes_be();
    if bytes.len() > N {
        return Err(TokenError::Overflow {
            field: name,
            bytes: N,
        });
    }
    let mut out = [0u8; N];
    out[N - bytes.len()..].copy_from_slice(&bytes);
    Ok(out)
}

fn constant_time_eq<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::generate(b"some ca certificate der")
    }

    #[test]
    fn round_trip() {
        for _ in 0..50 {
            let t = token();
            let text = t.encode();
            assert_eq!(JoinToken::parse(&text).unwrap(), t);
            assert_eq!(text, t.to_string());
            assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        }
        // Whitespace around a pasted token is tolerated.
        let t = token();
        assert_eq!(JoinToken::parse(&format!("  {t}\n")).unwrap(), t);
    }

    #[test]
    fn field_lengths_are_fixed() {
        // Smallest and largest values keep the widths.
        for (d, s) in [([0u8; 32], [0u8; 16]), ([0xff; 32], [0xff; 16])] {
            let text = JoinToken::from_parts(d, s).encode();
            let fields: Vec<&str> = text.split('-').collect();
            assert_eq!(fields.len(), 4);
            assert_eq!(fields[0], "RSWTKN");
            assert_eq!(fields[1], "1");
            assert_eq!(fields[2].len(), 50);
            assert_eq!(fields[3].len(), 25);
            assert_eq!(
                JoinToken::parse(&text).unwrap(),
                JoinToken::from_parts(d, s)
            );
        }
        let text = token().encode();
        assert_eq!(text.len(), "RSWTKN-1-".len() + 50 + 1 + 25);
    }

    #[test]
    fn garbled_tokens_are_rejected() {
        let good = token().encode();
        let fields: Vec<&str> = good.split('-').collect();
        let (d, s) = (fields[2], fields[3]);

        assert!(matches!(
            JoinToken::parse(""),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            JoinToken::parse("garbage"),
            Err(TokenError::Malformed { fields: 1 })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{d}")),
            Err(TokenError::Malformed { fields: 3 })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("{good}-extra")),
            Err(TokenError::Malformed { fields: 5 })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("SWMTKN-1-{d}-{s}")),
            Err(TokenError::WrongPrefix { hint, .. }) if !hint.is_empty()
        ));
        assert!(matches!(
            JoinToken::parse(&format!("rswtkn-1-{d}-{s}")),
            Err(TokenError::WrongPrefix { .. })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-2-{d}-{s}")),
            Err(TokenError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{}-{s}", &d[1..])),
            Err(TokenError::WrongLength {
                field: "ca digest",
                expected: 50,
                found: 49
            })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{d}-{s}0")),
            Err(TokenError::WrongLength {
                field: "secret",
                expected: 25,
                found: 26
            })
        ));
        let upper = format!("RSWTKN-1-{}-{s}", d.to_uppercase());
        if upper != good {
            assert!(matches!(
                JoinToken::parse(&upper),
                Err(TokenError::InvalidCharacter { .. })
            ));
        }
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{}!-{s}", &d[1..])),
            Err(TokenError::InvalidCharacter { found: '!', .. })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{d}-{}é", &s[2..])),
            Err(TokenError::InvalidCharacter { found: 'é', .. })
        ));
        // 36^50 > 2^256 and 36^25 > 2^128: all-'z' fields overflow.
        let zd = "z".repeat(50);
        let zs = "z".repeat(25);
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{zd}-{s}")),
            Err(TokenError::Overflow { bytes: 32, .. })
        ));
        assert!(matches!(
            JoinToken::parse(&format!("RSWTKN-1-{d}-{zs}")),
            Err(TokenError::Overflow { bytes: 16, .. })
        ));
        // Error messages say what to do.
        let msg = JoinToken::parse("x-y").unwrap_err().to_string();
        assert!(msg.contains("RSWTKN"), "{msg}");
    }

    #[test]
    fn digest_mismatch_is_detected() {
        let ca = b"cluster ca der";
        let t = JoinToken::generate(ca);
        assert!(t.matches_ca(ca));
        assert!(!t.matches_ca(b"another ca der"));
        assert_eq!(t.ca_digest(), &ca_digest(ca));
        let parsed = JoinToken::parse(&t.encode()).unwrap();
        assert!(parsed.matches_ca(ca));
    }

    #[test]
    fn secrets_compare() {
        let a = token();
        let b = token();
        assert!(a.secret_matches(&a.clone()));
        assert!(!a.secret_matches(&b));
        // Same secret, different CA: still a secret match (the CA is checked separately).
        let c = JoinToken::from_parts([7; 32], *a.secret());
        assert!(a.secret_matches(&c));
    }

    #[test]
    fn digest_hex_format() {
        let d = ca_digest(b"");
        assert_eq!(
            digest_hex(&d),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn debug_hides_secret() {
        let t = token();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&t.encode()[60..]));
        assert!(dbg.contains("redacted"));
    }
}
