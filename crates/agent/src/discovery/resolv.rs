//! `/etc/resolv.conf` parsing (pure): the upstream servers names that aren't the cluster's are
//! forwarded to.

use std::net::{IpAddr, SocketAddr};

/// How many servers are kept, as the C library uses (`MAXNS`).
pub(crate) const MAX_SERVERS: usize = 3;

/// The `nameserver` entries of resolv.conf-style `text` as port-53 addresses, in order, without
/// duplicates, unspecified addresses and 127.0.0.11 (the embedded resolver itself), and IPv6 link-local ones
/// with a zone (`fe80::1%eth0`: the zone can't be carried); at most [`MAX_SERVERS`].
pub(crate) fn nameservers(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else {
            continue;
        };
        if addr.contains('%') {
            continue;
        }
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        // Loopback resolvers (systemd-resolved's 127.0.0.53) are kept: queries are forwarded from
        // the agent's own namespace, where they answer.
        if ip.is_unspecified() || ip == IpAddr::from([127, 0, 0, 11]) {
            continue;
        }
        let sa = SocketAddr::new(ip, 53);
        if !out.contains(&sa) {
            out.push(sa);
        }
        if out.len() == MAX_SERVERS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<SocketAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nameservers_in_order_on_port_53() {
        let text = "# generated\nsearch example.com\nnameserver 192.0.2.53\noptions ndots:2\nnameserver 2001:db8::53\n";
        assert_eq!(
            nameservers(text),
            addrs(&["192.0.2.53:53", "[2001:db8::53]:53"])
        );
    }

    #[test]
    fn junk_is_skipped_loopback_kept() {
        let text = "nameserver 127.0.0.11\n\
                    nameserver 0.0.0.0\nnameserver not-an-ip\nnameserver\n\
                    nameserver fe80::1%eth0\nnameservers 192.0.2.9\n  nameserver\t198.51.100.1  # comment\n\
                    ; nameserver 192.0.2.7\nnameserver 198.51.100.1\nnameserver 127.0.0.53\n";
        assert_eq!(
            nameservers(text),
            addrs(&["198.51.100.1:53", "127.0.0.53:53"])
        );
    }

    #[test]
    fn at_most_three() {
        let text = "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n";
        assert_eq!(
            nameservers(text),
            addrs(&["192.0.2.1:53", "192.0.2.2:53", "192.0.2.3:53"])
        );
    }

    #[test]
    fn empty_when_none() {
        assert!(nameservers("").is_empty());
        assert!(nameservers("search example.com\n").is_empty());
    }
}
