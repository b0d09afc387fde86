//! `cargo xtask bench ...`: benchmarks. They print figures and targets; they are not tests and
//! do not fail when a target is missed.

pub mod capture;
pub mod egress;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// connect()+close() cost: uncaged vs caged by agentcaged vs an nftables equivalent (root).
    Egress(egress::EgressArgs),
    /// What process capture costs: uncaged syscalls with the daemon running vs stopped, and
    /// fork+exec caged with full capture vs uncaged vs auditd (root).
    Capture(capture::CaptureArgs),
}

pub fn run_bench(bench: Bench) -> Result<()> {
    match bench {
        Bench::Egress(args) => egress::bench_egress(&args),
        Bench::Capture(args) => capture::bench_capture(&args),
    }
}
