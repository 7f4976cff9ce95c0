//! rswarm's container networking: on one host, and the host's side of the multi-host overlay.
//!
//! The agent's container engine calls this crate before it runs a container:
//!
//! * [`NetworkMode`] says how a container is networked (`none`, `host`, `bridge`,
//!   `container:<name|id>`); only `bridge` needs this crate's [`Bridge`], `none` may call
//!   [`setup_loopback`].
//! * [`Bridge::attach`] puts a container's network namespace (made by [`create_netns`]) on the
//!   node's Linux bridge: a veth pair, an address from the bridge subnet (lowest free, see
//!   [`allocate_ip`]), a default route, and iptables DNAT rules for published ports (see
//!   [`parse_publish`]). Published traffic is not SNATed, so the container sees the client's
//!   own source address. [`Bridge::prepare`] makes the bridge and its base rules up front.
//! * [`Bridge::detach`] and [`Bridge::restore`] undo and reconcile that state.
//! * [`Overlay`] is the agent's side of the multi-host VXLAN overlay: per network
//!   ([`OverlayNetwork`]) a bridge and a VXLAN device with learning off, [`Overlay::attach`]
//!   puts a container on it as an extra interface (`eth1`, ...), and [`Overlay::set_peers`]
//!   reconciles the static FDB and neighbour entries of the remote endpoints ([`Peer`])
//!   against the full desired set (planned by [`diff_peers`]), so no entry goes stale.
//!
//! Pure decisions (parsing, IPAM, naming, iptables rule generation, port choice, peer diffs)
//! live in their own functions and are unit-tested; the IO that applies them (netlink,
//! iptables, sysctl) is kept apart.

mod bridge;
mod config;
mod error;
mod ipam;
mod iptables;
mod mode;
mod netns;
mod overlay;
mod peers;
mod ports;
mod rules;

pub use bridge::{AttachRequest, Attachment, Bridge};
pub use config::BridgeConfig;
pub use error::NetworkError;
pub use ipam::{allocate_ip, gateway_for, mac_for_ip};
pub use mode::{parse_publish, NetworkMode, PortMapping, Protocol};
pub use netns::{create_netns, remove_netns, setup_loopback};
pub use overlay::{
    underlay_mtu, Overlay, OverlayAttachment, OverlayNetwork, MAX_VNI, VXLAN_OVERHEAD, VXLAN_PORT,
};
pub use peers::{diff_peers, is_peer_mac, FdbEntry, NeighEntry, Peer, PeerChanges, PeerPlan};
