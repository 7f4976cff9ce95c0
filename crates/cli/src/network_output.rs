//! `network ls` and `network inspect` as docker prints them for swarm overlay networks. Pure
//! functions over API messages, unit-tested.

use std::collections::HashMap;

use rswarm_api::types::v1::{Network, NetworkSpec};
use serde_json::{json, Map, Value};

use rswarm_agent::localnet::{LOCAL_SCOPE, SWARM_SCOPE};

use crate::network_args::{MTU_OPTION, OVERLAY, VXLANID_OPTION};
use crate::output::table;
use crate::service_output::short;

fn spec(n: &Network) -> NetworkSpec {
    n.spec.clone().unwrap_or_default()
}

fn driver(sp: &NetworkSpec) -> &str {
    if sp.driver.is_empty() {
        OVERLAY
    } else {
        &sp.driver
    }
}

/// A network's scope: `local` for a node's predefined networks, `swarm` for the cluster's.
pub fn scope(n: &Network) -> &str {
    if n.scope.is_empty() {
        SWARM_SCOPE
    } else {
        &n.scope
    }
}

/// Whether `n` is one of a node's own networks (`bridge`, `host`, `none`).
pub fn is_local(n: &Network) -> bool {
    scope(n) == LOCAL_SCOPE
}

/// What `network ls` lists: the cluster's networks with the node's local ones (on a manager), or
/// the node's own view alone (`cluster` is `None` on a worker, which may not read the cluster's).
pub fn node_view(cluster: Option<Vec<Network>>, node: Vec<Network>) -> Vec<Network> {
    match cluster {
        Some(mut all) => {
            all.extend(node.into_iter().filter(is_local));
            all
        }
        None => node,
    }
}

pub const LS_HEADER: [&str; 4] = ["NETWORK ID", "NAME", "DRIVER", "SCOPE"];

/// Docker's order: by name (then id).
pub fn sorted(networks: &[Network]) -> Vec<&Network> {
    let mut v: Vec<&Network> = networks.iter().collect();
    v.sort_by_key(|n| (spec(n).name, n.id.clone()));
    v
}

fn id_text(n: &Network, no_trunc: bool) -> String {
    if no_trunc {
        n.id.clone()
    } else {
        short(&n.id)
    }
}

/// `network ls` rows: NETWORK ID NAME DRIVER SCOPE.
pub fn ls_rows(networks: &[Network], no_trunc: bool) -> Vec<Vec<String>> {
    sorted(networks)
        .into_iter()
        .map(|n| {
            let sp = spec(n);
            vec![
                id_text(n, no_trunc),
                sp.name.clone(),
                driver(&sp).to_string(),
                scope(n).to_string(),
            ]
        })
        .collect()
}

/// `network ls`.
pub fn ls_table(networks: &[Network], no_trunc: bool) -> String {
    table(&LS_HEADER, &ls_rows(networks, no_trunc))
}

/// `network ls -q`.
pub fn ls_ids(networks: &[Network], no_trunc: bool) -> String {
    sorted(networks)
        .into_iter()
        .map(|n| format!("{}\n", id_text(n, no_trunc)))
        .collect()
}

/// RFC 3339 → Go's `time.Time` text (`2024-01-02 10:00:00.5 +0000 UTC`), as docker's
/// `--format json` prints CreatedAt; unparsable text is passed through.
pub fn go_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(t) = time::OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_string();
    };
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if t.nanosecond() > 0 {
        let frac = format!("{:09}", t.nanosecond());
        text.push('.');
        text.push_str(frac.trim_end_matches('0'));
    }
    text.push_str(" +0000 UTC");
    text
}

fn labels_text(sp: &NetworkSpec) -> String {
    let mut labels: Vec<String> = sp.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    labels.join(",")
}

/// `network ls --format json`: one object per line, docker's field names (all strings).
pub fn ls_json_lines(networks: &[Network], no_trunc: bool) -> String {
    sorted(networks)
        .into_iter()
        .map(|n| {
            let sp = spec(n);
            let v = json!({
                "CreatedAt": go_time(&n.created_at),
                "Driver": driver(&sp),
                "ID": id_text(n, no_trunc),
                "IPv4": "true",
                "IPv6": "false",
                "Internal": sp.internal.to_string(),
                "Labels": labels_text(&sp),
                "Name": sp.name,
                "Scope": scope(n),
            });
            format!("{v}\n")
        })
        .collect()
}

/// `network inspect`: docker's shape for a swarm overlay network, or a node's local network (no
/// `Peers`, no services, its driver's `Options`): `Containers` are the endpoints on node
/// `local_node` (the one asked, as Docker shows its own), `Peers` every node with an endpoint. `verbose` adds the services on the network (keyed by name, as `docker network
/// inspect -v`, each with its tasks) and rswarm's count of its tasks.
pub fn inspect_json(n: &Network, verbose: bool, local_node: Option<&str>) -> Value {
    let sp = spec(n);
    let subnet = if n.subnet.is_empty() {
        &sp.subnet
    } else {
        &n.subnet
    };
    let gateway = if n.gateway.is_empty() {
        &sp.gateway
    } else {
        &n.gateway
    };
    let config: Vec<Value> = if subnet.is_empty() {
        Vec::new()
    } else {
        let mut c = json!({ "Subnet": subnet });
        if !gateway.is_empty() {
            c["Gateway"] = json!(gateway);
        }
        vec![c]
    };
    let mut options = Map::new();
    if n.vni != 0 {
        options.insert(VXLANID_OPTION.into(), json!(n.vni.to_string()));
    }
    if sp.mtu != 0 {
        options.insert(MTU_OPTION.into(), json!(sp.mtu.to_string()));
    }
    let mut local_options: Vec<_> = n.options.iter().collect();
    local_options.sort();
    for (k, v) in local_options {
        options.insert(k.clone(), json!(v));
    }
    let labels: Map<String, Value> = {
        let mut l: Vec<_> = sp.labels.iter().collect();
        l.sort();
        l.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect()
    };
    let mut v = json!({
        "Name": sp.name,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": scope(n),
        "Driver": driver(&sp),
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": null, "Config": config },
        "Internal": sp.internal,
        "Attachable": sp.attachable,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Options": options,
        "Labels": labels,
    });
    let containers: Map<String, Value> = n
        .endpoints
        .iter()
        .filter(|e| local_node == Some(e.node_id.as_str()))
        .map(|e| {
            let key = if e.container_id.is_empty() {
                e.task_id.clone()
            } else {
                e.container_id.clone()
            };
            (
                key,
                json!({
                    "Name": e.name,
                    "EndpointID": e.task_id,
                    "MacAddress": e.mac,
                    "IPv4Address": e.addr,
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    v["Containers"] = Value::Object(containers);
    if is_local(n) {
        return v;
    }
    v["Peers"] = n
        .peers
        .iter()
        .map(|p| json!({ "Name": p.hostname, "IP": p.addr }))
        .collect();
    if verbose {
        let hosts: HashMap<&str, &str> = n
            .peers
            .iter()
            .map(|p| (p.node_id.as_str(), p.addr.as_str()))
            .collect();
        let services: Map<String, Value> = n
            .services
            .iter()
            .map(|s| {
                let tasks: Vec<Value> = n
                    .endpoints
                    .iter()
                    .filter(|e| &e.service == s)
                    .map(|e| {
                        json!({
                            "Name": e.name,
                            "EndpointID": e.task_id,
                            "EndpointIP": e.addr.split('/').next().unwrap_or_default(),
                            "Info": { "Host IP": hosts.get(e.node_id.as_str()).copied().unwrap_or_default() },
                        })
                    })
                    .collect();
                (s.clone(), json!({ "Tasks": tasks }))
            })
            .collect();
        v["Services"] = Value::Object(services);
        v["Tasks"] = json!(n.tasks);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(id: &str, name: &str) -> Network {
        Network {
            id: id.into(),
            version: 1,
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                ..NetworkSpec::default()
            }),
            subnet: "10.0.1.0/24".into(),
            gateway: "10.0.1.1".into(),
            vni: 4097,
            created_at: "2024-01-02T10:00:00.5Z".into(),
            ..Network::default()
        }
    }

    #[test]
    fn ls_table_sorted_by_name_with_short_ids() {
        let nets = [
            network("zq0ze2lg1wj1jq0jj0t4qnvn7", "web-net"),
            network("a1b2c3d4e5f6g7h8i9", "backend"),
        ];
        assert_eq!(
            ls_table(&nets, false),
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             a1b2c3d4e5f6   backend   overlay   swarm\n\
             zq0ze2lg1wj1   web-net   overlay   swarm\n"
        );
        assert_eq!(
            ls_table(&nets, true).lines().nth(1).unwrap(),
            "a1b2c3d4e5f6g7h8i9          backend   overlay   swarm"
        );
        assert_eq!(ls_ids(&nets, false), "a1b2c3d4e5f6\nzq0ze2lg1wj1\n");
        assert_eq!(ls_table(&[], false), "NETWORK ID   NAME   DRIVER   SCOPE\n");
    }

    fn local(name: &str, driver: &str) -> Network {
        Network {
            id: format!("{name}0123456789abcdef"),
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: driver.into(),
                ..NetworkSpec::default()
            }),
            scope: "local".into(),
            ..Network::default()
        }
    }

    #[test]
    fn a_manager_lists_the_clusters_networks_and_its_local_ones_a_worker_its_own() {
        let cluster = vec![network("a1b2c3d4e5f6g7h8i9", "web-net")];
        let node = vec![
            local("bridge", "bridge"),
            local("host", "host"),
            local("none", "null"),
            // The node's copy of a cluster network: the cluster's own is listed instead.
            Network {
                scope: "swarm".into(),
                ..network("a1b2c3d4e5f6g7h8i9", "web-net")
            },
        ];
        let on_manager = node_view(Some(cluster), node.clone());
        assert_eq!(
            ls_table(&on_manager, false),
            "NETWORK ID     NAME      DRIVER    SCOPE\n\
             bridge012345   bridge    bridge    local\n\
             host01234567   host      host      local\n\
             none01234567   none      null      local\n\
             a1b2c3d4e5f6   web-net   overlay   swarm\n"
        );
        assert_eq!(node_view(None, node.clone()), node);
        let v: Value =
            serde_json::from_str(ls_json_lines(&[local("bridge", "bridge")], false).trim())
                .unwrap();
        assert_eq!(
            (v["Scope"].as_str(), v["Driver"].as_str()),
            (Some("local"), Some("bridge"))
        );
    }

    #[test]
    fn inspect_of_a_local_network_has_its_options_and_no_peers() {
        let mut n = local("bridge", "bridge");
        n.subnet = "10.213.0.0/16".into();
        n.gateway = "10.213.0.1".into();
        n.options = [(
            "com.docker.network.bridge.name".to_string(),
            "rsw123456".to_string(),
        )]
        .into();
        n.endpoints = vec![rswarm_api::types::v1::NetworkEndpoint {
            name: "web".into(),
            container_id: "c1".into(),
            node_id: "me".into(),
            addr: "10.213.0.5/16".into(),
            mac: "02:42:0a:d5:00:05".into(),
            ..Default::default()
        }];
        let v = inspect_json(&n, true, Some("me"));
        assert_eq!(v["Scope"], "local");
        assert_eq!(v["Driver"], "bridge");
        assert_eq!(v["Options"]["com.docker.network.bridge.name"], "rsw123456");
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.213.0.0/16");
        assert_eq!(v["Containers"]["c1"]["IPv4Address"], "10.213.0.5/16");
        assert_eq!(v["Containers"]["c1"]["Name"], "web");
        assert!(v.get("Peers").is_none() && v.get("Services").is_none());
        let host = inspect_json(&local("host", "host"), false, Some("me"));
        assert_eq!(host["IPAM"]["Config"], json!([]));
        assert_eq!(host["Options"], json!({}));
    }

    #[test]
    fn ls_json_lines_use_dockers_fields() {
        let mut n = network("a1b2c3d4e5f6g7h8i9", "backend");
        n.spec.as_mut().unwrap().labels = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        let lines = ls_json_lines(&[n], false);
        let v: Value = serde_json::from_str(lines.trim()).unwrap();
        assert_eq!(v["ID"], "a1b2c3d4e5f6");
        assert_eq!(v["Name"], "backend");
        assert_eq!(v["Driver"], "overlay");
        assert_eq!(v["Scope"], "swarm");
        assert_eq!(v["Internal"], "false");
        assert_eq!(v["Labels"], "a=1,b=2");
        assert_eq!(v["CreatedAt"], "2024-01-02 10:00:00.5 +0000 UTC");
    }

    #[test]
    fn go_time_text() {
        assert_eq!(
            go_time("2024-01-02T10:00:00Z"),
            "2024-01-02 10:00:00 +0000 UTC"
        );
        assert_eq!(
            go_time("2024-01-02T11:00:00.123456789+01:00"),
            "2024-01-02 10:00:00.123456789 +0000 UTC"
        );
        assert_eq!(go_time("soon"), "soon");
    }

    #[test]
    fn inspect_shows_this_nodes_containers_every_peer_and_with_v_the_tasks() {
        use rswarm_api::types::v1::{NetworkEndpoint, NetworkPeer};
        let mut n = network("qd0ze2lg1wj1jq0jj0t4qnvn7", "web-net");
        n.services = vec!["web".into()];
        let ep = |task: &str, name: &str, container: &str, node: &str, ip: &str, svc: &str| {
            NetworkEndpoint {
                task_id: task.into(),
                name: name.into(),
                container_id: container.into(),
                node_id: node.into(),
                addr: format!("{ip}/24"),
                mac: "02:42:0a:00:01:03".into(),
                service: svc.into(),
            }
        };
        n.endpoints = vec![
            ep("t1", "web.1.t1", "c1", "n1", "10.0.1.3", "web"),
            ep("t2", "web.2.t2", "", "n2", "10.0.1.4", "web"),
            ep("a1", "probe", "c9", "n1", "10.0.1.9", ""),
        ];
        n.peers = vec![
            NetworkPeer {
                node_id: "n1".into(),
                hostname: "h1".into(),
                addr: "198.18.0.1".into(),
            },
            NetworkPeer {
                node_id: "n2".into(),
                hostname: "h2".into(),
                addr: "198.18.0.2".into(),
            },
        ];
        let v = inspect_json(&n, true, Some("n1"));
        assert_eq!(
            v["Containers"],
            json!({
                "c1": { "Name": "web.1.t1", "EndpointID": "t1", "MacAddress": "02:42:0a:00:01:03",
                        "IPv4Address": "10.0.1.3/24", "IPv6Address": "" },
                "c9": { "Name": "probe", "EndpointID": "a1", "MacAddress": "02:42:0a:00:01:03",
                        "IPv4Address": "10.0.1.9/24", "IPv6Address": "" },
            })
        );
        assert_eq!(
            v["Peers"],
            json!([{ "Name": "h1", "IP": "198.18.0.1" }, { "Name": "h2", "IP": "198.18.0.2" }])
        );
        assert_eq!(
            v["Services"]["web"]["Tasks"],
            json!([
                { "Name": "web.1.t1", "EndpointID": "t1", "EndpointIP": "10.0.1.3",
                  "Info": { "Host IP": "198.18.0.1" } },
                { "Name": "web.2.t2", "EndpointID": "t2", "EndpointIP": "10.0.1.4",
                  "Info": { "Host IP": "198.18.0.2" } },
            ])
        );
        // Another node's view: its own containers only (a task whose container is not reported
        // yet is keyed by its task id).
        let v = inspect_json(&n, false, Some("n2"));
        assert_eq!(v["Containers"]["t2"]["Name"], "web.2.t2");
        assert_eq!(v["Containers"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn inspect_json_has_dockers_shape() {
        let mut n = network("qd0ze2lg1wj1jq0jj0t4qnvn7", "web-net");
        {
            let sp = n.spec.as_mut().unwrap();
            sp.mtu = 1400;
            sp.attachable = true;
            sp.labels = [("team".to_string(), "a".to_string())].into();
        }
        n.services = vec!["web".into()];
        n.tasks = 3;
        let v = inspect_json(&n, false, None);
        assert_eq!(
            v,
            json!({
                "Name": "web-net",
                "Id": "qd0ze2lg1wj1jq0jj0t4qnvn7",
                "Created": "2024-01-02T10:00:00.5Z",
                "Scope": "swarm",
                "Driver": "overlay",
                "EnableIPv4": true,
                "EnableIPv6": false,
                "IPAM": {
                    "Driver": "default",
                    "Options": null,
                    "Config": [{ "Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1" }],
                },
                "Internal": false,
                "Attachable": true,
                "Ingress": false,
                "ConfigFrom": { "Network": "" },
                "ConfigOnly": false,
                "Options": {
                    "com.docker.network.driver.overlay.vxlanid_list": "4097",
                    "com.docker.network.driver.mtu": "1400",
                },
                "Labels": { "team": "a" },
                "Containers": {},
                "Peers": [],
            })
        );
        let verbose = inspect_json(&n, true, None);
        assert_eq!(verbose["Services"], json!({ "web": { "Tasks": [] } }));
        assert_eq!(verbose["Tasks"], 3);
        // No MTU set: no MTU option; the spec's subnet when nothing was allocated yet.
        let mut bare = network("x", "y");
        bare.subnet.clear();
        bare.gateway.clear();
        bare.spec.as_mut().unwrap().subnet = "10.0.9.0/24".into();
        let v = inspect_json(&bare, false, None);
        assert_eq!(v["IPAM"]["Config"], json!([{ "Subnet": "10.0.9.0/24" }]));
        assert_eq!(
            v["Options"],
            json!({ "com.docker.network.driver.overlay.vxlanid_list": "4097" })
        );
        assert_eq!(v["Labels"], json!({}));
    }
}
