//! `container exec`: a process started with `runc exec` in a running container, its stdio carried
//! over the gRPC stream; with a terminal, runc hands us the pty master over a console socket.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;

use futures::Stream;
use rswarm_api::local::v1 as pb;
use rswarm_api::local::v1::exec_input::Input;
use rswarm_api::local::v1::exec_output::Output;
use rswarm_runtime::user;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{random_hex, Engine, EngineError};

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send + 'static>>;

fn out(o: Output) -> Result<pb::ExecOutput, Status> {
    Ok(pb::ExecOutput { output: Some(o) })
}

/// Writes the `process.json` runc exec takes: the container's own process, with our argv.
fn process_file(engine: &Engine, id: &str, start: &pb::ExecStart) -> Result<PathBuf, EngineError> {
    let dir = engine.bundle(id);
    let spec: serde_json::Value = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| EngineError::Runtime(format!("cannot read the bundle of container {id}")))?;
    let mut process = spec
        .get("process")
        .cloned()
        .ok_or_else(|| EngineError::Runtime("the container's spec has no process".into()))?;
    process["args"] = serde_json::json!(start.cmd);
    process["terminal"] = serde_json::json!(start.tty);
    if start.tty {
        process["consoleSize"] =
            serde_json::json!({"height": start.rows.max(1), "width": start.cols.max(1)});
    } else if let Some(obj) = process.as_object_mut() {
        obj.remove("consoleSize");
    }
    let env: Vec<String> = process
        .get("env")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    // The container's environment, then exec's `-e`, replacing by key (Docker's order).
    process["env"] = serde_json::json!(rswarm_runtime::spec::merge_env(&env, &start.env));
    if !start.workdir.is_empty() {
        if !start.workdir.starts_with('/') {
            return Err(EngineError::invalid(format!(
                "the working directory {:?} must be absolute",
                start.workdir
            )));
        }
        process["cwd"] = serde_json::json!(start.workdir);
    }
    if !start.user.is_empty() {
        let rootfs = dir.join("rootfs");
        let (passwd, group) = user::read_image_user_files(&rootfs);
        let u = user::resolve_user(Some(&start.user), passwd.as_deref(), group.as_deref())
            .map_err(|e| EngineError::invalid(e.to_string()))?;
        process["user"] =
            serde_json::json!({"uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids});
    }
    let path = dir.join(format!("exec-{}.json", random_hex(6)));
    std::fs::write(&path, serde_json::to_vec(&process).unwrap_or_default()).map_err(|e| {
        EngineError::Io {
            what: "write",
            path: path.clone(),
            source: e,
        }
    })?;
    Ok(path)
}

/// Starts the exec and returns its output stream.
pub async fn exec(
    engine: Engine,
    mut input: Streaming<pb::ExecInput>,
) -> Result<OutStream, Status> {
    let start = match input.message().await? {
        Some(pb::ExecInput {
            input: Some(Input::Start(s)),
        }) => s,
        _ => {
            return Err(Status::invalid_argument(
                "the first exec message must be `start`",
            ))
        }
    };
    if start.cmd.is_empty() {
        return Err(Status::invalid_argument("no command given to exec"));
    }
    let record = engine.record(&start.id)?;
    if !record.is_running() {
        return Err(Status::failed_precondition(format!(
            "container {} is not running",
            record.short_id()
        )));
    }
    let process = process_file(&engine, &record.id, &start)?;
    let (tx, rx) = mpsc::channel(64);
    if start.tty {
        run_tty(engine, record.id.clone(), process, start, input, tx).await?;
    } else {
        run_pipes(engine, record.id.clone(), process, start, input, tx)?;
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> Output,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(out(wrap(buf[..n].to_vec()))).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Feeds the client's stdin (and resizes) to the process until the client half-closes.
async fn feed<W: AsyncWrite + Unpin>(
    mut input: Streaming<pb::ExecInput>,
    mut stdin: Option<W>,
    resize: impl Fn(u16, u16),
) {
    while let Ok(Some(msg)) = input.message().await {
        match msg.input {
            Some(Input::Stdin(data)) => {
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                        stdin = None;
                    }
                }
            }
            Some(Input::StdinEof(_)) => stdin = None,
            Some(Input::Resize(size)) => resize(
                u16::try_from(size.rows).unwrap_or(u16::MAX),
                u16::try_from(size.cols).unwrap_or(u16::MAX),
            ),
            _ => {}
        }
    }
}

fn run_pipes(
    engine: Engine,
    id: String,
    process: PathBuf,
    start: pb::ExecStart,
    input: Streaming<pb::ExecInput>,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
) -> Result<(), Status> {
    let mut cmd = engine
        .runc()
        .exec_command(&id, &process, false, None, false, None);
    cmd.stdin(if start.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Status::internal(format!("cannot run the runtime for exec: {e}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    tokio::spawn(async move {
        let feeder = tokio::spawn(feed(input, stdin, |_, _| {}));
        let o = stdout.map(|s| tokio::spawn(pump(s, tx.clone(), Output::Stdout)));
        let e = stderr.map(|s| tokio::spawn(pump(s, tx.clone(), Output::Stderr)));
        let status = child.wait().await;
        for h in [o, e].into_iter().flatten() {
            let _ = h.await;
        }
        finish(feeder, &process, status, &tx).await;
    });
    Ok(())
}

/// The end of an exec: stop feeding stdin, drop the process file, send the exit code last.
async fn finish(
    feeder: tokio::task::JoinHandle<()>,
    process: &std::path::Path,
    status: std::io::Result<std::process::ExitStatus>,
    tx: &mpsc::Sender<Result<pb::ExecOutput, Status>>,
) {
    feeder.abort();
    let _ = std::fs::remove_file(process);
    let code = match status {
        Ok(s) => i64::from(s.code().unwrap_or(255)),
        Err(_) => 255,
    };
    let _ = tx.send(out(Output::ExitCode(code))).await;
}

/// A pseudo-terminal pair: we keep the master, runc gets the slave as its stdio.
fn open_pty(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, std::fs::File)> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::os::unix::fs::OpenOptionsExt;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?;
    set_size(&master, rows, cols);
    Ok((master, slave))
}

fn set_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let _ = rustix::termios::tcsetwinsize(fd, size);
}

/// With a terminal, runc (not detached) makes the container process's pty itself and copies it to
/// its own stdio, which is the slave of a pty of ours: we read and write the master. runc reads
/// the size from its stdin at start and again on SIGWINCH.
async fn run_tty(
    engine: Engine,
    id: String,
    process: PathBuf,
    start: pb::ExecStart,
    input: Streaming<pb::ExecInput>,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
) -> Result<(), Status> {
    let rows = u16::try_from(start.rows.max(1)).unwrap_or(u16::MAX);
    let cols = u16::try_from(start.cols.max(1)).unwrap_or(u16::MAX);
    let (master, slave) = open_pty(rows, cols)
        .map_err(|e| Status::internal(format!("cannot open a terminal: {e}")))?;
    let clone = |f: &std::fs::File| {
        f.try_clone()
            .map_err(|e| Status::internal(format!("cannot share the terminal: {e}")))
    };
    let mut cmd = engine
        .runc()
        .exec_command(&id, &process, true, None, false, None);
    cmd.stdin(clone(&slave)?)
        .stdout(clone(&slave)?)
        .stderr(slave)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Status::internal(format!("cannot run the runtime for exec: {e}")))?;
    drop(cmd);
    let runc_pid = child.id().and_then(|p| i32::try_from(p).ok());
    let resize_fd = master
        .try_clone()
        .map_err(|e| Status::internal(e.to_string()))?;
    let write_fd = master
        .try_clone()
        .map_err(|e| Status::internal(e.to_string()))?;
    let reader = tokio::fs::File::from_std(std::fs::File::from(master));
    let writer = tokio::fs::File::from_std(std::fs::File::from(write_fd));
    tokio::spawn(async move {
        let feeder = tokio::spawn(feed(input, Some(writer), move |r, c| {
            set_size(&resize_fd, r, c);
            if let Some(pid) = runc_pid {
                let _ = nix_winch(pid);
            }
        }));
        let pumper = tokio::spawn(pump(reader, tx.clone(), Output::Stdout));
        let status = child.wait().await;
        // The master read ends (EIO) once runc, the last holder of the slave, is gone.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), pumper).await;
        finish(feeder, &process, status, &tx).await;
    });
    Ok(())
}

/// Tells runc its terminal changed size.
fn nix_winch(pid: i32) -> std::io::Result<()> {
    let pid =
        rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("invalid pid"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::WINCH)?;
    Ok(())
}

/// A command run to completion in a container, without a terminal or stdin (health checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCapture {
    /// `None`: it did not finish within the timeout and was killed.
    pub exit_code: Option<i64>,
    /// The first bytes of its stdout and stderr, interleaved.
    pub output: String,
}

/// How much of a captured command's output is kept.
const CAPTURE_LIMIT: usize = 4096;

/// Reads `r` to its end, keeping at most `CAPTURE_LIMIT` bytes in `buf`.
async fn drain_into<R: AsyncRead + Unpin>(mut r: R, buf: &tokio::sync::Mutex<Vec<u8>>) {
    let mut chunk = vec![0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut b = buf.lock().await;
                let room = CAPTURE_LIMIT.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

impl Engine {
    /// Runs `argv` in the running container `key` as its own process runs (user, env, cwd), and
    /// waits for it at most `timeout`; then it is killed and `exit_code` is `None`.
    pub async fn exec_capture(
        &self,
        key: &str,
        argv: &[String],
        timeout: std::time::Duration,
    ) -> Result<ExecCapture, EngineError> {
        if argv.is_empty() {
            return Err(EngineError::invalid("no command given to exec"));
        }
        let record = self.record(key)?;
        if !record.is_running() {
            return Err(EngineError::Conflict(format!(
                "container {} is not running",
                record.short_id()
            )));
        }
        let start = pb::ExecStart {
            id: record.id.clone(),
            cmd: argv.to_vec(),
            ..Default::default()
        };
        let process = process_file(self, &record.id, &start)?;
        let pid_file = process.with_extension("pid");
        let mut cmd =
            self.runc()
                .exec_command(&record.id, &process, false, None, false, Some(&pid_file));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&process);
                return Err(EngineError::Runtime(format!(
                    "cannot run the runtime for exec: {e}"
                )));
            }
        };
        let output = tokio::sync::Mutex::new(Vec::new());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            let out = async {
                if let Some(s) = stdout {
                    drain_into(s, &output).await;
                }
            };
            let err = async {
                if let Some(s) = stderr {
                    drain_into(s, &output).await;
                }
            };
            let ((), (), status) = tokio::join!(out, err, child.wait());
            status
        };
        let result = tokio::time::timeout(timeout, run).await;
        let exit_code = match result {
            Ok(Ok(status)) => Some(i64::from(status.code().unwrap_or(255))),
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&process);
                let _ = std::fs::remove_file(&pid_file);
                return Err(EngineError::Runtime(format!(
                    "cannot wait for the exec'd process: {e}"
                )));
            }
            Err(_) => {
                // runc only relays signals: the process in the container must be killed itself.
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                None
            }
        };
        let _ = std::fs::remove_file(&process);
        let _ = std::fs::remove_file(&pid_file);
        let output = String::from_utf8_lossy(&output.into_inner()).into_owned();
        Ok(ExecCapture { exit_code, output })
    }
}
