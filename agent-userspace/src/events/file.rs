//! File rules: the kernel's record of an operation on a watched or protected file, and its
//! event.

use std::collections::HashMap;

use agent_common::{
    file::{
        FileEvent, ACCESS_READ, ACCESS_WRITE, OP_CREATE, OP_LINK, OP_OPEN, OP_RENAME, OP_TRUNCATE,
        OP_UNLINK, OP_USERNS, RULE_READ_ONLY, RULE_TOO_DEEP, RULE_USERNS,
    },
    maps::MAX_FILE_DEPTH,
};
use serde::{Deserialize, Serialize};

use super::{
    decision::{RuleRef, Verdict},
    named::named_enum,
    process::dev_string,
};
use crate::policy::{AgentPolicy, RuleList};

/// Where the inodes of a slot's file rules were found when it was filled: (dev, inode) →
/// path.
pub type InodePaths = HashMap<(u32, u64), String>;

named_enum! {
    /// What was attempted on the file.
    pub enum FileOp ("file operation") {
        /// An open.
        Open = "open",
        /// A truncate.
        Truncate = "truncate",
        /// An unlink or rmdir.
        Unlink = "unlink",
        /// A rename.
        Rename = "rename",
        /// A hard link.
        Link = "link",
        /// A create, mkdir, mknod or symlink.
        Create = "create",
        /// A new user namespace (refused in cages with file rules).
        UsernsCreate = "userns_create",
        /// An operation this build has no name for.
        Other = "other",
    }
}

impl FileOp {
    /// The operation of a raw `OP_*` value.
    pub fn from_raw(op: u8) -> Self {
        match op {
            OP_OPEN => Self::Open,
            OP_TRUNCATE => Self::Truncate,
            OP_UNLINK => Self::Unlink,
            OP_RENAME => Self::Rename,
            OP_LINK => Self::Link,
            OP_CREATE => Self::Create,
            OP_USERNS => Self::UsernsCreate,
            _ => Self::Other,
        }
    }
}

named_enum! {
    /// The kind of access asked for.
    pub enum FileAccess ("file access") {
        /// Reading.
        Read = "read",
        /// Writing.
        Write = "write",
        /// Both.
        ReadWrite = "read+write",
        /// Neither (e.g. a removal judged as the file's own operation).
        None = "none",
    }
}

impl FileAccess {
    /// The access of raw `ACCESS_*` bits.
    pub fn from_raw(bits: u8) -> Self {
        match (bits & ACCESS_READ != 0, bits & ACCESS_WRITE != 0) {
            (true, true) => Self::ReadWrite,
            (true, false) => Self::Read,
            (false, true) => Self::Write,
            (false, false) => Self::None,
        }
    }
}

/// An operation on a watched or protected file.
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
    /// The access asked for.
    pub access: FileAccess,
    /// What was attempted.
    pub op: FileOp,
    /// `deny` (refused with EPERM) or `observed`.
    pub verdict: Verdict,
    /// `files.protect[N]`, `files.watch[N]`, `too-deep`, `no-userns` or `read-only`.
    pub rule: RuleRef,
    /// The rule's text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

/// The rule a kernel rule id names under `policy`, and its text.
fn rule(rule_id: u32, policy: Option<&AgentPolicy>) -> (RuleRef, Option<String>) {
    match rule_id {
        RULE_TOO_DEEP => (
            RuleRef::TooDeep,
            Some(format!(
                "more than {MAX_FILE_DEPTH} directories deep in a cage with file rules"
            )),
        ),
        RULE_USERNS => (
            RuleRef::NoUserns,
            Some("no user namespaces in a cage with file rules".to_owned()),
        ),
        RULE_READ_ONLY => (
            RuleRef::ReadOnly,
            Some("the cage is on the read-only rung: no writes".to_owned()),
        ),
        id => match policy.and_then(|p| p.files.rule_at(id)) {
            Some((list, i, r)) => {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                let rule = match list {
                    RuleList::First => RuleRef::FilesProtect(i),
                    RuleList::Second => RuleRef::FilesWatch(i),
                };
                (rule, Some(format!("{rule} {} {}", r.path, r.access)))
            }
            None => (RuleRef::FileRule(id), None),
        },
    }
}

/// The event detail of a kernel record; `paths` names the inodes of the deciding slot.
pub fn detail(
    e: &FileEvent,
    policy: Option<&AgentPolicy>,
    paths: Option<&InodePaths>,
) -> FileDetail {
    let (rule, rule_text) = rule(e.rule_id, policy);
    FileDetail {
        path: if e.depth == 0 {
            paths.and_then(|p| p.get(&(e.dev, e.ino))).cloned()
        } else {
            None
        },
        dev: dev_string(e.dev),
        inode: e.ino,
        depth: e.depth,
        access: FileAccess::from_raw(e.access),
        op: FileOp::from_raw(e.op),
        verdict: Verdict::from_raw(e.verdict),
        rule,
        rule_text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    #[test]
    fn rule_ids_name_protect_then_watch() {
        let policy = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    files:\n      protect: [{path: /etc/x, access: write}]\n      watch: [{path: /var/y}]\n",
            "t.yaml",
        )
        .unwrap();
        let p = policy.agent("a");
        assert_eq!(
            rule(0, p),
            (
                RuleRef::FilesProtect(0),
                Some("files.protect[0] /etc/x write".into())
            )
        );
        assert_eq!(rule(1, p).0, RuleRef::FilesWatch(0));
        assert_eq!(rule(2, p), (RuleRef::FileRule(2), None));
        assert_eq!(rule(RULE_USERNS, None).0, RuleRef::NoUserns);
        assert_eq!(
            FileAccess::from_raw(ACCESS_READ | ACCESS_WRITE).as_str(),
            "read+write"
        );
        assert_eq!(FileOp::from_raw(200), FileOp::Other);
    }
}
