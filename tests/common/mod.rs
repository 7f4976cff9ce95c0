//! Integration-test harness for rswarm: a small "lab" of simulated hosts.
//!
//! A [`Lab`] is one "switch" network namespace holding a Linux bridge, plus N "host" namespaces, each
//! joined to the bridge by a veth pair that is created directly inside the namespaces (nothing is
//! created in the root network namespace apart from the `/run/netns/*` entries). Host `k` (1-based) is
//! `hk`, with address `198.18.0.k/24` on `eth0` and no route anywhere else.
//!
//! Every host has its own directory (`DIR/state` is the state dir, `DIR/rswarm.sock` the control socket,
//! `DIR/logs/*` the daemons' stdout/stderr). Daemons are started with
//! `nsenter --net=/run/netns/NS -- BINARY ARGS` (never `ip netns exec`, which remounts /sys and loses the
//! cgroup mounts).
//!
//! Dropping the `Lab` (also while unwinding from a panic) SIGKILLs every process it started and every
//! process still inside its namespaces, dumps the daemon logs to stderr when the test panicked, unmounts
//! anything left mounted below the lab directory, deletes the namespaces and removes the lab directory
//! (kept when `RSWARM_KEEP_TEST_DIRS` is set).
//!
//! Tests need root; [`Lab::new`] prints "skipping: needs root" and returns `None` otherwise.
//!
//! The binaries come from `CARGO_BIN_EXE_<name>` (set by cargo at compile time for integration tests of
//! the package that owns them); `RSWARM_BIN_<NAME>` (e.g. `RSWARM_BIN_RSWARM_MANAGER`) overrides at run
//! time.

#![allow(dead_code)]

pub mod cli;
pub mod registry;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Prefix of every network namespace the harness creates (used to find stale ones).
pub const NETNS_PREFIX: &str = "rswt-";
/// Port the managers listen on by default (`--listen-addr 0.0.0.0:4242`).
pub const MANAGER_PORT: u16 = 4242;
/// Default timeout of one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a freshly started daemon gets to answer `rswarm info` on its socket.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);
static STALE_CLEANUP: Once = Once::new();

// ---------------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------------

/// The three rswarm binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    /// `rswarm` (CLI; `init` and `join` run the daemon in the foreground).
    Rswarm,
    /// `rswarm-manager` (resumes a stopped manager).
    Manager,
    /// `rswarm-agent` (resumes a stopped worker).
    Agent,
}

impl Bin {
    fn name(self) -> &'static str {
        match self {
            Bin::Rswarm => "rswarm",
            Bin::Manager => "rswarm-manager",
            Bin::Agent => "rswarm-agent",
        }
    }

    /// Absolute path of the binary.
    pub fn path(self) -> PathBuf {
        let override_var = format!(
            "RSWARM_BIN_{}",
            self.name().to_uppercase().replace('-', "_")
        );
        if let Some(p) = std::env::var_os(&override_var) {
            return PathBuf::from(p);
        }
        let compiled = match self {
            Bin::Rswarm => option_env!("CARGO_BIN_EXE_rswarm"),
            Bin::Manager => option_env!("CARGO_BIN_EXE_rswarm-manager"),
            Bin::Agent => option_env!("CARGO_BIN_EXE_rswarm-agent"),
        };
        match compiled {
            Some(p) => PathBuf::from(p),
            None => panic!(
                "path of binary `{}` unknown: build these tests as integration tests of the `rswarm` \
                 package (cargo sets CARGO_BIN_EXE_{}) or set {override_var}",
                self.name(),
                self.name()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------------

/// True when the effective uid is 0 (read from /proc/self/status: no libc needed).
pub fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(|euid| euid == "0")
        .unwrap_or(false)
}

/// Runs a command in the root namespaces and panics (with its output) when it fails.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Like [`sh`] but ignores failures (cleanup paths).
fn sh_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Inode of the network namespace bound at /run/netns/NAME.
fn netns_inode(name: &str) -> Option<u64> {
    fs::metadata(netns_path(name)).ok().map(|m| m.ino())
}

/// Pids of all processes whose network namespace is /run/netns/NAME.
pub fn pids_in_netns(name: &str) -> Vec<i32> {
    let Some(ino) = netns_inode(name) else {
        return Vec::new();
    };
    let want = format!("net:[{ino}]");
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(link) = fs::read_link(entry.path().join("ns/net")) {
            if link.to_string_lossy() == want {
                pids.push(pid);
            }
        }
    }
    pids
}

/// SIGKILLs every process inside the namespace and waits (bounded) until none is left.
fn kill_netns_processes(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in_netns(name);
        if pids.is_empty() || Instant::now() > deadline {
            if !pids.is_empty() {
                eprintln!("[harness] processes still alive in netns {name}: {pids:?}");
            }
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deletes the namespaces left behind by harness processes that no longer exist (a test binary killed
/// by a timeout cannot clean up after itself). Names look like `rswt-TAG-PID-N-ROLE`.
fn cleanup_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("[harness] removing stale network namespace {name} (pid {pid} is gone)");
        kill_netns_processes(&name);
        sh_quiet("ip", &["netns", "del", &name]);
    }
}

/// Kills and deletes every runc container whose state lives in `runc_root` (their cgroups go with
/// them).
pub fn remove_runc_containers(runc_root: &Path) {
    if !runc_root.is_dir() {
        return;
    }
    let root = runc_root.display().to_string();
    let out = Command::new("runc")
        .args(["--root", &root, "list", "-q"])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return };
    for id in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
    {
        sh_quiet("runc", &["--root", &root, "kill", "--all", id, "KILL"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sh_quiet("runc", &["--root", &root, "delete", "--force", id])
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The directories of a node's container cgroup parent in every mounted hierarchy (named as the
/// engine names it).
pub fn cgroup_parent_dirs(state_dir: &Path) -> Vec<PathBuf> {
    use rswarm_runtime::cgroup;
    cgroup::hierarchy_dirs(&cgroup::parent_for_state_dir(state_dir))
}

/// Mount points at or below `dir` (deepest first), from /proc/self/mountinfo.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts.dedup();
    mounts
}

/// Last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines omitted ...]\n"));
    }
    for l in &lines[start..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn read_lossy(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A listing of every file below `dir` with its content (symlinks as their target), to check that a
/// command "wrote nothing". A missing dir gives an empty map.
pub fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                out.insert(rel.join(""), b"<dir>".to_vec());
                walk(base, &path, out);
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                out.insert(rel, format!("<symlink {}>", target.display()).into_bytes());
            } else if ft.is_socket() || ft.is_fifo() {
                out.insert(rel, b"<special>".to_vec());
            } else {
                out.insert(
                    rel,
                    fs::read(&path).unwrap_or_else(|e| format!("<unreadable {e}>").into_bytes()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Human list of the files below `dir` (for assertion messages).
pub fn list_dir(dir: &Path) -> String {
    let snap = snapshot_dir(dir);
    if snap.is_empty() {
        return if dir.exists() {
            "(empty)".into()
        } else {
            "(absent)".into()
        };
    }
    snap.keys()
        .map(|k| k.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// True when `dir` does not exist or holds no entry at all.
pub fn dir_absent_or_empty(dir: &Path) -> bool {
    match fs::read_dir(dir) {
        Err(_) => !dir.exists(),
        Ok(mut it) => it.next().is_none(),
    }
}

/// A short readable tag for names: the first word (≤ 5 chars) plus the initials of the others, e.g.
/// `certificates_are_enforced` → `certiae`; at most 8 lowercase alphanumerics.
pub fn short_tag(test_name: &str) -> String {
    let mut words = test_name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty());
    let mut tag: String = words.next().unwrap_or("t").chars().take(5).collect();
    tag.extend(words.filter_map(|w| w.chars().next()));
    tag.truncate(8);
    tag.to_lowercase()
}

/// Polls `cond` every `poll` until it holds; panics after `timeout` with `what` and `context()`.
pub fn wait_until_with(
    timeout: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
    what: &str,
    context: impl FnOnce() -> String,
) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:.1?} waiting for: {what}\n{}",
                start.elapsed(),
                context()
            );
        }
        std::thread::sleep(poll);
    }
}

// ---------------------------------------------------------------------------------------------------
// Command output
// ---------------------------------------------------------------------------------------------------

/// Result of one command run to completion (or killed at its timeout).
#[derive(Clone, Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command did not finish within its timeout and was SIGKILLed.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl CmdOutput {
    /// Exit code 0 and not timed out.
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// Exited by itself with a non-zero status.
    pub fn failed_cleanly(&self) -> bool {
        !self.timed_out && !self.status.success()
    }

    /// Panics with the full output unless the command succeeded.
    #[track_caller]
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what}: command failed\n{self}");
        self
    }

    /// Panics unless the command exited by itself with a non-zero status.
    #[track_caller]
    pub fn assert_failure(&self, what: &str) -> &Self {
        assert!(
            self.failed_cleanly(),
            "{what}: expected the command to exit non-zero by itself\n{self}"
        );
        self
    }

    /// Parses stdout as JSON; panics (with the output) otherwise.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not valid JSON ({e})\n{self}"))
    }

    /// stderr, lower-cased (for "mentions X" checks).
    pub fn stderr_lc(&self) -> String {
        self.stderr.to_lowercase()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(
            f,
            "status: {}{} after {:.2?}",
            self.status,
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.elapsed
        )?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout, 60))?;
        write!(f, "--- stderr ---\n{}", tail(&self.stderr, 60))
    }
}

/// Runs `cmd` with piped stdout/stderr, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration, display: String) -> CmdOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{display}`: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("waiting for `{display}`: {e}"),
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_thread.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    CmdOutput {
        command: display,
        status,
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------------

struct Proc {
    label: String,
    command: String,
    pid: u32,
    child: Mutex<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
}

impl Proc {
    /// Non-blocking: exit status if the process has exited (reaps it).
    fn try_status(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait()
            .ok()
            .flatten()
    }

    /// Sends `sig` to the process, unless it has already been reaped (its pid could be reused).
    fn signal(&self, sig: Signal) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), sig);
        }
    }

    /// SIGKILLs the process (and, with `group`, its process group) and reaps it.
    fn kill_and_reap(&self, group: bool) -> ExitStatus {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some(st)) = child.try_wait() {
            // Already reaped: its pid (and so its group id) may belong to someone else by now.
            // Children it left behind are killed by the namespace sweep in `Lab::drop`.
            return st;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGKILL);
        if group {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        child.wait().expect("wait for killed daemon")
    }

    fn log(&self) -> String {
        format!(
            "--- {} stdout ({}) ---\n{}--- {} stderr ({}) ---\n{}",
            self.label,
            self.stdout_path.display(),
            read_lossy(&self.stdout_path),
            self.label,
            self.stderr_path.display(),
            read_lossy(&self.stderr_path)
        )
    }
}

/// A long-running process started inside a host's namespace. Cheap to clone; the `Lab` kills it on
/// drop whatever happens to the handle.
#[derive(Clone)]
pub struct Daemon {
    proc_: Arc<Proc>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Daemon({} pid {})", self.proc_.label, self.proc_.pid)
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.proc_.pid
    }

    pub fn label(&self) -> &str {
        &self.proc_.label
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        self.proc_.try_status().is_none()
    }

    /// Exit status, if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.proc_.try_status()
    }

    /// `kill -9 PID` and reap; returns the exit status. Only the process itself is killed (anything
    /// it started, e.g. containers, is left running, as with a real `kill -9`); see
    /// [`Daemon::kill9_group`].
    pub fn kill9(&self) -> ExitStatus {
        self.proc_.kill_and_reap(false)
    }

    /// SIGKILL the process and its whole process group, and reap it.
    pub fn kill9_group(&self) -> ExitStatus {
        self.proc_.kill_and_reap(true)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; on timeout it SIGKILLs and panics with the
    /// daemon's log.
    #[track_caller]
    pub fn sigterm_and_wait(&self, timeout: Duration) -> ExitStatus {
        self.proc_.signal(Signal::SIGTERM);
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => {
                self.kill9_group();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.proc_.label,
                    tail(&self.log(), 80)
                );
            }
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: Signal) {
        self.proc_.signal(sig);
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.proc_.try_status() {
                return Some(st);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.proc_.stdout_path)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.proc_.stderr_path)
    }

    /// stdout and stderr, with headers.
    pub fn log(&self) -> String {
        self.proc_.log()
    }

    /// Waits until `pred(stdout)` holds. Fails fast (with the log) if the process exits first.
    #[track_caller]
    pub fn wait_for_stdout(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout();
            if pred(&out) {
                return out;
            }
            if let Some(st) = self.exit_status() {
                // Read once more: the line may have been written just before the exit.
                let out = self.stdout();
                if pred(&out) {
                    return out;
                }
                panic!(
                    "{} exited ({st}) before {what}\n{}\n{}",
                    self.proc_.label,
                    self.command_line(),
                    tail(&self.log(), 100)
                );
            }
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what} from {}\n{}\n{}",
                    self.proc_.label,
                    self.command_line(),
                    tail(&self.log(), 100)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn command_line(&self) -> String {
        format!("$ {}", self.proc_.command)
    }

    /// Seconds since the process was started.
    pub fn age(&self) -> Duration {
        self.proc_.started.elapsed()
    }
}

// ---------------------------------------------------------------------------------------------------
// Lab state shared by hosts and daemons
// ---------------------------------------------------------------------------------------------------

struct Shared {
    test_name: String,
    procs: Mutex<Vec<Arc<Proc>>>,
    last_cli: Mutex<Option<String>>,
    spawn_counter: AtomicUsize,
}

impl Shared {
    fn record_cli(&self, out: &CmdOutput) {
        *self.last_cli.lock().unwrap_or_else(|e| e.into_inner()) = Some(out.to_string());
    }

    fn last_cli(&self) -> String {
        self.last_cli
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "(no CLI command run yet)".into())
    }

    /// The last CLI output and the tails of all daemon logs.
    fn context(&self, log_lines: usize) -> String {
        let mut s = format!("=== last CLI command ===\n{}\n", self.last_cli());
        for p in self.procs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let state = match p.try_status() {
                Some(st) => format!("exited: {st}"),
                None => "running".to_string(),
            };
            s.push_str(&format!("=== {} (pid {}, {state}) ===\n", p.label, p.pid));
            s.push_str(&format!(
                "[stdout]\n{}[stderr]\n{}",
                tail(&read_lossy(&p.stdout_path), log_lines),
                tail(&read_lossy(&p.stderr_path), log_lines)
            ));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------------------------------

/// Paths of a node's certificate files (`STATE_DIR/certs/…`).
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    /// `--tlscacert CA --tlscert CERT --tlskey KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tlscacert".into(),
            self.ca.display().to_string(),
            "--tlscert".into(),
            self.cert.display().to_string(),
            "--tlskey".into(),
            self.key.display().to_string(),
        ]
    }
}

/// What `rswarm init` printed.
#[derive(Clone, Debug)]
pub struct InitOutput {
    pub node_id: String,
    pub token: String,
    /// `IP:PORT` from the printed join command.
    pub manager_addr: String,
    pub stdout: String,
}

/// Parses `rswarm join --token TOKEN ADDR` out of any text (init or join-token output).
pub fn parse_join_command(text: &str) -> Option<(String, String)> {
    text.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let pos = words
            .windows(3)
            .position(|w| w[0] == "rswarm" && w[1] == "join" && w[2] == "--token")?;
        let token = words.get(pos + 3)?;
        let addr = words.get(pos + 4)?;
        Some((token.to_string(), addr.to_string()))
    })
}

/// Parses the whole `rswarm init` output.
pub fn parse_init_output(stdout: &str) -> Option<InitOutput> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Swarm initialized: current node ("))?;
    let rest = line.strip_prefix("Swarm initialized: current node (")?;
    let node_id = rest.split(')').next()?.to_string();
    let (token, manager_addr) = parse_join_command(stdout)?;
    Some(InitOutput {
        node_id,
        token,
        manager_addr,
        stdout: stdout.to_string(),
    })
}

/// `RSWTKN-1-<50 base36>-<25 base36>` split into (digest, secret), if well-formed.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("RSWTKN-1-")?;
    let (digest, secret) = rest.split_once('-')?;
    let b36 = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    };
    (digest.len() == 50 && secret.len() == 25 && b36(digest) && b36(secret))
        .then_some((digest, secret))
}

/// A simulated host: a network namespace with `eth0` on the lab bridge, and a directory.
pub struct Host {
    /// 1-based index (`h1` is index 1).
    pub index: usize,
    /// Short name, also passed as `--hostname` (`h1`, `h2`, …).
    pub name: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// Underlay address (`198.18.0.INDEX`).
    pub ip: String,
    /// The host's directory.
    pub dir: PathBuf,
    shared: Arc<Shared>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({} {} netns {})", self.name, self.ip, self.netns)
    }
}

impl Host {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("rswarm.sock")
    }

    /// `unix:///…/rswarm.sock`.
    pub fn socket_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `IP:4242`.
    pub fn manager_addr(&self) -> String {
        format!("{}:{MANAGER_PORT}", self.ip)
    }

    /// `tcp://IP:4242`.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.manager_addr())
    }

    /// This host's node certificate files.
    pub fn certs(&self) -> CertPaths {
        let c = self.state_dir().join("certs");
        CertPaths {
            ca: c.join("ca.pem"),
            cert: c.join("node.pem"),
            key: c.join("node-key.pem"),
        }
    }

    /// `nsenter --net=/run/netns/NS -- PROGRAM` (a `Command` to add arguments to).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns_path(&self.netns).display()))
            .arg("--")
            .arg(program);
        cmd.env_remove("RSWARM_HOST");
        cmd.env("RUST_BACKTRACE", "1");
        cmd
    }

    /// Runs any program in this host's namespace, with a timeout.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        let mut cmd = self.command(program);
        cmd.args(args);
        let display = format!("[{}] {program} {}", self.name, args.join(" "));
        run_with_timeout(cmd, timeout, display)
    }

    /// `rswarm --host unix://<this host's socket> ARGS…` in this host's namespace.
    pub fn rswarm(&self, args: &[&str]) -> CmdOutput {
        let mut full: Vec<String> = vec!["--host".into(), self.socket_url()];
        full.extend(args.iter().map(|s| s.to_string()));
        self.rswarm_raw_env(&full, &[], CLI_TIMEOUT)
    }

    /// `rswarm ARGS…` (no `--host`: the test passes its own) in this host's namespace.
    pub fn rswarm_raw<S: AsRef<str>>(&self, args: &[S]) -> CmdOutput {
        self.rswarm_raw_env(args, &[], CLI_TIMEOUT)
    }

    /// `rswarm ARGS…` with extra environment variables and an explicit timeout.
    pub fn rswarm_raw_env<S: AsRef<str>>(
        &self,
        args: &[S],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> CmdOutput {
        let bin = Bin::Rswarm.path();
        let mut cmd = self.command(&bin);
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        cmd.args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let env_display: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let display = format!("[{}] {env_display}rswarm {}", self.name, args.join(" "));
        let out = run_with_timeout(cmd, timeout, display);
        self.shared.record_cli(&out);
        out
    }

    /// Starts `program ARGS…` in this host's namespace as a daemon (own process group, stdin null,
    /// stdout/stderr to `DIR/logs/NN-LABEL.{stdout,stderr}`).
    pub fn spawn(&self, label: &str, program: &Path, args: &[String]) -> Daemon {
        let n = self.shared.spawn_counter.fetch_add(1, Ordering::SeqCst);
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).expect("create log dir");
        let full_label = format!("{}:{label}#{n}", self.name);
        let stdout_path = logs.join(format!("{n:02}-{label}.stdout"));
        let stderr_path = logs.join(format!("{n:02}-{label}.stderr"));
        let out = fs::File::create(&stdout_path).expect("create stdout log");
        let err = fs::File::create(&stderr_path).expect("create stderr log");
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let command = format!("[{}] {} {}", self.name, program.display(), args.join(" "));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {command}: {e}"));
        let proc_ = Arc::new(Proc {
            label: full_label,
            command,
            pid: child.id(),
            child: Mutex::new(child),
            stdout_path,
            stderr_path,
            started: Instant::now(),
        });
        self.shared
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc_.clone());
        Daemon { proc_ }
    }

    /// Starts one of the rswarm binaries as a daemon.
    pub fn spawn_bin<S: AsRef<str>>(&self, label: &str, bin: Bin, args: &[S]) -> Daemon {
        let args: Vec<String> = args.iter().map(|s| s.as_ref().to_string()).collect();
        self.spawn(label, &bin.path(), &args)
    }

    /// Arguments for `rswarm init` on this host (advertise addr, state dir, socket, hostname) plus
    /// `extra`.
    pub fn init_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "init".into(),
            "--advertise-addr".into(),
            self.ip.clone(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
            "--hostname".into(),
            self.name.clone(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Arguments for `rswarm join` on this host with `token` towards `manager_addr` (`IP:PORT`).
    pub fn join_args(&self, token: &str, manager_addr: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "join".into(),
            "--token".into(),
            token.into(),
            "--advertise-addr".into(),
            self.ip.clone(),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
            "--hostname".into(),
            self.name.clone(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(manager_addr.into());
        a
    }

    /// Runs `rswarm init` in the foreground (as a daemon), waits for the printed join command and for
    /// the socket to answer `rswarm info`.
    #[track_caller]
    pub fn init(&self, extra: &[&str]) -> (Daemon, InitOutput) {
        let d = self.spawn("init", &Bin::Rswarm.path(), &self.init_args(extra));
        let out = d.wait_for_stdout(
            STARTUP_TIMEOUT,
            "the `Swarm initialized` message and join command",
            |s| parse_init_output(s).is_some(),
        );
        let parsed = parse_init_output(&out).expect("parsed above");
        self.wait_socket_ready(&d);
        (d, parsed)
    }

    /// Runs `rswarm join` in the foreground (as a daemon), waits for "This node joined a swarm as a
    /// worker." and for the socket to answer `rswarm info`.
    #[track_caller]
    pub fn join(&self, token: &str, manager_addr: &str) -> Daemon {
        self.join_with(token, manager_addr, &[])
    }

    /// [`Host::join`] with extra `rswarm join` flags.
    #[track_caller]
    pub fn join_with(&self, token: &str, manager_addr: &str, extra: &[&str]) -> Daemon {
        let d = self.spawn(
            "join",
            &Bin::Rswarm.path(),
            &self.join_args(token, manager_addr, extra),
        );
        d.wait_for_stdout(
            STARTUP_TIMEOUT,
            "\"This node joined a swarm as a worker.\"",
            |s| s.contains("This node joined a swarm as a worker."),
        );
        self.wait_socket_ready(&d);
        d
    }

    /// `rswarm-manager --state-dir … --socket …`, waiting for the socket to answer `rswarm info`.
    #[track_caller]
    pub fn start_manager(&self) -> Daemon {
        let d = self.spawn_bin("manager", Bin::Manager, &self.resume_args());
        self.wait_socket_ready(&d);
        d
    }

    /// `rswarm-agent --state-dir … --socket …`, waiting for the socket to answer `rswarm info`.
    #[track_caller]
    pub fn start_agent(&self) -> Daemon {
        let d = self.spawn_bin("agent", Bin::Agent, &self.resume_args());
        self.wait_socket_ready(&d);
        d
    }

    /// `--state-dir DIR/state --socket DIR/rswarm.sock` (the arguments of `rswarm-manager` and
    /// `rswarm-agent`).
    pub fn resume_args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state_dir().display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
        ]
    }

    /// Waits until `rswarm info` on this host's socket succeeds; fails fast if `d` exits.
    #[track_caller]
    pub fn wait_socket_ready(&self, d: &Daemon) {
        let start = Instant::now();
        loop {
            if let Some(st) = d.exit_status() {
                panic!(
                    "{} exited ({st}) before its socket answered `rswarm info`\n{}\n{}\n=== last CLI ===\n{}",
                    d.label(),
                    d.command_line(),
                    tail(&d.log(), 100),
                    self.shared.last_cli()
                );
            }
            if self.socket().exists() {
                let out = self.rswarm_raw_env(
                    &["--host", &self.socket_url(), "info", "--format", "json"],
                    &[],
                    Duration::from_secs(10),
                );
                if out.success() {
                    return;
                }
            }
            if start.elapsed() >= STARTUP_TIMEOUT {
                panic!(
                    "{}: socket {} did not answer `rswarm info` within {STARTUP_TIMEOUT:?}\n{}\n=== last CLI ===\n{}",
                    d.label(),
                    self.socket().display(),
                    tail(&d.log(), 100),
                    self.shared.last_cli()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ----- JSON conveniences (all through this host's socket) -----

    /// `node ls --format json`, or the failed output.
    pub fn try_node_ls(&self) -> Result<Vec<Value>, CmdOutput> {
        let out = self.rswarm(&["node", "ls", "--format", "json"]);
        if !out.success() {
            return Err(out);
        }
        match serde_json::from_str::<Value>(&out.stdout) {
            Ok(Value::Array(v)) => Ok(v),
            _ => Err(out),
        }
    }

    /// `node ls --format json`; panics when it fails.
    #[track_caller]
    pub fn node_ls(&self) -> Vec<Value> {
        match self.try_node_ls() {
            Ok(v) => v,
            Err(out) => panic!(
                "`node ls --format json` on {} failed or is not a JSON array\n{out}",
                self.name
            ),
        }
    }

    /// `info --format json`; panics when it fails.
    #[track_caller]
    pub fn info(&self) -> Value {
        let out = self.rswarm(&["info", "--format", "json"]);
        out.assert_success(&format!("`rswarm info` on {}", self.name));
        out.json()
    }

    /// `node inspect NODE` (JSON array); panics when it fails or is not a one-element array.
    #[track_caller]
    pub fn inspect(&self, node: &str) -> Value {
        let out = self.rswarm(&["node", "inspect", node]);
        out.assert_success(&format!("`node inspect {node}` on {}", self.name));
        match out.json() {
            Value::Array(mut v) if v.len() == 1 => v.remove(0),
            other => panic!(
                "`node inspect {node}` should print a one-element JSON array, got {other}\n{out}"
            ),
        }
    }

    /// The `status` of node `hostname` in this host's `node ls` (None when the CLI fails or the node
    /// is absent).
    pub fn node_status(&self, hostname: &str) -> Option<String> {
        let nodes = self.try_node_ls().ok()?;
        find_node(&nodes, hostname).and_then(|n| n["status"].as_str().map(str::to_string))
    }

    /// True when `node ls` lists exactly `count` nodes, all `ready`.
    pub fn all_ready(&self, count: usize) -> bool {
        match self.try_node_ls() {
            Ok(nodes) => nodes.len() == count && nodes.iter().all(|n| n["status"] == "ready"),
            Err(_) => false,
        }
    }

    /// True when the state dir does not exist or is empty.
    pub fn state_dir_pristine(&self) -> bool {
        dir_absent_or_empty(&self.state_dir())
    }
}

/// The node object whose `hostname` is `hostname`.
pub fn find_node<'a>(nodes: &'a [Value], hostname: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["hostname"] == hostname)
}

/// A compact one-line-per-node summary, for assertion messages.
pub fn summarize_nodes(nodes: &[Value]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{} {} role={} status={} avail={} mgr={}",
                n["id"].as_str().unwrap_or("?"),
                n["hostname"].as_str().unwrap_or("?"),
                n["role"].as_str().unwrap_or("?"),
                n["status"].as_str().unwrap_or("?"),
                n["availability"].as_str().unwrap_or("?"),
                n["manager_status"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------------

/// A set of simulated hosts on one bridge. See the module docs.
pub struct Lab {
    pub test_name: String,
    /// Name of the switch namespace (holds `br0` and the `vK` veth peers).
    pub switch_ns: String,
    hosts: Vec<Host>,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    shared: Arc<Shared>,
    created_ns: Vec<String>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lab({} at {})", self.test_name, self.root_path.display())
    }
}

impl Lab {
    /// A lab of three hosts, or `None` (after printing "skipping: needs root") when not root.
    pub fn new(test_name: &str) -> Option<Lab> {
        Lab::with_hosts(test_name, 3)
    }

    /// A lab of `n` hosts (1 ≤ n ≤ 250), or `None` when not root.
    pub fn with_hosts(test_name: &str, n: usize) -> Option<Lab> {
        assert!((1..=250).contains(&n), "a lab has 1..=250 hosts");
        if !is_root() {
            eprintln!("skipping: needs root ({test_name})");
            return None;
        }
        STALE_CLEANUP.call_once(cleanup_stale_namespaces);

        let tag = short_tag(test_name);
        let pid = std::process::id();
        let counter = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("{NETNS_PREFIX}{tag}-{pid}-{counter}");

        let root = tempfile::Builder::new()
            .prefix(&format!("rswarm-{tag}-"))
            .tempdir()
            .expect("create lab temp dir");
        let root_path = root.path().to_path_buf();
        let shared = Arc::new(Shared {
            test_name: test_name.to_string(),
            procs: Mutex::new(Vec::new()),
            last_cli: Mutex::new(None),
            spawn_counter: AtomicUsize::new(0),
        });
        // Built before any namespace exists so that a failure half-way is cleaned up by Drop.
        let mut lab = Lab {
            test_name: test_name.to_string(),
            switch_ns: format!("{base}-sw"),
            hosts: Vec::new(),
            root: Some(root),
            root_path,
            shared,
            created_ns: Vec::new(),
        };

        let sw = lab.switch_ns.clone();
        sh("ip", &["netns", "add", &sw]);
        lab.created_ns.push(sw.clone());
        sh("ip", &["-n", &sw, "link", "set", "lo", "up"]);
        sh("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        sh("ip", &["-n", &sw, "link", "set", "br0", "up"]);

        for k in 1..=n {
            let ns = format!("{base}-h{k}");
            sh("ip", &["netns", "add", &ns]);
            lab.created_ns.push(ns.clone());
            let peer = format!("v{k}");
            let ip = format!("198.18.0.{k}");
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            sh(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer,
                    "netns", &sw,
                ],
            );
            sh("ip", &["-n", &sw, "link", "set", &peer, "master", "br0"]);
            sh("ip", &["-n", &sw, "link", "set", &peer, "up"]);
            sh(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            let dir = lab.root_path.join(format!("h{k}"));
            fs::create_dir_all(&dir).expect("create host dir");
            lab.hosts.push(Host {
                index: k,
                name: format!("h{k}"),
                netns: ns,
                ip,
                dir,
                shared: lab.shared.clone(),
            });
        }
        Some(lab)
    }

    /// Host `k`, 1-based (`lab.host(1)` is `h1`, 198.18.0.1).
    #[track_caller]
    pub fn host(&self, k: usize) -> &Host {
        assert!(
            k >= 1 && k <= self.hosts.len(),
            "lab has hosts 1..={}, asked for {k}",
            self.hosts.len()
        );
        &self.hosts[k - 1]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The lab's directory (host dirs are `h1/`, `h2/`, …).
    pub fn dir(&self) -> &Path {
        &self.root_path
    }

    /// The last CLI output and the tails of all daemon logs.
    pub fn context(&self) -> String {
        self.shared.context(40)
    }

    /// Polls `cond` every `poll` until it holds; after `timeout` panics with `what`, the last CLI output
    /// and the daemon logs.
    #[track_caller]
    pub fn wait_until(
        &self,
        timeout: Duration,
        poll: Duration,
        cond: impl FnMut() -> bool,
        what: &str,
    ) {
        wait_until_with(timeout, poll, cond, what, || self.context());
    }

    /// Polls `f` until it returns `Some`, and returns that value (same failure as [`Lab::wait_until`]).
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        poll: Duration,
        mut f: impl FnMut() -> Option<T>,
        what: &str,
    ) -> T {
        let mut found = None;
        wait_until_with(
            timeout,
            poll,
            || {
                found = f();
                found.is_some()
            },
            what,
            || self.context(),
        );
        found.expect("condition held")
    }

    /// Checks that `cond` holds at every poll for the whole `duration` (an invariant over time, not a
    /// sleep); panics at the first poll where it does not.
    #[track_caller]
    pub fn hold_for(
        &self,
        duration: Duration,
        poll: Duration,
        mut cond: impl FnMut() -> bool,
        what: &str,
    ) {
        let start = Instant::now();
        loop {
            if !cond() {
                panic!(
                    "invariant broken after {:.1?} (of {duration:?}): {what}\n{}",
                    start.elapsed(),
                    self.context()
                );
            }
            if start.elapsed() >= duration {
                return;
            }
            std::thread::sleep(poll);
        }
    }

    /// Full logs of every daemon started in this lab.
    pub fn all_logs(&self) -> String {
        let procs = self.shared.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter()
            .map(|p| tail(&p.log(), 2000))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();

        // 1. Kill everything we started, and reap it.
        let procs: Vec<Arc<Proc>> =
            std::mem::take(&mut *self.shared.procs.lock().unwrap_or_else(|e| e.into_inner()));
        let mut states = Vec::new();
        for p in &procs {
            let before = p.try_status();
            let st = p.kill_and_reap(true);
            states.push(match before {
                Some(st) => format!("had exited: {st}"),
                None => format!(
                    "killed by the harness ({})",
                    st.signal().map_or("?".into(), |s| s.to_string())
                ),
            });
        }
        // 2. Kill anything else still inside our namespaces (children that left the process group,
        //    container shims), then the containers themselves: they live in namespaces of their own
        //    and outlive their agents by design.
        for ns in &self.created_ns {
            kill_netns_processes(ns);
        }
        for host in &self.hosts {
            remove_runc_containers(&host.state_dir().join("runc"));
            for d in cgroup_parent_dirs(&host.state_dir()) {
                let _ = fs::remove_dir(&d);
            }
        }

        // 3. Explain failures.
        if panicking {
            eprintln!(
                "\n======== rswarm test `{}` failed: daemon logs ========",
                self.test_name
            );
            eprintln!("=== last CLI command ===\n{}", self.shared.last_cli());
            for (p, state) in procs.iter().zip(&states) {
                eprintln!(
                    "\n=== {} (pid {}, {state}) ===\n{}\n{}",
                    p.label,
                    p.pid,
                    p.command,
                    tail(&p.log(), 400)
                );
            }
            eprintln!("======== end of logs for `{}` ========\n", self.test_name);
        }

        // 4. Unmount anything daemons left mounted below the lab dir, then delete the namespaces.
        for m in mounts_below(&self.root_path) {
            sh_quiet("umount", &["-l", &m.display().to_string()]);
        }
        for ns in self.created_ns.iter().rev() {
            if !sh_quiet("ip", &["netns", "del", ns]) && netns_path(ns).exists() {
                eprintln!("[harness] could not delete network namespace {ns}");
            }
        }

        // 5. Remove the directories unless asked to keep them.
        if let Some(root) = self.root.take() {
            if std::env::var_os("RSWARM_KEEP_TEST_DIRS").is_some() {
                let kept = root.keep();
                eprintln!(
                    "[harness] kept test dir of `{}`: {}",
                    self.test_name,
                    kept.display()
                );
            } else if panicking {
                eprintln!(
                    "[harness] removing {} (set RSWARM_KEEP_TEST_DIRS=1 to keep it)",
                    root.path().display()
                );
                drop(root);
            } else {
                drop(root);
            }
        }
    }
}
