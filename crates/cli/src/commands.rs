//! What each `rswarm` subcommand does.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rswarm_agent::daemon::{run_worker, DaemonPaths};
use rswarm_agent::engine::EngineOptions;
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
use crate::engine_args::{ContainerCommand, ImageCommand};
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
                Err(e) if e.is::<crate::engine_cmds::ExitStatus>() => e
                    .downcast_ref::<crate::engine_cmds::ExitStatus>()
                    .map_or(ExitCode::FAILURE, |s| ExitCode::from(s.0)),
                Err(e) => {
                    report(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn paths(d: &DaemonArgs) -> anyhow::Result<DaemonPaths> {
    Ok(DaemonPaths {
        state_dir: d.state_dir.clone(),
        socket: d.socket.clone(),
        engine: engine_options(d)?,
    })
}

/// Engine flags given on `init`/`join`/a daemon are kept in the state dir (in daemon.json's shape),
/// so a restarted daemon (a systemd unit without the flags) keeps them.
const ENGINE_FLAGS_FILE: &str = "engine-flags.json";

fn given_flags(d: &DaemonArgs) -> Option<DaemonJson> {
    let f = DaemonJson {
        registry_mirrors: d.registry_mirrors.clone(),
        insecure_registries: d.insecure_registries.clone(),
        runtime: d.runtime.clone(),
        init_path: d.init_path.clone(),
        log_opts: Default::default(),
    };
    let any = !f.registry_mirrors.is_empty()
        || !f.insecure_registries.is_empty()
        || f.runtime.is_some()
        || f.init_path.is_some();
    any.then_some(f)
}

/// Stores the engine flags given on this command line (once the state dir exists).
fn save_engine_flags(d: &DaemonArgs) -> anyhow::Result<()> {
    if let Some(f) = given_flags(d) {
        let path = d.state_dir.join(ENGINE_FLAGS_FILE);
        rswarm_agent::statedir::write_atomic(&path, &serde_json::to_vec_pretty(&f)?, 0o600)?;
    }
    Ok(())
}

/// Docker's daemon.json keys that rswarm honours.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DaemonJson {
    #[serde(default)]
    registry_mirrors: Vec<String>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    runtime: Option<std::path::PathBuf>,
    #[serde(default)]
    init_path: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    log_opts: std::collections::BTreeMap<String, String>,
}

/// The engine's settings: the config file, then the flags (given now, or stored by an earlier run).
pub fn engine_options(d: &DaemonArgs) -> anyhow::Result<EngineOptions> {
    let file: DaemonJson = match std::fs::read(&d.config_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the config file {} is not valid JSON of daemon.json's shape",
                d.config_file.display()
            )
        })?,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && d.config_file == std::path::Path::new(crate::DEFAULT_CONFIG_FILE) =>
        {
            DaemonJson::default()
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read the config file {}", d.config_file.display())
            })
        }
    };
    let flags = match given_flags(d) {
        Some(f) => f,
        None => std::fs::read(d.state_dir.join(ENGINE_FLAGS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
    };
    let mut registries = rswarm_image::RegistryConfig::default();
    for m in file.registry_mirrors.iter().chain(&flags.registry_mirrors) {
        if !m.starts_with("http://") && !m.starts_with("https://") {
            bail!("invalid registry mirror {m:?}: use a URL such as https://mirror.example or http://10.0.0.5:5000");
        }
        if !registries.mirrors.contains(m) {
            registries.mirrors.push(m.clone());
        }
    }
    for r in file
        .insecure_registries
        .iter()
        .chain(&flags.insecure_registries)
    {
        if r.contains("://") {
            bail!("invalid insecure registry {r:?}: give HOST[:PORT] or a CIDR, without a scheme");
        }
        if !registries.insecure.contains(r) {
            registries.insecure.push(r.clone());
        }
    }
    let log_max_size = file
        .log_opts
        .get("max-size")
        .map(|s| crate::engine_cmds::parse_bytes(s))
        .transpose()?;
    let log_max_files = file
        .log_opts
        .get("max-file")
        .map(|s| {
            s.parse::<u32>()
                .context("log-opts max-file must be a number")
        })
        .transpose()?;
    Ok(EngineOptions {
        registries,
        runtime: flags.runtime.or(file.runtime),
        shim: None,
        init: flags.init_path.or(file.init_path),
        log_max_size,
        log_max_files,
    })
}

/// Writes `text` to stdout and flushes.
pub(crate) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The daemon's paths and engine settings, checked before anything is written.
fn checked_paths(d: &DaemonArgs) -> Option<DaemonPaths> {
    let paths = match paths(d) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            return None;
        }
    };
    if let Err(e) = rswarm_agent::engine::preflight(&paths.engine) {
        report(&anyhow::Error::new(e));
        return None;
    }
    Some(paths)
}

fn init(args: InitArgs) -> ExitCode {
    init_logging(args.daemon.log_format);
    let Some(paths) = checked_paths(&args.daemon) else {
        return ExitCode::FAILURE;
    };
    let opts = InitOptions {
        advertise_addr: args.advertise_addr.clone(),
        listen_addr: args.listen_addr,
        state_dir: args.daemon.state_dir.clone(),
        hostname: args.hostname.clone().unwrap_or_else(local_hostname),
        heartbeat: args.dispatcher_heartbeat,
        cert_expiry: args.cert_expiry,
        network: rswarm_manager::bootstrap::NetworkDefaults {
            addr_pools: args.default_addr_pool.clone(),
            subnet_size: args.default_addr_pool_mask_length,
            data_path_port: args.data_path_port,
        },
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
    if let Err(e) = save_engine_flags(&args.daemon) {
        report(&e);
        return ExitCode::FAILURE;
    }
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
    let Some(paths) = checked_paths(&args.daemon) else {
        return ExitCode::FAILURE;
    };
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
        save_engine_flags(&args.daemon)?;
        Ok(run_worker(paths, cancel).await?)
    })
}

/// `rswarm-manager` / `rswarm-agent`: resume a node from its state dir.
pub fn resume(args: DaemonArgs, manager: bool) -> ExitCode {
    init_logging(args.log_format);
    let paths = match paths(&args) {
        Ok(p) => p,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = save_engine_flags(&args) {
        report(&e);
        return ExitCode::FAILURE;
    }
    if manager {
        run_daemon(move |cancel| async move { Ok(run_manager(paths, cancel).await?) })
    } else {
        run_daemon(move |cancel| async move { Ok(run_worker(paths, cancel).await?) })
    }
}

/// `--format`: table (the default) or json.
pub(crate) fn wants_json(format: &Option<String>) -> anyhow::Result<bool> {
    match format.as_deref() {
        None | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(f) => bail!("unsupported --format {f:?}: use json"),
    }
}

fn json(v: &serde_json::Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// This node's id, when the host is its local socket (to mark it with `*`); empty otherwise.
pub(crate) async fn self_id(channel: &Channel) -> String {
    LocalClient::new(channel.clone())
        .info(InfoRequest {})
        .await
        .map(|r| r.into_inner().node_id)
        .unwrap_or_default()
}

async fn client_command(global: &Global, command: Command) -> anyhow::Result<()> {
    if let Command::Service(cmd) = command {
        // Flags are checked before connecting: a bad value is reported as such.
        return crate::service_cmds::run(global, cmd).await;
    }
    if let Command::Network(cmd) = command {
        return crate::network_cmds::run(global, cmd).await;
    }
    if let Command::Events(a) = &command {
        crate::events::request(a, 0)?;
    }
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
        Command::Events(a) => crate::events::run(&mut control, a).await?,
        Command::Service(_) | Command::Network(_) => unreachable!("handled before connecting"),
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
        Command::Image(c) => crate::engine_cmds::image_command(channel, c).await?,
        Command::Container(c) => crate::engine_cmds::container_command(channel, c).await?,
        Command::Run(a) => {
            crate::engine_cmds::container_command(channel, ContainerCommand::Run(a)).await?
        }
        Command::Ps(a) => {
            crate::engine_cmds::container_command(channel, ContainerCommand::Ls(a)).await?
        }
        Command::Exec(a) => {
            crate::engine_cmds::container_command(channel, ContainerCommand::Exec(a)).await?
        }
        Command::Logs(a) => {
            crate::engine_cmds::container_command(channel, ContainerCommand::Logs(a)).await?
        }
        Command::Images { quiet, format } => {
            crate::engine_cmds::image_command(
                channel,
                ImageCommand::Ls {
                    quiet,
                    format,
                    no_trunc: false,
                },
            )
            .await?
        }
        Command::Pull(a) => {
            crate::engine_cmds::image_command(channel, ImageCommand::Pull(a)).await?
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn daemon_args(
        extra: &[&str],
        state: &std::path::Path,
        config: &std::path::Path,
    ) -> DaemonArgs {
        let mut argv = vec![
            "rswarm-agent".to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--config-file".into(),
            config.display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        crate::DaemonCli::try_parse_from(argv).unwrap().daemon
    }

    #[test]
    fn engine_settings_merge_config_file_flags_and_stored_flags() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = dir.path().join("daemon.json");
        std::fs::write(
            &config,
            r#"{"registry-mirrors": ["https://mirror.example"], "insecure-registries": ["10.0.0.0/8"],
                "log-opts": {"max-size": "1m", "max-file": "2"}}"#,
        )
        .unwrap();
        let d = daemon_args(&["--insecure-registry", "reg.local:5000"], &state, &config);
        let o = engine_options(&d).unwrap();
        assert_eq!(o.registries.mirrors, vec!["https://mirror.example"]);
        assert_eq!(o.registries.insecure, vec!["10.0.0.0/8", "reg.local:5000"]);
        assert_eq!(o.log_max_size, Some(1 << 20));
        assert_eq!(o.log_max_files, Some(2));
        // Flags given once are kept in the state dir for later runs without them.
        save_engine_flags(&d).unwrap();
        let later = engine_options(&daemon_args(&[], &state, &config)).unwrap();
        assert_eq!(
            later.registries.insecure,
            vec!["10.0.0.0/8", "reg.local:5000"]
        );
    }

    #[test]
    fn bad_engine_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{not json").unwrap();
        let err = engine_options(&daemon_args(&[], dir.path(), &config)).unwrap_err();
        assert!(
            format!("{err:#}").contains("daemon.json")
                || format!("{err:#}").contains("not valid JSON")
        );
        let missing = dir.path().join("absent.json");
        assert!(
            engine_options(&daemon_args(&[], dir.path(), &missing)).is_err(),
            "an explicit config file must exist"
        );
        std::fs::write(&config, "{}").unwrap();
        let d = daemon_args(
            &["--registry-mirror", "mirror.example"],
            dir.path(),
            &config,
        );
        let err = engine_options(&d).unwrap_err().to_string();
        assert!(err.contains("invalid registry mirror"), "{err}");
        let d = daemon_args(
            &["--insecure-registry", "http://x:5000"],
            dir.path(),
            &config,
        );
        let err = engine_options(&d).unwrap_err().to_string();
        assert!(err.contains("invalid insecure registry"), "{err}");
    }
}
