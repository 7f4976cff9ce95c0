//! The store: records, tags, lookups, removal and garbage collection.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::digest::{chain_ids, digest_hex};
use crate::error::IoContext;
use crate::locks::{KeyedLocks, Pins, TempPath};
use crate::registry::{Platform, RegistryConfig};
use crate::unpack::unpack_layer_file;
use crate::{Image, ImageError, ImageRef, PruneReport};

/// A node's image store. Cheap to clone (an `Arc` inside); one per root directory.
#[derive(Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) registries: RegistryConfig,
    pub(crate) platform: Platform,
    /// Serializes record writes, tag moves and garbage collection.
    meta: Mutex<()>,
    pub(crate) pins: Pins,
    pub(crate) locks: KeyedLocks,
    counter: AtomicU64,
}

/// The on-disk image record.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub(crate) image: Image,
    /// Blobs the image keeps (manifests, config, layer blobs).
    #[serde(default)]
    pub(crate) blobs: Vec<String>,
}

/// The on-disk record of one unpacked layer, `layers/<n>.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LayerRecord {
    pub(crate) diff_id: String,
    pub(crate) chain_id: String,
    pub(crate) size: u64,
}

/// Lengths of the short layer directory names, tried in order on a (very unlikely) collision.
const SLOT_LENGTHS: [usize; 4] = [12, 16, 24, 64];

/// How a name given to `resolve`/`remove` matched.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Matched {
    Tag(String),
    Digest(String),
    Id,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`; removes leftovers of interrupted
    /// operations (`tmp/`, layer directories without their record).
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<ImageStore, ImageError> {
        registries.validate()?;
        // Both ring and aws-lc-rs are in the dependency tree: pick one explicitly, or rustls
        // panics choosing. An error means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        for dir in ["blobs/sha256", "layers", "images"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).at("creating the image store directory", &p)?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).at("clearing", &tmp)?;
        }
        fs::create_dir_all(&tmp).at("creating", &tmp)?;
        let store = ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                registries,
                platform: Platform::current(),
                meta: Mutex::new(()),
                pins: Pins::default(),
                locks: KeyedLocks::default(),
                counter: AtomicU64::new(0),
            }),
        };
        store.remove_orphan_layer_dirs()?;
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images: Vec<Image> = self
            .read_records(false)?
            .into_iter()
            .map(|r| r.image)
            .collect();
        images.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Finds an image by reference (normalized: `busybox` is `busybox:latest`), repo digest
    /// (`busybox@sha256:...`), full id (`sha256:<hex>` or `<hex>`) or a unique id prefix of
    /// at least 4 hex digits. An ambiguous prefix is an error.
    pub fn resolve(&self, name_or_id: &str) -> Result<Option<Image>, ImageError> {
        let records = self.read_records(false)?;
        Ok(find(&records, name_or_id)?.map(|(i, _)| records[i].image.clone()))
    }

    /// Removes an image, like `docker rmi`. Named by a tag while it has other tags: only that
    /// tag goes. Otherwise the image is deleted with its now unreferenced layers and blobs,
    /// unless `in_use(id)`: then it is refused, or with `force` only untagged (the image
    /// stays, dangling, because containers still use its layers). Named by id while it has
    /// several tags needs `force`. Returns `Untagged: x` / `Deleted: sha256:...` lines.
    pub fn remove(
        &self,
        name_or_id: &str,
        force: bool,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, ImageError> {
        let _meta = self.meta();
        let records = self.read_records(true)?;
        let Some((idx, matched)) = find(&records, name_or_id)? else {
            return Err(ImageError::NoSuchImage(name_or_id.to_string()));
        };
        let mut record = records[idx].clone();
        let id = record.image.id.clone();
        let mut lines = Vec::new();
        if let Matched::Tag(tag) = &matched {
            if record.image.repo_tags.len() > 1 {
                record.image.repo_tags.retain(|t| t != tag);
                self.write_record(&record)?;
                lines.push(format!("Untagged: {tag}"));
                return Ok(lines);
            }
        }
        if matched == Matched::Id && record.image.repo_tags.len() > 1 && !force {
            return Err(ImageError::MultipleReferences {
                id: id.clone(),
                tags: record.image.repo_tags.join(", "),
            });
        }
        if in_use(&id) {
            if !force {
                return Err(ImageError::InUse {
                    name: name_or_id.to_string(),
                    id,
                });
            }
            for tag in record.image.repo_tags.drain(..) {
                lines.push(format!("Untagged: {tag}"));
            }
            self.write_record(&record)?;
            return Ok(lines);
        }
        lines.extend(untag_lines(&record.image));
        self.delete_record(&id)?;
        lines.push(format!("Deleted: {id}"));
        let (deleted, _) = self.gc()?;
        lines.extend(deleted.into_iter().map(|d| format!("Deleted: {d}")));
        Ok(lines)
    }

    /// Removes dangling (untagged) images not in use, or with `all` every image not in use;
    /// then layers and blobs no image references any more.
    pub fn prune(
        &self,
        all: bool,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<PruneReport, ImageError> {
        let _meta = self.meta();
        let records = self.read_records(true)?;
        let mut report = PruneReport::default();
        for record in &records {
            let image = &record.image;
            if (all || image.repo_tags.is_empty()) && !in_use(&image.id) {
                report.deleted.extend(untag_lines(image));
                self.delete_record(&image.id)?;
                report.deleted.push(format!("Deleted: {}", image.id));
            }
        }
        let (layers, bytes) = self.gc()?;
        report
            .deleted
            .extend(layers.into_iter().map(|d| format!("Deleted: {d}")));
        report.reclaimed_bytes = bytes;
        Ok(report)
    }

    /// The unpacked layer directories of `image`, bottom first, for overlayfs `lowerdir`
    /// (which lists them top first: reverse this). Paths are `<root>/layers/<12 hex>`.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        chain_ids(&image.diff_ids)
            .iter()
            .map(|chain| match self.find_layer(chain)? {
                Some((dir, _)) => Ok(dir),
                None => Err(ImageError::Unpack {
                    layer: chain.clone(),
                    message: format!(
                        "layer of image {} is missing from the store; pull or load the image again",
                        image.id
                    ),
                }),
            })
            .collect()
    }

    // ----- internals shared with pull and load -----

    fn meta(&self) -> MutexGuard<'_, ()> {
        self.inner.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh path under `<root>/tmp`.
    pub(crate) fn tmp_path(&self, kind: &str) -> PathBuf {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        self.inner
            .root
            .join("tmp")
            .join(format!("{kind}-{}-{n}", std::process::id()))
    }

    /// `<root>/blobs/sha256/<hex>`.
    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(digest, "blob")?;
        Ok(self.inner.root.join("blobs/sha256").join(hex))
    }

    /// Writes `bytes` to `path` atomically (temp file, fsync, rename).
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let tmp = TempPath::new(self.tmp_path("write"));
        let mut f = fs::File::create(tmp.path()).at("creating", tmp.path())?;
        f.write_all(bytes).at("writing", tmp.path())?;
        f.sync_all().at("syncing", tmp.path())?;
        fs::rename(tmp.path(), path).at("renaming into", path)?;
        tmp.keep();
        Ok(())
    }

    /// Stores a blob already in memory (manifests, configs), after checking its digest.
    pub(crate) fn put_blob_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = crate::digest::sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: "blob".to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    /// Moves a verified temp file into the blob store (or drops it if already there).
    pub(crate) fn put_blob_file(&self, digest: &str, tmp: TempPath) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        fs::rename(tmp.path(), &path).at("renaming into", &path)?;
        tmp.keep();
        Ok(())
    }

    fn layer_slot(&self, chain_id: &str, len: usize) -> Result<(PathBuf, PathBuf), ImageError> {
        let hex = digest_hex(chain_id, "layer chain id")?;
        let name = &hex[..len.min(hex.len())];
        let dir = self.inner.root.join("layers").join(name);
        let json = self.inner.root.join("layers").join(format!("{name}.json"));
        Ok((dir, json))
    }

    fn read_layer_record(json: &Path) -> Result<Option<LayerRecord>, ImageError> {
        match fs::read(json) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| ImageError::Json {
                        context: format!("reading layer record {}", json.display()),
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at("reading", json),
        }
    }

    /// The directory and record of an unpacked layer, if present.
    pub(crate) fn find_layer(
        &self,
        chain_id: &str,
    ) -> Result<Option<(PathBuf, LayerRecord)>, ImageError> {
        for len in SLOT_LENGTHS {
            let (dir, json) = self.layer_slot(chain_id, len)?;
            match Self::read_layer_record(&json)? {
                Some(rec) if rec.chain_id == chain_id => {
                    if dir.is_dir() {
                        return Ok(Some((dir, rec)));
                    }
                    return Ok(None);
                }
                Some(_) => continue, // another layer sharing the prefix
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Unpacks `blob` (verifying its diff id) and installs it as the layer `chain_id`. The
    /// caller holds the `layer:<chain>` lock and a pin. Blocking.
    pub(crate) fn install_layer(
        &self,
        blob: &Path,
        diff_id: &str,
        chain_id: &str,
    ) -> Result<LayerRecord, ImageError> {
        let tmp = TempPath::new(self.tmp_path("unpack"));
        let unpacked = unpack_layer_file(blob, tmp.path(), diff_id, Some(diff_id))?;
        let mut slot = None;
        for len in SLOT_LENGTHS {
            let (dir, json) = self.layer_slot(chain_id, len)?;
            match Self::read_layer_record(&json)? {
                Some(rec) if rec.chain_id != chain_id => continue,
                _ => {
                    slot = Some((dir, json));
                    break;
                }
            }
        }
        let Some((dir, json)) = slot else {
            return Err(ImageError::Internal(format!(
                "no free directory name for layer {chain_id}"
            )));
        };
        if fs::symlink_metadata(&dir).is_ok() {
            // a leftover without its record
            fs::remove_dir_all(&dir).at("removing the stale layer directory", &dir)?;
        }
        fs::rename(tmp.path(), &dir).at("renaming the unpacked layer into", &dir)?;
        tmp.keep();
        let rec = LayerRecord {
            diff_id: unpacked.diff_id,
            chain_id: chain_id.to_string(),
            size: unpacked.size,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|source| ImageError::Json {
            context: "encoding a layer record".to_string(),
            source,
        })?;
        self.write_atomic(&json, &bytes)?;
        Ok(rec)
    }

    fn record_path(&self, id: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(id, "image id")?;
        Ok(self.inner.root.join("images").join(format!("{hex}.json")))
    }

    /// Reads every image record. `strict`: an unreadable record is an error (garbage
    /// collection must not run on a partial view); otherwise it is skipped with a warning.
    pub(crate) fn read_records(&self, strict: bool) -> Result<Vec<Record>, ImageError> {
        let dir = self.inner.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at("listing", &dir)? {
            let entry = entry.at("listing", &dir)?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read(&path).at("reading", &path).and_then(|bytes| {
                serde_json::from_slice::<Record>(&bytes).map_err(|source| ImageError::Json {
                    context: format!("parsing image record {}", path.display()),
                    source,
                })
            });
            match parsed {
                Ok(r) => out.push(r),
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!(%e, "skipping an unreadable image record"),
            }
        }
        Ok(out)
    }

    fn write_record(&self, record: &Record) -> Result<(), ImageError> {
        let path = self.record_path(&record.image.id)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| ImageError::Json {
            context: format!("encoding image record {}", record.image.id),
            source,
        })?;
        self.write_atomic(&path, &bytes)
    }

    fn delete_record(&self, id: &str) -> Result<(), ImageError> {
        let path = self.record_path(id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at("removing", &path),
        }
    }

    /// Adds (or merges into) the record of `record.image.id`, tagging it with `tags` (moved
    /// away from any other image) and adding `repo_digests`. The layers must be installed.
    pub(crate) fn commit(
        &self,
        mut record: Record,
        tags: &[String],
        repo_digests: &[String],
    ) -> Result<Image, ImageError> {
        let _meta = self.meta();
        let mut size = 0;
        for chain in chain_ids(&record.image.diff_ids) {
            match self.find_layer(&chain)? {
                Some((_, rec)) => size += rec.size,
                None => {
                    return Err(ImageError::Internal(format!(
                        "layer {chain} vanished before image {} was recorded",
                        record.image.id
                    )))
                }
            }
        }
        record.image.size = size;
        let records = self.read_records(false)?;
        if let Some(existing) = records.iter().find(|r| r.image.id == record.image.id) {
            record.image.repo_tags = existing.image.repo_tags.clone();
            record.image.repo_digests = existing.image.repo_digests.clone();
            for b in &existing.blobs {
                if !record.blobs.contains(b) {
                    record.blobs.push(b.clone());
                }
            }
        }
        for tag in tags {
            if !record.image.repo_tags.contains(tag) {
                record.image.repo_tags.push(tag.clone());
            }
            for other in &records {
                if other.image.id != record.image.id && other.image.repo_tags.contains(tag) {
                    let mut moved = other.clone();
                    moved.image.repo_tags.retain(|t| t != tag);
                    tracing::info!(tag, from = %other.image.id, to = %record.image.id, "tag moved");
                    self.write_record(&moved)?;
                }
            }
        }
        for d in repo_digests {
            if !record.image.repo_digests.contains(d) {
                record.image.repo_digests.push(d.clone());
            }
        }
        self.write_record(&record)?;
        Ok(record.image)
    }

    /// Deletes layers and blobs no record references and nothing pins. Caller holds `meta`.
    /// Returns the chain ids of deleted layers and the bytes freed.
    fn gc(&self) -> Result<(Vec<String>, u64), ImageError> {
        let records = self.read_records(true)?;
        let mut chains = HashSet::new();
        let mut blobs = HashSet::new();
        for r in &records {
            chains.extend(chain_ids(&r.image.diff_ids));
            blobs.insert(r.image.id.clone());
            blobs.extend(r.blobs.iter().cloned());
        }
        let mut deleted = Vec::new();
        let mut freed = 0u64;
        let layers = self.inner.root.join("layers");
        for entry in fs::read_dir(&layers).at("listing", &layers)? {
            let json = entry.at("listing", &layers)?.path();
            if json.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let dir = json.with_extension("");
            let rec = match Self::read_layer_record(&json) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%e, "removing an unreadable layer record");
                    LayerRecord {
                        diff_id: String::new(),
                        chain_id: String::new(),
                        size: 0,
                    }
                }
            };
            if chains.contains(&rec.chain_id) {
                continue;
            }
            let doomed = TempPath::new(self.tmp_path("gc"));
            {
                let table = self.inner.pins.table();
                if table.contains_key(&format!("layer:{}", rec.chain_id)) {
                    continue;
                }
                fs::remove_file(&json).at("removing", &json)?;
                if dir.exists() {
                    fs::rename(&dir, doomed.path()).at("moving away", &dir)?;
                }
            }
            drop(doomed); // removes the directory tree, outside the pin table lock
            freed += rec.size;
            if !rec.chain_id.is_empty() {
                deleted.push(rec.chain_id);
            }
        }
        let blob_dir = self.inner.root.join("blobs/sha256");
        for entry in fs::read_dir(&blob_dir).at("listing", &blob_dir)? {
            let entry = entry.at("listing", &blob_dir)?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if blobs.contains(&digest) {
                continue;
            }
            let path = entry.path();
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let table = self.inner.pins.table();
            if table.contains_key(&format!("blob:{digest}")) {
                continue;
            }
            fs::remove_file(&path).at("removing", &path)?;
            drop(table);
            freed += len;
        }
        Ok((deleted, freed))
    }

    /// Removes layer directories without a record and records without a directory.
    fn remove_orphan_layer_dirs(&self) -> Result<(), ImageError> {
        let layers = self.inner.root.join("layers");
        for entry in fs::read_dir(&layers).at("listing", &layers)? {
            let path = entry.at("listing", &layers)?.path();
            let is_json = path.extension().and_then(|e| e.to_str()) == Some("json");
            if is_json {
                if !path.with_extension("").is_dir() {
                    tracing::warn!(path = %path.display(), "removing a layer record without its directory");
                    fs::remove_file(&path).at("removing", &path)?;
                }
            } else if !path.with_extension("json").exists() {
                tracing::warn!(path = %path.display(), "removing a layer directory without its record");
                drop(TempPath::new(path));
            }
        }
        Ok(())
    }
}

fn untag_lines(image: &Image) -> Vec<String> {
    image
        .repo_tags
        .iter()
        .chain(image.repo_digests.iter())
        .map(|t| format!("Untagged: {t}"))
        .collect()
}

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pure lookup over records (see [`ImageStore::resolve`]).
fn find(records: &[Record], name: &str) -> Result<Option<(usize, Matched)>, ImageError> {
    let name = name.trim();
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let hex_ok = !hex.is_empty() && is_hex(hex);
    if hex_ok && hex.len() == 64 {
        let id = format!("sha256:{hex}");
        return Ok(records
            .iter()
            .position(|r| r.image.id == id)
            .map(|i| (i, Matched::Id)));
    }
    if !name.starts_with("sha256:") {
        if let Ok(r) = name.parse::<ImageRef>() {
            if let Some(d) = r.digest() {
                let want = format!("{}@{d}", r.familiar_name());
                if let Some(i) = records
                    .iter()
                    .position(|rec| rec.image.repo_digests.contains(&want))
                {
                    return Ok(Some((i, Matched::Digest(want))));
                }
            } else if let Some(t) = r.tag() {
                let want = format!("{}:{t}", r.familiar_name());
                if let Some(i) = records
                    .iter()
                    .position(|rec| rec.image.repo_tags.contains(&want))
                {
                    return Ok(Some((i, Matched::Tag(want))));
                }
            }
        }
    }
    if hex_ok && hex.len() >= 4 {
        let prefix = format!("sha256:{hex}");
        let hits: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.image.id.starts_with(&prefix))
            .map(|(i, _)| i)
            .collect();
        return match hits.as_slice() {
            [] => Ok(None),
            [i] => Ok(Some((*i, Matched::Id))),
            _ => Err(ImageError::AmbiguousId(name.to_string())),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id_byte: char, tags: &[&str], digests: &[&str]) -> Record {
        Record {
            image: Image {
                id: format!("sha256:{}", id_byte.to_string().repeat(64)),
                repo_tags: tags.iter().map(|s| s.to_string()).collect(),
                repo_digests: digests.iter().map(|s| s.to_string()).collect(),
                created: None,
                size: 0,
                config: Default::default(),
                diff_ids: vec![],
            },
            blobs: vec![],
        }
    }

    #[test]
    fn open_clears_tmp_and_corrupt_blobs_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        fs::create_dir_all(root.join("tmp/blob-1")).ok();
        fs::create_dir_all(root.join("layers/0123456789ab")).ok();
        let store =
            ImageStore::open(root, RegistryConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fs::read_dir(root.join("tmp")).map(|d| d.count()).ok(),
            Some(0)
        );
        assert!(!root.join("layers/0123456789ab").exists());
        let good = crate::digest::sha256_digest(b"data");
        let bad = crate::digest::sha256_digest(b"other");
        match store.put_blob_bytes(&bad, b"data") {
            Err(ImageError::DigestMismatch {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (bad.clone(), good.clone()));
            }
            other => panic!("{other:?}"),
        }
        assert!(store.blob_path(&bad).map(|p| !p.exists()).unwrap_or(false));
        store
            .put_blob_bytes(&good, b"data")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.blob_path(&good).map(|p| p.exists()).unwrap_or(false));
        assert_eq!(
            fs::read_dir(root.join("tmp")).map(|d| d.count()).ok(),
            Some(0)
        );
        assert!(ImageStore::open(
            root,
            RegistryConfig {
                mirrors: vec!["ftp://x".into()],
                insecure: vec![]
            }
        )
        .is_err());
    }

    #[test]
    fn lookup_rules() {
        let d = format!("sha256:{}", "c".repeat(64));
        let records = vec![
            rec('a', &["busybox:latest", "localhost:5000/x:t"], &[]),
            rec('b', &[], &[&format!("busybox@{d}")]),
            rec('d', &["abcd:latest"], &[]),
        ];
        let idx = |n: &str| find(&records, n).ok().flatten().map(|(i, _)| i);
        assert_eq!(idx("busybox"), Some(0));
        assert_eq!(idx("docker.io/library/busybox:latest"), Some(0));
        assert_eq!(idx("localhost:5000/x:t"), Some(0));
        assert_eq!(idx(&format!("busybox@{d}")), Some(1));
        assert_eq!(idx(&"b".repeat(64)), Some(1));
        assert_eq!(idx(&format!("sha256:{}", "b".repeat(64))), Some(1));
        assert_eq!(idx("bbbb"), Some(1));
        assert_eq!(idx("sha256:bbbb"), Some(1));
        assert_eq!(idx("bbb"), None); // too short for a prefix
        assert_eq!(idx("abcd"), Some(2)); // a tag wins over an id prefix
        assert_eq!(idx("busybox:1"), None);
        assert!(matches!(
            find(&records, "busybox").ok().flatten(),
            Some((0, Matched::Tag(t))) if t == "busybox:latest"
        ));
        let dup = vec![rec('e', &[], &[]), rec('e', &[], &[])];
        assert!(matches!(
            find(&dup, "eeee"),
            Err(ImageError::AmbiguousId(_))
        ));
    }
}
