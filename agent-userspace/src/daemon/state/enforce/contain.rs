//! Containment: moving a cage along the ladder. The egress rungs are kernel map swaps; pause
//! and kill freeze the cage under the state lock (milliseconds), answer, and leave the
//! forensic snapshot and the kill to a [`ContainJob`] that runs outside every lock, so the
//! event reader and both sockets never wait for it.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::super::{State, StateError};
use crate::{
    cage::CgroupDir,
    events::{ContainmentDetail, Event, EventDetail},
    runtime::{containment, snapshot::SnapshotPlan, tally::Tally, Rung},
};

/// Each agent's rung, its last events (for snapshots) and its recent denials (for the
/// deny-rate anomaly).
pub(crate) struct ContainmentState {
    rungs: HashMap<String, Rung>,
    recent: HashMap<String, VecDeque<Arc<Event>>>,
    denials: HashMap<String, Tally>,
    snapshot_dir: PathBuf,
    /// Where recordings the policy requires are made; a snapshot includes the live ones.
    recording_dir: PathBuf,
    jobs: mpsc::UnboundedSender<ContainJob>,
}

impl ContainmentState {
    pub(crate) fn new(
        snapshot_dir: PathBuf,
        recording_dir: PathBuf,
        jobs: mpsc::UnboundedSender<ContainJob>,
    ) -> Self {
        Self {
            rungs: HashMap::new(),
            recent: HashMap::new(),
            denials: HashMap::new(),
            snapshot_dir,
            recording_dir,
            jobs,
        }
    }

    /// A new session starts on observe.
    pub(crate) fn start(&mut self, agent: &str) {
        self.rungs.insert(agent.to_owned(), Rung::Observe);
    }

    /// The session ended.
    pub(crate) fn forget(&mut self, agent: &str) {
        self.rungs.remove(agent);
        self.recent.remove(agent);
        self.denials.remove(agent);
    }

    /// The agent's rung (observe when it has no session).
    pub(crate) fn rung(&self, agent: &str) -> Rung {
        self.rungs.get(agent).copied().unwrap_or_default()
    }

    /// Whether the agent has a session.
    pub(crate) fn has(&self, agent: &str) -> bool {
        self.rungs.contains_key(agent)
    }

    pub(crate) fn set_rung(&mut self, agent: &str, rung: Rung) {
        if let Some(r) = self.rungs.get_mut(agent) {
            *r = rung;
        }
    }

    /// Keeps `event` among the agent's last `keep`.
    pub(crate) fn remember(&mut self, agent: &str, event: Arc<Event>, keep: usize) {
        if !self.rungs.contains_key(agent) {
            return;
        }
        let recent = self.recent.entry(agent.to_owned()).or_default();
        while recent.len() >= keep.max(1) {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    /// Counts `n` denials at `now`; true when `denials` fell within `window` ns and the
    /// rate can still act (`acting`: the agent is below the rung it leads to); the count
    /// then starts again.
    pub(crate) fn denial_rate_reached(
        &mut self,
        agent: &str,
        (now, n): (u64, u64),
        window: u64,
        denials: u32,
        acting: bool,
    ) -> bool {
        let d = self.denials.entry(agent.to_owned()).or_default();
        if d.add(now, n, window) >= u64::from(denials) && acting {
            d.clear();
            return true;
        }
        false
    }
}

/// What a containment request did.
#[derive(Debug)]
pub struct Contained {
    /// The agent.
    pub agent: String,
    /// The rung now in force.
    pub rung: Rung,
    /// The rung before.
    pub previous: Rung,
    /// The forensic snapshot being written, when one is.
    pub snapshot: Option<PathBuf>,
    /// Resolves when the snapshot is written and, for a kill, the cage is empty.
    pub done: Option<oneshot::Receiver<JobOutcome>>,
}

/// The slow half of pause and kill, run outside every lock: the snapshot of the frozen cage,
/// then for a kill `cgroup.kill` and the wait until the cage is empty.
pub struct ContainJob {
    agent: String,
    dir: CgroupDir,
    plan: SnapshotPlan,
    kill: bool,
    done: oneshot::Sender<JobOutcome>,
}

/// How a containment job ended.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    /// The agent.
    pub agent: String,
    /// The snapshot written, if it was.
    pub snapshot: Option<PathBuf>,
    /// For a kill: whether the cage is empty now.
    pub emptied: bool,
    /// What failed, if anything did.
    pub error: Option<String>,
}

impl ContainJob {
    /// Writes the snapshot and, for a kill, kills; blocks (run it on a blocking thread).
    pub fn run(self) {
        let mut outcome = JobOutcome {
            agent: self.agent,
            snapshot: None,
            emptied: false,
            error: None,
        };
        match self.plan.write(&self.dir) {
            Ok(p) => outcome.snapshot = Some(p),
            Err(e) => {
                // The kill switch must kill: a failed snapshot is reported, not fatal.
                error!(agent = outcome.agent, error = %e, "forensic snapshot failed");
                outcome.error = Some(format!("snapshot: {e}"));
            }
        }
        if self.kill {
            // The containers first: the agent's own cage may be removed once it empties.
            for dir in &self.plan.containers {
                if let Err(e) = containment::kill(dir) {
                    error!(agent = outcome.agent, cgroup = %dir.path().display(), error = %e, "kill of a container failed");
                    outcome.error = Some(format!("kill: {e}"));
                }
            }
            match containment::kill(&self.dir) {
                Ok(()) => outcome.emptied = true,
                Err(e) => {
                    error!(agent = outcome.agent, error = %e, "kill failed");
                    outcome.error = Some(format!("kill: {e}"));
                }
            }
        }
        // Nobody may be waiting (a containment the daemon decided itself).
        let _ = self.done.send(outcome);
    }
}

impl State {
    /// Moves the agent's cage to `rung`: the kernel maps for observe, read-only and
    /// approval-required; for paused and killed also a freeze, and a job for the snapshot
    /// (and the kill) that runs once the state lock is released.
    pub fn contain(
        &mut self,
        agent: &str,
        rung: Rung,
        reason: &str,
    ) -> Result<Contained, StateError> {
        let (contained, job) = self.contain_now(agent, rung, reason)?;
        if let Some(job) = job {
            self.queue(job);
        }
        Ok(contained)
    }

    /// The part of [`Self::contain`] done under the lock; the job is the caller's to queue.
    fn contain_now(
        &mut self,
        agent: &str,
        rung: Rung,
        reason: &str,
    ) -> Result<(Contained, Option<ContainJob>), StateError> {
        let dir = self
            .registry
            .get(agent)
            .map(|c| c.dir.clone())
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        let previous = self.containment.rung(agent);
        // Credentials are for observe only: revoked before the rung changes anything else.
        if rung > Rung::Observe {
            self.revoke_live(agent, &format!("containment: {rung}"));
        }
        let containers = self.container_dirs(agent);
        let mut job = None;
        match rung {
            Rung::Observe | Rung::ReadOnly | Rung::ApprovalRequired => {
                self.containment.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    self.containment.set_rung(agent, previous);
                    return Err(e);
                }
                if previous >= Rung::Paused {
                    for c in &containers {
                        containment::thaw(c)?;
                    }
                    containment::thaw(&dir)?;
                }
            }
            Rung::Paused | Rung::Killed => {
                // Narrow the kernel state first, so that a thaw by anyone else still finds
                // the cage restricted; then freeze; the snapshot looks at it later.
                self.containment.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    warn!(agent, error = %e, "could not narrow egress before freezing");
                }
                let kill = rung == Rung::Killed;
                for d in containers.iter().chain(std::iter::once(&dir)) {
                    if let Err(e) = containment::freeze(d) {
                        if !kill {
                            return Err(e.into());
                        }
                        // The kill switch must kill: a failed freeze is logged, not fatal.
                        error!(agent, cgroup = %d.path().display(), error = %e, "freeze before kill failed; killing anyway");
                    }
                }
                let events = self.containment.recent(agent);
                let mut plan = SnapshotPlan::new(
                    &self.containment.snapshot_dir,
                    agent,
                    rung,
                    reason,
                    self.policy.hash(),
                    events,
                );
                plan.recording_dir = Some(self.containment.recording_dir.clone());
                plan.containers = containers;
                let (tx, rx) = oneshot::channel();
                job = Some((
                    ContainJob {
                        agent: agent.to_owned(),
                        dir,
                        plan,
                        kill,
                        done: tx,
                    },
                    rx,
                ));
            }
        }
        let snapshot = job.as_ref().map(|(j, _)| j.plan.path.clone());
        warn!(agent, rung = %rung, previous = %previous, reason, snapshot = ?snapshot, "containment");
        self.publish(
            agent,
            0,
            EventDetail::Containment(ContainmentDetail {
                rung: rung.into(),
                previous: previous.into(),
                reason: reason.to_owned(),
                snapshot: snapshot.as_ref().map(|p| p.display().to_string()),
            }),
        );
        let (job, done) = job.map_or((None, None), |(j, rx)| (Some(j), Some(rx)));
        Ok((
            Contained {
                agent: agent.to_owned(),
                rung,
                previous,
                snapshot,
                done,
            },
            job,
        ))
    }

    /// Hands a job to the containment worker; without one (shutting down) the cage stays
    /// frozen, which fails closed.
    fn queue(&self, job: ContainJob) {
        if let Err(e) = self.containment.jobs.send(job) {
            error!(
                agent = e.0.agent,
                "containment worker gone: the cage stays frozen"
            );
        }
    }

    /// Thaws a paused cage and puts it back on observe, lifting any budget throttle (a person
    /// decided the agent may go on; the budgets throttle again at the next use over them).
    pub fn resume(&mut self, agent: &str, who: &str) -> Result<Contained, StateError> {
        self.budgets.unthrottle(agent);
        self.contain(agent, Rung::Observe, &format!("resumed by {who}"))
    }

    /// The kill switch: freezes every cage first, then queues their snapshots and kills.
    pub fn kill_all(&mut self, who: &str) -> Vec<(String, Result<Contained, StateError>)> {
        let reason = format!("kill switch ({who})");
        let mut jobs = Vec::new();
        let mut out = Vec::new();
        for agent in self.registry.names_of_cages() {
            let r = self
                .contain_now(&agent, Rung::Killed, &reason)
                .map(|(c, job)| {
                    jobs.extend(job);
                    c
                });
            out.push((agent, r));
        }
        for job in jobs {
            self.queue(job);
        }
        out
    }

    pub(super) fn contain_logged(&mut self, agent: &str, rung: Rung, reason: &str) {
        if let Err(e) = self.contain(agent, rung, reason) {
            error!(agent, rung = %rung, reason, error = %e, "containment failed");
        }
    }
}

impl ContainmentState {
    /// The agent's last events, oldest first.
    fn recent(&self, agent: &str) -> Vec<Arc<Event>> {
        self.recent
            .get(agent)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}
