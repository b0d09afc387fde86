//! agentcage: kernel-enforced containment for AI agents.
//!
//! The library behind the `agentcaged` daemon and the `agentcage` CLI, one module per
//! capability:
//! - [`accounts`]: the accounts agents run under (`run_as`), dynamic uids;
//! - [`cage`]: cgroup v2 discovery and the agents' cages;
//! - [`caps`]: capability sets, changed between fork and exec;
//! - [`confine`]: what a process becomes before it joins its cage (account, shield);
//! - [`bpf`]: loading, attaching and pinning the eBPF programs, and their maps;
//! - [`policy`]: the policy files (schema, parsing with locations, compiling to maps, hashing);
//! - [`events`]: decoding kernel events and the event bus;
//! - [`execwatch`]: exec rules by content in the kill tier (fanotify, hashed just in time);
//! - [`spool`]: the durable on-disk spool events are exported from;
//! - [`telemetry`]: OTLP export of the spool (logs, traces) and metrics;
//! - [`control`]: the control socket's protocol, server (peer checks) and client;
//! - [`certificates`]: behavior certificates (DSSE envelopes around in-toto statements);
//! - [`credentials`]: the node's keys, just-in-time credentials (JWTs) and their revocation;
//! - [`daemon`]: the daemon's state and main loop;
//! - [`cli`]: the command line;
//! - [`runtime`]: containment, approvals, budgets, assertions, application events;
//! - [`recording`]: asciicast recordings of agents' terminals;
//! - [`oci`]: `agentcage-runtime`, the OCI runtime wrapper that cages containers;
//! - [`selftest`]: `agentcage selftest`, the catalogue of ways out tried in a throwaway cage;
//! - [`doctor`]: what this kernel can do, probed;
//! - [`errors`]: rendering error chains for people;
//! - [`clock`]: wall, boot and the offset between them.

pub mod accounts;
pub mod bpf;
pub mod cage;
pub mod caps;
pub mod capture;
pub mod certificates;
pub mod cli;
pub mod clock;
pub mod confine;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod errors;
pub mod events;
pub mod execwatch;
pub mod fuzzing;
pub mod identity;
pub mod oci;
pub mod policy;
pub mod recording;
pub mod runtime;
pub mod selftest;
pub mod spool;
pub mod telemetry;
