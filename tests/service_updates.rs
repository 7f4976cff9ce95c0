//! End-to-end tests of rolling updates, rollbacks, health checks and restart policies: test hosts
//! (network namespaces) running real daemons, runc and a real registry; the `rswarm service …` CLI
//! driven as a user would, and what runs checked on each host with `rswarm container ls`. Need
//! root, runc, tini, docker-registry, skopeo and busybox-static (CI installs them); skip with a
//! message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::cli::{lab, ok, rs, TestCluster};
use common::{Host, Lab};
use rswarm_image::testutil::ImageSpec;
use serde_json::Value;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The test images, all in the lab's registry.
struct Images {
    /// A long-running process that exits 0 at SIGTERM (so stopping a task is quick).
    v1: String,
    /// Same as v1 with another `VERSION` in its environment.
    v2: String,
    /// CMD exits 1 at once.
    crash: String,
    /// CMD names a program the image does not have.
    nocmd: String,
}

/// A cluster: `h1` manager (also runs tasks, as in Swarm), the other hosts workers; a registry on
/// `h1` holding the test images.
struct Cluster {
    img: Images,
    _c: TestCluster,
}

fn cluster(lab: &Lab) -> Cluster {
    let serve = || {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            "trap 'exit 0' TERM; sleep 1000 & wait".to_string(),
        ]
    };
    let image = |cmd: Vec<String>, version: &str| ImageSpec {
        cmd,
        env: vec![PATH_ENV.into(), version.into()],
        ..ImageSpec::default()
    };
    let c = TestCluster::start(
        lab,
        lab.hosts().len(),
        &[
            ("test/app:v1", image(serve(), "VERSION=1")),
            ("test/app:v2", image(serve(), "VERSION=2")),
            (
                "test/app:crash",
                image(
                    vec!["sh".into(), "-c".into(), "exit 1".into()],
                    "VERSION=crash",
                ),
            ),
            (
                "test/app:nocmd",
                image(vec!["/no/such/program".into()], "VERSION=nocmd"),
            ),
        ],
    );
    Cluster {
        img: Images {
            v1: c.image("test/app:v1"),
            v2: c.image("test/app:v2"),
            crash: c.image("test/app:crash"),
            nocmd: c.image("test/app:nocmd"),
        },
        _c: c,
    }
}

/// A container on some host.
#[derive(Clone, Debug)]
struct Ctr {
    image: String,
    state: String,
}

/// Containers of service `service` on `host`.
fn containers(host: &Host, service: &str) -> Vec<Ctr> {
    let out = rs(host, &["container", "ls", "-a", "--format", "json"]);
    if !out.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    let name = c["Names"].as_str()?;
                    name.starts_with(&format!("{service}.")).then(|| Ctr {
                        image: c["Image"].as_str().unwrap_or("").to_string(),
                        state: c["State"].as_str().unwrap_or("").to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Containers of `service` on every host of the lab.
fn all_containers(lab: &Lab, service: &str) -> Vec<Ctr> {
    lab.hosts()
        .iter()
        .flat_map(|h| containers(h, service))
        .collect()
}

/// Images of the running containers of `service` in the lab, sorted.
fn running_images(lab: &Lab, service: &str) -> Vec<String> {
    let mut v: Vec<String> = all_containers(lab, service)
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| c.image)
        .collect();
    v.sort();
    v
}

/// `service inspect`'s `UpdateStatus` (`Null` when there is none).
fn update_status(host: &Host, service: &str) -> Value {
    let out = rs(host, &["service", "inspect", service]);
    out.assert_success("service inspect");
    out.json()[0]["UpdateStatus"].clone()
}

fn update_state(host: &Host, service: &str) -> String {
    update_status(host, service)["State"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// One `service ps --no-trunc --format json` row.
#[derive(Clone, Debug)]
struct PsRow {
    /// `svc.SLOT` (the task name without its id).
    slot_name: String,
    desired: String,
    current: String,
    error: String,
}

fn ps(host: &Host, service: &str) -> Vec<PsRow> {
    let out = ok(
        host,
        &["service", "ps", "--no-trunc", "--format", "json", service],
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let name = v["Name"].as_str().unwrap_or("");
            let name = name.trim_start_matches(" \\_ ");
            // NAME.SLOT.TASKID
            let slot_name = name.rsplit_once('.').map_or(name, |(a, _)| a).to_string();
            PsRow {
                slot_name,
                desired: v["DesiredState"].as_str().unwrap_or("").to_string(),
                current: v["CurrentState"].as_str().unwrap_or("").to_string(),
                error: v["Error"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// The error column of `service ps` must read as docker's: quoted text, no debug formatting.
#[track_caller]
fn assert_readable_errors(table: &str) {
    for bad in ["Some(", "\\\"", "\\n", "Status {", "code:", "{ "] {
        assert!(
            !table.contains(bad),
            "service ps shows debug formatting ({bad:?}):\n{table}"
        );
    }
}

#[test]
fn updates_pause_or_roll_back_on_failure() {
    let Some(lab) = lab("svcupd_fail", 2) else {
        return;
    };
    let c = cluster(&lab);
    let h1 = lab.host(1);

    // --- pause: the failed slot does not spread, the others keep the old image. ---
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "pz",
            "--replicas",
            "3",
            "--update-failure-action",
            "pause",
            "--update-monitor",
            "500ms",
            "--rollback-monitor",
            "500ms",
            "--restart-delay",
            "200ms",
            &c.img.v1,
        ],
    );
    assert_eq!(running_images(&lab, "pz"), vec![c.img.v1.clone(); 3]);
    let out = rs(h1, &["service", "update", "--image", &c.img.crash, "pz"]);
    eprintln!("{out}");
    out.assert_failure("an update to a crashing image");
    assert!(
        out.stderr.contains("paused"),
        "the CLI says the update paused: {out}"
    );
    let st = update_status(h1, "pz");
    assert_eq!(st["State"], "paused", "{st}");
    let msg = st["Message"].as_str().unwrap_or("");
    assert!(
        msg.contains("update paused") && msg.contains("failure"),
        "a message says why: {st}"
    );
    // Slots 2 and 3 never saw the new image and keep running the old one.
    lab.hold_for(
        Duration::from_secs(3),
        Duration::from_millis(300),
        || {
            all_containers(&lab, "pz")
                .iter()
                .filter(|c2| c2.state == "running" && c2.image == c.img.v1)
                .count()
                == 2
        },
        "two tasks keep running the old image while the update is paused",
    );
    assert_eq!(update_state(h1, "pz"), "paused");
    let table = ok(h1, &["service", "ps", "--no-trunc", "pz"]);
    assert!(
        table.contains("\"task: non-zero exit (1)\""),
        "the exit is shown quoted, as docker does:\n{table}"
    );
    assert_readable_errors(&table);

    // `service rollback` returns to the previous image.
    let out = rs(h1, &["service", "rollback", "pz"]);
    out.assert_success("service rollback after a paused update");
    let spec_image = rs(h1, &["service", "inspect", "pz"]).json()[0]["Spec"]["TaskTemplate"]
        ["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(spec_image, c.img.v1);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_images(&lab, "pz") == vec![c.img.v1.clone(); 3],
        "all tasks of pz run the old image after `service rollback`",
    );
    assert_eq!(update_state(h1, "pz"), "rollback_completed");

    // --- rollback: an image whose command does not exist; the service returns to v1 alone. ---
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "rb",
            "--replicas",
            "3",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "500ms",
            "--rollback-monitor",
            "500ms",
            "--restart-delay",
            "200ms",
            &c.img.v1,
        ],
    );
    let out = rs(h1, &["service", "update", "--image", &c.img.nocmd, "rb"]);
    out.assert_failure("an update to an image whose command does not exist");
    assert!(
        out.stderr.contains("rolled back") && out.stderr.contains("due to failure"),
        "the CLI says the update was rolled back, and why: {out}"
    );
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || update_state(h1, "rb") == "rollback_completed",
        "rb's rollback completes",
    );
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_images(&lab, "rb") == vec![c.img.v1.clone(); 3],
        "all tasks of rb run the old image again",
    );
    // The rollback is the end of it: no second, unasked-for update of the rolled-back service.
    lab.hold_for(
        Duration::from_secs(2),
        Duration::from_millis(100),
        || update_state(h1, "rb") == "rollback_completed",
        "rb stays rolled back",
    );
    let insp = rs(h1, &["service", "inspect", "rb"]).json();
    assert_eq!(
        insp[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        c.img.v1.as_str()
    );
    let table = ok(h1, &["service", "ps", "--no-trunc", "rb"]);
    assert!(table.contains(&c.img.nocmd), "{table}");
    assert_readable_errors(&table);
}

/// Polls the running containers of `service` until `done` holds; returns the fewest seen.
fn min_running_until(lab: &Lab, service: &str, done: impl Fn(&[Ctr]) -> bool) -> usize {
    let start = Instant::now();
    let mut min = usize::MAX;
    loop {
        let all = all_containers(lab, service);
        let running = all.iter().filter(|c| c.state == "running").count();
        min = min.min(running);
        if done(&all) {
            return min;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the update of {service} did not finish: {all:?}\n{}",
            lab.context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn updates_start_first_keeps_capacity_and_rollback_restores() {
    let Some(lab) = lab("svcupd_order", 3) else {
        return;
    };
    let c = cluster(&lab);
    let h1 = lab.host(1);
    let all_on = |image: &str| {
        let image = image.to_string();
        move |all: &[Ctr]| {
            let running: Vec<&Ctr> = all.iter().filter(|c| c.state == "running").collect();
            running.len() == 3 && running.iter().all(|c| c.image == image)
        }
    };

    for (name, order) in [("sf", "start-first"), ("so", "stop-first")] {
        ok(
            h1,
            &[
                "service",
                "create",
                "--name",
                name,
                "--replicas",
                "3",
                "--update-order",
                order,
                "--update-delay",
                "1s",
                "--update-monitor",
                "500ms",
                "--rollback-monitor",
                "500ms",
                &c.img.v1,
            ],
        );
        // Pull v2 everywhere first, so that the gap stop-first leaves is short: what is
        // measured is the order, not the pull.
        for h in lab.hosts() {
            ok(h, &["image", "pull", &c.img.v2]);
        }
        ok(h1, &["service", "update", "-d", "--image", &c.img.v2, name]);
        let min = min_running_until(&lab, name, all_on(&c.img.v2));
        eprintln!("{order}: at least {min} of 3 tasks ran throughout the update");
        if order == "start-first" {
            assert!(
                min >= 3,
                "start-first: never fewer than 3 running tasks, saw {min}"
            );
        }
        lab.wait_until(
            Duration::from_secs(20),
            Duration::from_millis(200),
            || update_state(h1, name) == "completed",
            "the update completes",
        );
        // The old tasks are stopped, not left running beside the new ones.
        let ps_rows = ps(h1, name);
        assert_eq!(
            ps_rows.iter().filter(|r| r.desired == "Running").count(),
            3,
            "{ps_rows:?}"
        );
    }

    // `service rollback` returns to the previous image (start-first again: no gap either).
    let out = rs(h1, &["service", "rollback", "sf"]);
    out.assert_success("service rollback");
    assert!(out.stdout.contains("sf"), "{out}");
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_images(&lab, "sf") == vec![c.img.v1.clone(); 3],
        "sf runs v1 again",
    );
    assert_eq!(update_state(h1, "sf"), "rollback_completed");
    // A second rollback goes forward again (the rolled-back spec became the previous one).
    ok(h1, &["service", "update", "--rollback", "so"]);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || running_images(&lab, "so") == vec![c.img.v1.clone(); 3],
        "so runs v1 again",
    );
}

#[test]
fn health_checks_and_restart_policies() {
    let Some(lab) = lab("svcupd_health", 2) else {
        return;
    };
    let c = cluster(&lab);
    let h1 = lab.host(1);

    // A failing health check: the task fails as unhealthy and is replaced in its slot.
    ok(
        h1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "sick",
            "--health-cmd",
            "test -f /tmp/healthy",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--restart-delay",
            "200ms",
            &c.img.v1,
        ],
    );
    // A passing one: the task gets to Running (the CLI waits for it).
    ok(
        h1,
        &[
            "service",
            "create",
            "--name",
            "fine",
            "--health-cmd",
            "true",
            "--health-interval",
            "500ms",
            "--update-monitor",
            "500ms",
            &c.img.v1,
        ],
    );
    let rows = ps(h1, "fine");
    assert!(
        rows.len() == 1 && rows[0].current.starts_with("Running") && rows[0].error.is_empty(),
        "{rows:?}"
    );
    lab.hold_for(
        Duration::from_secs(2),
        Duration::from_millis(250),
        || {
            let rows = ps(h1, "fine");
            rows.len() == 1 && rows[0].current.starts_with("Running")
        },
        "a healthy task stays running",
    );
    let mut table = String::new();
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let rows = ps(h1, "sick");
            table = ok(h1, &["service", "ps", "--no-trunc", "sick"]);
            rows.iter()
                .any(|r| r.current.starts_with("Failed") && r.error.contains("unhealthy"))
                && rows.iter().filter(|r| r.slot_name == "sick.1").count() >= 2
        },
        "the unhealthy task fails and a replacement appears in slot 1",
    );
    assert!(
        table.contains("\"task: container unhealthy\""),
        "unhealthy shown quoted:\n{table}"
    );
    assert_readable_errors(&table);
    // The unhealthy task never counted as running.
    let ls = ok(h1, &["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.contains(" sick ") && l.contains(" 0/1 ")),
        "an unhealthy task does not count as running:\n{ls}"
    );

    // on-failure with 2 attempts: 1 + 2 restarts, then the slot stays empty.
    let exit1 = ["sh", "-c", "exit 1"];
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        "onf",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "2",
        "--restart-delay",
        "200ms",
        &c.img.v1,
    ];
    args.extend(exit1);
    ok(h1, &args);
    let failed = |rows: &[PsRow]| {
        rows.iter()
            .filter(|r| r.current.starts_with("Failed"))
            .count()
    };
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || failed(&ps(h1, "onf")) == 3,
        "three failed tasks in onf's slot",
    );
    lab.hold_for(
        Duration::from_secs(3),
        Duration::from_millis(300),
        || {
            let rows = ps(h1, "onf");
            rows.len() == 3 && rows.iter().all(|r| r.slot_name == "onf.1")
        },
        "no fourth task after the restart attempts ran out",
    );
    let table = ok(h1, &["service", "ps", "--no-trunc", "onf"]);
    assert_eq!(
        table.matches("\"task: non-zero exit (1)\"").count(),
        3,
        "every task shows its exit:\n{table}"
    );
    assert_readable_errors(&table);
    // Without --no-trunc too.
    let short = ok(h1, &["service", "ps", "onf"]);
    assert!(short.contains("\"task: non-zero exit (1)\""), "{short}");
    assert_readable_errors(&short);

    // none: one task, never restarted.
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--name",
        "nor",
        "--restart-condition",
        "none",
        "--restart-delay",
        "200ms",
        &c.img.v1,
    ];
    args.extend(exit1);
    ok(h1, &args);
    lab.wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || failed(&ps(h1, "nor")) == 1,
        "nor's task failed",
    );
    lab.hold_for(
        Duration::from_secs(2),
        Duration::from_millis(300),
        || ps(h1, "nor").len() == 1,
        "restart condition none: no replacement",
    );
    // A failed create with a crashing command is a readable error too (the CLI gives up).
    let out = rs(
        h1,
        &[
            "service",
            "create",
            "--name",
            "crashy",
            "--restart-condition",
            "none",
            &c.img.crash,
        ],
    );
    out.assert_failure("creating a service whose task exits 1 with no restarts");
    assert!(
        out.stderr.contains("non-zero exit (1)") && !out.stderr.contains("Some("),
        "{out}"
    );
}
