//! `rswarm-bench-sched`: scheduler throughput, placements per second, at 1,000 and 5,000 nodes.
//!
//! Two measurements per cluster size:
//! - *scheduler*: the pure `rswarm_orchestrator::schedule` alone, placing every pending task of a
//!   freshly created service in batches (each batch applied to the state, as the loop commits it);
//! - *end to end*: the manager's real reconciliation loops (orchestrator, scheduler, updater,
//!   reaper), the dispatcher's assignment router and status batcher, and one simulated agent per
//!   node (an in-process task that reads its assignment stream and reports each task `running`,
//!   no containers), over the in-memory store and over a single-member raft store with fsync;
//!   timed from the service's creation to the last task reported running.
//!
//! And the dispatcher's overlay tables (`Networks` streams) after one committed change (a task
//! stops), with the tasks spread over `--networks` overlay networks: every node's table computed
//! by a scan of the tasks per node and network (as each node's stream did before) against one
//! shared `NetView` made after the previous one, and tables cut only for the nodes on the
//! changed network (now).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use rswarm_api::types::v1 as pb;
use rswarm_manager::assignments::{Hub, Report, StatusBatcher};
use rswarm_manager::{netview, orchestration};
use rswarm_store::{
    Availability, Cluster, MemoryBackend, Network, NetworkAttachment, NetworkAttachmentConfig,
    NetworkSpec, Node, NodeStatus, Service, ServiceMode, ServiceSpec, StateMachine, Store, Task,
    TaskSpec, TaskState, TaskStatus, Txn,
};
use std::net::Ipv4Addr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stats::{fmt_duration, fmt_rate};
use crate::store_bench::Member;
use crate::table::{Align, Table};

#[derive(Debug, Parser)]
#[command(
    name = "rswarm-bench-sched",
    about = "Scheduler throughput with simulated agents"
)]
pub struct SchedArgs {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 5000])]
    pub nodes: Vec<usize>,
    /// Replicas of the service placed at each size.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Where the raft store is created (a temporary directory inside it).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Skip the raft-backed run.
    #[arg(long)]
    pub no_raft: bool,
    /// Overlay networks the tasks are spread over, for the network-table measurement.
    #[arg(long, default_value_t = 100)]
    pub networks: usize,
    /// Give up on an end-to-end run after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            id: format!("node{i:05}"),
            hostname: format!("host{i:05}"),
            os: "linux".into(),
            arch: "amd64".into(),
            status: NodeStatus::Ready,
            availability: Availability::Active,
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            ..Node::default()
        })
        .collect()
}

fn service(replicas: usize) -> Service {
    Service {
        id: "bench-service".into(),
        spec: ServiceSpec {
            name: "bench".into(),
            mode: ServiceMode::Replicated {
                replicas: replicas as u64,
            },
            task: TaskSpec {
                image: "busybox".into(),
                ..TaskSpec::default()
            },
            ..ServiceSpec::default()
        },
        spec_version: 1,
        ..Service::default()
    }
}

async fn seed(store: &Store, n: usize) -> anyhow::Result<()> {
    let mut ops = vec![];
    if store.get::<Cluster>(Cluster::ID).is_none() {
        ops.push(Txn::create(Cluster {
            id: Cluster::ID.into(),
            cluster_id: "bench".into(),
            ..Cluster::default()
        }));
    }
    for chunk in nodes(n).chunks(1000) {
        ops.extend(chunk.iter().cloned().map(Txn::create));
        store.commit(Txn::new(std::mem::take(&mut ops))).await?;
    }
    Ok(())
}

/// A state of `n` nodes and `tasks` running tasks of one service, round-robin over the nodes, in
/// blocks of `tasks / networks` per overlay network (as services of that many replicas, each on
/// its own network): every node holds tasks of several networks.
fn network_state(n: usize, tasks: usize, networks: usize) -> anyhow::Result<StateMachine> {
    if networks == 0 || networks > 250 || tasks.div_ceil(networks) > 250 * 250 {
        bail!("--networks must be 1–250, with at most 62,500 tasks per network");
    }
    let octet = |v: usize| u8::try_from(v).unwrap_or(u8::MAX);
    let mut ops = Vec::new();
    let mut cfgs = Vec::new();
    let mut vips = Vec::new();
    for k in 0..networks {
        let id = format!("net{k:03}");
        let net = Network {
            id: id.clone(),
            meta: Default::default(),
            spec: NetworkSpec {
                name: id.clone(),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            },
            subnet: format!("10.{k}.0.0/16")
                .parse()
                .map_err(anyhow::Error::msg)?,
            gateway: format!("10.{k}.0.1").parse()?,
            vni: 4096 + u32::try_from(k)?,
        };
        ops.push(Txn::create(net));
        cfgs.push(NetworkAttachmentConfig {
            target: id.clone(),
            aliases: vec![],
        });
        vips.push(NetworkAttachment {
            network_id: id,
            addr: Ipv4Addr::new(10, octet(k), 255, 2),
            aliases: vec![],
        });
    }
    for (i, mut node) in nodes(n).into_iter().enumerate() {
        node.addr = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        ops.push(Txn::create(node));
    }
    let mut svc = service(tasks);
    svc.spec.task.networks = cfgs;
    svc.virtual_ips = vips;
    ops.push(Txn::create(svc));
    let per_network = tasks.div_ceil(networks);
    for i in 0..tasks {
        let (k, j) = (i / per_network, i % per_network);
        ops.push(Txn::create(Task {
            id: format!("task{i:06}"),
            service_id: "bench-service".into(),
            service_name: "bench".into(),
            slot: i as u64 + 1,
            node_id: format!("node{:05}", i % n),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                ..TaskStatus::default()
            },
            networks: vec![NetworkAttachment {
                network_id: format!("net{k:03}"),
                addr: Ipv4Addr::new(10, octet(k), octet(j / 250), octet(j % 250 + 3)),
                aliases: vec![],
            }],
            ..Task::default()
        }));
    }
    let mut state = StateMachine::new();
    state
        .apply(1, &Txn::new(ops))
        .map_err(|e| anyhow::anyhow!("cannot build the network state: {e}"))?;
    Ok(state)
}

/// What one committed change (a task of network 0 stops) costs the dispatcher's overlay tables.
pub struct NetworkTables {
    /// Every node's table by a scan per node, as each node's stream computed it before.
    pub scan: Duration,
    /// One shared view made after the previous one, and for each node one of whose networks
    /// changed, a partial table of the networks that changed with only their changed endpoints.
    pub shared: Duration,
    /// Nodes whose table changed (both ways send only those).
    pub nodes_sent: usize,
    /// Endpoints in those nodes' whole tables (what was sent before partial tables).
    pub endpoints_whole: usize,
    /// Endpoints in the partial tables sent.
    pub endpoints_sent: usize,
    /// Task ids of endpoints gone, in the partial tables sent.
    pub endpoints_gone: usize,
}

/// Measures [`NetworkTables`] on [`network_state`], and checks that both ways agree.
pub fn network_tables(n: usize, tasks: usize, networks: usize) -> anyhow::Result<NetworkTables> {
    let mut state = network_state(n, tasks, networks)?;
    let ids: Vec<String> = (0..n).map(|i| format!("node{i:05}")).collect();
    let before = netview::NetView::of(&state);
    let last: Vec<_> = ids.iter().map(|id| before.entries(id)).collect();
    let mut t = state
        .get::<Task>("task000000")
        .context("no task000000")?
        .clone();
    t.status.state = TaskState::Failed;
    state
        .apply(2, &Txn::new(vec![Txn::update(t)]))
        .map_err(|e| anyhow::anyhow!("cannot stop a task: {e}"))?;

    let t0 = Instant::now();
    let scanned: Vec<_> = ids
        .iter()
        .map(|id| netview::scan_node_table(&state, id))
        .collect();
    let scan = t0.elapsed();

    let t0 = Instant::now();
    let view = netview::NetView::after(&state, Some(&before));
    let port = view.data_path_port();
    let sent: Vec<(usize, _)> = ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| {
            netview::update(
                &last[i],
                port,
                &view.entries(id),
                port,
                netview::Changes::Endpoints,
            )
            .map(|t| (i, t))
        })
        .collect();
    let shared = t0.elapsed();

    // What each node makes of its partial table is what a scan gives.
    for (i, change) in &sent {
        let whole = netview::table(&last[*i], before.data_path_port());
        let merged = rswarm_agent::netagent::apply_table(Some(&whole), change.clone());
        if merged.as_ref() != Some(&scanned[*i]) {
            bail!("the shared view and the scan disagree on {}", ids[*i]);
        }
    }
    for i in (0..n).step_by(97) {
        if view.node_table(&ids[i]) != scanned[i] {
            bail!("the shared view and the scan disagree on {}", ids[i]);
        }
    }
    Ok(NetworkTables {
        scan,
        shared,
        nodes_sent: sent.len(),
        endpoints_whole: sent
            .iter()
            .flat_map(|(i, _)| &scanned[*i].networks)
            .map(|n| n.endpoints.len())
            .sum(),
        endpoints_sent: sent
            .iter()
            .flat_map(|(_, t)| &t.networks)
            .map(|n| n.endpoints.len())
            .sum(),
        endpoints_gone: sent
            .iter()
            .flat_map(|(_, t)| &t.networks)
            .map(|n| n.gone_endpoints.len())
            .sum(),
    })
}

/// The pure scheduler: every task of a new service placed, batch by batch.
pub fn pure_scheduler(n: usize, tasks: usize) -> anyhow::Result<(Duration, usize)> {
    let mut state = StateMachine::new();
    let mut index = 1;
    let mut apply = |state: &mut StateMachine, ops| -> anyhow::Result<()> {
        state.apply(index, &Txn::new(ops))?;
        index += 1;
        Ok(())
    };
    for chunk in nodes(n).chunks(1000) {
        apply(&mut state, chunk.iter().cloned().map(Txn::create).collect())?;
    }
    apply(&mut state, vec![Txn::create(service(tasks))])?;
    let mut next = 0u64;
    let plan = rswarm_orchestrator::reconcile(&state, now_ms(), &mut || {
        next += 1;
        format!("task{next:07}")
    });
    apply(&mut state, plan.ops)?;
    let start = Instant::now();
    let mut placed = 0;
    loop {
        let s = rswarm_orchestrator::schedule(&state, now_ms(), orchestration::SCHEDULER_BATCH);
        if s.assigned.is_empty() {
            break;
        }
        placed += s.assigned.len();
        apply(
            &mut state,
            s.assigned.into_iter().map(Txn::update).collect(),
        )?;
    }
    Ok((start.elapsed(), placed))
}

/// One simulated agent: reads its node's assignments, reports every new task running.
async fn fake_agent(hub: Hub, batcher: StatusBatcher, node_id: String, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(hub.stream(node_id.clone(), tx, cancel.clone()));
    while let Some(Ok(msg)) = rx.recv().await {
        let reports: Vec<Report> = msg
            .tasks
            .iter()
            .filter(|t: &&pb::Task| {
                t.desired_state == "running"
                    && t.status.as_ref().is_some_and(|s| s.state == "assigned")
            })
            .map(|t| Report {
                node_id: node_id.clone(),
                task_id: t.id.clone(),
                status: TaskStatus {
                    state: TaskState::Running,
                    timestamp_ms: now_ms(),
                    message: "started".into(),
                    ..TaskStatus::default()
                },
            })
            .collect();
        if batcher.report(reports).await.is_err() {
            return;
        }
    }
}

/// The control plane end to end: from the service's creation to every task running.
pub async fn end_to_end(
    store: Store,
    n: usize,
    tasks: usize,
    timeout: Duration,
) -> anyhow::Result<Phases> {
    seed(&store, n).await?;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let hub = Hub::spawn(store.clone(), cancel.clone());
    let batcher = StatusBatcher::spawn(store.clone(), cancel.clone());
    for node in store.list::<Node>() {
        tokio::spawn(fake_agent(
            hub.clone(),
            batcher.clone(),
            node.id,
            cancel.clone(),
        ));
    }
    for l in orchestration::loops() {
        tokio::spawn(orchestration::run_loop(l, store.clone(), cancel.clone()));
    }
    // Let every agent open its stream first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut events = store.subscribe();
    let start = Instant::now();
    store
        .commit(Txn::new(vec![Txn::create(service(tasks))]))
        .await?;
    let deadline = start + timeout;
    // Count from the change stream (reading every task at each change would cost the control
    // plane more than it does itself).
    let mut created = std::collections::HashSet::new();
    let mut assigned = std::collections::HashSet::new();
    let mut running = std::collections::HashSet::new();
    let (mut all_created, mut all_assigned) = (None, None);
    while running.len() < tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) => bail!(
                "only {} of {tasks} tasks running after {timeout:?}",
                running.len()
            ),
            Ok(Err(e)) => bail!("lost the store's change stream: {e}"),
            Ok(Ok(batch)) => {
                for c in &batch.changes {
                    if let rswarm_store::Object::Task(t) = &*c.object {
                        created.insert(t.id.clone());
                        if t.status.state >= TaskState::Assigned {
                            assigned.insert(t.id.clone());
                        }
                        if t.status.state == TaskState::Running {
                            running.insert(t.id.clone());
                        }
                    }
                }
                if all_created.is_none() && created.len() >= tasks {
                    all_created = Some(start.elapsed());
                }
                if all_assigned.is_none() && assigned.len() >= tasks {
                    all_assigned = Some(start.elapsed());
                }
            }
        }
    }
    Ok(Phases {
        created: all_created.unwrap_or_default(),
        assigned: all_assigned.unwrap_or_default(),
        running: start.elapsed(),
    })
}

/// When the last task was created, assigned and reported running, from the service's creation.
pub struct Phases {
    pub created: Duration,
    pub assigned: Duration,
    pub running: Duration,
}

pub async fn run(
    args: SchedArgs,
    out: &mut impl std::io::Write,
    log: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let mut table = Table::new([
        "nodes",
        "tasks",
        "what",
        "all created",
        "all assigned",
        "all running",
        "placements",
        "goal",
    ])
    .align(0, Align::Right)
    .align(1, Align::Right)
    .align(3, Align::Right)
    .align(4, Align::Right)
    .align(5, Align::Right)
    .align(6, Align::Right);
    for &n in &args.nodes {
        writeln!(log, "{n} nodes: pure scheduler")?;
        let (t, placed) = pure_scheduler(n, args.tasks)?;
        if placed != args.tasks {
            bail!(
                "the scheduler placed {placed} of {} tasks on {n} nodes",
                args.tasks
            );
        }
        let rate = |t: Duration| args.tasks as f64 / t.as_secs_f64().max(1e-9);
        table.row([
            n.to_string(),
            args.tasks.to_string(),
            "scheduler alone (schedule(), batches of 1024)".into(),
            String::new(),
            fmt_duration(t),
            String::new(),
            fmt_rate(rate(t), "tasks"),
            "≥ 20000 tasks/s".to_string(),
        ]);
        writeln!(log, "{n} nodes: end to end, in-memory store")?;
        let p = end_to_end(
            MemoryBackend::store(StateMachine::new()),
            n,
            args.tasks,
            args.timeout,
        )
        .await?;
        table.row([
            n.to_string(),
            args.tasks.to_string(),
            "create → all running, simulated agents, in-memory store".into(),
            fmt_duration(p.created),
            fmt_duration(p.assigned),
            fmt_duration(p.running),
            fmt_rate(rate(p.running), "tasks"),
            "≥ 20000 tasks/s".to_string(),
        ]);
        if !args.no_raft {
            writeln!(log, "{n} nodes: end to end, raft store with fsync")?;
            let dir = tempfile::Builder::new()
                .prefix("rswarm-bench-sched-")
                .tempdir_in(&args.dir)
                .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
            let member = Member::start(&dir.path().join("raft")).await?;
            let p = end_to_end(member.store(), n, args.tasks, args.timeout).await;
            member.stop().await?;
            let p = p?;
            table.row([
                n.to_string(),
                args.tasks.to_string(),
                "create → all running, simulated agents, raft store (fsync)".into(),
                fmt_duration(p.created),
                fmt_duration(p.assigned),
                fmt_duration(p.running),
                fmt_rate(rate(p.running), "tasks"),
                "—".to_string(),
            ]);
        }
    }
    table.render(out)?;
    let headers = [
        "nodes",
        "tasks",
        "networks",
        "a task stops: every node's table by a scan (before)",
        "one shared view, the changed endpoints to the changed network's nodes (now)",
        "speed-up",
        "tables sent",
        "endpoints in their whole tables (before)",
        "endpoints sent (now)",
        "ids of endpoints gone sent (now)",
    ];
    // Every column is a number.
    let mut nets = (0..headers.len()).fold(Table::new(headers), |t, c| t.align(c, Align::Right));
    for &n in &args.nodes {
        writeln!(log, "{n} nodes: overlay tables after one change")?;
        let r = network_tables(n, args.tasks, args.networks)?;
        nets.row([
            n.to_string(),
            args.tasks.to_string(),
            args.networks.to_string(),
            fmt_duration(r.scan),
            fmt_duration(r.shared),
            format!(
                "{:.0}×",
                r.scan.as_secs_f64() / r.shared.as_secs_f64().max(1e-9)
            ),
            r.nodes_sent.to_string(),
            r.endpoints_whole.to_string(),
            r.endpoints_sent.to_string(),
            r.endpoints_gone.to_string(),
        ]);
    }
    writeln!(out)?;
    nets.render(out)?;
    Ok(())
}
