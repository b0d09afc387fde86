//! The DNS wire format, with hickory-proto: reading a cage's query, the answers agentcage
//! gives itself (REFUSED, SERVFAIL, FORMERR), the query sent upstream, and the part of an
//! upstream answer that may reach the cage (the chain from the name asked).

use std::net::IpAddr;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
};

/// A cage's query, read.
pub struct Question {
    /// The whole message (its id and question are echoed in the answer).
    pub message: Message,
    /// The name asked, as hickory has it.
    pub name: Name,
    /// The name asked, lower case, without the trailing dot (what rules match).
    pub normalized: String,
    /// The type asked.
    pub qtype: RecordType,
}

/// Why a message is not a query agentcage answers.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not a DNS message.
    #[error("not a DNS message: {0}")]
    Decode(String),
    /// Not a standard query of exactly one question of class IN.
    #[error("not a standard query of one question")]
    NotAQuery,
}

/// Reads a query; a name that is not a valid DNS name in the form rules use is refused by
/// the caller like any other name no rule allows.
pub fn parse_query(bytes: &[u8]) -> Result<Question, WireError> {
    let message = Message::from_vec(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    if message.metadata.message_type != MessageType::Query
        || message.metadata.op_code != OpCode::Query
        || message.queries.len() != 1
    {
        return Err(WireError::NotAQuery);
    }
    let q = &message.queries[0];
    if q.query_class != DNSClass::IN {
        return Err(WireError::NotAQuery);
    }
    let name = q.name.clone();
    let qtype = q.query_type;
    let ascii = name.to_ascii();
    let normalized = crate::policy::normalize_name(&ascii).unwrap_or(ascii.to_ascii_lowercase());
    Ok(Question {
        message,
        name,
        normalized,
        qtype,
    })
}

/// An answer with only a response code (REFUSED, SERVFAIL...) to `q`.
pub fn error_answer(q: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = q.queries.clone();
    m.to_vec().unwrap_or_default()
}

/// A FORMERR answer to bytes that are not a query, when at least an id can be read.
pub fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// The query agentcage sends upstream for `name`/`qtype`: a fresh random id, recursion
/// desired, EDNS with a 1232-byte payload (fewer truncated answers over UDP).
pub fn upstream_query(name: &Name, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name.clone(), qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    m
}

/// What an upstream answer gives the cage: the records of the chain from the name asked
/// (CNAMEs, then the addresses of the last name), and each address with the smallest TTL
/// along its chain. Records for any other name are dropped: a CNAME chain grants addresses
/// only under the allowed name it started from, and nothing else reaches the stub's cache.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The upstream's response code (NOERROR, NXDOMAIN...).
    pub code: ResponseCode,
    /// The records to answer with, in chain order.
    pub records: Vec<Record>,
    /// The addresses and their TTL (seconds).
    pub addrs: Vec<(IpAddr, u32)>,
    /// Kept by the cage's resolver from an earlier answer, not asked upstream just now.
    pub cached: bool,
}

/// Follows the chain from `name` in `answer` (at most 16 CNAMEs).
pub fn chain(name: &Name, qtype: RecordType, answer: &Message) -> Chain {
    let mut records = Vec::new();
    let mut addrs = Vec::new();
    let mut current = name.clone();
    let mut ttl = u32::MAX;
    for _ in 0..16 {
        let next = answer.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name.eq_ignore_root(&current) => {
                Some((r.clone(), target.0.clone()))
            }
            _ => None,
        });
        let Some((record, target)) = next else { break };
        ttl = ttl.min(record.ttl);
        records.push(record);
        current = target;
    }
    for r in &answer.answers {
        if !r.name.eq_ignore_root(&current) || r.record_type() != qtype {
            continue;
        }
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addrs.push((ip, ttl.min(r.ttl)));
        records.push(r.clone());
    }
    Chain {
        code: answer.metadata.response_code,
        records,
        addrs,
        cached: false,
    }
}

/// The answer to the cage's query `q`: the chain's records, their TTL at most `max_ttl`
/// (so a stub never caches an address longer than its grant lasts).
pub fn answer(q: &Message, chain: &Chain, max_ttl: u32) -> Vec<u8> {
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = chain.code;
    m.queries = q.queries.clone();
    for r in &chain.records {
        let mut r = r.clone();
        r.ttl = r.ttl.min(max_ttl);
        m.add_answer(r);
    }
    m.to_vec().unwrap_or_default()
}

/// The answer to `q`, cut for UDP: a stub that sent no EDNS gets at most 512 bytes, with the
/// truncation bit (it asks again over TCP).
pub fn fit_udp(q: &Message, bytes: Vec<u8>) -> Vec<u8> {
    let limit = q
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload().max(512)));
    if bytes.len() <= limit {
        return bytes;
    }
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.truncation = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = q.queries.clone();
    m.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, CNAME};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn a_chain_grants_only_what_descends_from_the_name_asked() {
        let mut upstream = Message::response(1, OpCode::Query);
        let rec = |n: &str, ttl, data| Record::from_rdata(name(n), ttl, data);
        upstream.add_answer(rec(
            "www.allowed.test.",
            300,
            RData::CNAME(CNAME(name("edge.cdn.test."))),
        ));
        upstream.add_answer(rec(
            "edge.cdn.test.",
            60,
            RData::A(A(Ipv4Addr::new(127, 0, 2, 1))),
        ));
        // Injected: an address for another name, which must not be granted.
        upstream.add_answer(rec(
            "evil.test.",
            600,
            RData::A(A(Ipv4Addr::new(127, 0, 113, 9))),
        ));
        let c = chain(&name("WWW.allowed.test."), RecordType::A, &upstream);
        assert_eq!(c.addrs, vec![("127.0.2.1".parse().unwrap(), 60)]);
        assert_eq!(c.records.len(), 2);
        let q = {
            let mut m = Message::query();
            m.add_query(Query::query(name("www.allowed.test."), RecordType::A));
            m
        };
        let a = Message::from_vec(&answer(&q, &c, 30)).unwrap();
        assert_eq!(a.metadata.id, q.metadata.id);
        assert!(a.answers.iter().all(|r| r.ttl <= 30));
        assert_eq!(a.answers.len(), 2);
    }

    #[test]
    fn queries_are_read_and_refusals_echo_them() {
        let mut q = Message::query();
        q.add_query(Query::query(name("Allowed.Test."), RecordType::TXT));
        let bytes = q.to_vec().unwrap();
        let parsed = parse_query(&bytes).unwrap();
        assert_eq!(parsed.normalized, "allowed.test");
        assert_eq!(parsed.qtype, RecordType::TXT);
        let r = Message::from_vec(&error_answer(&parsed.message, ResponseCode::Refused)).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.queries.len(), 1);
        assert!(parse_query(b"\x00\x01garbage").is_err());
        assert_eq!(
            formerr(b"\x12\x34xx").map(|b| b[..2].to_vec()),
            Some(vec![0x12, 0x34])
        );
    }
}
