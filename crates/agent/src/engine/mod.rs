//! The node's container engine: images ([`rswarm_image`]), root filesystems, OCI specs, the shim and
//! runc ([`rswarm_runtime`]), and local networking ([`rswarm_network`]) put together into
//! containers with a lifecycle, served on the local socket by [`service`].
//!
//! One supervisor task per running container waits for its shim to exit and records the result.
//! Lifecycle operations on one container are serialised by that container's own lock; the table lock
//! is only held to read or swap records, never across IO.
//!
//! Architecture invariant: stopping the agent never stops containers. They are re-adopted from
//! `container.json` + the shim's pid when the agent starts again.

mod connect;
mod exec;
pub(crate) mod parse;
mod record;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rswarm_image::{ImageStore, RegistryConfig};
use rswarm_network::{AttachRequest, Bridge, BridgeConfig, NetworkMode, PortMapping};
use rswarm_runtime::runc::Runc;
use rswarm_runtime::sealed::SealedCopy;
use rswarm_runtime::shim::{self, ShimArgs};
use rswarm_runtime::spec::{
    self, ContainerConfig, EtcFiles, MountKind, NamespaceNet, SpecInputs, SpecMount,
};
use rswarm_runtime::volumes::Volumes;
use rswarm_runtime::{cgroup, rootfs, user};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use exec::ExecCapture;
pub use parse::{human_duration, parse_bytes, MountRequest};
pub use record::{ContainerRecord, OverlayRequest, State, Status};

use crate::statedir::write_atomic;

/// Errors of the engine, each mapped to a gRPC status at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Image(#[from] rswarm_image::ImageError),
    #[error(transparent)]
    Network(#[from] rswarm_network::NetworkError),
    #[error("{0}")]
    Runtime(String),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        EngineError::Invalid(msg.into())
    }

    fn runtime(e: impl std::fmt::Display) -> Self {
        EngineError::Runtime(e.to_string())
    }

    fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl From<EngineError> for tonic::Status {
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::Invalid(_) => tonic::Status::invalid_argument(msg),
            EngineError::NotFound(_) => tonic::Status::not_found(msg),
            EngineError::Conflict(_) => tonic::Status::failed_precondition(msg),
            EngineError::Image(ref ie) => match ie {
                rswarm_image::ImageError::NoSuchImage(_)
                | rswarm_image::ImageError::ManifestNotFound { .. } => {
                    tonic::Status::not_found(msg)
                }
                rswarm_image::ImageError::InvalidReference { .. }
                | rswarm_image::ImageError::AmbiguousId(_) => tonic::Status::invalid_argument(msg),
                rswarm_image::ImageError::InUse { .. }
                | rswarm_image::ImageError::MultipleReferences { .. } => {
                    tonic::Status::failed_precondition(msg)
                }
                rswarm_image::ImageError::Unauthorized { .. } => {
                    tonic::Status::permission_denied(msg)
                }
                _ => tonic::Status::internal(msg),
            },
            _ => tonic::Status::internal(msg),
        }
    }
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How the engine is set up; from the daemon's flags and config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EngineOptions {
    /// Registry mirrors and insecure registries, as Docker's daemon.json has them.
    #[serde(default)]
    pub registries: RegistryConfig,
    /// The OCI runtime binary (runc).
    #[serde(default)]
    pub runtime: Option<PathBuf>,
    /// The shim binary; default: `rswarm-shim` beside the running executable.
    #[serde(default)]
    pub shim: Option<PathBuf>,
    /// The init run as PID 1 in containers (tini-static).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Rotate a container's log when it grows past this many bytes.
    #[serde(default)]
    pub log_max_size: Option<u64>,
    /// Keep this many log files per container.
    #[serde(default)]
    pub log_max_files: Option<u32>,
}

const DEFAULT_INIT: &str = "/usr/bin/tini-static";
const DEFAULT_LOG_MAX_SIZE: u64 = 10 << 20;
const DEFAULT_LOG_MAX_FILES: u32 = 3;
const DEFAULT_STOP_TIMEOUT: u32 = 10;
/// How long after a failed give-back the engine syncs its addresses with the cluster.
const GIVE_BACK_RETRY: Duration = Duration::from_secs(5);

/// How a container's life ended, for waiters.
#[derive(Clone, Debug, Default)]
pub struct ExitReport {
    pub exit_code: i64,
    pub oom_killed: bool,
    pub error: String,
}

struct Entry {
    record: ContainerRecord,
    /// `Some` once the current run has ended; reset to `None` at each start.
    exit: watch::Sender<Option<ExitReport>>,
    /// Serialises lifecycle operations on this container.
    op: Arc<tokio::sync::Mutex<()>>,
}

struct Inner {
    root: PathBuf,
    containers_dir: PathBuf,
    images: ImageStore,
    /// Runs the runtime from `_runtime_copy` when that could be made.
    runc: Runc,
    /// The sealed copy of the runtime binary `runc` runs from (see `rswarm_runtime::sealed`).
    _runtime_copy: Option<SealedCopy>,
    volumes: Volumes,
    bridge: Bridge,
    overlay: rswarm_network::Overlay,
    /// Overlay attachments per VXLAN id, so the network agent never removes a network's devices
    /// while a container uses (or is joining) it.
    overlay_use: OverlayUse,
    /// The embedded DNS and VIP rules of containers on overlay networks.
    discovery: crate::discovery::Discovery,
    /// Set once the node has a session (see [`Engine::set_cluster_networks`]).
    cluster_networks: std::sync::RwLock<Option<Arc<dyn ClusterNetworks>>>,
    /// Held from asking the cluster for an attachment until the record holds it, and while
    /// telling the cluster which attachments the records hold: a sync never gives back an
    /// address that is on its way into a record.
    attach_gate: tokio::sync::Mutex<()>,
    shim: PathBuf,
    init: Option<PathBuf>,
    log_max_size: u64,
    log_max_files: u32,
    cgroup_parent: String,
    table: Mutex<BTreeMap<String, Entry>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// An address on a cluster network for a standalone container, as the cluster gave it.
pub struct ClusterAttachment {
    /// The cluster's id of the attachment (to give it back).
    pub id: String,
    pub overlay: OverlayRequest,
    /// The network is `--internal`: the container gets no bridge.
    pub internal: bool,
}

/// How the engine reaches the cluster for `container run --network NAME` (the node's session).
pub trait ClusterNetworks: Send + Sync + 'static {
    /// An address on attachable network `network` for the container (`ip`, or any free one),
    /// which also answers to `aliases` there (the returned overlay carries them).
    fn attach<'a>(
        &'a self,
        network: &'a str,
        container_id: &'a str,
        container_name: &'a str,
        aliases: &'a [String],
        ip: Option<std::net::Ipv4Addr>,
    ) -> futures::future::BoxFuture<'a, std::result::Result<ClusterAttachment, String>>;
    /// Gives an attachment back (unknown attachments are fine).
    fn detach<'a>(
        &'a self,
        attachment_id: &'a str,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>>;
    /// Tells the cluster which attachments the node holds (`keep`); it gives back the node's
    /// others. Returns how many it gave back.
    fn sync(
        &self,
        keep: Vec<String>,
    ) -> futures::future::BoxFuture<'_, std::result::Result<u32, String>>;
}

/// Counts of overlay attachments per VXLAN id.
#[derive(Default)]
struct OverlayUse(Mutex<HashMap<u32, usize>>);

impl OverlayUse {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, vni: u32) {
        *self.lock().entry(vni).or_default() += 1;
    }

    fn remove(&self, vni: u32) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(&vni) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&vni);
            }
        }
    }

    fn in_use(&self, vni: u32) -> bool {
        self.lock().contains_key(&vni)
    }

    /// Counts a use for as long as the guard lives (an attach in progress).
    fn hold(&self, vni: u32) -> UseGuard<'_> {
        self.add(vni);
        UseGuard { uses: self, vni }
    }
}

struct UseGuard<'a> {
    uses: &'a OverlayUse,
    vni: u32,
}

impl Drop for UseGuard<'_> {
    fn drop(&mut self) {
        self.uses.remove(self.vni);
    }
}

/// A handle on the node's engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn runtime_path(options: &EngineOptions) -> PathBuf {
    options
        .runtime
        .clone()
        .unwrap_or_else(|| PathBuf::from("runc"))
}

fn shim_path(options: &EngineOptions) -> PathBuf {
    match options.shim.clone() {
        Some(s) => s,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("rswarm-shim")))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/rswarm-shim")),
    }
}

fn init_path(options: &EngineOptions) -> PathBuf {
    options
        .init
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INIT))
}

/// `name` as the shell would find it: a path as given, else the first match in `$PATH`.
fn find_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Checks that the runtime, the shim and the init exist, before a node is created on this host.
pub fn preflight(options: &EngineOptions) -> Result<()> {
    let runtime = runtime_path(options);
    if find_in_path(&runtime).is_none() {
        return Err(EngineError::runtime(format!(
            "the container runtime {} was not found; install the Debian package `runc` (apt-get install runc) or pass --runtime PATH",
            runtime.display()
        )));
    }
    let shim = shim_path(options);
    if !shim.is_file() {
        return Err(EngineError::runtime(format!(
            "the container shim {} is missing; install rswarm-shim beside the rswarm binaries (deploy/install.sh does)",
            shim.display()
        )));
    }
    let init = init_path(options);
    if !init.is_file() {
        return Err(EngineError::runtime(format!(
            "the container init {} is missing; install the Debian package `tini` (apt-get install tini) or pass --init-path",
            init.display()
        )));
    }
    Ok(())
}

/// The runtime driver, run from a sealed in-memory copy of the binary when one can be made (runc
/// then skips cloning itself at every container start), else from the binary itself. The copy is
/// run through a link `<state>/bin/<binary's name>`, so that its processes carry that name.
async fn open_runtime(
    options: &EngineOptions,
    state_dir: &Path,
) -> Result<(Runc, Option<SealedCopy>)> {
    let runc_root = state_dir.join("runc");
    let configured = runtime_path(options);
    let binary = find_in_path(&configured).unwrap_or(configured);
    match SealedCopy::of(&binary) {
        Ok(copy) => {
            let bin = state_dir.join("bin");
            let link = bin.join(binary.file_name().unwrap_or("runc".as_ref()));
            let exec_path = match std::fs::create_dir_all(&bin).and_then(|()| copy.link_at(&link)) {
                Ok(()) => link,
                Err(e) => {
                    tracing::warn!(error = %e, link = %link.display(), "cannot link to the sealed copy of the container runtime; its processes will be named after a descriptor number");
                    copy.path().to_path_buf()
                }
            };
            let runc = Runc::new(exec_path, &runc_root);
            match runc.check().await {
                Ok(version) => {
                    tracing::info!(%version, binary = %binary.display(), "container runtime (run from a sealed copy)");
                    return Ok((runc, Some(copy)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, binary = %binary.display(), "the sealed copy of the container runtime does not run; running the binary itself")
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, binary = %binary.display(), "no sealed copy of the container runtime; running the binary itself")
        }
    }
    let runc = Runc::new(binary, &runc_root);
    let version = runc.check().await.map_err(EngineError::runtime)?;
    tracing::info!(%version, "container runtime");
    Ok((runc, None))
}

impl Engine {
    /// Opens the engine in `state_dir`: checks the runtime, shim and init, then re-adopts the
    /// containers a previous run left (running ones keep running).
    pub async fn open(
        state_dir: &Path,
        options: EngineOptions,
        cancel: CancellationToken,
    ) -> Result<Engine> {
        preflight(&options)?;
        let (runc, runtime_copy) = open_runtime(&options, state_dir).await?;
        let shim = shim_path(&options);
        let init = init_path(&options);
        let root = state_dir.to_path_buf();
        let containers_dir = root.join("containers");
        for d in [&containers_dir, &root.join("runc")] {
            std::fs::create_dir_all(d).map_err(|e| EngineError::io("create", d, e))?;
        }
        let images = ImageStore::open(&root.join("images"), options.registries.clone())?;
        let volumes = Volumes::open(root.join("volumes")).map_err(EngineError::runtime)?;
        let bridge_config = BridgeConfig::for_state_dir(&root);
        // The bridge's hash tells two agents' overlay devices apart in one namespace too.
        let overlay =
            rswarm_network::Overlay::new(&bridge_config.bridge_name[3..7], root.join("overlay"))?;
        let bridge = Bridge::new(bridge_config).await?;
        let cgroup_parent = format!("/{}", cgroup::parent_for_state_dir(&root));
        let engine = Engine {
            inner: Arc::new(Inner {
                root,
                containers_dir,
                images,
                runc,
                _runtime_copy: runtime_copy,
                volumes,
                bridge,
                overlay,
                overlay_use: OverlayUse::default(),
                cluster_networks: std::sync::RwLock::new(None),
                attach_gate: tokio::sync::Mutex::new(()),
                discovery: crate::discovery::Discovery::new(
                    crate::discovery::Discovery::upstream_from_resolv_conf(
                        &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    ),
                    cancel.clone(),
                ),
                shim,
                init: Some(init),
                log_max_size: options.log_max_size.unwrap_or(DEFAULT_LOG_MAX_SIZE),
                log_max_files: options.log_max_files.unwrap_or(DEFAULT_LOG_MAX_FILES),
                cgroup_parent,
                table: Mutex::new(BTreeMap::new()),
                tasks: TaskTracker::new(),
                cancel,
            }),
        };
        engine.recover().await?;
        // As dockerd makes docker0 at start: the bridge and its rules are ready before the
        // first container needs them (an attach meanwhile waits for this).
        let bridge = engine.inner.bridge.clone();
        engine.inner.tasks.spawn(async move {
            if let Err(e) = bridge.prepare().await {
                tracing::warn!(error = %e, "cannot set up the bridge network yet; the first bridge container will try again");
            }
        });
        Ok(engine)
    }

    /// The image store, for the images service.
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.inner.containers_dir.join(id)
    }

    fn save(&self, record: &ContainerRecord) -> Result<()> {
        let path = self.dir(&record.id).join("container.json");
        let bytes = serde_json::to_vec_pretty(record).map_err(EngineError::runtime)?;
        write_atomic(&path, &bytes, 0o600).map_err(EngineError::runtime)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn lookup(&self, key: &str) -> Result<String> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let table = self.table();
        if table.contains_key(key) {
            return Ok(key.to_string());
        }
        if let Some(e) = table.values().find(|e| e.record.name == key) {
            return Ok(e.record.id.clone());
        }
        let matches: Vec<&String> = if key.is_empty() {
            Vec::new()
        } else {
            table.keys().filter(|id| id.starts_with(key)).collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("no such container: {key}"))),
            _ => Err(EngineError::Invalid(format!(
                "multiple containers match {key:?}: give more of the id"
            ))),
        }
    }

    /// A copy of a container's record.
    pub fn record(&self, key: &str) -> Result<ContainerRecord> {
        let id = self.lookup(key)?;
        self.table()
            .get(&id)
            .map(|e| e.record.clone())
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {key}")))
    }

    /// The node's bridge (the `bridge` network) and its gateway address.
    pub fn bridge_config(&self) -> (rswarm_network::BridgeConfig, std::net::Ipv4Addr) {
        (
            self.inner.bridge.config().clone(),
            self.inner.bridge.gateway(),
        )
    }

    /// Every container (running only unless `all`), newest first.
    pub fn list(&self, all: bool) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = self
            .table()
            .values()
            .filter(|e| all || e.record.is_running())
            .map(|e| e.record.clone())
            .collect();
        v.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        v
    }

    /// The directory holding a container's bundle and logs.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir(id)
    }

    fn op_lock(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>> {
        self.table()
            .get(id)
            .map(|e| e.op.clone())
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))
    }

    fn update<T>(&self, id: &str, f: impl FnOnce(&mut ContainerRecord) -> T) -> Result<T> {
        let (out, rec) = {
            let mut table = self.table();
            let entry = table
                .get_mut(id)
                .ok_or_else(|| EngineError::NotFound(format!("no such container: {id}")))?;
            let out = f(&mut entry.record);
            (out, entry.record.clone())
        };
        self.save(&rec)?;
        Ok(out)
    }

    /// Whether any container (in any state) uses the image `image_id`.
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.table().values().any(|e| e.record.image_id == image_id)
    }

    /// A receiver that yields `Some` once the container's current run has ended.
    pub fn exit_watch(&self, key: &str) -> Result<watch::Receiver<Option<ExitReport>>> {
        let id = self.lookup(key)?;
        self.table()
            .get(&id)
            .map(|e| e.exit.subscribe())
            .ok_or_else(|| EngineError::NotFound(format!("no such container: {key}")))
    }

    // ---- create -------------------------------------------------------------------------------

    /// Creates a container from a local image. Nothing is left behind on error.
    pub async fn create(&self, req: CreateRequest) -> Result<ContainerRecord> {
        let image = self.inner.images.resolve(&req.image)?.ok_or_else(|| {
            EngineError::NotFound(format!(
                "no such image: {}; pull it first with `rswarm image pull {}`",
                req.image, req.image
            ))
        })?;
        // A name that is no local mode is a cluster network (attachable overlays).
        let cluster_network = (!req.network.is_empty()
            && req.network.parse::<NetworkMode>().is_err()
            && !req.network.contains(':'))
        .then(|| req.network.clone());
        let network_aliases = parse::network_aliases(&req.network_aliases)?;
        if !network_aliases.is_empty() && cluster_network.is_none() {
            return Err(EngineError::invalid(
                "network-scoped aliases are supported only for containers on cluster networks (--network NAME)",
            ));
        }
        let ip = parse::user_ip(&req.ip)?;
        if ip.is_some() && cluster_network.is_none() {
            return Err(EngineError::invalid(
                "user specified IP address is supported on cluster networks only (--network NAME)",
            ));
        }
        let network: NetworkMode = if req.network.is_empty() || cluster_network.is_some() {
            NetworkMode::Bridge
        } else {
            req.network.parse()?
        };
        let mut ports: Vec<PortMapping> = Vec::new();
        for p in &req.publish {
            ports.extend(rswarm_network::parse_publish(p)?);
        }
        if !req.overlays.is_empty() && !matches!(network, NetworkMode::Bridge | NetworkMode::None) {
            return Err(EngineError::invalid(format!(
                "overlay networks need a network namespace of the container's own; --network {network} shares another"
            )));
        }
        if !ports.is_empty() && network != NetworkMode::Bridge {
            return Err(EngineError::invalid(format!(
                "published ports need the bridge network; --network {network} shares another namespace (drop -p)"
            )));
        }
        let mut mounts = Vec::new();
        for v in &req.volumes {
            mounts.push(parse::parse_volume(v, || random_hex(32))?);
        }
        for t in &req.tmpfs {
            mounts.push(parse::parse_tmpfs(t)?);
        }
        let mut seen = std::collections::HashSet::new();
        for m in &mounts {
            if !seen.insert(m.target().to_string()) {
                return Err(EngineError::invalid(format!(
                    "duplicate mount point: {}",
                    m.target()
                )));
            }
            if let MountRequest::Bind { source, .. } = m {
                if !source.exists() {
                    return Err(EngineError::invalid(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {}",
                        source.display()
                    )));
                }
            }
        }
        let id = random_hex(32);
        let name = match req.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                parse::check_name(n)?;
                n.to_string()
            }
            None => {
                use rand::Rng;
                let mut rng = rand::rng();
                loop {
                    let n = parse::random_name(
                        rng.random::<u32>() as usize,
                        rng.random::<u32>() as usize,
                    );
                    if !self.table().values().any(|e| e.record.name == n) {
                        break n;
                    }
                }
            }
        };
        let mut config = req.config;
        if config.hostname.is_empty() {
            config.hostname = id[..12].to_string();
        }
        if config.stop_signal.is_none() {
            config.stop_signal = image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.stop_signal().clone());
        }
        let command = spec::command_line(
            image.config.config().as_ref(),
            config.entrypoint.as_deref(),
            &config.cmd,
        )
        .map_err(|e| EngineError::invalid(e.to_string()))?;
        // Validates limits and mounts before anything is written.
        spec::validate(&config).map_err(|e| EngineError::invalid(e.to_string()))?;
        let mut overlays = req.overlays;
        let mut network = network;
        // Until the record is in the table (see `attach_gate`).
        let mut gate = None;
        if let Some(net) = &cluster_network {
            if self.table().values().any(|e| e.record.name == name) {
                return Err(EngineError::Conflict(format!(
                    "the container name \"/{name}\" is already in use; remove that container or choose another name"
                )));
            }
            let cluster = self.cluster_networks().ok_or_else(|| {
                EngineError::NotFound(format!(
                    "network {net} not found: this node is not part of a cluster yet"
                ))
            })?;
            gate = Some(self.inner.attach_gate.lock().await);
            let a = cluster
                .attach(net, &id, &name, &network_aliases, ip)
                .await
                .map_err(EngineError::invalid)?;
            if a.internal {
                network = NetworkMode::None;
            }
            if !ports.is_empty() && a.internal {
                self.give_back_ids(vec![a.id]);
                return Err(EngineError::invalid(format!(
                    "network {net} is internal: it has no way in or out, so -p cannot publish ports"
                )));
            }
            overlays.push(OverlayRequest {
                cluster_attachment: Some(a.id),
                ..a.overlay
            });
        }
        let record = ContainerRecord {
            id: id.clone(),
            name: name.clone(),
            image: req.image.clone(),
            image_id: image.id.clone(),
            created: now(),
            config,
            command,
            network,
            ports,
            mounts,
            auto_remove: req.auto_remove,
            stop_timeout: req.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
            state: State {
                status: Status::Created,
                pid: 0,
                shim_pid: 0,
                exit_code: 0,
                oom_killed: false,
                error: String::new(),
                started_at: 0,
                finished_at: 0,
            },
            attachment: None,
            labels: req.labels,
            overlays,
            overlay_attachments: Vec::new(),
            network_attachment: None,
        };
        {
            let mut table = self.table();
            if table.values().any(|e| e.record.name == name) {
                drop(table);
                self.give_back(&record);
                return Err(EngineError::Conflict(format!(
                    "the container name \"/{name}\" is already in use; remove that container or choose another name"
                )));
            }
            table.insert(
                id.clone(),
                Entry {
                    record: record.clone(),
                    exit: watch::Sender::new(None),
                    op: Arc::new(tokio::sync::Mutex::new(())),
                },
            );
        }
        drop(gate);
        if let Err(e) = self.prepare_dir(&record) {
            self.table().remove(&id);
            self.destroy_dir(&id);
            self.give_back(&record);
            return Err(e);
        }
        tracing::info!(id = %record.short_id(), name = %record.name, image = %record.image, "container created");
        Ok(record)
    }

    fn prepare_dir(&self, record: &ContainerRecord) -> Result<()> {
        let dir = self.dir(&record.id);
        for sub in ["upper", "work", "rootfs"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| EngineError::io("create", &p, e))?;
        }
        self.save(record)
    }

    /// Unmounts and removes a container's directory; tolerant of partial state.
    fn destroy_dir(&self, id: &str) {
        let dir = self.dir(id);
        release_netns(&dir.join("netns"));
        let rootfs_dir = dir.join("rootfs");
        if let Err(e) = rootfs::unmount(&rootfs_dir) {
            tracing::warn!(id, error = %e, "cannot unmount the root filesystem");
        }
        if rootfs::is_mounted(&rootfs_dir) {
            tracing::error!(
                id,
                "root filesystem still mounted; keeping {}",
                dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(id, error = %e, "cannot remove the container directory");
            }
        }
    }

    // ---- start --------------------------------------------------------------------------------

    /// Starts a created or exited container.
    pub async fn start(&self, key: &str) -> Result<()> {
        let id = self.lookup(key)?;
        let lock = self.op_lock(&id)?;
        let _guard = lock.lock().await;
        let record = self.record(&id)?;
        if record.is_running() {
            return Ok(());
        }
        match self.start_locked(&record).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = e.to_string();
                let _ = self.update(&id, |r| r.state.error = msg);
                Err(e)
            }
        }
    }

    async fn start_locked(&self, record: &ContainerRecord) -> Result<()> {
        let t0 = std::time::Instant::now();
        let id = record.id.clone();
        let dir = self.dir(&id);
        let image = self
            .inner
            .images
            .resolve(&record.image_id)?
            .ok_or_else(|| {
                EngineError::NotFound(format!(
                    "the image {} of this container was removed; pull it again",
                    record.image
                ))
            })?;
        let rootfs_dir = dir.join("rootfs");
        if !rootfs::is_mounted(&rootfs_dir) {
            let layers = self.inner.images.layer_dirs(&image)?;
            rootfs::mount_overlay(&layers, &dir.join("upper"), &dir.join("work"), &rootfs_dir)
                .map_err(EngineError::runtime)?;
        }
        let t_mount = t0.elapsed();
        let (passwd, group) = user::read_image_user_files(&rootfs_dir);
        let resolved = user::resolve_user(
            record.config.user.as_deref(),
            passwd.as_deref(),
            group.as_deref(),
        )
        .map_err(|e| EngineError::invalid(e.to_string()))?;

        // A bridge container gets a namespace made and wired beforehand (see below).
        let own_netns = dir.join("netns");
        let own = record.network == NetworkMode::Bridge || !record.overlays.is_empty();
        let (net, shared_etc) = match &record.network {
            NetworkMode::None | NetworkMode::Bridge if own => {
                (NamespaceNet::Join(own_netns.clone()), None)
            }
            NetworkMode::None | NetworkMode::Bridge => (NamespaceNet::New, None),
            NetworkMode::Host => (NamespaceNet::Host, None),
            NetworkMode::Container(other) => {
                let other = self.record(other)?;
                if !other.is_running() {
                    return Err(EngineError::Conflict(format!(
                        "cannot join the network of container {}: it is not running",
                        other.name
                    )));
                }
                (
                    NamespaceNet::Join(PathBuf::from(format!("/proc/{}/ns/net", other.state.pid))),
                    Some(self.dir(&other.id)),
                )
            }
        };

        let mut spec_mounts = Vec::new();
        for m in &record.mounts {
            match m {
                MountRequest::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    if !source.exists() {
                        return Err(EngineError::invalid(format!(
                            "bind source path does not exist: {}",
                            source.display()
                        )));
                    }
                    spec_mounts.push(SpecMount {
                        destination: target.clone(),
                        kind: MountKind::Bind {
                            source: source.clone(),
                            read_only: *read_only,
                        },
                    });
                }
                MountRequest::Volume {
                    name,
                    target,
                    read_only,
                } => {
                    let (data, created) = self
                        .inner
                        .volumes
                        .ensure(name)
                        .map_err(EngineError::runtime)?;
                    if created {
                        rswarm_runtime::volumes::copy_up_from_rootfs(&rootfs_dir, target, &data)
                            .map_err(EngineError::runtime)?;
                    }
                    spec_mounts.push(SpecMount {
                        destination: target.clone(),
                        kind: MountKind::Bind {
                            source: data,
                            read_only: *read_only,
                        },
                    });
                }
                MountRequest::Tmpfs { target, size, mode } => spec_mounts.push(SpecMount {
                    destination: target.clone(),
                    kind: MountKind::Tmpfs {
                        size: *size,
                        mode: *mode,
                    },
                }),
            }
        }

        // /etc/hosts, /etc/hostname, /etc/resolv.conf: our own files, or the joined container's.
        let etc_dir = shared_etc.unwrap_or_else(|| dir.clone());
        if etc_dir == dir {
            write_etc_files(
                &dir,
                &record.config.hostname,
                &record.network,
                !record.overlays.is_empty(),
            )?;
        }
        let t_etc = t0.elapsed();
        let hosts = etc_dir.join("hosts");
        let hostname_file = etc_dir.join("hostname");
        let resolv = etc_dir.join("resolv.conf");
        let cgroups_path = format!("{}/{}", self.inner.cgroup_parent, id);
        let oci = spec::build_spec(&SpecInputs {
            config: &record.config,
            image: image.config.config().as_ref(),
            rootfs: &rootfs_dir,
            user: &resolved,
            net,
            mounts: &spec_mounts,
            cgroups_path,
            init_binary: self.inner.init.as_deref(),
            etc_files: Some(EtcFiles {
                hosts: &hosts,
                hostname: &hostname_file,
                resolv_conf: &resolv,
            }),
        })
        .map_err(|e| EngineError::invalid(e.to_string()))?;
        let config_json = serde_json::to_vec_pretty(&oci).map_err(EngineError::runtime)?;
        // Rewritten at every start, so a crash can lose it harmlessly: no fsync on this path.
        write_replace(&dir.join("config.json"), &config_json)?;
        let _ = std::fs::remove_file(dir.join("exit.json"));
        let t_config = t0.elapsed();
        // A leftover runc container of an earlier run (agent crash) would make create fail.
        if self.inner.runc.root().join(&id).exists() {
            let _ = self.inner.runc.delete(&id, true).await;
        }
        // The bridge's veth goes into a namespace made beforehand, so every mode starts with one
        // runc call (`runc run --detach`), and a failed attach costs no runc work.
        let attachment = match self.attach_network(record, &own_netns).await {
            Ok(a) => a,
            Err(e) => {
                release_netns(&own_netns);
                return Err(e);
            }
        };
        let t_attach = t0.elapsed();
        let overlays = match self
            .attach_overlays(record, &own_netns, attachment.is_some())
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.undo_network(&id, attachment.as_ref(), &[], &own_netns)
                    .await;
                return Err(e);
            }
        };

        if !record.overlays.is_empty() {
            let networks = record
                .overlays
                .iter()
                .map(|o| o.network_id.clone())
                .collect();
            if let Err(e) = self.inner.discovery.attach(&id, &own_netns, networks).await {
                self.undo_network(&id, attachment.as_ref(), &overlays, &own_netns)
                    .await;
                return Err(EngineError::runtime(e));
            }
        }

        // The container's own addresses under its hostname, written before it starts (hosts is
        // bind-mounted, so it would see a later rewrite only after its first look): overlay
        // addresses first, as Docker's tasks list theirs, then the bridge's.
        if attachment.is_some() || !overlays.is_empty() {
            let ips: Vec<std::net::Ipv4Addr> = overlays
                .iter()
                .map(|o| o.ip)
                .chain(attachment.as_ref().map(|a| a.ip))
                .collect();
            if let Err(e) = write_hosts(&dir.join("hosts"), &record.config.hostname, &ips) {
                self.undo_network(&id, attachment.as_ref(), &overlays, &own_netns)
                    .await;
                return Err(e);
            }
        }

        let args = ShimArgs {
            id: id.clone(),
            bundle: dir.clone(),
            runc: self.inner.runc.binary().to_path_buf(),
            runc_root: self.inner.runc.root().to_path_buf(),
            log_max_size: self.inner.log_max_size,
            log_max_files: self.inner.log_max_files,
            start: true,
            detached: false,
        };
        let t_prepared = t0.elapsed();
        let started = match shim::spawn_shim(&self.inner.shim, &args).await {
            Ok(s) => s,
            Err(e) => {
                self.undo_network(&id, attachment.as_ref(), &overlays, &own_netns)
                    .await;
                return Err(EngineError::runtime(e));
            }
        };
        let t_shim = t0.elapsed();
        {
            let mut table = self.table();
            if let Some(entry) = table.get_mut(&id) {
                entry.exit.send_replace(None);
                let r = &mut entry.record;
                r.state = State {
                    status: Status::Running,
                    pid: started.pid,
                    shim_pid: started.shim_pid,
                    exit_code: 0,
                    oom_killed: false,
                    error: String::new(),
                    started_at: now(),
                    finished_at: 0,
                };
                r.attachment = attachment;
                r.overlay_attachments = overlays;
            }
        }
        let rec = self.record(&id)?;
        self.save(&rec)?;
        tracing::debug!(
            mount = ?t_mount,
            etc = ?t_etc,
            config = ?t_config,
            attach = ?t_attach,
            prepared = ?t_prepared,
            shim = ?t_shim,
            total = ?t0.elapsed(),
            "start timings"
        );
        self.supervise(id.clone(), started.shim_pid);
        tracing::info!(id = %rec.short_id(), pid = started.pid, "container started");
        Ok(())
    }

    /// Puts the container's namespace at `netns` on each of its overlay networks (`eth1`, … after
    /// the bridge's `eth0`; from `eth0` without it). Undoes what it did on failure.
    async fn attach_overlays(
        &self,
        record: &ContainerRecord,
        netns: &Path,
        bridged: bool,
    ) -> Result<Vec<rswarm_network::OverlayAttachment>> {
        if record.overlays.is_empty() {
            return Ok(Vec::new());
        }
        if !bridged {
            // Internal networks only: the namespace is ours to make.
            release_netns(netns);
            rswarm_network::create_netns(netns)?;
        }
        let first = usize::from(bridged);
        let mut done = Vec::with_capacity(record.overlays.len());
        for (i, o) in record.overlays.iter().enumerate() {
            let ifname = format!("eth{}", first + i);
            let _use = self.inner.overlay_use.hold(o.vni);
            match self
                .inner
                .overlay
                .attach(&o.network(), &record.id, netns, &ifname, o.ip)
                .await
            {
                Ok(a) => done.push(a),
                Err(e) => {
                    self.detach_overlays(&record.id, &done).await;
                    return Err(EngineError::invalid(format!(
                        "cannot join network {}: {e}",
                        o.name
                    )));
                }
            }
        }
        for a in &done {
            self.inner.overlay_use.add(a.vni);
        }
        Ok(done)
    }

    /// Undoes a start's network work when the start fails: DNS, overlay and bridge interfaces,
    /// and the namespace made for the container.
    async fn undo_network(
        &self,
        id: &str,
        bridge: Option<&rswarm_network::Attachment>,
        overlays: &[rswarm_network::OverlayAttachment],
        netns: &Path,
    ) {
        self.inner.discovery.detach(id);
        self.detach_overlays(id, overlays).await;
        if let Some(a) = bridge {
            let _ = self.inner.bridge.detach(a).await;
        }
        release_netns(netns);
    }

    async fn detach_overlays(&self, id: &str, atts: &[rswarm_network::OverlayAttachment]) {
        for a in atts {
            if let Err(e) = self.inner.overlay.detach(a).await {
                tracing::warn!(id, vni = a.vni, error = %e, "cannot leave an overlay network");
            }
            self.inner.overlay_use.remove(a.vni);
        }
    }

    /// For the bridge: makes the container's namespace at `netns` and attaches it.
    async fn attach_network(
        &self,
        record: &ContainerRecord,
        netns: &Path,
    ) -> Result<Option<rswarm_network::Attachment>> {
        match record.network {
            NetworkMode::Bridge => {
                // Left over by a crash between create and remove: start afresh.
                release_netns(netns);
                rswarm_network::create_netns(netns)?;
                let (used_ips, used_host_ports) = {
                    let table = self.table();
                    let mut ips = Vec::new();
                    let mut ports = Vec::new();
                    for e in table.values().filter(|e| e.record.is_running()) {
                        if let Some(a) = &e.record.attachment {
                            ips.push(a.ip);
                            ports.extend(a.ports.iter().map(|p| (p.protocol, p.host_port)));
                        }
                    }
                    (ips, ports)
                };
                let att = self
                    .inner
                    .bridge
                    .attach(AttachRequest {
                        container_id: record.id.clone(),
                        netns: netns.to_path_buf(),
                        ports: record.ports.clone(),
                        used_ips,
                        used_host_ports,
                    })
                    .await?;
                Ok(Some(att))
            }
            // runc brings `lo` up in a namespace it creates.
            NetworkMode::None | NetworkMode::Host | NetworkMode::Container(_) => Ok(None),
        }
    }

    /// Waits for the shim of a running container, then records the exit.
    fn supervise(&self, id: String, shim_pid: i32) {
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                r = shim::wait_shim(shim_pid) => {
                    if let Err(e) = r {
                        tracing::warn!(id = %id, error = %e, "cannot wait for the shim; polling");
                        while shim::shim_alive(shim_pid, &id) {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                // The agent stops: the container keeps running; the next agent re-adopts it.
                () = engine.inner.cancel.cancelled() => return,
            }
            engine.on_exit(&id).await;
        });
    }

    async fn on_exit(&self, id: &str) {
        let Ok(lock) = self.op_lock(id) else { return };
        let _guard = lock.lock().await;
        self.finish_run(id).await;
        let auto_remove = self.record(id).map(|r| r.auto_remove).unwrap_or(false);
        if auto_remove {
            self.remove_locked(id);
        }
    }

    /// Records how the current run ended and releases its runtime resources. Caller holds the op
    /// lock.
    async fn finish_run(&self, id: &str) {
        let dir = self.dir(id);
        let (exit_code, signal_err, oom) = match shim::read_exit(&dir) {
            Ok(Some(x)) => (i64::from(x.exit_code), String::new(), x.oom_killed),
            Ok(None) => (
                255,
                "the container's shim ended without recording an exit status".to_string(),
                false,
            ),
            Err(e) => (255, format!("cannot read the exit status: {e}"), false),
        };
        let record = self.record(id).ok();
        let attachment = record.as_ref().and_then(|r| r.attachment.clone());
        if let Some(a) = &attachment {
            if let Err(e) = self.inner.bridge.detach(a).await {
                tracing::warn!(id, error = %e, "cannot release the container's network");
            }
        }
        let overlays = record.map(|r| r.overlay_attachments).unwrap_or_default();
        self.inner.discovery.detach(id);
        self.detach_overlays(id, &overlays).await;
        if let Err(e) = self.inner.runc.delete(id, true).await {
            tracing::warn!(id, error = %e, "runc delete failed");
        }
        release_netns(&dir.join("netns"));
        let report = ExitReport {
            exit_code,
            oom_killed: oom,
            error: signal_err.clone(),
        };
        let _ = self.update(id, |r| {
            r.state.status = Status::Exited;
            r.state.exit_code = exit_code;
            r.state.oom_killed = oom;
            r.state.error = signal_err;
            r.state.finished_at = now();
            r.state.pid = 0;
            r.state.shim_pid = 0;
            r.overlay_attachments.clear();
        });
        if let Some(e) = self.table().get(id) {
            e.exit.send_replace(Some(report));
        }
        tracing::info!(id = %&id[..12.min(id.len())], exit_code, oom_killed = oom, "container exited");
    }

    // ---- stop / remove ------------------------------------------------------------------------

    /// Sends the stop signal, waits `timeout` (or the container's own), then SIGKILL.
    pub async fn stop(&self, key: &str, timeout: Option<u32>) -> Result<()> {
        let id = self.lookup(key)?;
        let record = self.record(&id)?;
        if !record.is_running() {
            return Ok(());
        }
        let mut exit = self.exit_watch(&id)?;
        let signal = record
            .config
            .stop_signal
            .clone()
            .unwrap_or_else(|| "TERM".to_string());
        let timeout = Duration::from_secs(u64::from(timeout.unwrap_or(record.stop_timeout)));
        if let Err(e) = self.inner.runc.kill(&id, &signal, false).await {
            tracing::debug!(id = %id, error = %e, "stop signal not delivered");
        }
        let exited = matches!(
            tokio::time::timeout(timeout, exit.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        );
        if !exited {
            tracing::info!(id = %record.short_id(), "did not stop in time; sending SIGKILL");
            let _ = self.inner.runc.kill(&id, "KILL", true).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(30), exit.wait_for(Option::is_some)).await;
        }
        Ok(())
    }

    /// Removes a container; a running one only with `force` (it is killed first).
    pub async fn remove(&self, key: &str, force: bool) -> Result<()> {
        let id = self.lookup(key)?;
        let record = self.record(&id)?;
        if record.is_running() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "you cannot remove a running container {}: stop the container before removing it or use --force",
                    record.short_id()
                )));
            }
            let mut exit = self.exit_watch(&id)?;
            let _ = self.inner.runc.kill(&id, "KILL", true).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(30), exit.wait_for(Option::is_some)).await;
        }
        let lock = self.op_lock(&id)?;
        let _guard = lock.lock().await;
        if self.record(&id)?.is_running() {
            return Err(EngineError::Conflict(format!(
                "container {} is still running after SIGKILL; try again",
                record.short_id()
            )));
        }
        self.remove_locked(&id);
        Ok(())
    }

    fn remove_locked(&self, id: &str) {
        self.destroy_dir(id);
        if let Some(e) = self.table().remove(id) {
            self.give_back(&e.record);
        }
        tracing::info!(id = %&id[..12.min(id.len())], "container removed");
    }

    /// `rswarm leave`: the node's state goes away, so its containers must too.
    pub async fn remove_all(&self) {
        let ids: Vec<String> = self.table().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id, true).await {
                tracing::warn!(id = %id, error = %e, "cannot remove container");
            }
        }
    }

    /// Removes what the engine made outside its state dir (when the node leaves): the bridge, its
    /// NAT rules and chains, and the (empty) cgroup parent of its containers.
    pub async fn teardown(&self) {
        if let Err(e) = self.inner.bridge.teardown().await {
            tracing::warn!(error = %e, "cannot remove the bridge network");
        }
        match self.inner.overlay.networks().await {
            Ok(vnis) => {
                for vni in vnis {
                    if let Err(e) = self.inner.overlay.remove_network(vni).await {
                        tracing::warn!(vni, error = %e, "cannot remove an overlay network's devices");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the overlay networks"),
        }
        let parent = self.inner.cgroup_parent.trim_start_matches('/');
        for d in cgroup::hierarchy_dirs(parent) {
            if let Err(e) = std::fs::remove_dir(&d) {
                tracing::warn!(dir = %d.display(), error = %e, "cannot remove the cgroup parent");
            }
        }
    }

    /// Waits for the supervisors of exits already under way (not for running containers).
    pub async fn shutdown(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    // ---- recovery -----------------------------------------------------------------------------

    async fn recover(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.inner.containers_dir) {
            Ok(e) => e,
            Err(e) => return Err(EngineError::io("read", &self.inner.containers_dir, e)),
        };
        let mut running = Vec::new();
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            let record: Option<ContainerRecord> = std::fs::read(dir.join("container.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(mut record) = record else {
                tracing::warn!(id = %id, "removing a container directory without a record (interrupted create)");
                self.destroy_dir(&id);
                continue;
            };
            record.migrate();
            if record.is_running() {
                if shim::shim_alive(record.state.shim_pid, &id) {
                    running.push((id.clone(), record.state.shim_pid));
                } else {
                    dead.push(id.clone());
                }
            }
            self.table().insert(
                id,
                Entry {
                    record,
                    exit: watch::Sender::new(None),
                    op: Arc::new(tokio::sync::Mutex::new(())),
                },
            );
        }
        let live: Vec<rswarm_network::Attachment> = self
            .table()
            .values()
            .filter(|e| running.iter().any(|(id, _)| *id == e.record.id))
            .filter_map(|e| e.record.attachment.clone())
            .collect();
        if !live.is_empty() || !dead.is_empty() {
            self.inner.bridge.restore(&live).await?;
        }
        for e in self.table().values() {
            if running.iter().any(|(id, _)| *id == e.record.id) {
                for a in &e.record.overlay_attachments {
                    self.inner.overlay_use.add(a.vni);
                }
            }
        }
        for (id, _) in &running {
            let Ok(r) = self.record(id) else { continue };
            if r.overlays.is_empty() {
                continue;
            }
            let networks = r.overlays.iter().map(|o| o.network_id.clone()).collect();
            let netns = self.dir(id).join("netns");
            if let Err(e) = self.inner.discovery.attach(id, &netns, networks).await {
                tracing::warn!(id = %r.short_id(), error = %e, "cannot serve DNS to a re-adopted container");
            }
        }
        for (id, shim_pid) in running {
            tracing::info!(id = %&id[..12.min(id.len())], "re-adopted running container");
            self.supervise(id, shim_pid);
        }
        for id in dead {
            tracing::info!(id = %&id[..12.min(id.len())], "container ended while the agent was down");
            self.on_exit(&id).await;
        }
        Ok(())
    }

    /// Lets `container run --network NAME` join attachable cluster networks through `c`.
    pub fn set_cluster_networks(&self, c: Arc<dyn ClusterNetworks>) {
        *self
            .inner
            .cluster_networks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
    }

    /// Tells the cluster which attachments the containers' records hold, so it gives back those
    /// they do not (give-backs lost while the node had no session, or an agent stopped between
    /// taking an address and recording it). Once per session.
    pub async fn sync_cluster_attachments(&self) {
        let Some(cluster) = self.cluster_networks() else {
            return;
        };
        let _gate = self.inner.attach_gate.lock().await;
        let keep: Vec<String> = self
            .table()
            .values()
            .flat_map(|e| e.record.overlays.iter())
            .filter_map(|o| o.cluster_attachment.clone())
            .collect();
        match cluster.sync(keep).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(
                    released,
                    "the cluster gave back network addresses no container here holds"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the cluster which network addresses this node holds; next session will")
            }
        }
    }

    /// Gives a removed container's cluster addresses back, in the background.
    fn give_back(&self, record: &ContainerRecord) {
        self.give_back_ids(
            record
                .overlays
                .iter()
                .filter_map(|o| o.cluster_attachment.clone())
                .collect(),
        );
    }

    /// Gives cluster addresses back, in the background. Those that cannot be given back now (no
    /// session, a manager's error) are made good by a sync [`GIVE_BACK_RETRY`] later, or else
    /// by the next session's.
    pub(crate) fn give_back_ids(&self, ids: Vec<String>) {
        let Some(cluster) = self.cluster_networks().filter(|_| !ids.is_empty()) else {
            return;
        };
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let mut failed = false;
            for id in ids {
                if let Err(e) = cluster.detach(&id).await {
                    tracing::warn!(attachment = %id, error = %e, "cannot give a network address back now; the node syncs its addresses with the cluster shortly and at its next session");
                    failed = true;
                }
            }
            if failed {
                tokio::select! {
                    () = tokio::time::sleep(GIVE_BACK_RETRY) => engine.sync_cluster_attachments().await,
                    () = engine.inner.cancel.cancelled() => {}
                }
            }
        });
    }

    fn cluster_networks(&self) -> Option<Arc<dyn ClusterNetworks>> {
        self.inner
            .cluster_networks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The node's overlay networks (devices, FDB and neighbour entries), for the network agent.
    pub fn overlay(&self) -> &rswarm_network::Overlay {
        &self.inner.overlay
    }

    /// The embedded DNS and VIP rules (the network agent feeds it tables).
    pub fn discovery(&self) -> &crate::discovery::Discovery {
        &self.inner.discovery
    }

    /// Whether a container on this node uses (or is joining) overlay network `vni`.
    pub fn overlay_in_use(&self, vni: u32) -> bool {
        self.inner.overlay_use.in_use(vni)
    }

    /// The runc driver, for exec.
    pub(crate) fn runc(&self) -> &Runc {
        &self.inner.runc
    }

    /// The state dir the engine lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

/// What `container create` takes, after the CLI's flags.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub image: String,
    pub name: Option<String>,
    pub config: ContainerConfig,
    pub publish: Vec<String>,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    pub network: String,
    pub auto_remove: bool,
    pub stop_timeout: Option<u32>,
    pub labels: BTreeMap<String, String>,
    /// `--network-alias`: more names on the cluster network `network` names.
    pub network_aliases: Vec<String>,
    /// `--ip`: the address on that cluster network (empty: any).
    pub ip: String,
    /// Overlay networks to join (service tasks); with network `none` they are its only
    /// interfaces (an internal network: no way out).
    pub overlays: Vec<OverlayRequest>,
}

/// The resolver every container on an overlay network asks, inside its own namespace (Docker's).
pub const EMBEDDED_DNS: &str = "127.0.0.11";

fn write_etc_files(
    dir: &Path,
    hostname: &str,
    network: &NetworkMode,
    embedded_dns: bool,
) -> Result<()> {
    let write = |name: &str, content: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, content).map_err(|e| EngineError::io("write", &p, e))
    };
    write("hostname", format!("{hostname}\n").as_bytes())?;
    if *network == NetworkMode::Host {
        let hosts = std::fs::read("/etc/hosts").unwrap_or_default();
        write("hosts", &hosts)?;
    } else {
        write_hosts(&dir.join("hosts"), hostname, &[])?;
    }
    write_resolv_conf(dir, network, embedded_dns)
}

/// Writes the container's `resolv.conf` in `dir`, in place (it is bind-mounted, so a running
/// container sees the new one): the embedded resolver on overlay networks, the host's resolvers
/// otherwise.
fn write_resolv_conf(dir: &Path, network: &NetworkMode, embedded_dns: bool) -> Result<()> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let text = resolv_conf_text(&host_resolv, network, embedded_dns);
    let p = dir.join("resolv.conf");
    std::fs::write(&p, text).map_err(|e| EngineError::io("write", &p, e))
}

/// A container's `resolv.conf` made from the host's.
fn resolv_conf_text(host_resolv: &str, network: &NetworkMode, embedded_dns: bool) -> String {
    match network {
        NetworkMode::Host => host_resolv.to_string(),
        _ if embedded_dns => {
            // Service names first, then the host's resolvers (the embedded resolver forwards).
            let search: String = host_resolv
                .lines()
                .filter(|l| l.trim_start().starts_with("search "))
                .map(|l| format!("{}\n", l.trim()))
                .collect();
            format!("{search}nameserver {EMBEDDED_DNS}\noptions ndots:0\n")
        }
        // A nameserver on the host's loopback is unreachable from the container's namespace.
        _ => host_resolv
            .lines()
            .filter(|l| {
                let l = l.trim();
                !(l.starts_with("nameserver 127.") || l.starts_with("nameserver ::1"))
            })
            .map(|l| format!("{l}\n"))
            .collect(),
    }
}

/// Replaces `path` through a temporary file and a rename (readers never see half a file), without
/// the fsync of [`write_atomic`]: for files regenerated at every start.
/// Removes a container's own network namespace (if any), logging what cannot be undone.
fn release_netns(path: &Path) {
    if let Err(e) = rswarm_network::remove_netns(path) {
        tracing::warn!(error = %e, "cannot release a container's network namespace");
    }
}

fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| EngineError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io("rename", path, e))
}

/// Rewrites `hosts` in place (it is bind-mounted: a rename would not reach the container).
fn write_hosts(path: &Path, hostname: &str, ips: &[std::net::Ipv4Addr]) -> Result<()> {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    std::fs::write(path, s).map_err(|e| EngineError::io("write", path, e))
}
