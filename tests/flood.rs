//! Events under flood, end to end: a caged program floods denials, and nothing is lost
//! between the kernel and the spool. Repeats of one decision are stored as summaries whose
//! counts, with the full events, add up to exactly what the kernel decided; a different
//! destination in the middle of a flood is a full event; a burst of distinct destinations
//! reaches the spool whole (or the kernel counts exactly what its ring could not hold); and
//! a collector that was down during the flood receives all of it when it returns.

use agentcage_tests::{collector, harness, spool};

use collector::{Collector, Item};
use harness::{Daemon, Follower};

/// Datagrams in each half of the flood.
const HALF: u32 = 50_000;
/// Distinct destinations in the burst.
const DISTINCT: u32 = 50_000;

const POLICY: &str = "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [1]\n          protocols: [tcp]\n";

/// A daemon whose spool is in a directory of the test's, exporting to `endpoint`.
struct Spooled {
    daemon: Daemon,
    spool: tempfile::TempDir,
    _conf: tempfile::TempDir,
}

fn spooled(endpoint: &str) -> Spooled {
    let spool = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    // The default bound (256 MiB): every test here stays well within it.
    let path = spool::telemetry_config_bound(
        conf.path(),
        (endpoint, "grpc"),
        spool.path(),
        (256 << 20, 8 << 20),
    );
    Spooled {
        daemon: Daemon::start_args(POLICY, &["--config", &path]),
        spool,
        _conf: conf,
    }
}

/// Egress events the kernel could not report for the agent (its ring was full).
fn egress_lost(daemon: &Daemon) -> u64 {
    let status = daemon.status();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tester")
        .unwrap_or_else(|| panic!("tester in {status:#}"))
        .clone();
    agent["lost_by_kind"]["egress"].as_u64().unwrap()
}

/// Waits for the end of the agent's session: the daemon publishes it after everything the
/// cage did, counted repeats included, and the spool has it before any follower does.
fn wait_for_the_end(events: &Follower) {
    events.wait_event("the session's end", |e| {
        e["kind"] == "session" && e["action"] == "end" && e["agent"] == "agent:tester"
    });
}

/// The flood: HALF denials of 127.0.0.2:9, one of 127.0.0.3:9, HALF more of 127.0.0.2:9.
fn flood(daemon: &Daemon, events: &Follower) -> u64 {
    let mut cage = daemon.serve_in("tester");
    let half = format!("ok {HALF}");
    assert_eq!(cage.op(&format!("udp-flood 127.0.0.2:9 {HALF}")), half);
    assert_eq!(cage.op("udp 127.0.0.3:9 x"), "err 1");
    assert_eq!(cage.op(&format!("udp-flood 127.0.0.2:9 {HALF}")), half);
    let lost = egress_lost(daemon);
    assert!(cage.finish().success());
    wait_for_the_end(events);
    lost
}

#[test]
fn a_flood_of_identical_denials_is_summarized_with_the_exact_total_and_hides_no_other() {
    let s = spooled(&format!("http://127.0.0.1:{}", collector::free_port()));
    let events = s.daemon.follow_events();
    let lost = flood(&s.daemon, &events);
    // The ring holds far more records than the flood: the kernel reported every decision.
    assert_eq!(lost, 0, "the kernel's ring overflowed");
    let records = spool::records(s.spool.path());
    let (full, counted, summaries) = spool::decisions_to(&records, "127.0.0.2", 9);
    assert_eq!(
        full + counted,
        u64::from(2 * HALF),
        "{full} full events and {summaries} summaries counting {counted}"
    );
    assert!(
        full >= 1 && summaries >= 1,
        "{full} full, {summaries} summaries"
    );
    assert!(
        records.len() < 1000,
        "{} records for a flood of {}",
        records.len(),
        2 * HALF
    );
    // The other destination is there in full.
    assert_eq!(
        spool::decisions_to(&records, "127.0.0.3", 9),
        (1, 0, 0),
        "the single denial in the middle of the flood"
    );
    assert_eq!(spool::cursor(s.spool.path())["dropped"], 0);
    // A summary says what it stands for.
    let summary = records
        .iter()
        .find(|r| r["kind"] == "egress_summary")
        .unwrap();
    assert_eq!(summary["verdict"], "deny");
    assert_eq!(summary["rule"], "default-deny");
    assert_eq!(summary["hook"], "sendmsg4");
    assert_eq!(summary["agent"], "agent:tester");
    assert!(summary["first_unix_nano"].as_u64() <= summary["last_unix_nano"].as_u64());
    let _ = s.daemon.stop();
}

#[test]
fn a_burst_of_distinct_destinations_reaches_the_spool_or_is_counted_by_the_kernel() {
    let s = spooled(&format!("http://127.0.0.1:{}", collector::free_port()));
    let events = s.daemon.follow_events();
    let mut cage = s.daemon.serve_in("tester");
    assert_eq!(
        cage.op(&format!("udp-spread {DISTINCT} 9")),
        format!("ok {DISTINCT}")
    );
    let lost = egress_lost(&s.daemon);
    assert!(cage.finish().success());
    wait_for_the_end(&events);
    let records = spool::records(s.spool.path());
    let spooled = records
        .iter()
        .filter(|r| r["kind"] == "egress" && r["agent"] == "agent:tester")
        .count() as u64;
    assert!(
        !records.iter().any(|r| r["kind"] == "egress_summary"),
        "distinct destinations are never summarized"
    );
    // Nothing dropped in user space; what the kernel could not report, it counted.
    assert_eq!(spool::cursor(s.spool.path())["dropped"], 0);
    assert_eq!(
        spooled + lost,
        u64::from(DISTINCT),
        "{spooled} in the spool, {lost} counted lost by the kernel"
    );
    if lost > 0 {
        eprintln!("the kernel's ring overflowed: {lost} of {DISTINCT} counted as lost");
    }
    let _ = s.daemon.stop();
}

/// The `agentcage.summary.count` of a summary's log record.
fn count_of(item: &Item) -> u64 {
    item.attr("agentcage.summary.count")
        .and_then(|v| v.strip_prefix("Int(")?.strip_suffix(')')?.parse().ok())
        .unwrap_or_else(|| panic!("a summary without its count: {item:#?}"))
}

#[test]
fn a_collector_down_during_the_flood_receives_all_of_it_when_it_returns() {
    let mut collector = Collector::start();
    collector.stop();
    let s = spooled(&collector.grpc());
    let events = s.daemon.follow_events();
    let lost = flood(&s.daemon, &events);
    assert_eq!(lost, 0, "the kernel's ring overflowed");
    collector.restart();
    // The session's end is the last record; batches may arrive in any order, so wait for
    // every record up to it.
    collector.wait_for("every record up to the session's end", |items| {
        let end = items.iter().find(|i| {
            i.kind == "log"
                && i.name == "agentcage.session"
                && i.attr("agentcage.session.action") == Some("Str(end)")
        })?;
        collector::logs_through(items, end.seq()?).then_some(())
    });
    let items = collector.items();
    let logs: Vec<&Item> = items.iter().filter(|i| i.kind == "log").collect();
    let to = |addr: &str| {
        let addr = format!("Str({addr})");
        let of = |name: &str| {
            logs.iter()
                .filter(|i| i.name == name && i.attr("server.address") == Some(addr.as_str()))
                .copied()
                .collect::<Vec<_>>()
        };
        (
            of("agentcage.egress.decision").len() as u64,
            of("agentcage.egress.summary")
                .iter()
                .map(|i| count_of(i))
                .sum::<u64>(),
        )
    };
    let (full, counted) = to("127.0.0.2");
    assert_eq!(
        full + counted,
        u64::from(2 * HALF),
        "{full} full, {counted} counted"
    );
    assert_eq!(to("127.0.0.3"), (1, 0));
    // Each record once.
    let mut seqs: Vec<u64> = logs.iter().filter_map(|i| i.seq()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a record arrived twice");
    let _ = s.daemon.stop();
}
