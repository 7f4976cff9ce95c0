//! Service virtual IPs as iptables rules (pure): in a container's network namespace, chain
//! [`CHAIN`] of the nat table, hooked from `OUTPUT`, DNATs each new connection to a VIP to one of
//! the service's running tasks, chosen at random (`-m statistic --mode random`, probability
//! `1/(k-i)` for the i-th of k backends, the last one unconditional, so each gets `1/k`).
//! The DNAT has no port, so every protocol and port of the VIP reaches the task.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use rswarm_api::dispatcher::v1::NetworkTable;

/// The nat chain holding the VIP rules.
pub(crate) const CHAIN: &str = "RSWARM-VIP";

/// One virtual IP and the running tasks behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vip {
    pub(crate) vip: Ipv4Addr,
    /// The service's name, for the rules' comment.
    pub(crate) service: String,
    /// Sorted, so the rules don't change with the table's order.
    pub(crate) backends: Vec<Ipv4Addr>,
}

/// The VIPs of the services on `network_ids` (a VIP on another network isn't reachable from the
/// container), in the order of the networks then of the VIPs; the first of duplicates wins.
pub(crate) fn vips(table: &NetworkTable, network_ids: &[String]) -> Vec<Vip> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in network_ids {
        let Some(n) = table.networks.iter().find(|n| n.id == *id) else {
            continue;
        };
        let mut here: Vec<Vip> = n
            .services
            .iter()
            .filter_map(|s| {
                let vip: Ipv4Addr = s.vip.split('/').next()?.trim().parse().ok()?;
                let mut backends: Vec<Ipv4Addr> = n
                    .endpoints
                    .iter()
                    .filter(|e| e.running && e.service_id == s.service_id)
                    .filter_map(|e| e.ip.parse().ok())
                    .collect();
                backends.sort();
                backends.dedup();
                Some(Vip {
                    vip,
                    service: s.name.clone(),
                    backends,
                })
            })
            .collect();
        here.sort_by_key(|v| v.vip);
        out.extend(here.into_iter().filter(|v| seen.insert(v.vip)));
    }
    out
}

/// `name` reduced to what an iptables comment carries safely.
fn comment(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(200)
        .collect();
    if s.is_empty() {
        "service".to_string()
    } else {
        s
    }
}

/// The rules of [`CHAIN`] for `vips`, one `-A` line each. A VIP without a running task gets no
/// rule (its traffic has nowhere to go).
pub(crate) fn rules(vips: &[Vip]) -> String {
    let mut out = String::new();
    for v in vips {
        let k = v.backends.len();
        for (i, backend) in v.backends.iter().enumerate() {
            let _ = write!(
                out,
                "-A {CHAIN} -d {}/32 -m comment --comment {}",
                v.vip,
                comment(&v.service)
            );
            let left = k - i;
            if left > 1 {
                let p = 1.0 / left as f64;
                let _ = write!(out, " -m statistic --mode random --probability {p:.11}");
            }
            let _ = writeln!(out, " -j DNAT --to-destination {backend}");
        }
    }
    out
}

/// The input of `iptables-restore --noflush`: (re)creates [`CHAIN`], flushes it, refills it with
/// `rules` and, with `hook`, adds the jump from nat `OUTPUT` (once per namespace: the caller
/// checks it isn't there). Other chains are left alone.
pub(crate) fn restore_script(rules: &str, hook: bool) -> String {
    let mut s = format!("*nat\n:{CHAIN} - [0:0]\n-F {CHAIN}\n");
    if hook {
        let _ = writeln!(s, "-A OUTPUT -j {CHAIN}");
    }
    s.push_str(rules);
    s.push_str("COMMIT\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::zone::tests::{endpoint, service, table};
    use rswarm_api::dispatcher::v1::NodeNetwork;

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn one_service(n: usize) -> NetworkTable {
        NetworkTable {
            networks: vec![NodeNetwork {
                id: "n".into(),
                name: "net".into(),
                endpoints: (0..n)
                    .map(|i| {
                        endpoint(
                            &format!("t{i}"),
                            &format!("api.{}", i + 1),
                            "s",
                            &format!("10.0.0.{}", 10 - i),
                            true,
                        )
                    })
                    .chain([endpoint("tx", "api.9", "s", "10.0.0.99", false)])
                    .collect(),
                services: vec![service("s", "api", &[], "10.0.0.2")],
                ..NodeNetwork::default()
            }],
            data_path_port: 0,
            ..NetworkTable::default()
        }
    }

    #[test]
    fn no_backend_no_rule() {
        let v = vips(&one_service(0), &ids(&["n"]));
        assert_eq!(v.len(), 1);
        assert!(v[0].backends.is_empty());
        assert_eq!(rules(&v), "");
    }

    #[test]
    fn one_backend_is_unconditional() {
        let r = rules(&vips(&one_service(1), &ids(&["n"])));
        assert_eq!(
            r,
            "-A RSWARM-VIP -d 10.0.0.2/32 -m comment --comment api -j DNAT --to-destination 10.0.0.10\n"
        );
    }

    #[test]
    fn three_backends_one_third_one_half_then_the_last() {
        let r = rules(&vips(&one_service(3), &ids(&["n"])));
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines,
            vec![
                "-A RSWARM-VIP -d 10.0.0.2/32 -m comment --comment api -m statistic --mode random --probability 0.33333333333 -j DNAT --to-destination 10.0.0.8",
                "-A RSWARM-VIP -d 10.0.0.2/32 -m comment --comment api -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.0.0.9",
                "-A RSWARM-VIP -d 10.0.0.2/32 -m comment --comment api -j DNAT --to-destination 10.0.0.10",
            ]
        );
    }

    #[test]
    fn only_running_tasks_of_the_containers_networks() {
        let t = table();
        let v = vips(&t, &ids(&["n1"]));
        assert_eq!(
            v,
            vec![Vip {
                vip: "10.0.1.2".parse().unwrap(),
                service: "web".into(),
                backends: vec!["10.0.1.3".parse().unwrap(), "10.0.1.4".parse().unwrap()],
            }]
        );
        let both = vips(&t, &ids(&["n1", "n2"]));
        let addrs: Vec<String> = both.iter().map(|v| v.vip.to_string()).collect();
        assert_eq!(addrs, vec!["10.0.1.2", "10.0.2.2", "10.0.2.9"]);
        assert!(vips(&t, &ids(&["other"])).is_empty());
    }

    #[test]
    fn the_order_of_the_table_does_not_change_the_rules() {
        let a = one_service(3);
        let mut b = a.clone();
        b.networks[0].endpoints.reverse();
        assert_eq!(
            rules(&vips(&a, &ids(&["n"]))),
            rules(&vips(&b, &ids(&["n"])))
        );
    }

    #[test]
    fn script_flushes_and_refills_the_chain() {
        let r = rules(&vips(&one_service(1), &ids(&["n"])));
        assert_eq!(
            restore_script(&r, false),
            format!("*nat\n:RSWARM-VIP - [0:0]\n-F RSWARM-VIP\n{r}COMMIT\n")
        );
        assert_eq!(
            restore_script("", true),
            "*nat\n:RSWARM-VIP - [0:0]\n-F RSWARM-VIP\n-A OUTPUT -j RSWARM-VIP\nCOMMIT\n"
        );
    }

    #[test]
    fn comments_carry_only_safe_characters() {
        assert_eq!(comment("web-1_a.b"), "web-1_a.b");
        assert_eq!(comment("a b\"c;d\n"), "abcd");
        assert_eq!(comment(""), "service");
    }
}
