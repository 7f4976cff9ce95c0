//! A sealed in-memory copy of the OCI runtime's binary, made once per engine.
//!
//! runc guards against CVE-2019-5736 (a container process overwriting the host's runc through
//! `/proc/self/exe`) by making every `runc init` re-execute itself from a private copy first:
//! runc 1.1 bind-mounts its binary read-only (or copies it into a memfd) and execs that, a third
//! exec (and a mount and unmount) per container start. It skips the step when `/proc/self/exe`
//! already is a memfd sealed against any change (`is_self_cloned` in runc's
//! `libcontainer/nsenter/cloned_binary.c`, whose comment names this use: a sealed memfd may stand
//! in for the runc binary "to allow re-use"). So the engine makes that memfd once and runs runc
//! from it (`/proc/<agent pid>/fd/<n>`, through a link named after runc: [`SealedCopy::link_at`]):
//! the same protection, with about a tenth less of runc's CPU per container start (RFC 002 "Start
//! path").
//!
//! The copy carries exactly runc's seal set (seal, shrink, grow, write): runc compares it for
//! equality, and any other set makes it clone again.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{MemfdFlags, SealFlags};

/// The seals runc looks for (`RUNC_MEMFD_SEALS`).
pub const RUNC_SEALS: SealFlags = SealFlags::SEAL
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// Why a sealed copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make an executable memfd ({source}); is vm.memfd_noexec set to 2?")]
    Create { source: std::io::Error },
    #[error("cannot copy {} into a memfd: {source}", path.display())]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot seal the memfd: {source}")]
    Seal { source: std::io::Error },
}

/// An executable, sealed, in-memory copy of a binary; it lives (and its path works) as long as
/// this value does, in this process.
#[derive(Debug)]
pub struct SealedCopy {
    fd: OwnedFd,
    path: PathBuf,
}

impl SealedCopy {
    /// Copies `binary` into a new memfd named after it and seals it with [`RUNC_SEALS`].
    pub fn of(binary: &Path) -> Result<SealedCopy, SealedError> {
        let mut src = File::open(binary).map_err(|source| SealedError::Read {
            path: binary.to_path_buf(),
            source,
        })?;
        let name = binary
            .file_name()
            .map_or_else(|| "runtime".into(), |n| n.to_string_lossy().into_owned());
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        // MFD_EXEC keeps the copy executable where vm.memfd_noexec = 1 makes memfds non-executable
        // by default; kernels before 6.3 do not know the flag.
        let fd = rustix::fs::memfd_create(&name, flags | MemfdFlags::EXEC)
            .or_else(|e| {
                if e == rustix::io::Errno::INVAL {
                    rustix::fs::memfd_create(&name, flags)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| SealedError::Create { source: e.into() })?;
        let mut dst = File::from(fd);
        std::io::copy(&mut src, &mut dst).map_err(|source| SealedError::Copy {
            path: binary.to_path_buf(),
            source,
        })?;
        let fd = OwnedFd::from(dst);
        rustix::fs::fcntl_add_seals(&fd, RUNC_SEALS)
            .map_err(|e| SealedError::Seal { source: e.into() })?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        ));
        Ok(SealedCopy { fd, path })
    }

    /// A path that executes the copy from any process of this host's PID namespace while this
    /// process holds it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `link` a symbolic link to [`path`](Self::path), replacing whatever is there.
    /// Processes started through the link are named after it (`runc` in `ps` and `top`, where
    /// the path itself would name them after the descriptor's number), and their
    /// `/proc/self/exe` still is the sealed copy.
    pub fn link_at(&self, link: &Path) -> std::io::Result<()> {
        let mut tmp = link.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(&self.path, &tmp)?;
        std::fs::rename(&tmp, link)
    }

    /// The seals on the copy.
    pub fn seals(&self) -> std::io::Result<SealFlags> {
        rustix::fs::fcntl_get_seals(self.fd.as_fd()).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(dir: &Path) -> PathBuf {
        let p = dir.join("hello");
        std::fs::write(&p, "#!/bin/sh\necho sealed \"$@\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn copy_runs_and_carries_exactly_runcs_seals() {
        let dir = tempfile::tempdir().unwrap();
        let copy = SealedCopy::of(&script(dir.path())).unwrap();
        assert_eq!(copy.seals().unwrap(), RUNC_SEALS);
        // The original can go: the copy is what runs.
        std::fs::remove_file(dir.path().join("hello")).unwrap();
        let out = std::process::Command::new(copy.path())
            .arg("ok")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "sealed ok\n");
        let link = std::fs::read_link(copy.path()).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:hello"),
            "{link:?}"
        );
    }

    #[test]
    fn copy_cannot_be_written_or_resized() {
        let dir = tempfile::tempdir().unwrap();
        let copy = SealedCopy::of(&script(dir.path())).unwrap();
        // Through a new open of the path, as a container reaching /proc/self/exe would.
        let opened = std::fs::OpenOptions::new().write(true).open(copy.path());
        match opened {
            Err(_) => {}
            Ok(mut f) => {
                assert!(f.write_all(b"#!/bin/sh\necho pwned\n").is_err());
                assert!(f.set_len(1).is_err());
                assert!(f.set_len(1 << 20).is_err());
            }
        }
        let out = std::process::Command::new(copy.path()).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "sealed\n");
    }

    #[test]
    fn processes_started_through_a_link_are_named_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("whoami");
        std::fs::write(&p, "#!/bin/sh\ncat /proc/$$/comm\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = SealedCopy::of(&p).unwrap();
        let link = dir.path().join("runc");
        std::fs::write(&link, "stale").unwrap();
        copy.link_at(&link).unwrap();
        copy.link_at(&link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), copy.path());
        let out = std::process::Command::new(&link).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "runc\n");
        let out = std::process::Command::new(copy.path()).output().unwrap();
        let fd_name = copy.path().file_name().unwrap().to_string_lossy();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{fd_name}\n"));
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let e = SealedCopy::of(Path::new("/nonexistent/runc")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/runc"),
            "{e}"
        );
    }
}
