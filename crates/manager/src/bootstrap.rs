//! `rswarm init`: a new cluster in a state dir — root CA, join tokens, this node's manager
//! certificate, and a raft store whose first snapshot holds the cluster and this node.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rswarm_agent::ids::{new_id, new_raft_id};
use rswarm_agent::statedir::{NodeConfig, StateDir};
use rswarm_agent::VERSION;
use rswarm_ca::{JoinToken, NodeSubject, Role, RootCa};
use rswarm_store::{Cluster, Node, NodeRole, NodeStatus, StateMachine, Subnet, Txn};

use crate::ManagerError;

/// The smallest heartbeat period accepted.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// The shortest node-certificate lifetime accepted.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(10);

/// What `rswarm init` was asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// `IP` or `IP:PORT` other nodes use to reach this manager (port defaults to the listen port).
    pub advertise_addr: String,
    pub listen_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub hostname: String,
    pub heartbeat: Duration,
    pub cert_expiry: Duration,
    /// Overlay networks: where subnets are cut from, their size, the VXLAN port.
    pub network: NetworkDefaults,
}

/// `--default-addr-pool` (CIDR, repeatable), `--default-addr-pool-mask-length`, `--data-path-port`;
/// empty / 0 takes the defaults (10.0.0.0/8, /24, 4789).
#[derive(Clone, Debug, Default)]
pub struct NetworkDefaults {
    pub addr_pools: Vec<String>,
    pub subnet_size: u8,
    pub data_path_port: u16,
}

impl NetworkDefaults {
    /// Checks and parses the pools; every pool must hold at least one subnet of the size.
    pub fn parse(&self) -> Result<(Vec<Subnet>, u8, u16), ManagerError> {
        let size = if self.subnet_size == 0 {
            rswarm_store::network::DEFAULT_SUBNET_SIZE
        } else {
            self.subnet_size
        };
        if !(8..=29).contains(&size) {
            return Err(ManagerError::InvalidOption {
                flag: "--default-addr-pool-mask-length",
                reason: format!("{size} is out of range: use 8-29"),
            });
        }
        let mut pools: Vec<Subnet> = Vec::new();
        for raw in &self.addr_pools {
            let pool: Subnet = raw.parse().map_err(|reason| ManagerError::InvalidOption {
                flag: "--default-addr-pool",
                reason,
            })?;
            if pool.prefix_len > size {
                return Err(ManagerError::InvalidOption {
                    flag: "--default-addr-pool",
                    reason: format!(
                        "pool {pool} is smaller than one /{size} subnet; use a larger pool or a longer --default-addr-pool-mask-length"
                    ),
                });
            }
            if let Some(other) = pools.iter().find(|p| p.overlaps(&pool)) {
                return Err(ManagerError::InvalidOption {
                    flag: "--default-addr-pool",
                    reason: format!("pools {other} and {pool} overlap"),
                });
            }
            pools.push(pool);
        }
        if self.data_path_port != 0 && self.data_path_port < 1024 {
            return Err(ManagerError::InvalidOption {
                flag: "--data-path-port",
                reason: format!(
                    "{} is a privileged port: use 1024-49151",
                    self.data_path_port
                ),
            });
        }
        Ok((pools, size, self.data_path_port))
    }
}

/// What `rswarm init` prints.
#[derive(Clone, Debug)]
pub struct InitOutcome {
    pub node_id: String,
    pub cluster_id: String,
    pub worker_token: String,
    pub manager_token: String,
    /// `host:port` joiners dial.
    pub manager_addr: String,
}

/// Checks cluster-wide settings (`rswarm init`, `rswarm swarm update`); `None` is not checked.
pub fn validate_settings(
    heartbeat: Option<Duration>,
    cert_expiry: Option<Duration>,
) -> Result<(), ManagerError> {
    if heartbeat.is_some_and(|h| h < MIN_HEARTBEAT) {
        return Err(ManagerError::InvalidOption {
            flag: "--dispatcher-heartbeat",
            reason: format!(
                "must be at least {}",
                humantime::format_duration(MIN_HEARTBEAT)
            ),
        });
    }
    if cert_expiry.is_some_and(|c| c < MIN_CERT_EXPIRY) {
        return Err(ManagerError::InvalidOption {
            flag: "--cert-expiry",
            reason: format!(
                "must be at least {}",
                humantime::format_duration(MIN_CERT_EXPIRY)
            ),
        });
    }
    Ok(())
}

/// Splits `IP[:PORT]`.
pub fn parse_advertise(addr: &str, default_port: u16) -> Result<(IpAddr, u16), ManagerError> {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok((ip, default_port));
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    Err(ManagerError::InvalidOption {
        flag: "--advertise-addr",
        reason: format!("{addr:?} is not an IP address or IP:PORT (for example 198.18.0.1)"),
    })
}

/// Formats `ip:port`, with brackets for IPv6.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// Creates the cluster in `opts.state_dir`. Writes nothing when it fails.
pub fn bootstrap(opts: &InitOptions) -> Result<InitOutcome, ManagerError> {
    let dir = StateDir::new(&opts.state_dir);
    dir.ensure_free("rswarm-manager")?;
    let (ip, port) = parse_advertise(&opts.advertise_addr, opts.listen_addr.port())?;
    if ip.is_unspecified() {
        return Err(ManagerError::InvalidOption {
            flag: "--advertise-addr",
            reason: "it must be an address other nodes can reach, not 0.0.0.0 or ::".into(),
        });
    }
    validate_settings(Some(opts.heartbeat), Some(opts.cert_expiry))?;
    let (addr_pools, subnet_size, data_path_port) = opts.network.parse()?;
    let manager_addr = host_port(ip, port);
    let cluster_id = new_id();
    let node_id = new_id();
    let raft_id = new_raft_id();

    let ca = RootCa::generate()?;
    let worker_token = JoinToken::generate(ca.cert_der()).encode();
    let manager_token = JoinToken::generate(ca.cert_der()).encode();
    let subject = NodeSubject {
        node_id: node_id.clone(),
        role: Role::Manager,
        cluster_id: cluster_id.clone(),
    };
    let (cert_pem, key_pem) = ca.issue(&subject, opts.cert_expiry)?;
    let cert_not_after = rswarm_ca::ca::parse_cert_pem(&cert_pem)?
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let cluster = Cluster {
        id: Cluster::ID.into(),
        cluster_id: cluster_id.clone(),
        root_ca_cert_pem: ca.cert_pem().into(),
        root_ca_key_pem: ca.key_pem().into(),
        worker_token: worker_token.clone(),
        manager_token: manager_token.clone(),
        heartbeat_period_ms: opts.heartbeat.as_millis() as u64,
        cert_expiry_secs: opts.cert_expiry.as_secs(),
        default_addr_pool: addr_pools,
        subnet_size,
        data_path_port,
        ..Cluster::default()
    };
    let node = Node {
        id: node_id.clone(),
        role: Some(NodeRole::Manager),
        hostname: opts.hostname.clone(),
        addr: ip.to_string(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        engine_version: VERSION.into(),
        status: NodeStatus::Unknown,
        cert_not_after,
        raft_id,
        manager_addr: manager_addr.clone(),
        ..Node::default()
    };
    let mut initial = StateMachine::new();
    initial
        .apply(1, &Txn::new(vec![Txn::create(cluster), Txn::create(node)]))
        .map_err(rswarm_store::StoreError::from)?;

    let config = NodeConfig {
        node_id: node_id.clone(),
        role: "manager".into(),
        cluster_id: cluster_id.clone(),
        hostname: opts.hostname.clone(),
        advertise_addr: ip.to_string(),
        manager_addrs: vec![manager_addr.clone()],
        listen_addr: Some(opts.listen_addr.to_string()),
        raft_id,
    };
    let mut raft_error = None;
    let created = dir.create(&config, ca.cert_pem(), &cert_pem, &key_pem, |d| {
        rswarm_raft::bootstrap(&d.raft_dir(), raft_id, &manager_addr, initial).map_err(|e| {
            let msg = e.to_string();
            raft_error = Some(e);
            rswarm_agent::AgentError::Corrupt {
                path: d.raft_dir(),
                reason: msg,
            }
        })
    });
    if let Err(e) = created {
        return Err(raft_error.map_or_else(|| e.into(), ManagerError::from));
    }
    tracing::info!(%cluster_id, %node_id, "cluster initialised");
    Ok(InitOutcome {
        node_id,
        cluster_id,
        worker_token,
        manager_token,
        manager_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_parsing() {
        assert_eq!(
            parse_advertise("198.18.0.1", 4242).unwrap(),
            ("198.18.0.1".parse().unwrap(), 4242)
        );
        assert_eq!(
            parse_advertise("198.18.0.1:5000", 4242).unwrap(),
            ("198.18.0.1".parse().unwrap(), 5000)
        );
        assert!(parse_advertise("eth0", 4242).is_err());
        assert!(validate_settings(Some(Duration::from_millis(10)), None).is_err());
        assert!(validate_settings(None, Some(Duration::from_secs(1))).is_err());
        assert!(validate_settings(Some(MIN_HEARTBEAT), Some(MIN_CERT_EXPIRY)).is_ok());
        assert_eq!(host_port("fd00::1".parse().unwrap(), 1), "[fd00::1]:1");
    }
}
