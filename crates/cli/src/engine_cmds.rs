//! `rswarm image …` and `rswarm container …`: the local node's engine, as `docker` drives dockerd.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use rswarm_api::local::v1 as pb;
use rswarm_api::local::v1::containers_client::ContainersClient;
use rswarm_api::local::v1::images_client::ImagesClient;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::client::status_error;
use crate::commands::{print as out, wants_json};
use crate::engine_args::{
    ContainerCommand, ExecArgs, ImageCommand, LogsArgs, PsArgs, PullArgs, RunArgs,
};
use crate::output;
use rswarm_image::short_id;

/// A command that ends with a specific exit code (a container's), not an error message.
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

fn exit_with(code: i64) -> anyhow::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(ExitStatus(u8::try_from(code.clamp(0, 255)).unwrap_or(255)).into())
    }
}

fn err(text: &str) {
    let mut o = std::io::stderr().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.3}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.3}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.3}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}

/// "5 seconds ago", "About a minute ago", as Docker's CREATED column.
fn ago(created_unix: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    format!(
        "{} ago",
        rswarm_agent::engine::human_duration(now - created_unix)
    )
}

fn rfc3339_unix(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// `docker images` rows: one per tag (or `<none>`).
pub fn image_rows(images: &[pb::ImageSummary], no_trunc: bool) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for i in images {
        let id = if no_trunc {
            i.id.clone()
        } else {
            short_id(&i.id)
        };
        let created = rfc3339_unix(&i.created).map_or_else(|| "N/A".to_string(), ago);
        let tags: Vec<(String, String)> = if i.repo_tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            i.repo_tags
                .iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((r, tag)) if !tag.contains('/') => (r.to_string(), tag.to_string()),
                    _ => (t.clone(), "<none>".to_string()),
                })
                .collect()
        };
        for (repo, tag) in tags {
            rows.push(vec![
                repo,
                tag,
                id.clone(),
                created.clone(),
                human_size(i.size),
            ]);
        }
    }
    rows
}

/// `docker ps` rows.
pub fn container_rows(cs: &[pb::ContainerSummary], no_trunc: bool) -> Vec<Vec<String>> {
    cs.iter()
        .map(|c| {
            let mut command = format!("\"{}\"", c.command);
            if !no_trunc && command.chars().count() > 22 {
                command = format!("{}…\"", command.chars().take(20).collect::<String>());
            }
            vec![
                if no_trunc {
                    c.id.clone()
                } else {
                    short_id(&c.id)
                },
                c.image.clone(),
                command,
                ago(c.created),
                c.status.clone(),
                c.ports.join(", "),
                c.name.clone(),
            ]
        })
        .collect()
}

pub async fn image_command(channel: Channel, command: ImageCommand) -> anyhow::Result<()> {
    let mut images = ImagesClient::new(channel);
    match command {
        ImageCommand::Pull(args) => {
            pull(&mut images, &args, false).await?;
        }
        ImageCommand::Load { input, quiet } => {
            let mut file = tokio::fs::File::open(&input)
                .await
                .with_context(|| format!("cannot open {}", input.display()))?;
            let (tx, rx) = mpsc::channel(4);
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    if tx
                        .send(pb::LoadImageChunk {
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok::<(), std::io::Error>(())
            });
            let r = images
                .load(ReceiverStream::new(rx))
                .await
                .map_err(status_error)?
                .into_inner();
            reader
                .await?
                .with_context(|| format!("cannot read {}", input.display()))?;
            if !quiet {
                for i in &r.images {
                    if i.repo_tags.is_empty() {
                        out(&format!("Loaded image ID: {}\n", i.id));
                    }
                    for t in &i.repo_tags {
                        out(&format!("Loaded image: {t}\n"));
                    }
                }
            }
        }
        ImageCommand::Ls {
            quiet,
            format,
            no_trunc,
        } => {
            let json = wants_json(&format)?;
            let list = images
                .list(pb::ListImagesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .images;
            if quiet {
                for i in &list {
                    out(&format!(
                        "{}\n",
                        if no_trunc {
                            i.id.clone()
                        } else {
                            short_id(&i.id)
                        }
                    ));
                }
            } else if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|i| {
                        serde_json::json!({"Id": i.id, "RepoTags": i.repo_tags, "RepoDigests": i.repo_digests, "Created": i.created, "Size": i.size})
                    })
                    .collect();
                out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
            } else {
                out(&output::table(
                    &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                    &image_rows(&list, no_trunc),
                ));
            }
        }
        ImageCommand::Inspect { images: names } => {
            let mut all = Vec::new();
            for n in names {
                let r = images
                    .inspect(pb::InspectImageRequest { image: n })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.push(serde_json::from_str::<serde_json::Value>(&r.json)?);
            }
            out(&format!("{}\n", serde_json::to_string_pretty(&all)?));
        }
        ImageCommand::Rm {
            force,
            images: names,
        } => {
            let mut failed = None;
            for n in names {
                match images
                    .remove(pb::RemoveImageRequest { image: n, force })
                    .await
                {
                    Ok(r) => {
                        for l in r.into_inner().lines {
                            out(&format!("{l}\n"));
                        }
                    }
                    Err(s) => {
                        err(&format!("Error response from daemon: {}\n", s.message()));
                        failed = Some(1);
                    }
                }
            }
            if let Some(c) = failed {
                return Err(ExitStatus(c).into());
            }
        }
        ImageCommand::Prune { all, force } => {
            let warning = if all {
                "WARNING! This will remove all images without at least one container associated to them."
            } else {
                "WARNING! This will remove all dangling images."
            };
            if !force && !crate::prompt::confirm(warning)? {
                return Ok(());
            }
            let r = images
                .prune(pb::PruneImagesRequest { all })
                .await
                .map_err(status_error)?
                .into_inner();
            if !r.deleted.is_empty() {
                out("Deleted Images:\n");
                for d in &r.deleted {
                    out(&format!("{d}\n"));
                }
                out("\n");
            }
            out(&format!(
                "Total reclaimed space: {}\n",
                human_size(r.reclaimed_bytes)
            ));
        }
    }
    Ok(())
}

/// Pulls with Docker's progress lines (one line per layer status change when not a terminal).
/// `for_run`: the pull is part of `run`, so all of it goes to stderr (stdout is the container's).
async fn pull(
    images: &mut ImagesClient<Channel>,
    args: &PullArgs,
    for_run: bool,
) -> anyhow::Result<()> {
    let mut stream = images
        .pull(pb::PullImageRequest {
            reference: args.image.clone(),
            username: args.username.clone().unwrap_or_default(),
            password: args.password.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut done = None;
    while let Some(ev) = stream.message().await.map_err(status_error)? {
        match ev.event {
            Some(pb::pull_image_event::Event::Progress(p)) => {
                if args.quiet {
                    continue;
                }
                // Byte counters change constantly; print only status changes.
                if last.get(&p.layer) != Some(&p.status) {
                    last.insert(p.layer.clone(), p.status.clone());
                    err(&format!("{}: {}\n", p.layer, p.status));
                }
            }
            Some(pb::pull_image_event::Event::Done(s)) => done = Some(s),
            None => {}
        }
    }
    let Some(done) = done else {
        bail!(
            "the daemon ended the pull of {} without a result",
            args.image
        );
    };
    if !args.quiet {
        if let Some(d) = done.repo_digests.first() {
            let digest = d.rsplit_once('@').map(|(_, d)| d).unwrap_or(d);
            err(&format!("Digest: {digest}\n"));
        }
        err(&format!("Status: Downloaded image for {}\n", args.image));
    }
    if !for_run {
        out(&format!("{}\n", args.image));
    }
    Ok(())
}

fn read_env_files(args: &RunArgs) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for f in &args.env_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the env file {}", f.display()))?;
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            env.push(expand_env(l));
        }
    }
    env.extend(args.env.iter().map(|e| expand_env(e)));
    Ok(env)
}

/// `-e NAME` (no `=`) takes NAME's value from the CLI's own environment, as in Docker.
fn expand_env(e: &str) -> String {
    if e.contains('=') {
        e.to_string()
    } else {
        match std::env::var(e) {
            Ok(v) => format!("{e}={v}"),
            Err(_) => e.to_string(),
        }
    }
}

/// `64m`, `1g`, `512k`, `100`: bytes (the engine's own parser, so both sides agree).
pub fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    rswarm_agent::engine::parse_bytes(s).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A size flag; `-1` means unlimited (as `--memory-swap -1`).
fn parse_size(s: &str, what: &str) -> anyhow::Result<i64> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = rswarm_agent::engine::parse_bytes(s)
        .map_err(|_| anyhow::anyhow!("invalid {what} {s:?}: use a size such as 64m or 1g"))?;
    i64::try_from(bytes).map_err(|_| anyhow::anyhow!("invalid {what} {s:?}: too large"))
}

/// `run`/`create` flags → the API's container spec.
pub fn container_spec(args: &RunArgs) -> anyhow::Result<pb::ContainerSpec> {
    let mut labels = std::collections::HashMap::new();
    for l in &args.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let entrypoint = args.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    Ok(pb::ContainerSpec {
        image: args.image.clone(),
        name: args.name.clone().unwrap_or_default(),
        cmd: args.command.clone(),
        entrypoint_set: entrypoint.is_some(),
        entrypoint: entrypoint.unwrap_or_default(),
        env: read_env_files(args)?,
        workdir: args.workdir.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        hostname: args.hostname.clone().unwrap_or_default(),
        publish: args.publish.clone(),
        volumes: args.volume.clone(),
        tmpfs: args.tmpfs.clone(),
        network: args.network.clone(),
        network_aliases: args.network_alias.clone(),
        ip: args.ip.clone().unwrap_or_default(),
        memory: args
            .memory
            .as_deref()
            .map(|m| parse_size(m, "--memory"))
            .transpose()?
            .unwrap_or(0),
        memory_swap: args
            .memory_swap
            .as_deref()
            .map(|m| parse_size(m, "--memory-swap"))
            .transpose()?
            .unwrap_or(0),
        nano_cpus: args
            .cpus
            .map(|c| {
                if c <= 0.0 {
                    bail!("invalid --cpus {c}: must be greater than 0")
                }
                Ok((c * 1e9) as i64)
            })
            .transpose()?
            .unwrap_or(0),
        pids_limit: args.pids_limit.unwrap_or(0),
        read_only: args.read_only,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        labels,
        auto_remove: args.rm && args.detach,
        no_init: !args.init,
        privileged: args.privileged,
        stop_signal: args.stop_signal.clone().unwrap_or_default(),
        stop_timeout: args.stop_timeout.unwrap_or(0),
    })
}

async fn create(channel: &Channel, args: &RunArgs) -> anyhow::Result<String> {
    if args.interactive || args.tty {
        bail!("-i/-t on run are not supported yet: start the container with -d and use `rswarm container exec -it <container> sh`");
    }
    let spec = container_spec(args)?;
    let mut containers = ContainersClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let present = images
        .inspect(pb::InspectImageRequest {
            image: args.image.clone(),
        })
        .await
        .is_ok();
    let must_pull = match args.pull.as_str() {
        "always" => true,
        "missing" => !present,
        "never" => false,
        other => bail!("invalid --pull {other:?}: use always, missing or never"),
    };
    if must_pull {
        if !present {
            err(&format!("Unable to find image '{}' locally\n", args.image));
        }
        pull(
            &mut images,
            &PullArgs {
                quiet: false,
                username: None,
                password: None,
                image: args.image.clone(),
            },
            true,
        )
        .await?;
    }
    let r = containers
        .create(pb::CreateContainerRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner();
    for w in r.warnings {
        err(&format!("WARNING: {w}\n"));
    }
    Ok(r.id)
}

async fn stream_logs(
    containers: &mut ContainersClient<Channel>,
    req: pb::LogsRequest,
) -> anyhow::Result<()> {
    let timestamps = req.timestamps;
    let mut stream = containers
        .logs(req)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        let mut data = Vec::new();
        if timestamps {
            data.extend_from_slice(chunk.time.as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(&chunk.data);
        if chunk.stream == 2 {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(&data);
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&data);
            let _ = o.flush();
        }
    }
    Ok(())
}

pub(crate) fn since(s: &str) -> anyhow::Result<String> {
    if rfc3339_unix(s).is_some() {
        return Ok(s.to_string());
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        anyhow::anyhow!(
            "invalid --since {s:?}: use RFC 3339 (2026-01-02T15:04:05Z) or a duration (42m)"
        )
    })?;
    let t = time::OffsetDateTime::now_utc() - d;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

pub async fn container_command(channel: Channel, command: ContainerCommand) -> anyhow::Result<()> {
    let mut containers = ContainersClient::new(channel.clone());
    match command {
        ContainerCommand::Create(args) => {
            let id = create(&channel, &args).await?;
            out(&format!("{id}\n"));
        }
        ContainerCommand::Run(args) => run(&channel, &args).await?,
        ContainerCommand::Start { containers: names } => {
            for n in names {
                containers
                    .start(pb::ContainerRef { id: n.clone() })
                    .await
                    .map_err(status_error)?;
                out(&format!("{n}\n"));
            }
        }
        ContainerCommand::Ls(PsArgs {
            all,
            quiet,
            format,
            no_trunc,
        }) => {
            let json = wants_json(&format)?;
            let list = containers
                .list(pb::ListContainersRequest { all })
                .await
                .map_err(status_error)?
                .into_inner()
                .containers;
            if quiet {
                for c in &list {
                    out(&format!(
                        "{}\n",
                        if no_trunc {
                            c.id.clone()
                        } else {
                            short_id(&c.id)
                        }
                    ));
                }
            } else if json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|c| {
                        serde_json::json!({"ID": c.id, "Names": c.name, "Image": c.image, "Command": c.command,
                            "CreatedAt": c.created, "State": c.state, "Status": c.status, "Ports": c.ports.join(", "),
                            "Networks": c.network, "IPAddress": c.ip})
                    })
                    .collect();
                out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
            } else {
                out(&output::table(
                    &[
                        "CONTAINER ID",
                        "IMAGE",
                        "COMMAND",
                        "CREATED",
                        "STATUS",
                        "PORTS",
                        "NAMES",
                    ],
                    &container_rows(&list, no_trunc),
                ));
            }
        }
        ContainerCommand::Inspect { containers: names } => {
            let mut all = Vec::new();
            for n in names {
                let r = containers
                    .inspect(pb::ContainerRef { id: n })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.push(serde_json::from_str::<serde_json::Value>(&r.json)?);
            }
            out(&format!("{}\n", serde_json::to_string_pretty(&all)?));
        }
        ContainerCommand::Logs(LogsArgs {
            follow,
            tail,
            timestamps,
            since: since_arg,
            container,
        }) => {
            let (tail, tail_set) = match tail.as_deref() {
                None | Some("all") => (0, false),
                Some(n) => (
                    n.parse().map_err(|_| {
                        anyhow::anyhow!("invalid --tail {n:?}: use a number or all")
                    })?,
                    true,
                ),
            };
            let req = pb::LogsRequest {
                id: container,
                follow,
                tail,
                tail_set,
                timestamps,
                since: since_arg
                    .as_deref()
                    .map(since)
                    .transpose()?
                    .unwrap_or_default(),
            };
            stream_logs(&mut containers, req).await?;
        }
        ContainerCommand::Exec(args) => exec(&mut containers, args).await?,
        ContainerCommand::Stop {
            time,
            containers: names,
        } => {
            for n in names {
                containers
                    .stop(pb::StopContainerRequest {
                        id: n.clone(),
                        timeout: time.unwrap_or(-1),
                    })
                    .await
                    .map_err(status_error)?;
                out(&format!("{n}\n"));
            }
        }
        ContainerCommand::Rm {
            force,
            containers: names,
        } => {
            let mut failed = false;
            for n in names {
                match containers
                    .remove(pb::RemoveContainerRequest {
                        id: n.clone(),
                        force,
                    })
                    .await
                {
                    Ok(_) => out(&format!("{n}\n")),
                    Err(s) => {
                        err(&format!("Error response from daemon: {}\n", s.message()));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(ExitStatus(1).into());
            }
        }
        ContainerCommand::Wait { containers: names } => {
            for n in names {
                let r = containers
                    .wait(pb::ContainerRef { id: n })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                out(&format!("{}\n", r.exit_code));
            }
        }
    }
    Ok(())
}

async fn run(channel: &Channel, args: &RunArgs) -> anyhow::Result<()> {
    let id = create(channel, args).await?;
    let mut containers = ContainersClient::new(channel.clone());
    if let Err(s) = containers.start(pb::ContainerRef { id: id.clone() }).await {
        // `run` made the container only to run it: a failed start leaves nothing behind.
        let _ = containers
            .remove(pb::RemoveContainerRequest {
                id: id.clone(),
                force: true,
            })
            .await;
        return Err(status_error(s));
    }
    if args.detach {
        out(&format!("{id}\n"));
        return Ok(());
    }
    stream_logs(
        &mut containers,
        pb::LogsRequest {
            id: id.clone(),
            follow: true,
            ..Default::default()
        },
    )
    .await?;
    let r = containers
        .wait(pb::ContainerRef { id: id.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.rm {
        containers
            .remove(pb::RemoveContainerRequest {
                id: id.clone(),
                force: true,
            })
            .await
            .map_err(status_error)?;
    }
    exit_with(r.exit_code)
}

async fn exec(containers: &mut ContainersClient<Channel>, args: ExecArgs) -> anyhow::Result<()> {
    if args.detach {
        bail!("exec -d is not supported: run the command attached, or start it with `sh -c '… &'`");
    }
    use crate::terminal::RawMode;
    let tty = args.tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let (rows, cols) = crate::terminal::size().unwrap_or((24, 80));
    let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
    tx.send(pb::ExecInput {
        input: Some(pb::exec_input::Input::Start(pb::ExecStart {
            id: args.container.clone(),
            cmd: args.command.clone(),
            tty: args.tty,
            stdin: args.interactive,
            env: args.env.clone(),
            user: args.user.clone().unwrap_or_default(),
            workdir: args.workdir.clone().unwrap_or_default(),
            rows: u32::from(rows),
            cols: u32::from(cols),
        })),
    })
    .await?;
    if args.interactive {
        crate::terminal::forward_stdin(tx.clone());
    }
    if tty {
        crate::terminal::forward_resizes(tx.clone());
    }
    drop(tx);
    let mut stream = containers
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let _raw = if tty { RawMode::enter() } else { None };
    let mut code = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(24 * 3600), stream.next()).await;
        let Ok(Some(msg)) = msg else { break };
        match msg.map_err(status_error)?.output {
            Some(pb::exec_output::Output::Stdout(d)) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&d);
                let _ = o.flush();
            }
            Some(pb::exec_output::Output::Stderr(d)) => {
                let mut e = std::io::stderr().lock();
                let _ = e.write_all(&d);
                let _ = e.flush();
            }
            Some(pb::exec_output::Output::ExitCode(c)) => {
                code = c;
                break;
            }
            None => {}
        }
    }
    drop(_raw);
    exit_with(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_rows_split_tags() {
        let rows = image_rows(
            &[pb::ImageSummary {
                id: "sha256:0123456789abcdef0000".into(),
                repo_tags: vec!["localhost:5000/bb:1".into(), "bb:latest".into()],
                repo_digests: vec![],
                created: String::new(),
                size: 1_500_000,
            }],
            false,
        );
        assert_eq!(rows[0][0], "localhost:5000/bb");
        assert_eq!(rows[0][1], "1");
        assert_eq!(rows[0][2], "0123456789ab");
        assert_eq!(rows[0][4], "1.500MB");
        assert_eq!(rows[1][0], "bb");
    }

    #[test]
    fn run_flags_to_spec() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "rswarm",
            "container",
            "run",
            "-d",
            "--rm",
            "-e",
            "A=1",
            "-p",
            "8080:80",
            "-v",
            "/srv:/srv:ro",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--entrypoint",
            "",
            "--init=false",
            "busybox",
            "sh",
            "-c",
            "echo hi",
        ])
        .unwrap();
        let crate::Command::Container(ContainerCommand::Run(args)) = cli.command else {
            panic!("not run");
        };
        let spec = container_spec(&args).unwrap();
        assert_eq!(spec.cmd, vec!["sh", "-c", "echo hi"]);
        assert!(spec.entrypoint_set && spec.entrypoint.is_empty());
        assert_eq!(spec.memory, 64 << 20);
        assert_eq!(spec.nano_cpus, 500_000_000);
        assert!(spec.auto_remove && spec.no_init);
        assert_eq!(spec.publish, vec!["8080:80"]);
    }
}
