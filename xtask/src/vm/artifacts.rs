//! The executables a VM boot needs, built and located by cargo itself
//! (`--message-format=json`), so no path is guessed.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::build::WORKSPACE_HOST;
use crate::util::{cargo, describe};

/// What the build made: test executables by target name, and the binaries the tests start.
#[derive(Debug, Default)]
pub struct Artifacts {
    /// `[[test]]` targets, by name.
    pub tests: BTreeMap<String, PathBuf>,
    /// `[[bin]]` targets (agentcaged, agentcage, and the tests crate's probe), by name.
    pub bins: BTreeMap<String, PathBuf>,
}

#[derive(Deserialize)]
struct Message {
    reason: String,
    target: Option<Target>,
    executable: Option<PathBuf>,
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Profile {
    test: bool,
}

/// Builds the binaries the tests start (`cargo build --bins`: the daemon, the CLI and the
/// probe, which the harness finds beside the test executables) and test targets `tests` (`cargo test --no-run --test NAME...`, which also builds those
/// declared `test = false` because they need a kernel the host lacks), and returns where
/// cargo put them. A name that is no test target fails the build.
pub fn build(tests: &[&str]) -> Result<Artifacts> {
    let mut artifacts = Artifacts::default();
    let mut c = cargo();
    c.arg("build").args(WORKSPACE_HOST).arg("--bins");
    artifacts.read(&mut c)?;
    let mut c = cargo();
    c.arg("test").args(WORKSPACE_HOST).arg("--no-run");
    for t in tests {
        c.arg("--test").arg(t);
    }
    artifacts.read(&mut c)?;
    Ok(artifacts)
}

impl Artifacts {
    /// Runs cargo command `c` with JSON messages and records the executables it names.
    fn read(&mut self, c: &mut Command) -> Result<()> {
        c.arg("--message-format=json-render-diagnostics");
        let line = describe(c);
        eprintln!("+ {line}");
        let mut child = c
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let stdout = child.stdout.take().context("cargo stdout")?;
        for l in BufReader::new(stdout).lines() {
            let l = l.context("reading cargo's JSON messages")?;
            self.add(&l)?;
        }
        let status = child.wait().context("waiting for cargo")?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        Ok(())
    }
}

impl Artifacts {
    /// Records the executable of one JSON message, if it has one.
    fn add(&mut self, json: &str) -> Result<()> {
        let m: Message = serde_json::from_str(json)
            .with_context(|| format!("cargo printed a message that is not JSON: {json}"))?;
        let (Some(target), Some(exe)) = (m.target, m.executable) else {
            return Ok(());
        };
        if m.reason != "compiler-artifact" {
            return Ok(());
        }
        let is_test_build = m.profile.is_some_and(|p| p.test);
        let kind = |k: &str| target.kind.iter().any(|t| t == k);
        let map = if kind("test") {
            &mut self.tests
        } else if kind("bin") && !is_test_build {
            &mut self.bins
        } else {
            // Unit-test executables of libraries and binaries: not run in the VM.
            return Ok(());
        };
        map.insert(target.name, exe);
        Ok(())
    }

    /// The executable of test target `name`, or an error listing those that exist.
    pub fn test(&self, name: &str) -> Result<&PathBuf> {
        self.tests.get(name).with_context(|| {
            format!(
                "the VM suite names test target {name:?}, which the build does not have \
                 (test targets: {})",
                self.tests.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Artifacts;

    #[test]
    fn sorts_executables_by_kind() {
        let mut a = Artifacts::default();
        let msgs = [
            r#"{"reason":"compiler-artifact","target":{"name":"egress","kind":["test"]},"profile":{"test":true},"executable":"/t/debug/deps/egress-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"agentcaged","kind":["bin"]},"profile":{"test":false},"executable":"/t/debug/agentcaged"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"agentcaged","kind":["bin"]},"profile":{"test":true},"executable":"/t/debug/deps/agentcaged-2"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"probe","kind":["bin"]},"profile":{"test":false},"executable":"/t/debug/probe"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"agentcage","kind":["lib"]},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ];
        for m in msgs {
            a.add(m).unwrap();
        }
        assert_eq!(
            a.test("egress").unwrap().to_str(),
            Some("/t/debug/deps/egress-1")
        );
        assert_eq!(a.bins["agentcaged"].to_str(), Some("/t/debug/agentcaged"));
        assert_eq!(a.bins["probe"].to_str(), Some("/t/debug/probe"));
        let missing = a.test("deny_tier").unwrap_err().to_string();
        assert!(
            missing.contains("\"deny_tier\"") && missing.contains("egress"),
            "{missing}"
        );
    }
}
