//! The cage registry: which agents have a cage, their numbers (the kernel's `agent_id`),
//! their event sequence numbers and process trees, and the inotify watches that tell when a
//! cage empties.

use std::collections::{BTreeMap, HashMap};

use nix::sys::inotify::WatchDescriptor;

use crate::{
    bpf::SlotEntries,
    cage::CgroupDir,
    capture::{ProcessNode, ProcessTree},
    events::{Event, EventDetail},
    identity::AgentIdentity,
};

/// How many agent names are remembered for events before only live ones are kept.
const MAX_KNOWN_AGENTS: usize = 16_384;

/// One agent's cage.
pub(super) struct Cage {
    pub(super) identity: AgentIdentity,
    pub(super) agent_id: u32,
    pub(super) dir: CgroupDir,
    pub(super) cgroup_id: u64,
    pub(super) slot: SlotEntries,
    /// Open client connections that need the cage to exist (e.g. `run` before its child joins).
    pub(super) holds: usize,
    pub(super) watch: WatchDescriptor,
    /// When the cage was made (or taken over): the start of the agent's session.
    pub(super) started_unix_nano: u64,
    /// Its dynamic uid, once a run under `run_as: dynamic` asked for one.
    pub(super) dynamic: Option<crate::accounts::DynamicUser>,
    /// The ids processes may join with: one entry per hold that was granted an account.
    pub(super) joiners: HashMap<crate::accounts::Joiner, usize>,
    /// The id of the agent's valid behavior certificate, stamped on its events.
    pub(super) certificate: Option<String>,
}

/// Every cage, and what outlives them: names, sequences, process trees.
#[derive(Default)]
pub(super) struct Registry {
    cages: BTreeMap<String, Cage>,
    ids: HashMap<String, u32>,
    names: HashMap<u32, String>,
    next_id: u32,
    /// The last event sequence number given per agent id.
    seqs: HashMap<u32, u64>,
    /// Each agent's processes, kept after its cage goes (by agent id).
    trees: HashMap<u32, ProcessTree>,
    watches: HashMap<WatchDescriptor, String>,
}

impl Registry {
    /// The agent's number, given on first use and never reused.
    pub(super) fn agent_id(&mut self, agent: &str) -> u32 {
        if let Some(id) = self.ids.get(agent) {
            return *id;
        }
        // Names of agents that ran once are kept (late events still name them), up to a
        // bound: past it, only agents with a cage keep theirs.
        if self.ids.len() >= MAX_KNOWN_AGENTS {
            let live: Vec<u32> = self.cages.values().map(|c| c.agent_id).collect();
            self.names.retain(|id, _| live.contains(id));
            self.ids.retain(|_, id| live.contains(id));
        }
        // Ids start at 1: 0 means "no agent" on events.
        self.next_id += 1;
        let id = self.next_id;
        self.ids.insert(agent.to_owned(), id);
        self.names.insert(id, agent.to_owned());
        id
    }

    /// The number of an agent that has run, if it has.
    pub(super) fn known_id(&self, agent: &str) -> Option<u32> {
        self.ids.get(agent).copied()
    }

    /// The name of agent number `id`.
    pub(super) fn name(&self, id: u32) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// The next number in the agent's event sequence (0 for no agent).
    pub(super) fn next_seq(&mut self, agent_id: u32) -> u64 {
        if agent_id == 0 {
            return 0;
        }
        let s = self.seqs.entry(agent_id).or_default();
        *s += 1;
        *s
    }

    /// The agent's process tree.
    pub(super) fn tree(&mut self, agent_id: u32) -> &mut ProcessTree {
        self.trees.entry(agent_id).or_default()
    }

    /// Keeps the agent's process tree in step with a kernel event.
    pub(super) fn observe(&mut self, agent_id: u32, event: &Event) {
        let ts = event.kernel_ts_ns;
        match &event.detail {
            // A killed exec did replace the image (then died); a refused one did not.
            EventDetail::Exec(d) if d.replaced_image() => {
                self.tree(agent_id).on_exec(
                    event.tgid,
                    d.ppid,
                    d.filename.clone(),
                    d.argv.clone(),
                    ts,
                );
            }
            EventDetail::Fork(d) => {
                self.tree(agent_id)
                    .on_fork(event.tgid, &event.comm, d.child_pid, ts);
            }
            EventDetail::Exit(d) => {
                self.tree(agent_id)
                    .on_exit(event.tgid, &event.comm, d.clone(), ts);
            }
            _ => {}
        }
    }

    /// The processes of an agent that has run, alive and recently ended.
    pub(super) fn processes(&self, agent: &str) -> Option<Vec<ProcessNode>> {
        let id = self.ids.get(agent)?;
        Some(
            self.trees
                .get(id)
                .map(ProcessTree::nodes)
                .unwrap_or_default(),
        )
    }

    /// The agent's cage.
    pub(super) fn get(&self, agent: &str) -> Option<&Cage> {
        self.cages.get(agent)
    }

    /// The agent's cage, to change.
    pub(super) fn get_mut(&mut self, agent: &str) -> Option<&mut Cage> {
        self.cages.get_mut(agent)
    }

    /// Whether the agent has a cage.
    pub(super) fn contains(&self, agent: &str) -> bool {
        self.cages.contains_key(agent)
    }

    /// Every cage, by agent name.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Cage)> {
        self.cages.iter()
    }

    /// Every cage, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Cage)> {
        self.cages.iter_mut()
    }

    /// The names of every caged agent.
    pub(super) fn names_of_cages(&self) -> Vec<String> {
        self.cages.keys().cloned().collect()
    }

    /// Adds a cage.
    pub(super) fn insert(&mut self, agent: &str, cage: Cage) {
        self.watches.insert(cage.watch, agent.to_owned());
        self.cages.insert(agent.to_owned(), cage);
    }

    /// Removes a cage.
    pub(super) fn remove(&mut self, agent: &str) -> Option<Cage> {
        let cage = self.cages.remove(agent)?;
        self.watches.remove(&cage.watch);
        Some(cage)
    }

    /// The agent whose cage a watch is on.
    pub(super) fn watched(&self, watch: WatchDescriptor) -> Option<&str> {
        self.watches.get(&watch).map(String::as_str)
    }
}
