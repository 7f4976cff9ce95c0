//! The per-container shim (`rswarm-shim`) and the agent's side of it (docs/rfcs/002-containers.md,
//! "The shim").
//!
//! The shim is synchronous and small: it creates the container with `runc create` (or creates and
//! starts it with `runc run --detach`), reports the init pid on its stdout, copies the container's
//! stdout/stderr into `json.log`, reaps the container's init and writes `exit.json`. It runs in a
//! process group of its own with the terminating signals blocked, so it outlives agent restarts;
//! the agent waits for it with a pidfd.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::logs::{format_time, LogStream, LogWriter};
use crate::runc::error_message;

/// The container's json-file log in the bundle.
pub const LOG_FILE: &str = "json.log";
/// Written by the shim when the container's init has exited.
pub const EXIT_FILE: &str = "exit.json";
/// runc's `--pid-file` for `create`.
pub const PID_FILE: &str = "init.pid";
/// runc's `--log` for `create`.
pub const RUNC_LOG_FILE: &str = "runc.log";
/// The shim's own diagnostics (its stderr).
pub const SHIM_LOG_FILE: &str = "shim.log";

/// How long the shim waits, after init has exited, for the log pipes to close (a daemonized
/// grandchild may hold them open forever).
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`spawn_shim`] waits for the shim's report (runc create included).
const SPAWN_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the shim and of the agent's shim helpers.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad command line.
    #[error("{0} (usage: rswarm-shim --id ID --bundle DIR --runc RUNC --runc-root ROOT [--log-max-size BYTES] [--log-max-files N])")]
    Usage(String),
    /// The shim binary could not be started.
    #[error("cannot run the shim {path}: {source} (build it with `cargo build -p rswarm --bin rswarm-shim` or check --shim PATH)")]
    Spawn {
        /// The shim binary.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `runc create` failed; `message` is runc's own error.
    #[error("creating container {id} failed: {message}")]
    Create {
        /// The container id.
        id: String,
        /// runc's message.
        message: String,
    },
    /// The shim ended without reporting.
    #[error("the shim for container {id} did not report ({detail}); see {bundle}/shim.log")]
    NoReply {
        /// The container id.
        id: String,
        /// The bundle.
        bundle: PathBuf,
        /// What is known (its stderr, exit status).
        detail: String,
    },
    /// The shim reported something unreadable.
    #[error("the shim for container {id} printed {line:?}, not its JSON report: is the shim binary the same version as the agent?")]
    BadReply {
        /// The container id.
        id: String,
        /// What it printed.
        line: String,
    },
    /// The shim did not report within the time limit.
    #[error("the shim for container {id} did not report within 2 minutes; runc create may be stuck, see {bundle}/shim.log")]
    Timeout {
        /// The container id.
        id: String,
        /// The bundle.
        bundle: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `exit.json` is not valid.
    #[error("{path} is not a valid exit record ({source}); remove it to let the container be cleaned up")]
    BadExitFile {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Waiting for the shim failed.
    #[error("cannot wait for shim process {pid}: {source}")]
    Wait {
        /// The shim's pid.
        pid: i32,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The shim's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    /// The container id (runc's id).
    pub id: String,
    /// The bundle directory (holds `config.json`; logs and `exit.json` go here).
    pub bundle: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// Rotate `json.log` at this size in bytes; 0 never rotates (Docker's default).
    pub log_max_size: u64,
    /// Keep this many log files, the live one included.
    pub log_max_files: u32,
    /// Start the container at once (`runc run --detach`) instead of leaving it created for a
    /// later `runc start` (for callers that need nothing done between the two).
    pub start: bool,
    /// Set by the shim itself on the process it re-executes; not for callers.
    pub detached: bool,
}

impl ShimArgs {
    /// Arguments for container `id` with default log settings (no rotation).
    pub fn new(
        id: impl Into<String>,
        bundle: impl Into<PathBuf>,
        runc: impl Into<PathBuf>,
        runc_root: impl Into<PathBuf>,
    ) -> Self {
        ShimArgs {
            id: id.into(),
            bundle: bundle.into(),
            runc: runc.into(),
            runc_root: runc_root.into(),
            log_max_size: 0,
            log_max_files: 1,
            start: false,
            detached: false,
        }
    }

    /// Parses the arguments after the program name (`--flag value` or `--flag=value`).
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, ShimError> {
        let mut id = None;
        let mut bundle = None;
        let mut runc = None;
        let mut runc_root = None;
        let mut log_max_size = 0u64;
        let mut log_max_files = 1u32;
        let mut detached = false;
        let mut start = false;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let arg = arg
                .into_string()
                .map_err(|a| ShimError::Usage(format!("argument {a:?} is not UTF-8")))?;
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v))),
                _ => (arg.clone(), None),
            };
            if flag == "--detached" {
                detached = true;
                continue;
            }
            if flag == "--start" {
                start = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| ShimError::Usage(format!("{flag} needs a value")))
            };
            let number = |v: OsString| -> Result<u64, ShimError> {
                v.to_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ShimError::Usage(format!("{flag} needs a number, not {v:?}")))
            };
            match flag.as_str() {
                "--id" => {
                    id = Some(
                        value()?
                            .into_string()
                            .map_err(|v| ShimError::Usage(format!("--id {v:?} is not UTF-8")))?,
                    )
                }
                "--bundle" => bundle = Some(PathBuf::from(value()?)),
                "--runc" => runc = Some(PathBuf::from(value()?)),
                "--runc-root" => runc_root = Some(PathBuf::from(value()?)),
                "--log-max-size" => log_max_size = number(value()?)?,
                "--log-max-files" => {
                    log_max_files = u32::try_from(number(value()?)?)
                        .map_err(|_| ShimError::Usage("--log-max-files is too large".into()))?
                }
                other => return Err(ShimError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let missing = |what: &str| ShimError::Usage(format!("missing {what}"));
        let id = id.ok_or_else(|| missing("--id"))?;
        if id.is_empty() || id.contains(['/', '\0']) {
            return Err(ShimError::Usage(format!("invalid container id {id:?}")));
        }
        Ok(ShimArgs {
            id,
            bundle: bundle.ok_or_else(|| missing("--bundle"))?,
            runc: runc.ok_or_else(|| missing("--runc"))?,
            runc_root: runc_root.ok_or_else(|| missing("--runc-root"))?,
            log_max_size,
            log_max_files,
            start,
            detached,
        })
    }

    /// The command line that [`ShimArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--bundle".into(),
            self.bundle.clone().into(),
            "--runc".into(),
            self.runc.clone().into(),
            "--runc-root".into(),
            self.runc_root.clone().into(),
            "--log-max-size".into(),
            self.log_max_size.to_string().into(),
            "--log-max-files".into(),
            self.log_max_files.to_string().into(),
        ];
        if self.start {
            v.push("--start".into());
        }
        if self.detached {
            v.push("--detached".into());
        }
        v
    }
}

/// How the container's init ended, as written to `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit status; 128 + signal number when killed by a signal (like Docker).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// Whether the kernel OOM-killed a process of the container's memory cgroup.
    pub oom_killed: bool,
    /// When the shim saw init exit (RFC3339, UTC).
    pub finished_at: String,
}

impl ExitInfo {
    /// `finished_at` parsed (`None` if it is not RFC3339).
    pub fn finished_at_time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(
            &self.finished_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    }
}

/// The shim's one-line report on its stdout.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shim_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn report(r: &Report) {
    let line = serde_json::to_string(r).unwrap_or_else(|_| String::from("{\"ok\":false}"));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn report_error(message: impl Into<String>) {
    report(&Report {
        ok: false,
        pid: None,
        shim_pid: None,
        error: Some(message.into()),
    });
}

/// Writes one line to the shim's stderr (`<bundle>/shim.log` once detached).
fn note(id: &str, msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{} rswarm-shim[{}] {id}: {msg}",
        format_time(OffsetDateTime::now_utc()),
        std::process::id()
    );
}

/// The shim program. Returns the process exit code.
///
/// Without `--detached` it re-executes itself detached, passing on its stdout, and returns 0 at
/// once (1 if that fails, after printing `{"ok":false,…}`). The detached shim does the work
/// described in the module documentation.
pub fn shim_main(args: ShimArgs) -> i32 {
    if args.detached {
        run_detached(args)
    } else {
        launch_detached(&args)
    }
}

fn launch_detached(args: &ShimArgs) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            report_error(format!("the shim cannot find its own executable: {e}"));
            return 1;
        }
    };
    let mut detached = args.clone();
    detached.detached = true;
    // The child calls setsid() itself (it is not a process-group leader, so that succeeds).
    match Command::new(&exe)
        .args(detached.to_args())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(_child) => 0,
        Err(e) => {
            report_error(format!("the shim cannot re-execute {}: {e}", exe.display()));
            1
        }
    }
}

fn run_detached(args: ShimArgs) -> i32 {
    let id = args.id.clone();
    // A new session: the agent's session, terminal and process group no longer reach us.
    let _ = nix::unistd::setsid();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        report_error(format!("cannot become a child subreaper: {e}"));
        return 1;
    }
    let bundle = match std::fs::canonicalize(&args.bundle) {
        Ok(b) => b,
        Err(e) => {
            report_error(format!("bundle {}: {e}", args.bundle.display()));
            return 1;
        }
    };
    if let Err(e) = std::env::set_current_dir(&bundle) {
        report_error(format!("cannot enter bundle {}: {e}", bundle.display()));
        return 1;
    }
    if let Err(e) = redirect_stdio(&bundle) {
        report_error(format!("cannot set up the shim's stdio: {e}"));
        return 1;
    }
    note(&id, format_args!("started for bundle {}", bundle.display()));
    match supervise(&args, &bundle) {
        Ok(()) => 0,
        Err(message) => {
            note(&id, format_args!("{message}"));
            1
        }
    }
}

fn redirect_stdio(bundle: &Path) -> std::io::Result<()> {
    let null = File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle.join(SHIM_LOG_FILE))?;
    nix::unistd::dup2_stderr(&log)?;
    Ok(())
}

/// Where the container's memory cgroup is, to read its OOM-kill counter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MemoryCgroup {
    V1(String),
    V2(String),
}

/// Runs runc create, reports, logs and reaps; on failure returns the message already reported.
fn supervise(args: &ShimArgs, bundle: &Path) -> Result<(), String> {
    let id = &args.id;
    for stale in [EXIT_FILE, PID_FILE] {
        let _ = std::fs::remove_file(bundle.join(stale));
    }
    let fail = |message: String| {
        report_error(message.clone());
        message
    };
    let writer = LogWriter::open(
        &bundle.join(LOG_FILE),
        args.log_max_size,
        args.log_max_files,
    )
    .map_err(|e| fail(e.to_string()))?;
    let writer = Arc::new(Mutex::new(writer));
    let (out_r, out_w) = std::io::pipe().map_err(|e| fail(format!("cannot create a pipe: {e}")))?;
    let (err_r, err_w) = std::io::pipe().map_err(|e| fail(format!("cannot create a pipe: {e}")))?;

    let runc_log = bundle.join(RUNC_LOG_FILE);
    let runc_log_start = std::fs::metadata(&runc_log).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&args.runc);
    cmd.arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(&runc_log)
        .arg("--log-format")
        .arg("json")
        .args(if args.start {
            &["run", "--detach"][..]
        } else {
            &["create"][..]
        })
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(bundle.join(PID_FILE))
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    let spawned = cmd.spawn();
    // Only the container's end (or SIGKILL) ends the shim from now on. Blocked only after runc is
    // spawned: a child inherits the signal mask, and runc (and through it the container's
    // processes) must not start with SIGTERM blocked.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    // Our copies of the write ends go away with the command: only runc and the container
    // hold them now, so the readers see EOF when the container's processes are gone.
    drop(cmd);
    let mut runc = spawned.map_err(|e| {
        fail(if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "runc not found at {}: install the Debian package `runc` or pass --runtime PATH",
                args.runc.display()
            )
        } else {
            format!("cannot run {}: {e}", args.runc.display())
        })
    })?;

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let readers = [
        spawn_reader(
            out_r,
            LogStream::Stdout,
            writer.clone(),
            done_tx.clone(),
            id,
        ),
        spawn_reader(err_r, LogStream::Stderr, writer.clone(), done_tx, id),
    ];

    let status = runc
        .wait()
        .map_err(|e| fail(format!("waiting for runc create: {e}")))?;
    if !status.success() {
        let log = read_from(&runc_log, runc_log_start);
        let message = error_message(&log)
            .unwrap_or_else(|| format!("runc create exited with {status} and logged nothing"));
        report_error(message.clone());
        wait_readers(
            &done_rx,
            readers.iter().flatten().count(),
            Instant::now() + PIPE_DRAIN_TIMEOUT,
        );
        return Err(message);
    }
    let pid_path = bundle.join(PID_FILE);
    let init_pid: i32 = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            fail(format!(
                "runc create succeeded but wrote no pid to {}",
                pid_path.display()
            ))
        })?;
    let cgroup = memory_cgroup_of(init_pid).or_else(|| memory_cgroup_from_config(bundle));

    report(&Report {
        ok: true,
        pid: Some(init_pid),
        shim_pid: Some(std::process::id() as i32),
        error: None,
    });
    // Close our stdout so the agent's read ends.
    match File::options().write(true).open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdout(&null) {
                note(id, format_args!("cannot close stdout: {e}"));
            }
        }
        Err(e) => note(id, format_args!("cannot open /dev/null: {e}")),
    }
    note(id, format_args!("container created, init pid {init_pid}"));

    let (exit_code, signal) = reap_until(init_pid, id);
    let finished_at = format_time(OffsetDateTime::now_utc());
    if !wait_readers(
        &done_rx,
        readers.iter().flatten().count(),
        Instant::now() + PIPE_DRAIN_TIMEOUT,
    ) {
        note(id, format_args!("log pipes still open {PIPE_DRAIN_TIMEOUT:?} after init exited (a leftover process holds them); not waiting longer"));
    }
    {
        let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.flush_all() {
            note(id, format_args!("{e}"));
        }
    }
    let oom_kills = cgroup.as_ref().and_then(oom_kill_count);
    if cgroup.is_some() && oom_kills.is_none() {
        note(
            id,
            format_args!("cannot read the OOM-kill counter of {cgroup:?}"),
        );
    }
    let info = ExitInfo {
        exit_code,
        signal,
        oom_killed: oom_kills.unwrap_or(0) > 0,
        finished_at,
    };
    if let Err(e) = write_exit(bundle, &info) {
        note(id, format_args!("cannot write {EXIT_FILE}: {e}"));
        return Err(e.to_string());
    }
    note(id, format_args!("init exited: {info:?}"));
    Ok(())
}

fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(offset));
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

fn spawn_reader(
    mut pipe: std::io::PipeReader,
    stream: LogStream,
    writer: Arc<Mutex<LogWriter>>,
    done: mpsc::Sender<()>,
    id: &str,
) -> Option<std::thread::JoinHandle<()>> {
    let id = id.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("log-{}", stream.as_str()))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut reported = false;
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        note(&id, format_args!("reading {}: {e}", stream.as_str()));
                        break;
                    }
                };
                let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = w.write_line(stream, &buf[..n]) {
                    if !reported {
                        note(&id, format_args!("{e}"));
                        reported = true;
                    }
                }
            }
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.flush_partial(stream);
            drop(w);
            let _ = done.send(());
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            note("", format_args!("cannot start a log thread: {e}"));
            None
        }
    }
}

/// Waits until `n` readers have finished or `deadline` passes; true if all finished.
fn wait_readers(done: &mpsc::Receiver<()>, n: usize, deadline: Instant) -> bool {
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            return false;
        }
    }
    true
}

/// Reaps children (we are a subreaper) until `init` exits; returns (exit code, signal).
fn reap_until(init: i32, id: &str) -> (i32, Option<i32>) {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == init => return (code, None),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == init => {
                let n = sig as i32;
                return (128 + n, Some(n));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                // Init is not our child (should not happen): poll for it to vanish.
                note(
                    id,
                    format_args!("init {init} is not our child; polling /proc"),
                );
                while Path::new(&format!("/proc/{init}")).exists() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return (255, None);
            }
            Err(e) => {
                note(id, format_args!("waitpid: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Parses `/proc/<pid>/cgroup` text for the memory controller's path.
fn parse_proc_cgroup(text: &str) -> Option<MemoryCgroup> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(path.to_string()));
        }
        if hier == "0" && controllers.is_empty() {
            v2 = Some(MemoryCgroup::V2(path.to_string()));
        }
    }
    v2
}

fn memory_cgroup_of(pid: i32) -> Option<MemoryCgroup> {
    parse_proc_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Fallback: `linux.cgroupsPath` of config.json (absolute paths only).
fn memory_cgroup_from_config(bundle: &Path) -> Option<MemoryCgroup> {
    let text = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let path = v.get("linux")?.get("cgroupsPath")?.as_str()?;
    if !path.starts_with('/') {
        return None;
    }
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        Some(MemoryCgroup::V1(path.to_string()))
    } else {
        Some(MemoryCgroup::V2(path.to_string()))
    }
}

/// The `oom_kill N` value from a cgroup file's text.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

fn oom_kill_count(cg: &MemoryCgroup) -> Option<u64> {
    let candidates = match cg {
        MemoryCgroup::V1(p) => vec![format!("/sys/fs/cgroup/memory{p}/memory.oom_control")],
        MemoryCgroup::V2(p) => vec![
            format!("/sys/fs/cgroup{p}/memory.events"),
            format!("/sys/fs/cgroup/unified{p}/memory.events"),
        ],
    };
    candidates.iter().find_map(|f| {
        std::fs::read_to_string(f)
            .ok()
            .as_deref()
            .and_then(parse_oom_kill)
    })
}

/// Writes `exit.json` atomically (temporary file, fsync, rename).
fn write_exit(bundle: &Path, info: &ExitInfo) -> std::io::Result<()> {
    let tmp = bundle.join(format!("{EXIT_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(info).map_err(std::io::Error::other)?)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, bundle.join(EXIT_FILE))
}

/// What [`spawn_shim`] learned: the container's init pid (for `/proc/<pid>/ns/net`) and the
/// detached shim's pid (for [`wait_shim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimStarted {
    /// The container's init process (still in runc's `created` state).
    pub pid: i32,
    /// The detached shim.
    pub shim_pid: i32,
}

/// Starts `shim_binary` for `args` (agent side) detached, in its own process group, and reads its
/// report. On success the container is created (and started, with `args.start`); otherwise the
/// caller sets up networking and runs `runc start`. On failure the error carries runc's own message.
pub async fn spawn_shim(shim_binary: &Path, args: &ShimArgs) -> Result<ShimStarted, ShimError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    // Started straight in its detached form, in a process group of its own so that signals to
    // the agent's group do not reach it (it cannot call setsid as a group leader, and needs not:
    // it has no terminal and blocks the terminating signals). It stays our child while we live
    // (tokio reaps it once the handle is dropped) and becomes init's when we die.
    let mut detached = args.clone();
    detached.detached = true;
    let mut child = tokio::process::Command::new(shim_binary)
        .args(detached.to_args())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ShimError::Spawn {
            path: shim_binary.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // The detached shim moves its stderr to shim.log at once; collect what comes before that.
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(e) = stderr {
            let _ = e.take(64 * 1024).read_to_end(&mut buf).await;
        }
        buf
    });
    let read_line = async move {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
        }
        line
    };
    let line = match tokio::time::timeout(SPAWN_TIMEOUT, read_line).await {
        Ok(line) => line,
        Err(_) => {
            return Err(ShimError::Timeout {
                id: args.id.clone(),
                bundle: args.bundle.clone(),
            })
        }
    };
    let line = line.trim();
    if line.is_empty() {
        let status = tokio::time::timeout(SPAWN_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("still running")));
        let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut detail = match status {
            Ok(s) => format!("first shim process exited with {s}"),
            Err(e) => format!("cannot wait for the first shim process: {e}"),
        };
        let stderr = String::from_utf8_lossy(&stderr);
        if !stderr.trim().is_empty() {
            detail.push_str(": ");
            detail.push_str(stderr.trim());
        }
        return Err(ShimError::NoReply {
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            detail,
        });
    }
    let bad = || ShimError::BadReply {
        id: args.id.clone(),
        line: line.to_string(),
    };
    let r: Report = serde_json::from_str(line).map_err(|_| bad())?;
    match r {
        Report {
            ok: true,
            pid: Some(pid),
            shim_pid: Some(shim_pid),
            ..
        } => Ok(ShimStarted { pid, shim_pid }),
        Report {
            ok: false, error, ..
        } => {
            // The shim exits right after reporting a failed create.
            let _ = tokio::time::timeout(SPAWN_TIMEOUT, child.wait()).await;
            Err(ShimError::Create {
                id: args.id.clone(),
                message: error.unwrap_or_else(|| "the shim gave no reason".into()),
            })
        }
        _ => Err(bad()),
    }
}

/// Waits until process `shim_pid` has exited (via a pidfd, so it works for a shim this process
/// did not start). Returns at once if it no longer exists.
pub async fn wait_shim(shim_pid: i32) -> Result<(), ShimError> {
    let Some(pid) = rustix::process::Pid::from_raw(shim_pid) else {
        return Ok(());
    };
    let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => {
            return Err(ShimError::Wait {
                pid: shim_pid,
                source: e.into(),
            })
        }
    };
    // `with_interest` is deprecated in tokio 1.54 because a generic `T: AsRawFd` could hand out a
    // different fd later; an `OwnedFd` cannot, so this use is sound, and the replacement
    // (`register_with_interest`) is an `unsafe fn`, which the workspace forbids.
    #[allow(deprecated)]
    let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).map_err(
        |source| ShimError::Wait {
            pid: shim_pid,
            source,
        },
    )?;
    let _guard = afd.readable().await.map_err(|source| ShimError::Wait {
        pid: shim_pid,
        source,
    })?;
    Ok(())
}

/// Reads `<bundle>/exit.json`; `None` if the shim has not written it (yet).
pub fn read_exit(bundle: &Path) -> Result<Option<ExitInfo>, ShimError> {
    let path = bundle.join(EXIT_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ShimError::Io { path, source }),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| ShimError::BadExitFile { path, source })
}

/// Whether `shim_pid` is still the shim of container `id` (its command line has `--id <id>`);
/// used to re-adopt shims after an agent restart without trusting a recycled pid.
pub fn shim_alive(shim_pid: i32, id: &str) -> bool {
    if shim_pid <= 0 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{shim_pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
        || args.iter().any(|a| *a == format!("--id={id}").as_bytes())
}

/// Reads the pid runc wrote for a container's init, if any.
pub fn read_init_pid(bundle: &Path) -> Option<i32> {
    std::fs::read_to_string(bundle.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn args_round_trip() {
        let mut a = ShimArgs::new("c1", "/b", "/usr/sbin/runc", "/r");
        a.log_max_size = 1000;
        a.log_max_files = 3;
        assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        a.detached = true;
        assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        let b = ShimArgs::parse(os(&[
            "--id=x",
            "--bundle=/b",
            "--runc",
            "runc",
            "--runc-root",
            "/r",
        ]))
        .unwrap();
        assert_eq!(b.id, "x");
        assert_eq!(b.log_max_size, 0);
    }

    #[test]
    fn args_errors_say_what_is_wrong() {
        let e = ShimArgs::parse(os(&["--id", "x"])).unwrap_err().to_string();
        assert!(e.contains("missing --bundle") && e.contains("usage"), "{e}");
        let e = ShimArgs::parse(os(&["--bogus"])).unwrap_err().to_string();
        assert!(e.contains("unknown argument"), "{e}");
        let e = ShimArgs::parse(os(&["--log-max-size", "big"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a number"), "{e}");
        let e = ShimArgs::parse(os(&["--id"])).unwrap_err().to_string();
        assert!(e.contains("needs a value"), "{e}");
    }

    #[test]
    fn cgroup_and_oom_parsing() {
        let v1 = "12:pids:/a\n4:memory:/rswarm/c1\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            Some(MemoryCgroup::V1("/rswarm/c1".into()))
        );
        let v1b = "3:cpu,memory:/x\n";
        assert_eq!(parse_proc_cgroup(v1b), Some(MemoryCgroup::V1("/x".into())));
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/c\n"),
            Some(MemoryCgroup::V2("/system.slice/c".into()))
        );
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn exit_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(dir.path()).unwrap(), None);
        let info = ExitInfo {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: format_time(OffsetDateTime::now_utc()),
        };
        write_exit(dir.path(), &info).unwrap();
        assert_eq!(read_exit(dir.path()).unwrap(), Some(info.clone()));
        assert!(info.finished_at_time().is_some());
        let text = std::fs::read_to_string(dir.path().join(EXIT_FILE)).unwrap();
        assert!(text.contains("\"signal\":9"), "{text}");
        std::fs::write(dir.path().join(EXIT_FILE), "{").unwrap();
        assert!(matches!(
            read_exit(dir.path()),
            Err(ShimError::BadExitFile { .. })
        ));
    }

    #[test]
    fn shim_alive_checks_the_command_line() {
        let me = std::process::id() as i32;
        assert!(!shim_alive(me, "definitely-not-an-argument-of-this-test"));
        assert!(!shim_alive(0, "x"));
        assert!(!shim_alive(i32::MAX, "x"));
    }

    #[tokio::test]
    async fn wait_shim_returns_for_gone_and_exiting_processes() {
        wait_shim(i32::MAX).await.unwrap();
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        let waiter = tokio::spawn(wait_shim(pid));
        let _ = child.wait().await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
