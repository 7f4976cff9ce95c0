//! The local volume driver: named volumes under `<state>/volumes`.
//!
//! Layout (RFC 002): `<state>/volumes/<name>/_data` is what containers mount, and
//! `<state>/volumes/<name>/meta.json` records the volume (`{"name", "driver", "created_at"}`),
//! written atomically; a volume exists once its `meta.json` does. Removal renames the volume
//! directory to a hidden `.removing-*` name first, so a crash never leaves half a volume under
//! its own name; [`Volumes::open`] finishes such removals.
//!
//! Callers serialize operations on one volume name and check that a volume is unused before
//! removing it; this module only manages the directories.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// The file that records a volume.
const META_FILE: &str = "meta.json";
/// The directory containers mount.
const DATA_DIR: &str = "_data";
/// Prefix of a volume directory being removed.
const REMOVING_PREFIX: &str = ".removing-";
/// Longest volume name accepted (a file name).
const MAX_NAME_LEN: usize = 255;

/// Errors of the local volume driver.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A name that the local driver does not accept.
    #[error("{0:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed (at least two characters); if you intended to pass a host directory, use an absolute path")]
    InvalidName(String),
    /// No volume of that name.
    #[error("no such volume: {0}; list volumes to see which exist")]
    NotFound(String),
    /// A filesystem operation failed.
    #[error(
        "cannot {action} {path}: {source}; check the state directory's permissions and free space"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A `meta.json` that cannot be read back.
    #[error("corrupt volume record {path}: {detail}; remove the volume directory by hand")]
    CorruptMeta {
        /// The `meta.json` path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// A volume, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: String,
    /// The host directory containers mount (`<state>/volumes/<name>/_data`).
    pub mountpoint: PathBuf,
    /// When the volume was created.
    pub created_at: OffsetDateTime,
}

/// `meta.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    driver: String,
    /// RFC 3339, UTC.
    created_at: String,
}

/// The local volume driver rooted at `<state>/volumes`.
#[derive(Clone, Debug)]
pub struct Volumes {
    root: PathBuf,
}

/// Checks a volume name against Docker's `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`.
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidName(name.to_string()))
    }
}

impl Volumes {
    /// Opens (creating if needed) the volumes directory `root` and finishes interrupted removals.
    pub fn open(root: impl Into<PathBuf>) -> Result<Volumes, VolumeError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create the volumes directory", &root))?;
        // As Docker's: traversable, not listable, by other users.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o701))
            .map_err(io_err("set permissions of", &root))?;
        for entry in fs::read_dir(&root).map_err(io_err("read", &root))? {
            let entry = entry.map_err(io_err("read", &root))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(REMOVING_PREFIX) {
                let path = entry.path();
                tracing::info!(path = %path.display(), "finishing an interrupted volume removal");
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover volume directory");
                }
            }
        }
        Ok(Volumes { root })
    }

    /// The volumes directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The `_data` directory of volume `name` (whether or not it exists).
    pub fn data_path(&self, name: &str) -> Result<PathBuf, VolumeError> {
        validate_name(name)?;
        Ok(self.root.join(name).join(DATA_DIR))
    }

    /// Creates volume `name` if it does not exist; returns its `_data` directory and whether it
    /// was created now (then the caller copies the image's content in with [`copy_up`]).
    pub fn ensure(&self, name: &str) -> Result<(PathBuf, bool), VolumeError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        let data = dir.join(DATA_DIR);
        let meta = dir.join(META_FILE);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir)
                    .map_err(io_err("stat", &dir))?
                    .is_dir()
                {
                    return Err(VolumeError::Io {
                        action: "use the volume directory",
                        path: dir,
                        source: io::Error::other("not a directory"),
                    });
                }
                if exists(&meta)? {
                    fs::create_dir_all(&data).map_err(io_err("create", &data))?;
                    return Ok((data, false));
                }
                // A directory without a record: a creation interrupted by a crash. Finish it.
                tracing::info!(volume = name, "completing an interrupted volume creation");
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o701))
            .map_err(io_err("set permissions of", &dir))?;
        match fs::create_dir(&data) {
            Ok(()) => fs::set_permissions(&data, fs::Permissions::from_mode(0o755))
                .map_err(io_err("set permissions of", &data))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &data)(e)),
        }
        let record = Meta {
            name: name.to_string(),
            driver: "local".to_string(),
            created_at: format_rfc3339(OffsetDateTime::now_utc()),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| VolumeError::CorruptMeta {
            path: meta.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&meta, &json)?;
        tracing::debug!(volume = name, "created volume");
        Ok((data, true))
    }

    /// Reads volume `name`'s record.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        validate_name(name)?;
        let meta = self.root.join(name).join(META_FILE);
        let bytes = match fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err("read", &meta)(e)),
        };
        let record: Meta =
            serde_json::from_slice(&bytes).map_err(|e| VolumeError::CorruptMeta {
                path: meta.clone(),
                detail: e.to_string(),
            })?;
        let created_at =
            parse_rfc3339(&record.created_at).ok_or_else(|| VolumeError::CorruptMeta {
                path: meta.clone(),
                detail: format!("bad created_at {:?}", record.created_at),
            })?;
        Ok(VolumeInfo {
            name: name.to_string(),
            mountpoint: self.root.join(name).join(DATA_DIR),
            created_at,
        })
    }

    /// All volumes, sorted by name. Directories without a readable record are skipped (and
    /// logged).
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("read", &self.root))? {
            let entry = entry.map_err(io_err("read", &self.root))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue;
            }
            match self.inspect(&name) {
                Ok(info) => out.push(info),
                Err(VolumeError::NotFound(_)) => {
                    tracing::debug!(volume = %name, "volume directory without a record; skipped");
                }
                Err(e) => tracing::warn!(volume = %name, error = %e, "skipping unreadable volume"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes volume `name` and its data. [`VolumeError::NotFound`] if there is no such volume.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(VolumeError::NotFound(name.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err("stat", &dir)(e)),
        }
        let doomed = self.root.join(format!(
            "{REMOVING_PREFIX}{name}-{}-{}",
            std::process::id(),
            unique()
        ));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io_err("rename", &dir)(e)),
        }
        sync_dir(&self.root);
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        tracing::debug!(volume = name, "removed volume");
        Ok(())
    }
}

/// Copies the image's content at a mount destination into a new volume, as Docker does for a
/// fresh named volume: directories, regular files, symlinks (not followed, targets kept as they
/// are), hard links (kept as links within the copy), FIFOs and device nodes, with owners, modes
/// (setuid/setgid/sticky included) and timestamps; then the volume root takes the owner and mode
/// of `image_dir_in_rootfs`. Sockets and extended attributes are not copied.
///
/// Does nothing when `volume_data` is not empty, or when `image_dir_in_rootfs` does not exist or
/// is not a directory (a symlink is not followed). `image_dir_in_rootfs` must already be
/// resolved safely inside the rootfs: see [`copy_up_from_rootfs`].
pub fn copy_up(image_dir_in_rootfs: &Path, volume_data: &Path) -> Result<(), VolumeError> {
    let src = image_dir_in_rootfs;
    let mut entries = fs::read_dir(volume_data).map_err(io_err("read", volume_data))?;
    if entries.next().is_some() {
        tracing::debug!(volume = %volume_data.display(), "volume not empty; not copying image content");
        return Ok(());
    }
    let src_meta = match fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", src)(e)),
    };
    if !src_meta.is_dir() {
        tracing::debug!(path = %src.display(), "image path is not a directory; nothing to copy");
        return Ok(());
    }
    let mut links = HashMap::new();
    copy_dir_contents(src, volume_data, &mut links)?;
    set_owner_mode_times(volume_data, &src_meta)
}

/// [`copy_up`] from `destination` (an absolute path in the container) of the rootfs at `rootfs`,
/// resolving symlinks in `destination` inside the rootfs so an image cannot make the engine copy
/// host files.
pub fn copy_up_from_rootfs(
    rootfs: &Path,
    destination: &str,
    volume_data: &Path,
) -> Result<(), VolumeError> {
    match crate::user::resolve_in_root(rootfs, Path::new(destination)) {
        Some(src) => copy_up(&src, volume_data),
        None => Ok(()),
    }
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), VolumeError> {
    let mut entries = fs::read_dir(src)
        .map_err(io_err("read", src))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("read", src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(io_err("stat", &from))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(io_err("create", &to))?;
            copy_dir_contents(&from, &to, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_err("read link", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("create symlink", &to))?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &to).map_err(io_err("hard link", &to))?;
                    continue;
                }
                links.insert(key, to.clone());
            }
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_fifo() {
                rustix::fs::FileType::Fifo
            } else if ft.is_char_device() {
                rustix::fs::FileType::CharacterDevice
            } else if ft.is_block_device() {
                rustix::fs::FileType::BlockDevice
            } else {
                tracing::debug!(path = %from.display(), "not copying a socket into a volume");
                continue;
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &to,
                kind,
                rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| io_err("create node", &to)(e.into()))?;
        }
        set_owner_mode_times(&to, &meta)?;
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid bits), then times (last, after the contents).
fn set_owner_mode_times(path: &Path, meta: &fs::Metadata) -> Result<(), VolumeError> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(io_err("change the owner of", path))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("set permissions of", path))?;
    }
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set times of", path)(e.into()))
}

fn exists(path: &Path) -> Result<bool, VolumeError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Best-effort fsync of a directory (after a rename in it).
fn sync_dir(dir: &Path) {
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %e, "cannot sync directory");
    }
}

/// Writes `path` by writing a temporary file next to it, syncing it and renaming it over.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VolumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        unique()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", path)(e));
    }
    sync_dir(dir);
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Parses what [`format_rfc3339`] writes (the fraction optional).
fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let year: i32 = d.next()?.parse().ok()?;
    let month: u8 = d.next()?.parse().ok()?;
    let day: u8 = d.next()?.parse().ok()?;
    let time = time.strip_suffix('Z')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let hour: u8 = t.next()?.parse().ok()?;
    let minute: u8 = t.next()?.parse().ok()?;
    let second: u8 = t.next()?.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day)
        .ok()?
        .with_hms_nano(hour, minute, second, nanos)
        .ok()
        .map(|dt| dt.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn names() {
        for ok in ["ab", "my_vol.1-x", "0data", "A-", &"a".repeat(255)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "a",
            "-ab",
            ".ab",
            "_ab",
            "a/b",
            "../x",
            "a b",
            "é1",
            "ab\n",
            &"a".repeat(256),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert!(matches!(e, VolumeError::InvalidName(_)), "{bad}");
        }
        assert!(validate_name("a/b")
            .unwrap_err()
            .to_string()
            .contains("invalid characters"));
    }

    #[test]
    fn ensure_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let vols = Volumes::open(dir.path().join("volumes")).unwrap();
        let mode = fs::metadata(vols.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o701);
        assert!(vols.list().unwrap().is_empty());

        let before = OffsetDateTime::now_utc();
        let (data, created) = vols.ensure("web-data").unwrap();
        assert!(created);
        assert_eq!(data, dir.path().join("volumes/web-data/_data"));
        assert!(data.is_dir());
        let (again, created) = vols.ensure("web-data").unwrap();
        assert_eq!((again, created), (data.clone(), false));
        vols.ensure("alpha").unwrap();

        let meta: serde_json::Value = serde_json::from_slice(
            &fs::read(dir.path().join("volumes/web-data/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["name"], "web-data");
        assert_eq!(meta["driver"], "local");

        let list = vols.list().unwrap();
        let names: Vec<_> = list.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["alpha", "web-data"]);
        assert_eq!(list[1].mountpoint, data);
        assert!(list[1].created_at >= before - time::Duration::seconds(1));
        assert!(list[1].created_at <= OffsetDateTime::now_utc());
        assert_eq!(vols.inspect("web-data").unwrap(), list[1]);

        fs::write(data.join("file"), "x").unwrap();
        vols.remove("web-data").unwrap();
        assert!(!dir.path().join("volumes/web-data").exists());
        assert!(matches!(
            vols.remove("web-data"),
            Err(VolumeError::NotFound(ref n)) if n == "web-data"
        ));
        assert!(matches!(
            vols.inspect("web-data"),
            Err(VolumeError::NotFound(_))
        ));
        assert!(matches!(vols.ensure("x"), Err(VolumeError::InvalidName(_))));
        assert!(matches!(
            vols.remove("../volumes"),
            Err(VolumeError::InvalidName(_))
        ));
        // Nothing but the remaining volume is left in the root.
        let left: Vec<_> = fs::read_dir(vols.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["alpha"]);
    }

    #[test]
    fn recovers_interrupted_operations() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("volumes");
        fs::create_dir_all(root.join("half/_data")).unwrap();
        fs::create_dir_all(root.join(".removing-old-1-0/_data/deep")).unwrap();
        let vols = Volumes::open(&root).unwrap();
        assert!(!root.join(".removing-old-1-0").exists());
        // A directory without a record is not a volume yet, but ensure completes it.
        assert!(vols.list().unwrap().is_empty());
        let (_, created) = vols.ensure("half").unwrap();
        assert!(created);
        assert_eq!(vols.list().unwrap().len(), 1);
        // A corrupt record is reported by inspect and skipped by list.
        fs::create_dir_all(root.join("bad/_data")).unwrap();
        fs::write(root.join("bad/meta.json"), "{").unwrap();
        assert!(matches!(
            vols.inspect("bad"),
            Err(VolumeError::CorruptMeta { .. })
        ));
        assert_eq!(vols.list().unwrap().len(), 1);
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let s = format_rfc3339(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap())
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5Z")
                .unwrap()
                .millisecond(),
            500
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
    }

    fn set_mtime(path: &Path, secs: i64) {
        let ts = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn copy_up_preserves_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("rootfs/var/lib/app");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("plain"), "hello").unwrap();
        fs::set_permissions(src.join("plain"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(src.join("suid"), "#!").unwrap();
        fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(src.join("sub/deeper/f"), "deep").unwrap();
        fs::hard_link(src.join("plain"), src.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../plain", src.join("sub/rel-link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o1777)).unwrap();
        if is_root() {
            std::os::unix::fs::lchown(src.join("plain"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(src.join("abs-link"), Some(42), Some(43)).unwrap();
            std::os::unix::fs::lchown(&src, Some(999), Some(998)).unwrap();
        }
        set_mtime(&src.join("sub/deeper/f"), 1_000_000);
        set_mtime(&src.join("sub"), 2_000_000);

        let vols = Volumes::open(dir.path().join("volumes")).unwrap();
        let (data, _) = vols.ensure("appdata").unwrap();
        copy_up(&src, &data).unwrap();

        assert_eq!(fs::read_to_string(data.join("plain")).unwrap(), "hello");
        let mode = |p: &str| fs::symlink_metadata(data.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("plain"), 0o640);
        assert_eq!(mode("suid"), 0o4755);
        assert_eq!(mode("sub"), 0o750);
        assert_eq!(fs::symlink_metadata(&data).unwrap().mode() & 0o7777, 0o1777);
        assert_eq!(
            fs::read_to_string(data.join("sub/deeper/f")).unwrap(),
            "deep"
        );
        let m = |p: &str| fs::symlink_metadata(data.join(p)).unwrap();
        assert_eq!(m("sub/link").ino(), m("plain").ino());
        assert_eq!(
            fs::read_link(data.join("abs-link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            fs::read_link(data.join("sub/rel-link")).unwrap(),
            Path::new("../plain")
        );
        assert!(m("fifo").file_type().is_fifo());
        assert_eq!(m("sub/deeper/f").mtime(), 1_000_000);
        assert_eq!(m("sub").mtime(), 2_000_000);
        if is_root() {
            assert_eq!((m("plain").uid(), m("plain").gid()), (1234, 5678));
            assert_eq!((m("abs-link").uid(), m("abs-link").gid()), (42, 43));
            let root = fs::symlink_metadata(&data).unwrap();
            assert_eq!((root.uid(), root.gid()), (999, 998));
        }

        // A second copy into the now non-empty volume does nothing.
        fs::write(src.join("new"), "n").unwrap();
        copy_up(&src, &data).unwrap();
        assert!(!data.join("new").exists());
    }

    #[test]
    fn copy_up_missing_or_non_directory_source() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        copy_up(&dir.path().join("nope"), &data).unwrap();
        fs::write(dir.path().join("file"), "x").unwrap();
        copy_up(&dir.path().join("file"), &data).unwrap();
        assert_eq!(fs::read_dir(&data).unwrap().count(), 0);
    }

    #[test]
    fn copy_up_from_rootfs_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let host = dir.path().join("host-secret");
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("key"), "secret").unwrap();
        fs::create_dir_all(rootfs.join("real")).unwrap();
        fs::write(rootfs.join("real/inside"), "ok").unwrap();
        // /data -> /real inside the rootfs; /escape -> the host directory by absolute path.
        std::os::unix::fs::symlink("/real", rootfs.join("data")).unwrap();
        std::os::unix::fs::symlink(&host, rootfs.join("escape")).unwrap();

        let a = dir.path().join("a");
        fs::create_dir(&a).unwrap();
        copy_up_from_rootfs(&rootfs, "/data", &a).unwrap();
        assert_eq!(fs::read_to_string(a.join("inside")).unwrap(), "ok");

        let b = dir.path().join("b");
        fs::create_dir(&b).unwrap();
        copy_up_from_rootfs(&rootfs, "/escape", &b).unwrap();
        assert!(!b.join("key").exists());
    }
}
