//! Which enforcement tier this kernel gives, probed at start.
//!
//! An LSM program that loads and attaches proves nothing by itself: with `bpf` left out of
//! `lsm=`, Debian's kernel loads and attaches it and then never calls it. So the deny tier
//! needs both `bpf` in /sys/kernel/security/lsm and a kernel that loads LSM programs (and,
//! later, the hooks actually attaching).

use std::{fmt, fs, path::Path};

use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

pub use crate::policy::kernel::Feature;

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

/// Why exec rules by content are not enforced in the deny tier of a kernel whose
/// `bpf_ima_file_hash` is missing (before 5.18, or without CONFIG_IMA).
pub const NO_IMA_HASH: &str = "the kernel cannot hash files for BPF programs \
     (bpf_ima_file_hash: Linux 5.18+ with IMA)";

/// Why exec rules by content are not enforced in the kill tier of a kernel whose fanotify
/// has no permission events (the daemon's exec watch could not start).
pub const NO_EXEC_WATCH: &str = "the kill tier judges exec content with fanotify permission \
     events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS), which this kernel did not give the daemon";

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
    /// How Unix sockets are confined here, or why they cannot be.
    pub unix: super::UnixConfinement,
    /// In the kill tier: the daemon's exec watch (fanotify permission events) started, so
    /// exec rules by content are judged there too.
    #[serde(default)]
    pub exec_watch: bool,
}

impl Capabilities {
    /// Why `feature` cannot be enforced on this kernel, or None if it can.
    pub fn lacks(&self, feature: Feature) -> Option<String> {
        if feature == Feature::UnixSockets {
            // The kill tier confines them too, with the cgroup Unix socket hooks.
            return match &self.unix {
                super::UnixConfinement::Unavailable(why) => Some(match &self.missing {
                    Some(lsm) => format!("{lsm}; and {why}"),
                    None => why.clone(),
                }),
                _ => None,
            };
        }
        if self.tier != Tier::Deny && feature == Feature::ContentRules {
            return (!self.exec_watch).then(|| NO_EXEC_WATCH.to_owned());
        }
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
            Feature::UnixSockets => None,
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
    probe_with(lsm_loads)
}

/// [`probe`], with the kernel's BTF the caller already read (reading it is most of a daemon
/// start under emulation).
pub fn probe_kernel(kernel: &super::btf::Btf) -> TierProbe {
    probe_with(|| lsm_loads_for(kernel))
}

fn probe_with(lsm_loads: impl FnOnce() -> Result<(), LsmProbeError>) -> TierProbe {
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
    match lsm_loads() {
        Ok(()) => TierProbe {
            tier: Tier::Deny,
            missing: None,
        },
        // EPERM here is the kernel refusing the program type, as on this project's host.
        Err(e) => kill(format!(
            "BPF LSM: the kernel refuses to load LSM programs although `bpf` is an active \
             LSM ({})",
            crate::errors::render(&e)
        )),
    }
}

/// The exec hook, which the probe program is loaded for (and never attached to).
const PROBE_HOOK: &str = "bpf_lsm_bprm_check_security";

/// Why the probe could not load an LSM program.
#[derive(Debug, thiserror::Error)]
pub enum LsmProbeError {
    /// The kernel's BTF could not be read.
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
    /// The kernel has no BPF LSM hook to load for.
    #[error("the kernel's BTF has no {PROBE_HOOK}")]
    NoHook,
    /// BPF_PROG_LOAD failed.
    #[error("BPF_PROG_LOAD of an LSM program failed: {0}")]
    Load(#[source] std::io::Error),
}

/// Whether the kernel loads an LSM program: a two-instruction one (`return 0`) for the exec
/// hook, loaded and closed, never attached. (aya's `is_program_supported` also attaches its
/// probe, to `bpf_lsm_bpf`: that live-patches the hook every bpf() call goes through, and
/// under qemu's TCG a concurrent bpf() call of another daemon crashed 6.12 with
/// "Oops: int3" in `bpf_lsm_bpf`.) The daemon's own LSM programs load for real right after;
/// their failure still falls back to the kill tier.
pub fn lsm_loads() -> Result<(), LsmProbeError> {
    lsm_loads_for(&super::btf::Btf::from_sys_fs()?)
}

/// [`lsm_loads`], with the kernel's BTF read.
pub fn lsm_loads_for(kernel: &super::btf::Btf) -> Result<(), LsmProbeError> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const BPF_PROG_TYPE_LSM: u32 = 29;
    const BPF_LSM_MAC: u32 = 27;
    // `r0 = 0` (BPF_ALU64 | BPF_MOV | BPF_K), then `exit` (BPF_JMP | BPF_EXIT).
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let attach_btf_id = kernel.func_id(PROBE_HOOK).ok_or(LsmProbeError::NoHook)?;
    let mut attr = super::ProgLoad {
        prog_type: BPF_PROG_TYPE_LSM,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_LSM_MAC,
        attach_btf_id,
        ..super::ProgLoad::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_LOAD; insns and license outlive
    // the call.
    let fd =
        unsafe { super::sys_bpf(super::BPF_PROG_LOAD, &mut attr) }.map_err(LsmProbeError::Load)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Capabilities, Feature, Tier, NO_EXEC_WATCH, NO_IMA_HASH, NO_USERNS_HOOK};
    use crate::bpf::UnixConfinement;

    /// A kill tier here also lacks the cgroup Unix socket hooks (a kernel before 6.7).
    fn caps(tier: Tier, content_hashes: bool, userns_hook: bool) -> Capabilities {
        let missing = (tier == Tier::Kill).then(|| "BPF LSM: `bpf` is not active".to_owned());
        Capabilities {
            tier,
            unix: match &missing {
                Some(_) => UnixConfinement::Unavailable("no Unix hooks".to_owned()),
                None => UnixConfinement::Lsm,
            },
            missing,
            content_hashes,
            userns_hook,
            exec_watch: false,
        }
    }

    /// From Linux 6.7 the kill tier confines Unix sockets with the cgroup Unix socket hooks.
    #[test]
    fn a_kill_tier_with_unix_hooks_enforces_unix_rules() {
        let c = Capabilities {
            unix: UnixConfinement::CgroupHooks,
            ..caps(Tier::Kill, false, false)
        };
        assert_eq!(c.lacks(Feature::UnixSockets), None);
        assert!(c.lacks(Feature::DenyEnforcement).is_some());
    }

    #[test]
    fn the_full_deny_tier_refuses_nothing() {
        assert!(caps(Tier::Deny, true, true).refused().is_empty());
    }

    #[test]
    fn the_kill_tier_refuses_what_needs_the_lsm_and_content_rules_without_its_watch() {
        let r = caps(Tier::Kill, false, false).refused();
        assert_eq!(
            r.iter().map(|r| r.feature).collect::<Vec<_>>(),
            Feature::ALL
        );
        assert!(r[..2].iter().all(|r| r.why.contains("BPF LSM")), "{r:?}");
        assert_eq!(r[2].why, NO_EXEC_WATCH);
        let watched = Capabilities {
            exec_watch: true,
            ..caps(Tier::Kill, false, false)
        };
        assert_eq!(
            watched
                .refused()
                .iter()
                .map(|r| r.feature)
                .collect::<Vec<_>>(),
            [
                Feature::DenyEnforcement,
                Feature::FileRules,
                Feature::UnixSockets
            ]
        );
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
