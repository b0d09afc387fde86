//! What an agent's policy asks of the kernel: its compiled rules for the cage's rung, and the
//! cage flags the programs read. [`cage_settings`] is pure: given the policy, the compiled
//! rules, what this kernel can enforce and the cage's mode, it says the flags, or what the
//! kernel lacks (never silently weaker: the caller refuses the agent).

use agent_common::cage::{
    CAGE_F_ALLOW_RAW, CAGE_F_APPROVAL_ALL, CAGE_F_EXEC_DEFAULT_DENY, CAGE_F_EXEC_DIGESTS_REQUIRED,
    CAGE_F_EXEC_HASHES, CAGE_F_FILES, CAGE_F_HOSTS, CAGE_F_READ_ONLY, CAGE_F_THROTTLED,
    CAGE_F_UNIX,
};

use serde::{Deserialize, Serialize};

use super::{
    compile::compile_at, compile_egress, compile_exec, compile_files, compile_read_only,
    compile_unix, AgentPolicy, CompiledAgent, Enforcement, Policy, PolicyError, Rung,
};

/// What this kernel can enforce, probed at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCaps {
    /// BPF LSM is active: operations can be refused with EPERM (the deny tier); without it
    /// forbidden execs are killed (the kill tier) and file rules cannot be enforced.
    pub can_refuse: bool,
    /// Exec rules by content are enforced: in the deny tier by IMA (`bpf_ima_file_hash`), in
    /// the kill tier by the daemon's exec watch (fanotify permission events).
    pub content_hashes: bool,
    /// The `userns_create` LSM hook is there (file rules need it, so that a caged process
    /// cannot mount over protected paths in a user namespace of its own).
    pub userns_hook: bool,
    /// Unix sockets can be confined: by BPF LSM (deny tier) or by the cgroup Unix socket
    /// hooks (Linux 6.7 and later).
    pub unix_sockets: bool,
    /// The cgroup v2 controllers the hierarchy offers (`CONTROLLER_*` bits).
    pub controllers: u8,
}

impl KernelCaps {
    /// Whether this kernel enforces `feature`. Content rules hold in either tier: by IMA
    /// hashing in the deny tier, by the daemon's exec watch in the kill tier.
    pub fn enforces(self, feature: Feature) -> bool {
        match feature {
            // The kill tier confines Unix sockets too, with the cgroup Unix socket hooks.
            Feature::UnixSockets => self.unix_sockets,
            Feature::DenyEnforcement => self.can_refuse,
            Feature::FileRules => self.can_refuse && self.userns_hook,
            Feature::ContentRules => self.content_hashes,
        }
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
    /// `unix:` rules (Unix sockets confined): BPF LSM, or the cgroup Unix socket hooks.
    UnixSockets,
}

impl Feature {
    /// Every feature, in the order `refused` lists them.
    pub const ALL: [Self; 4] = [
        Self::DenyEnforcement,
        Self::FileRules,
        Self::ContentRules,
        Self::UnixSockets,
    ];

    /// How the feature reads in a policy, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::DenyEnforcement => "enforcement: deny",
            Self::FileRules => "files rules",
            Self::ContentRules => "exec rules by sha256",
            Self::UnixSockets => "unix: (Unix sockets confined)",
        }
    }
}

/// The cgroup v2 `pids` controller.
pub const CONTROLLER_PIDS: u8 = 1 << 0;
/// The cgroup v2 `memory` controller.
pub const CONTROLLER_MEMORY: u8 = 1 << 1;
/// The cgroup v2 `cpu` controller.
pub const CONTROLLER_CPU: u8 = 1 << 2;

/// The controller bits of a `cgroup.controllers` text.
pub fn controllers_of(text: &str) -> u8 {
    text.split_whitespace().fold(0, |bits, c| {
        bits | match c {
            "pids" => CONTROLLER_PIDS,
            "memory" => CONTROLLER_MEMORY,
            "cpu" => CONTROLLER_CPU,
            _ => 0,
        }
    })
}

/// What in an agent's policy this kernel cannot enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// A feature the loaded programs cannot enforce here.
    Feature(Feature),
    /// A limit whose cgroup v2 controller the hierarchy lacks.
    Controller {
        /// The limit, e.g. `limits.memory`.
        limit: &'static str,
        /// The controller, e.g. `memory`.
        controller: &'static str,
    },
}

/// The first limit of the policy whose controller the cgroup v2 hierarchy lacks.
pub fn needs_controller(p: &AgentPolicy, caps: KernelCaps) -> Option<Shortfall> {
    p.limits.controllers().into_iter().find_map(|c| {
        let (bit, limit) = match c {
            "pids" => (CONTROLLER_PIDS, "limits.pids"),
            "memory" => (CONTROLLER_MEMORY, "limits.memory"),
            _ => (CONTROLLER_CPU, "limits.cpu"),
        };
        (caps.controllers & bit == 0).then_some(Shortfall::Controller {
            limit,
            controller: c,
        })
    })
}

/// A cage's mode besides its policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CageMode {
    /// The containment rung.
    pub rung: Rung,
    /// Over a hard budget: every new connection and datagram is refused.
    pub throttled: bool,
}

/// What the programs read from a cage's entry besides its rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CageSettings {
    /// `CAGE_F_*` bits.
    pub flags: u32,
    /// Which allowed decisions are reported: 1 all, 0 none, N about one in N.
    pub allow_sample: u32,
}

/// The agent's rules compiled for its rung, or None when the policy does not know the agent.
/// Exec and file rules are resolved to inodes now (this reads the file system). `app_socket`
/// (the daemon's application socket, as bound) stays reachable when `unix:` confines the
/// agent.
pub fn compile_agent(
    policy: &Policy,
    agent: &str,
    rung: Rung,
    app_socket: Option<&[u8]>,
) -> Result<Option<CompiledAgent>, PolicyError> {
    let Some(p) = policy.agent(agent) else {
        return Ok(None);
    };
    let at = if policy.agents.contains_key(agent) {
        format!("agents.{agent}")
    } else {
        "default_agent".to_owned()
    };
    // A paused or killed cage is frozen; should it thaw before it is resumed, it gets the
    // narrowest egress, the read-only set.
    let egress = match rung {
        Rung::ReadOnly | Rung::Paused | Rung::Killed => compile_read_only(agent, &p.egress)?,
        Rung::Observe | Rung::ApprovalRequired => compile_egress(agent, &p.egress)?,
    };
    // Compiled when the policy was loaded, so these cannot fail here.
    let ingress = compile_at(&format!("{at}.ingress"), &p.ingress.as_rules(), false)?;
    let unix =
        compile_unix(&format!("{at}.unix"), p.unix.as_ref(), app_socket).map_err(|message| {
            PolicyError::InvalidUnlocated {
                file: policy.source().to_owned(),
                message,
            }
        })?;
    Ok(Some(CompiledAgent {
        egress,
        ingress,
        unix,
        exec: compile_exec(&format!("{at}.exec"), &p.exec, &p.approvals.exec),
        files: compile_files(&format!("{at}.files"), &p.files),
    }))
}

/// The flags a cage's mode alone sets.
fn mode_flags(mode: CageMode, caps: KernelCaps) -> u32 {
    let mut flags = 0;
    if mode.rung == Rung::ApprovalRequired {
        flags |= CAGE_F_APPROVAL_ALL;
    }
    if mode.throttled {
        flags |= CAGE_F_THROTTLED;
    }
    // Read-only also means no file writes, where the kernel can refuse them.
    if mode.rung == Rung::ReadOnly && caps.can_refuse {
        flags |= CAGE_F_READ_ONLY;
    }
    flags
}

/// What in the agent's policy this kernel cannot enforce, if anything.
pub fn unenforced(p: &AgentPolicy, c: &CompiledAgent, caps: KernelCaps) -> Option<Feature> {
    [
        (Feature::DenyEnforcement, p.enforcement == Enforcement::Deny),
        (Feature::FileRules, !p.files.is_empty()),
        (Feature::ContentRules, c.exec.has_digest_rules),
        (Feature::UnixSockets, c.unix.confined),
    ]
    .into_iter()
    .find(|&(f, used)| used && !caps.enforces(f))
    .map(|(f, _)| f)
}

/// The cage entry's settings for an agent (None: unknown to the policy, nothing allowed),
/// and what in its policy this kernel cannot enforce, if anything. A new agent with a
/// shortfall is refused; a cage an earlier daemon left (its processes already run) gets the
/// settings and the shortfall is reported.
pub fn cage_settings(
    p: Option<&AgentPolicy>,
    compiled: &CompiledAgent,
    caps: KernelCaps,
    mode: CageMode,
) -> (CageSettings, Option<Shortfall>) {
    let mut flags = mode_flags(mode, caps);
    let Some(p) = p else {
        return (
            CageSettings {
                flags,
                allow_sample: 1,
            },
            None,
        );
    };
    if p.egress.raw_sockets {
        flags |= CAGE_F_ALLOW_RAW;
    }
    if compiled.exec.default_deny {
        flags |= CAGE_F_EXEC_DEFAULT_DENY;
    }
    if !compiled.exec.hashes.is_empty() && caps.content_hashes {
        flags |= CAGE_F_EXEC_HASHES;
    }
    if compiled.exec.has_digest_rules {
        flags |= CAGE_F_EXEC_DIGESTS_REQUIRED;
    }
    if !compiled.files.inodes.is_empty() {
        flags |= CAGE_F_FILES;
    }
    if !compiled.egress.hosts.is_empty() {
        flags |= CAGE_F_HOSTS;
    }
    if compiled.unix.confined {
        flags |= CAGE_F_UNIX;
    }
    let settings = CageSettings {
        flags,
        allow_sample: p.egress.allow_events.sample_rate(),
    };
    let shortfall = unenforced(p, compiled, caps)
        .map(Shortfall::Feature)
        .or_else(|| needs_controller(p, caps));
    (settings, shortfall)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: KernelCaps = KernelCaps {
        can_refuse: false,
        content_hashes: false,
        userns_hook: false,
        unix_sockets: true,
        controllers: 0,
    };
    const DENY: KernelCaps = KernelCaps {
        can_refuse: true,
        content_hashes: true,
        userns_hook: true,
        unix_sockets: true,
        controllers: CONTROLLER_PIDS | CONTROLLER_MEMORY | CONTROLLER_CPU,
    };

    fn agent(yaml: &str) -> (AgentPolicy, CompiledAgent) {
        let text = format!("version: 1\nagents:\n  a:\n{yaml}");
        let policy = Policy::from_yaml(&text, "t.yaml").unwrap();
        let compiled = compile_agent(&policy, "a", Rung::Observe, None)
            .unwrap()
            .unwrap();
        (policy.agent("a").unwrap().clone(), compiled)
    }

    #[test]
    fn modes_set_their_flags_and_read_only_files_need_the_deny_tier() {
        let (p, c) = agent("    egress: {allow_events: \"sample:10\"}\n");
        let on = |caps, rung, throttled| {
            cage_settings(Some(&p), &c, caps, CageMode { rung, throttled }).0
        };
        assert_eq!(
            on(KILL, Rung::Observe, false),
            CageSettings {
                flags: 0,
                allow_sample: 10
            }
        );
        assert_eq!(
            on(KILL, Rung::ApprovalRequired, true).flags,
            CAGE_F_APPROVAL_ALL | CAGE_F_THROTTLED
        );
        assert_eq!(
            on(KILL, Rung::ReadOnly, false).flags,
            0,
            "no file refusal without LSM"
        );
        assert_eq!(on(DENY, Rung::ReadOnly, false).flags, CAGE_F_READ_ONLY);
    }

    #[test]
    fn what_the_kill_tier_cannot_enforce_is_named() {
        let (p, c) = agent("    files:\n      protect: [{path: /etc/hostname}]\n");
        let (kill, shortfall) = cage_settings(Some(&p), &c, KILL, CageMode::default());
        assert_eq!(shortfall, Some(Shortfall::Feature(Feature::FileRules)));
        let (deny, shortfall) = cage_settings(Some(&p), &c, DENY, CageMode::default());
        assert_eq!((deny.flags & CAGE_F_FILES, shortfall), (CAGE_F_FILES, None));
        assert_eq!(
            kill, deny,
            "an adopted cage keeps its flags; the shortfall is reported"
        );

        let (p, c) = agent("    enforcement: deny\n");
        assert_eq!(
            cage_settings(Some(&p), &c, KILL, CageMode::default()).1,
            Some(Shortfall::Feature(Feature::DenyEnforcement))
        );
        let digest = "0".repeat(64);
        let (p, c) = agent(&format!("    exec:\n      deny: [\"sha256:{digest}\"]\n"));
        let no_ima = KernelCaps {
            content_hashes: false,
            ..DENY
        };
        let (s, shortfall) = cage_settings(Some(&p), &c, no_ima, CageMode::default());
        assert_eq!(shortfall, Some(Shortfall::Feature(Feature::ContentRules)));
        assert_eq!(
            s.flags & CAGE_F_EXEC_HASHES,
            0,
            "no content hashing to switch on"
        );
        let (s, _) = cage_settings(Some(&p), &c, DENY, CageMode::default());
        assert_eq!(
            s.flags & (CAGE_F_EXEC_HASHES | CAGE_F_EXEC_DIGESTS_REQUIRED),
            CAGE_F_EXEC_HASHES | CAGE_F_EXEC_DIGESTS_REQUIRED
        );
        // The kill tier with the exec watch judges content too.
        let watched = KernelCaps {
            content_hashes: true,
            ..KILL
        };
        let (s, shortfall) = cage_settings(Some(&p), &c, watched, CageMode::default());
        assert_eq!(shortfall, None);
        assert_ne!(s.flags & CAGE_F_EXEC_HASHES, 0);
        let (s, shortfall) = cage_settings(Some(&p), &c, KILL, CageMode::default());
        assert_eq!(shortfall, Some(Shortfall::Feature(Feature::ContentRules)));
        assert_eq!(s.flags & CAGE_F_EXEC_HASHES, 0);
    }

    #[test]
    fn a_limit_without_its_controller_is_named() {
        let (p, c) = agent("    limits: {pids: 10, memory: 64M}\n");
        let hybrid = KernelCaps {
            controllers: controllers_of("hugetlb"),
            ..DENY
        };
        assert_eq!(
            cage_settings(Some(&p), &c, hybrid, CageMode::default()).1,
            Some(Shortfall::Controller {
                limit: "limits.pids",
                controller: "pids"
            })
        );
        let pids_only = KernelCaps {
            controllers: controllers_of("cpuset pids io"),
            ..DENY
        };
        assert_eq!(
            needs_controller(&p, pids_only),
            Some(Shortfall::Controller {
                limit: "limits.memory",
                controller: "memory"
            })
        );
        assert_eq!(
            cage_settings(Some(&p), &c, DENY, CageMode::default()).1,
            None
        );
    }

    #[test]
    fn confined_unix_sockets_set_their_flag_or_name_the_missing_hooks() {
        let (p, c) = agent("    unix: {allow: [/run/x.sock]}\n");
        let (s, shortfall) = cage_settings(Some(&p), &c, KILL, CageMode::default());
        assert_eq!((s.flags & CAGE_F_UNIX, shortfall), (CAGE_F_UNIX, None));
        let neither = KernelCaps {
            unix_sockets: false,
            ..KILL
        };
        let (_, shortfall) = cage_settings(Some(&p), &c, neither, CageMode::default());
        assert_eq!(shortfall, Some(Shortfall::Feature(Feature::UnixSockets)));
        // Without `unix:` nothing is confined and nothing is missing.
        let (p, c) = agent("    egress: {}\n");
        let (s, shortfall) = cage_settings(Some(&p), &c, neither, CageMode::default());
        assert_eq!((s.flags & CAGE_F_UNIX, shortfall), (0, None));
    }

    #[test]
    fn unknown_agents_get_nothing_but_their_mode() {
        let c = CompiledAgent::default();
        let s = cage_settings(
            None,
            &c,
            KILL,
            CageMode {
                rung: Rung::Observe,
                throttled: true,
            },
        );
        assert_eq!(
            s,
            (
                CageSettings {
                    flags: CAGE_F_THROTTLED,
                    allow_sample: 1
                },
                None
            )
        );
    }
}
