//! Flags of `rswarm network …`, as Docker spells them, and how they become a network spec.
//!
//! Everything here is pure: the flags are checked and turned into the wire API's [`NetworkSpec`]
//! before anything is sent, so a value that is plainly wrong never reaches the manager (which
//! checks what needs the cluster: names in use, overlapping subnets, an exhausted pool).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use anyhow::bail;
use clap::{Args, Subcommand};
use rswarm_api::types::v1::{Network, NetworkSpec};

/// The only driver of cluster networks.
pub const OVERLAY: &str = "overlay";
/// Docker's spelling of the MTU option (`-o com.docker.network.driver.mtu=1400`).
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Docker's option holding the VXLAN id of an overlay network (shown by `network inspect`).
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(NetworkCreateArgs),
    /// Display detailed information on one or more networks.
    Inspect {
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
        /// json (the default).
        #[arg(short, long)]
        format: Option<String>,
        /// Also show the services and the number of tasks on the network.
        #[arg(short, long)]
        verbose: bool,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Filter: name=, id=, driver=, scope=, label=k[=v], type=custom|builtin.
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// table (the default) or json (one object per line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm {
        /// Do not fail for networks that do not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
    },
    /// Connect a container of this node to an attachable network (at once if it runs).
    Connect {
        /// Another name for the container on the network (repeatable).
        #[arg(long = "alias", value_name = "ALIAS")]
        aliases: Vec<String>,
        /// Its IPv4 address there (the network must have been created with --subnet).
        #[arg(long = "ip", value_name = "IPV4")]
        ip: Option<String>,
        #[arg(value_name = "NETWORK")]
        network: String,
        #[arg(value_name = "CONTAINER")]
        container: String,
    },
    /// Disconnect a container of this node from a network.
    Disconnect {
        /// Do not fail when the container is not on the network.
        #[arg(short, long)]
        force: bool,
        #[arg(value_name = "NETWORK")]
        network: String,
        #[arg(value_name = "CONTAINER")]
        container: String,
    },
    /// Remove all unused networks.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        /// Filter: label=KEY[=VALUE], label!=KEY[=VALUE], until=TIME (RFC 3339, a Unix
        /// timestamp, or a duration such as 24h: only networks created before it).
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
}

/// Docker's question before `network prune` removes anything.
pub const PRUNE_WARNING: &str =
    "WARNING! This will remove all custom networks not used by at least one container.";

/// Which networks `network prune` may remove (those in use are refused by the manager anyway).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PruneFilter {
    /// `label=`: every one must match.
    pub labels: Vec<(String, Option<String>)>,
    /// `label!=`: none may match.
    pub not_labels: Vec<(String, Option<String>)>,
    /// `until=`: only networks created before this (milliseconds since the epoch).
    pub until_ms: Option<u64>,
}

fn label_pair(value: &str) -> (String, Option<String>) {
    match value.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (value.to_string(), None),
    }
}

fn has_label(spec: &NetworkSpec, (k, v): &(String, Option<String>)) -> bool {
    match (spec.labels.get(k), v) {
        (Some(_), None) => true,
        (Some(have), Some(want)) => have == want,
        (None, _) => false,
    }
}

/// `network prune --filter …`, with `until=` durations counted back from `now_ms`.
pub fn parse_prune_filters(filters: &[String], now_ms: u64) -> anyhow::Result<PruneFilter> {
    let mut f = PruneFilter::default();
    for raw in filters {
        if let Some(value) = raw.strip_prefix("label!=") {
            f.not_labels.push(label_pair(value));
            continue;
        }
        let Some((key, value)) = raw.split_once('=') else {
            bail!("invalid filter {raw:?}: use KEY=VALUE, e.g. label=team=a or until=24h");
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "label" => f.labels.push(label_pair(value)),
            "until" => {
                if f.until_ms.is_some() {
                    bail!("more than one until filter: give one");
                }
                f.until_ms = Some(crate::events::parse_time("until", value, now_ms)?);
            }
            other => {
                bail!("invalid filter {other:?} for network prune: use label, label! or until")
            }
        }
    }
    Ok(f)
}

impl PruneFilter {
    pub fn matches(&self, n: &Network) -> bool {
        let spec = n.spec.clone().unwrap_or_default();
        let created_before = |until: u64| {
            time::OffsetDateTime::parse(
                &n.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .is_ok_and(|t| t.unix_timestamp_nanos() / 1_000_000 < i128::from(until))
        };
        self.labels.iter().all(|l| has_label(&spec, l))
            && !self.not_labels.iter().any(|l| has_label(&spec, l))
            && self.until_ms.is_none_or(created_before)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Args)]
pub struct NetworkCreateArgs {
    /// Driver to manage the network: overlay (the default; the only driver of cluster networks).
    #[arg(short, long, default_value = OVERLAY)]
    pub driver: String,
    /// Subnet in CIDR format, e.g. 10.0.9.0/24 (default: one from the cluster's address pool).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// IPv4 gateway for the subnet (default: the subnet's first address).
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// Enable manual container attachment (`container run --network`).
    #[arg(long)]
    pub attachable: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Set driver specific options: mtu=N (or com.docker.network.driver.mtu=N).
    #[arg(short, long = "opt", value_name = "KEY=VALUE")]
    pub opt: Vec<String>,
    /// Set metadata on a network.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Network scope: swarm (the only scope of cluster networks).
    #[arg(long)]
    pub scope: Option<String>,
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Addresses.

/// An IPv4 subnet: its network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `--subnet 10.0.9.0/24`: an IPv4 CIDR whose host bits are zero, large enough for a gateway and
/// a task (/30 at most).
pub fn parse_subnet(s: &str) -> anyhow::Result<Ipv4Net> {
    let t = s.trim();
    let Some((ip, prefix)) = t.split_once('/') else {
        bail!("invalid subnet {s:?}: use CIDR notation, e.g. 10.0.9.0/24");
    };
    if ip.parse::<std::net::Ipv6Addr>().is_ok() {
        bail!("invalid subnet {s:?}: only IPv4 subnets are supported, e.g. 10.0.9.0/24");
    }
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        bail!("invalid subnet {s:?}: {ip:?} is not an IPv4 address; use CIDR notation, e.g. 10.0.9.0/24");
    };
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if p <= 32 => p,
        _ => bail!("invalid subnet {s:?}: the prefix length must be a number from 0 to 32, e.g. 10.0.9.0/24"),
    };
    if prefix > 30 {
        bail!("invalid subnet {s:?}: a /{prefix} has no room for a gateway and a task: use a prefix of /30 or shorter, e.g. /24");
    }
    let raw = Ipv4Net { addr: ip, prefix };
    let net = Ipv4Net {
        addr: Ipv4Addr::from(u32::from(ip) & raw.mask()),
        prefix,
    };
    if net.addr != ip {
        bail!("invalid subnet {s:?}: it should be {net} (the address's host bits must be zero)");
    }
    Ok(net)
}

/// `--gateway`: an IPv4 address inside the subnet, not its network or broadcast address.
pub fn parse_gateway(s: &str, subnet: &Ipv4Net) -> anyhow::Result<Ipv4Addr> {
    let Ok(ip) = s.trim().parse::<Ipv4Addr>() else {
        bail!("invalid gateway {s:?}: use an IPv4 address inside the subnet {subnet}");
    };
    if !subnet.contains(ip) {
        bail!("gateway {ip} is outside the subnet {subnet}: give an address inside it, or leave --gateway out for the subnet's first address");
    }
    if ip == subnet.addr || ip == subnet.broadcast() {
        bail!("gateway {ip} is the {} address of {subnet}: give a host address inside it, or leave --gateway out for the subnet's first address",
            if ip == subnet.addr { "network" } else { "broadcast" });
    }
    Ok(ip)
}

// ---------------------------------------------------------------------------------------------
// Options and labels.

/// `-o mtu=1400` / `-o com.docker.network.driver.mtu=1400` → the MTU.
pub fn parse_opts(opts: &[String]) -> anyhow::Result<Option<u32>> {
    let mut mtu = None;
    for o in opts {
        let Some((key, value)) = o.split_once('=') else {
            if o.trim() == "encrypted" {
                bail!("encrypted overlay networks are not supported: leave out -o encrypted");
            }
            bail!("invalid option {o:?}: use KEY=VALUE, e.g. -o mtu=1400");
        };
        match key.trim() {
            "mtu" | MTU_OPTION => {
                let n = value.trim().parse::<u32>().ok().filter(|n| (68..=65535).contains(n));
                let Some(n) = n else {
                    bail!("invalid mtu {value:?}: use a number from 68 to 65535, e.g. -o mtu=1400");
                };
                mtu = Some(n);
            }
            "encrypted" => {
                bail!("encrypted overlay networks are not supported: leave out -o encrypted")
            }
            VXLANID_OPTION => bail!(
                "option {VXLANID_OPTION} cannot be set: the manager allocates each network's VXLAN id"
            ),
            other => bail!(
                "unknown network option {other:?}: the overlay driver takes mtu=N (or {MTU_OPTION}=N)"
            ),
        }
    }
    Ok(mtu)
}

/// `--label k=v` (or `k` alone, with an empty value) → a map.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<HashMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            if k.trim().is_empty() {
                bail!("invalid label {l:?}: the key is missing; use KEY=VALUE");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `network create` flags → the spec to send.
pub fn network_spec(a: &NetworkCreateArgs) -> anyhow::Result<NetworkSpec> {
    if a.name.trim().is_empty() {
        bail!("the network name is empty: give the network a name");
    }
    if a.driver != OVERLAY {
        bail!(
            "driver {:?} is not supported: only overlay is supported for cluster networks (leave out -d, or use -d overlay)",
            a.driver
        );
    }
    if let Some(scope) = &a.scope {
        if scope != "swarm" {
            bail!("scope {scope:?} is not supported: cluster networks are swarm-scoped (leave out --scope, or use --scope swarm)");
        }
    }
    let subnet = a.subnet.as_deref().map(parse_subnet).transpose()?;
    let gateway = match (&a.gateway, &subnet) {
        (Some(g), Some(net)) => Some(parse_gateway(g, net)?),
        (Some(_), None) => bail!(
            "--gateway needs --subnet: give the subnet the gateway belongs to (e.g. --subnet 10.0.9.0/24 --gateway 10.0.9.1)"
        ),
        (None, _) => None,
    };
    let mtu = parse_opts(&a.opt)?;
    Ok(NetworkSpec {
        name: a.name.clone(),
        driver: OVERLAY.into(),
        subnet: subnet.map(|n| n.to_string()).unwrap_or_default(),
        gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
        attachable: a.attachable,
        internal: a.internal,
        mtu: mtu.unwrap_or(0),
        labels: parse_labels(&a.label)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Finding networks, as Docker resolves a NETWORK argument.

/// A network by full id, then by name, then by unique id prefix (`None` when none matches, or an
/// id prefix matches several).
pub fn resolve<'a>(key: &str, networks: &'a [Network]) -> Option<&'a Network> {
    if key.is_empty() {
        return None;
    }
    let name = |n: &Network| n.spec.as_ref().map_or("", |s| s.name.as_str()).to_string();
    if let Some(n) = networks.iter().find(|n| n.id == key) {
        return Some(n);
    }
    if let Some(n) = networks.iter().find(|n| name(n) == key) {
        return Some(n);
    }
    let mut prefixed = networks.iter().filter(|n| n.id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// `network ls --filter`.

/// `--filter` of `network ls`: values of one key are alternatives, keys must all match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkFilter {
    pub names: Vec<String>,
    pub ids: Vec<String>,
    pub drivers: Vec<String>,
    pub scopes: Vec<String>,
    pub labels: Vec<(String, Option<String>)>,
    pub types: Vec<String>,
}

pub fn parse_filters(filters: &[String]) -> anyhow::Result<NetworkFilter> {
    let mut f = NetworkFilter::default();
    for raw in filters {
        let Some((key, value)) = raw.split_once('=') else {
            bail!("invalid filter {raw:?}: use KEY=VALUE, e.g. name=web");
        };
        let value = value.to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => f.names.push(value),
            "id" => f.ids.push(value),
            "driver" => f.drivers.push(value),
            "scope" => f.scopes.push(value),
            "label" => f.labels.push(label_pair(&value)),
            "type" => {
                if value != "custom" && value != "builtin" {
                    bail!("invalid filter 'type={value}': use type=custom or type=builtin");
                }
                f.types.push(value)
            }
            other => bail!("invalid filter {other:?}: use name, id, driver, scope, label or type"),
        }
    }
    Ok(f)
}

/// Docker matches name= and id= as unanchored patterns; plain text matches anywhere, `^` and `$`
/// anchor it.
fn pattern_matches(pattern: &str, text: &str) -> bool {
    let (start, p) = match pattern.strip_prefix('^') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let (end, p) = match p.strip_suffix('$') {
        Some(p) => (true, p),
        None => (false, p),
    };
    match (start, end) {
        (true, true) => text == p,
        (true, false) => text.starts_with(p),
        (false, true) => text.ends_with(p),
        (false, false) => text.contains(p),
    }
}

impl NetworkFilter {
    pub fn matches(&self, n: &Network) -> bool {
        let spec = n.spec.clone().unwrap_or_default();
        let driver = if spec.driver.is_empty() {
            OVERLAY
        } else {
            spec.driver.as_str()
        };
        let any = |values: &[String], f: &dyn Fn(&str) -> bool| {
            values.is_empty() || values.iter().any(|v| f(v))
        };
        any(&self.names, &|v| pattern_matches(v, &spec.name))
            && any(&self.ids, &|v| pattern_matches(v, &n.id))
            && any(&self.drivers, &|v| v == driver)
            && any(&self.scopes, &|v| v == crate::network_output::scope(n))
            && any(&self.types, &|v| {
                v == if crate::network_output::is_local(n) {
                    "builtin"
                } else {
                    "custom"
                }
            })
            && self.labels.iter().all(|l| has_label(&spec, l))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn create(args: &[&str]) -> anyhow::Result<NetworkSpec> {
        let mut argv = vec!["rswarm", "network", "create"];
        argv.extend(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!("not a network create");
        };
        network_spec(&a)
    }

    fn err(args: &[&str]) -> String {
        format!("{:#}", create(args).unwrap_err())
    }

    #[test]
    fn defaults_are_an_overlay_from_the_pool() {
        let s = create(&["web-net"]).unwrap();
        assert_eq!(
            s,
            NetworkSpec {
                name: "web-net".into(),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            }
        );
    }

    #[test]
    fn every_create_flag_lands_in_the_spec() {
        let s = create(&[
            "-d",
            "overlay",
            "--subnet",
            "10.0.9.0/24",
            "--gateway",
            "10.0.9.254",
            "--attachable",
            "--internal",
            "-o",
            "mtu=1400",
            "--label",
            "team=a",
            "--label",
            "flag",
            "--scope",
            "swarm",
            "back",
        ])
        .unwrap();
        assert_eq!(s.name, "back");
        assert_eq!(s.driver, "overlay");
        assert_eq!(
            (s.subnet.as_str(), s.gateway.as_str()),
            ("10.0.9.0/24", "10.0.9.254")
        );
        assert!(s.attachable && s.internal);
        assert_eq!(s.mtu, 1400);
        assert_eq!(s.labels["team"], "a");
        assert_eq!(s.labels["flag"], "");
        // Docker's long spelling of the option, the last one winning.
        let s = create(&[
            "--opt",
            "com.docker.network.driver.mtu=9000",
            "--opt",
            "mtu=1450",
            "n",
        ])
        .unwrap();
        assert_eq!(s.mtu, 1450);
        let s = create(&["-o", "com.docker.network.driver.mtu=68", "n"]).unwrap();
        assert_eq!(s.mtu, 68);
    }

    #[test]
    fn plainly_wrong_values_are_refused_before_sending() {
        assert!(err(&["-d", "bridge", "n"]).contains("only overlay is supported"));
        assert!(err(&["--driver", "macvlan", "n"]).contains("only overlay is supported"));
        assert!(err(&["--subnet", "10.0.9.0", "n"]).contains("CIDR"));
        assert!(err(&["--subnet", "10.0.300.0/24", "n"]).contains("not an IPv4 address"));
        assert!(err(&["--subnet", "10.0.9.0/33", "n"]).contains("prefix length"));
        assert!(err(&["--subnet", "10.0.9.0/x", "n"]).contains("prefix length"));
        assert!(err(&["--subnet", "fd00::/64", "n"]).contains("only IPv4"));
        assert!(err(&["--subnet", "10.0.9.1/24", "n"]).contains("it should be 10.0.9.0/24"));
        assert!(err(&["--subnet", "10.0.9.0/31", "n"]).contains("no room"));
        assert!(
            err(&["--subnet", "10.0.9.0/24", "--gateway", "10.0.10.1", "n"])
                .contains("gateway 10.0.10.1 is outside the subnet 10.0.9.0/24")
        );
        assert!(
            err(&["--subnet", "10.0.9.0/24", "--gateway", "10.0.9.0", "n"])
                .contains("network address")
        );
        assert!(
            err(&["--subnet", "10.0.9.0/24", "--gateway", "10.0.9.255", "n"])
                .contains("broadcast address")
        );
        assert!(
            err(&["--subnet", "10.0.9.0/24", "--gateway", "gw", "n"]).contains("invalid gateway")
        );
        assert!(err(&["--gateway", "10.0.9.1", "n"]).contains("--gateway needs --subnet"));
        assert!(err(&["-o", "color=blue", "n"]).contains("unknown network option \"color\""));
        assert!(err(&["-o", "mtu", "n"]).contains("KEY=VALUE"));
        assert!(err(&["-o", "encrypted", "n"]).contains("encrypted overlay networks"));
        assert!(err(&["-o", "encrypted=true", "n"]).contains("encrypted overlay networks"));
        assert!(err(&[
            "-o",
            "com.docker.network.driver.overlay.vxlanid_list=4097",
            "n"
        ])
        .contains("VXLAN id"));
        for bad in ["0", "67", "65536", "big", "-1", ""] {
            assert!(
                err(&["-o", &format!("mtu={bad}"), "n"]).contains("68 to 65535"),
                "{bad}"
            );
            assert!(
                err(&["-o", &format!("com.docker.network.driver.mtu={bad}"), "n"])
                    .contains("68 to 65535"),
                "{bad}"
            );
        }
        assert!(err(&["--label", "=v", "n"]).contains("key is missing"));
        assert!(err(&["--scope", "local", "n"]).contains("swarm-scoped"));
        assert!(err(&[""]).contains("name is empty"));
        assert!(create(&[]).is_err(), "the name is required");
    }

    #[test]
    fn subnets_and_gateways() {
        let net = parse_subnet("10.0.0.0/8").unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.255.255.254".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(
            net.broadcast(),
            "10.255.255.255".parse::<Ipv4Addr>().unwrap()
        );
        let small = parse_subnet("192.168.1.4/30").unwrap();
        assert_eq!(
            parse_gateway("192.168.1.5", &small).unwrap().to_string(),
            "192.168.1.5"
        );
        assert!(parse_gateway("192.168.1.7", &small).is_err());
        assert_eq!(
            parse_subnet(" 0.0.0.0/0 ").unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    fn network(id: &str, name: &str) -> Network {
        Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            }),
            ..Network::default()
        }
    }

    #[test]
    fn networks_resolve_by_id_then_name_then_unique_prefix() {
        let nets = [
            network("abc123", "front"),
            network("abd456", "back"),
            network("front", "odd"),
        ];
        assert_eq!(resolve("abc123", &nets).unwrap().id, "abc123");
        assert_eq!(resolve("back", &nets).unwrap().id, "abd456");
        // An id wins over a name.
        assert_eq!(resolve("front", &nets).unwrap().id, "front");
        assert_eq!(resolve("abd", &nets).unwrap().id, "abd456");
        assert!(resolve("ab", &nets).is_none(), "ambiguous prefix");
        assert!(resolve("nope", &nets).is_none());
        assert!(resolve("", &nets).is_none());
    }

    #[test]
    fn ls_filters() {
        let mut a = network("aaa111", "web-net");
        a.spec.as_mut().unwrap().labels = [("team".to_string(), "x".to_string())].into();
        let b = network("bbb222", "backend");
        let keep = |f: &[&str]| -> Vec<String> {
            let f = parse_filters(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            [&a, &b]
                .iter()
                .filter(|n| f.matches(n))
                .map(|n| n.id.clone())
                .collect()
        };
        assert_eq!(keep(&[]), ["aaa111", "bbb222"]);
        assert_eq!(keep(&["name=net"]), ["aaa111"]);
        assert_eq!(keep(&["name=^back"]), ["bbb222"]);
        assert_eq!(keep(&["name=^web$"]), Vec::<String>::new());
        assert_eq!(
            keep(&["name=web-net", "name=backend"]),
            ["aaa111", "bbb222"]
        );
        assert_eq!(keep(&["id=bbb"]), ["bbb222"]);
        assert_eq!(keep(&["label=team"]), ["aaa111"]);
        assert_eq!(keep(&["label=team=y"]), Vec::<String>::new());
        assert_eq!(
            keep(&["driver=overlay", "scope=swarm", "type=custom"]).len(),
            2
        );
        assert!(keep(&["driver=bridge"]).is_empty());
        assert!(keep(&["type=builtin"]).is_empty());
        // A node's local network is builtin and local-scoped.
        let mut bridge = network("ccc333", "bridge");
        bridge.spec.as_mut().unwrap().driver = "bridge".into();
        bridge.scope = "local".into();
        let f = |f: &str| parse_filters(&[f.to_string()]).unwrap().matches(&bridge);
        assert!(f("scope=local") && f("type=builtin") && f("driver=bridge"));
        assert!(!f("scope=swarm") && !f("type=custom") && !f("driver=overlay"));
        assert!(parse_filters(&["color=red".into()]).is_err());
        assert!(parse_filters(&["name".into()]).is_err());
        assert!(parse_filters(&["type=other".into()]).is_err());
    }

    #[test]
    fn prune_filters_pick_by_labels_and_age() {
        let net = |id: &str, created: &str, labels: &[(&str, &str)]| Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: id.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..NetworkSpec::default()
            }),
            created_at: created.into(),
            ..Network::default()
        };
        let old = net("old", "2026-01-01T00:00:00Z", &[("tier", "tmp")]);
        let new = net("new", "2026-06-01T12:00:00.5Z", &[("tier", "keep")]);
        let bare = net("bare", "2026-06-01T12:00:00Z", &[]);
        // 2026-06-01T13:00:00Z
        let now_ms = 1_780_318_800_000;
        let keep = |f: &[&str]| -> Vec<String> {
            let f =
                parse_prune_filters(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>(), now_ms)
                    .unwrap();
            [&old, &new, &bare]
                .iter()
                .filter(|n| f.matches(n))
                .map(|n| n.id.clone())
                .collect()
        };
        assert_eq!(keep(&[]), ["old", "new", "bare"]);
        assert_eq!(keep(&["label=tier"]), ["old", "new"]);
        assert_eq!(keep(&["label=tier=tmp"]), ["old"]);
        assert_eq!(keep(&["label!=tier"]), ["bare"]);
        assert_eq!(keep(&["label!=tier=keep"]), ["old", "bare"]);
        assert_eq!(keep(&["until=30m"]), ["old", "new", "bare"]);
        assert_eq!(keep(&["until=1h"]), ["old"]);
        assert_eq!(keep(&["until=2026-06-01T12:00:00.2Z"]), ["old", "bare"]);
        assert_eq!(keep(&["until=1780315200"]), ["old"]);
        assert_eq!(keep(&["until=30m", "label=tier"]), ["old", "new"]);
        let err = |f: &[&str]| {
            parse_prune_filters(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>(), now_ms)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&["name=x"]).contains("for network prune"),
            "{}",
            err(&["name=x"])
        );
        assert!(
            err(&["until=soon"]).contains("invalid until"),
            "{}",
            err(&["until=soon"])
        );
        assert!(err(&["until=1h", "until=2h"]).contains("more than one until"));
        assert!(err(&["label"]).contains("KEY=VALUE"));
    }

    #[test]
    fn prune_takes_dockers_flags() {
        let cli = Cli::try_parse_from([
            "rswarm", "network", "prune", "-f", "--filter", "label=a", "--filter", "until=1h",
        ])
        .unwrap();
        let Command::Network(NetworkCommand::Prune { force, filters }) = cli.command else {
            panic!("not a network prune");
        };
        assert!(force);
        assert_eq!(filters, ["label=a", "until=1h"]);
    }
}
