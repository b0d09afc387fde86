//! `agentcage doctor`: what this kernel offers, probed rather than assumed.

use std::{fmt, fs, path::Path};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};
use serde::Serialize;

use crate::{cage::find_cgroup2_mount, errors::render};

/// One probed capability.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// What was probed.
    pub name: &'static str,
    /// What agentcage uses it for.
    pub used_for: &'static str,
    /// Whether the kernel loads it (None: the probe itself failed).
    pub supported: Option<bool>,
    /// Why the probe failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything `doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    /// Whether the probes ran as root (as non-root they fail whatever the kernel can do).
    pub as_root: bool,
    /// `uname -r`.
    pub kernel: String,
    /// Where cgroup v2 is mounted, if it is.
    pub cgroup2_mount: Option<String>,
    /// cgroup.freeze exists (pause of a whole cage; Linux 5.2+).
    pub cgroup_freeze: bool,
    /// cgroup.kill exists (kill of a whole cage in one write; Linux 5.14+). Without it the
    /// daemon kills a frozen cage's processes one by one.
    pub cgroup_kill: bool,
    /// How BPF memory is accounted, and what became of RLIMIT_MEMLOCK.
    pub bpf_memory: String,
    /// Whether bpffs is mounted at /sys/fs/bpf (the daemon mounts it if not).
    pub bpffs_mounted: bool,
    /// The active LSMs from /sys/kernel/security/lsm, if securityfs is mounted.
    pub active_lsms: Option<Vec<String>>,
    /// Whether `bpf` is among the active LSMs (a loaded LSM program enforces only then).
    pub bpf_lsm_active: Option<bool>,
    /// Program and map types, probed by loading them.
    pub probes: Vec<Probe>,
    /// The enforcement tier this kernel gives for exec and file rules, and what is missing
    /// for the deny tier.
    pub tier: crate::bpf::TierProbe,
    /// How policies' `unix:` sections are enforced here, or why they cannot be.
    pub unix: crate::bpf::UnixConfinement,
    /// The running daemon's hooks and their states, when a daemon answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<crate::bpf::HookStatus>>,
    /// The running daemon's tier, when a daemon answers: the probe's, unless its LSM
    /// programs then failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_tier: Option<String>,
    /// What the running daemon refuses (policy features this kernel cannot enforce), when a
    /// daemon answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Vec<crate::bpf::Refusal>>,
    /// Why the hooks are not listed, if they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks_unknown: Option<String>,
}

impl DoctorReport {
    /// Whether egress enforcement (cgroup hooks, trie, ring buffer) can run here.
    pub fn egress_ready(&self) -> bool {
        self.cgroup2_mount.is_some()
            && self
                .probes
                .iter()
                .filter(|p| p.used_for.starts_with("egress"))
                .all(|p| p.supported == Some(true))
    }
}

fn program(name: &'static str, used_for: &'static str, t: ProgramType) -> Probe {
    outcome(name, used_for, is_program_supported(t))
}

fn map(name: &'static str, used_for: &'static str, t: MapType) -> Probe {
    outcome(name, used_for, is_map_supported(t))
}

fn outcome<E: std::error::Error + 'static>(
    name: &'static str,
    used_for: &'static str,
    result: Result<bool, E>,
) -> Probe {
    let (supported, error) = match result {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(render(&e))),
    };
    Probe {
        name,
        used_for,
        supported,
        error,
    }
}

/// Probes the running kernel.
pub fn probe() -> DoctorReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let cgroup2 = find_cgroup2_mount().ok();
    let (cgroup_freeze, cgroup_kill) = cgroup2.as_deref().map_or((false, false), freeze_and_kill);
    // Before the probes, which make maps and programs: where RLIMIT_MEMLOCK is charged they
    // would fail for the limit rather than for the kernel.
    let bpf_memory = match crate::bpf::memlock::ensure() {
        Ok(m) => m.to_string(),
        Err(e) => format!("unknown ({})", render(&e)),
    };
    let bpffs_mounted = fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf "))
        })
        .unwrap_or(false);
    let active_lsms = fs::read_to_string(Path::new("/sys/kernel/security/lsm"))
        .ok()
        .map(|s| s.trim().split(',').map(str::to_owned).collect::<Vec<_>>());
    let bpf_lsm_active = active_lsms.as_ref().map(|l| l.iter().any(|x| x == "bpf"));
    let probes = vec![
        program(
            "cgroup_sock_addr",
            "egress: connect4/6, sendmsg4/6",
            ProgramType::CgroupSockAddr,
        ),
        program(
            "cgroup_sock",
            "egress: sock_create (raw/packet sockets)",
            ProgramType::CgroupSock,
        ),
        map("lpm_trie", "egress: allow-list matching", MapType::LpmTrie),
        map("ringbuf", "egress: events to user space", MapType::RingBuf),
        map(
            "percpu_hash",
            "egress: per-cage counters",
            MapType::PerCpuHash,
        ),
        program(
            "cgroup_skb",
            "egress: packets (ingress: who may reach listeners; egress: header checks)",
            ProgramType::CgroupSkb,
        ),
        program(
            "raw_tracepoint",
            "capture: kill tier",
            ProgramType::RawTracePoint,
        ),
        program(
            "tracepoint",
            "capture: process events",
            ProgramType::TracePoint,
        ),
        program(
            "tracing (tp_btf/fentry)",
            "capture: process events",
            ProgramType::Tracing,
        ),
        // Loaded, not attached: see `bpf::tier::lsm_loads`.
        outcome(
            "lsm",
            "deny tier: exec/file enforcement",
            crate::bpf::tier::lsm_loads().map(|()| true),
        ),
    ];
    let tier = crate::bpf::tier::probe();
    let unix = unix_confinement(&tier);
    DoctorReport {
        as_root: nix::unistd::Uid::effective().is_root(),
        kernel,
        cgroup2_mount: cgroup2.map(|p| p.display().to_string()),
        cgroup_freeze,
        cgroup_kill,
        bpf_memory,
        bpffs_mounted,
        active_lsms,
        bpf_lsm_active,
        probes,
        tier,
        unix,
        hooks: None,
        daemon_tier: None,
        refused: None,
        hooks_unknown: None,
    }
}

/// Which mechanism confines Unix sockets: the deny tier's LSM hooks, else the cgroup Unix
/// socket hooks if this kernel's BTF names their attach types (Linux 6.7 and later).
fn unix_confinement(tier: &crate::bpf::TierProbe) -> crate::bpf::UnixConfinement {
    use crate::bpf::{btf::Btf, unix, UnixConfinement};
    if tier.tier == crate::bpf::Tier::Deny {
        return UnixConfinement::Lsm;
    }
    match Btf::from_sys_fs() {
        Ok(btf) if unix::attach_types(&btf).is_some() => UnixConfinement::CgroupHooks,
        Ok(_) => {
            UnixConfinement::Unavailable(format!("this kernel has no {}", unix::UNIX_HOOKS_MISSING))
        }
        Err(e) => UnixConfinement::Unavailable(render(&e)),
    }
}

/// Whether cgroup.freeze and cgroup.kill exist. The root cgroup has neither, so look in a
/// throwaway child.
fn freeze_and_kill(mount: &Path) -> (bool, bool) {
    let probe = mount.join(format!("agentcage-doctor-{}", std::process::id()));
    if fs::create_dir(&probe).is_err() {
        return (false, false);
    }
    let found = (
        probe.join("cgroup.freeze").exists(),
        probe.join("cgroup.kill").exists(),
    );
    let _ = fs::remove_dir(&probe);
    found
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        if !self.as_root {
            writeln!(
                f,
                "NOT ROOT: loading probe programs and making cgroups need root; run \
                 `sudo agentcage doctor` for what this kernel can do"
            )?;
        }
        writeln!(f, "kernel            {}", self.kernel)?;
        writeln!(
            f,
            "cgroup v2         {}",
            self.cgroup2_mount.as_deref().unwrap_or("NOT MOUNTED")
        )?;
        writeln!(
            f,
            "freeze/kill       freeze {}, kill {}",
            yes_no(self.cgroup_freeze),
            if self.cgroup_kill {
                "yes"
            } else {
                "no (cgroup.kill: Linux 5.14+; a kill signals each frozen process)"
            }
        )?;
        writeln!(f, "BPF memory        {}", self.bpf_memory)?;
        writeln!(
            f,
            "bpffs             {}",
            if self.bpffs_mounted {
                "mounted"
            } else {
                "not mounted (agentcaged mounts it)"
            }
        )?;
        match (&self.active_lsms, self.bpf_lsm_active) {
            (Some(l), Some(active)) => writeln!(
                f,
                "LSMs              {} (bpf LSM {})",
                l.join(","),
                if active { "active" } else { "NOT active" }
            )?,
            _ => writeln!(f, "LSMs              unknown (securityfs not mounted)")?,
        }
        writeln!(f, "probes (loaded into this kernel):")?;
        for p in &self.probes {
            let state = match (p.supported, &p.error) {
                (Some(true), _) => "ok".to_owned(),
                (Some(false), _) => "refused".to_owned(),
                (None, Some(e)) => format!("refused ({e})"),
                (None, None) => "unknown".to_owned(),
            };
            writeln!(f, "  {:<26} {:<10} {}", p.name, state, p.used_for)?;
        }
        let verdict = match (self.egress_ready(), self.as_root) {
            (true, _) => "ready",
            (false, true) => "NOT POSSIBLE on this kernel",
            (false, false) => "unknown (not root)",
        };
        writeln!(f, "egress enforcement {verdict}")?;
        match (self.tier.tier, &self.tier.missing) {
            (crate::bpf::Tier::Deny, _) => writeln!(
                f,
                "exec/file tier    deny (forbidden execs and opens fail with EPERM)"
            )?,
            (crate::bpf::Tier::Kill, missing) => writeln!(
                f,
                "exec/file tier    kill (forbidden execs are killed with SIGKILL; file rules and \
                 enforcement: deny are refused)\n  missing: {}",
                missing.as_deref().unwrap_or("BPF LSM")
            )?,
        }
        match &self.unix {
            crate::bpf::UnixConfinement::Lsm => writeln!(
                f,
                "unix sockets      BPF LSM (unix_stream_connect, unix_may_send): the listener's \
                 own address is judged; listeners in the agent's cage pass"
            )?,
            crate::bpf::UnixConfinement::CgroupHooks => writeln!(
                f,
                "unix sockets      cgroup/connect_unix and sendmsg_unix: the address the caller \
                 gives is judged"
            )?,
            crate::bpf::UnixConfinement::Unavailable(why) => writeln!(
                f,
                "unix sockets      CANNOT be confined: agents whose policy has unix: are \
                 refused\n  missing: {why}"
            )?,
        }
        if let Some(tier) = &self.daemon_tier {
            writeln!(f, "daemon's tier     {tier}")?;
        }
        if let Some(refused) = &self.refused {
            if refused.is_empty() {
                writeln!(
                    f,
                    "refused           nothing: every policy feature is enforced"
                )?;
            } else {
                writeln!(
                    f,
                    "refused (agents whose policy has these are not started):"
                )?;
                for r in refused {
                    writeln!(f, "  {r}")?;
                }
            }
        }
        match (&self.hooks, &self.hooks_unknown) {
            (Some(hooks), _) => {
                writeln!(f, "hooks (the running daemon's):")?;
                for h in hooks {
                    writeln!(f, "  {:<36} {:<10} {}", h.hook, h.state, h.purpose)?;
                }
            }
            (None, Some(why)) => writeln!(f, "hooks             unknown: {why}")?,
            (None, None) => {}
        }
        Ok(())
    }
}
