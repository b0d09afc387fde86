//! `cargo xtask bench ...`: benchmarks. They print figures and targets; they are not tests and
//! do not fail when a target is missed.

pub mod capture;
mod common;
pub mod dns;
pub mod egress;
pub mod events;
mod export;
pub mod kill;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// connect()+close() cost: uncaged vs caged by agentcaged vs an nftables equivalent (root).
    Egress(egress::EgressArgs),
    /// What process capture costs: uncaged syscalls with the daemon running vs stopped, and
    /// fork+exec caged with full capture vs uncaged vs auditd (root).
    Capture(capture::CaptureArgs),
    /// The kill switch: time until a cage of 100 and 1,000 processes is frozen and until it
    /// is empty, beside the same processes frozen and killed by the cgroup files directly
    /// (root).
    Kill(kill::KillArgs),
    /// Events under load: distinct events per second into the spool with nothing lost, the
    /// daemon's CPU per thousand, spool bytes per event, a 1,000,000-denial flood, and the
    /// OTLP export rate to a local Rotel (root).
    Events(events::EventsArgs),
    /// Egress by name: resolution through the cage's resolver vs straight to the same
    /// upstream, and connect() to a name-granted address vs a CIDR-allowed one (root).
    Dns(dns::DnsArgs),
}

pub fn run_bench(bench: Bench) -> Result<()> {
    match bench {
        Bench::Egress(args) => egress::bench_egress(&args),
        Bench::Capture(args) => capture::bench_capture(&args),
        Bench::Kill(args) => kill::bench_kill(&args),
        Bench::Events(args) => events::bench_events(&args),
        Bench::Dns(args) => dns::bench_dns(&args),
    }
}
