//! The bundle's `config.json`: which agent a container is for, what the engine says of it,
//! and the changes that make it fit for a cage (the pattern of nvidia-container-runtime:
//! rewrite the config, add a hook, hand over to the real runtime).
//!
//! The config is kept as JSON values, so fields this code does not know pass through
//! unchanged.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use crate::events::ContainerMeta;

/// The annotation (or Docker label) naming a container's agent.
pub const AGENT_KEY: &str = "agentcage.agent";

/// Where the application socket appears inside a caged container.
pub const APP_SOCKET_IN_CONTAINER: &str = "/run/agentcage/app.sock";

/// Errors reading, checking and writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config is not the JSON object the OCI spec describes.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The container asks for something that would let it out of a cage.
    #[error("{0}")]
    Unfit(String),
}

/// A bundle's config.
#[derive(Clone, Debug)]
pub struct Bundle {
    path: PathBuf,
    config: Value,
}

impl Bundle {
    /// Reads `DIR/config.json`.
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join("config.json");
        let text = fs::read(&path).map_err(|source| BundleError::Io {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        let config = serde_json::from_slice(&text).map_err(|source| BundleError::Json {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, config })
    }

    /// A bundle from its JSON (tests).
    pub fn from_value(path: PathBuf, config: Value) -> Self {
        Self { path, config }
    }

    /// The config as it is now.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// One annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.config.get("annotations")?.get(key)?.as_str()
    }

    /// Whether this is a pod's sandbox ("pause") container, which runs the runtime's own
    /// image and none of the agent's code (containerd's and CRI-O's annotations).
    pub fn is_sandbox(&self) -> bool {
        [
            "io.kubernetes.cri.container-type",
            "io.kubernetes.cri-o.ContainerType",
        ]
        .iter()
        .any(|k| self.annotation(k) == Some("sandbox"))
    }

    /// Docker (before 24, which passes no labels or annotations to the runtime) keeps its
    /// container's configuration in `<data-root>/containers/<id>/config.v2.json`, the
    /// directory its `/etc/hostname` (or hosts, resolv.conf) mount comes from.
    fn docker_config(&self, id: &str) -> Option<Value> {
        let mounts = self.config.get("mounts")?.as_array()?;
        let dir = mounts.iter().find_map(|m| {
            let dest = m.get("destination")?.as_str()?;
            if !["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].contains(&dest) {
                return None;
            }
            let dir = Path::new(m.get("source")?.as_str()?).parent()?;
            let named = dir.file_name()? == id && dir.parent()?.file_name()? == "containers";
            named.then(|| dir.to_path_buf())
        })?;
        let text = fs::read(dir.join("config.v2.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The agent the container is for: the `agentcage.agent` annotation (Podman
    /// `--annotation`, Docker 24+ `--annotation`, a Kubernetes pod's annotation), else
    /// Docker's `--label`. Returns the agent and what the engine says of the container.
    pub fn agent(&self, id: &str) -> Option<(String, ContainerMeta)> {
        let docker = self.docker_config(id);
        let agent = self.annotation(AGENT_KEY).map(str::to_owned).or_else(|| {
            docker
                .as_ref()?
                .pointer("/Config/Labels")?
                .get(AGENT_KEY)?
                .as_str()
                .map(str::to_owned)
        })?;
        let first = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| self.annotation(k))
                .map(str::to_owned)
        };
        let from_docker = |pointer: &str| {
            docker
                .as_ref()?
                .pointer(pointer)?
                .as_str()
                .map(|s| s.trim_start_matches('/').to_owned())
        };
        let meta = ContainerMeta {
            id: id.to_owned(),
            name: first(&[
                "io.kubernetes.cri.container-name",
                "io.kubernetes.container.name",
                "io.podman.annotations.container.name",
            ])
            .or_else(|| from_docker("/Name")),
            image: first(&[
                "io.kubernetes.cri.image-name",
                "io.kubernetes.cri-o.ImageName",
                "org.opencontainers.image.ref.name",
            ])
            .or_else(|| from_docker("/Config/Image")),
            pod: first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
            namespace: first(&[
                "io.kubernetes.cri.sandbox-namespace",
                "io.kubernetes.pod.namespace",
            ]),
        };
        Some((agent, meta))
    }

    /// Refuses what would let the container's processes undo their cage: sharing the host's
    /// mount or pid namespace, a writable cgroup or sysfs mount, bpffs.
    pub fn check_fit(&self) -> Result<(), BundleError> {
        let unfit = |why: &str| Err(BundleError::Unfit(why.to_owned()));
        let namespaces: Vec<&str> = self
            .config
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .map(|ns| ns.iter().filter_map(|n| n.get("type")?.as_str()).collect())
            .unwrap_or_default();
        for (ns, what) in [
            (
                "mount",
                "the host's mounts (cgroup and bpf file systems among them)",
            ),
            ("pid", "the host's processes (--pid host)"),
        ] {
            if !namespaces.contains(&ns) {
                return unfit(&format!(
                    "it shares the host's {ns} namespace, and with it {what}"
                ));
            }
        }
        for m in self
            .config
            .get("mounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
            let ro = m
                .get("options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|v| v == "ro"));
            if kind == "bpf" || dest.starts_with("/sys/fs/bpf") {
                return unfit("it mounts a bpf file system, which holds the cage's programs");
            }
            let cgroupfs = matches!(kind, "cgroup" | "cgroup2") || dest == "/sys/fs/cgroup";
            if (cgroupfs || (kind == "sysfs" && dest == "/sys")) && !ro {
                return unfit(&format!(
                    "it mounts {dest} writable (--privileged?), where it could leave its cgroup"
                ));
            }
        }
        Ok(())
    }

    /// Takes `forbidden` capabilities out of every set of the process (and of `process`,
    /// a `runc exec --process` file's object).
    pub fn strip_caps(process: &mut Value, forbidden: &[&str]) {
        let Some(caps) = process
            .get_mut("capabilities")
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.retain(|c| !c.as_str().is_some_and(|c| forbidden.contains(&c)));
            }
        }
    }

    /// The capabilities of `forbidden` that some set of `process` still holds.
    pub fn held_caps(process: &Value, forbidden: &[&str]) -> Vec<String> {
        let mut held: Vec<String> = process
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|caps| caps.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .filter(|c| forbidden.contains(c))
            .map(str::to_owned)
            .collect();
        held.sort();
        held.dedup();
        held
    }

    /// Whether the container's bounding set keeps `cap` (after [`Self::prepare`]).
    pub fn bounding_has(&self, cap: &str) -> bool {
        self.config
            .pointer("/process/capabilities/bounding")
            .and_then(Value::as_array)
            .is_some_and(|b| b.iter().any(|c| c == cap))
    }

    /// Makes the config fit for a cage of `agent`: the forbidden capabilities removed, the
    /// agent named in an annotation (so later commands know the container is caged), the
    /// hook that cages it first among `createRuntime`, and the application socket mounted.
    pub fn prepare(
        &mut self,
        agent: &str,
        forbidden: &[&str],
        hook: Value,
        app_socket: Option<&Path>,
    ) {
        let c = &mut self.config;
        if let Some(process) = c.get_mut("process") {
            Self::strip_caps(process, forbidden);
        }
        let object = |v: &mut Value, key: &str, empty: Value| {
            if !v.get(key).is_some_and(|x| x.is_object() || x.is_array()) {
                v[key] = empty;
            }
        };
        object(c, "annotations", json!({}));
        c["annotations"][AGENT_KEY] = json!(agent);
        object(c, "hooks", json!({}));
        object(&mut c["hooks"], "createRuntime", json!([]));
        if let Some(list) = c["hooks"]["createRuntime"].as_array_mut() {
            list.insert(0, hook);
        }
        if let Some(app) = app_socket {
            object(c, "mounts", json!([]));
            if let Some(mounts) = c["mounts"].as_array_mut() {
                mounts.retain(|m| m.get("destination") != Some(&json!(APP_SOCKET_IN_CONTAINER)));
                mounts.push(json!({
                    "destination": APP_SOCKET_IN_CONTAINER,
                    "type": "bind",
                    "source": app,
                    "options": ["bind", "rw"],
                }));
            }
        }
    }

    /// Writes the JSON back (beside the file first, then renamed over it).
    pub fn write(&self) -> Result<(), BundleError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| BundleError::Io { op, path, source }
        };
        let text = serde_json::to_vec(&self.config).map_err(|source| BundleError::Json {
            path: self.path.clone(),
            source,
        })?;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = self.path.with_file_name(format!(".{name}.agentcage"));
        fs::write(&tmp, text).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io("renaming into place", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_like() -> Value {
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {"args": ["/probe"], "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"],
                "effective": ["CAP_CHOWN", "CAP_NET_RAW"],
                "permitted": ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid"]}
            ],
            "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey"]}]},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"}]},
            "x-unknown": {"kept": true}
        })
    }

    #[test]
    fn docker_labels_are_read_from_the_containers_own_directory() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("containers").join("c1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/t1","Config":{"Image":"bb:1","Labels":{"agentcage.agent":"web"}}}"#,
        )
        .unwrap();
        let mut config = docker_like();
        config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/hostname", "type": "bind",
            "source": dir.join("hostname"), "options": ["rbind"]}));
        let b = Bundle::from_value("/b/config.json".into(), config.clone());
        let (agent, meta) = b.agent("c1").expect("the label names the agent");
        assert_eq!(agent, "web");
        assert_eq!(meta.name.as_deref(), Some("t1"));
        assert_eq!(meta.image.as_deref(), Some("bb:1"));
        // Another container's directory is not read.
        assert!(b.agent("c2").is_none());
        // An annotation wins, and pods are described by their CRI annotations.
        config["annotations"] = json!({
            "agentcage.agent": "pod-agent",
            "io.kubernetes.cri.container-name": "main",
            "io.kubernetes.cri.sandbox-name": "p1",
            "io.kubernetes.cri.sandbox-namespace": "ns1",
            "io.kubernetes.cri.image-name": "registry.local/agent:1"
        });
        let (agent, meta) = Bundle::from_value("/b".into(), config).agent("c1").unwrap();
        assert_eq!(agent, "pod-agent");
        assert_eq!(meta.name.as_deref(), Some("main"));
        assert_eq!(meta.pod.as_deref(), Some("p1"));
        assert_eq!(meta.namespace.as_deref(), Some("ns1"));
        assert_eq!(meta.image.as_deref(), Some("registry.local/agent:1"));
    }

    #[test]
    fn prepare_drops_capabilities_adds_the_hook_first_and_mounts_the_socket() {
        let mut b = Bundle::from_value("/b/config.json".into(), docker_like());
        b.check_fit().unwrap();
        b.prepare(
            "web",
            &["CAP_NET_RAW", "CAP_SYS_ADMIN"],
            json!({"path": "/w", "args": ["/w", "agentcage-hook"]}),
            Some(Path::new("/run/agentcage/app.sock")),
        );
        let c = b.config();
        assert_eq!(
            Bundle::held_caps(&c["process"], &["CAP_NET_RAW", "CAP_SYS_ADMIN"]),
            Vec::<String>::new()
        );
        assert!(b.bounding_has("CAP_KILL"));
        assert_eq!(c["annotations"][AGENT_KEY], "web");
        assert_eq!(c["hooks"]["createRuntime"][0]["path"], "/w");
        assert_eq!(c["hooks"]["prestart"][0]["args"][0], "libnetwork-setkey");
        assert_eq!(c["mounts"][3]["destination"], APP_SOCKET_IN_CONTAINER);
        assert_eq!(c["x-unknown"]["kept"], true);
    }

    #[test]
    fn privileged_and_host_namespace_containers_are_unfit() {
        let mut rw = docker_like();
        rw["mounts"][2]["options"] = json!(["rw"]);
        let e = Bundle::from_value("/b".into(), rw).check_fit().unwrap_err();
        assert!(e.to_string().contains("/sys/fs/cgroup writable"), "{e}");
        let mut host_pid = docker_like();
        host_pid["linux"]["namespaces"] = json!([{"type": "mount"}]);
        let e = Bundle::from_value("/b".into(), host_pid)
            .check_fit()
            .unwrap_err();
        assert!(e.to_string().contains("pid namespace"), "{e}");
        let mut bpf = docker_like();
        bpf["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/sys/fs/bpf", "type": "bind", "source": "/sys/fs/bpf"}));
        assert!(Bundle::from_value("/b".into(), bpf).check_fit().is_err());
    }
}
