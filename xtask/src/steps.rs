//! Running a command's steps in order and summing them up in one line, for `cargo xtask
//! test` and `cargo xtask lint`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// One step of a command.
pub struct Step<'a> {
    /// Its name, in the progress and summary lines.
    pub name: &'static str,
    /// Whether a failure stops the steps after it. fmt and clippy do not: a CI run is long, so
    /// it should also report what the tests say.
    pub blocking: bool,
    /// The work.
    pub run: Box<dyn Fn() -> Result<()> + 'a>,
}

impl<'a> Step<'a> {
    /// A step whose failure stops the steps after it.
    pub fn blocking(name: &'static str, run: impl Fn() -> Result<()> + 'a) -> Self {
        Self {
            name,
            blocking: true,
            run: Box::new(run),
        }
    }

    /// A step whose failure is reported, after the steps after it have run too.
    pub fn non_blocking(name: &'static str, run: impl Fn() -> Result<()> + 'a) -> Self {
        Self {
            name,
            blocking: false,
            run: Box::new(run),
        }
    }
}

/// Runs `steps` in order and prints `xtask COMMAND: passed in 12.3s (fmt ok 1.0s, ...)`;
/// an error naming the failed steps if any failed.
pub fn run_steps(command: &str, steps: &[Step]) -> Result<()> {
    let start = Instant::now();
    let mut results: Vec<String> = Vec::new();
    let mut failed: Vec<&str> = Vec::new();
    for step in steps {
        eprintln!("== xtask {command}: {}", step.name);
        let t = Instant::now();
        match (step.run)() {
            Ok(()) => results.push(format!("{} ok {}", step.name, secs(t.elapsed()))),
            Err(e) => {
                eprintln!("xtask {command}: {} failed: {e:#}", step.name);
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
        "xtask {command}: {verdict} in {} ({})",
        secs(start.elapsed()),
        results.join(", ")
    );
    if !failed.is_empty() {
        bail!("xtask {command} failed: {}", failed.join(", "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
