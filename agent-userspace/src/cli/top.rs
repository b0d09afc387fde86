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
    events::{EgressDetail, Event, EventDetail},
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
    let denials: Vec<(&Event, &EgressDetail, u64)> = events
        .iter()
        .rev()
        .filter_map(|e| decision(e).map(|(d, n)| (e, d, n)))
        .filter(|(_, d, _)| d.verdict == crate::events::Verdict::Deny)
        .take(DENIALS)
        .collect();
    if denials.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for (e, d, n) in denials {
        let times = if n > 1 {
            format!("  x{n}")
        } else {
            String::new()
        };
        let secs = e.time_unix_nano / 1_000_000_000;
        let target = d
            .dst_addr
            .map(|a| std::net::SocketAddr::new(a, d.dst_port).to_string())
            .unwrap_or_else(|| format!("{} socket", d.sock_type));
        let _ = writeln!(
            s,
            "  {:02}:{:02}:{:02}  {:<16} {}({})  {} {} {}  {}{times}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            e.agent.as_ref().map_or("(no cage)", |a| a.as_str()),
            e.comm,
            e.tgid,
            d.hook,
            d.protocol,
            target,
            d.rule
        );
    }
    s
}

/// An egress decision and how many it stands for (a summary of a flood is one line with its
/// count).
fn decision(e: &Event) -> Option<(&EgressDetail, u64)> {
    match &e.detail {
        EventDetail::Egress(d) => Some((d, 1)),
        EventDetail::EgressSummary(s) => Some((&s.decision, s.count)),
        _ => None,
    }
}
