//! Where to pull from: registry mirrors, insecure registries, and platform selection. All pure.

use std::net::IpAddr;

use oci_client::manifest::ImageIndexEntry;

use crate::reference::DOCKER_HUB;
use crate::ImageError;

/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Registry settings of a node, as Docker's `registry-mirrors` and `insecure-registries`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistryConfig {
    /// Mirrors of Docker Hub, tried in order before it: URLs like `http://127.0.0.1:5001`
    /// (plain HTTP) or `https://mirror.example`.
    pub mirrors: Vec<String>,
    /// Registries reached without certificate verification, falling back to plain HTTP:
    /// `host:port`, `host` (any port) or a CIDR such as `10.0.0.0/8`. Registries on
    /// 127.0.0.0/8, `::1` and `localhost` are insecure by default.
    pub insecure: Vec<String>,
}

impl RegistryConfig {
    /// Checks every mirror URL and insecure entry; the error names the bad entry.
    pub fn validate(&self) -> Result<(), ImageError> {
        for mirror in &self.mirrors {
            parse_mirror(mirror)?;
        }
        for entry in &self.insecure {
            if entry.contains('/') {
                entry.parse::<ipnet::IpNet>().map_err(|e| {
                    ImageError::InvalidConfig(format!(
                        "insecure registry {entry:?} is not a valid CIDR ({e}); use host, host:port or a CIDR like 10.0.0.0/8"
                    ))
                })?;
            } else if entry.is_empty() || entry.contains("://") {
                return Err(ImageError::InvalidConfig(format!(
                    "insecure registry {entry:?} must be host, host:port or a CIDR, without a scheme"
                )));
            }
        }
        Ok(())
    }
}

/// How an endpoint is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTPS with certificate verification.
    Https,
    /// HTTPS without certificate verification (insecure registry).
    HttpsNoVerify,
    /// Plain HTTP.
    Http,
}

/// One place to try a pull from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// How to speak to it.
    pub scheme: Scheme,
    /// Whether this is a mirror standing in for the reference's own registry.
    pub mirror: bool,
}

/// The endpoints to try, in order, for a reference whose registry is `registry`:
/// for Docker Hub each mirror in order, then Docker Hub itself; for an insecure registry
/// HTTPS without verification then plain HTTP; otherwise HTTPS.
pub fn endpoints(registry: &str, config: &RegistryConfig) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if registry == DOCKER_HUB {
        for mirror in &config.mirrors {
            match parse_mirror(mirror) {
                Ok((host, true)) => out.push(Endpoint {
                    host,
                    scheme: Scheme::Http,
                    mirror: true,
                }),
                Ok((host, false)) => {
                    for scheme in schemes_for(&host, config) {
                        out.push(Endpoint {
                            host: host.clone(),
                            scheme,
                            mirror: true,
                        });
                    }
                }
                Err(e) => tracing::warn!(%e, "skipping registry mirror"),
            }
        }
        out.push(Endpoint {
            host: DOCKER_HUB_API.to_string(),
            scheme: Scheme::Https,
            mirror: false,
        });
        return out;
    }
    for scheme in schemes_for(registry, config) {
        out.push(Endpoint {
            host: registry.to_string(),
            scheme,
            mirror: false,
        });
    }
    out
}

fn schemes_for(host: &str, config: &RegistryConfig) -> Vec<Scheme> {
    if is_insecure(host, config) {
        vec![Scheme::HttpsNoVerify, Scheme::Http]
    } else {
        vec![Scheme::Https]
    }
}

/// `(host[:port], plain_http)` of a mirror URL.
fn parse_mirror(url: &str) -> Result<(String, bool), ImageError> {
    let bad = |why: &str| {
        ImageError::InvalidConfig(format!(
            "registry mirror {url:?} {why}; use a URL like https://mirror.example or http://10.0.0.1:5000"
        ))
    };
    let (rest, http) = if let Some(r) = url.strip_prefix("http://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, false)
    } else if url.contains("://") {
        return Err(bad("has an unsupported scheme"));
    } else {
        (url, false)
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    if !path.is_empty() {
        return Err(bad("has a path; mirrors are served at the root"));
    }
    if host.is_empty() || host.contains('@') || host.contains(char::is_whitespace) {
        return Err(bad("has no valid host"));
    }
    Ok((host.to_string(), http))
}

/// Splits `host[:port]` / `[v6]:port` into host and optional port.
fn split_host(host_port: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host_port.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':'));
        }
    }
    match host_port.rsplit_once(':') {
        // a bare IPv6 address has several colons and no port
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (host_port, None),
    }
}

/// Whether a registry (`host[:port]`) is insecure: loopback and `localhost` always are, and
/// so is whatever `config.insecure` names (exact `host:port`, a `host` on any port, or a
/// CIDR holding the host's IP literal; host names are not resolved).
pub fn is_insecure(registry: &str, config: &RegistryConfig) -> bool {
    let (host, _) = split_host(registry);
    let ip = host.parse::<IpAddr>().ok();
    if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return true;
    }
    config.insecure.iter().any(|entry| {
        if entry.contains('/') {
            match (entry.parse::<ipnet::IpNet>(), ip) {
                (Ok(net), Some(ip)) => net.contains(&ip),
                _ => false,
            }
        } else {
            entry == registry || entry == host
        }
    })
}

/// The platform images are selected for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), if it matters.
    pub variant: Option<String>,
}

impl Platform {
    /// This node's platform.
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest for `platform` from an index: same OS and architecture; an entry
/// with the exact variant wins over one without a variant; for arm64 `v8` counts as none.
pub fn select_platform(entries: &[ImageIndexEntry], platform: &Platform) -> Option<String> {
    let normalize = |arch: &str, v: Option<&str>| -> Option<String> {
        match (arch, v) {
            ("arm64", Some("v8")) | (_, None) | (_, Some("")) => None,
            (_, Some(v)) => Some(v.to_string()),
        }
    };
    let want = normalize(&platform.architecture, platform.variant.as_deref());
    let mut fallback = None;
    for entry in entries {
        let Some(p) = &entry.platform else { continue };
        if p.os.to_string() != platform.os || p.architecture.to_string() != platform.architecture {
            continue;
        }
        let have = normalize(&platform.architecture, p.variant.as_deref());
        if have == want {
            return Some(entry.digest.clone());
        }
        if have.is_none() && fallback.is_none() {
            fallback = Some(entry.digest.clone());
        }
    }
    fallback
}

/// `os/arch[/variant]` of every entry, for error messages.
pub fn describe_platforms(entries: &[ImageIndexEntry]) -> String {
    let list: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::Platform as OciPlatform;

    fn cfg(mirrors: &[&str], insecure: &[&str]) -> RegistryConfig {
        RegistryConfig {
            mirrors: mirrors.iter().map(|s| s.to_string()).collect(),
            insecure: insecure.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ep(host: &str, scheme: Scheme, mirror: bool) -> Endpoint {
        Endpoint {
            host: host.to_string(),
            scheme,
            mirror,
        }
    }

    #[test]
    fn plain_registry_is_https() {
        assert_eq!(
            endpoints("quay.io", &RegistryConfig::default()),
            vec![ep("quay.io", Scheme::Https, false)]
        );
        assert_eq!(
            endpoints("docker.io", &RegistryConfig::default()),
            vec![ep(DOCKER_HUB_API, Scheme::Https, false)]
        );
    }

    #[test]
    fn loopback_is_insecure_by_default() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
        ] {
            assert_eq!(
                endpoints(host, &RegistryConfig::default()),
                vec![
                    ep(host, Scheme::HttpsNoVerify, false),
                    ep(host, Scheme::Http, false)
                ],
                "{host}"
            );
        }
        assert!(!is_insecure("10.0.0.1:5000", &RegistryConfig::default()));
    }

    #[test]
    fn insecure_entries() {
        let c = cfg(&[], &["10.0.0.0/8", "reg.lan:5000", "other.lan"]);
        assert!(is_insecure("10.1.2.3:5000", &c));
        assert!(!is_insecure("11.1.2.3:5000", &c));
        assert!(is_insecure("reg.lan:5000", &c));
        assert!(!is_insecure("reg.lan:5001", &c));
        assert!(is_insecure("other.lan:443", &c));
        assert!(is_insecure("other.lan", &c));
        assert!(!is_insecure("quay.io", &c));
        assert!(c.validate().is_ok());
        assert!(cfg(&[], &["10.0.0.0/99"]).validate().is_err());
        assert!(cfg(&[], &["http://x"]).validate().is_err());
    }

    #[test]
    fn mirrors_only_for_docker_hub_in_order() {
        let c = cfg(
            &[
                "http://127.0.0.1:5001",
                "https://mirror.example",
                "https://10.0.0.5",
            ],
            &["10.0.0.0/8"],
        );
        assert_eq!(
            endpoints("docker.io", &c),
            vec![
                ep("127.0.0.1:5001", Scheme::Http, true),
                ep("mirror.example", Scheme::Https, true),
                ep("10.0.0.5", Scheme::HttpsNoVerify, true),
                ep("10.0.0.5", Scheme::Http, true),
                ep(DOCKER_HUB_API, Scheme::Https, false),
            ]
        );
        assert_eq!(
            endpoints("quay.io", &c),
            vec![ep("quay.io", Scheme::Https, false)]
        );
    }

    #[test]
    fn bad_mirrors() {
        assert!(cfg(&["ftp://x"], &[]).validate().is_err());
        assert!(cfg(&["https://x/path"], &[]).validate().is_err());
        assert!(cfg(&["http://"], &[]).validate().is_err());
        assert!(cfg(&["https://x/"], &[]).validate().is_ok());
        // an invalid mirror is skipped, Docker Hub still tried
        assert_eq!(
            endpoints("docker.io", &cfg(&["ftp://x"], &[])),
            vec![ep(DOCKER_HUB_API, Scheme::Https, false)]
        );
    }

    fn entry(digest: &str, arch: &str, variant: Option<&str>) -> ImageIndexEntry {
        ImageIndexEntry {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            digest: digest.to_string(),
            size: 1,
            platform: Some(OciPlatform {
                architecture: arch.into(),
                os: "linux".into(),
                os_version: None,
                os_features: None,
                variant: variant.map(str::to_string),
                features: None,
            }),
            annotations: None,
            artifact_type: None,
        }
    }

    #[test]
    fn platform_selection() {
        let list = vec![
            entry("a", "arm", Some("v6")),
            entry("b", "arm", Some("v7")),
            entry("c", "amd64", None),
            entry("d", "arm64", Some("v8")),
        ];
        let p = |arch: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: v.map(str::to_string),
        };
        assert_eq!(select_platform(&list, &p("amd64", None)), Some("c".into()));
        assert_eq!(
            select_platform(&list, &p("arm", Some("v7"))),
            Some("b".into())
        );
        assert_eq!(
            select_platform(&list, &p("arm64", Some("v8"))),
            Some("d".into())
        );
        assert_eq!(select_platform(&list, &p("arm64", None)), Some("d".into()));
        assert_eq!(select_platform(&list, &p("s390x", None)), None);
        assert_eq!(select_platform(&list[..2], &p("arm", Some("v5"))), None);
        let generic = vec![entry("g", "arm", None)];
        assert_eq!(
            select_platform(&generic, &p("arm", Some("v7"))),
            Some("g".into())
        );
        assert!(describe_platforms(&list).contains("linux/arm/v7"));
        assert!(!Platform::current().architecture.is_empty());
    }
}
