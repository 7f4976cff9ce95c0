//! Pure parsing of what users type on `container run`: `-v`, `--tmpfs`, names, and the strings
//! `container ls` shows.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EngineError;

/// A mount as the user asked for it, before volumes are created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountRequest {
    /// `-v /host:/ctr[:ro]`.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// `-v name:/ctr[:ro]`, or `-v /ctr` (an anonymous volume, named at create).
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
    /// `--tmpfs /ctr[:size=64m,mode=1777]`.
    Tmpfs {
        target: String,
        size: Option<u64>,
        mode: Option<u32>,
    },
}

impl MountRequest {
    pub fn target(&self) -> &str {
        match self {
            MountRequest::Bind { target, .. }
            | MountRequest::Volume { target, .. }
            | MountRequest::Tmpfs { target, .. } => target,
        }
    }
}

fn check_target(target: &str, spec: &str) -> Result<(), EngineError> {
    if !target.starts_with('/') {
        return Err(EngineError::invalid(format!(
            "invalid mount {spec:?}: the container path {target:?} must be absolute"
        )));
    }
    if target == "/" {
        return Err(EngineError::invalid(format!(
            "invalid mount {spec:?}: cannot mount over the container's root"
        )));
    }
    Ok(())
}

/// Parses one `-v` value. `anonymous` names an anonymous volume (`-v /data`).
pub fn parse_volume(
    spec: &str,
    anonymous: impl FnOnce() -> String,
) -> Result<MountRequest, EngineError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => {
            return Err(EngineError::invalid(format!(
                "invalid volume specification {spec:?}: use /host/path:/container/path[:ro], name:/container/path[:ro] or /container/path"
            )))
        }
    };
    check_target(target, spec)?;
    let read_only = match mode {
        None | Some("rw") | Some("z") | Some("Z") => false,
        Some("ro") => true,
        Some(m) => {
            let opts: Vec<&str> = m.split(',').collect();
            if opts.iter().all(|o| matches!(*o, "ro" | "rw" | "z" | "Z")) {
                opts.contains(&"ro")
            } else {
                return Err(EngineError::invalid(format!(
                    "invalid mode {m:?} in volume specification {spec:?}: use ro or rw"
                )));
            }
        }
    };
    let target = target.to_string();
    Ok(match source {
        None => MountRequest::Volume {
            name: anonymous(),
            target,
            read_only,
        },
        Some(s) if s.starts_with('/') => MountRequest::Bind {
            source: PathBuf::from(s),
            target,
            read_only,
        },
        Some(s) if s.starts_with('.') || s.starts_with('~') => {
            return Err(EngineError::invalid(format!(
                "invalid volume specification {spec:?}: a bind-mount source must be an absolute path"
            )))
        }
        Some(s) => MountRequest::Volume {
            name: s.to_string(),
            target,
            read_only,
        },
    })
}

/// Parses `64m`, `1g`, `512k`, `100` (bytes), as Docker's `--memory` and tmpfs `size=` take them.
pub fn parse_bytes(s: &str) -> Result<u64, EngineError> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = num.parse().map_err(|_| {
        EngineError::invalid(format!(
            "invalid size {s:?}: use a number with an optional unit (b, k, m, g)"
        ))
    })?;
    if value < 0.0 {
        return Err(EngineError::invalid(format!(
            "invalid size {s:?}: must not be negative"
        )));
    }
    Ok((value * mult as f64) as u64)
}

/// Parses one `--tmpfs` value.
pub fn parse_tmpfs(spec: &str) -> Result<MountRequest, EngineError> {
    let (target, opts) = spec.split_once(':').unwrap_or((spec, ""));
    check_target(target, spec)?;
    let mut size = None;
    let mut mode = None;
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        if let Some(v) = opt.strip_prefix("size=") {
            size = Some(parse_bytes(v)?);
        } else if let Some(v) = opt.strip_prefix("mode=") {
            mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                EngineError::invalid(format!(
                    "invalid tmpfs mode {v:?} in {spec:?}: use octal, e.g. 1777"
                ))
            })?);
        } else if !matches!(opt, "rw" | "noexec" | "exec" | "nosuid" | "nodev") {
            return Err(EngineError::invalid(format!(
                "unsupported tmpfs option {opt:?} in {spec:?}: use size= and mode="
            )));
        }
    }
    Ok(MountRequest::Tmpfs {
        target: target.to_string(),
        size,
        mode,
    })
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_name(name: &str) -> Result<(), EngineError> {
    let mut chars = name.chars();
    let ok = name.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

/// `--alias` / `--network-alias` values: names the embedded DNS can answer (letters, digits,
/// `_`, `.`, `-`; not starting with `.` or `-`; at most 253 characters), each once, in order.
pub fn network_aliases(aliases: &[String]) -> Result<Vec<String>, EngineError> {
    let mut out: Vec<String> = Vec::new();
    for a in aliases {
        let ok = !a.is_empty()
            && a.len() <= 253
            && !a.starts_with(['.', '-'])
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(EngineError::invalid(format!(
                "invalid network alias {a:?}: use a DNS name (letters, digits, _ . -, not starting with . or -)"
            )));
        }
        if !out.iter().any(|o| o.eq_ignore_ascii_case(a)) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// `--ip`: an IPv4 address, or nothing when empty.
pub fn user_ip(ip: &str) -> Result<Option<std::net::Ipv4Addr>, EngineError> {
    let ip = ip.trim();
    if ip.is_empty() {
        return Ok(None);
    }
    ip.parse().map(Some).map_err(|_| {
        EngineError::invalid(format!(
            "invalid IPv4 address {ip:?} for --ip (IPv6 overlays are not supported)"
        ))
    })
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "brave",
    "calm",
    "dreamy",
    "eager",
    "festive",
    "gifted",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "pensive",
    "quirky",
    "relaxed",
    "serene",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];
const NAMES: &[&str] = &[
    "allen", "babbage", "curie", "darwin", "euclid", "fermi", "gauss", "hopper", "lovelace",
    "kepler", "lamport", "mccarthy", "noether", "pike", "ritchie", "shannon", "thompson", "turing",
    "wirth", "yonath", "liskov", "knuth", "dijkstra", "hamilton",
];

/// A Docker-style random name, `adjective_scientist`, from two random numbers.
pub fn random_name(a: usize, b: usize) -> String {
    format!(
        "{}_{}",
        ADJECTIVES[a % ADJECTIVES.len()],
        NAMES[b % NAMES.len()]
    )
}

/// "3 seconds", "About a minute", "5 minutes", "2 hours", as Docker's HumanDuration.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ips_are_ipv4_addresses_or_nothing() {
        assert_eq!(user_ip("").unwrap(), None);
        assert_eq!(user_ip(" 10.0.0.7 ").unwrap(), Some([10, 0, 0, 7].into()));
        for bad in ["10.0.0", "fd00::1", "x"] {
            let e = user_ip(bad).unwrap_err().to_string();
            assert!(e.contains("invalid IPv4 address"), "{bad}: {e}");
        }
    }

    #[test]
    fn network_aliases_are_dns_names_each_given_once() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            network_aliases(&v(&["db", "cache_1.local", "DB", "x-y"])).unwrap(),
            v(&["db", "cache_1.local", "x-y"])
        );
        for bad in ["", "-db", ".db", "d b", "db/1", &"a".repeat(254)] {
            let e = network_aliases(&v(&[bad])).unwrap_err().to_string();
            assert!(e.contains("invalid network alias"), "{bad:?}: {e}");
        }
    }

    fn anon() -> String {
        "anon".into()
    }

    #[test]
    fn volumes() {
        assert_eq!(
            parse_volume("/srv/data:/data:ro", anon).unwrap(),
            MountRequest::Bind {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_volume("db:/var/lib/db", anon).unwrap(),
            MountRequest::Volume {
                name: "db".into(),
                target: "/var/lib/db".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("/cache", anon).unwrap(),
            MountRequest::Volume {
                name: "anon".into(),
                target: "/cache".into(),
                read_only: false
            }
        );
        assert!(parse_volume("db:relative", anon).is_err());
        assert!(parse_volume("./x:/y", anon).is_err());
        assert!(parse_volume("a:/b:xx", anon).is_err());
        assert!(parse_volume("a:/b:c:d", anon).is_err());
        assert!(parse_volume("x:/", anon).is_err());
    }

    #[test]
    fn tmpfs_and_sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(
            parse_tmpfs("/run:size=16m,mode=1777").unwrap(),
            MountRequest::Tmpfs {
                target: "/run".into(),
                size: Some(16 << 20),
                mode: Some(0o1777)
            }
        );
        assert!(parse_tmpfs("run").is_err());
        assert!(parse_tmpfs("/run:uid=5").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("web-1").is_ok());
        assert!(check_name("a").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&random_name(3, 7)).is_ok());
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(10_000), "2 hours");
    }
}
