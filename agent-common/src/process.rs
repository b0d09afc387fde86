//! Process events: exec, fork and exit, from which user space rebuilds each agent's tree.

use crate::event::EventHeader;

/// Bytes of the executed file's name kept (NUL-terminated).
pub const FILENAME_BYTES: usize = 256;
/// Bytes of the argument vector kept (NUL-separated, as in /proc/PID/cmdline).
pub const ARGV_BYTES: usize = 1024;

/// The argument vector was longer than [`ARGV_BYTES`] and was cut.
pub const EXEC_F_ARGV_TRUNCATED: u32 = 1 << 0;
/// The argument vector could not be read (the new image's memory was not readable).
pub const EXEC_F_ARGV_UNREADABLE: u32 = 1 << 1;
/// The decision came from the BPF LSM hook (`bprm_check_security`), before the old image
/// was replaced; otherwise from the `sched_process_exec` tracepoint after it.
pub const EXEC_F_FROM_LSM: u32 = 1 << 2;

/// The program was mapped executable without exec (e.g. through the dynamic loader) and
/// refused by the `mmap_file` hook.
pub const EXEC_F_MMAP: u32 = 1 << 3;

/// The kill tier killed the process (set with the `pending-approval` verdict, which keeps
/// its name so user space raises the approval request).
pub const EXEC_F_KILLED: u32 = 1 << 4;

/// The default decision applied (no exec rule matched).
pub const EXEC_RULE_DEFAULT: u32 = u32::MAX;
/// The file is a dynamic loader run as the main program (`ld.so PROGRAM` maps PROGRAM
/// without an exec): refused in a cage with exec rules.
pub const EXEC_RULE_LOADER: u32 = u32::MAX - 1;
/// Kill tier: the cage's rules name content, and the executed file's content is not known
/// (never hashed by the daemon, or changed since): killed, fail closed.
pub const EXEC_RULE_CONTENT_UNKNOWN: u32 = u32::MAX - 2;

/// An exec, as the kernel saw it. `header.pid/tgid` are the process after exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// Common fields.
    pub header: EventHeader,
    /// The parent's process id (`real_parent->tgid`).
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// `EXEC_F_*` bits.
    pub flags: u32,
    /// Inode number of the executed file (for a script, of its interpreter once loaded).
    pub ino: u64,
    /// Device of the executed file, in the kernel's encoding (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Index of the exec rule that decided, or [`EXEC_RULE_DEFAULT`].
    pub rule_id: u32,
    /// [`crate::event::Verdict`] as u8.
    pub verdict: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
    /// Bytes of `argv` that are valid.
    pub argv_len: u32,
    /// The file name exec was given, as the kernel resolved it from (`bprm->filename`).
    pub filename: [u8; FILENAME_BYTES],
    /// The arguments, NUL-separated.
    pub argv: [u8; ARGV_BYTES],
}

/// A new process. `header` describes the parent (the task that called fork or clone).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    /// Common fields (of the parent).
    pub header: EventHeader,
    /// The child's process id.
    pub child_tgid: u32,
    /// Padding, zero.
    pub _pad: u32,
}

/// A process ended (its thread-group leader exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// Common fields.
    pub header: EventHeader,
    /// `task->exit_code`, encoded as wait(2) reports it: exit status in bits 8-15, the
    /// terminating signal in bits 0-6.
    pub exit_code: u32,
    /// Padding, zero.
    pub _pad: u32,
}

/// An exec rule in the kernel: what to do with a file (by inode) or a content hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// [`EXEC_ALLOW`], [`EXEC_DENY`], [`EXEC_APPROVAL`] or [`EXEC_DENY_MAIN`].
    pub action: u32,
    /// Index of the rule in the policy's exec lists (allow first, then deny).
    pub rule_id: u32,
}

/// The exec may go ahead.
pub const EXEC_ALLOW: u32 = 1;
/// The exec is refused (deny tier) or its process killed (kill tier).
pub const EXEC_DENY: u32 = 2;
/// The exec waits for a person's approval (`approvals.exec`): refused (or killed) with the
/// verdict `pending-approval` unless `APPROVALS` holds an unexpired grant for
/// (cage, `rule_id`).
pub const EXEC_APPROVAL: u32 = 3;
/// The file may not be the main program of an exec (a dynamic loader): refused (or killed)
/// there, while programs still map it as their interpreter (the `mmap_file` hook lets it be).
pub const EXEC_DENY_MAIN: u32 = 4;
/// Rule ids of `approvals.exec` entries start here (index added), apart from the egress
/// rule ids that share the `APPROVALS` map.
pub const EXEC_APPROVAL_RULE_BASE: u32 = 0x4000_0000;

/// Key of the exec-by-content map: a policy slot and a SHA-256 digest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey {
    /// Policy slot.
    pub slot: u32,
    /// SHA-256 of the file's contents.
    pub sha256: [u8; 32],
}

/// Key of the content map: a file by device and inode (no policy slot: content belongs to
/// the file, not to a policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentKey {
    /// Device, in the kernel's encoding (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// Inode number.
    pub ino: u64,
}

/// A file's SHA-256 as the daemon read it, with the change time and size it had then: the
/// kill tier's exec tracepoint takes the digest only while the inode still has both (any
/// write changes the change time, which the daemon waited to be in the past before reading).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentEntry {
    /// `inode.i_ctime` seconds.
    pub ctime_sec: i64,
    /// `inode.i_ctime` nanoseconds.
    pub ctime_nsec: u32,
    /// Padding, zero.
    pub _pad: u32,
    /// `inode.i_size`.
    pub size: i64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

/// The bits of `inode.i_ctime_nsec` that hold nanoseconds: since Linux 6.13 the top bit
/// marks a change time someone has read (multigrain timestamps).
pub const CTIME_NSEC_MASK: u32 = 0x3fff_ffff;
