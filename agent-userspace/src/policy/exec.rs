//! The `exec:`, `files:` and `enforcement:` sections of an agent's policy.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which kernel tier the agent needs (see docs/POLICY.md "Enforcement tiers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Whatever this kernel gives: deny where BPF LSM is active, else kill.
    #[default]
    Any,
    /// Refusal with EPERM (BPF LSM). On a kernel without it the agent is not started.
    Deny,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::Deny => "deny",
        })
    }
}

/// Which programs the agent may execute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecPolicy {
    /// What happens to an exec no rule matches.
    #[serde(default)]
    pub default: ExecDefault,
    /// Programs that may run: absolute paths, globs, or `sha256:HEX` digests.
    #[serde(default)]
    pub allow: Vec<ExecMatch>,
    /// Programs that may not run; a deny rule wins over an allow rule for the same file.
    /// A path here also denies any copy of the file's current content (deny tier).
    #[serde(default)]
    pub deny: Vec<ExecMatch>,
}

impl ExecPolicy {
    /// Whether the section says anything (an empty one changes nothing).
    pub fn is_empty(&self) -> bool {
        self.default == ExecDefault::Allow && self.allow.is_empty() && self.deny.is_empty()
    }

    /// The list a kernel rule id points into, the index there, and the rule: the compiler
    /// numbers the allow list first, then the deny list.
    pub fn rule_at(&self, rule_id: u32) -> Option<(RuleList, usize, &ExecMatch)> {
        let i = usize::try_from(rule_id).ok()?;
        match self.allow.get(i) {
            Some(m) => Some((RuleList::First, i, m)),
            None => {
                let j = i.checked_sub(self.allow.len())?;
                self.deny.get(j).map(|m| (RuleList::Second, j, m))
            }
        }
    }
}

/// Which of a section's two lists a kernel rule id points into: `exec.allow` / `exec.deny`,
/// `files.protect` / `files.watch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleList {
    /// `allow` (exec) or `protect` (files).
    First,
    /// `deny` (exec) or `watch` (files).
    Second,
}

/// The default for execs no rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecDefault {
    /// Run (a deny list).
    #[default]
    Allow,
    /// Refuse (an allow list).
    Deny,
}

/// One exec rule target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum ExecMatch {
    /// An absolute path or glob, resolved to files when the policy is applied.
    Path(String),
    /// A SHA-256 of the file's content (deny tier only).
    Sha256([u8; 32]),
}

impl TryFrom<String> for ExecMatch {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(hex_digest) = s.strip_prefix("sha256:") {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hex_digest.trim(), &mut digest).map_err(|e| {
                format!("invalid exec rule {s:?}: sha256: needs 64 hexadecimal digits ({e})")
            })?;
            return Ok(Self::Sha256(digest));
        }
        check_path_pattern(&s, "exec rule")?;
        Ok(Self::Path(s))
    }
}

impl From<ExecMatch> for String {
    fn from(m: ExecMatch) -> Self {
        m.to_string()
    }
}

impl fmt::Display for ExecMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => f.write_str(p),
            Self::Sha256(d) => write!(f, "sha256:{}", hex::encode(d)),
        }
    }
}

/// Paths must be absolute glob patterns `glob` accepts.
fn check_path_pattern(s: &str, what: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!(
            "invalid {what} {s:?}: expected an absolute path or glob (starting with /) or \
             sha256:HEX"
        ));
    }
    glob::Pattern::new(s).map_err(|e| format!("invalid {what} {s:?}: {e}"))?;
    Ok(())
}

/// Which files the agent may not open, and which opens are reported (deny tier).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesPolicy {
    /// Opens refused with EPERM.
    #[serde(default)]
    pub protect: Vec<FileRuleSpec>,
    /// Opens reported as events.
    #[serde(default)]
    pub watch: Vec<FileRuleSpec>,
}

impl FilesPolicy {
    /// Whether the section says anything.
    pub fn is_empty(&self) -> bool {
        self.protect.is_empty() && self.watch.is_empty()
    }

    /// The list a kernel rule id points into, the index there, and the rule: protect
    /// first, then watch.
    pub fn rule_at(&self, rule_id: u32) -> Option<(RuleList, usize, &FileRuleSpec)> {
        let i = usize::try_from(rule_id).ok()?;
        match self.protect.get(i) {
            Some(r) => Some((RuleList::First, i, r)),
            None => {
                let j = i.checked_sub(self.protect.len())?;
                self.watch.get(j).map(|r| (RuleList::Second, j, r))
            }
        }
    }
}

/// A path or glob and the kind of access the rule is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRuleSpec {
    /// Absolute path or glob; a directory (or `DIR/**`) covers everything below it.
    pub path: FilePattern,
    /// `read`, `write` or `read+write` (default).
    #[serde(default)]
    pub access: Access,
}

/// An absolute path or glob, checked when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct FilePattern(pub String);

impl TryFrom<String> for FilePattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.starts_with("sha256:") {
            return Err(format!("invalid file rule {s:?}: files are named by path"));
        }
        check_path_pattern(&s, "file rule")?;
        Ok(Self(s))
    }
}

impl From<FilePattern> for String {
    fn from(p: FilePattern) -> Self {
        p.0
    }
}

impl fmt::Display for FilePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read and/or write intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "AccessText")]
pub struct Access {
    /// Opens for reading.
    pub read: bool,
    /// Opens for writing.
    pub write: bool,
}

/// How `access` is written.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[expect(dead_code, reason = "only describes the JSON Schema")]
enum AccessText {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "write")]
    Write,
    #[serde(rename = "read+write")]
    ReadWrite,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            read: true,
            write: true,
        }
    }
}

impl Access {
    /// The kernel's `ACCESS_*` bits.
    pub fn bits(self) -> u8 {
        use agent_common::file::{ACCESS_READ, ACCESS_WRITE};
        (if self.read { ACCESS_READ } else { 0 }) | (if self.write { ACCESS_WRITE } else { 0 })
    }
}

impl TryFrom<String> for Access {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "read" => Ok(Self {
                read: true,
                write: false,
            }),
            "write" => Ok(Self {
                read: false,
                write: true,
            }),
            "read+write" | "write+read" | "rw" => Ok(Self::default()),
            _ => Err(format!(
                "invalid access {s:?}; expected read, write or read+write"
            )),
        }
    }
}

impl From<Access> for String {
    fn from(a: Access) -> Self {
        a.to_string()
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.read, self.write) {
            (true, true) => "read+write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "none",
        })
    }
}
