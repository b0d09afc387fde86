//! The second kernel: Debian 12's cloud kernel, which has BPF LSM built in and active by
//! default (see docs/KERNEL.md). `cargo xtask setup` fetches it into `<repo>/.vm/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{capture, cmd, describe, output, repo_root, run};

/// The metapackage that always depends on Debian 12's current cloud kernel image.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// `<repo>/.vm`: the kernel and the initramfs (gitignored).
pub fn vm_dir() -> PathBuf {
    repo_root().join(".vm")
}

/// The kernel image fetched by setup, if there is one (the newest by name if several).
pub fn find_kernel() -> Result<Option<PathBuf>> {
    let dir = vm_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut kernels: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    Ok(kernels.pop())
}

/// The kernel image, or an error telling how to get it.
pub fn kernel() -> Result<PathBuf> {
    find_kernel()?.with_context(|| {
        format!(
            "no kernel image (vmlinuz-*) in {}: run `cargo xtask setup`",
            vm_dir().display()
        )
    })
}

/// Fetches the kernel image unless one is already in `.vm/`.
pub fn fetch_kernel() -> Result<()> {
    if let Some(k) = find_kernel()? {
        println!("setup: VM kernel already in {}", k.display());
        return Ok(());
    }
    let dir = vm_dir();
    let work = dir.join("download");
    // A leftover of an interrupted run would only confuse the globbing below.
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let meta = download(&work, KERNEL_METAPACKAGE)?;
    let depends = output(cmd("dpkg-deb").args(["-f"]).arg(&meta).arg("Depends"))?;
    let image = image_package(&depends).with_context(|| {
        format!("{KERNEL_METAPACKAGE} depends on no linux-image-* package: {depends:?}")
    })?;
    let deb = download(&work, &image)?;

    let root = work.join("root");
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .with_context(|| format!("{image} holds no boot/vmlinuz-*"))?;
    let dest = dir.join(vmlinuz.file_name());
    fs::rename(vmlinuz.path(), &dest)
        .with_context(|| format!("moving the kernel to {}", dest.display()))?;
    // The modules and the packages are not needed: the VM's whole world is the initramfs.
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    println!("setup: VM kernel from {image} in {}", dest.display());
    Ok(())
}

/// `apt-get download PKG` into `dir`; returns the .deb. Package lists that are missing or
/// stale (a machine whose packages were all installed needed no `apt-get update` yet) are
/// refreshed once.
fn download(dir: &Path, pkg: &str) -> Result<PathBuf> {
    let mut c = cmd("apt-get");
    c.current_dir(dir).args(["download", pkg]);
    let first = capture(&mut c)?;
    if !first.status.success() {
        eprintln!(
            "`{}` failed ({}), updating the package lists: {}",
            describe(&c),
            first.status,
            String::from_utf8_lossy(&first.stderr).trim()
        );
        run(cmd("apt-get").arg("update"))?;
        run(&mut c)?;
    }
    let prefix = format!("{pkg}_");
    let deb = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        });
    match deb {
        Some(d) => Ok(d),
        None => bail!(
            "`apt-get download {pkg}` left no {prefix}*.deb in {}",
            dir.display()
        ),
    }
}

/// The kernel image package in a Depends field, e.g. `linux-image-6.1.0-28-cloud-amd64`
/// from `linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)`.
fn image_package(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-") && *name != KERNEL_METAPACKAGE)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::image_package;

    #[test]
    fn finds_the_image_package_in_depends() {
        assert_eq!(
            image_package("linux-image-6.1.0-28-cloud-amd64 (= 6.1.119-1)").as_deref(),
            Some("linux-image-6.1.0-28-cloud-amd64")
        );
        assert_eq!(
            image_package("foo (>= 1), linux-image-6.1.0-9-cloud-amd64-unsigned | bar").as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64-unsigned")
        );
        assert_eq!(image_package("foo, bar"), None);
    }
}
