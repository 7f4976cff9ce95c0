//! What the bridge and overlay tests share: throwaway network namespaces, entered by threads
//! (never the test's own), deleted on drop even when a test panics.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether the tests may run; says why not otherwise.
pub fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        true
    } else {
        eprintln!("skipping: these tests need root (network namespaces, iptables)");
        false
    }
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `<prefix><pid>-<n>`: unique across tests and test processes.
    pub fn new(prefix: &str) -> Netns {
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace (network namespace only, via nsenter).
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        nsenter(&self.path(), args).output().expect("run nsenter")
    }

    /// Like `cmd`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that entered this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path);
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Runs an async body on a current-thread runtime of a thread inside this namespace.
    pub fn block_on<T: Send, Fut: Future<Output = T>>(&self, f: impl FnOnce() -> Fut + Send) -> T {
        self.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn enter_netns(path: &Path) {
    let f = std::fs::File::open(path).expect("open netns");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary directory for an overlay's namespace files; on drop every file in it is
/// unmounted (lazily) before the directory goes, even when a test panics.
pub struct NsDir {
    pub dir: tempfile::TempDir,
}

impl NsDir {
    pub fn new() -> NsDir {
        NsDir {
            dir: tempfile::Builder::new()
                .prefix("rswarm-ovns-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NsDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Runs a command inside the network namespace file `ns` (via nsenter), asserting success;
/// returns stdout.
pub fn ok_in(ns: &Path, args: &[&str]) -> String {
    run(&mut nsenter(ns, args))
}

/// `nsenter --net=NS ARGS…`: the network namespace only (no `ip netns exec` remount of /sys).
fn nsenter(ns: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.display())).args(args);
    cmd
}
