//! `docker load`: `docker save` archives and OCI image-layout archives.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};
use sha2::{Digest as _, Sha256};

use crate::digest::chain_ids;
use crate::locks::TempPath;
use crate::pull::layer_media_type_ok;
use crate::registry::select_platform;
use crate::store::Record;
use crate::unpack::decompressor;
use crate::{Image, ImageError, ImageRef, ImageStore};

/// Largest JSON document read from an archive, bytes.
const MAX_JSON: u64 = 16 << 20;

/// One regular file of the archive, extracted to a temp file.
#[derive(Clone, Debug)]
struct Member {
    file: PathBuf,
    digest: String,
    size: u64,
}

/// The archive's files by normalized path, plus its symlinks.
struct Extracted {
    archive: String,
    files: HashMap<String, Member>,
    links: HashMap<String, String>,
}

impl Extracted {
    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::InvalidArchive {
            archive: self.archive.clone(),
            reason: reason.into(),
        }
    }

    /// The file at `path`, following the archive's own symlinks (`docker save` links
    /// repeated layers).
    fn get(&self, path: &str) -> Result<&Member, ImageError> {
        let mut cur =
            normalize(path).ok_or_else(|| self.bad(format!("path {path:?} leaves the archive")))?;
        for _ in 0..16 {
            if let Some(m) = self.files.get(&cur) {
                return Ok(m);
            }
            match self.links.get(&cur) {
                Some(target) => cur = target.clone(),
                None => break,
            }
        }
        Err(self.bad(format!("it has no file {path:?}")))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<(T, &Member), ImageError> {
        let m = self.get(path)?;
        if m.size > MAX_JSON {
            return Err(self.bad(format!("{path} is {} bytes; too large", m.size)));
        }
        let bytes = fs::read(&m.file).map_err(|e| self.bad(format!("reading {path}: {e}")))?;
        let v =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("parsing {path}: {e}")))?;
        Ok((v, m))
    }

    /// The blob `digest` of an OCI layout, checked against its digest.
    fn blob(&self, digest: &str) -> Result<&Member, ImageError> {
        let hex = crate::digest::digest_hex(digest, "blob")?;
        let m = self.get(&format!("blobs/sha256/{hex}"))?;
        if m.digest != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob in archive {}", self.archive),
                expected: digest.to_string(),
                actual: m.digest.clone(),
            });
        }
        Ok(m)
    }
}

/// `a/./b/../c` → `a/c`; `None` when it climbs out.
fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// One image found in an archive, ready to install.
struct Candidate {
    config: Member,
    config_digest: String,
    config_value: oci_spec::image::ImageConfiguration,
    /// (layer file, expected diff id)
    layers: Vec<Member>,
    /// Extra blobs kept (OCI manifests).
    manifests: Vec<Member>,
    tags: Vec<String>,
}

impl ImageStore {
    /// Loads every image of a `docker save` archive (`manifest.json`: Config, RepoTags,
    /// Layers) or an OCI image-layout archive (`index.json`, `oci-layout`, `blobs/sha256`;
    /// names from `io.containerd.image.name` or a full `org.opencontainers.image.ref.name`).
    /// The archive may be gzip or zstd compressed. Digests and diff ids are verified.
    pub async fn load(&self, archive: &Path) -> Result<Vec<Image>, ImageError> {
        let this = self.clone();
        let archive = archive.to_path_buf();
        tokio::task::spawn_blocking(move || this.load_blocking(&archive))
            .await
            .map_err(|e| ImageError::Internal(format!("loading an archive: {e}")))?
    }

    fn load_blocking(&self, archive: &Path) -> Result<Vec<Image>, ImageError> {
        let workdir = TempPath::new(self.tmp_path("load"));
        fs::create_dir(workdir.path()).map_err(|e| ImageError::Io {
            context: format!("creating {}", workdir.path().display()),
            source: e,
        })?;
        let ex = extract(archive, workdir.path())?;
        let candidates = if ex.files.contains_key("manifest.json") {
            docker_candidates(&ex)?
        } else if ex.files.contains_key("index.json") {
            oci_candidates(&ex, &self.inner.platform)?
        } else {
            return Err(
                ex.bad("it has neither manifest.json (docker save) nor index.json (OCI layout)")
            );
        };
        if candidates.is_empty() {
            return Err(ex.bad("it holds no image"));
        }
        let mut images = Vec::new();
        for c in candidates {
            images.push(self.install_candidate(&ex, c)?);
        }
        Ok(images)
    }

    fn install_candidate(&self, ex: &Extracted, c: Candidate) -> Result<Image, ImageError> {
        let diff_ids = c.config_value.rootfs().diff_ids().clone();
        if diff_ids.len() != c.layers.len() {
            return Err(ex.bad(format!(
                "image {} lists {} diff ids but {} layers",
                c.config_digest,
                diff_ids.len(),
                c.layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let mut keys: Vec<String> = chains.iter().map(|ch| format!("layer:{ch}")).collect();
        keys.push(format!("blob:{}", c.config_digest));
        keys.extend(c.layers.iter().map(|l| format!("blob:{}", l.digest)));
        keys.extend(c.manifests.iter().map(|l| format!("blob:{}", l.digest)));
        let _pins = self.inner.pins.pin(keys);
        for ((layer, diff), chain) in c.layers.iter().zip(&diff_ids).zip(&chains) {
            let _lock = self.inner.locks.lock_blocking(&format!("layer:{chain}"));
            if self.find_layer(chain)?.is_some() {
                continue;
            }
            self.install_layer(&layer.file, diff, chain)?;
        }
        let mut blobs = Vec::new();
        for m in std::iter::once(&c.config)
            .chain(&c.layers)
            .chain(&c.manifests)
        {
            let _lock = self
                .inner
                .locks
                .lock_blocking(&format!("blob:{}", m.digest));
            // copy (the member may be linked from several places); rename when possible
            let tmp = TempPath::new(self.tmp_path("blob"));
            if fs::hard_link(&m.file, tmp.path()).is_err() {
                fs::copy(&m.file, tmp.path()).map_err(|e| ImageError::Io {
                    context: format!("copying {}", m.file.display()),
                    source: e,
                })?;
            }
            self.put_blob_file(&m.digest, tmp)?;
            if !blobs.contains(&m.digest) {
                blobs.push(m.digest.clone());
            }
        }
        let record = Record {
            image: Image {
                id: c.config_digest.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                created: c.config_value.created().clone(),
                size: 0,
                config: c.config_value,
                diff_ids,
            },
            blobs,
        };
        let image = self.commit(record, &c.tags, &[])?;
        tracing::info!(id = %image.id, tags = ?image.repo_tags, "loaded");
        Ok(image)
    }
}

/// Streams the archive's regular files into `dir`, hashing each; never interprets paths on
/// disk (members are numbered files), so the archive cannot write outside `dir`.
fn extract(archive: &Path, dir: &Path) -> Result<Extracted, ImageError> {
    let name = archive.display().to_string();
    let bad = |reason: String| ImageError::InvalidArchive {
        archive: name.clone(),
        reason,
    };
    let file = File::open(archive).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let reader = decompressor(BufReader::new(file)).map_err(|e| bad(format!("reading: {e}")))?;
    let mut tar = tar::Archive::new(reader);
    let mut files = HashMap::new();
    let mut links = HashMap::new();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| bad(format!("reading entry {n}: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = normalize(&raw) else {
            return Err(bad(format!("entry {raw:?} leaves the archive")));
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let out = dir.join(format!("m{n}"));
                let mut f = File::create(&out).map_err(|e| ImageError::Io {
                    context: format!("creating {}", out.display()),
                    source: e,
                })?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                let mut size = 0u64;
                loop {
                    let k = entry
                        .read(&mut buf)
                        .map_err(|e| bad(format!("reading {raw}: {e}")))?;
                    if k == 0 {
                        break;
                    }
                    hasher.update(&buf[..k]);
                    f.write_all(&buf[..k]).map_err(|e| ImageError::Io {
                        context: format!("writing {}", out.display()),
                        source: e,
                    })?;
                    size += k as u64;
                }
                let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                files.insert(
                    path,
                    Member {
                        file: out,
                        digest,
                        size,
                    },
                );
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                    let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                    normalize(&format!("{parent}/{target}"))
                } else {
                    normalize(&target)
                };
                if let Some(r) = resolved {
                    links.insert(path, r);
                }
            }
            _ => {}
        }
    }
    Ok(Extracted {
        archive: name,
        files,
        links,
    })
}

/// Familiar tag of a name from an archive, or `None` (with a warning) if it is not one.
fn familiar_tag(name: &str) -> Option<String> {
    match name.parse::<ImageRef>() {
        Ok(r) if r.digest().is_none() => Some(r.familiar()),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(name, %e, "ignoring an image name in the archive");
            None
        }
    }
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn parse_config(
    ex: &Extracted,
    m: &Member,
) -> Result<oci_spec::image::ImageConfiguration, ImageError> {
    if m.size > MAX_JSON {
        return Err(ex.bad(format!("config {} is too large", m.digest)));
    }
    let bytes = fs::read(&m.file).map_err(|e| ex.bad(format!("reading config: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidImageConfig {
        digest: m.digest.clone(),
        reason: e.to_string(),
    })
}

fn docker_candidates(ex: &Extracted) -> Result<Vec<Candidate>, ImageError> {
    let (entries, _): (Vec<DockerManifestEntry>, _) = ex.json("manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        let config = ex.get(&e.config)?.clone();
        // a config named by digest must match it
        if let Some(hex) = Path::new(&e.config)
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let named = format!("sha256:{hex}");
            if named != config.digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("config {} in archive {}", e.config, ex.archive),
                    expected: named,
                    actual: config.digest,
                });
            }
        }
        let config_value = parse_config(ex, &config)?;
        let layers = e
            .layers
            .iter()
            .map(|l| ex.get(l).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        let tags = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| familiar_tag(t))
            .collect();
        out.push(Candidate {
            config_digest: config.digest.clone(),
            config,
            config_value,
            layers,
            manifests: Vec::new(),
            tags,
        });
    }
    Ok(out)
}

fn oci_candidates(
    ex: &Extracted,
    platform: &crate::Platform,
) -> Result<Vec<Candidate>, ImageError> {
    if !ex.files.contains_key("oci-layout") {
        tracing::warn!(archive = %ex.archive, "OCI archive without an oci-layout file");
    }
    let (index, _): (OciImageIndex, _) = ex.json("index.json")?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        let ann = entry.annotations.clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| ann.get("org.opencontainers.image.ref.name"))
            .cloned();
        let tags: Vec<String> = match name {
            // a bare tag ("latest") names no repository
            Some(n) if n.contains(':') || n.contains('/') => familiar_tag(&n).into_iter().collect(),
            Some(n) => {
                tracing::warn!(name = %n, "OCI archive entry named by a bare tag: loaded untagged");
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut manifests = Vec::new();
        let mut desc_digest = entry.digest.clone();
        let manifest: OciImageManifest = loop {
            let m = ex.blob(&desc_digest)?.clone();
            let (parsed, _): (OciManifest, _) =
                ex.json(&format!("blobs/sha256/{}", &desc_digest["sha256:".len()..]))?;
            manifests.push(m);
            match parsed {
                OciManifest::Image(im) => break im,
                OciManifest::ImageIndex(inner) => {
                    if manifests.len() > 4 {
                        return Err(ex.bad("image indexes nest too deeply"));
                    }
                    desc_digest = match select_platform(&inner.manifests, platform) {
                        Some(d) => d,
                        None if inner.manifests.len() == 1 => inner.manifests[0].digest.clone(),
                        None => {
                            return Err(ex.bad(format!(
                                "index {desc_digest} has no manifest for {platform}"
                            )))
                        }
                    };
                }
            }
        };
        let config = ex.blob(&manifest.config.digest)?.clone();
        let config_value = parse_config(ex, &config)?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            if !layer_media_type_ok(&l.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    reference: ex.archive.clone(),
                    media_type: l.media_type.clone(),
                    what: format!("layer {}", l.digest),
                });
            }
            layers.push(ex.blob(&l.digest)?.clone());
        }
        out.push(Candidate {
            config_digest: config.digest.clone(),
            config,
            config_value,
            layers,
            manifests,
            tags,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("./a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(
            normalize("/blobs/sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
    }

    #[test]
    fn archive_names() {
        assert_eq!(familiar_tag("bb:latest").as_deref(), Some("bb:latest"));
        assert_eq!(
            familiar_tag("docker.io/library/bb:1").as_deref(),
            Some("bb:1")
        );
        assert_eq!(familiar_tag("Bad Name"), None);
    }
}
