//! `cargo xtask test`: the whole suite, the one command README and CI run.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::build::{build_bins, WORKSPACE_HOST};
use crate::setup::run_setup;
use crate::util::{cargo, require_root, run};

struct Step<'a> {
    name: &'static str,
    /// Whether a failure stops the steps after it. fmt and clippy do not: a CI run is long, so
    /// it should also report what the tests say.
    blocking: bool,
    run: Box<dyn Fn() -> Result<()> + 'a>,
}

pub fn test(extra: &[String]) -> Result<()> {
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
            name: "build",
            // The tests would only repeat its errors.
            blocking: true,
            run: Box::new(|| build_bins(false)),
        },
        Step {
            name: "test",
            blocking: true,
            run: Box::new(|| {
                let mut c = cargo();
                c.arg("test").args(WORKSPACE_HOST);
                if !extra.is_empty() {
                    c.arg("--").args(extra);
                }
                run(&mut c)
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
    if !failed.is_empty() {
        bail!("xtask test failed: {}", failed.join(", "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
