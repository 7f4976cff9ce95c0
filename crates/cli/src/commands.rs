//! What each `rswarm` subcommand does.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rswarm_agent::daemon::{run_worker, DaemonPaths};
use rswarm_agent::join::{join, JoinOptions};
use rswarm_agent::local::DaemonExit;
use rswarm_agent::statedir::StateDir;
use rswarm_agent::{local_hostname, with_default_port, VERSION};
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::local::v1::local_client::LocalClient;
use rswarm_api::local::v1::{InfoRequest, LeaveRequest};
use rswarm_manager::daemon::run_manager;
use rswarm_manager::{bootstrap, InitOptions};
use tonic::transport::Channel;

use crate::client::{connect, parse_host, status_error, Host};
use crate::output;
use crate::shell::{init_logging, report, run_daemon};
use crate::{
    Cli, Command, DaemonArgs, Global, InitArgs, JoinArgs, JoinTokenArgs, LeaveArgs, NodeCommand,
    SwarmCommand, UpdateArgs,
};

/// Runs one invocation of `rswarm`.
pub fn run(cli: Cli) -> ExitCode {
    let command = match cli.command {
        Command::Swarm(SwarmCommand::Init(args)) => Command::Init(args),
        Command::Swarm(SwarmCommand::Join(args)) => Command::Join(args),
        Command::Swarm(SwarmCommand::JoinToken(args)) => Command::JoinToken(args),
        Command::Swarm(SwarmCommand::Leave(args)) => Command::Leave(args),
        other => other,
    };
    match command {
        Command::Init(args) => init(args),
        Command::Join(args) => join_cmd(args),
        other => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    report(&e.into());
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(client_command(&cli.global, other)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn paths(d: &DaemonArgs) -> DaemonPaths {
    DaemonPaths {
        state_dir: d.state_dir.clone(),
        socket: d.socket.clone(),
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn init(args: InitArgs) -> ExitCode {
    init_logging(args.daemon.log_format);
    let opts = InitOptions {
        advertise_addr: args.advertise_addr.clone(),
        listen_addr: args.listen_addr,
        state_dir: args.daemon.state_dir.clone(),
        hostname: args.hostname.clone().unwrap_or_else(local_hostname),
        heartbeat: args.dispatcher_heartbeat,
        cert_expiry: args.cert_expiry,
    };
    // Fail before writing anything when the listener cannot be had.
    if let Err(e) = std::net::TcpListener::bind(args.listen_addr) {
        report(&anyhow::anyhow!(
            "cannot listen on {}: {e}; check that the address belongs to this host and the port is free (--listen-addr)",
            args.listen_addr
        ));
        return ExitCode::FAILURE;
    }
    let outcome = match bootstrap(&opts) {
        Ok(o) => o,
        Err(e) => {
            report(&anyhow::Error::new(e).context("cannot initialise the cluster"));
            return ExitCode::FAILURE;
        }
    };
    print(&format!(
        "Swarm initialized: current node ({}) is now a manager.\n\n{}\nTo add a manager to this swarm, run 'rswarm join-token manager' and follow the instructions.\n\n",
        outcome.node_id,
        output::join_instructions("worker", &outcome.worker_token, &outcome.manager_addr),
    ));
    let paths = paths(&args.daemon);
    run_daemon(move |cancel| async move { Ok(run_manager(paths, cancel).await?) })
}

/// The local source address towards `manager`: what other nodes most likely reach us at.
fn detect_advertise(manager: &str) -> anyhow::Result<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").context("cannot open a UDP socket")?;
    sock.connect(manager)
        .with_context(|| format!("no route to the manager {manager}; pass --advertise-addr"))?;
    Ok(sock.local_addr()?.ip().to_string())
}

fn join_cmd(args: JoinArgs) -> ExitCode {
    init_logging(args.daemon.log_format);
    let paths = paths(&args.daemon);
    run_daemon(move |cancel| async move {
        let manager = with_default_port(&args.manager);
        let advertise_addr = match args.advertise_addr {
            Some(a) => a,
            None => detect_advertise(&manager)?,
        };
        let opts = JoinOptions {
            token: args.token,
            manager_addr: manager,
            advertise_addr,
            state_dir: StateDir::new(&paths.state_dir),
            hostname: args.hostname.unwrap_or_else(local_hostname),
            timeout: args.timeout,
        };
        let config = tokio::select! {
            r = join(&opts) => r.context("cannot join the cluster")?,
            () = cancel.cancelled() => return Ok(DaemonExit::Stopped),
        };
        print(&format!("This node joined a swarm as a {}.\n", config.role));
        Ok(run_worker(paths, cancel).await?)
    })
}

/// `rswarm-manager` / `rswarm-agent`: resume a node from its state dir.
pub fn resume(args: DaemonArgs, manager: bool) -> ExitCode {
    init_logging(args.log_format);
    let paths = paths(&args);
    if manager {
        run_daemon(move |cancel| async move { Ok(run_manager(paths, cancel).await?) })
    } else {
        run_daemon(move |cancel| async move { Ok(run_worker(paths, cancel).await?) })
    }
}

fn wants_json(format: &Option<String>) -> anyhow::Result<bool> {
    match format.as_deref() {
        None | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(f) => bail!("unsupported --format {f:?}: use json"),
    }
}

fn json(v: &serde_json::Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// This node's id, when the host is its local socket (to mark it with `*`).
async fn self_id(channel: &Channel) -> String {
    LocalClient::new(channel.clone())
        .info(InfoRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .unwrap_or_default()
}

async fn client_command(global: &Global, command: Command) -> anyhow::Result<()> {
    let channel = connect(global).await?;
    let mut control = ControlClient::new(channel.clone());
    match command {
        Command::Init(_)
        | Command::Join(_)
        | Command::Swarm(
            SwarmCommand::Init(_)
            | SwarmCommand::Join(_)
            | SwarmCommand::JoinToken(_)
            | SwarmCommand::Leave(_),
        ) => unreachable!("run() starts daemons itself and maps the swarm aliases"),
        Command::Swarm(SwarmCommand::Update(args)) => swarm_update(&mut control, args).await?,
        Command::JoinToken(JoinTokenArgs {
            role,
            quiet,
            rotate,
        }) => {
            let r = control
                .get_join_token(pb::GetJoinTokenRequest {
                    role: role.clone(),
                    rotate,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if quiet {
                print(&format!("{}\n", r.token));
            } else {
                let mut text = String::new();
                if rotate {
                    text.push_str(&format!("Successfully rotated {role} join token.\n\n"));
                }
                let addr = r.manager_addrs.first().cloned().unwrap_or_default();
                text.push_str(&output::join_instructions(&role, &r.token, &addr));
                print(&text);
            }
        }
        Command::Node(cmd) => node_command(&channel, &mut control, cmd).await?,
        Command::Info { format } => {
            let json_out = wants_json(&format)?;
            let info = LocalClient::new(channel)
                .info(InfoRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let cluster = if info.is_manager {
                Some(
                    control
                        .get_cluster(pb::GetClusterRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner(),
                )
            } else {
                None
            };
            if json_out {
                print(&json(&output::info_json(&info, cluster.as_ref())));
            } else {
                print(&output::info_text(&info, cluster.as_ref()));
            }
        }
        Command::Leave(LeaveArgs { force }) => {
            LocalClient::new(channel)
                .leave(LeaveRequest { force })
                .await
                .map_err(status_error)?;
            if let Host::Unix(path) = parse_host(&global.host)? {
                // The daemon removes its socket last, after erasing its state.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while std::path::Path::new(&path).exists() {
                    if tokio::time::Instant::now() > deadline {
                        bail!("the daemon accepted to leave but is still running after 20s; check its logs");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            print("Node left the swarm.\n");
        }
        Command::Version => {
            let server = LocalClient::new(channel)
                .info(InfoRequest {})
                .await
                .map(|r| r.into_inner().version)
                .unwrap_or_else(|_| "unavailable".into());
            print(&format!(
                "Client:\n Version: {VERSION}\n\nServer:\n Version: {server}\n"
            ));
        }
    }
    Ok(())
}

async fn swarm_update(
    control: &mut ControlClient<Channel>,
    args: UpdateArgs,
) -> anyhow::Result<()> {
    if args.dispatcher_heartbeat.is_none() && args.cert_expiry.is_none() {
        bail!("nothing to update: give --dispatcher-heartbeat and/or --cert-expiry");
    }
    control
        .update_cluster(pb::UpdateClusterRequest {
            heartbeat_period_ms: args
                .dispatcher_heartbeat
                .map_or(0, |d| d.as_millis().max(1) as u64),
            cert_expiry_secs: args.cert_expiry.map_or(0, |d| d.as_secs().max(1)),
        })
        .await
        .map_err(status_error)?;
    print("Swarm updated.\n");
    Ok(())
}

async fn node_command(
    channel: &Channel,
    control: &mut ControlClient<Channel>,
    cmd: NodeCommand,
) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls {
            format,
            quiet,
            filters,
        } => {
            let json_out = wants_json(&format)?;
            let nodes = control
                .list_nodes(pb::ListNodesRequest { filters })
                .await
                .map_err(status_error)?
                .into_inner()
                .nodes;
            let me = self_id(channel).await;
            if quiet {
                print(
                    &nodes
                        .iter()
                        .map(|n| format!("{}\n", n.id))
                        .collect::<String>(),
                );
            } else if json_out {
                let v: Vec<_> = nodes.iter().map(|n| output::node_json(n, &me)).collect();
                print(&json(&serde_json::Value::Array(v)));
            } else {
                print(&output::node_table(&nodes, &me));
            }
        }
        NodeCommand::Inspect {
            nodes,
            format,
            pretty,
        } => {
            wants_json(&format)?;
            let me = self_id(channel).await;
            let mut found = Vec::new();
            for key in &nodes {
                // `self` is this node, as in `docker node inspect self`.
                let node_key = if key == "self" && !me.is_empty() {
                    me.clone()
                } else {
                    key.clone()
                };
                let node = control
                    .get_node(pb::GetNodeRequest { node: node_key })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .node
                    .with_context(|| format!("the daemon returned no node for {key}"))?;
                found.push(node);
            }
            if pretty {
                let blocks: Vec<String> = found.iter().map(output::node_pretty).collect();
                print(&blocks.join("\n"));
            } else {
                let v: Vec<_> = found.iter().map(|n| output::node_json(n, &me)).collect();
                print(&json(&serde_json::Value::Array(v)));
            }
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
            let label_add = label_add
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.clone(), String::new()),
                })
                .collect();
            let updated = control
                .update_node(pb::UpdateNodeRequest {
                    node,
                    availability: availability.unwrap_or_default(),
                    label_add,
                    label_rm,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print(&format!(
                "{}\n",
                updated.node.map(|n| n.id).unwrap_or_default()
            ));
        }
        NodeCommand::Rm { force, nodes } => {
            let mut failed = Vec::new();
            for node in nodes {
                match control
                    .remove_node(pb::RemoveNodeRequest {
                        node: node.clone(),
                        force,
                    })
                    .await
                {
                    Ok(_) => print(&format!("{node}\n")),
                    Err(s) => failed.push(status_error(s).to_string()),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
    }
    Ok(())
}
