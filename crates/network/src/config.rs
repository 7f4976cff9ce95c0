//! The bridge's configuration and how its names derive from the agent's state dir (pure).

use std::path::Path;

use ipnet::Ipv4Net;

use crate::error::NetworkError;

/// The default bridge subnet. Outside Docker's default pools (172.17-31.0.0/16, 192.168.0.0/16)
/// and podman's 10.88.0.0/16.
pub(crate) const DEFAULT_SUBNET: &str = "10.213.0.0/16";

/// Linux interface names have at most 15 bytes.
const IFNAME_MAX: usize = 15;
/// iptables chain names have at most 28 bytes; we append at most `-DNAT`.
const CHAIN_PREFIX_MAX: usize = 28 - "-DNAT".len();

/// How the node's bridge is named, addressed and firewalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The Linux bridge device's name (at most 15 bytes).
    pub bridge_name: String,
    /// The container subnet; the gateway (the bridge's own address) is its first host.
    pub subnet: Ipv4Net,
    /// Our iptables chains are `<chain_prefix>-DNAT` (nat) and `<chain_prefix>-FWD` (filter).
    pub chain_prefix: String,
    /// MTU of the bridge and the veth pairs.
    pub mtu: u32,
}

impl BridgeConfig {
    /// The configuration of the agent whose state lives in `state_dir`: bridge `rsw<6 hex>`,
    /// chains `RSW-<8 hex>-…` (hex of a stable hash of the path, so two agents in one network
    /// namespace use different devices and chains), subnet 10.213.0.0/16, MTU 1500.
    ///
    /// The subnet is the same for every agent: two agents in one network namespace must set
    /// different subnets themselves.
    pub fn for_state_dir(state_dir: &Path) -> Self {
        let path = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let hash = fnv1a64(path.as_os_str().as_encoded_bytes());
        let hex = format!("{hash:016x}");
        BridgeConfig {
            bridge_name: format!("rsw{}", &hex[..6]),
            subnet: DEFAULT_SUBNET.parse().unwrap_or_default(),
            chain_prefix: format!("RSW-{}", &hex[6..14]),
            mtu: 1500,
        }
    }

    /// Checks names, subnet and MTU; returns the gateway address.
    pub(crate) fn validate(&self) -> Result<std::net::Ipv4Addr, NetworkError> {
        let ifname_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= IFNAME_MAX
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !ifname_ok(&self.bridge_name) {
            return Err(NetworkError::InvalidConfig(format!(
                "bridge name {:?} must be 1-15 characters from A-Z a-z 0-9 - _ .",
                self.bridge_name
            )));
        }
        if self.chain_prefix.is_empty()
            || self.chain_prefix.len() > CHAIN_PREFIX_MAX
            || !self
                .chain_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NetworkError::InvalidConfig(format!(
                "chain prefix {:?} must be 1-{CHAIN_PREFIX_MAX} characters from A-Z a-z 0-9 - _",
                self.chain_prefix
            )));
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(NetworkError::InvalidConfig(format!(
                "mtu {} must be between 576 and 65535",
                self.mtu
            )));
        }
        crate::ipam::gateway_for(self.subnet)
    }

    /// The nat chain holding DNAT rules for published ports.
    pub(crate) fn dnat_chain(&self) -> String {
        format!("{}-DNAT", self.chain_prefix)
    }

    /// The filter chain accepting forwarded published traffic.
    pub(crate) fn fwd_chain(&self) -> String {
        format!("{}-FWD", self.chain_prefix)
    }
}

/// 64-bit FNV-1a: small, and stable across Rust releases (unlike `DefaultHasher`).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_state_dir() {
        let a = BridgeConfig::for_state_dir(Path::new("/var/lib/rswarm"));
        let b = BridgeConfig::for_state_dir(Path::new("/var/lib/rswarm2"));
        assert_eq!(a, BridgeConfig::for_state_dir(Path::new("/var/lib/rswarm")));
        assert_ne!(a.bridge_name, b.bridge_name);
        assert_ne!(a.chain_prefix, b.chain_prefix);
        assert_eq!(a.bridge_name.len(), 9);
        assert!(a.bridge_name.starts_with("rsw"));
        assert!(a.chain_prefix.starts_with("RSW-") && a.chain_prefix.len() == 12);
        assert_eq!(a.subnet.to_string(), DEFAULT_SUBNET);
        assert_eq!(a.dnat_chain(), format!("{}-DNAT", a.chain_prefix));
        assert_eq!(
            a.validate().unwrap(),
            "10.213.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn validation_rejects_bad_names() {
        let good = BridgeConfig::for_state_dir(Path::new("/x"));
        let mut c = good.clone();
        c.bridge_name = "a-very-long-bridge-name".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bridge name"));
        let mut c = good.clone();
        c.chain_prefix = "bad prefix".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("chain prefix"));
        let mut c = good.clone();
        c.subnet = "10.0.0.0/31".parse().unwrap();
        assert!(c.validate().is_err());
        let mut c = good;
        c.mtu = 100;
        assert!(c.validate().is_err());
    }
}
