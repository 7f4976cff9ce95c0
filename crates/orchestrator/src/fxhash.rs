//! A small, fast, non-cryptographic hasher for the scheduler's maps keyed by ids (the Firefox /
//! rustc "Fx" hash). The keys come from the store, not from an attacker-chosen stream, and the
//! scheduler is on the hot path, so SipHash's DoS resistance is not worth its cost here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx hasher: one multiply and rotate per word.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` using [`FxHasher`].
pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works_as_a_map_hasher() {
        let mut m: FxHashMap<&str, u32> = FxHashMap::default();
        for (i, k) in [
            "a",
            "node-0001",
            "node-0002",
            "a-much-longer-key-than-8-bytes",
        ]
        .iter()
        .enumerate()
        {
            m.insert(k, i as u32);
        }
        assert_eq!(m.get("node-0002"), Some(&2));
        assert_eq!(m.get("a-much-longer-key-than-8-bytes"), Some(&3));
        assert_eq!(m.get("node-0003"), None);
    }
}
