//! The daemon's configuration file (`--config`, YAML): the `telemetry:`, `spool:`,
//! `dashboard:`, `identity:` and `dns:` sections.
//! The OpenTelemetry environment variables override the file, as the OpenTelemetry
//! specification has it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{identity::TrustDomain, spool::SpoolConfig, telemetry::TelemetryConfig};

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        #[source]
        source: serde_norway::Error,
    },
}

/// The whole file; every section is optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Where and how to export.
    pub telemetry: TelemetryConfig,
    /// The spool's directory and bounds.
    pub spool: SpoolConfig,
    /// The local web dashboard.
    pub dashboard: super::DashboardConfig,
    /// The cages' resolver: upstream servers and grant lifetimes.
    pub dns: crate::dns::DnsConfig,
    /// `on_start`: run `agentcage selftest` before enforcing anything, and refuse to start if
    /// anything got out; `off` (the default): do not.
    pub selftest: SelftestMode,
    /// Agents' SPIFFE IDs and who may sign their behavior certificates.
    pub identity: IdentityConfig,
}

/// When the daemon runs the self-test.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SelftestMode {
    /// Never by itself.
    #[default]
    Off,
    /// At every start, before anything is enforced.
    OnStart,
}

/// The `identity:` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The SPIFFE trust domain of agents' IDs (`spiffe://TRUST_DOMAIN/agent/NAME`); the
    /// host name when absent.
    pub trust_domain: Option<TrustDomain>,
    /// Public keys (SPKI PEM files) whose signatures on behavior certificates count besides
    /// the node's own keys (e.g. a CI's signing key).
    pub trusted_keys: Vec<PathBuf>,
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<Self, serde_norway::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Protocol;

    #[test]
    fn sections_parse_and_unknown_keys_are_named() {
        let c = ConfigFile::parse(
            "telemetry:\n  endpoint: http://127.0.0.1:4318\n  protocol: http/protobuf\n\
             spool:\n  dir: /tmp/s\n  max_bytes: 1048576\n",
        )
        .unwrap();
        assert_eq!(c.telemetry.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.spool.max_bytes, 1 << 20);
        assert_eq!(c.spool.segment_bytes, SpoolConfig::default().segment_bytes);
        let e = ConfigFile::parse("telemetry:\n  endpont: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpont") && e.contains("line 2"), "{e}");
        let e = ConfigFile::parse("telemetry:\n  protocol: http/json\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http/json"), "{e}");
        let c = ConfigFile::parse("identity:\n  trust_domain: prod.example\n").unwrap();
        assert_eq!(c.identity.trust_domain.unwrap().as_str(), "prod.example");
        let e = ConfigFile::parse("identity:\n  trust_domain: Prod\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity.trust_domain"), "{e}");
    }

    #[test]
    fn the_packaged_template_parses() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/agentcaged.yaml"
        ));
        let c = ConfigFile::parse(text).unwrap();
        assert!(c.identity.trusted_keys.is_empty());
    }
}
