//! Identifiers: 25 lowercase base36 characters from 128 random bits, as Swarm's node ids.

use rand::RngCore;

/// A fresh random identifier (node ids, cluster ids, session ids).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let mut n = u128::from_be_bytes(bytes);
    let mut out = [b'0'; 25];
    for slot in out.iter_mut().rev() {
        let digit = (n % 36) as u8;
        *slot = if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        };
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh non-zero raft member id.
pub fn new_raft_id() -> u64 {
    loop {
        let id = rand::rng().next_u64();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_differ() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, new_id());
        assert_ne!(new_raft_id(), 0);
    }
}
