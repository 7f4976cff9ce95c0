//! Address management for the bridge subnet (pure).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::NetworkError;

/// The gateway of `subnet`: its first host address, which the bridge itself carries.
/// Subnets smaller than /30 have no room for containers and are rejected.
pub fn gateway_for(subnet: Ipv4Net) -> Result<Ipv4Addr, NetworkError> {
    if subnet.prefix_len() > 30 {
        return Err(NetworkError::InvalidConfig(format!(
            "subnet {subnet} is too small: use a prefix of /30 or shorter"
        )));
    }
    Ok(Ipv4Addr::from(u32::from(subnet.network()) + 1))
}

/// The lowest address of `subnet` that is not the network address, the gateway, the broadcast
/// address, nor in `used`.
pub fn allocate_ip(subnet: Ipv4Net, used: &[Ipv4Addr]) -> Result<Ipv4Addr, NetworkError> {
    let gateway = u32::from(gateway_for(subnet)?);
    let broadcast = u32::from(subnet.broadcast());
    let mut used: Vec<u32> = used.iter().map(|ip| u32::from(*ip)).collect();
    used.sort_unstable();
    (gateway + 1..broadcast)
        .find(|ip| used.binary_search(ip).is_err())
        .map(Ipv4Addr::from)
        .ok_or(NetworkError::SubnetExhausted(subnet))
}

/// The six bytes of the MAC address derived from `ip`: `02:42` followed by the address, like
/// Docker, so it is predictable.
pub(crate) fn mac_bytes_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The MAC address derived from `ip`, as `02:42:aa:bb:cc:dd`.
pub fn mac_for_ip(ip: Ipv4Addr) -> String {
    mac_bytes_for_ip(ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_address() {
        let net: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(gateway_for(net).unwrap(), ip("10.213.0.1"));
        assert_eq!(allocate_ip(net, &[]).unwrap(), ip("10.213.0.2"));
        assert_eq!(
            allocate_ip(net, &[ip("10.213.0.2"), ip("10.213.0.4")]).unwrap(),
            ip("10.213.0.3")
        );
        // Addresses outside the subnet don't matter.
        assert_eq!(
            allocate_ip(net, &[ip("192.0.2.2")]).unwrap(),
            ip("10.213.0.2")
        );
        // A non-canonical subnet (host bits set) is treated as its network.
        let odd: Ipv4Net = "10.213.5.7/16".parse().unwrap();
        assert_eq!(allocate_ip(odd, &[]).unwrap(), ip("10.213.0.2"));
    }

    #[test]
    fn exhaustion_and_small_subnets() {
        let net: Ipv4Net = "192.0.2.0/30".parse().unwrap();
        assert_eq!(allocate_ip(net, &[]).unwrap(), ip("192.0.2.2"));
        let err = allocate_ip(net, &[ip("192.0.2.2")]).unwrap_err();
        assert!(matches!(err, NetworkError::SubnetExhausted(_)));
        assert!(err.to_string().contains("no free address"));
        let net: Ipv4Net = "192.0.2.0/29".parse().unwrap();
        let used: Vec<_> = (2..=6).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        assert!(allocate_ip(net, &used).is_err());
        assert!(gateway_for("192.0.2.0/31".parse().unwrap()).is_err());
    }

    #[test]
    fn mac_from_ip() {
        assert_eq!(mac_for_ip(ip("10.213.0.2")), "02:42:0a:d5:00:02");
        assert_eq!(mac_bytes_for_ip(ip("172.17.0.2")), [2, 0x42, 172, 17, 0, 2]);
    }
}
