//! Unix-socket decisions: the kernel's record, its typed fields, and the event made of it.

use agent_common::{
    egress::{RULE_DEFAULT_DENY, RULE_NO_CAGE},
    unix::{UnixEvent, UnixHook as KernelHook, RULE_APP_SOCKET, RULE_UNNAMED, UNIX_PATH_MAX},
};
use serde::{Deserialize, Serialize};

use super::{
    decision::{RuleRef, Verdict},
    egress::SockType,
    named::named_enum,
};
use crate::policy::AgentPolicy;

named_enum! {
    /// The hook that decided.
    pub enum UnixHook ("unix hook", numeric) {
        /// cgroup/connect_unix: the address the caller gave.
        Connect = "connect_unix",
        /// cgroup/sendmsg_unix: a datagram's address.
        Sendmsg = "sendmsg_unix",
        /// BPF LSM unix_stream_connect: the listener's address.
        LsmStreamConnect = "lsm_unix_stream_connect",
        /// BPF LSM unix_may_send: the receiver's address.
        LsmMaySend = "lsm_unix_may_send",
    }
}

impl UnixHook {
    /// The hook of a raw kernel value.
    pub fn from_raw(v: u8) -> Self {
        match KernelHook::from_u8(v) {
            Some(KernelHook::Connect) => Self::Connect,
            Some(KernelHook::Sendmsg) => Self::Sendmsg,
            Some(KernelHook::LsmStreamConnect) => Self::LsmStreamConnect,
            Some(KernelHook::LsmMaySend) => Self::LsmMaySend,
            None => Self::Other(u16::from(v)),
        }
    }
}

/// A Unix-socket connect or send, judged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnixDetail {
    /// The hook that decided.
    pub hook: UnixHook,
    /// The address judged: a path, or `@name` for an abstract socket (bytes that are not
    /// printable as `\xNN`); none when the peer has no address.
    pub path: Option<String>,
    /// The socket type.
    pub sock_type: SockType,
    /// `allow` or `deny`.
    pub verdict: Verdict,
    /// The rule that decided.
    pub rule: RuleRef,
    /// The entry's text, for allow-list rules.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rule_text: Option<String>,
}

/// The rule a kernel rule id names.
pub fn rule_ref(rule_id: u32) -> RuleRef {
    match rule_id {
        RULE_DEFAULT_DENY => RuleRef::DefaultDeny,
        RULE_NO_CAGE => RuleRef::NoCage,
        RULE_UNNAMED => RuleRef::Unnamed,
        RULE_APP_SOCKET => RuleRef::AppSocket,
        n => RuleRef::UnixAllow(n),
    }
}

/// An address as events show it: a path as it is, an abstract name as `@name`.
pub fn display_address(addr: &[u8]) -> String {
    let (prefix, bytes) = match addr.split_first() {
        Some((0, name)) => ("@", name),
        _ => ("", addr),
    };
    let mut out = String::from(prefix);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The event detail of a kernel record, with the entry's text from the policy that decided.
pub fn detail(e: &UnixEvent, policy: Option<&AgentPolicy>) -> UnixDetail {
    let rule = rule_ref(e.rule_id);
    let rule_text = match rule {
        RuleRef::UnixAllow(i) => policy
            .and_then(|p| p.unix.as_ref())
            .and_then(|u| u.allow.get(usize::try_from(i).ok()?))
            .map(|entry| format!("unix.allow[{i}] {entry}")),
        _ => None,
    };
    let given = &e.addr[..usize::from(e.len).min(UNIX_PATH_MAX)];
    // A path ends at its first NUL, as the kernel reads it; an abstract name begins with one.
    let addr = match given.iter().position(|&b| b == 0) {
        Some(end) if end > 0 => &given[..end],
        _ => given,
    };
    UnixDetail {
        hook: UnixHook::from_raw(e.hook),
        path: (!addr.is_empty()).then(|| display_address(addr)),
        sock_type: SockType::from_raw(e.sock_type),
        verdict: Verdict::from_raw(e.verdict),
        rule,
        rule_text,
    }
}

#[cfg(test)]
mod tests {
    use agent_common::event::{EventHeader, EventKind};

    use super::*;
    use crate::policy::Policy;

    fn raw(addr: &[u8], rule_id: u32, verdict: u8) -> UnixEvent {
        let mut bytes = [0u8; UNIX_PATH_MAX];
        bytes[..addr.len()].copy_from_slice(addr);
        UnixEvent {
            header: EventHeader {
                kind: EventKind::Unix as u32,
                agent_id: 1,
                policy_slot: 1,
                _pad: 0,
                ts_ns: 1,
                cgroup_id: 1,
                pid: 1,
                tgid: 1,
                comm: [0; 16],
            },
            addr: bytes,
            len: addr.len() as u16,
            sock_type: 1,
            rule_id,
            verdict,
            hook: 3,
            _pad: [0; 6],
        }
    }

    #[test]
    fn paths_abstract_names_and_rules_are_named() {
        let policy = Policy::from_yaml(
            "version: 1\nagents:\n  a:\n    unix:\n      allow: [/run/a.sock, \"@bus\"]\n",
            "t.yaml",
        )
        .unwrap();
        let d = detail(&raw(b"\0bus", 1, 1), policy.agent("a"));
        assert_eq!(d.path.as_deref(), Some("@bus"));
        assert_eq!(d.rule, RuleRef::UnixAllow(1));
        assert_eq!(d.rule_text.as_deref(), Some("unix.allow[1] @bus"));
        assert_eq!(d.hook, UnixHook::LsmStreamConnect);
        let d = detail(&raw(b"/var/run/docker.sock", RULE_DEFAULT_DENY, 2), None);
        assert_eq!(d.path.as_deref(), Some("/var/run/docker.sock"));
        assert_eq!((d.verdict, d.rule), (Verdict::Deny, RuleRef::DefaultDeny));
        // A path given with its NUL and padding, as sizeof(struct sockaddr_un) passes it.
        let d = detail(&raw(b"/run/x.sock\0\0\0", RULE_DEFAULT_DENY, 2), None);
        assert_eq!(d.path.as_deref(), Some("/run/x.sock"));
        let d = detail(&raw(b"", RULE_UNNAMED, 2), None);
        assert_eq!((d.path, d.rule), (None, RuleRef::Unnamed));
        assert_eq!(display_address(b"\0a\x01\xffb"), "@a\\u{1}\\xffb");
    }
}
