//! Resolving a container's `--user` against the image's `/etc/passwd` and `/etc/group`.
//!
//! The rules are Docker's (which are runc's `libcontainer/user.GetExecUser`):
//!
//! * no user (or an empty one) is root, `0:0`, with root's primary group and home from
//!   `/etc/passwd` when it has an entry for uid 0, and the groups that list `root` as a member;
//! * `name` or `uid`: the passwd entry gives the uid, the primary gid and the home; a numeric uid
//!   that is not in `/etc/passwd` is allowed (gid 0 then), an unknown name is an error;
//! * `user:group` (each side a name or a number): the group is looked up in `/etc/group`; a
//!   numeric gid that is not there is allowed, an unknown name is an error. With an explicit group
//!   no supplementary groups are added (as runc);
//! * without an explicit group, the supplementary groups are the groups whose member list names
//!   the user.
//!
//! Ids must be in `0..=2147483647`, as runc requires.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The largest uid or gid runc accepts.
const MAX_ID: u32 = i32::MAX as u32;

/// How many symlinks [`read_image_user_files`] follows before giving up (as the kernel's `ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// Larger `/etc/passwd` or `/etc/group` files are not read.
const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// Errors resolving a container user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name that the image's `/etc/passwd` does not have.
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd; use a numeric uid or a user the image defines")]
    UnknownUser(String),
    /// A group name that the image's `/etc/group` does not have.
    #[error("unable to find group {0}: no matching entries in the image's /etc/group; use a numeric gid or a group the image defines")]
    UnknownGroup(String),
    /// A numeric id out of range.
    #[error("invalid {kind} id {value}: uids and gids must be in range 0-2147483647")]
    IdOutOfRange {
        /// `user` or `group`.
        kind: &'static str,
        /// The id as given.
        value: String,
    },
    /// A user specification that does not parse (e.g. `a:b:c`).
    #[error("invalid user specification {0:?}: expected user, uid, user:group or uid:gid")]
    Invalid(String),
}

/// The uid, gids and home directory a container's process runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, when the user has an entry there.
    pub home: Option<String>,
}

/// One line of `/etc/passwd`.
#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// One line of `/etc/group`.
#[derive(Debug)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// The lines of a colon-separated database, skipping blanks and comments.
fn db_lines(content: &str) -> impl Iterator<Item = Vec<&str>> {
    content
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim_start().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn parse_passwd(content: &str) -> Vec<PasswdEntry<'_>> {
    db_lines(content)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first().copied()?,
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).copied().unwrap_or(""),
            })
        })
        .collect()
}

fn parse_group(content: &str) -> Vec<GroupEntry<'_>> {
    db_lines(content)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first().copied()?,
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses a numeric id; `Ok(None)` when `s` is not a number (a name), an error when it is a
/// number out of range.
fn numeric_id(s: &str, kind: &'static str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(v) if v <= u64::from(MAX_ID) => Ok(Some(v as u32)),
        _ => Err(UserError::IdOutOfRange {
            kind,
            value: s.to_string(),
        }),
    }
}

/// Resolves a container user specification with Docker's rules (see the module docs).
///
/// `passwd` and `group` are the contents of the image's `/etc/passwd` and `/etc/group`, `None`
/// when the image has no such file.
pub fn resolve_user(
    user: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let spec = user.unwrap_or("").trim();
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => {
            if g.contains(':') {
                return Err(UserError::Invalid(spec.to_string()));
            }
            (u, Some(g))
        }
        None => (spec, None),
    };
    // "user:" is treated as no explicit group, as runc does.
    let group_arg = group_arg.filter(|g| !g.is_empty());

    let passwd_entries = passwd.map(parse_passwd).unwrap_or_default();
    let group_entries = group.map(parse_group).unwrap_or_default();

    let mut resolved = ResolvedUser::default();
    // The name used to find supplementary groups.
    let mut matched_name: Option<&str> = None;

    let uid_arg = numeric_id(user_arg, "user")?;
    let entry = if user_arg.is_empty() {
        passwd_entries.iter().find(|e| e.uid == 0)
    } else if let Some(uid) = uid_arg {
        passwd_entries.iter().find(|e| e.uid == uid)
    } else {
        passwd_entries.iter().find(|e| e.name == user_arg)
    };
    match entry {
        Some(e) => {
            if e.uid > MAX_ID || e.gid > MAX_ID {
                return Err(UserError::IdOutOfRange {
                    kind: "user",
                    value: e.uid.to_string(),
                });
            }
            resolved.uid = e.uid;
            resolved.gid = e.gid;
            if !e.home.is_empty() {
                resolved.home = Some(e.home.to_string());
            }
            matched_name = Some(e.name);
        }
        None => match uid_arg {
            Some(uid) => resolved.uid = uid,
            None if user_arg.is_empty() => {}
            None => return Err(UserError::UnknownUser(user_arg.to_string())),
        },
    }

    if let Some(g) = group_arg {
        let gid_arg = numeric_id(g, "group")?;
        let found = match gid_arg {
            Some(gid) => group_entries.iter().find(|e| e.gid == gid),
            None => group_entries.iter().find(|e| e.name == g),
        };
        resolved.gid = match (found, gid_arg) {
            (Some(e), _) => e.gid,
            (None, Some(gid)) => gid,
            (None, None) => return Err(UserError::UnknownGroup(g.to_string())),
        };
        if resolved.gid > MAX_ID {
            return Err(UserError::IdOutOfRange {
                kind: "group",
                value: resolved.gid.to_string(),
            });
        }
    } else if let Some(name) = matched_name {
        for e in group_entries.iter().filter(|e| e.members.contains(&name)) {
            if e.gid <= MAX_ID && !resolved.additional_gids.contains(&e.gid) {
                resolved.additional_gids.push(e.gid);
            }
        }
    }
    Ok(resolved)
}

/// Reads the image's `etc/passwd` and `etc/group` under `rootfs` (`None` for a file that is
/// missing or unreadable; unreadable ones are logged).
///
/// Symlinks are resolved by hand *inside* `rootfs`, as if `rootfs` were `/` (an absolute target
/// starts again at `rootfs`, `..` stops at it), so a hostile image cannot make the engine read a
/// host file. Only regular files are read, up to 16 MiB.
pub fn read_image_user_files(rootfs: &Path) -> (Option<String>, Option<String>) {
    (
        read_in_root(rootfs, Path::new("etc/passwd")),
        read_in_root(rootfs, Path::new("etc/group")),
    )
}

fn read_in_root(root: &Path, rel: &Path) -> Option<String> {
    let path = resolve_in_root(root, rel)?;
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot stat image user file");
            return None;
        }
    };
    if !meta.file_type().is_file() {
        tracing::warn!(path = %path.display(), "image user file is not a regular file; ignoring it");
        return None;
    }
    let read = std::fs::File::open(&path).and_then(|f| {
        let mut s = String::new();
        f.take(MAX_FILE_SIZE).read_to_string(&mut s).map(|_| s)
    });
    match read {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read image user file");
            None
        }
    }
}

/// Resolves `rel` under `root` following symlinks as if `root` were the filesystem root. `None`
/// on a symlink loop or an IO error other than "not found".
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = Vec::new(); // reversed: pop() gives the next component
    fn push_pending(pending: &mut Vec<OsString>, p: &Path) {
        let comps: Vec<OsString> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        pending.extend(comps.into_iter().rev());
    }
    push_pending(&mut pending, rel);
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    tracing::warn!(path = %candidate.display(), "too many symlinks in the image");
                    return None;
                }
                let target = std::fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_pending(&mut pending, &target);
            }
            Ok(_) => resolved.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing further can exist below a missing component.
                return None;
            }
            Err(e) => {
                tracing::warn!(path = %candidate.display(), error = %e, "cannot stat image path");
                return None;
            }
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bob:x:1000:1000:Bob:/home/bob:/bin/sh
alice:x:1001:1002::/home/alice:/bin/sh
nohome:x:1003:1003:::/bin/sh
broken:x:notanumber:1:::
";

    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,bob
bob:x:1000:
staff:x:50:bob, alice
alicegrp:x:1002:
docker:x:999:alice
";

    fn r(user: &str) -> Result<ResolvedUser, UserError> {
        resolve_user(Some(user), Some(PASSWD), Some(GROUP))
    }

    fn ru(uid: u32, gid: u32, add: &[u32], home: Option<&str>) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: add.to_vec(),
            home: home.map(str::to_string),
        }
    }

    #[test]
    fn empty_and_none_are_root_with_groups() {
        let root = ru(0, 0, &[10], Some("/root"));
        assert_eq!(r("").unwrap(), root);
        assert_eq!(resolve_user(None, Some(PASSWD), Some(GROUP)).unwrap(), root);
        assert_eq!(resolve_user(None, None, None).unwrap(), ru(0, 0, &[], None));
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(
            r("bob").unwrap(),
            ru(1000, 1000, &[10, 50], Some("/home/bob"))
        );
        assert_eq!(
            r("1000").unwrap(),
            ru(1000, 1000, &[10, 50], Some("/home/bob"))
        );
        assert_eq!(
            r("alice").unwrap(),
            ru(1001, 1002, &[50, 999], Some("/home/alice"))
        );
        assert_eq!(r("nohome").unwrap(), ru(1003, 1003, &[], None));
        assert_eq!(r("0").unwrap(), ru(0, 0, &[10], Some("/root")));
    }

    #[test]
    fn numeric_uid_not_in_passwd_is_allowed() {
        assert_eq!(r("4242").unwrap(), ru(4242, 0, &[], None));
        assert_eq!(
            resolve_user(Some("4242"), None, None).unwrap(),
            ru(4242, 0, &[], None)
        );
        assert_eq!(
            resolve_user(Some("4242:4343"), None, None).unwrap(),
            ru(4242, 4343, &[], None)
        );
    }

    #[test]
    fn explicit_groups() {
        // An explicit group replaces the primary group and drops supplementary groups.
        assert_eq!(
            r("bob:staff").unwrap(),
            ru(1000, 50, &[], Some("/home/bob"))
        );
        assert_eq!(r("bob:50").unwrap(), ru(1000, 50, &[], Some("/home/bob")));
        assert_eq!(
            r("bob:7777").unwrap(),
            ru(1000, 7777, &[], Some("/home/bob"))
        );
        assert_eq!(
            r("1000:docker").unwrap(),
            ru(1000, 999, &[], Some("/home/bob"))
        );
        assert_eq!(r("4242:wheel").unwrap(), ru(4242, 10, &[], None));
        // "bob:" is bob with his own groups.
        assert_eq!(
            r("bob:").unwrap(),
            ru(1000, 1000, &[10, 50], Some("/home/bob"))
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let e = r("mallory").unwrap_err();
        assert_eq!(e, UserError::UnknownUser("mallory".into()));
        let msg = e.to_string();
        assert!(
            msg.contains("mallory") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        assert_eq!(
            resolve_user(Some("bob"), None, None).unwrap_err(),
            UserError::UnknownUser("bob".into())
        );
        let e = r("bob:nogroup").unwrap_err();
        assert_eq!(e, UserError::UnknownGroup("nogroup".into()));
        assert!(e.to_string().contains("/etc/group"));
        assert_eq!(
            resolve_user(Some("0:wheel"), None, None).unwrap_err(),
            UserError::UnknownGroup("wheel".into())
        );
    }

    #[test]
    fn invalid_specs() {
        assert!(matches!(r("a:b:c"), Err(UserError::Invalid(_))));
        assert!(matches!(
            r("2147483648"),
            Err(UserError::IdOutOfRange { kind: "user", .. })
        ));
        assert!(matches!(
            r("0:99999999999999999999"),
            Err(UserError::IdOutOfRange { kind: "group", .. })
        ));
        assert_eq!(r("2147483647").unwrap().uid, 2147483647);
    }

    #[test]
    fn reads_files_and_contains_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/passwd"), PASSWD).unwrap();
        // Absolute symlink: must resolve inside the rootfs, not on the host.
        std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).unwrap();
        // A relative symlink escaping with ../.. stops at the rootfs.
        std::fs::write(dir.path().join("group"), "host:x:1:\n").unwrap();
        std::fs::write(root.join("group"), GROUP).unwrap();
        std::os::unix::fs::symlink("../../../group", root.join("etc/group")).unwrap();

        let (p, g) = read_image_user_files(&root);
        assert_eq!(p.as_deref(), Some(PASSWD));
        assert_eq!(g.as_deref(), Some(GROUP));
    }

    #[test]
    fn missing_files_loops_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(read_image_user_files(root), (None, None));
        std::fs::create_dir_all(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("group", root.join("etc/group")).unwrap();
        assert_eq!(read_image_user_files(root), (None, None));
    }

    #[test]
    fn host_absolute_symlink_does_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let host = dir.path().join("hostpasswd");
        std::fs::write(&host, "evil:x:0:0:::\n").unwrap();
        std::os::unix::fs::symlink(&host, root.join("etc/passwd")).unwrap();
        assert_eq!(read_image_user_files(&root).0, None);
    }
}
