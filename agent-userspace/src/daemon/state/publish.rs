//! Events: the lookups enrichment needs (agent names, slot policies, sequence numbers), the
//! daemon's own events, and session starts and ends.

use std::sync::Arc;

use super::{dns::DnsState, registry::Registry, slots::Slots, State};
use crate::{
    clock::wall_of_boot,
    events::{
        self, coalesce::Summary, Event, EventDetail, InodePaths, Lookups, RawEvent, SessionAction,
        SessionDetail,
    },
    identity::{AgentIdentity, SpiffeId, TrustDomain},
    policy::Policy,
};

/// An event's place among its agent's, taken when it happens: the number, the time and the
/// policy in force. The resolver reports a grant only once its answer has gone out (so as
/// not to delay it), in the place of the grant.
pub(super) struct Reserved {
    agent_seq: u64,
    now: u64,
    policy: Arc<Policy>,
}

impl Reserved {
    /// The policy in force when the event happened.
    pub(super) fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// The state's lookups for [`events::enrich`], borrowed for one record.
struct View<'a> {
    registry: &'a mut Registry,
    slots: &'a Slots,
    policy: &'a Arc<Policy>,
    trust_domain: &'a TrustDomain,
    dns: &'a DnsState,
    boot_to_wall_ns: i128,
}

/// What every event of `agent` carries besides its name: its SPIFFE ID, and the id of its
/// behavior certificate while a valid one is in force.
fn stamp(
    registry: &Registry,
    trust_domain: &TrustDomain,
    agent: &AgentIdentity,
) -> (SpiffeId, Option<String>) {
    let certificate = registry
        .get(agent.name())
        .and_then(|c| c.certificate.clone());
    (trust_domain.agent(agent), certificate)
}

impl Lookups for View<'_> {
    fn agent_name(&self, agent_id: u32) -> Option<&str> {
        self.registry.name(agent_id)
    }

    fn identity(&self, agent: &AgentIdentity) -> (SpiffeId, Option<String>) {
        stamp(self.registry, self.trust_domain, agent)
    }

    fn slot_policy(&self, slot: u32) -> Arc<Policy> {
        Arc::clone(self.slots.policy(slot).unwrap_or(self.policy))
    }

    fn slot_paths(&self, slot: u32) -> Option<Arc<InodePaths>> {
        self.slots.paths(slot).cloned()
    }

    fn next_seq(&mut self, agent_id: u32) -> u64 {
        self.registry.next_seq(agent_id)
    }

    fn boot_to_wall_ns(&self) -> i128 {
        self.boot_to_wall_ns
    }

    fn host_name(&self, name_id: u32) -> Option<String> {
        self.dns.name(name_id)
    }
}

impl State {
    /// The event a kernel record says; keeps the agent's process tree in step.
    pub fn enrich(&mut self, raw: &RawEvent) -> Event {
        let mut event = events::enrich(raw, &mut self.view());
        self.stamp_container(&mut event);
        self.registry.observe(raw.header().agent_id, &event);
        event
    }

    /// The event a summary of counted egress repeats says.
    pub fn enrich_summary(&mut self, summary: &Summary) -> Event {
        let mut event = events::enrich_summary(summary, &mut self.view());
        self.stamp_container(&mut event);
        event
    }

    /// The container the event's cgroup belongs to, if it is a caged container's.
    fn stamp_container(&self, event: &mut Event) {
        event.container = self
            .containers
            .meta_of(event.cgroup_id)
            .map(|m| Box::new(m.clone()));
    }

    /// The state's lookups, borrowed.
    fn view(&mut self) -> View<'_> {
        View {
            registry: &mut self.registry,
            slots: &self.slots,
            policy: &self.policy,
            trust_domain: &self.credentials.trust_domain,
            dns: &self.dns,
            boot_to_wall_ns: self.boot_to_wall_ns,
        }
    }

    /// The cgroups of the cages whose session ends wait for the reader: what it counted of
    /// them goes out before the ends.
    pub fn ending_cages(&self) -> Vec<u64> {
        self.pending_ends.iter().map(|(_, e)| e.cgroup_id).collect()
    }

    /// Publishes an event the daemon raises itself for `agent`.
    pub(super) fn publish(&mut self, agent: &str, pid: u32, detail: EventDetail) {
        let at = self.reserve(agent);
        self.publish_reserved(agent, pid, at, detail);
    }

    /// The number, time and policy of an event of `agent` happening now, to be published
    /// later with [`State::publish_reserved`].
    pub(super) fn reserve(&mut self, agent: &str) -> Reserved {
        Reserved {
            agent_seq: self
                .registry
                .known_id(agent)
                .map_or(0, |id| self.registry.next_seq(id)),
            now: crate::clock::boot_ns(),
            policy: Arc::clone(&self.policy),
        }
    }

    /// Publishes an event of `agent` in the place [`State::reserve`] took for it.
    pub(super) fn publish_reserved(
        &mut self,
        agent: &str,
        pid: u32,
        at: Reserved,
        detail: EventDetail,
    ) {
        let cgroup_id = self.registry.get(agent).map_or(0, |c| c.cgroup_id);
        let identity = AgentIdentity::for_agent(agent);
        let (spiffe_id, certificate) =
            stamp(&self.registry, &self.credentials.trust_domain, &identity);
        self.bus.publish(Event {
            time_unix_nano: wall_of_boot(at.now, self.boot_to_wall_ns),
            kernel_ts_ns: at.now,
            agent: Some(identity),
            spiffe_id: Some(spiffe_id),
            container: None,
            agent_seq: at.agent_seq,
            pid,
            tgid: pid,
            comm: String::new(),
            cgroup_id,
            policy_hash: at.policy.hash().to_owned(),
            certificate,
            detail,
        });
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
                e.agent_seq = self.registry.next_seq(agent_id);
                e
            })
            .collect()
    }

    /// Says on the bus that `agent`'s session started; queues its end for the reader.
    pub(super) fn publish_session(&mut self, agent: &str, action: SessionAction) {
        let Some(cage) = self.registry.get(agent) else {
            return;
        };
        let (agent_id, cgroup_id, started) =
            (cage.agent_id, cage.cgroup_id, cage.started_unix_nano);
        let now = crate::clock::now_unix_nano();
        let identity = AgentIdentity::for_agent(agent);
        let (spiffe_id, certificate) =
            stamp(&self.registry, &self.credentials.trust_domain, &identity);
        let mut event = Event {
            time_unix_nano: now,
            kernel_ts_ns: u64::try_from(i128::from(now) - self.boot_to_wall_ns).unwrap_or(0),
            agent: Some(identity),
            spiffe_id: Some(spiffe_id),
            container: None,
            agent_seq: 0,
            pid: 0,
            tgid: 0,
            comm: String::new(),
            cgroup_id,
            policy_hash: self.policy.hash().to_owned(),
            certificate,
            detail: EventDetail::Session(SessionDetail {
                action,
                started_unix_nano: started,
            }),
        };
        if action == SessionAction::Start {
            event.agent_seq = self.registry.next_seq(agent_id);
            self.bus.publish(event);
            return;
        }
        self.pending_ends.push((agent_id, event));
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }
}
