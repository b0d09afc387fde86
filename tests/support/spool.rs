//! Reading a daemon's spool directory as the tests see it: its records, in order, and its
//! cursor file.

use std::{fs, path::Path};

/// A daemon configuration file in `dir` exporting to `endpoint` over `protocol`, with its
/// spool in `spool` (4 MiB in 64 KiB segments); returns its path. The export timeout is the
/// default's 10 s: a collector slow to answer on a loaded machine makes the exporter send
/// a batch again (OTLP is at least once), which the exactly-once test would count.
pub fn telemetry_config(dir: &Path, endpoint: &str, protocol: &str, spool: &Path) -> String {
    telemetry_config_bound(dir, (endpoint, protocol), spool, (4 << 20, 64 << 10))
}

/// [`telemetry_config`] with the spool's bound and segment size.
pub fn telemetry_config_bound(
    dir: &Path,
    (endpoint, protocol): (&str, &str),
    spool: &Path,
    (max_bytes, segment_bytes): (u64, u64),
) -> String {
    let path = dir.join("agentcaged.yaml");
    fs::write(
        &path,
        format!(
            "telemetry:\n  endpoint: {endpoint}\n  protocol: {protocol}\n  timeout_ms: 10000\n  \
             retry_max_ms: 200\n  metrics_interval_ms: 500\n  node_id: test-node\n\
             spool:\n  dir: {}\n  max_bytes: {max_bytes}\n  segment_bytes: {segment_bytes}\n",
            spool.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Every record in the spool's segments, in sequence order.
pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    let mut segments: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    // Names carry the first sequence number, zero-padded: name order is sequence order.
    segments.sort();
    segments
        .iter()
        .flat_map(|p| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `cursor.json`: the readers' positions and the dropped count.
pub fn cursor(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("cursor.json")).unwrap()).unwrap()
}

/// Decisions to `addr:port` in `records`: (full `egress` events, the counts of the
/// `egress_summary` events, how many summaries).
pub fn decisions_to(records: &[serde_json::Value], addr: &str, port: u16) -> (u64, u64, u64) {
    let mut full = 0;
    let mut counted = 0;
    let mut summaries = 0;
    for r in records {
        if r["entry"] != "event" || r["dst_addr"] != addr || r["dst_port"] != port {
            continue;
        }
        match r["kind"].as_str() {
            Some("egress") => full += 1,
            Some("egress_summary") => {
                counted += r["count"].as_u64().unwrap();
                summaries += 1;
            }
            _ => {}
        }
    }
    (full, counted, summaries)
}
