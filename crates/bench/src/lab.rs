//! The test lab both Docker-Swarm comparisons run on (`rswarm-bench-swarm`,
//! `rswarm-bench-overlay`): network namespaces as hosts, daemons started in them, a registry, and
//! one system's cluster per run — all of it removed when the run ends, fails or is interrupted,
//! but for the run's state directories, which go with the lab (see `Deployment`'s drop).
//!
//! Topology: a "switch" network namespace with a bridge, and N host namespaces (`eth0` on the
//! bridge, 198.19.42.K/24, no route anywhere else); daemons run with `nsenter --net=…` (never
//! `ip netns exec`, which remounts /sys and loses the cgroup mounts). A `docker-registry` in the
//! switch namespace (198.19.42.254:5000) serves the busybox image to rswarm; every dockerd gets
//! the same rootfs through `docker import`.
//!
//! Must run as root. Everything created (namespaces, processes, containers, cgroups, mounts,
//! directories, the shim sockets containerd leaves in /run/containerd/s) is removed by Drop guards;
//! nothing is routed or NATed to the outside and the root namespace's networking is not touched.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::control::v1::ListNodesRequest;
use rswarm_image::testutil::{busybox_layer, layer_tar, write_oci_layout, ImageSpec};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;
use tonic::transport::Channel;

pub(crate) const SUBNET: &str = "198.19.42";
pub(crate) const REGISTRY_ADDR: &str = "198.19.42.254:5000";
pub(crate) const RSWARM_IMAGE: &str = "198.19.42.254:5000/bench/bb:latest";
pub(crate) const SWARM_IMAGE: &str = "bb:latest";
const APPLETS: &[&str] = &["sh", "sleep", "true", "cat", "ls", "echo"];
/// The namespace prefixes of every lab (`<prefix><pid>-…`): a killed run's are removed by the next.
const NETNS_PREFIXES: &[&str] = &["rsbsw-", "rsbov-"];
/// One CLI command, one daemon's start-up.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// One API call while polling.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes a progress line (best effort).
pub(crate) fn say(log: &mut impl Write, msg: impl AsRef<str>) {
    let _ = writeln!(log, "{}", msg.as_ref());
    let _ = log.flush();
}

// ------------------------------------------------------------------------------------------------
// Small process and file helpers
// ------------------------------------------------------------------------------------------------

pub(crate) fn find_in_path(name: &Path) -> Option<PathBuf> {
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

pub(crate) fn sh_quiet(program: &str, args: &[&str]) -> bool {
    StdCommand::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` to completion within [`CMD_TIMEOUT`]; its stdout, or an error quoting stderr.
pub(crate) async fn run_cmd(mut cmd: Command, what: &str) -> anyhow::Result<String> {
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

pub(crate) fn netns_path(name: &str) -> PathBuf {
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
pub(crate) fn unmount_below(dir: &Path) {
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
pub(crate) struct Proc {
    name: String,
    child: Child,
    stderr: PathBuf,
    pub(crate) stdout: PathBuf,
    reaped: bool,
}

impl Proc {
    /// `nsenter --net=/run/netns/NS -- PROGRAM ARGS` (nsenter execs: the child is the program),
    /// in its own process group, output to `dir/NAME.{stdout,stderr}`.
    pub(crate) fn spawn(
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

    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
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
    pub(crate) fn kill9(&mut self) {
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

pub(crate) struct Host {
    /// `h1`, `h2`, …: also the rswarm node's hostname.
    pub(crate) name: String,
    pub(crate) netns: String,
    /// Its address on the lab bridge (198.19.42.K).
    pub(crate) ip: String,
    pub(crate) dir: PathBuf,
}

/// What the Docker side leaves outside our directories, as found before the run.
pub(crate) struct Leftovers {
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

pub(crate) struct Lab {
    pub(crate) hosts: Vec<Host>,
    /// `<prefix><pid>`: the start of every namespace (and Docker cgroup) name of this lab.
    pub(crate) base: String,
    switch_ns: String,
    created_ns: Vec<String>,
    registry: Option<Proc>,
    leftovers: Leftovers,
    pub(crate) path: PathBuf,
    dir: Option<TempDir>,
}

/// Deletes namespaces of earlier runs whose process is gone (a run killed with SIGKILL).
fn remove_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = NETNS_PREFIXES
            .iter()
            .find_map(|p| name.strip_prefix(p))
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
    /// `hosts` host namespaces named `<netns_prefix><pid>-hK` (`netns_prefix` is one of
    /// [`NETNS_PREFIXES`]) and the switch, with the lab's directory in `parent`.
    pub(crate) fn new(
        parent: &Path,
        hosts: usize,
        netns_prefix: &str,
        dir_prefix: &str,
    ) -> anyhow::Result<Lab> {
        debug_assert!(NETNS_PREFIXES.contains(&netns_prefix));
        remove_stale_namespaces();
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
        let path = dir.path().canonicalize()?;
        let base = format!("{netns_prefix}{}", std::process::id());
        // Built before any namespace exists, so that Drop cleans up a half-built lab.
        let mut lab = Lab {
            hosts: Vec::new(),
            base: base.clone(),
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
        for k in 1..=hosts {
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

    /// Writes the busybox image: an OCI layout for rswarm (pushed to the registry, which this
    /// starts) and its rootfs as a tar at `rootfs_tar` for `docker import`.
    pub(crate) async fn prepare_images(&mut self, rootfs_tar: &Path) -> anyhow::Result<()> {
        let layout = self.path.join("layout");
        let base = busybox_layer("/bin/busybox", APPLETS)?;
        let spec = ImageSpec {
            cmd: vec!["sleep".into(), "1000".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..ImageSpec::default()
        };
        write_oci_layout(&layout, std::slice::from_ref(&base), &spec)?;
        fs::write(rootfs_tar, layer_tar(&base)?)?;
        self.start_registry(&layout).await
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
pub(crate) struct Deployment {
    /// The daemons, in the lab's host order.
    pub(crate) procs: Vec<Proc>,
    netns: Vec<String>,
    /// State directories (inside the lab): unmounted on drop, removed with the lab.
    pub(crate) dirs: Vec<PathBuf>,
    cgroups: Vec<String>,
    runc_roots: Vec<PathBuf>,
    /// Also return the host namespaces to how the lab made them: every link but `lo` and `eth0`
    /// deleted (bridges, VXLAN devices, veths the daemons left) and iptables flushed, so that the
    /// next system finds UDP 4789 and its device names free.
    pub(crate) reset_netns: bool,
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
        // The files stay until the lab goes (its temp dir is removed then): on ext4 without a
        // journal (this kind of VM's root), every new inode skips, one buffer lookup each, the
        // inodes freed in the last 60 s (360 s while their table block is dirty), so deleting a
        // run's thousands of files here made the next run's timed part pay for them.
        for d in &self.dirs {
            unmount_below(d);
        }
        if self.reset_netns {
            for ns in &self.netns {
                reset_netns(ns);
            }
        }
    }
}

/// Deletes every link of lab host namespace `ns` but `lo` and `eth0`, and flushes its iptables
/// tables (all of it lives in that namespace only).
fn reset_netns(ns: &str) {
    let out = StdCommand::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .stderr(Stdio::null())
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in text.lines().filter_map(link_name) {
        if name != "lo" && name != "eth0" {
            sh_quiet("ip", &["-n", ns, "link", "del", name]);
        }
    }
    let net = format!("--net={}", netns_path(ns).display());
    for table in ["filter", "nat", "mangle", "raw"] {
        for op in ["-F", "-X"] {
            sh_quiet("nsenter", &[&net, "--", "iptables", "-t", table, op]);
        }
    }
}

/// The name in a line of `ip -o link show`: `3: eth0@if4: <…` → `eth0`.
fn link_name(line: &str) -> Option<&str> {
    let name = line.split(": ").nth(1)?;
    Some(name.split('@').next().unwrap_or(name)).filter(|n| !n.is_empty())
}

// ------------------------------------------------------------------------------------------------
// rswarm
// ------------------------------------------------------------------------------------------------

/// `rswarm join --token TOKEN ADDR` in `rswarm init`'s output.
pub(crate) fn parse_join(stdout: &str) -> Option<(String, String)> {
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "--token")?;
    let token = words.get(i + 1)?;
    let addr = words.get(i + 2)?;
    token
        .starts_with("RSWTKN-1-")
        .then(|| (token.to_string(), addr.to_string()))
}

pub(crate) async fn rswarm_client(
    socket: &Path,
    daemon: &mut Proc,
) -> anyhow::Result<ControlClient<Channel>> {
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
pub(crate) async fn rswarm_nodes(
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

/// A running rswarm cluster on every lab host: h1 `rswarm init` (a manager that runs tasks
/// too), the others `rswarm join`; every node ready and holding [`RSWARM_IMAGE`].
pub(crate) struct RswarmCluster {
    /// Torn down (daemons killed, containers, cgroups and state removed) on drop.
    pub(crate) dep: Deployment,
    /// Each host's API socket, in the lab's host order.
    pub(crate) sockets: Vec<PathBuf>,
    /// The manager's control API.
    pub(crate) client: ControlClient<Channel>,
    /// (node id, hostname, status) of every node.
    pub(crate) nodes: Vec<(String, String, String)>,
}

/// Starts [`RswarmCluster`] with fresh state in `<host dir>/rswarm-<tag>`.
pub(crate) async fn start_rswarm(
    lab: &Lab,
    rswarm: &Path,
    tag: &str,
) -> anyhow::Result<RswarmCluster> {
    let mut dep = Deployment::default();
    let mut sockets = Vec::new();
    for h in &lab.hosts {
        let dir = h.dir.join(format!("rswarm-{tag}"));
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
    let mut manager = Proc::spawn(&h1.netns, "rswarm-init", rswarm, &args, &dep.dirs[0])?;
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
        let p = Proc::spawn(&h.netns, "rswarm-join", rswarm, &args, &dep.dirs[i])?;
        dep.procs.push(p);
    }
    let start = Instant::now();
    let nodes = loop {
        let nodes = rswarm_nodes(&mut client).await?;
        if nodes.len() == lab.hosts.len() && nodes.iter().all(|n| n.2 == "ready") {
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
    // Every host already holds the image, as every Swarm host does (docker import).
    for s in &sockets {
        let mut cmd = Command::new(rswarm);
        cmd.arg("--host")
            .arg(format!("unix://{}", s.display()))
            .args(["pull", RSWARM_IMAGE]);
        run_cmd(cmd, "rswarm pull").await?;
    }
    Ok(RswarmCluster {
        dep,
        sockets,
        client,
        nodes,
    })
}

// ------------------------------------------------------------------------------------------------
// Docker Swarm
// ------------------------------------------------------------------------------------------------

/// Percent-encodes a query value.
pub(crate) fn url_encode(s: &str) -> String {
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
pub(crate) async fn docker_get(socket: &Path, path: &str) -> anyhow::Result<Value> {
    docker_get_opt(socket, path)
        .await?
        .with_context(|| format!("GET {path}: 404 Not Found"))
}

/// [`docker_get`], with `None` for 404 Not Found.
pub(crate) async fn docker_get_opt(socket: &Path, path: &str) -> anyhow::Result<Option<Value>> {
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

/// The `docker` CLI talking to the dockerd at `socket`.
pub(crate) fn docker_cmd(docker: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(docker);
    cmd.arg("-H").arg(format!("unix://{}", socket.display()));
    cmd
}

/// A Docker Swarm on every lab host: one dockerd (+ its managed containerd) per host, h1 the
/// manager (`swarm init`), the others workers; every node ready and holding [`SWARM_IMAGE`].
pub(crate) struct SwarmCluster {
    /// Torn down (daemons killed, containers, cgroups, mounts and state removed) on drop.
    pub(crate) dep: Deployment,
    /// Each host's dockerd socket, in the lab's host order.
    pub(crate) sockets: Vec<PathBuf>,
}

/// Starts [`SwarmCluster`] with fresh state in `<host dir>/swarm-<tag>`; `rootfs_tar` is
/// imported as [`SWARM_IMAGE`] on every host. `init_args` are added to `docker swarm init`
/// (e.g. `--data-path-port 7789`). With `default_bridge`, each dockerd makes docker0 in its
/// host's namespace, as a default install does (tasks without a network join it); without,
/// `--bridge none` leaves such tasks only a loopback.
pub(crate) async fn start_swarm(
    lab: &Lab,
    dockerd: &Path,
    docker: &Path,
    rootfs_tar: &Path,
    tag: &str,
    init_args: &[&str],
    default_bridge: bool,
) -> anyhow::Result<SwarmCluster> {
    let mut dep = Deployment::default();
    let mut sockets = Vec::new();
    for h in &lab.hosts {
        let dir = h.dir.join(format!("swarm-{tag}"));
        fs::create_dir(&dir)?;
        dep.dirs.push(dir.clone());
        dep.netns.push(h.netns.clone());
        let cgroup = format!("{}-{tag}-{}", lab.base, h.name);
        dep.cgroups.push(cgroup.clone());
        let socket = dir.join("docker.sock");
        // Our own daemon.json: not /etc/docker's, and the trust key in our dir (else dockerd
        // writes /etc/docker/key.json).
        let config = dir.join("daemon.json");
        fs::write(
            &config,
            serde_json::json!({ "deprecated-key-path": dir.join("key.json") }).to_string(),
        )?;
        let mut args: Vec<OsString> = vec![
            "--data-root".into(),
            dir.join("data").into_os_string(),
            "--exec-root".into(),
            dir.join("exec").into_os_string(),
            "-H".into(),
            format!("unix://{}", socket.display()).into(),
            "--pidfile".into(),
            dir.join("docker.pid").into_os_string(),
            "--iptables=false".into(),
            "--cgroup-parent".into(),
            format!("/{cgroup}").into(),
            "--config-file".into(),
            config.into_os_string(),
        ];
        if !default_bridge {
            args.extend(["--bridge".into(), "none".into()]);
        }
        dep.procs
            .push(Proc::spawn(&h.netns, "dockerd", dockerd, &args, &dir)?);
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
        let mut cmd = docker_cmd(docker, s);
        cmd.arg("import").arg(rootfs_tar).arg(SWARM_IMAGE);
        run_cmd(cmd, "docker import").await?;
    }
    let h1 = &lab.hosts[0];
    let mut cmd = docker_cmd(docker, &sockets[0]);
    cmd.args(["swarm", "init", "--advertise-addr", &h1.ip])
        .args(init_args);
    run_cmd(cmd, "docker swarm init").await?;
    let mut cmd = docker_cmd(docker, &sockets[0]);
    cmd.args(["swarm", "join-token", "-q", "worker"]);
    let token = run_cmd(cmd, "docker swarm join-token")
        .await?
        .trim()
        .to_string();
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let mut cmd = docker_cmd(docker, &sockets[i]);
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
        if nodes.len() == lab.hosts.len() && nodes.iter().all(|n| n["Status"]["State"] == "ready") {
            break;
        }
        if start.elapsed() > CMD_TIMEOUT {
            bail!("Swarm nodes not all ready: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(SwarmCluster { dep, sockets })
}

// ------------------------------------------------------------------------------------------------
// Tools, the machine, interruption
// ------------------------------------------------------------------------------------------------

/// Finds what every lab needs (and `extra`: (tool, how to get it)) and, unless `no_swarm`,
/// dockerd and the `docker` CLI of the same package; fails naming everything missing.
/// Returns (dockerd, docker), empty paths with `no_swarm`.
pub(crate) fn check_tools(
    bin_dir: &Path,
    no_swarm: bool,
    dockerd: &Path,
    extra: &[(&str, &str)],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut missing = Vec::new();
    for tool in ["nsenter", "ip", "runc", "docker-registry", "skopeo", "curl"] {
        if find_in_path(Path::new(tool)).is_none() {
            missing.push(tool.to_string());
        }
    }
    for (tool, how) in extra {
        if find_in_path(Path::new(tool)).is_none() {
            missing.push(format!("{tool} ({how})"));
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
    if !no_swarm {
        match find_in_path(dockerd) {
            None => missing.push(format!(
                "{} (Docker Swarm: `apt-get install -y docker.io`, and do not start its service; or run with --no-swarm)",
                dockerd.display()
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

/// `--bin-dir`, or the directory of this executable.
pub(crate) fn bin_dir(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(d) => Ok(d.to_path_buf()),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("this executable has no directory"),
    }
}

/// "- machine: 2 CPUs, Linux 6.x; load average at the end: …".
pub(crate) fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
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
    )
}

/// The first line of `PROGRAM --version`.
pub(crate) fn version_of(program: &Path) -> String {
    StdCommand::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// Resolves on Ctrl-C; never when the handler cannot be installed.
pub(crate) async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reads_link_names() {
        assert_eq!(
            link_name("3: eth0@if4: <BROADCAST,MULTICAST,UP> mtu 1500"),
            Some("eth0")
        );
        assert_eq!(
            link_name("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536"),
            Some("lo")
        );
        assert_eq!(link_name("garbage"), None);
    }
}
