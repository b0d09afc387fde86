//! `cargo xtask test`: the whole suite, the one command README and CI run: the host tests,
//! then the same kind of suites on Debian's 5.10, 6.1 and 6.12 kernels under qemu
//! (`vm-test`).

use std::{
    cell::Cell,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::build::{build_bins, WORKSPACE_HOST};
use crate::setup::run_setup;
use crate::util::{cargo, cmd, describe, require_root, run};
use crate::vm;

struct Step<'a> {
    name: &'static str,
    /// Whether a failure stops the steps after it. fmt and clippy do not: a CI run is long, so
    /// it should also report what the tests say.
    blocking: bool,
    run: Box<dyn Fn() -> Result<()> + 'a>,
}

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

/// The number before `what` in e.g. `ok. 9 passed; 0 failed; ...`.
pub fn count(result: &str, what: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| part.trim_end().strip_suffix(what))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn test(extra: &[String]) -> Result<()> {
    let totals = Totals::default();
    // The end-to-end tests start the real daemon, so without root they could only fail.
    require_root("`cargo xtask test`")?;

    let steps = [
        Step {
            name: "setup",
            blocking: true,
            run: Box::new(run_setup),
        },
        Step {
            name: "fmt",
            blocking: false,
            run: Box::new(|| run(cargo().args(["fmt", "--all", "--", "--check"]))),
        },
        Step {
            name: "clippy",
            blocking: false,
            run: Box::new(|| {
                run(cargo().arg("clippy").args(WORKSPACE_HOST).args([
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        },
        Step {
            // The eBPF crate is not a host crate: lint it for its own target, as
            // aya-build builds it (nightly, build-std).
            name: "clippy-ebpf",
            blocking: false,
            run: Box::new(|| {
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
        },
        Step {
            name: "build",
            // The tests would only repeat its errors.
            blocking: true,
            run: Box::new(|| build_bins(false)),
        },
        Step {
            name: "test",
            // The VM boots run other kernels: worth their verdict whatever the host's.
            blocking: false,
            run: Box::new(|| {
                let mut c = cargo();
                // The host kernel refuses BPF LSM: it is the kill tier.
                c.arg("test")
                    .args(WORKSPACE_HOST)
                    .env("AGENTCAGE_EXPECT_TIER", "kill");
                if !extra.is_empty() {
                    c.arg("--").args(extra);
                }
                run_counting(&mut c, &totals)
            }),
        },
        Step {
            name: "vm-test",
            blocking: false,
            run: Box::new(|| {
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
            }),
        },
    ];

    let start = Instant::now();
    let mut results: Vec<String> = Vec::new();
    let mut failed: Vec<&str> = Vec::new();
    for step in &steps {
        eprintln!("== xtask test: {}", step.name);
        let t = Instant::now();
        match (step.run)() {
            Ok(()) => results.push(format!("{} ok {}", step.name, secs(t.elapsed()))),
            Err(e) => {
                eprintln!("xtask test: {} failed: {e:#}", step.name);
                results.push(format!("{} FAILED {}", step.name, secs(t.elapsed())));
                failed.push(step.name);
                if step.blocking {
                    break;
                }
            }
        }
    }
    for step in &steps[results.len()..] {
        results.push(format!("{} skipped", step.name));
    }
    let verdict = if failed.is_empty() {
        "passed"
    } else {
        "FAILED"
    };
    println!(
        "xtask test: {verdict} in {} ({})",
        secs(start.elapsed()),
        results.join(", ")
    );
    // The plain closing line CI reads: how many tests ran, and how many failed.
    println!(
        "tests: {} passed, {} failed",
        totals.passed.get(),
        totals.failed.get()
    );
    if !failed.is_empty() {
        bail!("xtask test failed: {}", failed.join(", "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_result_lines() {
        let r = "ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.33s";
        assert_eq!(count(r, " passed"), 9);
        assert_eq!(count(r, " failed"), 0);
        let f = "FAILED. 8 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count(f, " passed"), 8);
        assert_eq!(count(f, " failed"), 2);
    }
}
