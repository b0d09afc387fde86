//! The VM kernels: Debian's cloud kernels of three releases (see docs/KERNEL.md for what
//! each gives). `cargo xtask setup` fetches them into `<repo>/.vm/` with apt pointed at a
//! sources list, package lists and cache of its own under `.vm/apt/`, so the host's apt
//! configuration is never changed; kernels already there are not fetched again (and then
//! apt is not run at all).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{cmd, output, repo_root, run};

/// One kernel the VM boots.
#[derive(Debug)]
pub struct Kernel {
    /// Its name in boot names and `--kernel`, e.g. `5.10`.
    pub name: &'static str,
    /// The Debian release whose `linux-image-cloud-amd64` it is.
    pub suite: &'static str,
    /// How its `uname -r` begins (checked in the VM, and how its image is found in `.vm/`).
    pub release: &'static str,
}

/// Debian 11 (Amazon Linux 2 runs 5.10 too), 12 and 13.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
        release: "5.10.",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        release: "6.1.",
    },
    Kernel {
        name: "6.12",
        suite: "trixie",
        release: "6.12.",
    },
];

/// The metapackage that depends on each release's current cloud kernel image.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// The key Debian's archive is signed with (package debian-archive-keyring).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// `<repo>/.vm`: the kernels, apt's state for them and the initramfs (gitignored).
pub fn vm_dir() -> PathBuf {
    repo_root().join(".vm")
}

/// The image of `kernel` in `.vm/`, if setup fetched it (the newest by name if several).
pub fn find(kernel: &Kernel) -> Result<Option<PathBuf>> {
    let dir = vm_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let prefix = format!("vmlinuz-{}", kernel.release);
    let mut images: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    images.sort();
    Ok(images.pop())
}

/// The image of `kernel`, or an error telling how to get it.
pub fn image(kernel: &Kernel) -> Result<PathBuf> {
    find(kernel)?.with_context(|| {
        format!(
            "no {} kernel image (vmlinuz-{}*) in {}: run `cargo xtask setup`",
            kernel.name,
            kernel.release,
            vm_dir().display()
        )
    })
}

/// Fetches every kernel of [`KERNELS`] that `.vm/` lacks.
pub fn fetch_kernels() -> Result<()> {
    let mut missing = Vec::new();
    for k in KERNELS {
        match find(k)? {
            Some(p) => println!("setup: VM kernel {} already in {}", k.name, p.display()),
            None => missing.push(k),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let apt = Apt::new(&vm_dir().join("apt"))?;
    // Only now: the lists cost a download, and a ready machine needs none.
    run(apt.get().arg("update"))?;
    for k in missing {
        fetch(&apt, k).with_context(|| format!("fetching the {} kernel", k.name))?;
    }
    Ok(())
}

/// Downloads `kernel`'s image package, unpacks it and keeps only its vmlinuz.
fn fetch(apt: &Apt, kernel: &Kernel) -> Result<()> {
    let work = apt.dir.join("download");
    // A leftover of an interrupted run would only confuse the globbing below.
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let meta = apt.download(&work, KERNEL_METAPACKAGE, kernel.suite)?;
    let depends = output(cmd("dpkg-deb").args(["-f"]).arg(&meta).arg("Depends"))?;
    let image = image_package(&depends).with_context(|| {
        format!("{KERNEL_METAPACKAGE} depends on no linux-image-* package: {depends:?}")
    })?;
    let deb = apt.download(&work, &image, kernel.suite)?;

    let root = work.join("root");
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .with_context(|| format!("{image} holds no boot/vmlinuz-*"))?;
    let name = vmlinuz.file_name();
    if !name.to_string_lossy()["vmlinuz-".len()..].starts_with(kernel.release) {
        bail!(
            "{image} from {} holds {}, not a {}* kernel",
            kernel.suite,
            name.to_string_lossy(),
            kernel.release
        );
    }
    let dest = vm_dir().join(&name);
    fs::rename(vmlinuz.path(), &dest)
        .with_context(|| format!("moving the kernel to {}", dest.display()))?;
    // The modules and the packages are not needed: the VM's whole world is the initramfs.
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    println!(
        "setup: VM kernel {} from {image} ({}) in {}",
        kernel.name,
        kernel.suite,
        dest.display()
    );
    Ok(())
}

/// apt with a sources list, lists and cache of our own: every release's `main` from the
/// archive the host's apt already uses.
struct Apt {
    dir: PathBuf,
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [
            lists.join("partial"),
            cache.join("archives").join("partial"),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        if !Path::new(ARCHIVE_KEYRING).exists() {
            bail!("{ARCHIVE_KEYRING} is missing (package debian-archive-keyring)");
        }
        let uri = archive_uri()?;
        let sources = dir.join("sources.list");
        let text: String = KERNELS
            .iter()
            .map(|k| format!("deb [signed-by={ARCHIVE_KEYRING}] {uri} {} main\n", k.suite))
            .collect();
        fs::write(&sources, text).with_context(|| format!("writing {}", sources.display()))?;
        let path = |p: &Path| p.display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", path(&sources)),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", path(&lists)),
            format!("Dir::Cache={}", path(&cache)),
            // Package lists are all we need: no translations.
            "Acquire::Languages=none".to_owned(),
            // Downloads land in root's directory, which apt's sandbox user cannot write.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
        })
    }

    fn get(&self) -> std::process::Command {
        let mut c = cmd("apt-get");
        c.args(&self.options);
        c
    }

    /// `apt-get download PKG/SUITE` into `dir`; returns the .deb.
    fn download(&self, dir: &Path, pkg: &str, suite: &str) -> Result<PathBuf> {
        run(self
            .get()
            .current_dir(dir)
            .arg("download")
            .arg(format!("{pkg}/{suite}")))?;
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
        deb.with_context(|| {
            format!(
                "`apt-get download {pkg}/{suite}` left no {prefix}*.deb in {}",
                dir.display()
            )
        })
    }
}

/// The Debian archive the host's apt uses: the first `URIs:` of /etc/apt/sources.list.d/
/// *.sources, else the first `deb` line of /etc/apt/sources.list (never a hard-coded host).
fn archive_uri() -> Result<String> {
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|e| e.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sources"))
    {
        let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(uri) = deb822_uri(&text) {
            return Ok(uri);
        }
    }
    let list = Path::new("/etc/apt/sources.list");
    if let Some(uri) = fs::read_to_string(list)
        .ok()
        .as_deref()
        .and_then(one_line_uri)
    {
        return Ok(uri);
    }
    bail!(
        "no Debian archive in {}/*.sources or {}: which mirror to fetch the VM kernels from?",
        dir.display(),
        list.display()
    )
}

/// The first URI of a deb822 sources file's `deb` stanzas that are not the security archive
/// (which has no kernels of older point releases).
fn deb822_uri(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let security = field("Suites").is_some_and(|s| s.contains("-security"));
        let uri = field("URIs")?.split_whitespace().next()?.to_owned();
        (is_deb && !security).then_some(uri)
    })
}

/// The URI of the first `deb` line of a one-line-style sources.list: its first word with a
/// scheme (options in brackets come before it and may hold spaces).
fn one_line_uri(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .find_map(|l| l.split_whitespace().find(|w| w.contains("://")))
        .map(str::to_owned)
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

/// The kernel named `name` in [`KERNELS`], or an error listing them.
pub fn by_name(name: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        format!(
            "no VM kernel {name:?} (kernels: {})",
            KERNELS
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{by_name, deb822_uri, image_package, one_line_uri};

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
        assert_eq!(
            image_package("linux-image-6.12.117+deb13-cloud-amd64 (= 6.12.117-1)").as_deref(),
            Some("linux-image-6.12.117+deb13-cloud-amd64")
        );
        assert_eq!(image_package("foo, bar"), None);
    }

    #[test]
    fn reads_the_archive_from_the_hosts_sources() {
        let deb822 = "Types: deb\nURIs: http://security.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n\n\
                      Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            deb822_uri(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(deb822_uri("Types: deb-src\nURIs: http://x/\n"), None);
        let list = "# deb http://old/ x main\n\
                    deb [signed-by=/k.gpg arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            one_line_uri(list).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn kernels_are_found_by_name() {
        assert_eq!(by_name("5.10").unwrap().suite, "bullseye");
        let err = by_name("4.19").unwrap_err().to_string();
        assert!(err.contains("\"4.19\"") && err.contains("6.12"), "{err}");
    }
}
