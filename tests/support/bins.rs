//! Where the suites find the executables they start: the daemon and the CLI of
//! agent-userspace, and this crate's probe.
//!
//! cargo hands `CARGO_BIN_EXE_*` only to the tests of the package that owns the binaries, and
//! a test crate cannot make cargo build another package's binaries (artifact dependencies are
//! unstable). So they are looked up in the target directory this test executable was built
//! into (`target/debug/deps/egress-HASH` -> `target/debug/agentcaged`), where `cargo build
//! --workspace --exclude agent-ebpf --bins` (`cargo xtask test` runs it first) puts them. A
//! missing binary, or one older than its sources, fails the test with what to run.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::SystemTime,
};

/// Overrides where `agentcaged` and `agentcage` are taken from (e.g. `/usr/bin`, to test the
/// installed package); the probe still comes from the test's own target directory.
pub const BIN_DIR_ENV: &str = "AGENTCAGE_BIN_DIR";

/// What builds the binaries, for the messages.
const BUILD: &str =
    "build the binaries first: `cargo build --workspace --exclude agent-ebpf --bins` (`cargo xtask test` does)";

/// The directory of the running test executable's profile (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/debug/deps/NAME-HASH: the binaries sit one level above deps/.
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no target directory above it", exe.display()))
        .to_path_buf()
}

/// The daemon, `agentcaged`.
pub fn agentcaged() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| userspace_bin("agentcaged"))
}

/// The CLI, `agentcage`.
pub fn agentcage() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| userspace_bin("agentcage"))
}

/// The OCI runtime wrapper, `agentcage-runtime`.
pub fn agentcage_runtime() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| userspace_bin("agentcage-runtime"))
}

/// The probe workload (this crate's binary; `cargo test` builds it with the suites).
pub fn probe() -> PathBuf {
    let path = profile_dir().join("probe");
    assert!(
        path.is_file(),
        "the probe is missing at {}: `cargo test -p agentcage-tests` builds it, or \
         `cargo build -p agentcage-tests --bins`",
        path.display()
    );
    path
}

/// One of agent-userspace's binaries, checked to exist and (unless [`BIN_DIR_ENV`] chose it)
/// to be no older than the files cargo built it from.
fn userspace_bin(name: &str) -> String {
    let chosen = std::env::var_os(BIN_DIR_ENV).map(PathBuf::from);
    let path = chosen.clone().unwrap_or_else(profile_dir).join(name);
    let built = fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{name} is missing at {} ({e}): {BUILD}", path.display()));
    if chosen.is_none() {
        if let Some((source, changed)) = newest_input(&path) {
            assert!(
                changed <= built,
                "{} is older than {}, so it would test old code: {BUILD}",
                path.display(),
                source.display()
            );
        }
    }
    path.into_os_string()
        .into_string()
        .unwrap_or_else(|p| panic!("{name}'s path is not UTF-8: {p:?}"))
}

/// The most recently changed of the files cargo built `bin` from, as its dep-info file
/// (`bin.d`, beside it) lists them; None without one (`cargo xtask vm-test`'s initramfs holds
/// only the executables). A file newer than the binary makes cargo rebuild it, so this is
/// exactly cargo's notion of stale.
fn newest_input(bin: &Path) -> Option<(PathBuf, SystemTime)> {
    let dep_info = fs::read_to_string(bin.with_extension("d")).ok()?;
    let (_, inputs) = dep_info.lines().next()?.split_once(": ")?;
    let mut newest = None;
    for input in dep_info_paths(inputs) {
        newest_in(&input, &mut newest);
    }
    newest
}

/// The paths of a dep-info line: separated by spaces, a space inside a path escaped as `\ `.
fn dep_info_paths(line: &str) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    paths.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        paths.push(PathBuf::from(current));
    }
    paths
}

/// Folds `path` into `newest`; a directory (a build script's `rerun-if-changed`) by every file
/// under it, as cargo does.
fn newest_in(path: &Path, newest: &mut Option<(PathBuf, SystemTime)>) {
    let Ok(meta) = fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        for entry in fs::read_dir(path).into_iter().flatten().flatten() {
            newest_in(&entry.path(), newest);
        }
    } else if let Ok(changed) = meta.modified() {
        if newest.as_ref().is_none_or(|(_, t)| changed > *t) {
            *newest = Some((path.to_path_buf(), changed));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::dep_info_paths;

    #[test]
    fn dep_info_paths_split_on_unescaped_spaces() {
        assert_eq!(
            dep_info_paths("/a/b.rs /c\\ d/e.rs  /f"),
            [
                PathBuf::from("/a/b.rs"),
                PathBuf::from("/c d/e.rs"),
                PathBuf::from("/f")
            ]
        );
    }
}
