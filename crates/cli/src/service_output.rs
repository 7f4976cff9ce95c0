//! `service ls`, `service ps` and `service inspect` as docker prints them. Pure functions over API
//! messages (the current time is a parameter), unit-tested.

use std::collections::HashMap;
use std::fmt::Write;

use rswarm_api::types::v1::{
    NetworkAttachmentConfig, PortConfig, Service, ServiceSpec, Task, UpdateConfig,
};
use serde_json::{json, Value};

use crate::output::{table, title};

/// Docker shortens ids to 12 characters in tables.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// `nginx:1@sha256:…` → `nginx:1`, as docker's tables show images.
pub fn image_without_digest(image: &str) -> &str {
    image.split_once('@').map_or(image, |(i, _)| i)
}

/// `*:8080->80/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let proto = if p.protocol.is_empty() {
        "tcp"
    } else {
        &p.protocol
    };
    format!("*:{}->{}/{}", p.published, p.target, proto)
}

fn ports_text(ports: &[PortConfig]) -> String {
    ports.iter().map(port_text).collect::<Vec<_>>().join(", ")
}

fn spec(s: &Service) -> ServiceSpec {
    s.spec.clone().unwrap_or_default()
}

/// REPLICAS: `3/6`, `3/6 (max 2 per node)`; global services `1/1`.
pub fn replicas_text(s: &Service) -> String {
    let sp = spec(s);
    let mut text = format!("{}/{}", s.running_tasks, s.desired_tasks);
    let max = sp
        .task
        .and_then(|t| t.placement)
        .map_or(0, |p| p.max_replicas_per_node);
    if sp.mode != "global" && max > 0 {
        let _ = write!(text, " (max {max} per node)");
    }
    text
}

fn mode_text(sp: &ServiceSpec) -> &'static str {
    if sp.mode == "global" {
        "global"
    } else {
        "replicated"
    }
}

/// `service ls` rows (sorted by name): ID NAME MODE REPLICAS IMAGE PORTS.
pub fn ls_rows(services: &[Service]) -> Vec<Vec<String>> {
    let mut services: Vec<&Service> = services.iter().collect();
    services.sort_by_key(|s| (spec(s).name, s.id.clone()));
    services
        .iter()
        .map(|s| {
            let sp = spec(s);
            let image = sp.task.as_ref().map_or("", |t| t.image.as_str());
            vec![
                short(&s.id),
                sp.name.clone(),
                mode_text(&sp).to_string(),
                replicas_text(s),
                image_without_digest(image).to_string(),
                ports_text(&sp.ports),
            ]
        })
        .collect()
}

pub const LS_HEADER: [&str; 6] = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];

/// `service ls`.
pub fn ls_table(services: &[Service]) -> String {
    table(&LS_HEADER, &ls_rows(services))
}

/// `service ls --format json`: one object per line, docker's field names.
pub fn ls_json_lines(services: &[Service]) -> String {
    ls_rows(services)
        .into_iter()
        .map(|r| {
            let v = json!({
                "ID": r[0], "Name": r[1], "Mode": r[2], "Replicas": r[3], "Image": r[4], "Ports": r[5],
            });
            format!("{v}\n")
        })
        .collect()
}

/// RFC 3339 → Unix seconds.
pub fn unix_secs(rfc3339: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn unix_millis(rfc3339: &str) -> i128 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0)
}

/// CURRENT STATE: `Running 5 seconds ago`.
pub fn current_state(t: &Task, now_unix: i64) -> String {
    let status = t.status.clone().unwrap_or_default();
    let state = title(&status.state);
    match unix_secs(&status.timestamp) {
        Some(ts) => format!(
            "{state} {} ago",
            rswarm_agent::engine::human_duration(now_unix - ts)
        ),
        None => state,
    }
}

/// ERROR: quoted, cut at 30 characters (docker's limit) unless --no-trunc.
pub fn error_text(err: &str, no_trunc: bool) -> String {
    if err.is_empty() {
        return String::new();
    }
    let one_line = err.replace('\n', " ");
    let e = if !no_trunc && one_line.chars().count() > 30 {
        format!("{}…", one_line.chars().take(29).collect::<String>())
    } else {
        one_line
    };
    format!("\"{e}\"")
}

fn task_sort_key(t: &Task) -> (String, u64, String, std::cmp::Reverse<i128>, String) {
    (
        t.service_name.clone(),
        t.slot,
        if t.slot == 0 {
            t.node_id.clone()
        } else {
            String::new()
        },
        std::cmp::Reverse(unix_millis(&t.created_at)),
        t.id.clone(),
    )
}

/// Docker's order: by service, slot (or node for global tasks), newest task first.
pub fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by_key(task_sort_key);
}

fn task_name(t: &Task, no_trunc: bool) -> String {
    let name = if t.name.is_empty() {
        if t.slot > 0 {
            format!("{}.{}", t.service_name, t.slot)
        } else {
            format!("{}.{}", t.service_name, t.node_id)
        }
    } else {
        t.name.clone()
    };
    if no_trunc {
        format!("{name}.{}", t.id)
    } else {
        name
    }
}

pub const PS_HEADER: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

/// `service ps` rows (tasks already sorted): older tasks of a slot are `\_ web.1`.
pub fn ps_rows(
    tasks: &[Task],
    node_names: &HashMap<String, String>,
    no_trunc: bool,
    now_unix: i64,
) -> Vec<Vec<String>> {
    let mut prev = String::new();
    tasks
        .iter()
        .map(|t| {
            let base = task_name(t, false);
            let mut name = task_name(t, no_trunc);
            if base == prev {
                name = format!(" \\_ {name}");
            }
            prev = base;
            let image = t.spec.as_ref().map_or("", |s| s.image.as_str());
            let status = t.status.clone().unwrap_or_default();
            vec![
                if no_trunc { t.id.clone() } else { short(&t.id) },
                name,
                if no_trunc {
                    image.to_string()
                } else {
                    image_without_digest(image).to_string()
                },
                node_names
                    .get(&t.node_id)
                    .cloned()
                    .unwrap_or_else(|| t.node_id.clone()),
                title(&t.desired_state),
                current_state(t, now_unix),
                error_text(&status.err, no_trunc),
                ports_text(&t.ports),
            ]
        })
        .collect()
}

/// `service ps`.
pub fn ps_table(
    tasks: &[Task],
    node_names: &HashMap<String, String>,
    no_trunc: bool,
    now_unix: i64,
) -> String {
    table(&PS_HEADER, &ps_rows(tasks, node_names, no_trunc, now_unix))
}

/// `service ps --format json`: one object per line, docker's field names.
pub fn ps_json_lines(
    tasks: &[Task],
    node_names: &HashMap<String, String>,
    no_trunc: bool,
    now_unix: i64,
) -> String {
    ps_rows(tasks, node_names, no_trunc, now_unix)
        .into_iter()
        .map(|r| {
            let v = json!({
                "ID": r[0], "Name": r[1], "Image": r[2], "Node": r[3], "DesiredState": r[4],
                "CurrentState": r[5], "Error": r[6], "Ports": r[7],
            });
            format!("{v}\n")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// inspect

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn update_json(u: &Option<UpdateConfig>) -> Value {
    let u = u.clone().unwrap_or_default();
    json!({
        "Parallelism": u.parallelism,
        "Delay": ns(u.delay_ms),
        "FailureAction": u.failure_action,
        "Monitor": ns(u.monitor_ms),
        "MaxFailureRatio": u.max_failure_ratio_milli as f64 / 1000.0,
        "Order": u.order,
    })
}

fn spec_json(sp: &ServiceSpec) -> Value {
    let t = sp.task.clone().unwrap_or_default();
    let mut container = json!({
        "Image": t.image,
        "Labels": t.labels,
        "Args": t.args,
        "Env": t.env,
        "Dir": t.workdir,
        "User": t.user,
        "Hostname": t.hostname,
        "ReadOnly": t.read_only,
        "StopSignal": t.stop_signal,
        "StopGracePeriod": ns(t.stop_grace_ms),
        "Mounts": t.mounts.iter().map(|m| {
            let mut v = json!({
                "Type": m.r#type, "Source": m.source, "Target": m.target, "ReadOnly": m.read_only,
            });
            if m.r#type == "tmpfs" {
                v["TmpfsOptions"] = json!({ "SizeBytes": m.tmpfs_size, "Mode": m.tmpfs_mode });
            }
            v
        }).collect::<Vec<_>>(),
    });
    if t.command_set {
        container["Command"] = json!(t.command);
    }
    if let Some(h) = &t.healthcheck {
        container["Healthcheck"] = json!({
            "Test": h.test,
            "Interval": ns(h.interval_ms),
            "Timeout": ns(h.timeout_ms),
            "Retries": h.retries,
            "StartPeriod": ns(h.start_period_ms),
        });
    }
    let r = t.resources.unwrap_or_default();
    let rp = t.restart.clone().unwrap_or_default();
    let p = t.placement.clone().unwrap_or_default();
    let mode = if sp.mode == "global" {
        json!({ "Global": {} })
    } else {
        json!({ "Replicated": { "Replicas": sp.replicas } })
    };
    json!({
        "Name": sp.name,
        "Labels": sp.labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": { "NanoCPUs": r.limit_nano_cpus, "MemoryBytes": r.limit_memory },
                "Reservations": { "NanoCPUs": r.reserve_nano_cpus, "MemoryBytes": r.reserve_memory },
            },
            "RestartPolicy": {
                "Condition": rp.condition,
                "Delay": ns(rp.delay_ms),
                "MaxAttempts": rp.max_attempts,
                "Window": ns(rp.window_ms),
            },
            "Placement": {
                "Constraints": p.constraints,
                "Preferences": p.preferences.iter().map(|pref| {
                    let key = pref.strip_prefix("spread=").unwrap_or(pref);
                    json!({ "Spread": { "SpreadDescriptor": key } })
                }).collect::<Vec<_>>(),
                "MaxReplicas": p.max_replicas_per_node,
                "Platforms": p.platforms,
            },
            "ForceUpdate": t.force_update,
            "Networks": networks_json(&t.networks),
        },
        "Mode": mode,
        "UpdateConfig": update_json(&sp.update),
        "RollbackConfig": update_json(&sp.rollback),
        "EndpointSpec": endpoint_spec_json(sp),
    })
}

/// `vip` unless the spec says otherwise (specs stored before endpoint modes existed say nothing).
pub fn endpoint_mode(sp: &ServiceSpec) -> &str {
    if sp.endpoint_mode.is_empty() {
        "vip"
    } else {
        &sp.endpoint_mode
    }
}

fn ports_json(ports: &[PortConfig]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": if p.protocol.is_empty() { "tcp" } else { p.protocol.as_str() },
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": "host",
            })
        })
        .collect()
}

fn endpoint_spec_json(sp: &ServiceSpec) -> Value {
    json!({ "Mode": endpoint_mode(sp), "Ports": ports_json(&sp.ports) })
}

/// `TaskTemplate.Networks`: `[{"Target": id, "Aliases": […]}]` (Aliases left out when none).
fn networks_json(networks: &[NetworkAttachmentConfig]) -> Vec<Value> {
    networks
        .iter()
        .map(|n| {
            let mut v = json!({ "Target": n.target });
            if !n.aliases.is_empty() {
                v["Aliases"] = json!(n.aliases);
            }
            v
        })
        .collect()
}

/// `service inspect`: docker's shape (durations in nanoseconds), so scripts written for
/// `docker service inspect` read the same paths.
pub fn service_json(s: &Service) -> Value {
    let mut v = json!({
        "ID": s.id,
        "Version": { "Index": s.version },
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Spec": spec_json(&spec(s)),
        "Endpoint": {
            "Spec": endpoint_spec_json(&spec(s)),
            "Ports": ports_json(&spec(s).ports),
            "VirtualIPs": s.virtual_ips.iter().map(|v| json!({
                "NetworkID": v.network_id,
                "Addr": v.addr,
            })).collect::<Vec<_>>(),
        },
        "ServiceStatus": { "RunningTasks": s.running_tasks, "DesiredTasks": s.desired_tasks },
    });
    if let Some(p) = &s.previous_spec {
        v["PreviousSpec"] = spec_json(p);
    }
    if let Some(u) = &s.update_status {
        v["UpdateStatus"] = json!({
            "State": u.state,
            "StartedAt": u.started_at,
            "CompletedAt": u.completed_at,
            "Message": u.message,
        });
    }
    v
}

/// Go's `time.Duration` text for milliseconds: `5s`, `1m30s`, `500ms`, `1h0m0s`.
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms % 60_000) / 1000;
    let frac = ms % 1000;
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    if frac == 0 {
        let _ = write!(out, "{s}s");
    } else {
        let f = format!("{frac:03}");
        let _ = write!(out, "{s}.{}s", f.trim_end_matches('0'));
    }
    out
}

/// `64MiB`, `1GiB`, as docker's `BytesSize`.
pub fn bytes_size(b: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    let num = format!("{v:.4}");
    let num = num.trim_end_matches('0').trim_end_matches('.');
    format!("{num}{}", UNITS[i])
}

fn cpus(nano: u64) -> String {
    let v = format!("{:.9}", nano as f64 / 1e9);
    v.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn ratio(milli: u64) -> String {
    cpus(milli * 1_000_000)
}

/// `Networks:` of `service inspect --pretty`: each network by name (its id when `names`, id →
/// name, does not know it), with its aliases.
pub fn networks_text(
    networks: &[NetworkAttachmentConfig],
    names: &HashMap<String, String>,
) -> String {
    networks
        .iter()
        .map(|n| {
            let name = names.get(&n.target).unwrap_or(&n.target);
            if n.aliases.is_empty() {
                name.clone()
            } else {
                format!("{name} (aliases: {})", n.aliases.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `service inspect --pretty`: docker's readable block. `network_names` maps network ids to names.
pub fn service_pretty(s: &Service, network_names: &HashMap<String, String>) -> String {
    let sp = spec(s);
    let t = sp.task.clone().unwrap_or_default();
    let mut out = String::new();
    let kv = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{k:<20}{v}");
    };
    out.push('\n');
    kv(&mut out, "ID:", &s.id);
    kv(&mut out, "Name:", &sp.name);
    if !sp.labels.is_empty() {
        out.push_str("Labels:\n");
        let mut labels: Vec<_> = sp.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            if v.is_empty() {
                let _ = writeln!(out, " {k}");
            } else {
                let _ = writeln!(out, " {k}={v}");
            }
        }
    }
    if sp.mode == "global" {
        kv(&mut out, "Service Mode:", "Global");
    } else {
        kv(&mut out, "Service Mode:", "Replicated");
        kv(&mut out, " Replicas:", &sp.replicas.to_string());
    }
    if let Some(u) = &s.update_status {
        out.push_str("UpdateStatus:\n");
        kv(&mut out, " State:", &u.state);
        if !u.started_at.is_empty() {
            kv(&mut out, " Started:", &u.started_at);
        }
        if !u.completed_at.is_empty() {
            kv(&mut out, " Completed:", &u.completed_at);
        }
        kv(&mut out, " Message:", &u.message);
    }
    let p = t.placement.clone().unwrap_or_default();
    out.push_str("Placement:\n");
    if !p.constraints.is_empty() {
        kv(
            &mut out,
            " Constraints:",
            &format!("[{}]", p.constraints.join(" ")),
        );
    }
    if !p.preferences.is_empty() {
        let prefs: Vec<String> = p
            .preferences
            .iter()
            .map(|x| x.replacen("spread=", "Spread=", 1))
            .collect();
        kv(&mut out, " Preferences:", &format!("[{}]", prefs.join(" ")));
    }
    if p.max_replicas_per_node > 0 {
        kv(
            &mut out,
            " Max Replicas Per Node:",
            &p.max_replicas_per_node.to_string(),
        );
    }
    for (title_text, u, order) in [
        ("UpdateConfig:", &sp.update, "Update order:"),
        ("RollbackConfig:", &sp.rollback, "Rollback order:"),
    ] {
        let Some(u) = u else { continue };
        let _ = writeln!(out, "{title_text}");
        kv(&mut out, " Parallelism:", &u.parallelism.to_string());
        if u.delay_ms > 0 {
            kv(&mut out, " Delay:", &go_duration(u.delay_ms));
        }
        kv(&mut out, " On failure:", &u.failure_action);
        if u.monitor_ms > 0 {
            kv(&mut out, " Monitoring Period:", &go_duration(u.monitor_ms));
        }
        kv(
            &mut out,
            " Max failure ratio:",
            &ratio(u.max_failure_ratio_milli),
        );
        kv(&mut out, &format!(" {order}"), &u.order);
    }
    out.push_str("ContainerSpec:\n");
    kv(&mut out, " Image:", &t.image);
    if t.command_set {
        kv(&mut out, " Command:", &t.command.join(" "));
    }
    if !t.args.is_empty() {
        kv(&mut out, " Args:", &t.args.join(" "));
    }
    if !t.env.is_empty() {
        kv(&mut out, " Env:", &t.env.join(" "));
    }
    if !t.workdir.is_empty() {
        kv(&mut out, " Dir:", &t.workdir);
    }
    if !t.user.is_empty() {
        kv(&mut out, " User:", &t.user);
    }
    if let Some(h) = &t.healthcheck {
        out.push_str(" Healthcheck:\n");
        if !h.test.is_empty() {
            kv(&mut out, "  Test:", &h.test.join(" "));
        }
        if h.interval_ms > 0 {
            kv(&mut out, "  Interval:", &go_duration(h.interval_ms));
        }
        if h.timeout_ms > 0 {
            kv(&mut out, "  Timeout:", &go_duration(h.timeout_ms));
        }
        if h.retries > 0 {
            kv(&mut out, "  Retries:", &h.retries.to_string());
        }
        if h.start_period_ms > 0 {
            kv(&mut out, "  StartPeriod:", &go_duration(h.start_period_ms));
        }
    }
    if !t.mounts.is_empty() {
        out.push_str("Mounts:\n");
        for m in &t.mounts {
            kv(&mut out, " Target:", &m.target);
            kv(&mut out, "  Source:", &m.source);
            kv(&mut out, "  ReadOnly:", &m.read_only.to_string());
            kv(&mut out, "  Type:", &m.r#type);
        }
    }
    let r = t.resources.unwrap_or_default();
    let has_res = r.reserve_nano_cpus > 0 || r.reserve_memory > 0;
    let has_lim = r.limit_nano_cpus > 0 || r.limit_memory > 0;
    if has_res || has_lim {
        out.push_str("Resources:\n");
        for (head, cpu, mem, show) in [
            (
                " Reservations:",
                r.reserve_nano_cpus,
                r.reserve_memory,
                has_res,
            ),
            (" Limits:", r.limit_nano_cpus, r.limit_memory, has_lim),
        ] {
            if !show {
                continue;
            }
            let _ = writeln!(out, "{head}");
            if cpu > 0 {
                kv(&mut out, "  CPU:", &cpus(cpu));
            }
            if mem > 0 {
                kv(&mut out, "  Memory:", &bytes_size(mem));
            }
        }
    }
    if let Some(rp) = &t.restart {
        out.push_str("RestartPolicy:\n");
        kv(&mut out, " Condition:", &rp.condition);
        kv(&mut out, " Delay:", &go_duration(rp.delay_ms));
        if rp.max_attempts > 0 {
            kv(&mut out, " Max Attempts:", &rp.max_attempts.to_string());
        }
        if rp.window_ms > 0 {
            kv(&mut out, " Window:", &go_duration(rp.window_ms));
        }
    }
    if !t.networks.is_empty() {
        kv(
            &mut out,
            "Networks:",
            &networks_text(&t.networks, network_names),
        );
    }
    kv(&mut out, "Endpoint Mode:", endpoint_mode(&sp));
    if !sp.ports.is_empty() {
        out.push_str("Ports:\n");
        for p in &sp.ports {
            let _ = writeln!(out, " PublishedPort = {}", p.published);
            let _ = writeln!(out, "  Protocol = {}", p.protocol);
            let _ = writeln!(out, "  TargetPort = {}", p.target);
            let _ = writeln!(out, "  PublishMode = host");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use rswarm_api::types::v1::{
        Mount, NetworkAttachment, Placement, Resources, TaskSpec, TaskStatus, UpdateStatus,
    };

    use super::*;
    use crate::service_args::default_spec;

    fn service(id: &str, name: &str, mode: &str, running: u64, desired: u64) -> Service {
        let mut sp = default_spec();
        sp.name = name.into();
        sp.mode = mode.into();
        sp.task.as_mut().unwrap().image = "nginx:1.25@sha256:abcd".into();
        Service {
            id: id.into(),
            version: 3,
            spec: Some(sp),
            running_tasks: running,
            desired_tasks: desired,
            ..Service::default()
        }
    }

    #[test]
    fn ls_rows_as_docker() {
        let mut web = service("k2l9ffm1ho2qpw7n2lbtb7zfs", "web", "replicated", 3, 6);
        web.spec.as_mut().unwrap().ports = vec![PortConfig {
            target: 80,
            published: 8080,
            protocol: "tcp".into(),
        }];
        web.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
            max_replicas_per_node: 2,
            ..Placement::default()
        });
        let agent = service("a1b2c3d4e5f6g7h8", "agent", "global", 1, 1);
        let t = ls_table(&[web, agent]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID             NAME    MODE         REPLICAS               IMAGE        PORTS"
        );
        assert_eq!(
            lines[1],
            "a1b2c3d4e5f6   agent   global       1/1                    nginx:1.25"
        );
        assert_eq!(
            lines[2],
            "k2l9ffm1ho2q   web     replicated   3/6 (max 2 per node)   nginx:1.25   *:8080->80/tcp"
        );
        let j = ls_json_lines(&[service("x", "a", "replicated", 0, 1)]);
        let v: Value = serde_json::from_str(j.trim()).unwrap();
        assert_eq!(v["Replicas"], "0/1");
    }

    fn task(id: &str, slot: u64, state: &str, desired: &str, created: &str, err: &str) -> Task {
        Task {
            id: id.into(),
            service_name: "web".into(),
            name: format!("web.{slot}"),
            slot,
            node_id: "n1".into(),
            desired_state: desired.into(),
            created_at: created.into(),
            spec: Some(TaskSpec {
                image: "nginx:1@sha256:ff".into(),
                ..TaskSpec::default()
            }),
            status: Some(TaskStatus {
                state: state.into(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                err: err.into(),
                ..TaskStatus::default()
            }),
            ..Task::default()
        }
    }

    #[test]
    fn ps_orders_slots_newest_first_and_indents_history() {
        let mut tasks = vec![
            task(
                "old1aaaaaaaaaaaa",
                1,
                "failed",
                "shutdown",
                "2024-01-01T00:00:00Z",
                "task: non-zero exit (1): the process exited with an error",
            ),
            task("t2", 2, "running", "running", "2024-01-01T00:00:01Z", ""),
            task("new1", 1, "running", "running", "2024-01-01T00:00:05Z", ""),
            task(
                "t10",
                10,
                "pending",
                "running",
                "2024-01-01T00:00:01Z",
                "no suitable node",
            ),
        ];
        sort_tasks(&mut tasks);
        let names: HashMap<String, String> = [("n1".to_string(), "node-1".to_string())].into();
        let now = unix_secs("2024-01-01T00:00:05Z").unwrap();
        let rows = ps_rows(&tasks, &names, false, now);
        let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(ids, ["new1", "old1aaaaaaaa", "t2", "t10"]);
        assert_eq!(rows[0][1], "web.1");
        assert_eq!(rows[1][1], " \\_ web.1");
        assert_eq!(rows[0][2], "nginx:1");
        assert_eq!(rows[0][3], "node-1");
        assert_eq!(rows[1][4], "Shutdown");
        assert_eq!(rows[1][5], "Failed 5 seconds ago");
        assert_eq!(rows[1][6], "\"task: non-zero exit (1): the …\"");
        assert_eq!(rows[3][6], "\"no suitable node\"");
        let full = ps_rows(&tasks, &names, true, now);
        assert_eq!(full[1][1], " \\_ web.1.old1aaaaaaaaaaaa");
        assert!(full[1][6].ends_with("with an error\""));
        assert_eq!(full[0][2], "nginx:1@sha256:ff");
        let t = ps_table(&tasks, &names, false, now);
        assert_eq!(
            t,
            "ID             NAME        IMAGE     NODE     DESIRED STATE   CURRENT STATE           ERROR                              PORTS\n\
             new1           web.1       nginx:1   node-1   Running         Running 5 seconds ago\n\
             old1aaaaaaaa    \\_ web.1   nginx:1   node-1   Shutdown        Failed 5 seconds ago    \"task: non-zero exit (1): the …\"\n\
             t2             web.2       nginx:1   node-1   Running         Running 5 seconds ago\n\
             t10            web.10      nginx:1   node-1   Running         Pending 5 seconds ago   \"no suitable node\"\n"
        );
    }

    #[test]
    fn durations_and_sizes_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(500), "500ms");
        assert_eq!(go_duration(5000), "5s");
        assert_eq!(go_duration(90_000), "1m30s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(bytes_size(64 << 20), "64MiB");
        assert_eq!(bytes_size(1536 << 20), "1.5GiB");
        assert_eq!(bytes_size(100), "100B");
        assert_eq!(cpus(500_000_000), "0.5");
        assert_eq!(cpus(2_000_000_000), "2");
    }

    #[test]
    fn inspect_json_has_dockers_paths() {
        let mut s = service("abc", "web", "replicated", 1, 2);
        s.update_status = Some(UpdateStatus {
            state: "paused".into(),
            message: "update paused due to failure".into(),
            ..UpdateStatus::default()
        });
        let v = service_json(&s);
        assert_eq!(v["ID"], "abc");
        assert_eq!(v["Version"]["Index"], 3);
        assert_eq!(v["Spec"]["Name"], "web");
        assert_eq!(v["Spec"]["Mode"]["Replicated"]["Replicas"], 1);
        assert_eq!(
            v["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
            "nginx:1.25@sha256:abcd"
        );
        assert_eq!(
            v["Spec"]["TaskTemplate"]["RestartPolicy"]["Delay"],
            5_000_000_000u64
        );
        assert_eq!(v["Spec"]["UpdateConfig"]["Monitor"], 5_000_000_000u64);
        assert_eq!(v["UpdateStatus"]["State"], "paused");
        assert_eq!(v["ServiceStatus"]["DesiredTasks"], 2);
        let g = service_json(&service("g", "agent", "global", 0, 0));
        assert!(g["Spec"]["Mode"]["Global"].is_object());
    }

    #[test]
    fn networks_and_endpoint_mode_in_inspect() {
        let mut s = service("abc", "web", "replicated", 1, 1);
        {
            let sp = s.spec.as_mut().unwrap();
            sp.endpoint_mode = "dnsrr".into();
            sp.task.as_mut().unwrap().networks = vec![
                NetworkAttachmentConfig {
                    target: "id-front".into(),
                    aliases: vec![],
                },
                NetworkAttachmentConfig {
                    target: "id-back".into(),
                    aliases: vec!["db".into(), "primary".into()],
                },
                NetworkAttachmentConfig {
                    target: "id-gone".into(),
                    aliases: vec![],
                },
            ];
        }
        s.virtual_ips = vec![NetworkAttachment {
            network_id: "id-front".into(),
            network_name: "front".into(),
            addr: "10.0.1.2/24".into(),
            aliases: vec![],
        }];
        let names: HashMap<String, String> = [
            ("id-front".to_string(), "front".to_string()),
            ("id-back".to_string(), "back".to_string()),
        ]
        .into();
        let p = service_pretty(&s, &names);
        assert!(
            p.contains(
                "Networks:           front back (aliases: db, primary) id-gone\nEndpoint Mode:      dnsrr\n"
            ),
            "{p}"
        );
        let v = service_json(&s);
        assert_eq!(
            v["Spec"]["TaskTemplate"]["Networks"],
            json!([
                { "Target": "id-front" },
                { "Target": "id-back", "Aliases": ["db", "primary"] },
                { "Target": "id-gone" },
            ])
        );
        assert_eq!(v["Spec"]["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(v["Endpoint"]["Spec"]["Mode"], "dnsrr");
        assert_eq!(
            v["Endpoint"]["VirtualIPs"],
            json!([{ "NetworkID": "id-front", "Addr": "10.0.1.2/24" }])
        );
        // Specs from before endpoint modes: vip.
        s.spec.as_mut().unwrap().endpoint_mode.clear();
        assert_eq!(service_json(&s)["Spec"]["EndpointSpec"]["Mode"], "vip");
    }

    #[test]
    fn pretty_inspect_block() {
        let mut s = service("abc", "web", "replicated", 1, 2);
        {
            let sp = s.spec.as_mut().unwrap();
            sp.replicas = 3;
            sp.ports = vec![PortConfig {
                target: 80,
                published: 8080,
                protocol: "tcp".into(),
            }];
            let t = sp.task.as_mut().unwrap();
            t.args = vec!["nginx".into(), "-g".into()];
            t.env = vec!["A=1".into()];
            t.mounts = vec![Mount {
                r#type: "volume".into(),
                source: "data".into(),
                target: "/data".into(),
                ..Mount::default()
            }];
            t.resources = Some(Resources {
                reserve_nano_cpus: 500_000_000,
                limit_memory: 64 << 20,
                ..Resources::default()
            });
            t.placement = Some(Placement {
                constraints: vec!["node.role==worker".into()],
                preferences: vec!["spread=node.labels.zone".into()],
                ..Placement::default()
            });
        }
        let p = service_pretty(&s, &HashMap::new());
        assert!(p.contains("Endpoint Mode:      vip\n"), "{p}");
        assert!(!p.contains("Networks:"), "{p}");
        for expected in [
            "ID:                 abc\n",
            "Name:               web\n",
            "Service Mode:       Replicated\n Replicas:          3\n",
            "Placement:\n Constraints:       [node.role==worker]\n Preferences:       [Spread=node.labels.zone]\n",
            "UpdateConfig:\n Parallelism:       1\n On failure:        pause\n Monitoring Period: 5s\n Max failure ratio: 0\n Update order:      stop-first\n",
            "RollbackConfig:\n",
            " Rollback order:    stop-first\n",
            "ContainerSpec:\n Image:             nginx:1.25@sha256:abcd\n Args:              nginx -g\n Env:               A=1\n",
            "Mounts:\n Target:            /data\n  Source:           data\n  ReadOnly:         false\n  Type:             volume\n",
            "Resources:\n Reservations:\n  CPU:              0.5\n Limits:\n  Memory:           64MiB\n",
            "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = host\n",
        ] {
            assert!(p.contains(expected), "missing {expected:?} in\n{p}");
        }
    }
}
