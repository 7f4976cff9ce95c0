//! The node's side of overlay networks: keeps the kernel (each network's bridge and VXLAN device,
//! the FDB and neighbour entries of every remote endpoint) equal to the latest network table the
//! manager sent ([`NetworkTable`]: whole first, then changes merged into a whole table by
//! [`apply_table`]), and lets task runners find the networks their containers join.
//!
//! One task owns the reconciliation: it runs on every new table and every
//! [`RECONCILE_PERIOD`], against the full desired set, so entries an event missed (an agent
//! restart, a lost stream) are mended and stale ones removed. Devices of a network go when the
//! table no longer lists it and no container on the node uses it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rswarm_api::dispatcher::v1::dispatcher_client::DispatcherClient;
use rswarm_api::dispatcher::v1::{
    AttachNetworkRequest, DetachNetworkRequest, NetworkTable, NetworksRequest, NodeNetwork,
    SyncAttachmentsRequest,
};
use rswarm_api::types::v1::Task;
use rswarm_network::{OverlayNetwork, Peer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::engine::{ClusterAttachment, ClusterNetworks, Engine, OverlayRequest};
use crate::node::NodeContext;

/// How often the kernel is checked against the table even when nothing changed.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(30);
/// How long to wait before reopening a networks stream that ended within a live session.
const STREAM_RETRY: Duration = Duration::from_millis(200);

/// The latest table of a session, if one came.
pub type Table = Option<Arc<NetworkTable>>;

/// What task runners see: the latest table and this node's VTEP address.
#[derive(Clone)]
pub struct NetView {
    tables: watch::Receiver<Table>,
    local_ip: Option<Ipv4Addr>,
}

/// The reconciler, before it runs.
pub struct NetAgent {
    engine: Engine,
    tables: watch::Receiver<Table>,
    local_ip: Option<Ipv4Addr>,
}

/// Makes the reconciler and the runners' view of the tables the session sends into `tables`
/// (the node's, which its local API reads too).
pub fn channel(
    engine: Engine,
    advertise_addr: &str,
    tables: &watch::Sender<Table>,
) -> (NetAgent, NetView) {
    let local_ip = parse_ip(advertise_addr);
    if local_ip.is_none() {
        tracing::warn!(
            advertise_addr,
            "the node's advertise address is not an IPv4 address; it cannot join overlay networks"
        );
    }
    (
        NetAgent {
            engine,
            tables: tables.subscribe(),
            local_ip,
        },
        NetView {
            tables: tables.subscribe(),
            local_ip,
        },
    )
}

/// The IPv4 address in `ip` or `ip:port`.
fn parse_ip(addr: &str) -> Option<Ipv4Addr> {
    addr.parse::<Ipv4Addr>().ok().or_else(|| {
        addr.parse::<std::net::SocketAddr>()
            .ok()
            .and_then(|a| match a.ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            })
    })
}

fn overlay_network(n: &NodeNetwork, local_ip: Ipv4Addr, port: u16) -> Option<OverlayNetwork> {
    Some(OverlayNetwork {
        vni: n.vni,
        subnet: n.subnet.parse().ok()?,
        mtu: n.mtu,
        local_ip,
        port,
    })
}

fn port_of(t: &NetworkTable) -> u16 {
    u16::try_from(t.data_path_port)
        .ok()
        .filter(|p| *p != 0)
        .unwrap_or(4789)
}

/// The remote endpoints of `n` as FDB/neighbour peers (this node's own are local).
pub fn remote_peers(n: &NodeNetwork, local_ip: Ipv4Addr) -> Vec<Peer> {
    n.endpoints
        .iter()
        .filter_map(|e| {
            let ip = e.ip.parse().ok()?;
            let vtep: Ipv4Addr = e.node_addr.parse().ok()?;
            (vtep != local_ip).then_some(Peer { ip, vtep })
        })
        .collect()
}

impl NetView {
    /// The overlay requests for `task`'s container and whether all its networks are internal
    /// (then it gets no bridge, hence no way out). Waits up to `timeout` for a table that knows
    /// every network of the task (the table and the assignment come on separate streams).
    pub async fn overlays_for(
        &self,
        task: &Task,
        timeout: Duration,
    ) -> Result<(Vec<OverlayRequest>, bool), String> {
        if task.networks.is_empty() {
            return Ok((Vec::new(), false));
        }
        let local_ip = self.local_ip.ok_or_else(|| {
            "this node's advertise address is not an IPv4 address; overlay networks need one (rejoin with --advertise-addr)".to_string()
        })?;
        let mut rx = self.tables.clone();
        let wanted: Vec<&str> = task
            .networks
            .iter()
            .map(|a| a.network_id.as_str())
            .collect();
        let known = |t: &Table| {
            t.as_ref().is_some_and(|t| {
                wanted
                    .iter()
                    .all(|id| t.networks.iter().any(|n| n.id == *id))
            })
        };
        let table = match tokio::time::timeout(timeout, rx.wait_for(known)).await {
            Ok(Ok(t)) => t.clone(),
            _ => {
                return Err(format!(
                    "network {} is unknown to this node: the manager sent no table with it",
                    wanted.join(", ")
                ))
            }
        };
        let table = table.ok_or_else(|| "no network table".to_string())?;
        let port = port_of(&table);
        let mut out = Vec::with_capacity(task.networks.len());
        let mut internal = true;
        for a in &task.networks {
            let n = table
                .networks
                .iter()
                .find(|n| n.id == a.network_id)
                .ok_or_else(|| format!("network {} is unknown to this node", a.network_id))?;
            let ip: Ipv4Addr = a
                .addr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| {
                    format!(
                        "task address {:?} on network {} is not IPv4",
                        a.addr, n.name
                    )
                })?;
            let subnet = n
                .subnet
                .parse()
                .map_err(|_| format!("network {} has a bad subnet {:?}", n.name, n.subnet))?;
            internal &= n.internal;
            out.push(OverlayRequest {
                network_id: n.id.clone(),
                name: n.name.clone(),
                vni: n.vni,
                subnet,
                mtu: n.mtu,
                ip,
                local_ip,
                port,
                cluster_attachment: None,
                aliases: Vec::new(),
            });
        }
        Ok((out, internal))
    }
}

impl NetAgent {
    /// Reconciles on every new table and periodically, until `cancel` fires. Devices stay when
    /// the agent stops (containers keep running and keep their network).
    pub async fn run(mut self, cancel: CancellationToken) {
        let Some(local_ip) = self.local_ip else {
            return;
        };
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = self.tables.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let table = self.tables.borrow_and_update().clone();
            // Until the first table of this run, what the kernel has is all we know.
            let Some(table) = table else { continue };
            self.engine.discovery().set_table(table.clone());
            self.reconcile(&table, local_ip).await;
        }
    }

    async fn reconcile(&self, table: &NetworkTable, local_ip: Ipv4Addr) {
        let overlay = self.engine.overlay();
        let port = port_of(table);
        let mut wanted = BTreeSet::new();
        for n in &table.networks {
            let Some(net) = overlay_network(n, local_ip, port) else {
                tracing::warn!(network = %n.name, subnet = %n.subnet, "ignoring a network with a bad subnet");
                continue;
            };
            wanted.insert(n.vni);
            if let Err(e) = overlay.ensure_network(&net).await {
                tracing::warn!(network = %n.name, vni = n.vni, error = %e, "cannot set up the network's devices");
                continue;
            }
            let peers = remote_peers(n, local_ip);
            match overlay.set_peers(n.vni, &peers).await {
                Ok(changes) => {
                    tracing::debug!(network = %n.name, peers = peers.len(), ?changes, "network peers reconciled")
                }
                Err(e) => {
                    tracing::warn!(network = %n.name, error = %e, "cannot program the network's peers")
                }
            }
        }
        match overlay.networks().await {
            Ok(present) => {
                for vni in present {
                    if wanted.contains(&vni) || self.engine.overlay_in_use(vni) {
                        continue;
                    }
                    tracing::info!(
                        vni,
                        "removing the devices of a network this node no longer takes part in"
                    );
                    if let Err(e) = overlay.remove_network(vni).await {
                        tracing::warn!(vni, error = %e, "cannot remove a network's devices");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the overlay devices"),
        }
    }
}

/// Feeds `tables` the session's network tables, reopening the stream if it ends while the
/// session lives. Never returns by itself (dropped with the session).
pub async fn follow(
    mut client: DispatcherClient<Channel>,
    session_id: String,
    addr: String,
    tables: watch::Sender<Table>,
) {
    loop {
        let request = NetworksRequest {
            session_id: session_id.clone(),
            partial_tables: true,
            partial_endpoints: true,
        };
        match client.networks(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                // The stream's whole table so far (its first message is whole).
                let mut whole: Option<Arc<NetworkTable>> = None;
                loop {
                    match stream.message().await {
                        Ok(Some(t)) => {
                            tracing::debug!(
                                networks = t.networks.len(),
                                partial = t.partial,
                                gone = t.gone.len(),
                                "network table"
                            );
                            let Some(next) = apply_table(whole.as_deref(), t) else {
                                tracing::warn!(manager = %addr, "a partial network table that does not apply to the last one; reopening the stream");
                                break;
                            };
                            let next = Arc::new(next);
                            tables.send_replace(Some(next.clone()));
                            whole = Some(next);
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == Code::NotFound => {
                            return std::future::pending().await
                        }
                        Err(s) => {
                            tracing::warn!(manager = %addr, error = %s.message(), "the networks stream failed; reopening");
                            break;
                        }
                    }
                }
            }
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unimplemented) => {
                return std::future::pending().await
            }
            Err(s) => {
                tracing::warn!(manager = %addr, error = %s.message(), "cannot open the networks stream; retrying");
            }
        }
        tokio::time::sleep(STREAM_RETRY).await;
    }
}

/// The whole table after `change` (see `NetworkTable.partial`): `change` itself when it is
/// whole; else `table` with the networks `change` carries put in (by id) and those it names
/// gone taken out, in id order as the manager sends them (a network that carries only its changed
/// endpoints is merged into the one it changes). `None`: a partial change without a table to apply
/// it to, or endpoint changes to a network the table does not have.
pub fn apply_table(table: Option<&NetworkTable>, change: NetworkTable) -> Option<NetworkTable> {
    if !change.partial {
        return Some(change);
    }
    let table = table?;
    let mut networks: Vec<NodeNetwork> = table
        .networks
        .iter()
        .filter(|n| !change.gone.contains(&n.id) && !change.networks.iter().any(|c| c.id == n.id))
        .cloned()
        .collect();
    for n in change.networks {
        if !n.endpoints_partial {
            networks.push(n);
            continue;
        }
        let base = table.networks.iter().find(|b| b.id == n.id)?;
        networks.push(apply_endpoints(base, n));
    }
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    Some(NetworkTable {
        networks,
        data_path_port: change.data_path_port,
        partial: false,
        gone: Vec::new(),
    })
}

/// Network `base` after `change` (`endpoints_partial`): `change`'s fields, `base`'s endpoints
/// without those `change` names gone or carries, then those it carries, in task id order as the
/// manager sends them.
fn apply_endpoints(base: &NodeNetwork, mut change: NodeNetwork) -> NodeNetwork {
    let mut replaced: std::collections::HashSet<String> =
        std::mem::take(&mut change.gone_endpoints)
            .into_iter()
            .collect();
    replaced.extend(change.endpoints.iter().map(|e| e.task_id.clone()));
    let mut endpoints: Vec<_> = base
        .endpoints
        .iter()
        .filter(|e| !replaced.contains(&e.task_id))
        .cloned()
        .collect();
    endpoints.append(&mut change.endpoints);
    endpoints.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    NodeNetwork {
        endpoints,
        endpoints_partial: false,
        ..change
    }
}

/// The engine's way to the cluster for `container run --network NAME`: the node's current
/// session (the manager it is connected to, with the node's certificate).
pub struct SessionNetworks {
    ctx: Arc<NodeContext>,
    local_ip: Option<Ipv4Addr>,
}

impl SessionNetworks {
    pub fn new(ctx: Arc<NodeContext>) -> SessionNetworks {
        let local_ip = parse_ip(&ctx.config().advertise_addr);
        SessionNetworks { ctx, local_ip }
    }

    /// The dispatcher of the current session, with its id.
    fn client(&self) -> Result<(DispatcherClient<Channel>, String), String> {
        let status = self.ctx.session.borrow().clone();
        if !status.connected || status.session_id.is_empty() {
            return Err(
                "this node has no session with a manager right now; try again in a moment".into(),
            );
        }
        let channel = self
            .ctx
            .channel(&status.manager)
            .map_err(|e| e.to_string())?;
        Ok((DispatcherClient::new(channel), status.session_id))
    }
}

impl ClusterNetworks for SessionNetworks {
    fn sync(&self, keep: Vec<String>) -> BoxFuture<'_, Result<u32, String>> {
        Box::pin(async move {
            let (mut client, session_id) = self.client()?;
            Ok(client
                .sync_attachments(SyncAttachmentsRequest { session_id, keep })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner()
                .released)
        })
    }

    fn attach<'a>(
        &'a self,
        network: &'a str,
        container_id: &'a str,
        container_name: &'a str,
        aliases: &'a [String],
        ip: Option<Ipv4Addr>,
    ) -> BoxFuture<'a, Result<ClusterAttachment, String>> {
        Box::pin(async move {
            let local_ip = self.local_ip.ok_or_else(|| {
                "this node's advertise address is not an IPv4 address; overlay networks need one"
                    .to_string()
            })?;
            let (mut client, session_id) = self.client()?;
            let r = client
                .attach_network(AttachNetworkRequest {
                    session_id,
                    network: network.to_string(),
                    container_id: container_id.to_string(),
                    container_name: container_name.to_string(),
                    aliases: aliases.to_vec(),
                    ip: ip.map(|ip| ip.to_string()).unwrap_or_default(),
                })
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let n = r
                .network
                .ok_or_else(|| "the manager sent no network".to_string())?;
            let bad = |what: &str| format!("the manager sent a bad {what} for network {network}");
            Ok(ClusterAttachment {
                id: r.attachment_id,
                internal: n.internal,
                overlay: OverlayRequest {
                    network_id: n.id.clone(),
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet.parse().map_err(|_| bad("subnet"))?,
                    mtu: n.mtu,
                    ip: r.addr.parse().map_err(|_| bad("address"))?,
                    local_ip,
                    port: u16::try_from(r.data_path_port)
                        .ok()
                        .filter(|p| *p != 0)
                        .unwrap_or(4789),
                    // The engine keeps `id` here once it holds the address.
                    cluster_attachment: None,
                    aliases: aliases.to_vec(),
                },
            })
        })
    }

    fn detach<'a>(&'a self, attachment_id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (mut client, session_id) = self.client()?;
            client
                .detach_network(DetachNetworkRequest {
                    session_id,
                    attachment_id: attachment_id.to_string(),
                })
                .await
                .map(|_| ())
                .map_err(|s| s.message().to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_api::dispatcher::v1::Endpoint;

    #[test]
    fn partial_tables_apply_to_the_last_whole_one() {
        let n = |id: &str, vni: u32| NodeNetwork {
            id: id.into(),
            vni,
            ..NodeNetwork::default()
        };
        let whole = NetworkTable {
            networks: vec![n("a", 1), n("b", 2), n("c", 3)],
            data_path_port: 4789,
            ..NetworkTable::default()
        };
        let change = |networks: Vec<NodeNetwork>, gone: &[&str]| NetworkTable {
            networks,
            data_path_port: 4789,
            partial: true,
            gone: gone.iter().map(|g| g.to_string()).collect(),
        };
        assert_eq!(apply_table(None, change(vec![n("a", 9)], &[])), None);
        assert_eq!(apply_table(None, whole.clone()), Some(whole.clone()));
        let t = apply_table(Some(&whole), change(vec![n("b", 20)], &["c"])).unwrap();
        assert_eq!(t.networks, vec![n("a", 1), n("b", 20)]);
        assert!(!t.partial && t.gone.is_empty());
        let t = apply_table(Some(&t), change(vec![n("0", 7), n("d", 4)], &["x"])).unwrap();
        let ids: Vec<&str> = t.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["0", "a", "b", "d"]);
        // A whole table replaces everything.
        let t = apply_table(Some(&t), whole.clone()).unwrap();
        assert_eq!(t, whole);
    }

    #[test]
    fn partial_endpoints_apply_to_the_network_they_change() {
        let ep = |task: &str, ip: &str| Endpoint {
            task_id: task.into(),
            ip: ip.into(),
            ..Endpoint::default()
        };
        let base = NodeNetwork {
            id: "a".into(),
            vni: 1,
            endpoints: vec![
                ep("t1", "10.0.0.2"),
                ep("t2", "10.0.0.3"),
                ep("t4", "10.0.0.5"),
            ],
            ..NodeNetwork::default()
        };
        let whole = NetworkTable {
            networks: vec![base.clone()],
            data_path_port: 4789,
            ..NetworkTable::default()
        };
        // t2 changed, t3 came, t4 left; the network's own fields come whole.
        let change = NetworkTable {
            networks: vec![NodeNetwork {
                id: "a".into(),
                vni: 1,
                mtu: 1400,
                endpoints: vec![ep("t3", "10.0.0.4"), ep("t2", "10.0.0.9")],
                endpoints_partial: true,
                gone_endpoints: vec!["t4".into()],
                ..NodeNetwork::default()
            }],
            data_path_port: 4789,
            partial: true,
            gone: Vec::new(),
        };
        let t = apply_table(Some(&whole), change.clone()).unwrap();
        let a = &t.networks[0];
        let eps: Vec<(&str, &str)> = a
            .endpoints
            .iter()
            .map(|e| (e.task_id.as_str(), e.ip.as_str()))
            .collect();
        assert_eq!(
            eps,
            [("t1", "10.0.0.2"), ("t2", "10.0.0.9"), ("t3", "10.0.0.4")]
        );
        assert_eq!(a.mtu, 1400);
        assert!(!a.endpoints_partial && a.gone_endpoints.is_empty());
        // Endpoint changes to a network the node does not have cannot be applied.
        let other = NetworkTable {
            networks: vec![NodeNetwork {
                id: "z".into(),
                ..base
            }],
            ..whole
        };
        assert_eq!(apply_table(Some(&other), change), None);
    }

    #[test]
    fn peers_are_the_remote_endpoints() {
        let n = NodeNetwork {
            endpoints: vec![
                Endpoint {
                    ip: "10.0.0.3".into(),
                    node_addr: "198.18.0.1".into(),
                    ..Endpoint::default()
                },
                Endpoint {
                    ip: "10.0.0.4".into(),
                    node_addr: "198.18.0.2".into(),
                    ..Endpoint::default()
                },
                Endpoint {
                    ip: "bad".into(),
                    node_addr: "198.18.0.2".into(),
                    ..Endpoint::default()
                },
            ],
            ..NodeNetwork::default()
        };
        let peers = remote_peers(&n, "198.18.0.1".parse().unwrap());
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].ip.to_string(), "10.0.0.4");
        assert_eq!(
            parse_ip("198.18.0.1:4242"),
            Some("198.18.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip("::1"), None);
    }
}
