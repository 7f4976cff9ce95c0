//! Work inside a container's network namespace (IO), each time on a short-lived OS thread that
//! enters the namespace first: sockets made there stay in it, and so does a process it spawns
//! (namespaces are per thread; a child starts in its parent thread's). The caller's runtime
//! threads never change namespace.

use std::io::{ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use super::vip;
use super::DiscoveryError;

/// Where Docker's embedded DNS server listens in every container.
pub const DNS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// How long binding waits for 127.0.0.11:53 to be free.
const BIND_PATIENCE: Duration = Duration::from_secs(1);

/// Runs `f` on a new thread inside the network namespace at `path`.
async fn in_netns<T, F>(path: &Path, f: F) -> Result<T, DiscoveryError>
where
    T: Send + 'static,
    F: FnOnce(&Path) -> Result<T, DiscoveryError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("rswarm-dns-netns".to_string())
        .spawn(move || {
            let _ = tx.send(enter(&owned).and_then(|()| f(&owned)));
        })
        .map_err(|source| DiscoveryError::Io {
            what: "spawn a thread for a network namespace",
            source,
        })?;
    rx.await
        .map_err(|_| DiscoveryError::WorkerDied(path.to_path_buf()))?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<(), DiscoveryError> {
    let err = |source: std::io::Error| DiscoveryError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let ns = std::fs::File::open(path).map_err(err)?;
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| err(e.into()))
}

/// The UDP socket and TCP listener of [`DNS_ADDR`] in the namespace at `path`, non-blocking,
/// ready for tokio.
pub(crate) async fn bind_dns(path: &Path) -> Result<(UdpSocket, TcpListener), DiscoveryError> {
    in_netns(path, |path| {
        let err = |source: std::io::Error| DiscoveryError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let udp = retry_in_use(|| UdpSocket::bind(DNS_ADDR)).map_err(err)?;
        udp.set_nonblocking(true).map_err(err)?;
        let tcp = retry_in_use(|| TcpListener::bind(DNS_ADDR)).map_err(err)?;
        tcp.set_nonblocking(true).map_err(err)?;
        Ok((udp, tcp))
    })
    .await
}

/// `bind` again while the address is in use, for up to [`BIND_PATIENCE`]: the sockets of a
/// container detached just before close once the runtime has dropped its tasks. Blocks the
/// (namespace) thread it runs on.
fn retry_in_use<T>(mut bind: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let deadline = Instant::now() + BIND_PATIENCE;
    loop {
        match bind() {
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Replaces the VIP rules in the namespace at `path` with `rules` (see [`vip::rules`]); with
/// `ensure_hook`, also adds the jump from nat `OUTPUT` unless it is there already.
pub(crate) async fn apply_rules(
    path: &Path,
    rules: String,
    ensure_hook: bool,
) -> Result<(), DiscoveryError> {
    in_netns(path, move |path| {
        let hook = ensure_hook && !hook_present(path)?;
        let script = vip::restore_script(&rules, hook);
        tracing::debug!(netns = %path.display(), hook, %script, "applying VIP rules");
        restore(path, &script)
    })
    .await
}

fn spawn_error(program: &'static str, path: &Path, source: std::io::Error) -> DiscoveryError {
    if source.kind() == ErrorKind::NotFound {
        DiscoveryError::IptablesMissing(program)
    } else {
        DiscoveryError::Iptables {
            program,
            path: path.to_path_buf(),
            status: "not started".to_string(),
            stderr: source.to_string(),
        }
    }
}

/// Whether nat `OUTPUT` jumps to the VIP chain (`iptables -C`; it fails too when the chain
/// doesn't exist yet).
fn hook_present(path: &Path) -> Result<bool, DiscoveryError> {
    let status = Command::new("iptables")
        .args(["-w", "-t", "nat", "-C", "OUTPUT", "-j", vip::CHAIN])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| spawn_error("iptables", path, e))?;
    Ok(status.success())
}

/// Feeds `script` to `iptables-restore -w --noflush`.
fn restore(path: &Path, script: &str) -> Result<(), DiscoveryError> {
    let program = "iptables-restore";
    let mut child = Command::new(program)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(program, path, e))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| spawn_error(program, path, e))?;
    if !out.status.success() {
        return Err(DiscoveryError::Iptables {
            program,
            path: path.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    if let Some(Err(source)) = written {
        return Err(DiscoveryError::Io {
            what: "write the VIP rules to iptables-restore",
            source,
        });
    }
    Ok(())
}
