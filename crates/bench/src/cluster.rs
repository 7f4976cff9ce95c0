//! A real cluster of `rswarm` processes on loopback: one manager (`rswarm init`) and workers
//! (`rswarm join`), each with its own state dir, socket and log files under one temp dir.
//!
//! Dropping a [`Cluster`] (also on error or interrupt) SIGKILLs and reaps every process it started
//! and then removes the temp dir.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::control::v1::{GetClusterRequest, ListNodesRequest, Node};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long the manager gets to print its join token and to answer on its socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// One `ListNodes` call.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// A join, or a node going down, that takes longer than this is a failure.
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of a daemon's log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// The worker join token in `rswarm init`'s output.
pub fn extract_token(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-')))
        .find(|w| w.starts_with("RSWTKN-1-") && w.len() > "RSWTKN-1-".len())
        .map(str::to_string)
}

/// The last `n` lines of a log file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process this benchmark started. Dropping it SIGKILLs (after a SIGCONT, in case it is
/// stopped) and reaps it.
pub struct Daemon {
    name: String,
    child: Child,
    stderr: PathBuf,
    reaped: bool,
}

impl Daemon {
    /// Starts `program args`, stdout and stderr to `dir/stdout.log` and `dir/stderr.log`.
    fn spawn(name: &str, program: &Path, args: &[OsString], dir: &Path) -> anyhow::Result<Daemon> {
        let stdout_path = dir.join("stdout.log");
        let stderr = dir.join("stderr.log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr)?)
            .env("NO_COLOR", "1")
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            stderr,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig`; refused once the process was reaped (its pid may be reused).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if self.reaped {
            bail!("{} has already exited", self.name);
        }
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("cannot send {sig} to {}", self.name))
    }

    /// Fails, quoting the log, if the process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if self.reaped {
            bail!("{} has already exited", self.name);
        }
        if let Some(status) = self.child.try_wait()? {
            self.reaped = true;
            bail!(
                "{} exited unexpectedly ({status}); the end of its log ({}):\n{}",
                self.name,
                self.stderr.display(),
                tail(&self.stderr, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// SIGCONT + SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A joined worker.
pub struct Worker {
    pub hostname: String,
    pub node_id: String,
    pub daemon: Daemon,
}

pub struct Cluster {
    // Field order is drop order: processes first, the directory they write to last.
    pub workers: Vec<Worker>,
    pub manager: Daemon,
    client: ControlClient<Channel>,
    rswarm: PathBuf,
    token: String,
    manager_addr: String,
    poll: Duration,
    dir: TempDir,
}

fn arg(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Starts a manager with `rswarm init` in a new temp dir under `parent` and connects to its
    /// unix socket. `poll` is the interval of every status poll.
    pub async fn start(bin_dir: &Path, parent: &Path, poll: Duration) -> anyhow::Result<Cluster> {
        let rswarm = bin_dir.join("rswarm");
        if !rswarm.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p rswarm` or pass --bin-dir",
                rswarm.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("rswarm-bench-")
            .tempdir_in(parent)
            .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
        let mdir = dir.path().join("manager");
        fs::create_dir(&mdir)?;
        let port = free_port()?;
        let manager_addr = format!("127.0.0.1:{port}");
        let socket = mdir.join("rswarm.sock");
        let args = [
            arg("init"),
            arg("--advertise-addr"),
            arg("127.0.0.1"),
            arg("--listen-addr"),
            arg(&manager_addr),
            arg("--state-dir"),
            mdir.join("state").into_os_string(),
            arg("--socket"),
            socket.clone().into_os_string(),
            arg("--hostname"),
            arg("bench-manager"),
        ];
        let mut manager = Daemon::spawn("the manager (rswarm init)", &rswarm, &args, &mdir)?;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let token = loop {
            let out = fs::read_to_string(mdir.join("stdout.log")).unwrap_or_default();
            if let Some(t) = extract_token(&out) {
                break t;
            }
            manager.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "rswarm init printed no join token within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    tail(&manager.stderr, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        let client = loop {
            let attempt = async {
                let channel = rswarm_ca::transport::unix_channel(&socket).await?;
                let mut client = ControlClient::new(channel);
                client.list_nodes(ListNodesRequest::default()).await?;
                anyhow::Ok(client)
            };
            match tokio::time::timeout(RPC_TIMEOUT, attempt).await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the manager does not answer on {} within {STARTUP_TIMEOUT:?}",
                        socket.display()
                    )))
                }
                Err(_) if Instant::now() > deadline => {
                    bail!("the manager's socket {} hangs", socket.display())
                }
                _ => {}
            }
            manager.check_running()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        Ok(Cluster {
            workers: Vec::new(),
            manager,
            client,
            rswarm,
            token,
            manager_addr,
            poll,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The manager's node list, bounded by [`RPC_TIMEOUT`].
    pub async fn nodes(&mut self) -> anyhow::Result<Vec<Node>> {
        let resp = tokio::time::timeout(
            RPC_TIMEOUT,
            self.client.list_nodes(ListNodesRequest::default()),
        )
        .await
        .context("ListNodes timed out")?
        .context("ListNodes failed")?;
        Ok(resp.into_inner().nodes)
    }

    /// The cluster's agent heartbeat period.
    pub async fn heartbeat_period(&mut self) -> anyhow::Result<Duration> {
        let resp = tokio::time::timeout(RPC_TIMEOUT, self.client.get_cluster(GetClusterRequest {}))
            .await
            .context("GetCluster timed out")?
            .context("GetCluster failed")?;
        Ok(Duration::from_millis(resp.into_inner().heartbeat_period_ms))
    }

    /// Spawns `rswarm join` as worker number `n` and returns the time from the spawn until the
    /// manager lists it as ready.
    pub async fn join(&mut self, n: usize) -> anyhow::Result<Duration> {
        let hostname = format!("bench-w{n:02}");
        let wdir = self.dir.path().join(&hostname);
        fs::create_dir(&wdir)?;
        let args = [
            arg("join"),
            arg("--token"),
            arg(&self.token),
            arg("--advertise-addr"),
            arg("127.0.0.1"),
            arg("--state-dir"),
            wdir.join("state").into_os_string(),
            arg("--socket"),
            wdir.join("rswarm.sock").into_os_string(),
            arg("--hostname"),
            arg(&hostname),
            arg(&self.manager_addr),
        ];
        let start = Instant::now();
        let mut daemon = Daemon::spawn(
            &format!("worker {hostname} (rswarm join)"),
            &self.rswarm,
            &args,
            &wdir,
        )?;
        loop {
            let nodes = self.nodes().await?;
            if let Some(node) = nodes
                .iter()
                .find(|n| n.hostname == hostname && n.status == "ready")
            {
                let elapsed = start.elapsed();
                self.workers.push(Worker {
                    hostname,
                    node_id: node.id.clone(),
                    daemon,
                });
                return Ok(elapsed);
            }
            daemon.check_running()?;
            if start.elapsed() > STATUS_TIMEOUT {
                bail!(
                    "{hostname} was not ready {STATUS_TIMEOUT:?} after `rswarm join`; its log:\n{}",
                    tail(&daemon.stderr, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Polls until the manager lists `node_id` with `status`; returns the time since `start`.
    pub async fn wait_status(
        &mut self,
        node_id: &str,
        status: &str,
        start: Instant,
    ) -> anyhow::Result<Duration> {
        loop {
            let nodes = self.nodes().await?;
            if nodes.iter().any(|n| n.id == node_id && n.status == status) {
                return Ok(start.elapsed());
            }
            if !nodes.iter().any(|n| n.id == node_id) {
                bail!("node {node_id} vanished from the node list");
            }
            if start.elapsed() > STATUS_TIMEOUT {
                bail!("node {node_id} was not {status} within {STATUS_TIMEOUT:?}");
            }
            self.manager.check_running()?;
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Takes worker `i` down with `how` and returns the time until the manager lists it as
    /// down. The worker's process is killed and reaped afterwards either way.
    pub async fn take_down(&mut self, i: usize, how: Failure) -> anyhow::Result<Duration> {
        let worker = self.workers.get(i).context("no such worker")?;
        let node_id = worker.node_id.clone();
        let start = Instant::now();
        worker.daemon.signal(how.signal())?;
        let result = self.wait_status(&node_id, "down", start).await;
        if let Some(w) = self.workers.get_mut(i) {
            w.daemon.kill();
        }
        result
    }
}

/// How a worker is taken down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `kill -9`: the kernel closes its connections, the manager sees the session end.
    Kill,
    /// `SIGSTOP`: the process freezes with its connections open; only missed heartbeats tell.
    Stop,
}

impl Failure {
    fn signal(self) -> Signal {
        match self {
            Failure::Kill => Signal::SIGKILL,
            Failure::Stop => Signal::SIGSTOP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_in_init_output() {
        let out = "Swarm initialized: current node (abc) is now a manager.\n\n\
                   To add a worker to this swarm, run the following command:\n\n    \
                   rswarm join --token RSWTKN-1-abc123-def456 127.0.0.1:4242\n";
        assert_eq!(
            extract_token(out).as_deref(),
            Some("RSWTKN-1-abc123-def456")
        );
        assert_eq!(
            extract_token("token: 'RSWTKN-1-x-y'.").as_deref(),
            Some("RSWTKN-1-x-y")
        );
        assert_eq!(extract_token("Swarm initialized"), None);
        assert_eq!(extract_token("RSWTKN-1-"), None);
    }

    #[test]
    fn a_dropped_daemon_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let mut d =
            Daemon::spawn("sleep", Path::new("/bin/sleep"), &[arg("30")], dir.path()).unwrap();
        let pid = d.pid();
        d.check_running().unwrap();
        d.signal(Signal::SIGSTOP).unwrap();
        drop(d);
        // Reaped: no /proc entry (or, if the pid was reused at once, not our sleep).
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "sleep");
    }

    #[test]
    fn an_exited_daemon_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::spawn(
            "sh",
            Path::new("/bin/sh"),
            &[arg("-c"), arg("echo boom >&2; exit 3")],
            dir.path(),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match d.check_running() {
                Err(e) => break e,
                Ok(()) if Instant::now() > deadline => panic!("sh did not exit"),
                Ok(()) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let msg = format!("{err:#}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(
            d.signal(Signal::SIGTERM).is_err(),
            "no signals after reaping"
        );
    }
}
