//! `cargo xtask build`: setup, then every binary of the workspace.

use anyhow::Result;

use crate::setup::run_setup;
use crate::util::{cargo, run};

pub fn build(release: bool) -> Result<()> {
    run_setup()?;
    build_bins(release)
}

/// The eBPF crate only builds for bpfel-unknown-none: agent-userspace's build.rs builds it with
/// the nightly toolchain (which needs bpf-linker on our PATH). `--workspace` means every member, whatever
/// default-members says, so it has to be excluded by name.
pub const WORKSPACE_HOST: &[&str] = &["--workspace", "--exclude", "agent-ebpf"];

/// `cargo build --workspace --exclude agent-ebpf --bins`.
pub fn build_bins(release: bool) -> Result<()> {
    let mut c = cargo();
    c.arg("build").args(WORKSPACE_HOST).arg("--bins");
    if release {
        c.arg("--release");
    }
    run(&mut c)
}
