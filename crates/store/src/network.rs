//! Overlay networks and the addresses tasks and services hold on them.
//!
//! A [`Network`] is created with everything the leader allocated (subnet, gateway, VXLAN id); a
//! task carries its address on each of its networks ([`NetworkAttachment`]), a service in VIP mode
//! one virtual IP per network. The state machine refuses a transaction that would give two
//! networks one VNI, overlapping subnets or one name, or two holders one address: allocation
//! decisions are made outside, and uniqueness is checked where every replica agrees.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::objects::Meta;

/// The first VXLAN id the cluster hands out (Swarm's).
pub const VNI_FIRST: u32 = 4096;
/// The largest VXLAN id (24 bits).
pub const VNI_LAST: u32 = (1 << 24) - 1;
/// The default VXLAN UDP port.
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;
/// The default address pool and the prefix length of the subnets cut from it.
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_SUBNET_SIZE: u8 = 24;

/// An IPv4 subnet, stored as `a.b.c.d/len` with host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
        }
    }
}

impl Subnet {
    /// `addr/prefix_len` with the host bits cleared; `None` when `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Subnet> {
        (prefix_len <= 32).then(|| Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask_of(prefix_len)),
            prefix_len,
        })
    }

    fn mask_of(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix_len)
    }

    /// The first address (the network address).
    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    /// The last address (the broadcast address).
    pub fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Whether `ip` may be given to an endpoint: inside, and neither the network nor the
    /// broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && (self.prefix_len >= 31 || (v != self.first() && v != self.last()))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;

    /// Parses `a.b.c.d/len`; host bits must be zero (`10.0.0.1/24` is refused: did you mean
    /// `10.0.0.0/24`?).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {s:?}: use CIDR notation, e.g. 10.20.0.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("invalid subnet {s:?}: the prefix length must be 0-32"))?;
        let subnet = Subnet::new(addr, len).unwrap_or_default();
        if subnet.addr != addr {
            return Err(format!(
                "invalid subnet {s:?}: host bits are set; did you mean {subnet}?"
            ));
        }
        Ok(subnet)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// What the user asked for (`network create`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Always "overlay" today.
    pub driver: String,
    /// `--subnet`; `None`: cut from the cluster's address pool.
    #[serde(default)]
    pub subnet: Option<Subnet>,
    /// `--gateway`; `None`: the subnet's first host address.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub internal: bool,
    /// `--opt mtu=N`; 0: the underlay's MTU less the VXLAN overhead.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// An overlay network with what the leader allocated for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub meta: Meta,
    pub spec: NetworkSpec,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub vni: u32,
}

/// `--network NAME[,alias=A]` of a service: which network (by id, once stored) and the extra
/// names its tasks answer to there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentConfig {
    pub target: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// An address held on a network: a task's, or a service's virtual IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    pub addr: Ipv4Addr,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// How a service's name resolves on its networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP that balances over the running tasks.
    #[default]
    Vip,
    /// The running tasks' addresses (DNS round robin).
    Dnsrr,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let s: Subnet = "10.0.1.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.0.1.0/24");
        assert!(s.contains("10.0.1.255".parse().unwrap()));
        assert!(!s.is_host("10.0.1.255".parse().unwrap()));
        assert!(!s.is_host("10.0.1.0".parse().unwrap()));
        assert!(s.is_host("10.0.1.1".parse().unwrap()));
        assert!(!s.contains("10.0.2.1".parse().unwrap()));
        let big: Subnet = "10.0.0.0/16".parse().unwrap();
        assert!(s.overlaps(&big) && big.overlaps(&s));
        assert!(!s.overlaps(&"10.0.2.0/24".parse().unwrap()));
        let err = "10.0.1.1/24".parse::<Subnet>().unwrap_err();
        assert!(err.contains("did you mean 10.0.1.0/24"), "{err}");
        assert!("10.0.1.0".parse::<Subnet>().is_err());
        assert!("10.0.1.0/33".parse::<Subnet>().is_err());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"10.0.1.0/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Subnet>("\"10.0.1.3/24\"").is_err());
    }
}
