//! The project's task runner: `cargo xtask <command>` (see README). Each command lives in its
//! own module; this file only parses the command line.

mod bench;
mod build;
mod fuzz;
mod image;
mod lint;
mod package;
mod results;
mod run;
mod setup;
mod steps;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark agentcage"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (Debian packages, nightly rust-src, bpf-linker in
    /// .tools/, the VM kernels in .vm/). Idempotent.
    Setup,
    /// Setup, then build every binary of the workspace.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run agentcaged in the foreground with policies/default.yaml (root).
    Run {
        /// Extra arguments for agentcaged, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// fmt check, clippy for the host and for the BPF target; needs no root.
    Lint,
    /// The unit tests of every host crate, not the end-to-end suites; needs no root.
    Unit {
        /// Extra arguments for the test executables (`cargo test -- ARGS`), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The whole suite: setup, the lint steps, build, every test, then vm-test (root).
    Test {
        /// Extra arguments for the test binaries (`cargo test -- ARGS`), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, then the test suites on Debian's 5.10, 6.1 and 6.12 kernels under qemu,
    /// each once with BPF LSM active (deny tier) and once without (kill tier).
    VmTest(vm::VmArgs),
    /// Setup, release build, then the .deb (systemd unit, config, completions, man pages) in
    /// target/debian/.
    Package,
    /// Setup, release build, then the daemon's OCI image (agentcaged, agentcage,
    /// agentcage-runtime) in target/oci/, built offline.
    Image {
        /// From the debug binaries, to try the packaging without a release build.
        #[arg(long)]
        debug: bool,
    },
    /// The cargo-fuzz targets (policy, control and application protocols, ring-buffer
    /// records), each for a given time; needs nightly. Not part of `test`.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks (they measure and report; they pass or fail nothing).
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// The benchmark's workload, run as a separate process so every variant runs the same code.
    #[command(name = "__connect-loop", hide = true)]
    ConnectLoop(bench::egress::ConnectLoopArgs),
    /// A/AAAA queries in a loop, each timed, for `bench dns`.
    #[command(name = "__dns-loop", hide = true)]
    DnsLoop(bench::dns::DnsLoopArgs),
    /// One connect with a timeout, to check that a variant's filter really filters.
    #[command(name = "__connect-probe", hide = true)]
    ConnectProbe(bench::egress::ConnectProbeArgs),
    /// getpid()+openat()+close() in a loop, for `bench capture`.
    #[command(name = "__syscall-loop", hide = true)]
    SyscallLoop(bench::capture::SyscallLoopArgs),
    /// fork+exec of /bin/true in a loop, for `bench capture`.
    #[command(name = "__exec-loop", hide = true)]
    ExecLoop(bench::capture::ExecLoopArgs),
    /// N processes that wait to be killed, for `bench kill`.
    #[command(name = "__hold", hide = true)]
    Hold(bench::kill::HoldArgs),
    /// Denied UDP datagrams, to distinct destinations or one, for `bench events`.
    #[command(name = "__udp-send", hide = true)]
    UdpSend(bench::events::UdpSendArgs),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed here rather than by returning the error, which would add a stack
            // backtrace of xtask itself whenever RUST_BACKTRACE is set: noise, not help.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::run_setup(),
        Cmd::Build { release } => build::build(release),
        Cmd::Run { args } => run::run_daemon(&args),
        Cmd::Lint => lint::lint(),
        Cmd::Unit { args } => lint::unit(&args),
        Cmd::Test { args } => test::test(&args),
        // Setup here, not in vm: setup fetches the VM kernels, so vm must not import it.
        Cmd::VmTest(args) => setup::run_setup().and_then(|()| vm::vm_test(&args)),
        Cmd::Package => package::package(),
        Cmd::Image { debug } => image::image(debug),
        Cmd::Fuzz(args) => fuzz::fuzz(&args),
        Cmd::Bench { bench } => bench::run_bench(bench),
        Cmd::ConnectLoop(args) => bench::egress::connect_loop(&args),
        Cmd::ConnectProbe(args) => bench::egress::connect_probe(&args),
        Cmd::DnsLoop(args) => bench::dns::dns_loop(&args),
        Cmd::SyscallLoop(args) => bench::capture::syscall_loop(&args),
        Cmd::ExecLoop(args) => bench::capture::exec_loop(&args),
        Cmd::Hold(args) => bench::kill::hold(&args),
        Cmd::UdpSend(args) => bench::events::udp_send(&args),
    }
}
