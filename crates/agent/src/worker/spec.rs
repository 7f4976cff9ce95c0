//! A task as the engine sees it: the container's name, labels and create request, derived from the
//! task alone (pure, so it is tested without an engine).

use std::collections::BTreeMap;

use rswarm_api::types::v1::{HealthCheck, Mount, PortConfig, Task, TaskSpec};
use rswarm_image::Credentials;
use rswarm_runtime::spec::ContainerConfig;

use crate::engine::{CreateRequest, EngineError};

/// The label every task container carries: how a restarted agent finds its tasks' containers.
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_NODE_ID: &str = "com.docker.swarm.node.id";

/// Task containers join the node's local bridge.
const NETWORK: &str = "bridge";

/// `<service>.<slot>.<task id>`, or `<service>.<node id>.<task id>` for a global service's task.
pub fn container_name(task: &Task, node_id: &str) -> String {
    let service = if task.service_name.is_empty() {
        &task.service_id
    } else {
        &task.service_name
    };
    let middle = if task.slot > 0 {
        task.slot.to_string()
    } else if task.node_id.is_empty() {
        node_id.to_string()
    } else {
        task.node_id.clone()
    };
    format!("{service}.{middle}.{}", task.id)
}

/// The swarm labels over the spec's own (the swarm's win on a clash).
pub fn labels(task: &Task, node_id: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = task
        .spec
        .as_ref()
        .map(|s| s.labels.clone().into_iter().collect())
        .unwrap_or_default();
    let node = if task.node_id.is_empty() {
        node_id
    } else {
        &task.node_id
    };
    labels.insert(LABEL_TASK_ID.into(), task.id.clone());
    labels.insert(LABEL_TASK_NAME.into(), container_name(task, node_id));
    labels.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), task.service_name.clone());
    labels.insert(LABEL_NODE_ID.into(), node.to_string());
    labels
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Milliseconds of stop grace → the engine's whole seconds (rounded up, at least 1 when set).
pub fn stop_timeout(grace_ms: u64) -> Option<u32> {
    (grace_ms > 0).then(|| u32::try_from(grace_ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX))
}

/// A service mount → the engine's `-v` or `--tmpfs` string.
enum MountArg {
    Volume(String),
    Tmpfs(String),
}

fn mount_arg(m: &Mount, anonymous: &mut dyn FnMut() -> String) -> Result<MountArg, EngineError> {
    let ro = if m.read_only { ":ro" } else { "" };
    if m.target.is_empty() {
        return Err(EngineError::invalid(format!(
            "invalid mount of type {:?}: the target is missing",
            m.r#type
        )));
    }
    match m.r#type.as_str() {
        "bind" => {
            if !m.source.starts_with('/') {
                return Err(EngineError::invalid(format!(
                    "invalid bind mount source {:?}: it must be an absolute path on the node",
                    m.source
                )));
            }
            Ok(MountArg::Volume(format!("{}:{}{ro}", m.source, m.target)))
        }
        "volume" | "" => {
            if m.source.is_empty() {
                if m.read_only {
                    // The engine names anonymous volumes only when no mode is given.
                    Ok(MountArg::Volume(format!("{}:{}:ro", anonymous(), m.target)))
                } else {
                    Ok(MountArg::Volume(m.target.clone()))
                }
            } else if m.source.starts_with('/') {
                Err(EngineError::invalid(format!(
                    "invalid volume name {:?}: use a name, or a mount of type bind for a path",
                    m.source
                )))
            } else {
                Ok(MountArg::Volume(format!("{}:{}{ro}", m.source, m.target)))
            }
        }
        "tmpfs" => {
            let mut opts = Vec::new();
            if m.tmpfs_size > 0 {
                opts.push(format!("size={}", m.tmpfs_size));
            }
            if m.tmpfs_mode > 0 {
                opts.push(format!("mode={:o}", m.tmpfs_mode));
            }
            Ok(MountArg::Tmpfs(if opts.is_empty() {
                m.target.clone()
            } else {
                format!("{}:{}", m.target, opts.join(","))
            }))
        }
        other => Err(EngineError::invalid(format!(
            "unsupported mount type {other:?}: use bind, volume or tmpfs"
        ))),
    }
}

/// A published port → the engine's `-p` string (`published:target/proto`, or `target/proto` for
/// any free port).
pub fn publish_arg(p: &PortConfig) -> Result<String, EngineError> {
    let proto = match p.protocol.as_str() {
        "" | "tcp" => "tcp",
        "udp" => "udp",
        other => {
            return Err(EngineError::invalid(format!(
                "unsupported port protocol {other:?}: use tcp or udp"
            )))
        }
    };
    if p.target == 0 || p.target > u32::from(u16::MAX) || p.published > u32::from(u16::MAX) {
        return Err(EngineError::invalid(format!(
            "invalid port {}:{}: ports are 1-65535",
            p.published, p.target
        )));
    }
    Ok(if p.published == 0 {
        format!("{}/{proto}", p.target)
    } else {
        format!("{}:{}/{proto}", p.published, p.target)
    })
}

fn limit(v: u64) -> Option<i64> {
    (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The engine's create request for a task's container.
pub fn create_request(task: &Task, node_id: &str) -> Result<CreateRequest, EngineError> {
    create_request_with(task, node_id, &mut || super::random_hex(32))
}

/// [`create_request`] with the namer of read-only anonymous volumes given (for tests).
pub fn create_request_with(
    task: &Task,
    node_id: &str,
    anonymous: &mut dyn FnMut() -> String,
) -> Result<CreateRequest, EngineError> {
    let spec: &TaskSpec = task
        .spec
        .as_ref()
        .ok_or_else(|| EngineError::invalid(format!("task {} has no spec", task.id)))?;
    if spec.image.is_empty() {
        return Err(EngineError::invalid(format!(
            "task {} names no image",
            task.id
        )));
    }
    let labels = labels(task, node_id);
    let resources = spec.resources.unwrap_or_default();
    let config = ContainerConfig {
        hostname: spec.hostname.clone(),
        entrypoint: spec.command_set.then(|| spec.command.clone()),
        cmd: spec.args.clone(),
        env: spec.env.clone(),
        workdir: opt(&spec.workdir),
        user: opt(&spec.user),
        read_only: spec.read_only,
        tty: false,
        memory: limit(resources.limit_memory),
        memory_swap: None,
        nano_cpus: limit(resources.limit_nano_cpus),
        pids_limit: None,
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        privileged: false,
        labels: labels.clone(),
        init: false,
        stop_signal: opt(&spec.stop_signal),
    };
    let mut volumes = Vec::new();
    let mut tmpfs = Vec::new();
    for m in &spec.mounts {
        match mount_arg(m, anonymous)? {
            MountArg::Volume(v) => volumes.push(v),
            MountArg::Tmpfs(t) => tmpfs.push(t),
        }
    }
    let publish = task
        .ports
        .iter()
        .map(publish_arg)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreateRequest {
        image: spec.image.clone(),
        name: Some(container_name(task, node_id)),
        config,
        publish,
        volumes,
        tmpfs,
        network: NETWORK.into(),
        auto_remove: false,
        stop_timeout: stop_timeout(spec.stop_grace_ms),
        labels,
        network_aliases: Vec::new(),
        ip: String::new(),
        overlays: Vec::new(),
    })
}

/// `--with-registry-auth`'s value: base64 of `user:password` (Docker's base64 JSON
/// `{"username", "password"}` is accepted too). Empty: no credentials.
pub fn registry_credentials(auth: &str) -> Result<Option<Credentials>, EngineError> {
    let auth = auth.trim();
    if auth.is_empty() {
        return Ok(None);
    }
    let bad = || EngineError::invalid("invalid registry auth: expected base64 of user:password");
    let bytes = base64_decode(auth).ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    if text.trim_start().starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Json {
            #[serde(default)]
            username: String,
            #[serde(default)]
            password: String,
        }
        let j: Json = serde_json::from_str(&text).map_err(|_| bad())?;
        return Ok((!j.username.is_empty()).then_some(Credentials {
            username: j.username,
            password: j.password,
        }));
    }
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials {
        username: user.to_string(),
        password: password.to_string(),
    }))
}

/// Decodes standard or URL-safe base64, padded or not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' | b'-' => Some(62),
            b'/' | b'_' => Some(63),
            _ => None,
        }
    }
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Whether the spec asks for health checks, and with what settings (Docker's defaults filled in).
pub fn health_config(spec: Option<&TaskSpec>) -> Option<super::health::HealthConfig> {
    let hc: &HealthCheck = spec?.healthcheck.as_ref()?;
    super::health::HealthConfig::from_wire(hc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rswarm_api::types::v1::Resources;

    fn task() -> Task {
        Task {
            id: "t1abc".into(),
            service_id: "svc1".into(),
            service_name: "web".into(),
            slot: 3,
            node_id: "node9".into(),
            desired_state: "running".into(),
            ports: vec![
                PortConfig {
                    target: 80,
                    published: 8080,
                    protocol: String::new(),
                },
                PortConfig {
                    target: 53,
                    published: 0,
                    protocol: "udp".into(),
                },
            ],
            spec: Some(TaskSpec {
                image: "nginx:alpine".into(),
                command: vec!["/bin/sh".into(), "-c".into()],
                command_set: true,
                args: vec!["echo hi".into()],
                env: vec!["A=1".into()],
                workdir: "/srv".into(),
                user: "nobody".into(),
                hostname: "h".into(),
                labels: [("app".to_string(), "x".to_string())].into(),
                mounts: vec![
                    Mount {
                        r#type: "bind".into(),
                        source: "/srv/data".into(),
                        target: "/data".into(),
                        read_only: true,
                        ..Default::default()
                    },
                    Mount {
                        r#type: "volume".into(),
                        source: "db".into(),
                        target: "/db".into(),
                        ..Default::default()
                    },
                    Mount {
                        r#type: "volume".into(),
                        target: "/cache".into(),
                        ..Default::default()
                    },
                    Mount {
                        r#type: "volume".into(),
                        target: "/ro".into(),
                        read_only: true,
                        ..Default::default()
                    },
                    Mount {
                        r#type: "tmpfs".into(),
                        target: "/run".into(),
                        tmpfs_size: 16 << 20,
                        tmpfs_mode: 0o1777,
                        ..Default::default()
                    },
                ],
                read_only: true,
                stop_signal: "SIGINT".into(),
                stop_grace_ms: 1500,
                resources: Some(Resources {
                    limit_nano_cpus: 500_000_000,
                    limit_memory: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names() {
        let t = task();
        assert_eq!(container_name(&t, "me"), "web.3.t1abc");
        let mut g = t.clone();
        g.slot = 0;
        assert_eq!(container_name(&g, "me"), "web.node9.t1abc");
        g.node_id.clear();
        assert_eq!(container_name(&g, "me"), "web.me.t1abc");
        crate::engine::parse::check_name(&container_name(&t, "me")).unwrap();
    }

    #[test]
    fn mapping() {
        let t = task();
        let req = create_request_with(&t, "me", &mut || "anon".to_string()).unwrap();
        assert_eq!(req.image, "nginx:alpine");
        assert_eq!(req.name.as_deref(), Some("web.3.t1abc"));
        assert_eq!(
            req.config.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(req.config.cmd, vec!["echo hi".to_string()]);
        assert_eq!(req.config.env, vec!["A=1".to_string()]);
        assert_eq!(req.config.workdir.as_deref(), Some("/srv"));
        assert_eq!(req.config.user.as_deref(), Some("nobody"));
        assert_eq!(req.config.hostname, "h");
        assert!(req.config.read_only);
        assert_eq!(req.config.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(req.config.memory, Some(64 << 20));
        assert_eq!(req.config.nano_cpus, Some(500_000_000));
        assert!(!req.config.init);
        assert_eq!(req.stop_timeout, Some(2));
        assert_eq!(req.network, "bridge");
        assert_eq!(
            req.volumes,
            vec![
                "/srv/data:/data:ro".to_string(),
                "db:/db".to_string(),
                "/cache".to_string(),
                "anon:/ro:ro".to_string(),
            ]
        );
        assert_eq!(req.tmpfs, vec!["/run:size=16777216,mode=1777".to_string()]);
        assert_eq!(
            req.publish,
            vec!["8080:80/tcp".to_string(), "53/udp".to_string()]
        );
        for p in &req.publish {
            rswarm_network::parse_publish(p).unwrap();
        }
        for v in &req.tmpfs {
            crate::engine::parse::parse_tmpfs(v).unwrap();
        }
        assert_eq!(req.labels.get(LABEL_TASK_ID).unwrap(), "t1abc");
        assert_eq!(req.labels.get(LABEL_TASK_NAME).unwrap(), "web.3.t1abc");
        assert_eq!(req.labels.get(LABEL_SERVICE_ID).unwrap(), "svc1");
        assert_eq!(req.labels.get(LABEL_SERVICE_NAME).unwrap(), "web");
        assert_eq!(req.labels.get(LABEL_NODE_ID).unwrap(), "node9");
        assert_eq!(req.labels.get("app").unwrap(), "x");
        assert_eq!(req.config.labels, req.labels);
    }

    #[test]
    fn mapping_defaults_and_errors() {
        let mut t = task();
        let spec = t.spec.as_mut().unwrap();
        spec.command_set = false;
        spec.stop_grace_ms = 0;
        spec.mounts.clear();
        spec.resources = None;
        spec.workdir.clear();
        let req = create_request(&t, "me").unwrap();
        assert_eq!(req.config.entrypoint, None);
        assert_eq!(req.stop_timeout, None);
        assert_eq!(req.config.memory, None);
        assert_eq!(req.config.workdir, None);

        assert_eq!(stop_timeout(1), Some(1));
        assert_eq!(stop_timeout(10_000), Some(10));

        let mut bad = task();
        bad.spec.as_mut().unwrap().mounts = vec![Mount {
            r#type: "bind".into(),
            source: "rel".into(),
            target: "/x".into(),
            ..Default::default()
        }];
        assert!(create_request(&bad, "me").is_err());
        let mut bad = task();
        bad.ports[0].protocol = "sctp".into();
        assert!(create_request(&bad, "me").is_err());
        let mut bad = task();
        bad.spec = None;
        assert!(create_request(&bad, "me").is_err());
    }

    #[test]
    fn registry_auth() {
        assert!(registry_credentials("").unwrap().is_none());
        // base64("alice:s3cr:et")
        let c = registry_credentials("YWxpY2U6czNjcjpldA==")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.password, "s3cr:et");
        // base64(r#"{"username":"bob","password":"pw"}"#)
        let c = registry_credentials("eyJ1c2VybmFtZSI6ImJvYiIsInBhc3N3b3JkIjoicHcifQ")
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.password, "pw");
        assert!(registry_credentials("!!!").is_err());
        // base64("nocolon")
        assert!(registry_credentials("bm9jb2xvbg==").is_err());
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
    }
}
