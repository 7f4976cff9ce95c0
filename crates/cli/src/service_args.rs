//! Flags of `rswarm service …`, as Docker spells them, and how they become a service spec.
//!
//! Everything here is pure (apart from reading `--env-file`s): the flags are checked and turned
//! into the wire API's [`ServiceSpec`] before anything is sent, so a bad value never reaches the
//! manager.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rswarm_api::types::v1::{
    HealthCheck, Mount, Network, NetworkAttachmentConfig, PortConfig, RestartPolicy, ServiceSpec,
    TaskSpec, UpdateConfig,
};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Display detailed information on one or more services (JSON unless --pretty).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
        /// json (the default).
        #[arg(short, long)]
        format: Option<String>,
        /// Print the information in a human friendly format.
        #[arg(long)]
        pretty: bool,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        /// Only display IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: id=, name=, label=k[=v], mode=replicated|global.
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// table (the default) or json (one object per line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Fetch the logs of a service or task, from every node that runs it.
    Logs(crate::service_logs::ServiceLogsArgs),
    /// List the tasks of one or more services.
    Ps(ServicePsArgs),
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Revert changes to a service's configuration.
    Rollback {
        /// Exit immediately instead of waiting for the service to converge.
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output.
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Scale one or multiple replicated services: SERVICE=REPLICAS…
    Scale {
        /// Exit immediately instead of waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
    /// Update a service.
    Update(Box<UpdateArgs>),
}

#[derive(Clone, Debug, Args)]
pub struct ServicePsArgs {
    /// Filter: id=, name=, node=, desired-state=running|shutdown|accepted|ready.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// table (the default) or json (one object per line).
    #[arg(long)]
    pub format: Option<String>,
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(required = true)]
    pub services: Vec<String>,
}

/// Flags `service create` and `service update` share (Docker's names; every one optional, so an
/// update changes only what was given).
#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct TaskFlags {
    /// Number of tasks.
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub replicas: Option<u64>,
    /// Maximum number of tasks per node (0 = unlimited).
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub replicas_max_per_node: Option<u64>,
    /// Reserve memory (e.g. 64m, 1g).
    #[arg(long, value_parser = parse_memory, allow_hyphen_values = true)]
    pub reserve_memory: Option<u64>,
    /// Reserve CPUs (e.g. 0.5).
    #[arg(long, value_parser = parse_cpus, allow_hyphen_values = true)]
    pub reserve_cpu: Option<u64>,
    /// Limit memory (e.g. 64m, 1g).
    #[arg(long, value_parser = parse_memory, allow_hyphen_values = true)]
    pub limit_memory: Option<u64>,
    /// Limit CPUs (e.g. 0.5).
    #[arg(long, value_parser = parse_cpus, allow_hyphen_values = true)]
    pub limit_cpu: Option<u64>,
    /// Restart when condition is met: none, on-failure or any (default any).
    #[arg(long, value_parser = ["none", "on-failure", "any"])]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (ns|us|ms|s|m|h) (default 5s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (0 = unlimited).
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub restart_window: Option<Duration>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1).
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub update_delay: Option<Duration>,
    /// Action on update failure: pause, continue or rollback (default pause).
    #[arg(long, value_parser = ["pause", "continue", "rollback"])]
    pub update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h) (default 5s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub update_monitor: Option<Duration>,
    /// Update order: start-first or stop-first (default stop-first).
    #[arg(long, value_parser = ["start-first", "stop-first"])]
    pub update_order: Option<String>,
    /// Failure rate to tolerate during an update (0 to 1).
    #[arg(long, value_parser = parse_ratio, allow_hyphen_values = true)]
    pub update_max_failure_ratio: Option<u64>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) (default 1).
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub rollback_delay: Option<Duration>,
    /// Action on rollback failure: pause or continue (default pause).
    #[arg(long, value_parser = ["pause", "continue"])]
    pub rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h) (default 5s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub rollback_monitor: Option<Duration>,
    /// Rollback order: start-first or stop-first (default stop-first).
    #[arg(long, value_parser = ["start-first", "stop-first"])]
    pub rollback_order: Option<String>,
    /// Failure rate to tolerate during a rollback (0 to 1).
    #[arg(long, value_parser = parse_ratio, allow_hyphen_values = true)]
    pub rollback_max_failure_ratio: Option<u64>,
    /// Command to run to check health (run by /bin/sh -c).
    #[arg(long, allow_hyphen_values = true)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub health_interval: Option<Duration>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long, value_parser = parse_count, allow_hyphen_values = true)]
    pub health_retries: Option<u64>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub health_timeout: Option<Duration>,
    /// Start period for the container to initialize before counting retries (ms|s|m|h).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub health_start_period: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Overwrite the default ENTRYPOINT of the image ("" clears it).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the container's root filesystem as read only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub read_only: Option<bool>,
    /// Signal to stop the container.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h) (default 10s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub stop_grace_period: Option<Duration>,
    /// Send registry authentication details (from ~/.docker/config.json) to the nodes.
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Endpoint mode: vip (one virtual IP per network, the default) or dnsrr (DNS round robin).
    #[arg(long, value_parser = parse_endpoint_mode)]
    pub endpoint_mode: Option<String>,
}

#[derive(Clone, Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode: replicated or global.
    #[arg(long, value_parser = ["replicated", "global"])]
    pub mode: Option<String>,
    /// Set environment variables.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Service labels.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Container labels.
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=…,target=…[,readonly].
    #[arg(long, value_parser = parse_mount)]
    pub mount: Vec<Mount>,
    /// Publish a port as a node port: [published:]target[/proto] or
    /// mode=host,target=…,published=…,protocol=….
    #[arg(short, long, value_parser = parse_publish)]
    pub publish: Vec<PortConfig>,
    /// Placement constraints (node.labels.zone==a, node.role!=manager, …).
    #[arg(long, value_parser = parse_constraint)]
    pub constraint: Vec<String>,
    /// Add a placement preference: spread=node.labels.KEY.
    #[arg(long, value_parser = parse_placement_pref)]
    pub placement_pref: Vec<String>,
    /// Attach to an overlay network: NAME|ID or name=NAME,alias=A[,alias=B…].
    #[arg(long, value_parser = parse_network, value_name = "NETWORK")]
    pub network: Vec<NetworkAttachmentConfig>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    pub image: String,
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct UpdateArgs {
    /// Service image tag.
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args (split as a shell would).
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Force update even if no changes require it.
    #[arg(long)]
    pub force: bool,
    /// Roll back to the previous specification.
    #[arg(long)]
    pub rollback: bool,
    /// Add or update an environment variable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or update a service label.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a label by its key.
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or update a container label.
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label by its key.
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Add or update a placement constraint.
    #[arg(long, value_parser = parse_constraint)]
    pub constraint_add: Vec<String>,
    /// Remove a constraint.
    #[arg(long)]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference.
    #[arg(long, value_parser = parse_placement_pref)]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference.
    #[arg(long)]
    pub placement_pref_rm: Vec<String>,
    /// Add or update a mount on a service.
    #[arg(long, value_parser = parse_mount)]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path.
    #[arg(long, value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Add or update a published port.
    #[arg(long, value_parser = parse_publish)]
    pub publish_add: Vec<PortConfig>,
    /// Remove a published port by its target port: TARGET[/PROTOCOL].
    #[arg(long, value_name = "TARGET[/PROTOCOL]")]
    pub publish_rm: Vec<String>,
    /// Add a network: NAME|ID or name=NAME,alias=A[,alias=B…].
    #[arg(long, value_parser = parse_network, value_name = "NETWORK")]
    pub network_add: Vec<NetworkAttachmentConfig>,
    /// Remove a network by its name or id.
    #[arg(long, value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    #[command(flatten)]
    pub task: TaskFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    pub service: String,
}

impl UpdateArgs {
    /// Whether any flag other than --rollback, -d and -q was given.
    pub fn changes_anything(&self) -> bool {
        let neutral = UpdateArgs {
            service: self.service.clone(),
            rollback: self.rollback,
            detach: self.detach,
            quiet: self.quiet,
            ..UpdateArgs::default()
        };
        *self != neutral
    }
}

// ---------------------------------------------------------------------------------------------
// Value parsers (clap calls them, so bad values are refused before anything is sent).

/// A count: a whole number, 0 or more.
pub fn parse_count(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is not a valid count: use a whole number of 0 or more"))
}

/// A size such as `64m` or `1g`, with the engine's parser (as `--memory` of `container run`).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    crate::engine_cmds::parse_bytes(s).map_err(|e| format!("{e:#}"))
}

/// CPUs as a decimal number (`0.5`) → nano CPUs.
pub fn parse_cpus(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs: use a decimal such as 0.5 or 2"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a number of CPUs: must be 0 or more"));
    }
    Ok((v * 1e9).round() as u64)
}

/// A failure ratio between 0 and 1 → thousandths.
pub fn parse_ratio(s: &str) -> Result<u64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a ratio: use a decimal between 0 and 1"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{s:?} is not a ratio: must be between 0 and 1"));
    }
    Ok((v * 1000.0).round() as u64)
}

/// A duration in Go's syntax, as Docker takes it: `5s`, `1m30s`, `500ms`, `1.5h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why} (e.g. 5s, 1m30s, 500ms)");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(bad("a unit is missing")),
            _ => return Err(bad("unknown unit: use ns, us, ms, s, m or h")),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per;
    }
    if total > u64::MAX as f64 {
        return Err(bad("too long"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("invalid value {v:?} for {key}: use true or false")),
    }
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…][,tmpfs-mode=…]`.
pub fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount {
        r#type: "volume".into(),
        ..Mount::default()
    };
    let mut mode_set = false;
    for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
            None => (field.to_ascii_lowercase(), ""),
        };
        let needs_value = |what: &str| {
            if value.is_empty() {
                Err(format!(
                    "invalid mount {s:?}: {what} needs a value ({what}=…)"
                ))
            } else {
                Ok(value.to_string())
            }
        };
        match key.as_str() {
            "type" => m.r#type = needs_value("type")?,
            "source" | "src" => m.source = needs_value("source")?,
            "target" | "destination" | "dst" => m.target = needs_value("target")?,
            "readonly" | "ro" => m.read_only = parse_bool(&key, value)?,
            "tmpfs-size" => {
                m.tmpfs_size = parse_memory(value)
                    .map_err(|e| format!("invalid mount {s:?}: tmpfs-size: {e}"))?
            }
            "tmpfs-mode" => {
                m.tmpfs_mode = u32::from_str_radix(value, 8).map_err(|_| {
                    format!("invalid mount {s:?}: tmpfs-mode must be octal, such as 1777")
                })?;
                mode_set = true;
            }
            other => {
                return Err(format!(
                    "invalid mount {s:?}: unknown option {other:?}: use type, source, target, readonly, tmpfs-size or tmpfs-mode"
                ))
            }
        }
    }
    match m.r#type.as_str() {
        "bind" | "volume" | "tmpfs" => {}
        other => {
            return Err(format!(
                "invalid mount type {other:?}: use bind, volume or tmpfs"
            ))
        }
    }
    if m.target.is_empty() {
        return Err(format!(
            "invalid mount {s:?}: target is required (target=/path/in/container)"
        ));
    }
    if !m.target.starts_with('/') {
        return Err(format!(
            "invalid mount {s:?}: target {:?} must be an absolute path",
            m.target
        ));
    }
    if m.r#type == "bind" && m.source.is_empty() {
        return Err(format!(
            "invalid mount {s:?}: a bind mount needs source=/path/on/the/node"
        ));
    }
    if m.r#type == "tmpfs" && !m.source.is_empty() {
        return Err(format!("invalid mount {s:?}: a tmpfs mount has no source"));
    }
    if m.r#type != "tmpfs" && (m.tmpfs_size != 0 || mode_set) {
        return Err(format!(
            "invalid mount {s:?}: tmpfs-size and tmpfs-mode go with type=tmpfs"
        ));
    }
    Ok(m)
}

fn parse_port_number(s: &str, what: &str, whole: &str) -> Result<u32, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(u32::from(p)),
        _ => Err(format!(
            "invalid port {whole:?}: {what} port {s:?} must be a number from 1 to 65535"
        )),
    }
}

fn parse_protocol(p: &str, whole: &str) -> Result<String, String> {
    match p.trim().to_ascii_lowercase().as_str() {
        "" | "tcp" => Ok("tcp".into()),
        "udp" => Ok("udp".into()),
        other => Err(format!(
            "invalid port {whole:?}: protocol {other:?} is not supported: use tcp or udp"
        )),
    }
}

/// `-p [published:]target[/proto]` or `-p mode=host,target=80,published=8080,protocol=tcp`.
pub fn parse_publish(s: &str) -> Result<PortConfig, String> {
    if s.contains('=') {
        let mut p = PortConfig {
            protocol: "tcp".into(),
            ..PortConfig::default()
        };
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return Err(format!("invalid port {s:?}: {field:?} is not key=value"));
            };
            match key.trim() {
                "mode" => match value.trim() {
                    "host" => {}
                    "ingress" => {
                        return Err(format!(
                            "invalid port {s:?}: mode=ingress (the routing mesh) is not supported: ports are published on the nodes that run the tasks; use mode=host"
                        ))
                    }
                    other => {
                        return Err(format!(
                            "invalid port {s:?}: unknown mode {other:?}: use mode=host"
                        ))
                    }
                },
                "target" => p.target = parse_port_number(value, "target", s)?,
                "published" => p.published = parse_port_number(value, "published", s)?,
                "protocol" => p.protocol = parse_protocol(value, s)?,
                other => {
                    return Err(format!(
                        "invalid port {s:?}: unknown field {other:?}: use mode, target, published or protocol"
                    ))
                }
            }
        }
        if p.target == 0 {
            return Err(format!(
                "invalid port {s:?}: target is required (target=80)"
            ));
        }
        return Ok(p);
    }
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = parse_protocol(proto, s)?;
    if ports.contains('-') {
        return Err(format!(
            "invalid port {s:?}: port ranges are not supported: publish each port with its own -p"
        ));
    }
    let (published, target) = match ports.split(':').collect::<Vec<_>>().as_slice() {
        [target] => (0, parse_port_number(target, "target", s)?),
        [published, target] => (
            parse_port_number(published, "published", s)?,
            parse_port_number(target, "target", s)?,
        ),
        _ => {
            return Err(format!(
                "invalid port {s:?}: use [published:]target[/protocol], e.g. 8080:80 (a host IP cannot be given for services)"
            ))
        }
    };
    Ok(PortConfig {
        target,
        published,
        protocol,
    })
}

/// `--constraint node.labels.zone==a`: an expression with `==` or `!=` (the manager checks keys).
pub fn parse_constraint(s: &str) -> Result<String, String> {
    let ok = ["==", "!="].iter().any(|op| {
        s.split_once(op)
            .is_some_and(|(k, v)| !k.trim().is_empty() && !v.trim().is_empty())
    });
    if ok {
        Ok(s.trim().to_string())
    } else {
        Err(format!(
            "invalid constraint {s:?}: use KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a or node.role!=manager"
        ))
    }
}

/// `--placement-pref spread=node.labels.zone`.
pub fn parse_placement_pref(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some(("spread", v)) if !v.trim().is_empty() => Ok(format!("spread={}", v.trim())),
        _ => Err(format!(
            "invalid placement preference {s:?}: use spread=node.labels.KEY"
        )),
    }
}

/// `--endpoint-mode vip|dnsrr` (any case, as Docker lowercases it).
pub fn parse_endpoint_mode(s: &str) -> Result<String, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        m @ ("vip" | "dnsrr") => Ok(m.to_string()),
        _ => Err(format!(
            "invalid endpoint mode {s:?}: use vip (a virtual IP per network) or dnsrr (DNS round robin)"
        )),
    }
}

/// `--network NAME|ID` or Docker's long syntax `--network name=NAME,alias=A,alias=B` (`target=`
/// is taken for `name=`). The target is kept as typed: the manager resolves names to ids.
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    let mut n = NetworkAttachmentConfig::default();
    if !s.contains('=') {
        n.target = s.trim().to_string();
    } else {
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return Err(format!(
                    "invalid network {s:?}: {field:?} is not key=value; use name=NET[,alias=A]"
                ));
            };
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "name" | "target" => n.target = value.to_string(),
                "alias" => {
                    if value.is_empty() {
                        return Err(format!("invalid network {s:?}: alias= needs a name"));
                    }
                    n.aliases.push(value.to_string());
                }
                "driver-opt" => {
                    return Err(format!(
                        "invalid network {s:?}: driver-opt is not supported for overlay attachments; leave it out"
                    ))
                }
                other @ ("ip" | "ip6" | "link-local-ip" | "mac-address" | "gw-priority") => {
                    return Err(format!(
                        "invalid network {s:?}: {other} cannot be set for a service: the manager gives each task its address"
                    ))
                }
                other => {
                    return Err(format!(
                        "invalid network {s:?}: unknown field {other:?}: use name (or target) and alias"
                    ))
                }
            }
        }
    }
    if n.target.is_empty() {
        return Err(format!(
            "invalid network {s:?}: the network is missing; use NAME or name=NAME[,alias=A]"
        ));
    }
    Ok(n)
}

/// Splits a command line as a POSIX shell would (quotes and backslashes; no expansions).
pub fn shell_words(s: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => bail!("unterminated single quote in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => bail!("unterminated double quote in {s:?}"),
                        },
                        Some(c) => cur.push(c),
                        None => bail!("unterminated double quote in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => bail!("a trailing backslash in {s:?} escapes nothing"),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

// ---------------------------------------------------------------------------------------------
// Flags → spec.

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Swarm's update and rollback defaults: one task at a time, pause on failure, monitor 5 s,
/// stop-first.
pub fn default_update_config() -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: "pause".into(),
        monitor_ms: 5_000,
        max_failure_ratio_milli: 0,
        order: "stop-first".into(),
    }
}

/// A spec with Docker's defaults: one replica, restart any after 5 s, default update/rollback.
pub fn default_spec() -> ServiceSpec {
    ServiceSpec {
        mode: "replicated".into(),
        replicas: 1,
        task: Some(TaskSpec {
            restart: Some(RestartPolicy {
                condition: "any".into(),
                delay_ms: 5_000,
                max_attempts: 0,
                window_ms: 0,
            }),
            resources: Some(Default::default()),
            placement: Some(Default::default()),
            ..TaskSpec::default()
        }),
        update: Some(default_update_config()),
        rollback: Some(default_update_config()),
        endpoint_mode: "vip".into(),
        ..ServiceSpec::default()
    }
}

/// `KEY=VALUE`, or `KEY` alone: its value from the CLI's environment when set (as Docker does).
pub fn env_entry(e: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    if e.contains('=') {
        e.to_string()
    } else {
        match lookup(e) {
            Some(v) => format!("{e}={v}"),
            None => e.to_string(),
        }
    }
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// Reads `--env-file`s: KEY=VALUE lines; blank lines and `#` comments skipped.
pub fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the env file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

fn label_pair(l: &str) -> (String, String) {
    match l.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (l.to_string(), String::new()),
    }
}

fn validate_image(image: &str) -> anyhow::Result<()> {
    image
        .parse::<rswarm_image::ImageRef>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("invalid image {image:?}: {e}"))
}

fn task_mut(spec: &mut ServiceSpec) -> &mut TaskSpec {
    spec.task.get_or_insert_with(TaskSpec::default)
}

/// Applies the flags create and update share to `spec` (only those given).
pub fn apply_task_flags(spec: &mut ServiceSpec, f: &TaskFlags) -> anyhow::Result<()> {
    let global = spec.mode == "global";
    if let Some(m) = &f.endpoint_mode {
        spec.endpoint_mode = m.clone();
    }
    if let Some(n) = f.replicas {
        if global {
            bail!("--replicas can only be used with replicated mode");
        }
        spec.replicas = n;
    }
    if let Some(n) = f.replicas_max_per_node {
        if global {
            bail!("--replicas-max-per-node can only be used with replicated mode");
        }
        task_mut(spec)
            .placement
            .get_or_insert_with(Default::default)
            .max_replicas_per_node = n;
    }
    let t = task_mut(spec);
    {
        let r = t.resources.get_or_insert_with(Default::default);
        if let Some(v) = f.reserve_memory {
            r.reserve_memory = v;
        }
        if let Some(v) = f.reserve_cpu {
            r.reserve_nano_cpus = v;
        }
        if let Some(v) = f.limit_memory {
            r.limit_memory = v;
        }
        if let Some(v) = f.limit_cpu {
            r.limit_nano_cpus = v;
        }
        if r.limit_memory != 0 && r.reserve_memory > r.limit_memory {
            bail!("--reserve-memory is larger than --limit-memory: a task could never fit in its limit; lower the reservation or raise the limit");
        }
        if r.limit_nano_cpus != 0 && r.reserve_nano_cpus > r.limit_nano_cpus {
            bail!("--reserve-cpu is larger than --limit-cpu: lower the reservation or raise the limit");
        }
    }
    {
        let r = t.restart.get_or_insert_with(|| RestartPolicy {
            condition: "any".into(),
            delay_ms: 5_000,
            ..RestartPolicy::default()
        });
        if let Some(c) = &f.restart_condition {
            r.condition = c.clone();
        }
        if let Some(d) = f.restart_delay {
            r.delay_ms = ms(d);
        }
        if let Some(n) = f.restart_max_attempts {
            r.max_attempts = n;
        }
        if let Some(d) = f.restart_window {
            r.window_ms = ms(d);
        }
    }
    apply_health(t, f)?;
    if let Some(e) = &f.entrypoint {
        t.command = shell_words(e).context("invalid --entrypoint")?;
        t.command_set = true;
    }
    if let Some(w) = &f.workdir {
        t.workdir = w.clone();
    }
    if let Some(u) = &f.user {
        t.user = u.clone();
    }
    if let Some(h) = &f.hostname {
        t.hostname = h.clone();
    }
    if let Some(r) = f.read_only {
        t.read_only = r;
    }
    if let Some(s) = &f.stop_signal {
        t.stop_signal = s.clone();
    }
    if let Some(d) = f.stop_grace_period {
        t.stop_grace_ms = ms(d);
    }
    let u = spec.update.get_or_insert_with(default_update_config);
    set_update(
        u,
        f.update_parallelism,
        f.update_delay,
        &f.update_failure_action,
        f.update_monitor,
        &f.update_order,
        f.update_max_failure_ratio,
    );
    let r = spec.rollback.get_or_insert_with(default_update_config);
    set_update(
        r,
        f.rollback_parallelism,
        f.rollback_delay,
        &f.rollback_failure_action,
        f.rollback_monitor,
        &f.rollback_order,
        f.rollback_max_failure_ratio,
    );
    Ok(())
}

fn set_update(
    u: &mut UpdateConfig,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure_action: &Option<String>,
    monitor: Option<Duration>,
    order: &Option<String>,
    ratio: Option<u64>,
) {
    if let Some(p) = parallelism {
        u.parallelism = p;
    }
    if let Some(d) = delay {
        u.delay_ms = ms(d);
    }
    if let Some(a) = failure_action {
        u.failure_action = a.clone();
    }
    if let Some(m) = monitor {
        u.monitor_ms = ms(m);
    }
    if let Some(o) = order {
        u.order = o.clone();
    }
    if let Some(r) = ratio {
        u.max_failure_ratio_milli = r;
    }
}

fn apply_health(t: &mut TaskSpec, f: &TaskFlags) -> anyhow::Result<()> {
    let any_health = f.health_cmd.is_some()
        || f.health_interval.is_some()
        || f.health_retries.is_some()
        || f.health_timeout.is_some()
        || f.health_start_period.is_some();
    if f.no_healthcheck {
        if any_health {
            bail!("--no-healthcheck conflicts with --health-* options: give one or the other");
        }
        t.healthcheck = Some(HealthCheck {
            test: vec!["NONE".into()],
            ..HealthCheck::default()
        });
        return Ok(());
    }
    if !any_health {
        return Ok(());
    }
    let h = t.healthcheck.get_or_insert_with(HealthCheck::default);
    if h.test == ["NONE"] {
        *h = HealthCheck::default();
    }
    if let Some(cmd) = &f.health_cmd {
        h.test = if cmd.is_empty() {
            Vec::new()
        } else {
            vec!["CMD-SHELL".into(), cmd.clone()]
        };
    }
    for (d, name) in [
        (f.health_interval, "--health-interval"),
        (f.health_timeout, "--health-timeout"),
    ] {
        if d.is_some_and(|d| d != Duration::ZERO && d < Duration::from_millis(1)) {
            bail!("{name} must be at least 1ms");
        }
    }
    if let Some(d) = f.health_interval {
        h.interval_ms = ms(d);
    }
    if let Some(d) = f.health_timeout {
        h.timeout_ms = ms(d);
    }
    if let Some(n) = f.health_retries {
        h.retries = n;
    }
    if let Some(d) = f.health_start_period {
        h.start_period_ms = ms(d);
    }
    Ok(())
}

/// `service create` flags → the spec to send (registry auth is added by the caller).
pub fn create_spec(
    a: &CreateArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ServiceSpec> {
    validate_image(&a.image)?;
    let mut spec = default_spec();
    if let Some(name) = &a.name {
        if name.trim().is_empty() {
            bail!(
                "--name is empty: give the service a name, or leave --name out for a generated one"
            );
        }
        spec.name = name.clone();
    }
    if a.mode.as_deref() == Some("global") {
        if a.task.replicas.is_some() {
            bail!(
                "--replicas can only be used with replicated mode (this service is --mode global)"
            );
        }
        spec.mode = "global".into();
        spec.replicas = 0;
    }
    spec.labels = a.label.iter().map(|l| label_pair(l)).collect();
    spec.ports = a.publish.clone();
    check_duplicate_ports(&spec.ports)?;
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(read_env_file(f)?);
    }
    env.extend(a.env.iter().map(|e| env_entry(e, lookup)));
    {
        let t = task_mut(&mut spec);
        t.image = a.image.clone();
        t.args = a.command.clone();
        t.env = env;
        t.labels = a.container_label.iter().map(|l| label_pair(l)).collect();
        t.mounts = a.mount.clone();
        let p = t.placement.get_or_insert_with(Default::default);
        p.constraints = a.constraint.clone();
        p.preferences = a.placement_pref.clone();
    }
    check_duplicate_mounts(&task_mut(&mut spec).mounts)?;
    for n in &a.network {
        if task_mut(&mut spec)
            .networks
            .iter()
            .any(|o| o.target == n.target)
        {
            bail!(
                "network {} is given twice: attach to each network once (several aliases go in one flag: --network name={},alias=A,alias=B)",
                n.target,
                n.target
            );
        }
        task_mut(&mut spec).networks.push(n.clone());
    }
    apply_task_flags(&mut spec, &a.task)?;
    Ok(spec)
}

/// `--network-rm` then `--network-add` applied to a task's networks (Docker's order, so a network
/// can be re-added with other aliases). `known` is every network of the cluster, to match names
/// against the ids the manager stores; `None` (checking flags before connecting) matches targets
/// as typed and reports nothing unknown.
pub fn update_networks(
    networks: &mut Vec<NetworkAttachmentConfig>,
    add: &[NetworkAttachmentConfig],
    rm: &[String],
    known: Option<&[Network]>,
) -> anyhow::Result<()> {
    let canonical = |target: &str| -> String {
        known
            .and_then(|k| crate::network_args::resolve(target, k))
            .map_or_else(|| target.to_string(), |n| n.id.clone())
    };
    for key in rm {
        let id = canonical(key);
        let before = networks.len();
        networks.retain(|n| n.target != *key && canonical(&n.target) != id);
        let resolved = known.is_some_and(|k| crate::network_args::resolve(key, k).is_some());
        if known.is_some() && networks.len() == before && !resolved {
            bail!("no such network: {key}");
        }
    }
    for n in add {
        let id = canonical(&n.target);
        if networks.iter().any(|o| canonical(&o.target) == id) {
            bail!(
                "service is already attached to network {}: to change its aliases, give --network-rm {} with --network-add",
                n.target,
                n.target
            );
        }
        networks.push(n.clone());
    }
    Ok(())
}

fn check_duplicate_ports(ports: &[PortConfig]) -> anyhow::Result<()> {
    for (i, p) in ports.iter().enumerate() {
        if p.published != 0
            && ports[..i]
                .iter()
                .any(|q| q.published == p.published && q.protocol == p.protocol)
        {
            bail!(
                "published port {}/{} is given twice: each published port maps to one target",
                p.published,
                p.protocol
            );
        }
    }
    Ok(())
}

fn check_duplicate_mounts(mounts: &[Mount]) -> anyhow::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.target == m.target) {
            bail!(
                "two mounts have the target {}: each container path takes one mount",
                m.target
            );
        }
    }
    Ok(())
}

/// `service update` flags applied to the service's current spec.
///
/// `known_networks`: the cluster's networks for `--network-add`/`--network-rm` (see
/// [`update_networks`]); `None` when checking the flags before connecting.
pub fn apply_update(
    spec: &mut ServiceSpec,
    a: &UpdateArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
    known_networks: Option<&[Network]>,
) -> anyhow::Result<()> {
    if let Some(image) = &a.image {
        validate_image(image)?;
        task_mut(spec).image = image.clone();
    }
    for k in &a.label_rm {
        spec.labels.remove(k);
    }
    for l in &a.label_add {
        let (k, v) = label_pair(l);
        spec.labels.insert(k, v);
    }
    // --publish-rm TARGET[/PROTOCOL], then --publish-add (replacing the same published port).
    for r in &a.publish_rm {
        let (port, proto) = match r.split_once('/') {
            Some((p, proto)) => (p, Some(proto.to_ascii_lowercase())),
            None => (r.as_str(), None),
        };
        let target: u32 = port.trim().parse().map_err(|_| {
            anyhow::anyhow!("invalid --publish-rm {r:?}: use the target port, e.g. 80 or 80/udp")
        })?;
        spec.ports
            .retain(|p| !(p.target == target && proto.as_ref().is_none_or(|x| *x == p.protocol)));
    }
    for p in &a.publish_add {
        spec.ports.retain(|q| {
            !(q.protocol == p.protocol
                && if p.published != 0 {
                    q.published == p.published
                } else {
                    q.target == p.target && q.published == 0
                })
        });
        spec.ports.push(p.clone());
    }
    check_duplicate_ports(&spec.ports)?;
    let t = task_mut(spec);
    if let Some(args) = &a.args {
        t.args = shell_words(args).context("invalid --args")?;
    }
    for k in &a.env_rm {
        t.env.retain(|e| env_key(e) != k);
    }
    for e in &a.env_add {
        let e = env_entry(e, lookup);
        let key = env_key(&e).to_string();
        match t.env.iter_mut().find(|x| env_key(x) == key) {
            Some(slot) => *slot = e,
            None => t.env.push(e),
        }
    }
    for k in &a.container_label_rm {
        t.labels.remove(k);
    }
    for l in &a.container_label_add {
        let (k, v) = label_pair(l);
        t.labels.insert(k, v);
    }
    for target in &a.mount_rm {
        t.mounts.retain(|m| &m.target != target);
    }
    for m in &a.mount_add {
        t.mounts.retain(|o| o.target != m.target);
        t.mounts.push(m.clone());
    }
    {
        let p = t.placement.get_or_insert_with(Default::default);
        p.constraints.retain(|c| !a.constraint_rm.contains(c));
        for c in &a.constraint_add {
            if !p.constraints.contains(c) {
                p.constraints.push(c.clone());
            }
        }
        p.preferences.retain(|c| !a.placement_pref_rm.contains(c));
        for c in &a.placement_pref_add {
            if !p.preferences.contains(c) {
                p.preferences.push(c.clone());
            }
        }
    }
    update_networks(
        &mut t.networks,
        &a.network_add,
        &a.network_rm,
        known_networks,
    )?;
    if a.force {
        t.force_update = t.force_update.wrapping_add(1);
    }
    apply_task_flags(spec, &a.task)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// --with-registry-auth: the credentials `docker login` stored.

/// The registry host an image comes from (`docker.io`, `localhost:5000`, …).
pub fn image_registry(image: &str) -> anyhow::Result<String> {
    let r: rswarm_image::ImageRef = image
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid image {image:?}: {e}"))?;
    Ok(r.registry().to_string())
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://10.0.0.5:5000/` → `10.0.0.5:5000`.
fn normalize_registry_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// Where docker keeps credentials for a registry: `auths` holds them, or a helper does.
#[derive(Debug, PartialEq, Eq)]
pub enum DockerCredentials {
    /// base64 of `user:password`, as `TaskSpec.registry_auth` takes it.
    Auth(String),
    /// `docker-credential-<helper>`, asked with `server` on stdin.
    Helper {
        helper: String,
        server: String,
    },
    None,
}

/// Looks `registry` up in the text of a docker `config.json`.
pub fn docker_credentials(config: &str, registry: &str) -> anyhow::Result<DockerCredentials> {
    let v: serde_json::Value = serde_json::from_str(config).context(
        "the docker config file is not valid JSON; fix it or log in again with `docker login`",
    )?;
    let mut server = None;
    if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
        for (key, entry) in auths {
            if normalize_registry_key(key) != registry {
                continue;
            }
            server.get_or_insert_with(|| key.clone());
            if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
                if !auth.is_empty() {
                    return Ok(DockerCredentials::Auth(auth.to_string()));
                }
            }
            let user = entry.get("username").and_then(|a| a.as_str());
            let pass = entry.get("password").and_then(|a| a.as_str());
            if let (Some(u), Some(p)) = (user, pass) {
                return Ok(DockerCredentials::Auth(base64(
                    format!("{u}:{p}").as_bytes(),
                )));
            }
        }
    }
    let default_server = if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    if let Some(helpers) = v.get("credHelpers").and_then(|h| h.as_object()) {
        for (key, helper) in helpers {
            if normalize_registry_key(key) == registry {
                if let Some(h) = helper.as_str() {
                    return Ok(DockerCredentials::Helper {
                        helper: h.to_string(),
                        server: key.clone(),
                    });
                }
            }
        }
    }
    if let Some(store) = v.get("credsStore").and_then(|s| s.as_str()) {
        if !store.is_empty() {
            return Ok(DockerCredentials::Helper {
                helper: store.to_string(),
                server: server.unwrap_or(default_server),
            });
        }
    }
    Ok(DockerCredentials::None)
}

/// The reply of `docker-credential-<helper> get` → base64 `user:secret`.
pub fn helper_reply_auth(reply: &str) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(reply).context("the credential helper's reply is not JSON")?;
    let user = v.get("Username").and_then(|u| u.as_str()).unwrap_or("");
    let secret = v.get("Secret").and_then(|u| u.as_str()).unwrap_or("");
    if secret.is_empty() {
        bail!("the credential helper returned no secret");
    }
    Ok(base64(format!("{user}:{secret}").as_bytes()))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn create(args: &[&str]) -> anyhow::Result<ServiceSpec> {
        let mut argv = vec!["rswarm", "service", "create"];
        argv.extend(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Service(ServiceCommand::Create(a)) = cli.command else {
            panic!("not a create");
        };
        create_spec(&a, &no_env)
    }

    fn create_line(line: &str) -> anyhow::Result<ServiceSpec> {
        let words = shell_words(line).unwrap();
        create(&words.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn update_line(spec: &mut ServiceSpec, line: &str) -> anyhow::Result<UpdateArgs> {
        let words = shell_words(line).unwrap();
        update(spec, &words.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn update(spec: &mut ServiceSpec, args: &[&str]) -> anyhow::Result<UpdateArgs> {
        let mut argv = vec!["rswarm", "service", "update"];
        argv.extend(args);
        argv.push("web");
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Service(ServiceCommand::Update(a)) = cli.command else {
            panic!("not an update");
        };
        apply_update(spec, &a, &no_env, None)?;
        Ok(*a)
    }

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        for bad in ["", "5", "5x", "-5s", "s", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_dockers() {
        let s = create_line("nginx").unwrap();
        assert_eq!(s.mode, "replicated");
        assert_eq!(s.replicas, 1);
        let t = s.task.as_ref().unwrap();
        assert_eq!(t.image, "nginx");
        let r = t.restart.as_ref().unwrap();
        assert_eq!((r.condition.as_str(), r.delay_ms), ("any", 5000));
        for u in [s.update.as_ref().unwrap(), s.rollback.as_ref().unwrap()] {
            assert_eq!(u.parallelism, 1);
            assert_eq!(u.failure_action, "pause");
            assert_eq!(u.monitor_ms, 5000);
            assert_eq!(u.order, "stop-first");
        }
        assert!(t.healthcheck.is_none());
        assert!(!t.command_set);
    }

    #[test]
    fn every_create_flag_lands_in_the_spec() {
        let s = create_line(
            "--name web --replicas 3 -e A=1 --label team=x --container-label c=1 --mount \
             type=bind,source=/srv,target=/data,readonly --mount \
             type=tmpfs,target=/tmp,tmpfs-size=64m,tmpfs-mode=1777 -p 8080:80 -p \
             mode=host,target=53,published=5353,protocol=udp --constraint node.labels.zone==a \
             --placement-pref spread=node.labels.zone --replicas-max-per-node 2 --reserve-memory \
             64m --reserve-cpu 0.5 --limit-memory 1g --limit-cpu 2 --restart-condition on-failure \
             --restart-delay 1m30s --restart-max-attempts 3 --restart-window 2m \
             --update-parallelism 2 --update-delay 10s --update-failure-action rollback \
             --update-monitor 500ms --update-order start-first --update-max-failure-ratio 0.25 \
             --rollback-parallelism 0 --rollback-failure-action continue --health-cmd 'curl -f \
             localhost' --health-interval 10s --health-retries 2 --entrypoint 'sh -c' -w /app -u \
             1000:1000 --hostname h --read-only --stop-signal SIGINT --stop-grace-period 20s \
             nginx:1.25 echo -n hi",
        )
        .unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.labels["team"], "x");
        assert_eq!(s.ports.len(), 2);
        assert_eq!(
            (
                s.ports[0].published,
                s.ports[0].target,
                s.ports[0].protocol.as_str()
            ),
            (8080, 80, "tcp")
        );
        assert_eq!(
            (
                s.ports[1].published,
                s.ports[1].target,
                s.ports[1].protocol.as_str()
            ),
            (5353, 53, "udp")
        );
        let t = s.task.as_ref().unwrap();
        assert_eq!(t.image, "nginx:1.25");
        assert_eq!(t.args, ["echo", "-n", "hi"]);
        assert_eq!(t.env, ["A=1"]);
        assert_eq!(t.labels["c"], "1");
        assert_eq!(t.mounts[0].r#type, "bind");
        assert!(t.mounts[0].read_only);
        assert_eq!(t.mounts[1].tmpfs_size, 64 << 20);
        assert_eq!(t.mounts[1].tmpfs_mode, 0o1777);
        let p = t.placement.as_ref().unwrap();
        assert_eq!(p.constraints, ["node.labels.zone==a"]);
        assert_eq!(p.preferences, ["spread=node.labels.zone"]);
        assert_eq!(p.max_replicas_per_node, 2);
        let r = t.resources.as_ref().unwrap();
        assert_eq!(r.reserve_memory, 64 << 20);
        assert_eq!(r.reserve_nano_cpus, 500_000_000);
        assert_eq!(r.limit_memory, 1 << 30);
        assert_eq!(r.limit_nano_cpus, 2_000_000_000);
        let rp = t.restart.as_ref().unwrap();
        assert_eq!(
            (
                rp.condition.as_str(),
                rp.delay_ms,
                rp.max_attempts,
                rp.window_ms
            ),
            ("on-failure", 90_000, 3, 120_000)
        );
        let u = s.update.as_ref().unwrap();
        assert_eq!(
            (
                u.parallelism,
                u.delay_ms,
                u.failure_action.as_str(),
                u.monitor_ms
            ),
            (2, 10_000, "rollback", 500)
        );
        assert_eq!(
            (u.order.as_str(), u.max_failure_ratio_milli),
            ("start-first", 250)
        );
        let rb = s.rollback.as_ref().unwrap();
        assert_eq!(
            (rb.parallelism, rb.failure_action.as_str()),
            (0, "continue")
        );
        let h = t.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!((h.interval_ms, h.retries), (10_000, 2));
        assert!(t.command_set);
        assert_eq!(t.command, ["sh", "-c"]);
        assert_eq!((t.workdir.as_str(), t.user.as_str()), ("/app", "1000:1000"));
        assert!(t.read_only);
        assert_eq!(
            (t.stop_signal.as_str(), t.stop_grace_ms),
            ("SIGINT", 20_000)
        );
    }

    #[test]
    fn invalid_values_are_refused_before_sending() {
        let err = |args: &[&str]| format!("{:#}", create(args).unwrap_err());
        assert!(err(&["--replicas", "-1", "nginx"]).contains("not a valid count"));
        assert!(err(&["--mount", "type=nfs,target=/x", "nginx"]).contains("invalid mount type"));
        assert!(err(&["--mount", "type=bind,target=/x", "nginx"]).contains("needs source"));
        assert!(err(&["--mount", "source=x", "nginx"]).contains("target is required"));
        assert!(err(&["--restart-delay", "5", "nginx"]).contains("unit is missing"));
        assert!(err(&["--update-delay", "soon", "nginx"]).contains("invalid duration"));
        assert!(err(&["--mode", "global", "--replicas", "2", "nginx"])
            .contains("--replicas can only be used with replicated mode"));
        assert!(
            err(&["--mode", "global", "--replicas-max-per-node", "2", "nginx"])
                .contains("replicated mode")
        );
        assert!(err(&["--reserve-memory", "lots", "nginx"]).contains("invalid size"));
        assert!(err(&["--reserve-cpu", "-1", "nginx"]).contains("CPUs"));
        assert!(err(&["-p", "70000:80", "nginx"]).contains("1 to 65535"));
        assert!(err(&["-p", "mode=ingress,target=80", "nginx"]).contains("mode=host"));
        assert!(err(&["--constraint", "zone", "nginx"]).contains("KEY==VALUE"));
        assert!(err(&["--placement-pref", "pack=x", "nginx"]).contains("spread="));
        assert!(err(&["--update-failure-action", "explode", "nginx"]).contains("explode"));
        assert!(err(&["--rollback-failure-action", "rollback", "nginx"]).contains("rollback"));
        assert!(err(&["--update-max-failure-ratio", "2", "nginx"]).contains("between 0 and 1"));
        assert!(err(&["--no-healthcheck", "--health-cmd", "true", "nginx"]).contains("conflicts"));
        assert!(err(&["NOT//valid"]).contains("invalid image"));
        assert!(err(&["-p", "80:80", "-p", "80:81", "nginx"]).contains("given twice"));
        assert!(
            err(&["--reserve-memory", "2g", "--limit-memory", "1g", "nginx"])
                .contains("larger than")
        );
    }

    #[test]
    fn global_mode_and_env_lookup() {
        let s = create(&["--mode", "global", "busybox"]).unwrap();
        assert_eq!((s.mode.as_str(), s.replicas), ("global", 0));
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(env_entry("HOME", &lookup), "HOME=/root");
        assert_eq!(env_entry("NOPE", &lookup), "NOPE");
        assert_eq!(env_entry("A=b=c", &lookup), "A=b=c");
    }

    #[test]
    fn env_files_are_read_before_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# comment\nA=1\n\nB=2\n").unwrap();
        let s = create(&["--env-file", f.to_str().unwrap(), "-e", "C=3", "busybox"]).unwrap();
        assert_eq!(s.task.unwrap().env, ["A=1", "B=2", "C=3"]);
        let missing = dir.path().join("absent");
        assert!(create(&["--env-file", missing.to_str().unwrap(), "busybox"]).is_err());
    }

    #[test]
    fn update_flags_modify_the_current_spec() {
        let mut s = create_line(
            "--name web -e A=1 -e B=2 --label x=1 --mount \
             type=volume,source=data,target=/data -p 8080:80 --constraint node.role==worker \
             nginx:1",
        )
        .unwrap();
        update_line(
            &mut s,
            "--image nginx:2 --args \"sh -c 'echo hi'\" --env-add A=9 --env-add C=3 --env-rm B \
             --label-add y=2 --label-rm x --container-label-add c=1 --mount-rm /data \
             --mount-add type=tmpfs,target=/cache --publish-rm 80 --publish-add 9090:90 \
             --constraint-rm node.role==worker --constraint-add node.labels.zone==b \
             --replicas 4 --force --update-parallelism 3",
        )
        .unwrap();
        assert_eq!(s.replicas, 4);
        assert_eq!(s.labels.get("y").map(String::as_str), Some("2"));
        assert!(!s.labels.contains_key("x"));
        assert_eq!(s.ports.len(), 1);
        assert_eq!((s.ports[0].published, s.ports[0].target), (9090, 90));
        assert_eq!(s.update.as_ref().unwrap().parallelism, 3);
        let t = s.task.as_ref().unwrap();
        assert_eq!(t.image, "nginx:2");
        assert_eq!(t.args, ["sh", "-c", "echo hi"]);
        assert_eq!(t.env, ["A=9", "C=3"]);
        assert_eq!(t.labels["c"], "1");
        assert_eq!(t.mounts.len(), 1);
        assert_eq!(t.mounts[0].target, "/cache");
        assert_eq!(
            t.placement.as_ref().unwrap().constraints,
            ["node.labels.zone==b"]
        );
        assert_eq!(t.force_update, 1);
        // Untouched settings stay.
        assert_eq!(t.restart.as_ref().unwrap().delay_ms, 5000);
        let mut g = create(&["--mode", "global", "busybox"]).unwrap();
        assert!(
            format!("{:#}", update(&mut g, &["--replicas", "2"]).unwrap_err())
                .contains("replicated mode")
        );
    }

    #[test]
    fn rollback_flag_alone() {
        let mut s = create(&["busybox"]).unwrap();
        let a = update(&mut s, &["--rollback", "-d"]).unwrap();
        assert!(!a.changes_anything());
        let a = update(&mut s, &["--rollback", "--image", "busybox:2"]).unwrap();
        assert!(a.changes_anything());
    }

    #[test]
    fn health_flags_and_no_healthcheck() {
        let s = create(&["--no-healthcheck", "busybox"]).unwrap();
        assert_eq!(s.task.unwrap().healthcheck.unwrap().test, ["NONE"]);
        let mut s = create(&["--health-cmd", "true", "busybox"]).unwrap();
        update(&mut s, &["--health-timeout", "3s"]).unwrap();
        let h = s.task.unwrap().healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "true"]);
        assert_eq!(h.timeout_ms, 3000);
    }

    #[test]
    fn shell_words_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"sh -c "echo \"a b\"" 'c d' e\ f"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "c d", "e f"]
        );
        assert_eq!(shell_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shell_words("''").unwrap(), [""]);
        assert!(shell_words("'open").is_err());
    }

    #[test]
    fn publish_forms() {
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str()), (0, 80, "tcp"));
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str()),
            (53, 53, "udp")
        );
        assert!(parse_publish("1.2.3.4:80:80").is_err());
        assert!(parse_publish("80/sctp").is_err());
        assert!(parse_publish("published=80").is_err());
    }

    #[test]
    fn registry_credentials_from_docker_config() {
        let config = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "10.0.0.5:5000": {"username": "alice", "password": "s3cret"},
            "ghcr.io": {}
        }, "credHelpers": {"ghcr.io": "gh"}}"#;
        assert_eq!(
            docker_credentials(config, "docker.io").unwrap(),
            DockerCredentials::Auth("dTpw".into())
        );
        assert_eq!(
            docker_credentials(config, "10.0.0.5:5000").unwrap(),
            DockerCredentials::Auth(base64(b"alice:s3cret"))
        );
        assert_eq!(
            docker_credentials(config, "ghcr.io").unwrap(),
            DockerCredentials::Helper {
                helper: "gh".into(),
                server: "ghcr.io".into()
            }
        );
        assert_eq!(
            docker_credentials(config, "quay.io").unwrap(),
            DockerCredentials::None
        );
        let store = r#"{"auths": {"https://index.docker.io/v1/": {}}, "credsStore": "desktop"}"#;
        assert_eq!(
            docker_credentials(store, "docker.io").unwrap(),
            DockerCredentials::Helper {
                helper: "desktop".into(),
                server: "https://index.docker.io/v1/".into()
            }
        );
        assert!(docker_credentials("{", "docker.io").is_err());
        assert_eq!(
            helper_reply_auth(r#"{"ServerURL":"x","Username":"u","Secret":"p"}"#).unwrap(),
            base64(b"u:p")
        );
        assert_eq!(image_registry("busybox").unwrap(), "docker.io");
        assert_eq!(
            image_registry("localhost:5000/a/b:1").unwrap(),
            "localhost:5000"
        );
    }

    #[test]
    fn network_flags_short_and_long_syntax() {
        let n = parse_network("web-net").unwrap();
        assert_eq!((n.target.as_str(), n.aliases.len()), ("web-net", 0));
        let n = parse_network("name=back,alias=db,alias=primary").unwrap();
        assert_eq!(n.target, "back");
        assert_eq!(n.aliases, ["db", "primary"]);
        let n = parse_network("alias=db,target=abc123").unwrap();
        assert_eq!(
            (n.target.as_str(), n.aliases.as_slice()),
            ("abc123", &["db".to_string()][..])
        );
        let err = |s: &str| parse_network(s).unwrap_err();
        assert!(err("").contains("network is missing"));
        assert!(err("alias=db").contains("network is missing"));
        assert!(err("name=back,db").contains("not key=value"));
        assert!(err("name=back,alias=").contains("alias= needs a name"));
        assert!(err("name=back,color=red").contains("unknown field \"color\""));
        assert!(err("name=back,driver-opt=x=y").contains("driver-opt"));
        assert!(err("name=back,ip=10.0.0.5").contains("gives each task its address"));
        let s = create_line("--network front --network name=back,alias=db nginx").unwrap();
        let nets = &s.task.as_ref().unwrap().networks;
        assert_eq!(nets.len(), 2);
        assert_eq!(
            (nets[0].target.as_str(), nets[1].target.as_str()),
            ("front", "back")
        );
        assert_eq!(nets[1].aliases, ["db"]);
        assert!(format!(
            "{:#}",
            create_line("--network a --network name=a,alias=x nginx").unwrap_err()
        )
        .contains("network a is given twice"));
        assert!(create(&["--network", "name=x,bogus=1", "nginx"]).is_err());
    }

    #[test]
    fn endpoint_modes() {
        assert_eq!(create_line("nginx").unwrap().endpoint_mode, "vip");
        assert_eq!(
            create_line("--endpoint-mode dnsrr nginx")
                .unwrap()
                .endpoint_mode,
            "dnsrr"
        );
        assert_eq!(
            create_line("--endpoint-mode VIP nginx")
                .unwrap()
                .endpoint_mode,
            "vip"
        );
        let e = format!("{:#}", create_line("--endpoint-mode rr nginx").unwrap_err());
        assert!(e.contains("invalid endpoint mode \"rr\""), "{e}");
        // Published ports are host-mode, which Docker takes with dnsrr too.
        let s = create_line("--endpoint-mode dnsrr -p mode=host,published=8080,target=80 nginx")
            .unwrap();
        assert_eq!((s.endpoint_mode.as_str(), s.ports.len()), ("dnsrr", 1));
        let mut s = create_line("-p 8080:80 nginx").unwrap();
        update(&mut s, &["--endpoint-mode", "dnsrr"]).unwrap();
        assert_eq!((s.endpoint_mode.as_str(), s.ports.len()), ("dnsrr", 1));
    }

    fn known_network(id: &str, name: &str) -> Network {
        Network {
            id: id.into(),
            spec: Some(rswarm_api::types::v1::NetworkSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Network::default()
        }
    }

    fn attach(target: &str, aliases: &[&str]) -> NetworkAttachmentConfig {
        NetworkAttachmentConfig {
            target: target.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn network_add_and_rm_merge_into_the_stored_spec() {
        let known = [
            known_network("id-front", "front"),
            known_network("id-back", "back"),
            known_network("id-spare", "spare"),
        ];
        // Stored as ids; removed by name, id or id prefix; added as typed.
        let mut nets = vec![attach("id-front", &[]), attach("id-back", &["db"])];
        update_networks(
            &mut nets,
            &[attach("spare", &["s"])],
            &["front".into()],
            Some(&known),
        )
        .unwrap();
        assert_eq!(nets, [attach("id-back", &["db"]), attach("spare", &["s"])]);
        // Re-adding after removing changes the aliases.
        update_networks(
            &mut nets,
            &[attach("back", &["cache"])],
            &["id-b".into()],
            Some(&known),
        )
        .unwrap();
        assert_eq!(nets, [attach("spare", &["s"]), attach("back", &["cache"])]);
        // Already attached (by another spelling): refused.
        let e = update_networks(
            &mut nets.clone(),
            &[attach("id-back", &[])],
            &[],
            Some(&known),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already attached to network id-back"), "{e}");
        // Unknown to the cluster and not attached: refused; known but not attached: nothing.
        let e = update_networks(&mut nets.clone(), &[], &["nope".into()], Some(&known))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no such network: nope");
        update_networks(&mut nets, &[], &["front".into()], Some(&known)).unwrap();
        assert_eq!(nets.len(), 2);
        // Before connecting: targets as typed, nothing unknown.
        let mut nets = vec![attach("front", &[])];
        update_networks(
            &mut nets,
            &[attach("back", &[])],
            &["front".into(), "x".into()],
            None,
        )
        .unwrap();
        assert_eq!(nets, [attach("back", &[])]);
        assert!(update_networks(&mut nets, &[attach("back", &[])], &[], None).is_err());
        // Through the flags.
        let mut s = create_line("--network front nginx").unwrap();
        update_line(
            &mut s,
            "--network-add name=back,alias=db --network-add spare --network-rm front",
        )
        .unwrap();
        let targets: Vec<String> = s
            .task
            .unwrap()
            .networks
            .into_iter()
            .map(|n| n.target)
            .collect();
        assert_eq!(targets, ["back", "spare"]);
        let mut s = create_line("nginx").unwrap();
        let a = update(&mut s, &["--network-rm", "x"]).unwrap();
        assert!(a.changes_anything());
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
