//! End-to-end tests of the shim with the real runc: hand-built busybox bundles, run through
//! `spawn_shim` → `runc start` → `wait_shim` → `read_exit`, plus an overlay mount.
//!
//! Needs root, runc (`/usr/sbin/runc` or `$RSWARM_TEST_RUNC`), `/bin/busybox` (static) and the
//! `rswarm-shim` binary next to the test's directory (`target/debug/rswarm-shim`, built by
//! `cargo build -p rswarm --bin rswarm-shim`; `cargo test --workspace` builds it first) or at
//! `$RSWARM_TEST_SHIM`. Each test skips with a message when something is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rswarm_runtime::logs::{read_logs, LogReadOptions, LogStream};
use rswarm_runtime::rootfs::{is_mounted, mount_overlay, unmount};
use rswarm_runtime::runc::Runc;
use rswarm_runtime::shim::{
    read_exit, shim_alive, spawn_shim, wait_shim, ExitInfo, ShimArgs, ShimError, ShimStarted,
};
use serde_json::{json, Value};

fn runc_binary() -> PathBuf {
    std::env::var_os("RSWARM_TEST_RUNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/runc"))
}

fn shim_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RSWARM_TEST_SHIM") {
        return Some(PathBuf::from(p));
    }
    // target/debug/deps/runc-<hash> → target/debug/rswarm-shim
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("rswarm-shim");
    p.exists().then_some(p)
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{name}-{}-{nanos:08x}", std::process::id())
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !runc_binary().exists() {
        return Some(format!("no runc at {}", runc_binary().display()));
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("no /bin/busybox (install busybox-static)".into());
    }
    if shim_binary().is_none() {
        return Some(
            "no rswarm-shim binary: run `cargo build -p rswarm --bin rswarm-shim` first".into(),
        );
    }
    None
}

macro_rules! require_prerequisites {
    () => {
        if let Some(why) = missing_prerequisite() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// A bundle with a busybox rootfs; removes the container, its cgroups and the directory on drop.
struct Container {
    dir: tempfile::TempDir,
    id: String,
    cgroup_parent: String,
    runc: Runc,
    shim: PathBuf,
}

impl Container {
    fn new(name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> Container {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = unique(name);
        let cgroup_parent = unique("rswarm-test");
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for tool in ["sh", "echo", "sleep", "cat", "head", "tail", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        let out = std::process::Command::new(runc_binary())
            .arg("spec")
            .arg("--bundle")
            .arg(&bundle)
            .output()
            .expect("runc spec");
        assert!(out.status.success(), "runc spec: {out:?}");
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["linux"]["cgroupsPath"] = json!(format!("/{cgroup_parent}/{id}"));
        edit(&mut spec);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Container {
            runc: Runc::new(runc_binary(), dir.path().join("runc-root")),
            dir,
            id,
            cgroup_parent,
            shim: shim_binary().expect("shim binary"),
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn shim_args(&self) -> ShimArgs {
        ShimArgs::new(
            &self.id,
            self.bundle(),
            runc_binary(),
            self.runc.root().to_path_buf(),
        )
    }

    async fn create(&self) -> Result<ShimStarted, ShimError> {
        spawn_shim(&self.shim, &self.shim_args()).await
    }

    async fn wait_exit(&self, started: ShimStarted) -> ExitInfo {
        tokio::time::timeout(Duration::from_secs(60), wait_shim(started.shim_pid))
            .await
            .expect("the shim did not exit within 60 s")
            .expect("wait_shim");
        read_exit(&self.bundle())
            .expect("read_exit")
            .expect("the shim wrote no exit.json")
    }

    /// create + start + wait.
    async fn run(&self) -> ExitInfo {
        let started = self.create().await.expect("spawn_shim");
        self.runc.start(&self.id).await.expect("runc start");
        self.wait_exit(started).await
    }

    async fn logs(&self) -> Vec<(LogStream, String)> {
        read_logs(
            self.bundle().join("json.log"),
            LogReadOptions::default(),
            std::future::ready(()),
        )
        .await
        .map(|e| {
            let e = e.expect("log entry");
            (e.stream, String::from_utf8(e.line).unwrap())
        })
        .collect()
        .await
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new(runc_binary())
            .arg("--root")
            .arg(self.runc.root())
            .args(["delete", "--force", &self.id])
            .output();
        if let Ok(dirs) = std::fs::read_dir("/sys/fs/cgroup") {
            for d in dirs.flatten() {
                let _ = std::fs::remove_dir(d.path().join(&self.cgroup_parent).join(&self.id));
                let _ = std::fs::remove_dir(d.path().join(&self.cgroup_parent));
            }
        }
    }
}

#[tokio::test]
async fn stdout_and_stderr_reach_json_log() {
    require_prerequisites!();
    let c = Container::new(
        "logs",
        &["sh", "-c", "echo hello out; echo hello err >&2; echo bye"],
        |_| {},
    );
    let started = c.create().await.expect("spawn_shim");
    assert!(started.pid > 0 && started.shim_pid > 0);
    assert!(shim_alive(started.shim_pid, &c.id), "shim not alive");
    let state = c.runc.state(&c.id).await.unwrap().expect("runc knows it");
    assert_eq!(state.status, "created");
    assert_eq!(state.pid, started.pid);
    assert!(Path::new(&format!("/proc/{}/ns/net", started.pid)).exists());
    c.runc.start(&c.id).await.expect("runc start");
    let exit = c.wait_exit(started).await;
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert!(exit.finished_at_time().is_some());
    assert!(!shim_alive(started.shim_pid, &c.id));
    let logs = c.logs().await;
    let out: Vec<&str> = logs
        .iter()
        .filter(|(s, _)| *s == LogStream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect();
    let err: Vec<&str> = logs
        .iter()
        .filter(|(s, _)| *s == LogStream::Stderr)
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(out, ["hello out\n", "bye\n"], "{logs:?}");
    assert_eq!(err, ["hello err\n"], "{logs:?}");
    let state = c.runc.state(&c.id).await.unwrap().expect("still listed");
    assert_eq!(state.status, "stopped");
    c.runc.delete(&c.id, false).await.unwrap();
    assert_eq!(c.runc.state(&c.id).await.unwrap(), None);
}

#[tokio::test]
async fn exit_code_is_reported() {
    require_prerequisites!();
    let c = Container::new("exit3", &["sh", "-c", "exit 3"], |_| {});
    let exit = c.run().await;
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
}

#[tokio::test]
async fn sigterm_gives_143() {
    require_prerequisites!();
    // Without a PID namespace `sleep` is not a namespace init, so SIGTERM's default action
    // applies (a namespace init ignores signals it has no handler for).
    let c = Container::new("term", &["sleep", "1000"], |spec| {
        let ns = spec["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let started = c.create().await.expect("spawn_shim");
    c.runc.start(&c.id).await.expect("runc start");
    let state = c.runc.state(&c.id).await.unwrap().unwrap();
    assert_eq!(state.status, "running");
    assert!(c.runc.list().await.unwrap().iter().any(|s| s.id == c.id));
    c.runc.kill(&c.id, "TERM", false).await.expect("runc kill");
    let exit = c.wait_exit(started).await;
    assert_eq!(exit.exit_code, 143, "{exit:?}");
    assert_eq!(exit.signal, Some(15));
}

#[tokio::test]
async fn sigkill_of_a_namespace_init_gives_137() {
    require_prerequisites!();
    let c = Container::new("kill", &["sleep", "1000"], |_| {});
    let started = c.create().await.expect("spawn_shim");
    c.runc.start(&c.id).await.expect("runc start");
    c.runc.kill(&c.id, "KILL", true).await.expect("runc kill");
    let exit = c.wait_exit(started).await;
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    assert!(!exit.oom_killed);
}

#[tokio::test]
async fn oom_kill_is_reported() {
    require_prerequisites!();
    let limit = 8 * 1024 * 1024;
    let c = Container::new(
        "oom",
        &["sh", "-c", "x=a; while true; do x=$x$x; done"],
        |spec| {
            spec["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
        },
    );
    let exit = c.run().await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, 137, "{exit:?}");
}

#[tokio::test]
async fn create_failure_carries_runcs_message() {
    require_prerequisites!();
    let c = Container::new("bad", &["/no/such/program"], |_| {});
    let err = match c.create().await {
        Err(e) => e,
        Ok(started) => {
            // runc versions that check the program only at start.
            let err = c.runc.start(&c.id).await.expect_err("start must fail");
            let _ = c.wait_exit(started).await;
            panic!("create succeeded; start failed with {err}");
        }
    };
    assert!(matches!(err, ShimError::Create { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0);
    }
}

#[test]
fn overlay_merges_layers_and_unmounts() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (bottom, top, upper, work, merged) =
        (d("bottom"), d("top"), d("upper"), d("work"), d("merged"));
    std::fs::write(bottom.join("a"), "bottom a").unwrap();
    std::fs::write(bottom.join("b"), "bottom b").unwrap();
    std::fs::write(top.join("b"), "top b").unwrap();
    mount_overlay(&[bottom.clone(), top.clone()], &upper, &work, &merged).expect("mount");
    let guard = Mounted(merged.clone());
    assert!(is_mounted(&merged));
    assert_eq!(
        std::fs::read_to_string(merged.join("a")).unwrap(),
        "bottom a"
    );
    assert_eq!(std::fs::read_to_string(merged.join("b")).unwrap(), "top b");
    std::fs::write(merged.join("c"), "new").unwrap();
    assert_eq!(std::fs::read_to_string(upper.join("c")).unwrap(), "new");
    assert!(!bottom.join("c").exists() && !top.join("c").exists());
    unmount(&merged).unwrap();
    assert!(!is_mounted(&merged));
    assert!(!merged.join("a").exists());
    unmount(&merged).unwrap();
    drop(guard);

    // One empty lower layer (an image without layers) works too.
    let (empty, upper2, work2, merged2) = (d("empty"), d("upper2"), d("work2"), d("merged2"));
    mount_overlay(&[empty], &upper2, &work2, &merged2).expect("mount one empty layer");
    let _guard = Mounted(merged2.clone());
    assert!(is_mounted(&merged2));
    assert_eq!(std::fs::read_dir(&merged2).unwrap().count(), 0);
    unmount(&merged2).unwrap();
}
