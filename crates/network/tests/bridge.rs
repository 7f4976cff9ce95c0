//! End-to-end tests of the bridge in throwaway network namespaces (root only).
//!
//! Every test makes its own "test host" namespace and runs the [`Bridge`] on threads that
//! entered it, so nothing touches the initial namespace. "Containers" and a "client host" are
//! more namespaces made with `ip netns add`; all are deleted by [`Netns`]'s `Drop`.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{enter_netns, is_root, Netns};
use rswarm_network::{
    parse_publish, setup_loopback, AttachRequest, Attachment, Bridge, BridgeConfig, NetworkError,
    PortMapping, Protocol,
};

/// A test host namespace: lo up and, like a host running Docker, FORWARD policy DROP.
fn test_host() -> Netns {
    let h = Netns::new("rswnt-");
    h.ok(&["ip", "link", "set", "lo", "up"]);
    h.ok(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
    h
}

fn config(tag: &str) -> BridgeConfig {
    BridgeConfig::for_state_dir(Path::new(&format!("/tmp/rswnt-state-{tag}")))
}

fn request(id: &str, ctr: &Netns, ports: Vec<PortMapping>) -> AttachRequest {
    AttachRequest {
        container_id: id.to_string(),
        netns: ctr.path(),
        ports,
        used_ips: Vec::new(),
        used_host_ports: Vec::new(),
    }
}

fn ping(from: &Netns, ip: Ipv4Addr) {
    let target = ip.to_string();
    for _ in 0..3 {
        if from.cmd(&["ping", "-c1", "-W1", &target]).status.success() {
            return;
        }
    }
    panic!("{} cannot ping {ip}", from.name);
}

fn nat_rules(h: &Netns, cfg: &BridgeConfig) -> String {
    h.ok(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-S",
        &format!("{}-DNAT", cfg.chain_prefix),
    ])
}

fn fwd_rules(h: &Netns, cfg: &BridgeConfig) -> String {
    h.ok(&[
        "iptables",
        "-w",
        "-t",
        "filter",
        "-S",
        &format!("{}-FWD", cfg.chain_prefix),
    ])
}

/// Binds 0.0.0.0:80 in the current thread's namespace. The previous server's listener is closed
/// before a second bind, but a process another test forks at that moment holds a copy of its fd
/// until it execs: a bind in that window finds the port in use, so it is retried for a while.
fn bind_80() -> TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind("0.0.0.0:80") {
            Ok(l) => return l,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind :80 in the container: {e}"),
        }
    }
}

/// Serves one TCP connection on port 80 inside `ctr`: answers "hello" and reports the peer.
fn serve_once(ctr: &Netns) -> mpsc::Receiver<SocketAddr> {
    let path = ctr.path();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (peer_tx, peer_rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&path);
        let listener = bind_80();
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(b"hello").unwrap();
        // Closed before reporting: the next serve_once may bind :80 again at once.
        drop(conn);
        drop(listener);
        let _ = peer_tx.send(peer);
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    peer_rx
}

fn fetch(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = String::new();
    conn.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn containers_get_addresses_routes_and_reach_each_other() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let (c1, c2) = (Netns::new("rswnt-"), Netns::new("rswnt-"));
    let cfg = config("ping");
    let (a1, a2) = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let a1 = bridge
            .attach(request("ctr-one", &c1, vec![]))
            .await
            .unwrap();
        let mut req = request("ctr-two", &c2, vec![]);
        req.used_ips = vec![Ipv4Addr::new(10, 213, 0, 3)];
        let a2 = bridge.attach(req).await.unwrap();
        (a1, a2)
    });
    assert_eq!(a1.ip, Ipv4Addr::new(10, 213, 0, 2));
    assert_eq!(a2.ip, Ipv4Addr::new(10, 213, 0, 4), "skips used_ips");
    assert_eq!(a1.gateway, Ipv4Addr::new(10, 213, 0, 1));
    assert_eq!(a1.prefix_len, 16);
    assert_eq!(a1.mac, "02:42:0a:d5:00:02");

    let addr = c1.ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("10.213.0.2/16"), "{addr}");
    let link = c1.ok(&["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(
        link.contains("02:42:0a:d5:00:02") && link.contains("UP"),
        "{link}"
    );
    let routes = c1.ok(&["ip", "-4", "route"]);
    assert!(
        routes.contains("default via 10.213.0.1 dev eth0"),
        "{routes}"
    );
    let lo = c1.ok(&["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    let br = host.ok(&["ip", "-o", "link", "show", "master", &cfg.bridge_name]);
    assert!(
        br.contains(&a1.host_veth) && br.contains(&a2.host_veth),
        "{br}"
    );
    assert_eq!(
        host.ok(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    // Bridged across FORWARD policy DROP, and routed to the gateway.
    ping(&c1, a2.ip);
    ping(&c2, a1.ip);
    ping(&c1, a1.gateway);
    let fwd = host.ok(&["iptables", "-w", "-S", "FORWARD"]);
    assert!(fwd.contains("-P FORWARD DROP"), "policy untouched: {fwd}");
    let masq = host.ok(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(
        masq.contains(&format!("-s 10.213.0.0/16 ! -o {}", cfg.bridge_name)),
        "{masq}"
    );
}

#[test]
fn published_port_keeps_the_client_source_address() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let ctr = Netns::new("rswnt-");
    let client = Netns::new("rswnt-");
    // The client host hangs off the test host by a veth pair on 198.18.0.0/24.
    host.ok(&[
        "ip",
        "link",
        "add",
        "kh0",
        "type",
        "veth",
        "peer",
        "name",
        "kc0",
        "netns",
        &client.name,
    ]);
    host.ok(&["ip", "addr", "add", "198.18.0.1/24", "dev", "kh0"]);
    host.ok(&["ip", "link", "set", "kh0", "up"]);
    client.ok(&["ip", "addr", "add", "198.18.0.2/24", "dev", "kc0"]);
    client.ok(&["ip", "link", "set", "kc0", "up"]);
    client.ok(&["ip", "link", "set", "lo", "up"]);

    let cfg = config("publish");
    let mut ports = parse_publish("8080:80").unwrap();
    ports.extend(parse_publish("127.0.0.1::80").unwrap());
    let (bridge, att) = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let att = bridge.attach(request("web", &ctr, ports)).await.unwrap();
        (bridge, att)
    });
    assert_eq!(att.ports[0].host_port, 8080);
    let ephemeral = att.ports[1].host_port;
    assert_ne!(ephemeral, 0, "host port 0 resolved");

    let rules = nat_rules(&host, &cfg);
    assert!(
        rules.contains(
            "--dport 8080 -m comment --comment web -j DNAT --to-destination 10.213.0.2:80"
        ),
        "{rules}"
    );

    // From the client host: the container sees the client's own address.
    let peer = serve_once(&ctr);
    let got = client.enter(|| fetch("198.18.0.1:8080".parse().unwrap()));
    assert_eq!(got, "hello");
    let seen = peer.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.ip(), "198.18.0.2".parse::<std::net::IpAddr>().unwrap());

    // From the test host itself, through 127.0.0.1 and the ephemeral port.
    let peer = serve_once(&ctr);
    let got = host.enter(|| fetch(SocketAddr::from(([127, 0, 0, 1], ephemeral))));
    assert_eq!(got, "hello");
    peer.recv_timeout(Duration::from_secs(5)).unwrap();

    // Port taken by that container: refused for the next one.
    let other = Netns::new("rswnt-");
    let err = host.block_on(|| async {
        let mut req = request("web2", &other, parse_publish("8080:80").unwrap());
        req.used_host_ports = vec![(Protocol::Tcp, 8080)];
        bridge.attach(req).await.unwrap_err()
    });
    assert!(
        err.to_string()
            .contains("host port 8080/tcp is already in use"),
        "{err}"
    );
}

#[test]
fn port_bound_on_the_host_is_refused_and_attach_rolls_back() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let ctr = Netns::new("rswnt-");
    let cfg = config("inuse");
    let err = host.block_on(|| async {
        // A host process holds 8080 in the test host's namespace.
        let _holder = TcpListener::bind("0.0.0.0:8080").unwrap();
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let ports = parse_publish("9090:90").unwrap().into_iter();
        let ports = ports.chain(parse_publish("8080:80").unwrap()).collect();
        bridge
            .attach(request("busy", &ctr, ports))
            .await
            .unwrap_err()
    });
    assert!(matches!(
        err,
        NetworkError::PortInUse {
            port: 8080,
            protocol: Protocol::Tcp
        }
    ));
    assert_eq!(
        err.to_string(),
        "host port 8080/tcp is already in use: publish another host port or stop what holds it"
    );
    // Nothing left behind: no veth, no eth0, no rules.
    let veths = host.ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "{veths}");
    assert!(!ctr.cmd(&["ip", "link", "show", "eth0"]).status.success());

    // A failure after the veth exists (the chosen netns already has an eth0) rolls back too.
    ctr.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let err = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let ports = parse_publish("7070:70").unwrap();
        bridge
            .attach(request("dup", &ctr, ports))
            .await
            .unwrap_err()
    });
    assert!(matches!(err, NetworkError::Eth0Exists(_)), "{err}");
    let veths = host.ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "{veths}");
    assert!(!nat_rules(&host, &cfg).contains("dup"));
}

#[test]
fn detach_removes_rules_and_veth_and_is_idempotent() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let (c1, c2) = (Netns::new("rswnt-"), Netns::new("rswnt-"));
    let cfg = config("detach");
    let (bridge, a1) = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let a1 = bridge
            .attach(request("one", &c1, parse_publish("8001:80").unwrap()))
            .await
            .unwrap();
        bridge
            .attach(request("two", &c2, parse_publish("8002:80/udp").unwrap()))
            .await
            .unwrap();
        (bridge, a1)
    });
    assert!(nat_rules(&host, &cfg).contains("--comment one"));
    assert!(fwd_rules(&host, &cfg).contains("--comment one"));
    host.block_on(|| async {
        bridge.detach(&a1).await.unwrap();
        bridge.detach(&a1).await.unwrap();
    });
    let (nat, fwd) = (nat_rules(&host, &cfg), fwd_rules(&host, &cfg));
    assert!(!nat.contains("--comment one") && !fwd.contains("--comment one"));
    assert!(nat.contains("--comment two") && fwd.contains("--comment two"));
    assert!(!host
        .cmd(&["ip", "link", "show", &a1.host_veth])
        .status
        .success());
    assert!(!c1.cmd(&["ip", "link", "show", "eth0"]).status.success());
    // Its address is free again.
    let again =
        host.block_on(|| async { bridge.attach(request("one", &c1, vec![])).await.unwrap() });
    assert_eq!(again.ip, a1.ip);
}

#[test]
fn restore_removes_stale_rules_and_readds_missing_ones() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let (c1, c2) = (Netns::new("rswnt-"), Netns::new("rswnt-"));
    let cfg = config("restore");
    let (a1, _a2) = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let a1 = bridge
            .attach(request("keep", &c1, parse_publish("8001:80").unwrap()))
            .await
            .unwrap();
        let a2 = bridge
            .attach(request("gone", &c2, parse_publish("8002:80").unwrap()))
            .await
            .unwrap();
        (a1, a2)
    });
    // The agent restarts (a new Bridge); someone flushed our filter chain meanwhile.
    host.ok(&["iptables", "-w", "-F", &format!("{}-FWD", cfg.chain_prefix)]);
    let live: Vec<Attachment> = vec![a1.clone()];
    host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        bridge.restore(&live).await.unwrap();
        bridge.restore(&live).await.unwrap();
    });
    let (nat, fwd) = (nat_rules(&host, &cfg), fwd_rules(&host, &cfg));
    assert!(!nat.contains("--comment gone"), "{nat}");
    assert_eq!(nat.matches("--comment keep").count(), 1, "{nat}");
    assert_eq!(fwd.matches("--comment keep").count(), 1, "{fwd}");
    // Base rules are not duplicated by repeated ensures.
    let forward = host.ok(&["iptables", "-w", "-S", "FORWARD"]);
    assert_eq!(forward.matches(&cfg.bridge_name).count(), 3, "{forward}");
    ping(&c1, a1.gateway);
}

#[test]
fn concurrent_attaches_get_distinct_addresses() {
    if !is_root() {
        return;
    }
    let host = test_host();
    let ctrs: Vec<Netns> = (0..4).map(|_| Netns::new("rswnt-")).collect();
    let cfg = config("concurrent");
    let atts = host.block_on(|| async {
        let bridge = Bridge::new(cfg.clone()).await.unwrap();
        let attaches = ctrs.iter().enumerate().map(|(i, c)| {
            let bridge = bridge.clone();
            let req = request(&format!("c{i}"), c, parse_publish("80").unwrap());
            async move { bridge.attach(req).await }
        });
        futures::future::try_join_all(attaches).await.unwrap()
    });
    let mut ips: Vec<Ipv4Addr> = atts.iter().map(|a| a.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4);
    let mut ports: Vec<u16> = atts.iter().map(|a| a.ports[0].host_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    let forward = host.ok(&["iptables", "-w", "-S", "FORWARD"]);
    assert_eq!(forward.matches(&cfg.bridge_name).count(), 3, "{forward}");
    ping(&ctrs[0], atts[3].ip);
}

#[test]
fn loopback_comes_up() {
    if !is_root() {
        return;
    }
    let ns = Netns::new("rswnt-");
    assert!(!ns.ok(&["ip", "-o", "link", "show", "lo"]).contains(",UP"));
    setup_loopback(&ns.path()).unwrap();
    assert!(ns.ok(&["ip", "-o", "link", "show", "lo"]).contains(",UP"));
    ns.ok(&["ping", "-c1", "-W1", "127.0.0.1"]);
    let err = setup_loopback(Path::new("/run/netns/rswnt-does-not-exist")).unwrap_err();
    assert!(
        err.to_string().contains("cannot use network namespace"),
        "{err}"
    );
}
