//! `rswarm network …`: the control API's overlay networks, as `docker network` drives a swarm
//! manager.

use anyhow::{bail, Context};
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::types::v1::Network;
use tonic::transport::Channel;

use crate::client::status_error;
use crate::commands::{print, wants_json};
use crate::network_args::{network_spec, parse_filters, NetworkCommand};
use crate::network_output as out;

/// Checks what can be checked without the manager, then connects and runs the command.
pub async fn run(global: &crate::Global, cmd: NetworkCommand) -> anyhow::Result<()> {
    precheck(&cmd)?;
    let channel = crate::client::connect(global).await?;
    let mut text = String::new();
    let result = network_command(&mut ControlClient::new(channel), cmd, &mut text).await;
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
        NetworkCommand::Rm { .. } => Ok(()),
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
    control: &mut ControlClient<Channel>,
    cmd: NetworkCommand,
    text: &mut String,
) -> anyhow::Result<()> {
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
            let networks: Vec<Network> = list_networks(control)
                .await?
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
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for key in &networks {
                match control
                    .get_network(pb::GetNetworkRequest {
                        network: key.clone(),
                    })
                    .await
                {
                    Ok(r) => match r.into_inner().network {
                        Some(n) => found.push(out::inspect_json(&n, verbose)),
                        None => errors.push(format!("the manager returned no network for {key}")),
                    },
                    Err(s) => errors.push(lookup_error(key, s).to_string()),
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
    }
    Ok(())
}
