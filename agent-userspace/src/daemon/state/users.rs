//! The accounts agents run as: granting one to each `agentcage run` (a dynamic uid is
//! allocated with the cage's first such run and released with the cage), and checking that a
//! process joining or adopted into a cage holds an account its policy allows.

use std::collections::HashSet;

use super::{State, StateError};
use crate::{
    accounts::{self, RunAsGrant},
    policy::{Account, RunAs},
};

impl State {
    /// The account `agent`'s run gets: the policy's `run_as` narrowed by `requested`
    /// (`--user`), resolved for a client of uid `caller`. The cage exists.
    pub(super) fn grant_account(
        &mut self,
        agent: &str,
        requested: Option<&str>,
        caller: u32,
    ) -> Result<RunAsGrant, StateError> {
        let run_as = self.run_as(agent);
        let account = run_as.choose(requested).map_err(StateError::Usage)?;
        if account == Account::Dynamic {
            self.ensure_dynamic(agent, caller)?;
        }
        let dynamic = self.registry.get(agent).and_then(|c| c.dynamic.as_ref());
        Ok(accounts::grant(agent, &account, caller, dynamic)?)
    }

    /// The cage's dynamic uid, allocated on first use. Only root may start a process under
    /// it, so nothing is allocated for another caller.
    fn ensure_dynamic(&mut self, agent: &str, caller: u32) -> Result<(), StateError> {
        if caller != 0 || self.registry.get(agent).is_none_or(|c| c.dynamic.is_some()) {
            return Ok(());
        }
        let taken: HashSet<u32> = self
            .registry
            .iter()
            .filter_map(|(_, c)| c.dynamic.as_ref().map(|d| d.uid))
            .collect();
        let user = self.users.allocate(agent, &taken)?;
        tracing::info!(agent, uid = user.uid, home = %user.home.display(), "dynamic uid allocated");
        if let Some(cage) = self.registry.get_mut(agent) {
            cage.dynamic = Some(user);
        }
        Ok(())
    }

    /// The agent's `run_as` (the default for an agent the policy does not know).
    fn run_as(&self, agent: &str) -> RunAs {
        self.policy
            .agent(agent)
            .map(|p| p.run_as.clone())
            .unwrap_or_default()
    }

    /// A process joining by itself (`agentcage run`'s child) must hold, in every uid and gid,
    /// an account a live hold of the cage was granted: a client that skipped the switch is
    /// refused, so `run_as` holds whatever the client does.
    pub(super) fn check_joiner(&self, agent: &str, pid: u32) -> Result<(), StateError> {
        let refuse = |why: String| Err(StateError::Uncageable { pid, why });
        let Some(cage) = self.registry.get(agent) else {
            return refuse(format!("no `agentcage run` of agent {agent:?} is starting"));
        };
        let Some((uids, gids)) = accounts::ids_of(pid) else {
            return Err(StateError::NoProcess(pid));
        };
        let fits = cage.joiners.keys().any(|j| {
            uids.iter().all(|&u| u == j.uid) && j.gid.is_none_or(|g| gids.iter().all(|&x| x == g))
        });
        if fits {
            return Ok(());
        }
        let granted: Vec<String> = cage.joiners.keys().map(|j| j.uid.to_string()).collect();
        refuse(format!(
            "it runs as uid {} gid {}, not as the account its run was granted (uid {}; run_as: \
             {})",
            uids[0],
            gids[0],
            granted.join(" or "),
            self.run_as(agent)
        ))
    }

    /// An adopted process keeps its uid: the policy's `run_as` must allow that account.
    pub(super) fn check_adoptable(
        &self,
        agent: &str,
        pid: u32,
        owner: u32,
    ) -> Result<(), StateError> {
        let run_as = self.run_as(agent);
        if accounts::adoptable(run_as.accounts(), owner) {
            return Ok(());
        }
        Err(StateError::Uncageable {
            pid,
            why: format!(
                "it runs as uid {owner}, and agent {agent:?} runs as {run_as} (its policy's \
                 run_as); adopting keeps a process's uid: list `caller` or that account in \
                 run_as to allow it, or start the agent with agentcage run"
            ),
        })
    }
}
