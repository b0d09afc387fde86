//! Kernel records → the family parts of events, with the deciding rule's name and text.

use std::collections::HashMap;

use agent_common::{
    egress::{
        EgressEvent, Hook, RULE_BUDGET, RULE_DEFAULT_DENY, RULE_IP_OPTIONS, RULE_NO_CAGE,
        RULE_ROUTING_HEADER, RULE_SOCKET_ALLOWED, RULE_SOCKET_KIND,
    },
    event::Verdict,
    file::{
        FileEvent, ACCESS_READ, ACCESS_WRITE, OP_CREATE, OP_LINK, OP_OPEN, OP_RENAME, OP_TRUNCATE,
        OP_UNLINK, OP_USERNS, RULE_TOO_DEEP, RULE_USERNS,
    },
    maps::MAX_FILE_DEPTH,
    process::{ExecEvent, EXEC_F_ARGV_TRUNCATED, EXEC_F_FROM_LSM, EXEC_F_MMAP, EXEC_RULE_DEFAULT},
};

use crate::{
    events::{
        process::{dev_string, split_argv},
        EgressDetail, ExecDetail, FileDetail,
    },
    policy::AgentPolicy,
};

fn verdict_name(v: u8) -> String {
    Verdict::from_u8(v).map_or_else(|| v.to_string(), |v| v.name().to_owned())
}

/// NUL-terminated bytes → string (lossy).
fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An egress decision.
pub fn egress(e: &EgressEvent, policy: Option<&AgentPolicy>) -> EgressDetail {
    let rule_text = policy
        .and_then(|p| p.egress.allow.get(e.rule_id as usize))
        .map(|r| r.describe());
    let rule = match e.rule_id {
        RULE_DEFAULT_DENY => "default-deny".to_owned(),
        RULE_SOCKET_KIND => "socket-kind".to_owned(),
        RULE_SOCKET_ALLOWED => "raw-sockets-allowed".to_owned(),
        RULE_NO_CAGE => "no-cage".to_owned(),
        RULE_IP_OPTIONS => "ip-options".to_owned(),
        RULE_ROUTING_HEADER => "routing-header".to_owned(),
        RULE_BUDGET => "budget".to_owned(),
        n => format!("egress.allow[{n}]"),
    };
    let hook = Hook::from_u8(e.hook);
    let dst_addr = match (hook, e.family) {
        (Some(Hook::SockCreate), _) => None,
        (_, 2) => Some(std::net::IpAddr::from([
            e.addr[0], e.addr[1], e.addr[2], e.addr[3],
        ])),
        (_, _) => Some(std::net::IpAddr::from(e.addr)),
    };
    EgressDetail {
        hook: hook.map_or_else(|| e.hook.to_string(), |h| h.name().to_owned()),
        family: match e.family {
            2 => "ipv4".to_owned(),
            10 => "ipv6".to_owned(),
            f => f.to_string(),
        },
        protocol: match e.protocol {
            6 => "tcp".to_owned(),
            17 => "udp".to_owned(),
            p => p.to_string(),
        },
        sock_type: match e.sock_type {
            1 => "stream".to_owned(),
            2 => "dgram".to_owned(),
            3 => "raw".to_owned(),
            t => t.to_string(),
        },
        dst_addr,
        dst_port: e.port,
        verdict: verdict_name(e.verdict),
        rule,
        rule_text,
    }
}

/// An exec; the content hash is filled in later, outside the state lock.
pub fn exec(e: &ExecEvent, policy: Option<&AgentPolicy>) -> ExecDetail {
    let len = (e.argv_len as usize).min(e.argv.len());
    let (rule, rule_text) = if e.rule_id == EXEC_RULE_DEFAULT {
        let default = policy.map_or("allow", |p| match p.exec.default {
            crate::policy::ExecDefault::Allow => "allow",
            crate::policy::ExecDefault::Deny => "deny",
        });
        (
            "default".to_owned(),
            Some(format!("exec.default {default}")),
        )
    } else {
        let text = policy.and_then(|p| p.exec.describe_rule(e.rule_id));
        let name = text
            .as_deref()
            .and_then(|t| t.split_once(' '))
            .map_or_else(|| format!("exec[{}]", e.rule_id), |(n, _)| n.to_owned());
        (name, text)
    };
    ExecDetail {
        filename: c_str(&e.filename),
        argv: split_argv(&e.argv[..len]),
        argv_truncated: e.flags & EXEC_F_ARGV_TRUNCATED != 0,
        uid: e.uid,
        gid: e.gid,
        ppid: e.ppid,
        dev: dev_string(e.dev),
        inode: e.ino,
        sha256: None,
        sha256_error: None,
        verdict: verdict_name(e.verdict),
        hook: if e.flags & EXEC_F_MMAP != 0 {
            "lsm_mmap".to_owned()
        } else if e.flags & EXEC_F_FROM_LSM != 0 {
            "lsm".to_owned()
        } else {
            "tracepoint".to_owned()
        },
        rule,
        rule_text,
    }
}

/// An open of a watched or protected file.
pub fn file(
    e: &FileEvent,
    policy: Option<&AgentPolicy>,
    paths: Option<&HashMap<(u32, u64), String>>,
) -> FileDetail {
    let (rule, text) = match e.rule_id {
        RULE_TOO_DEEP => (
            "too-deep".to_owned(),
            Some(format!(
                "more than {MAX_FILE_DEPTH} directories deep in a cage with file rules"
            )),
        ),
        RULE_USERNS => (
            "no-userns".to_owned(),
            Some("no user namespaces in a cage with file rules".to_owned()),
        ),
        id => {
            let text = policy.and_then(|p| p.files.describe_rule(id));
            let rule = text
                .as_deref()
                .and_then(|t| t.split_once(' '))
                .map_or_else(|| format!("files[{id}]"), |(n, _)| n.to_owned());
            (rule, text)
        }
    };
    let access = match (e.access & ACCESS_READ != 0, e.access & ACCESS_WRITE != 0) {
        (true, true) => "read+write",
        (true, false) => "read",
        (false, true) => "write",
        (false, false) => "none",
    };
    FileDetail {
        path: if e.depth == 0 {
            paths.and_then(|p| p.get(&(e.dev, e.ino))).cloned()
        } else {
            None
        },
        dev: dev_string(e.dev),
        inode: e.ino,
        depth: e.depth,
        access: access.to_owned(),
        op: match e.op {
            OP_OPEN => "open",
            OP_TRUNCATE => "truncate",
            OP_UNLINK => "unlink",
            OP_RENAME => "rename",
            OP_LINK => "link",
            OP_CREATE => "create",
            OP_USERNS => "userns_create",
            _ => "other",
        }
        .to_owned(),
        verdict: verdict_name(e.verdict),
        rule,
        rule_text: text,
    }
}
