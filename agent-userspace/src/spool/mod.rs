//! The durable spool: every event is appended to segment files on disk before anything is
//! exported, and each exporter reads from its own durable cursor, advanced only after the
//! collector acknowledged. A dead or slow collector therefore costs disk, never events, up to
//! a size bound; beyond it the oldest segments are dropped, and how many events went unexported
//! is counted (durably) and written into the spool as an entry of its own.
//!
//! Layout of the directory:
//! - `seg-<first seq, 20 digits>.jsonl`: one JSON [`Record`] per line, sequence numbers
//!   strictly increasing across segments;
//! - `cursor.json`: per reader, the last sequence number acknowledged, and the dropped count.
//!
//! Ordering and idempotency: sequence numbers are assigned in append order and never reused
//! (a restart continues after the last record on disk). A reader gets records in sequence
//! order and acknowledges a prefix; after a crash between the collector's answer and the
//! cursor's write, that batch is sent again (at-least-once), and every record carries its
//! sequence number so a consumer can drop the repeat.

mod cursor;
mod segment;

use std::{
    collections::{BTreeMap, VecDeque},
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::events::Event;
pub use cursor::Cursors;
use segment::Segment;

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The cursor file is not what this version writes.
    #[error("spool cursor {path} is corrupt: {source}")]
    Cursor {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An entry could not be encoded.
    #[error("spool: encoding an entry: {0}")]
    Encode(#[source] serde_json::Error),
    /// The configuration cannot work.
    #[error("spool: {0}")]
    Config(String),
    /// A reader name that was not declared when the spool was opened.
    #[error("spool: unknown reader {0:?}")]
    UnknownReader(String),
}

impl SpoolError {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What one spool record holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum Entry {
    /// An event from the bus (shared with the bus and the spool's recent records).
    Event(Arc<Event>),
    /// Events that were never exported: dropped by the size bound, or never written (an
    /// append failed; `bus_lag` was written by versions whose spool consumed the bus).
    Dropped {
        /// Wall-clock time this was noticed, ns since the Unix epoch.
        time_unix_nano: u64,
        /// How many.
        count: u64,
        /// Why: `size_bound` or `write_error` (`bus_lag` from earlier versions).
        reason: String,
    },
}

/// One line of a segment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Position in the spool, from 1, never reused.
    pub seq: u64,
    /// The content.
    #[serde(flatten)]
    pub entry: Entry,
}

/// The longest `{"seq":N,"entry":"event",` prefix (N has at most 20 digits).
const LINE_PREFIX_MAX: usize = 48;

/// Writes the record line of an event whose JSON is `body`: byte for byte what serializing
/// `Record { seq, entry: Entry::Event(event) }` writes, without copying the event into one.
fn encode_event(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    use std::io::Write as _;
    debug_assert!(
        body.len() > 2 && body[0] == b'{',
        "an event is a non-empty object"
    );
    let _ = write!(out, "{{\"seq\":{seq},\"entry\":\"event\",");
    out.extend_from_slice(&body[1..]);
    out.push(b'\n');
}

/// Events an [`Spool::append_events`] could not write, and why.
#[derive(Debug, thiserror::Error)]
#[error("{count} events not written to the spool: {source}")]
pub struct Unwritten {
    /// How many (the last ones of the batch).
    pub count: u64,
    /// Why.
    #[source]
    pub source: SpoolError,
}

/// Bounds of the spool/// Bounds of the spool (the `spool:` section of the daemon's configuration).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The directory.
    pub dir: PathBuf,
    /// At most this many bytes on disk; the oldest segments go first.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/agentcage/spool"),
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Bytes on disk.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The last sequence number written (0: none yet).
    pub last_seq: u64,
    /// Events never exported because the bound was reached (or an append failed),
    /// since the spool was created.
    pub dropped: u64,
}

/// How many of the most recent records the spool keeps in memory for its readers.
const RECENT: usize = 16 * 1024;

/// The longest an acknowledgement waits to be written to the cursor file.
const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// How many records decoded from the segment files the spool keeps per reader.
const DECODED: usize = 8 * 1024;

/// Records read from the segment files at once, at least: the readers' batches are smaller,
/// and a file is opened and positioned once for all of them.
const READ_AHEAD: usize = 2048;

/// Up to `max` of the consecutive `records` after `after`, if they hold the one after it.
fn window(records: &VecDeque<Record>, after: u64, max: usize) -> Option<Vec<Record>> {
    let first = records.front()?.seq;
    let start = usize::try_from(after.checked_add(1)?.checked_sub(first)?).ok()?;
    (start < records.len()).then(|| records.range(start..).take(max).cloned().collect())
}

/// The spool. Not thread-safe by itself: the daemon keeps it behind a mutex.
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    /// Segments by first sequence number; the last one is written to.
    segments: BTreeMap<u64, Segment>,
    cursors: Cursors,
    next_seq: u64,
    /// The last records written, consecutive: a reader that keeps up gets them from here,
    /// without reading and parsing the file again.
    recent: VecDeque<Record>,
    /// The last records each reader had decoded from the segment files, consecutive, by
    /// reader: one reader's read-ahead serves the others too, and a reader far behind
    /// another does not throw away what the other decoded (the two exporters, thousands of
    /// records apart after an outage, each decoded every batch four times over).
    decoded: BTreeMap<String, VecDeque<Record>>,
    /// Lines decoded from the segment files so far (what the cache saves is tested).
    #[cfg(test)]
    decodes: usize,
    /// When the cursor file was last written by [`Self::ack`].
    saved: Option<Instant>,
    /// Whether an acknowledgement is not in the cursor file yet.
    unsaved: bool,
    /// [`CURSOR_SAVE_EVERY`] (longer in tests).
    save_every: Duration,
}

impl Drop for Spool {
    /// Writes the acknowledgements not written yet, so that a daemon that stops sends
    /// nothing again.
    fn drop(&mut self) {
        if self.unsaved {
            if let Err(e) = self.cursors.save(&self.dir) {
                tracing::warn!(error = %e, "spool: the last acknowledgements were not saved");
            }
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir` for the named readers, cleaning up what a
    /// crash may have left (a partly written last line).
    pub fn open(config: &SpoolConfig, readers: &[&str]) -> Result<Self, SpoolError> {
        if config.segment_bytes == 0 || config.max_bytes < 2 * config.segment_bytes {
            return Err(SpoolError::Config(format!(
                "max_bytes ({}) must be at least twice segment_bytes ({}), and segment_bytes above 0",
                config.max_bytes, config.segment_bytes
            )));
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(SpoolError::io("creating", &dir))?;
        // Events name agents, processes and destinations: root's eyes only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(SpoolError::io("restricting", &dir))?;
        }
        let cursors = Cursors::load(&dir, readers)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(SpoolError::io("listing", &dir))? {
            let entry = entry.map_err(SpoolError::io("listing", &dir))?;
            if let Some(first) = segment::first_seq(&entry.file_name()) {
                segments.insert(first, Segment::open(&dir, first)?);
            }
        }
        let next_seq = match segments.values_mut().next_back() {
            Some(last) => last.recover()? + 1,
            None => cursors.highest() + 1,
        };
        let mut spool = Self {
            dir,
            config: config.clone(),
            segments,
            cursors,
            next_seq,
            recent: VecDeque::with_capacity(RECENT),
            decoded: BTreeMap::new(),
            #[cfg(test)]
            decodes: 0,
            saved: None,
            unsaved: false,
            save_every: CURSOR_SAVE_EVERY,
        };
        spool.collect_acknowledged()?;
        Ok(spool)
    }

    /// Appends one entry; returns its sequence number. Enforces the size bound first.
    pub fn append(&mut self, entry: Entry) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let record = Record { seq, entry };
        let mut line = serde_json::to_vec(&record).map_err(SpoolError::Encode)?;
        line.push(b'\n');
        let rotate = match self.segments.values().next_back() {
            Some(last) => last.bytes + line.len() as u64 > self.config.segment_bytes,
            None => true,
        };
        if rotate {
            self.segments.insert(seq, Segment::create(&self.dir, seq)?);
        }
        let dropped = self.enforce_bound(line.len() as u64)?;
        let last = self
            .segments
            .values_mut()
            .next_back()
            .ok_or_else(|| SpoolError::Config("no segment to write to".into()))?;
        last.append(&line, seq)?;
        self.next_seq += 1;
        self.remember(record);
        if dropped > 0 {
            self.append(Entry::Dropped {
                time_unix_nano: now_unix_nano(),
                count: dropped,
                reason: "size_bound".into(),
            })?;
        }
        Ok(seq)
    }

    /// Appends events with one write per segment they land in (the whole batch, mostly);
    /// returns the last sequence number. On failure, no event is half-written and the error
    /// says how many of them were not written at all (the first ones may have been).
    pub fn append_events(&mut self, events: &[Arc<Event>]) -> Result<u64, Unwritten> {
        let mut buf = Vec::with_capacity(events.len().min(4096) * 512);
        let mut body = Vec::with_capacity(1024);
        let mut lines = 0u64;
        let mut written = 0u64;
        let mut from = 0usize;
        let unwritten = |written: u64| {
            move |source| Unwritten {
                count: events.len() as u64 - written,
                source,
            }
        };
        for event in events {
            body.clear();
            serde_json::to_writer(&mut body, &**event)
                .map_err(SpoolError::Encode)
                .map_err(unwritten(written))?;
            let need = (buf.len() + body.len() + LINE_PREFIX_MAX) as u64;
            let rotate = match self.segments.values().next_back() {
                Some(last) => last.bytes > 0 && last.bytes + need > self.config.segment_bytes,
                None => true,
            };
            if rotate {
                let to = from + lines as usize;
                self.write_lines(&mut buf, &events[from..to])
                    .map_err(unwritten(written))?;
                written += lines;
                lines = 0;
                from = to;
                let first = self.next_seq;
                let segment = Segment::create(&self.dir, first).map_err(unwritten(written))?;
                self.segments.insert(first, segment);
            }
            encode_event(&mut buf, self.next_seq + lines, &body);
            lines += 1;
        }
        self.write_lines(&mut buf, &events[from..])
            .map_err(unwritten(written))?;
        Ok(self.next_seq - 1)
    }

    /// Writes the records of `events`, encoded in `buf`, into the last segment with one
    /// write, keeping the size bound; empties `buf`.
    fn write_lines(&mut self, buf: &mut Vec<u8>, events: &[Arc<Event>]) -> Result<(), SpoolError> {
        let lines = events.len() as u64;
        if lines == 0 {
            return Ok(());
        }
        let dropped = self.enforce_bound(buf.len() as u64)?;
        let last = self
            .segments
            .values_mut()
            .next_back()
            .ok_or_else(|| SpoolError::Config("no segment to write to".into()))?;
        last.append(buf, self.next_seq + lines - 1)?;
        for event in events {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.remember(Record {
                seq,
                entry: Entry::Event(Arc::clone(event)),
            });
        }
        buf.clear();
        if dropped > 0 {
            // The count is already in the cursor file; this entry only tells the readers.
            if let Err(e) = self.append(Entry::Dropped {
                time_unix_nano: now_unix_nano(),
                count: dropped,
                reason: "size_bound".into(),
            }) {
                tracing::warn!(error = %e, dropped, "spool: could not record the size bound's drop as an entry");
            }
        }
        Ok(())
    }

    /// Removes the oldest segments while the spool would exceed its bound with `incoming`
    /// more bytes; returns how many records no reader had acknowledged yet.
    fn enforce_bound(&mut self, incoming: u64) -> Result<u64, SpoolError> {
        let mut dropped = 0;
        // The segment being written is never removed: it tells a restart where seqs stand.
        while self.bytes() + incoming > self.config.max_bytes && self.segments.len() > 1 {
            let Some((_, oldest)) = self.segments.pop_first() else {
                break;
            };
            let unread = oldest.count_after(self.cursors.lowest());
            dropped += unread;
            self.cursors.skip_to(oldest.last_seq);
            oldest.remove()?;
        }
        if dropped > 0 {
            self.cursors.add_dropped(dropped);
            self.cursors.save(&self.dir)?;
        }
        Ok(dropped)
    }

    /// Counts events that never reached the spool (`write_error`: an append failed),
    /// durably, and records that as an entry.
    /// Once this returns Ok the count is durable (in `cursor.json`), so a caller retrying
    /// after an error never counts twice.
    pub fn record_loss(&mut self, count: u64, reason: &str) -> Result<(), SpoolError> {
        self.cursors.add_dropped(count);
        if let Err(e) = self.cursors.save(&self.dir) {
            self.cursors.take_back_dropped(count);
            return Err(e);
        }
        // The entry only tells the readers; the count is already kept.
        if let Err(e) = self.append(Entry::Dropped {
            time_unix_nano: now_unix_nano(),
            count,
            reason: reason.into(),
        }) {
            tracing::warn!(error = %e, count, reason, "spool: could not record a loss as an entry");
        }
        Ok(())
    }

    /// Keeps a record just written among the recent ones.
    fn remember(&mut self, record: Record) {
        if self.recent.back().is_some_and(|r| r.seq + 1 != record.seq) {
            self.recent.clear();
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(record);
    }

    /// Up to `max` records after `reader`'s cursor, in sequence order.
    pub fn read(&mut self, reader: &str, max: usize) -> Result<Vec<Record>, SpoolError> {
        self.read_after(reader, 0, max)
    }

    /// Up to `max` records after `reader`'s cursor and after `after`: a reader with batches
    /// in flight reads past them before they are acknowledged.
    pub fn read_after(
        &mut self,
        reader: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let after = self.cursors.get(reader)?.max(after);
        if let Some(hit) = window(&self.recent, after, max) {
            return Ok(hit);
        }
        if let Some(mut hit) = self.decoded.values().find_map(|d| window(d, after, max)) {
            // The records written since may follow in memory.
            let last = hit.last().map_or(after, |r| r.seq);
            if let Some(more) = window(&self.recent, last, max - hit.len()) {
                hit.extend(more);
            }
            return Ok(hit);
        }
        let out = self.read_segments(after, max.max(READ_AHEAD))?;
        // Kept for this reader's next batches and for the others, which mostly read the
        // same records next.
        let mine = self.decoded.entry(reader.to_owned()).or_default();
        if mine.back().map(|r| r.seq + 1) != out.first().map(|r| r.seq) {
            mine.clear();
        }
        mine.extend(out.iter().cloned());
        let excess = mine.len().saturating_sub(DECODED);
        mine.drain(..excess);
        Ok(out.into_iter().take(max).collect())
    }

    /// Up to `max` records after `after`, read from the segment files.
    fn read_segments(&mut self, after: u64, max: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        // The segment holding after+1 is the last one that starts at or before it.
        let start = self
            .segments
            .range(..=after + 1)
            .next_back()
            .map_or(0, |(first, _)| *first);
        for segment in self.segments.range_mut(start..).map(|(_, s)| s) {
            if out.len() >= max {
                break;
            }
            segment.read_after(after, max - out.len(), &mut out)?;
        }
        #[cfg(test)]
        {
            self.decodes += out.len();
        }
        Ok(out)
    }

    /// Records that `reader` has delivered everything up to `seq`; removes segments every
    /// reader is done with.
    ///
    /// The cursor file is written (with an fsync, tens of ms on a busy disk, under the
    /// spool's lock) when the reader has caught up or [`CURSOR_SAVE_EVERY`] after the last
    /// write, not for every batch: a crash in between sends that much again, which
    /// at-least-once allows (records carry their sequence numbers); nothing is skipped, as
    /// the file never runs ahead of what was delivered.
    pub fn ack(&mut self, reader: &str, seq: u64) -> Result<(), SpoolError> {
        self.cursors.set(reader, seq)?;
        let caught_up = seq + 1 >= self.next_seq;
        self.unsaved = true;
        if caught_up || self.saved.is_none_or(|t| t.elapsed() >= self.save_every) {
            self.cursors.save(&self.dir)?;
            self.saved = Some(Instant::now());
            self.unsaved = false;
        }
        self.collect_acknowledged()
    }

    /// Removes whole segments every reader has passed (never the one being written).
    fn collect_acknowledged(&mut self) -> Result<(), SpoolError> {
        let lowest = self.cursors.lowest();
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.first_key_value().map(|(_, s)| s) else {
                break;
            };
            if oldest.last_seq > lowest {
                break;
            }
            if let Some((_, s)) = self.segments.pop_first() {
                s.remove()?;
            }
        }
        Ok(())
    }

    /// The acknowledged position of `reader`.
    pub fn cursor(&self, reader: &str) -> Result<u64, SpoolError> {
        self.cursors.get(reader)
    }

    fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Sizes and counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            bytes: self.bytes(),
            segments: self.segments.len(),
            last_seq: self.next_seq - 1,
            dropped: self.cursors.dropped(),
        }
    }
}

/// Now, ns since the Unix epoch.
pub(crate) use crate::clock::now_unix_nano;

#[cfg(test)]
mod tests;
