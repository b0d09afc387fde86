//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (policy file, control and
//! application protocols, ring-buffer records), each for a given time. Not part of `test`:
//! a fuzzing run finds what it finds in its own time; `test` runs the same entry points as
//! property tests (a few thousand inputs each). `fuzz/Cargo.lock` is committed, the main
//! lock file's versions plus libFuzzer's: a fresh resolution picks crates newer than the
//! toolchains this project pins.

use std::fs;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    setup::run_setup,
    util::{cargo, cmd, repo_root, run, tools_dir},
};

/// The targets, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/`.
pub const TARGETS: &[&str] = &["policy", "control", "app", "event"];
const CARGO_FUZZ_VERSION: &str = "0.13.1";

#[derive(Args)]
pub struct FuzzArgs {
    /// Fuzz only this target (repeatable; default: every one).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    run_setup()?;
    cargo_fuzz()?;
    let root = repo_root();
    for t in targets {
        // New inputs go to a work directory; the committed corpus is only read.
        let work = root.join("fuzz/target/corpus").join(t);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        run(cmd("cargo")
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", t])
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            // A parser that allocates without bound fails here, not only one that panics.
            .args(["-rss_limit_mb=2048", "-malloc_limit_mb=512"]))
        .with_context(|| {
            format!(
                "fuzz target {t} failed: an input that fails it is in fuzz/artifacts/{t}/, or \
                 its build failed (above)"
            )
        })?;
    }
    Ok(())
}

/// cargo-fuzz in `.tools/bin`, installed once.
fn cargo_fuzz() -> Result<()> {
    let bin = tools_dir().join("bin/cargo-fuzz");
    if bin.exists() {
        println!("fuzz: cargo-fuzz already in {}", bin.display());
        return Ok(());
    }
    run(cargo()
        .args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .arg("--root")
        .arg(tools_dir()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target has its source and a committed corpus with seeds.
    #[test]
    fn every_target_has_its_source_and_seeds() {
        let root = repo_root();
        for t in TARGETS {
            assert!(
                root.join("fuzz/fuzz_targets")
                    .join(format!("{t}.rs"))
                    .exists(),
                "{t}"
            );
            let seeds = fs::read_dir(root.join("fuzz/corpus").join(t))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(seeds > 0, "no seeds for {t}");
        }
    }
}
