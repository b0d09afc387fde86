//! The local web dashboard: agents, their process trees, recent decisions, budgets and
//! approvals waiting, served on a loopback address only.
//!
//! Authorisation is the CLI's: the page itself holds no data, and every API call must carry
//! the daemon's dashboard token, which is handed out only over the control socket
//! (`agentcage dashboard`), i.e. to the same peers (root, or the configured group) that may use
//! the CLI. The token travels in an `Authorization: Bearer` header, which a page of another
//! origin cannot send without a CORS preflight the dashboard never grants; the Host header
//! must name the loopback address, which defeats DNS rebinding.
//!
//! The same listener serves tools' backends the credential endpoints (`credential_http`),
//! which need no token.

use crate::{daemon::StateError, runtime::approvals::ApprovalError};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{server::Shared, DaemonError};
use crate::{control::StatusReport, events::Event};

/// The `dashboard:` section of the configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Where to listen (a loopback address; port 0 picks a free one). None: no dashboard.
    pub listen: Option<SocketAddr>,
}

/// How many recent events the page shows.
const RECENT: usize = 200;

const PAGE: &str = include_str!("dashboard.html");

/// A process in a cage, for the tree view.
#[derive(Serialize)]
struct Proc {
    pid: u32,
    ppid: u32,
    comm: String,
}

/// An approval waiting for a decision.
#[derive(Serialize)]
struct Approval {
    id: String,
    agent: String,
    what: String,
}

#[derive(Serialize)]
struct View<'a> {
    status: &'a StatusReport,
    trees: BTreeMap<String, Vec<Proc>>,
    events: Vec<&'a Event>,
    approvals: Vec<Approval>,
}

/// Binds the listener; refuses anything but a loopback address.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, DaemonError> {
    if !listen.ip().is_loopback() {
        return Err(DaemonError::Dashboard(format!(
            "dashboard.listen {listen} is not a loopback address: the dashboard is local only"
        )));
    }
    TcpListener::bind(listen)
        .await
        .map_err(|e| DaemonError::Dashboard(format!("binding {listen}: {e}")))
}

/// A fresh random token (hex), from the kernel's generator.
pub fn new_token() -> Result<String, DaemonError> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| DaemonError::Sys("reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves the dashboard until aborted.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, token: Arc<str>) {
    let addr = listener.local_addr().ok();
    info!(address = ?addr, "dashboard listening (loopback only; `agentcage dashboard` prints its address)");
    // Bounded: a local process opening connection after connection, or sending its
    // headers a byte a minute, cannot take the dashboard (or the daemon's descriptors).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "dashboard accept failed; pausing it for 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let token = Arc::clone(&token);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let token = Arc::clone(&token);
                async move {
                    let response = if !host_ok(&req, addr) {
                        error(StatusCode::MISDIRECTED_REQUEST, "unexpected Host header")
                    } else if super::credential_http::wants(&req) {
                        super::credential_http::serve(shared, req).await
                    } else {
                        handle(&shared, &token, req)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

/// Dashboard connections served at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send a request's headers (and, between requests on a
/// kept-alive connection, to start the next).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lasts: the page polls, one short request at a time.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = kind.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert("x-frame-options", header::HeaderValue::from_static("DENY"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

/// Constant-time comparison: the token must not leak through timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorised(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()))
}

/// The Host header names our loopback address (or localhost) and port.
fn host_ok(req: &Request<Incoming>, addr: Option<SocketAddr>) -> bool {
    let Some(addr) = addr else { return false };
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let ip_ok = name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ip_ok && port.parse::<u16>().ok() == Some(addr.port())
}

fn handle(shared: &Shared, token: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        _ if !authorised(&req, token) => error(
            StatusCode::UNAUTHORIZED,
            "unauthorised: open the address `agentcage dashboard` prints",
        ),
        (&Method::GET, "/api/state") => state(shared),
        (&Method::POST, p) if p.starts_with("/api/approvals/") => {
            let mut parts = p.trim_start_matches("/api/approvals/").split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(decision @ ("approve" | "deny")), None) if !id.is_empty() => {
                    decide(shared, id, decision)
                }
                _ => error(
                    StatusCode::NOT_FOUND,
                    "use /api/approvals/ID/approve or /deny",
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such page"),
    }
}

fn state(shared: &Shared) -> Response<Full<Bytes>> {
    let (status, waiting) = {
        let st = shared.state();
        (st.status(), st.approvals())
    };
    let approvals = waiting
        .into_iter()
        .filter(|r| r.status == crate::runtime::approvals::Status::Pending)
        .map(|r| Approval {
            id: r.id.to_string(),
            agent: r.agent,
            what: r.subject.describe(),
        })
        .collect();
    let trees = status
        .agents
        .iter()
        .map(|a| {
            let procs = a.pids.iter().filter_map(|pid| proc_of(*pid)).collect();
            (a.name.clone(), procs)
        })
        .collect();
    let recent = shared.bus.recent();
    let events = recent[recent.len().saturating_sub(RECENT)..]
        .iter()
        .map(|e| &**e)
        .collect();
    let view = View {
        status: &status,
        trees,
        events,
        approvals,
    };
    match serde_json::to_string(&view) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Approves or denies a waiting approval. The token is the CLI's authorisation (handed out
/// on the control socket only), so the decision is recorded as the dashboard's.
fn decide(shared: &Shared, id: &str, decision: &str) -> Response<Full<Bytes>> {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no approval {id:?} is waiting"),
        );
    };
    let approver = "dashboard (control-socket token)";
    let result = {
        let mut st = shared.state();
        if decision == "approve" {
            st.approve(id, approver, None)
        } else {
            st.deny(id, approver)
        }
    };
    match result {
        Ok(r) => {
            info!(id, decision, "dashboard: approval decided");
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&r).unwrap_or_default(),
            )
        }
        Err(e) => {
            warn!(id, decision, error = %e, "dashboard: decision refused");
            let code = match e {
                StateError::Approval(ApprovalError::Unknown(_)) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            error(code, &e.to_string())
        }
    }
}

/// pid, parent and command name from /proc/PID/stat (the name may hold spaces and ')').
fn proc_of(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let ppid = stat
        .get(close + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Proc { pid, ppid, comm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
    }

    #[test]
    fn our_own_process_reads_from_proc() {
        let me = proc_of(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
    }
}
