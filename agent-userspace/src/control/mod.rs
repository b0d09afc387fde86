//! The daemon's two protocols. The control socket: a Unix stream socket speaking JSON lines
//! (one request, then one or more responses); access is root plus one optional group,
//! checked twice: by the socket file's mode (0660) and by the peer's kernel-reported
//! credentials. The application socket (`app`): application events from inside a cage, and
//! credential requests (`credential`).

pub mod app;
mod client;
pub mod credential;
mod peer;
mod protocol;

pub use client::{Client, ClientError};
pub use peer::{AccessPolicy, Peer};
pub use protocol::{
    AgentStatus, ContainedCage, ContainerStatus, ContainmentOutcome, Request, Response,
    StatusReport,
};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/agentcage/agentcage.sock";
/// Where the daemon takes application events unless told otherwise.
pub const DEFAULT_APP_SOCKET: &str = "/run/agentcage/app.sock";
