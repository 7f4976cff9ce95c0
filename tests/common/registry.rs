//! A real registry (Debian's `docker-registry`) on a test host, and test images built without Docker
//! (`rswarm_image::testutil` writes an OCI layout; `skopeo` pushes it).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rswarm_image::testutil::{busybox_layer, write_oci_layout, Entry, ImageSpec, LayoutInfo};

use super::{Daemon, Host};

/// True when the tools the registry tests need are installed (CI installs them).
pub fn tools_present() -> bool {
    [
        "/usr/bin/docker-registry",
        "/usr/bin/skopeo",
        "/bin/busybox",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

/// One registry process serving `addr` inside a host's namespace.
pub struct Registry {
    /// `HOST:PORT` it listens on.
    pub addr: String,
    /// Its storage root.
    pub storage: PathBuf,
    /// `user:password` when it requires basic auth.
    pub creds: Option<String>,
    pub daemon: Daemon,
}

impl Registry {
    /// Starts `docker-registry serve` on `addr` in `host`'s namespace; with `creds` (`user:pass`) it
    /// requires basic auth (an htpasswd file made with `htpasswd -Bbn`).
    #[track_caller]
    pub fn start(host: &Host, name: &str, addr: &str, creds: Option<&str>) -> Registry {
        let dir = host.dir.join(format!("registry-{name}"));
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).expect("create registry storage");
        let mut auth = String::new();
        if let Some(c) = creds {
            let (user, pass) = c.split_once(':').expect("creds are user:pass");
            let out = host.run("htpasswd", &["-Bbn", user, pass], Duration::from_secs(20));
            out.assert_success("htpasswd");
            let file = dir.join("htpasswd");
            fs::write(&file, out.stdout.trim()).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: rswarm-test\n    path: {}\n",
                file.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            storage.display()
        );
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config).expect("write registry config");
        let daemon = host.spawn(
            &format!("registry-{name}"),
            Path::new("/usr/bin/docker-registry"),
            &["serve".to_string(), config_path.display().to_string()],
        );
        let reg = Registry {
            addr: addr.to_string(),
            storage,
            creds: creds.map(str::to_string),
            daemon,
        };
        reg.wait_ready(host);
        reg
    }

    #[track_caller]
    fn wait_ready(&self, host: &Host) {
        let start = Instant::now();
        loop {
            let out = host.run(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://{}/v2/", self.addr),
                ],
                Duration::from_secs(5),
            );
            if out.stdout.trim() == "200" || out.stdout.trim() == "401" {
                return;
            }
            assert!(
                self.daemon.is_running(),
                "docker-registry exited\n{}",
                self.daemon.log()
            );
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry on {} did not answer: {out}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pushes the OCI layout at `layout` (tag `latest`) as `REPO:TAG` with skopeo from `host`.
    #[track_caller]
    pub fn push(&self, host: &Host, layout: &Path, repo_tag: &str) {
        let src = format!("oci:{}:latest", layout.display());
        let dst = format!("docker://{}/{repo_tag}", self.addr);
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        let creds;
        if let Some(c) = &self.creds {
            creds = format!("--dest-creds={c}");
            args.push(&creds);
        }
        args.push(&src);
        args.push(&dst);
        host.run("skopeo", &args, Duration::from_secs(60))
            .assert_success("skopeo copy (push)");
    }

    /// Where the registry keeps the blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// The busybox applets the test images carry.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "pwd", "sleep", "env", "touch", "mkdir", "ps", "wget",
    "httpd", "nc", "ip", "hostname", "head", "dd", "mount", "grep", "seq", "tr", "true", "false",
    "vi", "rm", "wc", "tail", "date", "kill", "test", "[",
];

/// `/etc/passwd` and `/etc/group` with root, nobody and an `app` user (uid 1000, groups app + extra).
pub fn etc_entries() -> Vec<(String, Entry)> {
    vec![
        (
            "etc/passwd".into(),
            Entry::File(
                b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
            ),
        ),
        (
            "etc/group".into(),
            Entry::File(b"root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n".to_vec()),
        ),
        ("home".into(), Entry::Dir),
        ("home/app".into(), Entry::Dir),
    ]
}

/// Writes a two-layer busybox image at `dir`: layer 1 = busybox + applets, layer 2 = /etc files,
/// `/seed/file` (for volume copy-up), a CGI script for httpd, and a whiteout of `/bin/vi`.
pub fn busybox_image(dir: &Path, spec: &ImageSpec) -> LayoutInfo {
    let base = busybox_layer("/bin/busybox", APPLETS).expect("busybox layer");
    let mut top = etc_entries();
    top.push(("seed".into(), Entry::Dir));
    top.push((
        "seed/file".into(),
        Entry::File(b"from-the-image\n".to_vec()),
    ));
    top.push(("www".into(), Entry::Dir));
    top.push(("www/cgi-bin".into(), Entry::Dir));
    top.push((
        "www/cgi-bin/ip".into(),
        Entry::Executable(
            b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"client=$REMOTE_ADDR\"\n"
                .to_vec(),
        ),
    ));
    top.push(("bin/vi".into(), Entry::Whiteout));
    write_oci_layout(dir, &[base, top], spec).expect("write OCI layout")
}
