//! `cargo xtask package`: the .deb (cargo-deb), with shell completions and man pages generated
//! from the CLI's own clap definitions by the freshly built `agentcage`.

use std::fs;

use anyhow::{bail, Context as _, Result};

use crate::build::build_bins;
use crate::setup::run_setup;
use crate::util::{capture, cargo, cmd, repo_root, run, tools_dir};

/// The cargo-deb release that builds the package.
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn package() -> Result<()> {
    run_setup()?;
    cargo_deb().context("package: cargo-deb")?;
    build_bins(true)?;
    let root = repo_root();
    let assets = root.join("target/deb-assets");
    let completions = assets.join("completions");
    let man = assets.join("man");
    if assets.exists() {
        fs::remove_dir_all(&assets).with_context(|| format!("removing {}", assets.display()))?;
    }
    fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    let agentcage = root.join("target/release/agentcage");
    run(cmd(&agentcage).arg("manpages").arg(&man))?;
    for (shell, file) in [
        ("bash", "agentcage.bash"),
        ("zsh", "_agentcage"),
        ("fish", "agentcage.fish"),
    ] {
        let out = capture(cmd(&agentcage).args(["completions", shell]))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("`agentcage completions {shell}` failed ({})", out.status);
        }
        fs::write(completions.join(file), &out.stdout)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    // --no-build: the binaries were just built (with the eBPF object embedded), and cargo-deb
    // would otherwise build without our PATH to bpf-linker.
    run(cargo().args(["deb", "--no-build", "--package", "agent-userspace"]))?;
    let debs = root.join("target/debian");
    println!("package: .deb written to {}", debs.display());
    Ok(())
}

/// cargo-deb from PATH if it is there, else built into `.tools`.
fn cargo_deb() -> Result<()> {
    if capture(cargo().args(["deb", "--version"])).is_ok_and(|o| o.status.success()) {
        println!("package: cargo-deb already installed");
        return Ok(());
    }
    run(cargo()
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .arg("--root")
        .arg(tools_dir()))
}
