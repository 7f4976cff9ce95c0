//! `network connect` and `network disconnect`: a standalone container joins or leaves an
//! attachable cluster network, at once when it runs (an interface in its namespace, its DNS, its
//! `hosts`) and at every later start (the network is in its record).

use std::path::Path;

use rswarm_network::{NetworkMode, OverlayAttachment};

use super::record::{ContainerRecord, OverlayRequest};
use super::{write_hosts, write_resolv_conf, Engine, EngineError, Result};

/// Why a container in this network mode cannot join another network (Docker's words), if so.
fn connect_refusal(record: &ContainerRecord) -> Option<String> {
    match &record.network {
        NetworkMode::Host => {
            Some("container cannot be disconnected from host network or connected to host network".into())
        }
        NetworkMode::Container(_) => Some(
            "container sharing network namespace with another container or host cannot be connected to any other network"
                .into(),
        ),
        NetworkMode::None if record.overlays.is_empty() => Some(
            "container cannot be connected to multiple networks with one of the networks in private (none) mode"
                .into(),
        ),
        NetworkMode::None | NetworkMode::Bridge => None,
    }
}

/// Why `overlay` cannot be added to `record`'s networks, if so (checked once the cluster has
/// named the network, so a name, an id and an id prefix all count as the same network).
fn join_refusal(
    record: &ContainerRecord,
    overlay: &OverlayRequest,
    internal: bool,
) -> Option<String> {
    if record
        .overlays
        .iter()
        .any(|o| o.network_id == overlay.network_id)
    {
        return Some(format!(
            "endpoint with name {} already exists in network {}",
            record.name, overlay.name
        ));
    }
    // Only an internal network's containers have no bridge: the new network's way out would be
    // missing.
    if record.network == NetworkMode::None && !internal {
        return Some(format!(
            "container {} is only on internal networks, so it has no way out that network {} could use; create it again with --network {}",
            record.name, overlay.name, overlay.name
        ));
    }
    None
}

/// The first `ethN` that none of `used` takes.
fn free_ifname<'a>(used: impl Iterator<Item = &'a str> + Clone) -> String {
    (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !used.clone().any(|u| u == n))
        .unwrap_or_default()
}

impl Engine {
    /// `network connect NETWORK CONTAINER`: gets the container an address on attachable cluster
    /// network `network` and, if it runs, plugs it in at once. Refused for containers without a
    /// network namespace of their own and for a network it is already on; on any error the
    /// address goes back and the container is as it was.
    pub async fn connect(
        &self,
        key: &str,
        network: &str,
        aliases: &[String],
        ip: &str,
    ) -> Result<()> {
        let aliases = super::parse::network_aliases(aliases)?;
        let ip = super::parse::user_ip(ip)?;
        let id = self.lookup(key)?;
        let lock = self.op_lock(&id)?;
        let _guard = lock.lock().await;
        let record = self.record(&id)?;
        if let Some(why) = connect_refusal(&record) {
            return Err(EngineError::invalid(why));
        }
        if let Some(i) = record.overlay_index(network) {
            return Err(EngineError::Conflict(format!(
                "endpoint with name {} already exists in network {}",
                record.name, record.overlays[i].name
            )));
        }
        let cluster = self.cluster_networks().ok_or_else(|| {
            EngineError::NotFound(format!(
                "network {network} not found: this node is not part of a cluster yet"
            ))
        })?;
        // Until the record holds the attachment (see `attach_gate`).
        let _gate = self.inner.attach_gate.lock().await;
        let a = cluster
            .attach(network, &id, &record.name, &aliases, ip)
            .await
            .map_err(EngineError::invalid)?;
        let overlay = OverlayRequest {
            cluster_attachment: Some(a.id.clone()),
            ..a.overlay
        };
        if let Some(why) = join_refusal(&record, &overlay, a.internal) {
            self.give_back_ids(vec![a.id]);
            return Err(EngineError::Conflict(why));
        }
        let plugged = if record.is_running() {
            match self.plug(&record, &overlay).await {
                Ok(p) => Some(p),
                Err(e) => {
                    self.give_back_ids(vec![a.id]);
                    return Err(e);
                }
            }
        } else {
            None
        };
        self.update(&id, |r| {
            r.overlays.push(overlay.clone());
            r.overlay_attachments.extend(plugged);
        })?;
        tracing::info!(id = %record.short_id(), network = %overlay.name, ip = %overlay.ip,
            running = record.is_running(), "container connected to a network");
        Ok(())
    }

    /// `network disconnect NETWORK CONTAINER`: takes the container off a network that
    /// `run --network` or `network connect` put it on, unplugging it at once if it runs, and
    /// gives the address back. With `force`, a container that is not on the network is fine.
    pub async fn disconnect(&self, key: &str, network: &str, force: bool) -> Result<()> {
        let id = self.lookup(key)?;
        let lock = self.op_lock(&id)?;
        let _guard = lock.lock().await;
        let record = self.record(&id)?;
        let Some(i) = record.overlay_index(network) else {
            if force {
                return Ok(());
            }
            return Err(EngineError::NotFound(format!(
                "container {} is not connected to network {network}",
                record.name
            )));
        };
        let overlay = record.overlays[i].clone();
        let Some(cluster_id) = overlay.cluster_attachment.clone() else {
            return Err(EngineError::invalid(format!(
                "container {} is a task of a service: take it off network {} with service update --network-rm",
                record.name, overlay.name
            )));
        };
        if record.is_running() {
            self.unplug(&record, &overlay).await;
        }
        self.update(&id, |r| {
            r.overlays.retain(|o| o.network_id != overlay.network_id);
            r.overlay_attachments.retain(|a| a.vni != overlay.vni);
        })?;
        self.give_back_ids(vec![cluster_id]);
        tracing::info!(id = %record.short_id(), network = %overlay.name, "container disconnected from a network");
        Ok(())
    }

    /// Puts running container `record` on `overlay`: an interface in its namespace, the embedded
    /// DNS over its networks, the new address in its `hosts`. Undoes its work on failure.
    async fn plug(
        &self,
        record: &ContainerRecord,
        overlay: &OverlayRequest,
    ) -> Result<OverlayAttachment> {
        let dir = self.dir(&record.id);
        let netns = dir.join("netns");
        let ifname = free_ifname(
            record
                .attachment
                .iter()
                .map(|_| "eth0")
                .chain(record.overlay_attachments.iter().map(|a| a.ifname.as_str())),
        );
        let att = {
            let _use = self.inner.overlay_use.hold(overlay.vni);
            let att = self
                .inner
                .overlay
                .attach(&overlay.network(), &record.id, &netns, &ifname, overlay.ip)
                .await
                .map_err(|e| {
                    EngineError::invalid(format!("cannot join network {}: {e}", overlay.name))
                })?;
            self.inner.overlay_use.add(overlay.vni);
            att
        };
        let undo = |e: EngineError| async {
            self.detach_overlays(&record.id, std::slice::from_ref(&att))
                .await;
            e
        };
        let mut networks: Vec<String> = record
            .overlays
            .iter()
            .map(|o| o.network_id.clone())
            .collect();
        networks.push(overlay.network_id.clone());
        if let Err(e) = self
            .inner
            .discovery
            .attach(&record.id, &netns, networks)
            .await
        {
            return Err(undo(EngineError::runtime(e)).await);
        }
        let mut attachments = record.overlay_attachments.clone();
        attachments.push(att.clone());
        if let Err(e) = self.rewrite_etc(record, &dir, &attachments) {
            // Back to the former networks' DNS (or none).
            self.serve_dns(record, &netns, &record.overlays).await;
            return Err(undo(e).await);
        }
        Ok(att)
    }

    /// Takes running container `record` off `overlay`: its DNS first (so nothing answers with a
    /// name it leaves), then the interface, then the address in its `hosts`. Nothing here can
    /// stop the network from going: what fails is logged.
    async fn unplug(&self, record: &ContainerRecord, overlay: &OverlayRequest) {
        let dir = self.dir(&record.id);
        let netns = dir.join("netns");
        let rest: Vec<OverlayRequest> = record
            .overlays
            .iter()
            .filter(|o| o.network_id != overlay.network_id)
            .cloned()
            .collect();
        self.serve_dns(record, &netns, &rest).await;
        let (gone, kept): (Vec<OverlayAttachment>, Vec<OverlayAttachment>) = record
            .overlay_attachments
            .iter()
            .cloned()
            .partition(|a| a.vni == overlay.vni);
        self.detach_overlays(&record.id, &gone).await;
        if let Err(e) = self.rewrite_etc(record, &dir, &kept) {
            tracing::warn!(id = %record.short_id(), error = %e, "cannot rewrite the hosts and resolv.conf of a container leaving a network");
        }
    }

    /// Serves the embedded DNS to running container `record` over `overlays` (stops it when
    /// none are left); a failure is logged, as the container runs on either way.
    async fn serve_dns(&self, record: &ContainerRecord, netns: &Path, overlays: &[OverlayRequest]) {
        if overlays.is_empty() {
            self.inner.discovery.detach(&record.id);
            return;
        }
        let networks = overlays.iter().map(|o| o.network_id.clone()).collect();
        if let Err(e) = self
            .inner
            .discovery
            .attach(&record.id, netns, networks)
            .await
        {
            tracing::warn!(id = %record.short_id(), error = %e, "cannot serve DNS to a container");
        }
    }

    /// Rewrites a running container's `hosts` (its addresses on `overlays`, then the bridge's) and
    /// `resolv.conf` (the embedded resolver while it is on any overlay network) in place.
    fn rewrite_etc(
        &self,
        record: &ContainerRecord,
        dir: &Path,
        overlays: &[OverlayAttachment],
    ) -> Result<()> {
        let ips: Vec<std::net::Ipv4Addr> = overlays
            .iter()
            .map(|o| o.ip)
            .chain(record.attachment.as_ref().map(|a| a.ip))
            .collect();
        write_hosts(&dir.join("hosts"), &record.config.hostname, &ips)?;
        write_resolv_conf(dir, &record.network, !overlays.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(id: &str, name: &str) -> OverlayRequest {
        OverlayRequest {
            network_id: id.into(),
            name: name.into(),
            vni: 4096,
            subnet: "10.0.1.0/24".parse().unwrap(),
            mtu: 0,
            ip: "10.0.1.5".parse().unwrap(),
            local_ip: "198.18.0.1".parse().unwrap(),
            port: 4789,
            cluster_attachment: Some("att1".into()),
            aliases: Vec::new(),
        }
    }

    fn record(network: NetworkMode, overlays: Vec<OverlayRequest>) -> ContainerRecord {
        let mut r = ContainerRecord::for_test("c0ffee00c0ffee00", "web", network);
        r.overlays = overlays;
        r
    }

    #[test]
    fn only_containers_with_a_namespace_of_their_own_connect() {
        assert_eq!(connect_refusal(&record(NetworkMode::Bridge, vec![])), None);
        let internal_only = record(NetworkMode::None, vec![overlay("n1", "back")]);
        assert_eq!(connect_refusal(&internal_only), None);
        for mode in [
            NetworkMode::Host,
            NetworkMode::None,
            NetworkMode::Container("db".into()),
        ] {
            let why = connect_refusal(&record(mode.clone(), vec![])).unwrap();
            assert!(why.starts_with("container "), "{mode}: {why}");
        }
    }

    #[test]
    fn a_network_is_joined_once_and_internal_only_containers_stay_internal() {
        let r = record(NetworkMode::Bridge, vec![overlay("n1", "front")]);
        let why = join_refusal(&r, &overlay("n1", "front"), false).unwrap();
        assert_eq!(
            why,
            "endpoint with name web already exists in network front"
        );
        assert_eq!(join_refusal(&r, &overlay("n2", "back"), true), None);
        let internal = record(NetworkMode::None, vec![overlay("n1", "back")]);
        assert_eq!(join_refusal(&internal, &overlay("n2", "other"), true), None);
        let why = join_refusal(&internal, &overlay("n2", "front"), false).unwrap();
        assert!(why.contains("no way out"), "{why}");
    }

    #[test]
    fn overlays_are_found_by_name_id_or_unique_prefix() {
        let r = record(
            NetworkMode::Bridge,
            vec![overlay("abc123", "front"), overlay("abd456", "back")],
        );
        assert_eq!(r.overlay_index("front"), Some(0));
        assert_eq!(r.overlay_index("abd456"), Some(1));
        assert_eq!(r.overlay_index("abc"), Some(0));
        assert_eq!(r.overlay_index("ab"), None);
        assert_eq!(r.overlay_index(""), None);
        assert_eq!(r.overlay_index("other"), None);
    }

    #[test]
    fn new_interfaces_take_the_first_free_name() {
        assert_eq!(free_ifname([].into_iter()), "eth0");
        assert_eq!(free_ifname(["eth0", "eth1"].into_iter()), "eth2");
        assert_eq!(free_ifname(["eth0", "eth2"].into_iter()), "eth1");
        assert_eq!(free_ifname(["eth1"].into_iter()), "eth0");
    }

    #[test]
    fn records_of_older_agents_keep_their_cluster_address() {
        let mut o = overlay("n1", "front");
        o.cluster_attachment = None;
        let mut r = record(NetworkMode::Bridge, vec![o]);
        r.network_attachment = Some("att9".into());
        r.migrate();
        assert_eq!(r.overlays[0].cluster_attachment.as_deref(), Some("att9"));
        assert_eq!(r.network_attachment, None);
        let saved = serde_json::to_value(&r).unwrap();
        assert!(saved.get("network_attachment").is_none());
    }
}
