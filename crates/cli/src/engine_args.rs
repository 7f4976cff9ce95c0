//! Flags of `rswarm image …` and `rswarm container …`, as Docker spells them.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Load an image from a `docker save` or OCI layout tar archive.
    Load {
        /// Read from this tar archive file.
        #[arg(short, long)]
        input: PathBuf,
        /// Suppress the load output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// json for machine-readable output.
        #[arg(long)]
        format: Option<String>,
        /// Show full image IDs.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Display detailed information on one or more images.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove one or more images.
    #[command(alias = "remove")]
    Rm {
        /// Remove even when a container uses the image.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove unused images.
    Prune {
        /// Remove all images no container uses, not just dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Clone, Debug, Args)]
pub struct PullArgs {
    /// Suppress verbose output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Registry user name (basic auth or token exchange).
    #[arg(long, env = "RSWARM_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry password.
    #[arg(long, env = "RSWARM_REGISTRY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// NAME[:TAG|@DIGEST]
    pub image: String,
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create and start a container from an image.
    Run(RunArgs),
    /// Create a container without starting it.
    Create(RunArgs),
    /// Start one or more stopped containers.
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    #[command(alias = "list", alias = "ps")]
    Ls(PsArgs),
    /// Display detailed information on one or more containers.
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Stop one or more running containers.
    Stop {
        /// Seconds to wait before killing the container.
        #[arg(short = 't', long = "time")]
        time: Option<i32>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove one or more containers.
    #[command(alias = "remove")]
    Rm {
        /// Force the removal of a running container (uses SIGKILL).
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Block until one or more containers stop, then print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

#[derive(Clone, Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// json for machine-readable output.
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Clone, Debug, Args)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" for all).
    #[arg(short = 'n', long)]
    pub tail: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since a timestamp (RFC 3339) or a relative time (e.g. 42m).
    #[arg(long)]
    pub since: Option<String>,
    pub container: String,
}

#[derive(Clone, Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep STDIN open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Detached mode is not supported: exec runs attached.
    #[arg(short, long, hide = true)]
    pub detach: bool,
    /// Set environment variables.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]").
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    pub container: String,
    #[arg(required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Run the container in the background and print its ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Publish a container's port to the host: [ip:]hostPort:containerPort[/udp].
    #[arg(short, long, value_name = "PORTS")]
    pub publish: Vec<String>,
    /// Bind mount a volume: /host:/ctr[:ro] or name:/ctr[:ro].
    #[arg(short, long, value_name = "VOLUME")]
    pub volume: Vec<String>,
    /// Mount a tmpfs directory: /ctr[:size=64m,mode=1777].
    #[arg(long, value_name = "PATH")]
    pub tmpfs: Vec<String>,
    /// Network mode: bridge (default), host, none, container:<name|id>, or an attachable
    /// cluster network's name.
    #[arg(long = "network", alias = "net", default_value = "bridge")]
    pub network: String,
    /// Another name for the container on its cluster network (repeatable).
    #[arg(long = "network-alias", alias = "net-alias", value_name = "ALIAS")]
    pub network_alias: Vec<String>,
    /// Its IPv4 address on its cluster network (one created with --subnet).
    #[arg(long = "ip", value_name = "IPV4")]
    pub ip: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]").
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 64m).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Memory + swap limit; -1 for unlimited swap.
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tune the container's pids limit (-1 for unlimited).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add Linux capabilities.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container.
    #[arg(long)]
    pub privileged: bool,
    /// Set metadata on the container (key=value).
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Run an init as PID 1 that forwards signals and reaps zombies (the default; --init=false turns it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub init: bool,
    /// Signal to stop the container.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds to wait for the container to stop before killing it.
    #[arg(long)]
    pub stop_timeout: Option<u32>,
    /// Pull the image before running: missing (default), always or never.
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Keep STDIN open (not supported on run yet; use `rswarm container exec -it`).
    #[arg(short, long, hide = true)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY (not supported on run yet; use `rswarm container exec -it`).
    #[arg(short, long, hide = true)]
    pub tty: bool,
    pub image: String,
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}
