//! What the engine remembers of each container (`<state>/containers/<id>/container.json`).

use std::collections::BTreeMap;

use rswarm_network::{Attachment, NetworkMode, OverlayAttachment, PortMapping};
use rswarm_runtime::spec::ContainerConfig;
use serde::{Deserialize, Serialize};

use super::parse::{human_duration, MountRequest};

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        }
    }
}

/// The runtime state of a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// The container's init on the host, while running.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub shim_pid: i32,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default)]
    pub oom_killed: bool,
    /// Why the last start failed or the container died unexpectedly.
    #[serde(default)]
    pub error: String,
    /// Unix seconds; 0 when never.
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub finished_at: i64,
}

/// Everything the engine keeps about one container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// `sha256:…` of the image config.
    pub image_id: String,
    /// Unix seconds.
    pub created: i64,
    pub config: ContainerConfig,
    /// The argv the container runs (without the init), for `ls` and `inspect`.
    pub command: Vec<String>,
    pub network: NetworkMode,
    pub ports: Vec<PortMapping>,
    pub mounts: Vec<MountRequest>,
    pub auto_remove: bool,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_timeout: u32,
    pub state: State,
    #[serde(default)]
    pub attachment: Option<Attachment>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overlay networks to join at every start (a service task's networks).
    #[serde(default)]
    pub overlays: Vec<OverlayRequest>,
    /// Its interfaces on those networks while it runs.
    #[serde(default)]
    pub overlay_attachments: Vec<OverlayAttachment>,
    /// Records written before `network connect`: the cluster's id of the address of a standalone
    /// container's one cluster network. Read once (see [`ContainerRecord::migrate`]), never
    /// written: that id now lives on the network's [`OverlayRequest`].
    #[serde(default, skip_serializing)]
    pub network_attachment: Option<String>,
}

/// One overlay network a container joins, with its address there (allocated by the cluster).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRequest {
    pub network_id: String,
    pub name: String,
    pub vni: u32,
    pub subnet: ipnet::Ipv4Net,
    /// 0: the underlay's MTU less the VXLAN overhead.
    pub mtu: u32,
    pub ip: std::net::Ipv4Addr,
    /// This node's address (the VTEP) and the VXLAN port.
    pub local_ip: std::net::Ipv4Addr,
    pub port: u16,
    /// A standalone container's attachable network (`run --network`, `network connect`): the
    /// cluster's id of its address, given back when it leaves the network or is removed. `None`
    /// for a service task's networks, which the cluster gives and takes with the task.
    #[serde(default)]
    pub cluster_attachment: Option<String>,
    /// A standalone container's names on the network besides its own (`--alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl OverlayRequest {
    pub fn network(&self) -> rswarm_network::OverlayNetwork {
        rswarm_network::OverlayNetwork {
            vni: self.vni,
            subnet: self.subnet,
            mtu: self.mtu,
            local_ip: self.local_ip,
            port: self.port,
        }
    }
}

impl ContainerRecord {
    /// A created (not running) container `name` with id `id` on `network`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, name: &str, network: NetworkMode) -> ContainerRecord {
        let mut r: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "busybox", "image_id": "sha256:x",
            "created": 0, "config": {}, "command": [], "network": "Bridge", "ports": [],
            "mounts": [], "auto_remove": false, "stop_timeout": 10,
            "state": {"status": "created", "pid": 0, "shim_pid": 0, "exit_code": 0,
                      "oom_killed": false, "error": "", "started_at": 0, "finished_at": 0},
        }))
        .expect("a record");
        r.network = network;
        r
    }

    /// Moves a record of an older agent to this one's shape: the id of a standalone container's
    /// cluster address goes to its network (the last one, which `run --network` added).
    pub fn migrate(&mut self) {
        if let Some(id) = self.network_attachment.take() {
            if let Some(o) = self
                .overlays
                .iter_mut()
                .rev()
                .find(|o| o.cluster_attachment.is_none())
            {
                o.cluster_attachment = Some(id);
            }
        }
    }

    /// The overlay network `key` names among the container's (name, id, or unique id prefix).
    pub fn overlay_index(&self, key: &str) -> Option<usize> {
        if let Some(i) = self
            .overlays
            .iter()
            .position(|o| o.network_id == key || o.name == key)
        {
            return Some(i);
        }
        let mut prefixed = self
            .overlays
            .iter()
            .enumerate()
            .filter(|(_, o)| !key.is_empty() && o.network_id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    pub fn is_running(&self) -> bool {
        self.state.status == Status::Running
    }

    /// What `docker ps` shows in STATUS.
    pub fn status_text(&self, now: i64) -> String {
        match self.state.status {
            Status::Created => "Created".to_string(),
            Status::Running => format!("Up {}", human_duration(now - self.state.started_at)),
            Status::Exited => format!(
                "Exited ({}) {} ago",
                self.state.exit_code,
                human_duration(now - self.state.finished_at)
            ),
        }
    }

    /// `0.0.0.0:8080->80/tcp` per published port, with the host ports actually chosen.
    pub fn port_texts(&self) -> Vec<String> {
        let ports = self
            .attachment
            .as_ref()
            .map(|a| a.ports.clone())
            .filter(|p| !p.is_empty() && self.is_running())
            .unwrap_or_else(|| self.ports.clone());
        ports
            .iter()
            .map(|p| {
                let proto = match p.protocol {
                    rswarm_network::Protocol::Tcp => "tcp",
                    rswarm_network::Protocol::Udp => "udp",
                };
                let ip = p
                    .host_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "0.0.0.0".to_string());
                format!("{ip}:{}->{}/{proto}", p.host_port, p.container_port)
            })
            .collect()
    }

    /// `NetworkSettings.Networks` of `docker inspect`: the bridge (while running) and every
    /// overlay network by name. An overlay address is the container's from the time it joins
    /// (the cluster holds it); its MAC is known while it runs.
    fn networks_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        if let Some(a) = self.attachment.as_ref().filter(|_| self.is_running()) {
            out.insert(
                "bridge".into(),
                serde_json::json!({
                    "NetworkID": "bridge",
                    "IPAddress": a.ip.to_string(),
                    "IPPrefixLen": a.prefix_len,
                    "Gateway": a.gateway.to_string(),
                    "MacAddress": a.mac,
                }),
            );
        }
        for o in &self.overlays {
            let mac = self
                .overlay_attachments
                .iter()
                .find(|a| a.vni == o.vni)
                .map(|a| a.mac.clone())
                .unwrap_or_default();
            out.insert(
                o.name.clone(),
                serde_json::json!({
                    "NetworkID": o.network_id,
                    "IPAddress": o.ip.to_string(),
                    "IPPrefixLen": o.subnet.prefix_len(),
                    "MacAddress": mac,
                    "Aliases": o.aliases,
                }),
            );
        }
        out
    }

    /// `docker inspect`'s shape, as far as rswarm knows the fields.
    pub fn inspect_json(&self, bundle: &std::path::Path) -> serde_json::Value {
        let ts = |t: i64| {
            if t == 0 {
                "0001-01-01T00:00:00Z".to_string()
            } else {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .ok()
                    .and_then(|d| {
                        d.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default()
            }
        };
        let att = self.attachment.as_ref().filter(|_| self.is_running());
        let mounts: Vec<serde_json::Value> = self
            .mounts
            .iter()
            .map(|m| match m {
                MountRequest::Bind {
                    source,
                    target,
                    read_only,
                } => serde_json::json!({"Type": "bind", "Source": source, "Destination": target, "RW": !read_only}),
                MountRequest::Volume {
                    name,
                    target,
                    read_only,
                } => serde_json::json!({"Type": "volume", "Name": name, "Destination": target, "RW": !read_only, "Driver": "local"}),
                MountRequest::Tmpfs { target, .. } => {
                    serde_json::json!({"Type": "tmpfs", "Destination": target, "RW": true})
                }
            })
            .collect();
        serde_json::json!({
            "Id": self.id,
            "Created": ts(self.created),
            "Path": self.command.first().cloned().unwrap_or_default(),
            "Args": self.command.iter().skip(1).collect::<Vec<_>>(),
            "State": {
                "Status": self.state.status.as_str(),
                "Running": self.is_running(),
                "Pid": if self.is_running() { self.state.pid } else { 0 },
                "ExitCode": self.state.exit_code,
                "OOMKilled": self.state.oom_killed,
                "Error": self.state.error,
                "StartedAt": ts(self.state.started_at),
                "FinishedAt": ts(self.state.finished_at),
            },
            "Image": self.image_id,
            "Name": format!("/{}", self.name),
            "LogPath": bundle.join("json.log"),
            "HostConfig": {
                "NetworkMode": self.network.to_string(),
                "AutoRemove": self.auto_remove,
                "Memory": self.config.memory.unwrap_or(0),
                "MemorySwap": self.config.memory_swap.unwrap_or(0),
                "NanoCpus": self.config.nano_cpus.unwrap_or(0),
                "PidsLimit": self.config.pids_limit,
                "ReadonlyRootfs": self.config.read_only,
                "CapAdd": self.config.cap_add,
                "CapDrop": self.config.cap_drop,
                "Privileged": self.config.privileged,
                "Init": self.config.init,
                "PortBindings": self.port_texts(),
            },
            "Config": {
                "Hostname": self.config.hostname,
                "User": self.config.user.clone().unwrap_or_default(),
                "Env": self.config.env,
                "Cmd": self.config.cmd,
                "Entrypoint": self.config.entrypoint,
                "WorkingDir": self.config.workdir.clone().unwrap_or_default(),
                "Image": self.image,
                "Labels": self.labels,
                "StopSignal": self.config.stop_signal,
                "StopTimeout": self.stop_timeout,
            },
            "NetworkSettings": {
                "IPAddress": att.map(|a| a.ip.to_string()).unwrap_or_default(),
                "IPPrefixLen": att.map(|a| a.prefix_len).unwrap_or(0),
                "Gateway": att.map(|a| a.gateway.to_string()).unwrap_or_default(),
                "MacAddress": att.map(|a| a.mac.clone()).unwrap_or_default(),
                "Ports": self.port_texts(),
                "Networks": self.networks_json(),
            },
            "Mounts": mounts,
        })
    }
}
