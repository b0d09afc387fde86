//! `cargo xtask bench dns`: what egress by name costs.
//!
//! - Resolution of a name asked again and again: (a) straight to the upstream, uncaged,
//!   against (b) the same query sent by a caged process to any address on port 53, which
//!   the kernel redirects to the cage's resolver, which answers from its cache after the
//!   first (checking the grant is in the kernel before each answer).
//! - Resolution of a new name each time, which no cache holds: (a') straight to the
//!   upstream against (b') through the cage's resolver, which asks the same upstream and
//!   writes the grant before answering. The workload, `xtask __dns-loop`, times each query
//!   itself and prints its median and p99.
//! - connect(): (c) to an address a CIDR rule allows against (d) to one the cage's resolver
//!   granted for a `host:` rule (the loop resolves the name first, in its own cage), both by
//!   `xtask __connect-loop`.
//!
//! The upstream is this process's own DNS server on loopback (hickory-proto's wire format): it answers A queries
//! for every name with 127.0.0.1 and anything else with no records. Runs are interleaved
//! round by round so that drift in the machine's speed hits every variant alike.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};

use super::common::{measure, median, Daemon, WorkDir, AGENT};
use super::egress::{start_listeners, DENIED_IP};
use crate::setup::run_setup;
use crate::util::{cmd, output, require_root};

const DAEMON_CGROUP: &str = "agentcage-bench-dns";
/// The name the `host:` rule allows; the test upstream answers it with 127.0.0.1.
const NAME: &str = "bench.example.test";
/// The names below it a wildcard rule allows, one new one per query of the uncached runs.
const WILDCARD: &str = "fresh.example.test";
/// Where the caged loop sends its queries: any address on port 53 reaches the cage's resolver.
const CAGED_SERVER: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53));
/// The TTL the test upstream gives: longer than any run, so no grant lapses mid-run.
const TTL_S: u32 = 3600;
const TARGET_ADDED_P50_US: f64 = 100.0;
/// Runs of connect() pairs (CIDR-allowed, name-granted, alternated) per round.
const CONNECT_PAIRS: u32 = 3;
const TARGET_ADDED_P99_US: f64 = 1000.0;
const TARGET_NAMED_OVER_CIDR: f64 = 1.02;
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct DnsArgs {
    /// Queries per resolution run.
    #[arg(long, default_value_t = 2_000)]
    queries: u32,
    /// connect()+close() pairs per connect run.
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// Rounds; each runs every variant once.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

#[derive(Args)]
pub struct DnsLoopArgs {
    /// The server to ask.
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, default_value = NAME)]
    name: String,
    /// Ask a new name below `--name` each query (`qI-TAG.NAME`), so no cache holds it.
    #[arg(long)]
    fresh: Option<String>,
    #[arg(long)]
    queries: u32,
}

/// `xtask __dns-loop`: prints the median and p99 of one A query's round trip, in ns.
pub fn dns_loop(args: &DnsLoopArgs) -> Result<()> {
    ensure!(args.queries > 0, "--queries must be at least 1");
    let mut ns = Vec::with_capacity(args.queries as usize);
    for i in 0..args.queries {
        let name = match &args.fresh {
            Some(tag) => format!("q{i}-{tag}.{}", args.name),
            None => args.name.clone(),
        };
        let start = Instant::now();
        resolve(args.server, &name, u16::try_from(i % 65_536).unwrap_or(0))
            .with_context(|| format!("query #{i} to {}", args.server))?;
        ns.push(start.elapsed().as_nanos() as f64);
    }
    ns.sort_by(f64::total_cmp);
    let p99 = ns[(ns.len() * 99 / 100).min(ns.len() - 1)];
    println!("{:.0} {p99:.0}", median(&ns));
    Ok(())
}

/// One A query for `name` to `server` over a fresh UDP socket (as a stub resolver makes);
/// Ok once an answer with at least one record came back.
pub(super) fn resolve(server: SocketAddr, name: &str, id: u16) -> Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a UDP socket")?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))?;
    sock.connect(server).context("connect()")?;
    sock.send(&query(name, id)?).context("send()")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).context("no answer")?;
    let m = Message::from_vec(&buf[..n]).context("not a DNS message")?;
    ensure!(m.metadata.id == id, "not an answer to the query");
    ensure!(
        m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty(),
        "{}, {} answers",
        m.metadata.response_code,
        m.answers.len()
    );
    Ok(())
}

/// A recursive A query for `name`.
fn query(name: &str, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    let name = Name::from_ascii(format!("{name}.")).with_context(|| format!("name {name:?}"))?;
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().context("encoding a query")
}

/// The test upstream's answer to `q`: the question back, and for an A question 127.0.0.1.
fn answer(q: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(q).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    if question.query_type == RecordType::A {
        m.add_answer(Record::from_rdata(
            question.name.clone(),
            TTL_S,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
    }
    m.add_query(question);
    m.to_vec().ok()
}

/// The test upstream on 127.0.0.1, answering on a thread that lives as long as the process.
fn start_upstream() -> Result<SocketAddr> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the test upstream")?;
    let addr = sock.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if let Some(r) = answer(&buf[..n]) {
                let _ = sock.send_to(&r, from);
            }
        }
    });
    Ok(addr)
}

fn policy_yaml(port: u16) -> String {
    format!(
        "# Generated by `cargo xtask bench dns`.\nversion: 1\nagents:\n  {AGENT}:\n    egress:\n      allow_events: none\n      allow:\n        - {{ host: {NAME}, ports: [{port}], protocols: [tcp] }}\n        - {{ host: \"*.{WILDCARD}\", ports: [{port}], protocols: [tcp] }}\n        - {{ cidr: {DENIED_IP}/32, ports: [{port}], protocols: [tcp] }}\n"
    )
}

pub fn bench_dns(args: &DnsArgs) -> Result<()> {
    require_root("`cargo xtask bench dns`")?;
    ensure!(
        args.queries > 0 && args.iterations > 0 && args.rounds > 0,
        "--queries, --iterations and --rounds must be at least 1"
    );
    run_setup()?;
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let exe = exe.to_string_lossy().into_owned();
    let upstream = start_upstream()?;
    let port = start_listeners()?;
    let work = WorkDir::new()?;
    let config = format!("dns:\n  upstream: [\"{upstream}\"]\n");
    let config_path = work.0.join("bench-config.yaml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let daemon = Daemon::start_with_args(
        &work.0,
        &policy_yaml(port),
        DAEMON_CGROUP,
        &["--config".as_ref(), config_path.as_os_str()],
    )?;

    // A fresh name per query when `fresh` is a tag (each run's own, so no run's names
    // were asked before).
    let dns_argv = |server: SocketAddr, queries: u32, fresh: Option<String>| -> Vec<String> {
        let mut v = vec![
            exe.clone(),
            "__dns-loop".into(),
            "--server".into(),
            server.to_string(),
            "--queries".into(),
            queries.to_string(),
        ];
        if let Some(tag) = fresh {
            v.extend(["--name".into(), WILDCARD.into(), "--fresh".into(), tag]);
        }
        v
    };
    let connect_argv = |addr: Ipv4Addr, iterations: u32, resolve: bool| -> Vec<String> {
        let mut v = vec![
            exe.clone(),
            "__connect-loop".into(),
            "--addr".into(),
            SocketAddr::from((addr, port)).to_string(),
            "--iterations".into(),
            iterations.to_string(),
            "--abort".into(),
        ];
        if resolve {
            v.extend(["--resolve-first".into(), NAME.into()]);
        }
        v
    };
    let direct = |queries: u32, fresh: Option<String>| -> Result<(f64, f64)> {
        let argv = dns_argv(upstream, queries, fresh);
        two(&output(cmd(&argv[0]).args(&argv[1..]))?)
    };
    let caged = |queries: u32, fresh: Option<String>| -> Result<(f64, f64)> {
        two(&output(&mut daemon.run_cmd(&dns_argv(
            CAGED_SERVER,
            queries,
            fresh,
        )))?)
    };
    let cidr = |n: u32| measure(&mut daemon.run_cmd(&connect_argv(DENIED_IP, n, false)));
    let named = |n: u32| measure(&mut daemon.run_cmd(&connect_argv(Ipv4Addr::LOCALHOST, n, true)));
    // (CIDR-allowed, name-granted) ns per connect, alternated in one process.
    let paired = |n: u32| -> Result<(f64, f64)> {
        let mut argv = connect_argv(DENIED_IP, n, true);
        argv.extend([
            "--versus".into(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string(),
        ]);
        two(&output(&mut daemon.run_cmd(&argv))?)
    };

    // Warm-up, which also proves each path works before it is measured.
    direct(10, None).context("the test upstream does not answer")?;
    caged(10, None).context("the cage's resolver does not answer")?;
    caged(10, Some("warm".into())).context("the cage's resolver does not answer new names")?;
    cidr(100).context("connect to the CIDR-allowed address")?;
    named(100).context("connect to the name-granted address")?;

    let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    // connect() takes about 35 us here and the machine's speed drifts by far more than the
    // 2% asked between two runs: one process alternates the two cases, connect by connect,
    // and each run gives a ratio.
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let mut pairs = Vec::new();
        for _ in 0..CONNECT_PAIRS {
            pairs.push(paired(args.iterations)?);
        }
        ratios.extend(pairs.iter().map(|(c, d)| d / c));
        let r = (
            direct(args.queries, None)?,
            caged(args.queries, None)?,
            median(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
            median(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()),
        );
        let f = (
            direct(args.queries, Some(format!("d{round}")))?,
            caged(args.queries, Some(format!("c{round}")))?,
        );
        eprintln!(
            "round {round}/{}: resolve direct p50 {:.0} p99 {:.0} ns, via the cage p50 {:.0} p99 {:.0} ns; \
             new names direct p50 {:.0} p99 {:.0} ns, via the cage p50 {:.0} p99 {:.0} ns; \
             connect CIDR {:.0} ns/op, name-granted {:.0} ns/op",
            args.rounds, r.0 .0, r.0 .1, r.1 .0, r.1 .1, f.0 .0, f.0 .1, f.1 .0, f.1 .1, r.2, r.3
        );
        a.push(r.0);
        b.push(r.1);
        c.push(r.2);
        d.push(r.3);
        fa.push(f.0);
        fb.push(f.1);
    }
    let p50 = |v: &[(f64, f64)]| median(&v.iter().map(|x| x.0).collect::<Vec<_>>());
    let p99 = |v: &[(f64, f64)]| median(&v.iter().map(|x| x.1).collect::<Vec<_>>());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bench dns: {} A queries per resolution run, {} connect()+close(RST) per connect run, \
         {} rounds interleaved (medians of the rounds)",
        args.queries, args.iterations, args.rounds
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    for (label, a, b) in [
        ("a name asked again (cached after the first)", &a, &b),
        ("a new name each query (upstream every time)", &fa, &fb),
    ] {
        let _ = writeln!(s, "  {label}:");
        let _ = writeln!(
            s,
            "    straight to the upstream     p50 {:>8.1} us   p99 {:>8.1} us",
            p50(a) / 1e3,
            p99(a) / 1e3
        );
        let _ = writeln!(
            s,
            "    through the cage's resolver  p50 {:>8.1} us   p99 {:>8.1} us",
            p50(b) / 1e3,
            p99(b) / 1e3
        );
        let added50 = (p50(b) - p50(a)) / 1e3;
        let added99 = (p99(b) - p99(a)) / 1e3;
        let _ = writeln!(
            s,
            "    added p50 {added50:.1} us   target <= {TARGET_ADDED_P50_US:.0} us: {}",
            met(added50 <= TARGET_ADDED_P50_US)
        );
        let _ = writeln!(
            s,
            "    added p99 {added99:.1} us   target <= {TARGET_ADDED_P99_US:.0} us: {}",
            met(added99 <= TARGET_ADDED_P99_US)
        );
    }
    let (mc, md) = (median(&c), median(&d));
    let _ = writeln!(s, "  (c) connect, CIDR-allowed        {mc:>10.0} ns/op");
    let _ = writeln!(s, "  (d) connect, name-granted        {md:>10.0} ns/op");
    let ratio = median(&ratios);
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let _ = writeln!(
        s,
        "  d/c = {ratio:.3} (median of {} adjacent pairs; they ranged {:.3}-{:.3})   target <= {TARGET_NAMED_OVER_CIDR:.2}: {}",
        ratios.len(),
        sorted[0],
        sorted[sorted.len() - 1],
        met(ratio <= TARGET_NAMED_OVER_CIDR)
    );
    print!("{s}");
    drop(daemon);
    Ok(())
}

/// The two figures `__dns-loop` prints last.
fn two(out: &str) -> Result<(f64, f64)> {
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let mut it = last.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(p50)), Some(Ok(p99))) => Ok((p50, p99)),
        _ => bail!("__dns-loop printed no figures: {out:?}"),
    }
}

/// For `__connect-loop --resolve-first`: the caged loop asks for the name first, so its
/// cage holds the grant.
pub fn resolve_first(name: &str) -> Result<()> {
    resolve(CAGED_SERVER, name, 1).with_context(|| format!("resolving {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_upstream_answers_a_with_loopback_and_other_types_with_nothing() {
        let q = query("bench.example.test", 7).unwrap();
        let r = Message::from_vec(&answer(&q).unwrap()).unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(
            r.answers.first().map(|a| a.data.clone()),
            Some(RData::A(A(Ipv4Addr::LOCALHOST)))
        );
        let mut aaaa = Message::from_vec(&q).unwrap();
        aaaa.queries[0].query_type = RecordType::AAAA;
        let r = Message::from_vec(&answer(&aaaa.to_vec().unwrap()).unwrap()).unwrap();
        assert!(r.answers.is_empty());
        assert!(answer(&q[..14]).is_none());
    }
}
