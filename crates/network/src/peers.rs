//! Remote endpoints of an overlay network and how the kernel's entries for them are reconciled
//! (pure).
//!
//! Each remote endpoint (a container on another node) needs two entries on the network's VXLAN
//! device: an FDB entry MAC → the remote node's VTEP (`bridge fdb … self`), so frames for it are
//! tunnelled to the right node, and a permanent neighbour entry IP → MAC, so the device answers
//! ARP for it (proxy mode). The MAC is always [`mac_for_ip`](crate::mac_for_ip) of the IP, so
//! both entries follow from the pair (IP, VTEP). [`diff_peers`] compares the full desired set
//! with what the kernel holds and says what to write and what to delete.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::ipam::mac_bytes_for_ip;

/// A remote endpoint of an overlay network: a container address and the VTEP (node address)
/// that reaches it. Its MAC is [`mac_for_ip`](crate::mac_for_ip)`(ip)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// The endpoint's address on the overlay subnet.
    pub ip: Ipv4Addr,
    /// The address of the node that hosts it (its VXLAN tunnel endpoint).
    pub vtep: Ipv4Addr,
}

/// A unicast FDB entry of a VXLAN device as the kernel holds it: frames for `mac` go to `dst`.
/// One MAC may have several entries (one per destination) when someone appended them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The destination MAC address.
    pub mac: [u8; 6],
    /// The remote VTEP the frames are sent to.
    pub dst: Ipv4Addr,
}

/// A permanent neighbour (ARP) entry of a VXLAN device: `ip` is at `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighEntry {
    /// The endpoint's address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// What [`diff_peers`] says to do. Apply the adds first (with replace semantics: an add for a
/// MAC or IP that has an entry overwrites it), then the deletes, ignoring deletes of entries
/// that are gone already.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// FDB entries to write (replace).
    pub add_fdb: Vec<FdbEntry>,
    /// FDB entries to delete.
    pub del_fdb: Vec<FdbEntry>,
    /// Neighbour entries to write (replace).
    pub add_neigh: Vec<NeighEntry>,
    /// Neighbour entries to delete (by IP).
    pub del_neigh: Vec<NeighEntry>,
    /// How many of the adds overwrite an existing entry (wrong VTEP or wrong MAC).
    pub replaced: usize,
}

impl PeerPlan {
    /// Whether the kernel already matches the desired set.
    pub fn is_empty(&self) -> bool {
        self.add_fdb.is_empty()
            && self.del_fdb.is_empty()
            && self.add_neigh.is_empty()
            && self.del_neigh.is_empty()
    }

    /// The plan's entry counts.
    pub fn changes(&self) -> PeerChanges {
        let writes = self.add_fdb.len() + self.add_neigh.len();
        PeerChanges {
            added: writes - self.replaced.min(writes),
            replaced: self.replaced,
            removed: self.del_fdb.len() + self.del_neigh.len(),
        }
    }
}

/// What a reconciliation did, counted in kernel entries (FDB and neighbour entries together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerChanges {
    /// Entries written where there was none.
    pub added: usize,
    /// Entries overwritten because they pointed at the wrong VTEP or MAC.
    pub replaced: usize,
    /// Entries deleted because no desired peer needs them.
    pub removed: usize,
}

impl PeerChanges {
    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.replaced == 0 && self.removed == 0
    }
}

/// Whether an FDB entry for `mac` can belong to a peer: unicast and not all-zeros. Entries for
/// other MACs (the all-zeros default destination, multicast) are never ours and are left alone.
pub fn is_peer_mac(mac: &[u8; 6]) -> bool {
    mac != &[0; 6] && mac[0] & 1 == 0
}

/// Compares the FULL desired set of remote peers with the kernel's current FDB and neighbour
/// entries of one VXLAN device.
///
/// * Each desired peer needs FDB `mac_for_ip(ip) → vtep` and neighbour `ip → mac_for_ip(ip)`.
///   A missing entry is added; an entry pointing at another VTEP (the endpoint moved) or at
///   another MAC is overwritten by an add (replace), without a delete.
/// * FDB entries for MACs no desired peer has, and neighbour entries for IPs no desired peer
///   has, are deleted. When one MAC has several FDB destinations, the unwanted ones are
///   deleted; if none is the desired VTEP, the replace overwrites the first one (the kernel's
///   first, which its dump lists first) and the others are deleted.
/// * Duplicates in `desired` (same IP twice): the last one wins.
/// * FDB entries whose MAC is not a peer MAC ([`is_peer_mac`]) are ignored.
///
/// Adds are in the order of the desired IPs (ascending), deletes in the order of the input.
pub fn diff_peers(desired: &[Peer], fdb: &[FdbEntry], neigh: &[NeighEntry]) -> PeerPlan {
    // IP -> VTEP, last duplicate wins.
    let want: BTreeMap<Ipv4Addr, Ipv4Addr> = desired.iter().map(|p| (p.ip, p.vtep)).collect();
    let want_mac: BTreeMap<[u8; 6], Ipv4Addr> = want
        .iter()
        .map(|(ip, vtep)| (mac_bytes_for_ip(*ip), *vtep))
        .collect();
    let mut plan = PeerPlan::default();

    // FDB: the current destinations of each MAC, in dump order, without duplicates.
    let mut have: Vec<([u8; 6], Vec<Ipv4Addr>)> = Vec::new();
    for e in fdb.iter().filter(|e| is_peer_mac(&e.mac)) {
        match have.iter_mut().find(|(mac, _)| *mac == e.mac) {
            Some((_, dsts)) if dsts.contains(&e.dst) => {}
            Some((_, dsts)) => dsts.push(e.dst),
            None => have.push((e.mac, vec![e.dst])),
        }
    }
    for (ip, vtep) in &want {
        let mac = mac_bytes_for_ip(*ip);
        match have.iter().find(|(m, _)| *m == mac) {
            Some((_, dsts)) if dsts.contains(vtep) => {}
            Some(_) => {
                plan.add_fdb.push(FdbEntry { mac, dst: *vtep });
                plan.replaced += 1;
            }
            None => plan.add_fdb.push(FdbEntry { mac, dst: *vtep }),
        }
    }
    for (mac, dsts) in &have {
        let stale: Vec<Ipv4Addr> = match want_mac.get(mac) {
            None => dsts.clone(),
            Some(vtep) if dsts.contains(vtep) => {
                dsts.iter().copied().filter(|d| d != vtep).collect()
            }
            // The replace overwrites the first destination.
            Some(_) => dsts.iter().skip(1).copied().collect(),
        };
        plan.del_fdb
            .extend(stale.into_iter().map(|dst| FdbEntry { mac: *mac, dst }));
    }

    // Neighbours: one entry per IP (the first, should the input repeat one).
    let mut have_neigh: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    for e in neigh {
        have_neigh.entry(e.ip).or_insert(e.mac);
    }
    for ip in want.keys() {
        let mac = mac_bytes_for_ip(*ip);
        match have_neigh.get(ip) {
            Some(m) if *m == mac => {}
            Some(_) => {
                plan.add_neigh.push(NeighEntry { ip: *ip, mac });
                plan.replaced += 1;
            }
            None => plan.add_neigh.push(NeighEntry { ip: *ip, mac }),
        }
    }
    let mut deleted = Vec::new();
    for e in neigh {
        if !want.contains_key(&e.ip) && !deleted.contains(&e.ip) {
            deleted.push(e.ip);
            plan.del_neigh.push(*e);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(addr: &str, vtep: &str) -> Peer {
        Peer {
            ip: ip(addr),
            vtep: ip(vtep),
        }
    }

    fn fdb(addr: &str, vtep: &str) -> FdbEntry {
        FdbEntry {
            mac: mac_bytes_for_ip(ip(addr)),
            dst: ip(vtep),
        }
    }

    fn neigh(addr: &str) -> NeighEntry {
        NeighEntry {
            ip: ip(addr),
            mac: mac_bytes_for_ip(ip(addr)),
        }
    }

    #[test]
    fn empty() {
        let plan = diff_peers(&[], &[], &[]);
        assert!(plan.is_empty());
        assert_eq!(plan.changes(), PeerChanges::default());
        assert!(plan.changes().is_empty());
    }

    #[test]
    fn all_new() {
        let desired = [peer("10.0.0.3", "192.0.2.2"), peer("10.0.0.2", "192.0.2.3")];
        let plan = diff_peers(&desired, &[], &[]);
        // Sorted by IP.
        assert_eq!(
            plan.add_fdb,
            [fdb("10.0.0.2", "192.0.2.3"), fdb("10.0.0.3", "192.0.2.2")]
        );
        assert_eq!(plan.add_neigh, [neigh("10.0.0.2"), neigh("10.0.0.3")]);
        assert_eq!(plan.add_neigh[0].mac, [2, 0x42, 10, 0, 0, 2]);
        assert!(plan.del_fdb.is_empty() && plan.del_neigh.is_empty());
        assert_eq!(
            plan.changes(),
            PeerChanges {
                added: 4,
                replaced: 0,
                removed: 0
            }
        );
    }

    #[test]
    fn in_sync_is_a_no_op() {
        let desired = [peer("10.0.0.2", "192.0.2.3")];
        let plan = diff_peers(
            &desired,
            &[fdb("10.0.0.2", "192.0.2.3")],
            &[neigh("10.0.0.2")],
        );
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn all_stale() {
        let current_fdb = [fdb("10.0.0.2", "192.0.2.3"), fdb("10.0.0.4", "192.0.2.4")];
        let current_neigh = [neigh("10.0.0.2"), neigh("10.0.0.4")];
        let plan = diff_peers(&[], &current_fdb, &current_neigh);
        assert!(plan.add_fdb.is_empty() && plan.add_neigh.is_empty());
        assert_eq!(plan.del_fdb, current_fdb);
        assert_eq!(plan.del_neigh, current_neigh);
        assert_eq!(plan.changes().removed, 4);
    }

    #[test]
    fn moved_endpoint_is_replaced_without_delete() {
        // Same IP, now behind another VTEP.
        let plan = diff_peers(
            &[peer("10.0.0.2", "192.0.2.9")],
            &[fdb("10.0.0.2", "192.0.2.3")],
            &[neigh("10.0.0.2")],
        );
        assert_eq!(plan.add_fdb, [fdb("10.0.0.2", "192.0.2.9")]);
        assert!(plan.del_fdb.is_empty());
        assert!(plan.add_neigh.is_empty() && plan.del_neigh.is_empty());
        assert_eq!(
            plan.changes(),
            PeerChanges {
                added: 0,
                replaced: 1,
                removed: 0
            }
        );
    }

    #[test]
    fn mac_mismatch_is_replaced() {
        let wrong = NeighEntry {
            ip: ip("10.0.0.2"),
            mac: [2, 0x42, 1, 2, 3, 4],
        };
        let plan = diff_peers(
            &[peer("10.0.0.2", "192.0.2.3")],
            &[fdb("10.0.0.2", "192.0.2.3")],
            &[wrong],
        );
        assert_eq!(plan.add_neigh, [neigh("10.0.0.2")]);
        assert!(plan.del_neigh.is_empty() && plan.add_fdb.is_empty() && plan.del_fdb.is_empty());
        assert_eq!(plan.changes().replaced, 1);
        // The FDB entry of that foreign MAC (if any) is not desired and goes.
        let foreign = FdbEntry {
            mac: [2, 0x42, 1, 2, 3, 4],
            dst: ip("192.0.2.3"),
        };
        let plan = diff_peers(
            &[peer("10.0.0.2", "192.0.2.3")],
            &[fdb("10.0.0.2", "192.0.2.3"), foreign],
            &[wrong],
        );
        assert_eq!(plan.del_fdb, [foreign]);
    }

    #[test]
    fn extra_destinations_of_one_mac() {
        // Desired VTEP present among several: the others go.
        let current = [
            fdb("10.0.0.2", "192.0.2.3"),
            fdb("10.0.0.2", "192.0.2.4"),
            fdb("10.0.0.2", "192.0.2.5"),
        ];
        let plan = diff_peers(&[peer("10.0.0.2", "192.0.2.4")], &current, &[]);
        assert!(plan.add_fdb.is_empty());
        assert_eq!(plan.del_fdb, [current[0], current[2]]);
        // Desired VTEP absent: the replace takes the first, the rest are deleted.
        let plan = diff_peers(&[peer("10.0.0.2", "192.0.2.9")], &current, &[]);
        assert_eq!(plan.add_fdb, [fdb("10.0.0.2", "192.0.2.9")]);
        assert_eq!(plan.del_fdb, [current[1], current[2]]);
        assert_eq!(plan.replaced, 1);
        // Repeated identical entries count once.
        let plan = diff_peers(&[], &[current[0], current[0]], &[]);
        assert_eq!(plan.del_fdb, [current[0]]);
    }

    #[test]
    fn duplicates_in_desired_last_wins() {
        let desired = [peer("10.0.0.2", "192.0.2.3"), peer("10.0.0.2", "192.0.2.4")];
        let plan = diff_peers(&desired, &[], &[]);
        assert_eq!(plan.add_fdb, [fdb("10.0.0.2", "192.0.2.4")]);
        assert_eq!(plan.add_neigh.len(), 1);
        let plan = diff_peers(
            &desired,
            &[fdb("10.0.0.2", "192.0.2.4")],
            &[neigh("10.0.0.2")],
        );
        assert!(plan.is_empty());
    }

    #[test]
    fn non_peer_macs_are_left_alone() {
        let zero = FdbEntry {
            mac: [0; 6],
            dst: ip("192.0.2.3"),
        };
        let multicast = FdbEntry {
            mac: [0x01, 0, 0x5e, 0, 0, 1],
            dst: ip("192.0.2.3"),
        };
        assert!(!is_peer_mac(&zero.mac) && !is_peer_mac(&multicast.mac));
        assert!(is_peer_mac(&mac_bytes_for_ip(ip("10.0.0.2"))));
        let plan = diff_peers(&[], &[zero, multicast], &[]);
        assert!(plan.is_empty());
    }

    #[test]
    fn mixed() {
        let desired = [
            peer("10.0.0.2", "192.0.2.3"), // in sync
            peer("10.0.0.3", "192.0.2.4"), // moved from .3
            peer("10.0.0.5", "192.0.2.3"), // new
        ];
        let current_fdb = [
            fdb("10.0.0.2", "192.0.2.3"),
            fdb("10.0.0.3", "192.0.2.3"),
            fdb("10.0.0.4", "192.0.2.4"), // gone
        ];
        let current_neigh = [neigh("10.0.0.2"), neigh("10.0.0.3"), neigh("10.0.0.4")];
        let plan = diff_peers(&desired, &current_fdb, &current_neigh);
        assert_eq!(
            plan.add_fdb,
            [fdb("10.0.0.3", "192.0.2.4"), fdb("10.0.0.5", "192.0.2.3")]
        );
        assert_eq!(plan.del_fdb, [fdb("10.0.0.4", "192.0.2.4")]);
        assert_eq!(plan.add_neigh, [neigh("10.0.0.5")]);
        assert_eq!(plan.del_neigh, [neigh("10.0.0.4")]);
        assert_eq!(
            plan.changes(),
            PeerChanges {
                added: 2,
                replaced: 1,
                removed: 2
            }
        );
        // Applying the plan converges: a second diff is empty.
        let after_fdb = [
            fdb("10.0.0.2", "192.0.2.3"),
            fdb("10.0.0.3", "192.0.2.4"),
            fdb("10.0.0.5", "192.0.2.3"),
        ];
        let after_neigh = [neigh("10.0.0.2"), neigh("10.0.0.3"), neigh("10.0.0.5")];
        assert!(diff_peers(&desired, &after_fdb, &after_neigh).is_empty());
    }
}
