//! Waiting for a service to converge, with docker's progress display: one bar per replica slot
//! (or per node for global services), `overall progress: 4 out of 6 tasks`, then `verify: …` for
//! the update monitor period.
//!
//! [`Watch`] is pure: given what the manager reports (the service, its tasks, the active nodes) and
//! the current instant, it says which lines to show and whether the service converged, is still
//! converging, or cannot converge (and why). [`Renderer`] turns lines into terminal output.
//! The polling loop lives in `service_cmds`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::time::{Duration, Instant};

use rswarm_api::types::v1::{Service, Task};

/// How long a task may stay unplaced (or unstarted) with an error before we give up.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);
/// How long, beyond the restart delay, a failed slot may stay without a replacement.
pub const REPLACE_GRACE: Duration = Duration::from_secs(5);
/// Docker draws no bars beyond this many tasks, only the overall line.
const MAX_BARS: u64 = 100;
/// Docker's default update monitor period (used when the spec says 0).
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// The bar's scale: the last state before `running` fills it.
const MAX_PROGRESS: u32 = 9;
/// Width of the state column ("preparing").
const STATE_WIDTH: usize = 9;

/// Docker's numbering of the states a task goes through on its way to running (0: any other).
pub fn state_number(state: &str) -> u32 {
    match state {
        "new" => 1,
        "allocated" => 2,
        "pending" => 3,
        "assigned" => 4,
        "accepted" => 5,
        "preparing" => 6,
        "ready" => 7,
        "starting" => 8,
        "running" => 9,
        _ => 0,
    }
}

/// `[=========>        ]`: 50 characters, as docker's progress bar.
pub fn bar(current: u32, total: u32) -> String {
    let pct = if total == 0 {
        0
    } else {
        ((f64::from(current) / f64::from(total) * 100.0) as usize / 2).min(50)
    };
    format!("[{}>{}]", "=".repeat(pct), " ".repeat(50 - pct))
}

/// One progress line: `1/6: running   [====…>]`, `overall progress: 4 out of 6 tasks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub id: String,
    pub action: String,
    /// (state number, of MAX_PROGRESS) for task lines.
    pub progress: Option<(u32, u32)>,
}

impl Line {
    fn new(id: impl Into<String>, action: impl Into<String>) -> Line {
        Line {
            id: id.into(),
            action: action.into(),
            progress: None,
        }
    }

    /// The text; the bar only when drawing on a terminal.
    pub fn text(&self, with_bar: bool) -> String {
        match self.progress {
            Some((cur, total)) if with_bar => format!(
                "{}: {:<w$} {}",
                self.id,
                self.action,
                bar(cur, total),
                w = STATE_WIDTH
            ),
            _ => format!("{}: {}", self.id, self.action)
                .trim_end()
                .to_string(),
        }
    }
}

/// What the watch concluded this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Waiting,
    Converged,
    /// The service cannot converge; the text says why.
    Failed(String),
}

/// An error as docker shows it on a progress line: one line, at most 75 characters.
pub fn trunc_error(err: &str) -> String {
    let e = err.replace('\n', " ");
    if e.chars().count() > 75 {
        format!("{}…", e.chars().take(74).collect::<String>())
    } else {
        e
    }
}

/// Follows one service towards convergence (docker's `ServiceProgress`).
#[derive(Debug)]
pub struct Watch {
    /// `service rollback` (or `update --rollback`): a completed rollback is success.
    manual_rollback: bool,
    /// An update status that was there before our change (a scale changes no task, so the status
    /// of an earlier update stays): ignored until it changes.
    stale_status_started: Option<String>,
    initialized: bool,
    done: bool,
    rollback: bool,
    /// The message of a rollback the manager started on its own (the update failed).
    auto_rollback: Option<String>,
    slot_map: HashMap<u64, u64>,
    converged_at: Option<Instant>,
    stuck_since: HashMap<String, Instant>,
    missing_since: Option<Instant>,
    no_tasks_since: Option<Instant>,
}

struct Counted {
    lines: Vec<Line>,
    running: u64,
    total: u64,
    /// A reason the service cannot converge, already timed.
    failure: Option<String>,
}

impl Watch {
    pub fn new(manual_rollback: bool, stale_status_started: Option<String>) -> Watch {
        Watch {
            manual_rollback,
            stale_status_started,
            initialized: false,
            done: false,
            rollback: false,
            auto_rollback: None,
            slot_map: HashMap::new(),
            converged_at: None,
            stuck_since: HashMap::new(),
            missing_since: None,
            no_tasks_since: None,
        }
    }

    /// One round: the lines to (re)draw and the outcome. `active_nodes`: ids of nodes that are not
    /// down (`None` when unknown: every node counts as active).
    pub fn step(
        &mut self,
        svc: &Service,
        tasks: &[Task],
        active_nodes: Option<&HashSet<String>>,
        now: Instant,
    ) -> (Vec<Line>, Outcome) {
        let mut lines = Vec::new();
        if let Some(fail) = self.check_update_status(svc, &mut lines) {
            return (lines, Outcome::Failed(fail));
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let up_to_date: Vec<&Task> = tasks
            .iter()
            // By content, not spec_version: an update leaves tasks that already run what the new
            // spec asks for (after a rollback, most of them) in place.
            .filter(|t| t.spec == spec.task && t.ports == spec.ports)
            .collect();
        let active =
            |t: &Task| t.node_id.is_empty() || active_nodes.is_none_or(|a| a.contains(&t.node_id));
        let counted = if spec.mode == "global" {
            self.global(svc, &up_to_date, &active, now)
        } else {
            self.replicated(svc, &up_to_date, &active, now)
        };
        let Some(counted) = counted else {
            lines.push(Line::new("overall progress", "waiting for new tasks"));
            if let Some(since) = self.no_tasks_since {
                if svc.desired_tasks == 0 && now.duration_since(since) >= STUCK_AFTER {
                    return (
                        lines,
                        Outcome::Failed(
                            "no node can run a task of this global service: check its constraints (rswarm service inspect --pretty) and that nodes are Ready and active (rswarm node ls)".into(),
                        ),
                    );
                }
            }
            return (lines, Outcome::Waiting);
        };
        lines.extend(counted.lines);
        if let Some(f) = counted.failure {
            return (lines, Outcome::Failed(f));
        }
        let converged = counted.running == counted.total;
        if converged {
            let at = *self.converged_at.get_or_insert(now);
            let monitor = self.monitor(svc);
            let elapsed = now.duration_since(at);
            if elapsed >= monitor {
                if let Some(msg) = &self.auto_rollback {
                    return (
                        lines,
                        Outcome::Failed(format!("service rolled back: {msg}")),
                    );
                }
                lines.push(Line::new("verify", "Service converged"));
                return (lines, Outcome::Converged);
            }
            // Whole seconds left, rounded up (docker shows 5 right after converging).
            let wait = (monitor - elapsed).as_millis().div_ceil(1000);
            lines.push(Line::new(
                "verify",
                format!("Waiting {wait} seconds to verify that tasks are stable..."),
            ));
        } else if self.converged_at.take().is_some() {
            lines.push(Line::new("verify", "Detected task failure"));
        }
        (lines, Outcome::Waiting)
    }

    fn monitor(&self, svc: &Service) -> Duration {
        let spec = svc.spec.clone().unwrap_or_default();
        let cfg = if self.rollback {
            spec.rollback
        } else {
            spec.update
        };
        match cfg.map_or(0, |c| c.monitor_ms) {
            0 => DEFAULT_MONITOR,
            ms => Duration::from_millis(ms),
        }
    }

    fn check_update_status(&mut self, svc: &Service, lines: &mut Vec<Line>) -> Option<String> {
        let us = svc.update_status.as_ref()?;
        if self.stale_status_started.as_deref() == Some(us.started_at.as_str()) {
            return None;
        }
        self.stale_status_started = None;
        match us.state.as_str() {
            "updating" => self.rollback = false,
            "paused" => return Some(format!("service update paused: {}", us.message)),
            "rollback_started" => {
                if !self.rollback && !us.message.is_empty() {
                    lines.push(Line::new("rollback", us.message.clone()));
                }
                self.rollback = true;
                if !self.manual_rollback {
                    self.auto_rollback = Some(us.message.clone());
                }
            }
            "rollback_paused" => return Some(format!("service rollback paused: {}", us.message)),
            "rollback_completed" if !self.manual_rollback => {
                // The cause ("update rolled back due to failure … of task X") was in the status
                // while the rollback ran; "rollback completed" alone does not say why.
                let why = self.auto_rollback.as_deref().unwrap_or(&us.message);
                return Some(format!("service rolled back: {why}"));
            }
            _ => {}
        }
        None
    }

    fn overall(&self, running: u64, total: u64) -> Line {
        if self.rollback {
            Line::new(
                "overall progress",
                format!("rolling back update: {running} out of {total} tasks"),
            )
        } else {
            Line::new(
                "overall progress",
                format!("{running} out of {total} tasks"),
            )
        }
    }

    fn task_line(id: String, t: &Task) -> Line {
        let status = t.status.clone().unwrap_or_default();
        if !status.err.is_empty() {
            return Line::new(id, trunc_error(&status.err));
        }
        Line {
            id,
            action: status.state.clone(),
            progress: Some((state_number(&status.state), MAX_PROGRESS)),
        }
    }

    /// Tasks still on their way (or running), one per key, favouring the lowest desired state
    /// (a restart pending its delay) and then the furthest along (docker's rule).
    fn live_by<K: Ord + Clone>(
        tasks: &[&Task],
        key: impl Fn(&Task) -> K,
        active: &dyn Fn(&Task) -> bool,
    ) -> BTreeMap<K, Task> {
        let mut by: BTreeMap<K, Task> = BTreeMap::new();
        for t in tasks {
            let state = t.status.as_ref().map_or("", |s| s.state.as_str());
            let (d, s) = (state_number(&t.desired_state), state_number(state));
            if d == 0 || s == 0 || !active(t) {
                continue;
            }
            if let Some(existing) = by.get(&key(t)) {
                let ed = state_number(&existing.desired_state);
                let es = state_number(existing.status.as_ref().map_or("", |s| s.state.as_str()));
                if ed < d || (ed == d && es >= s) {
                    continue;
                }
            }
            by.insert(key(t), (*t).clone());
        }
        by
    }

    /// Tasks not running with an error (e.g. the scheduler found no node) for too long.
    fn stuck(&mut self, live: &[(String, &Task)], now: Instant) -> Option<String> {
        let mut seen = HashSet::new();
        let mut failure = None;
        for (id, t) in live {
            let status = t.status.clone().unwrap_or_default();
            if status.err.is_empty() || state_number(&status.state) >= state_number("running") {
                continue;
            }
            seen.insert(t.id.clone());
            let since = *self.stuck_since.entry(t.id.clone()).or_insert(now);
            if failure.is_none() && now.duration_since(since) >= STUCK_AFTER {
                failure = Some(format!("{id}: {}", status.err.replace('\n', " ")));
            }
        }
        self.stuck_since.retain(|k, _| seen.contains(k));
        failure
    }

    /// Why a task that ended was not replaced, from the restart policy.
    fn not_restarted(svc: &Service, t: &Task) -> String {
        let status = t.status.clone().unwrap_or_default();
        let restart = svc
            .spec
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .and_then(|t| t.restart.clone())
            .unwrap_or_default();
        let what = if status.err.is_empty() {
            if status.message.is_empty() {
                String::new()
            } else {
                format!(": {}", status.message)
            }
        } else {
            format!(": {}", status.err.replace('\n', " "))
        };
        let why = match restart.condition.as_str() {
            "none" => " (restart condition none)".to_string(),
            "on-failure" if status.state == "complete" => {
                " (restart condition on-failure, and it exited 0)".to_string()
            }
            _ if restart.max_attempts > 0 => {
                format!(" (restart max attempts {} reached)", restart.max_attempts)
            }
            _ => String::new(),
        };
        let name = if t.name.is_empty() { &t.id } else { &t.name };
        format!(
            "task {name} {} and was not replaced{what}{why}",
            status.state
        )
    }

    /// Some wanted task is missing and the newest task of its slot/node ended: the orchestrator
    /// does not replace it (restart policy) once the restart delay and a grace period passed.
    fn missing(
        &mut self,
        svc: &Service,
        ended: Option<(String, &Task)>,
        now: Instant,
    ) -> Option<String> {
        let Some((id, t)) = ended else {
            self.missing_since = None;
            return None;
        };
        let delay = svc
            .spec
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .and_then(|t| t.restart.as_ref())
            .map_or(0, |r| r.delay_ms);
        let since = *self.missing_since.get_or_insert(now);
        (now.duration_since(since) >= Duration::from_millis(delay) + REPLACE_GRACE)
            .then(|| format!("{id}: {}", Self::not_restarted(svc, t)))
    }

    fn newest_ended<'a, K: Ord>(
        tasks: &[&'a Task],
        key: impl Fn(&Task) -> K,
        live: &BTreeMap<K, Task>,
    ) -> BTreeMap<K, &'a Task> {
        let mut newest: BTreeMap<K, &Task> = BTreeMap::new();
        for t in tasks {
            let k = key(t);
            if live.contains_key(&k) {
                continue;
            }
            let ts = |x: &Task| crate::service_output::unix_secs(&x.created_at).unwrap_or(0);
            match newest.get(&k) {
                Some(e) if (ts(e), e.version) >= (ts(t), t.version) => {}
                _ => {
                    newest.insert(k, t);
                }
            }
        }
        newest
    }

    fn ended_for_good(t: &Task) -> bool {
        matches!(
            t.status.as_ref().map_or("", |s| s.state.as_str()),
            "failed" | "rejected" | "complete"
        )
    }

    fn replicated(
        &mut self,
        svc: &Service,
        tasks: &[&Task],
        active: &dyn Fn(&Task) -> bool,
        now: Instant,
    ) -> Option<Counted> {
        let replicas = svc.spec.as_ref().map_or(0, |s| s.replicas);
        let mut lines = Vec::new();
        if !self.initialized {
            lines.push(self.overall(0, replicas));
            if replicas <= MAX_BARS {
                for i in 1..=replicas {
                    lines.push(Line::new(format!("{i}/{replicas}"), ""));
                }
            }
            self.initialized = true;
        }
        let live = Self::live_by(tasks, |t| t.slot, active);
        let mut running = 0;
        let mut shown = Vec::new();
        for (slot, t) in &live {
            let next = self.slot_map.len() as u64 + 1;
            let mapped = *self.slot_map.entry(*slot).or_insert(next);
            let id = format!("{mapped}/{replicas}");
            if !self.done && replicas <= MAX_BARS && mapped <= replicas {
                lines.push(Self::task_line(id.clone(), t));
            }
            if t.status.as_ref().is_some_and(|s| s.state == "running") {
                running += 1;
            }
            shown.push((id, t));
        }
        if !self.done {
            lines.push(self.overall(running, replicas));
            if running == replicas {
                self.done = true;
            }
        }
        let mut failure = self.stuck(&shown, now);
        let ended = if (live.len() as u64) < replicas {
            let newest = Self::newest_ended(tasks, |t| t.slot, &live);
            newest
                .into_iter()
                .find(|(_, t)| Self::ended_for_good(t))
                .map(|(slot, t)| {
                    let next = self.slot_map.len() as u64 + 1;
                    let mapped = *self.slot_map.entry(slot).or_insert(next);
                    (format!("{mapped}/{replicas}"), t)
                })
        } else {
            None
        };
        let missing = self.missing(svc, ended, now);
        failure = failure.or(missing);
        Some(Counted {
            lines,
            running,
            total: replicas,
            failure,
        })
    }

    fn global(
        &mut self,
        svc: &Service,
        tasks: &[&Task],
        active: &dyn Fn(&Task) -> bool,
        now: Instant,
    ) -> Option<Counted> {
        let live = Self::live_by(tasks, |t| t.node_id.clone(), active);
        let node_count = live.len() as u64;
        let mut lines = Vec::new();
        if !self.initialized {
            if node_count == 0 {
                self.no_tasks_since.get_or_insert(now);
                return None;
            }
            lines.push(self.overall(0, node_count));
            self.initialized = true;
        }
        let mut running = 0;
        let mut shown = Vec::new();
        for (node, t) in &live {
            let id = crate::service_output::short(node);
            if !self.done && node_count <= MAX_BARS {
                lines.push(Self::task_line(id.clone(), t));
            }
            if t.status.as_ref().is_some_and(|s| s.state == "running") {
                running += 1;
            }
            shown.push((id, t));
        }
        if !self.done {
            lines.push(self.overall(running, node_count));
            if running == node_count {
                self.done = true;
            }
        }
        let mut failure = self.stuck(&shown, now);
        let newest = Self::newest_ended(tasks, |t| t.node_id.clone(), &live);
        let ended = newest
            .into_iter()
            .find(|(_, t)| Self::ended_for_good(t) && active(t))
            .map(|(node, t)| (crate::service_output::short(&node), t));
        let missing = self.missing(svc, ended, now);
        failure = failure.or(missing);
        Some(Counted {
            lines,
            running,
            total: node_count,
            failure,
        })
    }
}

/// Draws progress lines: in place on a terminal (every line keeps its row, in order of first
/// appearance), or line by line when a line's text changes (pipes, files: no bars).
#[derive(Debug)]
pub struct Renderer {
    /// Terminal width when drawing on a terminal.
    tty_width: Option<usize>,
    order: Vec<String>,
    lines: HashMap<String, Line>,
    printed: HashMap<String, String>,
    drawn: usize,
}

impl Renderer {
    pub fn new(tty_width: Option<usize>) -> Renderer {
        Renderer {
            tty_width,
            order: Vec::new(),
            lines: HashMap::new(),
            printed: HashMap::new(),
            drawn: 0,
        }
    }

    /// The output that shows `lines` (updates of earlier lines by id, or new ones).
    pub fn update(&mut self, lines: &[Line]) -> String {
        let mut out = String::new();
        let mut changed = false;
        for l in lines {
            if !self.lines.contains_key(&l.id) {
                self.order.push(l.id.clone());
            }
            if self.lines.get(&l.id) != Some(l) {
                changed = true;
                self.lines.insert(l.id.clone(), l.clone());
            }
            if self.tty_width.is_none() {
                let text = l.text(false);
                // A slot's first, empty line says nothing yet.
                if l.action.is_empty() && !self.printed.contains_key(&l.id) {
                    continue;
                }
                if self.printed.get(&l.id) != Some(&text) {
                    let _ = writeln!(out, "{text}");
                    self.printed.insert(l.id.clone(), text);
                }
            }
        }
        let Some(width) = self.tty_width else {
            return out;
        };
        if !changed {
            return out;
        }
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for id in &self.order {
            let line = &self.lines[id];
            let mut text = line.text(true);
            if text.chars().count() >= width {
                // Without a bar when it does not fit; never wrap (the cursor moves count rows).
                text = line.text(false);
                if text.chars().count() >= width {
                    text = text.chars().take(width.saturating_sub(1)).collect();
                }
            }
            let _ = writeln!(out, "\r\x1b[2K{text}");
        }
        self.drawn = self.order.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use rswarm_api::types::v1::{
        RestartPolicy, ServiceSpec, TaskStatus, UpdateConfig, UpdateStatus,
    };

    use super::*;

    fn spec(replicas: u64, image: &str) -> ServiceSpec {
        let mut s = crate::service_args::default_spec();
        s.name = "web".into();
        s.replicas = replicas;
        s.task.as_mut().unwrap().image = image.into();
        s
    }

    fn svc(spec: ServiceSpec) -> Service {
        Service {
            id: "svc1".into(),
            spec: Some(spec),
            ..Service::default()
        }
    }

    fn task(spec: &ServiceSpec, id: &str, slot: u64, state: &str, desired: &str) -> Task {
        Task {
            id: id.into(),
            slot,
            name: format!("web.{slot}"),
            node_id: "n1".into(),
            spec: spec.task.clone(),
            ports: spec.ports.clone(),
            desired_state: desired.into(),
            status: Some(TaskStatus {
                state: state.into(),
                ..TaskStatus::default()
            }),
            created_at: "2024-01-01T00:00:00Z".into(),
            ..Task::default()
        }
    }

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.text(true)).collect()
    }

    #[test]
    fn bars_follow_dockers_scale() {
        assert_eq!(bar(9, 9), format!("[{}>]", "=".repeat(50)));
        assert_eq!(
            bar(3, 9),
            format!("[{}>{}]", "=".repeat(16), " ".repeat(34))
        );
        assert_eq!(bar(0, 9), format!("[>{}]", " ".repeat(50)));
        let l = Line {
            id: "1/6".into(),
            action: "running".into(),
            progress: Some((9, 9)),
        };
        assert_eq!(
            l.text(true),
            "1/6: running   [==================================================>]"
        );
        assert_eq!(l.text(false), "1/6: running");
    }

    #[test]
    fn replicated_converges_after_the_monitor_period() {
        let sp = spec(2, "nginx:2");
        let s = svc(sp.clone());
        let mut w = Watch::new(false, None);
        let t0 = Instant::now();
        let tasks = vec![
            task(&sp, "a", 1, "running", "running"),
            task(&sp, "b", 2, "preparing", "running"),
        ];
        let (lines, out) = w.step(&s, &tasks, None, t0);
        assert_eq!(out, Outcome::Waiting);
        let t = texts(&lines);
        assert_eq!(t[0], "overall progress: 0 out of 2 tasks");
        assert_eq!(t[1], "1/2:");
        assert_eq!(t[2], "2/2:");
        assert!(t[3].starts_with("1/2: running   [=="));
        assert!(t[4].starts_with("2/2: preparing [=================================>"));
        assert_eq!(t[5], "overall progress: 1 out of 2 tasks");
        let tasks = vec![
            task(&sp, "a", 1, "running", "running"),
            task(&sp, "b", 2, "running", "running"),
        ];
        let (lines, out) = w.step(&s, &tasks, None, t0 + Duration::from_millis(200));
        assert_eq!(out, Outcome::Waiting);
        let t = texts(&lines);
        assert!(t.contains(&"overall progress: 2 out of 2 tasks".to_string()));
        assert_eq!(
            t.last().unwrap(),
            "verify: Waiting 5 seconds to verify that tasks are stable..."
        );
        // A failure during the wait restarts it.
        let failed = vec![
            task(&sp, "a", 1, "running", "running"),
            task(&sp, "c", 2, "starting", "running"),
        ];
        let (lines, _) = w.step(&s, &failed, None, t0 + Duration::from_secs(2));
        assert_eq!(
            texts(&lines).last().unwrap(),
            "verify: Detected task failure"
        );
        let (_, out) = w.step(&s, &tasks, None, t0 + Duration::from_secs(3));
        assert_eq!(out, Outcome::Waiting);
        let (lines, out) = w.step(&s, &tasks, None, t0 + Duration::from_secs(8));
        assert_eq!(out, Outcome::Converged);
        assert_eq!(texts(&lines).last().unwrap(), "verify: Service converged");
    }

    #[test]
    fn outdated_tasks_do_not_count() {
        let old = spec(1, "nginx:1");
        let new = spec(1, "nginx:2");
        let s = svc(new);
        let mut w = Watch::new(false, None);
        let (lines, out) = w.step(
            &s,
            &[task(&old, "a", 1, "running", "running")],
            None,
            Instant::now(),
        );
        assert_eq!(out, Outcome::Waiting);
        assert!(texts(&lines).contains(&"overall progress: 0 out of 1 tasks".to_string()));
    }

    #[test]
    fn restarts_favour_the_pending_replacement_and_down_nodes_are_skipped() {
        let sp = spec(1, "x");
        let s = svc(sp.clone());
        let mut w = Watch::new(false, None);
        let mut on_down = task(&sp, "a", 1, "running", "running");
        on_down.node_id = "down".into();
        let replacement = task(&sp, "b", 1, "assigned", "ready");
        let active: HashSet<String> = ["n1".to_string()].into();
        let (lines, _) = w.step(&s, &[on_down, replacement], Some(&active), Instant::now());
        assert!(texts(&lines).iter().any(|l| l.starts_with("1/1: assigned")));
    }

    #[test]
    fn an_unschedulable_task_fails_after_a_while() {
        let sp = spec(1, "x");
        let s = svc(sp.clone());
        let mut w = Watch::new(false, None);
        let mut t = task(&sp, "a", 1, "pending", "running");
        t.node_id.clear();
        t.status.as_mut().unwrap().err =
            "no suitable node (3 nodes not satisfying constraint node.labels.zone==b)".into();
        let t0 = Instant::now();
        let (lines, out) = w.step(&s, std::slice::from_ref(&t), None, t0);
        assert_eq!(out, Outcome::Waiting);
        assert!(texts(&lines).contains(
            &"1/1: no suitable node (3 nodes not satisfying constraint node.labels.zone==b)"
                .to_string()
        ));
        let (_, out) = w.step(&s, std::slice::from_ref(&t), None, t0 + STUCK_AFTER);
        assert_eq!(
            out,
            Outcome::Failed(
                "1/1: no suitable node (3 nodes not satisfying constraint node.labels.zone==b)"
                    .into()
            )
        );
    }

    #[test]
    fn a_failed_slot_without_replacement_fails() {
        let mut sp = spec(2, "x");
        sp.task.as_mut().unwrap().restart = Some(RestartPolicy {
            condition: "on-failure".into(),
            delay_ms: 1000,
            max_attempts: 2,
            window_ms: 0,
        });
        let s = svc(sp.clone());
        let mut w = Watch::new(false, None);
        let mut dead = task(&sp, "b", 2, "failed", "shutdown");
        dead.status.as_mut().unwrap().err = "task: non-zero exit (1)".into();
        let tasks = vec![task(&sp, "a", 1, "running", "running"), dead];
        let t0 = Instant::now();
        assert_eq!(w.step(&s, &tasks, None, t0).1, Outcome::Waiting);
        let (_, out) = w.step(&s, &tasks, None, t0 + Duration::from_secs(6));
        assert_eq!(
            out,
            Outcome::Failed(
                "2/2: task web.2 failed and was not replaced: task: non-zero exit (1) (restart max attempts 2 reached)"
                    .into()
            )
        );
        // Scaled-down slots (shut down on purpose) are not failures.
        let mut w = Watch::new(false, None);
        let s1 = svc(spec(1, "x"));
        let sp1 = s1.spec.clone().unwrap();
        let tasks = vec![
            task(&sp1, "a", 1, "running", "running"),
            task(&sp1, "b", 2, "shutdown", "shutdown"),
        ];
        let (_, out) = w.step(&s1, &tasks, None, t0);
        assert_eq!(out, Outcome::Waiting);
        let (_, out) = w.step(&s1, &tasks, None, t0 + Duration::from_secs(60));
        assert_eq!(out, Outcome::Converged);
    }

    #[test]
    fn update_status_decides_failures() {
        let sp = spec(1, "x");
        let mut s = svc(sp.clone());
        s.update_status = Some(UpdateStatus {
            state: "paused".into(),
            started_at: "t1".into(),
            message: "update paused due to failure or early termination of task abc".into(),
            ..UpdateStatus::default()
        });
        let tasks = vec![task(&sp, "a", 1, "running", "running")];
        let (_, out) = Watch::new(false, None).step(&s, &tasks, None, Instant::now());
        assert_eq!(
            out,
            Outcome::Failed(
                "service update paused: update paused due to failure or early termination of task abc"
                    .into()
            )
        );
        // The status of an earlier update (a scale changes no task) is ignored.
        let (_, out) = Watch::new(false, Some("t1".into())).step(&s, &tasks, None, Instant::now());
        assert_eq!(out, Outcome::Waiting);
        s.update_status = Some(UpdateStatus {
            state: "rollback_completed".into(),
            started_at: "t2".into(),
            message: "rollback completed".into(),
            ..UpdateStatus::default()
        });
        let (_, out) = Watch::new(false, None).step(&s, &tasks, None, Instant::now());
        assert_eq!(
            out,
            Outcome::Failed("service rolled back: rollback completed".into())
        );
        // Asked for by the user, a completed rollback is the goal.
        let mut w = Watch::new(true, None);
        let t0 = Instant::now();
        assert_eq!(w.step(&s, &tasks, None, t0).1, Outcome::Waiting);
        assert_eq!(
            w.step(&s, &tasks, None, t0 + Duration::from_secs(5)).1,
            Outcome::Converged
        );
    }

    #[test]
    fn manual_rollback_says_so_and_uses_the_rollback_monitor() {
        let mut sp = spec(1, "x");
        sp.rollback = Some(UpdateConfig {
            monitor_ms: 1000,
            ..crate::service_args::default_update_config()
        });
        let mut s = svc(sp.clone());
        s.update_status = Some(UpdateStatus {
            state: "rollback_started".into(),
            started_at: "t".into(),
            message: "manually requested rollback".into(),
            ..UpdateStatus::default()
        });
        let tasks = vec![task(&sp, "a", 1, "running", "running")];
        let mut w = Watch::new(true, None);
        let t0 = Instant::now();
        let (lines, _) = w.step(&s, &tasks, None, t0);
        let t = texts(&lines);
        assert_eq!(t[0], "rollback: manually requested rollback");
        assert!(t.contains(&"overall progress: rolling back update: 1 out of 1 tasks".to_string()));
        assert_eq!(
            t.last().unwrap(),
            "verify: Waiting 1 seconds to verify that tasks are stable..."
        );
        assert_eq!(
            w.step(&s, &tasks, None, t0 + Duration::from_secs(1)).1,
            Outcome::Converged
        );
        // The same rollback started by the manager (a failed update) is a failure.
        let mut w = Watch::new(false, None);
        w.step(&s, &tasks, None, t0);
        assert_eq!(
            w.step(&s, &tasks, None, t0 + Duration::from_secs(1)).1,
            Outcome::Failed("service rolled back: manually requested rollback".into())
        );
    }

    #[test]
    fn a_completed_automatic_rollback_keeps_its_cause() {
        let mut sp = spec(1, "x");
        sp.rollback = Some(UpdateConfig {
            monitor_ms: 5000,
            ..crate::service_args::default_update_config()
        });
        let mut s = svc(sp.clone());
        let cause = "update rolled back due to failure or early termination of task abc";
        s.update_status = Some(UpdateStatus {
            state: "rollback_started".into(),
            started_at: "t".into(),
            message: cause.into(),
            ..UpdateStatus::default()
        });
        let tasks = vec![task(&sp, "a", 1, "running", "running")];
        let mut w = Watch::new(false, None);
        let t0 = Instant::now();
        assert_eq!(w.step(&s, &tasks, None, t0).1, Outcome::Waiting);
        // The manager finishes the rollback before our monitor period ends.
        s.update_status = Some(UpdateStatus {
            state: "rollback_completed".into(),
            started_at: "t".into(),
            message: "rollback completed".into(),
            ..UpdateStatus::default()
        });
        assert_eq!(
            w.step(&s, &tasks, None, t0 + Duration::from_millis(500)).1,
            Outcome::Failed(format!("service rolled back: {cause}"))
        );
    }

    #[test]
    fn global_services_show_one_line_per_node() {
        let mut sp = spec(0, "agent");
        sp.mode = "global".into();
        let s = svc(sp.clone());
        let mut w = Watch::new(false, None);
        let t0 = Instant::now();
        let (lines, out) = w.step(&s, &[], None, t0);
        assert_eq!(out, Outcome::Waiting);
        assert_eq!(
            texts(&lines),
            ["overall progress: waiting for new tasks".to_string()]
        );
        let (_, out) = w.step(&s, &[], None, t0 + STUCK_AFTER);
        assert!(matches!(out, Outcome::Failed(m) if m.contains("no node can run")));
        let mut w = Watch::new(false, None);
        let mut a = task(&sp, "a", 0, "running", "running");
        a.node_id = "aaaaaaaaaaaaaaaaaaaaaaaaa".into();
        let mut b = task(&sp, "b", 0, "starting", "running");
        b.node_id = "bbbbbbbbbbbbbbbbbbbbbbbbb".into();
        let (lines, _) = w.step(&s, &[a, b], None, t0);
        let t = texts(&lines);
        assert_eq!(t[0], "overall progress: 0 out of 2 tasks");
        assert!(t[1].starts_with("aaaaaaaaaaaa: running   [=="));
        assert!(t[2].starts_with("bbbbbbbbbbbb: starting  [=="));
        assert_eq!(t[3], "overall progress: 1 out of 2 tasks");
    }

    #[test]
    fn renderer_redraws_in_place_or_prints_changes() {
        let l = |id: &str, a: &str| Line::new(id, a);
        let mut tty = Renderer::new(Some(120));
        let first = tty.update(&[l("overall progress", "0 out of 1 tasks"), l("1/1", "")]);
        assert_eq!(
            first,
            "\r\x1b[2Koverall progress: 0 out of 1 tasks\n\r\x1b[2K1/1:\n"
        );
        let second = tty.update(&[l("overall progress", "1 out of 1 tasks")]);
        assert!(second.starts_with("\x1b[2A"));
        assert!(second.contains("1 out of 1 tasks"));
        assert_eq!(tty.update(&[l("overall progress", "1 out of 1 tasks")]), "");
        let mut pipe = Renderer::new(None);
        assert_eq!(
            pipe.update(&[l("overall progress", "0 out of 1 tasks"), l("1/1", "")]),
            "overall progress: 0 out of 1 tasks\n"
        );
        let task_line = Line {
            id: "1/1".into(),
            action: "running".into(),
            progress: Some((9, 9)),
        };
        assert_eq!(
            pipe.update(std::slice::from_ref(&task_line)),
            "1/1: running\n"
        );
        assert_eq!(pipe.update(&[task_line]), "");
        // Narrow terminals get no bar rather than wrapped lines.
        let mut narrow = Renderer::new(Some(40));
        let out = narrow.update(&[Line {
            id: "1/1".into(),
            action: "running".into(),
            progress: Some((9, 9)),
        }]);
        assert_eq!(out, "\r\x1b[2K1/1: running\n");
    }

    #[test]
    fn errors_are_cut_for_progress_lines() {
        let long = "x".repeat(100);
        assert_eq!(trunc_error(&long).chars().count(), 75);
        assert_eq!(trunc_error("a\nb"), "a b");
    }
}
