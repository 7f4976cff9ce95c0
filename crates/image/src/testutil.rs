//! Helpers to build small OCI images in tests, without Docker.
//!
//! ```no_run
//! use rswarm_image::testutil::{busybox_layer, write_oci_layout, Entry, ImageSpec};
//! # fn main() -> std::io::Result<()> {
//! let base = busybox_layer("/bin/busybox", &["sh", "ls", "cat"])?;
//! let top = vec![
//!     ("etc/motd".to_string(), Entry::File(b"hello\n".to_vec())),
//!     ("bin/cat".to_string(), Entry::Whiteout),
//! ];
//! let spec = ImageSpec { cmd: vec!["sh".into()], ..ImageSpec::default() };
//! let info = write_oci_layout(std::path::Path::new("/tmp/layout"), &[base, top], &spec)?;
//! // skopeo copy oci:/tmp/layout:latest docker://127.0.0.1:5000/test/bb:latest
//! # let _ = info; Ok(()) }
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::digest::sha256_digest;
use crate::registry::Platform;

/// One entry of a test layer; the path is relative to the root (`bin/sh`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file, mode 0644.
    File(Vec<u8>),
    /// A regular file, mode 0755.
    Executable(Vec<u8>),
    /// A directory, mode 0755.
    Dir,
    /// A symlink to the target (absolute targets are fine).
    Symlink(String),
    /// A hard link to another path of the same layer.
    HardLink(String),
    /// An OCI whiteout: hides the path of lower layers (written as `dir/.wh.name`).
    Whiteout,
    /// An opaque-directory marker: hides the lower layers' content of this directory
    /// (written as `dir/.wh..wh..opq`).
    Opaque,
}

/// Layer compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    #[default]
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`.
    Zstd,
    /// `application/vnd.oci.image.layer.v1.tar`.
    None,
}

/// The image configuration and naming of a test image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Env`, `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// The tag in `index.json` (`org.opencontainers.image.ref.name`), what `oci:<dir>:<tag>`
    /// finds; default `latest`.
    pub tag: String,
    /// A full name stored as `io.containerd.image.name` (so `load` tags the image), if any.
    pub name: Option<String>,
    /// Layer compression.
    pub compression: Compression,
    /// `created`, RFC 3339.
    pub created: String,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            cmd: vec!["sh".to_string()],
            entrypoint: Vec::new(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            working_dir: None,
            tag: "latest".to_string(),
            name: None,
            compression: Compression::Gzip,
            created: "2024-01-01T00:00:00Z".to_string(),
        }
    }
}

/// What [`write_oci_layout`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutInfo {
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Digest of the config: the image id.
    pub config_digest: String,
    /// Diff ids (uncompressed layer digests), bottom first.
    pub diff_ids: Vec<String>,
    /// Layer blob digests, bottom first.
    pub layer_digests: Vec<String>,
}

/// A layer holding `busybox` (a static binary, e.g. Debian's `busybox-static` at
/// `/bin/busybox`) as `/bin/busybox`, plus `/bin/<applet>` symlinks to it and the usual
/// empty directories (`etc`, `tmp`, `proc`, `sys`, `dev`, `root`).
pub fn busybox_layer(busybox: &str, applets: &[&str]) -> io::Result<Vec<(String, Entry)>> {
    let bin = fs::read(busybox)?;
    let mut layer: Vec<(String, Entry)> = ["bin", "etc", "tmp", "proc", "sys", "dev", "root"]
        .iter()
        .map(|d| (d.to_string(), Entry::Dir))
        .collect();
    layer.push(("bin/busybox".to_string(), Entry::Executable(bin)));
    for a in applets {
        layer.push((
            format!("bin/{a}"),
            Entry::Symlink("/bin/busybox".to_string()),
        ));
    }
    Ok(layer)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_704_067_200);
    h
}

/// The uncompressed tar of one layer.
pub fn layer_tar(entries: &[(String, Entry)]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let path = path.trim_start_matches('/');
        match entry {
            Entry::File(data) | Entry::Executable(data) => {
                let mode = if matches!(entry, Entry::File(_)) {
                    0o644
                } else {
                    0o755
                };
                let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
                b.append_data(&mut h, path, &data[..])?;
            }
            Entry::Dir => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Entry::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, path, target)?;
            }
            Entry::HardLink(target) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                b.append_link(&mut h, path, target.trim_start_matches('/'))?;
            }
            Entry::Whiteout | Entry::Opaque => {
                let (dir, name) = match path.rsplit_once('/') {
                    Some((d, n)) => (format!("{d}/"), n),
                    None => (String::new(), path),
                };
                let marker = if matches!(entry, Entry::Whiteout) {
                    format!("{dir}.wh.{name}")
                } else {
                    format!("{path}/.wh..wh..opq")
                };
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                b.append_data(&mut h, marker, io::empty())?;
            }
        }
    }
    b.into_inner()
}

fn put_blob(dir: &Path, bytes: &[u8]) -> io::Result<String> {
    let digest = sha256_digest(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(blobs.join(&digest["sha256:".len()..]), bytes)?;
    Ok(digest)
}

/// Writes an OCI image layout at `dir` (created if missing; its `index.json` is replaced)
/// holding one image made of `layers` (bottom first) and `spec`. Push it with
/// `skopeo copy oci:<dir>:<tag> docker://...` or load it after [`tar_dir`].
pub fn write_oci_layout(
    dir: &Path,
    layers: &[Vec<(String, Entry)>],
    spec: &ImageSpec,
) -> io::Result<LayoutInfo> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    let mut layer_digests = Vec::new();
    for entries in layers {
        let tar = layer_tar(entries)?;
        diff_ids.push(sha256_digest(&tar));
        let (blob, media_type) = match spec.compression {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar)?;
                (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        };
        let digest = put_blob(dir, &blob)?;
        layer_descs.push(serde_json::json!({
            "mediaType": media_type, "digest": digest, "size": blob.len(),
        }));
        layer_digests.push(digest);
    }
    let mut cfg = serde_json::Map::new();
    if !spec.cmd.is_empty() {
        cfg.insert("Cmd".into(), serde_json::json!(spec.cmd));
    }
    if !spec.entrypoint.is_empty() {
        cfg.insert("Entrypoint".into(), serde_json::json!(spec.entrypoint));
    }
    if !spec.env.is_empty() {
        cfg.insert("Env".into(), serde_json::json!(spec.env));
    }
    if let Some(wd) = &spec.working_dir {
        cfg.insert("WorkingDir".into(), serde_json::json!(wd));
    }
    let platform = Platform::current();
    let mut config = serde_json::json!({
        "created": spec.created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created": spec.created, "created_by": "rswarm testutil"})).collect::<Vec<_>>(),
    });
    if let (Some(v), Some(obj)) = (&platform.variant, config.as_object_mut()) {
        if platform.architecture != "arm64" {
            obj.insert("variant".into(), serde_json::json!(v));
        }
    }
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = put_blob(dir, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
        "layers": layer_descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = put_blob(dir, &manifest_bytes)?;
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "org.opencontainers.image.ref.name".into(),
        serde_json::json!(spec.tag),
    );
    if let Some(name) = &spec.name {
        annotations.insert("io.containerd.image.name".into(), serde_json::json!(name));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_bytes.len(),
            "annotations": annotations,
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(LayoutInfo {
        manifest_digest,
        config_digest,
        diff_ids,
        layer_digests,
    })
}

/// Tars the content of `dir` (e.g. an OCI layout) into the file `out`.
pub fn tar_dir(dir: &Path, out: &Path) -> io::Result<()> {
    let mut b = tar::Builder::new(fs::File::create(out)?);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    b.into_inner()?.sync_all()
}
