//! The `rswarm` command line, and the entry points of the three binaries.
//!
//! `rswarm` talks to the local daemon over its unix socket (or to a manager over mutual TLS with
//! `--host tcp://…` and certificate files), as `docker` talks to dockerd. `rswarm init` and
//! `rswarm join` create a node and then run its daemon in the foreground.

pub mod client;
pub mod commands;
pub mod engine_args;
pub mod engine_cmds;
pub mod events;
pub mod network_args;
pub mod network_cmds;
pub mod network_output;
pub mod output;
pub mod progress;
pub mod prompt;
pub mod service_args;
pub mod service_cmds;
pub mod service_logs;
pub mod service_output;
pub mod shell;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine_args::{
    ContainerCommand, ExecArgs, ImageCommand, LogsArgs, PsArgs, PullArgs, RunArgs,
};
use crate::shell::LogFormat;

/// Where daemons keep state and listen locally unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rswarm";
pub const DEFAULT_SOCKET: &str = "/run/rswarm/rswarm.sock";
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rswarm/daemon.json";

#[derive(Debug, Parser)]
#[command(
    name = "rswarm",
    version,
    about = "A Swarm-like container cluster",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// How the CLI reaches a daemon.
#[derive(Clone, Debug, Args)]
pub struct Global {
    /// Daemon to talk to: unix:///path/to.sock or tcp://HOST:PORT (a manager, with --tls* files).
    #[arg(short = 'H', long, global = true, env = "RSWARM_HOST", default_value = concat!("unix://", "/run/rswarm/rswarm.sock"))]
    pub host: String,
    /// CA certificate to verify a tcp:// manager against (a node's certs/ca.pem).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate for tcp:// (a manager node's certs/node.pem).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key for tcp:// (a manager node's certs/node-key.pem).
    #[arg(long, global = true, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a cluster with this node as its manager, and run the manager.
    Init(InitArgs),
    /// Join a cluster as a worker, and run the agent.
    Join(JoinArgs),
    /// Show (or rotate) the join token for workers or managers.
    #[command(name = "join-token")]
    JoinToken(JoinTokenArgs),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(crate::service_args::ServiceCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(crate::network_args::NetworkCommand),
    /// Stream the cluster's events (services, nodes, tasks).
    Events(crate::events::EventsArgs),
    /// Show this node's cluster membership.
    Info {
        /// json for machine-readable output.
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Leave the cluster: stop this node's daemon and erase its state.
    Leave(LeaveArgs),
    /// Docker's spelling: `rswarm swarm init|join|join-token|leave|update`.
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Manage images on this node.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage containers on this node.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Same as `rswarm container run`.
    Run(RunArgs),
    /// Same as `rswarm container ls`.
    Ps(PsArgs),
    /// Same as `rswarm container exec`.
    Exec(ExecArgs),
    /// Same as `rswarm container logs`.
    Logs(LogsArgs),
    /// Same as `rswarm image ls`.
    Images {
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// json for machine-readable output.
        #[arg(long)]
        format: Option<String>,
    },
    /// Same as `rswarm image pull`.
    Pull(PullArgs),
    /// Show the client and daemon versions.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Same as `rswarm init`.
    Init(InitArgs),
    /// Same as `rswarm join`.
    Join(JoinArgs),
    /// Same as `rswarm join-token`.
    #[command(name = "join-token")]
    JoinToken(JoinTokenArgs),
    /// Same as `rswarm leave`.
    Leave(LeaveArgs),
    /// Change cluster-wide settings.
    Update(UpdateArgs),
}

#[derive(Clone, Debug, Args)]
pub struct JoinTokenArgs {
    /// worker or manager
    pub role: String,
    /// Print only the token.
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token; the old one stops working for new joins.
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Clone, Debug, Args)]
pub struct LeaveArgs {
    /// Leave even as the last manager (destroys the cluster state).
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Clone, Debug, Args)]
pub struct UpdateArgs {
    /// Agents' heartbeat period; a node is Down after 3 missed beats.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub dispatcher_heartbeat: Option<std::time::Duration>,
    /// Lifetime of node certificates issued from now on.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cert_expiry: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// json for machine-readable output.
        #[arg(long)]
        format: Option<String>,
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: id=, name=, role=manager|worker, label=k[=v], node.label=k[=v], membership=.
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Display detailed information on one or more nodes (JSON unless --pretty).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// json (the default).
        #[arg(short, long)]
        format: Option<String>,
        /// Human-friendly output.
        #[arg(long)]
        pretty: bool,
    },
    /// Update a node.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        /// Add or update a node label (key=value).
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a node label if it exists.
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Remove one or more nodes from the cluster.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node even if it is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Flags every daemon takes.
#[derive(Clone, Debug, Args)]
pub struct DaemonArgs {
    /// Where the node keeps its identity, certificates and (managers) the raft store.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The root-only unix socket the CLI reaches this daemon at.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A registry mirror for docker.io (repeatable), as Docker's `registry-mirrors`.
    #[arg(long = "registry-mirror", value_name = "URL")]
    pub registry_mirrors: Vec<String>,
    /// A registry reached over plain HTTP or untrusted TLS (repeatable): HOST[:PORT] or a CIDR.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// The OCI runtime binary.
    #[arg(long, value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// The init binary run as PID 1 in containers (a static tini).
    #[arg(long, value_name = "PATH")]
    pub init_path: Option<PathBuf>,
    /// The daemon's JSON config file (Docker's daemon.json keys: registry-mirrors,
    /// insecure-registries, runtime, log-opts).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
    pub config_file: PathBuf,
}

#[derive(Clone, Debug, Args)]
pub struct InitArgs {
    /// Address other nodes reach this manager at: IP or IP:PORT.
    #[arg(long)]
    pub advertise_addr: String,
    /// Address the manager's gRPC listener binds.
    #[arg(long, default_value = "0.0.0.0:4242")]
    pub listen_addr: std::net::SocketAddr,
    /// Name of this node (default: the machine's hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Agents' heartbeat period; a node is Down after 3 missed beats.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub dispatcher_heartbeat: std::time::Duration,
    /// Lifetime of node certificates (renewed at 50-80 % of it).
    #[arg(long, default_value = "2160h", value_parser = humantime::parse_duration)]
    pub cert_expiry: std::time::Duration,
    /// Address pool overlay subnets are cut from (CIDR; repeatable; default 10.0.0.0/8).
    #[arg(long, value_name = "CIDR")]
    pub default_addr_pool: Vec<String>,
    /// Prefix length of the subnets cut from the pools (default 24).
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub default_addr_pool_mask_length: u8,
    /// UDP port of the VXLAN data path (default 4789).
    #[arg(long, value_name = "PORT", default_value_t = 4789)]
    pub data_path_port: u16,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Clone, Debug, Args)]
pub struct JoinArgs {
    /// The join token (`rswarm join-token worker` on a manager).
    #[arg(long)]
    pub token: String,
    /// Address other nodes reach this node at (default: the source address towards the manager).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Name of this node (default: the machine's hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// How long to wait for the manager.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// A manager's address, HOST[:PORT].
    pub manager: String,
}

/// `rswarm-manager` and `rswarm-agent`.
#[derive(Debug, Parser)]
#[command(version, about = "Resume an rswarm node from its state dir")]
pub struct DaemonCli {
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `main` of `rswarm`.
pub fn main_rswarm() -> ExitCode {
    let cli = Cli::parse();
    commands::run(cli)
}

/// `main` of `rswarm-manager`.
pub fn main_manager() -> ExitCode {
    let args = DaemonCli::parse();
    commands::resume(args.daemon, true)
}

/// `main` of `rswarm-agent`.
pub fn main_agent() -> ExitCode {
    let args = DaemonCli::parse();
    commands::resume(args.daemon, false)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_lines_are_well_formed() {
        Cli::command().debug_assert();
        DaemonCli::command().debug_assert();
    }

    #[test]
    fn docker_spellings_parse() {
        let cli = Cli::try_parse_from([
            "rswarm",
            "node",
            "ls",
            "-f",
            "role=worker",
            "--format",
            "json",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Ls { ref filters, .. }) if filters == &["role=worker"]
        ));
        let cli = Cli::try_parse_from(["rswarm", "swarm", "join-token", "-q", "worker"]).unwrap();
        assert!(matches!(cli.command, Command::Swarm(SwarmCommand::JoinToken(ref a)) if a.quiet));
    }
}
