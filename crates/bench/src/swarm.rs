//! `rswarm-bench-swarm`: rswarm against Docker Swarm on the same three test hosts, one table.
//!
//! (a) a replicated service of 20 tasks on 3 hosts: `service create --detach` → every task
//!     running, timed by polling the manager's task list (not the CLI's own wait);
//! (b) `kill -9` of a worker's daemon (rswarm: the worker's agent; Swarm: that host's `dockerd`,
//!     whose managed containerd dies with it) → 20 tasks running again on the other nodes; the
//!     time until the manager lists the node down is reported beside it.
//!
//! Topology: a "switch" network namespace with a bridge, and three host namespaces (`eth0` on the
//! bridge, 198.19.42.K/24, no route anywhere else); daemons run with `nsenter --net=…` (never
//! `ip netns exec`, which remounts /sys and loses the cgroup mounts). A `docker-registry` in the
//! switch namespace (198.19.42.254:5000) serves the busybox image to rswarm; every dockerd gets
//! the same rootfs through `docker import`. Each run of each system starts from fresh daemons and
//! state dirs and ends with all of it removed.
//!
//! Must run as root. Everything it creates (namespaces, processes, containers, cgroups, mounts,
//! directories, the shim sockets containerd leaves in /run/containerd/s) is removed when the run
//! ends, fails or is interrupted (Drop guards); nothing is routed or NATed to the outside.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::control::v1::{ListNodesRequest, ListTasksRequest};
use rswarm_image::testutil::{busybox_layer, layer_tar, write_oci_layout, ImageSpec};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tonic::transport::Channel;

use crate::stats::{fmt_duration, fmt_period, Summary};
use crate::table::{Align, Table};

/// Docker Swarm 20.10 measured on this machine (REFERENCE.md §2): 20 replicas converge.
pub const SWARM_CONVERGE_REF: Duration = Duration::from_millis(3_800);
/// … and are all running again after a worker is killed.
pub const SWARM_RECOVER_REF: Duration = Duration::from_millis(22_600);
/// Goal (a): rswarm's convergence at most this fraction of Swarm's.
pub const CONVERGE_GOAL_RATIO: f64 = 0.25;
/// Goal (b): rswarm's recovery within this.
pub const RECOVER_GOAL: Duration = Duration::from_secs(3);

const HOSTS: usize = 3;
const SUBNET: &str = "198.19.42";
const REGISTRY_ADDR: &str = "198.19.42.254:5000";
const NETNS_PREFIX: &str = "rsbsw-";
const SERVICE: &str = "web";
const RSWARM_IMAGE: &str = "198.19.42.254:5000/bench/bb:latest";
const SWARM_IMAGE: &str = "bb:latest";
const APPLETS: &[&str] = &["sh", "sleep", "true", "cat", "ls", "echo"];
/// One CLI command, one daemon's start-up.
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// One API call while polling.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between (a) and (b), and between the set-up and (a).
const SETTLE: Duration = Duration::from_secs(2);

/// Command line of `rswarm-bench-swarm`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "rswarm-bench-swarm",
    version,
    about = "rswarm against Docker Swarm on three test hosts: service convergence and recovery from a killed worker; run as root"
)]
pub struct SwarmArgs {
    /// Directory holding `rswarm` and `rswarm-shim` (default: the directory of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Measurements of each system (a fresh cluster each time).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Replicas of the service.
    #[arg(long, default_value_t = 20)]
    pub replicas: usize,
    /// Measure rswarm only (Swarm's figures from REFERENCE.md are shown instead).
    #[arg(long)]
    pub no_swarm: bool,
    /// The dockerd binary (Debian's `docker.io`); the `docker` CLI next to it is used.
    #[arg(long, default_value = "dockerd")]
    pub dockerd: PathBuf,
    /// Interval of the task-list polls.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Give up on one convergence or recovery after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the lab's temp dir is created (default /var/tmp).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
}

/// Writes a progress line (best effort).
fn say(log: &mut impl Write, msg: impl AsRef<str>) {
    let _ = writeln!(log, "{}", msg.as_ref());
    let _ = log.flush();
}

// ------------------------------------------------------------------------------------------------
// Small process and file helpers
// ------------------------------------------------------------------------------------------------

fn find_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs a short command in the root namespaces; fails with its output.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = StdCommand::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sh_quiet(program: &str, args: &[&str]) -> bool {
    StdCommand::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` to completion within [`CMD_TIMEOUT`]; its stdout, or an error quoting stderr.
async fn run_cmd(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CMD_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{what}: no answer within {CMD_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Pids of every process in network namespace `name`.
fn pids_in_netns(name: &str) -> Vec<i32> {
    let Ok(meta) = fs::metadata(netns_path(name)) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", meta.ino());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let link = fs::read_link(e.path().join("ns/net")).ok()?;
            (link.to_string_lossy() == want).then_some(pid)
        })
        .collect()
}

/// SIGKILLs every process in the namespace until none is left (bounded).
fn kill_netns_processes(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in_netns(name);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every directory of a cgroup tree, deepest first.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&e.path()));
            }
        }
    }
    out.push(dir.to_path_buf());
    out
}

/// Kills every process in the top-level cgroup `name` (all hierarchies) and removes it.
fn remove_cgroup(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dirs = rswarm_runtime::cgroup::hierarchy_dirs(name);
        if dirs.is_empty() {
            return;
        }
        let mut busy = false;
        for top in &dirs {
            for d in cgroup_tree(top) {
                let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    busy = true;
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = fs::remove_dir(&d);
            }
        }
        if Instant::now() > deadline {
            return;
        }
        if busy {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills and deletes the runc containers whose state is in `root`.
fn remove_runc_containers(root: &Path) {
    if !root.is_dir() {
        return;
    }
    let root = root.display().to_string();
    let Ok(out) = StdCommand::new("runc")
        .args(["--root", &root, "list", "-q"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
    {
        sh_quiet("runc", &["--root", &root, "kill", "--all", id, "KILL"]);
        sh_quiet("runc", &["--root", &root, "delete", "--force", id]);
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts.dedup();
    for m in mounts {
        let _ = umount2(&m, MntFlags::MNT_DETACH);
    }
}

// ------------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------------

/// A daemon started in a host's network namespace; SIGKILLed and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    stderr: PathBuf,
    stdout: PathBuf,
    reaped: bool,
}

impl Proc {
    /// `nsenter --net=/run/netns/NS -- PROGRAM ARGS` (nsenter execs: the child is the program),
    /// in its own process group, output to `dir/NAME.{stdout,stderr}`.
    fn spawn(
        netns: &str,
        name: &str,
        program: &Path,
        args: &[OsString],
        dir: &Path,
    ) -> anyhow::Result<Proc> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = StdCommand::new("nsenter")
            .arg(format!("--net={}", netns_path(netns).display()))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} in {netns}", program.display()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stderr,
            stdout,
            reaped: false,
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if self.reaped {
            bail!("{} has already exited", self.name);
        }
        if let Some(st) = self.child.try_wait()? {
            self.reaped = true;
            bail!(
                "{} exited ({st}); the end of its log ({}):\n{}",
                self.name,
                self.stderr.display(),
                tail(&self.stderr, 20)
            );
        }
        Ok(())
    }

    /// `kill -9` and reap. Idempotent.
    fn kill9(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ------------------------------------------------------------------------------------------------
// The lab: namespaces, bridge, registry
// ------------------------------------------------------------------------------------------------

struct Host {
    name: String,
    netns: String,
    ip: String,
    dir: PathBuf,
}

/// What the Docker side leaves outside our directories, as found before the run.
struct Leftovers {
    run_docker: bool,
    run_containerd: bool,
    shim_sockets: HashSet<OsString>,
    key_json: bool,
}

const SHIM_SOCKETS: &str = "/run/containerd/s";

impl Leftovers {
    fn snapshot() -> Leftovers {
        Leftovers {
            run_docker: Path::new("/run/docker").exists(),
            run_containerd: Path::new("/run/containerd").exists(),
            shim_sockets: fs::read_dir(SHIM_SOCKETS)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default(),
            key_json: Path::new("/etc/docker/key.json").exists(),
        }
    }

    /// Removes what appeared since the snapshot (killed shims leave their sockets behind).
    fn clean(&self) {
        if let Ok(d) = fs::read_dir(SHIM_SOCKETS) {
            for e in d.flatten() {
                if !self.shim_sockets.contains(&e.file_name())
                    && e.file_type().is_ok_and(|t| t.is_socket())
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if !self.run_containerd {
            let _ = fs::remove_dir_all("/run/containerd");
        }
        if !self.run_docker {
            let _ = fs::remove_dir_all("/run/docker");
        }
        if !self.key_json {
            let _ = fs::remove_file("/etc/docker/key.json");
        }
    }
}

struct Lab {
    hosts: Vec<Host>,
    switch_ns: String,
    created_ns: Vec<String>,
    registry: Option<Proc>,
    leftovers: Leftovers,
    path: PathBuf,
    dir: Option<TempDir>,
}

/// Deletes namespaces of earlier runs whose process is gone (a run killed with SIGKILL).
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_netns_processes(&name);
            sh_quiet("ip", &["netns", "del", &name]);
        }
    }
}

impl Lab {
    fn new(parent: &Path) -> anyhow::Result<Lab> {
        remove_stale_namespaces();
        let dir = tempfile::Builder::new()
            .prefix("rswarm-bench-swarm-")
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
        let path = dir.path().canonicalize()?;
        let base = format!("{NETNS_PREFIX}{}", std::process::id());
        // Built before any namespace exists, so that Drop cleans up a half-built lab.
        let mut lab = Lab {
            hosts: Vec::new(),
            switch_ns: format!("{base}-sw"),
            created_ns: Vec::new(),
            registry: None,
            leftovers: Leftovers::snapshot(),
            path,
            dir: Some(dir),
        };
        let sw = lab.switch_ns.clone();
        sh("ip", &["netns", "add", &sw])?;
        lab.created_ns.push(sw.clone());
        sh("ip", &["-n", &sw, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        sh(
            "ip",
            &[
                "-n",
                &sw,
                "addr",
                "add",
                &format!("{SUBNET}.254/24"),
                "dev",
                "br0",
            ],
        )?;
        for k in 1..=HOSTS {
            let ns = format!("{base}-h{k}");
            sh("ip", &["netns", "add", &ns])?;
            lab.created_ns.push(ns.clone());
            let peer = format!("v{k}");
            let ip = format!("{SUBNET}.{k}");
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer,
                    "netns", &sw,
                ],
            )?;
            sh("ip", &["-n", &sw, "link", "set", &peer, "master", "br0"])?;
            sh("ip", &["-n", &sw, "link", "set", &peer, "up"])?;
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            let hdir = lab.path.join(format!("h{k}"));
            fs::create_dir(&hdir)?;
            lab.hosts.push(Host {
                name: format!("h{k}"),
                netns: ns,
                ip,
                dir: hdir,
            });
        }
        Ok(lab)
    }

    /// Starts the registry in the switch namespace and pushes the busybox image to it.
    async fn start_registry(&mut self, layout: &Path) -> anyhow::Result<()> {
        let dir = self.path.join("registry");
        fs::create_dir(&dir)?;
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY_ADDR}\n",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config)?;
        let mut reg = Proc::spawn(
            &self.switch_ns,
            "registry",
            Path::new("docker-registry"),
            &["serve".into(), config_path.into_os_string()],
            &dir,
        )?;
        let netns = format!("--net={}", netns_path(&self.switch_ns).display());
        let start = Instant::now();
        loop {
            let mut cmd = Command::new("nsenter");
            cmd.args([
                &netns,
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{REGISTRY_ADDR}/v2/"),
            ]);
            if run_cmd(cmd, "curl").await.is_ok_and(|s| s.trim() == "200") {
                break;
            }
            reg.check_running()?;
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the registry does not answer on {REGISTRY_ADDR}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.registry = Some(reg);
        let mut cmd = Command::new("nsenter");
        cmd.arg(&netns)
            .args(["--", "skopeo", "copy", "--quiet", "--dest-tls-verify=false"]);
        cmd.arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{RSWARM_IMAGE}"));
        run_cmd(cmd, "skopeo copy (push)").await?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut r) = self.registry.take() {
            r.kill9();
        }
        for ns in &self.created_ns {
            kill_netns_processes(ns);
        }
        unmount_below(&self.path);
        for ns in self.created_ns.iter().rev() {
            sh_quiet("ip", &["netns", "del", ns]);
        }
        self.leftovers.clean();
        drop(self.dir.take());
    }
}

// ------------------------------------------------------------------------------------------------
// One system's cluster for one run, torn down on drop
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Deployment {
    procs: Vec<Proc>,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
    cgroups: Vec<String>,
    runc_roots: Vec<PathBuf>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill9();
        }
        for ns in &self.netns {
            kill_netns_processes(ns);
        }
        for r in &self.runc_roots {
            remove_runc_containers(r);
        }
        for c in &self.cgroups {
            remove_cgroup(c);
        }
        for d in &self.dirs {
            unmount_below(d);
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy, Debug)]
struct Sample {
    converge: Duration,
    recover: Duration,
    down: Option<Duration>,
}

/// The task list, reduced to what the measurements need.
#[derive(Debug, Default)]
struct TaskCount {
    /// Tasks desired running and running.
    running: usize,
    /// … of those, on the victim node.
    on_victim: usize,
}

struct Ctx {
    rswarm: PathBuf,
    docker: PathBuf,
    dockerd: PathBuf,
    replicas: usize,
    poll: Duration,
    timeout: Duration,
    rootfs_tar: PathBuf,
}

/// Polls `count` until `replicas` tasks run off the victim, and `down` (if given) until the victim
/// is listed down. Returns (all running, node down) measured from `start`.
async fn wait_converged<C, D>(
    ctx: &Ctx,
    start: Instant,
    mut count: C,
    mut down: Option<D>,
    what: &str,
) -> anyhow::Result<(Duration, Option<Duration>)>
where
    C: AsyncFnMut() -> anyhow::Result<TaskCount>,
    D: AsyncFnMut() -> anyhow::Result<bool>,
{
    let mut converged = None;
    let mut down_at = None;
    let mut last = TaskCount::default();
    loop {
        if converged.is_none() {
            last = count().await?;
            if last.running - last.on_victim >= ctx.replicas {
                converged = Some(start.elapsed());
            }
        }
        if down_at.is_none() {
            if let Some(d) = down.as_mut() {
                if d().await? {
                    down_at = Some(start.elapsed());
                }
            }
        }
        if let Some(c) = converged {
            if down.is_none() || down_at.is_some() {
                return Ok((c, down_at));
            }
        }
        if start.elapsed() > ctx.timeout {
            bail!(
                "{what}: not done after {:?} ({} running, {} of them on the killed node; node down: {})",
                ctx.timeout,
                last.running,
                last.on_victim,
                down_at.map_or("not yet".to_string(), fmt_duration)
            );
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

// ------------------------------------------------------------------------------------------------
// rswarm
// ------------------------------------------------------------------------------------------------

/// `rswarm join --token TOKEN ADDR` in `rswarm init`'s output.
fn parse_join(stdout: &str) -> Option<(String, String)> {
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "--token")?;
    let token = words.get(i + 1)?;
    let addr = words.get(i + 2)?;
    token
        .starts_with("RSWTKN-1-")
        .then(|| (token.to_string(), addr.to_string()))
}

async fn rswarm_client(socket: &Path, daemon: &mut Proc) -> anyhow::Result<ControlClient<Channel>> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let channel = rswarm_ca::transport::unix_channel(socket).await?;
            let mut client = ControlClient::new(channel);
            client.list_nodes(ListNodesRequest::default()).await?;
            anyhow::Ok(client)
        };
        match tokio::time::timeout(RPC_TIMEOUT, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) if start.elapsed() > CMD_TIMEOUT => {
                return Err(e.context(format!("no answer on {}", socket.display())))
            }
            _ if start.elapsed() > CMD_TIMEOUT => bail!("{} hangs", socket.display()),
            _ => {}
        }
        daemon.check_running()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (node id, status) of every node.
async fn rswarm_nodes(
    c: &mut ControlClient<Channel>,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let r = tokio::time::timeout(RPC_TIMEOUT, c.list_nodes(ListNodesRequest::default()))
        .await
        .context("ListNodes timed out")?
        .context("ListNodes failed")?;
    Ok(r.into_inner()
        .nodes
        .into_iter()
        .map(|n| (n.id, n.hostname, n.status))
        .collect())
}

async fn rswarm_tasks(c: &mut ControlClient<Channel>, victim: &str) -> anyhow::Result<TaskCount> {
    let req = ListTasksRequest {
        filters: vec![
            format!("service={SERVICE}"),
            "desired-state=running".to_string(),
        ],
    };
    let r = match tokio::time::timeout(RPC_TIMEOUT, c.list_tasks(req))
        .await
        .context("ListTasks timed out")?
    {
        // Not stored yet: the CLI has not got that far.
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(TaskCount::default()),
        r => r.context("ListTasks failed")?,
    };
    let mut n = TaskCount::default();
    for t in r.into_inner().tasks {
        if t.desired_state == "running" && t.status.is_some_and(|s| s.state == "running") {
            n.running += 1;
            if !victim.is_empty() && t.node_id == victim {
                n.on_victim += 1;
            }
        }
    }
    Ok(n)
}

/// Where the time of a convergence went, from the tasks' own timestamps: when the first and last
/// task were created (manager) and when they were reported running (agents), after `start`.
async fn rswarm_timeline(
    c: &mut ControlClient<Channel>,
    start: std::time::SystemTime,
) -> anyhow::Result<String> {
    let tasks = c
        .list_tasks(ListTasksRequest::default())
        .await
        .context("ListTasks failed")?
        .into_inner()
        .tasks;
    let after = |ts: &str| {
        humantime::parse_rfc3339_weak(ts)
            .ok()
            .and_then(|t| t.duration_since(start).ok())
    };
    let mut created: Vec<Duration> = tasks.iter().filter_map(|t| after(&t.created_at)).collect();
    let mut running: Vec<Duration> = tasks
        .iter()
        .filter_map(|t| t.status.as_ref())
        .filter(|s| s.state == "running")
        .filter_map(|s| after(&s.timestamp))
        .collect();
    created.sort();
    running.sort();
    let at = |v: &[Duration], i: usize| v.get(i).map_or("?".into(), |d| fmt_duration(*d));
    Ok(format!(
        "tasks created {}–{}, running reported {}–{} (median {})",
        at(&created, 0),
        at(&created, created.len().saturating_sub(1)),
        at(&running, 0),
        at(&running, running.len().saturating_sub(1)),
        at(&running, running.len() / 2)
    ))
}

async fn rswarm_run(
    lab: &Lab,
    ctx: &Ctx,
    run: usize,
    log: &mut impl Write,
) -> anyhow::Result<Sample> {
    let mut dep = Deployment::default();
    let mut sockets = Vec::new();
    for h in &lab.hosts {
        let dir = h.dir.join(format!("rswarm-{run}"));
        fs::create_dir(&dir)?;
        dep.dirs.push(dir.clone());
        dep.netns.push(h.netns.clone());
        let state = dir.join("state");
        dep.cgroups
            .push(rswarm_runtime::cgroup::parent_for_state_dir(&state));
        dep.runc_roots.push(state.join("runc"));
        sockets.push(dir.join("rswarm.sock"));
    }
    let common = |h: &Host, dir: &Path| -> Vec<OsString> {
        vec![
            "--advertise-addr".into(),
            h.ip.clone().into(),
            "--state-dir".into(),
            dir.join("state").into_os_string(),
            "--socket".into(),
            dir.join("rswarm.sock").into_os_string(),
            "--hostname".into(),
            h.name.clone().into(),
            "--insecure-registry".into(),
            REGISTRY_ADDR.into(),
        ]
    };
    let h1 = &lab.hosts[0];
    let mut args: Vec<OsString> = vec!["init".into()];
    args.extend(common(h1, &dep.dirs[0]));
    let mut manager = Proc::spawn(&h1.netns, "rswarm-init", &ctx.rswarm, &args, &dep.dirs[0])?;
    let start = Instant::now();
    let (token, addr) = loop {
        if let Some(t) = parse_join(&fs::read_to_string(&manager.stdout).unwrap_or_default()) {
            break t;
        }
        manager.check_running()?;
        if start.elapsed() > CMD_TIMEOUT {
            bail!("rswarm init printed no join command");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut client = rswarm_client(&sockets[0], &mut manager).await?;
    dep.procs.push(manager);
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let mut args: Vec<OsString> = vec!["join".into(), "--token".into(), token.clone().into()];
        args.extend(common(h, &dep.dirs[i]));
        args.push(addr.clone().into());
        let p = Proc::spawn(&h.netns, "rswarm-join", &ctx.rswarm, &args, &dep.dirs[i])?;
        dep.procs.push(p);
    }
    let start = Instant::now();
    let ids = loop {
        let nodes = rswarm_nodes(&mut client).await?;
        if nodes.len() == HOSTS && nodes.iter().all(|n| n.2 == "ready") {
            break nodes;
        }
        for p in &mut dep.procs {
            p.check_running()?;
        }
        if start.elapsed() > CMD_TIMEOUT {
            bail!("rswarm nodes not all ready: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim_host = &lab.hosts[HOSTS - 1];
    let victim = ids
        .iter()
        .find(|n| n.1 == victim_host.name)
        .map(|n| n.0.clone())
        .context("the victim node is not listed")?;
    // Every host already holds the image, as every Swarm host does (docker import).
    for s in &sockets {
        let mut cmd = Command::new(&ctx.rswarm);
        cmd.arg("--host")
            .arg(format!("unix://{}", s.display()))
            .args(["pull", RSWARM_IMAGE]);
        run_cmd(cmd, "rswarm pull").await?;
    }
    say(
        log,
        format!("rswarm run {run}: 3 nodes ready, image on every host"),
    );
    tokio::time::sleep(SETTLE).await;

    // (a)
    let mut cmd = Command::new(&ctx.rswarm);
    cmd.arg("--host")
        .arg(format!("unix://{}", sockets[0].display()))
        .args(["service", "create", "-d", "--name", SERVICE, "--replicas"])
        .arg(ctx.replicas.to_string())
        .arg(RSWARM_IMAGE);
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    let create = tokio::spawn(run_cmd(cmd, "rswarm service create"));
    let c = &mut client;
    let (converge, _) = wait_converged(
        ctx,
        start,
        async || rswarm_tasks(c, "").await,
        None::<fn() -> std::future::Ready<anyhow::Result<bool>>>,
        "rswarm convergence",
    )
    .await?;
    create.await.context("service create task")??;
    say(
        log,
        format!(
            "rswarm run {run}: (a) {} replicas running after {} ({})",
            ctx.replicas,
            fmt_duration(converge),
            rswarm_timeline(&mut client, start_wall).await?
        ),
    );
    tokio::time::sleep(SETTLE).await;

    // (b)
    let start = Instant::now();
    dep.procs[HOSTS - 1].kill9();
    let mut nodes_client = client.clone();
    let c = &mut client;
    let v = victim.clone();
    let (recover, down) = wait_converged(
        ctx,
        start,
        async || rswarm_tasks(c, &v).await,
        Some(async || {
            let nodes = rswarm_nodes(&mut nodes_client).await?;
            Ok::<_, anyhow::Error>(nodes.iter().any(|n| n.0 == victim && n.2 == "down"))
        }),
        "rswarm recovery",
    )
    .await?;
    say(
        log,
        format!(
            "rswarm run {run}: (b) node down after {}, {} replicas running again after {}",
            down.map_or("?".into(), fmt_duration),
            ctx.replicas,
            fmt_duration(recover)
        ),
    );
    drop(dep);
    Ok(Sample {
        converge,
        recover,
        down,
    })
}

// ------------------------------------------------------------------------------------------------
// Docker Swarm
// ------------------------------------------------------------------------------------------------

/// Percent-encodes a query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET path` on a dockerd's unix socket (HTTP/1.0: the body ends at EOF), parsed as JSON.
async fn docker_get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    docker_get_opt(socket, path)
        .await?
        .with_context(|| format!("GET {path}: 404 Not Found"))
}

/// [`docker_get`], with `None` for 404 Not Found.
async fn docker_get_opt(socket: &Path, path: &str) -> anyhow::Result<Option<Value>> {
    let call = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(RPC_TIMEOUT, call)
        .await
        .with_context(|| format!("GET {path}: timed out"))?
        .with_context(|| format!("GET {path} on {}", socket.display()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no HTTP header in {text:?}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "404" {
        return Ok(None);
    }
    if status != "200" {
        bail!(
            "GET {path}: {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    if path == "/_ping" {
        return Ok(Some(Value::String(body.to_string())));
    }
    serde_json::from_str(body)
        .map(Some)
        .with_context(|| format!("GET {path}: not JSON"))
}

async fn swarm_tasks(socket: &Path, victim: &str) -> anyhow::Result<TaskCount> {
    let filters = format!(r#"{{"service":["{SERVICE}"],"desired-state":["running"]}}"#);
    let path = format!("/tasks?filters={}", url_encode(&filters));
    let mut n = TaskCount::default();
    // 404 until the service is stored: the CLI has not got that far.
    let Some(v) = docker_get_opt(socket, &path).await? else {
        return Ok(n);
    };
    for t in v.as_array().context("/tasks is not a list")? {
        if t["DesiredState"] == "running" && t["Status"]["State"] == "running" {
            n.running += 1;
            if !victim.is_empty() && t["NodeID"] == victim {
                n.on_victim += 1;
            }
        }
    }
    Ok(n)
}

fn docker_cmd(ctx: &Ctx, socket: &Path) -> Command {
    let mut cmd = Command::new(&ctx.docker);
    cmd.arg("-H").arg(format!("unix://{}", socket.display()));
    cmd
}

async fn swarm_run(
    lab: &Lab,
    ctx: &Ctx,
    run: usize,
    log: &mut impl Write,
) -> anyhow::Result<Sample> {
    let mut dep = Deployment::default();
    let mut sockets = Vec::new();
    for h in &lab.hosts {
        let dir = h.dir.join(format!("swarm-{run}"));
        fs::create_dir(&dir)?;
        dep.dirs.push(dir.clone());
        dep.netns.push(h.netns.clone());
        let cgroup = format!("{NETNS_PREFIX}{}-{run}-{}", std::process::id(), h.name);
        dep.cgroups.push(cgroup.clone());
        let socket = dir.join("docker.sock");
        // Our own daemon.json: not /etc/docker's, and the trust key in our dir (else dockerd
        // writes /etc/docker/key.json).
        let config = dir.join("daemon.json");
        fs::write(
            &config,
            serde_json::json!({ "deprecated-key-path": dir.join("key.json") }).to_string(),
        )?;
        let args: Vec<OsString> = vec![
            "--data-root".into(),
            dir.join("data").into_os_string(),
            "--exec-root".into(),
            dir.join("exec").into_os_string(),
            "-H".into(),
            format!("unix://{}", socket.display()).into(),
            "--pidfile".into(),
            dir.join("docker.pid").into_os_string(),
            "--bridge".into(),
            "none".into(),
            "--iptables=false".into(),
            "--cgroup-parent".into(),
            format!("/{cgroup}").into(),
            "--config-file".into(),
            config.into_os_string(),
        ];
        dep.procs
            .push(Proc::spawn(&h.netns, "dockerd", &ctx.dockerd, &args, &dir)?);
        sockets.push(socket);
    }
    let start = Instant::now();
    for (i, s) in sockets.iter().enumerate() {
        while docker_get(s, "/_ping").await.is_err() {
            dep.procs[i].check_running()?;
            if start.elapsed() > CMD_TIMEOUT {
                bail!("dockerd on {} does not answer", lab.hosts[i].name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for s in &sockets {
        let mut cmd = docker_cmd(ctx, s);
        cmd.arg("import").arg(&ctx.rootfs_tar).arg(SWARM_IMAGE);
        run_cmd(cmd, "docker import").await?;
    }
    let h1 = &lab.hosts[0];
    let mut cmd = docker_cmd(ctx, &sockets[0]);
    cmd.args(["swarm", "init", "--advertise-addr", &h1.ip]);
    run_cmd(cmd, "docker swarm init").await?;
    let mut cmd = docker_cmd(ctx, &sockets[0]);
    cmd.args(["swarm", "join-token", "-q", "worker"]);
    let token = run_cmd(cmd, "docker swarm join-token")
        .await?
        .trim()
        .to_string();
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let mut cmd = docker_cmd(ctx, &sockets[i]);
        cmd.args([
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &h.ip,
        ])
        .arg(format!("{}:2377", h1.ip));
        run_cmd(cmd, "docker swarm join").await?;
    }
    let start = Instant::now();
    loop {
        let nodes = docker_get(&sockets[0], "/nodes").await?;
        let nodes = nodes.as_array().context("/nodes is not a list")?;
        if nodes.len() == HOSTS && nodes.iter().all(|n| n["Status"]["State"] == "ready") {
            break;
        }
        if start.elapsed() > CMD_TIMEOUT {
            bail!("Swarm nodes not all ready: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = docker_get(&sockets[HOSTS - 1], "/info").await?;
    let victim = info["Swarm"]["NodeID"]
        .as_str()
        .filter(|s| !s.is_empty())
        .context("no Swarm.NodeID in the victim's /info")?
        .to_string();
    say(
        log,
        format!("swarm run {run}: 3 nodes ready, image imported on every host"),
    );
    tokio::time::sleep(SETTLE).await;

    // (a)
    let mut cmd = docker_cmd(ctx, &sockets[0]);
    cmd.args([
        "service",
        "create",
        "--detach",
        "--replicas",
        &ctx.replicas.to_string(),
        "--name",
        SERVICE,
        SWARM_IMAGE,
        "sleep",
        "1000",
    ]);
    let start = Instant::now();
    let create = tokio::spawn(run_cmd(cmd, "docker service create"));
    let s0 = sockets[0].clone();
    let (converge, _) = wait_converged(
        ctx,
        start,
        async || swarm_tasks(&s0, "").await,
        None::<fn() -> std::future::Ready<anyhow::Result<bool>>>,
        "Swarm convergence",
    )
    .await?;
    create.await.context("service create task")??;
    say(
        log,
        format!(
            "swarm run {run}: (a) {} replicas running after {}",
            ctx.replicas,
            fmt_duration(converge)
        ),
    );
    tokio::time::sleep(SETTLE).await;

    // (b): dockerd's managed containerd dies with it (parent-death signal); shims survive.
    let start = Instant::now();
    dep.procs[HOSTS - 1].kill9();
    let node_path = format!("/nodes/{victim}");
    let (recover, down) = wait_converged(
        ctx,
        start,
        async || swarm_tasks(&s0, &victim).await,
        Some(async || {
            let n = docker_get(&s0, &node_path).await?;
            Ok::<_, anyhow::Error>(n["Status"]["State"] == "down")
        }),
        "Swarm recovery",
    )
    .await?;
    say(
        log,
        format!(
            "swarm run {run}: (b) node down after {}, {} replicas running again after {}",
            down.map_or("?".into(), fmt_duration),
            ctx.replicas,
            fmt_duration(recover)
        ),
    );
    drop(dep);
    Ok(Sample {
        converge,
        recover,
        down,
    })
}

// ------------------------------------------------------------------------------------------------
// The run and the table
// ------------------------------------------------------------------------------------------------

/// "2.10 s (1.95–2.40)"; "—" without samples.
fn cell(samples: &[Duration]) -> String {
    match Summary::of(samples) {
        None => "—".into(),
        Some(s) if s.n == 1 => fmt_duration(s.p50),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_duration(s.p50),
            fmt_duration(s.min),
            fmt_duration(s.max)
        ),
    }
}

fn median(samples: &[Duration]) -> Option<Duration> {
    Summary::of(samples).map(|s| s.p50)
}

fn ratio(ours: Option<Duration>, theirs: Option<Duration>) -> Option<f64> {
    let (o, t) = (ours?.as_secs_f64(), theirs?.as_secs_f64());
    (t > 0.0).then(|| o / t)
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r < 0.1 => format!("{r:.3}×"),
        Some(r) => format!("{r:.2}×"),
    }
}

fn yes_no(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "—",
    }
}

/// Everything measured, per system.
#[derive(Default)]
struct Results {
    rswarm: Vec<Sample>,
    swarm: Vec<Sample>,
}

/// Which figure of a sample a row shows.
type Pick = fn(&Sample) -> Option<Duration>;

/// The one table: rswarm, Swarm, ratio, goal. Without Swarm samples, Swarm's REFERENCE.md
/// figures stand in (marked).
fn table(res: &Results, replicas: usize, runs: usize) -> Table {
    let mut t = Table::new([
        "Measurement",
        "rswarm p50 (min–max)",
        "Docker Swarm p50 (min–max)",
        "rswarm / Swarm",
        "Goal",
        "Met",
    ]);
    for c in 1..4 {
        t = t.align(c, Align::Right);
    }
    let pick = |s: &[Sample], f: Pick| -> Vec<Duration> { s.iter().filter_map(f).collect() };
    let rows: [(String, Pick, Option<Duration>); 3] = [
        (
            format!("(a) service create -d → {replicas}/{replicas} running, 3 hosts"),
            |s| Some(s.converge),
            Some(SWARM_CONVERGE_REF),
        ),
        (
            format!("(b) kill -9 a worker's daemon → {replicas}/{replicas} running again"),
            |s| Some(s.recover),
            Some(SWARM_RECOVER_REF),
        ),
        (
            "(b) kill -9 a worker's daemon → node listed down".to_string(),
            |s| s.down,
            Some(crate::SWARM_NODE_DOWN),
        ),
    ];
    for (i, (what, f, reference)) in rows.into_iter().enumerate() {
        let ours = pick(&res.rswarm, f);
        let theirs = pick(&res.swarm, f);
        let (theirs_cell, theirs_med) = if theirs.is_empty() {
            (
                format!(
                    "{} (REFERENCE.md)",
                    reference.map_or("—".into(), fmt_duration)
                ),
                reference,
            )
        } else {
            (cell(&theirs), median(&theirs))
        };
        let r = ratio(median(&ours), theirs_med);
        let (goal, met) = match i {
            0 => (
                format!("≤ {CONVERGE_GOAL_RATIO}× Swarm"),
                r.map(|r| r <= CONVERGE_GOAL_RATIO),
            ),
            1 => (
                format!("≤ {} (rswarm p50)", fmt_period(RECOVER_GOAL)),
                median(&ours).map(|m| m <= RECOVER_GOAL),
            ),
            _ => ("—".to_string(), None),
        };
        t.row([
            format!("{what} [{} / {} runs]", ours.len(), runs),
            cell(&ours),
            theirs_cell,
            fmt_ratio(r),
            goal,
            yes_no(met).to_string(),
        ]);
    }
    t
}

fn check_tools(args: &SwarmArgs, bin_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut missing = Vec::new();
    for tool in ["nsenter", "ip", "runc", "docker-registry", "skopeo", "curl"] {
        if find_in_path(Path::new(tool)).is_none() {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    for b in ["rswarm", "rswarm-shim"] {
        if !bin_dir.join(b).is_file() {
            missing.push(format!(
                "{} (cargo build --release -p rswarm, or --bin-dir)",
                bin_dir.join(b).display()
            ));
        }
    }
    let mut docker = (PathBuf::new(), PathBuf::new());
    if !args.no_swarm {
        match find_in_path(&args.dockerd) {
            None => missing.push(format!(
                "{} (Docker Swarm: `apt-get install -y docker.io`, and do not start its service; or run with --no-swarm)",
                args.dockerd.display()
            )),
            Some(dockerd) => {
                // The CLI of the same package: another `docker` earlier in PATH may be newer.
                let cli = dockerd
                    .parent()
                    .and_then(|d| d.parent())
                    .map(|p| p.join("bin/docker"))
                    .filter(|p| p.is_file())
                    .or_else(|| find_in_path(Path::new("docker")));
                match cli {
                    Some(cli) => docker = (dockerd, cli),
                    None => missing.push("docker (the CLI of docker.io)".into()),
                }
            }
        }
    }
    if !missing.is_empty() {
        bail!("missing: {}", missing.join("; "));
    }
    Ok(docker)
}

fn version_of(program: &Path) -> String {
    StdCommand::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

async fn measure(
    args: &SwarmArgs,
    ctx: &Ctx,
    res: &mut Results,
    failures: &mut Vec<String>,
    parent: &Path,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    say(
        log,
        "lab: 3 hosts (network namespaces on a bridge), registry, images ...",
    );
    let mut lab = Lab::new(parent)?;
    let layout = lab.path.join("layout");
    let base = busybox_layer("/bin/busybox", APPLETS)?;
    let spec = ImageSpec {
        cmd: vec!["sleep".into(), "1000".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ImageSpec::default()
    };
    write_oci_layout(&layout, std::slice::from_ref(&base), &spec)?;
    fs::write(&ctx.rootfs_tar, layer_tar(&base)?)?;
    lab.start_registry(&layout).await?;
    say(log, format!("lab ready in {}", lab.path.display()));
    for run in 1..=args.runs {
        match rswarm_run(&lab, ctx, run, log).await {
            Ok(s) => res.rswarm.push(s),
            Err(e) => {
                say(log, format!("rswarm run {run}: FAILED: {e:#}"));
                failures.push(format!("rswarm run {run}: {e:#}"));
            }
        }
        if !args.no_swarm {
            match swarm_run(&lab, ctx, run, log).await {
                Ok(s) => res.swarm.push(s),
                Err(e) => {
                    say(log, format!("swarm run {run}: FAILED: {e:#}"));
                    failures.push(format!("swarm run {run}: {e:#}"));
                }
            }
        }
    }
    say(log, "removing the lab ...");
    drop(lab);
    Ok(())
}

/// Resolves on Ctrl-C; never when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the benchmark: progress to `log`, the table to `out` (also after a failure or Ctrl-C,
/// with what was measured until then). Fails if any run failed.
pub async fn run(
    args: SwarmArgs,
    out: &mut impl Write,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    if args.runs == 0 || args.replicas == 0 {
        bail!("--runs and --replicas must be at least 1");
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("this executable has no directory")?,
    };
    let (dockerd, docker) = check_tools(&args, &bin_dir)?;
    let parent = args
        .tmp_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // The rootfs tar lives in its own temp dir (removed on drop like everything else).
    let scratch = tempfile::Builder::new()
        .prefix("rswarm-bench-swarm-img-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
    let ctx = Ctx {
        rswarm: bin_dir.join("rswarm"),
        docker,
        dockerd: dockerd.clone(),
        replicas: args.replicas,
        poll: args.poll,
        timeout: args.timeout,
        rootfs_tar: scratch.path().join("rootfs.tar"),
    };
    let started = Instant::now();
    let mut res = Results::default();
    let mut failures = Vec::new();
    let outcome = tokio::select! {
        r = measure(&args, &ctx, &mut res, &mut failures, &parent, log) => r,
        () = interrupted() => Err(anyhow!("interrupted (Ctrl-C)")),
    };
    drop(scratch);

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        out,
        "## rswarm-bench-swarm: rswarm against Docker Swarm, {} replicas on 3 hosts\n",
        args.replicas
    )?;
    writeln!(
        out,
        "- machine: {cpus} CPUs, Linux {}; load average at the end: {}",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    writeln!(out, "- rswarm: {}", ctx.rswarm.display())?;
    if args.no_swarm {
        writeln!(
            out,
            "- Docker Swarm: not run (--no-swarm); its figures are REFERENCE.md §2's"
        )?;
    } else {
        writeln!(
            out,
            "- Docker Swarm: {} (one dockerd + its managed containerd per host)",
            version_of(&dockerd)
        )?;
    }
    writeln!(out)?;
    table(&res, args.replicas, args.runs).render(out)?;
    writeln!(out)?;
    writeln!(
        out,
        "- Each run starts both clusters afresh: h1 manager (runs tasks too), h2 and h3 workers; the victim is h3 (rswarm: its `rswarm join` agent; Swarm: its dockerd, whose managed containerd dies with it). Runs alternate rswarm, Swarm."
    )?;
    writeln!(
        out,
        "- Times are from the `service create --detach` spawn (or the kill) until the manager's task list (rswarm ListTasks, Swarm GET /tasks, polled every {}) shows {} tasks desired and running, none on the killed node; 'node listed down' polls the node list the same way.",
        fmt_period(args.poll),
        args.replicas
    )?;
    writeln!(
        out,
        "- Same busybox rootfs on both: rswarm pulls it from a docker-registry on the lab bridge before the timed part (every host holds it, as with Swarm's `docker import` on every host)."
    )?;
    writeln!(out, "- whole run: {:.0} s", started.elapsed().as_secs_f64())?;
    if let Err(e) = &outcome {
        writeln!(out, "- the run was cut short ({e:#}): the table is partial")?;
    }
    for f in &failures {
        writeln!(out, "- FAILED: {}", f.replace('\n', " "))?;
    }
    out.flush()?;
    outcome?;
    if !failures.is_empty() {
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn parses_the_join_command() {
        let out = "Swarm initialized: current node (abc) is now a manager.\n\n    rswarm join --token RSWTKN-1-aa-bb 198.19.42.1:4242\n";
        assert_eq!(
            parse_join(out),
            Some(("RSWTKN-1-aa-bb".into(), "198.19.42.1:4242".into()))
        );
        assert_eq!(parse_join("rswarm join --token"), None);
        assert_eq!(parse_join("x --token SWMTKN-1-a b"), None);
    }

    #[test]
    fn encodes_docker_filters() {
        assert_eq!(
            url_encode(r#"{"service":["web"]}"#),
            "%7B%22service%22%3A%5B%22web%22%5D%7D"
        );
    }

    #[test]
    fn the_table_compares_medians_and_falls_back_to_the_reference() {
        let s = |c, r, d| Sample {
            converge: ms(c),
            recover: ms(r),
            down: Some(ms(d)),
        };
        let res = Results {
            rswarm: vec![s(600, 1_500, 10), s(500, 1_400, 12), s(700, 1_600, 11)],
            swarm: vec![s(2_000, 17_000, 11_000), s(2_400, 18_000, 12_000)],
        };
        let text = table(&res, 20, 3).to_markdown();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[2].contains("600.0 ms (500.0 ms–700.0 ms)"), "{text}");
        assert!(lines[2].contains("2.00 s (2.00 s–2.40 s)"), "{text}");
        assert!(lines[2].contains("0.30×"), "{text}");
        assert!(lines[2].contains("| NO "), "{text}");
        assert!(lines[3].contains("| yes "), "{text}");
        assert!(lines[2].contains("[3 / 3 runs]"), "{text}");

        let only = Results {
            rswarm: vec![s(500, 4_000, 10)],
            swarm: vec![],
        };
        let text = table(&only, 20, 1).to_markdown();
        assert!(text.contains("3.80 s (REFERENCE.md)"), "{text}");
        assert!(text.contains("0.13×"), "{text}");
        assert!(text.contains("| NO "), "{text}");
    }
}
