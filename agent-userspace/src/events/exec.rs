//! Execs: the kernel's record of a new program (run, refused or killed) and its event.

use agent_common::{
    event::Verdict as KernelVerdict,
    process::{
        ExecEvent, EXEC_APPROVAL_RULE_BASE, EXEC_F_ARGV_TRUNCATED, EXEC_F_FROM_LSM, EXEC_F_KILLED,
        EXEC_F_MMAP, EXEC_RULE_CONTENT_UNKNOWN, EXEC_RULE_DEFAULT, EXEC_RULE_LOADER,
    },
};
use serde::{Deserialize, Serialize};

use super::{
    decision::{RuleRef, Verdict},
    named::named_enum,
    process::{c_str, dev_string, split_argv},
};
use crate::policy::{AgentPolicy, ExecDefault, RuleList};

named_enum! {
    /// Where an exec was seen.
    pub enum ExecHook ("exec hook") {
        /// BPF LSM `bprm_check_security`, before the exec (deny tier).
        Lsm = "lsm",
        /// BPF LSM `mmap_file`: an executable mapped without exec, e.g. by the dynamic loader.
        LsmMmap = "lsm_mmap",
        /// The `sched_process_exec` tracepoint, after the exec (capture and the kill tier).
        Tracepoint = "tracepoint",
    }
}

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
    /// `allow`, `deny` (refused with EPERM), `killed` (SIGKILL before the new image ran) or
    /// `pending-approval`.
    pub verdict: Verdict,
    /// The kill tier killed the process (with `killed`, and with `pending-approval`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
    /// Where the exec was seen.
    pub hook: ExecHook,
    /// The rule that decided: `exec.allow[N]`, `exec.deny[N]`, `approvals.exec[N]`,
    /// `default`, `loader` (a dynamic loader run as a program) or `content-unknown` (kill
    /// tier: content the daemon had not read).
    pub rule: RuleRef,
    /// The rule's text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

impl ExecDetail {
    /// Whether the new image replaced the old one (it ran, or was killed on its way): a
    /// refused exec left the process as it was.
    pub fn replaced_image(&self) -> bool {
        self.verdict != Verdict::Deny
    }
}

/// The rule a kernel rule id names under `policy`, and its text.
fn rule(rule_id: u32, policy: Option<&AgentPolicy>) -> (RuleRef, Option<String>) {
    if rule_id == EXEC_RULE_LOADER {
        return (
            RuleRef::Loader,
            Some("loader: a dynamic loader may not run a program past the exec rules".into()),
        );
    }
    if rule_id == EXEC_RULE_CONTENT_UNKNOWN {
        return (
            RuleRef::ContentUnknown,
            Some("content-unknown: the daemon had not read this file's content (or it changed since)".into()),
        );
    }
    if rule_id == EXEC_RULE_DEFAULT {
        let default = match policy.map(|p| p.exec.default) {
            Some(ExecDefault::Deny) => "deny",
            Some(ExecDefault::Allow) | None => "allow",
        };
        return (
            RuleRef::ExecDefault,
            Some(format!("exec.default {default}")),
        );
    }
    if rule_id >= EXEC_APPROVAL_RULE_BASE {
        let i = rule_id - EXEC_APPROVAL_RULE_BASE;
        let rule = RuleRef::ApprovalsExec(i);
        let text = policy
            .and_then(|p| p.approvals.exec.get(i as usize))
            .map(|c| format!("{rule} {c} (needs a person's approval)"));
        return (rule, text);
    }
    match policy.and_then(|p| p.exec.rule_at(rule_id)) {
        Some((list, i, m)) => {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let rule = match list {
                RuleList::First => RuleRef::ExecAllow(i),
                RuleList::Second => RuleRef::ExecDeny(i),
            };
            (rule, Some(format!("{rule} {m}")))
        }
        None => (RuleRef::ExecRule(rule_id), None),
    }
}

/// The event detail of a kernel record; the content hash is added later, outside any lock.
pub fn detail(e: &ExecEvent, policy: Option<&AgentPolicy>) -> ExecDetail {
    let len = (e.argv_len as usize).min(e.argv.len());
    let (rule, rule_text) = rule(e.rule_id, policy);
    ExecDetail {
        filename: c_str(&e.filename),
        argv: split_argv(&e.argv[..len]),
        argv_truncated: e.flags & EXEC_F_ARGV_TRUNCATED != 0,
        uid: e.uid,
        gid: e.gid,
        ppid: e.ppid,
        dev: dev_string(e.dev),
        inode: e.ino,
        sha256: None,
        sha256_error: None,
        verdict: Verdict::from_raw(e.verdict),
        killed: e.flags & EXEC_F_KILLED != 0 || e.verdict == KernelVerdict::Killed as u8,
        hook: if e.flags & EXEC_F_MMAP != 0 {
            ExecHook::LsmMmap
        } else if e.flags & EXEC_F_FROM_LSM != 0 {
            ExecHook::Lsm
        } else {
            ExecHook::Tracepoint
        },
        rule,
        rule_text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn rule_ids_name_the_list_they_point_into() {
        let policy = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    exec:\n      allow: [/bin/a, /bin/b]\n      deny: [/bin/c]\n    approvals:\n      exec: [\"make deploy\"]\n",
            "t.yaml",
        )
        .unwrap();
        let p = policy.agent("a");
        assert_eq!(rule(1, p).0, RuleRef::ExecAllow(1));
        assert_eq!(
            rule(2, p),
            (RuleRef::ExecDeny(0), Some("exec.deny[0] /bin/c".into()))
        );
        assert_eq!(
            rule(3, p),
            (RuleRef::ExecRule(3), None),
            "beyond both lists"
        );
        assert_eq!(
            rule(EXEC_APPROVAL_RULE_BASE, p).1.as_deref(),
            Some("approvals.exec[0] make deploy (needs a person's approval)")
        );
        assert_eq!(rule(EXEC_RULE_DEFAULT, None).0, RuleRef::ExecDefault);
        assert_eq!(rule(EXEC_RULE_LOADER, p).0.to_string(), "loader");
        assert_eq!(
            rule(EXEC_RULE_CONTENT_UNKNOWN, p).0.to_string(),
            "content-unknown"
        );
    }
}
