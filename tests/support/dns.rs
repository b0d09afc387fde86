//! A DNS server for the tests, on loopback, built on hickory-proto like agentcage's resolver:
//! it serves a small zone over UDP and TCP on one port and records every query it receives,
//! so a test can tell what reached the upstream and what never did.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    sync::{Arc, Mutex},
    thread,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME, TXT},
        Name, RData, Record, RecordType,
    },
};

/// One query the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The name asked, lower case, without the trailing dot.
    pub name: String,
    /// The type asked (`A`, `TXT`...).
    pub qtype: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
}

/// The zone every test server serves, with TTL `ttl` on its records:
/// - `allowed.test`: A 127.0.0.1, AAAA ::1, TXT;
/// - `denied.test`: A 127.0.0.1 (no rule allows it);
/// - `nN.wild.test` (N a number): A 127.1.(N / 256).(N % 256); any other name below
///   `wild.test`: A 127.0.0.1;
/// - `alias.allowed.test`: CNAME `target.elsewhere.test`, which is A 127.0.0.4;
/// - `target.elsewhere.test`: A 127.0.0.4 (no rule allows it itself).
pub fn zone(name: &str, qtype: RecordType, ttl: u32) -> Option<Vec<Record>> {
    let owner = Name::from_ascii(format!("{name}.")).ok()?;
    let rec = |owner: &Name, data| Record::from_rdata(owner.clone(), ttl, data);
    let a = |ip: Ipv4Addr| RData::A(A(ip));
    let addr_of = |n: &str| -> Option<IpAddr> {
        match n {
            "allowed.test" | "denied.test" => Some(Ipv4Addr::LOCALHOST.into()),
            "target.elsewhere.test" => Some(Ipv4Addr::new(127, 0, 0, 4).into()),
            _ => {
                let label = n.strip_suffix(".wild.test")?;
                let n: u32 = label
                    .strip_prefix('n')
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(u32::MAX);
                Some(if n < 65_536 {
                    Ipv4Addr::new(127, 1, (n / 256) as u8, (n % 256) as u8).into()
                } else {
                    Ipv4Addr::LOCALHOST.into()
                })
            }
        }
    };
    if name == "alias.allowed.test" {
        let target = Name::from_ascii("target.elsewhere.test.").ok()?;
        let mut out = vec![rec(&owner, RData::CNAME(CNAME(target.clone())))];
        if qtype == RecordType::A {
            out.push(rec(&target, a(Ipv4Addr::new(127, 0, 0, 4))));
        }
        return Some(out);
    }
    let ip = addr_of(name)?;
    Some(match (qtype, ip) {
        (RecordType::A, IpAddr::V4(v4)) => vec![rec(&owner, a(v4))],
        (RecordType::AAAA, _) if name == "allowed.test" => {
            vec![rec(&owner, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)))]
        }
        (RecordType::TXT, _) => vec![rec(&owner, RData::TXT(TXT::new(vec!["hello".into()])))],
        _ => Vec::new(),
    })
}

/// The test's upstream DNS server.
pub struct TestDns {
    /// Where it listens (UDP and TCP): 127.0.0.1, a free port.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl TestDns {
    /// Serves [`zone`] with TTL `ttl` on a free port of 127.0.0.1.
    pub fn start(ttl: u32) -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                if let Some(answer) = answer(&buf[..n], ttl, "udp", &log) {
                    let _ = udp.send_to(&answer, from);
                }
            }
        });
        let log = Arc::clone(&received);
        thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut q).is_err() {
                    continue;
                }
                if let Some(a) = answer(&q, ttl, "tcp", &log) {
                    let _ = stream.write_all(&(a.len() as u16).to_be_bytes());
                    let _ = stream.write_all(&a);
                }
            }
        });
        Self { addr, received }
    }

    /// Every query received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Whether a query for `name` arrived.
    pub fn asked(&self, name: &str) -> bool {
        self.received().iter().any(|r| r.name == name)
    }
}

fn answer(
    bytes: &[u8],
    ttl: u32,
    transport: &'static str,
    log: &Mutex<Vec<Received>>,
) -> Option<Vec<u8>> {
    let q = Message::from_vec(bytes).ok()?;
    let query = q.queries.first()?.clone();
    let name = query
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    log.lock().unwrap().push(Received {
        name: name.clone(),
        qtype: query.query_type.to_string(),
        transport,
    });
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(query.clone());
    match zone(&name, query.query_type, ttl) {
        Some(records) => {
            for r in records {
                m.add_answer(r);
            }
        }
        None => m.metadata.response_code = ResponseCode::NXDomain,
    }
    m.to_vec().ok()
}
