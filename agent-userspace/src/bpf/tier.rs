//! Which enforcement tier this kernel gives, probed at start.
//!
//! An LSM program that loads and attaches proves nothing by itself: with `bpf` left out of
//! `lsm=`, Debian's kernel loads and attaches it and then never calls it. So the deny tier
//! needs both `bpf` in /sys/kernel/security/lsm and a kernel that loads LSM programs (and,
//! later, the hooks actually attaching).

use std::{fmt, fs, path::Path};

use aya::{
    programs::{LsmAttachType, ProgramType},
    sys::is_program_supported,
};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

const SECURITYFS: &str = "/sys/kernel/security";
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// How the kernel stops an exec or an open the policy forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// BPF LSM: the call fails with EPERM.
    Deny,
    /// No BPF LSM: the process is killed with SIGKILL in the kernel before the call returns.
    Kill,
}

impl Tier {
    /// The value the programs read (`agent_common::kernel::TIER_*`).
    pub fn code(self) -> u32 {
        match self {
            Self::Deny => agent_common::kernel::TIER_DENY,
            Self::Kill => agent_common::kernel::TIER_KILL,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deny => "deny",
            Self::Kill => "kill",
        })
    }
}

/// A policy feature that some kernels cannot enforce. An agent whose policy uses one is
/// refused there, naming what the kernel lacks (never run weaker than its policy says).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// `enforcement: deny`: forbidden operations must fail (EPERM), not be killed.
    DenyEnforcement,
    /// `files` rules (protect, watch).
    FileRules,
    /// `sha256:` exec rules.
    ContentRules,
}

impl Feature {
    /// Every feature, in the order `refused` lists them.
    pub const ALL: [Self; 3] = [Self::DenyEnforcement, Self::FileRules, Self::ContentRules];

    /// How the feature reads in a policy, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::DenyEnforcement => "enforcement: deny",
            Self::FileRules => "files rules",
            Self::ContentRules => "exec rules by sha256",
        }
    }
}

/// Why exec rules by content are not enforced in the deny tier of a kernel whose
/// `bpf_ima_file_hash` is missing (before 5.18, or without CONFIG_IMA).
pub const NO_IMA_HASH: &str = "the kernel cannot hash files for BPF programs \
     (bpf_ima_file_hash: Linux 5.18+ with IMA)";

/// Why file rules are not enforced in the deny tier of a kernel without the `userns_create`
/// LSM hook: a caged process could make a user namespace and mount over protected paths.
pub const NO_USERNS_HOOK: &str = "the kernel has no userns_create LSM hook (Linux 6.1+) to keep \
     a cage with file rules out of user namespaces, where it could mount over protected paths";

/// What the loaded programs can enforce beyond egress: the tier, and in the deny tier the
/// hooks that some kernels lack. Found when the programs load, not assumed from a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The enforcement tier.
    pub tier: Tier,
    /// Why the tier is not deny, if it is not.
    pub missing: Option<String>,
    /// Exec rules by content are enforced (the sleepable exec program with IMA loaded).
    pub content_hashes: bool,
    /// The `userns_create` LSM hook loaded (file rules need it).
    pub userns_hook: bool,
}

impl Capabilities {
    /// Why `feature` cannot be enforced on this kernel, or None if it can.
    pub fn lacks(&self, feature: Feature) -> Option<String> {
        if self.tier != Tier::Deny {
            return Some(
                self.missing
                    .clone()
                    .unwrap_or_else(|| "BPF LSM is not active".to_owned()),
            );
        }
        match feature {
            Feature::DenyEnforcement => None,
            Feature::FileRules => (!self.userns_hook).then(|| NO_USERNS_HOOK.to_owned()),
            Feature::ContentRules => (!self.content_hashes).then(|| NO_IMA_HASH.to_owned()),
        }
    }

    /// Every feature this kernel refuses, with why.
    pub fn refused(&self) -> Vec<Refusal> {
        Feature::ALL
            .into_iter()
            .filter_map(|feature| self.lacks(feature).map(|why| Refusal { feature, why }))
            .collect()
    }
}

/// A policy feature the kernel cannot enforce: agents whose policy uses it are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The feature.
    pub feature: Feature,
    /// What the kernel lacks for it.
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.feature.describe(), self.why)
    }
}

/// The probe's finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierProbe {
    /// The tier the kernel can give.
    pub tier: Tier,
    /// Why it is not the deny tier, naming what is missing.
    pub missing: Option<String>,
}

/// Mounts securityfs if it is not (it is not on a fresh machine of this project's kind).
fn ensure_securityfs() {
    if Path::new(LSM_LIST).exists() {
        return;
    }
    let _ = mount(
        Some("securityfs"),
        SECURITYFS,
        Some("securityfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
}

/// The active LSMs, if securityfs can be read.
pub fn active_lsms() -> Option<Vec<String>> {
    ensure_securityfs();
    fs::read_to_string(LSM_LIST)
        .ok()
        .map(|s| s.trim().split(',').map(str::to_owned).collect())
}

/// Probes the running kernel.
pub fn probe() -> TierProbe {
    let kill = |missing: String| TierProbe {
        tier: Tier::Kill,
        missing: Some(missing),
    };
    match active_lsms() {
        None => {
            return kill(format!(
                "BPF LSM: {LSM_LIST} is unreadable (securityfs could not be mounted)"
            ))
        }
        Some(l) if !l.iter().any(|x| x == "bpf") => {
            return kill(format!(
                "BPF LSM: `bpf` is not among the active LSMs ({}); boot with lsm=...,bpf",
                l.join(",")
            ))
        }
        Some(_) => {}
    }
    match is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
        Ok(true) => TierProbe {
            tier: Tier::Deny,
            missing: None,
        },
        Ok(false) => kill(
            "BPF LSM: the kernel refuses to load LSM programs (BPF_PROG_LOAD fails although \
             `bpf` is an active LSM)"
                .to_owned(),
        ),
        // EPERM here is the kernel refusing the program type, as on this project's host.
        Err(e) => kill(format!(
            "BPF LSM: the kernel refuses to load LSM programs ({})",
            crate::errors::render(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Capabilities, Feature, Tier, NO_IMA_HASH, NO_USERNS_HOOK};

    fn caps(tier: Tier, content_hashes: bool, userns_hook: bool) -> Capabilities {
        Capabilities {
            tier,
            missing: (tier == Tier::Kill).then(|| "BPF LSM: `bpf` is not active".to_owned()),
            content_hashes,
            userns_hook,
        }
    }

    #[test]
    fn the_full_deny_tier_refuses_nothing() {
        assert!(caps(Tier::Deny, true, true).refused().is_empty());
    }

    #[test]
    fn the_kill_tier_refuses_every_feature_naming_the_missing_lsm() {
        let r = caps(Tier::Kill, false, false).refused();
        assert_eq!(
            r.iter().map(|r| r.feature).collect::<Vec<_>>(),
            Feature::ALL
        );
        assert!(r.iter().all(|r| r.why.contains("BPF LSM")), "{r:?}");
    }

    /// Linux 5.10 with BPF LSM: exec rules by file are refused with EPERM, but content rules
    /// need IMA hashing (5.18) and file rules the userns_create hook (6.1).
    #[test]
    fn a_deny_tier_without_ima_or_userns_hook_refuses_those_rules_only() {
        let c = caps(Tier::Deny, false, false);
        assert_eq!(c.lacks(Feature::DenyEnforcement), None);
        assert_eq!(c.lacks(Feature::FileRules).as_deref(), Some(NO_USERNS_HOOK));
        assert_eq!(c.lacks(Feature::ContentRules).as_deref(), Some(NO_IMA_HASH));
        assert_eq!(
            c.refused()[0].to_string(),
            format!("files rules: {NO_USERNS_HOOK}")
        );
    }
}
