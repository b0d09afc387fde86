//! OTLP export, end to end: the real daemon sends to a real collector (Rotel) on loopback;
//! the collector is stopped and started again, and the daemon restarted, and every event
//! still arrives exactly once.

use agentcage_tests::collector;
use agentcage_tests::harness;
use agentcage_tests::spool::telemetry_config as config;

use std::{collections::BTreeMap, fs};

use collector::{Collector, Item};
use harness::{tcp_listener_at, Daemon};

const EPERM: &str = "err 1";

fn policy(port: u16) -> String {
    format!(
        "version: 1\nagents:\n  tester:\n    egress:\n      allow:\n        - cidr: 127.0.0.1/32\n          ports: [{port}]\n          protocols: [tcp]\n      allow_events: all\n"
    )
}

fn logs_named<'a>(items: &'a [Item], name: &str) -> Vec<&'a Item> {
    items
        .iter()
        .filter(|i| i.kind == "log" && i.name == name)
        .collect()
}

fn egress_spans(items: &[Item]) -> Vec<&Item> {
    items
        .iter()
        .filter(|i| i.kind == "span" && i.name.starts_with("egress "))
        .collect()
}

fn check_typed_export(protocol: &str, compression: &str) {
    let collector = Collector::start();
    let endpoint = match protocol {
        "grpc" => collector.grpc(),
        _ => collector.http(),
    };
    let spool = tempfile::tempdir().unwrap();
    let (_ok, port) = harness::tcp_listener("127.0.0.1");
    let _denied = tcp_listener_at("127.0.0.2", port);
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = config(conf_dir.path(), &endpoint, protocol, spool.path());
    let text = fs::read_to_string(&conf).unwrap().replace(
        "  protocol:",
        &format!("  compression: {compression}\n  protocol:"),
    );
    fs::write(&conf, text).unwrap();
    let daemon = Daemon::start_args(&policy(port), &["--config", &conf]);

    let mut cage = daemon.serve_in("tester");
    assert_eq!(cage.op(&format!("connect 127.0.0.1:{port}")), "ok");
    assert_eq!(cage.op(&format!("connect 127.0.0.2:{port}")), EPERM);
    let pid = cage.pid;
    assert!(cage.finish().success());

    // The session ends when the cage goes: its root span closes the trace. Logs and spans
    // are exported independently, and batches in flight together may reach the collector
    // in any order, so wait for every record this test reads.
    let root = collector.wait_for(
        "every log record up to the session's end, the decisions' spans and the root span",
        |items| {
            let end = logs_named(items, "agentcage.session")
                .into_iter()
                .find(|i| i.attr("agentcage.session.action") == Some("Str(end)"))?;
            let logged = collector::logs_through(items, end.seq()?);
            items
                .iter()
                .find(|i| i.kind == "span" && i.name == "invoke_agent tester")
                .filter(|_| logged && egress_spans(items).len() >= 2)
                .cloned()
        },
    );
    let items = collector.items();
    let decisions = logs_named(&items, "agentcage.egress.decision");
    let deny = decisions
        .iter()
        .find(|i| i.attr("agentcage.verdict") == Some("Str(deny)"))
        .unwrap_or_else(|| panic!("no deny record in {decisions:#?}"));
    // Typed attributes under the conventions' names.
    assert_eq!(deny.attr("server.address"), Some("Str(127.0.0.2)"));
    assert_eq!(
        deny.attr("server.port"),
        Some(format!("Int({port})").as_str())
    );
    assert_eq!(deny.attr("network.transport"), Some("Str(tcp)"));
    assert_eq!(
        deny.attr("process.pid"),
        Some(format!("Int({pid})").as_str())
    );
    assert_eq!(deny.attr("gen_ai.agent.name"), Some("Str(tester)"));
    // The agent's SPIFFE ID, in the default trust domain (the host name).
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let spiffe = format!("Str(spiffe://{}/agent/tester)", host.trim().to_lowercase());
    assert_eq!(deny.attr("gen_ai.agent.id"), Some(spiffe.as_str()));
    assert_eq!(
        deny.attr("agentcage.agent.identity"),
        Some("Str(agent:tester)")
    );
    assert_eq!(deny.attr("agentcage.rule"), Some("Str(default-deny)"));
    assert_eq!(deny.field("SeverityText"), Some("WARN"));
    let allow = decisions
        .iter()
        .find(|i| i.attr("agentcage.verdict") == Some("Str(allow)"))
        .expect("an allow record");
    assert_eq!(allow.field("SeverityText"), Some("INFO"));
    assert!(allow
        .attr("agentcage.rule.text")
        .is_some_and(|t| t.contains(&port.to_string())));

    // One trace for the session: the decisions' spans are children of the root span.
    let trace = root.field("Trace ID").expect("trace id").to_owned();
    let root_id = root.field("ID").expect("span id").to_owned();
    assert_eq!(
        root.attr("gen_ai.operation.name"),
        Some("Str(invoke_agent)")
    );
    let children = egress_spans(&items);
    assert_eq!(children.len(), 2, "{children:#?}");
    for c in &children {
        assert_eq!(c.field("Trace ID"), Some(trace.as_str()));
        assert_eq!(c.field("Parent ID"), Some(root_id.as_str()));
    }
    let denied_span = children
        .iter()
        .find(|c| c.attr("agentcage.verdict") == Some("Str(deny)"))
        .unwrap();
    assert_eq!(denied_span.field("Status code"), Some("STATUS_CODE_ERROR"));
    // The log record points at its span.
    assert_eq!(deny.field("Trace ID"), Some(trace.as_str()));
    assert_eq!(deny.field("Span ID"), denied_span.field("ID"));
    let sessions = logs_named(&items, "agentcage.session");
    assert_eq!(sessions.len(), 2, "start and end: {sessions:#?}");

    // Metrics: decisions by verdict, no pid anywhere.
    let decided = collector.wait_for("the decisions metric", |items| {
        items
            .iter()
            .find(|i| i.kind == "metric" && i.name == "agentcage.decisions")
            .cloned()
    });
    assert!(!decided.attrs.contains_key("process.pid"), "{decided:#?}");

    // Policy events: a refused reload is an ERROR record naming the problem.
    let refused = daemon.rewrite_policy("version: 1\nagents: [\n");
    assert!(!refused.status.success());
    let record = collector.wait_for("the refused reload", |items| {
        logs_named(items, "agentcage.policy.reload")
            .first()
            .map(|i| (*i).clone())
    });
    assert_eq!(record.attr("agentcage.policy.result"), Some("Str(refused)"));
    assert_eq!(record.field("SeverityText"), Some("ERROR"));
    assert!(record.attr("error.message").is_some(), "{record:#?}");
    let _ = daemon.stop();
}

#[test]
fn events_arrive_over_grpc_as_typed_log_records_and_spans_of_one_session_trace() {
    check_typed_export("grpc", "none");
}

#[test]
fn events_arrive_over_http_protobuf_too() {
    check_typed_export("http/protobuf", "none");
}

/// gzip is framed by the exporter itself over gRPC (telemetry/transport/grpc.rs).
#[test]
fn events_arrive_gzipped_over_grpc_and_http_protobuf() {
    check_typed_export("grpc", "gzip");
    check_typed_export("http/protobuf", "gzip");
}

/// Waits until every log record up to the marker's has arrived, and returns how many times
/// each sequence number was received.
fn received_seqs(collector: &Collector, marker_port: u16) -> BTreeMap<u64, usize> {
    let marker = format!("Int({marker_port})");
    // Each signal is read in spool order, but batches in flight together may reach the
    // collector in any order: wait for the marker (the last event) as a log record and as a
    // span, and for a log record of every sequence number up to the marker's.
    collector.wait_for(
        "every log record up to the marker's, and its span",
        |items| {
            let marked = |kind| {
                items
                    .iter()
                    .find(|i| i.kind == kind && i.attr("server.port") == Some(marker.as_str()))
            };
            let last = marked("log")?.seq()?;
            marked("span")?;
            collector::logs_through(items, last).then_some(())
        },
    );
    let mut seen = BTreeMap::new();
    for i in collector.items().iter().filter(|i| i.kind == "log") {
        *seen
            .entry(i.seq().expect("every record has its seq"))
            .or_insert(0) += 1;
    }
    seen
}

#[test]
fn every_event_arrives_exactly_once_across_a_collector_outage_and_a_daemon_restart() {
    let mut collector = Collector::start();
    let spool = tempfile::tempdir().unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = config(conf_dir.path(), &collector.grpc(), "grpc", spool.path());
    let (_ok, port) = harness::tcp_listener("127.0.0.1");
    let daemon = Daemon::start_args(&policy(port), &["--config", &conf]);
    // Each denial to a port of its own: repeats of one destination would be summarized
    // (tests/flood.rs), and this test counts records one by one.
    let mut next_port = 1000u16;
    let mut denied = |cage: &mut harness::Served, n: usize| {
        for _ in 0..n {
            next_port += 1;
            assert_eq!(cage.op(&format!("connect 127.0.0.2:{next_port}")), EPERM);
        }
    };

    // Up: a first batch arrives.
    let mut cage = daemon.serve_in("tester");
    denied(&mut cage, 5);
    collector.wait_for("the first five denials", |items| {
        (logs_named(items, "agentcage.egress.decision").len() == 5).then_some(())
    });
    // The exporters have had the collector's answer for them (their cursors passed them)
    // before it goes: a batch it took but never answered is sent again (OTLP delivers at
    // least once), which is not what this test is about.
    let last = agentcage_tests::spool::records(spool.path())
        .last()
        .and_then(|r| r["seq"].as_u64())
        .expect("the spool holds the denials");
    let end = std::time::Instant::now() + harness::deadline();
    while !agentcage_tests::spool::cursor(spool.path())["readers"]
        .as_object()
        .is_some_and(|r| r.values().all(|v| v.as_u64() >= Some(last)))
    {
        assert!(
            std::time::Instant::now() < end,
            "the exporters never acknowledged seq {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Down: events keep being decided and spooled.
    collector.stop();
    denied(&mut cage, 20);
    daemon
        .log
        .wait_for("the daemon to notice the collector is gone", |l| {
            l.contains("collector unreachable")
        });
    assert!(cage.finish().success());

    // The daemon restarts while the collector is still down; the new one resumes from the
    // spool and adds its own events to it.
    let (dir, policy_path, socket, cgroup) = daemon.stop_keeping_paths();
    let daemon = Daemon::start_with(dir, policy_path, socket, cgroup, &["--config", &conf])
        .expect("restarted daemon");
    let mut cage = daemon.serve_in("tester");
    denied(&mut cage, 15);

    // Up again: everything arrives, once.
    collector.restart();
    let marker_port = next_port + 1;
    assert_eq!(cage.op(&format!("connect 127.0.0.3:{marker_port}")), EPERM);
    assert!(cage.finish().success());
    let seen = received_seqs(&collector, marker_port);
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicates.is_empty(),
        "received more than once: {duplicates:?}"
    );
    let last = *seen.keys().next_back().unwrap();
    let missing: Vec<u64> = (1..=last).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "never received: {missing:?}");
    let items = collector.items();
    let denials = logs_named(&items, "agentcage.egress.decision")
        .into_iter()
        .filter(|i| i.attr("server.address") == Some("Str(127.0.0.2)"))
        .count();
    assert_eq!(denials, 5 + 20 + 15, "seqs received: {seen:?}");
    // Spans too: one per decision, no repeats.
    let mut span_ids = BTreeMap::new();
    for s in items
        .iter()
        .filter(|i| i.kind == "span" && i.name.starts_with("egress "))
    {
        *span_ids
            .entry(s.field("ID").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(span_ids.len(), 5 + 20 + 15 + 1, "one span per decision");
    assert!(span_ids.values().all(|n| *n == 1), "{span_ids:?}");
    let _ = daemon.stop();
}

#[test]
fn a_full_spool_drops_the_oldest_and_reports_how_many() {
    // No collector at all: the spool fills to its bound.
    let spool = tempfile::tempdir().unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let path = conf_dir.path().join("agentcaged.yaml");
    let dead = collector::free_port();
    fs::write(
        &path,
        format!(
            "telemetry:\n  endpoint: http://127.0.0.1:{dead}\n  retry_max_ms: 200\n\
             spool:\n  dir: {}\n  max_bytes: 16384\n  segment_bytes: 4096\n",
            spool.path().display()
        ),
    )
    .unwrap();
    let (_ok, port) = harness::tcp_listener("127.0.0.1");
    let daemon = Daemon::start_args(&policy(port), &["--config", path.to_str().unwrap()]);
    let mut cage = daemon.serve_in("tester");
    // Distinct destinations: repeats of one would be summarized and never fill the spool.
    // (Port 53 goes to the cage's resolver, whatever the address.)
    for p in (1..=101).filter(|&p| p != 53) {
        assert_eq!(cage.op(&format!("connect 127.0.0.2:{p}")), EPERM);
    }
    assert!(cage.finish().success());
    let _ = daemon.stop();
    // The bound held, the loss was counted, and said in the spool itself.
    let mut bytes = 0;
    let mut text = String::new();
    for e in fs::read_dir(spool.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            bytes += fs::metadata(&p).unwrap().len();
            text.push_str(&fs::read_to_string(&p).unwrap());
        }
    }
    assert!(bytes <= 16384, "spool is {bytes} bytes");
    let cursor: serde_json::Value =
        serde_json::from_slice(&fs::read(spool.path().join("cursor.json")).unwrap()).unwrap();
    let dropped = cursor["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{cursor}");
    assert!(
        text.contains("\"entry\":\"dropped\"") && text.contains("\"reason\":\"size_bound\""),
        "{text}"
    );
}
