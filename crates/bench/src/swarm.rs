//! `rswarm-bench-swarm`: rswarm against Docker Swarm on the same three test hosts, one table.
//!
//! (a) a replicated service of 20 tasks on 3 hosts: `service create --detach` → every task
//!     running, timed by polling the manager's task list (not the CLI's own wait);
//! (b) `kill -9` of a worker's daemon (rswarm: the worker's agent; Swarm: that host's `dockerd`,
//!     whose managed containerd dies with it) → 20 tasks running again on the other nodes; the
//!     time until the manager lists the node down is reported beside it.
//!
//! Both systems' tasks get the same network by default: rswarm's on its bridge, Swarm's on
//! docker0 (a service without `--network` in a default install; Swarm cannot run a service's
//! tasks without a network). `--swarm-network none` keeps REFERENCE.md §2's `dockerd --bridge
//! none`, where Swarm's tasks have only a loopback. Each run logs the tasks' veths.
//!
//! Topology: a "switch" network namespace with a bridge, and three host namespaces (`eth0` on the
//! bridge, 198.19.42.K/24, no route anywhere else); daemons run with `nsenter --net=…` (never
//! `ip netns exec`, which remounts /sys and loses the cgroup mounts). A `docker-registry` in the
//! switch namespace (198.19.42.254:5000) serves the busybox image to rswarm; every dockerd gets
//! the same rootfs through `docker import`. Each run of each system starts from fresh daemons and
//! state dirs and ends with the daemons, containers and mounts removed; the state dirs are removed
//! with the lab at the end (deleting thousands of files between runs slowed the next run's file
//! creation on this kind of VM's journal-less ext4).
//!
//! Must run as root. Everything it creates (namespaces, processes, containers, cgroups, mounts,
//! directories, the shim sockets containerd leaves in /run/containerd/s) is removed when the run
//! ends, fails or is interrupted (Drop guards); nothing is routed or NATed to the outside.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::control::v1::ListTasksRequest;
use tokio::process::Command;
use tonic::transport::Channel;

use crate::lab::{
    bin_dir, check_tools, docker_cmd, docker_get, docker_get_opt, interrupted, machine_line,
    rswarm_nodes, run_cmd, say, start_rswarm, start_swarm, url_encode, version_of, Lab,
    RswarmCluster, SwarmCluster, RPC_TIMEOUT, RSWARM_IMAGE, SWARM_IMAGE,
};
use crate::stats::{fmt_duration, fmt_period, Summary};
use crate::table::{fmt_ratio, yes_no, Align, Table};

/// Docker Swarm 20.10 measured on this machine (REFERENCE.md §2): 20 replicas converge.
pub const SWARM_CONVERGE_REF: Duration = Duration::from_millis(3_800);
/// … and are all running again after a worker is killed.
pub const SWARM_RECOVER_REF: Duration = Duration::from_millis(22_600);
/// Goal (a): rswarm's convergence at most this fraction of Swarm's.
pub const CONVERGE_GOAL_RATIO: f64 = 0.25;
/// Goal (b): rswarm's recovery within this.
pub const RECOVER_GOAL: Duration = Duration::from_secs(3);

const HOSTS: usize = 3;
const NETNS_PREFIX: &str = "rsbsw-";
const SERVICE: &str = "web";

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
    /// Swarm's network for tasks of a service without `--network`. `bridge`: docker0 in each
    /// host's namespace, as in every default install (rswarm's tasks are on its own bridge
    /// likewise: a veth, an address, a route). `none`: REFERENCE.md §2's recipe (`dockerd --bridge
    /// none`), where Swarm's tasks get only a loopback while rswarm's still get their veth.
    #[arg(long, value_enum, default_value_t = SwarmNetwork::Bridge)]
    pub swarm_network: SwarmNetwork,
    /// The dockerd binary (Debian's `docker.io`); the `docker` CLI next to it is used.
    #[arg(long, default_value = "dockerd")]
    pub dockerd: PathBuf,
    /// Interval of the task-list polls (both systems alike). A figure is late by up to one
    /// interval: 10 ms keeps that small next to rswarm's few hundred milliseconds.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Pause between the set-up and (a), and between (a) and (b): lets the kernel finish the
    /// previous cluster's teardown (namespaces, mounts, deleted files) before a timed part.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Give up on one convergence or recovery after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Where the lab's temp dir is created (default /var/tmp).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
}

/// See [`SwarmArgs::swarm_network`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SwarmNetwork {
    /// dockerd's default bridge (docker0).
    Bridge,
    /// `dockerd --bridge none`: tasks without a network get only a loopback.
    None,
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
    settle: Duration,
    timeout: Duration,
    rootfs_tar: PathBuf,
    swarm_network: SwarmNetwork,
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

/// The bridge ports in the hosts' namespaces that are tasks' veths: one per task on a bridge, for
/// either system. Counted after a convergence, outside the timed part, so the table
/// can show that both systems' tasks got the same network.
fn task_veths(lab: &Lab) -> anyhow::Result<usize> {
    let mut n = 0;
    for h in &lab.hosts {
        let out = std::process::Command::new("ip")
            .args(["-n", &h.netns, "-o", "link", "show", "type", "veth"])
            .output()
            .context("cannot run ip")?;
        if !out.status.success() {
            bail!(
                "ip -n {} link show failed: {}",
                h.netns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        n += count_task_veths(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(n)
}

/// Counts the veths in `ip -o link show type veth` output that are ports of a bridge other than
/// Swarm's `docker_gwbridge` (whose one veth, the ingress sandbox's, every Swarm node makes at
/// start): the lab uplink `eth0` has no bridge.
fn count_task_veths(ip_output: &str) -> usize {
    ip_output
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            words.any(|w| w == "master") && words.next().is_some_and(|b| b != "docker_gwbridge")
        })
        .count()
}

// ------------------------------------------------------------------------------------------------
// rswarm
// ------------------------------------------------------------------------------------------------

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
    let RswarmCluster {
        mut dep,
        sockets,
        mut client,
        nodes: ids,
    } = start_rswarm(lab, &ctx.rswarm, &run.to_string()).await?;
    // The next run (of either system) finds the hosts' namespaces as the lab made them.
    dep.reset_netns = true;
    let victim_host = &lab.hosts[HOSTS - 1];
    let victim = ids
        .iter()
        .find(|n| n.1 == victim_host.name)
        .map(|n| n.0.clone())
        .context("the victim node is not listed")?;
    say(
        log,
        format!("rswarm run {run}: 3 nodes ready, image on every host"),
    );
    tokio::time::sleep(ctx.settle).await;

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
            "rswarm run {run}: (a) {} replicas running after {} ({}; {} task veths)",
            ctx.replicas,
            fmt_duration(converge),
            rswarm_timeline(&mut client, start_wall).await?,
            task_veths(lab)?
        ),
    );
    tokio::time::sleep(ctx.settle).await;

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

async fn swarm_run(
    lab: &Lab,
    ctx: &Ctx,
    run: usize,
    log: &mut impl Write,
) -> anyhow::Result<Sample> {
    let SwarmCluster { mut dep, sockets } = start_swarm(
        lab,
        &ctx.dockerd,
        &ctx.docker,
        &ctx.rootfs_tar,
        &run.to_string(),
        &[],
        ctx.swarm_network == SwarmNetwork::Bridge,
    )
    .await?;
    dep.reset_netns = true;
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
    tokio::time::sleep(ctx.settle).await;

    // (a)
    let mut cmd = docker_cmd(&ctx.docker, &sockets[0]);
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
            "swarm run {run}: (a) {} replicas running after {} ({} task veths)",
            ctx.replicas,
            fmt_duration(converge),
            task_veths(lab)?
        ),
    );
    tokio::time::sleep(ctx.settle).await;

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
    let mut lab = Lab::new(parent, HOSTS, NETNS_PREFIX, "rswarm-bench-swarm-")?;
    lab.prepare_images(&ctx.rootfs_tar).await?;
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
    let bin_dir = bin_dir(args.bin_dir.as_deref())?;
    let (dockerd, docker) = check_tools(&bin_dir, args.no_swarm, &args.dockerd, &[])?;
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
        settle: args.settle,
        timeout: args.timeout,
        rootfs_tar: scratch.path().join("rootfs.tar"),
        swarm_network: args.swarm_network,
    };
    let started = Instant::now();
    let mut res = Results::default();
    let mut failures = Vec::new();
    let outcome = tokio::select! {
        r = measure(&args, &ctx, &mut res, &mut failures, &parent, log) => r,
        () = interrupted() => Err(anyhow!("interrupted (Ctrl-C)")),
    };
    drop(scratch);

    writeln!(
        out,
        "## rswarm-bench-swarm: rswarm against Docker Swarm, {} replicas on 3 hosts\n",
        args.replicas
    )?;
    writeln!(out, "{}", machine_line())?;
    writeln!(out, "- rswarm: {}", ctx.rswarm.display())?;
    if args.no_swarm {
        writeln!(
            out,
            "- Docker Swarm: not run (--no-swarm); its figures are REFERENCE.md §2's"
        )?;
    } else {
        writeln!(
            out,
            "- Docker Swarm: {} (one dockerd + its managed containerd per host); {}",
            version_of(&dockerd),
            match args.swarm_network {
                SwarmNetwork::Bridge => "its tasks run on docker0, as in a default install (`--swarm-network bridge`), and rswarm's on its own bridge: each task a veth, an address and a route on both",
                SwarmNetwork::None => "`dockerd --bridge none` as in REFERENCE.md §2 (`--swarm-network none`): Swarm's tasks get only a loopback while rswarm's get a veth, an address and a route, so Swarm does less per task",
            }
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
    writeln!(
        out,
        "- Every run's state directories stay until the bench ends: on ext4 without a journal each new inode skips, one lookup each, the inodes freed in the last 1–6 minutes, so files deleted shortly before (by an earlier run or anything else) slow both systems' starts."
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

    #[test]
    fn task_veths_are_bridge_ports_but_swarms_ingress_one() {
        let out = "2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 4e:7e:1a:2b:3c:4d brd ff:ff:ff:ff:ff:ff link-netns rsbsw-sw\n\
                   9: veth3a1b2c4@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master rsw0 state UP\n\
                   11: vethd00f1e2@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master docker0 state UP\n\
                   13: veth8e2f0a1@if12: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master docker_gwbridge state UP\n";
        assert_eq!(count_task_veths(out), 2);
        assert_eq!(count_task_veths(""), 0);
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
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
