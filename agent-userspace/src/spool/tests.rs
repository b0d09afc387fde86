use std::io::Write as _;

use super::*;
use crate::events::{EgressDetail, EventDetail};

fn event(n: u64) -> Entry {
    Entry::Event(Arc::new(Event {
        time_unix_nano: n,
        kernel_ts_ns: n,
        agent: Some(crate::identity::AgentIdentity::for_agent("t")),
        container: None,
        spiffe_id: None,
        agent_seq: 1,
        pid: 1,
        tgid: 1,
        comm: "c".into(),
        cgroup_id: 7,
        policy_hash: "h".into(),
        certificate: None,
        detail: EventDetail::Egress(EgressDetail::denied([127, 0, 0, 1].into(), 80)),
    }))
}

fn config(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: max,
        segment_bytes: seg,
    }
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn readers_resume_after_restart_from_their_own_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 4096);
    {
        let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
        for n in 1..=100 {
            assert_eq!(spool.append(event(n)).unwrap(), n);
        }
        assert!(spool.stats().segments > 1, "rotation happened");
        assert_eq!(
            seqs(&spool.read("logs", 10).unwrap()),
            (1..=10).collect::<Vec<_>>()
        );
        spool.ack("logs", 10).unwrap();
        spool.ack("traces", 60).unwrap();
        // Not acknowledged: read again from the same place.
        assert_eq!(spool.read("logs", 3).unwrap()[0].seq, 11);
    }
    let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
    assert_eq!(
        seqs(&spool.read("logs", 5).unwrap()),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(spool.read("traces", 1).unwrap()[0].seq, 61);
    assert_eq!(
        spool.append(event(101)).unwrap(),
        101,
        "seqs continue, never reused"
    );
    assert_eq!(spool.read("traces", 1000).unwrap().len(), 41);
    assert_eq!(spool.stats().dropped, 0);
}

#[test]
fn acknowledged_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(&config(dir.path(), 1 << 20, 2048), &["r"]).unwrap();
    for n in 1..=200 {
        spool.append(event(n)).unwrap();
    }
    let before = spool.stats();
    spool.ack("r", 200).unwrap();
    let after = spool.stats();
    assert!(before.segments > 2);
    assert_eq!(after.segments, 1, "only the segment being written stays");
    assert!(after.bytes < before.bytes);
    assert!(spool.read("r", 10).unwrap().is_empty());
}

#[test]
fn the_bound_drops_oldest_and_counts_what_was_never_exported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 8192, 2048);
    let mut spool = Spool::open(&cfg, &["r"]).unwrap();
    for n in 1..=300 {
        spool.append(event(n)).unwrap();
        assert!(
            spool.stats().bytes <= 8192 + 2048,
            "bound held: {:?}",
            spool.stats()
        );
    }
    let stats = spool.stats();
    assert!(stats.dropped > 0);
    let records = spool.read("r", 10_000).unwrap();
    // What is left is a contiguous tail, and the drops were written as entries.
    let dropped_entries: u64 = records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Dropped { count, .. } => Some(*count),
            Entry::Event(_) => None,
        })
        .sum();
    assert!(dropped_entries > 0);
    // Every record ever appended is either still there or counted as dropped (the markers
    // take sequence numbers too, and can themselves be dropped later).
    assert_eq!(records.len() as u64 + stats.dropped, stats.last_seq);
    assert_eq!(records[0].seq, stats.dropped + 1);
    // The count survives a restart.
    drop(spool);
    assert_eq!(
        Spool::open(&cfg, &["r"]).unwrap().stats().dropped,
        stats.dropped
    );
}

#[test]
fn a_partly_written_last_record_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 1 << 16);
    {
        let mut spool = Spool::open(&cfg, &["r"]).unwrap();
        for n in 1..=3 {
            spool.append(event(n)).unwrap();
        }
    }
    let seg = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(b"{\"seq\":4,\"entry\":\"ev")
        .unwrap();
    let mut spool = Spool::open(&cfg, &["r"]).unwrap();
    assert_eq!(spool.append(event(4)).unwrap(), 4);
    assert_eq!(seqs(&spool.read("r", 10).unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn a_bound_smaller_than_two_segments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Spool::open(&config(dir.path(), 1000, 800), &["r"])
        .err()
        .unwrap();
    assert!(e.to_string().contains("twice segment_bytes"), "{e}");
}

fn events(from: u64, n: u64) -> Vec<Arc<Event>> {
    (from..from + n)
        .map(|i| match event(i) {
            Entry::Event(e) => e,
            Entry::Dropped { .. } => unreachable!(),
        })
        .collect()
}

#[test]
fn a_batch_is_written_exactly_as_records_one_by_one() {
    let one = tempfile::tempdir().unwrap();
    let batch = tempfile::tempdir().unwrap();
    let cfg = |d: &Path| config(d, 1 << 20, 4096);
    let mut a = Spool::open(&cfg(one.path()), &["r"]).unwrap();
    for e in events(1, 40) {
        a.append(Entry::Event(e)).unwrap();
    }
    let mut b = Spool::open(&cfg(batch.path()), &["r"]).unwrap();
    assert_eq!(b.append_events(&events(1, 25)).unwrap(), 25);
    assert_eq!(b.append_events(&events(26, 15)).unwrap(), 40);
    assert!(b.stats().segments > 1, "a batch rotates segments too");
    let text = |d: &Path| {
        let mut files: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| fs::read_to_string(p).unwrap())
            .collect::<String>()
    };
    assert_eq!(text(one.path()), text(batch.path()), "byte for byte");
    let recent = b.read("r", 100).unwrap();
    assert_eq!(a.read("r", 100).unwrap(), recent);
    // What readers get from memory is what the file says.
    drop(b);
    let mut b = Spool::open(&cfg(batch.path()), &["r"]).unwrap();
    assert_eq!(b.read("r", 100).unwrap(), recent, "from the file");
    // Single entries and batches share one sequence.
    assert_eq!(b.append(event(41)).unwrap(), 41);
    assert_eq!(b.append_events(&events(42, 1)).unwrap(), 42);
}

#[test]
fn batches_keep_the_bound_and_count_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 8192, 2048);
    let mut spool = Spool::open(&cfg, &["r"]).unwrap();
    for round in 0..30 {
        spool.append_events(&events(round * 10, 10)).unwrap();
        assert!(
            spool.stats().bytes <= 8192 + 2048,
            "bound held: {:?}",
            spool.stats()
        );
    }
    let stats = spool.stats();
    assert!(stats.dropped > 0);
    let records = spool.read("r", 10_000).unwrap();
    assert_eq!(records.len() as u64 + stats.dropped, stats.last_seq);
    assert!(records
        .iter()
        .any(|r| matches!(&r.entry, Entry::Dropped { reason, .. } if reason == "size_bound")));
}

#[test]
fn readers_behind_memory_get_every_record_from_the_files_once_decoded_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 24, 1 << 16);
    let total = {
        let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
        spool.append_events(&events(1, 3000)).unwrap();
        // An entry of another kind in the middle is decoded the generic way.
        spool.record_loss(2, "write_error").unwrap();
        spool.append_events(&events(3001, 3000)).unwrap()
    };
    // Reopened: nothing in memory, everything from the files.
    let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
    let mut got = [Vec::new(), Vec::new()];
    for round in 0.. {
        let mut progressed = false;
        // Interleaved, unequal batches, as the two exporters read.
        for (i, (reader, max)) in [("logs", 512), ("traces", 300 + round % 7)]
            .into_iter()
            .enumerate()
        {
            let batch = spool.read(reader, max).unwrap();
            assert!(batch.len() <= max);
            if let Some(last) = batch.last() {
                spool.ack(reader, last.seq).unwrap();
                progressed = true;
            }
            got[i].extend(batch);
        }
        if !progressed {
            break;
        }
    }
    assert_eq!(seqs(&got[0]), (1..=total).collect::<Vec<_>>());
    assert_eq!(got[0], got[1]);
    assert!(matches!(
        &got[0][3000].entry,
        Entry::Dropped { count: 2, reason, .. } if reason == "write_error"
    ));
    assert_eq!(got[0][0].entry, Entry::Event(events(1, 1).remove(0)));
}

#[test]
fn a_reader_far_behind_another_decodes_each_line_once_not_each_batch_anew() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 26, 1 << 20);
    let total = {
        let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
        spool.append_events(&events(1, 30_000)).unwrap()
    };
    let mut spool = Spool::open(&cfg, &["logs", "traces"]).unwrap();
    // Logs got 20,000 ahead (traces' collector was away), then both read in turns.
    while spool.cursor("logs").unwrap() < 20_000 {
        let batch = spool.read("logs", 512).unwrap();
        spool.ack("logs", batch.last().unwrap().seq).unwrap();
    }
    let mut got = Vec::new();
    loop {
        let mut progressed = false;
        for reader in ["logs", "traces"] {
            let batch = spool.read(reader, 512).unwrap();
            if let Some(last) = batch.last() {
                spool.ack(reader, last.seq).unwrap();
                progressed = true;
            }
            if reader == "traces" {
                got.extend(batch);
            }
        }
        if !progressed {
            break;
        }
    }
    assert_eq!(seqs(&got), (1..=total).collect::<Vec<_>>());
    // Each reader decodes its lines once at most (plus one read-ahead each at the end);
    // throwing the other's read-ahead away at every turn decoded each batch four times.
    let bound = 2 * total as usize + 2 * READ_AHEAD;
    assert!(
        spool.decodes <= bound,
        "{} lines decoded for {total} records and two readers",
        spool.decodes
    );
}

#[test]
fn acknowledgements_not_yet_in_the_cursor_file_are_sent_again_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, 1 << 16);
    let open = || {
        let mut spool = Spool::open(&cfg, &["r"]).unwrap();
        // However slow the machine, the acknowledgements below come within the interval.
        spool.save_every = Duration::from_secs(3600);
        spool
    };
    let mut spool = open();
    spool.append_events(&events(1, 100)).unwrap();
    spool.ack("r", 10).unwrap();
    // Right after: kept in memory only (the next read starts after it all the same).
    spool.ack("r", 20).unwrap();
    assert_eq!(spool.read("r", 1).unwrap()[0].seq, 21);
    // A crash now: the file says 10, so 11..=20 are sent again.
    std::mem::forget(spool);
    let mut spool = open();
    assert_eq!(spool.read("r", 1).unwrap()[0].seq, 11);
    spool.ack("r", 20).unwrap();
    spool.ack("r", 30).unwrap();
    // A stop writes what was acknowledged.
    drop(spool);
    let mut spool = open();
    assert_eq!(spool.read("r", 1).unwrap()[0].seq, 31);
    // Caught up: written at once.
    spool.ack("r", 99).unwrap();
    spool.ack("r", 100).unwrap();
    std::mem::forget(spool);
    let mut spool = open();
    assert!(spool.read("r", 1).unwrap().is_empty());
}
