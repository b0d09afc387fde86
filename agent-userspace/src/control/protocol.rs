//! Requests and responses. Each is one JSON object on one line.

use serde::{Deserialize, Serialize};

use super::credential::{AgentInventory, KeyInfo, LiveCredential};
use crate::{
    certificates::EnvelopeSignature, events::Event, runtime::approvals::Request as ApprovalRequest,
};

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon there, and which policy is in force?
    Ping {},
    /// Create the agent's cage if needed and keep it while this connection is open.
    Prepare {
        /// The agent's name.
        agent: String,
        /// The account asked for (`agentcage run --user`), within the policy's `run_as`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Move the calling process itself (by its kernel-reported pid) into the agent's cage.
    Join {
        /// The agent's name.
        agent: String,
    },
    /// Move a running process, with all its threads, into the agent's cage.
    Adopt {
        /// The agent's name.
        agent: String,
        /// The process to move.
        pid: u32,
    },
    /// Before an engine creates a container of `agent` (`agentcage-runtime`): whether the
    /// agent may run in a container, and what the container needs (nothing is held).
    ContainerPrepare {
        /// The agent's name.
        agent: String,
    },
    /// Make a container being created a cage of `agent`: the cgroup of `pid` (its init,
    /// alone there, before the container's own program runs) gets the agent's programs and
    /// policy. Sent by `agentcage-runtime`'s hook.
    ContainerCage {
        /// The agent's name.
        agent: String,
        /// The container's init process, as the host sees it.
        pid: u32,
        /// What the engine said of the container.
        container: crate::events::ContainerMeta,
    },
    /// Agents, cages, counters.
    Status {},
    /// Events: the recent ones, or (follow) every new one as it happens.
    Events {
        /// Stream new events until the client goes away.
        follow: bool,
    },
    /// Read the policy file again; a broken one is refused and the old one stays.
    Reload {},
    /// The agent's process tree: live processes and recently ended ones.
    Processes {
        /// The agent's name.
        agent: String,
    },
    /// The local web dashboard's address, with its access token.
    Dashboard {},
    /// The policy in force: its file, hash and canonical form.
    PolicyShow {},
    /// Validate `yaml`, swap it in, and write it to the daemon's policy file (so restarts
    /// and reloads keep it). A broken policy is refused and the old one stays.
    PolicyApply {
        /// The policy text.
        yaml: String,
        /// Where it came from, for error messages.
        source: String,
    },
    /// Move an agent's cage to a containment rung.
    Contain {
        /// The agent.
        agent: String,
        /// `observe`, `read_only`, `approval_required`, `paused` or `killed`.
        rung: String,
    },
    /// Thaw a paused cage and put it back on observe.
    Resume {
        /// The agent.
        agent: String,
    },
    /// Kill one agent's cage, or every cage (the kill switch).
    Kill {
        /// The agent; None with `all`.
        #[serde(default)]
        agent: Option<String>,
        /// Every cage.
        #[serde(default)]
        all: bool,
    },
    /// Approval requests.
    Approvals {},
    /// Grant an approval request.
    Approve {
        /// The request.
        id: u64,
        /// For how long, in seconds; the policy's `default_for` when absent.
        #[serde(default)]
        for_secs: Option<f64>,
    },
    /// Refuse an approval request.
    Deny {
        /// The request.
        id: u64,
    },
    /// Every agent the policy defines: identity, tier, certificate, whether it runs.
    Agents {},
    /// The node's signing keys and their JWKS.
    Keys {},
    /// Make a new signing key (the old public key stays until its tokens expired).
    KeysRotate {},
    /// Sign a behavior certificate (its DSSE envelope, JSON) with the node key.
    CertSign {
        /// The certificate file's text.
        certificate: String,
    },
    /// The live credentials.
    Credentials {},
    /// Revoke one live credential, or every live credential of an agent.
    Revoke {
        /// The token's id.
        #[serde(default)]
        jti: Option<String>,
        /// The agent.
        #[serde(default)]
        agent: Option<String>,
    },
}

/// What the daemon answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong {
        /// The daemon's version.
        version: String,
        /// SHA-256 of the policy in force.
        policy_hash: String,
    },
    /// The cage exists and is held for this connection.
    Prepared {
        /// The agent's name.
        agent: String,
        /// Its identity, `agent:NAME`.
        identity: String,
        /// The cage's cgroup directory.
        cgroup: String,
        /// SHA-256 of the policy the agent runs under.
        policy_hash: String,
        /// Whether the policy lets the agent use raw and packet sockets; when not, `run` also
        /// removes CAP_NET_RAW from the agent (packet sockets are invisible to the cgroup
        /// hooks).
        raw_sockets: bool,
        /// The policy file; `run` makes its directory read-only for a root agent.
        policy_source: String,
        /// The policy requires a recording (`record: always`): the daemon made this file and
        /// sends its open descriptor with this line (SCM_RIGHTS); `run` must write the
        /// session into it or not start the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recording: Option<crate::recording::RecordingGrant>,
        /// The account the agent runs as: `run` switches its child to it before the child
        /// joins, and the daemon refuses a joiner that holds another.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_as: Option<crate::accounts::RunAsGrant>,
    },
    /// The caller is now in the cage.
    Joined {
        /// The agent's name.
        agent: String,
        /// The cage's cgroup directory.
        cgroup: String,
    },
    /// The process is now in the cage.
    Adopted {
        /// The agent's name.
        agent: String,
        /// The process moved.
        pid: u32,
        /// The cage's cgroup directory.
        cgroup: String,
    },
    /// Answer to [`Request::ContainerPrepare`].
    ContainerPrepared {
        /// The agent's name.
        agent: String,
        /// Whether the policy lets the agent use raw and packet sockets (else the container
        /// loses CAP_NET_RAW).
        raw_sockets: bool,
        /// The application socket, for the wrapper to mount into the container.
        app_socket: String,
        /// SHA-256 of the policy in force.
        policy_hash: String,
    },
    /// The container's cgroup is a cage of the agent now.
    ContainerCaged {
        /// The agent's name.
        agent: String,
        /// The container's id.
        id: String,
        /// The container's cgroup directory.
        cgroup: String,
    },
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// A follow subscription is live: every event from now on will be sent.
    Subscribed,
    /// One event.
    Event {
        /// The event.
        event: Event,
    },
    /// Events this client missed (it read too slowly); they were not lost elsewhere.
    Lost {
        /// How many.
        count: u64,
    },
    /// The policy was reloaded.
    Reloaded {
        /// The file.
        source: String,
        /// SHA-256 of the new policy.
        policy_hash: String,
    },
    /// Answer to [`Request::Processes`].
    Processes {
        /// The agent's name.
        agent: String,
        /// Its processes, by pid.
        processes: Vec<crate::capture::ProcessNode>,
    },
    /// Answer to [`Request::Dashboard`].
    Dashboard {
        /// The address to open, token included (in the fragment).
        url: String,
    },
    /// The policy in force.
    Policy {
        /// Its file.
        source: String,
        /// Its SHA-256.
        policy_hash: String,
        /// Its canonical form.
        canonical: String,
    },
    /// Cages moved to a rung.
    Contained {
        /// One entry per cage.
        cages: Vec<ContainedCage>,
    },
    /// Sent after [`Response::Contained`] when it said `pending`: the snapshots are written
    /// and the killed cages are empty (or why not).
    ContainmentDone {
        /// One entry per cage that had work pending.
        cages: Vec<ContainmentOutcome>,
    },
    /// Approval requests.
    Approvals {
        /// Oldest first.
        requests: Vec<ApprovalRequest>,
    },
    /// An approval request after a decision.
    Approval {
        /// The request.
        request: ApprovalRequest,
    },
    /// Answer to [`Request::Agents`].
    Agents {
        /// The trust domain of their SPIFFE IDs.
        trust_domain: String,
        /// Every agent the policy defines, by name.
        agents: Vec<AgentInventory>,
    },
    /// Answer to [`Request::Keys`] and [`Request::KeysRotate`].
    Keys {
        /// The signing key's id.
        current: String,
        /// Every key still needed for verification, current first.
        keys: Vec<KeyInfo>,
        /// The same public keys as a JWKS document.
        jwks: serde_json::Value,
    },
    /// Answer to [`Request::CertSign`]: the signature to add.
    CertSigned {
        /// The node key's signature over the certificate's payload.
        signature: EnvelopeSignature,
    },
    /// Answer to [`Request::Credentials`] and [`Request::Revoke`].
    Credentials {
        /// Live ones, or those just revoked.
        credentials: Vec<LiveCredential>,
    },
    /// The request failed; nothing was changed.
    Error {
        /// What went wrong, for a person.
        message: String,
    },
}

/// The daemon's state, for `agentcage status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// The policy file in force.
    pub policy_source: String,
    /// Its SHA-256.
    pub policy_hash: String,
    /// The parent cgroup of every cage.
    pub cgroup_root: String,
    /// Events lost for callers in no known cage.
    pub global_lost: u64,
    /// The enforcement tier: `deny` (BPF LSM) or `kill`.
    #[serde(default)]
    pub tier: String,
    /// Why the tier is not deny, naming what the kernel lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_missing: Option<String>,
    /// Whether exec rules by content (sha256) are enforced.
    #[serde(default)]
    pub content_hashes: bool,
    /// Policy features this kernel cannot enforce, with why: an agent using one is refused.
    #[serde(default)]
    pub refused: Vec<crate::bpf::Refusal>,
    /// How policies' `unix:` sections are enforced, or why they cannot be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<crate::bpf::UnixConfinement>,
    /// Every host-wide hook and its state.
    #[serde(default)]
    pub hooks: Vec<crate::bpf::HookStatus>,
    /// One entry per cage.
    pub agents: Vec<AgentStatus>,
}

/// What containment did to one cage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainedCage {
    /// The agent.
    pub agent: String,
    /// The rung in force now (the previous one if it failed).
    pub rung: String,
    /// The rung before.
    pub previous: String,
    /// The forensic snapshot, if one is written.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The cage is frozen and its snapshot (and, for a kill, the kill) is still under way: a
    /// [`Response::ContainmentDone`] line follows.
    #[serde(default)]
    pub pending: bool,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// How the slow half of a containment ended for one cage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainmentOutcome {
    /// The agent.
    pub agent: String,
    /// The snapshot written, if it was.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// For a kill: no process is left in the cage.
    #[serde(default)]
    pub emptied: bool,
    /// What failed, if anything did.
    #[serde(default)]
    pub error: Option<String>,
}

/// One agent's cage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// The agent's name.
    pub name: String,
    /// `agent:NAME`.
    pub identity: String,
    /// The cage's cgroup directory.
    pub cgroup: String,
    /// The cage's cgroup id.
    pub cgroup_id: u64,
    /// Processes in the cage.
    pub pids: Vec<u32>,
    /// Allowed decisions.
    pub allowed: u64,
    /// Denied decisions.
    pub denied: u64,
    /// Events that could not be reported (ring buffer full).
    pub lost: u64,
    /// `lost` by event kind (`egress`, `exec`, `fork`, `exit`, `file`).
    #[serde(default)]
    pub lost_by_kind: std::collections::BTreeMap<String, u64>,
    /// Processes killed by the kill tier.
    #[serde(default)]
    pub killed: u64,
    /// The containment rung in force.
    #[serde(default)]
    pub rung: String,
    /// Over a hard budget: new egress is denied (verdict `budget`).
    #[serde(default)]
    pub throttled: bool,
    /// SHA-256 of the policy the cage's kernel entries were compiled from.
    #[serde(default)]
    pub policy_hash: String,
    /// Addresses the cage's resolver has granted it (for `host:` rules), now.
    #[serde(default)]
    pub dns_grants: u64,
    /// Grants evicted to keep within `dns.max_grants`, since the cage was made.
    #[serde(default)]
    pub dns_evicted: u64,
    /// The agent's SPIFFE ID.
    #[serde(default)]
    pub spiffe_id: String,
    /// The id of the behavior certificate in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Containers whose cgroups are cages of this agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStatus>,
}

/// A container caged as one of an agent's cgroups.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerStatus {
    /// What the engine said of it.
    pub container: crate::events::ContainerMeta,
    /// Its cgroup directory (the engine's).
    pub cgroup: String,
    /// Its cgroup id.
    pub cgroup_id: u64,
    /// Its processes.
    pub pids: Vec<u32>,
    /// Allowed decisions.
    pub allowed: u64,
    /// Denied decisions.
    pub denied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<Request>(r#"{"op":"status","extra":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"op":"adopt","agent":"a","pid":1,"x":2}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn join_request_has_the_wire_form_run_prebuilds() {
        // `agentcage run` builds this line before fork and sends it from the child, so its
        // exact form is part of the protocol.
        let line = serde_json::to_string(&Request::Join {
            agent: "demo".into(),
        })
        .unwrap();
        assert_eq!(line, r#"{"op":"join","agent":"demo"}"#);
        let ok = serde_json::to_string(&Response::Joined {
            agent: "demo".into(),
            cgroup: "/x".into(),
        })
        .unwrap();
        assert!(ok.starts_with(r#"{"type":"joined""#));
    }
}
