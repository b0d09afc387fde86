//! The kill tier's exec watch for cages whose rules judge content ([`crate::execwatch`]): a
//! joining process's mount namespace is marked before it may exec; after a policy change, or
//! for a cage an earlier daemon left, those of every process the cage holds.

use std::collections::BTreeMap;

use agent_common::cage::CAGE_F_EXEC_HASHES;
use tracing::warn;

use super::{State, StateError};
use crate::{bpf::Tier, execwatch::ExecWatch};

impl State {
    /// The watch, if a cage with `flags` needs its processes watched (kill tier, content
    /// rules).
    fn watch_for(&self, flags: Option<u32>) -> Option<&ExecWatch> {
        let needed = self.kernel.caps.tier == Tier::Kill
            && flags.is_some_and(|f| f & CAGE_F_EXEC_HASHES != 0);
        self.exec_watch.as_deref().filter(|_| needed)
    }

    /// Before process `pid` enters `agent`'s cage (`cgroup_id`): its mount namespace is
    /// watched if the cage needs it; a process that cannot be watched, or an adopted one (its
    /// namespace may be shared with processes outside any cage), is refused.
    pub(super) fn watch_joiner(
        &self,
        agent: &str,
        cgroup_id: u64,
        pid: u32,
        adopting: bool,
    ) -> Result<(), StateError> {
        let Some(watch) = self.watch_for(self.maps.cage(cgroup_id).map(|c| c.flags)) else {
            return Ok(());
        };
        let refused = |source| StateError::Unwatchable {
            agent: agent.to_owned(),
            pid,
            source,
        };
        if adopting {
            return Err(refused(crate::execwatch::WatchError::Adopted { pid }));
        }
        watch.watch_process(pid).map(drop).map_err(refused)
    }

    /// Watches the mount namespaces of every process in `agent`'s cage and its containers'
    /// cages, if its `flags` (the settings it has or is about to get) need it. A process that
    /// cannot be watched is reported: its execs of content the daemon has not read are killed.
    pub(super) fn watch_cage(&self, agent: &str, flags: u32) {
        let Some(watch) = self.watch_for(Some(flags)) else {
            return;
        };
        let Some(cage) = self.registry.get(agent) else {
            return;
        };
        let dirs = std::iter::once(&cage.dir)
            .chain(self.containers.of_agent(cage.agent_id).map(|c| &c.dir));
        // One process per namespace is enough to mark it.
        let mut namespaces = BTreeMap::new();
        for pid in dirs.flat_map(|d| d.procs().unwrap_or_default()) {
            if let Ok(ns) = crate::execwatch::marks::namespace_of(pid) {
                namespaces.entry(ns).or_insert(pid);
            }
        }
        for pid in namespaces.into_values() {
            if let Err(e) = watch.watch_process(pid) {
                warn!(agent, pid, error = %e, "exec watch: this process's execs of files whose content the daemon has not read are killed");
            }
        }
    }
}
