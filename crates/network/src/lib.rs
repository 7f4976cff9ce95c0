//! rswarm's container networking on one host.
//!
//! The agent's container engine calls this crate between `runc create` and `runc start`:
//!
//! * [`NetworkMode`] says how a container is networked (`none`, `host`, `bridge`,
//!   `container:<name|id>`); only `bridge` needs this crate's [`Bridge`], `none` may call
//!   [`setup_loopback`].
//! * [`Bridge::attach`] puts a container's network namespace on the node's Linux bridge: a veth
//!   pair, an address from the bridge subnet (lowest free, see [`allocate_ip`]), a default route,
//!   and iptables DNAT rules for published ports (see [`parse_publish`]). Published traffic is
//!   not SNATed, so the container sees the client's own source address.
//! * [`Bridge::detach`] and [`Bridge::restore`] undo and reconcile that state.
//!
//! Pure decisions (parsing, IPAM, naming, iptables rule generation, port choice) live in their
//! own functions and are unit-tested; the IO that applies them (netlink, iptables, sysctl) is
//! kept apart.

mod bridge;
mod config;
mod error;
mod ipam;
mod iptables;
mod mode;
mod netns;
mod ports;
mod rules;

pub use bridge::{AttachRequest, Attachment, Bridge};
pub use config::BridgeConfig;
pub use error::NetworkError;
pub use ipam::{allocate_ip, gateway_for, mac_for_ip};
pub use mode::{parse_publish, NetworkMode, PortMapping, Protocol};
pub use netns::setup_loopback;
