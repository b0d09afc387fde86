//! Turning ring-buffer records into typed values, checked for size and kind.

use agent_common::{
    egress::EgressEvent,
    event::EventKind,
    file::FileEvent,
    process::{ExecEvent, ExitEvent, ForkEvent},
    unix::UnixEvent,
};

/// A record from the ring buffer, copied out of it.
#[derive(Clone, Debug)]
pub enum RawEvent {
    /// An egress decision.
    Egress(EgressEvent),
    /// An exec (boxed: it carries the file name and arguments).
    Exec(Box<ExecEvent>),
    /// A new process.
    Fork(ForkEvent),
    /// A process ended.
    Exit(ExitEvent),
    /// An open of a watched or protected file.
    File(FileEvent),
    /// A Unix-socket decision (boxed: it carries the address).
    Unix(Box<UnixEvent>),
}

impl RawEvent {
    /// The common header.
    pub fn header(&self) -> &agent_common::event::EventHeader {
        match self {
            Self::Egress(e) => &e.header,
            Self::Exec(e) => &e.header,
            Self::Fork(e) => &e.header,
            Self::Exit(e) => &e.header,
            Self::File(e) => &e.header,
            Self::Unix(e) => &e.header,
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its kind's struct.
    #[error("event record of {got} bytes is shorter than the {need} its kind needs")]
    Short {
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The kind field names no known event family.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let kind_bytes: [u8; 4] =
        bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError::Short {
                got: bytes.len(),
                need: 4,
            })?;
    let raw = u32::from_ne_bytes(kind_bytes);
    match EventKind::from_u32(raw).ok_or(DecodeError::UnknownKind(raw))? {
        EventKind::Egress => read::<EgressEvent>(bytes).map(RawEvent::Egress),
        EventKind::Exec => read::<ExecEvent>(bytes).map(|e| RawEvent::Exec(Box::new(e))),
        EventKind::Fork => read::<ForkEvent>(bytes).map(RawEvent::Fork),
        EventKind::Exit => read::<ExitEvent>(bytes).map(RawEvent::Exit),
        EventKind::File => read::<FileEvent>(bytes).map(RawEvent::File),
        EventKind::Unix => read::<UnixEvent>(bytes).map(|e| RawEvent::Unix(Box::new(e))),
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            got: bytes.len(),
            need,
        });
    }
    // SAFETY: the length is checked above, T is a #[repr(C)] plain-data type from
    // agent-common for which any bit pattern is valid, and read_unaligned copes with the ring
    // buffer's 8-byte alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

#[cfg(test)]
mod tests {
    use agent_common::event::{EventHeader, EventKind};

    use super::*;

    fn sample() -> EgressEvent {
        EgressEvent {
            header: EventHeader {
                kind: EventKind::Egress as u32,
                agent_id: 7,
                policy_slot: 3,
                _pad: 0,
                ts_ns: 42,
                cgroup_id: 1234,
                pid: 10,
                tgid: 11,
                comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            addr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            rule_id: 3,
            port: 8080,
            family: 2,
            protocol: 6,
            sock_type: 1,
            verdict: 2,
            hook: 1,
            _pad: [0; 2],
            name_id: 0,
            _pad2: 0,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value for the test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_egress_records() {
        let e = sample();
        let RawEvent::Egress(got) = decode(&bytes_of(&e)).unwrap() else {
            panic!("an egress record decodes as egress");
        };
        assert_eq!(got.header.agent_id, 7);
        assert_eq!(got.port, 8080);
        assert_eq!(got.addr[..4], [127, 0, 0, 2]);
    }

    #[test]
    fn refuses_short_and_unknown_records() {
        let b = bytes_of(&sample());
        assert!(matches!(decode(&b[..20]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&[1, 0]), Err(DecodeError::Short { .. })));
        let mut unknown = b.clone();
        unknown[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind(99));
    }
}
