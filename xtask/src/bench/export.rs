//! The export half of `cargo xtask bench events`: a spool of distinct events sent to a local
//! Rotel (blackhole exporter) once it starts, timed until both exporters' cursors reach the
//! end, with the daemon's and the collector's CPU and the daemon's resident memory.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use super::{
    common::{WorkDir, POLL},
    events::{
        config, cpu_ms, free_port, kill_holder, last_seq, produce, read_cursor, start_held, SETTLE,
    },
};

/// The target.
const TARGET_EXPORT_RATE: f64 = 50_000.0;

/// Times the export of `n` distinct events from the spool to a local Rotel.
pub(super) fn measure_export(
    work: &WorkDir,
    exe: &Path,
    policy: &str,
    (n, run): (u64, u32),
    compression: &str,
) -> Result<Export> {
    let port = free_port()?;
    let spool = work.0.join(format!("spool-export-{compression}-{run}"));
    let conf = config(
        &work.0,
        &format!("export-{compression}-{run}"),
        port,
        &spool,
        compression,
    )?;
    let (daemon, holder, mut tail) = start_held(work, exe, policy, (&conf, &spool))?;
    // Paced well below the spool's rate: this measures the export, not the intake.
    let (sent, _) = produce(
        &daemon,
        exe,
        &[
            "--count".into(),
            n.to_string(),
            "--rate".into(),
            "100000".into(),
        ],
    )?;
    let deadline = Instant::now() + SETTLE;
    while tail.scan()?.egress < sent {
        ensure!(
            Instant::now() < deadline,
            "the spool never held the export's events"
        );
        std::thread::sleep(POLL);
    }
    let last = last_seq(&spool)?;
    let base = cursors(&spool)?.0;
    let cpu0 = cpu_ms(daemon.pid())?;
    let resident_before = memory_kb(daemon.pid(), "VmRSS")?;
    let rotel = Rotel::start(port)?;
    let rotel_cpu0 = cpu_ms(rotel.0.id())?;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (logs, traces) = cursors(&spool)?;
        if started.is_none() && logs > base {
            started = Some(Instant::now());
        }
        if logs >= last && traces >= last {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the export did not finish: logs at {logs}, traces at {traces} of {last}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let cpu = cpu_ms(daemon.pid())? - cpu0;
    let rotel_cpu = cpu_ms(rotel.0.id())? - rotel_cpu0;
    let (resident_after, peak) = (
        memory_kb(daemon.pid(), "VmRSS")?,
        memory_kb(daemon.pid(), "VmHWM")?,
    );
    drop(rotel);
    kill_holder(holder)?;
    Ok(Export {
        events: last - base,
        rate: (last - base) as f64 / secs.max(1e-3),
        cpu_ms_per_k: cpu / ((last - base).max(1) as f64 / 1e3),
        collector_ms_per_k: rotel_cpu / ((last - base).max(1) as f64 / 1e3),
        resident_mb: [resident_before, resident_after, peak].map(|kb| kb as f64 / 1024.0),
    })
}

pub(super) struct Export {
    events: u64,
    rate: f64,
    cpu_ms_per_k: f64,
    /// The collector's CPU per thousand events.
    collector_ms_per_k: f64,
    /// The daemon's resident memory before the export, after it, and its peak, in MiB.
    resident_mb: [f64; 3],
}

/// A Rotel collector (from `cargo xtask setup`) discarding what it receives.
struct Rotel(Child);

impl Rotel {
    fn start(port: u16) -> Result<Self> {
        let bin = crate::util::tools_dir().join("rotel/rotel/rotel-agent");
        let dir = std::env::temp_dir().join(format!("agentcage-bench-rotel-{port}"));
        fs::create_dir_all(&dir)?;
        let child = Command::new(&bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{port}")])
            .args([
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{}", free_port()?),
            ])
            .args(["--exporter", "blackhole"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self(child))
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn report_export(export: &[(&str, Export)]) {
    for (compression, e) in export {
        println!(
            "  export to Rotel over gRPC ({compression}): {} events at {:.0} /s, daemon {:.1} ms CPU per 1,000 \
             (Rotel {:.1})   target >= {TARGET_EXPORT_RATE:.0}: {}",
            e.events,
            e.rate,
            e.cpu_ms_per_k,
            e.collector_ms_per_k,
            if e.rate >= TARGET_EXPORT_RATE { "met" } else { "NOT met" }
        );
        let [before, after, peak] = e.resident_mb;
        println!(
            "    daemon resident memory: {before:.1} MiB before the export, {after:.1} MiB after it, peak {peak:.1} MiB"
        );
    }
}

/// A memory figure of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
fn memory_kb(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The logs and traces exporters' positions.
fn cursors(spool: &Path) -> Result<(u64, u64)> {
    let c = read_cursor(spool)?;
    let at = |r: &str| c["readers"][r].as_u64().unwrap_or(0);
    Ok((at("logs"), at("traces")))
}
