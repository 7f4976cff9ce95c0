//! Overlay root filesystems: image layers (read-only lower directories) plus one writable upper
//! directory per container, mounted at the bundle's `rootfs/`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// The kernel copies at most one page of mount options; 4096 bytes is the page size on the
/// platforms rswarm runs on (and the smallest Linux page size).
const MAX_MOUNT_OPTIONS: usize = 4096;

/// Errors from mounting or unmounting a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// `mount_overlay` was given no lower directory.
    #[error("overlay mount at {target} needs at least one lower directory (use an empty directory for an image without layers)")]
    NoLowerLayers {
        /// The mountpoint.
        target: PathBuf,
    },
    /// A path cannot be written into overlay mount options.
    #[error("path {path} contains ',', ':' or a non-UTF-8 byte and cannot be used in overlay mount options: move the state directory to a plain path")]
    BadPath {
        /// The offending path.
        path: PathBuf,
    },
    /// The mount options are longer than the kernel accepts.
    #[error("overlay mount options for {target} are {len} bytes with {layers} lower layers, over the {max}-byte page limit: use a shorter state directory path or an image with fewer layers")]
    OptionsTooLong {
        /// The mountpoint.
        target: PathBuf,
        /// The options' length.
        len: usize,
        /// The number of lower directories.
        layers: usize,
        /// The limit.
        max: usize,
    },
    /// mount(2) failed.
    #[error(
        "mounting overlay at {target} failed: {source} (is overlayfs available and are you root?)"
    )]
    Mount {
        /// The mountpoint.
        target: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// umount2(2) failed.
    #[error("unmounting {target} failed: {source}")]
    Unmount {
        /// The mountpoint.
        target: PathBuf,
        /// The errno.
        source: Errno,
    },
}

fn option_path(path: &Path) -> Result<&str, RootfsError> {
    match path.to_str() {
        Some(s) if !s.contains([',', ':']) => Ok(s),
        _ => Err(RootfsError::BadPath {
            path: path.to_path_buf(),
        }),
    }
}

/// Builds the overlay options `lowerdir=top:…:bottom,upperdir=…,workdir=…`.
fn overlay_options(
    lower_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<String, RootfsError> {
    if lower_bottom_first.is_empty() {
        return Err(RootfsError::NoLowerLayers {
            target: target.to_path_buf(),
        });
    }
    let lowers = lower_bottom_first
        .iter()
        .rev()
        .map(|p| option_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        option_path(upper)?,
        option_path(work)?
    );
    if options.len() >= MAX_MOUNT_OPTIONS {
        return Err(RootfsError::OptionsTooLong {
            target: target.to_path_buf(),
            len: options.len(),
            layers: lower_bottom_first.len(),
            max: MAX_MOUNT_OPTIONS - 1,
        });
    }
    Ok(options)
}

/// Mounts an overlay at `target` with the given lower directories (bottom layer first, as an
/// image lists them), upper and work directories. `upper` and `work` must be on the same
/// filesystem; all directories must exist.
pub fn mount_overlay(
    lower_bottom_first: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let options = overlay_options(lower_bottom_first, upper, work, target)?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_path_buf(),
        source,
    })?;
    tracing::debug!(target = %target.display(), layers = lower_bottom_first.len(), "overlay mounted");
    Ok(())
}

/// Detaches the mount at `target` (lazily, `MNT_DETACH`). Succeeds if nothing is mounted there or
/// the directory does not exist.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(source) => Err(RootfsError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Whether a filesystem of its own is mounted at `target`, as `mountpoint(1)` decides: the
/// directory's device differs from that of its parent (`target/..`, which the kernel resolves
/// across the mount), or it is its own parent (`/`). An overlay always has a device of its own.
/// Unlike a scan of `/proc/self/mountinfo`, the cost does not grow with the number of mounts on
/// the host (two per container: its root filesystem and its network namespace).
pub fn is_mounted(target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(dir), Ok(parent)) = (
        std::fs::metadata(target),
        std::fs::metadata(target.join("..")),
    ) else {
        return false;
    };
    dir.dev() != parent.dev() || dir.ino() == parent.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_the_top_layer_first() {
        let o = overlay_options(
            &[PathBuf::from("/l/bottom"), PathBuf::from("/l/top")],
            Path::new("/c/upper"),
            Path::new("/c/work"),
            Path::new("/c/rootfs"),
        )
        .unwrap();
        assert_eq!(
            o,
            "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn options_reject_bad_input() {
        let t = Path::new("/t");
        assert!(matches!(
            overlay_options(&[], t, t, t),
            Err(RootfsError::NoLowerLayers { .. })
        ));
        assert!(matches!(
            overlay_options(&[PathBuf::from("/a:b")], t, t, t),
            Err(RootfsError::BadPath { .. })
        ));
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/rswarm/images/layers/{i:04}")))
            .collect();
        let err = overlay_options(&many, t, t, t).unwrap_err();
        assert!(err.to_string().contains("200 lower layers"), "{err}");
    }

    #[test]
    fn root_is_mounted_and_a_fresh_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
        assert!(!is_mounted(&dir.path().join("missing")));
        assert!(is_mounted(Path::new("/proc")));
        unmount(dir.path()).unwrap();
        unmount(&dir.path().join("missing")).unwrap();
    }
}
