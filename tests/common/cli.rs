//! What every engine and service test does: a lab only when the registry tools are installed, and
//! the `rswarm` CLI on a host's socket.

use std::path::Path;
use std::time::Duration;

use super::registry::tools_present;
use super::{CmdOutput, Host, Lab};

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
