//! Service discovery inside task containers, as Docker's: an embedded DNS server at
//! `127.0.0.11:53` (UDP and TCP) in each container's network namespace, and service virtual IPs
//! made of iptables DNAT rules there.
//!
//! - Names ([`zone`], pure): a service name or alias resolves to its VIP, or with endpoint mode
//!   dnsrr to its running tasks; `tasks.<service>` to every running task; `web.3` and
//!   `web.3.<task id>` to that task, on the container's networks only. Other names go to the
//!   host's resolvers ([`Discovery::upstream_from_resolv_conf`]), from the agent's own network
//!   namespace.
//! - Messages ([`message`], pure, hickory-proto's wire format); serving ([`server`], IO).
//! - VIPs ([`vip`], pure): nat chain `RSWARM-VIP`, hooked from `OUTPUT`, DNATs a VIP to one of
//!   the service's running tasks per new connection; applied with `iptables-restore --noflush`
//!   run inside the namespace ([`netns`], IO), again whenever a new table changes a container's
//!   rules.
//!
//! The table is the one the manager sends whole at every change ([`Discovery::set_table`]).

mod message;
mod netns;
mod resolv;
mod server;
mod vip;
mod zone;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use rswarm_api::dispatcher::v1::NetworkTable;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::server::Ctx;
use self::zone::Zone;

pub use self::netns::DNS_ADDR;

/// How often rules that failed to apply are tried again when no new table comes.
const RETRY_PERIOD: Duration = Duration::from_secs(30);
/// How many containers' rules are applied at once after a table change.
const APPLY_CONCURRENCY: usize = 4;

/// Errors of service discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The namespace file can't be opened or entered.
    #[error("cannot enter the network namespace at {}: {source}; check that the container is running (its namespace file must exist) and that the agent runs as root", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// 127.0.0.11:53 can't be bound in the namespace.
    #[error("cannot serve DNS at 127.0.0.11:53 in the network namespace at {}: {source}; check that `lo` is up there and that nothing else listens on that port", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The iptables binaries are missing.
    #[error("{0} not found: install the Debian package `iptables` (service virtual IPs need it)")]
    IptablesMissing(&'static str),
    /// `iptables-restore` (or `iptables -C`) failed.
    #[error("`{program}` failed in the network namespace at {} ({status}): {stderr}; check that the nat table is usable on this host (iptables backend, kernel modules)", path.display())]
    Iptables {
        program: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    /// Some other system call failed.
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The thread working in the namespace ended without an answer.
    #[error("the worker thread for the network namespace at {} died; see the agent's log", .0.display())]
    WorkerDied(PathBuf),
}

/// A table and its names, replaced whole at every new table.
pub(crate) struct Snapshot {
    table: Arc<NetworkTable>,
    zone: Zone,
}

impl Snapshot {
    fn new(table: Arc<NetworkTable>) -> Snapshot {
        Snapshot {
            zone: Zone::from_table(&table),
            table,
        }
    }
}

/// The VIP rules of one container and what was last applied.
struct Rules {
    netns: PathBuf,
    network_ids: Vec<String>,
    state: tokio::sync::Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    /// The rules in the kernel now, as far as is known.
    rules: Option<String>,
    /// Whether nat `OUTPUT` jumps to the chain.
    hooked: bool,
}

impl Rules {
    /// Makes the container's rules those of `table`; nothing to do when they are already.
    async fn sync(&self, table: &NetworkTable) -> Result<(), DiscoveryError> {
        let rules = vip::rules(&vip::vips(table, &self.network_ids));
        let mut state = self.state.lock().await;
        if state.hooked && state.rules.as_deref() == Some(rules.as_str()) {
            return Ok(());
        }
        netns::apply_rules(&self.netns, rules.clone(), !state.hooked).await?;
        state.hooked = true;
        state.rules = Some(rules);
        Ok(())
    }
}

/// One attached container; its tasks end when it is dropped.
struct Attached {
    rules: Arc<Rules>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Attached {
    /// Ends the container's tasks (their sockets close as the runtime drops them).
    fn stop(&self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Ends the container's tasks and waits until they are gone, sockets closed.
    async fn stop_and_wait(mut self) {
        self.stop();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Inner {
    upstream: Arc<[SocketAddr]>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    containers: Mutex<HashMap<String, Attached>>,
    /// Serialises attaches, so one container id is attached once.
    attach: tokio::sync::Mutex<()>,
    cancel: CancellationToken,
}

impl Inner {
    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Service discovery for the task containers of this node. Cheap to clone.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl Discovery {
    /// Discovery forwarding names that aren't the cluster's to `upstream` (the host's resolvers,
    /// see [`upstream_from_resolv_conf`](Self::upstream_from_resolv_conf); none: such names get
    /// SERVFAIL). Spawns the task that re-applies VIP rules when the table changes; it ends with
    /// `cancel`, and so do all containers' servers. Call it within a tokio runtime (without one,
    /// rules follow new tables only when a container is attached).
    pub fn new(upstream: Vec<SocketAddr>, cancel: CancellationToken) -> Discovery {
        let (snapshot, rx) = watch::channel(Arc::new(Snapshot::new(Arc::default())));
        let inner = Arc::new(Inner {
            upstream: upstream.into(),
            snapshot,
            containers: Mutex::new(HashMap::new()),
            attach: tokio::sync::Mutex::new(()),
            cancel,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(reapply_loop(Arc::downgrade(&inner), rx));
            }
            Err(_) => tracing::error!(
                "service discovery was started outside a tokio runtime; VIP rules won't follow table changes"
            ),
        }
        Discovery { inner }
    }

    /// The upstream servers of resolv.conf-style `text`: its `nameserver` addresses on port 53,
    /// in order, at most three, without 127.0.0.11 or IPv6 ones with a zone (loopback ones are
    /// kept: forwarding happens in the agent's namespace).
    pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
        resolv::nameservers(text)
    }

    /// The latest network table (the manager sends it whole at every change). Names answer from
    /// it at once; VIP rules follow in the background.
    pub fn set_table(&self, table: Arc<NetworkTable>) {
        self.inner.snapshot.send_if_modified(|cur| {
            if *cur.table == *table {
                return false;
            }
            *cur = Arc::new(Snapshot::new(table));
            true
        });
    }

    /// Serves DNS at 127.0.0.11:53 (UDP and TCP) inside the network namespace at `netns` (such
    /// as `/proc/PID/ns/net` or a bind-mounted namespace file; `lo` must be up there) for a
    /// container on `network_ids` (its task's networks, in order: a name is looked up on the
    /// first one first), and installs its VIP rules there. The sockets are made on a thread that
    /// entered the namespace and served by tasks of the caller's runtime.
    ///
    /// Idempotent per container id; attaching it again with another namespace or other networks
    /// replaces the former attachment. On error nothing is left serving.
    pub async fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        network_ids: Vec<String>,
    ) -> Result<(), DiscoveryError> {
        let _serial = self.inner.attach.lock().await;
        let former = {
            let mut containers = self.inner.containers();
            match containers.get(container_id) {
                Some(a) if a.rules.netns == netns && a.rules.network_ids == network_ids => {
                    return Ok(());
                }
                Some(_) => containers.remove(container_id),
                None => None,
            }
        };
        if let Some(former) = former {
            former.stop_and_wait().await;
        }
        let (udp, tcp) = netns::bind_dns(netns).await?;
        let io = |source| DiscoveryError::Io {
            what: "register a DNS socket with the runtime",
            source,
        };
        let udp = tokio::net::UdpSocket::from_std(udp).map_err(io)?;
        let tcp = tokio::net::TcpListener::from_std(tcp).map_err(io)?;

        let rules = Arc::new(Rules {
            netns: netns.to_path_buf(),
            network_ids: network_ids.clone(),
            state: tokio::sync::Mutex::default(),
        });
        let table = Arc::clone(&self.inner.snapshot.borrow().table);
        rules.sync(&table).await?;

        let cancel = self.inner.cancel.child_token();
        let ctx = Arc::new(Ctx {
            container_id: container_id.to_string(),
            network_ids,
            snapshot: self.inner.snapshot.subscribe(),
            upstream: Arc::clone(&self.inner.upstream),
        });
        let tasks = vec![
            tokio::spawn(server::serve_udp(udp, Arc::clone(&ctx), cancel.clone())),
            tokio::spawn(server::serve_tcp(tcp, ctx, cancel.clone())),
        ];
        self.inner.containers().insert(
            container_id.to_string(),
            Attached {
                rules: Arc::clone(&rules),
                cancel,
                tasks,
            },
        );
        tracing::debug!(container = container_id, netns = %netns.display(), "serving DNS");

        // A table that came while attaching was applied without this container.
        let latest = Arc::clone(&self.inner.snapshot.borrow().table);
        if !Arc::ptr_eq(&latest, &table) {
            if let Err(e) = rules.sync(&latest).await {
                tracing::warn!(container = container_id, error = %e, "cannot update VIP rules");
            }
        }
        Ok(())
    }

    /// Stops serving the container (its sockets close once its tasks end, at once). Its VIP
    /// rules stay in its namespace, which goes with it. Unknown ids are fine.
    pub fn detach(&self, container_id: &str) {
        if let Some(a) = self.inner.containers().remove(container_id) {
            drop(a);
            tracing::debug!(container = container_id, "stopped serving DNS");
        }
    }
}

/// Re-applies every attached container's VIP rules on each new table (and every
/// [`RETRY_PERIOD`], for those that failed), until the discovery is cancelled or dropped.
async fn reapply_loop(inner: Weak<Inner>, mut rx: watch::Receiver<Arc<Snapshot>>) {
    let Some(cancel) = inner.upgrade().map(|i| i.cancel.clone()) else {
        return;
    };
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
            _ = retry.tick() => {}
        }
        let table = Arc::clone(&rx.borrow_and_update().table);
        let Some(inner) = inner.upgrade() else {
            break;
        };
        let all: Vec<(String, Arc<Rules>)> = inner
            .containers()
            .iter()
            .map(|(id, a)| (id.clone(), Arc::clone(&a.rules)))
            .collect();
        drop(inner);
        futures::stream::iter(all)
            .for_each_concurrent(APPLY_CONCURRENCY, |(id, rules)| {
                let table = Arc::clone(&table);
                async move {
                    if let Err(e) = rules.sync(&table).await {
                        tracing::warn!(container = %id, error = %e, "cannot update VIP rules; will retry");
                    }
                }
            })
            .await;
    }
    if let Some(inner) = inner.upgrade() {
        inner.containers().clear();
    }
    tracing::debug!("service discovery stopped");
}
