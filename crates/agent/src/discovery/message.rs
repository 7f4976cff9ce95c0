//! DNS messages (pure): what to reply to a query from a container, given the cluster's names.
//!
//! Names of the cluster get A records (TTL [`TTL`], in random order for round robin) and an empty
//! answer for any other type (they have no IPv6 address), as Docker's resolver does; other names
//! are forwarded. The wire format is hickory-proto's.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use rand::seq::SliceRandom;
use rand::Rng;

use super::zone::Zone;

/// The TTL of the cluster's records, Docker's.
pub(crate) const TTL: u32 = 600;
/// The largest reply over UDP to a query without EDNS.
pub(crate) const UDP_MIN: usize = 512;
/// The largest reply over UDP whatever the query advertises, and the payload size advertised in
/// replies with EDNS.
pub(crate) const UDP_MAX: u16 = 4096;
/// The largest message over TCP (the 16-bit length prefix).
pub(crate) const TCP_MAX: usize = 65_535;

/// How the query came, which bounds the reply's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a name of the cluster: relay the query to the upstream servers.
    Forward,
    /// Not a query (a response, or too short to carry an id): say nothing.
    Ignore,
}

/// The reply to `packet`, from a container on `network_ids`.
pub(crate) fn reply(
    packet: &[u8],
    zone: &Zone,
    network_ids: &[String],
    transport: Transport,
    rng: &mut impl Rng,
) -> Reply {
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(e) => {
            tracing::trace!(error = %e, "undecodable DNS query");
            return header_only(packet, ResponseCode::FormErr).map_or(Reply::Ignore, Reply::Answer);
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return Reply::Ignore;
    }
    if query.metadata.op_code != OpCode::Query {
        return answer(&query, ResponseCode::NotImp, Vec::new(), transport);
    }
    let Some(q) = query.queries.first() else {
        return answer(&query, ResponseCode::FormErr, Vec::new(), transport);
    };
    let ours = if q.query_class == DNSClass::IN {
        zone.lookup(network_ids, &q.name.to_ascii())
    } else {
        None
    };
    let Some(mut ips) = ours else {
        if zone.internal_only(network_ids) {
            return answer(&query, ResponseCode::ServFail, Vec::new(), transport);
        }
        return Reply::Forward;
    };
    let records = if q.query_type == RecordType::A {
        ips.shuffle(rng);
        ips.into_iter()
            .map(|ip| Record::from_rdata(q.name.clone(), TTL, RData::A(A(ip))))
            .collect()
    } else {
        Vec::new()
    };
    answer(&query, ResponseCode::NoError, records, transport)
}

/// SERVFAIL for `packet` (the upstream servers failed); `None` when it isn't a query.
pub(crate) fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    match Message::from_vec(packet) {
        Ok(q) if q.metadata.message_type == MessageType::Query => {
            match answer(&q, ResponseCode::ServFail, Vec::new(), Transport::Tcp) {
                Reply::Answer(b) => Some(b),
                Reply::Forward | Reply::Ignore => None,
            }
        }
        Ok(_) => None,
        Err(_) => header_only(packet, ResponseCode::ServFail),
    }
}

/// A reply made of a header only, for a query that can't be decoded: its id and `code`.
fn header_only(packet: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let is_query = packet.len() >= 12 && packet[2] & 0x80 == 0;
    if !is_query {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    Message::error_msg(id, op, code).to_vec().ok()
}

/// The reply to `query` with `code` and `records`, within the size `transport` allows
/// (dropping records and setting TC when they don't fit).
fn answer(
    query: &Message,
    code: ResponseCode,
    records: Vec<Record>,
    transport: Transport,
) -> Reply {
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = code == ResponseCode::NoError;
    resp.metadata.response_code = code;
    resp.queries = query.queries.clone();
    resp.answers = records;
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX);
        resp.edns = Some(edns);
    }
    let limit = match transport {
        Transport::Tcp => TCP_MAX,
        Transport::Udp => query.edns.as_ref().map_or(UDP_MIN, |e| {
            usize::from(e.max_payload()).clamp(UDP_MIN, usize::from(UDP_MAX))
        }),
    };
    match encode_within(resp, limit) {
        Some(bytes) => Reply::Answer(bytes),
        None => encode_failed(query),
    }
}

/// A bare SERVFAIL when a reply can't be encoded (not expected).
fn encode_failed(query: &Message) -> Reply {
    tracing::warn!(id = query.metadata.id, "cannot encode a DNS reply");
    Message::error_msg(
        query.metadata.id,
        query.metadata.op_code,
        ResponseCode::ServFail,
    )
    .to_vec()
    .map_or(Reply::Ignore, Reply::Answer)
}

/// `resp` encoded in at most `limit` bytes: answers are dropped (TC set) until it fits.
fn encode_within(mut resp: Message, limit: usize) -> Option<Vec<u8>> {
    let mut bytes = resp.to_vec().ok()?;
    while bytes.len() > limit && !resp.answers.is_empty() {
        let n = resp.answers.len();
        // Keep the share that fits by size, at least one fewer than now.
        let keep = (n * limit / bytes.len()).min(n - 1);
        resp.answers.truncate(keep);
        resp.metadata.truncation = true;
        bytes = resp.to_vec().ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::zone::tests::{endpoint, service, table};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rswarm_api::dispatcher::v1::{NetworkTable, NodeNetwork};
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    fn ask(zone: &Zone, nets: &[&str], packet: &[u8], t: Transport) -> Reply {
        let nets: Vec<String> = nets.iter().map(|s| s.to_string()).collect();
        reply(packet, zone, &nets, t, &mut StdRng::seed_from_u64(7))
    }

    fn decoded(r: Reply) -> Message {
        match r {
            Reply::Answer(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0,
                other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_for_a_service_is_its_vip() {
        let z = Zone::from_table(&table());
        let m = decoded(ask(
            &z,
            &["n1"],
            &query("web.", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 1, 2)]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.answers[0].name.to_ascii(), "web.");
    }

    #[test]
    fn tasks_gives_every_running_task() {
        let z = Zone::from_table(&table());
        let m = decoded(ask(
            &z,
            &["n1"],
            &query("tasks.web", RecordType::A, None),
            Transport::Udp,
        ));
        let got: BTreeSet<_> = a_records(&m).into_iter().collect();
        let want: BTreeSet<_> = [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)].into();
        assert_eq!(got, want);
    }

    #[test]
    fn other_types_for_our_names_are_empty_noerror() {
        let z = Zone::from_table(&table());
        for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let m = decoded(ask(&z, &["n1"], &query("web", t, None), Transport::Udp));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.answers.is_empty());
        }
        // A service with nothing running (dnsrr): empty too, not forwarded.
        let m = decoded(ask(
            &z,
            &["n1"],
            &query("web.3", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn names_not_ours_are_forwarded() {
        let z = Zone::from_table(&table());
        for (name, t) in [
            ("example.com", RecordType::A),
            ("cache", RecordType::A),
            ("2.1.0.10.in-addr.arpa", RecordType::PTR),
        ] {
            assert_eq!(
                ask(&z, &["n1"], &query(name, t, None), Transport::Udp),
                Reply::Forward
            );
        }
    }

    #[test]
    fn containers_on_internal_networks_only_get_servfail_for_the_outside() {
        let z = Zone::from_table(&table());
        let m = decoded(ask(
            &z,
            &["n2"],
            &query("example.com", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = decoded(ask(
            &z,
            &["n2"],
            &query("cache", RecordType::A, None),
            Transport::Udp,
        ));
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 0, 2, 2)]);
    }

    #[test]
    fn responses_and_runts_are_ignored_garbage_gets_formerr() {
        let z = Zone::from_table(&table());
        let mut resp = Message::response(9, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("web").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            ask(&z, &["n1"], &resp.to_vec().unwrap(), Transport::Udp),
            Reply::Ignore
        );
        assert_eq!(ask(&z, &["n1"], &[1, 2, 3], Transport::Udp), Reply::Ignore);
        let mut junk = query("web", RecordType::A, None);
        junk.truncate(14);
        let m = decoded(ask(&z, &["n1"], &junk, Transport::Udp));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn other_opcodes_are_not_implemented() {
        let z = Zone::from_table(&table());
        let mut m = Message::new(5, MessageType::Query, OpCode::Status);
        m.add_query(Query::query(
            Name::from_ascii("web").unwrap(),
            RecordType::A,
        ));
        let r = decoded(ask(&z, &["n1"], &m.to_vec().unwrap(), Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn servfail_echoes_the_query() {
        let m = Message::from_vec(&servfail(&query("example.com", RecordType::A, None)).unwrap())
            .unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.queries[0].name.to_ascii(), "example.com.");
        assert_eq!(servfail(&[0; 3]), None);
    }

    fn big_table(n: u8) -> NetworkTable {
        NetworkTable {
            networks: vec![NodeNetwork {
                id: "n".into(),
                name: "net".into(),
                endpoints: (1..=n)
                    .map(|i| {
                        endpoint(
                            &format!("t{i}"),
                            &format!("big.{i}"),
                            "s",
                            &format!("10.1.0.{i}"),
                            true,
                        )
                    })
                    .collect(),
                services: vec![service("s", "big", &[], "")],
                ..NodeNetwork::default()
            }],
            data_path_port: 0,
            ..NetworkTable::default()
        }
    }

    #[test]
    fn large_udp_answers_are_truncated_tcp_ones_are_not() {
        let z = Zone::from_table(&big_table(100));
        let r = ask(
            &z,
            &["n"],
            &query("tasks.big", RecordType::A, None),
            Transport::Udp,
        );
        let Reply::Answer(bytes) = r else {
            panic!("no answer")
        };
        assert!(bytes.len() <= UDP_MIN);
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.metadata.truncation);
        assert!(!m.answers.is_empty() && m.answers.len() < 100);

        let m = decoded(ask(
            &z,
            &["n"],
            &query("tasks.big", RecordType::A, Some(4096)),
            Transport::Udp,
        ));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        assert!(m.edns.is_some());

        let m = decoded(ask(
            &z,
            &["n"],
            &query("tasks.big", RecordType::A, None),
            Transport::Tcp,
        ));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
    }

    #[test]
    fn a_records_are_shuffled() {
        let z = Zone::from_table(&big_table(5));
        let nets = vec!["n".to_string()];
        let packet = query("tasks.big", RecordType::A, None);
        let mut rng = StdRng::seed_from_u64(1);
        let firsts: BTreeSet<Ipv4Addr> = (0..50)
            .map(|_| {
                a_records(&decoded(reply(
                    &packet,
                    &z,
                    &nets,
                    Transport::Udp,
                    &mut rng,
                )))[0]
            })
            .collect();
        assert!(firsts.len() > 1, "always the same first record: {firsts:?}");
    }
}
