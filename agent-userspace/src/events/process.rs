//! The process, exec and file parts of events.

use serde::{Deserialize, Serialize};

/// An exec: the new program of a caged process, or one the kernel refused or killed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExecDetail {
    /// The file name exec was given, as the kernel resolved it from.
    pub filename: String,
    /// The arguments (empty when refused before the new image existed).
    pub argv: Vec<String>,
    /// Whether the arguments were cut at the kernel's bound.
    pub argv_truncated: bool,
    /// Real user and group ids.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Device of the executed file, `MAJOR:MINOR`.
    pub dev: String,
    /// Inode of the executed file.
    pub inode: u64,
    /// SHA-256 of the executed file's content, computed in user space (cached by device,
    /// inode, mtime and size).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// Why there is no hash, if there is none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256_error: Option<String>,
    /// `allow`, `deny` (refused with EPERM) or `killed` (SIGKILL before the new image ran).
    pub verdict: String,
    /// `lsm` (bprm_check_security, before the exec), `lsm_mmap` (mapped executable without
    /// exec, e.g. by the dynamic loader) or `tracepoint` (sched_process_exec).
    pub hook: String,
    /// The rule that decided: `exec.allow[N]`, `exec.deny[N]` or `default`.
    pub rule: String,
    /// The rule's text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

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

impl ExitDetail {
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

/// An open of a watched or protected file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileDetail {
    /// The path the rule's inode was found at when the policy was applied (for a rule on a
    /// directory, the directory's; see `depth`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    /// Device of the opened file, `MAJOR:MINOR`.
    pub dev: String,
    /// Inode of the opened file.
    pub inode: u64,
    /// How many directories above the file the matching rule sits (0: the file itself).
    pub depth: u8,
    /// `read`, `write` or `read+write`.
    pub access: String,
    /// What was attempted: `open`, `truncate`, `unlink`, `rename`, `link`, `create` or
    /// `userns_create`.
    pub op: String,
    /// `deny` (refused with EPERM) or `observed`.
    pub verdict: String,
    /// `files.protect[N]` or `files.watch[N]`.
    pub rule: String,
    /// The rule's text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

/// `MAJOR:MINOR` of a device in the kernel's encoding.
pub fn dev_string(kdev: u32) -> String {
    format!("{}:{}", kdev >> 20, kdev & 0xf_ffff)
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
    }
}
