//! `cargo xtask test`: the whole suite, the one command README and CI run: the host tests,
//! then the same kind of suites on Debian's 5.10, 6.1 and 6.12 kernels under qemu
//! (`vm-test`).

use std::{
    cell::Cell,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::build::{build_bins, WORKSPACE_HOST};
use crate::results::count;
use crate::setup::run_setup;
use crate::steps::{run_steps, Step};
use crate::util::{cargo, describe, require_root};
use crate::{lint, vm};

/// Passed and failed tests, summed over every test binary's `test result:` line.
#[derive(Default)]
struct Totals {
    passed: Cell<u64>,
    failed: Cell<u64>,
}

/// Runs cargo test, echoing its output and adding up its `test result:` lines.
fn run_counting(c: &mut Command, totals: &Totals) -> Result<()> {
    let line = describe(c);
    eprintln!("+ {line}");
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for l in BufReader::new(stdout).lines() {
        let l = l.context("reading cargo test output")?;
        println!("{l}");
        if let Some(rest) = l.strip_prefix("test result: ") {
            totals
                .passed
                .set(totals.passed.get() + count(rest, " passed"));
            totals
                .failed
                .set(totals.failed.get() + count(rest, " failed"));
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

pub fn test(extra: &[String]) -> Result<()> {
    let totals = Totals::default();
    // The end-to-end tests start the real daemon, so without root they could only fail.
    require_root("`cargo xtask test`")?;

    let mut steps = vec![Step::blocking("setup", run_setup)];
    steps.extend(lint::steps());
    // The suites start the binaries this builds (they do not build them themselves), and
    // would only repeat its errors.
    steps.push(Step::blocking("build", || build_bins(false)));
    // The VM boots run other kernels: worth their verdict whatever the host's.
    steps.push(Step::non_blocking("test", || {
        let mut c = cargo();
        // The host kernel refuses BPF LSM: it is the kill tier.
        c.arg("test")
            .args(WORKSPACE_HOST)
            .env("AGENTCAGE_EXPECT_TIER", "kill");
        if !extra.is_empty() {
            c.arg("--").args(extra);
        }
        run_counting(&mut c, &totals)
    }));
    // The self-test on the host kernel: a throwaway daemon and cage, every way out tried.
    steps.push(Step::non_blocking("selftest", || {
        let cli = crate::util::repo_root().join("target/debug/agentcage");
        let mut c = Command::new(&cli);
        c.arg("selftest");
        let line = describe(&c);
        eprintln!("+ {line}");
        let status = c
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status}): something was not contained");
        }
        Ok(())
    }));
    steps.push(Step::non_blocking("vm-test", || {
        let outcomes = vm::run(&vm::VmArgs {
            kernels: Vec::new(),
            boots: Vec::new(),
            timeout: vm::DEFAULT_TIMEOUT_SECS,
            args: extra.to_vec(),
        })?;
        for o in &outcomes {
            totals.passed.set(totals.passed.get() + o.verdict.passed);
            totals.failed.set(totals.failed.get() + o.verdict.failed);
        }
        vm::report(&outcomes)
    }));

    let verdict = run_steps("test", &steps);
    // The plain closing line CI reads: how many tests ran, and how many failed.
    println!(
        "tests: {} passed, {} failed",
        totals.passed.get(),
        totals.failed.get()
    );
    verdict
}
