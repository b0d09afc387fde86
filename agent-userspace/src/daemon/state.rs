//! The daemon's state: the policy in force, the cages, and the maps that enforce both. Every
//! change goes through here, under one lock, so cage creation, joins, reloads and removal
//! never interleave.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::Arc,
};

mod enforce;

pub use enforce::Contained;

use agent_common::{
    cage::{CageConfig, CAGE_F_ALLOW_RAW, CAGE_F_APPROVAL_ALL, CAGE_F_THROTTLED},
    egress::{
        Hook, Verdict, RULE_BUDGET, RULE_DEFAULT_DENY, RULE_IP_OPTIONS, RULE_NO_CAGE,
        RULE_ROUTING_HEADER, RULE_SOCKET_ALLOWED, RULE_SOCKET_KIND,
    },
};
use nix::sys::inotify::{AddWatchFlags, Inotify, WatchDescriptor};
use tracing::{info, warn};

use crate::{
    bpf::{ApprovalMap, BpfError, EgressMaps, SlotEntries},
    cage::{CageError, CageRoot, CgroupDir},
    caps,
    control::{AgentStatus, StatusReport},
    events::{EgressDetail, Event, EventBus, EventDetail, RawEvent},
    identity::AgentIdentity,
    policy::{
        compile_egress, compile_read_only, validate_agent_name, CompiledEgress, Policy, PolicyError,
    },
    runtime::{
        approvals::{ApprovalError, Approvals},
        budgets::Meter,
        containment::ContainError,
        AgentRuntime, Rung,
    },
};

/// Errors of state changes; each message is meant for the person who asked.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The policy has no entry for the agent and no default_agent.
    #[error(
        "unknown agent {agent:?}: policy {policy} has no agents.{agent} entry and no default_agent"
    )]
    UnknownAgent {
        /// The agent's name.
        agent: String,
        /// The policy file.
        policy: String,
    },
    /// The policy refused something (bad name, broken file, uncompilable rules).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cage(#[from] CageError),
    /// A map update failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// A non-root client asked to move a process it does not own.
    #[error(
        "permission denied: process {pid} belongs to uid {owner}, not to the caller (uid {caller})"
    )]
    NotYours {
        /// The process.
        pid: u32,
        /// Its owner.
        owner: u32,
        /// The caller.
        caller: u32,
    },
    /// The process does not exist.
    #[error("no process {0}")]
    NoProcess(u32),
    /// The daemon is shutting down.
    #[error("agentcaged is shutting down and takes no process into a cage")]
    Stopping,
    /// The process may not be caged (init, the daemon, a kernel thread, or one caged already).
    #[error("refused to cage process {pid}: {why}")]
    Uncageable {
        /// The process.
        pid: u32,
        /// Why.
        why: String,
    },
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// The policy file could not be written.
    #[error("writing the policy file {path}: {source}")]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No cage of that agent exists.
    #[error("agent {0:?} has no cage (it is not running); `agentcage status` lists the agents")]
    NoCage(String),
    /// An approval decision was refused.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// Freezing, killing or the snapshot failed.
    #[error(transparent)]
    Contain(#[from] ContainError),
    /// Watching a cage for emptiness failed.
    #[error("watching {path}: {source}")]
    Watch {
        /// The file watched.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
}

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
}

/// One agent's cage.
struct Cage {
    identity: AgentIdentity,
    agent_id: u32,
    dir: CgroupDir,
    cgroup_id: u64,
    slot: SlotEntries,
    /// Open client connections that need the cage to exist (e.g. `run` before its child joins).
    holds: usize,
    watch: WatchDescriptor,
}

/// Everything the daemon manages.
pub struct State {
    policy: Arc<Policy>,
    policy_path: PathBuf,
    maps: EgressMaps,
    root: CageRoot,
    cages: BTreeMap<String, Cage>,
    agent_ids: HashMap<String, u32>,
    names: HashMap<u32, String>,
    next_agent_id: u32,
    next_slot: u32,
    inotify: Arc<Inotify>,
    watches: HashMap<WatchDescriptor, String>,
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME, to put wall-clock times on kernel timestamps.
    boot_to_wall_ns: i128,
    /// Set by [`Self::shutdown`]: no cage may be made or filled any more.
    stopping: bool,
    /// The policy each slot was compiled from, live slots and recently retired ones, so an
    /// event still in the ring buffer after a reload names the rule that really decided.
    slot_policies: HashMap<u32, Arc<Policy>>,
    retired: std::collections::VecDeque<u32>,
    /// Per agent session: rung, budgets, assertions, last events.
    runtimes: HashMap<String, AgentRuntime>,
    /// Budget usage of user groups and workflows (`group:NAME`, `workflow:NAME`).
    scope_meters: HashMap<String, Meter>,
    /// Approval requests and decisions.
    approvals: Approvals,
    /// The kernel's grants.
    approval_map: ApprovalMap,
    /// Where the daemon's own events go.
    bus: EventBus,
    /// Where forensic snapshots are written.
    snapshot_dir: PathBuf,
}

/// The kernel-side mode of a cage, besides its policy.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelMode {
    /// The containment rung.
    pub(crate) rung: Rung,
    /// Over a hard budget.
    pub(crate) throttled: bool,
}

/// What the daemon needs to run the policy's run-time parts.
pub struct RuntimeParts {
    /// The kernel's approvals map.
    pub approval_map: ApprovalMap,
    /// The event bus.
    pub bus: EventBus,
    /// Where forensic snapshots go.
    pub snapshot_dir: PathBuf,
}

/// How many agent names are remembered for events before only live ones are kept.
const MAX_KNOWN_AGENTS: usize = 16_384;

/// How many retired slots keep their policy for late events.
const RETIRED_SLOTS: usize = 1024;

impl State {
    /// A state with no cages yet.
    pub fn new(
        policy: Policy,
        policy_path: PathBuf,
        maps: EgressMaps,
        root: CageRoot,
        inotify: Arc<Inotify>,
        parts: RuntimeParts,
    ) -> Self {
        Self {
            policy: Arc::new(policy),
            policy_path,
            maps,
            root,
            cages: BTreeMap::new(),
            agent_ids: HashMap::new(),
            names: HashMap::new(),
            next_agent_id: 0,
            next_slot: 1,
            inotify,
            watches: HashMap::new(),
            boot_to_wall_ns: boot_to_wall_ns(),
            stopping: false,
            slot_policies: HashMap::new(),
            retired: std::collections::VecDeque::new(),
            runtimes: HashMap::new(),
            scope_meters: HashMap::new(),
            approvals: Approvals::default(),
            approval_map: parts.approval_map,
            bus: parts.bus,
            snapshot_dir: parts.snapshot_dir,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The parent cgroup of every cage.
    pub fn root(&self) -> &CageRoot {
        &self.root
    }

    fn agent_id(&mut self, agent: &str) -> u32 {
        if let Some(id) = self.agent_ids.get(agent) {
            return *id;
        }
        // Names of agents that ran once are kept (late events still name them), up to a
        // bound: past it, only agents with a cage keep theirs.
        if self.agent_ids.len() >= MAX_KNOWN_AGENTS {
            let live: Vec<u32> = self.cages.values().map(|c| c.agent_id).collect();
            self.names.retain(|id, _| live.contains(id));
            self.agent_ids.retain(|_, id| live.contains(id));
        }
        // Ids start at 1: 0 means "no agent" on events. Never reused.
        self.next_agent_id += 1;
        let id = self.next_agent_id;
        self.agent_ids.insert(agent.to_owned(), id);
        self.names.insert(id, agent.to_owned());
        id
    }

    fn take_slot(&mut self) -> u32 {
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1).max(1);
        slot
    }

    /// What `agent` gets under `policy`: its rules and its cage flags. An agent the policy
    /// does not know gets nothing (deny all) when `strict` is false, an error when true.
    fn compile_for(
        policy: &Policy,
        agent: &str,
        strict: bool,
        mode: KernelMode,
    ) -> Result<(CompiledEgress, u32, u32), StateError> {
        let mode_flags = match (mode.rung, mode.throttled) {
            (Rung::ApprovalRequired, false) => CAGE_F_APPROVAL_ALL,
            (Rung::ApprovalRequired, true) => CAGE_F_APPROVAL_ALL | CAGE_F_THROTTLED,
            (_, true) => CAGE_F_THROTTLED,
            (_, false) => 0,
        };
        match policy.agent(agent) {
            Some(p) => {
                // A paused or killed cage is frozen; should it thaw before it is resumed,
                // it gets the narrowest egress, the read-only set.
                let compiled = match mode.rung {
                    Rung::ReadOnly | Rung::Paused | Rung::Killed => {
                        compile_read_only(agent, &p.egress)?
                    }
                    Rung::Observe | Rung::ApprovalRequired => compile_egress(agent, &p.egress)?,
                };
                let flags = if p.egress.raw_sockets {
                    CAGE_F_ALLOW_RAW
                } else {
                    0
                };
                Ok((
                    compiled,
                    flags | mode_flags,
                    p.egress.allow_events.sample_rate(),
                ))
            }
            None if strict => Err(StateError::UnknownAgent {
                agent: agent.to_owned(),
                policy: policy.source().to_owned(),
            }),
            None => Ok((
                CompiledEgress {
                    v4: Vec::new(),
                    v6: Vec::new(),
                },
                mode_flags,
                1,
            )),
        }
    }

    /// Installs the kernel state for a cage directory; `strict` refuses agents the policy
    /// does not name (new cages), otherwise they are caged with nothing allowed (cages found
    /// from an earlier daemon, whose processes must never run unrestricted).
    fn install(&mut self, agent: &str, dir: CgroupDir, strict: bool) -> Result<(), StateError> {
        let (compiled, flags, allow_sample) =
            Self::compile_for(&self.policy, agent, strict, KernelMode::default())?;
        let cgroup_id = dir.id()?;
        let agent_id = self.agent_id(agent);
        let slot = self.take_slot();
        let entries = self.maps.fill_slot(slot, &compiled)?;
        self.slot_policies.insert(slot, Arc::clone(&self.policy));
        let config = CageConfig {
            agent_id,
            policy_slot: slot,
            flags,
            allow_sample,
        };
        if let Err(e) = self.maps.set_cage(cgroup_id, config) {
            self.maps.clear_slot(&entries);
            return Err(e.into());
        }
        let events = dir.events_file();
        let watch = self
            .inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .map_err(|source| StateError::Watch {
                path: events,
                source,
            })?;
        self.watches.insert(watch, agent.to_owned());
        self.runtimes.insert(
            agent.to_owned(),
            AgentRuntime::new(self.policy.agent(agent), crate::runtime::boot_ns()),
        );
        self.cages.insert(
            agent.to_owned(),
            Cage {
                identity: AgentIdentity::for_agent(agent),
                agent_id,
                dir,
                cgroup_id,
                slot: entries,
                holds: 0,
                watch,
            },
        );
        Ok(())
    }

    /// Takes over cages left by an earlier daemon (their processes were kept enforced by
    /// pinned programs); returns their names.
    pub fn adopt_existing(&mut self) -> Result<Vec<String>, StateError> {
        let mut found = Vec::new();
        for (name, dir) in self.root.existing_cages()? {
            if self.policy.agent(&name).is_none() {
                warn!(agent = %name, "cage left by an earlier daemon has no policy entry: nothing is allowed to it");
            }
            let frozen = crate::runtime::containment::is_frozen(&dir).unwrap_or(false);
            self.install(&name, dir, false)?;
            if frozen {
                // Paused by an earlier daemon: it stays paused until someone resumes it.
                if let Some(rt) = self.runtimes.get_mut(&name) {
                    rt.rung = Rung::Paused;
                }
                warn!(agent = %name, "cage left paused by an earlier daemon: agentcage resume {name} to thaw it");
            }
            found.push(name);
        }
        Ok(found)
    }

    /// The cage of `agent`, created (and enforced) if it does not exist yet.
    fn ensure_cage(&mut self, agent: &str) -> Result<&Cage, StateError> {
        if self.stopping {
            return Err(StateError::Stopping);
        }
        validate_agent_name(agent)?;
        if !self.cages.contains_key(agent) {
            // Check the policy before touching the file system.
            Self::compile_for(&self.policy, agent, true, KernelMode::default())?;
            let dir = self.root.ensure_cage(agent)?;
            if let Err(e) = self.install(agent, dir.clone(), true) {
                let _ = dir.remove();
                return Err(e);
            }
            info!(agent, identity = %AgentIdentity::for_agent(agent), policy_hash = self.policy.hash(), "cage created");
        }
        self.cages
            .get(agent)
            .ok_or_else(|| StateError::UnknownAgent {
                agent: agent.to_owned(),
                policy: self.policy.source().to_owned(),
            })
    }

    /// Creates the cage if needed and holds it until [`Self::release`].
    pub fn hold(&mut self, agent: &str) -> Result<Held, StateError> {
        self.ensure_cage(agent)?;
        let policy_hash = self.policy.hash().to_owned();
        let raw_sockets = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.egress.raw_sockets);
        let cage = self
            .cages
            .get_mut(agent)
            .ok_or_else(|| StateError::UnknownAgent {
                agent: agent.to_owned(),
                policy: policy_hash.clone(),
            })?;
        cage.holds += 1;
        Ok(Held {
            cgroup: cage.dir.path().display().to_string(),
            policy_hash,
            raw_sockets,
            policy_source: self.policy.source().to_owned(),
        })
    }

    /// Drops one hold; removes the cage if nothing holds it and it is empty.
    pub fn release(&mut self, agent: &str) {
        if let Some(cage) = self.cages.get_mut(agent) {
            cage.holds = cage.holds.saturating_sub(1);
        }
        self.remove_if_idle(agent);
    }

    /// Moves process `pid` into the agent's cage. `caller_uid` is the client's; a non-root
    /// client may only move its own processes. `adopting` is false when the process asked
    /// for itself (`agentcage run`'s child, which has made itself fit for a cage).
    pub fn move_into(
        &mut self,
        agent: &str,
        pid: u32,
        caller_uid: u32,
        adopting: bool,
    ) -> Result<String, StateError> {
        let owner = fs::metadata(format!("/proc/{pid}"))
            .map_err(|_| StateError::NoProcess(pid))?
            .uid();
        if caller_uid != 0 && owner != caller_uid {
            return Err(StateError::NotYours {
                pid,
                owner,
                caller: caller_uid,
            });
        }
        self.check_cageable(agent, pid, adopting)?;
        let cage = self.ensure_cage(agent)?;
        cage.dir.add_process(pid)?;
        let path = cage.dir.path().display().to_string();
        info!(agent, pid, cgroup = %path, "process caged");
        Ok(path)
    }

    /// Refuses processes that must not be caged, or could undo their cage.
    fn check_cageable(&self, agent: &str, pid: u32, adopting: bool) -> Result<(), StateError> {
        let refuse = |why: String| Err(StateError::Uncageable { pid, why });
        if pid == 1 {
            return refuse("it is init; every service it starts would be caged too".into());
        }
        if pid == std::process::id() {
            return refuse("it is agentcaged itself".into());
        }
        if is_kernel_thread(pid) {
            return refuse("it is a kernel thread".into());
        }
        // A process whose cgroup cannot be read is refused too: fail closed.
        if self.root.holds_pid(pid).unwrap_or(true) {
            return refuse("it is in a cage already; an agent does not change cages".into());
        }
        let raw_sockets = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.egress.raw_sockets);
        let privileges = caps::privileges_of(pid).map_err(|_| StateError::NoProcess(pid))?;
        if adopting && privileges.root {
            return refuse(
                "it runs as root, which owns the cgroup and bpf files a cage is made of; start \
                 root agents with agentcage run, which hides those from them"
                    .into(),
            );
        }
        let escape = privileges.forbidden(raw_sockets);
        if escape != 0 {
            return refuse(format!(
                "it holds (or could regain at exec) {}, with which it could undo its cage; drop \
                 them from every set and the bounding set, or set no_new_privs (agentcage run \
                 does){}",
                caps::names(escape).join(", "),
                if escape == 1 << caps::CAP_NET_RAW {
                    " or allow raw_sockets for the agent"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// Removes every cage that is empty and unheld (e.g. ones an earlier daemon left).
    pub fn tidy(&mut self) {
        let agents: Vec<String> = self.cages.keys().cloned().collect();
        for agent in agents {
            self.remove_if_idle(&agent);
        }
    }

    /// A cage's cgroup.events changed: remove the cage if it emptied and nothing holds it.
    pub fn on_watch(&mut self, watch: WatchDescriptor) {
        if let Some(agent) = self.watches.get(&watch).cloned() {
            self.remove_if_idle(&agent);
        }
    }

    fn remove_if_idle(&mut self, agent: &str) {
        let Some(cage) = self.cages.get(agent) else {
            return;
        };
        if cage.holds > 0 || cage.dir.populated().unwrap_or(true) {
            return;
        }
        // rmdir first: it fails if a process slipped in, and then the cage stays enforced.
        if let Err(e) = cage.dir.remove() {
            warn!(agent, error = %e, "cage not removed");
            return;
        }
        if let Some(cage) = self.cages.remove(agent) {
            let _ = self.inotify.rm_watch(cage.watch);
            self.watches.remove(&cage.watch);
            self.maps.remove_cage(cage.cgroup_id);
            self.retire(&cage.slot);
            self.runtimes.remove(agent);
            self.approvals.forget_cage(cage.cgroup_id);
            self.approval_map.revoke_cage(cage.cgroup_id);
            info!(agent, "cage removed: its last process exited");
        }
    }

    /// Reads the policy file again and swaps it in for every cage. A policy that fails to
    /// parse, validate or compile is refused and the old one stays in force.
    pub fn reload(&mut self) -> Result<Arc<Policy>, StateError> {
        let policy = Policy::load(&self.policy_path)?;
        if policy.hash() == self.policy.hash() {
            // Unchanged (e.g. the file was rewritten by `policy apply`): nothing to swap.
            return Ok(Arc::clone(&self.policy));
        }
        self.apply(policy)
    }

    /// Swaps `policy` in: compile everything first, fill fresh slots, then switch each cage
    /// with one map update, then free the old slots.
    pub fn apply(&mut self, policy: Policy) -> Result<Arc<Policy>, StateError> {
        let policy = Arc::new(policy);
        let mut compiled = Vec::with_capacity(self.cages.len());
        for agent in self.cages.keys() {
            let mode = self.kernel_mode(agent);
            compiled.push((
                agent.clone(),
                Self::compile_for(&policy, agent, false, mode)?,
            ));
        }
        let mut filled: Vec<(String, SlotEntries, CageConfig)> = Vec::new();
        for (agent, (rules, flags, allow_sample)) in compiled {
            let slot = self.take_slot();
            match self.maps.fill_slot(slot, &rules) {
                Ok(entries) => {
                    let agent_id = self.cages[&agent].agent_id;
                    let config = CageConfig {
                        agent_id,
                        policy_slot: slot,
                        flags,
                        allow_sample,
                    };
                    filled.push((agent, entries, config));
                }
                Err(e) => {
                    for (_, entries, _) in &filled {
                        self.maps.clear_slot(entries);
                    }
                    return Err(e.into());
                }
            }
        }
        for (agent, entries, config) in filled {
            let Some(cage) = self.cages.get_mut(&agent) else {
                continue;
            };
            if let Err(e) = self.maps.set_cage(cage.cgroup_id, config) {
                warn!(agent, error = %e, "cage kept its previous policy");
                self.maps.clear_slot(&entries);
                continue;
            }
            self.slot_policies
                .insert(entries.slot(), Arc::clone(&policy));
            let old = std::mem::replace(&mut cage.slot, entries);
            self.retire(&old);
        }
        self.policy = policy;
        self.after_policy_change();
        info!(
            source = self.policy.source(),
            policy_hash = self.policy.hash(),
            "policy in force"
        );
        Ok(Arc::clone(&self.policy))
    }

    /// Agents, cages and counters.
    pub fn status(&self) -> StatusReport {
        let agents = self
            .cages
            .iter()
            .map(|(name, cage)| {
                let stats = self.maps.stats(cage.cgroup_id);
                AgentStatus {
                    name: name.clone(),
                    identity: cage.identity.to_string(),
                    cgroup: cage.dir.path().display().to_string(),
                    cgroup_id: cage.cgroup_id,
                    pids: cage.dir.procs().unwrap_or_default(),
                    allowed: stats.allowed,
                    denied: stats.denied,
                    lost: stats.lost,
                    rung: self
                        .runtimes
                        .get(name)
                        .map(|r| r.rung.name().to_owned())
                        .unwrap_or_default(),
                    throttled: self.runtimes.get(name).is_some_and(|r| r.throttled),
                    policy_hash: self
                        .slot_policies
                        .get(&cage.slot.slot())
                        .map(|p| p.hash().to_owned())
                        .unwrap_or_default(),
                }
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            policy_source: self.policy.source().to_owned(),
            policy_hash: self.policy.hash().to_owned(),
            cgroup_root: self.root.dir().path().display().to_string(),
            global_lost: self.maps.global_lost(),
            agents,
        }
    }

    /// Events lost so far: every live cage's plus those of callers in no cage.
    pub fn total_lost(&self) -> u64 {
        let caged: u64 = self
            .cages
            .values()
            .map(|c| self.maps.stats(c.cgroup_id).lost)
            .sum();
        caged + self.maps.global_lost()
    }

    /// Empties a slot no cage uses any more, keeping its policy a while for late events.
    fn retire(&mut self, entries: &SlotEntries) {
        self.maps.clear_slot(entries);
        self.retired.push_back(entries.slot());
        while self.retired.len() > RETIRED_SLOTS {
            if let Some(old) = self.retired.pop_front() {
                self.slot_policies.remove(&old);
            }
        }
    }

    /// Turns a kernel record into an event with the agent's identity and the rule's text, as
    /// the policy that decided has them.
    pub fn enrich(&self, raw: &RawEvent) -> Event {
        let RawEvent::Egress(e) = raw;
        let policy = self
            .slot_policies
            .get(&e.header.policy_slot)
            .unwrap_or(&self.policy);
        let agent = self.names.get(&e.header.agent_id);
        let rule_text = agent
            .and_then(|a| policy.agent(a))
            .and_then(|p| p.egress.allow.get(e.rule_id as usize))
            .map(|r| r.describe());
        let rule = match e.rule_id {
            RULE_DEFAULT_DENY => "default-deny".to_owned(),
            RULE_SOCKET_KIND => "socket-kind".to_owned(),
            RULE_SOCKET_ALLOWED => "raw-sockets-allowed".to_owned(),
            RULE_NO_CAGE => "no-cage".to_owned(),
            RULE_IP_OPTIONS => "ip-options".to_owned(),
            RULE_ROUTING_HEADER => "routing-header".to_owned(),
            RULE_BUDGET => "budget".to_owned(),
            n => format!("egress.allow[{n}]"),
        };
        let hook = Hook::from_u8(e.hook);
        let dst_addr = match (hook, e.family) {
            (Some(Hook::SockCreate), _) => None,
            (_, 2) => Some(std::net::IpAddr::from([
                e.addr[0], e.addr[1], e.addr[2], e.addr[3],
            ])),
            (_, _) => Some(std::net::IpAddr::from(e.addr)),
        };
        let time = i128::from(e.header.ts_ns) + self.boot_to_wall_ns;
        Event {
            time_unix_nano: u64::try_from(time).unwrap_or(0),
            kernel_ts_ns: e.header.ts_ns,
            agent: agent.map(|a| AgentIdentity::for_agent(a).to_string()),
            pid: e.header.pid,
            tgid: e.header.tgid,
            comm: comm_str(&e.header.comm),
            cgroup_id: e.header.cgroup_id,
            policy_hash: policy.hash().to_owned(),
            detail: EventDetail::Egress(EgressDetail {
                hook: hook.map_or_else(|| e.hook.to_string(), |h| h.name().to_owned()),
                family: match e.family {
                    2 => "ipv4".to_owned(),
                    10 => "ipv6".to_owned(),
                    f => f.to_string(),
                },
                protocol: match e.protocol {
                    6 => "tcp".to_owned(),
                    17 => "udp".to_owned(),
                    p => p.to_string(),
                },
                sock_type: match e.sock_type {
                    1 => "stream".to_owned(),
                    2 => "dgram".to_owned(),
                    3 => "raw".to_owned(),
                    t => t.to_string(),
                },
                dst_addr,
                dst_port: e.port,
                verdict: match Verdict::from_u8(e.verdict) {
                    Some(Verdict::Allow) => "allow".to_owned(),
                    Some(Verdict::Deny) => "deny".to_owned(),
                    Some(Verdict::PendingApproval) => "pending-approval".to_owned(),
                    Some(Verdict::Budget) => "budget".to_owned(),
                    None => e.verdict.to_string(),
                },
                rule,
                rule_text,
            }),
        }
    }

    /// Stops taking processes in, removes every empty cage, and returns the names of cages
    /// that still hold processes.
    pub fn shutdown(&mut self) -> Vec<String> {
        self.stopping = true;
        for cage in self.cages.values_mut() {
            cage.holds = 0;
        }
        self.tidy();
        self.cages.keys().cloned().collect()
    }
}

/// Kernel threads carry PF_KTHREAD in the flags field of /proc/PID/stat.
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces and parentheses):
            // state ppid pgrp session tty_nr tpgid flags ...
            let rest = stat.get(stat.rfind(')')? + 1..)?;
            rest.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn boot_to_wall_ns() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let ns = |c| {
        clock_gettime(c)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_BOOTTIME)
}
