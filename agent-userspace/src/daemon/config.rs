//! The daemon's settings (command line, with environment fallbacks).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::control::{DEFAULT_APP_SOCKET, DEFAULT_SOCKET};

/// Where the daemon keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentcage";

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// agentcaged: the agentcage host daemon.
#[derive(Clone, Debug, Parser)]
#[command(name = "agentcaged", version, about)]
pub struct DaemonConfig {
    /// The policy file to enforce.
    #[arg(
        long,
        env = "AGENTCAGE_POLICY",
        default_value = "/etc/agentcage/policies/default.yaml"
    )]
    pub policy: PathBuf,
    /// The control socket.
    #[arg(long, env = "AGENTCAGE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The application socket: agents' applications report tool calls, model calls and
    /// the like here, from inside their cage (mode 0666; the sender's cage is checked).
    #[arg(long, env = "AGENTCAGE_APP_SOCKET", default_value = DEFAULT_APP_SOCKET)]
    pub app_socket: PathBuf,
    /// Where forensic snapshots of paused and killed cages are written.
    #[arg(
        long,
        env = "AGENTCAGE_SNAPSHOT_DIR",
        default_value = "/var/lib/agentcage/snapshots"
    )]
    pub snapshot_dir: PathBuf,
    /// Where terminal recordings that policies require (`record: always`) are written, one
    /// directory per agent (mode 0700; each file 0600).
    #[arg(
        long,
        env = "AGENTCAGE_RECORDING_DIR",
        default_value = "/var/lib/agentcage/recordings"
    )]
    pub recording_dir: PathBuf,
    /// Where agents running under a dynamic uid (`run_as: dynamic`) get their HOME: one
    /// directory per agent, owned by its uid, removed when its cage goes.
    #[arg(
        long,
        env = "AGENTCAGE_HOME_DIR",
        default_value = "/var/lib/agentcage/home"
    )]
    pub home_dir: PathBuf,
    /// The size bound of each such recording, in bytes; a note in the file says where the
    /// bound cut it.
    #[arg(long, env = "AGENTCAGE_RECORDING_MAX_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub recording_max_bytes: u64,
    /// The daemon's own state: the node's signing keys (`keys/`, 0700, private keys 0600), the
    /// public keys as a JWKS document (`jwks.json`) and revoked credentials.
    #[arg(long, env = "AGENTCAGE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where agents' behavior certificates are installed, one per agent (`NAME.json`).
    #[arg(
        long,
        env = "AGENTCAGE_CERTIFICATE_DIR",
        default_value = "/etc/agentcage/certificates"
    )]
    pub certificate_dir: PathBuf,
    /// A group (name or gid) whose members may use the control socket besides root.
    #[arg(long, env = "AGENTCAGE_GROUP")]
    pub group: Option<String>,
    /// Name of the parent cgroup (below the cgroup v2 mount) that holds every cage; also
    /// names the bpffs pin directory. Lets several daemons (tests) run side by side.
    #[arg(long, env = "AGENTCAGE_CGROUP", default_value = "agentcage")]
    pub cgroup_name: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The configuration file (YAML: `telemetry:`, `spool:`, `dashboard:` and `identity:`
    /// sections). The
    /// `OTEL_EXPORTER_OTLP_*` environment variables override it.
    #[arg(long, env = "AGENTCAGE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl DaemonConfig {
    /// Where links are pinned when enforcement must outlive the daemon.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(&self.cgroup_name)
    }
}
