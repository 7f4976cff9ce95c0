//! `rswarm events`: the cluster's events as `docker events` prints them
//! (`2026-11-28T23:00:00.000000000Z service create <id> (name=web)`), from the manager's memory of
//! recent events (`--since`: the last 10,000, at most one hour old) and then as they happen, until
//! `--until` or Ctrl-C.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use tonic::transport::Channel;

use crate::client::status_error;

#[derive(Clone, Debug, Args)]
pub struct EventsArgs {
    /// Show events since a time: RFC 3339, a Unix timestamp, or a duration ago (10m). The manager
    /// keeps the last 10,000 events of the last hour.
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at a time: RFC 3339, a Unix timestamp, or a duration ago (0s: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Filter: type=service|node|task, event=create|update|remove, service=, node=, id=.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// json: one object per line, Docker's event shape.
    #[arg(long)]
    pub format: Option<String>,
}

/// `--since`/`--until` as milliseconds since the epoch: RFC 3339, a Unix timestamp (seconds,
/// optionally fractional), or a duration before `now_ms`.
pub fn parse_time(flag: &str, s: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1000.0) as u64);
        }
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms.saturating_sub(d.as_millis() as u64)),
        Err(_) => bail!(
            "invalid {flag} {s:?}: use RFC 3339 (2026-01-02T15:04:05Z), a Unix timestamp, or a duration (10m)"
        ),
    }
}

fn rfc3339_nanos(nanos: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(nanos)).to_string()
}

/// `2026-11-28T23:00:00.000000000Z service create <id> (name=web)`, attributes sorted by key.
pub fn format_event(e: &pb::Event) -> String {
    let mut attrs: Vec<(&String, &String)> = e.attributes.iter().collect();
    attrs.sort();
    let attrs = attrs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = format!(
        "{} {} {} {}",
        rfc3339_nanos(e.time_unix_nano),
        e.r#type,
        e.action,
        e.id
    );
    if !attrs.is_empty() {
        line.push_str(&format!(" ({attrs})"));
    }
    line.push('\n');
    line
}

/// Docker's JSON shape: `{"Type":…,"Action":…,"Actor":{"ID":…,"Attributes":{…}},"scope":"swarm",
/// "time":…,"timeNano":…}`.
pub fn event_json(e: &pb::Event) -> serde_json::Value {
    let attrs: std::collections::BTreeMap<&String, &String> = e.attributes.iter().collect();
    serde_json::json!({
        "Type": e.r#type,
        "Action": e.action,
        "Actor": { "ID": e.id, "Attributes": attrs },
        "scope": "swarm",
        "time": e.time_unix_nano / 1_000_000_000,
        "timeNano": e.time_unix_nano,
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The request the flags ask for, checked before anything is sent.
pub fn request(a: &EventsArgs, now_ms: u64) -> anyhow::Result<(pb::EventsRequest, bool)> {
    let json = crate::commands::wants_json(&a.format)?;
    let since = a
        .since
        .as_deref()
        .map(|s| parse_time("--since", s, now_ms))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_time("--until", s, now_ms))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            bail!("--since is after --until: give a --since before the --until");
        }
    }
    Ok((
        pb::EventsRequest {
            // 0 means "not set" on the wire.
            since_unix_ms: since.map_or(0, |s| s.max(1)),
            until_unix_ms: until.map_or(0, |u| u.max(1)),
            filters: a.filters.clone(),
        },
        json,
    ))
}

pub async fn run(control: &mut ControlClient<Channel>, a: EventsArgs) -> anyhow::Result<()> {
    let (req, json) = request(&a, now_ms())?;
    let mut stream = control
        .events(req)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(status_error)? {
        let text = if json {
            format!(
                "{}\n",
                serde_json::to_string(&event_json(&e)).context("event as json")?
            )
        } else {
            format_event(&e)
        };
        let mut o = std::io::stdout().lock();
        if o.write_all(text.as_bytes())
            .and_then(|()| o.flush())
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> pb::Event {
        pb::Event {
            r#type: "service".into(),
            action: "update".into(),
            id: "abc".into(),
            attributes: [
                ("updatestate.new".to_string(), "updating".to_string()),
                ("name".to_string(), "web".to_string()),
            ]
            .into_iter()
            .collect(),
            time_unix_nano: 1_795_906_800_000_000_001,
        }
    }

    #[test]
    fn docker_line() {
        assert_eq!(
            format_event(&ev()),
            "2026-11-28T23:00:00.000000001Z service update abc (name=web, updatestate.new=updating)\n"
        );
        let mut e = ev();
        e.attributes.clear();
        assert!(format_event(&e).ends_with("service update abc\n"));
    }

    #[test]
    fn docker_json() {
        let v = event_json(&ev());
        assert_eq!(v["Type"], "service");
        assert_eq!(v["Actor"]["ID"], "abc");
        assert_eq!(v["Actor"]["Attributes"]["name"], "web");
        assert_eq!(v["time"], 1_795_906_800u64);
    }

    #[test]
    fn times() {
        let now = 1_000_000_000;
        assert_eq!(parse_time("--since", "1m", now).unwrap(), now - 60_000);
        assert_eq!(parse_time("--until", "0s", now).unwrap(), now);
        assert_eq!(
            parse_time("--since", "1700000000", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("--since", "2026-11-28T23:00:00Z", now).unwrap(),
            1_795_906_800_000
        );
        assert!(parse_time("--since", "yesterday", now).is_err());
        let a = EventsArgs {
            since: Some("1m".into()),
            until: Some("2m".into()),
            filters: vec![],
            format: None,
        };
        assert!(request(&a, now).is_err(), "since after until");
        let a = EventsArgs {
            since: Some("1m".into()),
            until: Some("0s".into()),
            filters: vec!["type=service".into()],
            format: Some("json".into()),
        };
        let (r, json) = request(&a, now).unwrap();
        assert!(json);
        assert_eq!((r.since_unix_ms, r.until_unix_ms), (now - 60_000, now));
    }
}
