//! What every decision event says: the verdict and the rule that decided.

use std::{fmt, str::FromStr};

use agent_common::event::Verdict as KernelVerdict;

use super::named::{named_enum, UnknownName};

named_enum! {
    /// The outcome of a decision, as events name it.
    pub enum Verdict ("verdict", numeric) {
        /// The operation went ahead.
        Allow = "allow",
        /// The operation failed with EPERM.
        Deny = "deny",
        /// The kill tier killed the process before the operation's result was used.
        Killed = "killed",
        /// Nothing was decided: the event only reports.
        Observed = "observed",
        /// The kill tier could not kill: the operation went ahead although forbidden.
        KillFailed = "kill-failed",
        /// Refused until a person approves.
        PendingApproval = "pending-approval",
        /// Refused because the cage is over a hard budget.
        Budget = "budget",
    }
}

impl Verdict {
    /// The verdict of a raw kernel value.
    pub fn from_raw(v: u8) -> Self {
        match KernelVerdict::from_u8(v) {
            Some(KernelVerdict::Allow) => Self::Allow,
            Some(KernelVerdict::Deny) => Self::Deny,
            Some(KernelVerdict::Killed) => Self::Killed,
            Some(KernelVerdict::Observed) => Self::Observed,
            Some(KernelVerdict::KillFailed) => Self::KillFailed,
            Some(KernelVerdict::PendingApproval) => Self::PendingApproval,
            Some(KernelVerdict::Budget) => Self::Budget,
            None => Self::Other(u16::from(v)),
        }
    }

    /// Whether the operation was stopped (refused or killed).
    pub fn refused(self) -> bool {
        !matches!(self, Self::Allow | Self::Observed | Self::KillFailed)
    }
}

/// The rule that decided, as events name it (`egress.allow[2]`, `default-deny`, ...).
///
/// Indexed variants count within their list of the policy that decided (the event's
/// `policy_hash` names it), so the rule's text can always be found again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleRef {
    /// `egress.allow[N]`: an allow-list rule.
    EgressAllow(u32),
    /// `default-deny`: no allow-list rule matched.
    DefaultDeny,
    /// `socket-kind`: a raw or non-TCP/UDP socket, refused.
    SocketKind,
    /// `raw-sockets-allowed`: such a socket, allowed by `raw_sockets: true`.
    RawSocketsAllowed,
    /// `no-cage`: the caller is in no known cage but its socket is a cage's (fail closed).
    NoCage,
    /// `ip-options`: an IPv4 packet with options, dropped.
    IpOptions,
    /// `routing-header`: an IPv6 packet with a routing header, dropped.
    RoutingHeader,
    /// `budget`: the cage is over a hard budget.
    Budget,
    /// `exec.allow[N]`.
    ExecAllow(u32),
    /// `exec.deny[N]`.
    ExecDeny(u32),
    /// `exec[N]`: an exec rule id the deciding policy does not have (should not happen).
    ExecRule(u32),
    /// `approvals.exec[N]`: a program that needs a person's approval.
    ApprovalsExec(u32),
    /// `default`: no exec rule matched; `exec.default` decided.
    ExecDefault,
    /// `loader`: a dynamic loader run as a program, in a cage with exec rules.
    Loader,
    /// `content-unknown`: kill tier, content rules, and content the daemon had not read.
    ContentUnknown,
    /// `files.protect[N]`.
    FilesProtect(u32),
    /// `files.watch[N]`.
    FilesWatch(u32),
    /// `files[N]`: a file rule id the deciding policy does not have (should not happen).
    FileRule(u32),
    /// `too-deep`: a file below more directories than the kernel walks up.
    TooDeep,
    /// `no-userns`: user namespaces are refused in cages with file rules.
    NoUserns,
    /// `read-only`: the cage is on the read-only rung.
    ReadOnly,
    /// `ingress.allow[N]`: a peer the ingress list admits.
    IngressAllow(u32),
    /// `unix.allow[N]`: a Unix-socket address the list admits.
    UnixAllow(u32),
    /// `unnamed-socket`: a Unix socket with no address (a socket pair made outside the cage).
    Unnamed,
    /// `app-socket`: the daemon's application socket, which every cage may reach.
    AppSocket,
    /// `dns-unredirected`: DNS that could not go to the cage's resolver (a socket made
    /// outside the cage, or no resolver of that family), refused.
    DnsUnredirected,
    /// `dns-name-not-allowed`: a query for a name no `host:` rule admits, refused.
    DnsNameNotAllowed,
    /// `dns-query-type`: a query of a type other than A or AAAA, refused.
    DnsQueryType,
}

/// Makes an indexed rule from its index.
type Indexed = fn(u32) -> RuleRef;

/// `(list, constructor)` of the indexed forms.
const INDEXED: &[(&str, Indexed)] = &[
    ("egress.allow", RuleRef::EgressAllow),
    ("exec.allow", RuleRef::ExecAllow),
    ("exec.deny", RuleRef::ExecDeny),
    ("exec", RuleRef::ExecRule),
    ("approvals.exec", RuleRef::ApprovalsExec),
    ("files.protect", RuleRef::FilesProtect),
    ("files.watch", RuleRef::FilesWatch),
    ("files", RuleRef::FileRule),
    ("ingress.allow", RuleRef::IngressAllow),
    ("unix.allow", RuleRef::UnixAllow),
];

impl RuleRef {
    /// The fixed name of a rule without an index.
    fn fixed(self) -> Option<&'static str> {
        Some(match self {
            Self::DefaultDeny => "default-deny",
            Self::SocketKind => "socket-kind",
            Self::RawSocketsAllowed => "raw-sockets-allowed",
            Self::NoCage => "no-cage",
            Self::IpOptions => "ip-options",
            Self::RoutingHeader => "routing-header",
            Self::Budget => "budget",
            Self::ExecDefault => "default",
            Self::Loader => "loader",
            Self::ContentUnknown => "content-unknown",
            Self::TooDeep => "too-deep",
            Self::NoUserns => "no-userns",
            Self::ReadOnly => "read-only",
            Self::Unnamed => "unnamed-socket",
            Self::AppSocket => "app-socket",
            Self::DnsUnredirected => "dns-unredirected",
            Self::DnsNameNotAllowed => "dns-name-not-allowed",
            Self::DnsQueryType => "dns-query-type",
            _ => return None,
        })
    }

    /// The list and index of an indexed rule.
    fn indexed(self) -> Option<(&'static str, u32)> {
        Some(match self {
            Self::EgressAllow(i) => ("egress.allow", i),
            Self::ExecAllow(i) => ("exec.allow", i),
            Self::ExecDeny(i) => ("exec.deny", i),
            Self::ExecRule(i) => ("exec", i),
            Self::ApprovalsExec(i) => ("approvals.exec", i),
            Self::FilesProtect(i) => ("files.protect", i),
            Self::FilesWatch(i) => ("files.watch", i),
            Self::FileRule(i) => ("files", i),
            Self::IngressAllow(i) => ("ingress.allow", i),
            Self::UnixAllow(i) => ("unix.allow", i),
            _ => return None,
        })
    }

    /// The index into the egress allow list, for `egress.allow[N]`.
    pub fn egress_allow(self) -> Option<usize> {
        match self {
            Self::EgressAllow(i) => usize::try_from(i).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.fixed(), self.indexed()) {
            (Some(name), _) => f.write_str(name),
            (None, Some((list, i))) => write!(f, "{list}[{i}]"),
            (None, None) => unreachable!("every rule is fixed or indexed"),
        }
    }
}

impl FromStr for RuleRef {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownName {
            what: "rule",
            got: s.to_owned(),
        };
        if let Some((list, rest)) = s.split_once('[') {
            let i: u32 = rest
                .strip_suffix(']')
                .and_then(|n| n.parse().ok())
                .ok_or_else(unknown)?;
            return INDEXED
                .iter()
                .find(|(name, _)| *name == list)
                .map(|(_, make)| make(i))
                .ok_or_else(unknown);
        }
        [
            Self::DefaultDeny,
            Self::SocketKind,
            Self::RawSocketsAllowed,
            Self::NoCage,
            Self::IpOptions,
            Self::RoutingHeader,
            Self::Budget,
            Self::ExecDefault,
            Self::Loader,
            Self::ContentUnknown,
            Self::TooDeep,
            Self::NoUserns,
            Self::ReadOnly,
            Self::Unnamed,
            Self::AppSocket,
            Self::DnsUnredirected,
            Self::DnsNameNotAllowed,
            Self::DnsQueryType,
        ]
        .into_iter()
        .find(|r| r.fixed() == Some(s))
        .ok_or_else(unknown)
    }
}

impl serde::Serialize for RuleRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RuleRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_form_round_trips() {
        let all = [
            RuleRef::EgressAllow(3),
            RuleRef::DefaultDeny,
            RuleRef::SocketKind,
            RuleRef::RawSocketsAllowed,
            RuleRef::NoCage,
            RuleRef::IpOptions,
            RuleRef::RoutingHeader,
            RuleRef::Budget,
            RuleRef::ExecAllow(0),
            RuleRef::ExecDeny(1),
            RuleRef::ExecRule(9),
            RuleRef::ApprovalsExec(2),
            RuleRef::ExecDefault,
            RuleRef::Loader,
            RuleRef::ContentUnknown,
            RuleRef::FilesProtect(4),
            RuleRef::FilesWatch(5),
            RuleRef::FileRule(6),
            RuleRef::TooDeep,
            RuleRef::NoUserns,
            RuleRef::ReadOnly,
            RuleRef::IngressAllow(7),
            RuleRef::UnixAllow(8),
            RuleRef::Unnamed,
            RuleRef::AppSocket,
            RuleRef::DnsUnredirected,
            RuleRef::DnsNameNotAllowed,
            RuleRef::DnsQueryType,
        ];
        for r in all {
            assert_eq!(r.to_string().parse::<RuleRef>().unwrap(), r, "{r}");
        }
        assert_eq!(RuleRef::EgressAllow(3).to_string(), "egress.allow[3]");
        assert_eq!(RuleRef::EgressAllow(3).egress_allow(), Some(3));
        assert!("egress.allow[x]".parse::<RuleRef>().is_err());
        assert!("nothing".parse::<RuleRef>().is_err());
    }

    #[test]
    fn kernel_verdicts_have_names_and_unknown_ones_numbers() {
        assert_eq!(Verdict::from_raw(2), Verdict::Deny);
        assert_eq!(Verdict::from_raw(6).to_string(), "pending-approval");
        assert_eq!(Verdict::from_raw(99).to_string(), "99");
        assert!(Verdict::Killed.refused() && !Verdict::Observed.refused());
    }
}
