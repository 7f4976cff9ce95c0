//! End-to-end tests of `rswarm service logs` and `rswarm events`: three test hosts (network
//! namespaces) running real daemons, runc and a real registry. Need root, runc, tini,
//! docker-registry, skopeo and busybox-static (CI installs them); skip with a message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::cli::{lab, ok, rs_for, sleeper, TestCluster};
use common::Bin;

/// Lines of `text` with the prefix of a task of `service` on `node`.
fn lines_from<'a>(text: &'a str, service: &str, node: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{service}."))
                && l.split("    | ")
                    .next()
                    .is_some_and(|p| p.ends_with(&format!("@{node}")))
        })
        .collect()
}

#[test]
fn service_logs_from_every_node_follow_down_node_and_events() {
    let Some(lab) = lab("svc_logs", 3) else {
        return;
    };
    let c = TestCluster::start(&lab, 3, &[("test/bb:latest", sleeper())]);
    let image = c.image("test/bb:latest");
    let (h1, h3) = (lab.host(1), lab.host(3));

    // One task per node; each says hello (stdout), complains (stderr), then ticks every second.
    let script = "echo \"hello from $(hostname)\"; echo \"oops from $(hostname)\" >&2; \
                  i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 1; done";
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "talk",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            &image,
            "sh",
            "-c",
            script,
        ],
    );

    // Every node's lines, with Docker's prefix; stderr lines on stderr.
    let mut last = None;
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let out = rs_for(h1, &["service", "logs", "talk"], Duration::from_secs(30));
            let done = out.success()
                && ["h1", "h2", "h3"].iter().all(|n| {
                    lines_from(&out.stdout, "talk", n)
                        .iter()
                        .any(|l| l.contains("hello from"))
                        && lines_from(&out.stderr, "talk", n)
                            .iter()
                            .any(|l| l.contains("oops from"))
                });
            last = Some(out);
            done
        },
        "service logs shows hello (stdout) and oops (stderr) from h1, h2 and h3",
    );
    let out = last.expect("ran");
    assert!(
        !out.stdout.contains("oops from"),
        "stderr lines on stdout\n{out}"
    );
    let hello = lines_from(&out.stdout, "talk", "h2")
        .into_iter()
        .find(|l| l.contains("hello from"))
        .expect("a hello line from h2")
        .to_string();
    // `talk.N.<12 hex>@h2    | hello from <container hostname>`
    let prefix = hello.split("    | ").next().unwrap_or_default();
    let parts: Vec<&str> = prefix.trim_end_matches("@h2").split('.').collect();
    assert_eq!(parts.len(), 3, "{hello}");
    assert_eq!(parts[2].trim().len(), 12, "a short task id: {hello}");

    // Options: --tail per task, --no-task-ids, --raw, -t.
    let out = rs_for(
        h1,
        &[
            "service",
            "logs",
            "--tail",
            "1",
            "--no-task-ids",
            "-t",
            "talk",
        ],
        Duration::from_secs(30),
    );
    out.assert_success("service logs --tail 1");
    assert_eq!(
        out.stdout.lines().count() + out.stderr.lines().count(),
        3,
        "{out}"
    );
    assert!(
        out.stdout
            .lines()
            .all(|l| l.contains("@h") && l.contains("Z tick")),
        "{out}"
    );
    let out = rs_for(
        h1,
        &["service", "logs", "--raw", "talk"],
        Duration::from_secs(30),
    );
    out.assert_success("service logs --raw");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("hello from")),
        "{out}"
    );

    // -f with --tail 0: only lines printed after it started, from the reachable nodes.
    let follow: Vec<String> = [
        "--host",
        &h1.socket_url(),
        "service",
        "logs",
        "-f",
        "--tail",
        "0",
        "talk",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = h1.spawn_bin("logs-follow", Bin::Rswarm, &follow);
    f.wait_for_stdout(Duration::from_secs(20), "ticks from three nodes", |s| {
        ["h1", "h2", "h3"]
            .iter()
            .all(|n| lines_from(s, "talk", n).iter().any(|l| l.contains("tick")))
    });
    assert!(
        !f.stdout().contains("hello from"),
        "--tail 0 shows no old lines\n{}",
        f.stdout()
    );
    assert!(f.is_running(), "-f keeps following");
    f.kill9();

    // Events: the service's creation is in the manager's recent events.
    let out = rs_for(
        h1,
        &[
            "events",
            "--since",
            "5m",
            "--until",
            "0s",
            "--filter",
            "type=service",
        ],
        Duration::from_secs(20),
    );
    out.assert_success("events --since 5m --until 0s");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(" service create ") && l.contains("(name=talk)")),
        "{out}"
    );
    assert!(out.stdout.lines().all(|l| l.contains(" service ")), "{out}");
    let out = rs_for(
        h1,
        &[
            "events",
            "--since",
            "5m",
            "--until",
            "0s",
            "--format",
            "json",
            "-f",
            "type=node",
        ],
        Duration::from_secs(20),
    );
    out.assert_success("events --format json");
    assert!(out.stdout.contains("\"Type\":\"node\""), "{out}");

    // Kill h3's agent: logs still come from h1 and h2, h3 is reported, and the command ends.
    c.daemons[2].kill9();
    lab.wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || h1.node_status("h3").as_deref() == Some("down"),
        "h3 down",
    );
    let started = Instant::now();
    let out = rs_for(h1, &["service", "logs", "talk"], Duration::from_secs(30));
    let took = started.elapsed();
    out.assert_success("service logs with h3 down");
    eprintln!(
        "service logs with h3 down took {took:?}:\n{}\n{}",
        common::tail(&out.stdout, 4),
        out.stderr.lines().take(4).collect::<Vec<_>>().join("\n")
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a node down\n{out}"
    );
    assert!(
        out.stderr.contains("error from node h3: node is down"),
        "the down node is reported\n{out}"
    );
    for n in ["h1", "h2"] {
        assert!(
            lines_from(&out.stdout, "talk", n)
                .iter()
                .any(|l| l.contains("hello from")),
            "lines from {n}\n{out}"
        );
    }
    // A follower with h3 down still follows the others.
    let f = h1.spawn_bin("logs-follow-down", Bin::Rswarm, &follow);
    f.wait_for_stdout(Duration::from_secs(20), "ticks from h1 and h2", |s| {
        ["h1", "h2"]
            .iter()
            .all(|n| lines_from(s, "talk", n).iter().any(|l| l.contains("tick")))
    });
    assert!(f.stderr().contains("error from node h3"), "{}", f.stderr());
    f.kill9();

    // The node-down event was recorded.
    let out = rs_for(
        h1,
        &[
            "events",
            "--since",
            "5m",
            "--until",
            "0s",
            "--filter",
            "type=node",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(" node update ") && l.contains("state.new=down")),
        "{out}"
    );
    let _ = h3;
}
