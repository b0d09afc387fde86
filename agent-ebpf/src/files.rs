//! File enforcement and capture in the deny tier: BPF LSM hooks on opens and on every
//! operation that changes what a path names (truncate, unlink, rename, link, create).
//!
//! A rule names an inode; a rule on a directory covers what lies below it. Each hook walks
//! from the dentry concerned up its parents (bounded) and the nearest rule decides. Keying
//! on inodes means a symlink to a protected file is the same file; hard links to protected
//! files cannot be made from a cage, nor can protected files be renamed away, so a rule on
//! a directory cannot be escaped by a new name. A walk that runs out of depth before the
//! file system's root is refused: fail closed.

use agent_common::{
    cage::{CageConfig, CAGE_F_FILES, CAGE_F_READ_ONLY},
    event::{EventKind, Verdict},
    file::{
        FileEvent, FileRule, InodeKey, ACCESS_READ, ACCESS_WRITE, OP_CREATE, OP_LINK, OP_OPEN,
        OP_RENAME, OP_TRUNCATE, OP_UNLINK, OP_USERNS,
    },
    kernel::KernelSettings,
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
const O_TRUNC: u32 = 0o1000;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const ANY: u8 = ACCESS_READ | ACCESS_WRITE;
/// The rule id reported when the walk ran out of depth.
const RULE_TOO_DEEP: u32 = agent_common::file::RULE_TOO_DEEP;
/// The rule id reported for a refused user namespace.
const RULE_USERNS: u32 = agent_common::file::RULE_USERNS;
/// The rule id reported for a write refused on the read-only rung.
const RULE_READ_ONLY: u32 = agent_common::file::RULE_READ_ONLY;

/// The caller's cage, if it has file rules or is on the read-only rung.
#[inline(always)]
fn caged() -> Option<(u64, CageConfig)> {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let cage = cage_of(cgroup_id)?;
    (cage.flags & (CAGE_F_FILES | CAGE_F_READ_ONLY) != 0).then_some((cgroup_id, cage))
}

/// What a walk up from a dentry found.
struct Found {
    rule: Option<(FileRule, u8)>,
    /// The dentry's own file (0, 0 for a negative dentry).
    file: (u32, u64),
    /// The walk stopped at the depth bound, not at the root.
    too_deep: bool,
}

#[inline(always)]
fn walk(s: &KernelSettings, slot: u32, mut dentry: *const u8) -> Found {
    let mut found = Found {
        rule: None,
        file: (0, 0),
        too_deep: true,
    };
    for depth in 0..MAX_FILE_DEPTH {
        if dentry.is_null() {
            found.too_deep = false;
            break;
        }
        let inode = read::<*const u8>(dentry, s.dentry_inode).unwrap_or_default();
        // A negative dentry (a name being created) has no inode: only its parents count.
        if !inode.is_null() {
            let (dev, ino) = inode_id(s, inode);
            if depth == 0 {
                found.file = (dev, ino);
            }
            let key = InodeKey { slot, dev, ino };
            // SAFETY: the value is copied out at once; user space replaces values whole.
            if let Some(rule) = unsafe { FILE_RULES.get(key) } {
                found.rule = Some((*rule, depth as u8));
                found.too_deep = false;
                break;
            }
        }
        let parent = read::<*const u8>(dentry, s.dentry_parent).unwrap_or_default();
        // The root of a file system is its own parent.
        if parent == dentry {
            found.too_deep = false;
            break;
        }
        dentry = parent;
    }
    found
}

/// Judges `access` to what `dentry` names: refused (reported) if a protect rule covers it
/// or the walk ran out of depth; reported if a watch rule does. Returns the hook's answer.
#[inline(always)]
fn judge(dentry: *const u8, access: u8, op: u8) -> i32 {
    let Some((cgroup_id, cage)) = caged() else {
        return 0;
    };
    let s = settings();
    // The read-only rung: no writes to regular files, nor any change of names. Opens of
    // devices, pipes and sockets (e.g. /dev/null) stay possible.
    if cage.flags & CAGE_F_READ_ONLY != 0 && access & ACCESS_WRITE != 0 {
        let inode = read::<*const u8>(dentry, s.dentry_inode).unwrap_or_default();
        let mode = read::<u16>(inode, s.inode_mode).unwrap_or(S_IFREG);
        if op != OP_OPEN || mode & S_IFMT == S_IFREG {
            let file = inode_id(&s, inode);
            return report(
                &cage,
                cgroup_id,
                file,
                access,
                op,
                Verdict::Deny,
                RULE_READ_ONLY,
                0,
            );
        }
    }
    if cage.flags & CAGE_F_FILES == 0 {
        return 0;
    }
    let found = walk(&s, cage.policy_slot, dentry);
    let (verdict, rule_id, depth) = match found.rule {
        Some((rule, depth)) if rule.protect & access != 0 => (Verdict::Deny, rule.rule_id, depth),
        Some((rule, depth)) if rule.watch & access != 0 => (Verdict::Observed, rule.rule_id, depth),
        _ if found.too_deep => (Verdict::Deny, RULE_TOO_DEEP, MAX_FILE_DEPTH as u8),
        _ => return 0,
    };
    report(
        &cage, cgroup_id, found.file, access, op, verdict, rule_id, depth,
    )
}

#[expect(clippy::too_many_arguments, reason = "one event, all fields needed")]
#[inline(always)]
fn report(
    cage: &CageConfig,
    cgroup_id: u64,
    (dev, ino): (u32, u64),
    access: u8,
    op: u8,
    verdict: Verdict,
    rule_id: u32,
    depth: u8,
) -> i32 {
    if verdict == Verdict::Deny {
        count(cgroup_id, Counter::Denied);
    }
    match EVENTS.reserve::<FileEvent>(0) {
        Some(mut entry) => {
            entry.write(FileEvent {
                header: header(EventKind::File, cage.agent_id, cage.policy_slot, cgroup_id),
                ino,
                dev,
                rule_id,
                access,
                verdict: verdict as u8,
                depth,
                op,
                _pad: [0; 4],
            });
            entry.submit(0);
        }
        None => count(cgroup_id, Counter::Lost(EventKind::File)),
    }
    if verdict == Verdict::Deny {
        -EPERM
    } else {
        0
    }
}

/// An earlier LSM's refusal stands: the hook's last argument.
macro_rules! previous {
    ($ctx:expr, $n:expr) => {{
        let previous: i32 = $ctx.arg($n);
        if previous != 0 {
            return previous;
        }
    }};
}

/// `file_open(struct file *file)`.
#[lsm(hook = "file_open")]
pub fn agentcage_file_open(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    if caged().is_none() {
        return 0;
    }
    let s = settings();
    let file: *const u8 = ctx.arg(0);
    let mode = read::<u32>(file, s.file_mode).unwrap_or(0);
    let flags = read::<u32>(file, s.file_flags).unwrap_or(0);
    let mut access = 0u8;
    if mode & FMODE_READ != 0 {
        access |= ACCESS_READ;
    }
    // O_TRUNC empties the file even when it is opened read-only.
    if mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0 {
        access |= ACCESS_WRITE;
    }
    let dentry = read::<*const u8>(file, s.file_dentry).unwrap_or_default();
    judge(dentry, access, OP_OPEN)
}

/// `path_truncate(const struct path *path)`: truncate(2) without an open.
#[lsm(hook = "path_truncate")]
pub fn agentcage_path_truncate(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    let path: *const u8 = ctx.arg(0);
    let dentry = read::<*const u8>(path, settings().path_dentry).unwrap_or_default();
    judge(dentry, ACCESS_WRITE, OP_TRUNCATE)
}

/// `inode_unlink(struct inode *dir, struct dentry *dentry)`.
#[lsm(hook = "inode_unlink")]
pub fn agentcage_inode_unlink(ctx: LsmContext) -> i32 {
    previous!(ctx, 2);
    judge(ctx.arg(1), ACCESS_WRITE, OP_UNLINK)
}

/// `inode_rmdir(struct inode *dir, struct dentry *dentry)`.
#[lsm(hook = "inode_rmdir")]
pub fn agentcage_inode_rmdir(ctx: LsmContext) -> i32 {
    previous!(ctx, 2);
    judge(ctx.arg(1), ACCESS_WRITE, OP_UNLINK)
}

/// `inode_rename(old_dir, old_dentry, new_dir, new_dentry)`: a protected file may not move
/// away (under a name no rule covers), nor may anything move into or over a protected place.
#[lsm(hook = "inode_rename")]
pub fn agentcage_inode_rename(ctx: LsmContext) -> i32 {
    previous!(ctx, 4);
    let r = judge(ctx.arg(1), ANY, OP_RENAME);
    if r != 0 {
        return r;
    }
    judge(ctx.arg(3), ACCESS_WRITE, OP_RENAME)
}

/// `inode_link(struct dentry *old_dentry, struct inode *dir, struct dentry *new_dentry)`:
/// no second name for a protected file, nor a new name in a protected directory.
#[lsm(hook = "inode_link")]
pub fn agentcage_inode_link(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    let r = judge(ctx.arg(0), ANY, OP_LINK);
    if r != 0 {
        return r;
    }
    judge(ctx.arg(2), ACCESS_WRITE, OP_LINK)
}

/// `inode_create(struct inode *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "inode_create")]
pub fn agentcage_inode_create(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    judge(ctx.arg(1), ACCESS_WRITE, OP_CREATE)
}

/// `inode_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "inode_mkdir")]
pub fn agentcage_inode_mkdir(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    judge(ctx.arg(1), ACCESS_WRITE, OP_CREATE)
}

/// `inode_mknod(struct inode *dir, struct dentry *dentry, umode_t mode, dev_t dev)`.
#[lsm(hook = "inode_mknod")]
pub fn agentcage_inode_mknod(ctx: LsmContext) -> i32 {
    previous!(ctx, 4);
    judge(ctx.arg(1), ACCESS_WRITE, OP_CREATE)
}

/// `inode_symlink(struct inode *dir, struct dentry *dentry, const char *old_name)`.
#[lsm(hook = "inode_symlink")]
pub fn agentcage_inode_symlink(ctx: LsmContext) -> i32 {
    previous!(ctx, 3);
    judge(ctx.arg(1), ACCESS_WRITE, OP_CREATE)
}

/// `userns_create(const struct cred *cred)`: inside a new user namespace a caged process
/// could mount over protected paths, so cages with file rules may not make one.
#[lsm(hook = "userns_create")]
pub fn agentcage_userns_create(ctx: LsmContext) -> i32 {
    previous!(ctx, 1);
    let Some((cgroup_id, cage)) = caged() else {
        return 0;
    };
    if cage.flags & CAGE_F_FILES == 0 {
        return 0;
    }
    report(
        &cage,
        cgroup_id,
        (0, 0),
        ANY,
        OP_USERNS,
        Verdict::Deny,
        RULE_USERNS,
        0,
    )
}
