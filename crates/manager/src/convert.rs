//! Services and tasks between the wire (`rswarm.types.v1`) and the store. Wire enums are Docker's
//! lowercase strings; an unknown spelling is an `invalid_argument` naming the field and the accepted
//! values, so bad input is refused before anything is stored.

use rswarm_api::types::v1 as pb;
use rswarm_store::{
    EndpointMode, FailureAction, HealthCheck, Mount, MountKind, Network, NetworkAttachment,
    NetworkAttachmentConfig, NetworkSpec, Placement, PortConfig, Resources, RestartCondition,
    RestartPolicy, Service, ServiceMode, ServiceSpec, Subnet, Task, TaskSpec, TaskState,
    TaskStatus, UpdateConfig, UpdateOrder, UpdateStatus,
};
use tonic::Status;

use crate::rfc3339_ms;

fn invalid(field: &str, value: &str, accepted: &str) -> Status {
    Status::invalid_argument(format!("invalid {field} {value:?}: use {accepted}"))
}

/// The API's service spec → the store's. Enumerations are checked here; the rest of the spec is
/// validated by `rswarm_orchestrator::validate_spec`.
pub fn spec_from_pb(spec: pb::ServiceSpec) -> Result<ServiceSpec, Status> {
    let mode = match spec.mode.as_str() {
        "" | "replicated" => ServiceMode::Replicated {
            replicas: spec.replicas,
        },
        "global" if spec.replicas == 0 => ServiceMode::Global,
        "global" => {
            return Err(Status::invalid_argument(
                "replicas can only be used with replicated mode",
            ))
        }
        other => return Err(invalid("mode", other, "replicated or global")),
    };
    Ok(ServiceSpec {
        name: spec.name,
        labels: spec.labels.into_iter().collect(),
        task: task_spec_from_pb(spec.task.unwrap_or_default())?,
        mode,
        update: update_from_pb(spec.update, "update")?,
        rollback: update_from_pb(spec.rollback, "rollback")?,
        ports: spec
            .ports
            .into_iter()
            .map(port_from_pb)
            .collect::<Result<_, _>>()?,
        endpoint_mode: match spec.endpoint_mode.as_str() {
            "" | "vip" => EndpointMode::Vip,
            "dnsrr" => EndpointMode::Dnsrr,
            other => return Err(invalid("endpoint mode", other, "vip or dnsrr")),
        },
    })
}

fn port_from_pb(p: pb::PortConfig) -> Result<PortConfig, Status> {
    let port = |v: u32, what: &str| {
        u16::try_from(v)
            .map_err(|_| Status::invalid_argument(format!("invalid {what} port {v}: use 1-65535")))
    };
    let protocol = match p.protocol.as_str() {
        "" | "tcp" => "tcp",
        "udp" => "udp",
        other => return Err(invalid("protocol", other, "tcp or udp")),
    };
    Ok(PortConfig {
        target: port(p.target, "target")?,
        published: port(p.published, "published")?,
        protocol: protocol.into(),
    })
}

fn task_spec_from_pb(t: pb::TaskSpec) -> Result<TaskSpec, Status> {
    let resources = t.resources.unwrap_or_default();
    let restart = match t.restart {
        None => RestartPolicy::default(),
        Some(r) => RestartPolicy {
            condition: match r.condition.as_str() {
                "" => RestartCondition::Any,
                c => RestartCondition::parse(c)
                    .ok_or_else(|| invalid("restart condition", c, "any, on-failure or none"))?,
            },
            delay_ms: r.delay_ms,
            max_attempts: r.max_attempts,
            window_ms: r.window_ms,
        },
    };
    let placement = t.placement.unwrap_or_default();
    Ok(TaskSpec {
        image: t.image,
        command: t.command_set.then_some(t.command),
        args: t.args,
        env: t.env,
        workdir: t.workdir,
        user: t.user,
        hostname: t.hostname,
        labels: t.labels.into_iter().collect(),
        mounts: t
            .mounts
            .into_iter()
            .map(|m| {
                let kind = match m.r#type.as_str() {
                    "" | "volume" => MountKind::Volume,
                    "bind" => MountKind::Bind,
                    "tmpfs" => MountKind::Tmpfs,
                    other => return Err(invalid("mount type", other, "bind, volume or tmpfs")),
                };
                Ok(Mount {
                    kind,
                    source: m.source,
                    target: m.target,
                    read_only: m.read_only,
                    tmpfs_size: m.tmpfs_size,
                    tmpfs_mode: m.tmpfs_mode,
                })
            })
            .collect::<Result<_, _>>()?,
        read_only: t.read_only,
        stop_signal: t.stop_signal,
        stop_grace_ms: t.stop_grace_ms,
        resources: Resources {
            limit_nano_cpus: resources.limit_nano_cpus,
            limit_memory: resources.limit_memory,
            reserve_nano_cpus: resources.reserve_nano_cpus,
            reserve_memory: resources.reserve_memory,
        },
        restart,
        networks: t
            .networks
            .into_iter()
            .map(|n| NetworkAttachmentConfig {
                target: n.target,
                aliases: n.aliases,
            })
            .collect(),
        placement: Placement {
            constraints: placement.constraints,
            preferences: placement.preferences,
            max_replicas_per_node: placement.max_replicas_per_node,
            platforms: placement.platforms,
        },
        healthcheck: t.healthcheck.map(|h| HealthCheck {
            test: h.test,
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
        registry_auth: t.registry_auth,
        force_update: t.force_update,
    })
}

fn update_from_pb(u: Option<pb::UpdateConfig>, which: &str) -> Result<UpdateConfig, Status> {
    let Some(u) = u else {
        return Ok(UpdateConfig::default());
    };
    let d = UpdateConfig::default();
    Ok(UpdateConfig {
        parallelism: u.parallelism,
        delay_ms: u.delay_ms,
        failure_action: match u.failure_action.as_str() {
            "" => d.failure_action,
            "pause" => FailureAction::Pause,
            "continue" => FailureAction::Continue,
            "rollback" if which == "update" => FailureAction::Rollback,
            other => {
                let accepted = if which == "update" {
                    "pause, continue or rollback"
                } else {
                    "pause or continue"
                };
                return Err(invalid(&format!("{which} failure action"), other, accepted));
            }
        },
        monitor_ms: u.monitor_ms,
        max_failure_ratio_milli: u.max_failure_ratio_milli,
        order: match u.order.as_str() {
            "" => d.order,
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                return Err(invalid(
                    &format!("{which} order"),
                    other,
                    "stop-first or start-first",
                ))
            }
        },
    })
}

/// The store's service spec → the API's.
pub fn spec_to_pb(spec: &ServiceSpec) -> pb::ServiceSpec {
    let (mode, replicas) = match spec.mode {
        ServiceMode::Replicated { replicas } => ("replicated", replicas),
        ServiceMode::Global => ("global", 0),
    };
    pb::ServiceSpec {
        name: spec.name.clone(),
        labels: spec.labels.clone().into_iter().collect(),
        task: Some(task_spec_to_pb(&spec.task)),
        mode: mode.into(),
        replicas,
        update: Some(update_to_pb(&spec.update)),
        rollback: Some(update_to_pb(&spec.rollback)),
        ports: spec.ports.iter().map(port_to_pb).collect(),
        endpoint_mode: spec.endpoint_mode.as_str().into(),
    }
}

fn port_to_pb(p: &PortConfig) -> pb::PortConfig {
    pb::PortConfig {
        target: p.target.into(),
        published: p.published.into(),
        protocol: p.protocol.clone(),
    }
}

/// The store's task spec → the API's (also what agents receive).
pub fn task_spec_to_pb(t: &TaskSpec) -> pb::TaskSpec {
    pb::TaskSpec {
        image: t.image.clone(),
        command: t.command.clone().unwrap_or_default(),
        command_set: t.command.is_some(),
        args: t.args.clone(),
        env: t.env.clone(),
        workdir: t.workdir.clone(),
        user: t.user.clone(),
        hostname: t.hostname.clone(),
        labels: t.labels.clone().into_iter().collect(),
        mounts: t
            .mounts
            .iter()
            .map(|m| pb::Mount {
                r#type: m.kind.as_str().into(),
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size: m.tmpfs_size,
                tmpfs_mode: m.tmpfs_mode,
            })
            .collect(),
        read_only: t.read_only,
        stop_signal: t.stop_signal.clone(),
        stop_grace_ms: t.stop_grace_ms,
        resources: Some(pb::Resources {
            limit_nano_cpus: t.resources.limit_nano_cpus,
            limit_memory: t.resources.limit_memory,
            reserve_nano_cpus: t.resources.reserve_nano_cpus,
            reserve_memory: t.resources.reserve_memory,
        }),
        restart: Some(pb::RestartPolicy {
            condition: t.restart.condition.as_str().into(),
            delay_ms: t.restart.delay_ms,
            max_attempts: t.restart.max_attempts,
            window_ms: t.restart.window_ms,
        }),
        placement: Some(pb::Placement {
            constraints: t.placement.constraints.clone(),
            preferences: t.placement.preferences.clone(),
            max_replicas_per_node: t.placement.max_replicas_per_node,
            platforms: t.placement.platforms.clone(),
        }),
        healthcheck: t.healthcheck.as_ref().map(|h| pb::HealthCheck {
            test: h.test.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }),
        registry_auth: t.registry_auth.clone(),
        force_update: t.force_update,
        networks: t
            .networks
            .iter()
            .map(|n| pb::NetworkAttachmentConfig {
                target: n.target.clone(),
                aliases: n.aliases.clone(),
            })
            .collect(),
    }
}

fn update_to_pb(u: &UpdateConfig) -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: u.parallelism,
        delay_ms: u.delay_ms,
        failure_action: u.failure_action.as_str().into(),
        monitor_ms: u.monitor_ms,
        max_failure_ratio_milli: u.max_failure_ratio_milli,
        order: u.order.as_str().into(),
    }
}

fn update_status_to_pb(u: &UpdateStatus) -> pb::UpdateStatus {
    pb::UpdateStatus {
        state: u.state.as_str().into(),
        started_at: rfc3339_ms(u.started_at_ms),
        completed_at: rfc3339_ms(u.completed_at_ms),
        message: u.message.clone(),
    }
}

/// The API form of a service, with its task counts.
pub fn service_to_pb(s: &Service, running: u64, desired: u64) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        version: s.meta.version,
        spec: Some(spec_to_pb(&s.spec)),
        previous_spec: s.previous_spec.as_ref().map(spec_to_pb),
        update_status: s.update_status.as_ref().map(update_status_to_pb),
        created_at: rfc3339_ms(s.meta.created_at_ms),
        updated_at: rfc3339_ms(s.meta.updated_at_ms),
        running_tasks: running,
        desired_tasks: desired,
        spec_version: s.spec_version,
        virtual_ips: s
            .virtual_ips
            .iter()
            .map(|a| attachment_to_pb(a, None))
            .collect(),
    }
}

/// An address on a network, as `addr/prefix` when the network is known.
pub fn attachment_to_pb(a: &NetworkAttachment, network: Option<&Network>) -> pb::NetworkAttachment {
    pb::NetworkAttachment {
        network_id: a.network_id.clone(),
        network_name: network.map(|n| n.spec.name.clone()).unwrap_or_default(),
        addr: match network {
            Some(n) => format!("{}/{}", a.addr, n.subnet.prefix_len),
            None => a.addr.to_string(),
        },
        aliases: a.aliases.clone(),
    }
}

/// The API's network spec → the store's; addresses must parse.
pub fn network_spec_from_pb(spec: pb::NetworkSpec) -> Result<NetworkSpec, Status> {
    let driver = match spec.driver.as_str() {
        "" | "overlay" => "overlay",
        other => {
            return Err(Status::invalid_argument(format!(
                "network driver {other:?} is not supported: cluster networks use the overlay driver"
            )))
        }
    };
    let subnet = match spec.subnet.as_str() {
        "" => None,
        s => Some(s.parse::<Subnet>().map_err(Status::invalid_argument)?),
    };
    let gateway = match spec.gateway.as_str() {
        "" => None,
        g => Some(g.parse().map_err(|_| {
            Status::invalid_argument(format!("invalid gateway {g:?}: use an IPv4 address"))
        })?),
    };
    if spec.mtu != 0 && !(68..=65535).contains(&spec.mtu) {
        return Err(Status::invalid_argument(format!(
            "invalid mtu {}: use 68-65535",
            spec.mtu
        )));
    }
    Ok(NetworkSpec {
        name: spec.name,
        driver: driver.into(),
        subnet,
        gateway,
        attachable: spec.attachable,
        internal: spec.internal,
        mtu: spec.mtu,
        labels: spec.labels.into_iter().collect(),
    })
}

/// The API form of a network, with who uses it.
pub fn network_to_pb(n: &Network, services: Vec<String>, tasks: u64) -> pb::Network {
    pb::Network {
        id: n.id.clone(),
        version: n.meta.version,
        spec: Some(pb::NetworkSpec {
            name: n.spec.name.clone(),
            driver: n.spec.driver.clone(),
            subnet: n.spec.subnet.map(|s| s.to_string()).unwrap_or_default(),
            gateway: n.spec.gateway.map(|g| g.to_string()).unwrap_or_default(),
            attachable: n.spec.attachable,
            internal: n.spec.internal,
            mtu: n.spec.mtu,
            labels: n.spec.labels.clone().into_iter().collect(),
        }),
        subnet: n.subnet.to_string(),
        gateway: n.gateway.to_string(),
        vni: n.vni,
        created_at: rfc3339_ms(n.meta.created_at_ms),
        services,
        tasks,
        endpoints: Vec::new(),
        peers: Vec::new(),
        scope: "swarm".into(),
        options: Default::default(),
    }
}

/// RFC 3339 with milliseconds (task timestamps are compared and shown as "… ago").
pub fn rfc3339_millis(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the epoch from RFC 3339; `None` when empty or malformed.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

pub fn task_status_to_pb(s: &TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        state: s.state.as_str().into(),
        timestamp: rfc3339_millis(s.timestamp_ms),
        message: s.message.clone(),
        err: s.err.clone(),
        container_id: s.container_id.clone(),
        has_exit_code: s.exit_code.is_some(),
        exit_code: s.exit_code.unwrap_or_default(),
    }
}

/// An agent's report → the store's status. `now_ms` stands in for a missing or bad timestamp.
pub fn task_status_from_pb(s: &pb::TaskStatus, now_ms: u64) -> Result<TaskStatus, Status> {
    let state = TaskState::parse(&s.state).ok_or_else(|| {
        invalid(
            "task state",
            &s.state,
            "a task state such as running or failed",
        )
    })?;
    Ok(TaskStatus {
        state,
        timestamp_ms: parse_rfc3339_ms(&s.timestamp).unwrap_or(now_ms),
        message: s.message.clone(),
        err: s.err.clone(),
        container_id: s.container_id.clone(),
        exit_code: s.has_exit_code.then_some(s.exit_code),
    })
}

pub fn task_to_pb(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        version: t.meta.version,
        service_id: t.service_id.clone(),
        service_name: t.service_name.clone(),
        slot: t.slot,
        node_id: t.node_id.clone(),
        spec: Some(task_spec_to_pb(&t.spec)),
        spec_version: t.spec_version,
        ports: t.ports.iter().map(port_to_pb).collect(),
        desired_state: t.desired_state.as_str().into(),
        status: Some(task_status_to_pb(&t.status)),
        created_at: rfc3339_millis(t.meta.created_at_ms),
        name: t.name(),
        networks: t
            .networks
            .iter()
            .map(|a| attachment_to_pb(a, None))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let spec = ServiceSpec {
            name: "web".into(),
            mode: ServiceMode::Replicated { replicas: 6 },
            task: TaskSpec {
                image: "busybox".into(),
                command: Some(vec![]),
                args: vec!["sleep".into(), "1".into()],
                mounts: vec![Mount {
                    kind: MountKind::Tmpfs,
                    target: "/t".into(),
                    tmpfs_size: 1 << 20,
                    ..Mount::default()
                }],
                healthcheck: Some(HealthCheck {
                    test: vec!["CMD-SHELL".into(), "true".into()],
                    ..HealthCheck::default()
                }),
                ..TaskSpec::default()
            },
            ports: vec![PortConfig {
                target: 80,
                published: 8080,
                protocol: "udp".into(),
            }],
            ..ServiceSpec::default()
        };
        assert_eq!(spec_from_pb(spec_to_pb(&spec)).unwrap(), spec);
        let global = ServiceSpec {
            mode: ServiceMode::Global,
            ..spec
        };
        assert_eq!(spec_from_pb(spec_to_pb(&global)).unwrap(), global);
    }

    #[test]
    fn bad_enumerations_are_refused_naming_the_value() {
        let mut spec = pb::ServiceSpec {
            name: "web".into(),
            mode: "sometimes".into(),
            ..Default::default()
        };
        let e = spec_from_pb(spec.clone()).unwrap_err();
        assert!(e.message().contains("\"sometimes\""), "{}", e.message());
        spec.mode = "global".into();
        spec.replicas = 3;
        assert!(spec_from_pb(spec.clone()).is_err());
        spec.replicas = 0;
        spec.task = Some(pb::TaskSpec {
            mounts: vec![pb::Mount {
                r#type: "nfs".into(),
                target: "/x".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let e = spec_from_pb(spec).unwrap_err();
        assert!(
            e.message().contains("mount type \"nfs\""),
            "{}",
            e.message()
        );
    }

    #[test]
    fn task_status_timestamps_keep_milliseconds() {
        let s = TaskStatus {
            state: TaskState::Running,
            timestamp_ms: 1_700_000_000_123,
            exit_code: Some(3),
            ..TaskStatus::default()
        };
        assert_eq!(task_status_from_pb(&task_status_to_pb(&s), 0).unwrap(), s);
    }
}
