//! iptables rules: which rules the bridge and each container need, and how to read
//! `iptables -S` listings back (pure).

use std::net::Ipv4Addr;

use crate::config::BridgeConfig;
use crate::mode::PortMapping;

/// The comment every base rule carries.
pub(crate) const BASE_COMMENT: &str = "rswarm base";

/// An iptables table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Nat,
    Filter,
}

impl Table {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// Where a rule goes when it is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// `-A`: after the chain's existing rules.
    Append,
    /// `-I <chain> 1`: before everything (needed in FORWARD, whose policy may be DROP and whose
    /// other rules may drop).
    Top,
}

/// One rule: table, chain and the match/target arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) table: Table,
    pub(crate) chain: String,
    pub(crate) spec: Vec<String>,
}

impl Rule {
    fn new(table: Table, chain: &str, spec: &[&str]) -> Self {
        Rule {
            table,
            chain: chain.to_string(),
            spec: spec.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Arguments for `iptables` with the given operation (`-A`, `-C`, `-D`).
    pub(crate) fn args(&self, op: &str) -> Vec<String> {
        let mut args = vec![
            "-t".to_string(),
            self.table.as_str().to_string(),
            op.to_string(),
            self.chain.clone(),
        ];
        args.extend(self.spec.iter().cloned());
        args
    }

    /// Arguments to insert the rule at the top of its chain.
    pub(crate) fn insert_top_args(&self) -> Vec<String> {
        let mut args = vec![
            "-t".to_string(),
            self.table.as_str().to_string(),
            "-I".to_string(),
            self.chain.clone(),
            "1".to_string(),
        ];
        args.extend(self.spec.iter().cloned());
        args
    }
}

/// Our own chains, in (table, name) form.
pub(crate) fn own_chains(cfg: &BridgeConfig) -> [(Table, String); 2] {
    [
        (Table::Nat, cfg.dnat_chain()),
        (Table::Filter, cfg.fwd_chain()),
    ]
}

/// The rules the bridge needs whatever containers run, each with where to put it if missing.
/// The `Top` rules are listed in their final order (insert them in reverse).
pub(crate) fn base_rules(cfg: &BridgeConfig) -> Vec<(Rule, Placement)> {
    let br = cfg.bridge_name.as_str();
    let subnet = cfg.subnet.trunc().to_string();
    let dnat = cfg.dnat_chain();
    let fwd = cfg.fwd_chain();
    let c = ["-m", "comment", "--comment", BASE_COMMENT];
    let with = |table, chain: &str, head: &[&str], tail: &[&str]| {
        let spec: Vec<&str> = head
            .iter()
            .chain(c.iter())
            .chain(tail.iter())
            .copied()
            .collect();
        Rule::new(table, chain, &spec)
    };
    vec![
        // Containers reach the outside world with the host's address.
        (
            with(
                Table::Nat,
                "POSTROUTING",
                &["-s", &subnet, "!", "-o", br],
                &["-j", "MASQUERADE"],
            ),
            Placement::Append,
        ),
        // Published ports reached through 127.0.0.1 (route_localnet is on for the bridge): the
        // container can't answer 127.0.0.1, so those connections (only those) are masqueraded.
        (
            with(
                Table::Nat,
                "POSTROUTING",
                &["-s", "127.0.0.0/8", "-o", br],
                &["-j", "MASQUERADE"],
            ),
            Placement::Append,
        ),
        // Published ports: traffic arriving for a local address ...
        (
            with(
                Table::Nat,
                "PREROUTING",
                &["-m", "addrtype", "--dst-type", "LOCAL"],
                &["-j", &dnat],
            ),
            Placement::Append,
        ),
        // ... and traffic the host itself sends to a local address (including 127.0.0.1).
        (
            with(
                Table::Nat,
                "OUTPUT",
                &["-m", "addrtype", "--dst-type", "LOCAL"],
                &["-j", &dnat],
            ),
            Placement::Append,
        ),
        // Forwarding scoped to our bridge, ahead of whatever else FORWARD holds.
        (
            with(Table::Filter, "FORWARD", &["-i", br], &["-j", "ACCEPT"]),
            Placement::Top,
        ),
        (
            with(
                Table::Filter,
                "FORWARD",
                &[
                    "-o",
                    br,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                ],
                &["-j", "ACCEPT"],
            ),
            Placement::Top,
        ),
        (
            with(Table::Filter, "FORWARD", &["-o", br], &["-j", &fwd]),
            Placement::Top,
        ),
    ]
}

/// The rules for one container's published ports (`ports` must have resolved host ports):
/// a DNAT rule per mapping in `<prefix>-DNAT` and an ACCEPT per container port in `<prefix>-FWD`.
pub(crate) fn container_rules(
    cfg: &BridgeConfig,
    container_id: &str,
    ip: Ipv4Addr,
    ports: &[PortMapping],
) -> Vec<Rule> {
    let dnat = cfg.dnat_chain();
    let fwd = cfg.fwd_chain();
    let mut rules = Vec::new();
    for p in ports {
        let proto = p.protocol.as_str();
        let mut spec: Vec<String> = Vec::new();
        if let Some(host_ip) = p.host_ip {
            spec.extend(["-d".to_string(), format!("{host_ip}/32")]);
        }
        let to = format!("{ip}:{}", p.container_port);
        let hp = p.host_port.to_string();
        let tail = [
            "-p",
            proto,
            "-m",
            proto,
            "--dport",
            &hp,
            "-m",
            "comment",
            "--comment",
            container_id,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        spec.extend(tail.iter().map(|s| s.to_string()));
        rules.push(Rule {
            table: Table::Nat,
            chain: dnat.clone(),
            spec,
        });
    }
    let dest = format!("{ip}/32");
    let mut seen = Vec::new();
    for p in ports {
        if seen.contains(&(p.protocol, p.container_port)) {
            continue;
        }
        seen.push((p.protocol, p.container_port));
        let proto = p.protocol.as_str();
        let cp = p.container_port.to_string();
        rules.push(Rule::new(
            Table::Filter,
            &fwd,
            &[
                "-d",
                &dest,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                &cp,
                "-m",
                "comment",
                "--comment",
                container_id,
                "-j",
                "ACCEPT",
            ],
        ));
    }
    rules
}

/// A rule read back from `iptables -S <chain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListedRule {
    /// The arguments after `-A <chain>`, usable with `-D <chain>`.
    pub(crate) spec: Vec<String>,
    /// The `--comment` value, if any.
    pub(crate) comment: Option<String>,
}

/// Parses the `-A <chain> …` lines of an `iptables -S <chain>` listing.
pub(crate) fn parse_listing(listing: &str, chain: &str) -> Vec<ListedRule> {
    listing
        .lines()
        .filter_map(|line| {
            let words = split_words(line);
            match words.as_slice() {
                [op, c, rest @ ..] if op == "-A" && c == chain => {
                    let comment = rest
                        .windows(2)
                        .find(|w| w[0] == "--comment")
                        .map(|w| w[1].clone());
                    Some(ListedRule {
                        spec: rest.to_vec(),
                        comment,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Splits an `iptables -S` line into words: whitespace separates, double quotes group, and a
/// backslash escapes the next character inside quotes.
pub(crate) fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Whether a rule of our chains belongs to no container in `keep` (rules without a comment
/// belong to nobody).
pub(crate) fn is_stale(rule: &ListedRule, keep: &[&str]) -> bool {
    match &rule.comment {
        Some(c) => !keep.contains(&c.as_str()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Protocol;

    fn cfg() -> BridgeConfig {
        BridgeConfig {
            bridge_name: "rswabc123".into(),
            subnet: "10.213.0.0/16".parse().unwrap(),
            chain_prefix: "RSW-0011aabb".into(),
            mtu: 1500,
        }
    }

    fn joined(r: &Rule) -> String {
        format!(
            "-t {} -A {} {}",
            r.table.as_str(),
            r.chain,
            r.spec.join(" ")
        )
    }

    #[test]
    fn base_rules_are_scoped_and_commented() {
        let rules: Vec<String> = base_rules(&cfg()).iter().map(|(r, _)| joined(r)).collect();
        let c = "-m comment --comment rswarm base";
        assert_eq!(
            rules,
            vec![
                format!("-t nat -A POSTROUTING -s 10.213.0.0/16 ! -o rswabc123 {c} -j MASQUERADE"),
                format!("-t nat -A POSTROUTING -s 127.0.0.0/8 -o rswabc123 {c} -j MASQUERADE"),
                format!("-t nat -A PREROUTING -m addrtype --dst-type LOCAL {c} -j RSW-0011aabb-DNAT"),
                format!("-t nat -A OUTPUT -m addrtype --dst-type LOCAL {c} -j RSW-0011aabb-DNAT"),
                format!("-t filter -A FORWARD -i rswabc123 {c} -j ACCEPT"),
                format!("-t filter -A FORWARD -o rswabc123 -m conntrack --ctstate RELATED,ESTABLISHED {c} -j ACCEPT"),
                format!("-t filter -A FORWARD -o rswabc123 {c} -j RSW-0011aabb-FWD"),
            ]
        );
        for (rule, placement) in base_rules(&cfg()) {
            assert_eq!(placement == Placement::Top, rule.chain == "FORWARD");
            // The comment is one argument, so iptables gets it with its space.
            assert!(rule.spec.iter().any(|a| a == BASE_COMMENT));
        }
    }

    #[test]
    fn container_rules_dnat_without_snat() {
        let ports = vec![
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
            },
            PortMapping {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 9090,
                container_port: 80,
                protocol: Protocol::Tcp,
            },
            PortMapping {
                host_ip: None,
                host_port: 5353,
                container_port: 53,
                protocol: Protocol::Udp,
            },
        ];
        let rules: Vec<String> =
            container_rules(&cfg(), "abc", "10.213.0.2".parse().unwrap(), &ports)
                .iter()
                .map(joined)
                .collect();
        assert_eq!(
            rules,
            vec![
                "-t nat -A RSW-0011aabb-DNAT -p tcp -m tcp --dport 8080 -m comment --comment abc -j DNAT --to-destination 10.213.0.2:80",
                "-t nat -A RSW-0011aabb-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 9090 -m comment --comment abc -j DNAT --to-destination 10.213.0.2:80",
                "-t nat -A RSW-0011aabb-DNAT -p udp -m udp --dport 5353 -m comment --comment abc -j DNAT --to-destination 10.213.0.2:53",
                "-t filter -A RSW-0011aabb-FWD -d 10.213.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment abc -j ACCEPT",
                "-t filter -A RSW-0011aabb-FWD -d 10.213.0.2/32 -p udp -m udp --dport 53 -m comment --comment abc -j ACCEPT",
            ]
        );
        assert!(rules
            .iter()
            .all(|r| !r.contains("SNAT") && !r.contains("MASQUERADE")));
        assert!(container_rules(&cfg(), "abc", "10.213.0.2".parse().unwrap(), &[]).is_empty());
    }

    #[test]
    fn rule_args() {
        let r = Rule::new(Table::Filter, "FORWARD", &["-i", "br", "-j", "ACCEPT"]);
        assert_eq!(
            r.args("-C"),
            ["-t", "filter", "-C", "FORWARD", "-i", "br", "-j", "ACCEPT"]
        );
        assert_eq!(
            r.insert_top_args(),
            ["-t", "filter", "-I", "FORWARD", "1", "-i", "br", "-j", "ACCEPT"]
        );
    }

    #[test]
    fn listing_parse_and_stale() {
        let listing = "-N RSW-1-DNAT\n\
            -A RSW-1-DNAT -p tcp -m tcp --dport 8080 -m comment --comment aaa -j DNAT --to-destination 10.213.0.2:80\n\
            -A RSW-1-DNAT -p tcp -m tcp --dport 8081 -m comment --comment \"two words \\\"q\\\"\" -j DNAT --to-destination 10.213.0.3:80\n\
            -A RSW-1-DNAT -p udp -m udp --dport 53 -j DNAT --to-destination 10.213.0.4:53\n\
            -A OTHER -j ACCEPT\n";
        let listed = parse_listing(listing, "RSW-1-DNAT");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].comment.as_deref(), Some("aaa"));
        assert_eq!(listed[0].spec[0], "-p");
        assert_eq!(listed[0].spec.last().unwrap(), "10.213.0.2:80");
        assert_eq!(listed[1].comment.as_deref(), Some("two words \"q\""));
        assert_eq!(listed[2].comment, None);
        let stale: Vec<_> = listed.iter().filter(|r| is_stale(r, &["aaa"])).collect();
        assert_eq!(stale.len(), 2);
        assert!(stale.iter().all(|r| r.comment.as_deref() != Some("aaa")));
    }

    #[test]
    fn split_words_quotes() {
        assert_eq!(
            split_words(r#"-A X --comment "rswarm base" -j Y"#),
            ["-A", "X", "--comment", "rswarm base", "-j", "Y"]
        );
        assert_eq!(split_words(r#"a "" b"#), ["a", "", "b"]);
        assert!(split_words("   ").is_empty());
    }
}
