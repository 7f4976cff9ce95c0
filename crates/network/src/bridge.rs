//! The node's bridge: attach, detach and restore containers (IO around the pure pieces).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::config::{fnv1a64, BridgeConfig};
use crate::error::NetworkError;
use crate::ipam::{allocate_ip, mac_bytes_for_ip, mac_for_ip};
use crate::iptables;
use crate::mode::{PortMapping, Protocol};
use crate::netns::{
    configure_container_side, is_errno, link_up, open_netns, run_in_netns, ContainerSide, Netlink,
    EEXIST,
};
use crate::ports::{probe_bind, resolve_ports};
use crate::rules::{base_rules, container_rules, is_stale, own_chains, Placement, Table};

/// The interface name a container sees.
const CONTAINER_IFNAME: &str = "eth0";

/// What [`Bridge::attach`] needs to know about a container.
#[derive(Clone, Debug)]
pub struct AttachRequest {
    /// The container's id; also the comment on its iptables rules.
    pub container_id: String,
    /// Its network namespace, e.g. `/proc/<pid>/ns/net` of the created container's init.
    pub netns: PathBuf,
    /// Ports to publish; host port 0 = pick a free ephemeral port.
    pub ports: Vec<PortMapping>,
    /// Addresses of the caller's other live containers.
    pub used_ips: Vec<Ipv4Addr>,
    /// Host ports published by the caller's other live containers.
    pub used_host_ports: Vec<(Protocol, u16)>,
}

/// A container's place on the bridge, as the caller should record it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The container's id.
    pub container_id: String,
    /// Its address on the bridge subnet.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// The default gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// The MAC address of its `eth0`, derived from `ip`.
    pub mac: String,
    /// The host end of its veth pair.
    pub host_veth: String,
    /// Its published ports, with the host ports resolved.
    pub ports: Vec<PortMapping>,
}

/// The node's bridge network. Cheap to clone; all clones share state. Operates in the network
/// namespace of the thread that calls it.
#[derive(Clone, Debug)]
pub struct Bridge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BridgeConfig,
    gateway: Ipv4Addr,
    /// Whether the bridge, sysctls, chains and base rules were set up; held while doing so.
    base_ready: tokio::sync::Mutex<bool>,
    /// Set once the base was made (the lock-free fast path of attaches).
    base_done: std::sync::atomic::AtomicBool,
    /// What attachments in progress or done by this process hold, by container id, so concurrent
    /// attaches never pick the same address, port or veth name.
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Clone, Debug, Default)]
struct Held {
    ip: Option<Ipv4Addr>,
    ports: Vec<(Protocol, u16)>,
    veth: Option<String>,
}

impl Held {
    fn of(att: &Attachment) -> Self {
        Held {
            ip: Some(att.ip),
            ports: att
                .ports
                .iter()
                .map(|p| (p.protocol, p.host_port))
                .collect(),
            veth: Some(att.host_veth.clone()),
        }
    }
}

impl Bridge {
    /// Checks `config`; creates nothing yet (the first [`attach`](Self::attach) or
    /// [`restore`](Self::restore) does).
    pub async fn new(config: BridgeConfig) -> Result<Bridge, NetworkError> {
        let gateway = config.validate()?;
        Ok(Bridge {
            inner: Arc::new(Inner {
                config,
                gateway,
                base_ready: tokio::sync::Mutex::new(false),
                base_done: std::sync::atomic::AtomicBool::new(false),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }

    /// The gateway address (the bridge's own address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// Puts a container on the bridge: ensures the bridge and base rules, picks the lowest free
    /// address and the host ports, creates the veth pair (the container end as `eth0` in
    /// `req.netns`), addresses it, routes through the gateway and adds DNAT rules for the
    /// published ports. On failure everything done so far is undone.
    pub async fn attach(&self, req: AttachRequest) -> Result<Attachment, NetworkError> {
        validate_container_id(&req.container_id)?;
        let (ip, ports, host_veth) = self.reserve(&req)?;
        match self.attach_reserved(&req, ip, ports, &host_veth).await {
            Ok(att) => {
                tracing::info!(container = %att.container_id, ip = %att.ip, veth = %att.host_veth,
                    ports = ?att.ports, "attached container to the bridge");
                Ok(att)
            }
            Err(err) => {
                tracing::warn!(container = %req.container_id, error = %err, "attach failed; rolling back");
                if let Err(e) = self.remove(&req.container_id, &host_veth).await {
                    tracing::warn!(container = %req.container_id, error = %e, "rollback incomplete");
                }
                self.release(&req.container_id);
                Err(err)
            }
        }
    }

    /// Makes the bridge, its sysctls, chains and base rules now rather than at the first
    /// attach. Idempotent.
    pub async fn prepare(&self) -> Result<(), NetworkError> {
        self.ensure_base(false).await
    }

    /// Takes a container off the bridge: deletes the rules carrying its id and its host veth if
    /// still there, and forgets what this process held for it. Idempotent.
    pub async fn detach(&self, att: &Attachment) -> Result<(), NetworkError> {
        validate_container_id(&att.container_id)?;
        self.remove(&att.container_id, &att.host_veth).await?;
        self.release(&att.container_id);
        tracing::info!(container = %att.container_id, "detached container from the bridge");
        Ok(())
    }

    /// After an agent restart: ensures the bridge and base rules, re-adds missing rules of each
    /// live attachment, deletes rules in our chains that belong to no live attachment, and takes
    /// `live` as what is held. Idempotent.
    pub async fn restore(&self, live: &[Attachment]) -> Result<(), NetworkError> {
        for att in live {
            validate_container_id(&att.container_id)?;
        }
        self.ensure_base(true).await?;
        let cfg = &self.inner.config;
        for att in live {
            for rule in container_rules(cfg, &att.container_id, att.ip, &att.ports) {
                iptables::ensure_rule(&rule, Placement::Append).await?;
            }
        }
        let keep: Vec<&str> = live.iter().map(|a| a.container_id.as_str()).collect();
        for (table, chain) in own_chains(cfg) {
            let n = iptables::delete_matching(table, &chain, |r| is_stale(r, &keep)).await?;
            if n > 0 {
                tracing::info!(chain = %chain, deleted = n, "removed stale iptables rules");
            }
        }
        let mut held = self.held();
        held.clear();
        held.extend(live.iter().map(|a| (a.container_id.clone(), Held::of(a))));
        Ok(())
    }

    /// Removes everything the bridge set up: base rules, our chains (with every container
    /// rule) and the bridge device. Containers still attached lose their network.
    pub async fn teardown(&self) -> Result<(), NetworkError> {
        let mut ready = self.inner.base_ready.lock().await;
        let cfg = &self.inner.config;
        for (rule, _) in base_rules(cfg) {
            iptables::delete_rule(&rule).await?;
        }
        for (table, chain) in own_chains(cfg) {
            iptables::delete_chain(table, &chain).await?;
        }
        Netlink::open()?.delete_link(&cfg.bridge_name).await?;
        *ready = false;
        self.held().clear();
        tracing::info!(bridge = %cfg.bridge_name, "bridge torn down");
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Picks the address, host ports and veth name, and holds them for the container.
    fn reserve(
        &self,
        req: &AttachRequest,
    ) -> Result<(Ipv4Addr, Vec<PortMapping>, String), NetworkError> {
        let mut held = self.held();
        if held.contains_key(&req.container_id) {
            return Err(NetworkError::AlreadyAttached(req.container_id.clone()));
        }
        let mut used_ips = req.used_ips.clone();
        used_ips.extend(held.values().filter_map(|h| h.ip));
        let ip = allocate_ip(self.inner.config.subnet, &used_ips)?;
        let mut taken = req.used_host_ports.clone();
        taken.extend(held.values().flat_map(|h| h.ports.iter().copied()));
        let ports = resolve_ports(&req.ports, &taken, probe_bind)?;
        let veths: Vec<&str> = held.values().filter_map(|h| h.veth.as_deref()).collect();
        let veth = pick_veth_name(&req.container_id, &veths);
        held.insert(
            req.container_id.clone(),
            Held {
                ip: Some(ip),
                ports: ports.iter().map(|p| (p.protocol, p.host_port)).collect(),
                veth: Some(veth.clone()),
            },
        );
        Ok((ip, ports, veth))
    }

    fn release(&self, container_id: &str) {
        self.held().remove(container_id);
    }

    async fn attach_reserved(
        &self,
        req: &AttachRequest,
        ip: Ipv4Addr,
        ports: Vec<PortMapping>,
        host_veth: &str,
    ) -> Result<Attachment, NetworkError> {
        let cfg = &self.inner.config;
        let ns = open_netns(&req.netns)?;
        let nl = Netlink::open()?;
        // Once the base is made, attaches only look the bridge up (no lock, so concurrent
        // attaches do not queue); a bridge that went away is made again.
        let mut bridge_idx = None;
        if self
            .inner
            .base_done
            .load(std::sync::atomic::Ordering::Acquire)
        {
            bridge_idx = nl.link_index(&cfg.bridge_name).await?;
        }
        let bridge_idx = match bridge_idx {
            Some(idx) => idx,
            None => {
                self.ensure_base(false).await?;
                nl.link_index(&cfg.bridge_name).await?.ok_or_else(|| {
                    NetworkError::io(
                        format!("find bridge {}", cfg.bridge_name),
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?
            }
        };
        if nl.delete_link(host_veth).await? {
            tracing::debug!(veth = host_veth, "deleted a stale veth");
        }
        // The container end is created directly inside the container's namespace, as eth0.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(CONTAINER_IFNAME)
            .address(mac_bytes_for_ip(ip).to_vec())
            .mtu(cfg.mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_veth.to_string())
            .mtu(cfg.mtu)
            .controller(bridge_idx)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match nl.handle.link().add(veth).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, EEXIST) => {
                return Err(NetworkError::Eth0Exists(req.netns.clone()))
            }
            Err(e) => {
                return Err(NetworkError::netlink(
                    format!("create veth {host_veth} into {}", req.netns.display()),
                    e,
                ))
            }
        }
        drop(ns);
        let side = ContainerSide {
            ifname: CONTAINER_IFNAME.to_string(),
            ip,
            prefix_len: cfg.subnet.prefix_len(),
            gateway: self.inner.gateway,
        };
        run_in_netns(&req.netns, move |handle| {
            configure_container_side(handle, side)
        })
        .await?;
        let host_idx = nl.link_index(host_veth).await?.ok_or_else(|| {
            NetworkError::io(
                format!("find veth {host_veth} (did the container exit?)"),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        link_up(&nl.handle, host_idx, host_veth).await?;
        for rule in container_rules(cfg, &req.container_id, ip, &ports) {
            iptables::ensure_rule(&rule, Placement::Append).await?;
        }
        Ok(Attachment {
            container_id: req.container_id.clone(),
            ip,
            prefix_len: cfg.subnet.prefix_len(),
            gateway: self.inner.gateway,
            mac: mac_for_ip(ip),
            host_veth: host_veth.to_string(),
            ports,
        })
    }

    /// Deletes a container's rules and host veth (both may be gone already).
    async fn remove(&self, container_id: &str, host_veth: &str) -> Result<(), NetworkError> {
        for (table, chain) in own_chains(&self.inner.config) {
            iptables::delete_matching(table, &chain, |r| {
                r.comment.as_deref() == Some(container_id)
            })
            .await?;
        }
        Netlink::open()?.delete_link(host_veth).await?;
        Ok(())
    }

    /// Makes sure the bridge (up, with the gateway address), the sysctls, our chains and the
    /// base rules exist. Once done, later calls only check that the bridge still exists, unless
    /// `force`.
    async fn ensure_base(&self, force: bool) -> Result<(), NetworkError> {
        let mut ready = self.inner.base_ready.lock().await;
        let cfg = &self.inner.config;
        let nl = Netlink::open()?;
        if *ready && !force && nl.link_index(&cfg.bridge_name).await?.is_some() {
            return Ok(());
        }
        let idx = match nl.link_index(&cfg.bridge_name).await? {
            Some(idx) => idx,
            None => {
                tracing::info!(bridge = %cfg.bridge_name, subnet = %cfg.subnet, "creating the bridge");
                let msg = LinkBridge::new(&cfg.bridge_name).mtu(cfg.mtu).build();
                match nl.handle.link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if is_errno(&e, EEXIST) => {}
                    Err(e) => {
                        return Err(NetworkError::netlink(
                            format!("create bridge {}", cfg.bridge_name),
                            e,
                        ))
                    }
                }
                nl.link_index(&cfg.bridge_name).await?.ok_or_else(|| {
                    NetworkError::io(
                        format!("find bridge {} after creating it", cfg.bridge_name),
                        std::io::ErrorKind::NotFound.into(),
                    )
                })?
            }
        };
        nl.handle
            .address()
            .add(idx, self.inner.gateway.into(), cfg.subnet.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetworkError::netlink(
                    format!("add {} to {}", self.inner.gateway, cfg.bridge_name),
                    e,
                )
            })?;
        link_up(&nl.handle, idx, &cfg.bridge_name).await?;
        // /proc/sys/net follows the calling thread's network namespace.
        ensure_sysctl("/proc/sys/net/ipv4/ip_forward")?;
        ensure_sysctl(&format!(
            "/proc/sys/net/ipv4/conf/{}/route_localnet",
            cfg.bridge_name
        ))?;
        for (table, chain) in own_chains(cfg) {
            iptables::ensure_chain(table, &chain).await?;
        }
        let base = base_rules(cfg);
        for (rule, placement) in base.iter().filter(|(_, p)| *p == Placement::Append) {
            iptables::ensure_rule(rule, *placement).await?;
        }
        // Top rules are listed in final order; inserting each at 1 reverses, so go backwards.
        for (rule, placement) in base.iter().rev().filter(|(_, p)| *p == Placement::Top) {
            iptables::ensure_rule(rule, *placement).await?;
        }
        debug_assert!(own_chains(cfg).iter().any(|(t, _)| *t == Table::Nat));
        *ready = true;
        self.inner
            .base_done
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Writes `1` to a sysctl file unless it holds `1` already.
fn ensure_sysctl(path: &str) -> Result<(), NetworkError> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => return Ok(()),
        _ => {}
    }
    tracing::info!(sysctl = path, "setting to 1");
    std::fs::write(path, "1\n").map_err(|e| NetworkError::io(format!("write 1 to {path}"), e))
}

/// Container ids become iptables comments and log fields: keep them plain.
pub(crate) fn validate_container_id(id: &str) -> Result<(), NetworkError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidContainerId(id.to_string()))
    }
}

/// `veth<7 hex>` from a hash of the container id; on a clash with a name in use, the hash of
/// the id with a counter.
pub(crate) fn pick_veth_name(container_id: &str, in_use: &[&str]) -> String {
    (0u32..)
        .map(|n| veth_name(container_id, n))
        .find(|name| !in_use.contains(&name.as_str()))
        .unwrap_or_else(|| veth_name(container_id, 0))
}

fn veth_name(container_id: &str, attempt: u32) -> String {
    let mut bytes = container_id.as_bytes().to_vec();
    if attempt > 0 {
        bytes.extend_from_slice(format!("#{attempt}").as_bytes());
    }
    format!("veth{:07x}", fnv1a64(&bytes) >> 36)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(validate_container_id("abc-DEF_1.2").is_ok());
        assert!(validate_container_id(&"a".repeat(128)).is_ok());
        for bad in ["", "a b", "a\"b", "x;y", &"a".repeat(129)] {
            let err = validate_container_id(bad).unwrap_err();
            assert!(err.to_string().contains("invalid container id"));
        }
    }

    #[test]
    fn veth_names() {
        let a = pick_veth_name("c1", &[]);
        assert_eq!(a.len(), 11);
        assert!(a.starts_with("veth"));
        assert_eq!(a, pick_veth_name("c1", &[]));
        assert_ne!(a, pick_veth_name("c2", &[]));
        let b = pick_veth_name("c1", &[a.as_str()]);
        assert_ne!(a, b);
        assert_eq!(b.len(), 11);
    }
}
