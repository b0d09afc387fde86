//! A kernel record → an event: the family's detail, the agent's identity, its place in the
//! agent's sequence, and the rule as the policy that decided names it. The daemon supplies
//! the lookups; nothing here holds state.

use std::sync::Arc;

use super::{
    coalesce::Summary,
    egress, exec, file, unix, EgressSummary, ExitDetail, ForkDetail, InodePaths, RawEvent,
    {Event, EventDetail},
};
use crate::{
    clock::wall_of_boot,
    identity::{AgentIdentity, SpiffeId},
    policy::Policy,
};

/// What enrichment needs to know that the record does not carry.
pub trait Lookups {
    /// The name of the agent with this number, if it is known.
    fn agent_name(&self, agent_id: u32) -> Option<&str>;
    /// The agent's SPIFFE ID, and the id of its behavior certificate while one is in force.
    fn identity(&self, agent: &AgentIdentity) -> (SpiffeId, Option<String>);
    /// The policy the slot was compiled from (the policy in force for a slot not known), so
    /// that an event read after a reload names the rule that really decided.
    fn slot_policy(&self, slot: u32) -> Arc<Policy>;
    /// Where the inodes of the slot's file rules were found.
    fn slot_paths(&self, slot: u32) -> Option<Arc<InodePaths>>;
    /// The next number in the agent's event sequence (0 for agent 0, no agent).
    fn next_seq(&mut self, agent_id: u32) -> u64;
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME, ns.
    fn boot_to_wall_ns(&self) -> i128;
    /// The allowed name a kernel name id stands for (see `agent_common::dns::Grant`).
    fn host_name(&self, _name_id: u32) -> Option<String> {
        None
    }
}

/// The event a kernel record says.
pub fn enrich(raw: &RawEvent, lookups: &mut impl Lookups) -> Event {
    let h = *raw.header();
    let policy = lookups.slot_policy(h.policy_slot);
    let agent = lookups.agent_name(h.agent_id).map(AgentIdentity::for_agent);
    let (spiffe_id, certificate) = agent
        .as_ref()
        .map(|a| lookups.identity(a))
        .map_or((None, None), |(s, c)| (Some(s), c));
    let agent_policy = agent.as_ref().and_then(|a| policy.agent(a.name()));
    let detail = match raw {
        RawEvent::Egress(e) => {
            let name = (e.name_id != 0)
                .then(|| lookups.host_name(e.name_id))
                .flatten();
            EventDetail::Egress(egress::detail(e, agent_policy, name))
        }
        RawEvent::Exec(e) => EventDetail::Exec(exec::detail(e, agent_policy)),
        RawEvent::Fork(e) => EventDetail::Fork(ForkDetail::from_raw(e)),
        RawEvent::Exit(e) => EventDetail::Exit(ExitDetail::from_raw(e)),
        RawEvent::File(e) => {
            let paths = lookups.slot_paths(h.policy_slot);
            EventDetail::File(file::detail(e, agent_policy, paths.as_deref()))
        }
        RawEvent::Unix(e) => EventDetail::Unix(unix::detail(e, agent_policy)),
    };
    Event {
        time_unix_nano: wall_of_boot(h.ts_ns, lookups.boot_to_wall_ns()),
        kernel_ts_ns: h.ts_ns,
        agent,
        container: None,
        spiffe_id,
        agent_seq: lookups.next_seq(h.agent_id),
        pid: h.pid,
        tgid: h.tgid,
        comm: super::process::c_str(&h.comm),
        cgroup_id: h.cgroup_id,
        policy_hash: policy.hash().to_owned(),
        certificate,
        detail,
    }
}

/// The event a summary of counted repeats says: the last repeat's record enriched as any
/// egress decision (it takes one `agent_seq`; the repeats it counts take none), with the count
/// and the first repeat's time.
pub fn enrich_summary(s: &Summary, lookups: &mut impl Lookups) -> Event {
    let mut event = enrich(&RawEvent::Egress(s.last), lookups);
    let first_unix_nano = wall_of_boot(s.first_ts_ns, lookups.boot_to_wall_ns());
    event.detail = match event.detail {
        EventDetail::Egress(decision) => EventDetail::EgressSummary(EgressSummary {
            decision,
            count: s.count,
            first_unix_nano,
            last_unix_nano: event.time_unix_nano,
        }),
        other => other,
    };
    event
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use agent_common::{
        event::{EventHeader, EventKind},
        process::ForkEvent,
    };

    use super::*;

    struct Fixed {
        policy: Arc<Policy>,
        seqs: HashMap<u32, u64>,
    }

    impl Lookups for Fixed {
        fn agent_name(&self, agent_id: u32) -> Option<&str> {
            (agent_id == 3).then_some("web")
        }
        fn identity(&self, agent: &AgentIdentity) -> (SpiffeId, Option<String>) {
            let td = crate::identity::TrustDomain::new("td").unwrap();
            (td.agent(agent), Some("sha256:c".into()))
        }
        fn slot_policy(&self, _: u32) -> Arc<Policy> {
            Arc::clone(&self.policy)
        }
        fn slot_paths(&self, _: u32) -> Option<Arc<InodePaths>> {
            None
        }
        fn next_seq(&mut self, agent_id: u32) -> u64 {
            if agent_id == 0 {
                return 0;
            }
            let s = self.seqs.entry(agent_id).or_default();
            *s += 1;
            *s
        }
        fn boot_to_wall_ns(&self) -> i128 {
            1_000
        }
    }

    fn fork(agent_id: u32) -> RawEvent {
        RawEvent::Fork(ForkEvent {
            header: EventHeader {
                kind: EventKind::Fork as u32,
                agent_id,
                policy_slot: 1,
                _pad: 0,
                ts_ns: 5,
                cgroup_id: 9,
                pid: 10,
                tgid: 10,
                comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            child_tgid: 11,
            _pad: 0,
        })
    }

    #[test]
    fn events_get_identity_sequence_and_wall_time() {
        let policy = Policy::from_yaml("version: 1\nagents:\n  web: {}\n", "p.yaml").unwrap();
        let mut l = Fixed {
            policy: Arc::new(policy),
            seqs: HashMap::new(),
        };
        let a = enrich(&fork(3), &mut l);
        let b = enrich(&fork(3), &mut l);
        assert_eq!(
            a.agent.as_ref().map(AgentIdentity::as_str),
            Some("agent:web")
        );
        assert_eq!((a.agent_seq, b.agent_seq), (1, 2));
        assert_eq!(
            a.spiffe_id.as_ref().map(SpiffeId::as_str),
            Some("spiffe://td/agent/web")
        );
        assert_eq!(a.certificate.as_deref(), Some("sha256:c"));
        assert_eq!((a.time_unix_nano, a.comm.as_str()), (1_005, "sh"));
        assert_eq!(a.detail, EventDetail::Fork(ForkDetail { child_pid: 11 }));
        let unknown = enrich(&fork(0), &mut l);
        assert_eq!((unknown.agent, unknown.agent_seq), (None, 0));
        assert_eq!((unknown.spiffe_id, unknown.certificate), (None, None));
    }
}
