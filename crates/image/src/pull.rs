//! Pulling from registries with `oci-client`.

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Sender;

use crate::digest::{chain_ids, sha256_digest, short_id};
use crate::locks::TempPath;
use crate::registry::{describe_platforms, endpoints, select_platform, Endpoint, Scheme};
use crate::store::Record;
use crate::{Credentials, Image, ImageError, ImageRef, ImageStore, PullProgress};

/// Manifest media types asked for.
const MANIFEST_TYPES: [&str; 4] = [
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Largest manifest or config accepted, bytes.
const MAX_SMALL_BLOB: u64 = 16 << 20;

/// Layers downloaded at once, as Docker's `max-concurrent-downloads` default.
const CONCURRENT_LAYERS: usize = 3;

/// Whether a layer media type is a (possibly compressed) tar this store unpacks.
pub(crate) fn layer_media_type_ok(media_type: &str) -> bool {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs."));
    match base {
        Some(rest) => matches!(
            rest,
            "v1.tar"
                | "v1.tar+gzip"
                | "v1.tar+zstd"
                | "nondistributable.v1.tar"
                | "nondistributable.v1.tar+gzip"
                | "nondistributable.v1.tar+zstd"
                | "diff.tar"
                | "diff.tar.gzip"
                | "diff.tar.zstd"
                | "foreign.diff.tar"
                | "foreign.diff.tar.gzip"
        ),
        None => false,
    }
}

/// Sends progress events without ever blocking a pull on a slow or gone receiver.
#[derive(Clone)]
struct Progress(Option<Sender<PullProgress>>);

impl Progress {
    /// A state change: waits a little for room in the channel, then gives up.
    async fn state(&self, layer: &str, status: &str, current: u64, total: u64) {
        if let Some(tx) = &self.0 {
            let ev = PullProgress {
                layer: layer.to_string(),
                status: status.to_string(),
                current,
                total,
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(ev)).await;
        }
    }

    /// A byte count: dropped when the channel is full.
    fn bytes(&self, layer: &str, current: u64, total: u64) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(PullProgress {
                layer: layer.to_string(),
                status: "Downloading".to_string(),
                current,
                total,
            });
        }
    }
}

/// One pull attempt against one endpoint.
struct Attempt<'a> {
    client: Client,
    auth: RegistryAuth,
    /// The reference as sent to this endpoint.
    oci: Reference,
    /// The reference asked for (for errors and records).
    wanted: &'a ImageRef,
    endpoint: &'a Endpoint,
}

impl Attempt<'_> {
    fn registry_error(&self, e: OciDistributionError) -> ImageError {
        map_oci_error(&self.wanted.to_string(), &self.endpoint.host, e)
    }
}

/// A failed attempt and whether the next endpoint may be tried.
struct Failure {
    error: ImageError,
    fall_back: bool,
}

/// An error's message with its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

/// Maps oci-client's error to ours, naming the reference and the registry's answer.
pub(crate) fn map_oci_error(
    reference: &str,
    registry: &str,
    e: OciDistributionError,
) -> ImageError {
    let reference = reference.to_string();
    let registry = registry.to_string();
    match e {
        OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
            reference,
            registry,
            answer: format!("401 unauthorized for {url}"),
        },
        OciDistributionError::AuthenticationFailure(answer) => ImageError::Unauthorized {
            reference,
            registry,
            answer,
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let answer = format!(
                "{} ({url})",
                envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(OciErrorCode::ManifestUnknown)
                | Some(OciErrorCode::NameUnknown)
                | Some(OciErrorCode::NotFound) => ImageError::ManifestNotFound {
                    reference,
                    registry,
                    answer,
                },
                Some(OciErrorCode::Unauthorized) | Some(OciErrorCode::Denied) => {
                    ImageError::Unauthorized {
                        reference,
                        registry,
                        answer,
                    }
                }
                _ => ImageError::Registry {
                    reference,
                    registry,
                    answer,
                },
            }
        }
        OciDistributionError::ServerError { code, url, message } => {
            let answer = format!("HTTP {code} for {url}: {}", message.trim());
            match code {
                404 => ImageError::ManifestNotFound {
                    reference,
                    registry,
                    answer,
                },
                401 | 403 => ImageError::Unauthorized {
                    reference,
                    registry,
                    answer,
                },
                _ => ImageError::Registry {
                    reference,
                    registry,
                    answer,
                },
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch {
                what: format!("content of {reference} from {registry}"),
                expected,
                actual,
            }
        }
        other => ImageError::Registry {
            reference,
            registry,
            answer: error_chain(&other),
        },
    }
}

fn is_transport(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(_))
}

fn make_client(scheme: Scheme) -> Result<Client, ImageError> {
    let config = ClientConfig {
        protocol: if scheme == Scheme::Http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: scheme == Scheme::HttpsNoVerify,
        // indexes are resolved here, with variants
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map_err(|e| ImageError::Internal(format!("building an HTTP client: {}", error_chain(&e))))
}

/// A layer to fetch: its descriptor, diff id and chain id.
struct LayerJob {
    desc: OciDescriptor,
    diff_id: String,
    chain_id: String,
}

impl ImageStore {
    /// Pulls `reference` (with `auth` for its registry, never sent to mirrors), verifying
    /// every blob's sha256 while streaming it to disk, and unpacks its layers. Concurrent
    /// pulls of one reference run one after the other (the second finds everything present:
    /// `Already exists`); pulls of different images share layer downloads and unpacks.
    pub async fn pull(
        &self,
        reference: &ImageRef,
        auth: Option<&Credentials>,
        progress: Option<Sender<PullProgress>>,
    ) -> Result<Image, ImageError> {
        let progress = Progress(progress);
        let key = format!("pull:{reference}");
        let (_guard, waited) = self.inner.locks.lock(&key).await;
        if waited {
            tracing::debug!(%reference, "joined a pull already running");
        }
        let eps = endpoints(reference.registry(), &self.inner.registries);
        let mut clients: HashMap<Scheme, Client> = HashMap::new();
        let mut last: Option<ImageError> = None;
        for (i, ep) in eps.iter().enumerate() {
            let client = match clients.get(&ep.scheme) {
                Some(c) => c.clone(),
                None => {
                    let c = make_client(ep.scheme)?;
                    clients.insert(ep.scheme, c.clone());
                    c
                }
            };
            let registry_auth = match auth {
                Some(c) if !ep.mirror => {
                    RegistryAuth::Basic(c.username.clone(), c.password.clone())
                }
                _ => RegistryAuth::Anonymous,
            };
            let oci = match (reference.tag(), reference.digest()) {
                (_, Some(d)) => Reference::with_digest(
                    ep.host.clone(),
                    reference.repository().to_string(),
                    d.to_string(),
                ),
                (Some(t), None) => Reference::with_tag(
                    ep.host.clone(),
                    reference.repository().to_string(),
                    t.to_string(),
                ),
                (None, None) => Reference::with_tag(
                    ep.host.clone(),
                    reference.repository().to_string(),
                    "latest".to_string(),
                ),
            };
            let attempt = Attempt {
                client,
                auth: registry_auth,
                oci,
                wanted: reference,
                endpoint: ep,
            };
            tracing::info!(%reference, endpoint = %ep.host, scheme = ?ep.scheme, mirror = ep.mirror, "pulling");
            match self.pull_from(&attempt, &progress).await {
                Ok(image) => return Ok(image),
                Err(f) => {
                    let more = i + 1 < eps.len();
                    if f.fall_back && more {
                        if ep.mirror {
                            tracing::warn!(%reference, mirror = %ep.host, error = %f.error, "registry mirror failed, trying the next endpoint");
                        } else {
                            tracing::debug!(%reference, endpoint = %ep.host, error = %f.error, "no TLS on the insecure registry, falling back to plain HTTP");
                        }
                        last = Some(f.error);
                        continue;
                    }
                    return Err(f.error);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Registry {
            reference: reference.to_string(),
            registry: reference.registry().to_string(),
            answer: "no endpoint to pull from".to_string(),
        }))
    }

    async fn pull_from(&self, a: &Attempt<'_>, progress: &Progress) -> Result<Image, Failure> {
        let may_fall_back = |e: &OciDistributionError| {
            a.endpoint.mirror || (a.endpoint.scheme == Scheme::HttpsNoVerify && is_transport(e))
        };
        let late = |error: ImageError| Failure {
            error,
            fall_back: a.endpoint.mirror,
        };
        // 1. the manifest, through an index if need be
        let (top_bytes, _) = a
            .client
            .pull_manifest_raw(&a.oci, &a.auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| Failure {
                fall_back: may_fall_back(&e),
                error: a.registry_error(e),
            })?;
        let top_digest = sha256_digest(&top_bytes);
        if let Some(want) = a.wanted.digest() {
            if want != top_digest {
                return Err(late(ImageError::DigestMismatch {
                    what: format!("manifest of {}", a.wanted),
                    expected: want.to_string(),
                    actual: top_digest,
                }));
            }
        }
        let mut manifest_blobs = vec![(top_digest.clone(), top_bytes.to_vec())];
        let parsed: OciManifest = serde_json::from_slice(&top_bytes).map_err(|e| {
            late(ImageError::Registry {
                reference: a.wanted.to_string(),
                registry: a.endpoint.host.clone(),
                answer: format!("the manifest is not valid JSON of a known kind: {e}"),
            })
        })?;
        let manifest: OciImageManifest = match parsed {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let Some(digest) = select_platform(&index.manifests, &self.inner.platform) else {
                    return Err(Failure {
                        error: ImageError::NoMatchingPlatform {
                            reference: a.wanted.to_string(),
                            platform: self.inner.platform.to_string(),
                            available: describe_platforms(&index.manifests),
                        },
                        fall_back: false,
                    });
                };
                let by_digest = a.oci.clone_with_digest(digest.clone());
                let (bytes, _) = a
                    .client
                    .pull_manifest_raw(&by_digest, &a.auth, &MANIFEST_TYPES)
                    .await
                    .map_err(|e| late(a.registry_error(e)))?;
                let actual = sha256_digest(&bytes);
                if actual != digest {
                    return Err(late(ImageError::DigestMismatch {
                        what: format!("platform manifest of {}", a.wanted),
                        expected: digest,
                        actual,
                    }));
                }
                let m: OciImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
                    late(ImageError::Registry {
                        reference: a.wanted.to_string(),
                        registry: a.endpoint.host.clone(),
                        answer: format!(
                            "the platform manifest {digest} is not an image manifest: {e}"
                        ),
                    })
                })?;
                manifest_blobs.push((digest, bytes.to_vec()));
                m
            }
        };
        for layer in &manifest.layers {
            if !layer_media_type_ok(&layer.media_type) {
                return Err(Failure {
                    error: ImageError::UnsupportedMediaType {
                        reference: a.wanted.to_string(),
                        media_type: layer.media_type.clone(),
                        what: format!("layer {}: not a container filesystem layer", layer.digest),
                    },
                    fall_back: false,
                });
            }
        }
        // 2. config
        let config_digest = manifest.config.digest.clone();
        let mut pin_keys = vec![format!("blob:{config_digest}")];
        pin_keys.extend(manifest_blobs.iter().map(|(d, _)| format!("blob:{d}")));
        pin_keys.extend(manifest.layers.iter().map(|l| format!("blob:{}", l.digest)));
        let _pins_blobs = self.inner.pins.pin(pin_keys);
        if manifest.config.size < 0 || manifest.config.size as u64 > MAX_SMALL_BLOB {
            return Err(late(ImageError::Registry {
                reference: a.wanted.to_string(),
                registry: a.endpoint.host.clone(),
                answer: format!(
                    "the config blob announces {} bytes; refused",
                    manifest.config.size
                ),
            }));
        }
        self.ensure_blob(a, &manifest.config, None)
            .await
            .map_err(late)?;
        let config_path = self.blob_path(&config_digest).map_err(late)?;
        let config_bytes = tokio::fs::read(&config_path).await.map_err(|e| {
            late(ImageError::Io {
                context: format!("reading {}", config_path.display()),
                source: e,
            })
        })?;
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| {
                late(ImageError::InvalidImageConfig {
                    digest: config_digest.clone(),
                    reason: e.to_string(),
                })
            })?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(late(ImageError::InvalidImageConfig {
                digest: config_digest.clone(),
                reason: format!(
                    "it lists {} layers (diff ids) but the manifest {}",
                    diff_ids.len(),
                    manifest.layers.len()
                ),
            }));
        }
        if config.os().to_string() != self.inner.platform.os
            || config.architecture().to_string() != self.inner.platform.architecture
        {
            tracing::warn!(reference = %a.wanted, os = %config.os(), arch = %config.architecture(), node = %self.inner.platform, "the image's platform does not match this node");
        }
        // 3. layers
        let chains = chain_ids(&diff_ids);
        let _pins_layers = self
            .inner
            .pins
            .pin(chains.iter().map(|c| format!("layer:{c}")).collect());
        let jobs: Vec<LayerJob> = manifest
            .layers
            .iter()
            .zip(diff_ids.iter().zip(chains.iter()))
            .map(|(desc, (diff, chain))| LayerJob {
                desc: desc.clone(),
                diff_id: diff.clone(),
                chain_id: chain.clone(),
            })
            .collect();
        // Collected first: a lazily mapping closure over `&LayerJob` makes the future not `Send`
        // (rustc's higher-ranked lifetime limitation), and pulls run in spawned tasks.
        let layer_futures: Vec<_> = jobs
            .iter()
            .map(|job| self.ensure_layer(a, job, progress))
            .collect();
        futures::stream::iter(layer_futures)
            .buffer_unordered(CONCURRENT_LAYERS)
            .try_collect::<Vec<()>>()
            .await
            .map_err(late)?;
        // 4. manifests and the record
        for (d, bytes) in &manifest_blobs {
            self.put_blob_bytes(d, bytes).map_err(late)?;
        }
        let mut blobs: Vec<String> = manifest_blobs.iter().map(|(d, _)| d.clone()).collect();
        blobs.push(config_digest.clone());
        blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let record = Record {
            image: Image {
                id: config_digest,
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                created: config.created().clone(),
                size: 0,
                config,
                diff_ids,
            },
            blobs,
        };
        let tags: Vec<String> = a
            .wanted
            .tag()
            .map(|t| format!("{}:{t}", a.wanted.familiar_name()))
            .into_iter()
            .collect();
        let digests = vec![format!("{}@{top_digest}", a.wanted.familiar_name())];
        let this = self.clone();
        let image = tokio::task::spawn_blocking(move || this.commit(record, &tags, &digests))
            .await
            .map_err(|e| late(ImageError::Internal(format!("recording the image: {e}"))))?
            .map_err(late)?;
        tracing::info!(reference = %a.wanted, id = %image.id, "pulled");
        Ok(image)
    }

    async fn ensure_layer(
        &self,
        a: &Attempt<'_>,
        job: &LayerJob,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let short = short_id(&job.desc.digest);
        let (_layer_lock, _) = self
            .inner
            .locks
            .lock(&format!("layer:{}", job.chain_id))
            .await;
        if self.find_layer(&job.chain_id)?.is_some() {
            progress.state(&short, "Already exists", 0, 0).await;
            return Ok(());
        }
        progress.state(&short, "Pulling fs layer", 0, 0).await;
        self.ensure_blob(a, &job.desc, Some(progress)).await?;
        let total = u64::try_from(job.desc.size).unwrap_or(0);
        progress.state(&short, "Extracting", 0, total).await;
        let this = self.clone();
        let blob = self.blob_path(&job.desc.digest)?;
        let diff = job.diff_id.clone();
        let chain = job.chain_id.clone();
        tokio::task::spawn_blocking(move || this.install_layer(&blob, &diff, &chain))
            .await
            .map_err(|e| ImageError::Internal(format!("unpacking a layer: {e}")))??;
        progress.state(&short, "Pull complete", total, total).await;
        Ok(())
    }

    /// Downloads a blob into the blob store unless present, hashing while streaming to a
    /// temp file; a mismatch is refused and the temp file removed.
    async fn ensure_blob(
        &self,
        a: &Attempt<'_>,
        desc: &OciDescriptor,
        progress: Option<&Progress>,
    ) -> Result<(), ImageError> {
        let digest = desc.digest.clone();
        let path = self.blob_path(&digest)?;
        let short = short_id(&digest);
        let total = u64::try_from(desc.size).unwrap_or(0);
        let (_blob_lock, _) = self.inner.locks.lock(&format!("blob:{digest}")).await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            if let Some(p) = progress {
                p.state(&short, "Download complete", total, total).await;
            }
            return Ok(());
        }
        let tmp = TempPath::new(self.tmp_path("blob"));
        let mut stream = a
            .client
            .pull_blob_stream(&a.oci, desc)
            .await
            .map_err(|e| a.registry_error(e))?;
        let io_err = |what: &str, e: std::io::Error| ImageError::Io {
            context: format!("{what} {}", tmp.path().display()),
            source: e,
        };
        let mut file = tokio::fs::File::create(tmp.path())
            .await
            .map_err(|e| io_err("creating", e))?;
        let mut hasher = Sha256::new();
        let mut count = 0u64;
        let mut reported = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    if let Some(DigestError::VerificationError { expected, actual }) =
                        e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
                    {
                        return Err(ImageError::DigestMismatch {
                            what: format!("blob of {} from {}", a.wanted, a.endpoint.host),
                            expected: expected.clone(),
                            actual: actual.clone(),
                        });
                    }
                    return Err(ImageError::Registry {
                        reference: a.wanted.to_string(),
                        registry: a.endpoint.host.clone(),
                        answer: format!("downloading blob {digest}: {}", error_chain(&e)),
                    });
                }
            };
            count += chunk.len() as u64;
            if total > 0 && count > total {
                return Err(ImageError::BlobTooLarge {
                    digest,
                    expected: total,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err("writing", e))?;
            if let Some(p) = progress {
                if count - reported >= 256 * 1024 || count == total {
                    reported = count;
                    p.bytes(&short, count, total);
                }
            }
        }
        file.sync_all().await.map_err(|e| io_err("syncing", e))?;
        drop(file);
        if let Some(p) = progress {
            p.state(&short, "Verifying Checksum", count, total).await;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob of {} from {}", a.wanted, a.endpoint.host),
                expected: digest,
                actual,
            });
        }
        if total > 0 && count != total {
            return Err(ImageError::Registry {
                reference: a.wanted.to_string(),
                registry: a.endpoint.host.clone(),
                answer: format!("blob {digest} has {count} bytes, its descriptor says {total}"),
            });
        }
        self.put_blob_file(&digest, tmp)?;
        if let Some(p) = progress {
            p.state(&short, "Download complete", count, total).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types() {
        for ok in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.diff.tar",
        ] {
            assert!(layer_media_type_ok(ok), "{ok}");
        }
        for bad in [
            "application/vnd.wasm.content.layer.v1+wasm",
            "application/vnd.oci.image.config.v1+json",
            "text/plain",
        ] {
            assert!(!layer_media_type_ok(bad), "{bad}");
        }
    }

    #[test]
    fn registry_errors_name_reference_and_answer() {
        let e = map_oci_error(
            "127.0.0.1:5000/x:nope",
            "127.0.0.1:5000",
            OciDistributionError::ServerError {
                code: 404,
                url: "http://127.0.0.1:5000/v2/x/manifests/nope".into(),
                message: "manifest unknown".into(),
            },
        );
        let s = e.to_string();
        assert!(matches!(e, ImageError::ManifestNotFound { .. }));
        assert!(
            s.contains("127.0.0.1:5000/x:nope") && s.contains("manifest unknown"),
            "{s}"
        );
        let e = map_oci_error(
            "r",
            "h",
            OciDistributionError::UnauthorizedError { url: "u".into() },
        );
        assert!(matches!(e, ImageError::Unauthorized { .. }));
    }
}
