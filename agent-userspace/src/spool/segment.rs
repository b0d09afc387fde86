//! One segment file: JSON lines with consecutive sequence numbers, appended in place.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use tracing::warn;

use super::{Record, SpoolError};

const PREFIX: &str = "seg-";
const SUFFIX: &str = ".jsonl";

/// The first sequence number a segment file's name says it holds.
pub(super) fn first_seq(name: &OsStr) -> Option<u64> {
    let name = name.to_str()?;
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

pub(super) struct Segment {
    path: PathBuf,
    first: u64,
    /// The last sequence number in the file (`first - 1` while empty).
    pub(super) last_seq: u64,
    pub(super) bytes: u64,
    file: File,
    /// Where the record after `.0` starts, for the last few reads: each reader mostly
    /// continues where it stopped, and there is one per signal.
    hints: VecDeque<(u64, u64)>,
}

/// Hints kept per segment: more than the spool's readers.
const HINTS: usize = 4;

/// The sequence number a record line starts with (`{"seq":N,`), without parsing the rest.
fn line_seq(line: &[u8]) -> Option<u64> {
    seq_and_end(line).map(|(seq, _)| seq)
}

/// [`line_seq`], and where the digits end.
fn seq_and_end(line: &[u8]) -> Option<(u64, usize)> {
    const SEQ: &[u8] = b"{\"seq\":";
    let rest = line.strip_prefix(SEQ)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    let seq = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((seq, SEQ.len() + end))
}

/// The record of one line. An event's line, as [`super::encode_event`] writes it, is decoded
/// as the event after its `{"seq":N,"entry":"event",` prefix: the generic way (an internally
/// tagged, flattened enum) buffers the whole record into serde's intermediate form first, and
/// costs more than the rest of the export does. Other entries go the generic way. `line` is
/// left changed.
fn decode(line: &mut [u8]) -> Result<Record, serde_json::Error> {
    const EVENT: &[u8] = b"\"entry\":\"event\",";
    if let Some((seq, end)) = seq_and_end(line) {
        let at = end + 1;
        if line.get(end) == Some(&b',') && line.get(at..at + EVENT.len()) == Some(EVENT) {
            let body = &mut line[at + EVENT.len() - 1..];
            body[0] = b'{';
            let event = serde_json::from_slice(body)?;
            return Ok(Record {
                seq,
                entry: super::Entry::Event(std::sync::Arc::new(event)),
            });
        }
    }
    serde_json::from_slice::<Record>(line)
}

impl Segment {
    fn path(dir: &Path, first: u64) -> PathBuf {
        dir.join(format!("{PREFIX}{first:020}{SUFFIX}"))
    }

    pub(super) fn create(dir: &Path, first: u64) -> Result<Self, SpoolError> {
        let path = Self::path(dir, first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(SpoolError::io("creating", &path))?;
        // The new name must survive a crash, or a restart would not know the segment.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Self {
            path,
            first,
            last_seq: first - 1,
            bytes: 0,
            file,
            hints: VecDeque::with_capacity(HINTS),
        })
    }

    pub(super) fn open(dir: &Path, first: u64) -> Result<Self, SpoolError> {
        let mut segment = Self::create(dir, first)?;
        segment.bytes = segment
            .file
            .metadata()
            .map_err(SpoolError::io("reading the size of", &segment.path))?
            .len();
        // Until recovered (only the last segment is), assume it is full of consecutive records
        // up to the next segment; read_after and count_after work from the file itself.
        segment.last_seq = segment.scan_last()?.unwrap_or(first - 1);
        Ok(segment)
    }

    /// The last readable sequence number in the file.
    fn scan_last(&self) -> Result<Option<u64>, SpoolError> {
        let mut last = None;
        self.for_each_line(0, |rec, _| {
            last = Some(rec.seq);
            true
        })?;
        Ok(last)
    }

    /// Truncates a partly written last line (a crash mid-append); returns the last sequence
    /// number.
    pub(super) fn recover(&mut self) -> Result<u64, SpoolError> {
        let mut end = 0;
        let mut last = self.first - 1;
        self.for_each_line(0, |rec, next| {
            last = rec.seq;
            end = next;
            true
        })?;
        if end < self.bytes {
            warn!(
                path = %self.path.display(),
                bytes = self.bytes - end,
                "spool: dropping a partly written last record (the daemon stopped mid-write)"
            );
            self.file
                .set_len(end)
                .map_err(SpoolError::io("truncating", &self.path))?;
            self.bytes = end;
        }
        self.last_seq = last;
        Ok(last)
    }

    /// Calls `f(record, offset after its line)` for every complete, readable line from
    /// `offset` until `f` returns false.
    fn for_each_line(
        &self,
        offset: u64,
        f: impl FnMut(Record, u64) -> bool,
    ) -> Result<(), SpoolError> {
        self.for_each_line_after(offset, 0, f)
    }

    /// [`Self::for_each_line`] for the records with a sequence number above `after` only:
    /// the lines before them are skipped by their leading `seq`, not parsed.
    fn for_each_line_after(
        &self,
        offset: u64,
        after: u64,
        mut f: impl FnMut(Record, u64) -> bool,
    ) -> Result<(), SpoolError> {
        let mut file = File::open(&self.path).map_err(SpoolError::io("opening", &self.path))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(SpoolError::io("seeking", &self.path))?;
        let mut reader = BufReader::new(file);
        let mut pos = offset;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(SpoolError::io("reading", &self.path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            pos += n as u64;
            if line_seq(&line).is_some_and(|seq| seq <= after) {
                continue;
            }
            match decode(&mut line) {
                Ok(rec) => {
                    if !f(rec, pos) {
                        return Ok(());
                    }
                }
                // A kind this version does not know (written by a newer one): skip it.
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "spool: unreadable record skipped")
                }
            }
        }
    }

    pub(super) fn append(&mut self, line: &[u8], seq: u64) -> Result<(), SpoolError> {
        // One write of whole lines: a crash leaves at most a partial last line, which
        // recover() removes; a failed write (disk full) is cut back at once.
        if let Err(e) = self.file.write_all(line) {
            let _ = self.file.set_len(self.bytes);
            return Err(SpoolError::io("appending to", &self.path)(e));
        }
        self.bytes += line.len() as u64;
        self.last_seq = seq;
        Ok(())
    }

    /// Appends to `out` up to `max` records with a sequence number above `after`.
    pub(super) fn read_after(
        &mut self,
        after: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), SpoolError> {
        if self.last_seq <= after || max == 0 {
            return Ok(());
        }
        let used = self.hints.iter().position(|(seq, _)| *seq == after);
        let offset = used.map_or(0, |i| self.hints[i].1);
        let mut hint = None;
        let start = out.len();
        self.for_each_line_after(offset, after, |rec, next| {
            if rec.seq > after {
                hint = Some((rec.seq, next));
                out.push(rec);
            }
            out.len() - start < max
        })?;
        if let Some(h) = hint {
            if let Some(i) = used {
                self.hints.remove(i);
            }
            if self.hints.len() == HINTS {
                self.hints.pop_front();
            }
            self.hints.push_back(h);
        }
        Ok(())
    }

    /// How many records have a sequence number above `after`.
    pub(super) fn count_after(&self, after: u64) -> u64 {
        // Sequence numbers are consecutive within a segment.
        self.last_seq.saturating_sub(after.max(self.first - 1))
    }

    pub(super) fn remove(self) -> Result<(), SpoolError> {
        fs::remove_file(&self.path).map_err(SpoolError::io("removing", &self.path))
    }
}
