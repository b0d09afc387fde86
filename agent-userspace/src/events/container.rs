//! The container a caged process runs in, when its cage is a container's cgroup: carried by
//! every event of that cgroup beside the agent's identity (telemetry exports it under the
//! OpenTelemetry names `container.id`, `container.name`, `container.image.name`,
//! `k8s.pod.name`, `k8s.namespace.name`).

use serde::{Deserialize, Serialize};

/// What the engine said of a container when it was caged.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerMeta {
    /// The engine's container id (the OCI runtime's).
    pub id: String,
    /// The container's name (Docker's name; the container's name in its pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image it was started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Kubernetes pod, for a pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The longest value of any field: annotations are the engine's, but a bound keeps events
/// and status small whatever an image or pod is called.
const MAX_FIELD: usize = 512;

impl ContainerMeta {
    /// Checks the fields are plausible: an id of 1-128 characters of `[A-Za-z0-9_.-]` (what
    /// runc and crun accept), other fields within [`MAX_FIELD`] and free of control
    /// characters.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = (1..=128).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !id_ok {
            return Err(format!(
                "container id {:?} is not 1-128 characters of [A-Za-z0-9_.-]",
                self.id
            ));
        }
        for (what, value) in [
            ("name", &self.name),
            ("image", &self.image),
            ("pod", &self.pod),
            ("namespace", &self.namespace),
        ] {
            if let Some(v) = value {
                if v.len() > MAX_FIELD || v.chars().any(char::is_control) {
                    return Err(format!(
                        "container {what} {v:?} is longer than {MAX_FIELD} bytes or holds control characters"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_fields_are_checked() {
        let ok = ContainerMeta {
            id: "abc-1.2_3".into(),
            name: Some("web".into()),
            ..ContainerMeta::default()
        };
        assert!(ok.validate().is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            let m = ContainerMeta {
                id: bad.into(),
                ..ContainerMeta::default()
            };
            assert!(m.validate().is_err(), "{bad:?}");
        }
        let m = ContainerMeta {
            image: Some("a\nb".into()),
            ..ok.clone()
        };
        assert!(m.validate().unwrap_err().contains("image"));
    }

    #[test]
    fn absent_fields_are_left_out_of_the_json() {
        let m = ContainerMeta {
            id: "c1".into(),
            name: Some("agent".into()),
            image: None,
            pod: Some("p".into()),
            namespace: Some("ns".into()),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"id":"c1","name":"agent","pod":"p","namespace":"ns"}"#
        );
    }
}
