//! Builds the eBPF programs (agent-ebpf) so that `cargo build` on stable builds everything;
//! the object is embedded in the binaries (`OUT_DIR/agent`).
//!
//! This is what aya-build's `build_ebpf` does (a nested `rustup run nightly cargo build` for
//! `bpfel-unknown-none` with `-Z build-std=core`), but quiet: aya-build relays every line of
//! the nested build as `cargo:warning=`, so each build printed dozens of warnings. Here the
//! nested build's output is kept and shown only when it fails (cargo prints a failed build
//! script's stderr).

use std::{
    env,
    ffi::OsString,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};

/// The eBPF package, its directory beside this one.
const EBPF_PACKAGE: &str = "agent-ebpf";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain alone: a returned error would add this script's backtrace whenever
            // RUST_BACKTRACE is set, burying the eBPF compiler's messages above it.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let repo = manifest_dir
        .parent()
        .context("agent-userspace has no parent directory")?;
    // `cargo xtask setup` installs bpf-linker into the repo's own .tools; put it on PATH for
    // the nested eBPF build so no global install is needed.
    let tools = repo.join(".tools").join("bin");
    let mut paths = vec![tools];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    if !paths.iter().any(|p| p.join("bpf-linker").is_file()) {
        bail!("bpf-linker not found in .tools/bin or on PATH: run `cargo xtask setup` first");
    }
    let path = env::join_paths(&paths).context("joining PATH")?;

    let ebpf_dir = repo.join(EBPF_PACKAGE);
    // The build-dependency on agent-ebpf reruns this script when its library (or
    // agent-common) changes; the programs are its binaries, so watch its whole directory too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    for (name, object) in build_ebpf(&out_dir, &path)? {
        let dst = out_dir.join(&name);
        // An unchanged object keeps its time: the binaries built from it are then not
        // taken for stale (this script also reruns when only the features of a build
        // dependency differ, e.g. between `cargo build` and `cargo test`).
        let fresh = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
        if fs::read(&dst).ok().as_deref() != Some(fresh.as_slice()) {
            fs::write(&dst, &fresh).with_context(|| format!("writing {}", dst.display()))?;
        }
    }
    Ok(())
}

/// The BPF target of the host's byte order.
fn bpf_target() -> anyhow::Result<&'static str> {
    match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => Ok("bpfel-unknown-none"),
        Ok("big") => Ok("bpfeb-unknown-none"),
        other => bail!("unsupported target endianness {other:?}"),
    }
}

/// The `bpf_target_arch` cfg aya-ebpf reads: the host's architecture (riscv64 for every
/// riscv64 variant).
fn bpf_target_arch() -> anyhow::Result<String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    Ok(if arch.starts_with("riscv64") {
        "riscv64".to_owned()
    } else {
        arch
    })
}

/// Builds the eBPF package's binaries with the nightly toolchain into a target directory
/// under `out_dir` (its own: sharing ours would deadlock on cargo's lock), and returns each
/// binary's name and object file.
fn build_ebpf(out_dir: &Path, path: &OsString) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let target = bpf_target()?;
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{}\"", bpf_target_arch()?),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f.
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        EBPF_PACKAGE,
    ])
    .args([
        "--bins",
        "--release",
        "--target",
        target,
        "-Z",
        "build-std=core",
    ])
    // Artifacts as JSON on stdout; diagnostics rendered as text on stderr.
    .arg("--message-format=json-render-diagnostics")
    .arg("--target-dir")
    .arg(out_dir.join("ebpf-target"))
    .env("PATH", path)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    // Ours name the stable toolchain's compiler; the nested build must use nightly's.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let line = describe(&cmd);
    let output = cmd
        .output()
        .with_context(|| format!("could not start `{line}` (is rustup installed?)"))?;
    if !output.status.success() {
        // Shown by cargo under the failed build script's stderr.
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(&output.stderr)?;
        bail!("the eBPF build failed ({}): `{line}`", output.status);
    }
    let stdout = String::from_utf8(output.stdout).context("the eBPF build printed non-UTF-8")?;
    let mut objects = Vec::new();
    for json in stdout.lines() {
        let message: serde_json::Value = serde_json::from_str(json)
            .with_context(|| format!("the eBPF build printed a line that is not JSON: {json}"))?;
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            objects.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    if objects.is_empty() {
        bail!("the eBPF build succeeded but named no binary: `{line}`");
    }
    Ok(objects)
}

/// The command line, for messages (its environment would drown it).
fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}
