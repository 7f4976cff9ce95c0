//! End-to-end tests of the VXLAN overlay in throwaway network namespaces (root only).
//!
//! Each test builds a lab: a "switch" namespace holding a Linux bridge, and two or three "host"
//! namespaces joined to it by veth pairs with addresses on a /24 of 198.18.0.0/15 (one per
//! test). An [`Overlay`] runs "on a host" on a thread that entered the host's namespace, with a
//! current-thread runtime of its own. "Containers" are more namespaces made with `ip netns
//! add`. [`Netns`]'s `Drop` deletes every namespace (and so every device) even when a test
//! panics. The initial namespace is never touched: commands run through `nsenter --net`.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{enter_netns, is_root, ok_in, Netns, NsDir};
use rswarm_network::{
    mac_for_ip, NetworkError, Overlay, OverlayAttachment, OverlayNetwork, Peer, PeerChanges,
};

/// The device tag every test agent uses (each runs in its own host namespace).
const TAG: &str = "7e57";

/// A namespace with `lo` up.
fn netns() -> Netns {
    let ns = Netns::new("rso");
    ns.ok(&["ip", "link", "set", "lo", "up"]);
    ns
}

/// A switch namespace with a bridge and hosts hanging off it, each with its VTEP address
/// `198.18.<octet>.<i+1>/24` on `u0` (MTU 1500).
struct Lab {
    /// Each host's overlay namespace directory (an agent's `<state dir>/overlay`).
    dirs: Vec<NsDir>,
    hosts: Vec<Netns>,
    vteps: Vec<Ipv4Addr>,
    // Dropped last: the switch outlives the hosts' veths (either order cleans up).
    switch: Netns,
}

impl Lab {
    fn new(hosts: usize, octet: u8) -> Lab {
        let switch = netns();
        switch.ok(&["ip", "link", "add", "sw", "type", "bridge"]);
        switch.ok(&["ip", "link", "set", "sw", "up"]);
        let mut lab = Lab {
            dirs: Vec::new(),
            hosts: Vec::new(),
            vteps: Vec::new(),
            switch,
        };
        for i in 0..hosts {
            let h = netns();
            let port = format!("s{i}");
            h.ok(&[
                "ip",
                "link",
                "add",
                "u0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lab.switch.name,
            ]);
            lab.switch
                .ok(&["ip", "link", "set", &port, "master", "sw", "up"]);
            let vtep = Ipv4Addr::new(198, 18, octet, i as u8 + 1);
            h.ok(&["ip", "addr", "add", &format!("{vtep}/24"), "dev", "u0"]);
            h.ok(&["ip", "link", "set", "u0", "up"]);
            lab.hosts.push(h);
            lab.vteps.push(vtep);
            lab.dirs.push(NsDir::new());
        }
        // The underlay works before any overlay exists.
        ping(&lab.hosts[0], lab.vteps[hosts - 1]);
        lab
    }

    fn net(&self, host: usize, vni: u32, subnet: &str) -> OverlayNetwork {
        OverlayNetwork::new(vni, subnet.parse().unwrap(), self.vteps[host])
    }

    /// An overlay agent of host `host` (a new one is a restarted agent: same namespace dir).
    fn overlay(&self, host: usize) -> Overlay {
        Overlay::new(TAG, self.dirs[host].path()).unwrap()
    }
}

/// Runs a command inside network `vni`'s namespace of `ov`; returns stdout, without the
/// `link-netnsid N` that `bridge fdb` adds there (the VXLAN device's parent is in the host's
/// namespace).
fn in_ov(ov: &Overlay, vni: u32, args: &[&str]) -> String {
    let out = ok_in(&ov.netns_path(vni), args);
    out.lines()
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            let mut kept = Vec::new();
            let mut i = 0;
            while i < words.len() {
                if words[i] == "link-netnsid" {
                    i += 2;
                } else {
                    kept.push(words[i]);
                    i += 1;
                }
            }
            kept.join(" ") + "\n"
        })
        .collect()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ping(from: &Netns, target: Ipv4Addr) {
    ping_args(from, target, &[]);
}

fn ping_args(from: &Netns, target: Ipv4Addr, extra: &[&str]) {
    let target = target.to_string();
    let mut last = None;
    for _ in 0..3 {
        let mut args = vec!["ping", "-c1", "-W1"];
        args.extend_from_slice(extra);
        args.push(&target);
        let out = from.cmd(&args);
        if out.status.success() {
            return;
        }
        last = Some(out);
    }
    let out = last.unwrap();
    panic!(
        "{} cannot ping {target} {extra:?}: {}{}",
        from.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn no_ping(from: &Netns, target: Ipv4Addr) {
    let t = target.to_string();
    let out = from.cmd(&["ping", "-c2", "-i0.2", "-W1", &t]);
    assert!(
        !out.status.success(),
        "{} unexpectedly reached {target}",
        from.name
    );
}

/// Serves one TCP connection on `port` inside `ctr`: answers "hello" and reports the peer.
fn serve_once(ctr: &Netns, port: u16) -> mpsc::Receiver<SocketAddr> {
    let path = ctr.path();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (peer_tx, peer_rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&path);
        let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind in the container");
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().expect("accept");
        // Closed before reporting, so the port is free again when the caller goes on.
        drop(listener);
        conn.write_all(b"hello").unwrap();
        let _ = peer_tx.send(peer);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    peer_rx
}

/// TCP from `from` to `to:port` (served by [`serve_once`]); checks the answer and the source.
fn tcp(from: &Netns, from_ip: Ipv4Addr, to: &Netns, to_ip: Ipv4Addr) {
    let peer = serve_once(to, 8080);
    let got = from.enter(|| {
        let addr = SocketAddr::from((to_ip, 8080));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = String::new();
        conn.read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(got, "hello");
    let seen = peer.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.ip(), std::net::IpAddr::V4(from_ip));
}

/// Attaches `ctr` as `eth1` with `addr` on host `h`.
fn attach(
    lab: &Lab,
    h: usize,
    ov: &Overlay,
    net: &OverlayNetwork,
    id: &str,
    ctr: &Netns,
    addr: &str,
) -> OverlayAttachment {
    let path = ctr.path();
    lab.hosts[h].block_on(|| async {
        ov.attach(net, id, &path, "eth1", ip(addr))
            .await
            .unwrap_or_else(|e| panic!("attach {id}: {e}"))
    })
}

fn set_peers(lab: &Lab, h: usize, ov: &Overlay, vni: u32, peers: &[Peer]) -> PeerChanges {
    lab.hosts[h].block_on(|| async { ov.set_peers(vni, peers).await.unwrap() })
}

fn peer(addr: &str, vtep: Ipv4Addr) -> Peer {
    Peer { ip: ip(addr), vtep }
}

fn forward_rules(h: &Netns) -> String {
    h.ok(&["iptables", "-w", "-S", "FORWARD"])
}

#[test]
fn containers_on_two_hosts_talk_over_the_overlay() {
    if !is_root() {
        return;
    }
    let lab = Lab::new(2, 41);
    let (ov1, ov2) = (lab.overlay(0), lab.overlay(1));
    let (n1, n2) = (
        lab.net(0, 4100, "10.41.0.0/24"),
        lab.net(1, 4100, "10.41.0.0/24"),
    );
    let (c1, c2) = (netns(), netns());
    let a1 = attach(&lab, 0, &ov1, &n1, "c1", &c1, "10.41.0.2");
    let a2 = attach(&lab, 1, &ov2, &n2, "c2", &c2, "10.41.0.3");
    assert_eq!(a1.mac, "02:42:0a:29:00:02");
    assert_eq!(a1.prefix_len, 24);
    assert_eq!(a1.ifname, "eth1");

    // Devices in the network's namespace: bridge and vxlan with MTU 1450, vxlan enslaved,
    // learning off, proxy on; none in the host's namespace.
    let h1 = &lab.hosts[0];
    let (br, vx) = (ov1.bridge_name(4100), ov1.vxlan_name(4100));
    assert_eq!(br, "rb7e57001004");
    assert_eq!(vx, "rx7e57001004");
    assert_eq!(ov1.netns_path(4100), lab.dirs[0].path().join("4100"));
    let ov = |args: &[&str]| in_ov(&ov1, 4100, args);
    let vxd = ov(&["ip", "-d", "-o", "link", "show", "dev", &vx]);
    for want in [
        "mtu 1450",
        &format!("master {br}"),
        "vxlan id 4100",
        "local 198.18.41.1",
        "dstport 4789",
        "nolearning",
        "proxy",
        "state UNKNOWN",
    ] {
        assert!(vxd.contains(want), "{want:?} missing: {vxd}");
    }
    let brd = ov(&["ip", "-o", "link", "show", "dev", &br]);
    assert!(brd.contains("mtu 1450") && brd.contains(",UP"), "{brd}");
    let bra = ov(&["ip", "-4", "-o", "addr", "show", "dev", &br]);
    assert!(bra.trim().is_empty(), "the bridge has no address: {bra}");
    let ports = ov(&["ip", "-o", "link", "show", "master", &br]);
    assert!(
        ports.contains(&a1.host_veth) && ports.contains(&vx),
        "{ports}"
    );
    assert!(ports.contains("mtu 1450"), "{ports}");
    let host_links = h1.ok(&["ip", "-o", "link", "show"]);
    assert!(
        !host_links.contains(&br) && !host_links.contains(&vx) && !host_links.contains(": rv"),
        "{host_links}"
    );
    // Bridged frames skip iptables there (when br_netfilter is around at all).
    let brnf = ok_in(
        &ov1.netns_path(4100),
        &[
            "sh",
            "-c",
            "cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0",
        ],
    );
    assert_eq!(brnf.trim(), "0");

    // The container end: address, MAC, MTU, up; no default route.
    let eth1 = c1.ok(&["ip", "-o", "link", "show", "dev", "eth1"]);
    assert!(
        eth1.contains("mtu 1450") && eth1.contains("02:42:0a:29:00:02") && eth1.contains(",UP"),
        "{eth1}"
    );
    let addr = c1.ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth1"]);
    assert!(addr.contains("10.41.0.2/24"), "{addr}");
    let routes = c1.ok(&["ip", "-4", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(c1
        .ok(&["ip", "-o", "link", "show", "dev", "lo"])
        .contains(",UP"));

    // No peers yet: nothing gets across.
    no_ping(&c1, a2.ip);
    let changes = set_peers(&lab, 0, &ov1, 4100, &[peer("10.41.0.3", lab.vteps[1])]);
    assert_eq!(
        changes,
        PeerChanges {
            added: 2,
            replaced: 0,
            removed: 0
        }
    );
    set_peers(&lab, 1, &ov2, 4100, &[peer("10.41.0.2", lab.vteps[0])]);
    ping(&c1, a2.ip);
    ping(&c2, a1.ip);
    // 1400-byte packets with DF, and the full 1450, pass; 1451 doesn't fit the interface.
    ping_args(&c1, a2.ip, &["-M", "do", "-s", "1372"]);
    ping_args(&c1, a2.ip, &["-M", "do", "-s", "1422"]);
    let big = c1.cmd(&["ping", "-c1", "-W1", "-M", "do", "-s", "1423", "10.41.0.3"]);
    assert!(!big.status.success());
    tcp(&c1, a1.ip, &c2, a2.ip);
    tcp(&c2, a2.ip, &c1, a1.ip);

    // Idempotent: same MTU, peers in sync, no host rule.
    let (mtu, again) = h1.block_on(|| async {
        let mtu = ov1.ensure_network(&n1).await.unwrap();
        let again = ov1
            .set_peers(4100, &[peer("10.41.0.3", lab.vteps[1])])
            .await
            .unwrap();
        (mtu, again)
    });
    assert_eq!(mtu, 1450);
    assert!(again.is_empty(), "{again:?}");
    let fwd = forward_rules(h1);
    assert!(!fwd.contains("-A FORWARD"), "{fwd}");
    // A fresh agent (restart) finds its networks and ensures without duplicating anything.
    let restarted = lab.overlay(0);
    let nets = h1.block_on(|| async {
        restarted.ensure_network(&n1).await.unwrap();
        restarted.networks().await.unwrap()
    });
    assert_eq!(nets, vec![4100]);
    assert_eq!(
        ov(&["ip", "-o", "link", "show", "type", "vxlan"])
            .lines()
            .count(),
        1
    );
    ping(&c1, a2.ip);

    // Detach is idempotent and takes the container's interface away.
    h1.block_on(|| async {
        ov1.detach(&a1).await.unwrap();
        ov1.detach(&a1).await.unwrap();
    });
    assert!(!c1.cmd(&["ip", "link", "show", "eth1"]).status.success());
    // And the container can be attached again.
    let a1 = attach(&lab, 0, &ov1, &n1, "c1", &c1, "10.41.0.2");
    ping(&c2, a1.ip);
}

#[test]
fn networks_are_isolated() {
    if !is_root() {
        return;
    }
    let lab = Lab::new(2, 42);
    let (ov1, ov2) = (lab.overlay(0), lab.overlay(1));
    let (a1n, a2n) = (
        lab.net(0, 4100, "10.51.0.0/24"),
        lab.net(1, 4100, "10.51.0.0/24"),
    );
    let (b1n, b2n) = (
        lab.net(0, 4200, "10.52.0.0/24"),
        lab.net(1, 4200, "10.52.0.0/24"),
    );
    let (ca1, ca2, cb1, cb2) = (netns(), netns(), netns(), netns());
    attach(&lab, 0, &ov1, &a1n, "ca1", &ca1, "10.51.0.2");
    attach(&lab, 1, &ov2, &a2n, "ca2", &ca2, "10.51.0.3");
    attach(&lab, 0, &ov1, &b1n, "cb1", &cb1, "10.52.0.2");
    attach(&lab, 1, &ov2, &b2n, "cb2", &cb2, "10.52.0.3");
    set_peers(&lab, 0, &ov1, 4100, &[peer("10.51.0.3", lab.vteps[1])]);
    set_peers(&lab, 1, &ov2, 4100, &[peer("10.51.0.2", lab.vteps[0])]);
    set_peers(&lab, 0, &ov1, 4200, &[peer("10.52.0.3", lab.vteps[1])]);
    set_peers(&lab, 1, &ov2, 4200, &[peer("10.52.0.2", lab.vteps[0])]);

    ping(&ca1, ip("10.51.0.3"));
    ping(&cb1, ip("10.52.0.3"));
    ping(&cb2, ip("10.52.0.2"));
    tcp(&cb1, ip("10.52.0.2"), &cb2, ip("10.52.0.3"));

    // A container of network B that tries hard to reach network A: an on-link route and even
    // the right MAC in its ARP cache. Its frames stay on B's bridge and VNI.
    for (from, target) in [
        (&cb1, "10.51.0.3"),
        (&cb1, "10.51.0.2"),
        (&cb2, "10.51.0.2"),
    ] {
        from.ok(&["ip", "route", "replace", "10.51.0.0/24", "dev", "eth1"]);
        from.ok(&[
            "ip",
            "neigh",
            "replace",
            target,
            "lladdr",
            &mac_for_ip(ip(target)),
            "dev",
            "eth1",
            "nud",
            "permanent",
        ]);
        no_ping(from, ip(target));
    }
    // Network A works the same in the other direction.
    ca1.ok(&["ip", "route", "replace", "10.52.0.0/24", "dev", "eth1"]);
    no_ping(&ca1, ip("10.52.0.3"));
    // Both networks still work.
    ping(&ca2, ip("10.51.0.2"));
    ping(&cb1, ip("10.52.0.3"));
    let nets = lab.hosts[0].block_on(|| async { ov1.networks().await.unwrap() });
    assert_eq!(nets, vec![4100, 4200]);
}

#[test]
fn set_peers_replaces_moved_and_removes_stale_entries() {
    if !is_root() {
        return;
    }
    let lab = Lab::new(3, 43);
    let ovs: Vec<Overlay> = (0..3).map(|h| lab.overlay(h)).collect();
    let nets: Vec<OverlayNetwork> = (0..3).map(|h| lab.net(h, 4300, "10.43.0.0/24")).collect();
    let (c1, c2) = (netns(), netns());
    attach(&lab, 0, &ovs[0], &nets[0], "c1", &c1, "10.43.0.2");
    let a2 = attach(&lab, 1, &ovs[1], &nets[1], "c2", &c2, "10.43.0.3");
    // A second network on host 0 whose entries set_peers(4300) must not touch.
    let other = lab.net(0, 4301, "10.44.0.0/24");
    lab.hosts[0].block_on(|| async { ovs[0].ensure_network(&other).await.unwrap() });
    set_peers(&lab, 0, &ovs[0], 4301, &[peer("10.44.0.7", lab.vteps[2])]);

    let stale = peer("10.43.0.9", lab.vteps[1]);
    set_peers(
        &lab,
        0,
        &ovs[0],
        4300,
        &[peer("10.43.0.3", lab.vteps[1]), stale],
    );
    set_peers(&lab, 1, &ovs[1], 4300, &[peer("10.43.0.2", lab.vteps[0])]);
    ping(&c1, ip("10.43.0.3"));

    let vx = ovs[0].vxlan_name(4300);
    let fdb = || in_ov(&ovs[0], 4300, &["bridge", "fdb", "show", "dev", &vx]);
    let neigh = || in_ov(&ovs[0], 4300, &["ip", "neigh", "show", "dev", &vx]);
    let mac3 = mac_for_ip(ip("10.43.0.3"));
    let mac9 = mac_for_ip(ip("10.43.0.9"));
    let f = fdb();
    assert!(
        f.contains(&format!("{mac3} dst {} self permanent", lab.vteps[1])),
        "{f}"
    );
    assert!(f.contains(&mac9), "{f}");
    assert!(neigh().contains(&format!("10.43.0.9 lladdr {mac9} PERMANENT")));

    // Junk somebody else left: a stray FDB entry and a stray neighbour, which go, and an
    // all-zeros (flood) entry, which is not a peer's and stays. (A unicast MAC can't have a
    // second destination: the kernel's `append` only adds to all-zeros and multicast MACs.)
    let mac60 = mac_for_ip(ip("10.43.0.60"));
    let fdb_add = |mac: &str, dst: &str, op: &str| {
        in_ov(
            &ovs[0],
            4300,
            &[
                "bridge",
                "fdb",
                op,
                mac,
                "dev",
                &vx,
                "dst",
                dst,
                "self",
                "permanent",
            ],
        );
    };
    fdb_add(&mac60, &lab.vteps[1].to_string(), "add");
    fdb_add("00:00:00:00:00:00", "198.18.43.200", "append");
    in_ov(
        &ovs[0],
        4300,
        &[
            "ip",
            "neigh",
            "add",
            "10.43.0.50",
            "lladdr",
            "02:42:0a:2b:00:32",
            "dev",
            &vx,
            "nud",
            "permanent",
        ],
    );

    // c2 goes away on host 1 and comes back with the same address on host 2.
    lab.hosts[1].block_on(|| async { ovs[1].detach(&a2).await.unwrap() });
    let c2b = netns();
    attach(&lab, 2, &ovs[2], &nets[2], "c2b", &c2b, "10.43.0.3");
    set_peers(&lab, 2, &ovs[2], 4300, &[peer("10.43.0.2", lab.vteps[0])]);
    let changes = set_peers(&lab, 0, &ovs[0], 4300, &[peer("10.43.0.3", lab.vteps[2])]);
    // .3's entry is replaced (new VTEP, no delete); .9's FDB and neighbour entries and the
    // two stray entries are deleted.
    assert_eq!(
        changes,
        PeerChanges {
            added: 0,
            replaced: 1,
            removed: 4
        }
    );
    let f = fdb();
    assert!(
        f.contains(&format!("{mac3} dst {} self permanent", lab.vteps[2])),
        "{f}"
    );
    assert!(
        !f.contains(&format!("dst {} ", lab.vteps[1])),
        "no entry points at host 1 any more: {f}"
    );
    assert!(!f.contains(&mac9) && !f.contains(&mac60), "{f}");
    assert!(
        f.contains("00:00:00:00:00:00 dst 198.18.43.200 self permanent"),
        "{f}"
    );
    let n = neigh();
    assert!(
        n.contains(&format!("10.43.0.3 lladdr {mac3} PERMANENT")),
        "{n}"
    );
    assert!(!n.contains("10.43.0.9") && !n.contains("10.43.0.50"), "{n}");
    ping(&c1, ip("10.43.0.3"));
    tcp(&c1, ip("10.43.0.2"), &c2b, ip("10.43.0.3"));

    // Moved again (back to host 1, a new container there): a pure replace, no delete.
    let c2c = netns();
    attach(&lab, 1, &ovs[1], &nets[1], "c2c", &c2c, "10.43.0.3");
    lab.hosts[2].block_on(|| async { ovs[2].remove_network(4300).await.unwrap() });
    let changes = set_peers(&lab, 0, &ovs[0], 4300, &[peer("10.43.0.3", lab.vteps[1])]);
    assert_eq!(
        changes,
        PeerChanges {
            added: 0,
            replaced: 1,
            removed: 0
        }
    );
    let f = fdb();
    assert!(
        f.contains(&format!("{mac3} dst {} self permanent", lab.vteps[1])),
        "{f}"
    );
    assert!(!f.contains(&format!("dst {} ", lab.vteps[2])), "{f}");
    ping(&c1, ip("10.43.0.3"));

    // The other network's entries were left alone throughout.
    let other_vx = ovs[0].vxlan_name(4301);
    let of = in_ov(&ovs[0], 4301, &["bridge", "fdb", "show", "dev", &other_vx]);
    assert!(
        of.contains(&format!(
            "{} dst {} self permanent",
            mac_for_ip(ip("10.44.0.7")),
            lab.vteps[2]
        )),
        "{of}"
    );
    let on = in_ov(&ovs[0], 4301, &["ip", "neigh", "show", "dev", &other_vx]);
    assert!(on.contains("10.44.0.7"), "{on}");

    // The empty set removes everything of the network, and only that.
    let changes = set_peers(&lab, 0, &ovs[0], 4300, &[]);
    assert_eq!(changes.removed, 2, "{changes:?}");
    let f = fdb();
    assert_eq!(
        f.matches(" dst ").count(),
        1,
        "only the flood entry is left: {f}"
    );
    assert!(f.contains("00:00:00:00:00:00 dst 198.18.43.200"), "{f}");
    assert!(!neigh().contains("PERMANENT"), "{}", neigh());
    assert!(in_ov(&ovs[0], 4301, &["bridge", "fdb", "show", "dev", &other_vx]).contains(" dst "));
}

/// The value of a bridge netfilter sysctl in the initial namespace (`None` when absent).
fn root_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/net/bridge/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn works_with_forward_drop_and_br_netfilter() {
    if !is_root() {
        return;
    }
    let root_before = root_sysctl("bridge-nf-call-iptables");
    let lab = Lab::new(2, 44);
    let has_brnf = |h: &Netns| {
        h.cmd(&["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"])
            .status
            .success()
    };
    if !has_brnf(&lab.hosts[0]) {
        // Built as a module and not loaded: loading it turns bridge-nf-call-* on in every
        // namespace, so put the initial namespace back to the behaviour it had (off).
        let loaded = Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .is_ok_and(|s| s.success());
        if loaded && root_before.is_none() {
            for name in [
                "bridge-nf-call-iptables",
                "bridge-nf-call-ip6tables",
                "bridge-nf-call-arptables",
            ] {
                let _ = std::fs::write(format!("/proc/sys/net/bridge/{name}"), "0\n");
            }
        }
    }
    // Since Linux 5.3 the bridge-nf-call-* sysctls are per network namespace.
    let per_netns = has_brnf(&lab.hosts[0]);
    for h in &lab.hosts {
        h.ok(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
        if per_netns {
            h.ok(&["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]);
            assert_eq!(
                h.ok(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"])
                    .trim(),
                "1"
            );
        } else {
            eprintln!(
                "bridge-nf-call-iptables is not per-namespace here; testing FORWARD DROP only"
            );
        }
    }
    let (ov1, ov2) = (lab.overlay(0), lab.overlay(1));
    let (n1, n2) = (
        lab.net(0, 4400, "10.45.0.0/24"),
        lab.net(1, 4400, "10.45.0.0/24"),
    );
    let (c1, c2) = (netns(), netns());
    attach(&lab, 0, &ov1, &n1, "c1", &c1, "10.45.0.2");
    attach(&lab, 1, &ov2, &n2, "c2", &c2, "10.45.0.3");
    set_peers(&lab, 0, &ov1, 4400, &[peer("10.45.0.3", lab.vteps[1])]);
    set_peers(&lab, 1, &ov2, 4400, &[peer("10.45.0.2", lab.vteps[0])]);
    ping(&c1, ip("10.45.0.3"));
    ping_args(&c2, ip("10.45.0.2"), &["-M", "do", "-s", "1372"]);
    tcp(&c1, ip("10.45.0.2"), &c2, ip("10.45.0.3"));
    for (h, host) in lab.hosts.iter().enumerate() {
        // Nothing in the host's firewall was needed or changed: the overlay's bridging happens
        // in the network's own namespace, which the host's FORWARD chain never sees.
        let fwd = forward_rules(host);
        assert!(fwd.contains("-P FORWARD DROP"), "policy untouched: {fwd}");
        assert!(!fwd.contains("-A FORWARD"), "no rule added on h{h}: {fwd}");
        if per_netns {
            assert_eq!(
                host.ok(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"])
                    .trim(),
                "1",
                "the host's br_netfilter setting is left alone"
            );
        }
    }
    let root_after = root_sysctl("bridge-nf-call-iptables");
    match root_before {
        Some(v) => assert_eq!(root_after, Some(v), "the initial namespace is unchanged"),
        // We loaded the module: the initial namespace must still not call iptables.
        None => assert!(matches!(root_after.as_deref(), None | Some("0"))),
    }
}

#[test]
fn remove_network_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let lab = Lab::new(2, 45);
    let (ov1, ov2) = (lab.overlay(0), lab.overlay(1));
    let n1 = lab.net(0, 4500, "10.46.0.0/24");
    let n2 = lab.net(1, 4500, "10.46.0.0/24");
    let keep = lab.net(0, 4501, "10.47.0.0/24");
    let (c1, c2) = (netns(), netns());
    attach(&lab, 0, &ov1, &n1, "c1", &c1, "10.46.0.2");
    attach(&lab, 1, &ov2, &n2, "c2", &c2, "10.46.0.3");
    lab.hosts[0].block_on(|| async { ov1.ensure_network(&keep).await.unwrap() });
    set_peers(&lab, 0, &ov1, 4500, &[peer("10.46.0.3", lab.vteps[1])]);
    set_peers(&lab, 1, &ov2, 4500, &[peer("10.46.0.2", lab.vteps[0])]);
    ping(&c1, ip("10.46.0.3"));

    for (h, ov) in [(0, &ov1), (1, &ov2)] {
        lab.hosts[h].block_on(|| async {
            ov.remove_network(4500).await.unwrap();
            ov.remove_network(4500).await.unwrap();
        });
    }
    for (h, ov) in [(0, &ov1), (1, &ov2)] {
        // The namespace is gone (and with it every device of the network).
        assert!(!ov.netns_path(4500).exists(), "h{h}");
        let links = lab.hosts[h].ok(&["ip", "-o", "link", "show"]);
        assert!(
            !links.contains("7e57001194") && !links.contains(": rv"),
            "{links}"
        );
    }
    let kept = in_ov(&ov1, 4501, &["ip", "-o", "link", "show"]);
    assert!(
        kept.contains("rx7e57001195"),
        "the other network stays: {kept}"
    );
    assert!(!c1.cmd(&["ip", "link", "show", "eth1"]).status.success());
    let nets = lab.hosts[0].block_on(|| async { ov1.networks().await.unwrap() });
    assert_eq!(nets, vec![4501]);
    lab.hosts[0].block_on(|| async { ov1.remove_network(4501).await.unwrap() });
    assert!(std::fs::read_dir(lab.dirs[0].path())
        .unwrap()
        .next()
        .is_none());
    let nets = lab.hosts[0].block_on(|| async { ov1.networks().await.unwrap() });
    assert!(nets.is_empty());
}

#[test]
fn errors_are_clear_and_attach_rolls_back() {
    if !is_root() {
        return;
    }
    let lab = Lab::new(1, 46);
    let h = &lab.hosts[0];
    let ov = lab.overlay(0);
    let ctr = netns();
    let path = ctr.path();
    let (missing, not_local, too_big, exists, mtu) = h.block_on(|| async {
        let missing = ov.set_peers(4600, &[]).await.unwrap_err();
        let mut net = lab.net(0, 4600, "10.48.0.0/24");
        net.local_ip = ip("198.18.46.99");
        let not_local = ov.ensure_network(&net).await.unwrap_err();
        let mut net = lab.net(0, 4600, "10.48.0.0/24");
        net.mtu = 1451;
        let too_big = ov.ensure_network(&net).await.unwrap_err();
        // The namespace has an eth1 already: the attach fails and leaves no veth.
        let net = lab.net(0, 4600, "10.48.0.0/24");
        let exists = ov
            .attach(&net, "c1", &path, "lo", ip("10.48.0.2"))
            .await
            .unwrap_err();
        let exists2 = {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", path.display()))
                .args([
                    "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
                ])
                .output()
                .unwrap();
            assert!(out.status.success());
            ov.attach(&net, "c1", &path, "eth1", ip("10.48.0.2"))
                .await
                .unwrap_err()
        };
        let mtu = rswarm_network::underlay_mtu(lab.vteps[0]).await.unwrap();
        (missing, not_local, too_big, (exists, exists2), mtu)
    });
    assert!(
        matches!(missing, NetworkError::OverlayMissing(4600)),
        "{missing}"
    );
    assert!(
        missing.to_string().contains("call ensure_network"),
        "{missing}"
    );
    assert!(
        matches!(not_local, NetworkError::VtepNotLocal(_)),
        "{not_local}"
    );
    assert!(
        too_big.to_string().contains("use at most 1450"),
        "{too_big}"
    );
    assert!(
        matches!(exists.0, NetworkError::InvalidOverlay(_)),
        "{}",
        exists.0
    );
    assert!(
        matches!(exists.1, NetworkError::IfnameExists { .. }),
        "{}",
        exists.1
    );
    assert!(exists
        .1
        .to_string()
        .contains("already has an interface eth1"));
    assert_eq!(mtu, 1500);
    let veths = in_ov(&ov, 4600, &["ip", "-o", "link", "show", "type", "veth"]);
    assert!(!veths.contains("rv"), "rolled back: {veths}");
    assert!(!h.ok(&["ip", "-o", "link", "show"]).contains(": rv"));
    let err = rswarm_network::Overlay::new("BAD!", lab.dirs[0].path()).unwrap_err();
    assert!(err.to_string().contains("device tag"), "{err}");
}
