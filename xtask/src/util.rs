//! Small helpers shared by the commands: where the repository is, the PATH every child gets,
//! and running commands so that a failure names the command and how it failed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The workspace root: xtask lives one level below it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest dir has a parent")
        .to_path_buf()
}

/// `<repo>/.tools`: tools we build ourselves (bpf-linker and the LLVM symlinks it links to).
/// Inside the repository (gitignored) rather than /tmp because bpf-linker finds libLLVM through
/// an rpath into it, so it has to last.
pub fn tools_dir() -> PathBuf {
    repo_root().join(".tools")
}

/// The PATH for every child process: `<repo>/.tools/bin` first, so that the eBPF build (run
/// from agent-userspace's build.rs) finds our bpf-linker.
pub fn tools_path() -> OsString {
    let bin = tools_dir().join("bin");
    let mut dirs = vec![bin.clone()];
    if let Some(path) = std::env::var_os("PATH") {
        // Without a second copy when xtask runs under xtask, so the PATH (which
        // agent-userspace's build script watches) stays the same.
        dirs.extend(std::env::split_paths(&path).filter(|d| *d != bin));
    }
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// A command that runs in the repository root with [`tools_path`] as its PATH.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.current_dir(repo_root()).env("PATH", tools_path());
    c
}

/// The command line, for messages.
pub fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Spawns `c` and waits for it, with its output going where ours goes; an error unless it
/// exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let line = describe(c);
    eprintln!("+ {line}");
    let status = c
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `c` capturing its output, whatever its exit status; an error only if it cannot start.
pub fn capture(c: &mut Command) -> Result<Output> {
    c.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", describe(c)))
}

/// Runs `c` and returns its stdout; an error (carrying its stderr) unless it exits 0.
pub fn output(c: &mut Command) -> Result<String> {
    let out = capture(c)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(c)))
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fails with a clear message when not root; `what` says what needs it.
pub fn require_root(what: &str) -> Result<()> {
    let uid = euid();
    if uid != 0 {
        bail!(
            "{what} must run as root (it loads eBPF programs and manages cgroups), \
             but this is uid {uid}: run it from a root shell"
        );
    }
    Ok(())
}

/// `cargo`, with the tools PATH. Resolved through PATH (the rustup proxy) like any user would.
pub fn cargo() -> Command {
    cmd("cargo")
}
