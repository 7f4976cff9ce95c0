//! The service half of the control API: create, update (scale, rollback), inspect, list, remove
//! services, and list tasks. Specs are validated completely before anything is stored.

use rswarm_api::control::v1 as pb;
use rswarm_store::{
    Node, Service, ServiceMode, ServiceSpec, StateMachine, Store, StoreError, Task, TaskState, Txn,
    UpdateState, UpdateStatus,
};
use tonic::Status;

use crate::control::find_node;
use crate::convert::{service_to_pb, spec_from_pb, task_to_pb};
use crate::error::store_status;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Finds a service by id, name, or unique id prefix.
pub fn find_service<'a>(s: &'a StateMachine, key: &str) -> Result<&'a Service, Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("a service name or id is required"));
    }
    if let Some(svc) = s.get::<Service>(key) {
        return Ok(svc);
    }
    if let Some(svc) = s.list::<Service>().find(|x| x.spec.name == key) {
        return Ok(svc);
    }
    let by_prefix: Vec<&Service> = s
        .list::<Service>()
        .filter(|x| x.id.starts_with(key))
        .collect();
    match by_prefix.as_slice() {
        [svc] => Ok(svc),
        [] => Err(Status::not_found(format!("service {key} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "service {key} is ambiguous: more than one service id starts with it; use the name or a longer id"
        ))),
    }
}

/// (running, desired) task counts as `service ls` shows them.
pub fn task_counts(s: &StateMachine, svc: &Service) -> (u64, u64) {
    let mut running = 0;
    let mut live = 0;
    for t in s.list::<Task>().filter(|t| t.service_id == svc.id) {
        if t.desired_state == TaskState::Running {
            live += 1;
            if t.status.state == TaskState::Running {
                running += 1;
            }
        }
    }
    let desired = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => live,
    };
    (running, desired)
}

fn to_pb(s: &StateMachine, svc: &Service) -> pb::ServiceResponse {
    let (running, desired) = task_counts(s, svc);
    pb::ServiceResponse {
        service: Some(service_to_pb(svc, running, desired)),
        warnings: Vec::new(),
    }
}

fn validated(spec: rswarm_api::types::v1::ServiceSpec) -> Result<ServiceSpec, Status> {
    let spec = spec_from_pb(spec)?;
    rswarm_orchestrator::validate_spec(&spec)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(spec)
}

/// Whether a spec change needs new tasks (a rolling update), as opposed to scaling only.
fn changes_tasks(old: &ServiceSpec, new: &ServiceSpec) -> bool {
    old.task != new.task || old.ports != new.ports
}

pub async fn create(
    store: &Store,
    req: pb::CreateServiceRequest,
) -> Result<pb::ServiceResponse, Status> {
    let spec = validated(
        req.spec
            .ok_or_else(|| Status::invalid_argument("a service spec is required"))?,
    )?;
    let id = rswarm_agent::ids::new_id();
    let mut resolve_err = None;
    let result = store
        .update(|s| {
            resolve_err = None;
            let mut service = Service {
                id: id.clone(),
                spec: spec.clone(),
                spec_version: 1,
                ..Service::default()
            };
            if let Err(e) = with_networks(s, &mut service, None) {
                resolve_err = Some(e);
                return Ok(vec![]);
            }
            Ok(vec![Txn::create(service)])
        })
        .await;
    if let Some(e) = resolve_err {
        return Err(e);
    }
    result.map_err(store_status)?;
    tracing::info!(service = %id, "service created");
    get_by_id(store, &id)
}

fn get_by_id(store: &Store, id: &str) -> Result<pb::ServiceResponse, Status> {
    store.read(|s| {
        s.get::<Service>(id)
            .map(|svc| to_pb(s, svc))
            .ok_or_else(|| Status::not_found(format!("service {id} was removed")))
    })
}

pub fn get(store: &Store, key: &str) -> Result<pb::ServiceResponse, Status> {
    store.read(|s| find_service(s, key).map(|svc| to_pb(s, svc)))
}

pub async fn update(
    store: &Store,
    req: pb::UpdateServiceRequest,
) -> Result<pb::ServiceResponse, Status> {
    let id = store.read(|s| find_service(s, &req.service).map(|svc| svc.id.clone()))?;
    let new_spec = if req.rollback {
        None
    } else {
        Some(validated(req.spec.ok_or_else(|| {
            Status::invalid_argument("a service spec is required (or rollback)")
        })?)?)
    };
    let now = now_ms();
    let mut resolve_err = None;
    let result = store
        .update(|s| {
            resolve_err = None;
            let Some(old) = s.get::<Service>(&id) else {
                return Err(StoreError::Invalid(format!("service {id} was removed")));
            };
            if req.version != 0 && req.version != old.meta.version {
                return Err(StoreError::Invalid(format!(
                    "service {} was changed since you read it (version {} is now {}); read it again and retry",
                    old.spec.name, req.version, old.meta.version
                )));
            }
            let mut next = old.clone();
            let (spec, state) = match &new_spec {
                None => {
                    let Some(previous) = old.previous_spec.clone() else {
                        return Err(StoreError::Invalid(format!(
                            "service {} has no previous spec to roll back to",
                            old.spec.name
                        )));
                    };
                    (previous, UpdateState::RollbackStarted)
                }
                Some(spec) => (spec.clone(), UpdateState::Updating),
            };
            if std::mem::discriminant(&spec.mode) != std::mem::discriminant(&old.spec.mode) {
                return Err(StoreError::Invalid(format!(
                    "service {} is {}; its mode cannot be changed (remove it and create it again)",
                    old.spec.name,
                    mode_name(&old.spec.mode)
                )));
            }
            if spec == old.spec && new_spec.is_some() {
                return Ok(vec![]);
            }
            if changes_tasks(&old.spec, &spec) {
                next.spec_version += 1;
                next.update_status = Some(UpdateStatus {
                    state,
                    started_at_ms: now,
                    completed_at_ms: 0,
                    message: match state {
                        UpdateState::RollbackStarted => "manually requested rollback".into(),
                        _ => "update in progress".into(),
                    },
                });
            }
            next.previous_spec = Some(old.spec.clone());
            next.spec = spec;
            if let Err(e) = with_networks(s, &mut next, Some(old)) {
                resolve_err = Some(e);
                return Ok(vec![]);
            }
            Ok(vec![Txn::update(next)])
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => Status::failed_precondition(m),
            other => store_status(other),
        });
    if let Some(e) = resolve_err {
        return Err(e);
    }
    result?;
    get_by_id(store, &id)
}

/// Resolves the network names of `svc`'s spec to ids and gives it its virtual IPs, checking that
/// every network has room for its tasks. `old`: the stored service on update (its VIPs are kept,
/// and a spec whose networks did not change is not re-checked for room).
fn with_networks(s: &StateMachine, svc: &mut Service, old: Option<&Service>) -> Result<(), Status> {
    // Docker refuses dnsrr with ingress-mode ports only: every published port here is
    // host-mode (published on the node that runs the task), which dnsrr takes as in Docker.
    crate::networks::resolve_networks(s, &mut svc.spec)?;
    if let Some(old) = old {
        if old.spec.task.networks == svc.spec.task.networks
            && old.spec.endpoint_mode == svc.spec.endpoint_mode
            && old.spec.mode == svc.spec.mode
        {
            return Ok(());
        }
    }
    let needed = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        ServiceMode::Global => s.list::<Node>().count() as u64,
    };
    // Addresses the service holds already count as free for it.
    let held = old.map_or(0, |o| {
        s.list::<Task>()
            .filter(|t| t.service_id == o.id && t.holds_addresses())
            .count() as u64
    });
    svc.virtual_ips = rswarm_orchestrator::allocate_vips(s, svc, needed.saturating_sub(held))
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok(())
}

fn mode_name(m: &ServiceMode) -> &'static str {
    match m {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// Docker's `service ls --filter` keys.
fn service_matches(svc: &Service, filters: &[(String, String)]) -> bool {
    let keys = ["id", "name", "label", "mode"];
    keys.iter().all(|key| {
        let values: Vec<&String> = filters
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        values.is_empty()
            || values.iter().any(|v| match *key {
                "id" => svc.id.starts_with(v.as_str()),
                "name" => svc.spec.name.starts_with(v.as_str()),
                "mode" => mode_name(&svc.spec.mode) == v.as_str(),
                _ => match v.split_once('=') {
                    Some((k, val)) => svc.spec.labels.get(k).is_some_and(|x| x == val),
                    None => svc.spec.labels.contains_key(v.as_str()),
                },
            })
    })
}

fn parse_filters(raw: &[String], keys: &[&str]) -> Result<Vec<(String, String)>, Status> {
    raw.iter()
        .map(|f| {
            let (k, v) = f.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("bad filter {f:?}: use key=value"))
            })?;
            if !keys.contains(&k) {
                return Err(Status::invalid_argument(format!(
                    "invalid filter key {k:?}: use {}",
                    keys.join(", ")
                )));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn list(
    store: &Store,
    req: &pb::ListServicesRequest,
) -> Result<pb::ListServicesResponse, Status> {
    let filters = parse_filters(&req.filters, &["id", "name", "label", "mode"])?;
    if let Some((_, m)) = filters
        .iter()
        .find(|(k, v)| k == "mode" && v != "replicated" && v != "global")
    {
        return Err(Status::invalid_argument(format!(
            "invalid filter mode={m}: use replicated or global"
        )));
    }
    let services = store.read(|s| {
        s.list::<Service>()
            .filter(|svc| service_matches(svc, &filters))
            .map(|svc| {
                let (running, desired) = task_counts(s, svc);
                service_to_pb(svc, running, desired)
            })
            .collect()
    });
    Ok(pb::ListServicesResponse { services })
}

/// Removes the service and, in the same transaction, marks its tasks for removal: the agents stop
/// and remove the containers, the reaper deletes the tasks.
pub async fn remove(store: &Store, key: &str) -> Result<pb::RemoveServiceResponse, Status> {
    let id = store.read(|s| find_service(s, key).map(|svc| svc.id.clone()))?;
    store
        .update(|s| {
            let Some(svc) = s.get::<Service>(&id) else {
                return Ok(vec![]);
            };
            let mut ops = vec![Txn::delete(svc)];
            for t in s.list::<Task>().filter(|t| t.service_id == id) {
                if t.desired_state < TaskState::Remove {
                    let mut t = t.clone();
                    t.desired_state = TaskState::Remove;
                    ops.push(Txn::update(t));
                }
            }
            Ok(ops)
        })
        .await
        .map_err(store_status)?;
    tracing::info!(service = %id, "service removed");
    Ok(pb::RemoveServiceResponse { id })
}

pub fn list_tasks(
    store: &Store,
    req: &pb::ListTasksRequest,
) -> Result<pb::ListTasksResponse, Status> {
    let filters = parse_filters(
        &req.filters,
        &["service", "node", "desired-state", "id", "name"],
    )?;
    store.read(|s| {
        let mut services = Vec::new();
        let mut nodes = Vec::new();
        let mut desired = Vec::new();
        for (k, v) in &filters {
            match k.as_str() {
                "service" => services.push(find_service(s, v)?.id.clone()),
                "node" => nodes.push(find_node(s, v)?.id.clone()),
                "desired-state" => desired.push(match v.as_str() {
                    "running" => TaskState::Running,
                    "shutdown" => TaskState::Shutdown,
                    "accepted" => TaskState::Accepted,
                    "ready" => TaskState::Ready,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "invalid filter desired-state={other}: use running, shutdown, accepted or ready"
                        )))
                    }
                }),
                _ => {}
            }
        }
        let ids: Vec<&String> = filters.iter().filter(|(k, _)| k == "id").map(|(_, v)| v).collect();
        let names: Vec<&String> = filters.iter().filter(|(k, _)| k == "name").map(|(_, v)| v).collect();
        let tasks: Vec<&Task> = s
            .list::<Task>()
            .filter(|t| services.is_empty() || services.contains(&t.service_id))
            .filter(|t| nodes.is_empty() || nodes.contains(&t.node_id))
            .filter(|t| desired.is_empty() || desired.contains(&t.desired_state))
            .filter(|t| ids.is_empty() || ids.iter().any(|i| t.id.starts_with(i.as_str())))
            .filter(|t| names.is_empty() || names.iter().any(|n| t.name().starts_with(n.as_str())))
            .collect();
        let node_names = tasks
            .iter()
            .filter_map(|t| s.get::<Node>(&t.node_id))
            .map(|n| (n.id.clone(), n.hostname.clone()))
            .collect();
        Ok(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(task_to_pb).collect(),
            node_names,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_store::MemoryBackend;

    fn spec(name: &str, replicas: u64) -> rswarm_api::types::v1::ServiceSpec {
        rswarm_api::types::v1::ServiceSpec {
            name: name.into(),
            replicas,
            task: Some(rswarm_api::types::v1::TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_refuses_duplicates_and_bad_specs_storing_nothing() {
        let store = MemoryBackend::store(StateMachine::new());
        let created = create(
            &store,
            pb::CreateServiceRequest {
                spec: Some(spec("web", 2)),
            },
        )
        .await
        .unwrap();
        let svc = created.service.unwrap();
        assert_eq!(svc.desired_tasks, 2);
        let dup = create(
            &store,
            pb::CreateServiceRequest {
                spec: Some(spec("web", 1)),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{}", dup.message());
        let mut bad = spec("bad", 1);
        bad.task.as_mut().unwrap().placement = Some(rswarm_api::types::v1::Placement {
            constraints: vec!["node.labels.zone=a".into()],
            ..Default::default()
        });
        let e = create(&store, pb::CreateServiceRequest { spec: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert_eq!(store.list::<Service>().len(), 1);
    }

    #[tokio::test]
    async fn update_bumps_spec_version_only_for_task_changes_and_rollback_swaps() {
        let store = MemoryBackend::store(StateMachine::new());
        create(
            &store,
            pb::CreateServiceRequest {
                spec: Some(spec("web", 2)),
            },
        )
        .await
        .unwrap();
        // Scaling: no new spec version.
        update(
            &store,
            pb::UpdateServiceRequest {
                service: "web".into(),
                spec: Some(spec("web", 5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let svc = store.list::<Service>().remove(0);
        assert_eq!(svc.spec_version, 1);
        assert_eq!(svc.spec.mode, ServiceMode::Replicated { replicas: 5 });
        // A new image: a rolling update.
        let mut s2 = spec("web", 5);
        s2.task.as_mut().unwrap().image = "busybox:2".into();
        update(
            &store,
            pb::UpdateServiceRequest {
                service: "web".into(),
                spec: Some(s2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let svc = store.list::<Service>().remove(0);
        assert_eq!(svc.spec_version, 2);
        assert_eq!(
            svc.update_status.as_ref().unwrap().state,
            UpdateState::Updating
        );
        update(
            &store,
            pb::UpdateServiceRequest {
                service: "web".into(),
                rollback: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let svc = store.list::<Service>().remove(0);
        assert_eq!(svc.spec.task.image, "busybox");
        assert_eq!(svc.spec_version, 3);
        assert_eq!(
            svc.update_status.as_ref().unwrap().state,
            UpdateState::RollbackStarted
        );
        // Stale version, unknown service, mode change.
        let e = update(
            &store,
            pb::UpdateServiceRequest {
                service: "web".into(),
                version: 1,
                spec: Some(spec("web", 1)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
        let e = update(
            &store,
            pb::UpdateServiceRequest {
                service: "nope".into(),
                spec: Some(spec("nope", 1)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut global = spec("web", 0);
        global.mode = "global".into();
        let e = update(
            &store,
            pb::UpdateServiceRequest {
                service: "web".into(),
                spec: Some(global),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert!(
            e.message().contains("mode cannot be changed"),
            "{}",
            e.message()
        );
    }
}
