//! Validation of a [`ServiceSpec`] before it is stored (`service create` / `service update`).
//!
//! Every error names the offending value and says what is accepted. Fields that are unsigned in the
//! data model cannot be negative, so there is nothing to check for them (replica counts, restart
//! delays and windows, health-check durations).

use std::collections::BTreeSet;

use rswarm_store::{MountKind, ServiceSpec, UpdateConfig};

use crate::constraint::{Constraint, ConstraintError, Preference};

/// Why a service spec was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The service name is not a DNS label.
    #[error("invalid service name {0:?}: use 1 to 63 letters, digits and '-', not starting or ending with '-'")]
    InvalidName(String),
    /// No image.
    #[error("the task spec has no image: give an image reference such as nginx:latest")]
    EmptyImage,
    /// A constraint or placement preference did not parse.
    #[error(transparent)]
    Placement(#[from] ConstraintError),
    /// A platform that is not `os/arch`.
    #[error(
        "invalid platform {0:?}: write os/arch (optionally os/arch/variant), e.g. linux/amd64"
    )]
    InvalidPlatform(String),
    /// A mount target that is not an absolute path.
    #[error("mount target {0:?} is not an absolute path: give the path inside the container, e.g. /data")]
    MountTargetNotAbsolute(String),
    /// Two mounts on the same target.
    #[error("mount target {0:?} is used by more than one mount: give each mount its own target")]
    DuplicateMountTarget(String),
    /// A bind mount whose source is not an absolute host path.
    #[error("bind mount source {src:?} (target {target:?}) is not an absolute path: give the host path to mount, e.g. /srv/data")]
    BindSourceNotAbsolute {
        /// The source given.
        src: String,
        /// The mount's target.
        target: String,
    },
    /// A tmpfs mount with a source.
    #[error(
        "tmpfs mount on {target:?} has a source ({src:?}): a tmpfs has no source, leave it empty"
    )]
    TmpfsWithSource {
        /// The source given.
        src: String,
        /// The mount's target.
        target: String,
    },
    /// tmpfs options on a mount that is not a tmpfs.
    #[error(
        "{kind} mount on {target:?} sets tmpfs size or mode: these apply to tmpfs mounts only"
    )]
    TmpfsOptionsOnOtherMount {
        /// The mount's kind.
        kind: &'static str,
        /// The mount's target.
        target: String,
    },
    /// A volume name with characters Docker does not allow.
    #[error("invalid volume name {0:?}: use at least 2 characters among letters, digits, '_', '.' and '-', starting with a letter or digit (or leave it empty for an anonymous volume)")]
    InvalidVolumeName(String),
    /// A published port without a target port.
    #[error(
        "port {published}->0/{protocol} has no target port: give the container port, e.g. 8080:80"
    )]
    PortTargetZero {
        /// The published port.
        published: u16,
        /// The protocol.
        protocol: String,
    },
    /// A protocol other than tcp or udp.
    #[error("port {published}:{target} has protocol {protocol:?}: use tcp or udp")]
    InvalidProtocol {
        /// The published port.
        published: u16,
        /// The target port.
        target: u16,
        /// The protocol given.
        protocol: String,
    },
    /// The same published port and protocol twice.
    #[error("published port {published}/{protocol} is given more than once: publish each host port once")]
    DuplicatePublishedPort {
        /// The published port.
        published: u16,
        /// The protocol.
        protocol: String,
    },
    /// A health-check test in none of Docker's forms.
    #[error("invalid health-check test {0:?}: use [\"CMD\", program, args…], [\"CMD-SHELL\", command], [\"NONE\"], or an empty list to inherit the image's")]
    InvalidHealthCheck(Vec<String>),
    /// A failure ratio above 1.
    #[error("{which} max failure ratio {milli}/1000 is above 1: give a value from 0 to 1000 thousandths")]
    FailureRatio {
        /// `update` or `rollback`.
        which: &'static str,
        /// The ratio given, in thousandths.
        milli: u64,
    },
    /// Too little CPU or memory to mean anything (swarmkit's minimums).
    #[error("{what} {value} is below the minimum {min}: give 0 (none) or at least {min}")]
    ResourceTooSmall {
        /// What (e.g. `memory limit`).
        what: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value accepted.
        min: u64,
    },
    /// A reservation above its limit.
    #[error("{what} reservation {reserve} exceeds its limit {limit}: reserve at most the limit")]
    ReservationAboveLimit {
        /// `cpu` or `memory`.
        what: &'static str,
        /// The reservation.
        reserve: u64,
        /// The limit.
        limit: u64,
    },
    /// A restart policy that limits attempts within a window of 0 attempts makes no sense.
    #[error("restart policy has a window of {window_ms} ms but no maximum number of attempts: set max attempts, or drop the window")]
    RestartWindowWithoutMaxAttempts {
        /// The window given.
        window_ms: u64,
    },
}

/// Docker's smallest CPU value: 0.001 CPU.
const MIN_NANO_CPUS: u64 = 1_000_000;
/// Docker's smallest memory value: 4 MiB.
const MIN_MEMORY: u64 = 4 * 1024 * 1024;

/// Whether `name` is a DNS label: 1–63 ASCII letters, digits and `-`, not starting or ending
/// with `-` (swarmkit's rule for service names).
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Docker's volume-name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn valid_volume_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    name.len() >= 2 && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_platform(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts.iter().all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The protocol a port uses: an empty protocol means tcp (Docker's default).
pub(crate) fn port_protocol(protocol: &str) -> Option<&'static str> {
    if protocol.is_empty() || protocol.eq_ignore_ascii_case("tcp") {
        Some("tcp")
    } else if protocol.eq_ignore_ascii_case("udp") {
        Some("udp")
    } else {
        None
    }
}

fn validate_update(which: &'static str, c: &UpdateConfig) -> Result<(), SpecError> {
    if c.max_failure_ratio_milli > 1000 {
        return Err(SpecError::FailureRatio {
            which,
            milli: c.max_failure_ratio_milli,
        });
    }
    Ok(())
}

/// Checks a service spec. Returns the first problem found.
pub fn validate_spec(spec: &ServiceSpec) -> Result<(), SpecError> {
    if !valid_service_name(&spec.name) {
        return Err(SpecError::InvalidName(spec.name.clone()));
    }
    let task = &spec.task;
    if task.image.trim().is_empty() {
        return Err(SpecError::EmptyImage);
    }

    Constraint::parse_all(&task.placement.constraints)?;
    Preference::parse_all(&task.placement.preferences)?;
    if let Some(p) = task.placement.platforms.iter().find(|p| !valid_platform(p)) {
        return Err(SpecError::InvalidPlatform(p.clone()));
    }

    let mut targets = BTreeSet::new();
    for m in &task.mounts {
        if !m.target.starts_with('/') {
            return Err(SpecError::MountTargetNotAbsolute(m.target.clone()));
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(SpecError::DuplicateMountTarget(m.target.clone()));
        }
        match m.kind {
            MountKind::Bind => {
                if !m.source.starts_with('/') {
                    return Err(SpecError::BindSourceNotAbsolute {
                        src: m.source.clone(),
                        target: m.target.clone(),
                    });
                }
            }
            MountKind::Tmpfs => {
                if !m.source.is_empty() {
                    return Err(SpecError::TmpfsWithSource {
                        src: m.source.clone(),
                        target: m.target.clone(),
                    });
                }
            }
            MountKind::Volume => {
                if !m.source.is_empty() && !valid_volume_name(&m.source) {
                    return Err(SpecError::InvalidVolumeName(m.source.clone()));
                }
            }
        }
        if m.kind != MountKind::Tmpfs && (m.tmpfs_size != 0 || m.tmpfs_mode != 0) {
            return Err(SpecError::TmpfsOptionsOnOtherMount {
                kind: m.kind.as_str(),
                target: m.target.clone(),
            });
        }
    }

    let mut published = BTreeSet::new();
    for p in &spec.ports {
        let Some(protocol) = port_protocol(&p.protocol) else {
            return Err(SpecError::InvalidProtocol {
                published: p.published,
                target: p.target,
                protocol: p.protocol.clone(),
            });
        };
        if p.target == 0 {
            return Err(SpecError::PortTargetZero {
                published: p.published,
                protocol: protocol.into(),
            });
        }
        if p.published != 0 && !published.insert((p.published, protocol)) {
            return Err(SpecError::DuplicatePublishedPort {
                published: p.published,
                protocol: protocol.into(),
            });
        }
    }

    if let Some(h) = &task.healthcheck {
        let ok = match h.test.first().map(String::as_str) {
            None => true,
            Some("NONE") => h.test.len() == 1,
            Some("CMD") => h.test.len() >= 2 && !h.test[1].is_empty(),
            Some("CMD-SHELL") => h.test.len() == 2 && !h.test[1].trim().is_empty(),
            Some(_) => false,
        };
        if !ok {
            return Err(SpecError::InvalidHealthCheck(h.test.clone()));
        }
    }

    validate_update("update", &spec.update)?;
    validate_update("rollback", &spec.rollback)?;

    let r = &task.resources;
    for (what, value, min) in [
        ("cpu limit", r.limit_nano_cpus, MIN_NANO_CPUS),
        ("cpu reservation", r.reserve_nano_cpus, MIN_NANO_CPUS),
        ("memory limit", r.limit_memory, MIN_MEMORY),
        ("memory reservation", r.reserve_memory, MIN_MEMORY),
    ] {
        if value != 0 && value < min {
            return Err(SpecError::ResourceTooSmall { what, value, min });
        }
    }
    for (what, reserve, limit) in [
        ("cpu", r.reserve_nano_cpus, r.limit_nano_cpus),
        ("memory", r.reserve_memory, r.limit_memory),
    ] {
        if limit != 0 && reserve > limit {
            return Err(SpecError::ReservationAboveLimit {
                what,
                reserve,
                limit,
            });
        }
    }

    let restart = &task.restart;
    if restart.window_ms > 0 && restart.max_attempts == 0 {
        return Err(SpecError::RestartWindowWithoutMaxAttempts {
            window_ms: restart.window_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rswarm_store::{HealthCheck, Mount, PortConfig, ServiceMode, TaskSpec};

    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            task: TaskSpec {
                image: "nginx".into(),
                ..TaskSpec::default()
            },
            mode: ServiceMode::Replicated { replicas: 3 },
            ..ServiceSpec::default()
        }
    }

    fn err(f: impl FnOnce(&mut ServiceSpec)) -> SpecError {
        let mut s = spec();
        f(&mut s);
        validate_spec(&s).unwrap_err()
    }

    #[test]
    fn accepts_a_plain_spec_and_a_rich_one() {
        validate_spec(&spec()).unwrap();
        let mut s = spec();
        s.name = "a-b-0".into();
        s.mode = ServiceMode::Global;
        s.task.placement.constraints = vec!["node.labels.zone==a".into()];
        s.task.placement.preferences = vec!["spread=node.labels.rack".into()];
        s.task.placement.platforms = vec!["linux/amd64".into(), "linux/arm/v7".into()];
        s.task.mounts = vec![
            Mount {
                kind: MountKind::Bind,
                source: "/srv".into(),
                target: "/data".into(),
                ..Mount::default()
            },
            Mount {
                kind: MountKind::Volume,
                source: "db_1".into(),
                target: "/var/lib/db".into(),
                ..Mount::default()
            },
            Mount {
                kind: MountKind::Volume,
                target: "/anon".into(),
                ..Mount::default()
            },
            Mount {
                kind: MountKind::Tmpfs,
                target: "/tmp".into(),
                tmpfs_size: 1 << 20,
                ..Mount::default()
            },
        ];
        s.ports = vec![
            PortConfig {
                target: 80,
                published: 8080,
                protocol: "tcp".into(),
            },
            PortConfig {
                target: 53,
                published: 8080,
                protocol: "udp".into(),
            },
            PortConfig {
                target: 81,
                published: 0,
                protocol: String::new(),
            },
            PortConfig {
                target: 82,
                published: 0,
                protocol: "tcp".into(),
            },
        ];
        s.task.healthcheck = Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), "curl -f localhost".into()],
            interval_ms: 0,
            timeout_ms: 0,
            retries: 0,
            start_period_ms: 0,
        });
        s.task.resources.limit_memory = 64 << 20;
        s.task.resources.reserve_memory = 32 << 20;
        s.update.max_failure_ratio_milli = 1000;
        s.task.restart.max_attempts = 3;
        s.task.restart.window_ms = 60_000;
        validate_spec(&s).unwrap();
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "-web", "web-", "we_b", "web.1", &"a".repeat(64)] {
            let e = err(|s| s.name = bad.into());
            assert_eq!(e, SpecError::InvalidName(bad.into()));
        }
        let mut s = spec();
        s.name = "a".repeat(63);
        validate_spec(&s).unwrap();
    }

    #[test]
    fn refuses_bad_image_placement_and_platforms() {
        assert_eq!(err(|s| s.task.image = " ".into()), SpecError::EmptyImage);
        let e = err(|s| s.task.placement.constraints = vec!["node.labels.zone=a".into()]);
        assert!(e.to_string().contains("node.labels.zone=a"), "{e}");
        let e = err(|s| s.task.placement.preferences = vec!["spread=zone".into()]);
        assert!(matches!(
            e,
            SpecError::Placement(ConstraintError::InvalidPreference { .. })
        ));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux amd64"] {
            let e = err(|s| s.task.placement.platforms = vec![bad.into()]);
            assert_eq!(e, SpecError::InvalidPlatform(bad.into()));
        }
    }

    #[test]
    fn refuses_bad_mounts() {
        let mount = |kind, source: &str, target: &str| Mount {
            kind,
            source: source.into(),
            target: target.into(),
            ..Mount::default()
        };
        let e = err(|s| s.task.mounts = vec![mount(MountKind::Volume, "", "data")]);
        assert_eq!(e, SpecError::MountTargetNotAbsolute("data".into()));
        let e = err(|s| s.task.mounts = vec![mount(MountKind::Bind, "srv", "/data")]);
        assert!(matches!(e, SpecError::BindSourceNotAbsolute { .. }));
        assert!(e.to_string().contains("\"srv\""), "{e}");
        let e = err(|s| s.task.mounts = vec![mount(MountKind::Bind, "", "/data")]);
        assert!(matches!(e, SpecError::BindSourceNotAbsolute { .. }));
        let e = err(|s| s.task.mounts = vec![mount(MountKind::Tmpfs, "x", "/t")]);
        assert!(matches!(e, SpecError::TmpfsWithSource { .. }));
        for bad in ["a", "-a", "a/b", "a b"] {
            let e = err(|s| s.task.mounts = vec![mount(MountKind::Volume, bad, "/v")]);
            assert_eq!(e, SpecError::InvalidVolumeName(bad.into()));
        }
        let e = err(|s| {
            s.task.mounts = vec![
                mount(MountKind::Volume, "", "/v"),
                mount(MountKind::Tmpfs, "", "/v/"),
            ]
        });
        assert_eq!(e, SpecError::DuplicateMountTarget("/v/".into()));
        let e = err(|s| {
            let mut m = mount(MountKind::Volume, "", "/v");
            m.tmpfs_mode = 0o700;
            s.task.mounts = vec![m];
        });
        assert!(matches!(e, SpecError::TmpfsOptionsOnOtherMount { .. }));
    }

    #[test]
    fn refuses_bad_ports() {
        let port = |published, target, protocol: &str| PortConfig {
            target,
            published,
            protocol: protocol.into(),
        };
        let e = err(|s| s.ports = vec![port(8080, 0, "tcp")]);
        assert!(matches!(
            e,
            SpecError::PortTargetZero {
                published: 8080,
                ..
            }
        ));
        let e = err(|s| s.ports = vec![port(8080, 80, "sctp")]);
        assert!(e.to_string().contains("\"sctp\""), "{e}");
        let e = err(|s| s.ports = vec![port(8080, 80, "tcp"), port(8080, 81, "")]);
        assert_eq!(
            e,
            SpecError::DuplicatePublishedPort {
                published: 8080,
                protocol: "tcp".into()
            }
        );
    }

    #[test]
    fn refuses_bad_healthchecks() {
        let hc = |test: &[&str]| {
            Some(HealthCheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                interval_ms: 0,
                timeout_ms: 0,
                retries: 0,
                start_period_ms: 0,
            })
        };
        for ok in [
            &[][..],
            &["NONE"],
            &["CMD", "true"],
            &["CMD", "ls", "-l"],
            &["CMD-SHELL", "x y"],
        ] {
            let mut s = spec();
            s.task.healthcheck = hc(ok);
            validate_spec(&s).unwrap();
        }
        for bad in [
            &["CMD"][..],
            &["CMD-SHELL"],
            &["CMD-SHELL", "a", "b"],
            &["NONE", "x"],
            &["curl"],
        ] {
            let e = err(|s| s.task.healthcheck = hc(bad));
            assert!(matches!(e, SpecError::InvalidHealthCheck(_)), "{bad:?}");
        }
    }

    #[test]
    fn refuses_bad_update_resources_and_restart() {
        let e = err(|s| s.update.max_failure_ratio_milli = 1001);
        assert_eq!(
            e,
            SpecError::FailureRatio {
                which: "update",
                milli: 1001
            }
        );
        let e = err(|s| s.rollback.max_failure_ratio_milli = 2000);
        assert!(e.to_string().starts_with("rollback"), "{e}");
        let e = err(|s| s.task.resources.limit_memory = 1024);
        assert!(matches!(
            e,
            SpecError::ResourceTooSmall {
                what: "memory limit",
                ..
            }
        ));
        let e = err(|s| s.task.resources.reserve_nano_cpus = 10);
        assert!(matches!(
            e,
            SpecError::ResourceTooSmall {
                what: "cpu reservation",
                ..
            }
        ));
        let e = err(|s| {
            s.task.resources.limit_nano_cpus = 1_000_000_000;
            s.task.resources.reserve_nano_cpus = 2_000_000_000;
        });
        assert!(matches!(
            e,
            SpecError::ReservationAboveLimit { what: "cpu", .. }
        ));
        let e = err(|s| s.task.restart.window_ms = 1000);
        assert!(matches!(
            e,
            SpecError::RestartWindowWithoutMaxAttempts { .. }
        ));
    }
}
