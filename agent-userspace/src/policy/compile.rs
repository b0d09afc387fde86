//! Egress policy → kernel longest-prefix-match trie entries.
//!
//! The kernel does one LPM lookup per destination and then scans that entry's port rules,
//! first match wins. For that single lookup to decide exactly as "scan the allow list in
//! order" would, each entry carries, in allow-list order, the port rules of every rule whose
//! CIDR contains the entry's CIDR (itself included). CIDRs either nest or are disjoint, so the
//! rules containing a destination are exactly those containing its longest matching entry.

use std::collections::BTreeMap;

use agent_common::egress::{
    PortRule, PortRules, MAX_PORT_RULES, PROTO_TCP, PROTO_UDP, RULE_F_APPROVAL, RULE_SOCKET_ALLOWED,
};
use ipnet::IpNet;

use super::{
    egress::{EgressPolicy, HostPattern, PortRange},
    error::PolicyError,
};

/// Trie entries for one agent, sorted by address then prefix length, and its `host:` rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledEgress {
    /// IPv4 entries: network address (network order), CIDR prefix length (without the slot
    /// bits), and the port rules.
    pub v4: Vec<([u8; 4], u32, PortRules)>,
    /// IPv6 entries, as for `v4`.
    pub v6: Vec<([u8; 16], u32, PortRules)>,
    /// The `host:` rules in list order: the addresses their names resolve to are granted by
    /// the cage's resolver with these port rules.
    pub hosts: Vec<CompiledHost>,
}

/// One `host:` rule, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledHost {
    /// Its index in the allow list (the rule id).
    pub rule_id: u32,
    /// The names it admits.
    pub pattern: HostPattern,
    /// Its port rules.
    pub rules: Vec<PortRule>,
}

/// Compiles `agent`'s egress policy; errors name `agents.AGENT.egress.allow[N]`.
pub fn compile_egress(agent: &str, egress: &EgressPolicy) -> Result<CompiledEgress, PolicyError> {
    compile_at(&format!("agents.{agent}.egress"), egress, false)
}

/// Compiles only the rules marked `read_only` (the read-only containment rung), keeping
/// their indices as rule ids so events name the same `allow[N]`. It is a subset of a list
/// that compiles, so it compiles too.
pub fn compile_read_only(
    agent: &str,
    egress: &EgressPolicy,
) -> Result<CompiledEgress, PolicyError> {
    compile_at(&format!("agents.{agent}.egress"), egress, true)
}

/// As [`compile_egress`], with `path` (e.g. `default_agent.egress`) naming the policy in
/// errors; `read_only_only` keeps only the rules marked `read_only`.
pub(crate) fn compile_at(
    path: &str,
    egress: &EgressPolicy,
    read_only_only: bool,
) -> Result<CompiledEgress, PolicyError> {
    // Rule ids share the u32 space with the RULE_* sentinels at its top.
    let max_rules = usize::try_from(RULE_SOCKET_ALLOWED).unwrap_or(usize::MAX);
    let too_many = || PolicyError::TooManyRules {
        path: path.to_owned(),
        count: egress.allow.len(),
        max: max_rules,
    };
    if egress.allow.len() > max_rules {
        return Err(too_many());
    }

    let mut by_cidr: BTreeMap<IpNet, Vec<usize>> = BTreeMap::new();
    let mut out = CompiledEgress::default();
    for (i, rule) in egress.allow.iter().enumerate() {
        if read_only_only && !rule.read_only {
            continue;
        }
        match rule.dest.host() {
            Some(pattern) => {
                let rule_id = u32::try_from(i).map_err(|_| too_many())?;
                let rules =
                    port_rules(rule_id, rule.protocols, &rule.ports, rule.requires_approval);
                if rules.len() > MAX_PORT_RULES {
                    return Err(PolicyError::TooManyHostPorts {
                        path: path.to_owned(),
                        rule: i,
                        host: pattern.to_string(),
                    });
                }
                out.hosts.push(CompiledHost {
                    rule_id,
                    pattern: pattern.clone(),
                    rules,
                });
            }
            None => {
                if let Some(cidr) = rule.dest.cidr() {
                    by_cidr.entry(cidr).or_default().push(i);
                }
            }
        }
    }

    for (&cidr, own) in &by_cidr {
        // Walk up through every shorter prefix: at most 33 or 129 map lookups per entry,
        // however long the allow list.
        let mut covering: Vec<usize> = Vec::new();
        let mut net = Some(cidr);
        while let Some(n) = net {
            if let Some(ids) = by_cidr.get(&n) {
                covering.extend_from_slice(ids);
            }
            net = n.supernet();
        }
        covering.sort_unstable();

        let mut rules: Vec<PortRule> = Vec::new();
        let mut contributors: Vec<usize> = Vec::new();
        for &i in &covering {
            let Some(rule) = egress.allow.get(i) else {
                continue;
            };
            let rule_id = u32::try_from(i).map_err(|_| too_many())?;
            for candidate in
                port_rules(rule_id, rule.protocols, &rule.ports, rule.requires_approval)
            {
                // A rule an earlier one fully covers can never match first; dropping it
                // saves kernel slots without changing any decision.
                if rules.iter().any(|r| shadows(r, &candidate)) {
                    continue;
                }
                if contributors.last() != Some(&i) {
                    contributors.push(i);
                }
                if rules.len() == MAX_PORT_RULES {
                    // Stop at the first rule that does not fit, so that a huge list costs
                    // no more than a small one to reject.
                    return Err(PolicyError::TooManyPortRules {
                        path: path.to_owned(),
                        rule: own.first().copied().unwrap_or_default(),
                        cidr,
                        rules: contributors,
                    });
                }
                rules.push(candidate);
            }
        }

        let mut value = PortRules::default();
        for (slot, rule) in value.rules.iter_mut().zip(&rules) {
            *slot = *rule;
        }
        // Fits: at most MAX_PORT_RULES (16).
        value.count = u32::try_from(rules.len()).unwrap_or_default();

        let len = u32::from(cidr.prefix_len());
        match cidr {
            IpNet::V4(n) => out.v4.push((n.network().octets(), len, value)),
            IpNet::V6(n) => out.v6.push((n.network().octets(), len, value)),
        }
    }
    Ok(out)
}

/// A rule's own port rules: one per merged port range (none if it admits no protocol).
fn port_rules(
    rule_id: u32,
    protocols: u8,
    ports: &[PortRange],
    requires_approval: bool,
) -> Vec<PortRule> {
    let protocols = protocols & (PROTO_TCP | PROTO_UDP);
    if protocols == 0 {
        return Vec::new(); // Matches nothing.
    }
    merge_ranges(ports)
        .into_iter()
        .map(|range| PortRule {
            port_lo: range.lo,
            port_hi: range.hi,
            protocols,
            flags: if requires_approval {
                RULE_F_APPROVAL
            } else {
                0
            },
            _pad: [0; 2],
            rule_id,
        })
        .collect()
}

/// Whether `earlier` admits everything `later` does (so `later` would never match first).
pub(super) fn shadows(earlier: &PortRule, later: &PortRule) -> bool {
    earlier.port_lo <= later.port_lo
        && later.port_hi <= earlier.port_hi
        && later.protocols & !earlier.protocols == 0
}

/// A rule's port ranges, sorted, with overlapping and adjacent ranges joined; no ports means
/// every port. Order within one rule does not matter: all its ranges share one rule id.
fn merge_ranges(ports: &[PortRange]) -> Vec<PortRange> {
    if ports.is_empty() {
        return vec![PortRange::ALL];
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable_by_key(|r| (r.lo, r.hi));
    let mut merged: Vec<PortRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(r.hi);
            }
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::super::{egress::AllowRule, Policy};
    use super::*;

    fn rule(cidr: &str, ports: &[(u16, u16)], protocols: u8) -> AllowRule {
        AllowRule {
            dest: super::super::egress::Destination::Cidr(cidr.parse().unwrap()),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocols,
            comment: None,
            name: None,
            requires_approval: false,
            read_only: false,
        }
    }

    fn egress(allow: Vec<AllowRule>) -> EgressPolicy {
        EgressPolicy {
            allow,
            ..EgressPolicy::default()
        }
    }

    fn used(rules: &PortRules) -> &[PortRule] {
        &rules.rules[..rules.count as usize]
    }

    fn pr(lo: u16, hi: u16, protocols: u8, rule_id: u32) -> PortRule {
        PortRule {
            port_lo: lo,
            port_hi: hi,
            protocols,
            flags: 0,
            _pad: [0; 2],
            rule_id,
        }
    }

    /// The specification: scan every rule in order, first match wins.
    fn reference_decide(policy: &EgressPolicy, addr: IpAddr, port: u16, proto: u8) -> Option<u32> {
        policy
            .allow
            .iter()
            .position(|r| {
                r.dest.cidr().unwrap().contains(&addr)
                    && r.protocols & proto != 0
                    && (r.ports.is_empty() || r.ports.iter().any(|p| p.contains(port)))
            })
            .map(|i| i as u32)
    }

    /// What the kernel does: one longest-prefix match, then scan that entry's rules.
    fn lpm_decide(c: &CompiledEgress, addr: IpAddr, port: u16, proto: u8) -> Option<u32> {
        let entry = match addr {
            IpAddr::V4(a) => {
                c.v4.iter()
                    .filter(|(net, len, _)| {
                        let n = ipnet::Ipv4Net::new(Ipv4Addr::from(*net), *len as u8).unwrap();
                        n.contains(&a)
                    })
                    .max_by_key(|(_, len, _)| *len)
                    .map(|(_, _, r)| r)
            }
            IpAddr::V6(a) => {
                c.v6.iter()
                    .filter(|(net, len, _)| {
                        let n = ipnet::Ipv6Net::new(Ipv6Addr::from(*net), *len as u8).unwrap();
                        n.contains(&a)
                    })
                    .max_by_key(|(_, len, _)| *len)
                    .map(|(_, _, r)| r)
            }
        }?;
        used(entry)
            .iter()
            .find(|r| r.port_lo <= port && port <= r.port_hi && r.protocols & proto != 0)
            .map(|r| r.rule_id)
    }

    #[test]
    fn folds_covering_rules_into_longer_prefixes() {
        let e = egress(vec![
            rule("0.0.0.0/0", &[(53, 53)], PROTO_UDP),
            rule("127.0.0.0/8", &[(80, 80)], PROTO_TCP),
        ]);
        let c = compile_egress("demo", &e).unwrap();
        assert!(c.v6.is_empty());
        assert_eq!(c.v4.len(), 2);
        let (addr, len, rules) = &c.v4[0];
        assert_eq!((*addr, *len), ([0, 0, 0, 0], 0));
        assert_eq!(used(rules), &[pr(53, 53, PROTO_UDP, 0)]);
        let (addr, len, rules) = &c.v4[1];
        assert_eq!((*addr, *len), ([127, 0, 0, 0], 8));
        assert_eq!(
            used(rules),
            &[pr(53, 53, PROTO_UDP, 0), pr(80, 80, PROTO_TCP, 1)]
        );
    }

    #[test]
    fn folding_keeps_allow_list_order() {
        // The narrower rule comes first, so its id must come first in the narrower entry.
        let e = egress(vec![
            rule("10.1.0.0/16", &[(443, 443)], PROTO_TCP),
            rule("10.0.0.0/8", &[], PROTO_TCP | PROTO_UDP),
        ]);
        let c = compile_egress("demo", &e).unwrap();
        let narrow = c.v4.iter().find(|(_, len, _)| *len == 16).unwrap();
        assert_eq!(
            used(&narrow.2),
            &[
                pr(443, 443, PROTO_TCP, 0),
                pr(0, 65535, PROTO_TCP | PROTO_UDP, 1)
            ]
        );
    }

    #[test]
    fn families_stay_apart_and_duplicates_merge() {
        let e = egress(vec![
            rule("::1/128", &[(1, 1)], PROTO_TCP),
            rule("127.0.0.1/32", &[(2, 2)], PROTO_TCP),
            rule("::/0", &[(3, 3)], PROTO_UDP),
            rule("127.0.0.1/32", &[(4, 4)], PROTO_UDP),
        ]);
        let c = compile_egress("demo", &e).unwrap();
        assert_eq!(c.v4.len(), 1);
        assert_eq!(
            used(&c.v4[0].2),
            &[pr(2, 2, PROTO_TCP, 1), pr(4, 4, PROTO_UDP, 3)]
        );
        assert_eq!(c.v6.len(), 2);
        assert_eq!(c.v6[0].0, [0; 16]);
        assert_eq!(used(&c.v6[0].2), &[pr(3, 3, PROTO_UDP, 2)]);
        assert_eq!(c.v6[1].1, 128);
        assert_eq!(
            used(&c.v6[1].2),
            &[pr(1, 1, PROTO_TCP, 0), pr(3, 3, PROTO_UDP, 2)]
        );
    }

    #[test]
    fn ports_merge_within_a_rule() {
        assert_eq!(merge_ranges(&[]), vec![PortRange::ALL]);
        let r = |lo, hi| PortRange { lo, hi };
        assert_eq!(
            merge_ranges(&[r(443, 443), r(80, 90), r(91, 100), r(85, 86), r(200, 300)]),
            vec![r(80, 100), r(200, 300), r(443, 443)]
        );
        assert_eq!(
            merge_ranges(&[r(65535, 65535), r(0, 65534)]),
            vec![PortRange::ALL]
        );
    }

    #[test]
    fn shadowed_rules_take_no_slots() {
        let mut allow = vec![rule("0.0.0.0/0", &[], PROTO_TCP | PROTO_UDP)];
        for i in 0..40 {
            allow.push(rule("10.0.0.0/8", &[(i, i)], PROTO_TCP));
        }
        let c = compile_egress("demo", &egress(allow)).unwrap();
        for (_, _, rules) in &c.v4 {
            assert_eq!(used(rules), &[pr(0, 65535, PROTO_TCP | PROTO_UDP, 0)]);
        }
    }

    #[test]
    fn too_many_port_rules_is_an_error() {
        let mut allow = vec![rule("0.0.0.0/0", &[(53, 53)], PROTO_UDP)];
        allow.push(rule("192.0.2.0/24", &[(1, 1)], PROTO_TCP));
        for i in 0..15u16 {
            allow.push(rule("10.0.0.0/8", &[(i * 2, i * 2)], PROTO_TCP));
        }
        // 1 inherited from 0.0.0.0/0 + 15 own = 16: fits exactly.
        let fits = compile_egress("demo", &egress(allow.clone())).unwrap();
        let ten = fits.v4.iter().find(|(a, _, _)| a[0] == 10).unwrap();
        assert_eq!(ten.2.count as usize, MAX_PORT_RULES);

        allow.push(rule("10.0.0.0/8", &[(999, 999)], PROTO_TCP));
        let err = compile_egress("demo", &egress(allow)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "agents.demo.egress.allow[2] (10.0.0.0/8): more than 16 port rules apply to destinations \
             in 10.0.0.0/8 (from allow[0], allow[2], allow[3], allow[4], allow[5], allow[6], \
             allow[7], allow[8], allow[9], allow[10], allow[11], allow[12], allow[13], \
             allow[14], allow[15], allow[16], allow[17]), which is more than one kernel entry \
             holds; merge port ranges, or drop rules that a broader rule listed earlier already \
             allows"
        );
    }

    #[test]
    fn huge_lists_are_rejected_at_the_first_rule_that_does_not_fit() {
        let allow: Vec<AllowRule> = (0..100_000u32)
            .map(|i| rule("0.0.0.0/0", &[(i as u16, i as u16)], PROTO_TCP))
            .collect();
        let e = egress(allow);
        let err = compile_egress("demo", &e).unwrap_err();
        assert!(err.to_string().contains("allow[16])"), "{err}");
    }

    #[test]
    fn hundred_host_entries_each_carry_the_broad_rule() {
        let allow: Vec<AllowRule> = (0..100u32)
            .map(|i| {
                let a = Ipv4Addr::from(0x0a00_0000 + i * 7);
                rule(&format!("{a}/32"), &[(443, 443)], PROTO_TCP)
            })
            .chain(std::iter::once(rule("10.0.0.0/8", &[(53, 53)], PROTO_UDP)))
            .collect();
        let e = egress(allow);
        let c = compile_egress("demo", &e).unwrap();
        assert_eq!(c.v4.len(), 101);
        for (_, len, rules) in &c.v4 {
            if *len == 32 {
                assert_eq!(rules.count, 2);
            }
        }
    }

    /// Tiny deterministic PRNG (xorshift64*), so the test needs no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// First and last address of `net` and their outside neighbours.
    fn edges(net: &IpNet) -> Vec<IpAddr> {
        match net {
            IpNet::V4(n) => {
                let lo = u32::from(n.network());
                let hi = u32::from(n.broadcast());
                [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                    .into_iter()
                    .flatten()
                    .map(|a| IpAddr::V4(a.into()))
                    .collect()
            }
            IpNet::V6(n) => {
                let lo = u128::from(n.network());
                let hi = u128::from(n.broadcast());
                [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                    .into_iter()
                    .flatten()
                    .map(|a| IpAddr::V6(a.into()))
                    .collect()
            }
        }
    }

    #[test]
    fn compiled_lpm_agrees_with_reference() {
        let yaml = "
version: 1
agents:
  a:
    egress:
      allow:
        - {cidr: 10.1.2.0/24, ports: [443], protocols: [tcp]}
        - {cidr: 0.0.0.0/0, ports: [53], protocols: [udp]}
        - {cidr: 10.0.0.0/8, ports: [80, 8000-8099]}
        - {cidr: 10.1.0.0/16, ports: [22], protocols: [tcp]}
        - {cidr: 10.1.2.128/25, protocols: [udp]}
        - {cidr: 10.1.2.200/32, ports: [1-1024], protocols: [tcp]}
        - {cidr: 127.0.0.1, ports: [8000-8099], protocols: [tcp]}
        - {cidr: 192.0.2.0/24, ports: [0, 65535]}
        - {cidr: 255.255.255.255/32, ports: [9]}
        - {cidr: 10.0.0.0/8, ports: [9000], protocols: [udp]}
        - {cidr: '::/0', ports: [53], protocols: [udp]}
        - {cidr: '2001:db8::/32', ports: [443], protocols: [tcp]}
        - {cidr: '2001:db8:1::/48', ports: [80-81]}
        - {cidr: '2001:db8:1::1', protocols: [tcp]}
        - {cidr: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124', ports: [7]}
        - {cidr: '::ffff:198.51.100.0/120', ports: [25], protocols: [tcp]}
";
        let policy = Policy::from_yaml(yaml, "t").unwrap();
        let e = &policy.agents["a"].egress;
        let c = compile_egress("a", e).unwrap();

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut addrs: Vec<IpAddr> = Vec::new();
        for r in &e.allow {
            addrs.extend(edges(&r.dest.cidr().unwrap()));
            // Random addresses inside the rule's network.
            for _ in 0..8 {
                addrs.push(match r.dest.cidr().unwrap() {
                    IpNet::V4(n) => {
                        let span = !u32::from(n.netmask());
                        IpAddr::V4((u32::from(n.network()) | (rng.next() as u32 & span)).into())
                    }
                    IpNet::V6(n) => {
                        let span = !u128::from(n.netmask());
                        let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                        IpAddr::V6((u128::from(n.network()) | (r & span)).into())
                    }
                });
            }
        }
        for _ in 0..200 {
            addrs.push(IpAddr::V4((rng.next() as u32).into()));
            let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            addrs.push(IpAddr::V6(r.into()));
        }

        let mut ports: Vec<u16> = vec![0, 1, 65534, 65535];
        for r in &e.allow {
            for p in &r.ports {
                ports.extend([p.lo, p.hi, p.lo.saturating_sub(1), p.hi.saturating_add(1)]);
            }
        }
        for _ in 0..20 {
            ports.push(rng.next() as u16);
        }
        ports.sort_unstable();
        ports.dedup();

        let mut checked = 0;
        let mut allowed = 0;
        for addr in &addrs {
            for &port in &ports {
                for proto in [PROTO_TCP, PROTO_UDP] {
                    let want = reference_decide(e, *addr, port, proto);
                    let got = lpm_decide(&c, *addr, port, proto);
                    assert_eq!(got, want, "{addr} port {port} proto {proto}");
                    checked += 1;
                    allowed += usize::from(want.is_some());
                }
            }
        }
        // Make sure the sample exercised both outcomes substantially.
        assert!(checked > 10_000, "{checked}");
        assert!(
            allowed > 500 && allowed < checked / 2,
            "{allowed}/{checked}"
        );
    }

    #[test]
    fn default_agent_path_in_errors() {
        let mut allow = Vec::new();
        for i in 0..17u16 {
            allow.push(rule("10.0.0.0/8", &[(i * 2, i * 2)], PROTO_TCP));
        }
        let err = compile_at("default_agent.egress", &egress(allow), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("default_agent.egress.allow[0] (10.0.0.0/8): more than 16 port rules"),
            "{err}"
        );
    }
}
