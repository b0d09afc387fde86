//! Which verdict an exec gets in a cage: the rule for the file (by device and inode) with
//! approval rules settled by the cage's grants, else the cage's default. Shared by the deny
//! tier's LSM hook (`exec`) and the kill tier's tracepoint (`process`), so both judge alike.

use agent_common::{
    approval::ApprovalKey,
    cage::{CageConfig, CAGE_F_EXEC_DEFAULT_DENY},
    event::Verdict,
    file::InodeKey,
    process::{ExecRule, EXEC_APPROVAL, EXEC_DENY, EXEC_RULE_DEFAULT},
};

use crate::{egress::approved, maps::EXEC_INODES};

/// The rule for a file by inode, else the cage's default.
#[inline(always)]
pub fn judge_inode(cage: &CageConfig, cgroup_id: u64, dev: u32, ino: u64) -> (Verdict, u32) {
    let key = InodeKey {
        slot: cage.policy_slot,
        dev,
        ino,
    };
    // SAFETY: the value is copied out at once; user space replaces values whole.
    if let Some(rule) = unsafe { EXEC_INODES.get(key) } {
        return verdict_with_approval(rule, cgroup_id);
    }
    default_of(cage)
}

#[inline(always)]
pub fn verdict_of(rule: &ExecRule) -> (Verdict, u32) {
    if rule.action == EXEC_DENY {
        (Verdict::Deny, rule.rule_id)
    } else {
        (Verdict::Allow, rule.rule_id)
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
