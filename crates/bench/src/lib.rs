//! rswarm's benchmark: what the control plane costs and how fast it reacts, as one markdown table.
//!
//! 1. committed store writes per second (single raft member, fsync on) at several concurrencies;
//! 2. join → ready latency of fresh `rswarm join` processes against an `rswarm init` manager;
//! 3. node-down detection after `kill -9` (session close) and `SIGSTOP` (missed heartbeats);
//! 4. idle RSS of the manager and of the agents.
//!
//! Everything runs on 127.0.0.1 in temp dirs; every process and directory is cleaned up when the
//! run ends, fails or is interrupted (Ctrl-C).

pub mod cluster;
pub mod engine;
pub mod fsinfo;
pub(crate) mod lab;
pub mod overlay;
pub mod sched;
pub mod stats;
pub mod store_bench;
pub mod swarm;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use clap::{Parser, ValueEnum};

use crate::cluster::{Cluster, Failure};
use crate::stats::{fmt_duration, fmt_kib, fmt_period, fmt_rate, Summary};
use crate::store_bench::StoreResult;
use crate::table::{Align, Table};

/// Docker Swarm 20.10 on this machine: a killed worker was listed DOWN after this long
/// (/work/shared/REFERENCE.md §2).
pub const SWARM_NODE_DOWN: Duration = Duration::from_millis(15_400);
/// Docker Swarm 20.10 on this machine: RSS of an idle worker's dockerd and containerd, in MB
/// as reported (REFERENCE.md §2).
pub const SWARM_DOCKERD_MB: f64 = 93.0;
pub const SWARM_CONTAINERD_MB: f64 = 42.0;

/// Command line of `rswarm-bench`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "rswarm-bench",
    version,
    about = "Benchmark rswarm's control plane and print a markdown table"
)]
pub struct Args {
    /// Directory holding the `rswarm` binary (default: the directory of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Fewer samples and shorter runs: a smoke test that finishes in well under two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Run only one part.
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Parent of the temp dirs (default: /var/tmp, which is on the same filesystem as a real
    /// state dir on most hosts; else the system temp dir).
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Store,
    Join,
    Down,
    Rss,
}

/// Sizes and durations of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub parts: Vec<Part>,
    pub store_duration: Duration,
    pub concurrency: Vec<usize>,
    /// Sequential joins measured.
    pub joins: usize,
    pub kill_samples: usize,
    pub stop_samples: usize,
    /// Idle time before RSS is read.
    pub idle: Duration,
    /// Interval of every status poll of the manager.
    pub poll: Duration,
}

impl Plan {
    pub fn new(quick: bool, only: Option<Part>) -> Plan {
        let parts = match only {
            Some(p) => vec![p],
            None => vec![Part::Store, Part::Join, Part::Down, Part::Rss],
        };
        if quick {
            Plan {
                parts,
                store_duration: Duration::from_secs(1),
                concurrency: vec![1, 16, 256],
                joins: 4,
                kill_samples: 2,
                stop_samples: 2,
                idle: Duration::from_secs(2),
                poll: Duration::from_millis(2),
            }
        } else {
            Plan {
                parts,
                store_duration: Duration::from_secs(5),
                concurrency: vec![1, 16, 256],
                joins: 10,
                kill_samples: 5,
                stop_samples: 5,
                idle: Duration::from_secs(5),
                poll: Duration::from_millis(2),
            }
        }
    }

    pub fn runs(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }

    pub fn needs_cluster(&self) -> bool {
        self.runs(Part::Join) || self.runs(Part::Down) || self.runs(Part::Rss)
    }

    /// Workers to join: `joins`, and at least one per node-down sample (each takes one down).
    pub fn workers(&self) -> usize {
        let down = if self.runs(Part::Down) {
            self.kill_samples + self.stop_samples
        } else {
            0
        };
        self.joins.max(down).max(1)
    }
}

/// The `main` of a benchmark binary: runs `bench` (which writes its table to stdout and its
/// progress to stderr) on a multi-threaded runtime; prints the error and fails if it fails.
pub fn block_on_main(
    name: &str,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// "12× faster" / "1.5× slower" (`ours` against `theirs`, both times: smaller is better).
pub fn compare_time(ours: Duration, theirs: Duration) -> String {
    ratio_text(theirs.as_secs_f64(), ours.as_secs_f64(), "faster", "slower")
}

/// "15× smaller" / "1.2× larger" (`ours` against `theirs`, both sizes in the same unit).
pub fn compare_size(ours: f64, theirs: f64) -> String {
    ratio_text(theirs, ours, "smaller", "larger")
}

fn ratio_text(theirs: f64, ours: f64, better: &str, worse: &str) -> String {
    if ours <= 0.0 || theirs <= 0.0 || !ours.is_finite() || !theirs.is_finite() {
        return "—".to_string();
    }
    let (r, word) = if theirs >= ours {
        (theirs / ours, better)
    } else {
        (ours / theirs, worse)
    };
    if r >= 10.0 {
        format!("{r:.0}× {word}")
    } else {
        format!("{r:.1}× {word}")
    }
}

const DASH: &str = "—";

/// The results table and the notes around it.
pub struct Report {
    title: String,
    context: Vec<String>,
    table: Table,
    notes: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    pub fn new(title: impl Into<String>) -> Report {
        let table = Table::new([
            "#",
            "Measurement",
            "Setting",
            "n",
            "p50",
            "p99",
            "max",
            "Result",
            "Docker Swarm (measured on this machine)",
        ])
        .align(3, Align::Right)
        .align(4, Align::Right)
        .align(5, Align::Right)
        .align(6, Align::Right);
        Report {
            title: title.into(),
            context: Vec::new(),
            table,
            notes: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// A line of the bullet list above the table.
    pub fn context(&mut self, line: impl Into<String>) {
        self.context.push(line.into());
    }

    /// A line of the bullet list below the table.
    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    /// A row with a latency summary.
    pub fn latency_row(
        &mut self,
        id: &str,
        what: &str,
        setting: &str,
        s: &Summary,
        result: &str,
        swarm: &str,
    ) {
        self.table.row([
            id.to_string(),
            what.to_string(),
            setting.to_string(),
            s.n.to_string(),
            fmt_duration(s.p50),
            fmt_duration(s.p99),
            fmt_duration(s.max),
            result.to_string(),
            swarm.to_string(),
        ]);
    }

    pub fn store_row(&mut self, r: &StoreResult) {
        let setting = format!("{} in flight, {}", r.concurrency, fmt_period(r.duration));
        self.latency_row(
            "1",
            "Store commit, fsync on",
            &setting,
            &r.latency,
            &fmt_rate(r.per_sec(), "writes"),
            DASH,
        );
    }

    /// A row without latencies.
    pub fn value_row(&mut self, id: &str, what: &str, setting: &str, result: &str, swarm: &str) {
        self.table
            .row([id, what, setting, "1", DASH, DASH, DASH, result, swarm]);
    }

    /// A part that failed: a row saying so, and a non-zero exit.
    pub fn failure(&mut self, id: &str, what: &str, err: &anyhow::Error) {
        let msg = format!("{err:#}");
        let first = msg.lines().next().unwrap_or_default().to_string();
        self.table.row([
            id,
            what,
            DASH,
            DASH,
            DASH,
            DASH,
            DASH,
            &format!("FAILED: {first}"),
            DASH,
        ]);
        self.failures.push(format!("{what}: {msg}"));
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn render(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "## {}", self.title)?;
        writeln!(out)?;
        for c in &self.context {
            writeln!(out, "- {c}")?;
        }
        if !self.context.is_empty() {
            writeln!(out)?;
        }
        self.table.render(out)?;
        if !self.notes.is_empty() {
            writeln!(out)?;
            for n in &self.notes {
                writeln!(out, "- {n}")?;
            }
        }
        Ok(())
    }
}

/// The directory of the running executable.
fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))
}

/// /var/tmp when usable (a disk-backed directory next to /var/lib on most hosts), else the
/// system temp dir.
fn default_tmp_parent() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    if tempfile::tempdir_in(var_tmp).is_ok() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn os_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Writes a progress line (errors ignored: progress is best effort).
macro_rules! progress {
    ($log:expr, $($arg:tt)*) => {{
        let _ = writeln!($log, $($arg)*);
        let _ = $log.flush();
    }};
}

struct Run<'a, L: Write> {
    plan: Plan,
    bin_dir: PathBuf,
    tmp: PathBuf,
    report: &'a mut Report,
    log: &'a mut L,
}

impl<L: Write> Run<'_, L> {
    async fn store(&mut self) -> anyhow::Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("rswarm-bench-store-")
            .tempdir_in(&self.tmp)
            .with_context(|| format!("cannot create a temp dir in {}", self.tmp.display()))?;
        for (i, &c) in self.plan.concurrency.clone().iter().enumerate() {
            progress!(
                self.log,
                "store: {c} commits in flight for {:?} ...",
                self.plan.store_duration
            );
            let r = store_bench::run_level(
                &dir.path().join(format!("level-{i}")),
                c,
                self.plan.store_duration,
            )
            .await
            .with_context(|| format!("store benchmark at concurrency {c}"))?;
            progress!(
                self.log,
                "store: {c} in flight: {} commits, {}, p50 {}, p99 {}",
                r.commits,
                fmt_rate(r.per_sec(), "writes"),
                fmt_duration(r.latency.p50),
                fmt_duration(r.latency.p99)
            );
            self.report.store_row(&r);
        }
        Ok(())
    }

    async fn cluster(&mut self) -> anyhow::Result<()> {
        progress!(self.log, "cluster: starting the manager (rswarm init) ...");
        let mut cluster = Cluster::start(&self.bin_dir, &self.tmp, self.plan.poll).await?;
        let heartbeat = cluster.heartbeat_period().await?;
        progress!(
            self.log,
            "cluster: manager up in {}; heartbeat period {}",
            cluster.dir().display(),
            fmt_period(heartbeat)
        );

        let workers = self.plan.workers();
        let mut joins = Vec::new();
        for n in 1..=workers {
            let d = cluster
                .join(n)
                .await
                .with_context(|| format!("join {n} of {workers}"))?;
            progress!(
                self.log,
                "join {n}/{workers}: ready after {}",
                fmt_duration(d)
            );
            joins.push(d);
        }
        if self.plan.runs(Part::Join) {
            let s = Summary::of(&joins).context("no joins")?;
            self.report.latency_row(
                "2",
                "Join → Ready",
                &format!(
                    "{workers} sequential `rswarm join` processes, spawn → `ready`, ListNodes every {}",
                    fmt_period(self.plan.poll)
                ),
                &s,
                DASH,
                DASH,
            );
        }

        // Measured before the node-down part (which takes workers away), listed after it.
        let rss_rows = if self.plan.runs(Part::Rss) {
            self.rss(&cluster, workers).await?
        } else {
            Vec::new()
        };
        let down = self.down(&mut cluster, heartbeat).await;
        for row in rss_rows {
            self.report.table_row(row);
        }
        down?;
        progress!(self.log, "cluster: stopping every process ...");
        drop(cluster);
        Ok(())
    }

    async fn down(&mut self, cluster: &mut Cluster, heartbeat: Duration) -> anyhow::Result<()> {
        if self.plan.runs(Part::Down) {
            let mut next = 0;
            let cases = [
                (
                    "3a",
                    "Node down: `kill -9` agent",
                    "session stream closes".to_string(),
                    Failure::Kill,
                    self.plan.kill_samples,
                ),
                (
                    "3b",
                    "Node down: `SIGSTOP` agent",
                    format!("missed heartbeats, 3 × {}", fmt_period(heartbeat)),
                    Failure::Stop,
                    self.plan.stop_samples,
                ),
            ];
            for (id, what, setting, how, samples) in cases {
                let mut times = Vec::new();
                for _ in 0..samples {
                    // Let the previous change settle before the next sample.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let host = cluster.workers[next].hostname.clone();
                    let d = cluster
                        .take_down(next, how)
                        .await
                        .with_context(|| format!("{what} on {host}"))?;
                    progress!(self.log, "{what} ({host}): down after {}", fmt_duration(d));
                    times.push(d);
                    next += 1;
                }
                let s = Summary::of(&times).context("no samples")?;
                self.report.latency_row(
                    id,
                    what,
                    &setting,
                    &s,
                    &format!("p50 {} than Swarm", compare_time(s.p50, SWARM_NODE_DOWN)),
                    &format!(
                        "{:.1} s (worker killed → node DOWN)",
                        SWARM_NODE_DOWN.as_secs_f64()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Idle RSS of the manager and the agents: the table rows.
    async fn rss(&mut self, cluster: &Cluster, workers: usize) -> anyhow::Result<Vec<Row>> {
        progress!(self.log, "rss: idle for {:?} ...", self.plan.idle);
        tokio::time::sleep(self.plan.idle).await;
        let manager = fsinfo::rss_kib(cluster.manager.pid()).context("manager RSS")?;
        let mut agents = Vec::new();
        for w in &cluster.workers {
            let kib = fsinfo::rss_kib(w.daemon.pid())
                .with_context(|| format!("RSS of {}", w.hostname))?;
            agents.push((w.hostname.clone(), kib));
        }
        progress!(
            self.log,
            "rss: manager {}, agents {}",
            fmt_kib(manager),
            agents
                .iter()
                .map(|(_, k)| fmt_kib(*k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let setting = format!(
            "{workers} workers joined, {} idle",
            fmt_period(self.plan.idle)
        );
        rss_rows(&setting, manager, &agents)
    }

    async fn all(&mut self) {
        if self.plan.runs(Part::Store) {
            if let Err(e) = self.store().await {
                progress!(self.log, "store: FAILED: {e:#}");
                self.report.failure("1", "Store commit, fsync on", &e);
            }
        }
        if self.plan.needs_cluster() {
            if let Err(e) = self.cluster().await {
                progress!(self.log, "cluster: FAILED: {e:#}");
                self.report.failure("2–4", "Cluster measurements", &e);
            }
        }
    }
}

/// One row of the results table.
pub type Row = [String; 9];

/// The RSS rows: the manager, the first agent against Swarm's worker, and every agent.
pub fn rss_rows(
    setting: &str,
    manager_kib: u64,
    agents: &[(String, u64)],
) -> anyhow::Result<Vec<Row>> {
    let (host, first) = agents.first().cloned().context("no agents")?;
    let swarm_mb = SWARM_DOCKERD_MB + SWARM_CONTAINERD_MB;
    let mut sorted: Vec<u64> = agents.iter().map(|(_, k)| *k).collect();
    sorted.sort_unstable();
    let pct = |p| fmt_kib(stats::percentile(&sorted, p).unwrap_or_default());
    let sum: u64 = sorted.iter().sum();
    let s = |v: &str| v.to_string();
    Ok(vec![
        [
            s("4"),
            s("Idle RSS: manager (`rswarm init`)"),
            s(setting),
            s("1"),
            s(DASH),
            s(DASH),
            s(DASH),
            fmt_kib(manager_kib),
            s(DASH),
        ],
        [
            s("4"),
            format!("Idle RSS: one agent ({host})"),
            s(setting),
            s("1"),
            s(DASH),
            s(DASH),
            s(DASH),
            format!(
                "{} ({} than Swarm's worker)",
                fmt_kib(first),
                compare_size(first as f64 / 1024.0, swarm_mb)
            ),
            format!(
                "dockerd {SWARM_DOCKERD_MB:.0} MB + containerd {SWARM_CONTAINERD_MB:.0} MB = {swarm_mb:.0} MB"
            ),
        ],
        [
            s("4"),
            s("Idle RSS: every agent"),
            s(setting),
            sorted.len().to_string(),
            pct(50.0),
            pct(99.0),
            pct(100.0),
            format!("all agents + manager: {}", fmt_kib(sum + manager_kib)),
            s(DASH),
        ],
    ])
}

impl Report {
    /// A row as given.
    pub fn table_row(&mut self, cells: Row) {
        self.table.row(cells);
    }
}

/// Resolves on Ctrl-C; never when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the benchmark: progress lines go to `log`, the table to `out` (also after a failure or
/// Ctrl-C, with what was measured until then). Fails if any part failed.
pub async fn run(args: Args, out: &mut impl Write, log: &mut impl Write) -> anyhow::Result<()> {
    let plan = Plan::new(args.quick, args.only);
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => exe_dir()?,
    };
    let tmp = args.tmp_dir.unwrap_or_else(default_tmp_parent);
    let started = Instant::now();

    let mut report = Report::new(format!(
        "rswarm-bench ({} run{})",
        if args.quick { "quick" } else { "full" },
        match args.only {
            Some(p) => format!(", only {}", format!("{p:?}").to_lowercase()),
            None => String::new(),
        }
    ));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.context(format!("machine: {cpus} CPUs, Linux {}", os_release()));
    report.context(format!(
        "load average at start: {} (other work on the machine skews every figure)",
        load_average()
    ));
    report.context(format!("binaries: {}", bin_dir.display()));
    report.context(format!(
        "temp dirs (raft store, state dirs): {}",
        fsinfo::describe_dir(&tmp)
    ));
    report.context(
        "Docker Swarm figures: Swarm 20.10 measured on this machine (REFERENCE.md §2)".to_string(),
    );

    let outcome = {
        let mut run = Run {
            plan: plan.clone(),
            bin_dir,
            tmp,
            report: &mut report,
            log,
        };
        tokio::select! {
            () = run.all() => Ok(()),
            () = interrupted() => Err(anyhow!("interrupted (Ctrl-C)")),
        }
    };
    if plan.runs(Part::Store) {
        report.note(
            "1: each level bootstraps a fresh single-member raft store (redb, fsync per commit \
             batch) and creates one Node per transaction; writes/s counts commits resolved \
             (applied locally) over the whole run. Proposals queued while a batch is on disk \
             share the next fsync (group commit).",
        );
    }
    if plan.runs(Part::Join) || plan.runs(Part::Down) {
        report.note(
            "2–3: times are measured by polling the manager's ListNodes over its unix socket, \
             so they include up to one poll interval plus one RPC. With fewer than 100 samples, \
             p99 is the maximum.",
        );
    }
    if plan.runs(Part::Down) {
        report.note(
            "3b: the manager marks a node down once its last heartbeat is older than 3 periods \
             (checked every period/4); the last beat came up to one period before the SIGSTOP, \
             so from the SIGSTOP expect 2 to 3¼ periods (1.0–1.63 s at 500 ms). Swarm's 15.4 s \
             is its 5 s heartbeat × 3.",
        );
    }
    if let Err(e) = &outcome {
        report.note(format!("the run was cut short ({e}): the table is partial"));
    }
    report.note(format!(
        "whole run: {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    report.render(out).context("cannot write the table")?;
    out.flush()?;
    outcome?;
    if !report.failures().is_empty() {
        return Err(anyhow!(
            "some measurements failed:\n{}",
            report.failures().join("\n")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_has_enough_workers_for_every_down_sample() {
        for quick in [false, true] {
            for only in [None, Some(Part::Down), Some(Part::Join), Some(Part::Rss)] {
                let p = Plan::new(quick, only);
                if p.runs(Part::Down) {
                    assert!(p.workers() >= p.kill_samples + p.stop_samples);
                }
                assert!(p.workers() >= 1);
            }
        }
        let full = Plan::new(false, None);
        assert_eq!(full.joins, 10);
        assert_eq!(full.concurrency, vec![1, 16, 256]);
        assert_eq!(full.store_duration, Duration::from_secs(5));
        assert_eq!(full.poll, Duration::from_millis(2));
        assert!(full.needs_cluster());
        let store = Plan::new(true, Some(Part::Store));
        assert!(!store.needs_cluster());
        assert!(store.runs(Part::Store) && !store.runs(Part::Rss));
    }

    #[test]
    fn comparisons_read_naturally() {
        assert_eq!(
            compare_time(Duration::from_millis(154), SWARM_NODE_DOWN),
            "100× faster"
        );
        assert_eq!(
            compare_time(Duration::from_millis(1_540), SWARM_NODE_DOWN),
            "10× faster"
        );
        assert_eq!(
            compare_time(Duration::from_millis(7_700), SWARM_NODE_DOWN),
            "2.0× faster"
        );
        assert_eq!(
            compare_time(Duration::from_secs(31), SWARM_NODE_DOWN),
            "2.0× slower"
        );
        assert_eq!(compare_time(Duration::ZERO, SWARM_NODE_DOWN), "—");
        assert_eq!(compare_size(13.5, 135.0), "10× smaller");
        assert_eq!(compare_size(270.0, 135.0), "2.0× larger");
    }

    #[test]
    fn rss_rows_compare_the_first_agent_with_swarm() {
        let agents = [("w01".to_string(), 10_240), ("w02".to_string(), 12_288)];
        let rows = rss_rows("idle", 20_480, &agents).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0][7], "20.0 MiB");
        assert_eq!(rows[1][1], "Idle RSS: one agent (w01)");
        assert_eq!(rows[1][7], "10.0 MiB (14× smaller than Swarm's worker)");
        assert!(rows[1][8].ends_with("= 135 MB"), "{}", rows[1][8]);
        assert_eq!(rows[2][3], "2");
        assert_eq!(rows[2][4], "10.0 MiB");
        assert_eq!(rows[2][6], "12.0 MiB");
        assert_eq!(rows[2][7], "all agents + manager: 42.0 MiB");
        assert!(rss_rows("idle", 1, &[]).is_err());
    }

    #[test]
    fn report_renders_title_context_table_and_notes() {
        let mut r = Report::new("t");
        r.context("machine: x");
        r.latency_row(
            "2",
            "Join",
            "s",
            &Summary::of(&[Duration::from_millis(5)]).unwrap(),
            "—",
            "—",
        );
        r.value_row("4", "RSS", "idle", "9.0 MiB", "135 MB");
        r.failure("3", "Down", &anyhow!("no|luck").context("outer"));
        r.note("n1");
        let mut buf = Vec::new();
        r.render(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "## t");
        assert_eq!(lines[2], "- machine: x");
        assert!(lines[4].starts_with("| #   | Measurement "), "{text}");
        assert!(lines[5].contains("--: |"), "{text}");
        assert!(lines[6].contains("| 5.00 ms |"), "{text}");
        assert!(lines[7].contains("| 9.0 MiB "), "{text}");
        assert!(lines[8].contains("FAILED: outer: no\\|luck"), "{text}");
        assert_eq!(*lines.last().unwrap(), "- n1");
        assert_eq!(r.failures().len(), 1);
        // Every table line has the same number of columns.
        let cols: Vec<usize> = lines[4..9]
            .iter()
            .map(|l| l.matches(" |").count())
            .collect();
        assert!(cols.iter().all(|c| *c == 9), "{cols:?}\n{text}");
    }
}
