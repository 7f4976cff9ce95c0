//! `rswarm-bench-engine`: what a node's container engine costs, against the tools it replaces.
//!
//! 1. start latency of a container whose image is present: gRPC `Create` + `Start` (and the
//!    `rswarm container run -d` CLI) against a raw `runc run -d` of the same OCI config on a
//!    fresh overlay mount of the same layers;
//! 2. pull + unpack of a five-layer image from a local registry (Debian's `docker-registry`):
//!    `rswarm image pull` against `skopeo copy` + `umoci unpack`;
//! 3. memory of an agent running 20 containers, and of their shims, against Docker Swarm's
//!    worker (dockerd + containerd).
//!
//! Must run as root. Containers use `--network none` only: the run never touches the root
//! network namespace. Every container, mount, cgroup, process and directory it makes is removed
//! when the run ends, fails or is interrupted (Drop guards).

use std::ffi::OsString;
use std::fs;
use std::io::{Read as _, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rswarm_api::local::v1::containers_client::ContainersClient;
use rswarm_api::local::v1::{
    ContainerRef, ContainerSpec, CreateContainerRequest, RemoveContainerRequest,
};
use rswarm_image::testutil::{busybox_layer, tar_dir, write_oci_layout, Entry, ImageSpec};
use serde_json::Value;
use tokio::process::Command;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::stats::{fmt_duration, fmt_kib, percentile};
use crate::table::{Align, Table};
use crate::{compare_size, SWARM_CONTAINERD_MB, SWARM_DOCKERD_MB};

/// The image every container of parts 1 and 3 runs (loaded from a tar, so it is present).
const BUSYBOX_IMAGE: &str = "bench/busybox:latest";
/// The repository of the multi-layer image of part 2.
const MULTI_REPO: &str = "bench/multi:latest";
/// Busybox applets of the test images.
const APPLETS: &[&str] = &["sh", "sleep", "true", "cat", "ls", "echo"];
/// One CLI command or tool run; longer is a failure.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// One gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Random data layers of the pull image, and their size.
const DATA_LAYERS: usize = 4;
const FILES_PER_LAYER: usize = 4;
const LAYER_BYTES: usize = 8 << 20;
/// Goal: rswarm's start within this factor of raw runc.
const START_GOAL: f64 = 1.2;
/// Goal for the agent's RSS with 20 containers, MB.
const AGENT_GOAL_MB: f64 = 20.0;

/// Command line of `rswarm-bench-engine`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "rswarm-bench-engine",
    version,
    about = "Benchmark rswarm's container engine (start latency, pull, agent memory) against runc, skopeo + umoci and Docker; run as root"
)]
pub struct EngineArgs {
    /// Directory holding `rswarm` and `rswarm-shim` (default: the directory of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Fewer samples: a smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Run only one part.
    #[arg(long, value_enum)]
    pub only: Option<EnginePart>,
    /// The runc binary of the reference runs (the engine uses its own default).
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// Parent of the temp dir (default: /var/tmp when usable, else the system temp dir).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Idle time before every start sample, so each starts from the same quiet state: without
    /// it a sample that follows another start right away runs warm (measured here: the runc
    /// reference at p50 34 ms right after an rswarm start, 42 ms after 300 ms of quiet).
    #[arg(long, default_value_t = 300)]
    pub sample_gap_ms: u64,
}

/// The parts of the engine benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EnginePart {
    Start,
    Pull,
    Rss,
}

/// Sample counts of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnginePlan {
    pub parts: Vec<EnginePart>,
    /// gRPC starts, and as many raw runc starts.
    pub starts: usize,
    /// `rswarm container run -d` starts.
    pub cli_starts: usize,
    /// Cold pulls, and as many skopeo + umoci runs.
    pub pulls: usize,
    /// Containers running while the agent's memory is read.
    pub containers: usize,
    /// Wait before memory is read.
    pub settle: Duration,
    /// Idle time before every start sample (`--sample-gap-ms`).
    pub sample_gap: Duration,
}

impl EnginePlan {
    pub fn new(quick: bool, only: Option<EnginePart>) -> EnginePlan {
        let parts = match only {
            Some(p) => vec![p],
            None => vec![EnginePart::Start, EnginePart::Pull, EnginePart::Rss],
        };
        EnginePlan {
            parts,
            starts: if quick { 5 } else { 20 },
            cli_starts: if quick { 3 } else { 10 },
            pulls: if quick { 2 } else { 5 },
            containers: 20,
            settle: Duration::from_secs(2),
            sample_gap: Duration::from_millis(300),
        }
    }

    pub fn runs(&self, part: EnginePart) -> bool {
        self.parts.contains(&part)
    }

    /// The external tools the parts need, with the Debian package of each.
    pub fn tools(&self, runc: &Path) -> Vec<(PathBuf, &'static str)> {
        let mut t = vec![(runc.to_path_buf(), "runc")];
        if self.runs(EnginePart::Pull) {
            t.push((PathBuf::from("docker-registry"), "docker-registry"));
            t.push((PathBuf::from("skopeo"), "skopeo"));
            t.push((PathBuf::from("umoci"), "umoci"));
        }
        t.push((PathBuf::from("/bin/busybox"), "busybox-static"));
        t.push((PathBuf::from("/usr/bin/tini-static"), "tini"));
        t
    }
}

/// Writes a progress line (errors ignored: progress is best effort).
macro_rules! say {
    ($log:expr, $($arg:tt)*) => {{
        let _ = writeln!($log, $($arg)*);
        let _ = $log.flush();
    }};
}

/// `name` as the shell finds it (a path as given), also in the sbin dirs root's PATH may lack.
pub fn find_tool(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Median and 90th percentile (nearest rank) of `samples`.
pub fn p50_p90(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    Some((percentile(&s, 50.0)?, percentile(&s, 90.0)?))
}

fn fmt_p50_p90(samples: &[Duration]) -> String {
    match p50_p90(samples) {
        Some((a, b)) => format!("p50 {} · p90 {}", fmt_duration(a), fmt_duration(b)),
        None => DASH.to_string(),
    }
}

/// "1.13×": `ours / theirs`, both medians.
pub fn ratio(ours: &[Duration], theirs: &[Duration]) -> Option<f64> {
    let (a, _) = p50_p90(ours)?;
    let (b, _) = p50_p90(theirs)?;
    let b = b.as_secs_f64();
    (b > 0.0).then(|| a.as_secs_f64() / b)
}

const DASH: &str = "—";

/// Memory of one process, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    /// `VmRSS` of /proc/PID/status.
    pub vm_rss: u64,
    /// `Rss`, `Pss` and `Private_Clean + Private_Dirty` of /proc/PID/smaps_rollup.
    pub rss: u64,
    pub pss: u64,
    pub private: u64,
}

impl Mem {
    /// Parses /proc/PID/status and /proc/PID/smaps_rollup.
    pub fn parse(status: &str, smaps_rollup: &str) -> Option<Mem> {
        let field = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
        };
        Some(Mem {
            vm_rss: field(status, "VmRSS")?,
            rss: field(smaps_rollup, "Rss")?,
            pss: field(smaps_rollup, "Pss")?,
            private: field(smaps_rollup, "Private_Clean")? + field(smaps_rollup, "Private_Dirty")?,
        })
    }

    pub fn of(pid: u32) -> anyhow::Result<Mem> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("cannot read /proc/{pid}/smaps_rollup"))?;
        Mem::parse(&status, &rollup)
            .with_context(|| format!("unexpected /proc/{pid}/status or smaps_rollup"))
    }

    fn add(self, o: Mem) -> Mem {
        Mem {
            vm_rss: self.vm_rss + o.vm_rss,
            rss: self.rss + o.rss,
            pss: self.pss + o.pss,
            private: self.private + o.private,
        }
    }

    fn div(self, n: u64) -> Mem {
        let n = n.max(1);
        Mem {
            vm_rss: self.vm_rss / n,
            rss: self.rss / n,
            pss: self.pss / n,
            private: self.private / n,
        }
    }

    fn describe(&self) -> String {
        format!(
            "VmRSS {} · Pss {} · Private {}",
            fmt_kib(self.vm_rss),
            fmt_kib(self.pss),
            fmt_kib(self.private)
        )
    }
}

/// A deterministic xorshift64 stream: incompressible test data.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The layers of the pull image: busybox, then [`DATA_LAYERS`] layers of random files.
fn multi_layers() -> anyhow::Result<Vec<Vec<(String, Entry)>>> {
    // One applet more than the start image, so no layer is shared with it.
    let mut applets = APPLETS.to_vec();
    applets.push("head");
    let mut layers = vec![busybox_layer("/bin/busybox", &applets).context("read /bin/busybox")?];
    for l in 0..DATA_LAYERS {
        let mut layer = vec![(format!("data{l}"), Entry::Dir)];
        for f in 0..FILES_PER_LAYER {
            let seed = 0x9e37_79b9_7f4a_7c15 ^ ((l * FILES_PER_LAYER + f + 1) as u64);
            layer.push((
                format!("data{l}/blob{f}"),
                Entry::File(pseudo_random(seed, LAYER_BYTES / FILES_PER_LAYER)),
            ));
        }
        layers.push(layer);
    }
    Ok(layers)
}

/// The tar of a one-layer busybox image named [`BUSYBOX_IMAGE`], for `rswarm image load`.
fn busybox_archive(dir: &Path) -> anyhow::Result<PathBuf> {
    let layout = dir.join("layout-busybox");
    let spec = ImageSpec {
        name: Some(format!("docker.io/{BUSYBOX_IMAGE}")),
        ..ImageSpec::default()
    };
    let layer = busybox_layer("/bin/busybox", APPLETS).context("read /bin/busybox")?;
    write_oci_layout(&layout, &[layer], &spec).context("write the busybox OCI layout")?;
    let tar = dir.join("busybox.tar");
    tar_dir(&layout, &tar).context("tar the busybox OCI layout")?;
    Ok(tar)
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Runs `program args` (stdin /dev/null, output captured) with a timeout; fails on a non-zero
/// exit, quoting stderr. Returns the wall time and stdout.
async fn tool(program: &Path, args: &[OsString]) -> anyhow::Result<(Duration, String)> {
    let shown = || {
        std::iter::once(program.display().to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(TOOL_TIMEOUT, child)
        .await
        .map_err(|_| anyhow!("`{}` took more than {TOOL_TIMEOUT:?}", shown()))?
        .with_context(|| format!("cannot run {}", program.display()))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// One rswarm node (the manager or a worker) of the bench cluster.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    socket: PathBuf,
    state: PathBuf,
    pid: u32,
}

impl Node {
    fn manager(c: &Cluster) -> Node {
        let dir = c.dir().join("manager");
        Node {
            name: "manager (rswarm init)".into(),
            socket: dir.join("rswarm.sock"),
            state: dir.join("state"),
            pid: c.manager.pid(),
        }
    }

    fn worker(c: &Cluster, i: usize) -> Option<Node> {
        let w = c.workers.get(i)?;
        let dir = c.dir().join(&w.hostname);
        Some(Node {
            name: format!("worker {} (rswarm join)", w.hostname),
            socket: dir.join("rswarm.sock"),
            state: dir.join("state"),
            pid: w.daemon.pid(),
        })
    }

    async fn containers(&self) -> anyhow::Result<ContainersClient<Channel>> {
        let channel = rswarm_ca::transport::unix_channel(&self.socket)
            .await
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        Ok(ContainersClient::new(channel))
    }
}

/// `rswarm --host unix://SOCKET args…`: wall time and stdout.
async fn rswarm(bin: &Path, node: &Node, args: &[&str]) -> anyhow::Result<(Duration, String)> {
    let mut all = vec![
        OsString::from("--host"),
        OsString::from(format!("unix://{}", node.socket.display())),
    ];
    all.extend(os(args));
    tool(bin, &all).await
}

/// How long a gRPC Create + Start took.
#[derive(Clone, Copy, Debug)]
struct StartTiming {
    /// Until Create returned.
    create: Duration,
    /// Until Start returned (the container runs).
    total: Duration,
}

/// gRPC Create + Start of `cmd` with `--network none`; the time until Start returned.
async fn create_start(
    client: &mut ContainersClient<Channel>,
    cmd: &[&str],
    ids: &mut Vec<String>,
) -> anyhow::Result<StartTiming> {
    let spec = ContainerSpec {
        image: BUSYBOX_IMAGE.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        network: "none".into(),
        ..Default::default()
    };
    let start = Instant::now();
    let id = tokio::time::timeout(
        RPC_TIMEOUT,
        client.create(CreateContainerRequest { spec: Some(spec) }),
    )
    .await
    .context("Create timed out")?
    .context("Create failed")?
    .into_inner()
    .id;
    let create = start.elapsed();
    ids.push(id.clone());
    tokio::time::timeout(RPC_TIMEOUT, client.start(ContainerRef { id: id.clone() }))
        .await
        .context("Start timed out")?
        .with_context(|| format!("Start {id} failed"))?;
    Ok(StartTiming {
        create,
        total: start.elapsed(),
    })
}

/// gRPC Remove (force) of every id in `ids`; `ids` is emptied. Fails on the first error after
/// trying them all.
async fn remove_all(
    client: &mut ContainersClient<Channel>,
    ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut first = None;
    for id in ids.drain(..) {
        let r = tokio::time::timeout(
            RPC_TIMEOUT,
            client.remove(RemoveContainerRequest {
                id: id.clone(),
                force: true,
            }),
        )
        .await;
        let err = match r {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => anyhow!("Remove {id}: {e}"),
            Err(_) => anyhow!("Remove {id} timed out"),
        };
        first.get_or_insert(err);
    }
    first.map_or(Ok(()), Err)
}

/// The `lowerdir=` of the overlay mounted at `target`, from /proc/self/mountinfo.
pub fn overlay_lowerdir(mountinfo: &str, target: &Path) -> Option<String> {
    let target = target.to_str()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        if unescape(mount_point) != target {
            return None;
        }
        let mut r = right.split(' ');
        if r.next()? != "overlay" {
            return None;
        }
        let options = r.nth(1)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(unescape)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Pids of processes whose command line has an argument containing `needle` and, if given,
/// one containing `also`.
fn pids_with_args(needle: &str, also: Option<&str>) -> Vec<u32> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a.contains(needle))
                && also.is_none_or(|x| args.iter().any(|a| a.contains(x)))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The engine's cgroup parent name for a state dir (the agent's own derivation).
pub fn engine_cgroup_name(state: &Path) -> String {
    rswarm_runtime::cgroup::parent_for_state_dir(state)
}

/// Removes the (empty) cgroup `name` from every hierarchy (v1 controllers and v2).
fn rmdir_cgroup(name: &str) {
    for cg in rswarm_runtime::cgroup::hierarchy_dirs(name) {
        // Children first (runc removes its own, this is a fallback).
        if let Ok(rd) = fs::read_dir(&cg) {
            for e in rd.filter_map(Result::ok) {
                if e.path().is_dir() {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&cg);
    }
}

/// True when the cgroup `name` exists in any hierarchy.
fn cgroup_exists(name: &str) -> bool {
    !rswarm_runtime::cgroup::hierarchy_dirs(name).is_empty()
}

/// Deletes every container of a runc root (`delete -f` SIGKILLs them first).
fn runc_delete_all(runc: &Path, root: &Path) {
    if !root.is_dir() {
        return;
    }
    let Ok(out) = StdCommand::new(runc)
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = StdCommand::new(runc)
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The bench cluster plus the brute-force cleanup of everything it and the reference runs may
/// have left: dropping it kills the daemons, deletes every container of every runc root under the
/// temp dir, kills the shims, unmounts everything under the temp dir and removes the cgroups;
/// then the [`Cluster`] removes the temp dir.
struct Env {
    cluster: Cluster,
    runc: PathBuf,
    /// runc roots of the reference runs.
    runc_roots: Vec<PathBuf>,
    /// Cgroup names of the reference runs.
    cgroups: Vec<String>,
}

impl Env {
    fn scratch(&self) -> PathBuf {
        self.cluster.dir().join("bench")
    }

    fn state_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![Node::manager(&self.cluster).state];
        v.extend(
            (0..self.cluster.workers.len())
                .filter_map(|i| Node::worker(&self.cluster, i))
                .map(|n| n.state),
        );
        v
    }

    /// What is left behind right now: containers, mounts and processes (for the final check).
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let mut roots: Vec<PathBuf> = self.state_dirs().iter().map(|s| s.join("runc")).collect();
        roots.extend(self.runc_roots.iter().cloned());
        for r in roots.iter().filter(|r| r.is_dir()) {
            if let Ok(out) = StdCommand::new(&self.runc)
                .arg("--root")
                .arg(r)
                .args(["list", "-q"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
            {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    left.push(format!("container {id} in {}", r.display()));
                }
            }
        }
        for m in mounts_under(self.cluster.dir()) {
            left.push(format!("mount {}", m.display()));
        }
        let dir = self.cluster.dir().to_string_lossy().into_owned();
        let daemons: Vec<u32> = std::iter::once(self.cluster.manager.pid())
            .chain(self.cluster.workers.iter().map(|w| w.daemon.pid()))
            .collect();
        for pid in pids_with_args(&dir, None) {
            if !daemons.contains(&pid) {
                left.push(format!("process {pid}"));
            }
        }
        left
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for w in &mut self.cluster.workers {
            w.daemon.kill();
        }
        self.cluster.manager.kill();
        let dir = self.cluster.dir().to_path_buf();
        let states = self.state_dirs();
        let mut roots: Vec<PathBuf> = states.iter().map(|s| s.join("runc")).collect();
        roots.extend(self.runc_roots.iter().cloned());
        for r in &roots {
            runc_delete_all(&self.runc, r);
        }
        // Shims, registries and anything else started with a path under the temp dir.
        for pid in pids_with_args(&dir.to_string_lossy(), None) {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        for m in mounts_under(&dir) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        for s in &states {
            rmdir_cgroup(&engine_cgroup_name(s));
        }
        for c in &self.cgroups {
            rmdir_cgroup(c);
        }
    }
}

/// A process the bench started (the registry); dropping it SIGKILLs and reaps it.
struct Proc {
    child: std::process::Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A local `docker-registry` with its storage in `dir`.
struct Registry {
    addr: String,
    proc: Proc,
}

impl Registry {
    async fn start(program: &Path, dir: &Path) -> anyhow::Result<Registry> {
        let storage = dir.join("registry-storage");
        fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let config_path = dir.join("registry.yml");
        fs::write(&config_path, config)?;
        let log = dir.join("registry.log");
        let log_file = fs::File::create(&log)?;
        let child = StdCommand::new(program)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut reg = Registry {
            addr,
            proc: Proc { child },
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reg.answers() {
                return Ok(reg);
            }
            if let Some(status) = reg.proc.child.try_wait()? {
                bail!(
                    "docker-registry exited ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                bail!("docker-registry on {} does not answer", reg.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        let attempt = || -> std::io::Result<bool> {
            let mut s = TcpStream::connect(&self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).contains(" 200"))
        };
        attempt().unwrap_or(false)
    }
}

/// One raw `runc run -d` of the reference: dropping it deletes the container and unmounts its
/// rootfs.
struct RuncRun<'a> {
    runc: &'a Path,
    root: &'a Path,
    id: String,
    bundle: PathBuf,
}

impl Drop for RuncRun<'_> {
    fn drop(&mut self) {
        let _ = StdCommand::new(self.runc)
            .arg("--root")
            .arg(self.root)
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let rootfs = self.bundle.join("rootfs");
        if mounts_under(&rootfs).contains(&rootfs) {
            let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.bundle);
    }
}

/// The reference of part 1: the OCI config of an rswarm container, run by runc directly on a
/// fresh overlay of the same image layers.
struct RuncReference {
    runc: PathBuf,
    root: PathBuf,
    dir: PathBuf,
    config: Value,
    lowerdir: String,
    cgroup: String,
}

impl RuncReference {
    /// From the running rswarm container `id` of `node`.
    fn prepare(runc: &Path, node: &Node, id: &str, dir: &Path) -> anyhow::Result<RuncReference> {
        let bundle = node.state.join("containers").join(id);
        let config_path = bundle.join("config.json");
        let mut config: Value = serde_json::from_slice(
            &fs::read(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?,
        )
        .with_context(|| format!("{} is not JSON", config_path.display()))?;
        let rootfs = bundle.join("rootfs");
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        let lowerdir = overlay_lowerdir(&info, &rootfs)
            .with_context(|| format!("no overlay mount at {}", rootfs.display()))?;
        // Files the engine bind-mounts from the container dir (hosts, resolv.conf, …): copies.
        let files = dir.join("files");
        fs::create_dir_all(&files)?;
        if let Some(mounts) = config.get_mut("mounts").and_then(Value::as_array_mut) {
            for m in mounts {
                let Some(src) = m.get("source").and_then(Value::as_str).map(PathBuf::from) else {
                    continue;
                };
                let Ok(rel) = src.strip_prefix(&bundle) else {
                    continue;
                };
                let copy = files.join(rel.to_string_lossy().replace('/', "_"));
                fs::copy(&src, &copy).with_context(|| format!("copy {}", src.display()))?;
                m["source"] = Value::String(copy.to_string_lossy().into_owned());
            }
        }
        let root = dir.join("runc-root");
        fs::create_dir_all(&root)?;
        Ok(RuncReference {
            runc: runc.to_path_buf(),
            root,
            dir: dir.to_path_buf(),
            config,
            lowerdir,
            cgroup: format!("rswarm-bench-{}", std::process::id()),
        })
    }

    /// Sample `n`: mounts a fresh overlay and writes the config (untimed), then times
    /// `runc run -d` (with `split`: `runc create` + `runc start`, as the engine does for the bridge network) until it
    /// returns with the container running; the container is deleted afterwards (untimed).
    async fn sample(&self, n: usize, split: bool) -> anyhow::Result<Duration> {
        let bundle = self.dir.join(format!("run-{n}"));
        let run = RuncRun {
            runc: &self.runc,
            root: &self.root,
            id: format!("{}-{n}", self.cgroup),
            bundle: bundle.clone(),
        };
        let rootfs = bundle.join("rootfs");
        for d in ["rootfs", "upper", "work"] {
            fs::create_dir_all(bundle.join(d))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir,
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .with_context(|| format!("cannot mount an overlay at {}", rootfs.display()))?;
        let mut config = self.config.clone();
        config["root"] = serde_json::json!({
            "path": rootfs.to_string_lossy(),
            "readonly": false,
        });
        config["linux"]["cgroupsPath"] = Value::String(format!("/{}/{n}", self.cgroup));
        fs::write(bundle.join("config.json"), serde_json::to_vec(&config)?)?;

        let log = bundle.join("runc.log");
        let pid_file = bundle.join("init.pid");
        let runc = |args: Vec<OsString>| {
            let mut cmd = Command::new(&self.runc);
            cmd.arg("--root")
                .arg(&self.root)
                .arg("--log")
                .arg(&log)
                .args(["--log-format", "json"])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        let steps: Vec<Vec<OsString>> = if split {
            vec![
                vec![
                    "create".into(),
                    "--bundle".into(),
                    bundle.clone().into_os_string(),
                    "--pid-file".into(),
                    pid_file.into_os_string(),
                    run.id.clone().into(),
                ],
                vec!["start".into(), run.id.clone().into()],
            ]
        } else {
            vec![vec![
                "run".into(),
                "-d".into(),
                "--bundle".into(),
                bundle.clone().into_os_string(),
                "--pid-file".into(),
                pid_file.into_os_string(),
                run.id.clone().into(),
            ]]
        };
        let start = Instant::now();
        for step in steps {
            let what = step[0].to_string_lossy().into_owned();
            let status = tokio::time::timeout(TOOL_TIMEOUT, runc(step).status())
                .await
                .with_context(|| format!("runc {what} timed out"))?
                .context("cannot run runc")?;
            if !status.success() {
                bail!(
                    "`runc {what}` failed ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
        }
        let elapsed = start.elapsed();
        drop(run);
        Ok(elapsed)
    }
}

/// One row of the table.
type Row = [String; 8];

fn table() -> Table {
    Table::new([
        "#",
        "Measurement",
        "Setting",
        "n",
        "rswarm",
        "Reference",
        "Ratio rswarm / ref",
        "Goal",
    ])
    .align(3, Align::Right)
}

fn goal_text(value: f64, goal: f64, unit: &str) -> String {
    let met = if value <= goal { "met" } else { "MISSED" };
    format!("≤ {goal}{unit}: {met}")
}

struct Run<'a, L: Write> {
    plan: EnginePlan,
    rswarm: PathBuf,
    tools: Tools,
    env: Env,
    rows: Vec<Row>,
    notes: Vec<String>,
    failures: Vec<String>,
    log: &'a mut L,
}

/// Paths of the external tools.
#[derive(Clone, Debug, Default)]
struct Tools {
    runc: PathBuf,
    registry: PathBuf,
    skopeo: PathBuf,
    umoci: PathBuf,
}

impl<L: Write> Run<'_, L> {
    fn row(&mut self, cells: [&str; 8]) {
        self.rows.push(cells.map(str::to_string));
    }

    fn failure(&mut self, id: &str, what: &str, err: &anyhow::Error) {
        let msg = format!("{err:#}");
        let first = msg.lines().next().unwrap_or_default().to_string();
        self.row([
            id,
            what,
            DASH,
            DASH,
            &format!("FAILED: {first}"),
            DASH,
            DASH,
            DASH,
        ]);
        self.failures.push(format!("{what}: {msg}"));
    }

    /// Loads the busybox image onto `node` with `rswarm image load`.
    async fn load_busybox(&mut self, node: &Node) -> anyhow::Result<()> {
        let dir = self.env.scratch();
        fs::create_dir_all(&dir)?;
        let tar = dir.join("busybox.tar");
        let tar = if tar.is_file() {
            tar
        } else {
            busybox_archive(&dir)?
        };
        let tar = tar.to_string_lossy().into_owned();
        rswarm(&self.rswarm, node, &["image", "load", "-q", "-i", &tar])
            .await
            .with_context(|| format!("load {BUSYBOX_IMAGE} onto the {}", node.name))?;
        Ok(())
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let node = Node::manager(&self.env.cluster);
        self.load_busybox(&node).await?;
        let mut client = node.containers().await?;
        let mut ids = Vec::new();
        let result = self.start_samples(&node, &mut client, &mut ids).await;
        let removed = remove_all(&mut client, &mut ids).await;
        result?;
        removed.context("remove the containers of the start part")
    }

    async fn start_samples(
        &mut self,
        node: &Node,
        client: &mut ContainersClient<Channel>,
        ids: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let sleep = ["sleep", "1000"];
        say!(self.log, "start: warm-up container (the runc template) ...");
        let warm = create_start(client, &sleep, ids)
            .await
            .context("warm-up container")?;
        say!(self.log, "start: warm-up took {}", fmt_duration(warm.total));
        let template = ids.last().cloned().context("no container")?;
        let ref_dir = self.env.scratch().join("runc-ref");
        fs::create_dir_all(&ref_dir)?;
        let reference = RuncReference::prepare(&self.tools.runc, node, &template, &ref_dir)?;
        self.env.runc_roots.push(reference.root.clone());
        self.env.cgroups.push(reference.cgroup.clone());
        // A warm-up of runc too (page cache, binary).
        reference.sample(0, false).await.context("runc warm-up")?;

        let mut grpc = Vec::new();
        let mut creates = Vec::new();
        let mut runc = Vec::new();
        let mut runc_split = Vec::new();
        for i in 1..=self.plan.starts {
            // Removed at once (untimed); a container whose removal failed is left to the sweep.
            let gap = self.plan.sample_gap;
            let mut one = Vec::new();
            tokio::time::sleep(gap).await;
            let d = create_start(client, &sleep, &mut one).await;
            let removed = remove_all(client, &mut one).await;
            let d = d?;
            removed?;
            tokio::time::sleep(gap).await;
            let r = reference.sample(2 * i - 1, false).await?;
            tokio::time::sleep(gap).await;
            let r2 = reference.sample(2 * i, true).await?;
            say!(
                self.log,
                "start {i}/{}: rswarm {} (Create {}) · runc run {} · runc create + start {}",
                self.plan.starts,
                fmt_duration(d.total),
                fmt_duration(d.create),
                fmt_duration(r),
                fmt_duration(r2)
            );
            grpc.push(d.total);
            creates.push(d.create);
            runc.push(r);
            runc_split.push(r2);
        }

        let mut cli = Vec::new();
        for i in 1..=self.plan.cli_starts {
            tokio::time::sleep(self.plan.sample_gap).await;
            let (d, out) = rswarm(
                &self.rswarm,
                node,
                &[
                    "container",
                    "run",
                    "-d",
                    "--network",
                    "none",
                    BUSYBOX_IMAGE,
                    "sleep",
                    "1000",
                ],
            )
            .await?;
            let id = out
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string();
            if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("`rswarm container run -d` printed {out:?}, not a container id");
            }
            let mut one = vec![id];
            remove_all(client, &mut one).await?;
            say!(
                self.log,
                "cli start {i}/{}: {}",
                self.plan.cli_starts,
                fmt_duration(d)
            );
            cli.push(d);
        }

        let r = ratio(&grpc, &runc).unwrap_or(f64::NAN);
        self.row([
            "1a",
            "Container start, image present (gRPC Create + Start)",
            "`sleep 1000`, --network none, sequential; ref: `runc run -d` of the same config.json on a fresh overlay of the same layers",
            &grpc.len().to_string(),
            &fmt_p50_p90(&grpc),
            &fmt_p50_p90(&runc),
            &format!("{r:.2}× (p50)"),
            &goal_text((r * 100.0).round() / 100.0, START_GOAL, "×"),
        ]);
        let rs = ratio(&grpc, &runc_split).unwrap_or(f64::NAN);
        self.row([
            "1b",
            "Container start, as 1a, against `runc create` + `runc start`",
            "ref: two runc processes, as the engine runs them for the bridge network (create, veth, start)",
            &grpc.len().to_string(),
            &fmt_p50_p90(&grpc),
            &fmt_p50_p90(&runc_split),
            &format!("{rs:.2}× (p50)"),
            DASH,
        ]);
        let rc = ratio(&cli, &runc).unwrap_or(f64::NAN);
        self.row([
            "1c",
            "Container start, image present (CLI `rswarm container run -d`)",
            "wall time of the CLI process (spawn, connect, Create, Start, print id); ref: `runc run -d` as 1a",
            &cli.len().to_string(),
            &fmt_p50_p90(&cli),
            &fmt_p50_p90(&runc),
            &format!("{rc:.2}× (p50)"),
            DASH,
        ]);
        self.notes.push(format!(
            "1: gRPC Create alone took p50 {} of rswarm's time; Start (the rest: overlay mount, spec, the shim and its `runc run --detach`) the remainder.",
            p50_p90(&creates).map_or_else(|| DASH.to_string(), |(p, _)| fmt_duration(p))
        ));
        self.notes.push(
            "1: both sides run tini + `sleep 1000` from the same OCI config (new mount, pid, ipc, uts, net and cgroup namespaces); \
             rswarm's time includes its overlay mount, the spec, the shim and its `runc run --detach` (with --network none nothing happens between create and start); \
             the runc reference's overlay mount and config are made before its clock starts. Samples alternate rswarm/runc, each after the same idle gap (--sample-gap-ms); \
             containers are removed between samples (untimed)."
                .to_string(),
        );
        Ok(())
    }

    async fn pull(&mut self) -> anyhow::Result<()> {
        let node = Node::manager(&self.env.cluster);
        let dir = self.env.scratch().join("pull");
        fs::create_dir_all(&dir)?;
        say!(self.log, "pull: starting docker-registry ...");
        let registry = Registry::start(&self.tools.registry, &dir).await?;
        say!(
            self.log,
            "pull: building a {}-layer image ...",
            DATA_LAYERS + 1
        );
        let layout = dir.join("layout-multi");
        let layout2 = layout.clone();
        let info = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let layers = multi_layers()?;
            write_oci_layout(&layout2, &layers, &ImageSpec::default())
                .context("write the multi-layer OCI layout")
        })
        .await
        .context("the image builder panicked")??;
        let blob_bytes: u64 = info
            .layer_digests
            .iter()
            .filter_map(|d| {
                fs::metadata(
                    layout
                        .join("blobs/sha256")
                        .join(d.trim_start_matches("sha256:")),
                )
                .ok()
            })
            .map(|m| m.len())
            .sum();
        let reference = format!("{}/{MULTI_REPO}", registry.addr);
        tool(
            &self.tools.skopeo,
            &os(&[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", layout.display()),
                &format!("docker://{reference}"),
            ]),
        )
        .await
        .context("push the image with skopeo")?;

        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut left_blobs = 0;
        for i in 1..=self.plan.pulls {
            let (d, _) = rswarm(&self.rswarm, &node, &["image", "pull", &reference])
                .await
                .context("rswarm image pull")?;
            rswarm(&self.rswarm, &node, &["image", "rm", &reference]).await?;
            rswarm(&self.rswarm, &node, &["image", "prune", "-a", "-f"]).await?;
            left_blobs = fs::read_dir(node.state.join("images/blobs/sha256"))
                .map(|rd| rd.count())
                .unwrap_or(0);

            let fresh = dir.join(format!("ref-{i}"));
            fs::create_dir_all(&fresh)?;
            let oci = format!("{}:latest", fresh.join("oci").display());
            let start = Instant::now();
            let copied = tool(
                &self.tools.skopeo,
                &os(&[
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{reference}"),
                    &format!("oci:{oci}"),
                ]),
            )
            .await
            .context("skopeo copy (pull)");
            let unpacked = match copied {
                Ok(_) => tool(
                    &self.tools.umoci,
                    &[
                        OsString::from("unpack"),
                        OsString::from("--image"),
                        OsString::from(&oci),
                        fresh.join("bundle").into_os_string(),
                    ],
                )
                .await
                .context("umoci unpack"),
                Err(e) => Err(e),
            };
            let r = start.elapsed();
            let _ = fs::remove_dir_all(&fresh);
            unpacked?;
            say!(
                self.log,
                "pull {i}/{}: rswarm {} · skopeo + umoci {}",
                self.plan.pulls,
                fmt_duration(d),
                fmt_duration(r)
            );
            ours.push(d);
            theirs.push(r);
        }
        drop(registry);
        let r = ratio(&ours, &theirs).unwrap_or(f64::NAN);
        self.row([
            "2",
            "Pull + unpack, cold (`rswarm image pull`)",
            &format!(
                "{} layers (busybox + {DATA_LAYERS} × {} MiB random files), {} compressed, local docker-registry over http; ref: `skopeo copy` + `umoci unpack`",
                DATA_LAYERS + 1,
                LAYER_BYTES >> 20,
                fmt_kib(blob_bytes / 1024)
            ),
            &ours.len().to_string(),
            &fmt_p50_p90(&ours),
            &fmt_p50_p90(&theirs),
            &format!("{r:.2}× (p50)"),
            DASH,
        ]);
        self.notes.push(format!(
            "2: rswarm's time is the CLI's wall time; after each pull `image rm` + `image prune -a -f` empty the store \
             ({left_blobs} blob files were left after the last prune). The reference gets fresh directories each time."
        ));
        Ok(())
    }

    async fn rss(&mut self) -> anyhow::Result<()> {
        say!(self.log, "rss: joining a worker ...");
        let node = match self.env.cluster.join(1).await {
            Ok(d) => {
                say!(self.log, "rss: worker ready after {}", fmt_duration(d));
                Node::worker(&self.env.cluster, 0).context("the worker vanished")?
            }
            Err(e) => {
                say!(self.log, "rss: join failed ({e:#}); using the manager");
                self.notes.push(format!(
                    "3: joining a worker failed ({e:#}); measured on the manager"
                ));
                Node::manager(&self.env.cluster)
            }
        };
        self.load_busybox(&node).await?;
        let mut client = node.containers().await?;
        tokio::time::sleep(self.plan.settle).await;
        let idle = Mem::of(node.pid).context("the agent's idle memory")?;
        let mut ids = Vec::new();
        let result = self.rss_busy(&node, &mut client, &mut ids, idle).await;
        let removed = remove_all(&mut client, &mut ids).await;
        result?;
        removed.context("remove the containers of the memory part")
    }

    async fn rss_busy(
        &mut self,
        node: &Node,
        client: &mut ContainersClient<Channel>,
        ids: &mut Vec<String>,
        idle: Mem,
    ) -> anyhow::Result<()> {
        let n = self.plan.containers;
        say!(
            self.log,
            "rss: starting {n} containers on the {} ...",
            node.name
        );
        for _ in 0..n {
            create_start(client, &["sleep", "100000"], ids).await?;
        }
        tokio::time::sleep(self.plan.settle).await;
        let busy = Mem::of(node.pid).context("the agent's memory")?;
        let state = node.state.to_string_lossy().into_owned();
        let shims = pids_with_args("rswarm-shim", Some(&state));
        let mut sum = Mem::default();
        for pid in &shims {
            sum = sum.add(Mem::of(*pid).with_context(|| format!("memory of shim {pid}"))?);
        }
        say!(
            self.log,
            "rss: agent idle {} · with {n}: {} · {} shims {}",
            idle.describe(),
            busy.describe(),
            shims.len(),
            sum.describe()
        );
        let swarm_mb = SWARM_DOCKERD_MB + SWARM_CONTAINERD_MB;
        let swarm = format!(
            "dockerd {SWARM_DOCKERD_MB:.0} MB + containerd {SWARM_CONTAINERD_MB:.0} MB = {swarm_mb:.0} MB"
        );
        let who = node.name.clone();
        let busy_mb = busy.vm_rss as f64 / 1024.0;
        self.row([
            "3a",
            &format!("Agent memory, idle: {who}"),
            "image loaded, no containers",
            "1",
            &idle.describe(),
            &swarm,
            &compare_size(idle.vm_rss as f64 / 1024.0, swarm_mb),
            DASH,
        ]);
        self.row([
            "3b",
            &format!("Agent memory, {n} containers: {who}"),
            &format!(
                "{n} × `sleep 100000`, --network none, read after {:?}",
                self.plan.settle
            ),
            "1",
            &busy.describe(),
            &swarm,
            &compare_size(busy_mb, swarm_mb),
            &goal_text(busy_mb, AGENT_GOAL_MB, " MB VmRSS"),
        ]);
        self.row([
            "3c",
            &format!("Shims, {n} containers: sum"),
            &format!("{} rswarm-shim processes of this node", shims.len()),
            &shims.len().to_string(),
            &sum.describe(),
            DASH,
            DASH,
            DASH,
        ]);
        self.row([
            "3d",
            "Shim, per container (mean)",
            "as 3c",
            &shims.len().to_string(),
            &sum.div(shims.len() as u64).describe(),
            DASH,
            DASH,
            DASH,
        ]);
        let total = busy.pss + sum.pss;
        self.notes.push(format!(
            "3: VmRSS counts shared pages in full; Pss shares them among the processes mapping them; Private is what the process alone holds. \
             Agent + {} shims together: Pss {}. Docker's figure is a constant (REFERENCE.md §2), not measured by this run.",
            shims.len(),
            fmt_kib(total)
        ));
        if shims.len() != n {
            self.notes.push(format!(
                "3: found {} rswarm-shim processes for {n} containers",
                shims.len()
            ));
        }
        Ok(())
    }

    async fn all(&mut self) {
        if self.plan.runs(EnginePart::Start) {
            if let Err(e) = self.start().await {
                say!(self.log, "start: FAILED: {e:#}");
                self.failure("1", "Container start", &e);
            }
        }
        if self.plan.runs(EnginePart::Pull) {
            if let Err(e) = self.pull().await {
                say!(self.log, "pull: FAILED: {e:#}");
                self.failure("2", "Pull + unpack", &e);
            }
        }
        if self.plan.runs(EnginePart::Rss) {
            if let Err(e) = self.rss().await {
                say!(self.log, "rss: FAILED: {e:#}");
                self.failure("3", "Agent memory", &e);
            }
        }
    }
}

/// The directory of the running executable.
fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))
}

/// Checks root and the tools; returns their paths.
fn preflight(args: &EngineArgs, plan: &EnginePlan, bin_dir: &Path) -> anyhow::Result<Tools> {
    if !nix::unistd::geteuid().is_root() {
        bail!("rswarm-bench-engine must run as root: it mounts overlays and runs containers with runc (try sudo)");
    }
    let mut missing = Vec::new();
    for (tool, package) in plan.tools(&args.runc) {
        if find_tool(&tool).is_none() {
            missing.push(format!("{} (Debian package `{package}`)", tool.display()));
        }
    }
    for bin in ["rswarm", "rswarm-shim"] {
        if !bin_dir.join(bin).is_file() {
            missing.push(format!(
                "{} (build it: cargo build --release -p rswarm; or pass --bin-dir)",
                bin_dir.join(bin).display()
            ));
        }
    }
    if !missing.is_empty() {
        bail!("missing: {}", missing.join(", "));
    }
    let path = |p: &str| find_tool(Path::new(p)).unwrap_or_default();
    Ok(Tools {
        runc: find_tool(&args.runc).unwrap_or_default(),
        registry: path("docker-registry"),
        skopeo: path("skopeo"),
        umoci: path("umoci"),
    })
}

/// Resolves on Ctrl-C; never when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn default_tmp_parent() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    if tempfile::tempdir_in(var_tmp).is_ok() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Runs the engine benchmark: progress to `log`, the table to `out` (also, partial, after a
/// failure or Ctrl-C). Fails if any part failed or anything was left behind.
pub async fn run(
    args: EngineArgs,
    out: &mut impl Write,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    let mut plan = EnginePlan::new(args.quick, args.only);
    plan.sample_gap = Duration::from_millis(args.sample_gap_ms);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => exe_dir()?,
    };
    let tools = preflight(&args, &plan, &bin_dir)?;
    let tmp = args.tmp_dir.clone().unwrap_or_else(default_tmp_parent);
    let started = Instant::now();

    say!(log, "starting the manager (rswarm init) ...");
    let cluster = Cluster::start(&bin_dir, &tmp, Duration::from_millis(10)).await?;
    let env = Env {
        cluster,
        runc: tools.runc.clone(),
        runc_roots: Vec::new(),
        cgroups: Vec::new(),
    };
    let mut run = Run {
        plan: plan.clone(),
        rswarm: bin_dir.join("rswarm"),
        tools,
        env,
        rows: Vec::new(),
        notes: Vec::new(),
        failures: Vec::new(),
        log,
    };
    let outcome = tokio::select! {
        () = run.all() => Ok(()),
        () = interrupted() => Err(anyhow!("interrupted (Ctrl-C)")),
    };
    let leftovers = if outcome.is_ok() {
        run.env.leftovers()
    } else {
        Vec::new()
    };

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    writeln!(
        out,
        "## rswarm-bench-engine ({} run{})\n",
        if args.quick { "quick" } else { "full" },
        match args.only {
            Some(p) => format!(", only {}", format!("{p:?}").to_lowercase()),
            None => String::new(),
        }
    )?;
    writeln!(
        out,
        "- machine: {cpus} CPUs, load average at start of output: {loadavg}"
    )?;
    writeln!(
        out,
        "- binaries: {}; runc: {}; temp dir: {}\n",
        bin_dir.display(),
        run.tools.runc.display(),
        run.env.cluster.dir().display()
    )?;
    let mut t = table();
    for r in &run.rows {
        t.row(r.clone());
    }
    t.render(out)?;
    writeln!(out)?;
    for n in &run.notes {
        writeln!(out, "- {n}")?;
    }
    if let Err(e) = &outcome {
        writeln!(out, "- the run was cut short ({e}): the table is partial")?;
    }
    if !leftovers.is_empty() {
        writeln!(
            out,
            "- LEFT BEHIND before the final sweep: {}",
            leftovers.join("; ")
        )?;
    }
    writeln!(out, "- whole run: {:.0} s", started.elapsed().as_secs_f64())?;
    out.flush()?;
    let failures = std::mem::take(&mut run.failures);
    let dir = run.env.cluster.dir().to_path_buf();
    let cgroup_names: Vec<String> = run
        .env
        .state_dirs()
        .iter()
        .map(|s| engine_cgroup_name(s))
        .chain(run.env.cgroups.iter().cloned())
        .collect();
    drop(run);
    let cgroups: Vec<String> = cgroup_names
        .into_iter()
        .filter(|n| cgroup_exists(n))
        .collect();
    // After the sweep and the temp dir's removal: nothing may remain.
    let mounts = mounts_under(&dir);
    let procs = pids_with_args(&dir.to_string_lossy(), None);
    outcome?;
    if !failures.is_empty() {
        bail!("some measurements failed:\n{}", failures.join("\n"));
    }
    if !leftovers.is_empty() || !mounts.is_empty() || !procs.is_empty() || !cgroups.is_empty() {
        bail!(
            "left behind: {} (after cleanup: mounts {mounts:?}, processes {procs:?}, cgroups {cgroups:?})",
            leftovers.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_sizes() {
        let full = EnginePlan::new(false, None);
        assert_eq!((full.starts, full.pulls, full.containers), (20, 5, 20));
        let quick = EnginePlan::new(true, Some(EnginePart::Start));
        assert_eq!((quick.starts, quick.pulls), (5, 2));
        assert!(quick.runs(EnginePart::Start) && !quick.runs(EnginePart::Pull));
        let tools: Vec<_> = quick
            .tools(Path::new("runc"))
            .into_iter()
            .map(|t| t.1)
            .collect();
        assert!(!tools.contains(&"skopeo"));
        assert!(full.tools(Path::new("runc")).iter().any(|t| t.1 == "umoci"));
    }

    #[test]
    fn parses_proc_memory() {
        let status = "Name:\trswarm\nVmRSS:\t   12345 kB\nThreads: 4\n";
        let rollup = "55d0-7ff [rollup]\nRss:               12000 kB\nPss:                9000 kB\n\
                      Pss_Anon: 100 kB\nShared_Clean:       2000 kB\nPrivate_Clean:       500 kB\nPrivate_Dirty:      7000 kB\n";
        let m = Mem::parse(status, rollup).unwrap();
        assert_eq!(
            m,
            Mem {
                vm_rss: 12345,
                rss: 12000,
                pss: 9000,
                private: 7500
            }
        );
        assert_eq!(m.add(m).div(2), m);
        assert!(Mem::parse("VmRSS: 1 kB", "Rss: 1 kB").is_none());
    }

    #[test]
    fn finds_the_overlay_lowerdir() {
        let info = "36 35 98:0 / /mnt rw - ext4 /dev/vda rw\n\
                    99 36 0:55 / /var/tmp/x/c\\040d/rootfs rw,relatime - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u,workdir=/w\n";
        assert_eq!(
            overlay_lowerdir(info, Path::new("/var/tmp/x/c d/rootfs")).as_deref(),
            Some("/l/2:/l/1")
        );
        assert_eq!(overlay_lowerdir(info, Path::new("/mnt")), None);
        assert_eq!(overlay_lowerdir(info, Path::new("/nope")), None);
    }

    #[test]
    fn random_data_is_deterministic_and_incompressible() {
        let a = pseudo_random(7, 1 << 16);
        assert_eq!(a, pseudo_random(7, 1 << 16));
        assert_ne!(a, pseudo_random(8, 1 << 16));
        assert_eq!(pseudo_random(1, 13).len(), 13);
        // Every byte value, none much more often than the mean (256 per value here).
        let mut counts = [0usize; 256];
        for b in &a {
            counts[usize::from(*b)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 128 && c < 384), "{counts:?}");
    }

    #[test]
    fn ratios_and_percentiles() {
        let ms = Duration::from_millis;
        let a: Vec<_> = (1..=10).map(ms).collect();
        assert_eq!(p50_p90(&a), Some((ms(5), ms(9))));
        assert_eq!(p50_p90(&[]), None);
        let r = ratio(&[ms(12)], &[ms(10)]).unwrap();
        assert!((r - 1.2).abs() < 1e-9);
        assert_eq!(ratio(&[ms(1)], &[Duration::ZERO]), None);
        assert_eq!(goal_text(1.2, 1.2, "×"), "≤ 1.2×: met");
        assert_eq!(goal_text(1.3, 1.2, "×"), "≤ 1.2×: MISSED");
    }

    #[test]
    fn cgroup_name_matches_the_engine() {
        // FNV-1a 32-bit fold of a path that does not exist (used as given).
        let n = engine_cgroup_name(Path::new("/nonexistent/state"));
        assert!(
            n.starts_with("rswarm-") && n.len() == "rswarm-".len() + 8,
            "{n}"
        );
    }

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
