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

use agent_common::cage::{
    CageConfig, CAGE_F_ALLOW_RAW, CAGE_F_APPROVAL_ALL, CAGE_F_EXEC_DEFAULT_DENY,
    CAGE_F_EXEC_DIGESTS_REQUIRED, CAGE_F_EXEC_HASHES, CAGE_F_FILES, CAGE_F_READ_ONLY,
    CAGE_F_THROTTLED,
};
use nix::sys::inotify::{AddWatchFlags, Inotify, WatchDescriptor};
use tracing::{info, warn};

use super::enrich;
use crate::{
    bpf::{ApprovalMap, BpfError, EgressMaps, Feature, HookStatus, SlotEntries, Tier},
    cage::{CageError, CageRoot, CgroupDir},
    caps,
    capture::{ProcessNode, ProcessTree},
    control::{AgentStatus, StatusReport},
    events::{
        Event, EventBus, EventDetail, ExitDetail, ForkDetail, PolicyDetail, RawEvent, SessionDetail,
    },
    identity::AgentIdentity,
    policy::{
        compile_egress, compile_exec, compile_files, compile_read_only, validate_agent_name,
        AgentPolicy, CompiledAgent, Enforcement, Policy, PolicyError,
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
    /// No agent of that name has run since the daemon started.
    #[error("no agent {0:?} has run under this daemon")]
    NoSuchAgent(String),
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
    /// The agent's policy has rules this kernel cannot enforce (the kill tier, or a deny
    /// tier without a hook they need).
    #[error(
        "refused to start agent {agent:?}: its policy has {needs}, which this kernel cannot \
         enforce: {missing}. Run it on a kernel that can (see `agentcage doctor`), or remove \
         {needs} from its policy"
    )]
    TierUnavailable {
        /// The agent.
        agent: String,
        /// What in its policy cannot be enforced.
        needs: String,
        /// What the kernel lacks.
        missing: String,
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
    /// When the cage was made (or taken over): the start of the agent's session.
    started_unix_nano: u64,
}

/// Where the inodes of a slot's file rules were found: (dev, inode) → path.
type InodePaths = HashMap<(u32, u64), String>;

/// What the kernel gives, found at start.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// What the programs can enforce here: the tier and the deny tier's optional hooks.
    pub caps: crate::bpf::Capabilities,
    /// The host-wide hooks' states.
    pub hooks: Vec<HookStatus>,
}

/// Everything the daemon manages.
pub struct State {
    kernel: KernelInfo,
    /// Each agent's processes, kept after its cage goes (by agent id).
    trees: HashMap<u32, ProcessTree>,
    /// The last event sequence number given per agent id.
    seqs: HashMap<u32, u64>,
    /// Paths of the inodes each slot's file rules name, for events.
    slot_paths: HashMap<u32, Arc<InodePaths>>,
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
    /// Retired slots whose entries are still in the maps, with when they were retired.
    draining: std::collections::VecDeque<(std::time::Instant, SlotEntries)>,
    /// Wakes the event reader to publish session ends.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// Session ends for the reader to publish after the cage's last kernel events.
    pending_ends: Vec<(u32, Event)>,
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

/// How long a retired slot's entries stay in the maps for decisions already under way.
const SLOT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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
        kernel: KernelInfo,
        parts: RuntimeParts,
    ) -> Self {
        Self {
            kernel,
            trees: HashMap::new(),
            seqs: HashMap::new(),
            slot_paths: HashMap::new(),
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
            draining: std::collections::VecDeque::new(),
            wake: None,
            pending_ends: Vec::new(),
            runtimes: HashMap::new(),
            scope_meters: HashMap::new(),
            approvals: Approvals::default(),
            approval_map: parts.approval_map,
            bus: parts.bus,
            snapshot_dir: parts.snapshot_dir,
        }
    }

    /// From now on, `wake` is notified when a session end waits for the event reader.
    pub fn set_wake(&mut self, wake: Arc<tokio::sync::Notify>) {
        self.wake = Some(wake);
    }

    /// Session ends waiting to be published, with their sequence numbers now assigned. The
    /// event reader takes them right after it has emptied the ring buffer, so a session's
    /// end comes after every kernel event of its cage (those were all in the ring before
    /// the cage emptied).
    pub fn take_session_ends(&mut self) -> Vec<Event> {
        let pending = std::mem::take(&mut self.pending_ends);
        pending
            .into_iter()
            .map(|(agent_id, mut e)| {
                e.agent_seq = self.next_seq(agent_id);
                e
            })
            .collect()
    }

    /// Says on the bus that `agent`'s session started; queues its end for the reader.
    fn publish_session(&mut self, agent: &str, action: &str) {
        let Some(agent_id) = self.cages.get(agent).map(|c| c.agent_id) else {
            return;
        };
        let end = action == "end";
        let seq = if end { 0 } else { self.next_seq(agent_id) };
        let bus = &self.bus;
        let Some(cage) = self.cages.get(agent) else {
            return;
        };
        let now = crate::spool::now_unix_nano();
        let event = Event {
            time_unix_nano: now,
            kernel_ts_ns: u64::try_from(i128::from(now) - self.boot_to_wall_ns).unwrap_or(0),
            agent: Some(cage.identity.to_string()),
            agent_seq: seq,
            pid: 0,
            tgid: 0,
            comm: String::new(),
            cgroup_id: cage.cgroup_id,
            policy_hash: self.policy.hash().to_owned(),
            detail: EventDetail::Session(SessionDetail {
                action: action.to_owned(),
                started_unix_nano: cage.started_unix_nano,
            }),
        };
        if !end {
            bus.publish(event);
            return;
        }
        self.pending_ends.push((agent_id, event));
        if let Some(wake) = &self.wake {
            wake.notify_one();
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
    /// does not know gets nothing (deny all) when `strict` is false, an error when true; so
    /// does an agent whose policy needs a tier this kernel lacks.
    fn compile_for(
        policy: &Policy,
        kernel: &KernelInfo,
        agent: &str,
        strict: bool,
        adopting: bool,
        mode: KernelMode,
    ) -> Result<(CompiledAgent, u32, u32), StateError> {
        let mut mode_flags = match (mode.rung, mode.throttled) {
            (Rung::ApprovalRequired, false) => CAGE_F_APPROVAL_ALL,
            (Rung::ApprovalRequired, true) => CAGE_F_APPROVAL_ALL | CAGE_F_THROTTLED,
            (_, true) => CAGE_F_THROTTLED,
            (_, false) => 0,
        };
        // Read-only also means no file writes, where the kernel can refuse them.
        if mode.rung == Rung::ReadOnly && kernel.caps.tier == Tier::Deny {
            mode_flags |= CAGE_F_READ_ONLY;
        }
        let Some(p) = policy.agent(agent) else {
            if strict {
                return Err(StateError::UnknownAgent {
                    agent: agent.to_owned(),
                    policy: policy.source().to_owned(),
                });
            }
            return Ok((CompiledAgent::default(), mode_flags, 1));
        };
        let at = if policy.agents.contains_key(agent) {
            format!("agents.{agent}")
        } else {
            "default_agent".to_owned()
        };
        // A paused or killed cage is frozen; should it thaw before it is resumed, it gets the
        // narrowest egress, the read-only set.
        let egress = match mode.rung {
            Rung::ReadOnly | Rung::Paused | Rung::Killed => compile_read_only(agent, &p.egress)?,
            Rung::Observe | Rung::ApprovalRequired => compile_egress(agent, &p.egress)?,
        };
        let compiled = CompiledAgent {
            egress,
            exec: compile_exec(&format!("{at}.exec"), &p.exec, &p.approvals.exec),
            files: compile_files(&format!("{at}.files"), &p.files),
        };
        for unmatched in compiled
            .exec
            .unmatched
            .iter()
            .chain(&compiled.files.unmatched)
        {
            warn!(agent, rule = %unmatched, "rule matches no file now; it covers nothing until the policy is applied again");
        }
        if let Some((needs, missing)) = Self::unenforceable(p, &compiled, kernel) {
            let err = StateError::TierUnavailable {
                agent: agent.to_owned(),
                needs,
                missing,
            };
            if !adopting {
                return Err(err);
            }
            // A cage left by an earlier daemon cannot be refused; it gets what this kernel
            // can enforce.
            warn!(agent, error = %err, "cage enforced with the kill tier only");
        }
        let mut flags = mode_flags;
        if p.egress.raw_sockets {
            flags |= CAGE_F_ALLOW_RAW;
        }
        if compiled.exec.default_deny {
            flags |= CAGE_F_EXEC_DEFAULT_DENY;
        }
        if !compiled.exec.hashes.is_empty() && kernel.caps.content_hashes {
            flags |= CAGE_F_EXEC_HASHES;
        }
        if compiled.exec.has_digest_rules {
            flags |= CAGE_F_EXEC_DIGESTS_REQUIRED;
        }
        if !compiled.files.inodes.is_empty() {
            flags |= CAGE_F_FILES;
        }
        Ok((compiled, flags, p.egress.allow_events.sample_rate()))
    }

    /// What in the agent's policy this kernel cannot enforce, and why, if anything.
    fn unenforceable(
        p: &AgentPolicy,
        c: &CompiledAgent,
        kernel: &KernelInfo,
    ) -> Option<(String, String)> {
        let used = [
            (Feature::DenyEnforcement, p.enforcement == Enforcement::Deny),
            (Feature::FileRules, !p.files.is_empty()),
            (Feature::ContentRules, c.exec.has_digest_rules),
        ];
        used.into_iter()
            .filter(|(_, used)| *used)
            .find_map(|(f, _)| {
                kernel
                    .caps
                    .lacks(f)
                    .map(|why| (f.describe().to_owned(), why))
            })
    }

    /// Installs the kernel state for a cage directory; `strict` refuses agents the policy
    /// does not name (new cages), otherwise they are caged with nothing allowed (cages found
    /// from an earlier daemon, whose processes must never run unrestricted).
    fn install(&mut self, agent: &str, dir: CgroupDir, strict: bool) -> Result<(), StateError> {
        let (compiled, flags, allow_sample) = Self::compile_for(
            &self.policy,
            &self.kernel,
            agent,
            strict,
            !strict,
            KernelMode::default(),
        )?;
        let cgroup_id = dir.id()?;
        let agent_id = self.agent_id(agent);
        let slot = self.take_slot();
        let entries = self.maps.fill_slot(slot, &compiled)?;
        self.slot_policies.insert(slot, Arc::clone(&self.policy));
        self.slot_paths
            .insert(slot, Arc::new(compiled.files.paths.clone()));
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
        let watch = match self.inotify.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            Ok(w) => w,
            Err(source) => {
                self.maps.remove_cage(cgroup_id);
                self.maps.clear_slot(&entries);
                return Err(StateError::Watch {
                    path: events,
                    source,
                });
            }
        };
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
                started_unix_nano: crate::spool::now_unix_nano(),
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
            Self::compile_for(
                &self.policy,
                &self.kernel,
                agent,
                true,
                false,
                KernelMode::default(),
            )?;
            let dir = self.root.ensure_cage(agent)?;
            if let Err(e) = self.install(agent, dir.clone(), true) {
                let _ = dir.remove();
                return Err(e);
            }
            info!(agent, identity = %AgentIdentity::for_agent(agent), policy_hash = self.policy.hash(), "cage created");
            self.publish_session(agent, "start");
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
        let agent_id = cage.agent_id;
        // Its fork happened outside the cage, so the tree learns of it here.
        let (ppid, program, argv) = process_info(pid);
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        self.tree(agent_id).on_join(pid, ppid, program, argv, ts);
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
        self.publish_session(agent, "end");
        if let Some(cage) = self.cages.remove(agent) {
            let _ = self.inotify.rm_watch(cage.watch);
            self.watches.remove(&cage.watch);
            self.maps.remove_cage(cage.cgroup_id);
            self.runtimes.remove(agent);
            self.approvals.forget_cage(cage.cgroup_id);
            self.approval_map.revoke_cage(cage.cgroup_id);
            self.retire(cage.slot);
            info!(agent, "cage removed: its last process exited");
        }
    }

    /// Reads the policy file again and swaps it in for every cage. A policy that fails to
    /// parse, validate or compile is refused and the old one stays in force.
    pub fn reload(&mut self) -> Result<Arc<Policy>, StateError> {
        let result = Policy::load(&self.policy_path)
            .map_err(StateError::from)
            .and_then(|policy| {
                if policy.hash() == self.policy.hash() {
                    // Unchanged (e.g. the file was rewritten by `policy apply`): nothing to swap.
                    return Ok(Arc::clone(&self.policy));
                }
                self.apply(policy)
            });
        let (hash, detail) = match &result {
            Ok(p) => (
                p.hash().to_owned(),
                PolicyDetail {
                    result: "applied".into(),
                    source: p.source().to_owned(),
                    error: None,
                },
            ),
            Err(e) => (
                self.policy.hash().to_owned(),
                PolicyDetail {
                    result: "refused".into(),
                    source: self.policy_path.display().to_string(),
                    error: Some(crate::errors::render(e)),
                },
            ),
        };
        self.bus
            .publish(Event::daemon(&hash, EventDetail::Policy(detail)));
        result
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
                Self::compile_for(&policy, &self.kernel, agent, false, false, mode)?,
            ));
        }
        let mut filled: Vec<(String, SlotEntries, CageConfig)> = Vec::new();
        for (agent, (rules, flags, allow_sample)) in compiled {
            let slot = self.take_slot();
            match self.maps.fill_slot(slot, &rules) {
                Ok(entries) => {
                    self.slot_paths
                        .insert(slot, Arc::new(rules.files.paths.clone()));
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
            self.retire(old);
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
                    lost_by_kind: lost_by_kind(&stats.lost_by_kind),
                    killed: stats.killed,
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
            tier: self.kernel.caps.tier.to_string(),
            tier_missing: self.kernel.caps.missing.clone(),
            content_hashes: self.kernel.caps.content_hashes,
            refused: self.kernel.caps.refused(),
            hooks: self.kernel.hooks.clone(),
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
    fn retire(&mut self, entries: SlotEntries) {
        self.retired.push_back(entries.slot());
        // Emptied after a grace period, not now: a program that read the cage's old slot
        // just before the switch may still be looking it up (the sleepable exec hook can
        // spend milliseconds hashing), and an emptied slot would judge by defaults.
        self.draining
            .push_back((std::time::Instant::now(), entries));
        self.reap_retired();
        while self.retired.len() > RETIRED_SLOTS {
            if let Some(old) = self.retired.pop_front() {
                self.slot_policies.remove(&old);
                self.slot_paths.remove(&old);
            }
        }
    }

    /// Empties the retired slots whose grace period is over.
    pub fn reap_retired(&mut self) {
        while let Some((at, _)) = self.draining.front() {
            if at.elapsed() < SLOT_GRACE {
                break;
            }
            if let Some((_, entries)) = self.draining.pop_front() {
                self.maps.clear_slot(&entries);
            }
        }
    }

    /// Turns a kernel record into an event with the agent's identity, its place in the
    /// agent's sequence and the rule's text as the policy that decided has them; keeps the
    /// agent's process tree up to date.
    pub fn enrich(&mut self, raw: &RawEvent) -> Event {
        let h = *raw.header();
        let policy = Arc::clone(
            self.slot_policies
                .get(&h.policy_slot)
                .unwrap_or(&self.policy),
        );
        let agent = self.names.get(&h.agent_id).cloned();
        let agent_policy = agent.as_deref().and_then(|a| policy.agent(a));
        let comm = comm_str(&h.comm);
        let ts = h.ts_ns;
        let detail = match raw {
            RawEvent::Egress(e) => EventDetail::Egress(enrich::egress(e, agent_policy)),
            RawEvent::Exec(e) => {
                let d = enrich::exec(e, agent_policy);
                // A killed exec did replace the image (then died); a denied one did not.
                if d.verdict != "deny" {
                    self.tree(h.agent_id).on_exec(
                        h.tgid,
                        e.ppid,
                        d.filename.clone(),
                        d.argv.clone(),
                        ts,
                    );
                }
                EventDetail::Exec(d)
            }
            RawEvent::Fork(e) => {
                self.tree(h.agent_id)
                    .on_fork(h.tgid, &comm, e.child_tgid, ts);
                EventDetail::Fork(ForkDetail {
                    child_pid: e.child_tgid,
                })
            }
            RawEvent::Exit(e) => {
                let d = ExitDetail::from_status(e.exit_code);
                self.tree(h.agent_id).on_exit(h.tgid, &comm, d.clone(), ts);
                EventDetail::Exit(d)
            }
            RawEvent::File(e) => {
                let paths = self.slot_paths.get(&h.policy_slot);
                EventDetail::File(enrich::file(e, agent_policy, paths.map(|p| &**p)))
            }
        };
        let seq = self.next_seq(h.agent_id);
        let time = i128::from(h.ts_ns) + self.boot_to_wall_ns;
        Event {
            time_unix_nano: u64::try_from(time).unwrap_or(0),
            kernel_ts_ns: h.ts_ns,
            agent: agent.map(|a| AgentIdentity::for_agent(&a).to_string()),
            agent_seq: seq,
            pid: h.pid,
            tgid: h.tgid,
            comm,
            cgroup_id: h.cgroup_id,
            policy_hash: policy.hash().to_owned(),
            detail,
        }
    }

    /// The next number in the agent's event sequence (0 for no agent).
    fn next_seq(&mut self, agent_id: u32) -> u64 {
        if agent_id == 0 {
            return 0;
        }
        let s = self.seqs.entry(agent_id).or_default();
        *s += 1;
        *s
    }

    fn tree(&mut self, agent_id: u32) -> &mut ProcessTree {
        self.trees.entry(agent_id).or_default()
    }

    /// The processes of `agent`, alive and recently ended.
    pub fn processes(&self, agent: &str) -> Result<Vec<ProcessNode>, StateError> {
        let id = self
            .agent_ids
            .get(agent)
            .ok_or_else(|| StateError::NoSuchAgent(agent.to_owned()))?;
        Ok(self
            .trees
            .get(id)
            .map(ProcessTree::nodes)
            .unwrap_or_default())
    }

    /// Records the host-wide hooks' states once they are attached.
    pub fn set_hooks(&mut self, hooks: Vec<HookStatus>) {
        self.kernel.hooks = hooks;
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

/// Parent, program and arguments of a live process, from /proc (empty when unreadable).
fn process_info(pid: u32) -> (u32, String, Vec<String>) {
    let ppid = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let program = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let argv = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| crate::events::process::split_argv(&b))
        .unwrap_or_default();
    (ppid, program, argv)
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

/// Per-kind loss counters by kind name.
fn lost_by_kind(counts: &[u64; agent_common::event::KIND_COUNT]) -> BTreeMap<String, u64> {
    use agent_common::event::{KIND_EGRESS, KIND_EXEC, KIND_EXIT, KIND_FILE, KIND_FORK};
    [
        ("egress", KIND_EGRESS),
        ("exec", KIND_EXEC),
        ("fork", KIND_FORK),
        ("exit", KIND_EXIT),
        ("file", KIND_FILE),
    ]
    .into_iter()
    .map(|(name, kind)| (name.to_owned(), counts[kind as usize]))
    .collect()
}
