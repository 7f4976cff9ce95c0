//! What every engine and service test does: a lab only when the registry tools are installed, and
//! the `rswarm` CLI on a host's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rswarm_image::testutil::ImageSpec;

use super::registry::{busybox_image, tools_present, Registry};
use super::{CmdOutput, Daemon, Host, Lab};

/// A lab of `hosts` hosts, or `None` (with a message) when the registry and image tools are
/// missing (CI installs them).
pub fn lab(name: &str, hosts: usize) -> Option<Lab> {
    if !tools_present() || !Path::new("/usr/bin/tini-static").exists() {
        eprintln!(
            "skipping {name}: needs docker-registry, skopeo, busybox-static and tini installed"
        );
        return None;
    }
    Lab::with_hosts(name, hosts)
}

/// `rswarm ARGS` on `host`'s socket, killed after `timeout`.
pub fn rs_for(host: &Host, args: &[&str], timeout: Duration) -> CmdOutput {
    let mut full: Vec<String> = vec!["--host".into(), host.socket_url()];
    full.extend(args.iter().map(|s| s.to_string()));
    host.rswarm_raw_env(&full, &[], timeout)
}

/// `rswarm ARGS` on `host`'s socket, with a timeout long enough for pulls and runs.
pub fn rs(host: &Host, args: &[&str]) -> CmdOutput {
    rs_for(host, args, Duration::from_secs(90))
}

/// [`rs`] that must succeed; its stdout.
#[track_caller]
pub fn ok(host: &Host, args: &[&str]) -> String {
    let out = rs(host, args);
    out.assert_success(&args.join(" "));
    out.stdout
}

/// A cluster for service tests: `h1` the manager (it runs tasks too, as in Swarm), hosts
/// `2..=joined` workers, a registry on `h1:5000` holding the given images; every node treats it,
/// and `h1:5001` (where a test may start a private registry), as insecure registries.
pub struct TestCluster {
    pub reg_addr: String,
    pub token: String,
    pub manager_addr: String,
    pub registry: Registry,
    /// The OCI layout each image was built in, in the order given (to push it elsewhere too).
    pub layouts: Vec<PathBuf>,
    /// `rswarm init` on h1, then one `rswarm join` per worker, in host order.
    pub daemons: Vec<Daemon>,
}

impl TestCluster {
    /// Builds each `(repository:tag, spec)` as a busybox image, pushes it, and starts the nodes.
    #[track_caller]
    pub fn start(lab: &Lab, joined: usize, images: &[(&str, ImageSpec)]) -> TestCluster {
        let h1 = lab.host(1);
        let reg_addr = format!("{}:5000", h1.ip);
        let registry = Registry::start(h1, "cluster", &reg_addr, None);
        let mut layouts = Vec::new();
        for (i, (name, spec)) in images.iter().enumerate() {
            let layout = h1.dir.join(format!("layout-{i}"));
            busybox_image(&layout, spec);
            registry.push(h1, &layout, name);
            layouts.push(layout);
        }
        let private_addr = format!("{}:5001", h1.ip);
        let insecure = [
            "--insecure-registry",
            &reg_addr,
            "--insecure-registry",
            &private_addr,
        ];
        let (m, init) = h1.init(&insecure);
        let mut daemons = vec![m];
        for k in 2..=joined {
            daemons.push(
                lab.host(k)
                    .join_with(&init.token, &init.manager_addr, &insecure),
            );
        }
        lab.wait_until(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || h1.all_ready(joined),
            "all nodes ready",
        );
        TestCluster {
            reg_addr,
            token: init.token,
            manager_addr: init.manager_addr,
            registry,
            layouts,
            daemons,
        }
    }

    /// The full reference of a pushed image (`repository:tag`).
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.reg_addr)
    }
}

/// A busybox image whose CMD is `sleep 1000`.
pub fn sleeper() -> ImageSpec {
    ImageSpec {
        cmd: vec!["sleep".into(), "1000".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..ImageSpec::default()
    }
}

/// Containers on `host` whose name starts with `prefix.` (a service's tasks), with their state.
pub fn containers(host: &Host, prefix: &str) -> Vec<(String, String)> {
    let out = rs(host, &["container", "ls", "-a", "--format", "json"]);
    if !out.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    let name = c["Names"].as_str()?;
                    name.starts_with(&format!("{prefix}.")).then(|| {
                        (
                            name.to_string(),
                            c["State"].as_str().unwrap_or("").to_string(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How many of a service's tasks run on `host`.
pub fn running(host: &Host, prefix: &str) -> usize {
    containers(host, prefix)
        .iter()
        .filter(|(_, s)| s == "running")
        .count()
}
