//! `rswarm-bench-overlay`: the overlay's data path against the bare underlay and Docker Swarm's
//! overlay on the same two test hosts, and how soon a new task is reachable, one table.
//!
//! 1. iperf3 TCP (`--seconds`, `--streams`) from host 1 to host 2: between the two hosts'
//!    namespaces (the underlay), between the two tasks of a global service on the `benchnet`
//!    overlay (rswarm), and the same on Docker Swarm's overlay. iperf3 is the host's, run inside
//!    each task's network namespace with `nsenter --net=/proc/PID/ns/net` (the image has none).
//!    Runs are interleaved: run k is one underlay run, then the two overlays back to back (rswarm
//!    first in odd runs, Swarm first in even ones), so that a run's three figures (receiver's
//!    rate, `iperf3 -J`) are taken seconds apart: this machine's speed drifts by ±15% over
//!    minutes, which would bias a comparison of figures taken minutes apart. Each Gbit/s row is
//!    the p50 over `--runs` runs; the ratios (and their goals) are the median of the per-run
//!    ratios, with their min–max.
//! 2. RUNNING → reachable (`--reach-samples` times per system): a service pinned to host 1 is
//!    scaled 0 → 1; as soon as the manager's task list gives the task its overlay address, the
//!    steady task on host 2 pings it every 2 ms (`ping -D`); the figure is the first reply's time
//!    minus the task's RUNNING status timestamp as reported by the task list (both clocks are
//!    this machine's). Negative values (a reply before RUNNING was reported) count as 0 and are
//!    counted. For context, the time from the `service scale` command to the first reply is shown
//!    too. rswarm's samples come first, then Swarm's, after all the iperf3 runs (both clusters
//!    still up).
//!
//! Topology (crate::lab): two host namespaces on a bridge in a "switch" namespace, 198.19.42.K/24,
//! veths of MTU 1500, no route anywhere else; a registry for rswarm's image in the switch. Both
//! systems' clusters are up at once on the same hosts, for all the runs: rswarm's VXLAN uses UDP
//! 4789, Docker Swarm's UDP 7789 (`swarm init --data-path-port`), so their VXLAN sockets do not
//! collide. With `--no-swarm`, only rswarm's cluster is started (run k: underlay, then rswarm).
//!
//! Must run as root. Everything it creates (namespaces, processes, containers, cgroups, mounts,
//! directories, the iptables rules the daemons add inside the lab's namespaces) is removed when
//! the run ends, fails or is interrupted (Ctrl-C); nothing is routed or NATed to the outside and
//! the root namespace's networking is not touched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use clap::Parser;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::control::v1::ListTasksRequest;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::lab::{
    bin_dir, check_tools, docker_cmd, docker_get, docker_get_opt, interrupted, machine_line,
    run_cmd, say, start_rswarm, start_swarm, url_encode, version_of, Lab, RswarmCluster,
    SwarmCluster, RPC_TIMEOUT, RSWARM_IMAGE, SUBNET, SWARM_IMAGE,
};
use crate::stats::{fmt_duration, fmt_period, percentile, Summary};
use crate::table::{fmt_ratio, yes_no, Align, Table};

/// Goal: rswarm's overlay at least this multiple of Swarm's overlay (median of per-run ratios).
pub const GOAL_VS_SWARM: f64 = 1.05;
/// Goal: rswarm's overlay at least this fraction of the underlay (median of per-run ratios).
pub const GOAL_VS_UNDERLAY: f64 = 0.85;
/// Goal: RUNNING → reachable from another host, p99.
pub const REACH_GOAL: Duration = Duration::from_millis(200);
/// Docker Swarm 20.10's overlay and the underlay beside it, measured on this machine
/// (REFERENCE.md §2); with --no-swarm, Swarm's overlay is estimated as this run's underlay times
/// their ratio, run by run (absolute rates follow the machine's load).
pub const SWARM_OVERLAY_REF_GBPS: f64 = 13.1;
pub const UNDERLAY_REF_GBPS: f64 = 16.9;

const HOSTS: usize = 2;
/// Docker Swarm's VXLAN port (`swarm init --data-path-port`): rswarm's overlay holds UDP 4789 in
/// the same host namespaces.
const SWARM_DATA_PATH_PORT: &str = "7789";
const NETNS_PREFIX: &str = "rsbov-";
const NETWORK: &str = "benchnet";
/// The global service whose two tasks carry the iperf3 traffic (and probe reachability).
const PERF: &str = "perf";
/// The service scaled 0 → 1 on host 1 for the reachability samples.
const REACH: &str = "reach";
/// The command of every task: busybox `sleep` as PID 1 (stopped with SIGKILL at once: the
/// services get `--stop-grace-period 0s`).
const TASK_CMD: &[&str] = &["sleep", "1000000"];
/// The probe's ARP retransmit time inside the probing task (see [`prepare_prober`]).
const PROBE_ARP_RETRANS_MS: u32 = 10;
/// Task states from which a task never runs again.
const TERMINAL: &[&str] = &[
    "complete", "shutdown", "failed", "rejected", "remove", "orphaned",
];

/// Command line of `rswarm-bench-overlay`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "rswarm-bench-overlay",
    version,
    about = "iperf3 TCP over rswarm's overlay, the bare underlay and Docker Swarm's overlay between two test hosts, and task RUNNING → reachable latency; must run as root (it creates network namespaces, daemons and containers, and removes all of them when it ends)"
)]
pub struct OverlayArgs {
    /// Directory holding `rswarm` and `rswarm-shim` (default: the directory of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Interleaved iperf3 runs, each one over the underlay and one over each overlay (the table
    /// shows each figure's p50 and the median of the per-run ratios).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds of each iperf3 run (`iperf3 -t`).
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Parallel TCP streams of each iperf3 run (`iperf3 -P`).
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// RUNNING → reachable samples per system.
    #[arg(long, default_value_t = 20)]
    pub reach_samples: usize,
    /// Measure rswarm and the underlay only (Swarm's overlay figure from REFERENCE.md is shown).
    #[arg(long)]
    pub no_swarm: bool,
    /// The dockerd binary (Debian's `docker.io`); the `docker` CLI next to it is used.
    #[arg(long, default_value = "dockerd")]
    pub dockerd: PathBuf,
    /// Interval of the task-list polls while a reachability sample runs.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Give up on one reachability sample (or one wait for tasks) after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the lab's temp dir is created (default /var/tmp).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
}

// ------------------------------------------------------------------------------------------------
// Parsing tool output (pure)
// ------------------------------------------------------------------------------------------------

/// The receiver's rate in Gbit/s from `iperf3 -J` output, or iperf3's own error.
fn parse_iperf_gbps(json: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json).context("iperf3 -J printed no JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}

/// The time of a `ping -D` reply line: `[1732850000.123456] 64 bytes from …`.
fn parse_ping_reply(line: &str) -> Option<SystemTime> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let stamp = line.strip_prefix('[')?.split(']').next()?;
    let (secs, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let secs: u64 = secs.parse().ok()?;
    let digits = frac.len().min(9);
    let nanos: u32 = frac.get(..digits)?.parse::<u32>().ok()? * 10u32.pow(9 - digits as u32);
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The address in `ip -4 -o addr show` output: `… inet 10.0.1.3/24 brd …` → `10.0.1.3`.
fn parse_inet(text: &str) -> Option<String> {
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
}

/// `10.0.1.3/24` → `10.0.1.3`.
fn strip_prefix_len(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

// ------------------------------------------------------------------------------------------------
// iperf3 and ping between namespaces
// ------------------------------------------------------------------------------------------------

/// `nsenter --net=NETNS -- PROGRAM` (NETNS: `/run/netns/X` or `/proc/PID/ns/net`).
fn in_netns(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={netns}")).arg("--").arg(program);
    cmd
}

/// Up to `wait` of one-packet pings from `netns` to `addr`; fails if none is answered.
async fn ping_until(netns: &str, addr: &str, wait: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut cmd = in_netns(netns, "ping");
        cmd.args(["-n", "-c", "1", "-W", "1", addr]);
        if run_cmd(cmd, "ping").await.is_ok() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > wait {
            bail!("no ping reply from {addr} within {}", fmt_period(wait));
        }
    }
}

/// One iperf3 TCP run: server in `server_ns`, client in `client_ns` to `addr`; Gbit/s.
async fn iperf(
    server_ns: &str,
    client_ns: &str,
    addr: &str,
    args: &OverlayArgs,
) -> anyhow::Result<f64> {
    let mut server = in_netns(server_ns, "iperf3")
        .args(["-s", "-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the iperf3 server")?;
    let start = Instant::now();
    let result = loop {
        if let Some(st) = server.try_wait()? {
            bail!("the iperf3 server in {server_ns} exited ({st})");
        }
        let mut cmd = in_netns(client_ns, "iperf3");
        cmd.args(["-J", "--connect-timeout", "3000", "-c", addr, "-t"])
            .arg(args.seconds.to_string())
            .arg("-P")
            .arg(args.streams.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(
            Duration::from_secs(u64::from(args.seconds) + 30),
            cmd.output(),
        )
        .await
        .context("iperf3 client: no result in time")?
        .context("cannot run the iperf3 client")?;
        match parse_iperf_gbps(&String::from_utf8_lossy(&out.stdout)) {
            // The server may not listen yet.
            Err(e) if format!("{e}").contains("refused") && start.elapsed() < RPC_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r,
        }
    };
    let _ = server.kill().await;
    result
}

/// The iperf3 rate from `from` to `to` (each an endpoint's namespace), after a ping check.
async fn iperf_between(from: &Endpoint, to: &Endpoint, args: &OverlayArgs) -> anyhow::Result<f64> {
    ping_until(&from.netns, &to.addr, Duration::from_secs(20))
        .await
        .with_context(|| format!("{} cannot reach {}", from.what, to.what))?;
    iperf(&to.netns, &from.netns, &to.addr, args).await
}

/// Makes ARP in the probing namespace retry every [`PROBE_ARP_RETRANS_MS`] instead of every
/// second: a probe that starts before the new task exists must not wait up to a second for the
/// next ARP attempt once it does (that would measure the prober, not the overlay).
async fn prepare_prober(netns: &str) -> anyhow::Result<()> {
    let mut cmd = in_netns(netns, "sh");
    cmd.arg("-c").arg(format!(
        "for f in /proc/sys/net/ipv4/neigh/*/retrans_time_ms; do echo {PROBE_ARP_RETRANS_MS} > $f; done"
    ));
    run_cmd(cmd, "setting the probe's ARP retransmit time").await?;
    Ok(())
}

/// `ping -D` every 2 ms from `netns` to `addr` until killed; the reader task yields the first
/// reply's time as soon as it is printed (None if ping ended without one). Neither `-c` nor
/// `-w`: with either, iputils ping stops at the first error ("Destination Host Unreachable"
/// while ARP for the not yet existing task fails).
fn spawn_pinger(
    netns: &str,
    addr: &str,
) -> anyhow::Result<(Child, tokio::task::JoinHandle<Option<SystemTime>>)> {
    let mut child = in_netns(netns, "ping")
        .args(["-n", "-D", "-i", "0.002", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start ping")?;
    let stdout = child.stdout.take().context("ping has no stdout")?;
    // Read all the time: "Destination Host Unreachable" lines would fill the pipe.
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(t) = parse_ping_reply(&l) {
                return Some(t);
            }
        }
        None
    });
    Ok((child, reader))
}

// ------------------------------------------------------------------------------------------------
// The two systems behind one interface
// ------------------------------------------------------------------------------------------------

/// A task's network namespace and overlay address (or a host's, for the underlay).
#[derive(Clone, Debug)]
struct Endpoint {
    what: String,
    netns: String,
    addr: String,
}

/// A task as the manager lists it, reduced to what is measured.
#[derive(Clone, Debug, Default)]
struct TaskView {
    id: String,
    node: String,
    desired_running: bool,
    state: String,
    /// Its address on [`NETWORK`] once allocated.
    addr: Option<String>,
    /// The time of its current status (`Status.Timestamp`).
    timestamp: Option<SystemTime>,
    err: String,
}

/// The cluster under test, and the id of its [`NETWORK`] once created.
struct Sys<'a> {
    api: Api<'a>,
    net_id: String,
}

/// rswarm through its CLI and control API, Swarm through its CLI and Engine API; the first
/// socket is the manager's (host 1).
enum Api<'a> {
    Rswarm {
        rswarm: &'a Path,
        sockets: &'a [PathBuf],
        client: ControlClient<Channel>,
    },
    Swarm {
        docker: &'a Path,
        sockets: &'a [PathBuf],
    },
}

impl Sys<'_> {
    fn name(&self) -> &'static str {
        match self.api {
            Api::Rswarm { .. } => "rswarm",
            Api::Swarm { .. } => "swarm",
        }
    }

    /// The CLI against host `i`'s daemon.
    fn cli(&self, i: usize) -> Command {
        match &self.api {
            Api::Rswarm {
                rswarm, sockets, ..
            } => {
                let mut cmd = Command::new(rswarm);
                cmd.arg("--host")
                    .arg(format!("unix://{}", sockets[i].display()));
                cmd
            }
            Api::Swarm { docker, sockets } => docker_cmd(docker, &sockets[i]),
        }
    }

    /// Runs the CLI on the manager.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.cli(0);
        cmd.args(args);
        let what = format!("{} {}", self.name(), args.join(" "));
        run_cmd(cmd, &what).await
    }

    /// `service create -d --name NAME --network benchnet --stop-grace-period 0s EXTRA IMAGE sleep …`.
    async fn create_service(&self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let image = match self.api {
            Api::Rswarm { .. } => RSWARM_IMAGE,
            Api::Swarm { .. } => SWARM_IMAGE,
        };
        let mut args = vec![
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--network",
            NETWORK,
            "--stop-grace-period",
            "0s",
        ];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(TASK_CMD);
        self.run(&args).await.map(drop)
    }

    /// Every task of `service` (none while the service is not stored).
    async fn tasks(&mut self, service: &str) -> anyhow::Result<Vec<TaskView>> {
        let parse_ts = |ts: &str| humantime::parse_rfc3339_weak(ts).ok();
        let net_id = self.net_id.clone();
        let on_net =
            move |id: &str, name: &str| name == NETWORK || (!id.is_empty() && id == net_id);
        match &mut self.api {
            Api::Rswarm { client, .. } => {
                let req = ListTasksRequest {
                    filters: vec![format!("service={service}")],
                };
                let r = match tokio::time::timeout(RPC_TIMEOUT, client.list_tasks(req))
                    .await
                    .context("ListTasks timed out")?
                {
                    Err(s) if s.code() == tonic::Code::NotFound => return Ok(Vec::new()),
                    r => r.context("ListTasks failed")?,
                };
                Ok(r.into_inner()
                    .tasks
                    .into_iter()
                    .map(|t| {
                        let status = t.status.unwrap_or_default();
                        TaskView {
                            addr: t
                                .networks
                                .iter()
                                .find(|n| on_net(&n.network_id, &n.network_name))
                                .filter(|n| !n.addr.is_empty())
                                .map(|n| strip_prefix_len(&n.addr)),
                            id: t.id,
                            node: t.node_id,
                            desired_running: t.desired_state == "running",
                            state: status.state,
                            timestamp: parse_ts(&status.timestamp),
                            err: status.err,
                        }
                    })
                    .collect())
            }
            Api::Swarm { sockets, .. } => {
                let filters = format!(r#"{{"service":["{service}"]}}"#);
                let path = format!("/tasks?filters={}", url_encode(&filters));
                let Some(v) = docker_get_opt(&sockets[0], &path).await? else {
                    return Ok(Vec::new());
                };
                let list = v.as_array().context("/tasks is not a list")?;
                Ok(list
                    .iter()
                    .map(|t| TaskView {
                        id: t["ID"].as_str().unwrap_or_default().to_string(),
                        node: t["NodeID"].as_str().unwrap_or_default().to_string(),
                        desired_running: t["DesiredState"] == "running",
                        state: t["Status"]["State"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        addr: t["NetworksAttachments"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|a| {
                                on_net(
                                    a["Network"]["ID"].as_str().unwrap_or_default(),
                                    a["Network"]["Spec"]["Name"].as_str().unwrap_or_default(),
                                )
                            })
                            .and_then(|a| a["Addresses"][0].as_str())
                            .map(strip_prefix_len),
                        timestamp: t["Status"]["Timestamp"].as_str().and_then(parse_ts),
                        err: t["Status"]["Err"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect())
            }
        }
    }

    /// Waits until `service` has `n` tasks desired and running; returns them.
    async fn wait_running(
        &mut self,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<TaskView>> {
        let start = Instant::now();
        loop {
            let tasks = self.tasks(service).await?;
            let running: Vec<TaskView> = tasks
                .iter()
                .filter(|t| t.desired_running && t.state == "running")
                .cloned()
                .collect();
            if running.len() >= n {
                return Ok(running);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} service {service}: {} of {n} tasks running after {} ({tasks:?})",
                    self.name(),
                    running.len(),
                    fmt_period(timeout)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The namespace and overlay address of `task`'s container on host `i`.
    async fn endpoint(&self, i: usize, task: &TaskView) -> anyhow::Result<Endpoint> {
        let (pid, addr) = match &self.api {
            Api::Rswarm { .. } => {
                let mut cmd = self.cli(i);
                cmd.args(["container", "ls", "--format", "json"]);
                let list: Value = serde_json::from_str(&run_cmd(cmd, "rswarm container ls").await?)
                    .context("rswarm container ls: not JSON")?;
                let suffix = format!(".{}", task.id);
                let name = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["Names"].as_str())
                    .find(|n| n.ends_with(&suffix))
                    .with_context(|| format!("no container of task {} on h{}", task.id, i + 1))?
                    .to_string();
                let mut cmd = self.cli(i);
                cmd.args(["container", "inspect", &name]);
                let v: Value =
                    serde_json::from_str(&run_cmd(cmd, "rswarm container inspect").await?)
                        .context("rswarm container inspect: not JSON")?;
                let pid = v[0]["State"]["Pid"]
                    .as_u64()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("{name} has no State.Pid"))?;
                let mut cmd = in_netns(&format!("/proc/{pid}/ns/net"), "ip");
                cmd.args(["-4", "-o", "addr", "show", "dev", "eth1"]);
                let out = run_cmd(cmd, "ip addr in the task").await?;
                let addr = parse_inet(&out)
                    .with_context(|| format!("no IPv4 address on eth1 of {name}: {out}"))?;
                (pid, addr)
            }
            Api::Swarm { sockets, .. } => {
                let filters = format!(r#"{{"label":["com.docker.swarm.task.id={}"]}}"#, task.id);
                let path = format!("/containers/json?filters={}", url_encode(&filters));
                let list = docker_get(&sockets[i], &path).await?;
                let id = list[0]["Id"]
                    .as_str()
                    .with_context(|| format!("no container of task {} on h{}", task.id, i + 1))?
                    .to_string();
                let v = docker_get(&sockets[i], &format!("/containers/{id}/json")).await?;
                let pid = v["State"]["Pid"]
                    .as_u64()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("container {id} has no State.Pid"))?;
                let addr = v["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .with_context(|| format!("container {id} has no address on {NETWORK}"))?
                    .to_string();
                (pid, addr)
            }
        };
        Ok(Endpoint {
            what: format!("{}'s task on h{}", self.name(), i + 1),
            netns: format!("/proc/{pid}/ns/net"),
            addr,
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Measurements
// ------------------------------------------------------------------------------------------------

/// One RUNNING → reachable sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reach {
    /// First reply − RUNNING timestamp, 0 if the reply came first.
    after: Duration,
    /// RUNNING timestamp − first reply when the reply came first (reachable before RUNNING was
    /// reported), else `None`.
    early_by: Option<Duration>,
    /// First reply − the start of the `service scale` command.
    from_scale: Duration,
    /// First reply − the start of the probe: near 0 would mean the probe started late.
    probing: Duration,
}

impl Reach {
    /// From the first reply's time, the RUNNING timestamp, and when the scale command and the
    /// probe started.
    fn of(reply: SystemTime, running: SystemTime, scaled: SystemTime, probe: SystemTime) -> Reach {
        let since = |t: SystemTime| reply.duration_since(t).unwrap_or_default();
        let (after, early_by) = match reply.duration_since(running) {
            Ok(after) => (after, None),
            Err(e) => (Duration::ZERO, Some(e.duration())),
        };
        Reach {
            after,
            early_by,
            from_scale: since(scaled),
            probing: since(probe),
        }
    }
}

/// One interleaved run's iperf3 rates in Gbit/s; `None` where that measurement failed or was
/// not made (no such cluster).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RunFigures {
    underlay: Option<f64>,
    rswarm: Option<f64>,
    swarm: Option<f64>,
    /// rswarm's overlay was measured before Swarm's in this run.
    rswarm_first: bool,
}

/// Everything measured.
#[derive(Debug, Default)]
struct Results {
    /// One entry per run, in order.
    runs: Vec<RunFigures>,
    rswarm_reach: Vec<Reach>,
    swarm_reach: Vec<Reach>,
    /// Why a row has no (or fewer) figures.
    failures: Vec<String>,
}

impl Results {
    /// One figure of every run that has it.
    fn figures(&self, f: impl Fn(&RunFigures) -> Option<f64>) -> Vec<f64> {
        self.runs.iter().filter_map(f).collect()
    }
}

/// The median, min and max of per-run ratios, and how many runs gave one.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RatioStats {
    /// The middle ratio; the mean of the two middle ones for an even count.
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

/// `a_k / b_k` of every run k (pairs `(a_k, b_k)`) that has both figures and `b_k > 0`,
/// summarised; `None` if no run has. Each ratio compares figures taken seconds apart, so the
/// machine's slow drift in speed cancels out, unlike in a ratio of p50s.
fn per_run_ratios(
    pairs: impl IntoIterator<Item = (Option<f64>, Option<f64>)>,
) -> Option<RatioStats> {
    let mut r: Vec<f64> = pairs.into_iter().filter_map(|(a, b)| ratio(a, b)).collect();
    r.sort_by(f64::total_cmp);
    let n = r.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => r[n / 2],
        _ => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    };
    Some(RatioStats {
        median,
        min: r[0],
        max: r[n - 1],
        n,
    })
}

/// The two hosts' namespaces, h1 → h2.
fn underlay_endpoints(lab: &Lab) -> (Endpoint, Endpoint) {
    let ep = |i: usize| Endpoint {
        what: format!("host h{}", i + 1),
        netns: format!("/run/netns/{}", lab.hosts[i].netns),
        addr: lab.hosts[i].ip.clone(),
    };
    (ep(0), ep(1))
}

/// Creates `benchnet` and the global `perf` service; the two tasks' endpoints (h1, h2).
async fn deploy_perf(
    sys: &mut Sys<'_>,
    host_of_node: &dyn Fn(&str) -> Option<usize>,
    timeout: Duration,
) -> anyhow::Result<(Endpoint, Endpoint)> {
    let mut args = vec!["network", "create"];
    if matches!(sys.api, Api::Swarm { .. }) {
        args.extend(["-d", "overlay"]);
    }
    args.push(NETWORK);
    sys.net_id = sys.run(&args).await?.trim().to_string();
    sys.create_service(PERF, &["--mode", "global"]).await?;
    let tasks = sys.wait_running(PERF, HOSTS, timeout).await?;
    let mut eps: Vec<Option<Endpoint>> = vec![None; HOSTS];
    for t in &tasks {
        let i =
            host_of_node(&t.node).with_context(|| format!("task on unknown node {}", t.node))?;
        eps[i] = Some(sys.endpoint(i, t).await?);
    }
    let mut eps = eps.into_iter();
    match (eps.next().flatten(), eps.next().flatten()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("{} service {PERF} has no task on each host", sys.name()),
    }
}

/// One sample: scale `reach` to 1, probe it from `prober` from the moment it has an address,
/// then scale it back to 0 and wait until its task has stopped.
async fn reach_sample(
    sys: &mut Sys<'_>,
    prober: &str,
    args: &OverlayArgs,
) -> anyhow::Result<(Reach, String)> {
    let scale = |n: u32| format!("{REACH}={n}");
    let scaled = SystemTime::now();
    sys.run(&["service", "scale", "-d", &scale(1)]).await?;
    let start = Instant::now();
    let mut pinger = None;
    let mut probe = (SystemTime::UNIX_EPOCH, String::new());
    let mut running = None;
    let mut reply = None;
    let outcome = loop {
        if running.is_none() || pinger.is_none() {
            let tasks = sys.tasks(REACH).await?;
            if let Some(t) = tasks.iter().find(|t| t.desired_running) {
                if pinger.is_none() {
                    if let Some(addr) = &t.addr {
                        probe = (SystemTime::now(), addr.clone());
                        pinger = Some(spawn_pinger(prober, addr)?);
                    }
                }
                if t.state == "running" {
                    running = t.timestamp;
                } else if TERMINAL.contains(&t.state.as_str()) {
                    break Err(anyhow!("task {} ended: {} {}", t.id, t.state, t.err));
                }
            }
        }
        if reply.is_none() {
            if let Some((_, reader)) = &mut pinger {
                if reader.is_finished() {
                    match reader.await {
                        Ok(Some(t)) => reply = Some(t),
                        _ => break Err(anyhow!("ping ended without a reply")),
                    }
                }
            }
        }
        if let (Some(reply), Some(running)) = (reply, running) {
            break Ok((Reach::of(reply, running, scaled, probe.0), probe.1.clone()));
        }
        if start.elapsed() > args.timeout {
            break Err(anyhow!(
                "after {}: running reported: {}, ping reply: {}",
                fmt_period(args.timeout),
                running.is_some(),
                reply.is_some()
            ));
        }
        tokio::time::sleep(args.poll).await;
    };
    if let Some((mut child, _)) = pinger {
        let _ = child.kill().await;
    }
    sys.run(&["service", "scale", "-d", &scale(0)]).await?;
    let start = Instant::now();
    loop {
        let tasks = sys.tasks(REACH).await?;
        if tasks
            .iter()
            .all(|t| !t.desired_running && TERMINAL.contains(&t.state.as_str()))
        {
            break;
        }
        if start.elapsed() > args.timeout {
            bail!("{REACH} did not stop: {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outcome
}

/// `--reach-samples` samples of [`reach_sample`] with `constraint` pinning the task to host 1
/// and the steady task on host 2 probing.
async fn reach_samples(
    sys: &mut Sys<'_>,
    constraint: &str,
    prober: &Endpoint,
    args: &OverlayArgs,
    out: &mut Vec<Reach>,
    failures: &mut Vec<String>,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    sys.create_service(REACH, &["--replicas", "0", "--constraint", constraint])
        .await?;
    prepare_prober(&prober.netns).await?;
    for k in 1..=args.reach_samples {
        match reach_sample(sys, &prober.netns, args).await {
            Ok((r, addr)) => {
                say(
                    log,
                    format!(
                        "{} reach {k}/{} ({addr}): scale → reply {}, probing for {}; RUNNING → reply {}{}",
                        sys.name(),
                        args.reach_samples,
                        fmt_duration(r.from_scale),
                        fmt_duration(r.probing),
                        fmt_duration(r.after),
                        r.early_by
                            .map(|d| format!(" (reply {} before RUNNING)", fmt_duration(d)))
                            .unwrap_or_default()
                    ),
                );
                out.push(r);
            }
            Err(e) => {
                say(log, format!("{} reach {k}: FAILED: {e:#}", sys.name()));
                failures.push(format!("{} reachability sample {k}: {e:#}", sys.name()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

struct Ctx {
    rswarm: PathBuf,
    docker: PathBuf,
    dockerd: PathBuf,
    rootfs_tar: PathBuf,
}

/// Logs a run's figure or its failure (kept in `failures`); the figure.
fn record(
    what: &str,
    r: anyhow::Result<f64>,
    failures: &mut Vec<String>,
    log: &mut impl Write,
) -> Option<f64> {
    match r {
        Ok(g) => {
            say(log, format!("{what}: {g:.2} Gbit/s"));
            Some(g)
        }
        Err(e) => {
            say(log, format!("{what}: FAILED: {e:#}"));
            failures.push(format!("{what}: {e:#}"));
            None
        }
    }
}

/// A cluster with [`NETWORK`] and the global [`PERF`] service deployed.
struct Deployed<'a> {
    sys: Sys<'a>,
    /// The `perf` tasks on h1 (iperf3 client, reach target's host) and h2 (server, prober).
    h1: Endpoint,
    h2: Endpoint,
    /// The constraint that pins a task to h1.
    pin_h1: String,
}

/// `benchnet` and `perf` on rswarm's cluster.
async fn deploy_rswarm<'a>(
    lab: &Lab,
    c: &'a RswarmCluster,
    ctx: &'a Ctx,
    args: &OverlayArgs,
) -> anyhow::Result<Deployed<'a>> {
    let mut sys = Sys {
        api: Api::Rswarm {
            rswarm: &ctx.rswarm,
            sockets: &c.sockets,
            client: c.client.clone(),
        },
        net_id: String::new(),
    };
    let host_of = |id: &str| {
        let n = c.nodes.iter().find(|n| n.0 == id)?;
        lab.hosts.iter().position(|h| h.name == n.1)
    };
    let (h1, h2) = deploy_perf(&mut sys, &host_of, args.timeout).await?;
    Ok(Deployed {
        sys,
        h1,
        h2,
        pin_h1: format!("node.hostname=={}", lab.hosts[0].name),
    })
}

/// `benchnet` and `perf` on Docker Swarm's cluster.
async fn deploy_swarm<'a>(
    c: &'a SwarmCluster,
    ctx: &'a Ctx,
    args: &OverlayArgs,
) -> anyhow::Result<Deployed<'a>> {
    let mut ids = Vec::new();
    for s in &c.sockets {
        let info = docker_get(s, "/info").await?;
        ids.push(
            info["Swarm"]["NodeID"]
                .as_str()
                .filter(|s| !s.is_empty())
                .context("no Swarm.NodeID in /info")?
                .to_string(),
        );
    }
    let mut sys = Sys {
        api: Api::Swarm {
            docker: &ctx.docker,
            sockets: &c.sockets,
        },
        net_id: String::new(),
    };
    let host_of = |id: &str| ids.iter().position(|n| n == id);
    let (h1, h2) = deploy_perf(&mut sys, &host_of, args.timeout).await?;
    Ok(Deployed {
        sys,
        h1,
        h2,
        // Every dockerd reports the VM's hostname: pin by node id.
        pin_h1: format!("node.id=={}", ids[0]),
    })
}

/// Logs a set-up's outcome; the deployed cluster, or `None` with the failure recorded.
fn set_up<'a>(
    name: &str,
    r: anyhow::Result<Deployed<'a>>,
    failures: &mut Vec<String>,
    log: &mut impl Write,
) -> Option<Deployed<'a>> {
    match r {
        Ok(d) => {
            say(
                log,
                format!(
                    "{name}: perf tasks at {} (h1), {} (h2)",
                    d.h1.addr, d.h2.addr
                ),
            );
            Some(d)
        }
        Err(e) => {
            say(log, format!("{name}: set-up FAILED: {e:#}"));
            failures.push(format!("{name} set-up: {e:#}"));
            None
        }
    }
}

/// Whether run `run` (1-based) measures rswarm's overlay before Swarm's: odd runs do, even runs
/// measure Swarm's first, so that neither system always runs right after the underlay.
fn rswarm_first(run: usize) -> bool {
    run % 2 == 1
}

/// `--runs` interleaved runs: the underlay, then each deployed overlay, back to back.
async fn iperf_runs(
    lab: &Lab,
    rswarm: Option<&Deployed<'_>>,
    swarm: Option<&Deployed<'_>>,
    args: &OverlayArgs,
    res: &mut Results,
    log: &mut impl Write,
) {
    let (h1, h2) = underlay_endpoints(lab);
    for run in 1..=args.runs {
        // Pushed first: an interrupted run keeps what it measured.
        let k = res.runs.len();
        res.runs.push(RunFigures {
            rswarm_first: rswarm_first(run),
            ..RunFigures::default()
        });
        let r = iperf_between(&h1, &h2, args).await;
        res.runs[k].underlay = record(&format!("underlay run {run}"), r, &mut res.failures, log);
        let order = if rswarm_first(run) {
            [true, false]
        } else {
            [false, true]
        };
        for is_rswarm in order {
            let (d, name) = if is_rswarm {
                (rswarm, "rswarm")
            } else {
                (swarm, "swarm")
            };
            let Some(d) = d else { continue };
            let r = iperf_between(&d.h1, &d.h2, args).await;
            let g = record(
                &format!("{name} overlay run {run}"),
                r,
                &mut res.failures,
                log,
            );
            if is_rswarm {
                res.runs[k].rswarm = g;
            } else {
                res.runs[k].swarm = g;
            }
        }
        let f = res.runs[k];
        let q = |a: Option<f64>, b: Option<f64>| fmt_ratio(ratio(a, b));
        let mut line = format!("run {run}: rswarm/underlay {}", q(f.rswarm, f.underlay));
        if swarm.is_some() {
            line += &format!(
                ", swarm/underlay {}, rswarm/swarm {}",
                q(f.swarm, f.underlay),
                q(f.rswarm, f.swarm)
            );
        }
        say(log, line);
    }
}

/// `--reach-samples` reachability samples on one deployed cluster; a failure is recorded.
async fn reach_of(
    name: &str,
    d: &mut Deployed<'_>,
    args: &OverlayArgs,
    out: &mut Vec<Reach>,
    failures: &mut Vec<String>,
    log: &mut impl Write,
) {
    if let Err(e) = reach_samples(&mut d.sys, &d.pin_h1, &d.h2, args, out, failures, log).await {
        say(log, format!("{name} reach: FAILED: {e:#}"));
        failures.push(format!("{name} reachability: {e:#}"));
    }
}

/// Both clusters up at once (rswarm's, and unless `--no-swarm` Docker Swarm's with its VXLAN on
/// [`SWARM_DATA_PATH_PORT`]), the interleaved iperf3 runs, then each system's reach samples;
/// everything is removed at the end.
async fn measure(
    args: &OverlayArgs,
    ctx: &Ctx,
    res: &mut Results,
    parent: &Path,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    say(
        log,
        "lab: 2 hosts (network namespaces on a bridge), registry, images ...",
    );
    let mut lab = Lab::new(parent, HOSTS, NETNS_PREFIX, "rswarm-bench-overlay-")?;
    lab.prepare_images(&ctx.rootfs_tar).await?;
    say(log, format!("lab ready in {}", lab.path.display()));

    // The clusters are declared before what borrows them and dropped explicitly at the end;
    // on an error or Ctrl-C they are dropped in reverse order all the same.
    say(
        log,
        "rswarm: cluster (VXLAN UDP 4789), network benchnet, global service perf ...",
    );
    let rswarm_cluster = start_rswarm(&lab, &ctx.rswarm, "overlay")
        .await
        .map(|mut c| {
            c.dep.reset_netns = true;
            c
        });
    let r = match &rswarm_cluster {
        Ok(c) => deploy_rswarm(&lab, c, ctx, args).await,
        Err(e) => Err(anyhow!("{e:#}")),
    };
    let mut rswarm = set_up("rswarm", r, &mut res.failures, log);
    let swarm_cluster = if args.no_swarm {
        None
    } else {
        say(
            log,
            format!(
                "swarm: cluster (swarm init --data-path-port {SWARM_DATA_PATH_PORT}), network benchnet, global service perf ..."
            ),
        );
        Some(
            start_swarm(
                &lab,
                &ctx.dockerd,
                &ctx.docker,
                &ctx.rootfs_tar,
                "overlay",
                &["--data-path-port", SWARM_DATA_PATH_PORT],
                false,
            )
            .await
            .map(|mut c| {
                c.dep.reset_netns = true;
                c
            }),
        )
    };
    let mut swarm = match &swarm_cluster {
        None => None,
        Some(c) => {
            let r = match c {
                Ok(c) => deploy_swarm(c, ctx, args).await,
                Err(e) => Err(anyhow!("{e:#}")),
            };
            set_up("Docker Swarm", r, &mut res.failures, log)
        }
    };

    iperf_runs(&lab, rswarm.as_ref(), swarm.as_ref(), args, res, log).await;
    if let Some(d) = &mut rswarm {
        reach_of(
            "rswarm",
            d,
            args,
            &mut res.rswarm_reach,
            &mut res.failures,
            log,
        )
        .await;
    }
    if let Some(d) = &mut swarm {
        reach_of(
            "Docker Swarm",
            d,
            args,
            &mut res.swarm_reach,
            &mut res.failures,
            log,
        )
        .await;
    }

    say(log, "removing the clusters and the lab ...");
    drop((swarm, rswarm));
    // Dropping the first Deployment kills every process in the host namespaces (the other
    // system's daemons too) and resets them; the second then removes its own containers,
    // cgroups, mounts and state, and resets the namespaces again (idempotent).
    drop(swarm_cluster);
    drop(rswarm_cluster);
    drop(lab);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The table
// ------------------------------------------------------------------------------------------------

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn p50(v: &[f64]) -> Option<f64> {
    percentile(&sorted(v), 50.0)
}

/// "12.30 Gbit/s (12.10–12.50)"; "—" without samples.
fn gbps_cell(v: &[f64]) -> String {
    let s = sorted(v);
    match (percentile(&s, 50.0), s.first(), s.last()) {
        (Some(m), Some(lo), Some(hi)) if s.len() > 1 => {
            format!("{m:.2} Gbit/s ({lo:.2}–{hi:.2})")
        }
        (Some(m), ..) => format!("{m:.2} Gbit/s"),
        _ => "—".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b > 0.0).then(|| a / b)
}

/// "p50 40.1 ms, p99 95.0 ms, max 95.0 ms; reachable before RUNNING was reported: 2 of 20
/// (by 1.20 ms–3.40 ms)".
fn reach_cell(v: &[Reach]) -> String {
    let after: Vec<Duration> = v.iter().map(|r| r.after).collect();
    if after.is_empty() {
        return "—".into();
    }
    let early: Vec<Duration> = v.iter().filter_map(|r| r.early_by).collect();
    let by = match Summary::of(&early) {
        Some(e) => format!(" (by {}–{})", fmt_duration(e.min), fmt_duration(e.max)),
        None => String::new(),
    };
    format!(
        "{}; reachable before RUNNING was reported: {} of {}{by}",
        latency_cell(&after),
        early.len(),
        v.len()
    )
}

/// "0.82× (0.78×–0.85×)" (with `prefix` before it); "—" without runs.
fn ratio_cell(s: Option<RatioStats>, prefix: &str) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{prefix}{} ({}–{})",
            fmt_ratio(Some(s.median)),
            fmt_ratio(Some(s.min)),
            fmt_ratio(Some(s.max))
        ),
        Some(s) => format!("{prefix}{}", fmt_ratio(Some(s.median))),
        None => "—".into(),
    }
}

fn table(res: &Results, args: &OverlayArgs) -> Table {
    let mut t = Table::new(["Measurement", "Result", "Goal", "Met"]);
    t = t.align(1, Align::Right);
    let iperf = format!(
        "iperf3 TCP h1 → h2, {} stream(s), {} s, p50 (min–max)",
        args.streams, args.seconds
    );
    let runs = |v: &[f64]| format!("[{} / {} runs]", v.len(), args.runs);
    let (underlay, ours, theirs) = (
        res.figures(|r| r.underlay),
        res.figures(|r| r.rswarm),
        res.figures(|r| r.swarm),
    );
    // Swarm's figure of run k: measured, or with --no-swarm this run's underlay × the reference.
    let ref_ratio = SWARM_OVERLAY_REF_GBPS / UNDERLAY_REF_GBPS;
    let swarm_k = |r: &RunFigures| {
        if args.no_swarm {
            r.underlay.map(|u| u * ref_ratio)
        } else {
            r.swarm
        }
    };
    let swarm_cell = if args.no_swarm {
        match p50(&underlay) {
            Some(u) => format!(
                "≈ {:.2} Gbit/s (not run: this underlay × REFERENCE.md's {SWARM_OVERLAY_REF_GBPS}/{UNDERLAY_REF_GBPS})",
                u * ref_ratio
            ),
            None => "— (not run)".into(),
        }
    } else {
        gbps_cell(&theirs)
    };
    t.row([
        format!("{iperf}: underlay (host namespaces) {}", runs(&underlay)),
        gbps_cell(&underlay),
        "—".into(),
        "—".into(),
    ]);
    t.row([
        format!("{iperf}: Docker Swarm overlay {}", runs(&theirs)),
        swarm_cell,
        "—".into(),
        "—".into(),
    ]);
    t.row([
        format!("{iperf}: rswarm overlay {}", runs(&ours)),
        gbps_cell(&ours),
        "—".into(),
        "—".into(),
    ]);
    let per_run = |s: &Option<RatioStats>| {
        format!(
            "median of per-run ratios (min–max) [{} / {} runs]",
            s.map_or(0, |s| s.n),
            args.runs
        )
    };
    let vs_swarm = per_run_ratios(res.runs.iter().map(|r| (r.rswarm, swarm_k(r))));
    let (what, prefix) = if args.no_swarm {
        (" (Swarm's: each run's underlay × the reference)", "≈ ")
    } else {
        ("", "")
    };
    t.row([
        format!(
            "rswarm overlay / Docker Swarm overlay{what}: {}",
            per_run(&vs_swarm)
        ),
        ratio_cell(vs_swarm, prefix),
        format!("≥ {GOAL_VS_SWARM:.2}×"),
        yes_no(vs_swarm.map(|r| r.median >= GOAL_VS_SWARM)).into(),
    ]);
    let vs_under = per_run_ratios(res.runs.iter().map(|r| (r.rswarm, r.underlay)));
    t.row([
        format!("rswarm overlay / underlay: {}", per_run(&vs_under)),
        ratio_cell(vs_under, ""),
        format!("≥ {GOAL_VS_UNDERLAY:.2}×"),
        yes_no(vs_under.map(|r| r.median >= GOAL_VS_UNDERLAY)).into(),
    ]);
    if !args.no_swarm {
        let theirs_under = per_run_ratios(res.runs.iter().map(|r| (r.swarm, r.underlay)));
        t.row([
            format!(
                "Docker Swarm overlay / underlay: {}",
                per_run(&theirs_under)
            ),
            ratio_cell(theirs_under, ""),
            "—".into(),
            "—".into(),
        ]);
    }
    let reach = |v: &[Reach]| format!("[{} / {} samples]", v.len(), args.reach_samples);
    let p99 =
        Summary::of(&res.rswarm_reach.iter().map(|r| r.after).collect::<Vec<_>>()).map(|s| s.p99);
    t.row([
        format!(
            "rswarm task RUNNING → reachable from h2 {}",
            reach(&res.rswarm_reach)
        ),
        reach_cell(&res.rswarm_reach),
        format!("p99 ≤ {}", fmt_period(REACH_GOAL)),
        yes_no(p99.map(|p| p <= REACH_GOAL)).into(),
    ]);
    let mut systems = vec![("rswarm", &res.rswarm_reach)];
    if !args.no_swarm {
        t.row([
            format!(
                "Docker Swarm task RUNNING → reachable from h2 {}",
                reach(&res.swarm_reach)
            ),
            reach_cell(&res.swarm_reach),
            "—".into(),
            "—".into(),
        ]);
        systems.push(("Docker Swarm", &res.swarm_reach));
    }
    for (name, v) in systems {
        t.row([
            format!(
                "{name}: `service scale reach=1` → reachable from h2 {}",
                reach(v)
            ),
            latency_cell(&v.iter().map(|r| r.from_scale).collect::<Vec<_>>()),
            "—".into(),
            "—".into(),
        ]);
    }
    t
}

/// "1 (rswarm first): underlay 16.10, rswarm 13.20, Swarm 13.00"; a failed figure is "—".
fn run_line(k: usize, r: &RunFigures, no_swarm: bool) -> String {
    let g = |v: Option<f64>| v.map_or("—".into(), |g| format!("{g:.2}"));
    if no_swarm {
        format!("{k}: underlay {}, rswarm {}", g(r.underlay), g(r.rswarm))
    } else {
        format!(
            "{k} ({} first): underlay {}, rswarm {}, Swarm {}",
            if r.rswarm_first { "rswarm" } else { "Swarm" },
            g(r.underlay),
            g(r.rswarm),
            g(r.swarm)
        )
    }
}

/// "p50 40.1 ms, p99 95.0 ms, max 95.0 ms"; "—" without samples.
fn latency_cell(v: &[Duration]) -> String {
    Summary::of(v).map_or("—".into(), |s| {
        format!(
            "p50 {}, p99 {}, max {}",
            fmt_duration(s.p50),
            fmt_duration(s.p99),
            fmt_duration(s.max)
        )
    })
}

fn write_report(
    out: &mut impl Write,
    args: &OverlayArgs,
    ctx: &Ctx,
    res: &Results,
    started: Instant,
    outcome: &anyhow::Result<()>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "## rswarm-bench-overlay: rswarm's overlay against the underlay and Docker Swarm's overlay, 2 hosts\n"
    )?;
    writeln!(out, "{}", machine_line())?;
    writeln!(out, "- rswarm: {}", ctx.rswarm.display())?;
    if args.no_swarm {
        writeln!(
            out,
            "- Docker Swarm: not run (--no-swarm); its overlay is estimated from REFERENCE.md §2 (overlay/underlay {SWARM_OVERLAY_REF_GBPS}/{UNDERLAY_REF_GBPS} Gbit/s) and this run's underlay"
        )?;
    } else {
        writeln!(
            out,
            "- Docker Swarm: {} (one dockerd + its managed containerd per host, --iptables=false: unencrypted overlay)",
            version_of(&ctx.dockerd)
        )?;
    }
    writeln!(out, "- iperf3: {}", version_of(Path::new("iperf3")))?;
    writeln!(out)?;
    table(res, args).render(out)?;
    writeln!(out)?;
    writeln!(
        out,
        "- Hosts: two network namespaces with a 1500-MTU veth each to a bridge ({SUBNET}.1, {SUBNET}.2). Overlays: network `{NETWORK}` (VXLAN), a global service `{PERF}` with one busybox task per host; iperf3 (the host's) runs in the tasks' network namespaces via nsenter, server on h2, client on h1."
    )?;
    if args.no_swarm {
        writeln!(
            out,
            "- Only rswarm's cluster (--no-swarm). Run k = one underlay run, then one run over rswarm's overlay (cluster idle beside the underlay run). Ratios: median of the per-run ratios (min–max), goals judged on it; Swarm's figure of run k is estimated as that run's underlay × {SWARM_OVERLAY_REF_GBPS}/{UNDERLAY_REF_GBPS}. The Gbit/s rows are the p50s of the runs."
        )?;
    } else {
        writeln!(
            out,
            "- Both clusters are up at once on the same hosts (rswarm's VXLAN on UDP 4789, Docker Swarm's on UDP {SWARM_DATA_PATH_PORT}: `swarm init --data-path-port`). Run k = one underlay run, then both overlays back to back, rswarm first in odd runs and Swarm first in even ones (both clusters idle beside each run), so that a run's three figures are taken seconds apart while this machine's speed drifts over minutes. Ratios: median of the per-run ratios (e.g. rswarm_k / swarm_k; a run lacking one of the two figures is left out), min–max beside it; the goals are judged on these medians. The Gbit/s rows are the p50s of the runs."
        )?;
    }
    let runs: Vec<String> = res
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| run_line(i + 1, r, args.no_swarm))
        .collect();
    if !runs.is_empty() {
        writeln!(out, "- Per run (Gbit/s): {}", runs.join("; "))?;
    }
    writeln!(
        out,
        "- RUNNING → reachable: service `{REACH}` pinned to h1 scaled 0 → 1 ({} times per system); from the moment the manager's task list gives the task an address on `{NETWORK}`, the `{PERF}` task on h2 pings it every 2 ms (ARP retransmit set to {PROBE_ARP_RETRANS_MS} ms in that task so that a probe started early does not wait a second for its next ARP); result = first reply (`ping -D`) − the task's RUNNING status timestamp from the task list (polled every {}); clamped at 0. `service scale reach=1` → reachable: from the start of that CLI command (`-d`) to the first reply.",
        args.reach_samples,
        fmt_period(args.poll)
    )?;
    writeln!(out, "- whole run: {:.0} s", started.elapsed().as_secs_f64())?;
    if let Err(e) = outcome {
        writeln!(out, "- the run was cut short ({e:#}): the table is partial")?;
    }
    for f in &res.failures {
        writeln!(out, "- FAILED: {}", f.replace('\n', " "))?;
    }
    out.flush()
}

/// Runs the benchmark: progress to `log`, the table to `out` (also after a failure or Ctrl-C,
/// with what was measured until then). Fails if anything failed.
pub async fn run(
    args: OverlayArgs,
    out: &mut impl Write,
    log: &mut impl Write,
) -> anyhow::Result<()> {
    if args.runs == 0 || args.seconds == 0 || args.streams == 0 {
        bail!("--runs, --seconds and --streams must be at least 1");
    }
    let bin_dir = bin_dir(args.bin_dir.as_deref())?;
    let (dockerd, docker) = check_tools(
        &bin_dir,
        args.no_swarm,
        &args.dockerd,
        &[
            ("iperf3", "apt-get install -y iperf3"),
            ("ping", "iputils ping: apt-get install -y iputils-ping"),
            ("sh", "a POSIX shell"),
        ],
    )?;
    let parent = args
        .tmp_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // The rootfs tar lives in its own temp dir (removed on drop like everything else).
    let scratch = tempfile::Builder::new()
        .prefix("rswarm-bench-overlay-img-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a temp dir in {}", parent.display()))?;
    let ctx = Ctx {
        rswarm: bin_dir.join("rswarm"),
        docker,
        dockerd,
        rootfs_tar: scratch.path().join("rootfs.tar"),
    };
    let started = Instant::now();
    let mut res = Results::default();
    let outcome = tokio::select! {
        r = measure(&args, &ctx, &mut res, &parent, log) => r,
        () = interrupted() => Err(anyhow!("interrupted (Ctrl-C)")),
    };
    drop(scratch);
    write_report(out, &args, &ctx, &res, started, &outcome)?;
    outcome?;
    if !res.failures.is_empty() {
        bail!("{} measurement(s) failed", res.failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> OverlayArgs {
        OverlayArgs::parse_from(["rswarm-bench-overlay"])
    }

    #[test]
    fn parses_iperf3_json_and_its_errors() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":1.3e10},"sum_received":{"bits_per_second":1.25e10}}}"#;
        assert!((parse_iperf_gbps(ok).unwrap() - 12.5).abs() < 1e-9);
        let err =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        let e = parse_iperf_gbps(err).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
        assert!(parse_iperf_gbps("").is_err());
    }

    #[test]
    fn parses_ping_reply_times() {
        let t = parse_ping_reply(
            "[1732850000.123456] 64 bytes from 10.0.1.5: icmp_seq=7 ttl=64 time=0.061 ms",
        )
        .unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::new(1_732_850_000, 123_456_000)
        );
        assert_eq!(
            parse_ping_reply("PING 10.0.1.5 (10.0.1.5) 56(84) bytes of data."),
            None
        );
        assert_eq!(
            parse_ping_reply(
                "[1732850000.1] From 10.0.1.3 icmp_seq=1 Destination Host Unreachable"
            ),
            None
        );
    }

    #[test]
    fn parses_addresses() {
        let out = "12: eth1    inet 10.0.1.3/24 brd 10.0.1.255 scope global eth1\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(parse_inet(out).as_deref(), Some("10.0.1.3"));
        assert_eq!(parse_inet(""), None);
        assert_eq!(strip_prefix_len("10.0.1.3/24"), "10.0.1.3");
    }

    #[test]
    fn reach_clamps_replies_before_running() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let ms = Duration::from_millis;
        let scaled = t0 - ms(400);
        assert_eq!(
            Reach::of(t0 + ms(30), t0, scaled, t0 - ms(100)),
            Reach {
                after: ms(30),
                early_by: None,
                from_scale: ms(430),
                probing: ms(130),
            }
        );
        assert_eq!(
            Reach::of(t0, t0 + ms(5), scaled, t0 - ms(100)),
            Reach {
                after: Duration::ZERO,
                early_by: Some(ms(5)),
                from_scale: ms(400),
                probing: ms(100),
            }
        );
    }

    #[test]
    fn per_run_ratios_give_median_min_max_and_skip_failed_runs() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let s = per_run_ratios([
            (Some(8.0), Some(10.0)),
            (Some(9.0), None),
            (Some(12.0), Some(10.0)),
            (None, Some(10.0)),
            (Some(9.0), Some(10.0)),
            (Some(1.0), Some(0.0)),
        ])
        .unwrap();
        assert_eq!(s.n, 3);
        assert!(
            close(s.median, 0.9) && close(s.min, 0.8) && close(s.max, 1.2),
            "{s:?}"
        );
        // Even count: the mean of the two middle ratios.
        let s = per_run_ratios([
            (Some(1.0), Some(1.0)),
            (Some(4.0), Some(2.0)),
            (Some(3.0), Some(1.0)),
            (Some(1.0), Some(2.0)),
        ])
        .unwrap();
        assert_eq!(s.n, 4);
        assert!(
            close(s.median, 1.5) && close(s.min, 0.5) && close(s.max, 3.0),
            "{s:?}"
        );
        let s = per_run_ratios([(Some(13.0), Some(16.0))]).unwrap();
        assert!(
            close(s.median, 0.8125) && s.min == s.max && s.n == 1,
            "{s:?}"
        );
        assert_eq!(per_run_ratios([]), None);
        assert_eq!(per_run_ratios([(None, Some(1.0)), (Some(1.0), None)]), None);
    }

    #[test]
    fn runs_alternate_which_overlay_goes_first() {
        let order: Vec<bool> = (1..=4).map(rswarm_first).collect();
        assert_eq!(order, [true, false, true, false]);
    }

    #[test]
    fn the_table_shows_ratios_goals_and_the_reference_without_swarm() {
        let ms = Duration::from_millis;
        let run = |underlay, rswarm, swarm, rswarm_first| RunFigures {
            underlay: Some(underlay),
            rswarm: Some(rswarm),
            swarm,
            rswarm_first,
        };
        let res = Results {
            // Run 2's Swarm figure failed.
            runs: vec![
                run(16.0, 14.0, Some(12.0), true),
                run(15.0, 13.5, None, false),
                run(17.0, 14.5, Some(12.5), true),
            ],
            rswarm_reach: vec![
                Reach {
                    after: ms(20),
                    early_by: None,
                    from_scale: ms(500),
                    probing: ms(300),
                },
                Reach {
                    after: Duration::ZERO,
                    early_by: Some(ms(3)),
                    from_scale: ms(450),
                    probing: ms(250),
                },
            ],
            swarm_reach: vec![],
            failures: vec![],
        };
        let a = args();
        let text = table(&res, &a).to_markdown();
        assert!(text.contains("16.00 Gbit/s (15.00–17.00)"), "{text}");
        assert!(text.contains("Swarm overlay [2 / 3 runs]"), "{text}");
        assert!(
            text.contains("underlay (host namespaces) [3 / 3 runs]"),
            "{text}"
        );
        // Per-run rswarm/Swarm: 14/12 = 1.167 and 14.5/12.5 = 1.16 (run 2 left out).
        assert!(
            text.contains(
                "rswarm overlay / Docker Swarm overlay: median of per-run ratios (min–max) [2 / 3 runs]"
            ),
            "{text}"
        );
        assert!(text.contains("1.16× (1.16×–1.17×)"), "{text}");
        // Per-run rswarm/underlay: 0.875, 0.9, 0.853.
        assert!(text.contains("0.88× (0.85×–0.90×)"), "{text}");
        // Per-run Swarm/underlay: 0.75, 0.735.
        assert!(text.contains("0.74× (0.74×–0.75×)"), "{text}");
        assert!(
            text.contains("reachable before RUNNING was reported: 1 of 2 (by 3.00 ms–3.00 ms)"),
            "{text}"
        );
        assert!(!text.contains("| NO "), "{text}");
        assert_eq!(text.matches("| yes ").count(), 3, "{text}");

        let mut a = args();
        a.no_swarm = true;
        let text = table(&res, &a).to_markdown();
        // 16.0 × 13.1 / 16.9 = 12.40; per run rswarm_k / (underlay_k × 13.1 / 16.9):
        // 1.129, 1.161, 1.100.
        assert!(text.contains("≈ 12.40 Gbit/s (not run"), "{text}");
        assert!(text.contains("≈ 1.13× (1.10×–1.16×)"), "{text}");
        assert!(!text.contains("Docker Swarm overlay / underlay"), "{text}");
        assert!(!text.contains("Docker Swarm task RUNNING"), "{text}");
        assert!(
            text.contains("p50 450.0 ms, p99 500.0 ms, max 500.0 ms |"),
            "{text}"
        );
    }
}
