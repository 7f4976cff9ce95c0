//! Reaching a daemon: the local unix socket, or a manager over mutual TLS.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rswarm_ca::transport::{tls_channel_connected, unix_channel};
use rswarm_ca::{tls, NodeIdentity, MANAGER_SERVER_NAME};
use tonic::transport::Channel;

use crate::Global;

/// How the CLI was told to reach the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Unix(String),
    Tcp(String),
}

pub fn parse_host(host: &str) -> anyhow::Result<Host> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            bail!("invalid --host {host:?}: the unix socket path is empty");
        }
        Ok(Host::Unix(path.to_string()))
    } else if let Some(addr) = host.strip_prefix("tcp://") {
        Ok(Host::Tcp(rswarm_agent::with_default_port(addr)))
    } else {
        bail!("invalid --host {host:?}: use unix:///path/to.sock or tcp://HOST:PORT")
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Connects to the daemon named by `--host`.
pub async fn connect(global: &Global) -> anyhow::Result<Channel> {
    match parse_host(&global.host)? {
        Host::Unix(path) => Ok(unix_channel(Path::new(&path)).await?),
        Host::Tcp(addr) => {
            let Some(ca_path) = &global.tlscacert else {
                bail!("--host tcp://… needs --tlscacert (the cluster's ca.pem) and, to be authorised, --tlscert and --tlskey of a manager node");
            };
            let ca = read(ca_path, "CA certificate")?;
            let identity = match (&global.tlscert, &global.tlskey) {
                (Some(c), Some(k)) => Some(
                    NodeIdentity::from_pem(&read(c, "certificate")?, &read(k, "key")?, &ca)
                        .context("cannot use the client certificate")?,
                ),
                (None, None) => None,
                _ => bail!("--tlscert and --tlskey go together"),
            };
            let config = tls::client_config(identity.as_ref(), &ca)?;
            Ok(
                tls_channel_connected(&addr, config, MANAGER_SERVER_NAME, Duration::from_secs(10))
                    .await?,
            )
        }
    }
}

/// Turns a daemon's refusal into the message a user reads.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("Error response from daemon: {}", s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("unix:///run/x.sock").unwrap(),
            Host::Unix("/run/x.sock".into())
        );
        assert_eq!(
            parse_host("tcp://10.0.0.1").unwrap(),
            Host::Tcp("10.0.0.1:4242".into())
        );
        assert!(parse_host("http://x").is_err());
        assert!(parse_host("unix://").is_err());
    }
}
