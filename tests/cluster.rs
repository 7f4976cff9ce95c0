//! End-to-end cluster tests: real `rswarm` daemons in network namespaces (see `common/mod.rs`).
//!
//! Each test builds its own lab of hosts `h1`, `h2`, … (198.18.0.1, .2, …); `h1` is the manager unless
//! stated otherwise. The tests need root and skip (with a message) without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A killed agent's node must be shown `down` within this (the contract says "a few seconds").
const DOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Nodes must (again) be `ready` within this.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(200);
/// A daemon must exit within this after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------------

/// Waits until `host`'s `node ls` shows exactly `count` nodes, all ready, and returns them.
#[track_caller]
fn wait_all_ready(lab: &Lab, host: &Host, count: usize) -> Vec<Value> {
    lab.wait_for(
        READY_TIMEOUT,
        POLL,
        || {
            host.try_node_ls().ok().filter(|nodes| {
                nodes.len() == count && nodes.iter().all(|n| n["status"] == "ready")
            })
        },
        &format!(
            "`node ls` on {} to show {count} nodes, all ready",
            host.name
        ),
    )
}

/// Waits until node `hostname` has `status` in `host`'s `node ls`.
#[track_caller]
fn wait_status(
    lab: &Lab,
    host: &Host,
    hostname: &str,
    status: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    lab.wait_until(
        timeout,
        Duration::from_millis(100),
        || host.node_status(hostname).as_deref() == Some(status),
        &format!(
            "node {hostname} to be {status} in `node ls` on {}",
            host.name
        ),
    );
    start.elapsed()
}

/// The id of node `hostname` in `nodes`.
#[track_caller]
fn id_of(nodes: &[Value], hostname: &str) -> String {
    let node = find_node(nodes, hostname).unwrap_or_else(|| {
        panic!(
            "no node with hostname {hostname} in:\n{}",
            summarize_nodes(nodes)
        )
    });
    let id = node["id"]
        .as_str()
        .unwrap_or_else(|| panic!("node {hostname} has no string id: {node}"));
    assert!(!id.is_empty(), "node {hostname} has an empty id");
    id.to_string()
}

/// hostname → id for every node.
fn ids_by_hostname(nodes: &[Value]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap_or("?").to_string(),
                n["id"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// `init` on `manager`, `join` on each of `workers` with the printed worker token, and wait until all
/// nodes are ready. Returns the manager daemon, the init output and the worker daemons.
#[track_caller]
fn cluster(lab: &Lab, manager: usize, workers: &[usize]) -> (Daemon, InitOutput, Vec<Daemon>) {
    let m = lab.host(manager);
    let (mgr, init) = m.init(&[]);
    let ws = workers
        .iter()
        .map(|&k| lab.host(k).join(&init.token, &init.manager_addr))
        .collect();
    wait_all_ready(lab, m, workers.len() + 1);
    (mgr, init, ws)
}

/// `rswarm join-token ROLE -q`, trimmed.
#[track_caller]
fn join_token(host: &Host, role: &str) -> String {
    let out = host.rswarm(&["join-token", role, "-q"]);
    out.assert_success(&format!("`join-token {role} -q` on {}", host.name));
    let token = out.stdout.trim().to_string();
    assert!(
        split_token(&token).is_some(),
        "`join-token {role} -q` should print only a RSWTKN-1-<50 base36>-<25 base36> token\n{out}"
    );
    token
}

/// Replaces the last character of `s` by another base36 character.
fn change_last_char(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let last = chars.last_mut().expect("non-empty");
    *last = if *last == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}

/// What differs between two snapshots of a directory (for "wrote nothing" messages).
fn snapshot_diff(
    before: &BTreeMap<std::path::PathBuf, Vec<u8>>,
    after: &BTreeMap<std::path::PathBuf, Vec<u8>>,
) -> String {
    let mut d = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => d.push(format!("added {}", k.display())),
            Some(old) if old != v => d.push(format!("changed {}", k.display())),
            _ => {}
        }
    }
    for k in before.keys().filter(|k| !after.contains_key(*k)) {
        d.push(format!("removed {}", k.display()));
    }
    d.join(", ")
}

/// Asserts a refused command: exited non-zero by itself and said something on stderr.
#[track_caller]
fn assert_refused(out: &CmdOutput, what: &str) {
    out.assert_failure(what);
    assert!(
        !out.stderr.trim().is_empty(),
        "{what}: refused, but with an empty stderr\n{out}"
    );
}

/// Asserts a refusal whose stderr says the node is not a manager / permission denied.
#[track_caller]
fn assert_refused_not_manager(out: &CmdOutput, what: &str) {
    assert_refused(out, what);
    let err = out.stderr_lc();
    assert!(
        err.contains("manager") || err.contains("permission"),
        "{what}: stderr should say that the node is not a manager / permission denied\n{out}"
    );
}

// ---------------------------------------------------------------------------------------------------
// 1. forming a cluster
// ---------------------------------------------------------------------------------------------------

#[test]
fn three_hosts_form_a_cluster() {
    let Some(lab) = Lab::new("three_hosts_form_a_cluster") else {
        return;
    };
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));

    let (_mgr, init) = h1.init(&[]);
    assert!(
        !init.node_id.is_empty(),
        "init printed an empty node id:\n{}",
        init.stdout
    );
    assert!(
        split_token(&init.token).is_some(),
        "init printed a token that is not RSWTKN-1-<50 base36>-<25 base36>: {:?}\n{}",
        init.token,
        init.stdout
    );
    assert_eq!(
        init.manager_addr, "198.18.0.1:4242",
        "join command address in init output:\n{}",
        init.stdout
    );
    for line in [
        "To add a worker to this swarm, run the following command:",
        "To add a manager to this swarm, run 'rswarm join-token manager' and follow the instructions.",
    ] {
        assert!(init.stdout.contains(line), "init output lacks {line:?}:\n{}", init.stdout);
    }

    let _w2 = h2.join(&init.token, &init.manager_addr);
    let _w3 = h3.join(&init.token, &init.manager_addr);
    let nodes = wait_all_ready(&lab, h1, 3);
    let summary = summarize_nodes(&nodes);

    // --- node ls --format json ---
    let hostnames: BTreeSet<&str> = nodes
        .iter()
        .filter_map(|n| n["hostname"].as_str())
        .collect();
    assert_eq!(
        hostnames,
        BTreeSet::from(["h1", "h2", "h3"]),
        "hostnames in node ls:\n{summary}"
    );
    let ids: BTreeSet<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(
        ids.len(),
        3,
        "node ids must be 3 distinct strings:\n{summary}"
    );
    assert!(!ids.contains(""), "empty node id:\n{summary}");
    let managers: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "manager").collect();
    assert_eq!(
        managers.len(),
        1,
        "exactly one manager expected:\n{summary}"
    );
    assert_eq!(
        managers[0]["hostname"], "h1",
        "h1 is the manager:\n{summary}"
    );
    assert_eq!(
        managers[0]["manager_status"], "leader",
        "the manager is the leader:\n{summary}"
    );
    assert_eq!(
        managers[0]["id"],
        init.node_id.as_str(),
        "manager id = the id init printed:\n{summary}"
    );
    for n in &nodes {
        let h = n["hostname"].as_str().unwrap_or("?");
        assert_eq!(n["availability"], "active", "{h} availability:\n{n}");
        assert!(
            n["labels"].is_object(),
            "{h}: labels must be an object: {n}"
        );
        assert_eq!(
            n["self"],
            json!(h == "h1"),
            "{h}: `self` through h1's socket: {n}"
        );
        let ip = format!("198.18.0.{}", &h[1..]);
        assert!(
            n["addr"].as_str().is_some_and(|a| a.contains(&ip)),
            "{h}: addr should be its advertise address {ip}: {n}"
        );
        if h != "h1" {
            assert_eq!(n["role"], "worker", "{h} role: {n}");
            assert_eq!(n["manager_status"], "", "{h} manager_status: {n}");
        }
    }
    let id1 = id_of(&nodes, "h1");
    let id2 = id_of(&nodes, "h2");
    let id3 = id_of(&nodes, "h3");

    // --- table form ---
    let table = h1.rswarm(&["node", "ls"]);
    table.assert_success("`node ls` (table) on the manager");
    let mut lines = table.stdout.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default();
    let mut pos = 0;
    for col in [
        "ID",
        "HOSTNAME",
        "STATUS",
        "AVAILABILITY",
        "MANAGER STATUS",
        "ENGINE VERSION",
    ] {
        match header[pos..].find(col) {
            Some(p) => pos += p + col.len(),
            None => panic!("table header lacks column {col:?} (in order)\n{table}"),
        }
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "table should have 3 node rows\n{table}");
    for (id, hostname) in [(&id1, "h1"), (&id2, "h2"), (&id3, "h3")] {
        let short = &id[..id.len().min(12)];
        let row = rows
            .iter()
            .find(|r| r.starts_with(short))
            .unwrap_or_else(|| panic!("no table row starts with {hostname}'s id {short}\n{table}"));
        let words: Vec<&str> = row.split_whitespace().collect();
        assert!(
            words.contains(&hostname),
            "row of {hostname} lacks its hostname: {row:?}"
        );
        assert!(
            words.contains(&"Ready") && words.contains(&"Active"),
            "row of {hostname}: {row:?}"
        );
        if hostname == "h1" {
            assert_eq!(
                words.get(1),
                Some(&"*"),
                "self (h1) must be marked ` *` after its id: {row:?}"
            );
            assert!(words.contains(&"Leader"), "h1 row lacks Leader: {row:?}");
        } else {
            assert!(!row.contains('*'), "only self is marked with *: {row:?}");
            assert!(
                !words.contains(&"Leader"),
                "worker row shows Leader: {row:?}"
            );
        }
    }

    // --- RSWARM_HOST instead of --host ---
    let socket_url = h1.socket_url();
    let out = h1.rswarm_raw_env(
        &["node", "ls", "--format", "json"],
        &[("RSWARM_HOST", &socket_url)],
        CLI_TIMEOUT,
    );
    out.assert_success("`node ls` with RSWARM_HOST");
    assert_eq!(
        out.json().as_array().map(Vec::len),
        Some(3),
        "node ls via RSWARM_HOST\n{out}"
    );

    // --- info ---
    let info1 = h1.info();
    assert_eq!(info1["role"], "manager", "info on h1: {info1}");
    assert_eq!(info1["is_manager"], true, "info on h1: {info1}");
    assert_eq!(info1["node_id"], id1.as_str(), "info on h1: {info1}");
    assert_eq!(info1["nodes"], 3, "info on h1 counts nodes: {info1}");
    assert_eq!(info1["managers"], 1, "info on h1 counts managers: {info1}");
    assert!(
        info1["node_addr"]
            .as_str()
            .is_some_and(|a| a.contains("198.18.0.1")),
        "info node_addr: {info1}"
    );
    let cluster_id = info1["cluster_id"].as_str().unwrap_or_default().to_string();
    assert!(
        !cluster_id.is_empty(),
        "info on h1 has no cluster_id: {info1}"
    );
    assert!(
        info1["local_node_state"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "info local_node_state: {info1}"
    );
    assert!(
        info1["cert_not_after"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "info cert_not_after: {info1}"
    );

    let info2 = h2.info();
    assert_eq!(info2["role"], "worker", "info on worker h2: {info2}");
    assert_eq!(info2["is_manager"], false, "info on worker h2: {info2}");
    assert_eq!(info2["node_id"], id2.as_str(), "info on worker h2: {info2}");
    assert_eq!(
        info2["cluster_id"],
        cluster_id.as_str(),
        "worker and manager share the cluster id: {info2}"
    );

    // --- node inspect ---
    let by_name = h1.inspect("h2");
    assert_eq!(
        by_name["id"],
        id2.as_str(),
        "inspect h2 by hostname: {by_name}"
    );
    assert_eq!(by_name["hostname"], "h2", "inspect h2: {by_name}");
    assert_eq!(by_name["role"], "worker", "inspect h2: {by_name}");
    assert_eq!(by_name["status"], "ready", "inspect h2: {by_name}");
    assert!(by_name["labels"].is_object(), "inspect h2: {by_name}");
    let by_id = h1.inspect(&id3);
    assert_eq!(by_id["hostname"], "h3", "inspect by full id of h3: {by_id}");
    // Shortest prefix of id3 (≥ 4 chars) that no other id shares.
    let prefix_len = (4..=id3.len())
        .find(|&l| {
            [&id1, &id2]
                .iter()
                .all(|other| !other.starts_with(&id3[..l]))
        })
        .unwrap_or(id3.len());
    let by_prefix = h1.inspect(&id3[..prefix_len]);
    assert_eq!(
        by_prefix["id"],
        id3.as_str(),
        "inspect by unique id prefix {:?}: {by_prefix}",
        &id3[..prefix_len]
    );
    let two = h1.rswarm(&["node", "inspect", "h2", "h3"]);
    two.assert_success("`node inspect h2 h3`");
    let two_json = two.json();
    let got: Vec<&str> = two_json
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["hostname"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        got,
        ["h2", "h3"],
        "`node inspect h2 h3` returns both, in order\n{two}"
    );
    let fmt_json = h1.rswarm(&["node", "inspect", "--format", "json", "h2"]);
    fmt_json.assert_success("`node inspect --format json h2`");
    assert_eq!(
        fmt_json.json()[0]["id"],
        id2.as_str(),
        "--format json is the default format\n{fmt_json}"
    );
    let pretty = h1.rswarm(&["node", "inspect", "--pretty", "h2"]);
    pretty.assert_success("`node inspect --pretty h2`");
    assert!(
        pretty.stdout.contains("h2") && pretty.stdout.contains(&id2),
        "--pretty shows hostname and id\n{pretty}"
    );
    assert!(
        serde_json::from_str::<Value>(&pretty.stdout).is_err(),
        "--pretty must not print JSON\n{pretty}"
    );
    assert_refused(
        &h1.rswarm(&["node", "inspect", "no-such-node"]),
        "`node inspect` of an unknown node",
    );

    // --- version ---
    let v = h1.rswarm(&["version"]);
    v.assert_success("`rswarm version`");
    assert!(
        !v.stdout.trim().is_empty(),
        "`rswarm version` printed nothing\n{v}"
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. agent failure and restart
// ---------------------------------------------------------------------------------------------------

#[test]
fn agent_down_and_back() {
    let Some(lab) = Lab::new("agent_down_and_back") else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let (mgr, _init, workers) = cluster(&lab, 1, &[2, 3]);
    let before = ids_by_hostname(&h1.node_ls());
    let id2 = before["h2"].clone();

    let st = workers[0].kill9();
    assert!(
        !st.success(),
        "h2's join process should have died of SIGKILL, got {st}"
    );
    let took = wait_status(&lab, h1, "h2", "down", DOWN_TIMEOUT);
    eprintln!("h2 shown down {took:.1?} after kill -9");
    let nodes = h1.node_ls();
    for h in ["h1", "h3"] {
        assert_eq!(
            find_node(&nodes, h).map(|n| n["status"].clone()),
            Some(json!("ready")),
            "{h} must stay ready while h2 is down:\n{}",
            summarize_nodes(&nodes)
        );
    }

    let agent = h2.start_agent();
    let took = wait_status(&lab, h1, "h2", "ready", READY_TIMEOUT);
    eprintln!("h2 ready again {took:.1?} after rswarm-agent answered on its socket");
    let nodes = wait_all_ready(&lab, h1, 3);
    assert_eq!(
        ids_by_hostname(&nodes),
        before,
        "node ids must not change across an agent restart"
    );
    assert_eq!(
        h2.info()["node_id"],
        id2.as_str(),
        "the restarted agent reports the same node id"
    );
    assert!(agent.is_running(), "rswarm-agent exited:\n{}", agent.log());
    assert!(mgr.is_running(), "the manager exited:\n{}", mgr.log());
}

/// A host that vanishes (no FIN: its link goes down) is caught by missed heartbeats, not by the
/// session closing; when it comes back, the agent reconnects by itself.
#[test]
fn vanished_host_is_down_by_missed_heartbeats() {
    let Some(lab) = Lab::new("vanished_host") else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let (_mgr, _init, workers) = cluster(&lab, 1, &[2]);
    let down = h2.run(
        "ip",
        &["link", "set", "eth0", "down"],
        Duration::from_secs(10),
    );
    down.assert_success("ip link set eth0 down on h2");
    let took = wait_status(&lab, h1, "h2", "down", DOWN_TIMEOUT);
    eprintln!("h2 shown down {took:.1?} after its link went down");
    let node = find_node(&h1.node_ls(), "h2")
        .cloned()
        .expect("h2 is listed");
    assert_eq!(
        node["status_message"],
        json!("heartbeat failure"),
        "a silent host must be caught by the heartbeat deadline: {node}"
    );
    assert!(
        workers[0].is_running(),
        "h2's agent must still run while its link is down"
    );
    let up = h2.run(
        "ip",
        &["link", "set", "eth0", "up"],
        Duration::from_secs(10),
    );
    up.assert_success("ip link set eth0 up on h2");
    let took = wait_status(&lab, h1, "h2", "ready", READY_TIMEOUT);
    eprintln!("h2 ready again {took:.1?} after its link came back");
}

// ---------------------------------------------------------------------------------------------------
// 3. manager restart
// ---------------------------------------------------------------------------------------------------

#[test]
fn manager_restart_keeps_cluster() {
    let Some(lab) = Lab::with_hosts("manager_restart_keeps_cluster", 4) else {
        return;
    };
    let (h1, h4) = (lab.host(1), lab.host(4));
    let (mgr, init, workers) = cluster(&lab, 1, &[2, 3]);
    let ids_before = ids_by_hostname(&h1.node_ls());
    let info_before = h1.info();
    let cluster_id = info_before["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !cluster_id.is_empty(),
        "no cluster_id in info: {info_before}"
    );
    let worker_token = join_token(h1, "worker");
    assert_eq!(
        worker_token, init.token,
        "`join-token worker -q` = the token init printed"
    );
    let manager_token = join_token(h1, "manager");

    let st = mgr.sigterm_and_wait(STOP_TIMEOUT);
    assert!(
        st.success(),
        "the manager must exit 0 on SIGTERM, got {st}\n{}",
        tail(&mgr.log(), 60)
    );

    // While it is stopped: `rswarm init` on its state dir is refused and writes nothing.
    let before = snapshot_dir(&h1.state_dir());
    assert!(
        !before.is_empty(),
        "the stopped manager's state dir is empty"
    );
    let out = h1.rswarm_raw_env(&h1.init_args(&[]), &[], Duration::from_secs(20));
    assert_refused(&out, "`rswarm init` on an existing state dir");
    let err = out.stderr_lc();
    assert!(
        err.contains("rswarm-manager") || err.contains("resume"),
        "the refusal should say how to resume (rswarm-manager --state-dir …)\n{out}"
    );
    let after = snapshot_dir(&h1.state_dir());
    assert!(
        before == after,
        "`rswarm init` on an existing state dir wrote into it: {}",
        snapshot_diff(&before, &after)
    );
    for w in &workers {
        assert!(
            w.is_running(),
            "{} exited while the manager was down:\n{}",
            w.label(),
            tail(&w.log(), 60)
        );
    }

    let mgr2 = h1.start_manager();
    let info_after = h1.info();
    assert_eq!(
        info_after["cluster_id"],
        cluster_id.as_str(),
        "cluster id after restart: {info_after}"
    );
    assert_eq!(
        info_after["node_id"], info_before["node_id"],
        "manager node id after restart: {info_after}"
    );
    assert_eq!(
        info_after["role"], "manager",
        "role after restart: {info_after}"
    );
    let nodes = wait_all_ready(&lab, h1, 3);
    assert_eq!(
        ids_by_hostname(&nodes),
        ids_before,
        "node ids must survive a manager restart"
    );
    let leader = nodes
        .iter()
        .filter(|n| n["manager_status"] == "leader")
        .count();
    assert_eq!(
        leader,
        1,
        "one leader after restart:\n{}",
        summarize_nodes(&nodes)
    );
    assert_eq!(
        join_token(h1, "worker"),
        worker_token,
        "worker token after restart"
    );
    assert_eq!(
        join_token(h1, "manager"),
        manager_token,
        "manager token after restart"
    );

    // The old worker token still admits a new host.
    let _w4 = h4.join(&worker_token, &h1.manager_addr());
    let nodes = wait_all_ready(&lab, h1, 4);
    assert_eq!(
        h4.info()["cluster_id"],
        cluster_id.as_str(),
        "h4 joined the same cluster"
    );
    assert!(
        find_node(&nodes, "h4").is_some(),
        "h4 in node ls:\n{}",
        summarize_nodes(&nodes)
    );
    assert!(
        mgr2.is_running(),
        "restarted manager exited:\n{}",
        mgr2.log()
    );
}

// ---------------------------------------------------------------------------------------------------
// 4. node update / rm
// ---------------------------------------------------------------------------------------------------

#[test]
fn node_update_and_rm() {
    let Some(lab) = Lab::new("node_update_and_rm") else {
        return;
    };
    let h1 = lab.host(1);
    let (_mgr, _init, workers) = cluster(&lab, 1, &[2, 3]);
    let nodes = h1.node_ls();
    let id2 = id_of(&nodes, "h2");
    let id3 = id_of(&nodes, "h3");

    for avail in ["drain", "pause", "active"] {
        let out = h1.rswarm(&["node", "update", "--availability", avail, "h2"]);
        out.assert_success(&format!("`node update --availability {avail} h2`"));
        assert_eq!(
            out.stdout.trim(),
            id2,
            "`node update` prints the node id\n{out}"
        );
        let n = h1.inspect("h2");
        assert_eq!(
            n["availability"], avail,
            "availability after update to {avail}: {n}"
        );
        assert_eq!(
            n["status"], "ready",
            "availability does not change status: {n}"
        );
    }
    assert_refused(
        &h1.rswarm(&["node", "update", "--availability", "bogus", "h2"]),
        "availability `bogus`",
    );
    assert_eq!(
        h1.inspect("h2")["availability"],
        "active",
        "a refused update changes nothing"
    );

    h1.rswarm(&[
        "node",
        "update",
        "--label-add",
        "zone=east",
        "--label-add",
        "disk=ssd",
        "h2",
    ])
    .assert_success("`node update --label-add zone=east --label-add disk=ssd h2`");
    let n = h1.inspect("h2");
    assert_eq!(
        n["labels"],
        json!({"zone": "east", "disk": "ssd"}),
        "labels after label-add: {n}"
    );
    h1.rswarm(&["node", "update", "--label-rm", "zone", "h2"])
        .assert_success("`node update --label-rm zone h2`");
    let n = h1.inspect("h2");
    assert_eq!(
        n["labels"],
        json!({"disk": "ssd"}),
        "labels after label-rm zone: {n}"
    );
    let out = h1.rswarm(&["node", "update", "--label-add", "rack=7", &id2]);
    out.assert_success("`node update --label-add rack=7 <id>`");
    assert_eq!(
        out.stdout.trim(),
        id2,
        "`node update` by id prints the node id\n{out}"
    );
    let n = h1.inspect("h2");
    assert_eq!(
        n["labels"],
        json!({"disk": "ssd", "rack": "7"}),
        "labels after label-add by id: {n}"
    );
    let n3 = h1.inspect("h3");
    assert_eq!(n3["labels"], json!({}), "h3 untouched: {n3}");
    assert_eq!(n3["availability"], "active", "h3 untouched: {n3}");

    // A ready node is not removed without --force.
    let out = h1.rswarm(&["node", "rm", "h2"]);
    assert_refused(&out, "`node rm` of a ready worker without --force");
    let err = out.stderr_lc();
    assert!(
        err.contains("down") && err.contains("force"),
        "refusal should say the node is not down and to use --force\n{out}"
    );
    assert_eq!(h1.node_ls().len(), 3, "refused `node rm` removed a node");

    // Once it is down, it is.
    workers[0].kill9();
    wait_status(&lab, h1, "h2", "down", DOWN_TIMEOUT);
    h1.rswarm(&["node", "rm", "h2"])
        .assert_success("`node rm h2` once h2 is down");
    let nodes = h1.node_ls();
    assert_eq!(
        nodes.len(),
        2,
        "node ls after removing h2:\n{}",
        summarize_nodes(&nodes)
    );
    assert!(
        nodes.iter().all(|n| n["id"] != id2.as_str()),
        "h2 still listed:\n{}",
        summarize_nodes(&nodes)
    );
    assert_refused(
        &h1.rswarm(&["node", "inspect", &id2]),
        "`node inspect` of a removed node",
    );

    // --force removes a ready node.
    h1.rswarm(&["node", "rm", "--force", "h3"])
        .assert_success("`node rm --force h3` (ready)");
    let nodes = h1.node_ls();
    assert_eq!(
        nodes.len(),
        1,
        "node ls after removing h3:\n{}",
        summarize_nodes(&nodes)
    );
    assert!(
        nodes.iter().all(|n| n["id"] != id3.as_str()),
        "h3 still listed:\n{}",
        summarize_nodes(&nodes)
    );
    assert_eq!(
        nodes[0]["hostname"],
        "h1",
        "only the manager is left:\n{}",
        summarize_nodes(&nodes)
    );
}

// ---------------------------------------------------------------------------------------------------
// 5. join token rotation
// ---------------------------------------------------------------------------------------------------

#[test]
fn join_token_rotation() {
    let Some(lab) = Lab::new("join_token_rotation") else {
        return;
    };
    let (h1, h3) = (lab.host(1), lab.host(3));
    let (_mgr, init, _workers) = cluster(&lab, 1, &[2]);
    let addr = init.manager_addr.clone();

    let old = join_token(h1, "worker");
    assert_eq!(
        old, init.token,
        "`join-token worker -q` = the token init printed"
    );
    let full = h1.rswarm(&["join-token", "worker"]);
    full.assert_success("`join-token worker`");
    assert_eq!(
        parse_join_command(&full.stdout),
        Some((old.clone(), "198.18.0.1:4242".to_string())),
        "`join-token worker` prints the join command\n{full}"
    );
    let mgr_old = join_token(h1, "manager");
    assert_ne!(mgr_old, old, "worker and manager tokens must differ");
    let (digest, _) = split_token(&old).expect("checked");
    assert_eq!(
        split_token(&mgr_old).map(|t| t.0),
        Some(digest),
        "both tokens pin the same CA"
    );

    h1.rswarm(&["join-token", "worker", "--rotate"])
        .assert_success("`join-token worker --rotate`");
    let new = join_token(h1, "worker");
    assert_ne!(new, old, "rotation must change the worker token");
    assert_eq!(
        split_token(&new).map(|t| t.0),
        Some(digest),
        "rotation keeps the CA digest"
    );
    assert_eq!(
        join_token(h1, "manager"),
        mgr_old,
        "rotating the worker token leaves the manager token alone"
    );

    // The old token is refused and leaves nothing behind …
    let out = h3.rswarm_raw_env(
        &h3.join_args(&old, &addr, &[]),
        &[],
        Duration::from_secs(40),
    );
    assert_refused(&out, "join with the rotated-out worker token");
    assert!(
        h3.state_dir_pristine(),
        "refused join wrote into its state dir: {}",
        list_dir(&h3.state_dir())
    );
    // … the new one works, on the same (still empty) state dir.
    let _w3 = h3.join(&new, &addr);
    wait_all_ready(&lab, h1, 3);
    lab.hold_for(
        Duration::from_secs(3),
        POLL,
        || h1.all_ready(3),
        "all 3 nodes stay ready after the rotation",
    );

    // Rotating the manager token leaves the worker token alone.
    h1.rswarm(&["join-token", "manager", "--rotate"])
        .assert_success("`join-token manager --rotate`");
    assert_ne!(join_token(h1, "manager"), mgr_old, "manager token rotated");
    assert_eq!(
        join_token(h1, "worker"),
        new,
        "rotating the manager token leaves the worker token alone"
    );
    assert!(
        h1.all_ready(3),
        "nodes stay ready after the manager token rotation:\n{}",
        summarize_nodes(&h1.node_ls())
    );
}

// ---------------------------------------------------------------------------------------------------
// 6. bad joins
// ---------------------------------------------------------------------------------------------------

#[test]
fn bad_joins_are_refused_cleanly() {
    let Some(lab) = Lab::new("bad_joins_are_refused_cleanly") else {
        return;
    };
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let (_mgr, init) = h1.init(&[]);
    let addr = init.manager_addr.clone();
    let (digest, secret) = split_token(&init.token).expect("init token checked by split_token");

    let cases: Vec<(&str, String, String)> = vec![
        (
            "garbled token",
            "RSWTKN-1-thisisnotatoken".into(),
            addr.clone(),
        ),
        ("not a token", "hello".into(), addr.clone()),
        (
            "CA digest mismatch",
            format!("RSWTKN-1-{}-{secret}", change_last_char(digest)),
            addr.clone(),
        ),
        (
            "wrong secret",
            format!("RSWTKN-1-{digest}-{}", change_last_char(secret)),
            addr.clone(),
        ),
        (
            "unreachable manager",
            init.token.clone(),
            "198.18.0.99:4242".into(),
        ),
    ];
    for (case, token, target) in &cases {
        let out = h2.rswarm_raw_env(
            &h2.join_args(token, target, &[]),
            &[],
            Duration::from_secs(40),
        );
        assert_refused(&out, &format!("join ({case})"));
        assert!(
            out.elapsed < Duration::from_secs(30),
            "join ({case}) must fail within 30 s, took {:.1?}\n{out}",
            out.elapsed
        );
        assert!(
            h2.state_dir_pristine(),
            "join ({case}) failed but wrote into the state dir: {}\n{out}",
            list_dir(&h2.state_dir())
        );
    }
    // The failed attempts left nothing that stops a good join on the same state dir.
    let _w2 = h2.join(&init.token, &addr);
    wait_all_ready(&lab, h1, 2);

    // Joining with the manager token either works (as the contract grows) or fails cleanly.
    let mtoken = join_token(h1, "manager");
    let d = h3.spawn_bin(
        "join-manager-token",
        Bin::Rswarm,
        &h3.join_args(&mtoken, &addr, &[]),
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30)
        && d.is_running()
        && !d.stdout().contains("This node joined a swarm")
    {
        std::thread::sleep(POLL);
    }
    match d.exit_status() {
        Some(st) if !st.success() => assert!(
            h3.state_dir_pristine(),
            "join with the manager token failed ({st}) but wrote into the state dir: {}\n{}",
            list_dir(&h3.state_dir()),
            d.log()
        ),
        other => eprintln!(
            "join with the manager token: exit status {other:?}, stdout {:?}",
            d.stdout().lines().last().unwrap_or_default()
        ),
    }
    d.kill9();
}

// ---------------------------------------------------------------------------------------------------
// 7. certificates
// ---------------------------------------------------------------------------------------------------

#[test]
fn certificates_are_enforced() {
    let Some(lab) = Lab::new("certificates_are_enforced") else {
        return;
    };
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));
    let (_mgr, _init, _workers) = cluster(&lab, 1, &[2]);
    // A second, unrelated cluster on h3.
    let (_other, _other_init) = h3.init(&[]);
    let cluster_a = h1.info()["cluster_id"].clone();
    let cluster_b = h3.info()["cluster_id"].clone();
    assert_ne!(cluster_a, cluster_b, "two inits make two clusters");
    for (h, c) in [(h1, h1.certs()), (h2, h2.certs()), (h3, h3.certs())] {
        for f in [&c.ca, &c.cert, &c.key] {
            assert!(
                f.is_file(),
                "{}: certificate file {} missing (state dir: {})",
                h.name,
                f.display(),
                list_dir(&h.state_dir())
            );
        }
    }
    let tcp = h1.tcp_url();
    let node_ls = ["node", "ls", "--format", "json"];
    let with = |certs: Vec<String>| -> Vec<String> {
        let mut a = vec!["--host".to_string(), tcp.clone()];
        a.extend(certs);
        a.extend(node_ls.iter().map(|s| s.to_string()));
        a
    };

    // A worker is not a manager, through its own socket …
    assert_refused_not_manager(
        &h2.rswarm(&node_ls),
        "`node ls` through the worker's socket",
    );
    // … nor over tcp with its own certificate.
    assert_refused_not_manager(
        &h2.rswarm_raw(&with(h2.certs().flags())),
        "`node ls` over tcp with the worker's cert",
    );
    // No client certificate.
    assert_refused(
        &h2.rswarm_raw(&with(vec![])),
        "`node ls` over tcp without TLS flags",
    );
    let ca_only = vec![
        "--tlscacert".to_string(),
        h1.certs().ca.display().to_string(),
    ];
    assert_refused(
        &h2.rswarm_raw(&with(ca_only)),
        "`node ls` over tcp with the CA but no client cert",
    );

    // The manager's own certificate works from another namespace.
    let out = h2.rswarm_raw(&with(h1.certs().flags()));
    out.assert_success("`node ls` over tcp from h2 with the manager's cert");
    let nodes = out.json();
    let hostnames: BTreeSet<&str> = nodes
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["hostname"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        hostnames,
        BTreeSet::from(["h1", "h2"]),
        "node ls over tcp\n{out}"
    );

    // Another cluster's manager cert: valid (it works against its own manager) …
    let mut own = vec!["--host".to_string(), h3.tcp_url()];
    own.extend(h3.certs().flags());
    own.extend(node_ls.iter().map(|s| s.to_string()));
    h2.rswarm_raw(&own)
        .assert_success("the other cluster's manager cert against its own manager");
    // … but refused by ours, even when the client trusts our CA.
    let foreign = h3.certs();
    let foreign_client = vec![
        "--tlscacert".to_string(),
        h1.certs().ca.display().to_string(),
        "--tlscert".to_string(),
        foreign.cert.display().to_string(),
        "--tlskey".to_string(),
        foreign.key.display().to_string(),
    ];
    assert_refused(
        &h2.rswarm_raw(&with(foreign_client)),
        "`node ls` with another cluster's manager cert (our CA trusted)",
    );
    assert_refused(
        &h2.rswarm_raw(&with(foreign.flags())),
        "`node ls` with all of another cluster's cert files",
    );

    // The CLI may reject a foreign certificate before it connects; check that the manager itself
    // refuses it too, with a client that does not check (curl, `-k`: no server verification). With
    // our manager's certificate the same request gets an HTTP answer, so the refusal is the cert's.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let url = format!("https://{}/", h1.manager_addr());
        let curl = |c: &CertPaths| {
            let (cert, key) = (c.cert.display().to_string(), c.key.display().to_string());
            let args = [
                "-sS",
                "-k",
                "--http2",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
            ];
            let mut args: Vec<&str> = args.to_vec();
            args.extend(["--cert", &cert, "--key", &key, &url]);
            h2.run("curl", &args, Duration::from_secs(20))
        };
        curl(&h1.certs()).assert_success("curl with our manager's client certificate (control)");
        assert_refused(
            &curl(&foreign),
            "the manager must refuse a TLS client certificate issued by another cluster's CA",
        );
    } else {
        eprintln!(
            "warning: curl not found: skipped the server-side check of a foreign client cert"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// 8. leave
// ---------------------------------------------------------------------------------------------------

#[test]
fn leave() {
    let Some(lab) = Lab::new("leave") else { return };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let (mgr, init, workers) = cluster(&lab, 1, &[2, 3]);

    h2.rswarm(&["leave"])
        .assert_success("`rswarm leave` on worker h2");
    let st = workers[0].wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some(),
        "h2's daemon still running 10 s after `leave`:\n{}",
        tail(&workers[0].log(), 60)
    );
    let st = st.expect("checked");
    assert!(
        st.success(),
        "h2's daemon must exit 0 after `leave`, got {st}\n{}",
        tail(&workers[0].log(), 60)
    );
    assert!(
        !h2.state_dir().join("node.json").exists(),
        "after `leave` the state dir must not hold node.json: {}",
        list_dir(&h2.state_dir())
    );
    wait_status(&lab, h1, "h2", "down", DOWN_TIMEOUT);
    assert_eq!(
        h1.node_status("h3").as_deref(),
        Some("ready"),
        "h3 unaffected by h2 leaving"
    );

    // A manager refuses to leave without --force.
    let out = h1.rswarm(&["leave"]);
    assert_refused(&out, "`rswarm leave` on the manager without --force");
    assert!(
        mgr.is_running(),
        "the manager exited after a refused leave:\n{}",
        tail(&mgr.log(), 60)
    );
    assert_eq!(
        h1.node_ls().len(),
        3,
        "the manager still serves node ls after a refused leave"
    );
    assert!(workers[1].is_running(), "h3's daemon exited");

    // The emptied state dir can join again.
    let _again = h2.join(&init.token, &init.manager_addr);
    lab.wait_until(
        READY_TIMEOUT,
        POLL,
        || {
            h1.try_node_ls().is_ok_and(|n| {
                n.iter()
                    .any(|n| n["hostname"] == "h2" && n["status"] == "ready")
            })
        },
        "h2 ready again after re-joining",
    );
}

// ---------------------------------------------------------------------------------------------------
// 9. certificate renewal
// ---------------------------------------------------------------------------------------------------

#[test]
fn certificate_renewal() {
    let Some(lab) = Lab::with_hosts("certificate_renewal", 2) else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let (mgr, init) = h1.init(&["--cert-expiry", "30s"]);
    let w2 = h2.join(&init.token, &init.manager_addr);
    let joined = Instant::now();
    wait_all_ready(&lab, h1, 2);
    let cert_path = h2.certs().cert;
    let original = fs::read(&cert_path).unwrap_or_default();
    assert!(
        !original.is_empty(),
        "worker certificate {} missing or empty after join",
        cert_path.display()
    );
    let not_after_before = h2.info()["cert_not_after"].clone();

    // Until 40 s after the join (past the first certificate's expiry), every poll must see both nodes
    // ready through the manager's socket; somewhere in there the worker's certificate must change.
    let mut renewed_at = None;
    while joined.elapsed() < Duration::from_secs(40) {
        let t = joined.elapsed();
        match h1.try_node_ls() {
            Ok(nodes) => assert!(
                nodes.len() == 2 && nodes.iter().all(|n| n["status"] == "ready"),
                "{t:.1?} after the join: both nodes must stay ready during certificate renewal:\n{}\n{}",
                summarize_nodes(&nodes),
                lab.context()
            ),
            Err(out) => panic!("{t:.1?} after the join: `node ls` through the manager's socket failed\n{out}\n{}", lab.context()),
        }
        if renewed_at.is_none() {
            let now = fs::read(&cert_path).unwrap_or_default();
            if !now.is_empty() && now != original {
                eprintln!("worker certificate renewed {t:.1?} after the join");
                renewed_at = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let Some(at) = renewed_at else {
        panic!(
            "the worker's certificate was not renewed within 40 s of a 30 s lifetime\n{}",
            lab.context()
        );
    };
    assert!(
        at >= Duration::from_secs(10),
        "certificate renewed after {at:.1?}: too early for 50-80 % of a 30 s lifetime (is the lifetime counted from a back-dated notBefore?)"
    );
    assert_ne!(
        h2.info()["cert_not_after"],
        not_after_before,
        "`info` on the worker should report the renewed certificate's expiry"
    );
    assert!(
        w2.is_running(),
        "the worker exited:\n{}",
        tail(&w2.log(), 60)
    );
    assert!(
        mgr.is_running(),
        "the manager exited:\n{}",
        tail(&mgr.log(), 60)
    );
}

// ---------------------------------------------------------------------------------------------------
// 11. `rswarm swarm …`: Docker's spelling, and cluster-wide settings
// ---------------------------------------------------------------------------------------------------

#[test]
fn swarm_update_and_aliases() {
    let Some(lab) = Lab::with_hosts("swarm_update", 2) else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let (_mgr, init, _workers) = cluster(&lab, 1, &[2]);

    let alias = h1.rswarm(&["swarm", "join-token", "-q", "worker"]);
    alias.assert_success("rswarm swarm join-token -q worker");
    assert_eq!(
        alias.stdout.trim(),
        init.token,
        "the swarm alias prints the same token"
    );

    h1.rswarm(&[
        "swarm",
        "update",
        "--dispatcher-heartbeat",
        "2s",
        "--cert-expiry",
        "48h",
    ])
    .assert_success("rswarm swarm update");
    let cluster_info = h1.info()["cluster"].clone();
    assert_eq!(
        cluster_info["heartbeat_period_ms"],
        json!(2000),
        "{cluster_info}"
    );
    assert_eq!(
        cluster_info["cert_expiry_secs"],
        json!(48 * 3600),
        "{cluster_info}"
    );

    let bad = h1.rswarm(&["swarm", "update", "--dispatcher-heartbeat", "1ms"]);
    assert_refused(&bad, "a heartbeat below the minimum");
    assert!(
        bad.stderr.contains("--dispatcher-heartbeat"),
        "the refusal names the flag:\n{bad}"
    );
    assert_eq!(
        h1.info()["cluster"]["heartbeat_period_ms"],
        json!(2000),
        "a refused update changes nothing"
    );

    let worker = h2.rswarm(&["swarm", "update", "--cert-expiry", "1h"]);
    assert_refused_not_manager(&worker, "swarm update from a worker");
    // Both nodes keep their sessions under the new period (the manager's deadline is now 6 s).
    lab.hold_for(
        Duration::from_secs(4),
        Duration::from_millis(200),
        || h1.all_ready(2),
        "both nodes stay ready after the heartbeat period changed",
    );
}

#[test]
fn node_ls_filters_and_inspect_self() {
    let Some(lab) = Lab::with_hosts("node_filters", 2) else {
        return;
    };
    let h1 = lab.host(1);
    let (_mgr, init, _workers) = cluster(&lab, 1, &[2]);
    let ids = |out: &CmdOutput| -> Vec<String> {
        let mut v: Vec<String> = out
            .json()
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|n| n["hostname"].as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    let ls = |filters: &[&str]| {
        let mut args = vec!["node", "ls", "--format", "json"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let out = h1.rswarm(&args);
        out.assert_success(&format!("node ls with {filters:?}"));
        ids(&out)
    };
    assert_eq!(ls(&["role=worker"]), ["h2"]);
    assert_eq!(ls(&["role=manager"]), ["h1"]);
    h1.rswarm(&["node", "update", "--label-add", "zone=a", "h2"])
        .assert_success("label h2");
    assert_eq!(ls(&["node.label=zone=a"]), ["h2"]);
    assert!(ls(&["node.label=zone=b"]).is_empty());
    assert_eq!(
        ls(&["name=h", "role=worker"]),
        ["h2"],
        "different keys must all match"
    );
    assert_refused(
        &h1.rswarm(&["node", "ls", "--filter", "colour=red"]),
        "an unknown filter key",
    );
    let me = h1.rswarm(&["node", "inspect", "self"]);
    me.assert_success("node inspect self");
    assert_eq!(
        me.json()[0]["id"],
        json!(init.node_id),
        "self is the manager itself:\n{me}"
    );
}
