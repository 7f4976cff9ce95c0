//! Which filesystem a directory is on (fsync costs differ wildly between tmpfs and a disk), and
//! memory figures from /proc.

use std::path::{Component, Path, PathBuf};

/// A mount as /proc/self/mountinfo describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let mount_point = fields.get(4)?;
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: (*fields.get(sep + 1)?).to_string(),
        source: unescape(fields.get(sep + 2).copied().unwrap_or("")),
    })
}

/// The mount `path` (absolute, ideally canonical) lives on: the one with the longest mount point
/// that is a prefix of it, the last one listed on ties (it is mounted over the earlier ones).
pub fn mount_of(path: &Path, mountinfo: &str) -> Option<Mount> {
    let mut best: Option<(usize, Mount)> = None;
    for m in mountinfo.lines().filter_map(parse_line) {
        if path.starts_with(&m.mount_point) {
            let depth = m
                .mount_point
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, m));
            }
        }
    }
    best.map(|(_, m)| m)
}

/// "PATH (FSTYPE on SOURCE)" for the output, or just the path when /proc is unreadable.
pub fn describe_dir(path: &Path) -> String {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match mount_of(&canonical, &info) {
        Some(m) => format!("{} ({} on {})", path.display(), m.fs_type, m.source),
        None => format!("{} (filesystem unknown)", path.display()),
    }
}

/// A `Key:   123 kB` field of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let mut it = rest.split_whitespace();
        let v = it.next()?.parse().ok()?;
        match it.next() {
            Some("kB") | None => Some(v),
            _ => None,
        }
    })
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_kib(&status, "VmRSS").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no VmRSS in /proc/{pid}/status"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:22 / /tmp rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=100k
25 22 0:23 / /var/tmp/my\\040dir rw - xfs /dev/vdb rw
26 22 0:24 / /tmpx rw - btrfs /dev/vdc rw
27 24 0:25 / /tmp rw - overlay overlay rw
";

    #[test]
    fn finds_the_deepest_mount_containing_the_path() {
        let m = mount_of(Path::new("/var/tmp/x"), MOUNTINFO).unwrap();
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.source, "/dev/vda");
        let m = mount_of(Path::new("/var/tmp/my dir/a"), MOUNTINFO).unwrap();
        assert_eq!(m.fs_type, "xfs");
        assert_eq!(m.mount_point, PathBuf::from("/var/tmp/my dir"));
        // Component-wise prefix: /tmpx is not under /tmp.
        assert_eq!(
            mount_of(Path::new("/tmpx/a"), MOUNTINFO).unwrap().fs_type,
            "btrfs"
        );
        // The later of two mounts on the same point hides the earlier one.
        assert_eq!(
            mount_of(Path::new("/tmp/a"), MOUNTINFO).unwrap().fs_type,
            "overlay"
        );
        assert_eq!(mount_of(Path::new("/var/tmp/x"), ""), None);
    }

    #[test]
    fn unescapes_octal_and_leaves_other_backslashes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\\\b"), "a\\\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
        assert_eq!(unescape("tab\\011"), "tab\t");
    }

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status = "Name:\trswarm\nVmHWM:\t   20000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_kib(status, "VmHWM"), Some(20000));
        assert_eq!(status_kib(status, "Threads"), Some(5));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib(status, "Vm"), None);
    }

    #[test]
    fn reads_its_own_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
