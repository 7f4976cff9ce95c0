//! Network modes and published ports: types and parsing (pure).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::NetworkError;

/// How a container is networked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// Its own network namespace with only `lo`.
    None,
    /// The host's (the agent's) network namespace.
    Host,
    /// Its own namespace on the node's bridge, with NAT out and published ports.
    Bridge,
    /// The network namespace of another container, by name or id.
    Container(String),
}

impl FromStr for NetworkMode {
    type Err = NetworkError;

    /// Parses `none`, `host`, `bridge`, `default` (= bridge) and `container:<name|id>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(NetworkMode::None),
            "host" => Ok(NetworkMode::Host),
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            _ => match s.strip_prefix("container:") {
                Some(target) if !target.is_empty() && !target.contains(char::is_whitespace) => {
                    Ok(NetworkMode::Container(target.to_string()))
                }
                _ => Err(NetworkError::InvalidMode(s.to_string())),
            },
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Host => f.write_str("host"),
            NetworkMode::Bridge => f.write_str("bridge"),
            NetworkMode::Container(target) => write!(f, "container:{target}"),
        }
    }
}

/// A transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The lowercase name iptables and Docker use (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(NetworkError::InvalidPublish {
                spec: s.to_string(),
                reason: "unknown protocol: use tcp or udp".to_string(),
            }),
        }
    }
}

/// One published port: traffic to `host_ip:host_port` (any local address when `host_ip` is
/// `None`) is forwarded to the container's `container_port`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// The host address to publish on; `None` = every local address.
    pub host_ip: Option<IpAddr>,
    /// The host port; 0 = pick a free ephemeral port at attach time.
    pub host_port: u16,
    /// The port inside the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// Parses one Docker `-p` spec into port mappings.
///
/// Accepted forms: `80` (host port 0 = ephemeral), `8080:80`, `127.0.0.1:8080:80`,
/// `127.0.0.1::80`, any of them with `/tcp` or `/udp`, and equal-length ranges such as
/// `8000-8001:80-81` (or `80-81` alone, both ephemeral). IPv6 host addresses are rejected.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, NetworkError> {
    let bad = |reason: &str| NetworkError::InvalidPublish {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let (addr_part, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (
            rest,
            proto
                .parse::<Protocol>()
                .map_err(|_| bad("unknown protocol: use tcp or udp after the slash"))?,
        ),
        None => (spec, Protocol::Tcp),
    };
    if addr_part.starts_with('[') {
        return Err(bad(
            "IPv6 host addresses are not supported: use an IPv4 address or omit it",
        ));
    }
    let parts: Vec<&str> = addr_part.split(':').collect();
    let (host_ip, host_range, container_range) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => (None, Some(*h), *c),
        [ip, h, c] => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| bad("the host address is not an IPv4 address"))?;
            (Some(ip), if h.is_empty() { None } else { Some(*h) }, *c)
        }
        _ => {
            return Err(bad(
                "expected [host-ip:][host-port:]container-port[/protocol]",
            ))
        }
    };
    if let Some(ip @ IpAddr::V6(_)) = host_ip {
        return Err(NetworkError::HostIpV6(ip));
    }
    let (c_lo, c_hi) = parse_range(container_range, false).map_err(|r| bad(&r))?;
    let host = match host_range {
        None => None,
        Some(h) => Some(parse_range(h, true).map_err(|r| bad(&r))?),
    };
    let count = u32::from(c_hi - c_lo) + 1;
    let mut mappings = Vec::with_capacity(count as usize);
    match host {
        Some((0, 0)) if count == 1 => {
            mappings.push(mapping(host_ip, 0, c_lo, protocol));
        }
        Some((0, _)) => {
            return Err(bad(
                "host port 0 can't be part of a range: omit the host port to get ephemeral ports",
            ));
        }
        Some((h_lo, h_hi)) => {
            if u32::from(h_hi - h_lo) + 1 != count {
                return Err(bad(
                    "the host and container port ranges have different lengths: make them equal",
                ));
            }
            for i in 0..=(c_hi - c_lo) {
                mappings.push(mapping(host_ip, h_lo + i, c_lo + i, protocol));
            }
        }
        None => {
            for c in c_lo..=c_hi {
                mappings.push(mapping(host_ip, 0, c, protocol));
            }
        }
    }
    Ok(mappings)
}

fn mapping(
    host_ip: Option<IpAddr>,
    host_port: u16,
    container_port: u16,
    p: Protocol,
) -> PortMapping {
    PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol: p,
    }
}

/// Parses `N` or `N-M`; port 0 is allowed only for host ports.
fn parse_range(s: &str, allow_zero: bool) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        let n: u16 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a port number (1-65535)"))?;
        if n == 0 && !allow_zero {
            return Err("container port 0 is not a port: use 1-65535".to_string());
        }
        Ok(n)
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {s:?} runs backwards: write low-high"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ip: Option<&str>, h: u16, c: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: h,
            container_port: c,
            protocol: p,
        }
    }

    #[test]
    fn modes_round_trip() {
        for (s, mode) in [
            ("none", NetworkMode::None),
            ("host", NetworkMode::Host),
            ("bridge", NetworkMode::Bridge),
            ("container:web", NetworkMode::Container("web".into())),
        ] {
            assert_eq!(s.parse::<NetworkMode>().unwrap(), mode);
            assert_eq!(mode.to_string(), s);
        }
        assert_eq!(
            "default".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        for bad in ["", "overlay", "container:", "Bridge", "container: x"] {
            let err = bad.parse::<NetworkMode>().unwrap_err();
            assert!(err.to_string().contains("invalid network mode"), "{err}");
        }
    }

    #[test]
    fn publish_forms() {
        use Protocol::*;
        let table: Vec<(&str, Vec<PortMapping>)> = vec![
            ("80", vec![m(None, 0, 80, Tcp)]),
            ("8080:80", vec![m(None, 8080, 80, Tcp)]),
            ("8080:80/udp", vec![m(None, 8080, 80, Udp)]),
            ("8080:80/TCP", vec![m(None, 8080, 80, Tcp)]),
            (
                "127.0.0.1:8080:80",
                vec![m(Some("127.0.0.1"), 8080, 80, Tcp)],
            ),
            ("127.0.0.1::80/udp", vec![m(Some("127.0.0.1"), 0, 80, Udp)]),
            ("0:80", vec![m(None, 0, 80, Tcp)]),
            (
                "8000-8001:80-81",
                vec![m(None, 8000, 80, Tcp), m(None, 8001, 81, Tcp)],
            ),
            ("80-81", vec![m(None, 0, 80, Tcp), m(None, 0, 81, Tcp)]),
        ];
        for (spec, want) in table {
            assert_eq!(parse_publish(spec).unwrap(), want, "{spec}");
        }
    }

    #[test]
    fn publish_errors() {
        for spec in [
            "",
            "0",
            "x:80",
            "8080:0",
            "70000:80",
            "8080:80/sctp",
            "8000-8002:80-81",
            "81-80",
            "1.2.3:8080:80",
            "[::1]:8080:80",
            "a:b:c:d",
            "0-1:80-81",
        ] {
            let err = parse_publish(spec).unwrap_err();
            assert!(
                err.to_string().contains("invalid port publish spec"),
                "{spec}: {err}"
            );
        }
        assert!(matches!(
            parse_publish("::1:8080:80"),
            Err(NetworkError::InvalidPublish { .. })
        ));
    }

    #[test]
    fn mapping_display() {
        assert_eq!(
            m(Some("127.0.0.1"), 8080, 80, Protocol::Udp).to_string(),
            "127.0.0.1:8080:80/udp"
        );
    }
}
