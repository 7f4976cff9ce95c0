//! Building a container's OCI runtime spec (`config.json`) from the image config and the
//! container config, the way Docker does (moby `oci/defaults.go`, `daemon/oci_linux.go`).
//!
//! Everything here is pure: the caller resolves the user ([`crate::user`]), the volumes (to
//! [`MountKind::Bind`]), the network namespace and the `/etc` files, and passes them in.
//!
//! What follows Docker exactly: the ENTRYPOINT/CMD rules, the environment, the default capability
//! set and `--cap-add`/`--cap-drop`/`--privileged`, the default mounts, masked and read-only
//! paths, the namespaces (plus a private cgroup namespace, Docker's default on cgroup v2), memory,
//! swap, CPU and pids limits and their validation, the device cgroup (deny all; runc appends its
//! own default allow list — null, zero, full, tty, random, urandom, console, ptmx, pts, tun — after
//! the spec's rules, as it does for Docker), the unprivileged-port and ping sysctls in a new network
//! namespace, and mount ordering (user mounts sorted by depth, replacing defaults at the same
//! destination).
//!
//! What it does not do (yet): seccomp and AppArmor profiles, host devices for privileged
//! containers, `--device`, `--group-add`, `--ulimit`, `--shm-size`, `--tmpfs` options beyond size
//! and mode, and user namespaces.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, Process, Root, Spec, UserBuilder,
};
use serde::{Deserialize, Serialize};

use crate::user::ResolvedUser;

/// Docker's minimum memory limit: 6 MiB.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// `PATH` when neither the image nor the container sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the init binary (tini) is bind-mounted in the container when `init` is set.
pub const INIT_PATH: &str = "/sbin/rswarm-init";

/// The CFS period used to turn `nano_cpus` into a quota, in microseconds (Docker's).
pub const CPU_PERIOD: u64 = 100_000;

/// Size of the container's `/dev/shm` (Docker's default `--shm-size`).
pub const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows: what `ALL` and `--privileged` grant.
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Paths masked from the container (moby's defaults; none when privileged).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in the container (moby's defaults; none when privileged).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Errors building a runtime spec; each is the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Neither the container nor the image gives a command.
    #[error("no command specified: give the container a command or an entrypoint, or use an image that has one")]
    NoCommand,
    /// The command's first element (the executable) is empty.
    #[error("the command's executable is empty: give a non-empty first argument to the entrypoint or command")]
    EmptyExecutable,
    /// The working directory is not absolute.
    #[error("the working directory {0:?} is invalid, it needs to be an absolute path")]
    RelativeWorkdir(String),
    /// A mount destination that cannot be used.
    #[error("invalid mount destination {destination:?}: {reason}")]
    InvalidMountDestination {
        /// The destination as given.
        destination: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Two user mounts at the same destination.
    #[error("duplicate mount point: {0}; mount at most one volume, bind or tmpfs at each path")]
    DuplicateMount(String),
    /// A memory limit below [`MIN_MEMORY`].
    #[error("minimum memory limit allowed is 6MB (got {0} bytes); raise the memory limit")]
    MemoryTooLow(i64),
    /// A negative memory limit.
    #[error("invalid memory limit {0}: use a positive number of bytes, or 0 for no limit")]
    InvalidMemory(i64),
    /// A memory+swap limit without a memory limit.
    #[error("you should always set the memory limit when using a memory+swap limit; set a memory limit too")]
    SwapWithoutMemory,
    /// A memory+swap limit below the memory limit (or below -1).
    #[error("invalid memory+swap limit {swap} with memory limit {memory}: memory+swap must be at least the memory limit, or -1 for unlimited swap")]
    InvalidSwap {
        /// The memory limit in bytes.
        memory: i64,
        /// The memory+swap limit in bytes.
        swap: i64,
    },
    /// A CPU limit below 0.01 CPUs.
    #[error("invalid cpu limit of {0} nano-cpus: the range of cpus is from 0.01 up to the number of cpus available")]
    InvalidCpus(i64),
    /// A pids limit below -1.
    #[error("invalid pids limit {0}: use a positive number, or 0 or -1 for no limit")]
    InvalidPidsLimit(i64),
    /// A capability name that is not known.
    #[error("unknown capability: {0:?}; use a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")]
    UnknownCapability(String),
    /// `init` was asked for but the engine has no init binary.
    #[error("an init process was requested but this node has no init binary (tini-static); install it or run without init")]
    InitUnavailable,
    /// oci-spec refused to build a value (a bug here rather than in the input).
    #[error("building the OCI runtime spec failed: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// A container's settings, as given at create time (Docker's `Config` + `HostConfig` subset).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerConfig {
    /// The container's hostname.
    pub hostname: String,
    /// `None`: the image's ENTRYPOINT; `Some([])` or `Some([""])`: no entrypoint; otherwise
    /// replaces the image's ENTRYPOINT (and then the image's CMD is not used).
    pub entrypoint: Option<Vec<String>>,
    /// The command; empty means the image's CMD.
    pub cmd: Vec<String>,
    /// `KEY=value` entries over the image's environment (`KEY` alone unsets it).
    pub env: Vec<String>,
    /// Working directory; `None` means the image's, or `/`.
    pub workdir: Option<String>,
    /// `user[:group]`; `None` means the image's user, or root.
    pub user: Option<String>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Give the process a terminal.
    pub tty: bool,
    /// Memory limit in bytes (`None` or 0: none).
    pub memory: Option<i64>,
    /// Memory+swap limit in bytes (-1: unlimited swap; unset: twice the memory limit).
    pub memory_swap: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Maximum number of processes (0 or -1: none).
    pub pids_limit: Option<i64>,
    /// Capabilities to add (`NET_ADMIN`, `CAP_NET_ADMIN` or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities to drop (`NET_RAW`, `CAP_NET_RAW` or `ALL`).
    pub cap_drop: Vec<String>,
    /// All capabilities, all devices, no masked or read-only paths.
    pub privileged: bool,
    /// Container labels (not part of the runtime spec; kept for the engine).
    pub labels: BTreeMap<String, String>,
    /// Run tini as the container's PID 1.
    pub init: bool,
    /// Signal to stop the container with (not part of the runtime spec).
    pub stop_signal: Option<String>,
}

/// The container's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceNet {
    /// A new, empty network namespace (bridge and none modes).
    New,
    /// The host's network namespace.
    Host,
    /// Join an existing namespace, e.g. `/proc/<pid>/ns/net` of another container.
    Join(PathBuf),
}

/// What a user mount mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A bind mount of a host path (bind mounts and resolved volumes).
    Bind {
        /// The host path.
        source: PathBuf,
        /// Mount read-only.
        read_only: bool,
    },
    /// A tmpfs (`noexec,nosuid,nodev`, as Docker's).
    Tmpfs {
        /// Size in bytes (`None`: the kernel's default, half of RAM).
        size: Option<u64>,
        /// Permission bits of the tmpfs root (`None`: 1777).
        mode: Option<u32>,
    },
}

/// A user mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecMount {
    /// Absolute path inside the container.
    pub destination: String,
    /// What is mounted there.
    pub kind: MountKind,
}

/// Host paths of the files bind-mounted at `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
#[derive(Clone, Copy, Debug)]
pub struct EtcFiles<'a> {
    /// Bound at `/etc/hosts`.
    pub hosts: &'a Path,
    /// Bound at `/etc/hostname`.
    pub hostname: &'a Path,
    /// Bound at `/etc/resolv.conf`.
    pub resolv_conf: &'a Path,
}

/// Everything [`build_spec`] needs.
#[derive(Clone, Debug)]
pub struct SpecInputs<'a> {
    /// The container's settings.
    pub config: &'a ContainerConfig,
    /// The image's config (ENTRYPOINT, CMD, Env, WorkingDir), if any.
    pub image: Option<&'a oci_spec::image::Config>,
    /// The container's root filesystem on the host (`root.path`).
    pub rootfs: &'a Path,
    /// The resolved user (see [`crate::user::resolve_user`] and [`effective_user`]).
    pub user: &'a ResolvedUser,
    /// The network namespace.
    pub net: NamespaceNet,
    /// User mounts; volumes already resolved to [`MountKind::Bind`].
    pub mounts: &'a [SpecMount],
    /// The cgroup path given to runc (empty: runc's default).
    pub cgroups_path: String,
    /// Host path of the init binary (tini-static), needed when `config.init` is set.
    pub init_binary: Option<&'a Path>,
    /// The `/etc` files to bind, if any.
    pub etc_files: Option<EtcFiles<'a>>,
}

/// The user specification that applies: the container's, else the image's (`None`: root).
pub fn effective_user<'a>(
    config: &'a ContainerConfig,
    image: Option<&'a oci_spec::image::Config>,
) -> Option<&'a str> {
    config
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .or_else(|| image.and_then(|i| i.user().as_deref()))
        .filter(|u| !u.is_empty())
}

/// The container's argv with Docker's rules (moby `daemon.mergeAndVerifyConfig`):
///
/// | `entrypoint`          | `cmd`    | result                                   |
/// |-----------------------|----------|------------------------------------------|
/// | `None`                | empty    | image ENTRYPOINT + image CMD             |
/// | `None`                | given    | image ENTRYPOINT + `cmd`                 |
/// | `Some([e..])`         | any      | `e..` + `cmd` (image CMD is not used)    |
/// | `Some([""])`          | any      | `cmd` (no entrypoint, no image CMD)      |
/// | `Some([])`            | empty    | image CMD (no entrypoint)                |
/// | `Some([])`            | given    | `cmd`                                    |
///
/// An empty result is [`SpecError::NoCommand`]. Shell-form instructions are already
/// `["/bin/sh", "-c", ...]` in the image config; an entrypoint string is one argv element.
pub fn command_line(
    image: Option<&oci_spec::image::Config>,
    entrypoint: Option<&[String]>,
    cmd: &[String],
) -> Result<Vec<String>, SpecError> {
    let image_entrypoint: &[String] = image
        .and_then(|i| i.entrypoint().as_deref())
        .unwrap_or_default();
    let image_cmd: &[String] = image.and_then(|i| i.cmd().as_deref()).unwrap_or_default();
    let cmd_or_image = if cmd.is_empty() { image_cmd } else { cmd };
    let (ep, args): (&[String], &[String]) = match entrypoint {
        None => (image_entrypoint, cmd_or_image),
        Some([]) => (&[], cmd_or_image),
        Some([only]) if only.is_empty() => (&[], cmd),
        Some(ep) => (ep, cmd),
    };
    let argv: Vec<String> = ep.iter().chain(args).cloned().collect();
    match argv.first() {
        None => Err(SpecError::NoCommand),
        Some(first) if first.is_empty() => Err(SpecError::EmptyExecutable),
        Some(_) => Ok(argv),
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Docker's `ReplaceOrAppendEnvValues`: an override replaces the entry with the same key in
/// place, or is appended; an override without `=` removes the key.
fn replace_or_append(env: &mut Vec<String>, overrides: &[String]) {
    for o in overrides {
        let key = env_key(o);
        if !o.contains('=') {
            env.retain(|e| env_key(e) != key);
            continue;
        }
        match env.iter_mut().find(|e| env_key(e) == key) {
            Some(e) => e.clone_from(o),
            None => env.push(o.clone()),
        }
    }
}

/// Merges the image's environment with the container's: image entries first, the container's
/// override by key keeping the image's order (a container entry without `=` unsets the key),
/// and `PATH=`[`DEFAULT_PATH`] first when neither sets `PATH`.
pub fn merge_env(image_env: &[String], spec_env: &[String]) -> Vec<String> {
    let mut env = Vec::with_capacity(image_env.len() + spec_env.len() + 1);
    replace_or_append(&mut env, image_env);
    replace_or_append(&mut env, spec_env);
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    env
}

/// The process environment as Docker builds it (`CreateDaemonEnvironment`): `PATH`,
/// `HOSTNAME=<hostname>` and, with a terminal, `TERM=xterm`, overridden by [`merge_env`]'s
/// result; then `HOME` when still unset (`home`, else `/root` for uid 0 and `/` otherwise, as
/// runc).
pub fn container_env(
    image_env: &[String],
    spec_env: &[String],
    hostname: &str,
    tty: bool,
    user: &ResolvedUser,
) -> Vec<String> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    if tty {
        env.push("TERM=xterm".to_string());
    }
    replace_or_append(&mut env, &merge_env(image_env, spec_env));
    if !env.iter().any(|e| env_key(e) == "HOME") {
        let home = match (&user.home, user.uid) {
            (Some(h), _) => h.as_str(),
            (None, 0) => "/root",
            (None, _) => "/",
        };
        env.push(format!("HOME={home}"));
    }
    env
}

/// Lexically cleans an absolute path (`//a/./b/../c/` → `/a/c`); `None` if it is not absolute.
fn clean_absolute(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

enum CapName {
    All,
    One(Capability),
}

fn parse_capability(s: &str) -> Result<CapName, SpecError> {
    let upper = s.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(CapName::All);
    }
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    name.parse::<Capability>()
        .map(CapName::One)
        .map_err(|_| SpecError::UnknownCapability(s.to_string()))
}

/// The capability set with Docker's rules (moby `caps.TweakCapabilities`): privileged gets
/// everything; `ALL` in `cap_add` gives everything but `cap_drop`; `ALL` in `cap_drop` gives only
/// `cap_add`; otherwise the defaults minus `cap_drop` plus `cap_add`.
pub fn capabilities(
    cap_add: &[String],
    cap_drop: &[String],
    privileged: bool,
) -> Result<Vec<Capability>, SpecError> {
    if privileged {
        return Ok(ALL_CAPABILITIES.to_vec());
    }
    if cap_add.is_empty() && cap_drop.is_empty() {
        return Ok(DEFAULT_CAPABILITIES.to_vec());
    }
    let parse = |list: &[String]| -> Result<(bool, Vec<Capability>), SpecError> {
        let mut all = false;
        let mut caps = Vec::new();
        for s in list {
            match parse_capability(s)? {
                CapName::All => all = true,
                CapName::One(c) => caps.push(c),
            }
        }
        Ok((all, caps))
    };
    let (add_all, add) = parse(cap_add)?;
    let (drop_all, drop) = parse(cap_drop)?;
    let mut caps: Vec<Capability> = if add_all {
        ALL_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !drop.contains(c))
            .collect()
    } else if drop_all {
        add
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !drop.contains(c))
            .chain(add)
            .collect()
    };
    let mut seen = HashSet::new();
    caps.retain(|c| seen.insert(*c));
    Ok(caps)
}

/// The validated cgroup limits.
#[derive(Debug, Default, PartialEq, Eq)]
struct Limits {
    memory: Option<i64>,
    swap: Option<i64>,
    cpu_quota: Option<i64>,
    pids: Option<i64>,
}

fn limits(config: &ContainerConfig) -> Result<Limits, SpecError> {
    let mut l = Limits::default();
    let memory = config.memory.filter(|&m| m != 0);
    if let Some(m) = memory {
        if m < 0 {
            return Err(SpecError::InvalidMemory(m));
        }
        if m < MIN_MEMORY {
            return Err(SpecError::MemoryTooLow(m));
        }
    }
    let swap = config.memory_swap.filter(|&s| s != 0);
    l.memory = memory;
    l.swap = match (memory, swap) {
        (None, None) => None,
        (None, Some(-1)) => None,
        (None, Some(s)) if s > 0 => return Err(SpecError::SwapWithoutMemory),
        (m, Some(s)) if s < -1 => {
            return Err(SpecError::InvalidSwap {
                memory: m.unwrap_or(0),
                swap: s,
            })
        }
        (None, Some(_)) => None,
        (Some(m), None) => Some(m.saturating_mul(2)),
        (Some(_), Some(-1)) => Some(-1),
        (Some(m), Some(s)) if s < m => return Err(SpecError::InvalidSwap { memory: m, swap: s }),
        (Some(_), Some(s)) => Some(s),
    };
    if let Some(n) = config.nano_cpus.filter(|&n| n != 0) {
        // 0.01 CPUs is a quota of 1000µs per 100ms period, the smallest the kernel accepts.
        if n < 10_000_000 {
            return Err(SpecError::InvalidCpus(n));
        }
        l.cpu_quota = Some(n / (1_000_000_000 / CPU_PERIOD as i64));
    }
    l.pids = match config.pids_limit {
        None | Some(0) | Some(-1) => None,
        Some(p) if p < -1 => return Err(SpecError::InvalidPidsLimit(p)),
        Some(p) => Some(p),
    };
    Ok(l)
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// Docker's default mounts (moby `oci.DefaultLinuxSpec`, `/dev/shm` as a 64 MiB tmpfs).
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let shm_size = format!("size={SHM_SIZE}");
    // Privileged containers get /sys and the cgroup fs read-write (moby `WithMounts`).
    let ro_or_rw = if privileged { "rw" } else { "ro" };
    vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", ro_or_rw],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &[ro_or_rw, "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        ),
    ]
}

fn user_mount(destination: &str, kind: &MountKind) -> Mount {
    match kind {
        MountKind::Bind { source, read_only } => mount(
            destination,
            "bind",
            source,
            &["rbind", if *read_only { "ro" } else { "rw" }, "rprivate"],
        ),
        MountKind::Tmpfs { size, mode } => {
            let mut opts = vec!["noexec".to_string(), "nosuid".into(), "nodev".into()];
            if let Some(size) = size {
                opts.push(format!("size={size}"));
            }
            opts.push(format!("mode={:o}", mode.unwrap_or(0o1777)));
            let mut m = mount(destination, "tmpfs", Path::new("tmpfs"), &[]);
            m.set_options(Some(opts));
            m
        }
    }
}

/// Default mounts, then user mounts (plus the `/etc` files and the init binary) sorted by
/// depth, as moby: a default at the same destination as a user mount is dropped, and a user
/// mount at `/dev` drops every default under `/dev`.
fn all_mounts(inputs: &SpecInputs<'_>) -> Result<Vec<Mount>, SpecError> {
    let config = inputs.config;
    let mut user: Vec<(String, Mount)> = Vec::new();
    let mut seen = HashSet::new();
    for m in inputs.mounts {
        let dest =
            clean_absolute(&m.destination).ok_or_else(|| SpecError::InvalidMountDestination {
                destination: m.destination.clone(),
                reason: "it must be an absolute path",
            })?;
        if dest == "/" {
            return Err(SpecError::InvalidMountDestination {
                destination: m.destination.clone(),
                reason: "the destination can't be '/'",
            });
        }
        if !seen.insert(dest.clone()) {
            return Err(SpecError::DuplicateMount(dest));
        }
        user.push((dest.clone(), user_mount(&dest, &m.kind)));
    }
    if let Some(etc) = &inputs.etc_files {
        for (dest, source) in [
            ("/etc/resolv.conf", etc.resolv_conf),
            ("/etc/hostname", etc.hostname),
            ("/etc/hosts", etc.hosts),
        ] {
            // A user mount at the same place wins, as in Docker.
            if seen.insert(dest.to_string()) {
                let mode = if config.read_only { "ro" } else { "rw" };
                user.push((
                    dest.to_string(),
                    mount(dest, "bind", source, &["rbind", "rprivate", mode]),
                ));
            }
        }
    }
    // Parents before children; stable, so equal depths keep their order.
    user.sort_by_key(|(dest, _)| dest.matches('/').count());

    let mount_dev = seen.contains("/dev");
    let mut mounts: Vec<Mount> = default_mounts(config.privileged)
        .into_iter()
        .filter(|m| {
            let dest = m.destination().to_string_lossy();
            let under_user_dev = mount_dev && dest.starts_with("/dev/");
            !seen.contains(dest.as_ref()) && !under_user_dev
        })
        .collect();
    mounts.extend(user.into_iter().map(|(_, m)| m));
    if config.init {
        let init = inputs.init_binary.ok_or(SpecError::InitUnavailable)?;
        mounts.push(mount(INIT_PATH, "bind", init, &["bind", "ro"]));
    }
    Ok(mounts)
}

/// Checks what can be checked before a container exists: limits and capabilities (the same checks
/// [`build_spec`] makes), so `create` fails before anything is written.
pub fn validate(config: &ContainerConfig) -> Result<(), SpecError> {
    limits(config)?;
    capabilities(&config.cap_add, &config.cap_drop, config.privileged)?;
    Ok(())
}

/// Builds the OCI runtime spec for a container (see the module docs for what is reproduced
/// from Docker).
pub fn build_spec(inputs: &SpecInputs<'_>) -> Result<Spec, SpecError> {
    let config = inputs.config;
    let image = inputs.image;

    // Validate everything before building anything.
    let limits = limits(config)?;
    let caps = capabilities(&config.cap_add, &config.cap_drop, config.privileged)?;
    let mut args = command_line(image, config.entrypoint.as_deref(), &config.cmd)?;
    if config.init {
        if inputs.init_binary.is_none() {
            return Err(SpecError::InitUnavailable);
        }
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }
    let workdir = config
        .workdir
        .as_deref()
        .filter(|w| !w.is_empty())
        .or_else(|| image.and_then(|i| i.working_dir().as_deref()))
        .filter(|w| !w.is_empty())
        .unwrap_or("/");
    let cwd =
        clean_absolute(workdir).ok_or_else(|| SpecError::RelativeWorkdir(workdir.to_string()))?;
    let mounts = all_mounts(inputs)?;

    let image_env: &[String] = image.and_then(|i| i.env().as_deref()).unwrap_or_default();
    let env = container_env(
        image_env,
        &config.env,
        &config.hostname,
        config.tty,
        inputs.user,
    );

    // Process, LinuxCapabilities, Linux, Root and Spec have opinionated `Default`s in oci-spec
    // (which their builders fall back to), so every field is set here explicitly.
    let cap_set: HashSet<Capability> = caps.into_iter().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(cap_set.clone()))
        .set_effective(Some(cap_set.clone()))
        .set_permitted(Some(cap_set))
        .set_inheritable(None)
        .set_ambient(None);

    let mut user = UserBuilder::default()
        .uid(inputs.user.uid)
        .gid(inputs.user.gid);
    if !inputs.user.additional_gids.is_empty() {
        user = user.additional_gids(inputs.user.additional_gids.clone());
    }

    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_console_size(None)
        .set_user(user.build()?)
        .set_args(Some(args))
        .set_command_line(None)
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(capabilities))
        // No rlimits: containers inherit the daemon's, as with dockerd (a fixed RLIMIT_NOFILE above
        // the host's nr_open makes runc fail with EPERM).
        .set_rlimits(None)
        .set_no_new_privileges(Some(false))
        .set_apparmor_profile(None)
        .set_oom_score_adj(None)
        .set_selinux_label(None)
        .set_io_priority(None)
        .set_scheduler(None)
        .set_exec_cpu_affinity(None);

    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Cgroup,
    ] {
        let ns = LinuxNamespaceBuilder::default().typ(typ);
        let ns = match (typ, &inputs.net) {
            (LinuxNamespaceType::Network, NamespaceNet::Host) => continue,
            (LinuxNamespaceType::Network, NamespaceNet::Join(path)) => ns.path(path.clone()),
            _ => ns,
        };
        namespaces.push(ns.build()?);
    }

    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(config.privileged)
            .access("rwm")
            .build()?]);
    if limits.memory.is_some() || limits.swap.is_some() {
        let mut memory = LinuxMemoryBuilder::default();
        if let Some(m) = limits.memory {
            memory = memory.limit(m);
        }
        if let Some(s) = limits.swap {
            memory = memory.swap(s);
        }
        resources = resources.memory(memory.build()?);
    }
    if let Some(quota) = limits.cpu_quota {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD)
                .build()?,
        );
    }
    if let Some(p) = limits.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build()?);
    }

    let mut linux = Linux::default();
    linux
        .set_net_devices(None)
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl(None)
        .set_resources(Some(resources.build()?))
        .set_cgroups_path(
            Some(PathBuf::from(&inputs.cgroups_path)).filter(|_| !inputs.cgroups_path.is_empty()),
        )
        .set_namespaces(Some(namespaces))
        .set_devices(Some(Vec::new()))
        .set_seccomp(None)
        .set_rootfs_propagation(None)
        .set_masked_paths(None)
        .set_readonly_paths(None)
        .set_mount_label(None)
        .set_intel_rdt(None)
        .set_memory_policy(None)
        .set_personality(None)
        .set_time_offsets(None);
    if !config.privileged {
        linux
            .set_masked_paths(Some(MASKED_PATHS.map(String::from).to_vec()))
            .set_readonly_paths(Some(READONLY_PATHS.map(String::from).to_vec()));
    }
    if inputs.net == NamespaceNet::New {
        // moby: unprivileged ping and low ports inside a private network namespace.
        linux.set_sysctl(Some(HashMap::from([
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
        ])));
    }

    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf())
        .set_readonly(Some(config.read_only));

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        .set_hostname(Some(config.hostname.clone()).filter(|h| !h.is_empty()))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(None)
        .set_linux(Some(linux))
        .set_solaris(None)
        .set_windows(None)
        .set_vm(None)
        .set_zos(None);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> oci_spec::image::Config {
        let mut b = ConfigBuilder::default();
        if let Some(e) = entrypoint {
            b = b.entrypoint(s(e));
        }
        if let Some(c) = cmd {
            b = b.cmd(s(c));
        }
        b.build().unwrap()
    }

    /// Docker's documented ENTRYPOINT/CMD interaction table, plus the run-time overrides.
    #[test]
    fn entrypoint_cmd_matrix() {
        type Row<'a> = (
            Option<&'a [&'a str]>, // image ENTRYPOINT
            Option<&'a [&'a str]>, // image CMD
            Option<&'a [&'a str]>, // --entrypoint
            &'a [&'a str],         // command
            Option<&'a [&'a str]>, // expected argv (None: no command error)
        );
        let exec_ep: &[&str] = &["/bin/ep", "p1_ep"];
        let shell_ep: &[&str] = &["/bin/sh", "-c", "exec_entry p1_entry"];
        let exec_cmd: &[&str] = &["exec_cmd", "p1_cmd"];
        let shell_cmd: &[&str] = &["/bin/sh", "-c", "exec_cmd p1_cmd"];
        let rows: Vec<Row<'_>> = vec![
            // The Dockerfile reference table: rows are CMD, columns are ENTRYPOINT.
            (None, None, None, &[], None),
            (Some(shell_ep), None, None, &[], Some(shell_ep)),
            (Some(exec_ep), None, None, &[], Some(exec_ep)),
            (
                None,
                Some(exec_cmd),
                None,
                &[],
                Some(&["exec_cmd", "p1_cmd"]),
            ),
            (
                Some(shell_ep),
                Some(exec_cmd),
                None,
                &[],
                Some(&["/bin/sh", "-c", "exec_entry p1_entry", "exec_cmd", "p1_cmd"]),
            ),
            (
                Some(exec_ep),
                Some(exec_cmd),
                None,
                &[],
                Some(&["/bin/ep", "p1_ep", "exec_cmd", "p1_cmd"]),
            ),
            (None, Some(shell_cmd), None, &[], Some(shell_cmd)),
            (
                Some(exec_ep),
                Some(shell_cmd),
                None,
                &[],
                Some(&["/bin/ep", "p1_ep", "/bin/sh", "-c", "exec_cmd p1_cmd"]),
            ),
            // `docker run IMAGE args`: args replace CMD, ENTRYPOINT kept.
            (
                Some(exec_ep),
                Some(exec_cmd),
                None,
                &["a", "b"],
                Some(&["/bin/ep", "p1_ep", "a", "b"]),
            ),
            (
                None,
                Some(exec_cmd),
                None,
                &["ls", "-l"],
                Some(&["ls", "-l"]),
            ),
            (None, None, None, &["ls"], Some(&["ls"])),
            // `--entrypoint X`: replaces ENTRYPOINT and clears the image CMD.
            (
                Some(exec_ep),
                Some(exec_cmd),
                Some(&["/x"]),
                &[],
                Some(&["/x"]),
            ),
            (
                Some(exec_ep),
                Some(exec_cmd),
                Some(&["/x"]),
                &["a"],
                Some(&["/x", "a"]),
            ),
            (None, Some(exec_cmd), Some(&["/x"]), &[], Some(&["/x"])),
            // One argv element, even with spaces (as the docker CLI).
            (None, None, Some(&["a b"]), &[], Some(&["a b"])),
            // `--entrypoint ""`: no entrypoint and no image CMD.
            (Some(exec_ep), Some(exec_cmd), Some(&[""]), &[], None),
            (
                Some(exec_ep),
                Some(exec_cmd),
                Some(&[""]),
                &["ls"],
                Some(&["ls"]),
            ),
            // API `Entrypoint: []`: no entrypoint, image CMD kept unless a command is given.
            (
                Some(exec_ep),
                Some(exec_cmd),
                Some(&[]),
                &[],
                Some(&["exec_cmd", "p1_cmd"]),
            ),
            (
                Some(exec_ep),
                Some(exec_cmd),
                Some(&[]),
                &["ls"],
                Some(&["ls"]),
            ),
            (Some(exec_ep), None, Some(&[]), &[], None),
            // Empty image lists are the same as absent ones.
            (Some(&[]), Some(&[]), None, &[], None),
        ];
        for (i, (img_ep, img_cmd, ep, cmd, want)) in rows.into_iter().enumerate() {
            let img = image(img_ep, img_cmd);
            let ep = ep.map(s);
            let got = command_line(Some(&img), ep.as_deref(), &s(cmd));
            match want {
                Some(w) => assert_eq!(got.unwrap(), s(w), "row {i}"),
                None => assert!(matches!(got, Err(SpecError::NoCommand)), "row {i}: {got:?}"),
            }
        }
        // No image config at all.
        assert_eq!(command_line(None, None, &s(&["x"])).unwrap(), s(&["x"]));
        let e = command_line(None, None, &[]).unwrap_err();
        assert_eq!(
            e.to_string().split(':').next(),
            Some("no command specified")
        );
        assert!(matches!(
            command_line(None, Some(&s(&["", "x"])), &[]),
            Err(SpecError::EmptyExecutable)
        ));
    }

    #[test]
    fn env_merge() {
        let image = s(&["PATH=/img/bin", "A=1", "B=2", "C=3"]);
        let spec = s(&["B=20", "D=4", "C", "A=10"]);
        assert_eq!(
            merge_env(&image, &spec),
            s(&["PATH=/img/bin", "A=10", "B=20", "D=4"])
        );
        assert_eq!(
            merge_env(&s(&["X=1"]), &s(&["Y=2"])),
            s(&[&format!("PATH={DEFAULT_PATH}"), "X=1", "Y=2"])
        );
        assert_eq!(merge_env(&[], &s(&["PATH=/mine"])), s(&["PATH=/mine"]));
        // Values may contain '='.
        assert_eq!(
            merge_env(&s(&["PATH=/p", "K=a=b"]), &s(&["K=c=d"])),
            s(&["PATH=/p", "K=c=d"])
        );
    }

    #[test]
    fn container_env_defaults() {
        let root = ResolvedUser::default();
        assert_eq!(
            container_env(&s(&["PATH=/img", "X=1"]), &[], "web", true, &root),
            s(&[
                "PATH=/img",
                "HOSTNAME=web",
                "TERM=xterm",
                "X=1",
                "HOME=/root"
            ])
        );
        let bob = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
            home: Some("/home/bob".into()),
        };
        assert_eq!(
            container_env(&[], &s(&["HOSTNAME=mine"]), "web", false, &bob),
            s(&[
                &format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=mine",
                "HOME=/home/bob"
            ])
        );
        let nobody = ResolvedUser {
            uid: 4242,
            ..Default::default()
        };
        let env = container_env(&[], &s(&["HOME=/x"]), "h", false, &nobody);
        assert!(env.contains(&"HOME=/x".to_string()));
        let env = container_env(&[], &[], "h", false, &nobody);
        assert!(env.contains(&"HOME=/".to_string()));
    }

    #[test]
    fn effective_user_prefers_container() {
        let img = ConfigBuilder::default().user("app").build().unwrap();
        let mut c = ContainerConfig::default();
        assert_eq!(effective_user(&c, Some(&img)), Some("app"));
        c.user = Some("1000:1000".into());
        assert_eq!(effective_user(&c, Some(&img)), Some("1000:1000"));
        c.user = Some(String::new());
        assert_eq!(effective_user(&c, None), None);
    }

    #[test]
    fn capability_rules() {
        let d = |v: &[&str], dr: &[&str]| capabilities(&s(v), &s(dr), false).unwrap();
        assert_eq!(d(&[], &[]), DEFAULT_CAPABILITIES.to_vec());
        let added = d(&["NET_ADMIN", "cap_sys_admin"], &["CAP_NET_RAW", "mknod"]);
        assert!(added.contains(&Capability::NetAdmin));
        assert!(added.contains(&Capability::SysAdmin));
        assert!(!added.contains(&Capability::NetRaw));
        assert!(!added.contains(&Capability::Mknod));
        assert_eq!(added.len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(d(&["chown"], &["ALL"]), vec![Capability::Chown]);
        assert!(d(&[], &["all"]).is_empty());
        let all_but = d(&["ALL"], &["SYS_ADMIN"]);
        assert_eq!(all_but.len(), ALL_CAPABILITIES.len() - 1);
        assert!(!all_but.contains(&Capability::SysAdmin));
        // Adding one already present does not duplicate it.
        assert_eq!(d(&["KILL"], &[]).len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(
            capabilities(&[], &s(&["ALL"]), true).unwrap().len(),
            ALL_CAPABILITIES.len()
        );
        let e = capabilities(&s(&["NET_BOGUS"]), &[], false).unwrap_err();
        assert!(matches!(e, SpecError::UnknownCapability(ref n) if n == "NET_BOGUS"));
        assert!(e.to_string().contains("NET_BOGUS"));
    }

    struct Fixture {
        config: ContainerConfig,
        image: oci_spec::image::Config,
        user: ResolvedUser,
        mounts: Vec<SpecMount>,
        net: NamespaceNet,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                config: ContainerConfig {
                    hostname: "c1".into(),
                    ..Default::default()
                },
                image: ConfigBuilder::default()
                    .entrypoint(s(&["/docker-entrypoint.sh"]))
                    .cmd(s(&["nginx", "-g", "daemon off;"]))
                    .env(s(&["PATH=/usr/bin:/bin", "NGINX_VERSION=1.27"]))
                    .working_dir("/srv")
                    .build()
                    .unwrap(),
                user: ResolvedUser {
                    uid: 101,
                    gid: 101,
                    additional_gids: vec![5, 6],
                    home: Some("/var/cache/nginx".into()),
                },
                mounts: Vec::new(),
                net: NamespaceNet::New,
            }
        }

        fn build(&self) -> Result<Spec, SpecError> {
            build_spec(&SpecInputs {
                config: &self.config,
                image: Some(&self.image),
                rootfs: Path::new("/state/containers/abc/rootfs"),
                user: &self.user,
                net: self.net.clone(),
                mounts: &self.mounts,
                cgroups_path: "/rswarm-x/abc".into(),
                init_binary: Some(Path::new("/usr/libexec/rswarm/tini-static")),
                etc_files: Some(EtcFiles {
                    hosts: Path::new("/state/containers/abc/hosts"),
                    hostname: Path::new("/state/containers/abc/hostname"),
                    resolv_conf: Path::new("/state/containers/abc/resolv.conf"),
                }),
            })
        }
    }

    fn destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect()
    }

    fn find_mount<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap_or_else(|| panic!("no mount at {dest}"))
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn defaults_process_user_workdir() {
        let f = Fixture::new();
        let spec = f.build().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &s(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.user().uid(), 101);
        assert_eq!(p.user().gid(), 101);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![5, 6]);
        assert_eq!(p.terminal(), Some(false));
        assert_eq!(p.no_new_privileges(), Some(false));
        assert_eq!(
            p.env().as_ref().unwrap(),
            &s(&[
                "PATH=/usr/bin:/bin",
                "HOSTNAME=c1",
                "NGINX_VERSION=1.27",
                "HOME=/var/cache/nginx"
            ])
        );
        let caps = p.capabilities().as_ref().unwrap();
        let want: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);
        assert!(
            p.rlimits().is_none(),
            "rlimits are inherited from the daemon"
        );
        assert_eq!(spec.hostname().as_deref(), Some("c1"));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/state/containers/abc/rootfs"));
        assert_eq!(root.readonly(), Some(false));

        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/rswarm-x/abc"))
        );
        assert_eq!(
            linux.masked_paths().as_ref().unwrap().len(),
            MASKED_PATHS.len()
        );
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap(),
            &READONLY_PATHS.map(String::from).to_vec()
        );
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert!(ns.contains(&(LinuxNamespaceType::Network, None)));
        assert_eq!(ns.len(), 6);
        let res = linux.resources().as_ref().unwrap();
        let dev = &res.devices().as_ref().unwrap()[0];
        assert!(!dev.allow());
        assert_eq!(dev.access().as_deref(), Some("rwm"));
        assert!(res.memory().is_none() && res.cpu().is_none() && res.pids().is_none());
        assert_eq!(
            linux
                .sysctl()
                .as_ref()
                .unwrap()
                .get("net.ipv4.ip_unprivileged_port_start")
                .map(String::as_str),
            Some("0")
        );

        assert_eq!(
            destinations(&spec),
            s(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/dev/shm",
                "/etc/resolv.conf",
                "/etc/hostname",
                "/etc/hosts"
            ])
        );
        assert!(opts(find_mount(&spec, "/sys")).contains(&"ro".to_string()));
        assert!(opts(find_mount(&spec, "/sys/fs/cgroup")).contains(&"ro".to_string()));
        assert!(opts(find_mount(&spec, "/dev/shm")).contains(&format!("size={SHM_SIZE}")));
        assert_eq!(
            opts(find_mount(&spec, "/etc/hosts")),
            s(&["rbind", "rprivate", "rw"])
        );
    }

    #[test]
    fn workdir_rules() {
        let mut f = Fixture::new();
        f.config.workdir = Some("/app/./x/".into());
        let spec = f.build().unwrap();
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/app/x"));
        f.config.workdir = Some("relative".into());
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::RelativeWorkdir(ref w) if w == "relative"));
        assert!(e.to_string().contains("absolute path"));
        f.config.workdir = None;
        f.image = ConfigBuilder::default().cmd(s(&["sh"])).build().unwrap();
        let spec = f.build().unwrap();
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/"));
    }

    #[test]
    fn cap_add_drop_and_privileged() {
        let mut f = Fixture::new();
        f.config.cap_add = s(&["NET_ADMIN"]);
        f.config.cap_drop = s(&["CAP_CHOWN"]);
        let spec = f.build().unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let b = caps.bounding().clone().unwrap();
        assert!(b.contains(&Capability::NetAdmin) && !b.contains(&Capability::Chown));

        f.config.privileged = true;
        let spec = f.build().unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert_eq!(
            caps.bounding().as_ref().unwrap().len(),
            ALL_CAPABILITIES.len()
        );
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
        assert!(linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()[0]
            .allow());
        assert!(opts(find_mount(&spec, "/sys")).contains(&"rw".to_string()));
        assert!(opts(find_mount(&spec, "/sys/fs/cgroup")).contains(&"rw".to_string()));

        f.config.privileged = false;
        f.config.cap_add = s(&["BOGUS"]);
        assert!(matches!(f.build(), Err(SpecError::UnknownCapability(_))));
    }

    #[test]
    fn limits_and_validation() {
        let mut f = Fixture::new();
        f.config.memory = Some(64 << 20);
        f.config.nano_cpus = Some(1_500_000_000);
        f.config.pids_limit = Some(100);
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let mem = res.memory().unwrap();
        assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
        let cpu = res.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
        assert_eq!(res.pids().unwrap().limit(), 100);

        f.config.memory_swap = Some(-1);
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.memory().unwrap().swap(), Some(-1));
        f.config.memory_swap = Some(64 << 20);
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.memory().unwrap().swap(), Some(64 << 20));

        f.config.memory_swap = Some(32 << 20);
        assert!(matches!(f.build(), Err(SpecError::InvalidSwap { .. })));
        f.config.memory_swap = None;
        f.config.memory = Some(MIN_MEMORY - 1);
        let e = f.build().unwrap_err();
        assert!(
            e.to_string()
                .contains("minimum memory limit allowed is 6MB"),
            "{e}"
        );
        f.config.memory = Some(-5);
        assert!(matches!(f.build(), Err(SpecError::InvalidMemory(-5))));
        f.config.memory = None;
        f.config.memory_swap = Some(1 << 30);
        assert!(matches!(f.build(), Err(SpecError::SwapWithoutMemory)));
        f.config.memory_swap = Some(-1);
        f.build().unwrap();
        f.config.memory_swap = None;

        f.config.nano_cpus = Some(-1);
        assert!(matches!(f.build(), Err(SpecError::InvalidCpus(-1))));
        f.config.nano_cpus = Some(1_000_000);
        assert!(matches!(f.build(), Err(SpecError::InvalidCpus(_))));
        f.config.nano_cpus = Some(10_000_000);
        let spec = f.build().unwrap();
        let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(1000));
        f.config.nano_cpus = None;

        for unlimited in [0, -1] {
            f.config.pids_limit = Some(unlimited);
            let spec = f.build().unwrap();
            let res = spec.linux().as_ref().unwrap().resources().clone().unwrap();
            assert!(res.pids().is_none());
        }
        f.config.pids_limit = Some(-2);
        assert!(matches!(f.build(), Err(SpecError::InvalidPidsLimit(-2))));
    }

    #[test]
    fn user_mounts_and_readonly() {
        let mut f = Fixture::new();
        f.config.read_only = true;
        f.mounts = vec![
            SpecMount {
                destination: "/data/sub/".into(),
                kind: MountKind::Bind {
                    source: "/host/sub".into(),
                    read_only: false,
                },
            },
            SpecMount {
                destination: "/data".into(),
                kind: MountKind::Bind {
                    source: "/state/volumes/v/_data".into(),
                    read_only: true,
                },
            },
            SpecMount {
                destination: "/run".into(),
                kind: MountKind::Tmpfs {
                    size: Some(1 << 20),
                    mode: Some(0o755),
                },
            },
            SpecMount {
                destination: "/dev/shm".into(),
                kind: MountKind::Tmpfs {
                    size: None,
                    mode: None,
                },
            },
            SpecMount {
                destination: "/etc/hosts".into(),
                kind: MountKind::Bind {
                    source: "/my/hosts".into(),
                    read_only: true,
                },
            },
        ];
        let spec = f.build().unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert_eq!(
            destinations(&spec),
            s(&[
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/dev/mqueue",
                "/data",
                "/run",
                "/data/sub",
                "/dev/shm",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/hostname",
            ])
        );
        let data = find_mount(&spec, "/data");
        assert_eq!(data.typ().as_deref(), Some("bind"));
        assert_eq!(
            data.source().as_deref(),
            Some(Path::new("/state/volumes/v/_data"))
        );
        assert_eq!(opts(data), s(&["rbind", "ro", "rprivate"]));
        assert_eq!(
            opts(find_mount(&spec, "/data/sub")),
            s(&["rbind", "rw", "rprivate"])
        );
        assert_eq!(
            opts(find_mount(&spec, "/run")),
            s(&["noexec", "nosuid", "nodev", "size=1048576", "mode=755"])
        );
        assert_eq!(
            opts(find_mount(&spec, "/dev/shm")),
            s(&["noexec", "nosuid", "nodev", "mode=1777"])
        );
        assert_eq!(
            find_mount(&spec, "/etc/hosts").source().as_deref(),
            Some(Path::new("/my/hosts"))
        );
        // Read-only root: the /etc files are bound read-only too.
        assert_eq!(
            opts(find_mount(&spec, "/etc/resolv.conf")),
            s(&["rbind", "rprivate", "ro"])
        );
    }

    #[test]
    fn user_mount_at_dev_replaces_dev_defaults() {
        let mut f = Fixture::new();
        f.mounts = vec![SpecMount {
            destination: "/dev".into(),
            kind: MountKind::Bind {
                source: "/dev".into(),
                read_only: false,
            },
        }];
        let d = destinations(&f.build().unwrap());
        assert!(!d.iter().any(|d| d.starts_with("/dev/")));
        assert_eq!(d.iter().filter(|d| *d == "/dev").count(), 1);
    }

    #[test]
    fn mount_validation() {
        let mut f = Fixture::new();
        let tmp = |d: &str| SpecMount {
            destination: d.into(),
            kind: MountKind::Tmpfs {
                size: None,
                mode: None,
            },
        };
        f.mounts = vec![tmp("relative")];
        assert!(matches!(
            f.build(),
            Err(SpecError::InvalidMountDestination { .. })
        ));
        f.mounts = vec![tmp("/")];
        assert!(matches!(
            f.build(),
            Err(SpecError::InvalidMountDestination { .. })
        ));
        f.mounts = vec![tmp("/data"), tmp("/data/")];
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::DuplicateMount(ref d) if d == "/data"));
        assert!(e.to_string().contains("/data"));
    }

    #[test]
    fn init_and_networks() {
        let mut f = Fixture::new();
        f.config.init = true;
        f.config.tty = true;
        f.net = NamespaceNet::Host;
        let spec = f.build().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap()[..3],
            s(&[INIT_PATH, "--", "/docker-entrypoint.sh"])
        );
        assert_eq!(p.terminal(), Some(true));
        assert!(p
            .env()
            .as_ref()
            .unwrap()
            .contains(&"TERM=xterm".to_string()));
        let init = find_mount(&spec, INIT_PATH);
        assert_eq!(
            init.source().as_deref(),
            Some(Path::new("/usr/libexec/rswarm/tini-static"))
        );
        assert_eq!(opts(init), s(&["bind", "ro"]));
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(linux.sysctl().is_none());

        f.net = NamespaceNet::Join("/proc/42/ns/net".into());
        let spec = f.build().unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/proc/42/ns/net")));

        let inputs = SpecInputs {
            config: &f.config,
            image: Some(&f.image),
            rootfs: Path::new("/r"),
            user: &f.user,
            net: NamespaceNet::New,
            mounts: &[],
            cgroups_path: String::new(),
            init_binary: None,
            etc_files: None,
        };
        assert!(matches!(
            build_spec(&inputs),
            Err(SpecError::InitUnavailable)
        ));
    }

    #[test]
    fn no_command_is_an_error() {
        let mut f = Fixture::new();
        f.image = oci_spec::image::Config::default();
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::NoCommand));
    }

    /// What runc will read: the JSON field names and values.
    #[test]
    fn serializes_to_runc_json() {
        let mut f = Fixture::new();
        f.config.memory = Some(128 << 20);
        f.config.nano_cpus = Some(500_000_000);
        f.config.pids_limit = Some(64);
        f.config.read_only = true;
        f.net = NamespaceNet::Join("/proc/7/ns/net".into());
        let spec = f.build().unwrap();
        let v: serde_json::Value = serde_json::to_value(&spec).unwrap();

        assert!(v["ociVersion"].as_str().unwrap().starts_with("1."));
        assert_eq!(v["root"]["path"], "/state/containers/abc/rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "c1");
        let p = &v["process"];
        assert_eq!(p["terminal"], false);
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["user"]["uid"], 101);
        assert_eq!(p["user"]["gid"], 101);
        assert_eq!(p["user"]["additionalGids"], serde_json::json!([5, 6]));
        assert_eq!(p["args"][0], "/docker-entrypoint.sh");
        assert_eq!(p["noNewPrivileges"], false);
        assert!(p.get("rlimits").is_none(), "rlimits are inherited: {p}");
        let bounding: Vec<&str> = p["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(bounding.len(), 14);
        assert!(bounding.contains(&"CAP_NET_BIND_SERVICE"));
        assert!(p["capabilities"].get("inheritable").is_none());
        assert!(p["capabilities"].get("ambient").is_none());

        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/rswarm-x/abc");
        assert_eq!(l["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(l["resources"]["memory"]["swap"], 256 << 20);
        assert_eq!(l["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(l["resources"]["cpu"]["period"], 100_000);
        assert_eq!(l["resources"]["pids"]["limit"], 64);
        assert_eq!(
            l["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
        let ns = l["namespaces"].as_array().unwrap();
        let types: Vec<&str> = ns.iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["mount", "network", "uts", "pid", "ipc", "cgroup"]);
        assert_eq!(ns[1]["path"], "/proc/7/ns/net");
        assert!(ns[0].get("path").is_none());
        assert_eq!(l["maskedPaths"][0], "/proc/asound");
        assert_eq!(l["readonlyPaths"][3], "/proc/sys");
        assert!(l.get("sysctl").is_none());

        let mounts = v["mounts"].as_array().unwrap();
        assert_eq!(mounts[0]["destination"], "/proc");
        assert_eq!(mounts[0]["type"], "proc");
        assert_eq!(mounts[0]["source"], "proc");
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(hosts["type"], "bind");
        assert_eq!(hosts["source"], "/state/containers/abc/hosts");
        assert_eq!(
            hosts["options"],
            serde_json::json!(["rbind", "rprivate", "ro"])
        );
        // It round-trips through oci-spec, as runc-compatible tools would read it.
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn container_config_serde_defaults() {
        let c: ContainerConfig = serde_json::from_str(r#"{"hostname":"h"}"#).unwrap();
        assert_eq!(c.hostname, "h");
        assert!(c.entrypoint.is_none() && c.cmd.is_empty());
        let round: ContainerConfig =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }
}
