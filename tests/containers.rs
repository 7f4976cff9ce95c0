//! End-to-end tests of the container engine: real registries (Debian's `docker-registry`), images
//! built by the tests and pushed with skopeo, real runc containers, test hosts in network
//! namespaces. Need root, runc, tini, iptables, docker-registry, skopeo and busybox-static (CI
//! installs them); skip with a message otherwise.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::cli::{lab, ok, rs};
use common::registry::{busybox_image, Registry};
use common::Host;
use rswarm_image::testutil::{busybox_layer, tar_dir, write_oci_layout, Entry, ImageSpec};
use serde_json::Value;

fn spec(cmd: &[&str], entrypoint: &[&str]) -> ImageSpec {
    ImageSpec {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "FROM_IMAGE=1".into(),
            "OVERRIDE=image".into(),
        ],
        working_dir: Some("/tmp".into()),
        ..ImageSpec::default()
    }
}

/// Builds the test images and pushes them as `test/bb` (CMD) and `test/ep` (ENTRYPOINT + CMD).
fn push_images(host: &Host, reg: &Registry) {
    let bb = host.dir.join("layout-bb");
    busybox_image(&bb, &spec(&["sh", "-c", "echo image-cmd"], &[]));
    reg.push(host, &bb, "test/bb:latest");
    let ep = host.dir.join("layout-ep");
    busybox_image(&ep, &spec(&["default-arg"], &["echo", "ep"]));
    reg.push(host, &ep, "test/ep:latest");
}

#[track_caller]
fn inspect(host: &Host, id: &str) -> Value {
    let v: Value = serde_json::from_str(&ok(host, &["container", "inspect", id])).unwrap();
    v[0].clone()
}

fn containers_dir_entries(host: &Host) -> Vec<String> {
    fs::read_dir(host.state_dir().join("containers"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The seals of the in-memory copy of runc that daemon `pid` holds (a memfd named after it).
fn runtime_copy_seals(pid: u32) -> Option<nix::fcntl::SealFlag> {
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy().starts_with("/memfd:runc") {
            let f = fs::File::open(fd.path()).ok()?;
            let bits = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GET_SEALS).ok()?;
            return Some(nix::fcntl::SealFlag::from_bits_retain(bits));
        }
    }
    None
}

/// Container cgroups left under the node's cgroup parent.
fn leftover_cgroups(host: &Host) -> Vec<String> {
    let mut left = Vec::new();
    for base in common::cgroup_parent_dirs(&host.state_dir()) {
        if let Ok(entries) = fs::read_dir(&base) {
            left.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path().display().to_string()),
            );
        }
    }
    left
}

/// Mount points below the host's state dir (overlay roots left behind would show here).
fn mounts_under(dir: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Pull, the ENTRYPOINT/CMD matrix, env, user, workdir, whiteouts, init, logs, exec, stop, rm, image
/// rm/prune: a Docker user's first hour, on one manager node pulling from a loopback registry
/// (insecure by default, as in Docker).
#[test]
fn engine_runs_containers_from_a_registry() {
    let Some(lab) = lab("engine_run", 1) else {
        return;
    };
    let h = lab.host(1);
    let reg = Registry::start(h, "plain", "127.0.0.1:5000", None);
    push_images(h, &reg);
    let (d, _) = h.init(&[]);

    let bb = "127.0.0.1:5000/test/bb:latest";
    let ep = "127.0.0.1:5000/test/ep";
    let out = rs(h, &["image", "pull", bb]);
    out.assert_success("pull");
    assert!(
        out.stderr.contains("Pull complete") || out.stderr.contains("Download complete"),
        "{out}"
    );
    let ls = ok(h, &["image", "ls"]);
    assert!(
        ls.contains("127.0.0.1:5000/test/bb") && ls.contains("latest"),
        "{ls}"
    );

    // ENTRYPOINT / CMD as Docker combines them (the ep image is pulled by `run` itself).
    let cases: &[(&[&str], &str)] = &[
        (&[bb], "image-cmd"),
        (&[bb, "echo", "hi"], "hi"),
        (&[ep], "ep default-arg"),
        (&[ep, "x", "y"], "ep x y"),
        (&["--entrypoint", "echo", ep, "z"], "z"),
        (
            &["--entrypoint", "", ep, "sh", "-c", "echo cleared"],
            "cleared",
        ),
        (
            &[
                "-e",
                "OVERRIDE=spec",
                "-e",
                "NEW=2",
                bb,
                "sh",
                "-c",
                "echo $FROM_IMAGE $OVERRIDE $NEW",
            ],
            "1 spec 2",
        ),
        (&[bb, "pwd"], "/tmp"),
        (&["-w", "/etc", bb, "pwd"], "/etc"),
        (
            &["-u", "app", bb, "sh", "-c", "id -u; id -g; id -G"],
            "1000\n1000\n1000 2000",
        ),
        (
            &["-u", "1234:5678", bb, "sh", "-c", "id -u; id -g"],
            "1234\n5678",
        ),
        (&["--hostname", "web1", bb, "hostname"], "web1"),
        (&[bb, "sh", "-c", "cat /seed/file"], "from-the-image"),
        // The shim's blocked signals do not leak into the container.
        (
            &[bb, "sh", "-c", "grep SigBlk /proc/$$/status"],
            "SigBlk:\t0000000000000000",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["container", "run", "--rm"];
        full.extend_from_slice(args);
        let out = rs(h, &full);
        out.assert_success(&full.join(" "));
        assert_eq!(out.stdout.trim(), *want, "{out}");
    }
    // Exit codes come back as the CLI's own; the whiteout in layer 2 hides /bin/vi.
    let out = rs(h, &["container", "run", "--rm", bb, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out}");
    let out = rs(h, &["container", "run", "--rm", bb, "ls", "/bin/vi"]);
    assert!(out.failed_cleanly(), "{out}");
    // PID 1 is the init, and it reaps orphans: no zombies after they exit.
    let out = ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            bb,
            "sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '",
        ],
    );
    assert!(out.contains("rswarm-init"), "{out}");
    let out = ok(
        h,
        &["container", "run", "--rm", bb, "sh", "-c",
          "(sleep 0.1 &); (sleep 0.1 &); sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l"],
    );
    assert_eq!(out.trim(), "0", "zombies left: {out}");
    // A read-only root filesystem.
    let out = rs(
        h,
        &["container", "run", "--rm", "--read-only", bb, "touch", "/x"],
    );
    assert!(out.failed_cleanly(), "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");

    // A detached container: ls, inspect, logs (both streams), exec, stop.
    let id = ok(
        h,
        &["container", "run", "-d", "--name", "logger", bb, "sh", "-c",
          "echo out-line; echo err-line >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"],
    );
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = ok(h, &["container", "ls"]);
    assert!(ps.contains("logger") && ps.contains("Up"), "{ps}");
    let info = inspect(h, "logger");
    assert_eq!(info["State"]["Running"], true, "{info}");
    assert_eq!(info["Id"], id.as_str());
    lab.wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            rs(h, &["container", "logs", "logger"])
                .stdout
                .contains("tick 2")
        },
        "two ticks logged",
    );
    let logs = rs(h, &["container", "logs", "logger"]);
    assert!(logs.stdout.starts_with("out-line\n"), "{logs}");
    assert!(logs.stderr.contains("err-line"), "{logs}");
    assert!(!logs.stdout.contains("err-line"), "{logs}");
    let tail = ok(h, &["container", "logs", "--tail", "1", "logger"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let out = ok(
        h,
        &[
            "container",
            "exec",
            "logger",
            "sh",
            "-c",
            "echo $HOSTNAME; echo $OVERRIDE",
        ],
    );
    assert_eq!(out.lines().nth(1), Some("image"), "{out}");
    assert_eq!(out.lines().next(), Some(&id[..12]), "{out}");
    let out = rs(h, &["container", "exec", "logger", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out}");
    // runc (for run and exec alike) runs from a sealed in-memory copy the daemon holds, sealed
    // exactly as runc's own CVE-2019-5736 check wants (so it does not clone itself per start).
    use nix::fcntl::SealFlag;
    assert_eq!(
        runtime_copy_seals(d.pid()),
        Some(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
        ),
        "the daemon holds no sealed copy of runc"
    );
    // It runs through `<state>/bin/runc`, so runc's processes are named `runc` in ps.
    let link =
        fs::read_link(h.state_dir().join("bin/runc")).expect("no runc link in the state dir");
    assert!(
        link.starts_with(format!("/proc/{}/fd/", d.pid())),
        "{link:?}"
    );
    let out = ok(
        h,
        &[
            "container",
            "exec",
            "-u",
            "app",
            "-w",
            "/home/app",
            "logger",
            "sh",
            "-c",
            "id -u; pwd",
        ],
    );
    assert_eq!(out, "1000\n/home/app\n");
    // exec -it under a real terminal (script(1) gives the CLI a pty): the process gets a tty of
    // the terminal's size, and stdin reaches it.
    let cli = format!(
        "printf 'echo typed-$((6*7))\\nexit 4\\n' | {} --host {} container exec -i logger sh; echo rc=$?; \
         stty cols 91 rows 33; {} --host {} container exec -it logger sh -c 'tty; stty size'",
        common::Bin::Rswarm.path().display(),
        h.socket_url(),
        common::Bin::Rswarm.path().display(),
        h.socket_url()
    );
    let out = h.run(
        "script",
        &["-qec", &cli, "/dev/null"],
        Duration::from_secs(30),
    );
    assert!(out.stdout.contains("typed-42"), "{out}");
    assert!(out.stdout.contains("rc=4"), "{out}");
    assert!(out.stdout.contains("/dev/pts/"), "{out}");
    assert!(out.stdout.contains("33 91"), "{out}");

    // `logs -f` follows until the container stops.
    let follower = h.spawn(
        "logs-f",
        &common::Bin::Rswarm.path(),
        &[
            "--host".into(),
            h.socket_url(),
            "container".into(),
            "logs".into(),
            "-f".into(),
            "logger".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    ok(h, &["container", "stop", "-t", "5", "logger"]);
    assert!(
        follower.wait_exit(Duration::from_secs(10)).is_some(),
        "logs -f did not end when the container stopped"
    );
    assert!(follower.stdout().contains("tick"), "{}", follower.stdout());
    let info = inspect(h, "logger");
    assert_eq!(info["State"]["Status"], "exited", "{info}");
    assert_eq!(info["State"]["ExitCode"], 143, "SIGTERM → 128+15: {info}");
    let ps = ok(h, &["container", "ls", "-a"]);
    assert!(ps.contains("Exited (143)"), "{ps}");
    // A stopped container starts again.
    ok(h, &["container", "start", "logger"]);
    assert_eq!(inspect(h, "logger")["State"]["Running"], true);

    // Images in use are not removed; after the container goes, they are.
    let out = rs(h, &["image", "rm", bb]);
    assert!(out.failed_cleanly(), "{out}");
    ok(h, &["container", "rm", "-f", "logger"]);
    assert!(rs(h, &["container", "inspect", "logger"]).failed_cleanly());
    let out = ok(h, &["image", "rm", bb]);
    assert!(out.contains("Untagged") || out.contains("Deleted"), "{out}");
    // `image prune` asks first, as Docker does; no answer is a no.
    let out = ok(h, &["image", "prune", "-a"]);
    assert!(
        out.contains("WARNING! This will remove all images without at least one container"),
        "{out}"
    );
    assert!(!out.contains("Total reclaimed space"), "{out}");
    assert!(
        !ok(h, &["image", "ls", "-q"]).trim().is_empty(),
        "nothing pruned without a yes"
    );
    let out = ok(h, &["image", "prune", "-a", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert_eq!(
        ok(h, &["image", "ls", "-q"]).trim(),
        "",
        "every image pruned"
    );
    assert!(
        containers_dir_entries(h).is_empty(),
        "{:?}",
        containers_dir_entries(h)
    );
    assert!(
        mounts_under(&h.state_dir()).is_empty(),
        "{:?}",
        mounts_under(&h.state_dir())
    );
    assert!(leftover_cgroups(h).is_empty(), "{:?}", leftover_cgroups(h));
}

/// The address in the CGI's `client=…` answer (busybox httpd listens on IPv6: `[::ffff:a.b.c.d]`).
fn client_of(body: &str) -> String {
    let v = body.trim().trim_start_matches("client=");
    v.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("::ffff:")
        .to_string()
}

/// Published ports reached from another host with the client's own address, bridge neighbours,
/// `none`, `host` and `container:` modes, on a worker that pulls from an insecure registry on
/// another host (`--insecure-registry` on join).
#[test]
fn engine_networking_between_hosts() {
    let Some(lab) = lab("engine_net", 2) else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let reg_addr = format!("{}:5000", h1.ip);
    let reg = Registry::start(h1, "net", &reg_addr, None);
    push_images(h1, &reg);
    let (_m, init) = h1.init(&[]);
    let _w = h2.join_with(
        &init.token,
        &init.manager_addr,
        &["--insecure-registry", &reg_addr],
    );
    let bb = format!("{reg_addr}/test/bb:latest");
    ok(h2, &["image", "pull", &bb]);
    // Without the flag, h1 refuses plain HTTP to a non-loopback registry.
    let out = rs(h1, &["image", "pull", &bb]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(
        out.stderr.contains(&reg_addr),
        "the error names the registry: {out}"
    );

    // -p 8080:80: a CGI answers with the client address it sees.
    ok(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            &bb,
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    let url = format!("http://{}:8080/cgi-bin/ip", h2.ip);
    let mut body = String::new();
    lab.wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            body = h1
                .run(
                    "curl",
                    &["-s", "--max-time", "2", &url],
                    Duration::from_secs(5),
                )
                .stdout;
            body.contains("client=")
        },
        "published port answers",
    );
    assert_eq!(
        client_of(&body),
        h1.ip,
        "the container sees the client's address"
    );
    let ps = ok(h2, &["container", "ls"]);
    assert!(ps.contains("0.0.0.0:8080->80/tcp"), "{ps}");
    // The same host port again: refused, nothing left behind.
    let before_links = h2
        .run("ip", &["-o", "link"], Duration::from_secs(5))
        .stdout
        .lines()
        .count();
    let out = rs(
        h2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "web2",
            "-p",
            "8080:80",
            &bb,
            "sleep",
            "100",
        ],
    );
    assert!(out.failed_cleanly(), "{out}");
    assert!(
        out.stderr.contains("8080") && out.stderr.contains("in use"),
        "{out}"
    );
    assert!(!ok(h2, &["container", "ls", "-a"]).contains("web2"));
    let after_links = h2
        .run("ip", &["-o", "link"], Duration::from_secs(5))
        .stdout
        .lines()
        .count();
    assert_eq!(before_links, after_links, "no veth left behind");

    // Bridge neighbours reach each other by address.
    let web_ip = inspect(h2, "web")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!web_ip.is_empty());
    let out = ok(
        h2,
        &[
            "container",
            "run",
            "--rm",
            &bb,
            "wget",
            "-qO-",
            &format!("http://{web_ip}/cgi-bin/ip"),
        ],
    );
    assert!(out.starts_with("client="), "{out}");

    // container:web shares web's namespace: its localhost is web's.
    let out = ok(
        h2,
        &[
            "container",
            "run",
            "--rm",
            "--network",
            "container:web",
            &bb,
            "wget",
            "-qO-",
            "http://127.0.0.1/cgi-bin/ip",
        ],
    );
    assert_eq!(client_of(&out), "127.0.0.1", "{out}");
    // none: only loopback.
    let out = ok(
        h2,
        &[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            &bb,
            "sh",
            "-c",
            "cat /proc/net/dev; ip -o link show lo",
        ],
    );
    assert!(out.contains("lo:") && !out.contains("eth0"), "{out}");
    assert!(out.contains("<LOOPBACK,UP"), "loopback is up: {out}");
    // host: the host's own interfaces (the lab's eth0 with 198.18.0.2).
    let out = ok(
        h2,
        &[
            "container",
            "run",
            "--rm",
            "--network",
            "host",
            &bb,
            "ip",
            "-o",
            "addr",
        ],
    );
    assert!(out.contains(&h2.ip), "{out}");

    ok(h2, &["container", "rm", "-f", "web"]);
    let out = h1.run(
        "curl",
        &["-s", "--max-time", "2", &url],
        Duration::from_secs(5),
    );
    assert!(
        !out.stdout.contains("client="),
        "the port is closed after rm: {out}"
    );
}

/// Bind mounts, named volumes that outlive containers, tmpfs, an OOM kill reported as such, and
/// containers that keep running across agent restarts (SIGTERM and SIGKILL of the daemon).
#[test]
fn engine_volumes_oom_and_agent_restarts() {
    let Some(lab) = lab("engine_vol", 1) else {
        return;
    };
    let h = lab.host(1);
    let reg = Registry::start(h, "vol", "127.0.0.1:5000", None);
    push_images(h, &reg);
    let (d, _) = h.init(&[]);
    let bb = "127.0.0.1:5000/test/bb";
    ok(h, &["image", "pull", bb]);

    // Bind mounts, read-write and read-only.
    let host_dir = h.dir.join("bind");
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(host_dir.join("in"), "from-host\n").unwrap();
    let spec_rw = format!("{}:/data", host_dir.display());
    let out = ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            &spec_rw,
            bb,
            "sh",
            "-c",
            "cat /data/in; echo from-ctr > /data/out",
        ],
    );
    assert_eq!(out, "from-host\n");
    assert_eq!(
        fs::read_to_string(host_dir.join("out")).unwrap(),
        "from-ctr\n"
    );
    let spec_ro = format!("{}:/data:ro", host_dir.display());
    let out = rs(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            &spec_ro,
            bb,
            "touch",
            "/data/x",
        ],
    );
    assert!(out.failed_cleanly(), "{out}");
    // Named volumes: created on first use with the image's content, kept after the container.
    ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            "vol1:/seed",
            bb,
            "sh",
            "-c",
            "cat /seed/file; echo kept > /seed/v",
        ],
    );
    let out = ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            "vol1:/seed",
            bb,
            "cat",
            "/seed/v",
            "/seed/file",
        ],
    );
    assert_eq!(out, "kept\nfrom-the-image\n");
    // tmpfs.
    let out = ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            "--tmpfs",
            "/scratch:size=1m",
            bb,
            "sh",
            "-c",
            "grep /scratch /proc/mounts",
        ],
    );
    assert!(out.contains("tmpfs"), "{out}");

    // Out of memory: killed by the kernel and reported as such.
    let out = rs(
        h,
        &[
            "container",
            "run",
            "--name",
            "hog",
            "--memory",
            "8m",
            "--memory-swap",
            "8m",
            bb,
            "sh",
            "-c",
            "x=aaaaaaaaaa; while true; do x=$x$x; done",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{out}");
    let info = inspect(h, "hog");
    assert_eq!(info["State"]["OOMKilled"], true, "{info}");
    ok(h, &["container", "rm", "hog"]);

    // Containers survive their agent: SIGTERM, then SIGKILL.
    ok(
        h,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "survivor",
            bb,
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        ],
    );
    ok(
        h,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "short",
            bb,
            "sh",
            "-c",
            "sleep 2; exit 5",
        ],
    );
    let pid = inspect(h, "survivor")["State"]["Pid"].as_i64().unwrap();
    d.sigterm_and_wait(Duration::from_secs(15));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with its agent"
    );
    std::thread::sleep(Duration::from_secs(3));
    let d2 = h.start_manager();
    let info = inspect(h, "survivor");
    assert_eq!(info["State"]["Running"], true, "{info}");
    assert_eq!(info["State"]["Pid"].as_i64(), Some(pid));
    // `short` exited while no agent ran: its exit code was kept by its shim.
    let info = inspect(h, "short");
    assert_eq!(info["State"]["Status"], "exited", "{info}");
    assert_eq!(info["State"]["ExitCode"], 5, "{info}");
    let before = rs(h, &["container", "logs", "survivor"])
        .stdout
        .lines()
        .count();
    std::thread::sleep(Duration::from_millis(500));
    let after = rs(h, &["container", "logs", "survivor"])
        .stdout
        .lines()
        .count();
    assert!(
        after > before,
        "logs keep flowing after the restart ({before} → {after})"
    );
    d2.kill9();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with its agent (SIGKILL)"
    );
    let _d3 = h.start_manager();
    ok(h, &["container", "exec", "survivor", "true"]);
    ok(h, &["container", "stop", "-t", "2", "survivor"]);
    assert_eq!(inspect(h, "survivor")["State"]["Status"], "exited");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    ok(h, &["container", "rm", "survivor", "short"]);
    // The volume outlives its containers.
    let out = ok(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            "vol1:/seed",
            bb,
            "cat",
            "/seed/v",
        ],
    );
    assert_eq!(out, "kept\n");
}

/// Bad input gets a clear message and leaves nothing behind.
#[test]
fn engine_refuses_bad_input() {
    let Some(lab) = lab("engine_bad", 1) else {
        return;
    };
    let h = lab.host(1);
    let reg = Registry::start(h, "bad", "127.0.0.1:5000", None);
    push_images(h, &reg);

    // No runtime: init refuses before it writes anything, naming the package.
    let args = h.init_args(&["--runtime", "/nonexistent/runc"]);
    let out = h.rswarm_raw(&args);
    assert!(out.failed_cleanly(), "{out}");
    assert!(out.stderr.contains("runc"), "{out}");
    assert!(h.state_dir_pristine(), "init wrote state before refusing");

    let (_d, _) = h.init(&[]);
    let bb = "127.0.0.1:5000/test/bb";
    let out = rs(h, &["image", "pull", "Not A Reference"]);
    assert!(
        out.failed_cleanly() && out.stderr.contains("Not A Reference"),
        "{out}"
    );
    let out = rs(h, &["image", "pull", "127.0.0.1:5000/test/bb:nope"]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(
        out.stderr.contains("127.0.0.1:5000/test/bb:nope"),
        "names the reference: {out}"
    );
    let out = rs(h, &["image", "pull", "127.0.0.1:1/test/bb"]);
    assert!(
        out.failed_cleanly() && out.stderr.contains("127.0.0.1:1"),
        "{out}"
    );
    ok(h, &["image", "pull", bb]);

    let out = rs(
        h,
        &["container", "run", "--rm", "--memory", "1m", bb, "true"],
    );
    assert!(
        out.failed_cleanly() && out.stderr.contains("minimum memory limit"),
        "{out}"
    );
    let out = rs(
        h,
        &[
            "container",
            "run",
            "--rm",
            "-v",
            "/nonexistent/src:/x",
            bb,
            "true",
        ],
    );
    assert!(
        out.failed_cleanly() && out.stderr.contains("/nonexistent/src"),
        "{out}"
    );
    let out = rs(h, &["container", "run", "--rm", bb, "/no/such/binary"]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(ok(h, &["container", "ls", "-a", "-q"]).trim().is_empty());
    assert!(
        containers_dir_entries(h).is_empty(),
        "{:?}",
        containers_dir_entries(h)
    );
    assert!(mounts_under(&h.state_dir().join("containers")).is_empty());
    assert!(leftover_cgroups(h).is_empty(), "{:?}", leftover_cgroups(h));

    // A layer that writes through a symlink out of its directory is refused on load.
    let evil = h.dir.join("layout-evil");
    let base = busybox_layer("/bin/busybox", &["sh"]).unwrap();
    let escape_target = h.dir.join("escaped");
    fs::create_dir_all(&escape_target).unwrap();
    let top = vec![
        (
            "link".to_string(),
            Entry::Symlink(escape_target.display().to_string()),
        ),
        ("link/pwned".to_string(), Entry::File(b"x".to_vec())),
    ];
    write_oci_layout(
        &evil,
        &[base, top],
        &ImageSpec {
            name: Some("evil:latest".into()),
            ..ImageSpec::default()
        },
    )
    .unwrap();
    let archive = h.dir.join("evil.tar");
    tar_dir(&evil, &archive).unwrap();
    let out = rs(h, &["image", "load", "-i", &archive.display().to_string()]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(
        !escape_target.join("pwned").exists(),
        "the layer wrote outside its directory"
    );
    assert!(!ok(h, &["image", "ls"]).contains("evil"));

    // A registry blob whose bytes do not match its digest is refused and not kept.
    let corrupt = h.dir.join("layout-corrupt");
    let base = busybox_layer("/bin/busybox", &["sh", "true"]).unwrap();
    let unique = vec![(
        "only-here".to_string(),
        Entry::File(b"corrupt me\n".repeat(1000)),
    )];
    let info = write_oci_layout(&corrupt, &[base, unique], &spec(&["true"], &[])).unwrap();
    reg.push(h, &corrupt, "test/corrupt:latest");
    let layer = info.layer_digests[1].clone();
    let blob = reg.blob_path(&layer);
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let out = rs(h, &["image", "pull", "127.0.0.1:5000/test/corrupt"]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(out.stderr.to_lowercase().contains("digest"), "{out}");
    let kept = h
        .state_dir()
        .join("images/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!kept.exists(), "a corrupt blob was kept");
}

/// A private registry with basic auth, a mirror for docker.io, and `image load` of a docker-archive.
#[test]
fn engine_private_registry_mirror_and_load() {
    let Some(lab) = lab("engine_reg", 2) else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let private = Registry::start(
        h1,
        "private",
        &format!("{}:5001", h1.ip),
        Some("alice:s3cret"),
    );
    let mirror = Registry::start(h1, "mirror", &format!("{}:5002", h1.ip), None);
    let layout = h1.dir.join("layout-bb");
    busybox_image(&layout, &spec(&["sh", "-c", "echo from-mirror"], &[]));
    private.push(h1, &layout, "team/app:1");
    mirror.push(h1, &layout, "library/mirrored:latest");

    let (_m, init) = h1.init(&["--insecure-registry", &private.addr]);
    let mirror_url = format!("http://{}", mirror.addr);
    let _w = h2.join_with(
        &init.token,
        &init.manager_addr,
        &["--registry-mirror", &mirror_url],
    );

    let app = format!("{}/team/app:1", private.addr);
    let out = rs(h1, &["image", "pull", &app]);
    assert!(out.failed_cleanly(), "{out}");
    assert!(out.stderr.contains(&app), "{out}");
    ok(
        h1,
        &[
            "image",
            "pull",
            "--username",
            "alice",
            "--password",
            "s3cret",
            &app,
        ],
    );
    assert!(ok(h1, &["image", "ls"]).contains("team/app"));

    // docker.io is unreachable from the test hosts: only the mirror can serve this.
    ok(h2, &["image", "pull", "mirrored"]);
    let out = ok(h2, &["container", "run", "--rm", "mirrored"]);
    assert_eq!(out, "from-mirror\n");

    // Air-gapped: a docker-archive made by skopeo, loaded on h2.
    let archive = h1.dir.join("app.tar");
    h1.run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker-archive:{}:offline/app:2", archive.display()),
        ],
        Duration::from_secs(60),
    )
    .assert_success("skopeo copy to docker-archive");
    let out = ok(h2, &["image", "load", "-i", &archive.display().to_string()]);
    assert!(out.contains("offline/app:2"), "{out}");
    let out = ok(h2, &["container", "run", "--rm", "offline/app:2"]);
    assert_eq!(out, "from-mirror\n");
}
