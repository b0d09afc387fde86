//! File events and the per-inode rules behind `files.protect` / `files.watch` and exec rules.

use crate::event::EventHeader;

/// Opened for reading (`FMODE_READ`).
pub const ACCESS_READ: u8 = 1 << 0;
/// Opened for writing (`FMODE_WRITE`).
pub const ACCESS_WRITE: u8 = 1 << 1;

/// A file or directory in one policy slot. Rules on a directory cover everything below it
/// on the same file system.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    /// Policy slot.
    pub slot: u32,
    /// Device, in the kernel's encoding (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
}

/// What the policy says about opens of one inode (or of anything below a directory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRule {
    /// `ACCESS_*` bits refused.
    pub protect: u8,
    /// `ACCESS_*` bits reported.
    pub watch: u8,
    /// Padding, zero.
    pub _pad: [u8; 2],
    /// Index of the rule in the policy's `files` list.
    pub rule_id: u32,
}

/// An open of a watched or protected file.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    /// Common fields.
    pub header: EventHeader,
    /// Inode opened.
    pub ino: u64,
    /// Its device, kernel encoding.
    pub dev: u32,
    /// Index of the deciding rule.
    pub rule_id: u32,
    /// `ACCESS_*` bits requested.
    pub access: u8,
    /// [`crate::event::Verdict`] as u8.
    pub verdict: u8,
    /// How many directories up the matching rule's inode was (0: the file itself).
    pub depth: u8,
    /// `OP_*`: what was attempted.
    pub op: u8,
    /// Padding, zero.
    pub _pad: [u8; 4],
}

/// Rule id of a refusal because the walk up the directories ran out of depth.
pub const RULE_TOO_DEEP: u32 = u32::MAX;
/// Rule id of a refused user namespace.
pub const RULE_USERNS: u32 = u32::MAX - 1;

/// open(2) and the like (`file_open`).
pub const OP_OPEN: u8 = 0;
/// truncate(2) (`path_truncate`).
pub const OP_TRUNCATE: u8 = 1;
/// unlink(2) or rmdir(2).
pub const OP_UNLINK: u8 = 2;
/// rename(2), from or to a protected place.
pub const OP_RENAME: u8 = 3;
/// link(2) of a protected file, or into a protected directory.
pub const OP_LINK: u8 = 4;
/// Creating a file, directory, node or symlink in a protected directory.
pub const OP_CREATE: u8 = 5;
/// A new user namespace, refused in cages with file rules (in one the agent could mount
/// over protected paths).
pub const OP_USERNS: u8 = 6;
