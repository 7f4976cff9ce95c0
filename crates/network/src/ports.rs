//! Choosing and checking published host ports: the decision is pure (given a probe), the probe
//! binds real sockets.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use crate::error::NetworkError;
use crate::mode::{PortMapping, Protocol};

/// What binding a host port found out.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Bound (and released again): the port, which for port 0 is the kernel's pick.
    Free(u16),
    /// Something already holds it.
    InUse,
    /// The host address is not local.
    NotLocal,
    /// Binding failed otherwise.
    Failed(std::io::Error),
}

/// How many ephemeral ports to try before giving up.
const EPHEMERAL_TRIES: usize = 64;

/// Resolves host ports: explicit ports must not be in `taken` (ports of the caller's other live
/// containers), nor repeated within `requested`, nor bound on the host (`probe`); port 0 becomes
/// a free ephemeral port from `probe(ip, protocol, 0)` that is not taken either.
pub(crate) fn resolve_ports(
    requested: &[PortMapping],
    taken: &[(Protocol, u16)],
    mut probe: impl FnMut(Option<IpAddr>, Protocol, u16) -> Probe,
) -> Result<Vec<PortMapping>, NetworkError> {
    let mut chosen: Vec<(Protocol, u16)> = Vec::new();
    let mut out = Vec::with_capacity(requested.len());
    for p in requested {
        if let Some(ip @ IpAddr::V6(_)) = p.host_ip {
            return Err(NetworkError::HostIpV6(ip));
        }
        if p.container_port == 0 {
            return Err(NetworkError::InvalidPublish {
                spec: p.to_string(),
                reason: "container port 0 is not a port: use 1-65535".to_string(),
            });
        }
        let in_use = |port: u16, chosen: &[(Protocol, u16)]| {
            taken.contains(&(p.protocol, port)) || chosen.contains(&(p.protocol, port))
        };
        let port = if p.host_port != 0 {
            let port = p.host_port;
            let busy = NetworkError::PortInUse {
                port,
                protocol: p.protocol,
            };
            if in_use(port, &chosen) {
                return Err(busy);
            }
            match probe(p.host_ip, p.protocol, port) {
                Probe::Free(_) => port,
                Probe::InUse => return Err(busy),
                Probe::NotLocal => return Err(not_local(p.host_ip)),
                Probe::Failed(e) => {
                    return Err(NetworkError::io(
                        format!("check host port {port}/{}", p.protocol),
                        e,
                    ))
                }
            }
        } else {
            let mut found = None;
            for _ in 0..EPHEMERAL_TRIES {
                match probe(p.host_ip, p.protocol, 0) {
                    Probe::Free(port) if port != 0 && !in_use(port, &chosen) => {
                        found = Some(port);
                        break;
                    }
                    Probe::Free(_) | Probe::InUse => continue,
                    Probe::NotLocal => return Err(not_local(p.host_ip)),
                    Probe::Failed(e) => {
                        return Err(NetworkError::io(
                            format!("pick an ephemeral {} port", p.protocol),
                            e,
                        ))
                    }
                }
            }
            found.ok_or(NetworkError::NoEphemeralPort(p.protocol))?
        };
        chosen.push((p.protocol, port));
        out.push(PortMapping {
            host_port: port,
            ..p.clone()
        });
    }
    Ok(out)
}

fn not_local(ip: Option<IpAddr>) -> NetworkError {
    NetworkError::HostIpNotLocal(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

/// Binds `ip:port` (all addresses when `ip` is `None`) with a TCP listener or a UDP socket in the
/// calling thread's network namespace, then releases it.
pub(crate) fn probe_bind(ip: Option<IpAddr>, protocol: Protocol, port: u16) -> Probe {
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
    let bound = match protocol {
        Protocol::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    match bound {
        Ok(a) => Probe::Free(a.port()),
        Err(e) if e.kind() == ErrorKind::AddrInUse => Probe::InUse,
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Probe::NotLocal,
        Err(e) => Probe::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(h: u16, c: u16, p: Protocol) -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port: h,
            container_port: c,
            protocol: p,
        }
    }

    #[test]
    fn explicit_ports() {
        let out = resolve_ports(&[pm(8080, 80, Protocol::Tcp)], &[], |_, _, p| {
            Probe::Free(p)
        })
        .unwrap();
        assert_eq!(out[0].host_port, 8080);
        // Another live container holds it.
        let err = resolve_ports(
            &[pm(8080, 80, Protocol::Tcp)],
            &[(Protocol::Tcp, 8080)],
            |_, _, p| Probe::Free(p),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host port 8080/tcp is already in use: publish another host port or stop what holds it"
        );
        // Same number, other protocol: fine.
        assert!(resolve_ports(
            &[pm(8080, 80, Protocol::Udp)],
            &[(Protocol::Tcp, 8080)],
            |_, _, p| { Probe::Free(p) }
        )
        .is_ok());
        // A host process holds it.
        let err =
            resolve_ports(&[pm(8080, 80, Protocol::Tcp)], &[], |_, _, _| Probe::InUse).unwrap_err();
        assert!(matches!(
            err,
            NetworkError::PortInUse {
                port: 8080,
                protocol: Protocol::Tcp
            }
        ));
        // Twice in one request.
        let err = resolve_ports(
            &[pm(8080, 80, Protocol::Tcp), pm(8080, 81, Protocol::Tcp)],
            &[],
            |_, _, p| Probe::Free(p),
        )
        .unwrap_err();
        assert!(matches!(err, NetworkError::PortInUse { port: 8080, .. }));
        let err = resolve_ports(&[pm(8080, 80, Protocol::Tcp)], &[], |_, _, _| {
            Probe::NotLocal
        })
        .unwrap_err();
        assert!(matches!(err, NetworkError::HostIpNotLocal(_)));
    }

    #[test]
    fn ephemeral_ports_skip_taken() {
        let mut offers = vec![40001u16, 40002, 40001, 40003].into_iter();
        let out = resolve_ports(
            &[pm(0, 80, Protocol::Tcp), pm(0, 81, Protocol::Tcp)],
            &[(Protocol::Tcp, 40001)],
            |_, _, p| {
                assert_eq!(p, 0);
                Probe::Free(offers.next().unwrap())
            },
        )
        .unwrap();
        assert_eq!(out[0].host_port, 40002);
        assert_eq!(out[1].host_port, 40003);
        let err = resolve_ports(
            &[pm(0, 80, Protocol::Udp)],
            &[(Protocol::Udp, 5)],
            |_, _, _| Probe::Free(5),
        )
        .unwrap_err();
        assert!(matches!(err, NetworkError::NoEphemeralPort(Protocol::Udp)));
    }

    #[test]
    fn ipv6_host_ip_rejected() {
        let mut p = pm(8080, 80, Protocol::Tcp);
        p.host_ip = Some("::1".parse().unwrap());
        assert!(matches!(
            resolve_ports(&[p], &[], |_, _, p| Probe::Free(p)),
            Err(NetworkError::HostIpV6(_))
        ));
    }

    #[test]
    fn real_probe_sees_a_bound_port() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let ip = Some("127.0.0.1".parse().unwrap());
        assert!(matches!(probe_bind(ip, Protocol::Tcp, port), Probe::InUse));
        assert!(matches!(probe_bind(ip, Protocol::Tcp, 0), Probe::Free(p) if p != 0));
        assert!(matches!(
            probe_bind(Some("192.0.2.77".parse().unwrap()), Protocol::Udp, 0),
            Probe::NotLocal
        ));
    }
}
