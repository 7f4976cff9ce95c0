//! `rswarm service …`: the control API's services, as `docker service` drives a swarm manager.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use rswarm_api::types::v1::{Service, ServiceSpec};
use tonic::transport::Channel;

use crate::client::status_error;
use crate::commands::{print, wants_json};
use crate::progress::{Outcome, Renderer, Watch};
use crate::service_args::{
    apply_update, create_spec, default_spec, docker_credentials, helper_reply_auth, image_registry,
    DockerCredentials, ServiceCommand, ServicePsArgs,
};
use crate::service_output as out;

/// How often progress polls the manager (docker: 200 ms).
const POLL: Duration = Duration::from_millis(200);

fn eprint(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.flush();
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprint(&format!("{w}\n"));
    }
}

fn env_lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

async fn get_service(control: &mut ControlClient<Channel>, key: &str) -> anyhow::Result<Service> {
    control
        .get_service(pb::GetServiceRequest {
            service: key.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .service
        .with_context(|| format!("the manager returned no service for {key}"))
}

async fn send_update(
    control: &mut ControlClient<Channel>,
    svc: &Service,
    spec: Option<ServiceSpec>,
) -> anyhow::Result<Service> {
    let rollback = spec.is_none();
    let r = control
        .update_service(pb::UpdateServiceRequest {
            service: svc.id.clone(),
            version: svc.version,
            spec,
            rollback,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    warn_all(&r.warnings);
    r.service
        .context("the manager accepted the update but returned no service")
}

/// Checks what can be checked without the manager, then connects and runs the command.
pub async fn run(global: &crate::Global, cmd: ServiceCommand) -> anyhow::Result<()> {
    precheck(&cmd)?;
    let channel = crate::client::connect(global).await?;
    service_command(channel, cmd).await
}

/// The flag checks that need no manager (everything else is checked against the current spec).
pub fn precheck(cmd: &ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => create_spec(a, &env_lookup).map(|_| ()),
        ServiceCommand::Update(a) => {
            if a.rollback {
                if a.changes_anything() {
                    bail!("other flags may not be combined with --rollback: roll back first, then update");
                }
                return Ok(());
            }
            apply_update(&mut default_spec(), a, &env_lookup, None)
        }
        ServiceCommand::Scale { scales, .. } => parse_scales(scales).map(|_| ()),
        ServiceCommand::Ls { format, .. }
        | ServiceCommand::Inspect { format, .. }
        | ServiceCommand::Ps(ServicePsArgs { format, .. }) => wants_json(format).map(|_| ()),
        ServiceCommand::Rm { .. } | ServiceCommand::Rollback { .. } => Ok(()),
        ServiceCommand::Logs(a) => crate::service_logs::precheck(a),
    }
}

pub async fn service_command(channel: Channel, cmd: ServiceCommand) -> anyhow::Result<()> {
    let mut control = ControlClient::new(channel);
    match cmd {
        ServiceCommand::Create(a) => {
            let mut spec = create_spec(&a, &env_lookup)?;
            if spec.name.is_empty() {
                spec.name = generated_name();
            }
            if a.task.with_registry_auth {
                let image = spec.task.as_ref().map_or("", |t| t.image.as_str());
                let auth = registry_auth(image)?;
                if let Some(t) = spec.task.as_mut() {
                    t.registry_auth = auth;
                }
            }
            let r = control
                .create_service(pb::CreateServiceRequest { spec: Some(spec) })
                .await
                .map_err(status_error)?
                .into_inner();
            warn_all(&r.warnings);
            let svc = r
                .service
                .context("the manager created the service but returned none")?;
            print(&format!("{}\n", svc.id));
            if !a.detach {
                let name = svc.spec.as_ref().map_or(svc.id.clone(), |s| s.name.clone());
                wait_on_service(&mut control, &svc.id, &name, a.quiet, false, None).await?;
            }
        }
        ServiceCommand::Update(a) => {
            let svc = get_service(&mut control, &a.service).await?;
            let stale = svc.update_status.as_ref().map(|u| u.started_at.clone());
            let name = svc
                .spec
                .as_ref()
                .map_or(a.service.clone(), |s| s.name.clone());
            if a.rollback {
                if a.changes_anything() {
                    bail!("other flags may not be combined with --rollback: roll back first, then update");
                }
                send_update(&mut control, &svc, None).await?;
                print(&format!("{}\n", a.service));
                if !a.detach {
                    wait_on_service(&mut control, &svc.id, &name, a.quiet, true, stale).await?;
                }
                return Ok(());
            }
            let mut spec = svc.spec.clone().unwrap_or_default();
            // Names given to --network-add/--network-rm are matched against the ids stored in the
            // spec through the cluster's networks.
            let known = if a.network_add.is_empty() && a.network_rm.is_empty() {
                None
            } else {
                Some(crate::network_cmds::list_networks(&mut control).await?)
            };
            apply_update(&mut spec, &a, &env_lookup, known.as_deref())?;
            if a.task.with_registry_auth {
                let image = spec.task.as_ref().map_or("", |t| t.image.as_str());
                let auth = registry_auth(image)?;
                if let Some(t) = spec.task.as_mut() {
                    t.registry_auth = auth;
                }
            }
            send_update(&mut control, &svc, Some(spec)).await?;
            print(&format!("{}\n", a.service));
            if !a.detach {
                wait_on_service(&mut control, &svc.id, &name, a.quiet, false, stale).await?;
            }
        }
        ServiceCommand::Rollback {
            detach,
            quiet,
            service,
        } => {
            let svc = get_service(&mut control, &service).await?;
            let stale = svc.update_status.as_ref().map(|u| u.started_at.clone());
            let name = svc
                .spec
                .as_ref()
                .map_or(service.clone(), |s| s.name.clone());
            send_update(&mut control, &svc, None).await?;
            print(&format!("{service}\n"));
            if !detach {
                wait_on_service(&mut control, &svc.id, &name, quiet, true, stale).await?;
            }
        }
        ServiceCommand::Scale { detach, scales } => scale(&mut control, &scales, detach).await?,
        ServiceCommand::Rm { services } => {
            let mut failed = Vec::new();
            for s in services {
                match control
                    .remove_service(pb::RemoveServiceRequest { service: s.clone() })
                    .await
                {
                    Ok(_) => print(&format!("{s}\n")),
                    Err(e) => failed.push(status_error(e).to_string()),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
        ServiceCommand::Ls {
            quiet,
            filters,
            format,
        } => {
            let json_out = wants_json(&format)?;
            let services = control
                .list_services(pb::ListServicesRequest { filters })
                .await
                .map_err(status_error)?
                .into_inner()
                .services;
            if quiet {
                print(
                    &out::ls_rows(&services)
                        .iter()
                        .map(|r| format!("{}\n", r[0]))
                        .collect::<String>(),
                );
            } else if json_out {
                print(&out::ls_json_lines(&services));
            } else {
                print(&out::ls_table(&services));
            }
        }
        ServiceCommand::Ps(a) => ps(&mut control, a).await?,
        ServiceCommand::Logs(a) => crate::service_logs::run(&mut control, a).await?,
        ServiceCommand::Inspect {
            services,
            format,
            pretty,
        } => {
            wants_json(&format)?;
            let mut found = Vec::new();
            for s in &services {
                found.push(get_service(&mut control, s).await?);
            }
            if pretty {
                let names = network_names(&mut control, &found).await;
                let blocks: Vec<String> = found
                    .iter()
                    .map(|s| out::service_pretty(s, &names))
                    .collect();
                print(&blocks.join("\n"));
            } else {
                let v: Vec<_> = found.iter().map(out::service_json).collect();
                print(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&serde_json::Value::Array(v))?
                ));
            }
        }
    }
    Ok(())
}

/// Network id → name for the networks of `services` (their VIPs name them; the others are asked
/// of the manager). Ids are shown as they are when the manager cannot say.
async fn network_names(
    control: &mut ControlClient<Channel>,
    services: &[Service],
) -> HashMap<String, String> {
    let mut names: HashMap<String, String> = services
        .iter()
        .flat_map(|s| &s.virtual_ips)
        .filter(|v| !v.network_name.is_empty())
        .map(|v| (v.network_id.clone(), v.network_name.clone()))
        .collect();
    let missing = services
        .iter()
        .filter_map(|s| s.spec.as_ref()?.task.as_ref())
        .flat_map(|t| &t.networks)
        .any(|n| !names.contains_key(&n.target));
    if missing {
        if let Ok(networks) = crate::network_cmds::list_networks(control).await {
            for n in networks {
                let name = n.spec.map(|s| s.name).unwrap_or_default();
                names.entry(n.id).or_insert(name);
            }
        }
    }
    names
}

/// `SERVICE=REPLICAS` arguments, all checked before anything is sent.
pub fn parse_scales(args: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    args.iter()
        .map(|arg| {
            let Some((name, n)) = arg.split_once('=') else {
                bail!("invalid scale specifier {arg:?}: use SERVICE=REPLICAS, e.g. web=3");
            };
            if name.is_empty() {
                bail!("invalid scale specifier {arg:?}: the service name is missing (SERVICE=REPLICAS)");
            }
            let n: u64 = n.parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid replicas value {n:?} for {name}: use a whole number of 0 or more"
                )
            })?;
            Ok((name.to_string(), n))
        })
        .collect()
}

async fn scale(
    control: &mut ControlClient<Channel>,
    args: &[String],
    detach: bool,
) -> anyhow::Result<()> {
    let scales = parse_scales(args)?;
    let mut errors = Vec::new();
    let mut scaled = Vec::new();
    for (name, replicas) in scales {
        let result: anyhow::Result<(Service, Option<String>)> = async {
            let svc = get_service(control, &name).await?;
            let mut spec = svc.spec.clone().unwrap_or_default();
            if spec.mode == "global" {
                bail!("scale can only be used with replicated mode");
            }
            spec.replicas = replicas;
            let stale = svc.update_status.as_ref().map(|u| u.started_at.clone());
            send_update(control, &svc, Some(spec)).await?;
            Ok((svc, stale))
        }
        .await;
        match result {
            Ok((svc, stale)) => {
                print(&format!("{name} scaled to {replicas}\n"));
                scaled.push((name, svc.id, stale));
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    if !detach {
        for (name, id, stale) in scaled {
            if let Err(e) = wait_on_service(control, &id, &name, false, false, stale).await {
                errors.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

async fn ps(control: &mut ControlClient<Channel>, a: ServicePsArgs) -> anyhow::Result<()> {
    let json_out = wants_json(&a.format)?;
    let mut tasks = Vec::new();
    let mut node_names: HashMap<String, String> = HashMap::new();
    for s in &a.services {
        let svc = get_service(control, s).await?;
        let mut filters = a.filters.clone();
        filters.push(format!("service={}", svc.id));
        let r = control
            .list_tasks(pb::ListTasksRequest { filters })
            .await
            .map_err(status_error)?
            .into_inner();
        tasks.extend(r.tasks);
        node_names.extend(r.node_names);
    }
    out::sort_tasks(&mut tasks);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if a.quiet {
        print(
            &tasks
                .iter()
                .map(|t| {
                    if a.no_trunc {
                        format!("{}\n", t.id)
                    } else {
                        format!("{}\n", out::short(&t.id))
                    }
                })
                .collect::<String>(),
        );
    } else if json_out {
        print(&out::ps_json_lines(&tasks, &node_names, a.no_trunc, now));
    } else {
        print(&out::ps_table(&tasks, &node_names, a.no_trunc, now));
    }
    Ok(())
}

/// Follows the service until it converges (or cannot), drawing docker's progress unless `quiet`.
/// Ctrl-C stops watching only; the service stays as it is.
async fn wait_on_service(
    control: &mut ControlClient<Channel>,
    id: &str,
    name: &str,
    quiet: bool,
    manual_rollback: bool,
    stale_status: Option<String>,
) -> anyhow::Result<()> {
    let tty_width = (!quiet && std::io::stdout().is_terminal())
        .then(|| crate::terminal::size().map_or(80, |(_, cols)| usize::from(cols)));
    let mut renderer = Renderer::new(tty_width);
    let mut watch = Watch::new(manual_rollback, stale_status);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let svc = match control
            .get_service(pb::GetServiceRequest {
                service: id.to_string(),
            })
            .await
        {
            Ok(r) => r.into_inner().service,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(status_error(s)),
        };
        let Some(svc) = svc else {
            bail!("service {name} was removed while waiting for it to converge");
        };
        let tasks = control
            .list_tasks(pb::ListTasksRequest {
                filters: vec![format!("service={id}")],
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .tasks;
        let active: Option<HashSet<String>> = control
            .list_nodes(pb::ListNodesRequest { filters: vec![] })
            .await
            .ok()
            .map(|r| {
                r.into_inner()
                    .nodes
                    .into_iter()
                    .filter(|n| n.status != "down")
                    .map(|n| n.id)
                    .collect()
            });
        let (lines, outcome) = watch.step(&svc, &tasks, active.as_ref(), Instant::now());
        if !quiet {
            print(&renderer.update(&lines));
        }
        match outcome {
            Outcome::Converged => return Ok(()),
            Outcome::Failed(why) => bail!(
                "service {name} cannot converge: {why}; see `rswarm service ps --no-trunc {name}`, then fix it with `rswarm service update` (or `rswarm service rollback`) or remove it with `rswarm service rm {name}`"
            ),
            Outcome::Waiting => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            r = &mut interrupted => {
                r.context("cannot listen for Ctrl-C")?;
                if !quiet {
                    print(&format!(
                        "Operation continuing in background.\nUse `rswarm service ps {name}` to check progress.\n"
                    ));
                }
                return Ok(());
            }
        }
    }
}

/// Reads the credentials `docker login` stored for the image's registry (`~/.docker/config.json`
/// or `$DOCKER_CONFIG/config.json`, or the credential helper it names).
fn registry_auth(image: &str) -> anyhow::Result<String> {
    let registry = image_registry(image)?;
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(
            std::env::var_os("HOME").context("--with-registry-auth: HOME is not set, so the docker config file cannot be found; set DOCKER_CONFIG to its directory")?,
        )
        .join(".docker"),
    };
    let path = dir.join("config.json");
    let no_credentials = |why: &str| {
        eprint(&format!(
            "warning: --with-registry-auth: {why}; the nodes pull {image} without credentials (run `docker login {registry}` to store them)\n"
        ));
        Ok(String::new())
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return no_credentials(&format!("{} does not exist", path.display()))
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the docker config file {}", path.display()))
        }
    };
    match docker_credentials(&text, &registry).with_context(|| format!("in {}", path.display()))? {
        DockerCredentials::Auth(a) => Ok(a),
        DockerCredentials::None => no_credentials(&format!(
            "{} has no credentials for {registry}",
            path.display()
        )),
        DockerCredentials::Helper { helper, server } => {
            let program = format!("docker-credential-{helper}");
            let mut child = std::process::Command::new(&program)
                .arg("get")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| {
                    format!("cannot run the credential helper {program} that {} names for {registry}; install it or log in again with `docker login {registry}`", path.display())
                })?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin
                    .write_all(server.as_bytes())
                    .with_context(|| format!("cannot talk to {program}"))?;
            }
            let output = child
                .wait_with_output()
                .with_context(|| format!("cannot talk to {program}"))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                if stdout.contains("credentials not found") {
                    return no_credentials(&format!("{program} has no credentials for {registry}"));
                }
                bail!(
                    "the credential helper {program} failed for {registry}: {}{}; log in again with `docker login {registry}`",
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            helper_reply_auth(&stdout).with_context(|| format!("from {program}"))
        }
    }
}

/// A docker-like `adjective_name` for services created without `--name`.
fn generated_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    const LEFT: [&str; 16] = [
        "admiring", "bold", "brave", "clever", "eager", "focused", "gallant", "happy", "jolly",
        "keen", "lucid", "nifty", "quirky", "serene", "vibrant", "zealous",
    ];
    const RIGHT: [&str; 16] = [
        "albattani",
        "babbage",
        "curie",
        "darwin",
        "euclid",
        "fermi",
        "galileo",
        "hopper",
        "kepler",
        "lovelace",
        "meitner",
        "noether",
        "pascal",
        "ritchie",
        "tesla",
        "turing",
    ];
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let r = h.finish();
    format!(
        "{}_{}",
        LEFT[(r % 16) as usize],
        RIGHT[((r >> 8) % 16) as usize]
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rswarm_api::control::v1::control_server::{Control, ControlServer};
    use rswarm_api::types::v1::{Network, Task, TaskStatus};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::service_args::ServiceCommand;

    /// A manager stand-in: keeps created services and makes their tasks advance one state per
    /// ListTasks call (or stay pending with a scheduler error when `unschedulable`).
    #[derive(Default)]
    struct Manager {
        services: Mutex<Vec<Service>>,
        polls: Mutex<u32>,
        unschedulable: bool,
        calls: Mutex<Vec<String>>,
        networks: Mutex<Vec<Network>>,
    }

    impl Manager {
        /// Network names → ids, as the manager stores attachments.
        fn resolve_networks(&self, spec: &mut ServiceSpec) -> Result<(), Status> {
            let networks = self.networks.lock().unwrap();
            for n in &mut spec.task.as_mut().unwrap().networks {
                n.target = crate::network_args::resolve(&n.target, &networks)
                    .ok_or_else(|| Status::not_found(format!("network {} not found", n.target)))?
                    .id
                    .clone();
            }
            Ok(())
        }
    }

    fn log(m: &Manager, call: &str) {
        m.calls.lock().unwrap().push(call.to_string());
    }

    struct Mock(Arc<Manager>);

    #[tonic::async_trait]
    impl Control for Mock {
        type ServiceLogsStream =
            tokio_stream::wrappers::ReceiverStream<Result<pb::ServiceLogsMessage, Status>>;
        type EventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;
        async fn service_logs(
            &self,
            _: Request<pb::ServiceLogsRequest>,
        ) -> Result<Response<Self::ServiceLogsStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn events(
            &self,
            _: Request<pb::EventsRequest>,
        ) -> Result<Response<Self::EventsStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn list_nodes(
            &self,
            _: Request<pb::ListNodesRequest>,
        ) -> Result<Response<pb::ListNodesResponse>, Status> {
            Ok(Response::new(pb::ListNodesResponse {
                nodes: vec![pb::Node {
                    id: "n1".into(),
                    status: "ready".into(),
                    ..pb::Node::default()
                }],
            }))
        }
        async fn get_node(
            &self,
            _: Request<pb::GetNodeRequest>,
        ) -> Result<Response<pb::GetNodeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn update_node(
            &self,
            _: Request<pb::UpdateNodeRequest>,
        ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn remove_node(
            &self,
            _: Request<pb::RemoveNodeRequest>,
        ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn get_join_token(
            &self,
            _: Request<pb::GetJoinTokenRequest>,
        ) -> Result<Response<pb::GetJoinTokenResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn get_cluster(
            &self,
            _: Request<pb::GetClusterRequest>,
        ) -> Result<Response<pb::GetClusterResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn update_cluster(
            &self,
            _: Request<pb::UpdateClusterRequest>,
        ) -> Result<Response<pb::GetClusterResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn create_service(
            &self,
            req: Request<pb::CreateServiceRequest>,
        ) -> Result<Response<pb::ServiceResponse>, Status> {
            log(&self.0, "create");
            let mut spec = req.into_inner().spec.unwrap();
            self.0.resolve_networks(&mut spec)?;
            spec.update.as_mut().unwrap().monitor_ms = 300;
            let svc = Service {
                id: format!("svc{}", self.0.services.lock().unwrap().len()),
                version: 1,
                spec: Some(spec),
                desired_tasks: 1,
                ..Service::default()
            };
            self.0.services.lock().unwrap().push(svc.clone());
            Ok(Response::new(pb::ServiceResponse {
                service: Some(svc),
                warnings: vec![],
            }))
        }
        async fn update_service(
            &self,
            req: Request<pb::UpdateServiceRequest>,
        ) -> Result<Response<pb::ServiceResponse>, Status> {
            let r = req.into_inner();
            log(&self.0, &format!("update v{}", r.version));
            let mut services = self.0.services.lock().unwrap();
            let svc = services.iter_mut().find(|s| s.id == r.service).unwrap();
            if r.version != svc.version {
                return Err(Status::failed_precondition("version"));
            }
            let mut spec = r.spec;
            if let Some(spec) = spec.as_mut() {
                self.0.resolve_networks(spec)?;
            }
            svc.spec = spec;
            svc.version += 1;
            Ok(Response::new(pb::ServiceResponse {
                service: Some(svc.clone()),
                warnings: vec![],
            }))
        }
        async fn get_service(
            &self,
            req: Request<pb::GetServiceRequest>,
        ) -> Result<Response<pb::ServiceResponse>, Status> {
            let key = req.into_inner().service;
            let services = self.0.services.lock().unwrap();
            let svc = services
                .iter()
                .find(|s| s.id == key || s.spec.as_ref().unwrap().name == key)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("no such service: {key}")))?;
            Ok(Response::new(pb::ServiceResponse {
                service: Some(svc),
                warnings: vec![],
            }))
        }
        async fn list_services(
            &self,
            _: Request<pb::ListServicesRequest>,
        ) -> Result<Response<pb::ListServicesResponse>, Status> {
            Ok(Response::new(pb::ListServicesResponse {
                services: self.0.services.lock().unwrap().clone(),
            }))
        }
        async fn remove_service(
            &self,
            req: Request<pb::RemoveServiceRequest>,
        ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
            let key = req.into_inner().service;
            let mut services = self.0.services.lock().unwrap();
            let before = services.len();
            services.retain(|s| s.spec.as_ref().unwrap().name != key);
            if services.len() == before {
                return Err(Status::not_found(format!("no such service: {key}")));
            }
            Ok(Response::new(pb::RemoveServiceResponse { id: key }))
        }
        async fn create_network(
            &self,
            req: Request<pb::CreateNetworkRequest>,
        ) -> Result<Response<pb::NetworkResponse>, Status> {
            let spec = req.into_inner().spec.unwrap();
            let mut networks = self.0.networks.lock().unwrap();
            let network = Network {
                id: format!("{:x<25}", format!("n{}{}", networks.len(), spec.name)),
                subnet: if spec.subnet.is_empty() {
                    format!("10.0.{}.0/24", networks.len())
                } else {
                    spec.subnet.clone()
                },
                vni: 4096 + networks.len() as u32,
                spec: Some(spec),
                ..Network::default()
            };
            networks.push(network.clone());
            Ok(Response::new(pb::NetworkResponse {
                network: Some(network),
            }))
        }
        async fn get_network(
            &self,
            req: Request<pb::GetNetworkRequest>,
        ) -> Result<Response<pb::NetworkResponse>, Status> {
            let key = req.into_inner().network;
            let networks = self.0.networks.lock().unwrap();
            let network = crate::network_args::resolve(&key, &networks)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("network {key} not found")))?;
            Ok(Response::new(pb::NetworkResponse {
                network: Some(network),
            }))
        }
        async fn list_networks(
            &self,
            _: Request<pb::ListNetworksRequest>,
        ) -> Result<Response<pb::ListNetworksResponse>, Status> {
            Ok(Response::new(pb::ListNetworksResponse {
                networks: self.0.networks.lock().unwrap().clone(),
            }))
        }
        async fn remove_network(
            &self,
            req: Request<pb::RemoveNetworkRequest>,
        ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
            let key = req.into_inner().network;
            let mut networks = self.0.networks.lock().unwrap();
            let network = crate::network_args::resolve(&key, &networks)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("network {key} not found")))?;
            let name = network.spec.clone().unwrap().name;
            for svc in self.0.services.lock().unwrap().iter() {
                let sp = svc.spec.as_ref().unwrap();
                if sp
                    .task
                    .as_ref()
                    .unwrap()
                    .networks
                    .iter()
                    .any(|n| n.target == network.id)
                {
                    return Err(Status::failed_precondition(format!(
                        "network {name} is in use by service {}",
                        sp.name
                    )));
                }
            }
            networks.retain(|n| n.id != network.id);
            Ok(Response::new(pb::RemoveNetworkResponse { id: network.id }))
        }
        async fn list_tasks(
            &self,
            req: Request<pb::ListTasksRequest>,
        ) -> Result<Response<pb::ListTasksResponse>, Status> {
            let filters = req.into_inner().filters;
            let id = filters
                .iter()
                .find_map(|f| f.strip_prefix("service="))
                .unwrap()
                .to_string();
            let svc = self
                .0
                .services
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.id == id)
                .cloned()
                .unwrap();
            let mut polls = self.0.polls.lock().unwrap();
            *polls += 1;
            let states = ["pending", "assigned", "preparing", "starting", "running"];
            let spec = svc.spec.clone().unwrap();
            let tasks = (1..=spec.replicas)
                .map(|slot| {
                    let (state, err) = if self.0.unschedulable {
                        (
                            "pending",
                            "no suitable node (1 node not satisfying constraint)",
                        )
                    } else {
                        (states[(*polls as usize).min(states.len()) - 1], "")
                    };
                    Task {
                        id: format!("t{slot}"),
                        service_id: svc.id.clone(),
                        service_name: spec.name.clone(),
                        slot,
                        node_id: if self.0.unschedulable {
                            String::new()
                        } else {
                            "n1".into()
                        },
                        spec: spec.task.clone(),
                        ports: spec.ports.clone(),
                        desired_state: "running".into(),
                        status: Some(TaskStatus {
                            state: state.into(),
                            err: err.into(),
                            ..TaskStatus::default()
                        }),
                        name: format!("{}.{slot}", spec.name),
                        ..Task::default()
                    }
                })
                .collect();
            Ok(Response::new(pb::ListTasksResponse {
                tasks,
                node_names: [("n1".to_string(), "node-1".to_string())].into(),
            }))
        }
    }

    async fn serve(manager: Arc<Manager>) -> (tempfile::TempDir, Channel) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(Mock(manager)))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let channel = rswarm_ca::transport::unix_channel(&path).await.unwrap();
        (dir, channel)
    }

    fn parse(args: &[&str]) -> ServiceCommand {
        let mut argv = vec!["rswarm", "service"];
        argv.extend(args);
        match <crate::Cli as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .command
        {
            crate::Command::Service(c) => c,
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn create_waits_for_convergence_then_scale_updates_with_the_version() {
        let manager = Arc::new(Manager::default());
        let (_dir, channel) = serve(manager.clone()).await;
        let started = Instant::now();
        service_command(
            channel.clone(),
            parse(&[
                "create",
                "-q",
                "--name",
                "web",
                "--replicas",
                "2",
                "busybox",
            ]),
        )
        .await
        .unwrap();
        // Five polls to reach running, then the 300 ms monitor period.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(*manager.polls.lock().unwrap(), 7);
        service_command(channel.clone(), parse(&["scale", "-d", "web=3"]))
            .await
            .unwrap();
        assert_eq!(
            manager.services.lock().unwrap()[0]
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            3
        );
        assert_eq!(*manager.calls.lock().unwrap(), ["create", "update v1"]);
        let e = service_command(channel.clone(), parse(&["scale", "-d", "nope=1"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope: Error response from daemon: no such service: nope"),
            "{e}"
        );
        service_command(channel.clone(), parse(&["rm", "web"]))
            .await
            .unwrap();
        assert!(manager.services.lock().unwrap().is_empty());
    }

    fn net(args: &[&str]) -> crate::network_args::NetworkCommand {
        let mut argv = vec!["rswarm", "network"];
        argv.extend(args);
        match <crate::Cli as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .command
        {
            crate::Command::Network(c) => c,
            _ => unreachable!(),
        }
    }

    async fn net_run(channel: &Channel, args: &[&str]) -> (String, anyhow::Result<()>) {
        let mut text = String::new();
        let cmd = net(args);
        crate::network_cmds::precheck(&cmd).unwrap();
        let r = crate::network_cmds::network_command(channel.clone(), cmd, &mut text).await;
        (text, r)
    }

    #[tokio::test]
    async fn networks_and_the_services_on_them() {
        let manager = Arc::new(Manager::default());
        let (_dir, channel) = serve(manager.clone()).await;
        let (text, r) = net_run(&channel, &["create", "--subnet", "10.0.9.0/24", "front"]).await;
        r.unwrap();
        let front = manager.networks.lock().unwrap()[0].clone();
        assert_eq!(text, format!("{}\n", front.id));
        assert_eq!(front.spec.as_ref().unwrap().subnet, "10.0.9.0/24");
        net_run(&channel, &["create", "-o", "mtu=1400", "back"])
            .await
            .1
            .unwrap();
        let back_id = manager.networks.lock().unwrap()[1].id.clone();

        let (text, r) = net_run(&channel, &["ls"]).await;
        r.unwrap();
        let names: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(names, ["ID", "back", "front"]);
        let (text, _) = net_run(&channel, &["ls", "-q", "--filter", "name=fr"]).await;
        assert_eq!(text, format!("{}\n", short_id(&front.id)));

        // Found networks are printed, then the unknown ones reported.
        let (text, r) = net_run(&channel, &["inspect", "front", "nope", "back"]).await;
        assert_eq!(r.unwrap_err().to_string(), "no such network: nope");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v[0]["Name"], "front");
        assert_eq!(v[1]["Options"]["com.docker.network.driver.mtu"], "1400");

        // Names go to the manager as typed; it stores ids.
        service_command(
            channel.clone(),
            parse(&[
                "create",
                "-d",
                "--name",
                "web",
                "--network",
                "front",
                "--network",
                "name=back,alias=db,alias=primary",
                "--endpoint-mode",
                "dnsrr",
                "busybox",
            ]),
        )
        .await
        .unwrap();
        let stored = |m: &Manager| {
            let s = m.services.lock().unwrap()[0].spec.clone().unwrap();
            (s.endpoint_mode.clone(), s.task.unwrap().networks)
        };
        let (mode, nets) = stored(&manager);
        assert_eq!(mode, "dnsrr");
        let targets: Vec<&str> = nets.iter().map(|n| n.target.as_str()).collect();
        assert_eq!(targets, [front.id.as_str(), back_id.as_str()]);
        assert_eq!(nets[1].aliases, ["db", "primary"]);

        // In use: reported, the others still removed.
        net_run(&channel, &["create", "spare"]).await.1.unwrap();
        let (text, r) = net_run(&channel, &["rm", "back", "spare"]).await;
        assert_eq!(text, "spare\n");
        assert_eq!(
            r.unwrap_err().to_string(),
            "Error response from daemon: network back is in use by service web"
        );
        let (text, r) = net_run(&channel, &["rm", "nope"]).await;
        assert_eq!(
            (text.as_str(), r.unwrap_err().to_string().as_str()),
            ("", "no such network: nope")
        );
        net_run(&channel, &["rm", "-f", "nope"]).await.1.unwrap();

        // --network-rm by name against the stored id; --network-add re-adds with new aliases.
        service_command(
            channel.clone(),
            parse(&[
                "update",
                "-d",
                "--network-rm",
                "front",
                "--network-rm",
                "back",
                "--network-add",
                "name=back,alias=cache",
                "--endpoint-mode",
                "vip",
                "web",
            ]),
        )
        .await
        .unwrap();
        let (mode, nets) = stored(&manager);
        assert_eq!(mode, "vip");
        assert_eq!(nets.len(), 1);
        assert_eq!(
            (nets[0].target.as_str(), nets[0].aliases.as_slice()),
            (back_id.as_str(), &["cache".to_string()][..])
        );
        let e = service_command(
            channel.clone(),
            parse(&["update", "-d", "--network-add", "back", "web"]),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("already attached to network back"), "{e}");
        let e = service_command(
            channel.clone(),
            parse(&["update", "-d", "--network-rm", "nope", "web"]),
        )
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(e, "no such network: nope");
        // front is free again.
        let (text, r) = net_run(&channel, &["rm", "front"]).await;
        r.unwrap();
        assert_eq!(text, "front\n");
    }

    fn short_id(id: &str) -> String {
        id.chars().take(12).collect()
    }

    #[tokio::test]
    async fn an_unschedulable_service_fails_with_the_schedulers_reason() {
        let manager = Arc::new(Manager {
            unschedulable: true,
            ..Manager::default()
        });
        let (_dir, channel) = serve(manager).await;
        let e = service_command(
            channel,
            parse(&[
                "create",
                "-q",
                "--name",
                "web",
                "--constraint",
                "node.labels.zone==b",
                "busybox",
            ]),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("service web cannot converge: 1/1: no suitable node (1 node not satisfying constraint)"),
            "{e}"
        );
    }

    #[test]
    fn scale_specifiers() {
        let ok = parse_scales(&["web=10".into(), "api=0".into()]).unwrap();
        assert_eq!(ok, [("web".to_string(), 10), ("api".to_string(), 0)]);
        let e = parse_scales(&["web".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid scale specifier"), "{e}");
        let e = parse_scales(&["web=-1".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid replicas value"), "{e}");
        assert!(parse_scales(&["=3".into()]).is_err());
    }

    #[test]
    fn generated_names_look_like_dockers() {
        let n = generated_name();
        let (l, r) = n.split_once('_').unwrap();
        assert!(!l.is_empty() && !r.is_empty());
    }
}
