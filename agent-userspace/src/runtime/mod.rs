//! Enforcement beyond the kernel's egress lists, run by the daemon per agent session:
//! containment (the ladder and the kill switch), approvals, budgets and temporal
//! assertions. Each module holds one concern's logic and evaluates only (the policy
//! language is `policy`); the daemon feeds them from its event bus, keeps each concern's
//! per-agent state, and carries out what they decide (kernel maps, cgroup files).

pub mod approvals;
pub mod assertions;
pub mod budgets;
pub mod containment;
pub mod snapshot;
pub mod tally;

pub use containment::Rung;

pub use crate::clock::boot_ns;
