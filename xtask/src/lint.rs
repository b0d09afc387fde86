//! `cargo xtask lint` and `cargo xtask unit`: the gate that needs no root. fmt, clippy for the
//! host and for the BPF target, and the unit tests (every library's and binary's own tests,
//! not the end-to-end suites, which start the daemon). `cargo xtask test` runs the same lint
//! steps, as root, before everything else.

use anyhow::Result;

use crate::build::WORKSPACE_HOST;
use crate::setup::toolchain;
use crate::steps::{run_steps, Step};
use crate::util::{cargo, cmd, run};

/// fmt, clippy and clippy-ebpf, as steps of `lint` and of `test`. None blocks: each reports
/// on its own.
pub fn steps() -> Vec<Step<'static>> {
    vec![
        Step::non_blocking("fmt", || {
            run(cargo().args(["fmt", "--all", "--", "--check"]))
        }),
        Step::non_blocking("clippy", || {
            run(cargo().arg("clippy").args(WORKSPACE_HOST).args([
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }),
        // The eBPF crate is not a host crate: lint it for its own target, as
        // agent-userspace's build.rs builds it (nightly, build-std).
        Step::non_blocking("clippy-ebpf", || {
            run(cmd("rustup").args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "agent-ebpf",
                "--bins",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))
        }),
    ]
}

/// `cargo xtask lint`: the toolchain pieces the build needs, then [`steps`].
pub fn lint() -> Result<()> {
    let mut all = vec![Step::blocking("toolchain", toolchain)];
    all.extend(steps());
    run_steps("lint", &all)
}

/// `cargo xtask unit`: the toolchain pieces the build needs, then the unit tests of every
/// host crate (`--lib --bins`: the end-to-end suites of agentcage-tests are test targets, so
/// they stay out). `extra` goes to the test executables.
pub fn unit(extra: &[String]) -> Result<()> {
    toolchain()?;
    let mut c = cargo();
    c.arg("test").args(WORKSPACE_HOST).args(["--lib", "--bins"]);
    if !extra.is_empty() {
        c.arg("--").args(extra);
    }
    run(&mut c)
}
