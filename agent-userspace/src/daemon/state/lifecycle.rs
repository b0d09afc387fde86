//! A cage's life: made (or taken over from an earlier daemon) and enforced before any
//! process enters, held by clients, filled, and removed once empty and unheld.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt as _, sync::Arc};

use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};
use tracing::{info, warn};

use super::{registry::Cage, Held, State, StateError};
use crate::{
    cage::CgroupDir,
    caps,
    capture::ProcessNode,
    events::SessionAction,
    identity::AgentIdentity,
    policy::{kernel::CageMode, validate_agent_name, Rung},
};

impl State {
    /// Installs the kernel state for a cage directory; `strict` refuses agents the policy
    /// does not name (new cages), otherwise they are caged with nothing allowed (cages found
    /// from an earlier daemon, whose processes must never run unrestricted).
    pub(super) fn install(
        &mut self,
        agent: &str,
        dir: CgroupDir,
        strict: bool,
    ) -> Result<(), StateError> {
        let policy = Arc::clone(&self.policy);
        let compiled = self.compile_for(&policy, agent, strict, !strict, CageMode::default())?;
        let cgroup_id = dir.id()?;
        let agent_id = self.registry.agent_id(agent);
        let filled = self.fill(&policy, compiled)?;
        let flags = filled.settings.flags;
        let entries = self.switch_in(cgroup_id, agent_id, filled)?;
        if let Err(e) = self.dns_start(agent, cgroup_id) {
            self.dns_stop(cgroup_id);
            self.maps.remove_cage(cgroup_id);
            self.maps.clear_slot(&entries);
            return Err(e);
        }
        let events = dir.events_file();
        let watch = match self.inotify.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            Ok(w) => w,
            Err(source) => {
                self.dns_stop(cgroup_id);
                self.maps.remove_cage(cgroup_id);
                self.maps.clear_slot(&entries);
                return Err(StateError::Watch {
                    path: events,
                    source,
                });
            }
        };
        // A cage an earlier daemon left keeps the dynamic uid its processes hold.
        let dynamic = if strict {
            None
        } else {
            dir.procs()
                .ok()
                .and_then(|pids| self.users.of_processes(agent, &pids))
        };
        let now = crate::clock::boot_ns();
        let certificate = self.certificate_for(agent, false)?;
        let agent_policy = self.policy.agent(agent);
        self.containment.start(agent);
        self.budgets.start(agent, now);
        self.assertions.start(agent, agent_policy);
        self.registry.insert(
            agent,
            Cage {
                identity: AgentIdentity::for_agent(agent),
                agent_id,
                dir,
                cgroup_id,
                slot: entries,
                holds: 0,
                watch,
                started_unix_nano: crate::clock::now_unix_nano(),
                certificate,
                dynamic,
                joiners: HashMap::new(),
            },
        );
        // A cage an earlier daemon left: its processes' execs wait for this daemon now.
        self.watch_cage(agent, flags);
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
                self.containment.set_rung(&name, Rung::Paused);
                warn!(agent = %name, "cage left paused by an earlier daemon: agentcage resume {name} to thaw it");
            }
            found.push(name);
        }
        Ok(found)
    }

    /// The cage of `agent`, created (and enforced) if it does not exist yet.
    pub(super) fn ensure_cage(&mut self, agent: &str) -> Result<&Cage, StateError> {
        if self.stopping {
            return Err(StateError::Stopping);
        }
        validate_agent_name(agent)?;
        if !self.registry.contains(agent) {
            // Check the policy before touching the file system.
            let policy = Arc::clone(&self.policy);
            self.compile_for(&policy, agent, true, false, CageMode::default())?;
            let dir = self.root.ensure_cage(agent)?;
            // Limits first: no process may enter the cage before they hold.
            if let Err(e) = self
                .apply_limits(agent, &dir)
                .and_then(|()| self.install(agent, dir.clone(), true))
            {
                let _ = dir.remove();
                return Err(e);
            }
            info!(agent, identity = %AgentIdentity::for_agent(agent), policy_hash = self.policy.hash(), "cage created");
            self.publish_session(agent, SessionAction::Start);
        }
        self.registry
            .get(agent)
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))
    }

    /// Writes the policy's resource limits into the cage's cgroup files (a limit the policy
    /// no longer sets goes back to `max`), enabling the controllers they need first.
    pub(super) fn apply_limits(&self, agent: &str, dir: &CgroupDir) -> Result<(), StateError> {
        let limits = self
            .policy
            .agent(agent)
            .map(|p| p.limits)
            .unwrap_or_default();
        let wanted = limits.controllers();
        if !wanted.is_empty() {
            self.root.enable_controllers(&wanted)?;
        }
        let files = limits.files();
        for (file, unlimited) in [
            ("pids.max", "max"),
            ("memory.max", "max"),
            ("cpu.max", "max 100000"),
        ] {
            match files.iter().find(|(f, _)| *f == file) {
                Some((_, value)) => dir.write(file, value)?,
                // Lift an earlier limit, where the controller is on for the cage at all.
                None if dir.path().join(file).exists() => dir.write(file, unlimited)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Creates the cage if needed and holds it until [`Self::release`], granting the account
    /// the agent runs as (`requested` is `agentcage run --user`, `caller` the client's uid).
    /// An agent whose policy requires a behavior certificate is refused without a valid one.
    pub fn hold(
        &mut self,
        agent: &str,
        requested: Option<&str>,
        caller: u32,
    ) -> Result<Held, StateError> {
        validate_agent_name(agent)?;
        let certificate = self.certificate_for(agent, true)?;
        self.ensure_cage(agent)?;
        if let Some(cage) = self.registry.get_mut(agent) {
            cage.certificate = certificate;
        }
        let raw_sockets = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.egress.raw_sockets);
        let grant = match self.grant_account(agent, requested, caller) {
            Ok(g) => g,
            Err(e) => {
                // The cage may have been made for this request alone.
                self.remove_if_idle(agent);
                return Err(e);
            }
        };
        let held = Held {
            cgroup: String::new(),
            policy_hash: self.policy.hash().to_owned(),
            raw_sockets,
            policy_source: self.policy.source().to_owned(),
            record: self.requires_recording(agent),
            run_as: grant.clone(),
        };
        let cage = self
            .registry
            .get_mut(agent)
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        cage.holds += 1;
        *cage.joiners.entry(grant.joiner()).or_default() += 1;
        Ok(Held {
            cgroup: cage.dir.path().display().to_string(),
            ..held
        })
    }

    /// Whether the agent's policy requires its sessions to be recorded.
    pub(super) fn requires_recording(&self, agent: &str) -> bool {
        self.policy
            .agent(agent)
            .is_some_and(|p| p.record == crate::policy::Record::Always)
    }

    /// Drops one hold (and the account it granted); removes the cage if nothing holds it and
    /// it is empty.
    pub fn release(&mut self, agent: &str, joiner: crate::accounts::Joiner) {
        if let Some(cage) = self.registry.get_mut(agent) {
            if let Some(n) = cage.joiners.get_mut(&joiner) {
                *n -= 1;
                if *n == 0 {
                    cage.joiners.remove(&joiner);
                }
            }
        }
        self.drop_hold(agent);
    }

    /// Drops one hold (a run's or a container's); removes the cage if nothing holds it and
    /// it is empty.
    pub(super) fn drop_hold(&mut self, agent: &str) {
        if let Some(cage) = self.registry.get_mut(agent) {
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
        // An adopted process keeps its own terminal, which nothing records.
        if adopting && self.requires_recording(agent) {
            return Err(StateError::Usage(format!(
                "agent {agent:?} must be recorded (record: always in its policy), and an adopted \
                 process's terminal cannot be: start it with `agentcage run` instead"
            )));
        }
        // A joiner's account first (a run that skipped the switch is told so); an adopted
        // process is first checked for what may never be caged.
        if adopting {
            self.check_cageable(agent, pid, adopting)?;
            self.check_adoptable(agent, pid, owner)?;
            self.certificate_for(agent, true)?;
        } else {
            self.check_joiner(agent, pid)?;
            self.check_cageable(agent, pid, adopting)?;
        }
        let cgroup_id = self.ensure_cage(agent)?.cgroup_id;
        // Before it is caged (and may exec): where the cage judges content in the kill tier,
        // its execs must wait for the daemon to read them.
        self.watch_joiner(agent, cgroup_id, pid, adopting)?;
        let cage = self
            .registry
            .get(agent)
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        cage.dir.add_process(pid)?;
        let path = cage.dir.path().display().to_string();
        let agent_id = cage.agent_id;
        // Its fork happened outside the cage, so the tree learns of it here.
        let (ppid, program, argv) = process_info(pid);
        self.registry
            .tree(agent_id)
            .on_join(pid, ppid, program, argv, crate::clock::boot_ns());
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
        if self.holds_pid(pid).unwrap_or(true) {
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

    /// The processes of `agent`, alive and recently ended.
    pub fn processes(&self, agent: &str) -> Result<Vec<ProcessNode>, StateError> {
        self.registry
            .processes(agent)
            .ok_or_else(|| StateError::NoSuchAgent(agent.to_owned()))
    }

    /// Removes every cage that is empty and unheld (e.g. ones an earlier daemon left).
    pub fn tidy(&mut self) {
        for agent in self.registry.names_of_cages() {
            self.remove_if_idle(&agent);
        }
    }

    /// A cage's cgroup.events changed: remove the cage if it emptied and nothing holds it.
    pub fn on_watch(&mut self, watch: WatchDescriptor) {
        if self.on_container_watch(watch) {
            return;
        }
        if let Some(agent) = self.registry.watched(watch).map(str::to_owned) {
            self.remove_if_idle(&agent);
        }
    }

    fn remove_if_idle(&mut self, agent: &str) {
        let Some(cage) = self.registry.get(agent) else {
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
        // Tokens die with the session that asked for them.
        self.revoke_live(agent, "session ended");
        // Its last grants' reports, if their answers are still on their way, go first.
        self.dns_settle();
        self.publish_session(agent, SessionAction::End);
        if let Some(cage) = self.registry.remove(agent) {
            let _ = self.inotify.rm_watch(cage.watch);
            self.maps.remove_cage(cage.cgroup_id);
            self.dns_stop(cage.cgroup_id);
            self.containment.forget(agent);
            self.budgets.forget(agent);
            self.assertions.forget(agent);
            self.approvals.forget_cage(cage.cgroup_id);
            self.slots.retire(cage.slot, &mut self.maps);
            if let Some(user) = &cage.dynamic {
                self.users.release(agent, user);
            }
            info!(agent, "cage removed: its last process exited");
        }
    }

    /// Stops taking processes in, removes every empty cage, and returns the names of cages
    /// that still hold processes.
    pub fn shutdown(&mut self) -> Vec<String> {
        self.stopping = true;
        self.dns_settle();
        // Containers keep their agent's cage: their pins go on enforcing its slot.
        let holds: HashMap<u32, usize> = self
            .registry
            .iter()
            .map(|(_, c)| (c.agent_id, self.container_holds(c.agent_id)))
            .collect();
        for (_, cage) in self.registry.iter_mut() {
            cage.holds = holds.get(&cage.agent_id).copied().unwrap_or(0);
        }
        self.tidy();
        self.registry.names_of_cages()
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
