//! `cargo xtask run`: setup, build, then the daemon in the foreground with the default policy.

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

use crate::build::build;
use crate::util::{cmd, describe, repo_root, require_root};

pub fn run_daemon(extra: &[String]) -> Result<()> {
    // Checked first: a build is wasted when the daemon cannot start anyway.
    require_root("`cargo xtask run`")?;
    build(false)?;
    let root = repo_root();
    let mut c = cmd(root.join("target/debug/agentcaged"));
    c.arg("--policy")
        .arg(root.join("policies/default.yaml"))
        .args(extra);
    eprintln!("+ exec {}", describe(&c));
    // exec, not spawn: the daemon takes our pid, so Ctrl-C and SIGTERM reach it directly
    // rather than killing an xtask parent and orphaning it.
    let err = c.exec();
    Err(err).with_context(|| format!("could not exec `{}`", describe(&c)))
}
