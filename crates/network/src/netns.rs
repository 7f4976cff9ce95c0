//! Netlink work (IO): in the calling thread's network namespace, and inside another namespace
//! through a dedicated OS thread that enters it first.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::NetworkError;

/// `-ENODEV`, `-EEXIST` as netlink reports them.
pub(crate) const ENODEV: i32 = 19;
pub(crate) const EEXIST: i32 = 17;

/// Whether a netlink error carries errno `code`.
pub(crate) fn is_errno(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == code)
}

/// A netlink connection in the calling thread's network namespace; the connection task is
/// aborted on drop.
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's namespace; must run inside a tokio runtime.
    pub(crate) fn open() -> Result<Self, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetworkError::io("open a netlink socket", e))?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// The index of link `name`, or `None` when there is none.
    pub(crate) async fn link_index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        link_index(&self.handle, name).await
    }

    /// Deletes link `name` if it exists.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<bool, NetworkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, ENODEV) => Ok(false),
            Err(e) => Err(NetworkError::netlink(format!("delete link {name}"), e)),
        }
    }

    /// A netlink connection inside the network namespace at `path`: the socket is opened on a
    /// short-lived thread that entered the namespace (a socket stays in the namespace it was
    /// made in) and is then driven by the caller's runtime like any other. With `strict`, dump
    /// requests are checked strictly (`NETLINK_GET_STRICT_CHK`): the kernel then honours
    /// filters it would otherwise ignore, such as the device index of an `AF_BRIDGE` FDB dump.
    pub(crate) async fn open_in(path: &Path, strict: bool) -> Result<Self, NetworkError> {
        let ns = open_netns(path)?;
        let runtime = tokio::runtime::Handle::current();
        let owned = path.to_path_buf();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("rswarm-netns-nl".to_string())
            .spawn(move || {
                let made = setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::Netns {
                        path: owned,
                        source: e.into(),
                    })
                    .and_then(|()| {
                        // The socket registers with the caller's runtime's reactor.
                        let _entered = runtime.enter();
                        let made = if strict {
                            rtnetlink::new_connection_with_strict_check()
                        } else {
                            rtnetlink::new_connection()
                        };
                        made.map(|(conn, handle, _)| (conn, handle))
                            .map_err(|e| NetworkError::io("open a netlink socket", e))
                    });
                let _ = tx.send(made);
            })
            .map_err(|e| NetworkError::io("spawn a network namespace worker thread", e))?;
        let (conn, handle) = rx
            .await
            .map_err(|_| NetworkError::WorkerDied(path.to_path_buf()))??;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The index of link `name`, or `None` when there is none.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, ENODEV) => Ok(None),
        Err(e) => Err(NetworkError::netlink(format!("look up link {name}"), e)),
    }
}

/// Sets link `index` up.
pub(crate) async fn link_up(handle: &Handle, index: u32, what: &str) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::netlink(format!("set {what} up"), e))
}

/// Opens a network namespace file.
pub(crate) fn open_netns(path: &Path) -> Result<File, NetworkError> {
    File::open(path).map_err(|source| NetworkError::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// The body of a worker thread: enter the namespace, then run `f` with a netlink handle opened
/// there on a current-thread runtime of the thread's own.
fn worker_body<T, F, Fut>(ns: File, path: PathBuf, f: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Netns {
        path: path.clone(),
        source: e.into(),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetworkError::io("build a runtime for a namespace worker", e))?;
    rt.block_on(async move {
        let nl = Netlink::open()?;
        f(nl.handle.clone()).await
    })
}

fn spawn_worker<T, F, Fut>(
    path: &Path,
    f: F,
    done: impl FnOnce(Result<T, NetworkError>) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let ns = open_netns(path)?;
    let owned = path.to_path_buf();
    std::thread::Builder::new()
        .name("rswarm-netns".to_string())
        .spawn(move || done(worker_body(ns, owned, f)))
        .map_err(|e| NetworkError::io("spawn a network namespace worker thread", e))
}

/// Runs `f` with a netlink handle inside the network namespace at `path`: the socket is made
/// there by [`Netlink::open_in`] (a short-lived thread enters the namespace only to open it);
/// `f` itself runs on the caller's task. Netlink sockets belong to the namespace they were
/// opened in, so the caller's thread and runtime never change namespace.
pub(crate) async fn run_in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let nl = Netlink::open_in(path, false).await?;
    f(nl.handle.clone()).await
}

/// Creates a new, empty network namespace kept alive by a bind mount at `path` (as `ip netns
/// add` does), so a container can be networked before its process exists and started with one
/// runtime call. The namespace is made on a short-lived thread; the caller's is untouched.
/// Blocking (a few hundred microseconds); fails if `path` exists and is a namespace already.
pub fn create_netns(path: &Path) -> Result<(), NetworkError> {
    create_netns_with(path, || Ok(()))
}

/// [`create_netns`], running `setup` on the namespace's thread right after the namespace is
/// made (so `/proc/sys/net` there is the new namespace's). A failing `setup` undoes it all.
pub(crate) fn create_netns_with(
    path: &Path,
    setup: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), NetworkError> {
    let err = |source: std::io::Error| NetworkError::NetnsFile {
        action: "create",
        path: path.to_path_buf(),
        source,
    };
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err)?;
    let target = path.to_path_buf();
    let made = std::thread::Builder::new()
        .name("rswarm-netns-new".to_string())
        .spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            setup()?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .map_err(err)?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Unmounts and deletes a namespace made by [`create_netns`]; the namespace itself goes once
/// nothing else holds it. Idempotent: a missing file is fine.
pub fn remove_netns(path: &Path) -> Result<(), NetworkError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetworkError::NetnsFile {
                action: "remove",
                path: path.to_path_buf(),
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::NetnsFile {
            action: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Brings `lo` up inside the network namespace at `netns` (for mode `none`, in case the runtime
/// didn't). Blocks the calling thread briefly (it joins a worker thread); from async code prefer
/// calling it through `spawn_blocking`.
pub fn setup_loopback(netns: &Path) -> Result<(), NetworkError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = spawn_worker(
        netns,
        |handle| async move { loopback_up(&handle).await },
        move |r| {
            let _ = tx.send(r);
        },
    )?;
    let _ = worker.join();
    rx.recv()
        .map_err(|_| NetworkError::WorkerDied(netns.to_path_buf()))?
}

/// Brings `lo` up in the namespace of `handle`.
pub(crate) async fn loopback_up(handle: &Handle) -> Result<(), NetworkError> {
    let lo = link_index(handle, "lo")
        .await?
        .ok_or_else(|| NetworkError::io("find lo", std::io::ErrorKind::NotFound.into()))?;
    link_up(handle, lo, "lo").await
}

/// What to configure on the container side of a veth.
pub(crate) struct ContainerSide {
    pub(crate) ifname: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) prefix_len: u8,
    pub(crate) gateway: Ipv4Addr,
}

/// Inside the container namespace: address the interface, bring it and `lo` up, and route
/// everything through the gateway. Idempotent.
pub(crate) async fn configure_container_side(
    handle: Handle,
    side: ContainerSide,
) -> Result<(), NetworkError> {
    let idx = link_index(&handle, &side.ifname).await?.ok_or_else(|| {
        NetworkError::io(
            format!("find {} in the container namespace", side.ifname),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    handle
        .address()
        .add(idx, side.ip.into(), side.prefix_len)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            NetworkError::netlink(format!("add {}/{} to eth0", side.ip, side.prefix_len), e)
        })?;
    link_up(&handle, idx, "eth0").await?;
    loopback_up(&handle).await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(side.gateway)
        .output_interface(idx)
        .build();
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, EEXIST) => Ok(()),
        Err(e) => Err(NetworkError::netlink(
            format!("add a default route via {}", side.gateway),
            e,
        )),
    }
}
