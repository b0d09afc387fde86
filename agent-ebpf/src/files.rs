//! File enforcement and capture in the deny tier: the BPF LSM hook `file_open`.
//!
//! A rule names an inode; a rule on a directory covers what lies below it. The hook walks
//! from the opened file up its dentries (bounded) and the nearest rule decides. Keying on
//! inodes means a symlink or a hard link to a protected file is the same file.

use agent_common::{
    cage::CAGE_F_FILES,
    event::{Verdict, KIND_FILE},
    file::{FileEvent, FileRule, InodeKey, ACCESS_READ, ACCESS_WRITE},
    maps::MAX_FILE_DEPTH,
};
use aya_ebpf::{helpers::generated::bpf_get_current_cgroup_id, macros::lsm, programs::LsmContext};

use crate::{
    egress::cage_of,
    events::{count, header, Counter},
    kernel::{inode_id, read, settings},
    maps::{EVENTS, FILE_RULES},
};

const EPERM: i32 = 1;
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;

#[lsm(hook = "file_open")]
pub fn agentcage_file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    if cage.flags & CAGE_F_FILES == 0 {
        return 0;
    }
    let s = settings();
    let file: *const u8 = ctx.arg(0);
    let mode = read::<u32>(file, s.file_mode).unwrap_or(0);
    let mut access = 0u8;
    if mode & FMODE_READ != 0 {
        access |= ACCESS_READ;
    }
    if mode & FMODE_WRITE != 0 {
        access |= ACCESS_WRITE;
    }
    let mut dentry = read::<*const u8>(file, s.file_dentry).unwrap_or_default();
    let mut found: Option<(FileRule, u8)> = None;
    let mut opened = (0u32, 0u64);
    for depth in 0..MAX_FILE_DEPTH {
        if dentry.is_null() {
            break;
        }
        let inode = read::<*const u8>(dentry, s.dentry_inode).unwrap_or_default();
        let (dev, ino) = inode_id(&s, inode);
        if depth == 0 {
            opened = (dev, ino);
        }
        let key = InodeKey {
            slot: cage.policy_slot,
            dev,
            ino,
        };
        // SAFETY: the value is copied out at once; user space replaces values whole.
        if let Some(rule) = unsafe { FILE_RULES.get(key) } {
            found = Some((*rule, depth as u8));
            break;
        }
        let parent = read::<*const u8>(dentry, s.dentry_parent).unwrap_or_default();
        // The root of a file system is its own parent.
        if parent == dentry {
            break;
        }
        dentry = parent;
    }
    let Some((rule, depth)) = found else {
        return 0;
    };
    let refused = rule.protect & access != 0;
    if !refused && rule.watch & access == 0 {
        return 0;
    }
    let verdict = if refused {
        count(cgroup_id, Counter::Denied);
        Verdict::Deny
    } else {
        Verdict::Observed
    };
    match EVENTS.reserve::<FileEvent>(0) {
        Some(mut entry) => {
            entry.write(FileEvent {
                header: header(KIND_FILE, cage.agent_id, cage.policy_slot, cgroup_id),
                ino: opened.1,
                dev: opened.0,
                rule_id: rule.rule_id,
                access,
                verdict: verdict as u8,
                depth,
                _pad: [0; 5],
            });
            entry.submit(0);
        }
        None => count(cgroup_id, Counter::Lost(KIND_FILE)),
    }
    if refused {
        -EPERM
    } else {
        0
    }
}
