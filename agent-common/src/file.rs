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
    /// Padding, zero.
    pub _pad: [u8; 5],
}
