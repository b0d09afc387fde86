//! `agentcage top`: a live terminal view of the agents, their counters and recent denials,
//! redrawn from `status` and the recent events every interval.
//!
//! The rung and budget columns come from the status report (the rung in force, and whether a
//! hard budget limit throttles the agent).

use std::{io::Write as _, time::Duration};

use super::stream::{self, Item};
use super::CliError;
use crate::{
    control::{AgentStatus, Client, Request, Response, StatusReport},
    events::{EgressDetail, Event, EventDetail, Verdict},
};

/// How many recent denials the view lists.
const DENIALS: usize = 10;

/// The agent's containment rung.
fn rung_of(agent: &AgentStatus) -> String {
    if agent.rung.is_empty() {
        "-".to_owned()
    } else {
        agent.rung.clone()
    }
}

/// Whether a hard budget limit throttles the agent.
fn budget_of(agent: &AgentStatus) -> String {
    if agent.throttled {
        "THROTTLED".to_owned()
    } else {
        "ok".to_owned()
    }
}

/// Runs the view: once (for scripts and tests), or redrawn every `interval` until Ctrl-C.
pub fn top(socket: &std::path::Path, interval: Duration, once: bool) -> Result<i32, CliError> {
    loop {
        let (report, events) = snapshot(socket)?;
        let frame = render(&report, &events);
        let mut out = std::io::stdout().lock();
        let result = if once {
            write!(out, "{frame}")
        } else {
            // Home and clear, then the frame: no flicker of a scrolled terminal.
            write!(out, "\x1b[H\x1b[2J{frame}")
        };
        result
            .and_then(|()| out.flush())
            .map_err(CliError::os("writing the view"))?;
        if once {
            return Ok(0);
        }
        std::thread::sleep(interval);
    }
}

/// The status and the recent events, from the daemon.
pub fn snapshot(socket: &std::path::Path) -> Result<(StatusReport, Vec<Event>), CliError> {
    let report = match Client::connect(socket)?.call(&Request::Status {})? {
        Response::Status(r) => r,
        other => return Err(CliError::unexpected(&other)),
    };
    let mut client = Client::connect(socket)?;
    client.send(&Request::Events { follow: false })?;
    let mut events = Vec::new();
    while let Some(line) = client.read_line()? {
        // An event this CLI cannot decode (a newer daemon's kind or shape) is left out of
        // the view rather than ending it.
        if let Item::Event(json) = stream::parse(&line)? {
            events.extend(serde_json::from_str::<Event>(json).ok());
        }
    }
    Ok((report, events))
}

/// One frame of the view.
pub fn render(report: &StatusReport, events: &[Event]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "agentcage top — policy {} ({}), {} agent(s), lost outside cages: {}",
        report.policy_source,
        report.policy_hash.get(..12).unwrap_or(&report.policy_hash),
        report.agents.len(),
        report.global_lost
    );
    let _ = writeln!(
        s,
        "\n{:<20} {:<8} {:>5} {:>9} {:>9} {:>6} {:>8}",
        "AGENT", "RUNG", "PIDS", "ALLOWED", "DENIED", "LOST", "BUDGET"
    );
    for a in &report.agents {
        let _ = writeln!(
            s,
            "{:<20} {:<8} {:>5} {:>9} {:>9} {:>6} {:>8}",
            a.name,
            rung_of(a),
            a.pids.len(),
            a.allowed,
            a.denied,
            a.lost,
            budget_of(a)
        );
    }
    let _ = writeln!(s, "\nRECENT DENIALS");
    let denials: Vec<(&Event, String)> = events
        .iter()
        .rev()
        .filter_map(|e| denial_of(e).map(|line| (e, line)))
        .take(DENIALS)
        .collect();
    if denials.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for (e, line) in denials {
        let secs = e.time_unix_nano / 1_000_000_000;
        let _ = writeln!(
            s,
            "  {:02}:{:02}:{:02}  {:<16} {}({})  {line}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            e.agent.as_ref().map_or("(no cage)", |a| a.as_str()),
            e.comm,
            e.tgid,
        );
    }
    s
}

/// What a denial was (hook, protocol, destination, rule), or None for any other event: a
/// denied egress decision, or a DNS query the cage's resolver refused (by name and type). A
/// destination the cage's resolver granted shows its name beside the address.
fn denial_of(e: &Event) -> Option<String> {
    let (d, n) = match &e.detail {
        EventDetail::Egress(d) => (d, 1),
        // A summary of a flood is one line with its count.
        EventDetail::EgressSummary(s) => (&s.decision, s.count),
        EventDetail::Dns(d) if d.verdict != Verdict::Allow => {
            return Some(format!(
                "dns {} {} {}  {}",
                d.transport, d.name, d.qtype, d.rule
            ))
        }
        _ => return None,
    };
    egress_denial(d, n)
}

/// A denied egress decision's line, with `xN` when it stands for N of them.
fn egress_denial(d: &EgressDetail, n: u64) -> Option<String> {
    match d {
        d if d.verdict == Verdict::Deny => {
            let target = d.dst_addr.map_or_else(
                || format!("{} socket", d.sock_type),
                |a| {
                    let addr = std::net::SocketAddr::new(a, d.dst_port);
                    d.dst_name
                        .as_ref()
                        .map_or_else(|| addr.to_string(), |n| format!("{n} ({addr})"))
                },
            );
            let times = if n > 1 {
                format!("  x{n}")
            } else {
                String::new()
            };
            Some(format!(
                "{} {} {target}  {}{times}",
                d.hook, d.protocol, d.rule
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Event {
        serde_json::from_str(json).unwrap()
    }

    const HEAD: &str = r#""time_unix_nano":1700000000000000000,"kernel_ts_ns":1,"agent":"agent:payer","agent_seq":3,"pid":7,"tgid":7,"comm":"probe","cgroup_id":1,"policy_hash":"a1""#;

    #[test]
    fn denials_name_what_the_cages_resolver_refused_and_granted() {
        let refused = event(&format!(
            r#"{{{HEAD},"kind":"dns","name":"exfil.example.org","qtype":"TXT","transport":"tcp","verdict":"deny","rule":"dns-query-type"}}"#
        ));
        assert_eq!(
            denial_of(&refused).as_deref(),
            Some("dns tcp exfil.example.org TXT  dns-query-type")
        );
        let named = event(&format!(
            r#"{{{HEAD},"kind":"egress","hook":"connect4","family":"ipv4","protocol":"tcp","sock_type":"stream","dst_addr":"127.0.0.2","dst_name":"api.example.com","dst_port":22,"verdict":"deny","rule":"default-deny"}}"#
        ));
        assert_eq!(
            denial_of(&named).as_deref(),
            Some("connect4 tcp api.example.com (127.0.0.2:22)  default-deny")
        );
        let plain = event(&format!(
            r#"{{{HEAD},"kind":"egress","hook":"connect4","family":"ipv4","protocol":"tcp","sock_type":"stream","dst_addr":"127.0.0.2","dst_port":22,"verdict":"deny","rule":"default-deny"}}"#
        ));
        assert_eq!(
            denial_of(&plain).as_deref(),
            Some("connect4 tcp 127.0.0.2:22  default-deny")
        );
        // Answered queries and allowed connects are not denials.
        let answered = event(&format!(
            r#"{{{HEAD},"kind":"dns","name":"api.example.com","qtype":"A","transport":"udp","verdict":"allow","rule":"egress.allow[0]"}}"#
        ));
        assert_eq!(denial_of(&answered), None);
        let report: StatusReport = serde_json::from_str(
            r#"{"version":"0","policy_source":"p","policy_hash":"h","cgroup_root":"/c","global_lost":0,"agents":[]}"#,
        )
        .unwrap();
        let view = render(&report, &[answered, refused]);
        assert!(
            view.contains("agent:payer      probe(7)  dns tcp exfil.example.org TXT"),
            "{view}"
        );
    }
}
