//! `cargo xtask bench events`: how many events the daemon takes from the kernel into its
//! spool, and exports, on this machine.
//!
//! A cage is held open (`xtask __hold`) and a producer runs in it (`xtask __udp-send`): UDP
//! datagrams to loopback addresses the policy denies, each to a destination of its own
//! (127.1.0.0 onwards: nothing to coalesce), at a paced rate, step by step. For each step
//! the bench waits until every datagram's decision is either in the spool or counted by the
//! kernel as lost (its ring was full), and reports the daemon's CPU (from /proc/PID/stat)
//! per thousand events and the spool's bytes per event. Then a flood of 1,000,000 datagrams
//! to one destination: how many records it became and whether their counts add up. Then the
//! export, without and with gzip ([`super::export`]).

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;

use super::common::{argv, spawn_ready, Daemon, WorkDir, AGENT, POLL};
use crate::{
    setup::run_setup,
    util::{output as output_of, require_root},
};

/// The daemon's parent cgroup, apart from any real one.
const DAEMON_CGROUP: &str = "agentcage-bench-events";
/// Targets from the issue.
const TARGET_SPOOL_RATE: f64 = 200_000.0;
const FLOOD: u64 = 1_000_000;
const TARGET_FLOOD_RECORDS: u64 = 1_000;
/// How long the decisions of one step may take to settle after the producer is done.
pub(super) const SETTLE: Duration = Duration::from_secs(60);
/// The destination of the flood (denied, like every destination of the bench).
const FLOOD_TO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 9);

#[derive(Args)]
pub struct EventsArgs {
    /// Seconds each rate step sends for.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rates to try, events per second, comma-separated; 0 sends as fast as the producer can.
    #[arg(long, value_delimiter = ',', default_values_t = [50_000u64, 100_000, 200_000, 300_000, 0])]
    rates: Vec<u64>,
    /// Distinct events for the export measurement.
    #[arg(long, default_value_t = 200_000)]
    export_events: u64,
    /// Only the export measurement: no intake steps, no flood.
    #[arg(long)]
    export_only: bool,
    /// Export measurements of each compression, one after the other (this machine's speed
    /// varies from run to run).
    #[arg(long, default_value_t = 1)]
    export_runs: u32,
}

#[derive(Args)]
pub struct UdpSendArgs {
    /// Datagrams to send.
    #[arg(long)]
    count: u64,
    /// Datagrams per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Index of the first distinct destination (127.1.0.0 plus the index).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Send every datagram to this one destination instead (a flood).
    #[arg(long)]
    to: Option<SocketAddrV4>,
}

/// The `i`-th distinct destination: 127.1.0.0 onwards (16 million before it wraps).
fn distinct(i: u64) -> SocketAddrV4 {
    let i = i % (254 << 16);
    let [_, _, _, _, _, b, c, d] = i.to_be_bytes();
    SocketAddrV4::new(Ipv4Addr::new(127, b + 1, c, d), 9)
}

/// `xtask __udp-send`: sends the datagrams, each of which must be denied (EPERM), and prints
/// how many were sent and the nanoseconds it took.
pub fn udp_send(args: &UdpSendArgs) -> Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    let start = Instant::now();
    for i in 0..args.count {
        let dst = args.to.unwrap_or_else(|| distinct(args.first + i));
        match socket.send_to(b"x", dst) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e).with_context(|| format!("sending to {dst}")),
            Ok(_) => bail!("a datagram to {dst} went out: the bench's destinations must be denied"),
        }
        if args.rate > 0 && i % 256 == 255 {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                // Pacing, not synchronisation.
                std::thread::sleep(wait);
            }
        }
    }
    println!("{} {}", args.count, start.elapsed().as_nanos());
    Ok(())
}

/// What one step found.
struct Step {
    asked: u64,
    sent: u64,
    rate: f64,
    spooled: u64,
    lost: u64,
    dropped: u64,
    cpu_ms_per_k: f64,
    bytes_per_event: f64,
}

impl Step {
    fn clean(&self) -> bool {
        self.lost == 0 && self.dropped == 0 && self.spooled == self.sent
    }
}

pub fn bench_events(args: &EventsArgs) -> Result<()> {
    require_root("`cargo xtask bench events`")?;
    ensure!(args.seconds > 0.0, "--seconds must be above 0");
    run_setup()?;
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let work = WorkDir::new()?;
    let policy = format!("version: 1\nagents:\n  {AGENT}: {{}}\n");

    if !args.export_only {
        let (steps, flood) = measure_intake(args, &work, &exe, &policy)?;
        report(&steps, &flood);
    }
    let mut export = Vec::new();
    for run in 0..args.export_runs.max(1) {
        for compression in ["none", "gzip"] {
            let e = super::export::measure_export(
                &work,
                &exe,
                &policy,
                (args.export_events, run),
                compression,
            )?;
            export.push((compression, e));
        }
    }
    super::export::report_export(&export);
    Ok(())
}

/// The intake steps and the flood.
fn measure_intake(
    args: &EventsArgs,
    work: &WorkDir,
    exe: &Path,
    policy: &str,
) -> Result<(Vec<Step>, Flood)> {
    // The spool alone: an endpoint nobody listens on, a bound far above what is sent.
    let spool = work.0.join("spool");
    let conf = config(&work.0, "spool", free_port()?, &spool, "none")?;
    let (daemon, holder, mut tail) = start_held(work, exe, policy, (&conf, &spool))?;
    let mut first = 0;
    println!(
        "bench events: distinct denied UDP datagrams from a caged producer, {} s a step; \
         decisions in the spool vs the kernel's loss count",
        args.seconds
    );
    let mut steps = Vec::new();
    for &rate in &args.rates {
        let count = if rate == 0 {
            (TARGET_SPOOL_RATE * 2.0 * args.seconds) as u64
        } else {
            (rate as f64 * args.seconds) as u64
        };
        let step = run_step(&daemon, exe, &mut tail, (rate, count, first))?;
        first += count;
        eprintln!(
            "  asked {} /s: sent {} at {:.0} /s; spooled {}, kernel lost {}, spool dropped {}; \
             daemon {:.1} ms CPU per 1,000; {:.0} bytes per event",
            if rate == 0 {
                "max".into()
            } else {
                rate.to_string()
            },
            step.sent,
            step.rate,
            step.spooled,
            step.lost,
            step.dropped,
            step.cpu_ms_per_k,
            step.bytes_per_event
        );
        steps.push(step);
    }
    let flood = run_flood(&daemon, exe, &mut tail)?;
    kill_holder(holder)?;
    Ok((steps, flood))
}

/// A daemon on configuration `conf` whose spool is `spool`, the cage held open in it, and
/// the spool's tail.
pub(super) fn start_held(
    work: &WorkDir,
    exe: &Path,
    policy: &str,
    (conf, spool): (&Path, &Path),
) -> Result<(Daemon, Child, SpoolTail)> {
    let daemon = Daemon::start_with_args(
        &work.0,
        policy,
        DAEMON_CGROUP,
        &[OsStr::new("--config"), conf.as_os_str()],
    )?;
    let holder = spawn_ready(daemon.run_cmd(&argv(&hold(exe))))?;
    Ok((daemon, holder, SpoolTail::new(spool)))
}

/// `xtask __hold --children 0`: keeps the cage (and its counters) between the steps.
fn hold(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    c.args(["__hold", "--children", "0"]);
    c
}

/// Stops the holder: SIGTERM to `agentcage run`, which passes it on to the caged process,
/// so the cage empties and the daemon can remove it.
pub(super) fn kill_holder(mut holder: Child) -> Result<()> {
    let pid = libc::pid_t::try_from(holder.id()).context("the holder's pid")?;
    // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error()).context("stopping the holder");
    }
    holder.wait()?;
    Ok(())
}

/// The daemon's configuration: telemetry to 127.0.0.1:`port`, the spool in `spool` with a
/// bound far above what the bench sends.
pub(super) fn config(
    work: &Path,
    name: &str,
    port: u16,
    spool: &Path,
    compression: &str,
) -> Result<PathBuf> {
    let path = work.join(format!("{name}.yaml"));
    fs::write(
        &path,
        format!(
            "telemetry:\n  endpoint: http://127.0.0.1:{port}\n  protocol: grpc\n  \
             compression: {compression}\n  retry_max_ms: 100\n  node_id: bench\n\
             spool:\n  dir: {}\n  max_bytes: {}\n  segment_bytes: {}\n",
            spool.display(),
            8u64 << 30,
            8u64 << 20
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the producer in the held cage; returns (sent, seconds it took).
pub(super) fn produce(daemon: &Daemon, exe: &Path, args: &[String]) -> Result<(u64, f64)> {
    let mut c = Command::new(exe);
    c.arg("__udp-send").args(args);
    let out = output_of(&mut daemon.run_cmd(&argv(&c)))?;
    let last = out.lines().last().unwrap_or("");
    let (sent, ns) = last
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .with_context(|| format!("the producer printed {out:?}"))?;
    Ok((sent, ns as f64 / 1e9))
}

fn run_step(
    daemon: &Daemon,
    exe: &Path,
    tail: &mut SpoolTail,
    (rate, count, first): (u64, u64, u64),
) -> Result<Step> {
    let lost0 = kernel_lost(daemon)?;
    let dropped0 = spool_dropped(tail.dir())?;
    let cpu0 = cpu_ms(daemon.pid())?;
    let bytes0 = tail.bytes;
    let egress0 = tail.scan()?.egress;
    let (sent, secs) = produce(
        daemon,
        exe,
        &[
            "--count".into(),
            count.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--first".into(),
            first.to_string(),
        ],
    )?;
    // Settled when every decision is in the spool or counted lost by the kernel.
    let deadline = Instant::now() + SETTLE;
    let (spooled, lost) = loop {
        let spooled = tail.scan()?.egress - egress0;
        let lost = kernel_lost(daemon)? - lost0;
        if spooled + lost >= sent || Instant::now() >= deadline {
            break (spooled, lost);
        }
        std::thread::sleep(POLL);
    };
    let events = spooled.max(1) as f64;
    Ok(Step {
        asked: rate,
        sent,
        rate: sent as f64 / secs,
        spooled,
        lost,
        dropped: spool_dropped(tail.dir())? - dropped0,
        cpu_ms_per_k: (cpu_ms(daemon.pid())? - cpu0) / (events / 1e3),
        bytes_per_event: (tail.bytes - bytes0) as f64 / events,
    })
}

/// What the flood became.
struct Flood {
    sent: u64,
    lost: u64,
    records: u64,
    total: u64,
    secs: f64,
}

fn run_flood(daemon: &Daemon, exe: &Path, tail: &mut SpoolTail) -> Result<Flood> {
    let lost0 = kernel_lost(daemon)?;
    let before = tail.scan()?.to_flood;
    let (sent, secs) = produce(
        daemon,
        exe,
        &[
            "--count".into(),
            FLOOD.to_string(),
            "--to".into(),
            FLOOD_TO.to_string(),
        ],
    )?;
    // The last window's summary is reported when it ends (a second after it began).
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = tail.scan()?.to_flood;
        let lost = kernel_lost(daemon)? - lost0;
        let (records, total) = (now.0 - before.0, now.1 - before.1);
        if total + lost >= sent || Instant::now() >= deadline {
            return Ok(Flood {
                sent,
                lost,
                records,
                total,
                secs,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn report(steps: &[Step], flood: &Flood) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("  asked/s    sent/s   in spool  kernel lost  spool dropped  CPU ms/1k  bytes/event");
    for s in steps {
        println!(
            "  {:>7} {:>9.0} {:>10} {:>12} {:>14} {:>10.1} {:>12.0}",
            if s.asked == 0 {
                "max".into()
            } else {
                s.asked.to_string()
            },
            s.rate,
            s.spooled,
            s.lost,
            s.dropped,
            s.cpu_ms_per_k,
            s.bytes_per_event
        );
    }
    // The sustained rate: the fastest step with nothing lost, all slower ones clean too.
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let clean = sorted
        .iter()
        .take_while(|s| s.clean())
        .last()
        .map_or(0.0, |s| s.rate);
    let user_space_loss = steps
        .iter()
        .any(|s| s.dropped > 0 || s.spooled + s.lost < s.sent);
    println!(
        "  distinct events into the spool with zero drops: {clean:.0} /s   target >= {TARGET_SPOOL_RATE:.0}: {}",
        verdict(clean >= TARGET_SPOOL_RATE)
    );
    println!(
        "  nothing lost in user space at any rate (the spool or the kernel's count has every decision): {}",
        verdict(!user_space_loss)
    );
    println!(
        "  flood of {} to one destination ({:.0} /s): {} records counting {} ({} lost by the kernel)   \
         target < {TARGET_FLOOD_RECORDS} records, exact: {}",
        flood.sent,
        flood.sent as f64 / flood.secs,
        flood.records,
        flood.total,
        flood.lost,
        verdict(flood.records < TARGET_FLOOD_RECORDS && flood.total + flood.lost == flood.sent)
    );
}

/// The daemon's CPU time (user + system) so far, in ms.
pub(super) fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("a short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1e3 / hz)
}

/// The egress events the kernel could not report for the bench's agent.
fn kernel_lost(daemon: &Daemon) -> Result<u64> {
    let mut c = daemon.cli_cmd();
    c.args(["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&output_of(&mut c)?)?;
    let agents = status["agents"]
        .as_array()
        .context("status without agents")?;
    Ok(agents
        .iter()
        .filter(|a| a["name"] == AGENT)
        .filter_map(|a| a["lost_by_kind"]["egress"].as_u64())
        .sum())
}

pub(super) fn read_cursor(spool: &Path) -> Result<serde_json::Value> {
    let path = spool.join("cursor.json");
    match fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Value::Null),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn spool_dropped(spool: &Path) -> Result<u64> {
    Ok(read_cursor(spool)?["dropped"].as_u64().unwrap_or(0))
}

/// The last sequence number in the spool.
pub(super) fn last_seq(spool: &Path) -> Result<u64> {
    let mut t = SpoolTail::new(spool);
    Ok(t.scan()?.last_seq)
}

/// Reads the spool's segments as they grow, each byte once.
pub(super) struct SpoolTail {
    dir: PathBuf,
    offsets: HashMap<PathBuf, u64>,
    /// Bytes read so far.
    bytes: u64,
    counts: Counts,
}

#[derive(Clone, Copy, Default)]
pub(super) struct Counts {
    /// `egress` events.
    pub(super) egress: u64,
    /// Records about the flood's destination, and the decisions they stand for.
    to_flood: (u64, u64),
    last_seq: u64,
}

impl SpoolTail {
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            offsets: HashMap::new(),
            bytes: 0,
            counts: Counts::default(),
        }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads what was added since the last scan; returns the counts so far.
    pub(super) fn scan(&mut self) -> Result<Counts> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(self.counts);
        };
        let mut segments: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        segments.sort();
        let flood_addr = format!("\"dst_addr\":\"{}\"", FLOOD_TO.ip());
        for path in segments {
            let at = self.offsets.get(&path).copied().unwrap_or(0);
            let mut f = fs::File::open(&path)?;
            f.seek(SeekFrom::Start(at))?;
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            // Whole lines only: the writer may be in the middle of one.
            let whole = text.rfind('\n').map_or(0, |i| i + 1);
            for line in text[..whole].lines() {
                self.count(line, &flood_addr);
            }
            self.offsets.insert(path, at + whole as u64);
            self.bytes += whole as u64;
        }
        Ok(self.counts)
    }

    fn count(&mut self, line: &str, flood_addr: &str) {
        if let Some(seq) = line
            .strip_prefix("{\"seq\":")
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
        {
            self.counts.last_seq = seq;
        }
        if line.contains("\"kind\":\"egress\"") {
            if line.contains(flood_addr) {
                self.counts.to_flood.0 += 1;
                self.counts.to_flood.1 += 1;
            } else {
                self.counts.egress += 1;
            }
        } else if line.contains("\"kind\":\"egress_summary\"") && line.contains(flood_addr) {
            let count = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(0);
            self.counts.to_flood.0 += 1;
            self.counts.to_flood.1 += count;
        }
    }
}
