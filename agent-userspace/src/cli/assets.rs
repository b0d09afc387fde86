//! Shell completions and man pages, generated from the clap definitions themselves so they
//! never drift from the real command lines (`cargo xtask package` puts them in the .deb).

use std::{fs, io, path::Path};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{Cli, CliError};
use crate::daemon::DaemonConfig;

/// Writes `agentcage`'s completion script for `shell` to stdout.
pub fn completions(shell: Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "agentcage", &mut io::stdout());
}

/// Writes man pages for `agentcage` (one per subcommand too) and `agentcaged` into `dir`.
pub fn manpages(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir).map_err(CliError::os(format!("creating {}", dir.display())))?;
    for cmd in [Cli::command(), DaemonConfig::command()] {
        clap_mangen::generate_to(cmd, dir).map_err(CliError::os(format!(
            "writing man pages into {}",
            dir.display()
        )))?;
    }
    Ok(())
}
