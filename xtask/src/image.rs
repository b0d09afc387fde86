//! `cargo xtask image`: the daemon's container image, built from the release binaries with
//! nothing downloaded: one layer holding `agentcaged`, `agentcage`, `agentcage-runtime`, the
//! shared libraries they link (from this machine, by `ldd`), the default policy and
//! configuration. Written as an OCI image layout (`target/oci/agentcaged/`) and as one tar
//! archive holding both that layout and Docker's `manifest.json`
//! (`target/oci/agentcaged.tar`), which `docker load`, `podman load`, `skopeo copy
//! oci-archive:...` and `ctr images import` all read. Every entry has time 0 and owner root,
//! so the same binaries give the same digest.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{
    build::build_bins,
    setup::run_setup,
    util::{capture, cargo, cmd, repo_root, run},
};

/// The image's name, as packaging/k8s/daemonset.yaml names it.
pub const IMAGE_NAME: &str = "agentcage/agentcaged";

/// The binaries in the image, from the target directory, to /usr/bin.
const BINARIES: [&str; 3] = ["agentcaged", "agentcage", "agentcage-runtime"];

/// Builds the image from the release binaries (`--debug`: from the debug ones, to try the
/// packaging without a release build).
pub fn image(debug: bool) -> Result<()> {
    run_setup()?;
    build_bins(!debug)?;
    let root = repo_root();
    // The wrapper is copied onto nodes, whose C library may be older than this machine's:
    // linked statically (it needs nothing of glibc that static linking breaks).
    let mut c = cargo();
    c.args([
        "rustc",
        "-p",
        "agent-userspace",
        "--bin",
        "agentcage-runtime",
    ]);
    if !debug {
        c.arg("--release");
    }
    run(c.args(["--", "-C", "target-feature=+crt-static"]))?;
    let profile = root
        .join("target")
        .join(if debug { "debug" } else { "release" });
    let tag = env!("CARGO_PKG_VERSION");
    let layer = layer(&profile, &root).context("image: the layer")?;
    let out = root.join("target/oci");
    let (layout, archive) = write(&out, &layer, tag).context("image: writing")?;
    println!(
        "image: {IMAGE_NAME}:{tag} written to {} (OCI layout) and {} (docker load / podman load)",
        layout.display(),
        archive.display()
    );
    Ok(())
}

/// A tar of the image's files, deterministic.
fn layer(profile: &Path, root: &Path) -> Result<Vec<u8>> {
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    for bin in BINARIES {
        let path = profile.join(bin);
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push((Path::new("usr/bin").join(bin), data, 0o755));
        for lib in shared_libraries(&path)? {
            let rel = merged(lib.strip_prefix("/").unwrap_or(&lib));
            if !files.iter().any(|(p, _, _)| *p == rel) {
                let data = fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
                files.push((rel, data, 0o755));
            }
        }
    }
    for (from, to) in [
        (
            "policies/default.yaml",
            "etc/agentcage/policies/default.yaml",
        ),
        (
            "packaging/agentcaged.yaml",
            "etc/agentcage/config/agentcaged.yaml",
        ),
    ] {
        let data = fs::read(root.join(from)).with_context(|| format!("reading {from}"))?;
        files.push((to.into(), data, 0o644));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<PathBuf> = vec!["tmp".into(), "run".into(), "var/lib/agentcage".into()];
    for (path, _, _) in &files {
        dirs.extend(
            path.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
    }
    // Merged /usr, as the libraries' paths from ldd may say /lib64/...
    for (link, target) in [
        ("lib64", "usr/lib64"),
        ("lib", "usr/lib"),
        ("bin", "usr/bin"),
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, link, target)?;
    }
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let mode = if d == Path::new("tmp") { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, &d, std::io::empty())?;
    }
    for (path, data, mode) in files {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, &path, data.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

/// `lib64/x` → `usr/lib64/x` (and lib, bin): the layer's /lib64 is a symlink into /usr.
fn merged(path: &Path) -> PathBuf {
    for top in ["lib64", "lib", "bin"] {
        if let Ok(rest) = path.strip_prefix(top) {
            return Path::new("usr").join(top).join(rest);
        }
    }
    path.to_path_buf()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The libraries `ldd` says `exe` loads, and its loader.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = capture(cmd("ldd").arg(exe))?;
    if !out.status.success() {
        bail!("ldd {} failed", exe.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes the layout and the archive; returns their paths.
fn write(out: &Path, layer: &[u8], tag: &str) -> Result<(PathBuf, PathBuf)> {
    let layer_digest = digest(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/agentcaged"],
            "Cmd": ["--config=/etc/agentcage/config/agentcaged.yaml",
                    "--policy=/etc/agentcage/policies/default.yaml"],
            "Env": ["PATH=/usr/bin"],
            "Labels": {"org.opencontainers.image.title": "agentcaged",
                       "org.opencontainers.image.version": tag},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest_digest = digest(&manifest);
    let reference = format!("{IMAGE_NAME}:{tag}");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag,
                                       "io.containerd.image.name": format!("docker.io/{reference}")}}],
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": [blob(&layer_digest)],
    }]))?;
    let entries: Vec<(String, &[u8])> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
        ),
        ("index.json".into(), &index),
        (blob(&manifest_digest), &manifest),
        (blob(&config_digest), &config),
        (blob(&layer_digest), layer),
    ];
    let layout = out.join("agentcaged");
    if layout.exists() {
        fs::remove_dir_all(&layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let mut archive = tar::Builder::new(Vec::new());
    for dir in ["blobs", "blobs/sha256"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        archive.append_data(&mut h, dir, std::io::empty())?;
    }
    for (name, data) in entries
        .iter()
        .chain([("manifest.json".to_owned(), docker_manifest.as_slice())].iter())
    {
        if name != "manifest.json" {
            fs::write(layout.join(name), data)?;
        }
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        archive.append_data(&mut h, name, *data)?;
    }
    let path = out.join("agentcaged.tar");
    fs::write(&path, archive.into_inner()?)?;
    Ok((layout, path))
}
