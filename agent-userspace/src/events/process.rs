//! Process lifetimes: forks and exits of caged processes, and the helpers every kernel
//! family's decoding shares (device numbers, argument lists, C strings).

use agent_common::process::{ExitEvent, ForkEvent};
use serde::{Deserialize, Serialize};

/// A new process in a cage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ForkDetail {
    /// The new process's id (the event's own `tgid` is the parent).
    pub child_pid: u32,
}

/// A caged process ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExitDetail {
    /// Exit status, when it exited.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signal: Option<i32>,
}

impl ForkDetail {
    /// The event detail of a kernel record.
    pub fn from_raw(e: &ForkEvent) -> Self {
        Self {
            child_pid: e.child_tgid,
        }
    }
}

impl ExitDetail {
    /// The event detail of a kernel record.
    pub fn from_raw(e: &ExitEvent) -> Self {
        Self::from_status(e.exit_code)
    }

    /// Decodes a wait(2)-style status word.
    pub fn from_status(status: u32) -> Self {
        let signal = status & 0x7f;
        if signal == 0 {
            Self {
                exit_code: Some(((status >> 8) & 0xff) as i32),
                signal: None,
            }
        } else {
            Self {
                exit_code: None,
                signal: Some(signal as i32),
            }
        }
    }
}

/// `MAJOR:MINOR` of a device in the kernel's encoding.
pub fn dev_string(kdev: u32) -> String {
    format!("{}:{}", kdev >> 20, kdev & 0xf_ffff)
}

/// NUL-terminated bytes → string (lossy).
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// NUL-separated arguments → strings (lossy).
pub fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_decodes() {
        assert_eq!(ExitDetail::from_status(3 << 8).exit_code, Some(3));
        assert_eq!(ExitDetail::from_status(9).signal, Some(9));
        assert_eq!(ExitDetail::from_status(0x80 | 11).signal, Some(11));
    }

    #[test]
    fn argv_splits() {
        assert_eq!(split_argv(b"sh\0-c\0echo hi\0"), ["sh", "-c", "echo hi"]);
        assert!(split_argv(b"").is_empty());
        assert_eq!(dev_string((8 << 20) | 1), "8:1");
        assert_eq!(c_str(b"curl\0\0junk"), "curl");
    }
}
