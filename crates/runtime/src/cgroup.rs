//! Where a node's containers live in the cgroup hierarchies. Every node has its own parent,
//! derived from its state dir, so several agents on one machine never share one.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The name of the cgroup parent of the containers of the node whose state dir is `state_dir`:
/// `rswarm-<FNV-1a of the canonical path, 8 hex>` (FNV because it is stable across runs and Rust
/// versions; `DefaultHasher` is not).
pub fn parent_for_state_dir(state_dir: &Path) -> String {
    let dir = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rswarm-{:08x}", h as u32)
}

/// The directories of the cgroup `name` (a top-level cgroup) that exist now, in every mounted
/// hierarchy: the v2 root and each v1 controller.
pub fn hierarchy_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_names_are_stable_and_differ_by_dir() {
        let a = parent_for_state_dir(Path::new("/nonexistent/a/state"));
        assert_eq!(a, parent_for_state_dir(Path::new("/nonexistent/a/state")));
        assert_ne!(a, parent_for_state_dir(Path::new("/nonexistent/b/state")));
        assert!(
            a.starts_with("rswarm-") && a.len() == "rswarm-".len() + 8,
            "{a}"
        );
    }
}
