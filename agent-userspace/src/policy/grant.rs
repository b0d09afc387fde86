//! Name grants: the allow-list entry an address gets when the cage's resolver hands it out.
//!
//! The kernel decides with one longest-prefix match and one scan of that entry's port rules.
//! A granted address gets an entry of its own (/32 or /128) holding, in list order, the port
//! rules of the `host:` rules that admit the name (flagged [`RULE_F_NAMED`]: they lapse at
//! the grant's expiry) and those of the CIDR entry that covered the address, so that entry
//! alone decides exactly as "scan the allow list in order" would.

use std::net::IpAddr;

use agent_common::egress::{PortRule, PortRules, MAX_PORT_RULES, RULE_F_NAMED};

use super::compile::{shadows, CompiledEgress, CompiledHost};

impl CompiledEgress {
    /// The `host:` rules that admit `qname` (normalized), in list order.
    pub fn hosts_for<'a>(&'a self, qname: &'a str) -> impl Iterator<Item = &'a CompiledHost> {
        self.hosts.iter().filter(move |h| h.pattern.matches(qname))
    }

    /// The CIDR entry the kernel's longest-prefix match finds for `addr` (IPv4-mapped IPv6
    /// as IPv4, as the kernel judges it), with its prefix length.
    pub fn cidr_entry(&self, addr: IpAddr) -> Option<(u32, &PortRules)> {
        match canonical(addr) {
            IpAddr::V4(a) => longest(&self.v4, u32::from(a).to_be_bytes()),
            IpAddr::V6(a) => longest(&self.v6, a.octets()),
        }
    }

    /// The CIDR entry of exactly `addr` (a /32 or /128 rule), which a grant of `addr`
    /// replaces in the trie and its revocation puts back.
    pub fn exact_entry(&self, addr: IpAddr) -> Option<&PortRules> {
        let full = if canonical(addr).is_ipv4() { 32 } else { 128 };
        self.cidr_entry(addr)
            .and_then(|(len, rules)| (len == full).then_some(rules))
    }

    /// The entry for `addr` granted for `name` (normalized) under `name_id` until
    /// `expiry_ns`, or None when no `host:` rule admits the name. Past [`MAX_PORT_RULES`]
    /// the rules last in list order are left out (stricter: nothing after them could match
    /// in their place), with a warning.
    pub fn grant_entry(
        &self,
        addr: IpAddr,
        name: &str,
        name_id: u32,
        expiry_ns: u64,
    ) -> Option<PortRules> {
        let named: Vec<PortRule> = self
            .hosts_for(name)
            .flat_map(|h| &h.rules)
            .map(|r| PortRule {
                flags: r.flags | RULE_F_NAMED,
                ..*r
            })
            .collect();
        if named.is_empty() {
            return None;
        }
        let covering = self
            .cidr_entry(addr)
            .map_or(&[][..], |(_, r)| &r.rules[..r.count as usize]);
        let mut candidates: Vec<PortRule> = covering.iter().copied().chain(named).collect();
        // Stable: within one rule id the order stays.
        candidates.sort_by_key(|r| r.rule_id);
        let mut rules: Vec<PortRule> = Vec::new();
        for candidate in candidates {
            // A rule an earlier one fully covers never matches first, unless the earlier is
            // a name's (it lapses with the grant while a CIDR rule must not).
            let covered = rules.iter().any(|r| {
                shadows(r, &candidate)
                    && (r.flags & RULE_F_NAMED == 0 || candidate.flags & RULE_F_NAMED != 0)
            });
            if covered {
                continue;
            }
            if rules.len() == MAX_PORT_RULES {
                tracing::warn!(
                    name,
                    %addr,
                    rule = candidate.rule_id,
                    "more port rules apply to a granted address than one entry holds; the later ones are left out for it"
                );
                break;
            }
            rules.push(candidate);
        }
        let mut value = PortRules {
            name_id,
            expiry_ns,
            ..PortRules::default()
        };
        for (slot, rule) in value.rules.iter_mut().zip(&rules) {
            *slot = *rule;
        }
        value.count = u32::try_from(rules.len()).unwrap_or_default();
        Some(value)
    }
}

/// `addr` as the kernel judges it: IPv4-mapped IPv6 as IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The longest prefix in `entries` (sorted by network, then prefix length) containing
/// `addr`: one binary search per prefix length, longest first.
fn longest<const N: usize>(
    entries: &[([u8; N], u32, PortRules)],
    addr: [u8; N],
) -> Option<(u32, &PortRules)> {
    let bits = u32::try_from(N * 8).unwrap_or_default();
    (0..=bits).rev().find_map(|len| {
        let net = masked(addr, len);
        entries
            .binary_search_by(|(a, l, _)| (a, l).cmp(&(&net, &len)))
            .ok()
            .map(|i| (len, &entries[i].2))
    })
}

/// `addr` with all but its first `len` bits cleared.
fn masked<const N: usize>(mut addr: [u8; N], len: u32) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let start = u32::try_from(i * 8).unwrap_or(u32::MAX);
        if start >= len {
            *byte = 0;
        } else if len - start < 8 {
            *byte &= 0xff_u8 << (8 - (len - start));
        }
    }
    addr
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use agent_common::egress::{PROTO_TCP, PROTO_UDP, RULE_F_APPROVAL};

    use super::*;
    use crate::policy::{
        compile_egress,
        egress::{AllowRule, Destination, EgressPolicy, HostPattern, PortRange},
    };

    fn rule(dest: &str, ports: &[(u16, u16)], protocols: u8) -> AllowRule {
        AllowRule {
            dest: match dest.parse() {
                Ok(net) => Destination::Cidr(net),
                Err(_) => Destination::Host(HostPattern::parse(dest).unwrap()),
            },
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocols,
            comment: None,
            name: None,
            requires_approval: false,
            read_only: false,
        }
    }

    fn compiled(allow: Vec<AllowRule>) -> CompiledEgress {
        compile_egress(
            "demo",
            &EgressPolicy {
                allow,
                ..EgressPolicy::default()
            },
        )
        .unwrap()
    }

    /// (rule id, named) of each rule, in order.
    fn ids(r: &PortRules) -> Vec<(u32, bool)> {
        r.rules[..r.count as usize]
            .iter()
            .map(|r| (r.rule_id, r.flags & RULE_F_NAMED != 0))
            .collect()
    }

    #[test]
    fn masks_and_finds_the_longest_prefix() {
        assert_eq!(masked([10, 1, 255, 7], 12), [10, 0, 0, 0]);
        assert_eq!(masked([10, 31, 255, 7], 12), [10, 16, 0, 0]);
        assert_eq!(masked([1, 2, 3, 4], 0), [0; 4]);
        let c = compiled(vec![
            rule("10.0.0.0/8", &[(80, 80)], PROTO_TCP),
            rule("10.1.0.0/16", &[(443, 443)], PROTO_TCP),
            rule("::/0", &[], PROTO_UDP),
        ]);
        let at = |a: [u8; 4]| c.cidr_entry(IpAddr::from(a)).map(|(len, _)| len);
        assert_eq!(at([10, 1, 2, 3]), Some(16));
        assert_eq!(at([10, 2, 2, 3]), Some(8));
        assert_eq!(at([11, 0, 0, 1]), None);
        // IPv4-mapped IPv6 is IPv4.
        let mapped = IpAddr::from(Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped());
        assert_eq!(c.cidr_entry(mapped).map(|(len, _)| len), Some(16));
        assert_eq!(
            c.cidr_entry("2001:db8::1".parse().unwrap()).map(|(l, _)| l),
            Some(0)
        );
    }

    #[test]
    fn a_grant_merges_the_covering_cidr_rules_in_list_order() {
        let c = compiled(vec![
            rule("10.0.0.0/8", &[(22, 22)], PROTO_TCP),
            rule("api.example.test", &[(443, 443)], PROTO_TCP),
            rule("10.0.0.0/8", &[(80, 80)], PROTO_TCP),
            rule("*.example.test", &[(8443, 8443)], PROTO_TCP),
            rule("other.example.test", &[(1, 1)], PROTO_TCP),
        ]);
        let g = c
            .grant_entry(IpAddr::from([10, 0, 0, 9]), "api.example.test", 7, 99)
            .unwrap();
        assert_eq!(ids(&g), vec![(0, false), (1, true), (2, false), (3, true)]);
        assert_eq!((g.name_id, g.expiry_ns), (7, 99));
        // Outside every CIDR: the name's rules alone.
        let g = c
            .grant_entry(IpAddr::from([192, 0, 2, 1]), "api.example.test", 7, 99)
            .unwrap();
        assert_eq!(ids(&g), vec![(1, true), (3, true)]);
        // No host rule admits the name: no grant.
        assert!(c
            .grant_entry(IpAddr::from([192, 0, 2, 1]), "api.example", 7, 99)
            .is_none());
    }

    #[test]
    fn a_named_rule_does_not_shadow_a_cidr_rule_it_lapses_before() {
        let c = compiled(vec![
            rule("api.example.test", &[], PROTO_TCP | PROTO_UDP),
            rule("10.0.0.0/8", &[(80, 80)], PROTO_TCP),
            rule("api.example.test", &[(443, 443)], PROTO_TCP),
        ]);
        let g = c
            .grant_entry(IpAddr::from([10, 0, 0, 9]), "api.example.test", 1, 1)
            .unwrap();
        // allow[2] never matches first (allow[0] lapses with it); allow[1] must stay.
        assert_eq!(ids(&g), vec![(0, true), (1, false)]);
    }

    #[test]
    fn flags_are_kept_and_the_tail_is_left_out_past_the_limit() {
        let mut approval = rule("api.example.test", &[(443, 443)], PROTO_TCP);
        approval.requires_approval = true;
        let mut allow = vec![approval];
        for i in 0..20u16 {
            allow.push(rule("10.0.0.0/8", &[(1000 + i, 1000 + i)], PROTO_TCP));
        }
        // The CIDR entry alone would not fit 20: keep 15 of them.
        allow.truncate(16);
        allow.push(rule("*.example.test", &[(9, 9)], PROTO_TCP));
        let c = compiled(allow);
        let g = c
            .grant_entry(IpAddr::from([10, 0, 0, 9]), "api.example.test", 1, 1)
            .unwrap();
        assert_eq!(g.count as usize, MAX_PORT_RULES);
        assert_eq!(g.rules[0].flags, RULE_F_APPROVAL | RULE_F_NAMED);
        // allow[16] (the wildcard, last in the list) did not fit.
        assert!(ids(&g).iter().all(|(id, _)| *id < 16));
    }

    #[test]
    fn exact_entries_are_found_for_revocation() {
        let c = compiled(vec![
            rule("10.0.0.9/32", &[(80, 80)], PROTO_TCP),
            rule("10.0.0.0/8", &[(81, 81)], PROTO_TCP),
        ]);
        assert!(c.exact_entry(IpAddr::from([10, 0, 0, 9])).is_some());
        assert!(c.exact_entry(IpAddr::from([10, 0, 0, 8])).is_none());
    }
}
