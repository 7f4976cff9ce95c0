//! The crate's error type.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::mode::Protocol;

/// Everything that can go wrong while configuring container networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A network mode string was not understood.
    #[error("invalid network mode {0:?}: use none, host, bridge, default or container:<name|id>")]
    InvalidMode(String),
    /// A `-p` publish spec was not understood.
    #[error("invalid port publish spec {spec:?}: {reason}")]
    InvalidPublish {
        /// The spec as given.
        spec: String,
        /// What was wrong with it and what to write instead.
        reason: String,
    },
    /// A container id is empty, too long or has characters iptables comments can't carry safely.
    #[error("invalid container id {0:?}: use 1 to 128 characters from A-Z a-z 0-9 _ . -")]
    InvalidContainerId(String),
    /// The container is attached already.
    #[error("container {0} is already attached to the bridge: detach it first")]
    AlreadyAttached(String),
    /// The bridge configuration can't work.
    #[error("invalid bridge configuration: {0}")]
    InvalidConfig(String),
    /// Every address of the bridge subnet is in use.
    #[error("no free address left in subnet {0}: remove stopped containers or configure a larger subnet")]
    SubnetExhausted(Ipv4Net),
    /// A published host port is taken by another container or by a host process.
    #[error("host port {port}/{protocol} is already in use: publish another host port or stop what holds it")]
    PortInUse {
        /// The host port.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// A published host address is not an address of this host.
    #[error(
        "host address {0} is not an address of this host: publish on a local address or omit it"
    )]
    HostIpNotLocal(IpAddr),
    /// Only IPv4 host addresses can be published (the DNAT rules are IPv4 iptables rules).
    #[error("host address {0} is IPv6, which publishing does not support: use an IPv4 address or omit it")]
    HostIpV6(IpAddr),
    /// No free ephemeral host port was found.
    #[error("could not find a free ephemeral host port for {0}: free some ports or publish an explicit one")]
    NoEphemeralPort(Protocol),
    /// The `iptables` binary is missing.
    #[error("iptables not found: install the Debian package `iptables`")]
    IptablesMissing,
    /// An `iptables` command failed.
    #[error("`iptables {args}` failed ({status}): {stderr}; check the host's firewall setup (is the iptables backend usable here?)")]
    Iptables {
        /// The arguments, joined with spaces.
        args: String,
        /// The exit status.
        status: String,
        /// What iptables printed on stderr.
        stderr: String,
    },
    /// A netlink request failed.
    #[error("netlink request to {what} failed: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A container's own network namespace could not be made or removed.
    #[error("cannot {action} network namespace {path}: {source}")]
    NetnsFile {
        /// `create` or `remove`.
        action: &'static str,
        /// The namespace's bind-mount path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A network namespace could not be opened or entered.
    #[error("cannot use network namespace {path}: {source} (is the container still running?)")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The container's namespace already has an `eth0`.
    #[error("network namespace {0} already has an eth0: attach each container only once, or detach first")]
    Eth0Exists(PathBuf),
    /// An overlay network, attachment or device tag can't work as given.
    #[error("invalid overlay request: {0}")]
    InvalidOverlay(String),
    /// The overlay's VTEP address is not an address of this network namespace.
    #[error("vtep address {0} is not an address of any interface here: set the overlay's local_ip to this node's own underlay address")]
    VtepNotLocal(Ipv4Addr),
    /// The overlay network's devices do not exist on this host.
    #[error("overlay network with vni {0} is not set up on this host: call ensure_network (or attach a container) for it first")]
    OverlayMissing(u32),
    /// The container's namespace already has an interface of the requested name.
    #[error("network namespace {netns} already has an interface {ifname}: attach with another interface name, or detach first")]
    IfnameExists {
        /// The container's namespace.
        netns: PathBuf,
        /// The interface name asked for.
        ifname: String,
    },
    /// Some other IO failed.
    #[error("could not {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The thread that works inside a network namespace went away without an answer.
    #[error("the worker thread for network namespace {0} died: this is a bug in rswarm-network, please report it")]
    WorkerDied(PathBuf),
}

impl NetworkError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        NetworkError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            what: what.into(),
            source,
        }
    }
}
