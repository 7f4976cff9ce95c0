//! Text output as docker prints it: aligned tables, title-cased states, inspect blocks. Pure
//! functions over API messages, unit-tested.

use std::fmt::Write;

use rswarm_api::control::v1::{GetClusterResponse, Node};
use rswarm_api::local::v1::InfoResponse;
use serde_json::{json, Value};

/// Columns padded to their widest cell plus three spaces (docker's tabwriter look).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "ready" → "Ready".
pub fn title(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `rswarm node ls`.
pub fn node_table(nodes: &[Node], self_id: &str) -> String {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = if n.id == self_id {
                format!("{} *", n.id)
            } else {
                n.id.clone()
            };
            vec![
                id,
                n.hostname.clone(),
                title(&n.status),
                title(&n.availability),
                title(&n.manager_status),
                n.engine_version.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
        &rows,
    )
}

/// The JSON form of a node (`--format json`, `node inspect`).
pub fn node_json(n: &Node, self_id: &str) -> Value {
    json!({
        "id": n.id,
        "version": n.version,
        "hostname": n.hostname,
        "role": n.role,
        "availability": n.availability,
        "labels": n.labels,
        "status": n.status,
        "status_message": n.status_message,
        "addr": n.addr,
        "manager_status": n.manager_status,
        "platform": { "os": n.os, "arch": n.arch },
        "engine_version": n.engine_version,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "cert_not_after": n.cert_not_after,
        "self": n.id == self_id,
    })
}

/// `rswarm node inspect --pretty`.
pub fn node_pretty(n: &Node) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<24}{v}");
    };
    kv("ID:", &n.id);
    kv("Hostname:", &n.hostname);
    kv("Joined at:", &n.created_at);
    kv("Status:", "");
    kv(" State:", &title(&n.status));
    if !n.status_message.is_empty() {
        kv(" Message:", &n.status_message);
    }
    kv(" Availability:", &title(&n.availability));
    kv(" Address:", &n.addr);
    if !n.manager_status.is_empty() {
        kv("Manager Status:", "");
        kv(" Raft Status:", &title(&n.manager_status));
        kv(
            " Leader:",
            if n.manager_status == "leader" {
                "Yes"
            } else {
                "No"
            },
        );
    }
    kv("Platform:", "");
    kv(" Operating System:", &n.os);
    kv(" Architecture:", &n.arch);
    kv("Engine Version:", &n.engine_version);
    kv("TLS Info:", "");
    kv(" Certificate expiry:", &n.cert_not_after);
    if !n.labels.is_empty() {
        let mut labels: Vec<_> = n.labels.iter().collect();
        labels.sort();
        kv("Labels:", "");
        for (k, v) in labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    out
}

/// The JSON form of `rswarm info`.
pub fn info_json(i: &InfoResponse, cluster: Option<&GetClusterResponse>) -> Value {
    let mut v = json!({
        "node_id": i.node_id,
        "hostname": i.hostname,
        "role": i.role,
        "cluster_id": i.cluster_id,
        "node_addr": i.node_addr,
        "manager_addrs": i.manager_addrs,
        "local_node_state": i.local_node_state,
        "is_manager": i.is_manager,
        "nodes": i.nodes,
        "managers": i.managers,
        "cert_not_after": i.cert_not_after,
        "version": i.version,
        "state_dir": i.state_dir,
    });
    if let Some(c) = cluster {
        v["cluster"] = json!({
            "heartbeat_period_ms": c.heartbeat_period_ms,
            "cert_expiry_secs": c.cert_expiry_secs,
            "ca_digest": c.ca_digest,
            "raft_index": c.raft_index,
            "created_at": c.created_at,
            "default_addr_pool": c.default_addr_pool,
            "subnet_size": c.subnet_size,
            "data_path_port": c.data_path_port,
        });
    }
    v
}

/// `rswarm info`.
pub fn info_text(i: &InfoResponse, cluster: Option<&GetClusterResponse>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Swarm: {}", i.local_node_state);
    let _ = writeln!(out, " NodeID: {}", i.node_id);
    let _ = writeln!(out, " Is Manager: {}", i.is_manager);
    let _ = writeln!(out, " ClusterID: {}", i.cluster_id);
    if i.is_manager {
        let _ = writeln!(out, " Managers: {}", i.managers);
        let _ = writeln!(out, " Nodes: {}", i.nodes);
    }
    let _ = writeln!(out, " Node Address: {}", i.node_addr);
    let _ = writeln!(out, " Manager Addresses:");
    for a in &i.manager_addrs {
        let _ = writeln!(out, "  {a}");
    }
    let _ = writeln!(out, " Certificate expiry: {}", i.cert_not_after);
    if let Some(c) = cluster {
        let period = std::time::Duration::from_millis(c.heartbeat_period_ms);
        let expiry = std::time::Duration::from_secs(c.cert_expiry_secs);
        let _ = writeln!(out, " Dispatcher:");
        let _ = writeln!(
            out,
            "  Heartbeat Period: {}",
            humantime::format_duration(period)
        );
        let _ = writeln!(out, " CA Configuration:");
        let _ = writeln!(
            out,
            "  Expiry Duration: {}",
            humantime::format_duration(expiry)
        );
        let _ = writeln!(out, "  Root CA Digest: {}", c.ca_digest);
        let _ = writeln!(out, " Raft:");
        let _ = writeln!(out, "  Applied Index: {}", c.raft_index);
        // Docker's lines for the overlay address pool and the VXLAN port.
        if !c.default_addr_pool.is_empty() {
            let _ = writeln!(
                out,
                " Default Address Pool: {}",
                c.default_addr_pool.join(" ")
            );
        }
        if c.subnet_size != 0 {
            let _ = writeln!(out, " SubnetSize: {}", c.subnet_size);
        }
        if c.data_path_port != 0 {
            let _ = writeln!(out, " Data Path Port: {}", c.data_path_port);
        }
    }
    let _ = writeln!(out, "Name: {}", i.hostname);
    let _ = writeln!(out, "Server Version: {}", i.version);
    let _ = writeln!(out, "State Dir: {}", i.state_dir);
    out
}

/// What `rswarm init` and `rswarm join-token` print.
pub fn join_instructions(role: &str, token: &str, addr: &str) -> String {
    format!(
        "To add a {role} to this swarm, run the following command:\n\n    rswarm join --token {token} {addr}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, status: &str, ms: &str) -> Node {
        Node {
            id: id.into(),
            hostname: host.into(),
            status: status.into(),
            availability: "active".into(),
            manager_status: ms.into(),
            engine_version: "0.1.0".into(),
            ..Node::default()
        }
    }

    #[test]
    fn node_table_aligns_and_marks_self() {
        let t = node_table(
            &[
                node("bbb", "h2", "down", ""),
                node("aaaa", "h1", "ready", "leader"),
            ],
            "aaaa",
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID       HOSTNAME   STATUS   AVAILABILITY   MANAGER STATUS   ENGINE VERSION"
        );
        assert_eq!(
            lines[1],
            "aaaa *   h1         Ready    Active         Leader           0.1.0"
        );
        assert_eq!(
            lines[2],
            "bbb      h2         Down     Active                          0.1.0"
        );
    }

    #[test]
    fn json_marks_self() {
        let v = node_json(&node("a", "h", "ready", ""), "a");
        assert_eq!(v["self"], true);
        assert_eq!(v["status"], "ready");
    }

    #[test]
    fn info_shows_the_overlay_address_pool() {
        let info = InfoResponse {
            is_manager: true,
            ..InfoResponse::default()
        };
        let cluster = GetClusterResponse {
            default_addr_pool: vec!["10.0.0.0/8".into(), "192.168.0.0/16".into()],
            subnet_size: 24,
            data_path_port: 4789,
            ..GetClusterResponse::default()
        };
        let t = info_text(&info, Some(&cluster));
        assert!(
            t.contains(
                " Default Address Pool: 10.0.0.0/8 192.168.0.0/16\n SubnetSize: 24\n Data Path Port: 4789\n"
            ),
            "{t}"
        );
        let v = info_json(&info, Some(&cluster));
        assert_eq!(v["cluster"]["data_path_port"], 4789);
        assert_eq!(v["cluster"]["default_addr_pool"][1], "192.168.0.0/16");
    }

    #[test]
    fn instructions() {
        assert_eq!(
            join_instructions("worker", "T", "1.2.3.4:4242"),
            "To add a worker to this swarm, run the following command:\n\n    rswarm join --token T 1.2.3.4:4242\n"
        );
    }
}
