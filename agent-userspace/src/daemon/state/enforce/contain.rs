//! Containment: moving a cage along the ladder (kernel maps for the egress rungs, cgroup
//! files for pause and kill) and the forensic snapshot.

use std::{path::PathBuf, sync::Arc};

use tracing::{error, warn};

use super::super::{State, StateError};
use crate::{
    events::{ContainmentDetail, Event, EventDetail},
    runtime::{
        containment::{self, SnapshotInfo},
        Rung,
    },
};

/// What a containment request did.
#[derive(Clone, Debug)]
pub struct Contained {
    /// The agent.
    pub agent: String,
    /// The rung now in force.
    pub rung: Rung,
    /// The rung before.
    pub previous: Rung,
    /// The forensic snapshot, when one was written.
    pub snapshot: Option<PathBuf>,
}

impl State {
    /// Moves the agent's cage to `rung`: the kernel maps for observe, read-only and
    /// approval-required; freeze and snapshot for paused; freeze, snapshot and kill for
    /// killed. `reason` goes on the event and into the snapshot.
    pub fn contain(
        &mut self,
        agent: &str,
        rung: Rung,
        reason: &str,
    ) -> Result<Contained, StateError> {
        let dir = self
            .cages
            .get(agent)
            .map(|c| c.dir.clone())
            .ok_or_else(|| StateError::NoCage(agent.to_owned()))?;
        let previous = self.runtimes.get(agent).map_or(Rung::Observe, |r| r.rung);
        let mut snapshot = None;
        match rung {
            Rung::Observe | Rung::ReadOnly | Rung::ApprovalRequired => {
                self.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    self.set_rung(agent, previous);
                    return Err(e);
                }
                if previous >= Rung::Paused {
                    containment::thaw(&dir)?;
                }
            }
            Rung::Paused => {
                // Narrow the kernel state first, so that a thaw by anyone else still finds
                // the cage restricted; then freeze, then look.
                self.set_rung(agent, rung);
                if let Err(e) = self.rekey(agent) {
                    warn!(agent, error = %e, "could not narrow egress before pausing");
                }
                containment::freeze(&dir)?;
                snapshot = self.write_snapshot(agent, &dir, rung, reason);
            }
            Rung::Killed => {
                self.set_rung(agent, rung);
                // The kill switch must kill: a failed freeze or snapshot is logged, not fatal.
                if let Err(e) = containment::freeze(&dir) {
                    error!(agent, error = %e, "freeze before kill failed; killing anyway");
                }
                snapshot = self.write_snapshot(agent, &dir, rung, reason);
                containment::kill(&dir)?;
            }
        }
        warn!(agent, rung = %rung, previous = %previous, reason, snapshot = ?snapshot, "containment");
        self.publish(
            agent,
            0,
            EventDetail::Containment(ContainmentDetail {
                rung: rung.name().to_owned(),
                previous: previous.name().to_owned(),
                reason: reason.to_owned(),
                snapshot: snapshot.as_ref().map(|p| p.display().to_string()),
            }),
        );
        Ok(Contained {
            agent: agent.to_owned(),
            rung,
            previous,
            snapshot,
        })
    }

    pub(super) fn set_rung(&mut self, agent: &str, rung: Rung) {
        if let Some(rt) = self.runtimes.get_mut(agent) {
            rt.rung = rung;
        }
    }

    /// Thaws a paused cage and puts it back on observe, lifting any budget throttle (a person
    /// decided the agent may go on; the budgets throttle again at the next use over them).
    pub fn resume(&mut self, agent: &str, who: &str) -> Result<Contained, StateError> {
        if let Some(rt) = self.runtimes.get_mut(agent) {
            rt.throttled = false;
            rt.throttled_at_ns = None;
            rt.meter.rearm();
        }
        self.contain(agent, Rung::Observe, &format!("resumed by {who}"))
    }

    /// The kill switch: kills every cage. Returns each agent with its outcome.
    pub fn kill_all(&mut self, who: &str) -> Vec<(String, Result<Contained, StateError>)> {
        let agents: Vec<String> = self.cages.keys().cloned().collect();
        agents
            .into_iter()
            .map(|a| {
                let r = self.contain(&a, Rung::Killed, &format!("kill switch ({who})"));
                (a, r)
            })
            .collect()
    }

    pub(super) fn write_snapshot(
        &self,
        agent: &str,
        dir: &crate::cage::CgroupDir,
        rung: Rung,
        reason: &str,
    ) -> Option<PathBuf> {
        let events: Vec<Arc<Event>> = self
            .runtimes
            .get(agent)
            .map(|r| r.recent.iter().cloned().collect())
            .unwrap_or_default();
        let recordings = crate::recording::live(&self.recording_dir, agent);
        let info = SnapshotInfo {
            agent,
            rung,
            reason,
            policy_hash: self.policy.hash(),
            events: &events,
            recordings: &recordings,
        };
        match containment::snapshot(&self.snapshot_dir, dir, &info) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(agent, error = %e, "forensic snapshot failed");
                None
            }
        }
    }

    pub(super) fn contain_logged(&mut self, agent: &str, rung: Rung, reason: &str) {
        if let Err(e) = self.contain(agent, rung, reason) {
            error!(agent, rung = %rung, reason, error = %e, "containment failed");
        }
    }
}
