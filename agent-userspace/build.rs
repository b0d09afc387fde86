//! Builds the eBPF programs (agent-ebpf) with aya-build so `cargo build` on stable builds
//! everything; the object is embedded in the binaries.

use std::{env, path::PathBuf};

use anyhow::{bail, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let repo = manifest_dir
        .parent()
        .context("agent-userspace has no parent directory")?;
    // `cargo xtask setup` installs bpf-linker into the repo's own .tools; put it on PATH for
    // the nested eBPF build so no global install is needed.
    let tools = repo.join(".tools").join("bin");
    let mut paths = vec![tools];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let joined = env::join_paths(&paths).context("joining PATH")?;
    if !paths.iter().any(|p| p.join("bpf-linker").is_file()) {
        bail!("bpf-linker not found in .tools/bin or on PATH: run `cargo xtask setup` first");
    }
    env::set_var("PATH", &joined);

    let ebpf_dir = repo.join("agent-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
