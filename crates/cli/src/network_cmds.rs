//! `rswarm network …`: the control API's overlay networks, as `docker network` drives a swarm
//! manager, with the node's own view (its local networks; on a worker, all it shows).

use anyhow::{bail, Context};
use rswarm_agent::localnet::PREDEFINED;
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::local::v1::containers_client::ContainersClient;
use rswarm_api::local::v1::local_client::LocalClient;
use rswarm_api::local::v1::networks_client::NetworksClient;
use rswarm_api::local::v1::{
    ConnectContainerRequest, DisconnectContainerRequest, InfoRequest, ListNodeNetworksRequest,
};
use rswarm_api::types::v1::Network;
use tonic::transport::Channel;

use crate::client::status_error;
use crate::commands::{print, wants_json};
use crate::network_args::{
    network_spec, parse_filters, parse_prune_filters, resolve, NetworkCommand, PRUNE_WARNING,
};
use crate::network_output as out;

/// Checks what can be checked without the manager, then connects and runs the command.
pub async fn run(global: &crate::Global, cmd: NetworkCommand) -> anyhow::Result<()> {
    precheck(&cmd)?;
    if let NetworkCommand::Prune { force: false, .. } = cmd {
        if !crate::prompt::confirm(PRUNE_WARNING)? {
            return Ok(());
        }
    }
    let channel = crate::client::connect(global).await?;
    let mut text = String::new();
    let result = network_command(channel, cmd, &mut text).await;
    // What was done is printed even when something else failed (as docker does).
    print(&text);
    result
}

/// The flag checks that need no manager.
pub fn precheck(cmd: &NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create(a) => network_spec(a).map(|_| ()),
        NetworkCommand::Ls {
            format, filters, ..
        } => {
            wants_json(format)?;
            parse_filters(filters).map(|_| ())
        }
        NetworkCommand::Inspect { format, .. } => wants_json(format).map(|_| ()),
        NetworkCommand::Rm { .. }
        | NetworkCommand::Connect { .. }
        | NetworkCommand::Disconnect { .. } => Ok(()),
        NetworkCommand::Prune { filters, .. } => {
            parse_prune_filters(filters, crate::events::now_ms()).map(|_| ())
        }
    }
}

/// Every network the manager knows.
pub async fn list_networks(control: &mut ControlClient<Channel>) -> anyhow::Result<Vec<Network>> {
    Ok(control
        .list_networks(pb::ListNetworksRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .networks)
}

/// The node's own networks (its local socket's `Networks`); `None` where that is not served (a
/// remote `--host`).
async fn node_networks(channel: &Channel) -> anyhow::Result<Option<Vec<Network>>> {
    match NetworksClient::new(channel.clone())
        .list(ListNodeNetworksRequest {})
        .await
    {
        Ok(r) => Ok(Some(r.into_inner().networks)),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(status_error(s)),
    }
}

/// The node behind `channel`: its id (empty for a remote `--host`) and whether it is a worker
/// (a remote `--host` is a manager).
async fn this_node(channel: &Channel) -> (String, bool) {
    match LocalClient::new(channel.clone()).info(InfoRequest {}).await {
        Ok(r) => {
            let info = r.into_inner();
            (info.node_id, !info.is_manager)
        }
        Err(_) => (String::new(), false),
    }
}

/// "no such network: X" for an unknown network (as docker says it), the daemon's words otherwise.
fn lookup_error(key: &str, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::NotFound {
        anyhow::anyhow!("no such network: {key}")
    } else {
        status_error(s)
    }
}

/// Runs one network command; what it prints goes to `text`.
pub async fn network_command(
    channel: Channel,
    cmd: NetworkCommand,
    text: &mut String,
) -> anyhow::Result<()> {
    let control = &mut ControlClient::new(channel.clone());
    match cmd {
        NetworkCommand::Create(a) => {
            let spec = network_spec(&a)?;
            let network = control
                .create_network(pb::CreateNetworkRequest { spec: Some(spec) })
                .await
                .map_err(status_error)?
                .into_inner()
                .network
                .context("the manager created the network but returned none")?;
            text.push_str(&format!("{}\n", network.id));
        }
        NetworkCommand::Ls {
            quiet,
            no_trunc,
            filters,
            format,
        } => {
            let json_out = wants_json(&format)?;
            let filter = parse_filters(&filters)?;
            let node = node_networks(&channel).await?;
            // A worker shows its own view only, as Docker's do (and does so with no manager).
            let cluster = if this_node(&channel).await.1 {
                None
            } else {
                Some(list_networks(control).await?)
            };
            let networks: Vec<Network> = out::node_view(cluster, node.unwrap_or_default())
                .into_iter()
                .filter(|n| filter.matches(n))
                .collect();
            text.push_str(&if quiet {
                out::ls_ids(&networks, no_trunc)
            } else if json_out {
                out::ls_json_lines(&networks, no_trunc)
            } else {
                out::ls_table(&networks, no_trunc)
            });
        }
        NetworkCommand::Inspect {
            networks,
            format,
            verbose,
        } => {
            wants_json(&format)?;
            // `Containers` are this node's (as Docker shows them); unknown without a node. A
            // worker looks in its own view only; a manager in the cluster's, then in its own for
            // the local networks.
            let (me, worker) = this_node(&channel).await;
            let local_node = (!me.is_empty()).then_some(me);
            let mut found = Vec::new();
            let mut errors = Vec::new();
            let node = node_networks(&channel).await?.unwrap_or_default();
            for key in &networks {
                if !worker {
                    match control
                        .get_network(pb::GetNetworkRequest {
                            network: key.clone(),
                        })
                        .await
                    {
                        Ok(r) => {
                            match r.into_inner().network {
                                Some(n) => found.push(out::inspect_json(
                                    &n,
                                    verbose,
                                    local_node.as_deref(),
                                )),
                                None => errors
                                    .push(format!("the manager returned no network for {key}")),
                            }
                            continue;
                        }
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => {
                            errors.push(status_error(s).to_string());
                            continue;
                        }
                    }
                }
                let candidates: Vec<Network> = node
                    .iter()
                    .filter(|n| worker || out::is_local(n))
                    .cloned()
                    .collect();
                match resolve(key, &candidates) {
                    Some(n) => found.push(out::inspect_json(n, verbose, local_node.as_deref())),
                    None => errors.push(format!("no such network: {key}")),
                }
            }
            text.push_str(&format!(
                "{}\n",
                serde_json::to_string_pretty(&serde_json::Value::Array(found))?
            ));
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
        }
        NetworkCommand::Rm { force, networks } => {
            let mut errors = Vec::new();
            for key in networks {
                if PREDEFINED.iter().any(|(name, _)| *name == key) {
                    errors.push(format!(
                        "Error response from daemon: {key} is a pre-defined network and cannot be removed"
                    ));
                    continue;
                }
                match control
                    .remove_network(pb::RemoveNetworkRequest {
                        network: key.clone(),
                    })
                    .await
                {
                    Ok(_) => text.push_str(&format!("{key}\n")),
                    Err(s) if force && s.code() == tonic::Code::NotFound => {}
                    Err(s) => errors.push(lookup_error(&key, s).to_string()),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
        }
        // Containers are the node's own: its daemon plugs them in.
        NetworkCommand::Connect {
            aliases,
            ip,
            network,
            container,
        } => {
            ContainersClient::new(channel)
                .connect(ConnectContainerRequest {
                    id: container,
                    network,
                    aliases,
                    ip: ip.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?;
        }
        NetworkCommand::Disconnect {
            force,
            network,
            container,
        } => {
            ContainersClient::new(channel)
                .disconnect(DisconnectContainerRequest {
                    id: container,
                    network,
                    force,
                })
                .await
                .map_err(status_error)?;
        }
        NetworkCommand::Prune { filters, .. } => {
            let filter = parse_prune_filters(&filters, crate::events::now_ms())?;
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for n in list_networks(control).await? {
                if !filter.matches(&n) {
                    continue;
                }
                let name = n.spec.map(|s| s.name).unwrap_or_default();
                match control
                    .remove_network(pb::RemoveNetworkRequest {
                        network: n.id.clone(),
                    })
                    .await
                {
                    Ok(_) => deleted.push(name),
                    // In use (or gone meanwhile): not prunable, as docker skips it.
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::FailedPrecondition | tonic::Code::NotFound
                        ) => {}
                    Err(s) => errors.push(format!("{name}: {}", status_error(s))),
                }
            }
            if !deleted.is_empty() {
                text.push_str("Deleted Networks:\n");
                for name in deleted {
                    text.push_str(&format!("{name}\n"));
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
        }
    }
    Ok(())
}
