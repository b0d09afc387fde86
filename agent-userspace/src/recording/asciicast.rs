//! Writing asciicast v2 (the format asciinema records and plays): a JSON header line, then one
//! JSON array per event, `[seconds, "o", text]` for output, `"i"` for input, `"r"` for a
//! resize (`"COLSxROWS"`) and `"m"` for a marker.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::Instant,
};

use serde::Serialize;

/// Room kept below the size bound for the note that says the bound cut the recording.
const NOTE_ROOM: u64 = 512;

/// The smallest bound that holds a header and the note.
pub const MIN_LIMIT: u64 = 4 * NOTE_ROOM;

/// The header line.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    /// Always 2.
    pub version: u8,
    /// Terminal columns at the start.
    pub width: u16,
    /// Terminal rows at the start.
    pub height: u16,
    /// Seconds since the Unix epoch at the start.
    pub timestamp: u64,
    /// The command recorded.
    pub command: String,
    /// `agent:NAME`.
    pub title: String,
    /// `TERM` and `SHELL`, as asciinema records them.
    pub env: BTreeMap<String, String>,
}

impl Header {
    /// A header for a session of `agent` running `command` in a `width` x `height` terminal.
    pub fn new(agent: &str, command: &[String], (width, height): (u16, u16)) -> Self {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let env = ["TERM", "SHELL"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), std::env::var(k).ok()?)))
            .collect();
        Self {
            version: 2,
            width,
            height,
            timestamp,
            command: command.join(" "),
            title: crate::identity::AgentIdentity::for_agent(agent).to_string(),
            env,
        }
    }
}

/// Bytes split across reads: a UTF-8 sequence cut in two is completed by the next chunk;
/// invalid bytes become U+FFFD (as asciinema's own recorder does).
#[derive(Default)]
struct Utf8Carry(Vec<u8>);

impl Utf8Carry {
    fn decode(&mut self, bytes: &[u8]) -> String {
        self.0.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.0.len());
        let mut rest: &[u8] = &self.0;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // An incomplete sequence at the end: wait for its other bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.0.len();
        self.0.drain(..len - keep);
        out
    }
}

/// Writes one session as asciicast v2, within an optional size bound. When the bound is
/// reached, a marker and a visible note say so, and nothing more is written.
pub struct Recorder<W: Write> {
    out: W,
    start: Instant,
    written: u64,
    limit: Option<u64>,
    cut: bool,
    output: Utf8Carry,
    input: Utf8Carry,
}

impl<W: Write> Recorder<W> {
    /// Writes the header; `limit` bounds the whole file (at least [`MIN_LIMIT`]).
    pub fn start(mut out: W, header: &Header, limit: Option<u64>) -> io::Result<Self> {
        let mut line = serde_json::to_vec(header).map_err(io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)?;
        Ok(Self {
            out,
            start: Instant::now(),
            written: line.len() as u64,
            limit: limit.map(|l| l.max(MIN_LIMIT)),
            cut: false,
            output: Utf8Carry::default(),
            input: Utf8Carry::default(),
        })
    }

    /// Records what the agent wrote to its terminal.
    pub fn output(&mut self, bytes: &[u8]) -> io::Result<()> {
        let text = self.output.decode(bytes);
        self.event("o", &text)
    }

    /// Records what the operator typed.
    pub fn input(&mut self, bytes: &[u8]) -> io::Result<()> {
        let text = self.input.decode(bytes);
        self.event("i", &text)
    }

    /// Records a new window size.
    pub fn resize(&mut self, (cols, rows): (u16, u16)) -> io::Result<()> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    /// A marker (`"m"`): a note from agentcage itself, never shown as output.
    pub fn note(&mut self, text: &str) -> io::Result<()> {
        self.event("m", text)
    }

    /// Whether the size bound stopped the recording.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// Hands buffered lines to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn event(&mut self, kind: &str, text: &str) -> io::Result<()> {
        if self.cut || text.is_empty() {
            return Ok(());
        }
        let line = self.line(kind, text)?;
        if let Some(limit) = self.limit {
            if self.written + line.len() as u64 > limit - NOTE_ROOM {
                return self.cut_here(limit);
            }
        }
        self.out.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn line(&self, kind: &str, text: &str) -> io::Result<Vec<u8>> {
        // Microseconds, as asciinema writes them.
        let t = (self.start.elapsed().as_secs_f64() * 1e6).round() / 1e6;
        let mut line = serde_json::to_vec(&(t, kind, text)).map_err(io::Error::other)?;
        line.push(b'\n');
        Ok(line)
    }

    fn cut_here(&mut self, limit: u64) -> io::Result<()> {
        self.cut = true;
        let note = format!(
            "agentcage: recording cut here: it reached its size bound of {limit} bytes; the \
             session went on unrecorded"
        );
        let mut lines = self.line("m", &note)?;
        lines.extend(self.line("o", &format!("\r\n[{note}]\r\n"))?);
        self.out.write_all(&lines)?;
        self.written += lines.len() as u64;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<serde_json::Value> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn header() -> Header {
        Header::new("demo", &["sh".into(), "-c".into(), "x".into()], (80, 24))
    }

    #[test]
    fn header_then_events_in_asciicast_v2_form() {
        let mut out = Vec::new();
        let mut r = Recorder::start(&mut out, &header(), None).unwrap();
        r.output(b"hello\r\n").unwrap();
        r.input(b"q").unwrap();
        r.resize((100, 30)).unwrap();
        drop(r);
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out).lines().next().unwrap()).unwrap();
        assert_eq!(first["version"], 2);
        assert_eq!(first["width"], 80);
        assert_eq!(first["height"], 24);
        assert_eq!(first["title"], "agent:demo");
        assert_eq!(first["command"], "sh -c x");
        let ev = events(&out);
        assert_eq!(ev[0][1], "o");
        assert_eq!(ev[0][2], "hello\r\n");
        assert!(ev[0][0].is_f64());
        assert_eq!(ev[1][1], "i");
        assert_eq!(ev[2][1], "r");
        assert_eq!(ev[2][2], "100x30");
    }

    #[test]
    fn utf8_split_across_reads_is_kept_whole_and_invalid_bytes_replaced() {
        let mut out = Vec::new();
        let mut r = Recorder::start(&mut out, &header(), None).unwrap();
        let euro = "€".as_bytes();
        r.output(&euro[..1]).unwrap();
        r.output(&euro[1..]).unwrap();
        r.output(b"a\xffb").unwrap();
        drop(r);
        let ev = events(&out);
        // The first chunk alone was an incomplete sequence: nothing written for it.
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0][2], "€");
        assert_eq!(ev[1][2], "a\u{fffd}b");
    }

    #[test]
    fn the_bound_cuts_with_a_note_and_is_never_exceeded() {
        let mut out = Vec::new();
        let limit = MIN_LIMIT;
        let mut r = Recorder::start(&mut out, &header(), Some(limit)).unwrap();
        for _ in 0..1000 {
            r.output(&[b'x'; 100]).unwrap();
        }
        assert!(r.was_cut());
        drop(r);
        assert!(out.len() as u64 <= limit, "{} > {limit}", out.len());
        let ev = events(&out);
        let note = &ev[ev.len() - 2];
        assert_eq!(note[1], "m");
        assert!(note[2]
            .as_str()
            .unwrap()
            .contains("size bound of 2048 bytes"));
        assert!(ev[ev.len() - 1][2]
            .as_str()
            .unwrap()
            .contains("recording cut here"));
    }
}
