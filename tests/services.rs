//! End-to-end tests of services: three test hosts (network namespaces) running real daemons, runc
//! and a real registry; the `rswarm service …` CLI driven as a user would, and what runs checked on
//! each host with `rswarm container ls`. Need root, runc, tini, docker-registry, skopeo and
//! busybox-static (CI installs them); skip with a message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::cli::{containers, lab, ok, rs, running, sleeper, TestCluster};
use common::registry::Registry;
use common::{Host, Lab};

/// The lab's cluster with `test/bb` (busybox, CMD `sleep 1000`), and that image's reference.
fn cluster(lab: &Lab, joined: usize) -> (TestCluster, String) {
    let c = TestCluster::start(lab, joined, &[("test/bb:latest", sleeper())]);
    let image = c.image("test/bb:latest");
    (c, image)
}

fn running_per_host(lab: &Lab, prefix: &str) -> Vec<usize> {
    lab.hosts().iter().map(|h| running(h, prefix)).collect()
}

/// `service ls` as (name → replicas column).
fn replicas(host: &Host, name: &str) -> String {
    let out = ok(host, &["service", "ls"]);
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&name))
        .and_then(|cols| cols.get(3).map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn services_spread_pin_replace_and_drain() {
    let Some(lab) = lab("svc_spread", 3) else {
        return;
    };
    let (c, image) = cluster(&lab, 3);
    let (h1, h2, h3) = (lab.host(1), lab.host(2), lab.host(3));

    // 6 replicas land 2/2/2; the CLI waits for convergence and says so.
    let out = rs(
        h1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--update-monitor",
            "500ms",
            &image,
        ],
    );
    out.assert_success("service create web");
    assert!(out.stdout.contains("verify: Service converged"), "{out}");
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_per_host(&lab, "web") == vec![2, 2, 2],
        "6 replicas running 2/2/2",
    );
    assert_eq!(replicas(h1, "web"), "6/6");
    let ps = ok(h1, &["service", "ps", "web"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running")).count(),
        6,
        "{ps}"
    );

    // A constraint pins tasks to the labelled node.
    ok(h1, &["node", "update", "--label-add", "zone=a", "h2"]);
    ok(
        h1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "pinned",
            "--replicas",
            "3",
            "--constraint",
            "node.labels.zone==a",
            &image,
        ],
    );
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_per_host(&lab, "pinned") == vec![0, 3, 0],
        "3 pinned tasks on h2",
    );
    // A constraint no node satisfies: the CLI gives up saying why.
    let out = rs(
        h1,
        &[
            "service",
            "create",
            "--name",
            "nowhere",
            "--constraint",
            "node.labels.zone==b",
            &image,
        ],
    );
    assert!(!out.success(), "cannot converge: {out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("no suitable node") && text.contains("node.labels.zone==b"),
        "{out}"
    );
    ok(h1, &["service", "rm", "nowhere"]);

    // Kill h3's agent: its tasks are replaced on h1/h2 at once.
    let killed = Instant::now();
    c.daemons[2].kill9();
    lab.wait_until(
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let n = running_per_host(&lab, "web");
            n[0] + n[1] == 6
        },
        "web replaced on h1 and h2 after h3's agent died",
    );
    eprintln!(
        "replacements running {:?} after the agent was killed",
        killed.elapsed()
    );
    assert_eq!(h1.node_status("h3").as_deref(), Some("down"));
    // h3 comes back: its stale tasks are shut down, nothing new is started there.
    let _h3 = h3.start_agent();
    lab.wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || running(h3, "web") == 0 && h1.node_status("h3").as_deref() == Some("ready"),
        "h3's stale web tasks shut down",
    );
    assert_eq!(running_per_host(&lab, "web").iter().sum::<usize>(), 6);

    // Drain moves tasks away; the pinned ones have nowhere to go.
    ok(h1, &["node", "update", "--availability", "drain", "h2"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let n = running_per_host(&lab, "web");
            n[1] == 0 && n.iter().sum::<usize>() == 6 && running(h2, "pinned") == 0
        },
        "drained h2",
    );
    assert_eq!(replicas(h1, "pinned"), "0/3");
    let ps = ok(h1, &["service", "ps", "pinned"]);
    assert!(ps.contains("no suitable node"), "{ps}");
    // A node gains the label: the waiting tasks land there. It loses it: they are shut down.
    ok(h1, &["node", "update", "--label-add", "zone=a", "h3"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running(h3, "pinned") == 3,
        "pinned tasks placed on h3 once it has the label",
    );
    ok(h1, &["node", "update", "--label-rm", "zone", "h3"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running(h3, "pinned") == 0,
        "pinned tasks shut down when h3 loses the label",
    );
    assert_eq!(replicas(h1, "pinned"), "0/3");

    // Removing the services removes their containers everywhere.
    ok(h1, &["service", "rm", "web", "pinned"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            lab.hosts()
                .iter()
                .all(|h| containers(h, "web").is_empty() && containers(h, "pinned").is_empty())
        },
        "service containers removed",
    );
    assert!(!ok(h1, &["service", "ls"]).contains("web"));
}

#[test]
fn services_global_follows_nodes() {
    let Some(lab) = lab("svc_global", 3) else {
        return;
    };
    let (c, image) = cluster(&lab, 2);
    let h1 = lab.host(1);
    ok(
        h1,
        &[
            "service", "create", "-d", "--name", "mon", "--mode", "global", &image,
        ],
    );
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_per_host(&lab, "mon") == vec![1, 1, 0],
        "one task per node",
    );
    // A joining node gets its task.
    let _h3 = lab.host(3).join_with(
        &c.token,
        &c.manager_addr,
        &["--insecure-registry", &c.reg_addr],
    );
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_per_host(&lab, "mon") == vec![1, 1, 1],
        "the joined node runs the global task",
    );
    assert_eq!(replicas(h1, "mon"), "3/3");
    // A drained node's task stops and is not replaced elsewhere.
    ok(h1, &["node", "update", "--availability", "drain", "h2"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_per_host(&lab, "mon") == vec![1, 0, 1],
        "drained node's global task stopped",
    );
    // Scaling a global service is refused.
    let out = rs(h1, &["service", "scale", "mon=3"]);
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("replicated"), "{out}");
}

#[test]
fn services_refuse_bad_input_and_use_registry_auth() {
    let Some(lab) = lab("svc_bad", 2) else {
        return;
    };
    let (c, image) = cluster(&lab, 2);
    let (h1, h2) = (lab.host(1), lab.host(2));
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "service",
                "create",
                "--name",
                "a",
                "--replicas",
                "-1",
                "busybox",
            ],
            "replicas",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "a",
                "--constraint",
                "node.labels.zone=a",
                "busybox",
            ],
            "constraint",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "a",
                "--mount",
                "type=nfs,target=/x",
                "busybox",
            ],
            "nfs",
        ),
        (
            &[
                "service",
                "create",
                "--name",
                "a",
                "--mode",
                "global",
                "--replicas",
                "2",
                "busybox",
            ],
            "replicas",
        ),
        (
            &["service", "update", "--image", "busybox", "nosuch"],
            "nosuch",
        ),
        (&["service", "scale", "nosuch=2"], "nosuch"),
    ];
    for (args, needle) in cases {
        let out = rs(h1, args);
        assert!(out.failed_cleanly(), "{args:?}: {out}");
        assert!(
            out.stderr.contains(needle),
            "{args:?} must name {needle}: {out}"
        );
    }
    assert!(
        !ok(h1, &["service", "ls"])
            .lines()
            .skip(1)
            .any(|l| !l.trim().is_empty()),
        "nothing stored"
    );
    // A duplicate name.
    ok(h1, &["service", "create", "-d", "--name", "dup", &image]);
    let out = rs(h1, &["service", "create", "-d", "--name", "dup", &image]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(
        out.stderr.contains("dup") && out.stderr.contains("already"),
        "{out}"
    );
    // An unknown image: the task is rejected with the pull error, visible in `service ps`.
    let missing = format!("{}/test/missing:latest", c.reg_addr);
    ok(
        h1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "ghost",
            "--restart-condition",
            "none",
            &missing,
        ],
    );
    let mut ps = String::new();
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            ps = ok(h1, &["service", "ps", "--no-trunc", "ghost"]);
            ps.contains("Rejected")
        },
        "the task of an unknown image is rejected",
    );
    assert!(
        ps.contains("test/missing"),
        "the error names the image: {ps}"
    );

    // A private registry: without --with-registry-auth the nodes cannot pull; with it, the CLI's
    // `docker login` credentials travel with the service to every node.
    let private = Registry::start(
        h1,
        "private",
        &format!("{}:5001", h1.ip),
        Some("alice:s3cret"),
    );
    private.push(h1, &c.layouts[0], "team/app:1");
    let app = format!("{}/team/app:1", private.addr);
    let docker_config = h1.dir.join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    // "YWxpY2U6czNjcmV0" is base64 of "alice:s3cret", as `docker login` stores it.
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            private.addr
        ),
    )
    .unwrap();
    let config_env = docker_config.display().to_string();
    let with_config = |args: &[&str]| {
        let mut full: Vec<String> = vec!["--host".into(), h1.socket_url()];
        full.extend(args.iter().map(|s| s.to_string()));
        h1.rswarm_raw_env(
            &full,
            &[("DOCKER_CONFIG", &config_env)],
            Duration::from_secs(90),
        )
    };
    with_config(&[
        "service",
        "create",
        "-d",
        "--name",
        "noauth",
        "--restart-condition",
        "none",
        &app,
    ])
    .assert_success("create without registry auth");
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || ok(h1, &["service", "ps", "--no-trunc", "noauth"]).contains("Rejected"),
        "the task without credentials is rejected",
    );
    with_config(&[
        "service",
        "create",
        "-d",
        "--name",
        "authed",
        "--replicas",
        "2",
        "--with-registry-auth",
        &app,
    ])
    .assert_success("create with registry auth");
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running(h1, "authed") + running(h2, "authed") == 2,
        "both replicas pulled with the forwarded credentials",
    );
}
