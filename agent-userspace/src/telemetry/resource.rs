//! The resource every signal carries: service, host, node, policy and certificate identity.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::{semconv as sc, TelemetryConfig};

/// What the daemon knows about itself when telemetry starts.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// SHA-256 of the policy in force at start.
    pub policy_hash: String,
    /// This daemon's run (pid and start time).
    pub instance_id: String,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The host's name (from the kernel, no library needed); `localhost` for a host without
/// one (the kernel's `(none)`, as in an initramfs), which is no name to put in an ID.
pub fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .filter(|n| n != "(none)")
        .unwrap_or_else(|| "localhost".into())
}

/// The node identity: configured, else `AGENTCAGE_NODE_ID`, else the host name.
pub fn node_id(config: &TelemetryConfig) -> String {
    config
        .node_id
        .clone()
        .or_else(|| {
            std::env::var("AGENTCAGE_NODE_ID")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(host_name)
}

/// Builds the resource.
pub fn build(config: &TelemetryConfig, identity: &Identity) -> Resource {
    let mut attrs = vec![
        KeyValue::new(sc::SERVICE_NAME, config.service_name.clone()),
        KeyValue::new(sc::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
        KeyValue::new(sc::SERVICE_INSTANCE_ID, identity.instance_id.clone()),
        KeyValue::new(sc::HOST_NAME, host_name()),
        KeyValue::new(sc::NODE_ID, node_id(config)),
        KeyValue::new(sc::POLICY_HASH, identity.policy_hash.clone()),
    ];
    if let Some(id) = read_trimmed("/etc/machine-id") {
        attrs.push(KeyValue::new(sc::HOST_ID, id));
    }
    if let Some(id) = &config.certificate_id {
        attrs.push(KeyValue::new(sc::CERTIFICATE_ID, id.clone()));
    }
    for (k, v) in &config.resource_attributes {
        attrs.push(KeyValue::new(k.clone(), v.clone()));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}
