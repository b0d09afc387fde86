//! agentcaged: loads the programs once, attaches them to the cages' parent cgroup, keeps the
//! maps in line with the policy and the cages, and serves the control socket.
//!
//! The kernel decides from maps alone; the daemon is never in the path of a decision, so a
//! slow or dead daemon lets nothing through.

mod config;
mod credential_http;
mod dashboard;
mod dns;
mod file;
mod reader;
mod server;
mod start;
mod state;
mod tasks;
mod watchdog;

pub use config::{DaemonConfig, LogFormat, DEFAULT_STATE_DIR};
pub use dashboard::DashboardConfig;
pub use file::{ConfigFile, ConfigFileError, IdentityConfig};
pub use state::{Contained, StateError};

use std::{io, path::PathBuf};

use tracing::info;

use crate::{
    bpf::{self, BpfError},
    cage::{find_cgroup2_mount, CageError, CageRoot},
    control::AccessPolicy,
    policy::{Policy, PolicyError},
};
use watchdog::Signals;

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Not running as root.
    #[error("agentcaged must run as root (it loads eBPF programs and manages cgroups)")]
    NotRoot,
    /// The policy file is broken.
    #[error("policy refused: {0}")]
    Policy(#[from] PolicyError),
    /// cgroup discovery or management failed.
    #[error(transparent)]
    Cage(#[from] CageError),
    /// Loading, attaching or pinning failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The state could not be set up.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another daemon serves the socket.
    #[error("another agentcaged is already serving {0}")]
    AlreadyRunning(PathBuf),
    /// The configured group does not exist.
    #[error("control socket group: {0}")]
    Group(#[source] io::Error),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The configuration file is broken.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// Telemetry could not start (bad configuration, spool not writable).
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The `dns:` section cannot work as written.
    #[error("configuration file: {0}")]
    Dns(String),
    /// The dashboard cannot be served as configured.
    #[error("dashboard: {0}")]
    Dashboard(String),
    /// The self-test found a way out (or could not run): nothing is enforced.
    #[error("the self-test (selftest: on_start) failed, so nothing is enforced:\n{0}")]
    Selftest(String),
    /// The trust domain (the host name when none is configured) is not a valid one.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A trusted key file could not be read.
    #[error(transparent)]
    Credential(#[from] crate::credentials::CredentialError),
    /// The kernel refused something else.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] io::Error),
}

/// `selftest: on_start`: the catalogue in a throwaway daemon's cage (the binaries beside
/// this one), before this daemon binds or enforces anything.
fn selftest_on_start() -> Result<(), DaemonError> {
    let bins = crate::selftest::Binaries::beside_this_one()
        .map_err(|e| DaemonError::Selftest(e.to_string()))?;
    let lines = crate::selftest::run(&bins, std::time::Duration::from_secs(120))
        .map_err(|e| DaemonError::Selftest(e.to_string()))?;
    let escaped: Vec<String> = lines
        .iter()
        .filter(|l| matches!(l.outcome, crate::selftest::Outcome::Escaped(_)))
        .map(crate::selftest::Line::text)
        .collect();
    if !escaped.is_empty() {
        return Err(DaemonError::Selftest(escaped.join("\n")));
    }
    info!(
        attempts = lines.len(),
        "self-test passed: every attempt was contained"
    );
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Handlers first: a signal during start-up is then handled once we are up, instead of
    // killing the daemon half-way (with cgroups and pins made).
    let signals = Signals::install()?;
    let policy = Policy::load(&config.policy)?;
    // Read before anything is made: a broken file must stop the daemon with nothing changed.
    let mut file = match &config.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    file.telemetry.apply_env(|k| std::env::var(k).ok())?;
    file.dns.check().map_err(DaemonError::Dns)?;
    if let Some(listen) = file.dashboard.listen.filter(|l| !l.ip().is_loopback()) {
        return Err(DaemonError::Dashboard(format!(
            "dashboard.listen {listen} is not a loopback address: the dashboard is local only"
        )));
    }
    if file.selftest == file::SelftestMode::OnStart {
        selftest_on_start()?;
    }
    let access = match &config.group {
        Some(g) => AccessPolicy::with_group(g).map_err(DaemonError::Group)?,
        None => AccessPolicy::root_only(),
    };
    // The socket and the cgroup lock come first: a second daemon must fail before it touches
    // anything the first one owns (its pins above all).
    let listener = server::bind(&config.socket, &access)?;
    let app_listener = match server::bind_app(&config.app_socket) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };
    let started = async {
        if bpf::ensure_bpffs()? {
            info!("mounted bpffs at /sys/fs/bpf");
        }
        let mount = find_cgroup2_mount()?;
        let root = CageRoot::create(&mount, &config.cgroup_name)?;
        let lock = root.lock()?;
        info!(cgroup_root = %root.dir().path().display(), "cgroup v2 found");
        let started = start::start(
            config.clone(),
            file,
            policy,
            root.clone(),
            access,
            (listener, app_listener),
            signals,
        )
        .await;
        if started.is_err() {
            // Leave nothing behind but what holds processes.
            let _ = root.remove();
        }
        drop(lock);
        started
    }
    .await;
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(&config.app_socket);
    started
}
