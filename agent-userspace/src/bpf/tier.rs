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
