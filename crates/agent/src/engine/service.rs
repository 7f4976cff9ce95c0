//! The engine's gRPC services on the local socket: `Images` and `Containers`.

use std::pin::Pin;
use std::str::FromStr;

use futures::{Stream, StreamExt};
use rswarm_api::local::v1 as pb;
use rswarm_api::local::v1::containers_server::Containers;
use rswarm_api::local::v1::images_server::Images;
use rswarm_image::{Credentials, Image, ImageRef};
use rswarm_runtime::logs::{read_logs, LogReadOptions};
use rswarm_runtime::spec::ContainerConfig;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{CreateRequest, Engine, EngineError};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `rswarm image …` on this node.
#[derive(Clone)]
pub struct ImagesService {
    engine: Engine,
}

impl ImagesService {
    pub fn new(engine: Engine) -> Self {
        ImagesService { engine }
    }
}

fn summary(image: &Image) -> pb::ImageSummary {
    pb::ImageSummary {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        created: image.created.clone().unwrap_or_default(),
        size: image.size,
    }
}

fn image_status(e: rswarm_image::ImageError) -> Status {
    EngineError::from(e).into()
}

#[tonic::async_trait]
impl Images for ImagesService {
    type PullStream = BoxStream<pb::PullImageEvent>;

    async fn pull(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let req = request.into_inner();
        let reference = ImageRef::from_str(&req.reference).map_err(image_status)?;
        let creds = (!req.username.is_empty()).then(|| Credentials {
            username: req.username.clone(),
            password: req.password.clone(),
        });
        let (tx, rx) = mpsc::channel(64);
        let (ptx, mut prx) = mpsc::channel(64);
        let store = self.engine.images().clone();
        let events = tx.clone();
        tokio::spawn(async move {
            while let Some(p) = prx.recv().await {
                let p: rswarm_image::PullProgress = p;
                let ev = pb::PullImageEvent {
                    event: Some(pb::pull_image_event::Event::Progress(pb::PullProgress {
                        layer: p.layer,
                        status: p.status,
                        current: p.current,
                        total: p.total,
                    })),
                };
                if events.send(Ok(ev)).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let result = store.pull(&reference, creds.as_ref(), Some(ptx)).await;
            let msg = match result {
                Ok(image) => Ok(pb::PullImageEvent {
                    event: Some(pb::pull_image_event::Event::Done(summary(&image))),
                }),
                Err(e) => Err(image_status(e)),
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn load(
        &self,
        request: Request<Streaming<pb::LoadImageChunk>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        let mut stream = request.into_inner();
        let path = self
            .engine
            .root()
            .join(format!(".load-{}.tar", super::random_hex(8)));
        let result = async {
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| Status::internal(format!("cannot create {}: {e}", path.display())))?;
            while let Some(chunk) = stream.message().await? {
                file.write_all(&chunk.data).await.map_err(|e| {
                    Status::internal(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            file.flush()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            drop(file);
            self.engine.images().load(&path).await.map_err(image_status)
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        let images = result?;
        Ok(Response::new(pb::LoadImageResponse {
            images: images.iter().map(summary).collect(),
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.engine.images().list().map_err(image_status)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(summary).collect(),
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let name = request.into_inner().image;
        let image = self
            .engine
            .images()
            .resolve(&name)
            .map_err(image_status)?
            .ok_or_else(|| Status::not_found(format!("no such image: {name}")))?;
        let json =
            serde_json::to_string_pretty(&image).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::InspectResponse { json }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let engine = self.engine.clone();
        let lines = self
            .engine
            .images()
            .remove(&req.image, req.force, &|id| engine.image_in_use(id))
            .map_err(image_status)?;
        Ok(Response::new(pb::RemoveImageResponse { lines }))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        let all = request.into_inner().all;
        let engine = self.engine.clone();
        let report = self
            .engine
            .images()
            .prune(all, &|id| engine.image_in_use(id))
            .map_err(image_status)?;
        Ok(Response::new(pb::PruneImagesResponse {
            deleted: report.deleted,
            reclaimed_bytes: report.reclaimed_bytes,
        }))
    }
}

/// `rswarm container …` on this node.
#[derive(Clone)]
pub struct ContainersService {
    engine: Engine,
}

impl ContainersService {
    pub fn new(engine: Engine) -> Self {
        ContainersService { engine }
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn positive(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

/// The proto spec → the engine's create request.
pub fn create_request(spec: pb::ContainerSpec) -> CreateRequest {
    let config = ContainerConfig {
        hostname: spec.hostname,
        entrypoint: spec.entrypoint_set.then_some(spec.entrypoint),
        cmd: spec.cmd,
        env: spec.env,
        workdir: opt(spec.workdir),
        user: opt(spec.user),
        read_only: spec.read_only,
        tty: false,
        memory: positive(spec.memory),
        memory_swap: positive(spec.memory_swap),
        nano_cpus: positive(spec.nano_cpus),
        pids_limit: positive(spec.pids_limit),
        cap_add: spec.cap_add,
        cap_drop: spec.cap_drop,
        privileged: spec.privileged,
        labels: spec.labels.clone().into_iter().collect(),
        init: !spec.no_init,
        stop_signal: opt(spec.stop_signal),
    };
    CreateRequest {
        image: spec.image,
        name: opt(spec.name),
        config,
        publish: spec.publish,
        volumes: spec.volumes,
        tmpfs: spec.tmpfs,
        network: spec.network,
        auto_remove: spec.auto_remove,
        stop_timeout: (spec.stop_timeout > 0).then_some(spec.stop_timeout),
        labels: spec.labels.into_iter().collect(),
        network_aliases: spec.network_aliases,
        ip: spec.ip,
        overlays: Vec::new(),
    }
}

fn rfc3339_nanos(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Containers for ContainersService {
    type LogsStream = BoxStream<pb::LogChunk>;
    type ExecStream = BoxStream<pb::ExecOutput>;

    async fn create(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("missing container spec"))?;
        let record = self.engine.create(create_request(spec)).await?;
        Ok(Response::new(pb::CreateContainerResponse {
            id: record.id,
            warnings: Vec::new(),
        }))
    }

    async fn start(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        self.engine.start(&request.into_inner().id).await?;
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn stop(
        &self,
        request: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::StopContainerResponse>, Status> {
        let req = request.into_inner();
        let timeout = u32::try_from(req.timeout).ok();
        self.engine.stop(&req.id, timeout).await?;
        Ok(Response::new(pb::StopContainerResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        self.engine.remove(&req.id, req.force).await?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let all = request.into_inner().all;
        let now = super::now();
        let containers = self
            .engine
            .list(all)
            .into_iter()
            .map(|r| pb::ContainerSummary {
                id: r.id.clone(),
                name: r.name.clone(),
                image: r.image.clone(),
                command: r.command.join(" "),
                created: r.created,
                state: r.state.status.as_str().to_string(),
                status: r.status_text(now),
                ports: r.port_texts(),
                network: r.network.to_string(),
                ip: r
                    .attachment
                    .as_ref()
                    .filter(|_| r.is_running())
                    .map(|a| a.ip.to_string())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    async fn inspect(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let record = self.engine.record(&request.into_inner().id)?;
        let json =
            serde_json::to_string_pretty(&record.inspect_json(&self.engine.bundle(&record.id)))
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::InspectResponse { json }))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let record = self.engine.record(&req.id)?;
        let since = if req.since.is_empty() {
            None
        } else {
            Some(
                time::OffsetDateTime::parse(
                    &req.since,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "invalid --since {:?}: {e}; use RFC 3339, e.g. 2026-01-02T15:04:05Z",
                        req.since
                    ))
                })?,
            )
        };
        let mut exit = self.engine.exit_watch(&record.id)?;
        let running = record.is_running();
        let stop = async move {
            if running {
                let _ = exit.wait_for(Option::is_some).await;
            }
        };
        let opts = LogReadOptions {
            follow: req.follow,
            tail: req.tail_set.then_some(req.tail as usize),
            since,
            timestamps: req.timestamps,
        };
        let path = self.engine.bundle(&record.id).join("json.log");
        let stream = read_logs(path, opts, stop).await.map(|item| match item {
            Ok(entry) => Ok(pb::LogChunk {
                stream: if matches!(entry.stream, rswarm_runtime::logs::LogStream::Stderr) {
                    2
                } else {
                    1
                },
                data: entry.line,
                time: rfc3339_nanos(entry.time),
            }),
            Err(e) => Err(Status::internal(format!("cannot read the logs: {e}"))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn connect(
        &self,
        request: Request<pb::ConnectContainerRequest>,
    ) -> Result<Response<pb::ConnectContainerResponse>, Status> {
        let r = request.into_inner();
        self.engine
            .connect(&r.id, &r.network, &r.aliases, &r.ip)
            .await?;
        Ok(Response::new(pb::ConnectContainerResponse {}))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectContainerRequest>,
    ) -> Result<Response<pb::DisconnectContainerResponse>, Status> {
        let r = request.into_inner();
        self.engine.disconnect(&r.id, &r.network, r.force).await?;
        Ok(Response::new(pb::DisconnectContainerResponse {}))
    }

    async fn wait(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::WaitResponse>, Status> {
        let record = self.engine.record(&request.into_inner().id)?;
        if !record.is_running() {
            return Ok(Response::new(pb::WaitResponse {
                exit_code: record.state.exit_code,
                oom_killed: record.state.oom_killed,
                error: record.state.error,
            }));
        }
        let mut exit = self.engine.exit_watch(&record.id)?;
        let report = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::unavailable("the engine is shutting down"))?
            .clone()
            .unwrap_or_default();
        Ok(Response::new(pb::WaitResponse {
            exit_code: report.exit_code,
            oom_killed: report.oom_killed,
            error: report.error,
        }))
    }

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let stream = super::exec::exec(self.engine.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}
