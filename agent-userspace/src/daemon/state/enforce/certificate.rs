//! Behavior certificates of running agents: the one installed for an agent
//! (`CERTIFICATE_DIR/NAME.json`) is verified against the policy in force and the trusted
//! keys when its cage is made, at every `run`, and after every policy change; a valid one's
//! id is stamped on the agent's events, and an agent whose policy says `certificate:
//! required` is refused without one.

use super::{super::State, credential::unix_now};
use crate::{
    certificates::Certificate, control::credential::CertificateState, daemon::StateError,
    policy::CertificateRequirement,
};

impl State {
    /// The agent's installed certificate, verified now: its id, or why it is not valid.
    pub(super) fn certificate_valid(&self, agent: &str) -> Result<String, String> {
        let path = self
            .credentials
            .certificate_dir
            .join(format!("{agent}.json"));
        if !path.exists() {
            return Err(format!("no certificate is installed at {}", path.display()));
        }
        let now = unix_now();
        let keys = self.credentials.verifying_keys(now);
        Certificate::load(&path)
            .and_then(|c| c.verify(&self.policy, Some(agent), &keys, now))
            .map(|v| v.id)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The certificate to stamp on the agent's events; with `refuse`, an agent whose policy
    /// requires one and has none valid is refused.
    pub(in crate::daemon::state) fn certificate_for(
        &self,
        agent: &str,
        refuse: bool,
    ) -> Result<Option<String>, StateError> {
        let required = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.certificate == CertificateRequirement::Required);
        match self.certificate_valid(agent) {
            Ok(id) => Ok(Some(id)),
            Err(reason) if required && refuse => Err(StateError::Certificate {
                agent: agent.to_owned(),
                reason,
            }),
            Err(reason) => {
                if required {
                    tracing::warn!(agent, reason, "agent runs without the certificate its policy requires (taken over from an earlier daemon)");
                }
                Ok(None)
            }
        }
    }

    /// Where the agent's certificate stands, for `agentcage agents`.
    pub(in crate::daemon::state) fn certificate_state(&self, agent: &str) -> CertificateState {
        let required = self
            .policy
            .agent(agent)
            .is_some_and(|p| p.certificate == CertificateRequirement::Required);
        let path = self
            .credentials
            .certificate_dir
            .join(format!("{agent}.json"));
        let (state, id, reason) = match self.certificate_valid(agent) {
            Ok(id) => ("valid", Some(id), None),
            Err(_) if !path.exists() => ("missing", None, None),
            Err(reason) => ("invalid", None, Some(reason)),
        };
        CertificateState {
            required,
            state: state.to_owned(),
            id,
            reason,
        }
    }

    /// After a policy change: each cage's certificate is verified again (one bound to the old
    /// hash no longer is), and live tokens the new policy would not grant are revoked.
    pub(in crate::daemon::state) fn recheck_identities(&mut self) {
        for agent in self.registry.names_of_cages() {
            let id = self.certificate_valid(&agent).ok();
            if let Some(cage) = self.registry.get_mut(&agent) {
                if cage.certificate != id {
                    tracing::warn!(agent, certificate = ?id, "the agent's certificate changed with the policy");
                }
                cage.certificate = id;
            }
        }
        let policy = std::sync::Arc::clone(&self.policy);
        self.revalidate_credentials(&policy);
    }
}
