//! A real OpenTelemetry collector for the tests: Rotel (installed into `.tools/rotel` by
//! `cargo xtask setup`), on free loopback ports, printing everything it receives; and a parser
//! for what it prints.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long a test waits for data to reach the collector.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The rotel-agent binary.
pub fn rotel() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/rotel/rotel/rotel-agent");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (it installs Rotel from PyPI)",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// One received item as Rotel's detailed debug log prints it.
#[derive(Clone, Debug, Default)]
pub struct Item {
    /// `log`, `span` or `metric`.
    pub kind: &'static str,
    /// Event name (logs), span name, or metric name.
    pub name: String,
    /// Attributes as printed, e.g. `Int(8080)`, `Str(deny)`.
    pub attrs: BTreeMap<String, String>,
    /// `Trace ID`, `Span ID`/`ID`, `Parent ID`, `Status code`, `SeverityText`, `Body`.
    pub fields: BTreeMap<String, String>,
}

impl Item {
    /// An attribute's printed value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    /// A field's printed value.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// The `agentcage.event.seq` attribute.
    pub fn seq(&self) -> Option<u64> {
        self.attr("agentcage.event.seq")?
            .strip_prefix("Int(")?
            .strip_suffix(')')?
            .parse()
            .ok()
    }
}

/// Whether `items` hold a log record of every sequence number from 1 to `last`. The
/// exporters read the spool in order, but batches in flight together may reach the
/// collector in any order: a test waits for this rather than for its last record alone.
pub fn logs_through(items: &[Item], last: u64) -> bool {
    let seen: std::collections::BTreeSet<u64> = items
        .iter()
        .filter(|i| i.kind == "log")
        .filter_map(Item::seq)
        .collect();
    (1..=last).all(|s| seen.contains(&s))
}

/// Splits Rotel's output into received items (resource attributes are skipped).
pub fn parse(lines: &[String]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let mut current: Option<Item> = None;
    for line in lines {
        let t = line.trim();
        let start = if t.starts_with("LogRecord #") {
            Some("log")
        } else if t.starts_with("Span #") {
            Some("span")
        } else if t.starts_with("Metric #") {
            Some("metric")
        } else {
            None
        };
        if let Some(kind) = start {
            items.extend(current.take());
            current = Some(Item {
                kind,
                ..Item::default()
            });
            continue;
        }
        if t.starts_with("Resource") || t.starts_with("ScopeLogs") || t.starts_with("ScopeSpans") {
            items.extend(current.take());
            continue;
        }
        let Some(item) = current.as_mut() else {
            continue;
        };
        if let Some(attr) = t.strip_prefix("-> ") {
            if let Some((k, v)) = attr.split_once(": ") {
                if item.kind == "metric" && k == "Name" {
                    item.name = v.to_owned();
                } else {
                    item.attrs.insert(k.to_owned(), v.to_owned());
                }
            }
        } else if let Some((k, v)) = t.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            match (item.kind, k) {
                ("log", "EventName") | ("span", "Name") => item.name = v.to_owned(),
                _ => {
                    item.fields.insert(k.to_owned(), v.to_owned());
                }
            }
        }
    }
    items.extend(current);
    items
}

/// A running Rotel.
pub struct Collector {
    child: Option<Child>,
    /// Its OTLP/gRPC port on 127.0.0.1.
    pub grpc_port: u16,
    /// Its OTLP/HTTP port on 127.0.0.1.
    pub http_port: u16,
    dir: tempfile::TempDir,
    /// Everything it printed, across restarts.
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<()>,
    tx: mpsc::Sender<()>,
}

impl Collector {
    /// Starts Rotel on free loopback ports and waits until it accepts connections.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::channel();
        let mut c = Self {
            child: None,
            grpc_port: free_port(),
            http_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            lines: Arc::new(Mutex::new(Vec::new())),
            rx,
            tx,
        };
        c.restart();
        c
    }

    /// The gRPC endpoint URL.
    pub fn grpc(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The HTTP endpoint URL.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts it again (after [`Self::stop`]) on the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(rotel())
            .arg("start")
            .args([
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{}", self.grpc_port),
            ])
            .args([
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", self.http_port),
            ])
            .args(["--exporter", "blackhole"])
            .args([
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
            ])
            .args(["--debug-log-verbosity", "detailed"])
            // Its defaults are fixed paths in /tmp, shared by every Rotel on the machine.
            .arg("--pid-file")
            .arg(self.dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(self.dir.path().join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rotel-agent");
        let out = child.stdout.take().unwrap();
        let lines = Arc::clone(&self.lines);
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        self.child = Some(child);
        // Ready when both ports accept (bounded by the deadline).
        let deadline = Instant::now() + DEADLINE;
        for port in [self.grpc_port, self.http_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "rotel never listened on {port}");
                // Nothing to wait on but the port itself: a short pause between tries.
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills it and waits until its ports are closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(TcpStream::connect(("127.0.0.1", self.grpc_port)).is_err());
    }

    /// Everything received so far.
    pub fn items(&self) -> Vec<Item> {
        parse(&self.lines.lock().unwrap())
    }

    /// Waits until `pred` finds what it wants in everything received so far.
    pub fn wait_for<T>(&self, what: &str, pred: impl Fn(&[Item]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(found) = pred(&self.items()) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.rx.recv_timeout(left).is_err() {
                let items = self.items();
                panic!(
                    "timed out waiting for {what}; the collector got {} items:\n{:#?}",
                    items.len(),
                    items.iter().rev().take(20).collect::<Vec<_>>()
                );
            }
            // Take every line that arrived at once before parsing again.
            while self.rx.try_recv().is_ok() {}
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
