//! Unpacking one layer tar into a directory usable as an overlayfs lower dir.
//!
//! Blocking code: call it from `spawn_blocking`. Entries never land outside the directory:
//! `..` components are refused, no symlink created by the layer is ever followed (every
//! parent component is checked with `symlink_metadata`), hard links must point inside.
//! OCI whiteouts become overlayfs whiteouts (`.wh.NAME` → char device 0/0 `NAME`,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use tar::EntryType;

use crate::digest::HashingReader;
use crate::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of regular file content written.
    pub size: u64,
}

/// Unpacks the layer blob at `blob` (gzip, zstd or plain tar, detected by magic bytes) into
/// `dest`, which must not exist yet. When `expected_diff_id` is given, the uncompressed
/// stream must hash to it. On any error `dest` is removed.
pub(crate) fn unpack_layer_file(
    blob: &Path,
    dest: &Path,
    layer: &str,
    expected_diff_id: Option<&str>,
) -> Result<Unpacked, ImageError> {
    let file = File::open(blob).map_err(|e| ImageError::Unpack {
        layer: layer.to_string(),
        message: format!("opening {}: {e}", blob.display()),
    })?;
    unpack_layer(BufReader::new(file), dest, layer, expected_diff_id)
}

/// As [`unpack_layer_file`], from any buffered reader.
pub(crate) fn unpack_layer<R: BufRead>(
    reader: R,
    dest: &Path,
    layer: &str,
    expected_diff_id: Option<&str>,
) -> Result<Unpacked, ImageError> {
    let result = unpack_inner(reader, dest, layer).and_then(|unpacked| match expected_diff_id {
        Some(expected) if expected != unpacked.diff_id => Err(ImageError::DigestMismatch {
            what: format!("uncompressed layer {layer} (diff id)"),
            expected: expected.to_string(),
            actual: unpacked.diff_id,
        }),
        _ => Ok(unpacked),
    });
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(dest) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dest = %dest.display(), %e, "could not remove a partial layer");
            }
        }
    }
    result
}

/// Wraps `reader` in the decompressor its magic bytes call for.
pub(crate) fn decompressor<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let magic = reader.fill_buf()?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

struct Ctx<'a> {
    dest: &'a Path,
    layer: &'a str,
    is_root: bool,
}

impl Ctx<'_> {
    fn unsafe_entry(&self, path: &str, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeLayerEntry {
            layer: self.layer.to_string(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, what: &str, path: &Path, e: io::Error) -> ImageError {
        ImageError::Unpack {
            layer: self.layer.to_string(),
            message: format!("{what} {}: {e}", path.display()),
        }
    }
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

fn unpack_inner<R: BufRead>(reader: R, dest: &Path, layer: &str) -> Result<Unpacked, ImageError> {
    let ctx = Ctx {
        dest,
        layer,
        is_root: rustix::process::geteuid().is_root(),
    };
    fs::create_dir(dest).map_err(|e| ctx.io("creating layer directory", dest, e))?;
    let read_err = |e: io::Error| ImageError::Unpack {
        layer: layer.to_string(),
        message: format!("reading the layer tar: {e}"),
    };
    let hashing = HashingReader::new(decompressor(reader).map_err(read_err)?);
    let mut archive = tar::Archive::new(hashing);
    let mut size = 0u64;
    let mut dirs: Vec<DirMeta> = Vec::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        size += extract_entry(&ctx, &mut entry, &mut dirs)?;
    }
    // Directory modes and mtimes last: writing children changes a directory's mtime, and a
    // read-only directory would refuse them.
    for dir in dirs.iter().rev() {
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
            .map_err(|e| ctx.io("setting the mode of", &dir.path, e))?;
        set_mtime(&dir.path, dir.mtime);
    }
    let (diff_id, _) = archive.into_inner().finish().map_err(read_err)?;
    Ok(Unpacked { diff_id, size })
}

/// Splits a tar path into its normal components; leading `/` and `.` are dropped (absolute
/// paths are relative to the layer root, as Docker does); `..` is refused.
fn clean_components(raw: &[u8]) -> Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("contains a '..' component"),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Walks (and creates, with mode 0755) the parent directories of an entry, refusing any
/// component that is a symlink or not a directory. Never follows a symlink.
fn ensure_parent(ctx: &Ctx<'_>, comps: &[OsString], shown: &str) -> Result<PathBuf, ImageError> {
    let mut cur = ctx.dest.to_path_buf();
    for comp in comps {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!(
                        "goes through the symlink {:?} created by the layer; refused",
                        rel(ctx, &cur)
                    ),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!("has a parent {:?} that is not a directory", rel(ctx, &cur)),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| ctx.io("creating directory", &cur, e))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| ctx.io("setting the mode of", &cur, e))?;
            }
            Err(e) => return Err(ctx.io("inspecting", &cur, e)),
        }
    }
    Ok(cur)
}

fn rel(ctx: &Ctx<'_>, path: &Path) -> String {
    path.strip_prefix(ctx.dest)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Removes whatever is at `path` (a directory recursively, without following symlinks).
fn remove_existing(ctx: &Ctx<'_>, path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| ctx.io("removing", path, e)),
        Ok(_) => fs::remove_file(path).map_err(|e| ctx.io("removing", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx.io("inspecting", path, e)),
    }
}

/// Extracts one entry; returns the bytes of file content written.
fn extract_entry<R: Read>(
    ctx: &Ctx<'_>,
    entry: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<DirMeta>,
) -> Result<u64, ImageError> {
    let raw = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let comps = clean_components(&raw).map_err(|r| ctx.unsafe_entry(&shown, r))?;
    let Some((name, parents)) = comps.split_last() else {
        return Ok(0); // the layer root itself
    };
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
        return Ok(0);
    }
    let parent = ensure_parent(ctx, parents, &shown)?;
    let name_bytes = name.as_bytes();

    if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
        rustix::fs::lsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(|e| {
            ImageError::Unpack {
                layer: ctx.layer.to_string(),
                message: format!(
                    "marking {} opaque ({OPAQUE_XATTR}): {e}; the image store needs root and a file system with trusted xattrs",
                    parent.display()
                ),
            }
        })?;
        return Ok(0);
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // other AUFS metadata (.wh..wh.plnk, ...): not content
            return Ok(0);
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ctx.unsafe_entry(&shown, "is a whiteout without a valid name"));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        remove_existing(ctx, &target)?;
        rustix::fs::mknodat(
            CWD,
            &target,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| ImageError::Unpack {
            layer: ctx.layer.to_string(),
            message: format!(
                "creating the whiteout {}: {e}; the image store needs root (CAP_MKNOD)",
                target.display()
            ),
        })?;
        return Ok(0);
    }

    let path = parent.join(name);
    let header = entry.header().clone();
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let mtime = header.mtime().unwrap_or(0);
    let mut written = 0u64;
    match kind {
        EntryType::Directory => {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    remove_existing(ctx, &path)?;
                    fs::create_dir(&path).map_err(|e| ctx.io("creating directory", &path, e))?;
                }
            }
            set_owner(ctx, &path, &header)?;
            set_xattrs(ctx, entry, &path)?;
            dirs.push(DirMeta { path, mode, mtime });
            return Ok(0);
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            remove_existing(ctx, &path)?;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| ctx.io("creating", &path, e))?;
            written = io::copy(entry, &mut file).map_err(|e| ctx.io("writing", &path, e))?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| ctx.unsafe_entry(&shown, "is a symlink without a target"))?
                .into_owned();
            remove_existing(ctx, &path)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                .map_err(|e| ctx.io("creating symlink", &path, e))?;
        }
        EntryType::Link => {
            let target_raw = entry
                .link_name_bytes()
                .ok_or_else(|| ctx.unsafe_entry(&shown, "is a hard link without a target"))?
                .into_owned();
            let target = hard_link_target(ctx, &target_raw, &shown)?;
            if target == path {
                return Ok(0);
            }
            remove_existing(ctx, &path)?;
            // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed
            fs::hard_link(&target, &path).map_err(|e| ctx.io("creating hard link", &path, e))?;
            return Ok(0);
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            remove_existing(ctx, &path)?;
            let (file_type, dev) = match kind {
                EntryType::Char => (FileType::CharacterDevice, device(&header)),
                EntryType::Block => (FileType::BlockDevice, device(&header)),
                _ => (FileType::Fifo, 0),
            };
            if let Err(e) =
                rustix::fs::mknodat(CWD, &path, file_type, Mode::from_raw_mode(mode), dev)
            {
                tracing::warn!(layer = ctx.layer, path = %path.display(), %e, "skipping a device node");
                return Ok(0);
            }
        }
        other => {
            tracing::warn!(layer = ctx.layer, path = %shown, kind = ?other, "skipping an unsupported tar entry");
            return Ok(0);
        }
    }
    set_owner(ctx, &path, &header)?;
    if kind != EntryType::Symlink {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| ctx.io("setting the mode of", &path, e))?;
    }
    set_xattrs(ctx, entry, &path)?;
    set_mtime(&path, mtime);
    Ok(written)
}

fn device(header: &tar::Header) -> rustix::fs::Dev {
    let major = header.device_major().ok().flatten().unwrap_or(0);
    let minor = header.device_minor().ok().flatten().unwrap_or(0);
    rustix::fs::makedev(major, minor)
}

/// Resolves a hard link's target inside the layer: no `..`, no symlink among its parents,
/// and it must already exist (an earlier entry of the same layer).
fn hard_link_target(ctx: &Ctx<'_>, raw: &[u8], shown: &str) -> Result<PathBuf, ImageError> {
    let shown_target = String::from_utf8_lossy(raw);
    let comps = clean_components(raw).map_err(|r| {
        ctx.unsafe_entry(
            shown,
            format!("is a hard link to {shown_target:?}, which {r} (outside the layer)"),
        )
    })?;
    if comps.is_empty() {
        return Err(ctx.unsafe_entry(shown, "is a hard link to the layer root"));
    }
    let mut cur = ctx.dest.to_path_buf();
    for (i, comp) in comps.iter().enumerate() {
        cur.push(comp);
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&cur) {
            Ok(m) if !last && m.file_type().is_symlink() => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!("is a hard link to {shown_target:?} through a symlink; refused"),
                ));
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!("is a hard link to {shown_target:?}, whose parent is not a directory"),
                ));
            }
            Ok(m) if last && m.is_dir() => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!("is a hard link to the directory {shown_target:?}"),
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(ctx.unsafe_entry(
                    shown,
                    format!("is a hard link to {shown_target:?}, which is not in the layer"),
                ));
            }
        }
    }
    Ok(cur)
}

fn set_owner(ctx: &Ctx<'_>, path: &Path, header: &tar::Header) -> Result<(), ImageError> {
    let uid = header.uid().unwrap_or(0);
    let gid = header.gid().unwrap_or(0);
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err(ImageError::Unpack {
            layer: ctx.layer.to_string(),
            message: format!("{} has an owner {uid}:{gid} out of range", path.display()),
        });
    };
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if !ctx.is_root => {
            tracing::debug!(path = %path.display(), %e, "not root: owner not kept");
            Ok(())
        }
        Err(e) => Err(ctx.io("changing the owner of", path, e)),
    }
}

fn set_xattrs<R: Read>(
    ctx: &Ctx<'_>,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
) -> Result<(), ImageError> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Ok(());
    };
    for ext in exts.flatten() {
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if let Err(e) = rustix::fs::lsetxattr(path, name, ext.value_bytes(), XattrFlags::empty()) {
            tracing::debug!(layer = ctx.layer, path = %path.display(), xattr = name, %e, "xattr not kept");
        }
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) {
    let ts = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    if let Err(e) = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW) {
        tracing::debug!(path = %path.display(), %e, "mtime not kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A tar builder that writes raw names (the `tar` crate refuses `..` in its safe API).
    struct T(tar::Builder<Vec<u8>>);

    impl T {
        fn new() -> T {
            T(tar::Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, name: &str, size: u64, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(1_000_000);
            let bytes = name.as_bytes();
            let gnu = h.as_gnu_mut().map(|g| &mut g.name);
            if let Some(field) = gnu {
                field[..bytes.len()].copy_from_slice(bytes);
            }
            h.set_cksum();
            h
        }
        fn file(mut self, name: &str, data: &[u8]) -> T {
            let h = Self::header(EntryType::Regular, name, data.len() as u64, 0o644);
            self.0.append(&h, data).ok();
            self
        }
        fn dir(mut self, name: &str) -> T {
            let h = Self::header(EntryType::Directory, name, 0, 0o755);
            self.0.append(&h, &[][..]).ok();
            self
        }
        fn link(mut self, kind: EntryType, name: &str, target: &str) -> T {
            let mut h = Self::header(kind, name, 0, 0o777);
            h.set_link_name_literal(target).ok();
            h.set_cksum();
            self.0.append(&h, &[][..]).ok();
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap_or_default()
        }
    }

    fn run(tar: &[u8]) -> (tempfile::TempDir, PathBuf, Result<Unpacked, ImageError>) {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dest = tmp.path().join("layer");
        let res = unpack_layer(tar, &dest, "test", None);
        (tmp, dest, res)
    }

    #[test]
    fn plain_files_dirs_links() {
        let tar = T::new()
            .dir("etc/")
            .file("etc/hosts", b"127.0.0.1 localhost\n")
            .file("/abs/file", b"x")
            .link(EntryType::Symlink, "bin/sh", "/bin/busybox")
            .link(EntryType::Link, "etc/hosts2", "etc/hosts")
            .bytes();
        let (_tmp, dest, res) = run(&tar);
        let out = res.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.size, 21);
        assert_eq!(out.diff_id, crate::digest::sha256_digest(&tar));
        assert_eq!(
            fs::read_link(dest.join("bin/sh")).ok(),
            Some(PathBuf::from("/bin/busybox"))
        );
        assert!(dest.join("abs/file").is_file());
        let a = fs::metadata(dest.join("etc/hosts")).map(|m| m.ino()).ok();
        let b = fs::metadata(dest.join("etc/hosts2")).map(|m| m.ino()).ok();
        assert_eq!(a, b);
        let m = fs::metadata(dest.join("etc/hosts")).map(|m| m.mtime()).ok();
        assert_eq!(m, Some(1_000_000));
    }

    #[test]
    fn gzip_and_zstd_detected_by_magic() {
        let tar = T::new().file("a", b"hello").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).ok();
        let gz = gz.finish().unwrap_or_default();
        let zst = zstd::encode_all(&tar[..], 1).unwrap_or_default();
        for blob in [gz, zst] {
            let (_tmp, dest, res) = run(&blob);
            let out = res.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out.diff_id, crate::digest::sha256_digest(&tar));
            assert_eq!(fs::read(dest.join("a")).ok(), Some(b"hello".to_vec()));
        }
    }

    #[test]
    fn whiteout_becomes_char_device() {
        if !is_root() {
            eprintln!("skipping: whiteouts need root");
            return;
        }
        let tar = T::new().file("etc/.wh.passwd", b"").bytes();
        let (_tmp, dest, res) = run(&tar);
        res.unwrap_or_else(|e| panic!("{e}"));
        let m = fs::symlink_metadata(dest.join("etc/passwd")).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        assert!(!dest.join("etc/.wh.passwd").exists());
    }

    #[test]
    fn opaque_dir_gets_xattr() {
        if !is_root() {
            eprintln!("skipping: trusted xattrs need root");
            return;
        }
        let tar = T::new().dir("var/").file("var/.wh..wh..opq", b"").bytes();
        let (_tmp, dest, res) = run(&tar);
        res.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 8];
        let n = rustix::fs::lgetxattr(dest.join("var"), OPAQUE_XATTR, &mut buf[..]).unwrap_or(0);
        assert_eq!(&buf[..n], b"y");
        assert!(!dest.join("var/.wh..wh..opq").exists());
    }

    fn assert_refused(tar: &[u8], needle: &str) {
        let (tmp, dest, res) = run(tar);
        match res {
            Err(e @ ImageError::UnsafeLayerEntry { .. }) => {
                assert!(e.to_string().contains(needle), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!dest.exists(), "the partial layer must be removed");
        assert!(!tmp.path().join("escape").exists());
    }

    #[test]
    fn dotdot_refused() {
        assert_refused(&T::new().file("../escape", b"x").bytes(), "'..'");
        assert_refused(&T::new().file("a/../../escape", b"x").bytes(), "'..'");
    }

    #[test]
    fn file_through_symlink_refused() {
        let tar = T::new()
            .link(EntryType::Symlink, "evil", "..")
            .file("evil/escape", b"x")
            .bytes();
        assert_refused(&tar, "symlink");
        let tar = T::new()
            .link(EntryType::Symlink, "evil", "/")
            .file("evil/tmp/x", b"x")
            .bytes();
        assert_refused(&tar, "symlink");
    }

    #[test]
    fn hard_link_out_refused() {
        assert_refused(
            &T::new().link(EntryType::Link, "h", "../escape").bytes(),
            "outside",
        );
        assert_refused(
            &T::new().link(EntryType::Link, "h", "/etc/passwd").bytes(),
            "not in the layer",
        );
        let tar = T::new()
            .link(EntryType::Symlink, "s", "/etc")
            .link(EntryType::Link, "h", "s/passwd")
            .bytes();
        assert_refused(&tar, "through a symlink");
    }

    #[test]
    fn diff_id_mismatch_removes_the_layer() {
        let tar = T::new().file("a", b"x").bytes();
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dest = tmp.path().join("l");
        let wrong = crate::digest::sha256_digest(b"other");
        match unpack_layer(&tar[..], &dest, "t", Some(&wrong)) {
            Err(ImageError::DigestMismatch { expected, .. }) => assert_eq!(expected, wrong),
            other => panic!("{other:?}"),
        }
        assert!(!dest.exists());
    }

    #[test]
    fn corrupt_stream_refused() {
        let tar = T::new().file("a", b"hello").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).ok();
        let mut gz = gz.finish().unwrap_or_default();
        let mid = gz.len() / 2;
        gz[mid] ^= 0xff;
        let (_tmp, dest, res) = run(&gz);
        assert!(res.is_err());
        assert!(!dest.exists());
    }
}
