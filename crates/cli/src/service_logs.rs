//! `rswarm service logs`: the lines of a service's (or a task's) containers on every node, as
//! `docker service logs` prints them (`web.1.abcdef123456@h2    | line`; stdout lines on stdout,
//! stderr lines on stderr). Nodes that cannot answer are reported on stderr
//! (`error from node h3: node is down`) and the rest is shown.

use std::io::Write;

use anyhow::bail;
use clap::Args;
use rswarm_api::control::v1 as pb;
use rswarm_api::control::v1::control_client::ControlClient;
use tonic::transport::Channel;

use crate::client::status_error;

#[derive(Clone, Debug, Args)]
pub struct ServiceLogsArgs {
    /// Follow log output.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of each task's log ("all" for all).
    #[arg(short = 'n', long)]
    pub tail: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since a timestamp (RFC 3339) or a relative time (e.g. 42m).
    #[arg(long)]
    pub since: Option<String>,
    /// Do not include task ids in the prefix.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate task ids.
    #[arg(long)]
    pub no_trunc: bool,
    /// Do not map ids to names (node ids instead of hostnames).
    #[arg(long)]
    pub no_resolve: bool,
    /// Do not neatly format logs: no prefix.
    #[arg(long)]
    pub raw: bool,
    /// A service (name, id or id prefix) or a task (id or id prefix).
    #[arg(value_name = "SERVICE|TASK")]
    pub target: String,
}

/// How lines are printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineFormat {
    pub timestamps: bool,
    pub no_task_ids: bool,
    pub no_trunc: bool,
    pub no_resolve: bool,
    pub raw: bool,
    /// Digits of the largest slot, so that prefixes line up (Docker's padding).
    pub slot_width: usize,
}

/// `web.1.abcdef123456@h2    | ` (Docker's prefix), padded after the slot to `slot_width` digits.
pub fn prefix(line: &pb::LogLine, f: &LineFormat) -> String {
    let mut name = line.task_name.clone();
    let slot_len = name
        .rsplit_once('.')
        .filter(|(_, s)| s.chars().all(|c| c.is_ascii_digit()))
        .map_or(0, |(_, s)| s.len());
    if !f.no_task_ids {
        let id = if f.no_trunc {
            line.task_id.as_str()
        } else {
            &line.task_id[..line.task_id.len().min(12)]
        };
        name = format!("{name}.{id}");
    }
    let pad = " ".repeat(f.slot_width.saturating_sub(slot_len).min(8));
    let node = if f.no_resolve || line.node_name.is_empty() {
        &line.node_id
    } else {
        &line.node_name
    };
    format!("{name}{pad}@{node}    | ")
}

/// One line as printed: prefix (unless raw), time (with timestamps), the data.
pub fn format_line(line: &pb::LogLine, f: &LineFormat) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.data.len() + 64);
    if !f.raw {
        out.extend_from_slice(prefix(line, f).as_bytes());
    }
    if f.timestamps {
        out.extend_from_slice(line.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&line.data);
    out
}

/// `error from node h3: node is down`
pub fn format_error(e: &pb::NodeLogError) -> String {
    let node = if e.node_name.is_empty() {
        &e.node_id
    } else {
        &e.node_name
    };
    format!("error from node {node}: {}\n", e.message)
}

/// `--tail`: a number, or "all".
pub fn parse_tail(tail: Option<&str>) -> anyhow::Result<Option<u64>> {
    match tail {
        None | Some("all") => Ok(None),
        Some(n) => match n.parse() {
            Ok(v) => Ok(Some(v)),
            Err(_) => bail!("invalid --tail {n:?}: use a number or all"),
        },
    }
}

/// Checks what needs no manager.
pub fn precheck(a: &ServiceLogsArgs) -> anyhow::Result<()> {
    parse_tail(a.tail.as_deref())?;
    if let Some(s) = &a.since {
        crate::engine_cmds::since(s)?;
    }
    Ok(())
}

pub async fn run(control: &mut ControlClient<Channel>, a: ServiceLogsArgs) -> anyhow::Result<()> {
    let tail = parse_tail(a.tail.as_deref())?;
    let since = a
        .since
        .as_deref()
        .map(crate::engine_cmds::since)
        .transpose()?
        .unwrap_or_default();
    // The service's replica count sets the prefix padding (a task target has none).
    let slot_width = match control
        .get_service(pb::GetServiceRequest {
            service: a.target.clone(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .service
            .and_then(|s| s.spec)
            .filter(|s| s.mode != "global")
            .map_or(0, |s| s.replicas.max(1).to_string().len()),
        Err(_) => 0,
    };
    let format = LineFormat {
        timestamps: a.timestamps,
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        no_resolve: a.no_resolve,
        raw: a.raw,
        slot_width,
    };
    let mut stream = control
        .service_logs(pb::ServiceLogsRequest {
            target: a.target,
            follow: a.follow,
            tail_set: tail.is_some(),
            tail: tail.unwrap_or(0),
            since,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(m) = stream.message().await.map_err(status_error)? {
        for e in &m.errors {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(format_error(e).as_bytes());
            let _ = err.flush();
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for line in &m.lines {
            let text = format_line(line, &format);
            if line.stream == 2 {
                err.extend_from_slice(&text);
            } else {
                out.extend_from_slice(&text);
            }
        }
        if !out.is_empty() {
            let mut o = std::io::stdout().lock();
            // A closed stdout (`| head`): stop quietly.
            if o.write_all(&out).and_then(|()| o.flush()).is_err() {
                return Ok(());
            }
        }
        if !err.is_empty() {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&err);
            let _ = e.flush();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> pb::LogLine {
        pb::LogLine {
            task_id: "abcdef1234567890xyz".into(),
            task_name: "web.1".into(),
            node_id: "n0de1d".into(),
            node_name: "h2".into(),
            stream: 1,
            data: b"hello\n".to_vec(),
            time: "2026-11-28T23:00:00.000000000Z".into(),
        }
    }

    #[test]
    fn prefixes_like_docker() {
        let f = LineFormat::default();
        assert_eq!(
            format_line(&line(), &f),
            b"web.1.abcdef123456@h2    | hello\n"
        );
        let f = LineFormat {
            no_task_ids: true,
            ..LineFormat::default()
        };
        assert_eq!(prefix(&line(), &f), "web.1@h2    | ");
        let f = LineFormat {
            no_trunc: true,
            no_resolve: true,
            ..LineFormat::default()
        };
        assert_eq!(
            prefix(&line(), &f),
            "web.1.abcdef1234567890xyz@n0de1d    | "
        );
        let f = LineFormat {
            slot_width: 2,
            no_task_ids: true,
            ..LineFormat::default()
        };
        assert_eq!(prefix(&line(), &f), "web.1 @h2    | ", "slots line up");
    }

    #[test]
    fn raw_and_timestamps() {
        let f = LineFormat {
            raw: true,
            timestamps: true,
            ..LineFormat::default()
        };
        assert_eq!(
            format_line(&line(), &f),
            b"2026-11-28T23:00:00.000000000Z hello\n"
        );
        let f = LineFormat {
            timestamps: true,
            no_task_ids: true,
            ..LineFormat::default()
        };
        assert_eq!(
            format_line(&line(), &f),
            b"web.1@h2    | 2026-11-28T23:00:00.000000000Z hello\n"
        );
    }

    #[test]
    fn errors_and_tail() {
        let e = pb::NodeLogError {
            node_id: "n3".into(),
            node_name: "h3".into(),
            message: "node is down".into(),
        };
        assert_eq!(format_error(&e), "error from node h3: node is down\n");
        assert_eq!(parse_tail(None).unwrap(), None);
        assert_eq!(parse_tail(Some("all")).unwrap(), None);
        assert_eq!(parse_tail(Some("5")).unwrap(), Some(5));
        assert!(parse_tail(Some("x")).is_err());
    }
}
