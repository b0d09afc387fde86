//! Containers as cages. A container keeps the cgroup its engine made (so the engine's memory
//! and CPU limits, its accounting, `docker stats`, a pod's limits, all stay the engine's);
//! that cgroup becomes one of the agent's cages: the agent's `CAGES` entry is copied to its
//! id, and the cgroup programs are attached to it as well (pinned, like the parent's). Every
//! switch of the agent's policy slot switches the containers' entries with it, containment
//! freezes and kills them with the agent's own cage, and each holds the agent's cage open.
//!
//! `agentcage-runtime` asks for this from an OCI `createRuntime` hook: the container's init
//! is in its cgroup and waits for the hook, so none of the container's own instructions has
//! run yet.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs,
    path::PathBuf,
};

use nix::sys::inotify::{AddWatchFlags, WatchDescriptor};
use tracing::{error, info};

use super::{State, StateError};
use crate::{
    bpf::{CgroupPrograms, PinnedLinks},
    cage::{cgroup_of_pid, CgroupDir},
    control::ContainerStatus,
    events::ContainerMeta,
    policy::{validate_agent_name, ExecMatch, Policy},
};

/// Why `agent`'s policy names files by path (which a container does not share with the
/// host), if it does.
fn path_rules(policy: &Policy, agent: &str) -> Option<String> {
    let p = policy.agent(agent)?;
    let by_path = p
        .exec
        .allow
        .iter()
        .chain(&p.exec.deny)
        .find_map(|m| match m {
            ExecMatch::Path(path) => Some(path.clone()),
            ExecMatch::Sha256(_) => None,
        });
    let why = if let Some(path) = by_path {
        format!("its exec rule {path} names a file of the host")
    } else if !p.files.is_empty() {
        "its file rules name files of the host".to_owned()
    } else if let Some(command) = p.approvals.exec.first() {
        format!("its approvals.exec {command:?} names a program of the host")
    } else {
        return None;
    };
    Some(format!(
        "{why}, which a container's image does not share, so the rule would not apply in \
         it; exec rules by content (sha256:) do"
    ))
}

/// How many removed containers' descriptions are kept for their late events.
const RECENT: usize = 1024;

/// A container whose cgroup is a cage of an agent.
pub(super) struct ContainerCage {
    pub(super) agent: String,
    pub(super) agent_id: u32,
    pub(super) meta: ContainerMeta,
    pub(super) dir: CgroupDir,
    /// The cgroup's path as /proc/PID/cgroup shows it.
    relative: String,
    pub(super) cgroup_id: u64,
    links: PinnedLinks,
    watch: WatchDescriptor,
}

/// What attaching the programs to a container's cgroup needs, known once they are loaded.
struct Attach {
    programs: CgroupPrograms,
    /// `<pin dir>/containers`: one directory per container cgroup below it.
    pin_dir: PathBuf,
    tag: String,
    app_socket: PathBuf,
    /// One JSON record per caged container, for the next daemon to take it over.
    records: PathBuf,
}

/// What a daemon leaves for the next one about a caged container.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    agent: String,
    container: ContainerMeta,
    cgroup: PathBuf,
    cgroup_id: u64,
}

/// Every caged container, by cgroup id.
#[derive(Default)]
pub(crate) struct Containers {
    by_cgroup: BTreeMap<u64, ContainerCage>,
    watches: HashMap<WatchDescriptor, u64>,
    recent: VecDeque<(u64, ContainerMeta)>,
    attach: Option<Attach>,
}

impl Containers {
    /// The container an event's cgroup belongs to, also shortly after it was removed.
    pub(super) fn meta_of(&self, cgroup_id: u64) -> Option<&ContainerMeta> {
        self.by_cgroup.get(&cgroup_id).map(|c| &c.meta).or_else(|| {
            self.recent
                .iter()
                .rev()
                .find(|(id, _)| *id == cgroup_id)
                .map(|(_, m)| m)
        })
    }

    /// The caged containers of agent number `agent_id`.
    pub(super) fn of_agent(&self, agent_id: u32) -> impl Iterator<Item = &ContainerCage> {
        self.by_cgroup
            .values()
            .filter(move |c| c.agent_id == agent_id)
    }

    /// The agent whose container cgroup (as /proc/PID/cgroup shows it) holds `relative`.
    pub(super) fn agent_of_cgroup(&self, relative: &str) -> Option<&str> {
        self.by_cgroup
            .values()
            .find(|c| {
                relative == c.relative
                    || relative
                        .strip_prefix(&c.relative)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|c| c.agent.as_str())
    }
}

impl State {
    /// Lets containers be caged: the loaded cgroup programs, where their links are pinned
    /// (a directory below the daemon's pin directory), the application socket that
    /// containers get, and where their records are kept (`records`, beside the sockets).
    pub fn enable_containers(
        &mut self,
        programs: CgroupPrograms,
        (pin_dir, tag): (PathBuf, String),
        app_socket: PathBuf,
        records: PathBuf,
    ) {
        self.containers.attach = Some(Attach {
            programs,
            pin_dir: pin_dir.join("containers"),
            tag,
            app_socket,
            records,
        });
    }

    /// Takes over the containers an earlier daemon caged (their pinned links kept them
    /// enforced): the agent's entry for their cgroups, this daemon's links, then the earlier
    /// links released. Records of containers gone since are dropped. Returns the ids.
    pub fn adopt_containers(&mut self) -> Vec<String> {
        let Some(attach) = &self.containers.attach else {
            return Vec::new();
        };
        let (records, pins) = (attach.records.clone(), attach.pin_dir.clone());
        let mut taken = Vec::new();
        for entry in fs::read_dir(&records).into_iter().flatten().flatten() {
            let path = entry.path();
            let record: Option<Record> = fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok());
            let Some(r) = record else {
                let _ = fs::remove_file(&path);
                continue;
            };
            let dir = CgroupDir::new(r.cgroup.clone());
            let live = dir.id().ok() == Some(r.cgroup_id) && dir.populated().unwrap_or(false);
            let old_pins = pins.join(r.cgroup_id.to_string());
            if !live {
                let _ = fs::remove_file(&path);
                crate::bpf::release_pinned(&old_pins, "");
                let _ = fs::remove_dir(&old_pins);
                continue;
            }
            let id = r.container.id.clone();
            match self.take_over(r, dir) {
                Ok(()) => {
                    crate::bpf::release_pinned(&old_pins, &self.tag_of_containers());
                    taken.push(id);
                }
                // The earlier links stay: the container stays enforced by the last policy.
                Err(e) => {
                    error!(container = id, error = %e, "could not take over a caged container")
                }
            }
        }
        taken
    }

    fn tag_of_containers(&self) -> String {
        self.containers
            .attach
            .as_ref()
            .map(|a| a.tag.clone())
            .unwrap_or_default()
    }

    /// Cages a container's cgroup for `r.agent` again under this daemon.
    fn take_over(&mut self, r: Record, dir: CgroupDir) -> Result<(), StateError> {
        if !self.registry.contains(&r.agent) {
            // An agent the policy may no longer know: caged all the same, nothing allowed.
            let own = self.root.ensure_cage(&r.agent)?;
            self.install(&r.agent, own, false)?;
        }
        let relative = format!(
            "/{}",
            dir.path()
                .strip_prefix(self.cgroup_mount()?)
                .map_err(|_| StateError::NoCage(r.agent.clone()))?
                .display()
        );
        let agent = r.agent.clone();
        self.cage_cgroup(&r.agent, r.container, dir, relative, r.cgroup_id)?;
        // Its processes' execs wait for this daemon now, as the agent's own cage's do.
        if let Some(config) = self.maps.cage(r.cgroup_id) {
            self.watch_cage(&agent, config.flags);
        }
        Ok(())
    }

    /// The cgroup2 mount (the parent of the cages' parent).
    fn cgroup_mount(&self) -> Result<&std::path::Path, StateError> {
        self.root
            .dir()
            .path()
            .parent()
            .ok_or_else(|| StateError::Usage("the cgroup2 mount is unknown".into()))
    }

    /// Whether `agent` may run in a container: what `agentcage-runtime` asks before the
    /// engine creates one. Returns whether raw sockets are allowed and the application
    /// socket.
    pub fn container_prepare(&mut self, agent: &str) -> Result<(bool, String), StateError> {
        if self.stopping {
            return Err(StateError::Stopping);
        }
        validate_agent_name(agent)?;
        let app_socket = self
            .containers
            .attach
            .as_ref()
            .map(|a| a.app_socket.display().to_string())
            .ok_or_else(|| StateError::Usage("agentcaged is still starting".into()))?;
        self.refuse_recorded(agent)?;
        // Refuses an unknown agent, or one whose policy this kernel cannot enforce.
        let policy = std::sync::Arc::clone(&self.policy);
        self.compile_for(
            &policy,
            agent,
            true,
            false,
            crate::policy::kernel::CageMode::default(),
        )?;
        let raw = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.egress.raw_sockets);
        Ok((raw, app_socket))
    }

    /// Refuses an agent whose policy a container cannot be held to: a recorded terminal
    /// (the container's is the engine's), or rules naming files by path (they are resolved
    /// on the host's file system, which a container's image does not share, so they would
    /// silently not apply).
    fn refuse_recorded(&self, agent: &str) -> Result<(), StateError> {
        if self.requires_recording(agent) {
            return Err(StateError::Usage(format!(
                "agent {agent:?} must be recorded (record: always in its policy), and a \
                 container's terminal cannot be: start it with `agentcage run` instead"
            )));
        }
        if let Some(why) = path_rules(&self.policy, agent) {
            return Err(StateError::Usage(format!(
                "agent {agent:?} cannot run in a container: {why}"
            )));
        }
        Ok(())
    }

    /// Refuses a policy that would give an agent with caged containers rules by path.
    pub(super) fn check_container_policy(&self, policy: &Policy) -> Result<(), StateError> {
        for c in self.containers.by_cgroup.values() {
            if let Some(why) = path_rules(policy, &c.agent) {
                return Err(StateError::Usage(format!(
                    "agent {:?} has caged containers (container {}): {why}",
                    c.agent, c.meta.id
                )));
            }
        }
        Ok(())
    }

    /// Makes the cgroup of `pid` (a container's init, alone in the cgroup its engine made)
    /// a cage of `agent`. Returns the cgroup's directory.
    pub fn cage_container(
        &mut self,
        agent: &str,
        pid: u32,
        meta: ContainerMeta,
    ) -> Result<String, StateError> {
        if self.stopping {
            return Err(StateError::Stopping);
        }
        validate_agent_name(agent)?;
        let refuse = |why: String| StateError::Container {
            id: meta.id.clone(),
            why,
        };
        meta.validate().map_err(&refuse)?;
        self.refuse_recorded(agent)?;
        let relative = cgroup_of_pid(pid).map_err(|_| StateError::NoProcess(pid))?;
        let (dir, cgroup_id) = self.container_cgroup(pid, &relative).map_err(&refuse)?;
        let agent_cgroup = self.ensure_cage(agent)?.cgroup_id;
        // Before it is caged: where the agent's rules judge content in the kill tier, the
        // container's execs wait for the daemon to read them (its mount namespace is its own).
        self.watch_joiner(agent, agent_cgroup, pid, false)?;
        self.cage_cgroup(agent, meta, dir, relative, cgroup_id)
    }

    /// Makes `dir` a cage of `agent` (whose own cage exists): its entry, its links, its
    /// watch, its record; holds the agent's cage.
    fn cage_cgroup(
        &mut self,
        agent: &str,
        meta: ContainerMeta,
        dir: CgroupDir,
        relative: String,
        cgroup_id: u64,
    ) -> Result<String, StateError> {
        let agent_cgroup = self
            .registry
            .get(agent)
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?
            .cgroup_id;
        let agent_id = self.registry.agent_id(agent);
        let config = self
            .maps
            .cage(agent_cgroup)
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        let Some(attach) = &self.containers.attach else {
            return Err(StateError::Usage("agentcaged is still starting".into()));
        };
        // The entry first: the programs deny a caller in no known cage.
        self.maps.set_cage(cgroup_id, config)?;
        let pins = attach.pin_dir.join(cgroup_id.to_string());
        let links = match attach.programs.attach(dir.path(), &pins, &attach.tag) {
            Ok(l) => l,
            Err(e) => {
                self.maps.remove_cage(cgroup_id);
                return Err(e.into());
            }
        };
        let events = dir.events_file();
        let watch = match self.inotify.add_watch(&events, AddWatchFlags::IN_MODIFY) {
            Ok(w) => w,
            Err(source) => {
                links.detach();
                self.maps.remove_cage(cgroup_id);
                return Err(StateError::Watch {
                    path: events,
                    source,
                });
            }
        };
        if let Some(cage) = self.registry.get_mut(agent) {
            cage.holds += 1;
        }
        self.approvals.mirror(agent_cgroup, cgroup_id);
        let record = Record {
            agent: agent.to_owned(),
            container: meta.clone(),
            cgroup: dir.path().to_path_buf(),
            cgroup_id,
        };
        if let Err(e) = fs::create_dir_all(&attach.records).and_then(|()| {
            fs::write(
                attach.records.join(format!("{cgroup_id}.json")),
                serde_json::to_vec(&record).unwrap_or_default(),
            )
        }) {
            // The container is caged; only a later daemon could not take it over (its pins
            // keep it enforced with this daemon's last policy).
            error!(container = meta.id, error = %e, "could not record the caged container");
        }
        let path = dir.path().display().to_string();
        info!(agent, container = meta.id, name = ?meta.name, image = ?meta.image, pod = ?meta.pod, cgroup = %path, "container caged");
        self.containers.watches.insert(watch, cgroup_id);
        self.containers.by_cgroup.insert(
            cgroup_id,
            ContainerCage {
                agent: agent.to_owned(),
                agent_id,
                meta,
                dir,
                relative,
                cgroup_id,
                links,
                watch,
            },
        );
        Ok(path)
    }

    /// The container's cgroup, checked to be a container's own: not the root, not a cage or
    /// the daemon's, holding `pid` alone and no child cgroup, not caged yet.
    fn container_cgroup(&self, pid: u32, relative: &str) -> Result<(CgroupDir, u64), String> {
        if relative == "/" {
            return Err("its init is in the root cgroup".into());
        }
        if relative.split('/').any(|c| c == "..") {
            return Err(format!(
                "its cgroup {relative} is outside agentcaged's cgroup namespace: run agentcaged \
                 in the host's"
            ));
        }
        if self.root.holds_pid(pid).unwrap_or(true) {
            return Err("its init is in an agentcage cage already".into());
        }
        if cgroup_of_pid(std::process::id()).ok().as_deref() == Some(relative) {
            return Err("its init is in agentcaged's own cgroup".into());
        }
        let mount = self.cgroup_mount().map_err(|e| e.to_string())?;
        let dir = CgroupDir::new(mount.join(relative.trim_start_matches('/')));
        let procs = dir.procs().map_err(|e| e.to_string())?;
        if procs != [pid] {
            return Err(format!(
                "its cgroup {} holds other processes ({procs:?}) than its init {pid}: a \
                 container's cage must be a cgroup of its own",
                dir.path().display()
            ));
        }
        let has_children = fs::read_dir(dir.path())
            .map_err(|e| e.to_string())?
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()));
        if has_children {
            return Err(format!(
                "its cgroup {} has child cgroups",
                dir.path().display()
            ));
        }
        let id = dir.id().map_err(|e| e.to_string())?;
        if self.containers.by_cgroup.contains_key(&id) {
            return Err("its cgroup is caged already".into());
        }
        Ok((dir, id))
    }

    /// Gives the agent's containers the configuration its own cage just got. A container
    /// whose entry cannot be switched is frozen: its old slot is about to be emptied.
    pub(super) fn switch_containers(
        &mut self,
        agent_id: u32,
        config: agent_common::cage::CageConfig,
    ) {
        let ids: Vec<(u64, CgroupDir)> = self
            .containers
            .of_agent(agent_id)
            .map(|c| (c.cgroup_id, c.dir.clone()))
            .collect();
        for (id, dir) in ids {
            if let Err(e) = self.maps.set_cage(id, config) {
                let frozen = crate::runtime::containment::freeze(&dir).is_ok();
                error!(cgroup = %dir.path().display(), error = %e, frozen, "container kept an old policy slot; frozen");
            }
        }
    }

    /// The cgroups of the agent's containers, for containment.
    pub(super) fn container_dirs(&self, agent: &str) -> Vec<CgroupDir> {
        let Some(id) = self.registry.get(agent).map(|c| c.agent_id) else {
            return Vec::new();
        };
        self.containers
            .of_agent(id)
            .map(|c| c.dir.clone())
            .collect()
    }

    /// The agent's containers, for `status`.
    pub(super) fn container_status(&self, agent_id: u32) -> Vec<ContainerStatus> {
        self.containers
            .of_agent(agent_id)
            .map(|c| {
                let stats = self.maps.stats(c.cgroup_id);
                ContainerStatus {
                    container: c.meta.clone(),
                    cgroup: c.dir.path().display().to_string(),
                    cgroup_id: c.cgroup_id,
                    pids: c.dir.procs().unwrap_or_default(),
                    allowed: stats.allowed,
                    denied: stats.denied,
                }
            })
            .collect()
    }

    /// Decisions the kernel allowed for the agent's containers.
    pub(super) fn containers_allowed(&self, agent_id: u32) -> u64 {
        self.containers
            .of_agent(agent_id)
            .map(|c| self.maps.stats(c.cgroup_id).allowed)
            .sum()
    }

    /// How many containers hold each agent's cage (kept across shutdown: the pins keep
    /// them enforced).
    pub(super) fn container_holds(&self, agent_id: u32) -> usize {
        self.containers.of_agent(agent_id).count()
    }

    /// Whether process `pid` is in any cage: an agent's own, or a container's.
    pub fn holds_pid(&self, pid: u32) -> Result<bool, crate::cage::CageError> {
        if self.root.holds_pid(pid)? {
            return Ok(true);
        }
        if self.containers.by_cgroup.is_empty() {
            return Ok(false);
        }
        Ok(self.agent_of_pid_container(pid)?.is_some())
    }

    /// The agent whose container cage holds `pid`, if one does.
    pub fn agent_of_pid_container(
        &self,
        pid: u32,
    ) -> Result<Option<String>, crate::cage::CageError> {
        Ok(self.container_agent(&cgroup_of_pid(pid)?))
    }

    /// The agent whose container cage is (or holds) the cgroup `relative` (as
    /// /proc/PID/cgroup shows it).
    pub fn container_agent(&self, relative: &str) -> Option<String> {
        self.containers.agent_of_cgroup(relative).map(str::to_owned)
    }

    /// Puts back the links of any container someone detached (root outside every cage can)
    /// with a fresh set, before the old pins go; freezes the container if it cannot, rather
    /// than let it run unjudged.
    pub fn watch_container_links(&mut self) {
        let Containers {
            by_cgroup, attach, ..
        } = &mut self.containers;
        let Some(attach) = attach else { return };
        for c in by_cgroup.values_mut() {
            let missing = match attach.programs.missing(c.dir.path()) {
                Ok(m) if m.is_empty() => continue,
                Ok(m) => m,
                // Gone or going: the watch on its cgroup.events handles that.
                Err(_) => continue,
            };
            error!(container = c.meta.id, programs = ?missing, "programs were detached from a caged container; re-attaching");
            let tag = format!("{}-{}", attach.tag, crate::clock::boot_ns());
            match attach.programs.attach(c.dir.path(), c.links.dir(), &tag) {
                Ok(fresh) => {
                    std::mem::replace(&mut c.links, fresh).detach();
                    tracing::warn!(container = c.meta.id, "container's programs re-attached");
                }
                Err(e) => {
                    let frozen = crate::runtime::containment::freeze(&c.dir).is_ok();
                    error!(container = c.meta.id, error = %e, frozen, "could not re-attach a container's programs; it is frozen");
                }
            }
        }
    }

    /// A container's cgroup.events changed: once it is empty, the cgroup stops being a cage
    /// and lets go of the agent's. Returns whether the watch was a container's.
    pub(super) fn on_container_watch(&mut self, watch: WatchDescriptor) -> bool {
        let Some(&id) = self.containers.watches.get(&watch) else {
            return false;
        };
        let populated = self
            .containers
            .by_cgroup
            .get(&id)
            .is_some_and(|c| c.dir.populated().unwrap_or(false));
        if populated {
            return true;
        }
        self.containers.watches.remove(&watch);
        let Some(c) = self.containers.by_cgroup.remove(&id) else {
            return true;
        };
        let _ = self.inotify.rm_watch(c.watch);
        self.maps.remove_cage(id);
        self.approvals.unmirror(id);
        c.links.detach();
        if let Some(a) = &self.containers.attach {
            let _ = fs::remove_file(a.records.join(format!("{id}.json")));
        }
        info!(
            agent = c.agent,
            container = c.meta.id,
            "container uncaged: its last process exited"
        );
        if self.containers.recent.len() >= RECENT {
            self.containers.recent.pop_front();
        }
        self.containers.recent.push_back((id, c.meta));
        // The hold the container took on the agent's cage.
        self.drop_hold(&c.agent);
        true
    }
}
