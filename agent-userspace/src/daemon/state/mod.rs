//! The daemon's state, split by concern: the policy in force and its slots (`slots`), the
//! cages and what outlives them (`registry`), making and removing cages (`lifecycle`),
//! policy changes (`reload`), what `status` reports (`status`), events (`publish`), and each
//! run-time enforcement concern with its own state (`enforce::{contain, approve, budget,
//! assert, app}`).
//!
//! Changes go through one lock, so cage creation, joins, reloads and removal never
//! interleave; nothing slow runs under it (snapshots are written by the containment worker,
//! binary hashes by the event reader).

mod containers;
mod dns;
mod enforce;
mod error;
mod inventory;
mod lifecycle;
mod publish;
mod registry;
mod reload;
mod slots;
mod status;
mod users;
mod watch;

pub(crate) use dns::DnsState;
pub use enforce::{ContainJob, Contained, CredentialSetup, JobOutcome};
pub use error::StateError;

use std::{path::PathBuf, sync::Arc};

use agent_common::cage::CageConfig;
use nix::sys::inotify::Inotify;

use crate::{
    bpf::{ApprovalMap, EgressMaps, HookStatus, SlotEntries, Tier},
    cage::CageRoot,
    events::{Event, EventBus},
    policy::{
        kernel::{
            cage_settings, compile_agent, CageMode, CageSettings, Feature, KernelCaps, Shortfall,
        },
        CompiledAgent, Policy,
    },
};
use enforce::{ApprovalState, AssertionState, BudgetState, ContainmentState, CredentialState};
use registry::Registry;
use slots::Slots;

/// What a client holding a cage is told.
pub struct Held {
    /// The cage's cgroup directory.
    pub cgroup: String,
    /// SHA-256 of the policy in force.
    pub policy_hash: String,
    /// Whether the agent may use raw and packet sockets.
    pub raw_sockets: bool,
    /// The policy file.
    pub policy_source: String,
    /// The policy requires the session to be recorded (`record: always`).
    pub record: bool,
    /// The account the run's processes must hold when they join.
    pub run_as: crate::accounts::RunAsGrant,
}

/// What the kernel gives, found at start.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// What the programs can enforce here: the tier, the deny tier's optional hooks and how
    /// Unix sockets are confined.
    pub caps: crate::bpf::Capabilities,
    /// The host-wide hooks' states.
    pub hooks: Vec<HookStatus>,
    /// The deny tier's hooks attached on first need (their states come from them).
    pub lazy_hooks: Vec<Arc<crate::bpf::LazyHooks>>,
    /// The cgroup v2 controllers the hierarchy offers (`policy::kernel::CONTROLLER_*`).
    pub controllers: u8,
}

impl KernelInfo {
    /// What the policy compiler needs to know of the kernel.
    fn caps(&self) -> KernelCaps {
        KernelCaps {
            can_refuse: self.caps.tier == Tier::Deny,
            // The deny tier hashes with IMA; the kill tier's exec watch reads the file.
            content_hashes: match self.caps.tier {
                Tier::Deny => self.caps.content_hashes,
                Tier::Kill => self.caps.exec_watch,
            },
            userns_hook: self.caps.userns_hook,
            unix_sockets: self.caps.unix.available(),
            controllers: self.controllers,
        }
    }
}

/// What the daemon needs to run the policy's run-time parts.
pub struct RuntimeParts {
    /// The kernel's approvals map.
    pub approval_map: ApprovalMap,
    /// The event bus.
    pub bus: EventBus,
    /// Where forensic snapshots go.
    pub snapshot_dir: PathBuf,
    /// Where recordings the policy requires are made (snapshots include the live ones).
    pub recording_dir: PathBuf,
    /// Where containment jobs (snapshots, kills) go, to run outside the state lock.
    pub jobs: tokio::sync::mpsc::UnboundedSender<ContainJob>,
    /// The application socket, which agents reach even where `unix:` confines them.
    pub app_socket: PathBuf,
    /// Keys, certificates and the trust domain.
    pub credentials: CredentialSetup,
    /// The cages' resolver: its configuration, maps and the daemon's answers.
    pub dns: DnsState,
    /// The dynamic uids agents run under, and their homes.
    pub users: crate::accounts::DynamicUsers,
    /// The kill tier's exec watch (exec rules by content), where the kernel has it.
    pub exec_watch: Option<Arc<crate::execwatch::ExecWatch>>,
}

/// Everything the daemon manages.
pub struct State {
    kernel: KernelInfo,
    policy: Arc<Policy>,
    policy_path: PathBuf,
    /// The application socket's path, as bound.
    app_socket: PathBuf,
    maps: EgressMaps,
    root: CageRoot,
    inotify: Arc<Inotify>,
    slots: Slots,
    registry: Registry,
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME, to put wall-clock times on kernel timestamps.
    boot_to_wall_ns: i128,
    /// Set by [`Self::shutdown`]: no cage may be made or filled any more.
    stopping: bool,
    /// Wakes the event reader to publish session ends.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// Session ends for the reader to publish after the cage's last kernel events.
    pending_ends: Vec<(u32, Event)>,
    /// Where the daemon's own events go.
    bus: EventBus,
    containment: ContainmentState,
    approvals: ApprovalState,
    budgets: BudgetState,
    assertions: AssertionState,
    containers: containers::Containers,
    credentials: CredentialState,
    dns: DnsState,
    users: crate::accounts::DynamicUsers,
    exec_watch: Option<Arc<crate::execwatch::ExecWatch>>,
}

/// A slot filled with an agent's rules, not yet switched in.
struct Filled {
    entries: SlotEntries,
    settings: CageSettings,
    /// The egress rules: the cage's name grants are written into the slot under them as it
    /// is switched in.
    egress: crate::policy::CompiledEgress,
}

impl State {
    /// A state with no cages yet; opens (or makes) the node's keys.
    pub fn new(
        policy: Policy,
        policy_path: PathBuf,
        maps: EgressMaps,
        root: CageRoot,
        inotify: Arc<Inotify>,
        kernel: KernelInfo,
        parts: RuntimeParts,
    ) -> Result<Self, StateError> {
        Ok(Self {
            kernel,
            policy: Arc::new(policy),
            policy_path,
            app_socket: parts.app_socket,
            maps,
            root,
            inotify,
            slots: Slots::default(),
            registry: Registry::default(),
            boot_to_wall_ns: crate::clock::boot_to_wall_ns(),
            stopping: false,
            wake: None,
            pending_ends: Vec::new(),
            bus: parts.bus,
            containment: ContainmentState::new(parts.snapshot_dir, parts.recording_dir, parts.jobs),
            approvals: ApprovalState::new(parts.approval_map),
            budgets: BudgetState::default(),
            assertions: AssertionState::default(),
            containers: containers::Containers::default(),
            credentials: CredentialState::open(parts.credentials)?,
            dns: parts.dns,
            users: parts.users,
            exec_watch: parts.exec_watch,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The parent cgroup of every cage.
    pub fn root(&self) -> &CageRoot {
        &self.root
    }

    /// Records the host-wide hooks' states once they are attached.
    pub fn set_hooks(&mut self, hooks: Vec<HookStatus>) {
        self.kernel.hooks = hooks;
    }

    /// Hands over a set of the deny tier's hooks attached on first need: attached now if a
    /// cage taken over needs them, else before the first cage that does.
    pub fn add_lazy_hooks(
        &mut self,
        hooks: Arc<crate::bpf::LazyHooks>,
    ) -> Result<(), crate::bpf::BpfError> {
        self.maps.add_lazy_hooks(Arc::clone(&hooks))?;
        self.kernel.lazy_hooks.push(hooks);
        Ok(())
    }

    /// The deny tier's hooks attached on first need.
    pub fn lazy_hooks(&self) -> Vec<Arc<crate::bpf::LazyHooks>> {
        self.kernel.lazy_hooks.clone()
    }

    /// Every host-wide hook's state.
    pub fn hooks(&self) -> Vec<HookStatus> {
        let mut hooks = self.kernel.hooks.clone();
        for lazy in &self.kernel.lazy_hooks {
            hooks.extend(lazy.status());
        }
        hooks
    }

    /// Empties the retired slots whose grace period is over.
    pub fn reap_retired(&mut self) {
        self.slots.reap(&mut self.maps);
    }

    /// The cage's mode its run-time state asks for.
    fn mode(&self, agent: &str) -> CageMode {
        CageMode {
            rung: self.containment.rung(agent),
            throttled: self.budgets.throttled(agent),
        }
    }

    /// What `agent` gets under `policy` in `mode`: its rules and its cage settings. An agent
    /// the policy does not know gets nothing (deny all) unless `strict`; an agent whose
    /// policy needs what this kernel lacks is refused unless `adopting` (a cage an earlier
    /// daemon left cannot be refused: it gets what this kernel can enforce).
    fn compile_for(
        &self,
        policy: &Policy,
        agent: &str,
        strict: bool,
        adopting: bool,
        mode: CageMode,
    ) -> Result<(CompiledAgent, CageSettings), StateError> {
        use std::os::unix::ffi::OsStrExt as _;
        let app_socket = Some(self.app_socket.as_os_str().as_bytes());
        let compiled = match compile_agent(policy, agent, mode.rung, app_socket)? {
            Some(c) => c,
            None if strict => {
                return Err(StateError::UnknownAgent {
                    agent: agent.to_owned(),
                    policy: policy.source().to_owned(),
                })
            }
            None => CompiledAgent::default(),
        };
        for unmatched in compiled
            .exec
            .unmatched
            .iter()
            .chain(&compiled.files.unmatched)
        {
            tracing::warn!(agent, rule = %unmatched, "rule matches no file now; it covers nothing until the policy is applied again");
        }
        let (settings, shortfall) =
            cage_settings(policy.agent(agent), &compiled, self.kernel.caps(), mode);
        if let Some(shortfall) = shortfall {
            let err = self.shortfall_error(agent, shortfall);
            if !adopting {
                return Err(err);
            }
            tracing::warn!(agent, error = %err, "cage enforced without what this kernel lacks");
        }
        Ok((compiled, settings))
    }

    /// The refusal for what this kernel cannot enforce of an agent's policy.
    fn shortfall_error(&self, agent: &str, shortfall: Shortfall) -> StateError {
        match shortfall {
            Shortfall::Feature(Feature::UnixSockets) => StateError::UnixUnavailable {
                agent: agent.to_owned(),
                missing: self
                    .kernel
                    .caps
                    .lacks(Feature::UnixSockets)
                    .unwrap_or_default(),
            },
            Shortfall::Feature(feature) => StateError::TierUnavailable {
                agent: agent.to_owned(),
                needs: feature.describe().to_owned(),
                missing: self.kernel.caps.lacks(feature).unwrap_or_default(),
            },
            Shortfall::Controller { limit, controller } => StateError::ControllerUnavailable {
                agent: agent.to_owned(),
                limit,
                controller,
                hierarchy: self.root.mount().display().to_string(),
            },
        }
    }

    /// Writes compiled rules into a fresh slot (not yet any cage's).
    fn fill(
        &mut self,
        policy: &Arc<Policy>,
        (compiled, settings): (CompiledAgent, CageSettings),
    ) -> Result<Filled, StateError> {
        let slot = self.slots.take();
        let entries = self.maps.fill_slot(slot, &compiled)?;
        self.slots.record(slot, policy, compiled.files.paths);
        Ok(Filled {
            entries,
            settings,
            egress: compiled.egress,
        })
    }

    /// Points cage `cgroup_id` at a filled slot with one map update, so no decision sees
    /// half of a change; on failure the slot is emptied and the cage keeps its old one.
    fn switch_in(
        &mut self,
        cgroup_id: u64,
        agent_id: u32,
        mut filled: Filled,
    ) -> Result<SlotEntries, StateError> {
        // The cage's name grants move into the new slot with the rules that admit them.
        let egress = std::mem::take(&mut filled.egress);
        self.dns_fill(cgroup_id, &mut filled.entries, egress);
        let config = CageConfig {
            agent_id,
            policy_slot: filled.entries.slot(),
            flags: filled.settings.flags,
            allow_sample: filled.settings.allow_sample,
        };
        if let Err(e) = self.maps.set_cage(cgroup_id, config) {
            self.maps.clear_slot(&filled.entries);
            return Err(e.into());
        }
        self.switch_containers(agent_id, config);
        Ok(filled.entries)
    }

    /// Re-installs the cage's kernel state for its mode (rung, throttle) under the policy
    /// in force: a fresh slot, switched in, the old one retired.
    fn rekey(&mut self, agent: &str) -> Result<(), StateError> {
        let mode = self.mode(agent);
        let policy = Arc::clone(&self.policy);
        let compiled = self.compile_for(&policy, agent, false, false, mode)?;
        let filled = self.fill(&policy, compiled)?;
        let Some((cgroup_id, agent_id)) =
            self.registry.get(agent).map(|c| (c.cgroup_id, c.agent_id))
        else {
            self.maps.clear_slot(&filled.entries);
            return Err(StateError::NoCage(agent.to_owned()));
        };
        let entries = self.switch_in(cgroup_id, agent_id, filled)?;
        self.replace_slot(agent, entries);
        Ok(())
    }
}
