//! Which verdict an exec gets in a cage: the rule for the file (by device and inode) with
//! approval rules settled by the cage's grants, else the cage's default. Shared by the deny
//! tier's LSM hook (`exec`) and the kill tier's tracepoint (`process`), so both judge alike.

use agent_common::{
    approval::ApprovalKey,
    cage::{CageConfig, CAGE_F_EXEC_DEFAULT_DENY, CAGE_F_EXEC_HASHES},
    event::Verdict,
    file::InodeKey,
    kernel::KernelSettings,
    process::{
        ContentKey, ExecRule, HashKey, CTIME_NSEC_MASK, EXEC_ALLOW, EXEC_APPROVAL,
        EXEC_RULE_CONTENT_UNKNOWN, EXEC_RULE_DEFAULT,
    },
};

use crate::{
    egress::approved,
    kernel::read,
    maps::{EXEC_CONTENT, EXEC_HASHES, EXEC_INODES},
};

/// The rule for a file by inode, with approvals settled.
#[inline(always)]
pub fn by_inode(cage: &CageConfig, cgroup_id: u64, dev: u32, ino: u64) -> Option<(Verdict, u32)> {
    let key = InodeKey {
        slot: cage.policy_slot,
        dev,
        ino,
    };
    // SAFETY: the value is copied out at once; user space replaces values whole.
    unsafe { EXEC_INODES.get(key) }.map(|rule| verdict_with_approval(rule, cgroup_id))
}

/// The rule for a file by inode, else the cage's default.
#[inline(always)]
pub fn judge_inode(cage: &CageConfig, cgroup_id: u64, dev: u32, ino: u64) -> (Verdict, u32) {
    by_inode(cage, cgroup_id, dev, ino).unwrap_or_else(|| default_of(cage))
}

/// The kill tier's judgement, in the order of the deny tier's LSM hook: a deny (or missing
/// approval) by file settles it; then, in a cage with content rules, the rule for the
/// content the daemon hashed (content it does not know, or that changed since, is killed);
/// then the rule by file; then the default.
#[inline(always)]
pub fn judge_exec(
    s: &KernelSettings,
    cage: &CageConfig,
    cgroup_id: u64,
    inode: *const u8,
    (dev, ino): (u32, u64),
) -> (Verdict, u32) {
    let file = by_inode(cage, cgroup_id, dev, ino);
    if let Some(decided @ (verdict, _)) = file {
        if verdict != Verdict::Allow {
            return decided;
        }
    }
    if cage.flags & CAGE_F_EXEC_HASHES != 0 {
        let Some(sha256) = content_of(s, inode, dev, ino) else {
            return (Verdict::Deny, EXEC_RULE_CONTENT_UNKNOWN);
        };
        let key = HashKey {
            slot: cage.policy_slot,
            sha256,
        };
        // SAFETY: as in by_inode.
        if let Some(rule) = unsafe { EXEC_HASHES.get(key) } {
            return verdict_of(rule);
        }
    }
    file.unwrap_or_else(|| default_of(cage))
}

/// The SHA-256 the daemon recorded for this file, if the inode still has the change time
/// and size it had when the daemon read it.
#[inline(always)]
fn content_of(s: &KernelSettings, inode: *const u8, dev: u32, ino: u64) -> Option<[u8; 32]> {
    let key = ContentKey { dev, _pad: 0, ino };
    // SAFETY: as in by_inode.
    let entry = unsafe { EXEC_CONTENT.get(key) }?;
    let size = read::<i64>(inode, s.inode_size)?;
    let sec = read::<i64>(inode, s.inode_ctime_sec)?;
    let nsec = read::<u32>(inode, s.inode_ctime_nsec)? & CTIME_NSEC_MASK;
    (entry.size == size && entry.ctime_sec == sec && entry.ctime_nsec == nsec)
        .then_some(entry.sha256)
}

/// Allow for an allow rule; deny for the rest (deny, deny as main, an approval not given).
#[inline(always)]
pub fn verdict_of(rule: &ExecRule) -> (Verdict, u32) {
    if rule.action == EXEC_ALLOW {
        (Verdict::Allow, rule.rule_id)
    } else {
        (Verdict::Deny, rule.rule_id)
    }
}

/// As [`verdict_of`], with an approval rule settled by the cage's grants.
#[inline(always)]
pub fn verdict_with_approval(rule: &ExecRule, cgroup_id: u64) -> (Verdict, u32) {
    if rule.action != EXEC_APPROVAL {
        return verdict_of(rule);
    }
    let key = ApprovalKey {
        cgroup_id,
        rule_id: rule.rule_id,
        port: 0,
        family: 0,
        addr: [0; 16],
    };
    if approved(&key) {
        (Verdict::Allow, rule.rule_id)
    } else {
        (Verdict::PendingApproval, rule.rule_id)
    }
}

#[inline(always)]
pub fn default_of(cage: &CageConfig) -> (Verdict, u32) {
    if cage.flags & CAGE_F_EXEC_DEFAULT_DENY != 0 {
        (Verdict::Deny, EXEC_RULE_DEFAULT)
    } else {
        (Verdict::Allow, EXEC_RULE_DEFAULT)
    }
}
