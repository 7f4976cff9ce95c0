//! Per-key in-flight locks (one download/unpack per digest) and pins that keep garbage
//! collection away from what a running pull or load is about to use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// A map of async mutexes created on demand and dropped when nobody holds or waits for them.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of a [`KeyedLocks`].
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.map().entry(key.to_string()).or_default().clone()
    }

    /// Waits for `key`. Returns whether the caller had to wait for someone else.
    pub(crate) async fn lock(&self, key: &str) -> (KeyGuard<'_>, bool) {
        let mutex = self.entry(key);
        let (guard, waited) = match mutex.clone().try_lock_owned() {
            Ok(g) => (g, false),
            Err(_) => (mutex.lock_owned().await, true),
        };
        (
            KeyGuard {
                locks: self,
                key: key.to_string(),
                guard: Some(guard),
            },
            waited,
        )
    }

    /// As [`KeyedLocks::lock`], from blocking code (never from an async task).
    pub(crate) fn lock_blocking(&self, key: &str) -> KeyGuard<'_> {
        let mutex = self.entry(key);
        let guard = mutex.blocking_lock_owned();
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map();
        if let Some(m) = map.get(&self.key) {
            // only the map itself holds it: nobody waits
            if Arc::strong_count(m) == 1 {
                map.remove(&self.key);
            }
        }
    }
}

/// Reference counts of pinned keys (`layer:<chain id>`, `blob:<digest>`).
#[derive(Default)]
pub(crate) struct Pins {
    counts: Mutex<HashMap<String, usize>>,
}

/// Keeps keys pinned until dropped.
pub(crate) struct PinGuard<'a> {
    pins: &'a Pins,
    keys: Vec<String>,
}

impl Pins {
    /// Locks the table: while held, no pin can be added or dropped.
    pub(crate) fn table(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `keys` until the guard is dropped.
    pub(crate) fn pin(&self, keys: Vec<String>) -> PinGuard<'_> {
        let mut table = self.table();
        for k in &keys {
            *table.entry(k.clone()).or_default() += 1;
        }
        PinGuard { pins: self, keys }
    }
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        let mut table = self.pins.table();
        for k in &self.keys {
            if let Some(c) = table.get_mut(k) {
                *c -= 1;
                if *c == 0 {
                    table.remove(k);
                }
            }
        }
    }
}

/// A temporary file or directory removed on drop unless [`TempPath::keep`] was called.
pub(crate) struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> TempPath {
        TempPath { path, armed: true }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path was renamed away: do not remove it.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let res = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&self.path),
            Ok(_) => std::fs::remove_file(&self.path),
            Err(_) => Ok(()),
        };
        if let Err(e) = res {
            tracing::warn!(path = %self.path.display(), %e, "could not remove a temporary path");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_locker_waits_and_map_empties() {
        let locks = KeyedLocks::default();
        let (g, waited) = locks.lock("a").await;
        assert!(!waited);
        let locks_ref = &locks;
        let second = async move { locks_ref.lock("a").await.1 };
        let release = async move {
            tokio::task::yield_now().await;
            drop(g);
        };
        let (waited, ()) = tokio::join!(second, release);
        assert!(waited);
        assert!(locks.map().is_empty());
    }

    #[test]
    fn pins_count() {
        let pins = Pins::default();
        let a = pins.pin(vec!["x".into()]);
        let b = pins.pin(vec!["x".into(), "y".into()]);
        assert_eq!(pins.table().get("x"), Some(&2));
        drop(a);
        drop(b);
        assert!(pins.table().is_empty());
    }
}
