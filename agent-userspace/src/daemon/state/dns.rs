//! Egress by name, the daemon's part: each cage's resolver endpoint, what its policy lets it
//! resolve, and the addresses granted to it in the kernel (under its policy slot, so they
//! switch with the rules), their expiry, the bound per cage and the names behind them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::RecordType;
use tokio::task::JoinSet;
use tracing::warn;

use super::{publish::Reserved, State, StateError};
use crate::{
    bpf::{DnsMaps, SlotEntries},
    dns::{
        cache::{AnswerCache, CACHE_ENTRIES},
        serve_endpoint,
        wire::{Chain, Question},
        CageGrants, DnsConfig, Endpoint, Resolve, Transport,
    },
    events::{DnsDetail, EventDetail, Protocol, RuleRef, Verdict},
    policy::CompiledEgress,
    runtime::budgets::Metric,
};

/// How many retired name ids stay readable for events still in the ring buffer.
const NAMES_KEPT: usize = 4096;

/// One cage's resolver and grants.
struct CageDns {
    agent: String,
    /// The egress rules of the slot in force (for the cage's rung): its `host:` rules say
    /// what it may resolve, and grants merge the CIDR entries covering their addresses.
    egress: CompiledEgress,
    grants: CageGrants,
    /// The endpoint's tasks; dropping them closes the endpoint.
    _tasks: Option<JoinSet<()>>,
}

/// The daemon's DNS state.
pub(crate) struct DnsState {
    config: DnsConfig,
    servers: Vec<SocketAddr>,
    maps: DnsMaps,
    resolver: Arc<dyn Resolve>,
    cages: HashMap<u64, CageDns>,
    names: Names,
    /// Grants whose answers are on their way to the agents, reported once they have gone.
    reports: Vec<GrantReport>,
}

/// Grants whose reports wait for their answers at most; past it they are reported at once.
const REPORTS_MAX: usize = 1024;

/// A grant to report: its event's place, taken at the grant, and its event but for the
/// rule's text (described when reported).
struct GrantReport {
    agent: String,
    at: Reserved,
    rule_id: u32,
    detail: DnsDetail,
}

/// Numbers for the allowed names that granted addresses (kernel records carry the number).
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    by_id: HashMap<u32, String>,
    retired: std::collections::VecDeque<u32>,
    next: u32,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.next = self.next.wrapping_add(1).max(1);
        self.ids.insert(name.to_owned(), self.next);
        self.by_id.insert(self.next, name.to_owned());
        self.next
    }

    /// Drops the names no grant uses any more (keeping the last few readable).
    fn retain(&mut self, used: &std::collections::HashSet<u32>) {
        let unused: Vec<u32> = self
            .ids
            .values()
            .copied()
            .filter(|id| !used.contains(id))
            .collect();
        for id in unused {
            if let Some(name) = self.by_id.get(&id) {
                self.ids.remove(name);
            }
            self.retired.push_back(id);
        }
        while self.retired.len() > NAMES_KEPT {
            if let Some(id) = self.retired.pop_front() {
                if !self
                    .by_id
                    .get(&id)
                    .is_some_and(|n| self.ids.contains_key(n))
                {
                    self.by_id.remove(&id);
                }
            }
        }
    }
}

impl DnsState {
    /// The state, with nothing served yet.
    pub(crate) fn new(config: DnsConfig, maps: DnsMaps, resolver: Arc<dyn Resolve>) -> Self {
        let servers = config.servers();
        if servers.is_empty() {
            warn!("no upstream DNS resolver (dns.upstream, /etc/resolv.conf): names in host: rules will not resolve");
        }
        Self {
            config,
            servers,
            maps,
            resolver,
            cages: HashMap::new(),
            names: Names::default(),
            reports: Vec::new(),
        }
    }

    /// The allowed name a kernel name id stands for.
    pub(crate) fn name(&self, id: u32) -> Option<String> {
        self.names.by_id.get(&id).cloned()
    }

    /// Grants and evictions of a cage, for `status`.
    pub(crate) fn counts(&self, cgroup_id: u64) -> (usize, u64) {
        self.cages
            .get(&cgroup_id)
            .map_or((0, 0), |c| (c.grants.len(), c.grants.evicted))
    }
}

impl State {
    /// Opens the cage's resolver endpoint and points its DNS there, before any process of
    /// it runs.
    pub(super) fn dns_start(&mut self, agent: &str, cgroup_id: u64) -> Result<(), StateError> {
        let endpoint = Endpoint::bind().map_err(|source| StateError::Dns {
            agent: agent.to_owned(),
            source,
        })?;
        if endpoint.port6 == 0 {
            warn!(
                agent,
                "no IPv6 loopback: the cage's DNS over IPv6 sockets is refused"
            );
        }
        self.dns
            .maps
            .set(cgroup_id, endpoint.port4, endpoint.port6)?;
        let tasks = match tokio::runtime::Handle::try_current() {
            Ok(_) => Some(
                serve_endpoint(
                    endpoint,
                    cgroup_id,
                    Arc::clone(&self.dns.resolver),
                    AnswerCache::new(CACHE_ENTRIES, self.dns.config.max_ttl),
                )
                .map_err(|source| StateError::Dns {
                    agent: agent.to_owned(),
                    source,
                })?,
            ),
            Err(_) => None,
        };
        let cage = self.dns.cages.entry(cgroup_id).or_insert_with(|| CageDns {
            agent: agent.to_owned(),
            egress: CompiledEgress::default(),
            grants: CageGrants::default(),
            _tasks: None,
        });
        cage.agent = agent.to_owned();
        cage._tasks = tasks;
        Ok(())
    }

    /// Closes a removed cage's endpoint and forgets its grants (its slots go with it).
    pub(super) fn dns_stop(&mut self, cgroup_id: u64) {
        self.dns.maps.remove(cgroup_id);
        self.dns.cages.remove(&cgroup_id);
    }

    /// Writes the cage's grants into a slot about to be switched in, under that slot's
    /// rules: grants whose name no rule admits any more are revoked with the switch.
    pub(super) fn dns_fill(
        &mut self,
        cgroup_id: u64,
        entries: &mut SlotEntries,
        egress: CompiledEgress,
    ) {
        let cage = self.dns.cages.entry(cgroup_id).or_insert_with(|| CageDns {
            agent: String::new(),
            egress: CompiledEgress::default(),
            grants: CageGrants::default(),
            _tasks: None,
        });
        cage.egress = egress;
        let mut revoked = Vec::new();
        for (addr, g) in cage.grants.iter() {
            match cage
                .egress
                .grant_entry(*addr, &g.name, g.name_id, g.expiry_ns)
            {
                Some(value) => {
                    if let Err(e) = self.maps.grant(entries, *addr, &value) {
                        warn!(error = %e, %addr, "grant not carried into the new slot; it is re-learned at the next resolution");
                        revoked.push(*addr);
                    }
                }
                None => revoked.push(*addr),
            }
        }
        for addr in revoked {
            cage.grants.remove(&addr);
        }
    }

    /// A query came: refuse it (reported, counted) or say where to ask.
    pub fn dns_admit(
        &mut self,
        cgroup_id: u64,
        q: &Question,
        t: Transport,
    ) -> Option<(Vec<SocketAddr>, Duration)> {
        let agent = self.dns.cages.get(&cgroup_id)?.agent.clone();
        if agent.is_empty() {
            return None;
        }
        let breaches = self.meter(&agent, Metric::DnsQueries, 1.0);
        self.breaches(&agent, breaches);
        let refusal = if self.budgets.throttled(&agent) {
            Some((Verdict::Budget, RuleRef::Budget))
        } else if !matches!(q.qtype, RecordType::A | RecordType::AAAA) {
            Some((Verdict::Deny, RuleRef::DnsQueryType))
        } else if self.dns.cages[&cgroup_id]
            .egress
            .hosts_for(&q.normalized)
            .next()
            .is_none()
        {
            Some((Verdict::Deny, RuleRef::DnsNameNotAllowed))
        } else {
            None
        };
        let Some((verdict, rule)) = refusal else {
            return Some((self.dns.servers.clone(), self.dns.config.timeout));
        };
        let detail = dns_detail(q.normalized.clone(), q.qtype, t, verdict, rule);
        self.publish(&agent, 0, EventDetail::Dns(detail));
        if verdict == Verdict::Deny {
            let policy = Arc::clone(&self.policy);
            let key = format!("dns {} {}", q.qtype, q.normalized);
            self.denial(
                &agent,
                policy.agent(&agent),
                &key,
                (crate::clock::boot_ns(), 1),
            );
        }
        None
    }

    /// The upstream answered an allowed query: grant the chain's addresses in the kernel
    /// (before the answer leaves), keep its report for [`State::dns_settle`], and say how
    /// long the answer may be cached.
    pub fn dns_grant(
        &mut self,
        cgroup_id: u64,
        q: &Question,
        t: Transport,
        chain: &Chain,
    ) -> Option<u32> {
        let now = crate::clock::boot_ns();
        let cage = self.dns.cages.get(&cgroup_id)?;
        let agent = cage.agent.clone();
        // The rules may have changed while upstream was asked.
        let first = cage
            .egress
            .hosts_for(&q.normalized)
            .next()
            .map(|h| h.rule_id);
        let Some(rule_id) = first else {
            let detail = dns_detail(
                q.normalized.clone(),
                q.qtype,
                t,
                Verdict::Deny,
                RuleRef::DnsNameNotAllowed,
            );
            self.publish(&agent, 0, EventDetail::Dns(detail));
            return None;
        };
        let ttl = chain.addrs.iter().map(|(_, ttl)| *ttl).min();
        let life = self.dns.config.clamp(ttl.unwrap_or(0));
        let expiry_ns = now.saturating_add(u64::try_from(life.as_nanos()).unwrap_or(u64::MAX));
        let granted: Vec<IpAddr> = chain
            .addrs
            .iter()
            .filter(|(addr, _)| self.grant_one(cgroup_id, *addr, &q.normalized, expiry_ns))
            .map(|(addr, _)| *addr)
            .collect();
        let ttl_s = u32::try_from(life.as_secs()).unwrap_or(u32::MAX);
        let mut detail = dns_detail(
            q.normalized.clone(),
            q.qtype,
            t,
            Verdict::Allow,
            RuleRef::EgressAllow(rule_id),
        );
        detail.answers = granted;
        detail.cached = chain.cached;
        detail.ttl_s = Some(ttl_s);
        let at = self.reserve(&agent);
        self.dns.reports.push(GrantReport {
            agent,
            at,
            rule_id,
            detail,
        });
        if self.dns.reports.len() > REPORTS_MAX {
            self.dns_settle();
        }
        Some(ttl_s)
    }

    /// Publishes the events of the grants made so far; called once their answers have gone
    /// out, so that building and publishing them does not delay the answers.
    pub fn dns_settle(&mut self) {
        for mut r in std::mem::take(&mut self.dns.reports) {
            r.detail.rule_text =
                r.at.policy()
                    .agent(&r.agent)
                    .and_then(|p| p.egress.allow.get(r.rule_id as usize))
                    .map(|rule| rule.describe());
            self.publish_reserved(&r.agent, 0, r.at, EventDetail::Dns(r.detail));
        }
    }

    /// Grants `addr` to the cage for `name` until `expiry_ns`, in the kernel (the cage's
    /// current slot) and in the cage's table, evicting the oldest past the bound. False when
    /// no rule admits the name or the kernel map refused it.
    fn grant_one(&mut self, cgroup_id: u64, addr: IpAddr, name: &str, expiry_ns: u64) -> bool {
        let name_id = self.dns.names.id(name);
        let max = self.dns.config.max_grants;
        let Some(cage) = self.dns.cages.get_mut(&cgroup_id) else {
            return false;
        };
        let Some(entries) = self.registry.get_mut(&cage.agent).map(|c| &mut c.slot) else {
            return false;
        };
        // Granted already for this name at least as long (an answer from the cage's cache,
        // or upstream's again within the TTL): the kernel holds it, so no write.
        if let Some(g) = cage.grants.get(&addr) {
            if g.name == name && g.expiry_ns >= expiry_ns {
                let expiry_ns = g.expiry_ns;
                cage.grants.grant(addr, name, name_id, expiry_ns, max);
                return true;
            }
        }
        let Some(value) = cage.egress.grant_entry(addr, name, name_id, expiry_ns) else {
            return false;
        };
        if let Err(e) = self.maps.grant(entries, addr, &value) {
            warn!(agent = cage.agent, error = %e, %addr, "address not granted");
            return false;
        }
        for old in cage.grants.grant(addr, name, name_id, expiry_ns, max) {
            self.maps.revoke(entries, old, cage.egress.exact_entry(old));
        }
        true
    }

    /// Writes every cage's unexpired grants to `path`, for the next daemon: cages that
    /// outlive this one keep what they resolved. Only this boot's clock makes sense of them.
    pub fn dns_save(&self, path: &std::path::Path) {
        let cages: HashMap<&str, Vec<SavedGrant>> = self
            .dns
            .cages
            .values()
            .map(|c| {
                let grants = c
                    .grants
                    .iter()
                    .map(|(addr, g)| SavedGrant {
                        addr: *addr,
                        name: g.name.clone(),
                        expiry_ns: g.expiry_ns,
                    })
                    .collect();
                (c.agent.as_str(), grants)
            })
            .collect();
        let saved = Saved {
            boot_id: boot_id(),
            cages,
        };
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(path, bytes));
        if let Err(e) = written {
            warn!(path = %path.display(), error = %e, "DNS grants not saved: cages re-learn them at their next resolution");
        }
    }

    /// Restores the grants an earlier daemon saved at `path` for the cages taken over (those
    /// whose rules still admit the name, and not expired), and removes the file.
    pub fn dns_restore(&mut self, path: &std::path::Path) {
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let _ = std::fs::remove_file(path);
        let Ok(saved) = serde_json::from_slice::<Saved<'_>>(&bytes) else {
            warn!(path = %path.display(), "saved DNS grants unreadable: ignored");
            return;
        };
        if saved.boot_id != boot_id() {
            return;
        }
        let now = crate::clock::boot_ns();
        let by_agent: HashMap<String, u64> = self
            .dns
            .cages
            .iter()
            .map(|(id, c)| (c.agent.clone(), *id))
            .collect();
        let mut restored = 0;
        for (agent, grants) in saved.cages {
            let Some(&cgroup_id) = by_agent.get(agent) else {
                continue;
            };
            for g in grants.into_iter().filter(|g| g.expiry_ns > now) {
                restored += usize::from(self.grant_one(cgroup_id, g.addr, &g.name, g.expiry_ns));
            }
        }
        if restored > 0 {
            tracing::info!(restored, "DNS grants restored from the previous daemon");
        }
    }

    /// The upstream failed for an allowed query.
    pub fn dns_failed(&mut self, cgroup_id: u64, q: &Question, t: Transport, error: &str) {
        let Some(agent) = self.dns.cages.get(&cgroup_id).map(|c| c.agent.clone()) else {
            return;
        };
        let rule = self
            .dns
            .cages
            .get(&cgroup_id)
            .and_then(|c| c.egress.hosts_for(&q.normalized).next())
            .map_or(RuleRef::DnsNameNotAllowed, |h| {
                RuleRef::EgressAllow(h.rule_id)
            });
        let mut detail = dns_detail(q.normalized.clone(), q.qtype, t, Verdict::Allow, rule);
        detail.error = Some(error.to_owned());
        self.publish(&agent, 0, EventDetail::Dns(detail));
    }

    /// Removes expired grants from the kernel (it ignores them already) and unused names.
    pub(super) fn dns_tick(&mut self, now: u64) {
        let mut used = std::collections::HashSet::new();
        let cgroups: Vec<u64> = self.dns.cages.keys().copied().collect();
        for cgroup_id in cgroups {
            let Some(cage) = self.dns.cages.get_mut(&cgroup_id) else {
                continue;
            };
            let expired = cage.grants.expire(now);
            used.extend(cage.grants.iter().map(|(_, g)| g.name_id));
            if expired.is_empty() {
                continue;
            }
            if let Some(entries) = self.registry.get_mut(&cage.agent).map(|c| &mut c.slot) {
                for addr in expired {
                    self.maps
                        .revoke(entries, addr, cage.egress.exact_entry(addr));
                }
            }
        }
        self.dns.names.retain(&used);
    }
}

fn dns_detail(
    name: String,
    qtype: RecordType,
    t: Transport,
    verdict: Verdict,
    rule: RuleRef,
) -> DnsDetail {
    DnsDetail {
        name,
        qtype: qtype.to_string(),
        transport: match t {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        },
        verdict,
        rule,
        rule_text: None,
        answers: Vec::<IpAddr>::new(),
        ttl_s: None,
        error: None,
        cached: false,
    }
}

/// Grants saved across a daemon restart.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved<'a> {
    /// `/proc/sys/kernel/random/boot_id`: expiries are on this boot's clock.
    boot_id: String,
    #[serde(borrow)]
    cages: HashMap<&'a str, Vec<SavedGrant>>,
}

/// One saved grant.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedGrant {
    addr: IpAddr,
    name: String,
    expiry_ns: u64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
