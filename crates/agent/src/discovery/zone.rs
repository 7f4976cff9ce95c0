//! The names the embedded DNS server answers itself (pure): built once per network table and
//! shared by every attached container, each of which sees only the networks it is on.
//!
//! Per network, as Docker's resolver: a service's name and aliases resolve to its virtual IP (or,
//! with endpoint mode dnsrr, to the addresses of its running tasks), `tasks.<name or alias>` to
//! the addresses of its running tasks, and a task's name (`web.3`) and `<task name>.<task id>` to
//! the task's address while it runs; a standalone container's aliases (`network connect
//! --alias`) resolve to the addresses of the running containers that have them. A name also
//! resolves as `<name>.<network name>` on that network.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use rswarm_api::dispatcher::v1::{NetworkTable, NodeNetwork};

/// The names of one network.
#[derive(Debug, Default)]
struct NetworkNames {
    /// The network's name, lowercase.
    name: String,
    internal: bool,
    /// Lowercase name → addresses. Empty: the name is the cluster's but nothing runs behind it
    /// (answered with no records rather than forwarded).
    names: HashMap<String, Vec<Ipv4Addr>>,
}

/// Every network's names, by network id.
#[derive(Debug, Default)]
pub(crate) struct Zone {
    networks: HashMap<String, NetworkNames>,
}

/// `name` as it is looked up: lowercase, without the trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A service record's virtual IP (`10.0.0.2` or `10.0.0.2/24`); `None` for dnsrr (empty).
fn parse_vip(vip: &str) -> Option<Ipv4Addr> {
    vip.split('/').next().and_then(|ip| ip.trim().parse().ok())
}

fn network_names(n: &NodeNetwork) -> NetworkNames {
    let running = |service_id: &str| -> Vec<Ipv4Addr> {
        n.endpoints
            .iter()
            .filter(|e| e.running && e.service_id == service_id)
            .filter_map(|e| e.ip.parse().ok())
            .collect()
    };
    let mut names: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    // Services first: their names win over task names, the first service over later ones.
    for s in &n.services {
        let tasks = running(&s.service_id);
        let answer = parse_vip(&s.vip).map_or_else(|| tasks.clone(), |vip| vec![vip]);
        for label in std::iter::once(&s.name).chain(&s.aliases) {
            let key = normalize(label);
            if key.is_empty() {
                continue;
            }
            names
                .entry(format!("tasks.{key}"))
                .or_insert_with(|| tasks.clone());
            names.entry(key).or_insert_with(|| answer.clone());
        }
    }
    let mut tasks: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    for e in n.endpoints.iter().filter(|e| !e.task_name.is_empty()) {
        let ip: Option<Ipv4Addr> = if e.running { e.ip.parse().ok() } else { None };
        let base = normalize(&e.task_name);
        let mut keys = vec![base.clone()];
        if !e.task_id.is_empty() {
            keys.push(format!("{base}.{}", e.task_id.to_ascii_lowercase()));
        }
        keys.extend(
            e.aliases
                .iter()
                .map(|a| normalize(a))
                .filter(|a| !a.is_empty()),
        );
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let ips = tasks.entry(key).or_default();
            ips.extend(ip);
        }
    }
    for (key, ips) in tasks {
        names.entry(key).or_insert(ips);
    }
    NetworkNames {
        name: n.name.to_ascii_lowercase(),
        internal: n.internal,
        names,
    }
}

impl Zone {
    /// The names of every network of `table`.
    pub(crate) fn from_table(table: &NetworkTable) -> Zone {
        Zone {
            networks: table
                .networks
                .iter()
                .map(|n| (n.id.clone(), network_names(n)))
                .collect(),
        }
    }

    /// The addresses `name` resolves to for a container on `network_ids` (searched in order,
    /// the first network that knows the name answers), then as `<name>.<network name>`.
    /// `None`: not a name of the cluster (to forward). `Some` and empty: the cluster's name with
    /// nothing running behind it.
    pub(crate) fn lookup(&self, network_ids: &[String], name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = normalize(name);
        if name.is_empty() {
            return None;
        }
        let networks = || network_ids.iter().filter_map(|id| self.networks.get(id));
        if let Some(ips) = networks().find_map(|n| n.names.get(&name)) {
            return Some(ips.clone());
        }
        name.match_indices('.').find_map(|(i, _)| {
            let (prefix, suffix) = (&name[..i], &name[i + 1..]);
            networks()
                .filter(|n| n.name == suffix)
                .find_map(|n| n.names.get(prefix))
                .cloned()
        })
    }

    /// Whether every network of the container is internal (then names that aren't the
    /// cluster's get no answer from outside, as with Docker). False when one is unknown.
    pub(crate) fn internal_only(&self, network_ids: &[String]) -> bool {
        !network_ids.is_empty()
            && network_ids
                .iter()
                .all(|id| self.networks.get(id).is_some_and(|n| n.internal))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rswarm_api::dispatcher::v1::{Endpoint, ServiceRecord};

    pub(crate) fn endpoint(
        task_id: &str,
        task_name: &str,
        service_id: &str,
        ip: &str,
        running: bool,
    ) -> Endpoint {
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

    pub(crate) fn service(id: &str, name: &str, aliases: &[&str], vip: &str) -> ServiceRecord {
        ServiceRecord {
            service_id: id.into(),
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            vip: vip.into(),
        }
    }

    /// Network n1 (front): web (VIP 10.0.1.2, aliases www, Site; tasks web.1, web.2 running,
    /// web.3 not) and db (dnsrr; db.1 running, db.2 not). Network n2 (back, internal): cache
    /// (VIP 10.0.2.2, cache.1) and web again with VIP 10.0.2.9 and task web.1 at 10.0.2.3.
    pub(crate) fn table() -> NetworkTable {
        NetworkTable {
            networks: vec![
                NodeNetwork {
                    id: "n1".into(),
                    name: "front".into(),
                    endpoints: vec![
                        endpoint("t1", "web.1", "s-web", "10.0.1.3", true),
                        endpoint("t2", "web.2", "s-web", "10.0.1.4", true),
                        endpoint("t3", "web.3", "s-web", "10.0.1.5", false),
                        endpoint("t4", "db.1", "s-db", "10.0.1.6", true),
                        endpoint("t5", "db.2", "s-db", "10.0.1.7", false),
                    ],
                    services: vec![
                        service("s-web", "web", &["www", "Site"], "10.0.1.2"),
                        service("s-db", "db", &[], ""),
                    ],
                    ..NodeNetwork::default()
                },
                NodeNetwork {
                    id: "n2".into(),
                    name: "back".into(),
                    internal: true,
                    endpoints: vec![
                        endpoint("t6", "cache.1", "s-cache", "10.0.2.3", true),
                        endpoint("t7", "web.1", "s-web", "10.0.2.4", true),
                    ],
                    services: vec![
                        service("s-cache", "cache", &[], "10.0.2.2/24"),
                        service("s-web", "web", &[], "10.0.2.9"),
                    ],
                    ..NodeNetwork::default()
                },
            ],
            data_path_port: 4789,
            ..NetworkTable::default()
        }
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        v.sort();
        v
    }

    #[test]
    fn service_resolves_to_its_vip() {
        let z = Zone::from_table(&table());
        assert_eq!(z.lookup(&ids(&["n1"]), "web"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(z.lookup(&ids(&["n2"]), "cache"), Some(vec![ip("10.0.2.2")]));
    }

    #[test]
    fn dnsrr_service_resolves_to_running_tasks_only() {
        let z = Zone::from_table(&table());
        assert_eq!(z.lookup(&ids(&["n1"]), "db"), Some(vec![ip("10.0.1.6")]));
    }

    #[test]
    fn tasks_name_gives_every_running_task() {
        let z = Zone::from_table(&table());
        let web = z.lookup(&ids(&["n1"]), "tasks.web").unwrap();
        assert_eq!(sorted(web), vec![ip("10.0.1.3"), ip("10.0.1.4")]);
        assert_eq!(
            z.lookup(&ids(&["n1"]), "tasks.db"),
            Some(vec![ip("10.0.1.6")])
        );
        let www = z.lookup(&ids(&["n1"]), "tasks.www").unwrap();
        assert_eq!(sorted(www), vec![ip("10.0.1.3"), ip("10.0.1.4")]);
    }

    #[test]
    fn container_aliases_resolve_to_every_running_container_that_has_them() {
        let mut t = table();
        let with =
            |task_id: &str, name: &str, ip: &str, running: bool, aliases: &[&str]| Endpoint {
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                ..endpoint(task_id, name, "", ip, running)
            };
        t.networks[0].endpoints.extend([
            with("a1", "probe", "10.0.1.20", true, &["DB2", "mon", "mon"]),
            with("a2", "probe2", "10.0.1.21", true, &["mon"]),
            with("a3", "probe3", "10.0.1.22", false, &["mon"]),
            // A service's name wins over a container's alias.
            with("a4", "probe4", "10.0.1.23", true, &["web"]),
        ]);
        let z = Zone::from_table(&t);
        let n1 = ids(&["n1"]);
        assert_eq!(z.lookup(&n1, "db2"), Some(vec![ip("10.0.1.20")]));
        let mon = z.lookup(&n1, "mon").unwrap();
        assert_eq!(sorted(mon), vec![ip("10.0.1.20"), ip("10.0.1.21")]);
        assert_eq!(z.lookup(&n1, "probe"), Some(vec![ip("10.0.1.20")]));
        assert_eq!(z.lookup(&n1, "web"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(
            z.lookup(&n1, "mon.front").map(sorted),
            Some(vec![ip("10.0.1.20"), ip("10.0.1.21")])
        );
        assert_eq!(
            z.lookup(&ids(&["n2"]), "mon"),
            None,
            "other networks do not see it"
        );
    }

    #[test]
    fn aliases_resolve_like_the_service() {
        let z = Zone::from_table(&table());
        assert_eq!(z.lookup(&ids(&["n1"]), "www"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(z.lookup(&ids(&["n1"]), "site"), Some(vec![ip("10.0.1.2")]));
    }

    #[test]
    fn task_names_resolve_to_their_task_while_it_runs() {
        let z = Zone::from_table(&table());
        let n1 = ids(&["n1"]);
        assert_eq!(z.lookup(&n1, "web.2"), Some(vec![ip("10.0.1.4")]));
        assert_eq!(z.lookup(&n1, "web.2.t2"), Some(vec![ip("10.0.1.4")]));
        assert_eq!(z.lookup(&n1, "WEB.2.T2."), Some(vec![ip("10.0.1.4")]));
        // Known to the cluster but not running: an empty answer, not forwarded.
        assert_eq!(z.lookup(&n1, "web.3"), Some(vec![]));
        assert_eq!(z.lookup(&n1, "web.3.t3"), Some(vec![]));
        assert_eq!(z.lookup(&n1, "web.3.t2"), None);
    }

    #[test]
    fn case_and_trailing_dot_are_ignored() {
        let z = Zone::from_table(&table());
        let n1 = ids(&["n1"]);
        assert_eq!(z.lookup(&n1, "WeB."), Some(vec![ip("10.0.1.2")]));
        assert_eq!(z.lookup(&n1, "Tasks.DB."), Some(vec![ip("10.0.1.6")]));
        assert_eq!(z.lookup(&n1, "."), None);
        assert_eq!(z.lookup(&n1, ""), None);
    }

    #[test]
    fn only_the_containers_networks_are_visible() {
        let z = Zone::from_table(&table());
        assert_eq!(z.lookup(&ids(&["n1"]), "cache"), None);
        assert_eq!(z.lookup(&ids(&["n2"]), "db"), None);
        assert_eq!(z.lookup(&ids(&["n3"]), "web"), None);
        assert_eq!(z.lookup(&[], "web"), None);
    }

    #[test]
    fn the_first_network_that_knows_a_name_answers() {
        let z = Zone::from_table(&table());
        assert_eq!(
            z.lookup(&ids(&["n2", "n1"]), "web"),
            Some(vec![ip("10.0.2.9")])
        );
        assert_eq!(
            z.lookup(&ids(&["n1", "n2"]), "web"),
            Some(vec![ip("10.0.1.2")])
        );
        assert_eq!(
            z.lookup(&ids(&["n1", "n2"]), "cache"),
            Some(vec![ip("10.0.2.2")])
        );
    }

    #[test]
    fn name_dot_network_picks_that_network() {
        let z = Zone::from_table(&table());
        let both = ids(&["n1", "n2"]);
        assert_eq!(z.lookup(&both, "web.back"), Some(vec![ip("10.0.2.9")]));
        assert_eq!(z.lookup(&both, "web.front"), Some(vec![ip("10.0.1.2")]));
        assert_eq!(
            z.lookup(&both, "tasks.web.back"),
            Some(vec![ip("10.0.2.4")])
        );
        // Not a network of the container.
        assert_eq!(z.lookup(&ids(&["n1"]), "web.back"), None);
    }

    #[test]
    fn names_that_are_not_ours() {
        let z = Zone::from_table(&table());
        let n1 = ids(&["n1"]);
        assert_eq!(z.lookup(&n1, "example.com"), None);
        assert_eq!(z.lookup(&n1, "tasks.nothing"), None);
        assert_eq!(z.lookup(&n1, "web.example.com"), None);
        assert_eq!(Zone::default().lookup(&n1, "web"), None);
    }

    #[test]
    fn internal_only_needs_every_network_internal() {
        let z = Zone::from_table(&table());
        assert!(z.internal_only(&ids(&["n2"])));
        assert!(!z.internal_only(&ids(&["n1", "n2"])));
        assert!(!z.internal_only(&ids(&["n2", "unknown"])));
        assert!(!z.internal_only(&[]));
    }
}
