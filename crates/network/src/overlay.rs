//! The agent side of the VXLAN overlay datapath (IO around the pure pieces in
//! [`peers`](crate::peers)).
//!
//! Per overlay network and host: a Linux bridge without an address and a VXLAN device (learning
//! off, ARP proxy on) enslaved to it; each local container gets a veth pair with its end on the
//! bridge. Remote containers are reached through static FDB and neighbour entries on the VXLAN
//! device, reconciled against the full desired set by [`Overlay::set_peers`], so nothing goes
//! stale. The bridge, the VXLAN device and the veths' bridge ends live in one network namespace
//! per network (see [`Overlay`]); the VXLAN device's socket and parent are in the namespace of
//! the calling thread (the host's).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use crate::bridge::validate_container_id;
use crate::config::fnv1a64;
use crate::error::NetworkError;
use crate::ipam::{mac_bytes_for_ip, mac_for_ip};
use crate::netns::{
    create_netns_with, is_errno, link_index, link_up, loopback_up, open_netns, remove_netns,
    run_in_netns, Netlink, EEXIST,
};
use crate::peers::{diff_peers, FdbEntry, NeighEntry, Peer, PeerChanges};

/// The IANA VXLAN UDP port.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds to a frame: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// `-ENOENT` as netlink reports it (deleting an entry that is gone).
const ENOENT: i32 = 2;
/// Linux interface names have at most 15 bytes.
const IFNAME_MAX: usize = 15;
/// Smallest MTU the overlay accepts (as for the node bridge).
const MIN_MTU: u32 = 576;

/// One overlay network as this host takes part in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayNetwork {
    /// The VXLAN network identifier, 1 to 2^24-1; names the network's devices.
    pub vni: u32,
    /// The network's subnet; containers get addresses in it.
    pub subnet: Ipv4Net,
    /// MTU of the bridge, the VXLAN device and the veths; 0 = the underlay interface's MTU
    /// minus [`VXLAN_OVERHEAD`].
    pub mtu: u32,
    /// This node's VTEP: its own underlay address, which must be an address of an interface in
    /// the caller's namespace (that interface carries the tunnel).
    pub local_ip: Ipv4Addr,
    /// The VXLAN UDP port, the same on every node ([`VXLAN_PORT`] by default).
    pub port: u16,
}

impl OverlayNetwork {
    /// A network with the automatic MTU and the default port.
    pub fn new(vni: u32, subnet: Ipv4Net, local_ip: Ipv4Addr) -> Self {
        OverlayNetwork {
            vni,
            subnet,
            mtu: 0,
            local_ip,
            port: VXLAN_PORT,
        }
    }
}

/// A container's place on an overlay network, as the caller should record it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayAttachment {
    /// The network's VNI.
    pub vni: u32,
    /// The container's id.
    pub container_id: String,
    /// Its address on the network's subnet.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The interface name inside the container (`eth1`, `eth2`, ...).
    pub ifname: String,
    /// The host end of its veth pair, on the network's bridge.
    pub host_veth: String,
    /// The MAC address of its interface, derived from `ip`.
    pub mac: String,
}

/// The overlay networks of one agent. Cheap to clone; all clones share state.
///
/// Each network's bridge, VXLAN device and container veth ends live in a network namespace of
/// their own (a bind mount at [`netns_path`](Self::netns_path), as Docker's overlay sandboxes),
/// where bridged frames skip the host's firewall (`bridge-nf-call-iptables` is off there and no
/// rule exists): the host's FORWARD policy and br_netfilter never see overlay frames, and the
/// datapath pays for no host rule. The VXLAN device is made from the caller's namespace, so its
/// UDP socket and underlay interface are the caller's (the host's).
#[derive(Clone, Debug)]
pub struct Overlay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tag: String,
    /// Where the networks' namespace files are.
    ns_dir: PathBuf,
    /// Networks whose devices were verified, with the MTU used; held while ensuring.
    ready: tokio::sync::Mutex<HashMap<u32, Ready>>,
}

#[derive(Debug)]
struct Ready {
    net: OverlayNetwork,
    mtu: u32,
}

impl Overlay {
    /// An overlay manager whose devices carry `tag` (4 lowercase hex characters) and whose
    /// networks' namespaces are files `<vni>` in `ns_dir` (made when needed). Devices: bridge
    /// `rb<tag><vni, 6 hex>`, VXLAN `rx<tag><vni, 6 hex>`, host veth ends `rv<7 hex of a hash
    /// of (tag, container id, vni)>`. Creates nothing yet.
    pub fn new(tag: &str, ns_dir: impl Into<PathBuf>) -> Result<Overlay, NetworkError> {
        validate_tag(tag)?;
        Ok(Overlay {
            inner: Arc::new(Inner {
                tag: tag.to_string(),
                ns_dir: ns_dir.into(),
                ready: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The device tag.
    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    /// The name of network `vni`'s bridge (inside [`netns_path`](Self::netns_path)).
    pub fn bridge_name(&self, vni: u32) -> String {
        bridge_name(&self.inner.tag, vni)
    }

    /// The name of network `vni`'s VXLAN device (inside [`netns_path`](Self::netns_path)).
    pub fn vxlan_name(&self, vni: u32) -> String {
        vxlan_name(&self.inner.tag, vni)
    }

    /// The namespace file of network `vni` (`nsenter --net=<it> bridge fdb` shows its peers).
    pub fn netns_path(&self, vni: u32) -> PathBuf {
        self.inner.ns_dir.join(vni.to_string())
    }

    /// Makes network `net` ready on this host; idempotent. In the network's namespace (made
    /// if missing): the bridge (no address, up) and the VXLAN device (id = vni, learning off,
    /// ARP proxy on, `local` = `net.local_ip`, dstport = `net.port`, parent = the caller's
    /// interface holding `local_ip`), enslaved to the bridge, both up, with the same MTU:
    /// `net.mtu`, or that interface's MTU minus 50. A VXLAN device whose settings differ is
    /// recreated. Returns the MTU used.
    pub async fn ensure_network(&self, net: &OverlayNetwork) -> Result<u32, NetworkError> {
        validate_network(net)?;
        let mut ready = self.inner.ready.lock().await;
        let tag = &self.inner.tag;
        let (br_name, vx_name) = (bridge_name(tag, net.vni), vxlan_name(tag, net.vni));
        let ns_path = self.netns_path(net.vni);
        if let Some(r) = ready.get(&net.vni) {
            if r.net == *net && is_netns(&ns_path) {
                let ns_nl = Netlink::open_in(&ns_path, false).await?;
                if ns_nl.link_index(&br_name).await?.is_some()
                    && ns_nl.link_index(&vx_name).await?.is_some()
                {
                    return Ok(r.mtu);
                }
            }
        }
        let host_nl = Netlink::open()?;
        let (underlay_idx, underlay) = find_underlay(&host_nl.handle, net.local_ip).await?;
        let mtu = overlay_mtu(net.mtu, underlay)?;
        ensure_overlay_netns(&self.inner.ns_dir, &ns_path).await?;
        let ns_nl = Netlink::open_in(&ns_path, false).await?;
        let br = ensure_bridge(&ns_nl, &br_name, mtu).await?;
        let vx = ensure_vxlan(&host_nl, &ns_nl, &ns_path, &vx_name, net, underlay_idx, mtu).await?;
        ns_nl
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(vx)
                    .controller(br)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| NetworkError::netlink(format!("enslave {vx_name} to {br_name}"), e))?;
        tracing::info!(vni = net.vni, subnet = %net.subnet, bridge = %br_name, vxlan = %vx_name,
            local = %net.local_ip, port = net.port, mtu, netns = %ns_path.display(),
            "overlay network ready");
        ready.insert(
            net.vni,
            Ready {
                net: net.clone(),
                mtu,
            },
        );
        Ok(mtu)
    }

    /// Puts the container namespace at `netns` (e.g. `/run/netns/x`) on network `net`: a veth
    /// pair whose container end is `ifname` inside `netns`, with MAC
    /// [`mac_for_ip`](crate::mac_for_ip)`(ip)`, address `ip`/subnet prefix, the network's MTU,
    /// up (and `lo` up). No default route: that belongs to the container's other interface.
    /// The other end is on the network's bridge, up. Calls
    /// [`ensure_network`](Self::ensure_network) first. A host veth of the same name left over
    /// from an earlier attach is replaced. On failure the veth pair is removed again.
    pub async fn attach(
        &self,
        net: &OverlayNetwork,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        ip: Ipv4Addr,
    ) -> Result<OverlayAttachment, NetworkError> {
        validate_container_id(container_id)?;
        validate_ifname(ifname)?;
        validate_network(net)?;
        validate_endpoint(net.subnet, ip)?;
        let host_veth = veth_name(&self.inner.tag, container_id, net.vni);
        let att = OverlayAttachment {
            vni: net.vni,
            container_id: container_id.to_string(),
            ip,
            prefix_len: net.subnet.prefix_len(),
            ifname: ifname.to_string(),
            host_veth,
            mac: mac_for_ip(ip),
        };
        match self.attach_inner(net, netns, &att).await {
            Ok(()) => {
                tracing::info!(container = %att.container_id, vni = att.vni, ip = %att.ip,
                    ifname = %att.ifname, veth = %att.host_veth, "attached container to the overlay");
                Ok(att)
            }
            Err(err) => {
                tracing::warn!(container = %att.container_id, vni = att.vni, error = %err,
                    "overlay attach failed; rolling back");
                if let Err(e) = self.delete_veth(&att).await {
                    tracing::warn!(container = %att.container_id, error = %e, "rollback incomplete");
                }
                Err(err)
            }
        }
    }

    async fn attach_inner(
        &self,
        net: &OverlayNetwork,
        netns: &Path,
        att: &OverlayAttachment,
    ) -> Result<(), NetworkError> {
        let ns = open_netns(netns)?;
        let mtu = self.ensure_network(net).await?;
        let nl = Netlink::open_in(&self.netns_path(net.vni), false).await?;
        let br_name = bridge_name(&self.inner.tag, net.vni);
        let br = nl
            .link_index(&br_name)
            .await?
            .ok_or(NetworkError::OverlayMissing(net.vni))?;
        if nl.delete_link(&att.host_veth).await? {
            tracing::debug!(veth = %att.host_veth, "deleted a stale overlay veth");
        }
        // The container end is created directly inside the container's namespace.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(att.ifname.clone())
            .address(mac_bytes_for_ip(att.ip).to_vec())
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(att.host_veth.clone())
            .mtu(mtu)
            .controller(br)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match nl.handle.link().add(veth).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {
                return Err(NetworkError::IfnameExists {
                    netns: netns.to_path_buf(),
                    ifname: att.ifname.clone(),
                })
            }
            Err(e) => {
                return Err(NetworkError::netlink(
                    format!("create veth {} into {}", att.host_veth, netns.display()),
                    e,
                ))
            }
        }
        drop(ns);
        let (ifname, ip, prefix_len) = (att.ifname.clone(), att.ip, att.prefix_len);
        run_in_netns(netns, move |handle| {
            configure_container_end(handle, ifname, ip, prefix_len)
        })
        .await?;
        let host_idx = nl.link_index(&att.host_veth).await?.ok_or_else(|| {
            NetworkError::io(
                format!("find veth {} (did the container exit?)", att.host_veth),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        link_up(&nl.handle, host_idx, &att.host_veth).await
    }

    /// Deletes an attachment's veth from its network's namespace, if both are still there.
    async fn delete_veth(&self, att: &OverlayAttachment) -> Result<bool, NetworkError> {
        let ns_path = self.netns_path(att.vni);
        if !is_netns(&ns_path) {
            return Ok(false);
        }
        Netlink::open_in(&ns_path, false)
            .await?
            .delete_link(&att.host_veth)
            .await
    }

    /// Takes a container off its overlay network: deletes the veth (and with it the
    /// container's interface) if still there. Idempotent.
    pub async fn detach(&self, att: &OverlayAttachment) -> Result<(), NetworkError> {
        if !is_overlay_veth(&att.host_veth) {
            return Err(NetworkError::InvalidOverlay(format!(
                "{:?} is not an overlay veth name (rv + 7 hex): pass the attachment attach returned",
                att.host_veth
            )));
        }
        validate_vni(att.vni)?;
        if self.delete_veth(att).await? {
            tracing::info!(container = %att.container_id, vni = att.vni, "detached container from the overlay");
        }
        Ok(())
    }

    /// Reconciles the kernel against the FULL desired set of remote peers of network `vni`:
    /// per peer a permanent FDB entry MAC → VTEP (`NTF_SELF`) and a permanent neighbour entry
    /// IP → MAC on the VXLAN device, written with replace semantics; entries of that device no
    /// peer needs are deleted (only `NTF_SELF` FDB entries with an IPv4 destination and a
    /// unicast MAC, and permanent IPv4 neighbour entries; the kernel's other entries are left
    /// alone). Reads the current entries with netlink dumps filtered by the device, plans with
    /// [`diff_peers`](crate::diff_peers) (duplicate IPs in `peers`: the last wins), and applies
    /// the plan (writes first, then deletes). Returns what it changed. `peers` are the REMOTE
    /// endpoints only (local containers are on the bridge already); run one reconciliation per
    /// network at a time.
    pub async fn set_peers(&self, vni: u32, peers: &[Peer]) -> Result<PeerChanges, NetworkError> {
        validate_vni(vni)?;
        let vx_name = vxlan_name(&self.inner.tag, vni);
        let ns_path = self.netns_path(vni);
        if !is_netns(&ns_path) {
            return Err(NetworkError::OverlayMissing(vni));
        }
        // Strict checking makes the kernel filter the FDB dump by device.
        let nl = Netlink::open_in(&ns_path, true).await?;
        let vx = nl
            .link_index(&vx_name)
            .await?
            .ok_or(NetworkError::OverlayMissing(vni))?;
        let fdb = dump_fdb(&nl.handle, vx).await?;
        let neigh = dump_neigh(&nl.handle, vx).await?;
        let current: Vec<FdbEntry> = fdb.iter().map(|(e, _)| *e).collect();
        let plan = diff_peers(peers, &current, &neigh);
        let h = &nl.handle;
        for e in &plan.add_fdb {
            h.neighbours()
                .add_bridge(vx, &e.mac)
                .destination(IpAddr::V4(e.dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    NetworkError::netlink(
                        format!(
                            "add fdb entry {} -> {} on {vx_name}",
                            fmt_mac(&e.mac),
                            e.dst
                        ),
                        err,
                    )
                })?;
        }
        for e in &plan.add_neigh {
            h.neighbours()
                .add(vx, IpAddr::V4(e.ip))
                .link_layer_address(&e.mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|err| {
                    NetworkError::netlink(
                        format!("add neighbour {} -> {} on {vx_name}", e.ip, fmt_mac(&e.mac)),
                        err,
                    )
                })?;
        }
        for e in &plan.del_neigh {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Inet;
            msg.header.ifindex = vx;
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    e.ip,
                )));
            ignore_missing(
                h.neighbours().del(msg).execute().await,
                format!("delete neighbour {} on {vx_name}", e.ip),
            )?;
        }
        for e in &plan.del_fdb {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Bridge;
            msg.header.ifindex = vx;
            msg.header.flags = NeighbourFlags::Own;
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
            msg.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    e.dst,
                )));
            // A remote with a non-default port, VNI or interface is only found with them.
            if let Some((_, extra)) = fdb.iter().find(|(f, _)| f == e) {
                msg.attributes.extend(extra.iter().cloned());
            }
            ignore_missing(
                h.neighbours().del(msg).execute().await,
                format!(
                    "delete fdb entry {} -> {} on {vx_name}",
                    fmt_mac(&e.mac),
                    e.dst
                ),
            )?;
        }
        let changes = plan.changes();
        if changes.is_empty() {
            tracing::debug!(vni, peers = peers.len(), "overlay peers in sync");
        } else {
            tracing::info!(
                vni,
                peers = peers.len(),
                added = changes.added,
                replaced = changes.replaced,
                removed = changes.removed,
                "overlay peers reconciled"
            );
        }
        Ok(changes)
    }

    /// Removes network `vni` from this host: the veths still on its bridge, the VXLAN device
    /// and the bridge (deleted one by one, so the VNI is free again at once), then its
    /// namespace. Idempotent.
    pub async fn remove_network(&self, vni: u32) -> Result<(), NetworkError> {
        validate_vni(vni)?;
        let mut ready = self.inner.ready.lock().await;
        let tag = &self.inner.tag;
        let (br_name, vx_name) = (bridge_name(tag, vni), vxlan_name(tag, vni));
        let ns_path = self.netns_path(vni);
        if is_netns(&ns_path) {
            let nl = Netlink::open_in(&ns_path, false).await?;
            if let Some(br) = nl.link_index(&br_name).await? {
                for (name, _) in dump_links(&nl.handle)
                    .await?
                    .into_iter()
                    .filter(|(name, ctrl)| *ctrl == Some(br) && is_overlay_veth(name))
                {
                    nl.delete_link(&name).await?;
                }
            }
            nl.delete_link(&vx_name).await?;
            nl.delete_link(&br_name).await?;
        }
        remove_netns(&ns_path)?;
        ready.remove(&vni);
        tracing::info!(vni, bridge = %br_name, "overlay network removed");
        Ok(())
    }

    /// The VNIs that have a namespace file here now, ascending: for cleaning up after an agent
    /// restart.
    pub async fn networks(&self) -> Result<Vec<u32>, NetworkError> {
        let dir = &self.inner.ns_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetworkError::io(format!("list {}", dir.display()), e)),
        };
        let mut vnis: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|v| validate_vni(*v).is_ok())
            .collect();
        vnis.sort_unstable();
        Ok(vnis)
    }
}

/// Whether `path` is a network namespace file (a bind mount of one).
fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// The sysctls of an overlay namespace: bridged frames skip iptables (nothing there to
/// filter), and no IPv6 chatter goes over the tunnel. Missing files (br_netfilter not
/// loaded) are fine.
const OVERLAY_NS_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/bridge/bridge-nf-call-iptables", "0"),
    ("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "0"),
    ("/proc/sys/net/bridge/bridge-nf-call-arptables", "0"),
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
];

/// Makes the namespace at `path` (in `dir`) with [`OVERLAY_NS_SYSCTLS`] unless it exists; a
/// stale file there (not a namespace) is replaced.
async fn ensure_overlay_netns(dir: &Path, path: &Path) -> Result<(), NetworkError> {
    if is_netns(path) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| NetworkError::io(format!("create {}", dir.display()), e))?;
    remove_netns(path)?;
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        create_netns_with(&owned, || {
            for (file, value) in OVERLAY_NS_SYSCTLS {
                match std::fs::write(file, value) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(std::io::Error::new(e.kind(), format!("write {file}: {e}")))
                    }
                }
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| NetworkError::io("create an overlay namespace", std::io::Error::other(e)))??;
    tracing::info!(netns = %path.display(), "created an overlay network namespace");
    Ok(())
}

/// The MTU of the interface holding `ip` in the caller's namespace.
pub async fn underlay_mtu(ip: Ipv4Addr) -> Result<u32, NetworkError> {
    let nl = Netlink::open()?;
    Ok(find_underlay(&nl.handle, ip).await?.1)
}

/// The index and MTU of the interface that holds `ip`.
async fn find_underlay(handle: &Handle, ip: Ipv4Addr) -> Result<(u32, u32), NetworkError> {
    let mut req = handle.address().get().set_address_filter(IpAddr::V4(ip));
    req.message_mut().header.family = AddressFamily::Inet;
    let index = req
        .execute()
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink(format!("look up the interface holding {ip}"), e))?
        .map(|m| m.header.index)
        .ok_or(NetworkError::VtepNotLocal(ip))?;
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(|e| NetworkError::netlink(format!("look up link {index}"), e))?
        .ok_or(NetworkError::VtepNotLocal(ip))?;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .ok_or_else(|| {
            NetworkError::io(
                format!("read the MTU of the interface holding {ip}"),
                std::io::ErrorKind::InvalidData.into(),
            )
        })?;
    Ok((index, mtu))
}

/// Makes sure bridge `name` exists with `mtu` and is up; returns its index.
async fn ensure_bridge(nl: &Netlink, name: &str, mtu: u32) -> Result<u32, NetworkError> {
    if nl.link_index(name).await?.is_none() {
        tracing::info!(bridge = name, mtu, "creating an overlay bridge");
        match nl
            .handle
            .link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {}
            Err(e) => return Err(NetworkError::netlink(format!("create bridge {name}"), e)),
        }
    }
    let idx = nl.link_index(name).await?.ok_or_else(|| {
        NetworkError::io(
            format!("find bridge {name} after creating it"),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    nl.handle
        .link()
        .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| {
            NetworkError::netlink(format!("set mtu {mtu} on {name} and bring it up"), e)
        })?;
    Ok(idx)
}

/// Makes sure VXLAN device `name` exists in the overlay namespace (`ns_nl`, file `ns_path`)
/// with the network's settings (recreating one whose settings differ); returns its index
/// there. It is created through `host_nl` straight into that namespace, so its socket and
/// parent interface (`underlay`) are the host's.
async fn ensure_vxlan(
    host_nl: &Netlink,
    ns_nl: &Netlink,
    ns_path: &Path,
    name: &str,
    net: &OverlayNetwork,
    underlay: u32,
    mtu: u32,
) -> Result<u32, NetworkError> {
    if let Some(link) = get_link(&ns_nl.handle, name).await? {
        let want = vxlan_settings(net, underlay);
        match link_vxlan_settings(&link) {
            Some(have) if have == want => return Ok(link.header.index),
            have => {
                tracing::warn!(
                    vxlan = name,
                    ?have,
                    ?want,
                    "recreating a vxlan device whose settings differ"
                );
                ns_nl.delete_link(name).await?;
            }
        }
    }
    tracing::info!(vxlan = name, vni = net.vni, local = %net.local_ip, port = net.port, mtu,
        "creating an overlay vxlan device");
    let ns = open_netns(ns_path)?;
    let msg = LinkVxlan::new(name, net.vni)
        .dev(underlay)
        .local(net.local_ip)
        .port(net.port)
        .learning(false)
        .proxy(true)
        .mtu(mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    match host_nl.handle.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if is_errno(&e, EEXIST) => {}
        Err(e) => {
            return Err(NetworkError::netlink(
                format!(
                    "create vxlan {name} (vni {}, local {}, port {}; is another device using this vni and port?)",
                    net.vni, net.local_ip, net.port
                ),
                e,
            ))
        }
    }
    ns_nl.link_index(name).await?.ok_or_else(|| {
        NetworkError::io(
            format!("find vxlan {name} after creating it"),
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

/// The VXLAN settings the overlay relies on, as compared with an existing device.
#[derive(Debug, PartialEq, Eq)]
struct VxlanSettings {
    vni: Option<u32>,
    local: Option<Ipv4Addr>,
    port: Option<u16>,
    dev: Option<u32>,
    learning: Option<bool>,
    proxy: Option<bool>,
}

fn vxlan_settings(net: &OverlayNetwork, underlay: u32) -> VxlanSettings {
    VxlanSettings {
        vni: Some(net.vni),
        local: Some(net.local_ip),
        port: Some(net.port),
        dev: Some(underlay),
        learning: Some(false),
        proxy: Some(true),
    }
}

/// The settings of a link if it is a VXLAN device.
fn link_vxlan_settings(link: &LinkMessage) -> Option<VxlanSettings> {
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    if !infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return None;
    }
    let mut s = VxlanSettings {
        vni: None,
        local: None,
        port: None,
        dev: None,
        learning: None,
        proxy: None,
    };
    for info in infos {
        if let LinkInfo::Data(InfoData::Vxlan(attrs)) = info {
            for a in attrs {
                match a {
                    InfoVxlan::Id(v) => s.vni = Some(*v),
                    InfoVxlan::Local(v) => s.local = Some(*v),
                    InfoVxlan::Port(v) => s.port = Some(*v),
                    InfoVxlan::Link(v) => s.dev = Some(*v),
                    InfoVxlan::Learning(v) => s.learning = Some(*v),
                    InfoVxlan::Proxy(v) => s.proxy = Some(*v),
                    _ => {}
                }
            }
        }
    }
    Some(s)
}

/// The link named `name` with its details, or `None`.
async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, crate::netns::ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("look up link {name}"), e)),
    }
}

/// Every link's name and controller (bridge) index.
async fn dump_links(handle: &Handle) -> Result<Vec<(String, Option<u32>)>, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("list links", e))?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            let ctrl = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(c) => Some(*c),
                _ => None,
            });
            Some((name, ctrl))
        })
        .collect())
}

/// The VXLAN device's own FDB entries that can be peers': `NTF_SELF`, an IPv4 destination and a
/// 6-byte MAC; each with the attributes (port, VNI, interface) that identify its remote when
/// deleting. `handle` must be strict, so the kernel dumps only this device's entries.
async fn dump_fdb(
    handle: &Handle,
    vx: u32,
) -> Result<Vec<(FdbEntry, Vec<NeighbourAttribute>)>, NetworkError> {
    let mut req = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge);
    req.message_mut().header.ifindex = vx;
    let msgs: Vec<NeighbourMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink(format!("dump the fdb of link {vx}"), e))?;
    let mut out = Vec::new();
    for m in msgs {
        // The bridge's entries for this port (the dump has them too) come without NTF_SELF.
        if m.header.ifindex != vx
            || !m.header.flags.contains(NeighbourFlags::Own)
            || m.header.flags.contains(NeighbourFlags::Controller)
        {
            continue;
        }
        let mut mac = None;
        let mut dst = None;
        let mut extra = Vec::new();
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    dst = <[u8; 4]>::try_from(&b[..]).ok().map(Ipv4Addr::from)
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => dst = Some(*v),
                NeighbourAttribute::Port(_)
                | NeighbourAttribute::Vni(_)
                | NeighbourAttribute::IfIndex(_) => extra.push(a.clone()),
                _ => {}
            }
        }
        if let (Some(mac), Some(dst)) = (mac, dst) {
            out.push((FdbEntry { mac, dst }, extra));
        }
    }
    Ok(out)
}

/// The VXLAN device's permanent IPv4 neighbour entries.
async fn dump_neigh(handle: &Handle, vx: u32) -> Result<Vec<NeighEntry>, NetworkError> {
    let mut req = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet);
    req.message_mut()
        .attributes
        .push(NeighbourAttribute::IfIndex(vx));
    let msgs: Vec<NeighbourMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink(format!("dump the neighbours of link {vx}"), e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.ifindex == vx && m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
                _ => None,
            })?;
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(&l[..]).ok(),
                _ => None,
            })?;
            Some(NeighEntry { ip, mac })
        })
        .collect())
}

/// Inside the container namespace: address the interface, bring it and `lo` up. No routes
/// beyond the subnet's own. Idempotent.
async fn configure_container_end(
    handle: Handle,
    ifname: String,
    ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetworkError> {
    let idx = link_index(&handle, &ifname).await?.ok_or_else(|| {
        NetworkError::io(
            format!("find {ifname} in the container namespace"),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    handle
        .address()
        .add(idx, ip.into(), prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("add {ip}/{prefix_len} to {ifname}"), e))?;
    link_up(&handle, idx, &ifname).await?;
    loopback_up(&handle).await
}

fn ignore_missing(r: Result<(), rtnetlink::Error>, what: String) -> Result<(), NetworkError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, ENOENT) => Ok(()),
        Err(e) => Err(NetworkError::netlink(what, e)),
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks a device tag: exactly 4 characters from `0-9a-f`.
fn validate_tag(tag: &str) -> Result<(), NetworkError> {
    if tag.len() == 4 && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(NetworkError::InvalidOverlay(format!(
            "device tag {tag:?} must be exactly 4 characters from 0-9 a-f"
        )))
    }
}

fn validate_vni(vni: u32) -> Result<(), NetworkError> {
    if (1..=MAX_VNI).contains(&vni) {
        Ok(())
    } else {
        Err(NetworkError::InvalidOverlay(format!(
            "vni {vni} is out of range: use 1 to {MAX_VNI}"
        )))
    }
}

/// Checks what can be checked without IO.
fn validate_network(net: &OverlayNetwork) -> Result<(), NetworkError> {
    validate_vni(net.vni)?;
    if net.subnet.prefix_len() > 30 {
        return Err(NetworkError::InvalidOverlay(format!(
            "subnet {} is too small: use a prefix of /30 or shorter",
            net.subnet
        )));
    }
    if net.port == 0 {
        return Err(NetworkError::InvalidOverlay(format!(
            "vxlan port 0 for vni {}: use {VXLAN_PORT} unless every node uses another port",
            net.vni
        )));
    }
    if net.mtu != 0 && !(MIN_MTU..=65535).contains(&net.mtu) {
        return Err(NetworkError::InvalidOverlay(format!(
            "mtu {} must be 0 (automatic) or between {MIN_MTU} and 65535",
            net.mtu
        )));
    }
    if net.local_ip.is_unspecified() || net.local_ip.is_multicast() || net.local_ip.is_broadcast() {
        return Err(NetworkError::InvalidOverlay(format!(
            "local_ip {} can't be a vtep: use this node's own unicast underlay address",
            net.local_ip
        )));
    }
    Ok(())
}

/// The overlay MTU: `configured`, or the underlay's minus [`VXLAN_OVERHEAD`] when 0. A
/// configured MTU must fit in the underlay.
fn overlay_mtu(configured: u32, underlay: u32) -> Result<u32, NetworkError> {
    let max = underlay.saturating_sub(VXLAN_OVERHEAD);
    let mtu = if configured == 0 { max } else { configured };
    if mtu > max {
        return Err(NetworkError::InvalidOverlay(format!(
            "mtu {mtu} does not fit the underlay interface (mtu {underlay}): use at most {max}, or 0 for automatic"
        )));
    }
    if mtu < MIN_MTU {
        return Err(NetworkError::InvalidOverlay(format!(
            "the underlay interface's mtu {underlay} leaves only {mtu} for the overlay: raise the underlay mtu to at least {}",
            MIN_MTU + VXLAN_OVERHEAD
        )));
    }
    Ok(mtu)
}

/// Checks a container interface name: 1-15 characters from `A-Za-z0-9-_.`, not `lo`.
fn validate_ifname(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "lo"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidOverlay(format!(
            "interface name {name:?} must be 1-15 characters from A-Z a-z 0-9 - _ . (like eth1), and not lo"
        )))
    }
}

/// Checks that `ip` is a host address of `subnet`.
fn validate_endpoint(subnet: Ipv4Net, ip: Ipv4Addr) -> Result<(), NetworkError> {
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(NetworkError::InvalidOverlay(format!(
            "address {ip} is not a host address of subnet {}: pick one inside it",
            subnet.trunc()
        )));
    }
    Ok(())
}

fn bridge_name(tag: &str, vni: u32) -> String {
    format!("rb{tag}{vni:06x}")
}

fn vxlan_name(tag: &str, vni: u32) -> String {
    format!("rx{tag}{vni:06x}")
}

/// `rv<7 hex>` from a hash of (tag, container id, vni).
fn veth_name(tag: &str, container_id: &str, vni: u32) -> String {
    let key = format!("{tag}\0{container_id}\0{vni}");
    format!("rv{:07x}", fnv1a64(key.as_bytes()) >> 36)
}

fn is_overlay_veth(name: &str) -> bool {
    name.len() == 9
        && name.starts_with("rv")
        && name[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> OverlayNetwork {
        OverlayNetwork::new(
            4100,
            "10.100.0.0/24".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        )
    }

    #[test]
    fn device_names() {
        assert_eq!(bridge_name("ab12", 4100), "rbab12001004");
        assert_eq!(vxlan_name("ab12", MAX_VNI), "rxab12ffffff");
        assert!(bridge_name("ab12", MAX_VNI).len() <= IFNAME_MAX);
        let v = veth_name("ab12", "ctr-1", 4100);
        assert_eq!(v.len(), 9);
        assert!(is_overlay_veth(&v), "{v}");
        assert_eq!(v, veth_name("ab12", "ctr-1", 4100));
        assert_ne!(v, veth_name("ab12", "ctr-1", 4101));
        assert_ne!(v, veth_name("ab12", "ctr-2", 4100));
        assert_ne!(v, veth_name("cd34", "ctr-1", 4100));
        assert!(!is_overlay_veth("veth1234567") && !is_overlay_veth("rv12345g7"));
    }

    #[test]
    fn tags() {
        assert!(validate_tag("0a9f").is_ok());
        for bad in ["", "abc", "abcde", "ABCD", "wxyz", "ab-1"] {
            let err = validate_tag(bad).unwrap_err().to_string();
            assert!(err.contains("device tag"), "{err}");
        }
        assert!(Overlay::new("zz", "/x").is_err());
        let ov = Overlay::new("00ff", "/var/lib/rswarm/overlay").unwrap();
        assert_eq!(ov.vxlan_name(1), "rx00ff000001");
        assert_eq!(
            ov.netns_path(4096),
            Path::new("/var/lib/rswarm/overlay/4096")
        );
    }

    #[test]
    fn network_validation() {
        assert!(validate_network(&net()).is_ok());
        let mut n = net();
        n.vni = 0;
        assert!(validate_network(&n)
            .unwrap_err()
            .to_string()
            .contains("vni 0"));
        n.vni = MAX_VNI + 1;
        assert!(validate_network(&n).is_err());
        let mut n = net();
        n.subnet = "10.0.0.0/31".parse().unwrap();
        assert!(validate_network(&n).is_err());
        let mut n = net();
        n.port = 0;
        assert!(validate_network(&n).is_err());
        let mut n = net();
        n.mtu = 100;
        assert!(validate_network(&n).is_err());
        n.mtu = 1400;
        assert!(validate_network(&n).is_ok());
        let mut n = net();
        n.local_ip = Ipv4Addr::UNSPECIFIED;
        assert!(validate_network(&n).is_err());
    }

    #[test]
    fn mtu_choice() {
        assert_eq!(overlay_mtu(0, 1500).unwrap(), 1450);
        assert_eq!(overlay_mtu(0, 9000).unwrap(), 8950);
        assert_eq!(overlay_mtu(1400, 1500).unwrap(), 1400);
        assert_eq!(overlay_mtu(1450, 1500).unwrap(), 1450);
        let err = overlay_mtu(1451, 1500).unwrap_err().to_string();
        assert!(err.contains("use at most 1450"), "{err}");
        assert!(overlay_mtu(0, 600).is_err());
        assert!(overlay_mtu(0, 0).is_err());
    }

    #[test]
    fn interface_names_and_endpoints() {
        assert!(validate_ifname("eth1").is_ok());
        for bad in ["", "lo", "a b", "0123456789abcdef", "x/y"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        let subnet: Ipv4Net = "10.100.0.0/24".parse().unwrap();
        assert!(validate_endpoint(subnet, "10.100.0.2".parse().unwrap()).is_ok());
        for bad in ["10.100.0.0", "10.100.0.255", "10.101.0.2"] {
            let err = validate_endpoint(subnet, bad.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("not a host address"), "{err}");
        }
    }

    #[test]
    fn vxlan_settings_compare() {
        let want = vxlan_settings(&net(), 7);
        let link = LinkVxlan::new("rx0000001004", 4100)
            .dev(7)
            .local("192.0.2.1".parse().unwrap())
            .port(VXLAN_PORT)
            .learning(false)
            .proxy(true)
            .build();
        assert_eq!(link_vxlan_settings(&link), Some(want));
        let other = LinkVxlan::new("rx0000001004", 4100)
            .dev(7)
            .local("192.0.2.1".parse().unwrap())
            .port(VXLAN_PORT)
            .learning(true)
            .proxy(true)
            .build();
        assert_ne!(link_vxlan_settings(&other), Some(vxlan_settings(&net(), 7)));
        assert_eq!(link_vxlan_settings(&LinkBridge::new("b").build()), None);
    }

    #[test]
    fn attachment_round_trips_through_json() {
        let att = OverlayAttachment {
            vni: 4100,
            container_id: "c1".into(),
            ip: "10.100.0.2".parse().unwrap(),
            prefix_len: 24,
            ifname: "eth1".into(),
            host_veth: veth_name("ab12", "c1", 4100),
            mac: mac_for_ip("10.100.0.2".parse().unwrap()),
        };
        let json = serde_json::to_string(&att).unwrap();
        assert_eq!(
            serde_json::from_str::<OverlayAttachment>(&json).unwrap(),
            att
        );
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(fmt_mac(&[2, 0x42, 10, 0, 0, 2]), "02:42:0a:00:00:02");
    }
}
