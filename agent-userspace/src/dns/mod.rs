//! Egress by name: the resolver every cage must use.
//!
//! The kernel sends every DNS query of a caged process to its cage's endpoint on loopback
//! (`agent_common::dns`). Each cage has its own endpoint (UDP and TCP on one port, on
//! 127.0.0.1 and ::1), so the endpoint a query arrives on says which cage asked. The daemon
//! decides ([`Resolve`]): a name no `host:` rule admits, or a type other than A/AAAA, is
//! answered REFUSED and never sent upstream; an allowed one is asked upstream
//! ([`upstream`]), its addresses are granted to that cage in the kernel, and only then is
//! the answer sent back. Each cage's resolver keeps the answers it got ([`cache`]) for their
//! TTL; an answer from there still has its grants checked, or written again, before it
//! leaves.

pub mod cache;
pub mod config;
mod grants;
mod poll;
mod server;
mod sockets;
pub mod upstream;
pub mod wire;

pub use config::DnsConfig;
pub use grants::{CageGrants, Granted};
pub use server::{serve_endpoint, Endpoint, Resolve, Transport};
