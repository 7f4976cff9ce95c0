//! Service discovery in a real network namespace: the embedded DNS server at 127.0.0.11 (asked
//! with busybox nslookup from inside the namespace, and over TCP), forwarding to an upstream
//! server in the test's own namespace, VIP rules and their DNAT, table changes and detach.
//! Needs root (skipped otherwise), `ip`, `nsenter`, `iptables` and /bin/busybox (busybox-static).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rswarm_agent::discovery::Discovery;
use rswarm_api::dispatcher::v1::{Endpoint, NetworkTable, NodeNetwork, ServiceRecord};
use tokio_util::sync::CancellationToken;

const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

/// A network namespace made with `ip netns add`, deleted on drop (even when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("rswarm-dns-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn nsenter_arg(&self) -> String {
        format!("--net={}", self.path().display())
    }

    /// Runs `program args` inside the namespace; its stdout (panics on failure).
    fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec![self.nsenter_arg(), program.to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run("nsenter", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `busybox nslookup -type=a NAME 127.0.0.11` says from inside the namespace: the
/// addresses of the answer, or `Err` with the output when it failed.
async fn nslookup(ns: &Netns, name: &str) -> Result<BTreeSet<Ipv4Addr>, String> {
    let child = tokio::process::Command::new("nsenter")
        .args([
            ns.nsenter_arg().as_str(),
            "/bin/busybox",
            "nslookup",
            "-type=a",
            name,
            "127.0.0.11",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(15), child)
        .await
        .map_err(|_| "nslookup hung".to_string())?
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(text);
    }
    // After the server's lines ("Server:", "Address: 127.0.0.11:53") come the answer's.
    let answer = text
        .split_once("Name:")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    Ok(answer
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .filter_map(|a| a.trim().parse().ok())
        .collect())
}

fn ips(v: &[&str]) -> BTreeSet<Ipv4Addr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn endpoint(task_id: &str, task_name: &str, service_id: &str, ip: &str, running: bool) -> Endpoint {
    Endpoint {
        task_id: task_id.into(),
        ip: ip.into(),
        node_addr: "192.0.2.1".into(),
        node_id: "node1".into(),
        task_name: task_name.into(),
        service_id: service_id.into(),
        running,
        aliases: Vec::new(),
    }
}

/// One network: web (VIP 10.0.0.2; web.1 at .3 and web.2 at .4, running unless `web2_gone`)
/// and db (dnsrr; db.1 at .5 running, db.2 at .6 not).
fn table(web2_gone: bool) -> NetworkTable {
    NetworkTable {
        networks: vec![NodeNetwork {
            id: "net1".into(),
            name: "front".into(),
            vni: 4096,
            subnet: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            endpoints: vec![
                endpoint("t1", "web.1", "s-web", "10.0.0.3", true),
                endpoint("t2", "web.2", "s-web", "10.0.0.4", !web2_gone),
                endpoint("t3", "db.1", "s-db", "10.0.0.5", true),
                endpoint("t4", "db.2", "s-db", "10.0.0.6", false),
            ],
            services: vec![
                ServiceRecord {
                    service_id: "s-web".into(),
                    name: "web".into(),
                    aliases: vec!["www".into()],
                    vip: "10.0.0.2".into(),
                },
                ServiceRecord {
                    service_id: "s-db".into(),
                    name: "db".into(),
                    aliases: vec![],
                    vip: String::new(),
                },
            ],
            ..NodeNetwork::default()
        }],
        data_path_port: 4789,
        ..NetworkTable::default()
    }
}

/// The answer of the test's upstream server to any A query.
fn upstream_reply(packet: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(packet).ok()?;
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    if let Some(first) = q.queries.first() {
        if first.query_type == RecordType::A {
            r.answers.push(Record::from_rdata(
                first.name.clone(),
                60,
                RData::A(A(UPSTREAM_ANSWER)),
            ));
        }
    }
    r.to_vec().ok()
}

/// A tiny upstream DNS server on 127.0.0.1 (UDP and TCP, same port) in the test's namespace:
/// every A query gets [`UPSTREAM_ANSWER`].
async fn upstream_server() -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            if let Some(r) = upstream_reply(&buf[..n]) {
                let _ = udp.send_to(&r, peer).await;
            }
        }
    });
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let Ok(len) = s.read_u16().await else { return };
                let mut q = vec![0u8; usize::from(len)];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                if let Some(r) = upstream_reply(&q) {
                    let mut frame = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                    frame.extend_from_slice(&r);
                    let _ = s.write_all(&frame).await;
                }
            });
        }
    });
    addr
}

/// Runs blocking `f` on a thread inside the namespace at `path` (off the runtime's threads).
async fn in_netns<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    })
    .await
    .unwrap()
}

/// An A query for `name` over TCP to 127.0.0.11:53 from inside the namespace: the answer's
/// addresses.
async fn tcp_lookup(ns: &Netns, name: &str) -> Result<BTreeSet<Ipv4Addr>, String> {
    let name = name.to_string();
    in_netns(ns.path(), move || {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
        let q = q.to_vec().unwrap();
        let addr: SocketAddr = "127.0.0.11:53".parse().unwrap();
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(&q);
        s.write_all(&frame).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut r).map_err(|e| e.to_string())?;
        let r = Message::from_vec(&r).map_err(|e| e.to_string())?;
        assert_eq!(r.metadata.message_type, MessageType::Response);
        Ok(r.answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    })
    .await
}

/// An A query for `name` over UDP to 127.0.0.11:53 from inside the namespace (one try; busybox
/// nslookup would retry for seconds when nothing listens).
async fn udp_query(ns: &Netns, name: &str, wait: Duration) -> std::io::Result<Message> {
    let name = name.to_string();
    in_netns(ns.path(), move || {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.connect("127.0.0.11:53")?;
        s.set_read_timeout(Some(wait))?;
        s.send(&q.to_vec().unwrap())?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(Message::from_vec(&buf[..n]).unwrap())
    })
    .await
}

/// Whether a query to 127.0.0.11:53 is refused (nothing listens there).
async fn udp_refused(ns: &Netns) -> bool {
    matches!(udp_query(ns, "web", Duration::from_millis(300)).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn vip_rules(ns: &Netns) -> Vec<String> {
    ns.exec("iptables", &["-w", "-t", "nat", "-S", "RSWARM-VIP"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

fn hooks(ns: &Netns) -> usize {
    ns.exec("iptables", &["-w", "-t", "nat", "-S", "OUTPUT"])
        .lines()
        .filter(|l| *l == "-A OUTPUT -j RSWARM-VIP")
        .count()
}

async fn eventually<T: std::fmt::Debug>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn skip() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping the discovery integration test: it needs root");
        return true;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipping the discovery integration test: /bin/busybox is missing (apt-get install busybox-static)");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_serves_dns_and_vips_in_a_netns() {
    if skip() {
        return;
    }
    let ns = Netns::new("a");
    let upstream = upstream_server().await;
    let cancel = CancellationToken::new();
    let discovery = Discovery::new(vec![upstream], cancel.clone());
    discovery.set_table(Arc::new(table(false)));
    discovery
        .attach("c1", &ns.path(), vec!["net1".into()])
        .await
        .unwrap();

    // Names of the cluster.
    assert_eq!(nslookup(&ns, "web").await.unwrap(), ips(&["10.0.0.2"]));
    assert_eq!(nslookup(&ns, "WWW.").await.unwrap(), ips(&["10.0.0.2"]));
    assert_eq!(
        nslookup(&ns, "tasks.web").await.unwrap(),
        ips(&["10.0.0.3", "10.0.0.4"])
    );
    assert_eq!(nslookup(&ns, "db").await.unwrap(), ips(&["10.0.0.5"]));
    assert_eq!(nslookup(&ns, "web.2").await.unwrap(), ips(&["10.0.0.4"]));
    // Another name goes to the upstream server, from the test's namespace.
    assert_eq!(
        nslookup(&ns, "example.test").await.unwrap(),
        BTreeSet::from([UPSTREAM_ANSWER])
    );
    // Over TCP too.
    assert_eq!(
        tcp_lookup(&ns, "tasks.web").await.unwrap(),
        ips(&["10.0.0.3", "10.0.0.4"])
    );
    assert_eq!(
        tcp_lookup(&ns, "example.test").await.unwrap(),
        BTreeSet::from([UPSTREAM_ANSWER])
    );

    // VIP rules: two backends, the first with probability 1/2, hooked from OUTPUT once.
    let rules = vip_rules(&ns);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules[0].contains("-d 10.0.0.2/32"), "{rules:?}");
    assert!(rules[0].contains("--probability 0.5"), "{rules:?}");
    assert!(rules[0].ends_with("--to-destination 10.0.0.3"), "{rules:?}");
    assert!(!rules[1].contains("--probability"), "{rules:?}");
    assert!(rules[1].ends_with("--to-destination 10.0.0.4"), "{rules:?}");
    assert_eq!(hooks(&ns), 1);

    // Attaching again changes nothing.
    discovery
        .attach("c1", &ns.path(), vec!["net1".into()])
        .await
        .unwrap();
    assert_eq!(hooks(&ns), 1);
    assert_eq!(vip_rules(&ns), rules);

    // web.2 stops: the rules and the names follow.
    discovery.set_table(Arc::new(table(true)));
    let rules = eventually("the VIP rules to drop web.2", async || {
        let r = vip_rules(&ns);
        (r.len() == 1).then_some(r)
    })
    .await;
    assert!(rules[0].contains("-d 10.0.0.2/32"), "{rules:?}");
    assert!(rules[0].ends_with("--to-destination 10.0.0.3"), "{rules:?}");
    assert!(!rules[0].contains("--probability"), "{rules:?}");
    assert_eq!(hooks(&ns), 1);
    assert_eq!(
        nslookup(&ns, "tasks.web").await.unwrap(),
        ips(&["10.0.0.3"])
    );

    // The VIP carries a connection to its task: give the namespace web.1's address and connect
    // to the VIP from inside.
    ns.exec("ip", &["addr", "add", "10.0.0.3/24", "dev", "lo"]);
    let peer = in_netns(ns.path(), || {
        let listener = TcpListener::bind("10.0.0.3:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let vip = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), port));
        let mut client = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        client.peer_addr().unwrap()
    })
    .await;
    assert_eq!(peer.ip(), Ipv4Addr::new(10, 0, 0, 2));

    // Detached: nothing answers at 127.0.0.11 any more.
    discovery.detach("c1");
    eventually("the DNS server to stop", async || {
        udp_refused(&ns).await.then_some(())
    })
    .await;
    assert!(tcp_lookup(&ns, "web").await.is_err());
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_without_upstream_answers_servfail_for_other_names() {
    if skip() {
        return;
    }
    let ns = Netns::new("b");
    let cancel = CancellationToken::new();
    let discovery = Discovery::new(Vec::new(), cancel.clone());
    discovery.set_table(Arc::new(table(false)));
    discovery
        .attach("c2", &ns.path(), vec!["net1".into()])
        .await
        .unwrap();
    let r = udp_query(&ns, "example.test", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let r = udp_query(&ns, "web", Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    // A container on no network of the table sees none of its names.
    discovery
        .attach("c2", &ns.path(), vec!["other".into()])
        .await
        .unwrap();
    let r = udp_query(&ns, "web", Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(vip_rules(&ns).is_empty());
    // Cancelling the discovery stops every server.
    cancel.cancel();
    eventually("the DNS server to stop", async || {
        udp_refused(&ns).await.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_attach_fails_cleanly_without_a_namespace() {
    if skip() {
        return;
    }
    let cancel = CancellationToken::new();
    let discovery = Discovery::new(Vec::new(), cancel.clone());
    let missing = PathBuf::from(format!(
        "/run/netns/rswarm-dns-missing-{}",
        std::process::id()
    ));
    let err = discovery
        .attach("c1", &missing, vec!["net1".into()])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot enter the network namespace"),
        "{err}"
    );
    cancel.cancel();
}
