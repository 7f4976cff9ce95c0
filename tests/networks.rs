//! End-to-end tests of overlay networks: three test hosts (network namespaces) running real
//! daemons, runc and a real registry; `rswarm network …` and `rswarm service create --network`
//! driven as a user would, and traffic checked from inside the task containers. Need root, runc,
//! tini, docker-registry, skopeo, busybox-static and iputils ping (CI installs them); skip with a
//! message otherwise.

mod common;

use std::time::Duration;

use common::cli::{containers, lab, ok, rs, sleeper, TestCluster};
use common::{Host, Lab};
use serde_json::Value;

/// Running containers of service `svc` on every host: (host index, container name).
fn tasks(lab: &Lab, svc: &str) -> Vec<(usize, String)> {
    lab.hosts()
        .iter()
        .flat_map(|h| {
            containers(h, svc)
                .into_iter()
                .filter(|(_, state)| state == "running")
                .map(|(name, _)| (h.index, name))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `rswarm container exec NAME sh -c SCRIPT` on `host`.
fn exec(host: &Host, name: &str, script: &str) -> common::CmdOutput {
    common::cli::rs_for(
        host,
        &["container", "exec", name, "sh", "-c", script],
        Duration::from_secs(20),
    )
}

/// The container's IPv4 address on interface `ifname`.
fn addr_of(host: &Host, name: &str, ifname: &str) -> String {
    let out = exec(host, name, &format!("ip -4 -o addr show dev {ifname}"));
    out.assert_success(&format!("ip addr in {name}"));
    out.stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on {ifname} of {name}: {}", out.stdout))
        .to_string()
}

/// The container's init pid, for `nsenter --net=/proc/PID/ns/net`.
fn pid_of(host: &Host, name: &str) -> u32 {
    let v: Value =
        serde_json::from_str(&ok(host, &["container", "inspect", name])).expect("inspect json");
    v[0]["State"]["Pid"].as_u64().expect("State.Pid") as u32
}

/// iputils `ping` from inside the container's network namespace (busybox ping has no `-M do`).
fn ping_from(host: &Host, name: &str, ip: &str, size: u32) -> bool {
    let ns = format!("--net=/proc/{}/ns/net", pid_of(host, name));
    let size = size.to_string();
    let out = host.run(
        "nsenter",
        &[
            &ns, "--", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", &size, ip,
        ],
        Duration::from_secs(10),
    );
    out.success()
}

/// Network `net`'s VNI (decimal, as its overlay namespace file is named), from `network inspect`.
fn vni_of(host: &Host, net: &str) -> String {
    let v: Value =
        serde_json::from_str(&ok(host, &["network", "inspect", net])).expect("inspect json");
    v[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap_or_else(|| panic!("no VNI in the inspect of {net}: {v}"))
        .to_string()
}

/// The directory of a host agent's overlay namespace files (`<vni>`, one per network).
fn overlay_dir(host: &Host) -> std::path::PathBuf {
    host.state_dir().join("overlay")
}

/// The names (VNIs) of the overlay namespace files on `host`, sorted; none if the directory is
/// absent.
fn overlay_netns_files(host: &Host) -> Vec<String> {
    let dir = overlay_dir(host);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("list {}: {e}", dir.display()),
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// `PROGRAM ARGS…` on `host`, inside the overlay namespace of network `vni`.
fn run_in_overlay(host: &Host, vni: &str, program: &str, args: &[&str]) -> common::CmdOutput {
    let ns = format!("--net={}", overlay_dir(host).join(vni).display());
    let mut full = vec![ns.as_str(), "--", program];
    full.extend_from_slice(args);
    host.run("nsenter", &full, Duration::from_secs(5))
}

/// The device names in an `ip -o link show` listing (`5: NAME@PARENT: <…> …`).
fn link_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|d| d.trim().split('@').next().unwrap_or_default().to_string())
        .collect()
}

/// The VXLAN devices in `host`'s own namespace (overlay devices never live there).
fn host_vxlans(host: &Host) -> Vec<String> {
    let out = host.run(
        "ip",
        &["-o", "link", "show", "type", "vxlan"],
        Duration::from_secs(5),
    );
    out.assert_success("ip link show type vxlan");
    link_names(&out.stdout)
}

/// Sets, inside every host, what a Docker host has: FORWARD policy DROP and bridged frames
/// passed through iptables.
fn like_a_docker_host(lab: &Lab) {
    for h in lab.hosts() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
        h.run(
            "iptables",
            &["-P", "FORWARD", "DROP"],
            Duration::from_secs(10),
        )
        .assert_success("iptables -P FORWARD DROP");
        let out = h.run(
            "sysctl",
            &["-w", "net.bridge.bridge-nf-call-iptables=1"],
            Duration::from_secs(10),
        );
        out.assert_success("sysctl bridge-nf-call-iptables=1");
    }
}

fn exercise(name: &str, docker_host: bool) {
    let Some(lab) = lab(name, 3) else {
        return;
    };
    if docker_host {
        like_a_docker_host(&lab);
    }
    let c = TestCluster::start(&lab, 3, &[("test/bb:latest", sleeper())]);
    let image = c.image("test/bb:latest");
    let h1 = lab.host(1);

    // Networks: one from the default pool, one with a chosen subnet, one internal.
    let id = ok(h1, &["network", "create", "--driver", "overlay", "appnet"]);
    assert!(!id.trim().is_empty(), "network create prints the id");
    ok(
        h1,
        &["network", "create", "--subnet", "10.88.0.0/24", "othernet"],
    );
    ok(h1, &["network", "create", "--internal", "intnet"]);
    let intnet_vni = vni_of(h1, "intnet");
    let ls = ok(h1, &["network", "ls"]);
    for n in ["appnet", "othernet", "intnet"] {
        assert!(ls.contains(n), "{ls}");
    }
    let inspect: Value =
        serde_json::from_str(&ok(h1, &["network", "inspect", "appnet"])).expect("inspect json");
    assert_eq!(
        inspect[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24",
        "{inspect}"
    );

    // Bad input: overlapping and too-small subnets, unknown networks.
    let out = rs(h1, &["network", "create", "--subnet", "10.88.0.0/16", "x1"]);
    out.assert_failure("overlapping subnet");
    assert!(out.stderr_lc().contains("overlaps"), "{out}");
    let out = rs(h1, &["network", "create", "--subnet", "10.89.0.0/30", "x2"]);
    out.assert_failure("too small subnet");
    assert!(out.stderr_lc().contains("too small"), "{out}");
    let out = rs(
        h1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "lost",
            "--network",
            "nosuch",
            &image,
        ],
    );
    out.assert_failure("unknown network");
    assert!(
        out.stderr_lc().contains("network nosuch not found"),
        "{out}"
    );

    // One task per host on appnet (h1 also on othernet), a task on othernet, internal tasks.
    for args in [
        vec!["--name", "a", "--mode", "global", "--network", "appnet"],
        vec![
            "--name",
            "b",
            "--network",
            "othernet",
            "--constraint",
            "node.hostname==h2",
        ],
        vec!["--name", "c", "--mode", "global", "--network", "intnet"],
    ] {
        let mut full = vec!["service", "create"];
        full.extend(args);
        full.push(&image);
        ok(h1, &full);
    }
    lab.wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            tasks(&lab, "a").len() == 3
                && tasks(&lab, "b").len() == 1
                && tasks(&lab, "c").len() == 3
        },
        "3 a tasks, 1 b task, 3 c tasks running",
    );
    let a = tasks(&lab, "a");
    let a_ips: Vec<String> = a
        .iter()
        .map(|(h, n)| addr_of(lab.host(*h), n, "eth1"))
        .collect();
    for ip in &a_ips {
        assert!(ip.starts_with("10.0.0."), "appnet address {ip}");
    }

    // Every pair across hosts: ping, a 1400-byte packet with DF set (no MTU black hole), TCP.
    for (i, (hi, ni)) in a.iter().enumerate() {
        let host = lab.host(*hi);
        exec(host, ni, "httpd -p 8080 -h /etc").assert_success("httpd");
        for (j, ip) in a_ips.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(ping_from(host, ni, ip, 56), "{ni} on h{hi} pings {ip}");
            assert!(
                ping_from(host, ni, ip, 1372),
                "{ni} on h{hi}: 1400-byte ping with DF to {ip}"
            );
        }
    }
    for (i, (hi, ni)) in a.iter().enumerate() {
        let peer = &a_ips[(i + 1) % a_ips.len()];
        // Debian's static busybox wget crashes in glibc's resolver: curl from the container's
        // network namespace instead.
        let host = lab.host(*hi);
        let ns = format!("--net=/proc/{}/ns/net", pid_of(host, ni));
        let url = format!("http://{peer}:8080/hostname");
        let out = host.run(
            "nsenter",
            &[&ns, "--", "curl", "-sS", "--max-time", "5", &url],
            Duration::from_secs(10),
        );
        out.assert_success(&format!("TCP from {ni} to {peer}"));
        assert!(!out.stdout.trim().is_empty(), "{out}");
    }

    // Names: the service name gives its VIP, tasks.NAME every task, other names go out.
    let (h0, n0) = &a[0];
    let host0 = lab.host(*h0);
    let look = |name: &str| -> Vec<String> {
        let out = exec(host0, n0, &format!("nslookup {name} 127.0.0.11"));
        out.stdout
            .lines()
            .skip_while(|l| !l.starts_with("Name:"))
            .filter_map(|l| {
                l.strip_prefix("Address:")
                    .or_else(|| l.strip_prefix("Address 1:"))
            })
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    };
    let vip = look("a");
    assert_eq!(vip.len(), 1, "service a has one VIP: {vip:?}");
    assert!(!a_ips.contains(&vip[0]), "the VIP is no task's address");
    let mut all = look("tasks.a");
    all.sort();
    let mut want = a_ips.clone();
    want.sort();
    assert_eq!(all, want, "tasks.a gives every task");
    let resolv = exec(host0, n0, "cat /etc/resolv.conf").stdout;
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");
    // /etc/hosts gives the task's own overlay address first under its hostname, as Docker's.
    let hosts = exec(host0, n0, "cat /etc/hosts").stdout;
    let hostname = exec(host0, n0, "hostname").stdout.trim().to_string();
    let own = hosts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(hostname.as_str()))
        .and_then(|l| l.split_whitespace().next());
    assert_eq!(own, Some(a_ips[0].as_str()), "{hosts}");
    // The VIP spreads connections over the tasks.
    let ns0 = format!("--net=/proc/{}/ns/net", pid_of(host0, n0));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = host0.run(
            "nsenter",
            &[
                &ns0,
                "--",
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}:8080/hostname", vip[0]),
            ],
            Duration::from_secs(10),
        );
        out.assert_success("curl the VIP");
        seen.insert(out.stdout.trim().to_string());
    }
    assert!(
        seen.len() >= 2,
        "30 connections to the VIP reached one task only: {seen:?}"
    );

    // dnsrr: the name gives the running tasks' addresses, no VIP; host-mode published ports
    // work with it, as in Docker.
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "rr",
            "--mode",
            "global",
            "--network",
            "appnet",
            "--endpoint-mode",
            "dnsrr",
            "-p",
            "mode=host,published=18080,target=80",
            &image,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    lab.wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || tasks(&lab, "rr").len() == 3,
        "3 rr tasks running",
    );
    let mut rr_ips: Vec<String> = tasks(&lab, "rr")
        .iter()
        .map(|(h, n)| addr_of(lab.host(*h), n, "eth1"))
        .collect();
    rr_ips.sort();
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let mut got = look("rr");
            got.sort();
            got == rr_ips
        },
        "rr resolves to its 3 tasks",
    );
    for h in lab.hosts() {
        let url = format!("http://{}:18080/cgi-bin/ip", h.ip);
        let out = h1.run(
            "curl",
            &["-sS", "--max-time", "5", &url],
            Duration::from_secs(10),
        );
        assert!(
            out.stdout.contains("client="),
            "rr's port on h{}: {out}",
            h.index
        );
    }
    ok(h1, &["service", "rm", "rr"]);

    // Networks are isolated: b (othernet, h2) and a's tasks cannot reach each other.
    let (bh, bn) = tasks(&lab, "b").remove(0);
    let b_ip = addr_of(lab.host(bh), &bn, "eth1");
    assert!(b_ip.starts_with("10.88.0."), "{b_ip}");
    for (hi, ni) in &a {
        assert!(
            !ping_from(lab.host(*hi), ni, &b_ip, 56),
            "{ni} must not reach othernet"
        );
    }
    for ip in &a_ips {
        assert!(
            !ping_from(lab.host(bh), &bn, ip, 56),
            "b must not reach appnet {ip}"
        );
    }

    // The internal network connects its tasks but has no way out.
    let cs = tasks(&lab, "c");
    let c_ips: Vec<String> = cs
        .iter()
        .map(|(h, n)| addr_of(lab.host(*h), n, "eth0"))
        .collect();
    let (ch, cn) = &cs[0];
    let chost = lab.host(*ch);
    assert!(
        ping_from(chost, cn, &c_ips[1], 56),
        "internal tasks reach each other"
    );
    let routes = exec(chost, cn, "ip route").stdout;
    assert!(
        !routes.contains("default"),
        "internal: no default route: {routes}"
    );
    let other_host = lab
        .hosts()
        .iter()
        .find(|h| h.index != *ch)
        .expect("another host");
    assert!(
        !ping_from(chost, cn, &other_host.ip, 56),
        "an internal task must not reach the underlay"
    );

    // A service joins a network with a rolling update, and leaves one.
    ok(
        h1,
        &[
            "service",
            "update",
            "--network-add",
            "appnet",
            "--update-monitor",
            "200ms",
            "b",
        ],
    );
    let (bh, bn) = tasks(&lab, "b").remove(0);
    let eth2 = addr_of(lab.host(bh), &bn, "eth2");
    assert!(
        eth2.starts_with("10.0.0."),
        "b's new task is on appnet: {eth2}"
    );
    assert!(
        ping_from(lab.host(bh), &bn, &a_ips[0], 56),
        "b reaches a over appnet now"
    );
    ok(
        h1,
        &[
            "service",
            "update",
            "--network-rm",
            "othernet",
            "--update-monitor",
            "200ms",
            "b",
        ],
    );
    let (bh, bn) = tasks(&lab, "b").remove(0);
    let eth1 = addr_of(lab.host(bh), &bn, "eth1");
    assert!(
        eth1.starts_with("10.0.0."),
        "b left othernet: eth1 is {eth1}"
    );
    ok(h1, &["network", "rm", "othernet"]);

    // Standalone containers join attachable networks only.
    let h2 = lab.host(2);
    ok(h1, &["network", "create", "--attachable", "attnet"]);
    let out = rs(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "solo0",
            "--network",
            "appnet",
            &image,
        ],
    );
    out.assert_failure("container run on a non-attachable network");
    assert!(out.stderr_lc().contains("not attachable"), "{out}");
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "s",
            "--network",
            "attnet",
            "--constraint",
            "node.hostname==h1",
            &image,
        ],
    );
    ok(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "solo",
            "--network",
            "attnet",
            &image,
        ],
    );
    let (sh, sn) = tasks(&lab, "s").remove(0);
    let s_ip = addr_of(lab.host(sh), &sn, "eth1");
    let solo_ip = addr_of(h2, "solo", "eth1");
    assert!(
        ping_from(h2, "solo", &s_ip, 56),
        "the standalone container reaches the task"
    );
    assert!(
        ping_from(lab.host(sh), &sn, &solo_ip, 56),
        "the task reaches the standalone container"
    );
    let out = exec(lab.host(sh), &sn, "nslookup solo 127.0.0.11");
    assert!(
        out.stdout.contains(&solo_ip),
        "the task resolves the standalone container: {out}"
    );
    ok(h2, &["container", "rm", "-f", "solo"]);
    ok(h1, &["service", "rm", "s"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || rs(h1, &["network", "rm", "attnet"]).success(),
        "attnet removable once its service and container are gone",
    );

    // A network in use cannot be removed; once its service is gone, it can.
    let out = rs(h1, &["network", "rm", "appnet"]);
    out.assert_failure("rm a network in use");
    assert!(out.stderr_lc().contains("in use"), "{out}");
    ok(h1, &["service", "rm", "a", "b"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || rs(h1, &["network", "rm", "appnet"]).success(),
        "appnet removable once services a and b are gone",
    );
    // The hosts drop appnet's namespace and devices with its last task: only intnet's (a task
    // on every host) stays, with its one VXLAN device; the hosts' own namespaces hold none.
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            lab.hosts().iter().all(|h| {
                let files = overlay_netns_files(h);
                let vxlans = run_in_overlay(
                    h,
                    &intnet_vni,
                    "ip",
                    &["-o", "link", "show", "type", "vxlan"],
                );
                let in_host = host_vxlans(h);
                if files != [intnet_vni.clone()]
                    || link_names(&vxlans.stdout).len() != 1
                    || !in_host.is_empty()
                {
                    eprintln!(
                        "h{}: overlay namespaces {files:?} (want [{intnet_vni}]), VXLAN devices \
                         in intnet's {:?}, in the host's {in_host:?}",
                        h.index,
                        link_names(&vxlans.stdout)
                    );
                    return false;
                }
                true
            })
        },
        "appnet's namespace and devices gone from every host",
    );

    // `network prune`: asks first (no answer is a no), honours filters, keeps networks in use.
    ok(h1, &["network", "create", "--label", "tier=tmp", "prunea"]);
    ok(h1, &["network", "create", "pruneb"]);
    let names = || ok(h1, &["network", "ls", "--format", "json"]);
    let out = rs(h1, &["network", "prune"]);
    out.assert_success("prune with no answer");
    assert!(
        out.stdout
            .contains("WARNING! This will remove all custom networks"),
        "{out}"
    );
    let listed = names();
    assert!(
        listed.contains("prunea") && listed.contains("pruneb"),
        "{listed}"
    );
    let out = ok(
        h1,
        &["network", "prune", "-f", "--filter", "label=tier=tmp"],
    );
    assert_eq!(out, "Deleted Networks:\nprunea\n");
    let out = ok(h1, &["network", "prune", "-f"]);
    assert_eq!(out, "Deleted Networks:\npruneb\n");
    let listed = names();
    assert!(
        listed.contains("intnet") && !listed.contains("prune"),
        "intnet (in use) stays, the others go: {listed}"
    );
    let out = rs(h1, &["network", "prune", "-f", "--filter", "color=red"]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(out.stderr.contains("for network prune"), "{out}");
    drop(c);
}

#[test]
fn overlay_networks_connect_isolate_and_refuse_bad_input() {
    exercise("net_overlay", false);
}

#[test]
fn overlay_networks_on_docker_like_hosts() {
    exercise("net_dockerlike", true);
}

/// Whether the container has interface `ifname`.
fn has_link(host: &Host, name: &str, ifname: &str) -> bool {
    exec(host, name, &format!("ip link show dev {ifname}")).success()
}

/// The addresses `nslookup NAME 127.0.0.11` gives inside container `from` (none if it fails).
fn resolves(host: &Host, from: &str, name: &str) -> String {
    exec(host, from, &format!("nslookup {name} 127.0.0.11")).stdout
}

/// `rswarm ARGS` on `host` must fail by itself, saying `needle` (compared in lowercase).
#[track_caller]
fn refused(host: &Host, args: &[&str], needle: &str) {
    let out = rs(host, args);
    out.assert_failure(&args.join(" "));
    assert!(out.stderr_lc().contains(needle), "{out}");
}

/// `network connect` and `network disconnect`, as a Docker user drives them: a running
/// container joins attachable networks at once (interface, DNS both ways, `hosts`,
/// `resolv.conf`), leaves them at once, keeps what it joined across restarts, and a stopped
/// one joins at its next start; wrong modes, networks and repeats are refused.
#[test]
fn standalone_containers_connect_and_disconnect() {
    let Some(lab) = lab("net_connect", 2) else {
        return;
    };
    let c = TestCluster::start(&lab, 2, &[("test/bb:latest", sleeper())]);
    let image = c.image("test/bb:latest");
    let (h1, h2) = (lab.host(1), lab.host(2));
    ok(
        h1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.61.0.0/24",
            "front",
        ],
    );
    ok(
        h1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.62.0.0/24",
            "back",
        ],
    );
    ok(h1, &["network", "create", "plain"]);
    ok(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "srv",
            "--network",
            "front",
            "--network-alias",
            "api",
            &image,
        ],
    );
    let srv_ip = addr_of(h2, "srv", "eth1");
    refused(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "x",
            "--network-alias",
            "x1",
            &image,
        ],
        "aliases",
    );
    ok(h1, &["container", "run", "-d", "--name", "cli", &image]);
    assert!(
        !has_link(h1, "cli", "eth1"),
        "a bridge container has only eth0"
    );

    // Refused: a network that is not attachable, an unknown one, a container without a
    // namespace of its own; nothing is left half done.
    refused(
        h1,
        &["network", "connect", "plain", "cli"],
        "not attachable",
    );
    refused(h1, &["network", "connect", "nosuchnet", "cli"], "not found");
    assert!(
        !has_link(h1, "cli", "eth1"),
        "failed connects add no interface"
    );
    ok(
        h1,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "hostc",
            "--network",
            "host",
            &image,
        ],
    );
    refused(
        h1,
        &["network", "connect", "front", "hostc"],
        "host network",
    );
    refused(
        h1,
        &["network", "connect", "front", "nosuchcontainer"],
        "no such container",
    );

    // A running container joins at once: an address on front, reachable both ways, named in
    // the cluster's DNS, and its own resolver now the embedded one.
    refused(
        h1,
        &["network", "connect", "--alias", "bad alias", "front", "cli"],
        "invalid network alias",
    );
    ok(
        h1,
        &["network", "connect", "--alias", "probe", "front", "cli"],
    );
    let cli_ip = addr_of(h1, "cli", "eth1");
    assert!(cli_ip.starts_with("10.61.0."), "cli on front: {cli_ip}");
    assert!(
        ping_from(h1, "cli", &srv_ip, 56),
        "cli reaches srv over front"
    );
    assert!(
        ping_from(h2, "srv", &cli_ip, 56),
        "srv reaches cli over front"
    );
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            resolves(h2, "srv", "cli").contains(&cli_ip)
                && resolves(h2, "srv", "probe").contains(&cli_ip)
        },
        "srv resolves cli and its alias",
    );
    let out = exec(
        h1,
        "cli",
        "cat /etc/resolv.conf; nslookup srv; nslookup api; cat /etc/hosts",
    );
    assert!(out.stdout.contains("nameserver 127.0.0.11"), "{out}");
    assert!(
        out.stdout.matches(srv_ip.as_str()).count() >= 2,
        "cli resolves srv and its alias: {out}"
    );
    assert!(
        out.stdout.contains(&cli_ip),
        "cli's hosts lists its new address: {out}"
    );
    let inspect: Value =
        serde_json::from_str(&ok(h1, &["container", "inspect", "cli"])).expect("inspect json");
    let nets = &inspect[0]["NetworkSettings"]["Networks"];
    assert_eq!(nets["front"]["IPAddress"], cli_ip.as_str(), "{nets}");
    assert_eq!(nets["front"]["Aliases"][0], "probe", "{nets}");
    assert!(nets["bridge"]["IPAddress"].is_string(), "{nets}");
    // `network inspect` (on a manager, h1) lists its node's containers and every peer.
    let cli_id = inspect[0]["Id"].as_str().expect("Id").to_string();
    let front: Value =
        serde_json::from_str(&ok(h1, &["network", "inspect", "front"])).expect("inspect json");
    let here = &front[0]["Containers"];
    assert_eq!(here.as_object().map(|m| m.len()), Some(1), "{here}");
    assert_eq!(here[&cli_id]["Name"], "cli", "{here}");
    assert_eq!(
        here[&cli_id]["IPv4Address"],
        format!("{cli_ip}/24").as_str(),
        "{here}"
    );
    let peers = front[0]["Peers"].to_string();
    assert!(
        peers.contains("198.18.0.1") && peers.contains("198.18.0.2"),
        "{peers}"
    );

    // Each node's own view, as Docker's nodes show it. The worker (h2) lists its local networks
    // and the overlay network its container is on, and inspects that one with its container
    // there; a manager lists its local networks beside the cluster's.
    let rows = |host: &Host| -> Vec<String> {
        ok(host, &["network", "ls"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let on_worker = rows(h2);
    for want in [
        "bridge bridge local",
        "host host local",
        "none null local",
        "front overlay swarm",
    ] {
        assert!(on_worker.iter().any(|r| r == want), "{want}: {on_worker:?}");
    }
    assert_eq!(
        on_worker.len(),
        4,
        "h2 has nothing on back or plain: {on_worker:?}"
    );
    let on_manager = rows(h1);
    for want in [
        "bridge bridge local",
        "host host local",
        "none null local",
        "front overlay swarm",
        "back overlay swarm",
        "plain overlay swarm",
    ] {
        assert!(
            on_manager.iter().any(|r| r == want),
            "{want}: {on_manager:?}"
        );
    }
    let there: Value =
        serde_json::from_str(&ok(h2, &["network", "inspect", "front"])).expect("inspect json");
    assert_eq!(there[0]["Id"], front[0]["Id"], "{there}");
    let on_h2 = there[0]["Containers"].as_object().expect("Containers");
    assert_eq!(on_h2.len(), 1, "{there}");
    let srv = on_h2.values().next().expect("srv");
    assert_eq!(srv["Name"], "srv", "{there}");
    assert_eq!(
        srv["IPv4Address"],
        format!("{srv_ip}/24").as_str(),
        "{there}"
    );
    refused(h2, &["network", "inspect", "back"], "no such network");
    let bridge: Value =
        serde_json::from_str(&ok(h1, &["network", "inspect", "bridge"])).expect("inspect json");
    assert_eq!(bridge[0]["Scope"], "local", "{bridge}");
    let cli_bridge_ip = nets["bridge"]["IPAddress"]
        .as_str()
        .expect("bridge address");
    assert!(
        bridge[0]["Containers"][&cli_id]["IPv4Address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{cli_bridge_ip}/"))),
        "{bridge}"
    );
    let host_net: Value =
        serde_json::from_str(&ok(h1, &["network", "inspect", "host"])).expect("inspect json");
    assert!(
        host_net[0]["Containers"].to_string().contains("\"hostc\""),
        "{host_net}"
    );
    refused(h1, &["network", "rm", "bridge"], "pre-defined network");
    refused(
        h1,
        &["network", "connect", "front", "cli"],
        "already exists",
    );

    // A second network takes the next interface, at the address asked for (`--ip`, on a
    // network with a --subnet: not its gateway, not one in use); leaving the first takes its
    // interface, address and name away at once and keeps the second.
    refused(
        h1,
        &["network", "connect", "--ip", "10.62.0.1", "back", "cli"],
        "choose another --ip",
    );
    ok(
        h1,
        &["network", "connect", "--ip", "10.62.0.77", "back", "cli"],
    );
    let back_ip = addr_of(h1, "cli", "eth2");
    assert_eq!(
        back_ip, "10.62.0.77",
        "cli on back at the address asked for"
    );
    refused(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "y1",
            "--network",
            "back",
            "--ip",
            "10.62.0.77",
            &image,
        ],
        "already in use",
    );
    refused(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "y2",
            "--ip",
            "10.62.0.78",
            &image,
        ],
        "cluster networks only",
    );
    ok(h1, &["network", "disconnect", "front", "cli"]);
    assert!(!has_link(h1, "cli", "eth1"), "front's interface is gone");
    assert_eq!(addr_of(h1, "cli", "eth2"), back_ip, "back stays");
    assert!(
        !ping_from(h2, "srv", &cli_ip, 56),
        "srv no longer reaches cli"
    );
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let r = resolves(h2, "srv", "cli");
            !r.contains(&cli_ip)
        },
        "srv no longer resolves cli",
    );
    // h1 has nothing else on front: its devices for front go.
    let front_vni = vni_of(h1, "front");
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || !overlay_netns_files(h1).contains(&front_vni),
        "front's namespace gone from h1",
    );
    refused(
        h1,
        &["network", "disconnect", "front", "cli"],
        "not connected",
    );
    ok(h1, &["network", "disconnect", "-f", "front", "cli"]);

    // What it joined is in its record: a stopped container joins at its next start, and a
    // restart brings back every network (numbered from eth1 again, in the order joined).
    ok(h1, &["container", "stop", "-t", "1", "cli"]);
    ok(h1, &["network", "connect", "front", "cli"]);
    ok(h1, &["container", "start", "cli"]);
    let (b, a) = (addr_of(h1, "cli", "eth1"), addr_of(h1, "cli", "eth2"));
    assert_eq!(b, back_ip, "back keeps its address across the restart");
    assert!(a.starts_with("10.61.0."), "front again: {a}");
    assert!(
        ping_from(h1, "cli", &srv_ip, 56),
        "cli reaches srv after its restart"
    );

    // A container removed while its node has no session cannot give its address back then; the
    // node's next session does (the cluster keeps only what the node's records hold).
    c.daemons[0].kill9();
    ok(h2, &["container", "rm", "-f", "srv"]);
    let _manager = h1.start_manager();
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || h1.node_status("h2").as_deref() == Some("ready"),
        "h2 back in session with the restarted manager",
    );
    refused(h1, &["network", "rm", "front"], "in use");
    // The restarted agent re-adopted cli with both networks it joined: its DNS answers again.
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            resolves(h1, "cli", "cli.front").contains(&a)
                && resolves(h1, "cli", "cli.back").contains(&b)
        },
        "the re-adopted cli resolves its own name on both networks",
    );

    // A node removed from the cluster never gives its containers' addresses back: removing it
    // frees them.
    ok(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "z1",
            "--network",
            "back",
            &image,
        ],
    );
    c.daemons[1].kill9();
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || h1.node_status("h2").as_deref() == Some("down"),
        "h2 down",
    );
    ok(h1, &["node", "rm", "h2"]);

    // Removing the containers gives their addresses back: the networks can go.
    ok(h1, &["container", "rm", "-f", "cli", "hostc"]);
    for net in ["front", "back", "plain"] {
        lab.wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || rs(h1, &["network", "rm", net]).success(),
            &format!("{net} removable once its containers are gone"),
        );
    }
    drop(c);
}

/// (ip, mac) or (ip, vtep) pairs.
type Pairs = Vec<(String, String)>;

/// The (ip, mac) neighbour and (ip, vtep) FDB entries of the VXLAN device of network `vni` on
/// a host (in the network's overlay namespace; none if the namespace is not there).
fn programmed(host: &Host, vni: &str) -> (Pairs, Pairs) {
    if !overlay_dir(host).join(vni).exists() {
        return (Vec::new(), Vec::new());
    }
    let links = run_in_overlay(host, vni, "ip", &["-o", "link", "show", "type", "vxlan"]);
    let Some(dev) = link_names(&links.stdout).into_iter().next() else {
        return (Vec::new(), Vec::new());
    };
    let neigh = run_in_overlay(host, vni, "ip", &["neigh", "show", "dev", &dev]);
    // "10.0.0.5 lladdr 02:42:0a:00:00:05 PERMANENT"
    let mut macs = std::collections::BTreeMap::new();
    let mut neighbours = Vec::new();
    for l in neigh.stdout.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 3 && w[1] == "lladdr" {
            macs.insert(w[2].to_string(), w[0].to_string());
            neighbours.push((w[0].to_string(), w[2].to_string()));
        }
    }
    let fdb = run_in_overlay(host, vni, "bridge", &["fdb", "show", "dev", &dev]);
    // "02:42:0a:00:00:05 dst 198.18.0.2 self permanent"
    let mut entries = Vec::new();
    for l in fdb.stdout.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 3 && w[1] == "dst" && w[0].starts_with("02:42:") {
            let ip = macs
                .get(w[0])
                .cloned()
                .unwrap_or_else(|| format!("? {}", w[0]));
            entries.push((ip, w[2].to_string()));
        }
    }
    entries.sort();
    neighbours.sort();
    (neighbours, entries)
}

/// Docker's MAC for an overlay address: 02:42 and the four address bytes.
fn mac_of(ip: &str) -> String {
    let b: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[test]
fn overlay_entries_follow_churn_and_agent_restarts() {
    let Some(lab) = lab("net_churn", 3) else {
        return;
    };
    let c = TestCluster::start(&lab, 3, &[("test/bb:latest", sleeper())]);
    let image = c.image("test/bb:latest");
    let h1 = lab.host(1);
    ok(h1, &["network", "create", "churnnet"]);
    let vni = vni_of(h1, "churnnet");
    let common = ["--network", "churnnet", "--stop-signal", "KILL", "-d"];
    let mut steady = vec!["service", "create", "--name", "steady", "--mode", "global"];
    steady.extend(common);
    steady.push(&image);
    ok(h1, &steady);
    let mut churn = vec!["service", "create", "--name", "churn", "--replicas", "0"];
    churn.extend(common);
    churn.push(&image);
    ok(h1, &churn);
    let count = |svc: &str| tasks(&lab, svc).len();

    // 100 tasks come and go, 10 at a time; h3's agent is killed and restarted midway.
    let mut h3_agent = None;
    for round in 0..10 {
        ok(h1, &["service", "scale", "-d", "churn=10"]);
        lab.wait_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || count("churn") == 10,
            "10 churn tasks running",
        );
        if round == 5 {
            c.daemons[2].kill9();
            // Its tasks are replaced elsewhere; then it comes back and sheds them.
            lab.wait_until(
                Duration::from_secs(30),
                Duration::from_millis(100),
                || h1.node_status("h3").as_deref() == Some("down"),
                "h3 down",
            );
            h3_agent = Some(lab.host(3).start_agent());
        }
        ok(h1, &["service", "scale", "-d", "churn=0"]);
        lab.wait_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || count("churn") == 0,
            "churn tasks gone",
        );
    }
    ok(h1, &["service", "scale", "-d", "churn=4"]);
    lab.wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            count("churn") == 4
                && count("steady") == 3
                && h1.node_status("h3").as_deref() == Some("ready")
        },
        "4 churn and 3 steady tasks running, h3 ready",
    );

    // The live endpoints: (host, container, address).
    let live: Vec<(usize, String, String)> = tasks(&lab, "steady")
        .into_iter()
        .chain(tasks(&lab, "churn"))
        .map(|(h, n)| {
            let ip = addr_of(lab.host(h), &n, "eth1");
            (h, n, ip)
        })
        .collect();
    assert_eq!(live.len(), 7);
    // Every host holds entries for exactly the live endpoints of the other hosts, at their VTEP.
    lab.wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            lab.hosts().iter().all(|h| {
                let mut want: Vec<(String, String)> = live
                    .iter()
                    .filter(|(hi, _, _)| *hi != h.index)
                    .map(|(hi, _, ip)| (ip.clone(), lab.host(*hi).ip.clone()))
                    .collect();
                want.sort();
                let mut want_neigh: Vec<(String, String)> = want
                    .iter()
                    .map(|(ip, _)| (ip.clone(), mac_of(ip)))
                    .collect();
                want_neigh.sort();
                let (neigh, fdb) = programmed(h, &vni);
                let in_host = host_vxlans(h);
                if fdb != want || neigh != want_neigh || !in_host.is_empty() {
                    eprintln!(
                        "h{}: fdb {fdb:?} neigh {neigh:?}, want {want:?}; VXLAN devices in the \
                         host's namespace {in_host:?}",
                        h.index
                    );
                    return false;
                }
                true
            })
        },
        "FDB and neighbour entries are exactly the live remote endpoints",
    );
    // And every live pair connects.
    for (hi, ni, _) in &live {
        for (hj, _, ip) in &live {
            if hi != hj {
                assert!(
                    ping_from(lab.host(*hi), ni, ip, 56),
                    "{ni} on h{hi} pings {ip} on h{hj}"
                );
            }
        }
    }
    // A node that leaves takes its overlay namespaces (and the devices in them) with it; its
    // own namespace never had an overlay device or rule.
    ok(lab.host(3), &["leave"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let h3 = lab.host(3);
            let show = |kind: &str| {
                h3.run(
                    "ip",
                    &["-o", "link", "show", "type", kind],
                    Duration::from_secs(5),
                )
                .stdout
            };
            let rules = h3.run("iptables", &["-S", "FORWARD"], Duration::from_secs(5));
            show("vxlan").trim().is_empty()
                && show("bridge").trim().is_empty()
                && !rules.stdout.contains("rswarm overlay")
                && common::dir_absent_or_empty(&overlay_dir(h3))
        },
        "h3's overlay namespaces, devices and rules gone after leave",
    );
    drop(h3_agent);
    drop(c);
}
