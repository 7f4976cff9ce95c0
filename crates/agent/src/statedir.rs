//! A node's state dir: who the node is (`node.json`), its certificates (`certs/`), and for managers
//! the raft store (`raft/`).
//!
//! Architecture invariant: `node.json` is written last when a node is created and removed first when
//! it leaves, so its presence means "a complete node lives here".

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rswarm_ca::NodeIdentity;
use serde::{Deserialize, Serialize};

use crate::AgentError;

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Who this node is, as persisted in `node.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_id: String,
    /// "worker" or "manager".
    pub role: String,
    pub cluster_id: String,
    pub hostname: String,
    /// The address other nodes reach this node at (an IP, no port).
    pub advertise_addr: String,
    /// `host:port` of the managers this node knows, refreshed from its sessions.
    pub manager_addrs: Vec<String>,
    /// Managers: the address their gRPC listener binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    /// Managers: their raft member id.
    #[serde(default)]
    pub raft_id: u64,
}

impl NodeConfig {
    pub fn is_manager(&self) -> bool {
        self.role == "manager"
    }
}

/// Paths inside a state dir, and the operations on them.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn node_json(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.certs_dir().join("ca.pem")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.certs_dir().join("node.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.certs_dir().join("node-key.pem")
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    pub fn is_initialised(&self) -> bool {
        self.node_json().exists()
    }

    /// Fails when a node already lives here. `resume` names the daemon binary that resumes it.
    /// When `node.json` is readable, the role written there picks the binary instead.
    pub fn ensure_free(&self, resume: &'static str) -> Result<()> {
        if self.is_initialised() {
            let resume = match self.load_config() {
                Ok(c) if c.is_manager() => "rswarm-manager",
                Ok(_) => "rswarm-agent",
                Err(_) => resume,
            };
            return Err(AgentError::AlreadyInitialised {
                dir: self.root.clone(),
                resume,
            });
        }
        Ok(())
    }

    /// Creates a node here: `extra` writes role-specific state (the manager's raft store), then the
    /// certificates, then `node.json`. On any failure everything written is removed again (and the
    /// directory itself when this call created it).
    pub fn create(
        &self,
        config: &NodeConfig,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        extra: impl FnOnce(&StateDir) -> Result<()>,
    ) -> Result<()> {
        self.ensure_free("rswarm-agent")?;
        let existed = self.root.exists();
        let result = (|| {
            create_dir(&self.root, 0o700)?;
            extra(self)?;
            create_dir(&self.certs_dir(), 0o700)?;
            write_atomic(&self.ca_path(), ca_pem.as_bytes(), 0o644)?;
            write_atomic(&self.key_path(), key_pem.as_bytes(), 0o600)?;
            write_atomic(&self.cert_path(), cert_pem.as_bytes(), 0o644)?;
            self.save_config(config)
        })();
        if let Err(e) = result {
            if existed {
                self.erase_contents();
            } else {
                let _ = fs::remove_dir_all(&self.root);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Reads `node.json` and the certificates.
    pub fn load(&self) -> Result<(NodeConfig, NodeIdentity)> {
        if !self.is_initialised() {
            return Err(AgentError::NotInitialised(self.root.clone()));
        }
        let config = self.load_config()?;
        let read =
            |p: PathBuf| fs::read_to_string(&p).map_err(|e| AgentError::io("read", p.clone(), e));
        let ca = read(self.ca_path())?;
        let cert = read(self.cert_path())?;
        let key = read(self.key_path())?;
        let identity = NodeIdentity::from_pem(&cert, &key, &ca)?;
        let info = identity.info();
        if info.node_id != config.node_id || info.cluster_id != config.cluster_id {
            return Err(AgentError::Corrupt {
                path: self.cert_path(),
                reason: format!(
                    "the certificate is for node {} of cluster {}, node.json says node {} of cluster {}",
                    info.node_id, info.cluster_id, config.node_id, config.cluster_id
                ),
            });
        }
        Ok((config, identity))
    }

    pub fn load_config(&self) -> Result<NodeConfig> {
        let path = self.node_json();
        let text = fs::read_to_string(&path).map_err(|e| AgentError::io("read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| AgentError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save_config(&self, config: &NodeConfig) -> Result<()> {
        let json = serde_json::to_vec_pretty(config).map_err(|e| AgentError::Corrupt {
            path: self.node_json(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.node_json(), &json, 0o600)
    }

    /// Replaces the node certificate and key (after a renewal).
    pub fn save_cert(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        write_atomic(&self.key_path(), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.cert_path(), cert_pem.as_bytes(), 0o644)
    }

    /// Removes the node: `node.json` first, then everything else in the directory.
    pub fn erase(&self) -> Result<()> {
        match fs::remove_file(self.node_json()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io("remove", self.node_json(), e)),
        }
        self.erase_contents();
        Ok(())
    }

    fn erase_contents(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let res = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(e) = res {
                tracing::warn!(path = %p.display(), error = %e, "could not remove");
            }
        }
    }
}

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| AgentError::io("create directory", path, e))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so readers see the old or
/// the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        AgentError::io("write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_ca::{NodeSubject, Role, RootCa};
    use std::time::Duration;

    fn config(id: &str, cluster: &str) -> NodeConfig {
        NodeConfig {
            node_id: id.into(),
            role: "worker".into(),
            cluster_id: cluster.into(),
            hostname: "h".into(),
            advertise_addr: "198.18.0.2".into(),
            manager_addrs: vec!["198.18.0.1:4242".into()],
            listen_addr: None,
            raft_id: 0,
        }
    }

    #[test]
    fn create_load_erase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let ca = RootCa::generate().unwrap();
        let subject = NodeSubject {
            node_id: "n1".into(),
            role: Role::Worker,
            cluster_id: "c1".into(),
        };
        let (cert, key) = ca.issue(&subject, Duration::from_secs(3600)).unwrap();
        let cfg = config("n1", "c1");
        dir.create(&cfg, ca.cert_pem(), &cert, &key, |_| Ok(()))
            .unwrap();
        let (loaded, identity) = dir.load().unwrap();
        assert_eq!(loaded, cfg);
        assert_eq!(identity.info().node_id, "n1");
        assert!(matches!(
            dir.create(&cfg, ca.cert_pem(), &cert, &key, |_| Ok(())),
            Err(AgentError::AlreadyInitialised { .. })
        ));
        dir.erase().unwrap();
        assert!(!dir.is_initialised());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn failed_create_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let ca = RootCa::generate().unwrap();
        let err = dir
            .create(&config("n1", "c1"), ca.cert_pem(), "x", "y", |d| {
                fs::write(d.path().join("raft-file"), b"partial").unwrap();
                Err(AgentError::Removed)
            })
            .unwrap_err();
        assert!(matches!(err, AgentError::Removed));
        assert!(
            !dir.path().exists(),
            "a failed create must remove what it wrote"
        );
    }

    #[test]
    fn mismatched_cert_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        let ca = RootCa::generate().unwrap();
        let subject = NodeSubject {
            node_id: "other".into(),
            role: Role::Worker,
            cluster_id: "c1".into(),
        };
        let (cert, key) = ca.issue(&subject, Duration::from_secs(3600)).unwrap();
        dir.create(&config("n1", "c1"), ca.cert_pem(), &cert, &key, |_| Ok(()))
            .unwrap();
        assert!(matches!(dir.load(), Err(AgentError::Corrupt { .. })));
    }
}
