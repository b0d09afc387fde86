//! The VM's whole world: an initramfs (cpio newc, gzip) holding busybox, every executable a
//! test starts with the shared libraries `ldd` names, at the same absolute paths as on the
//! host (so paths compiled into the tests still resolve), and an /init that runs the suites.
//!
//! It is assembled in a staging directory that mirrors the host's layout, symlinks included
//! (`/lib64` -> `usr/lib64` on a merged-/usr Debian), then archived by `cpio`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{capture, describe};

/// Symlinks followed while staging one path before it counts as a loop.
const MAX_LINKS: usize = 40;

/// A directory tree that becomes the initramfs.
pub struct Stage {
    root: PathBuf,
    /// Host paths already staged.
    done: BTreeSet<PathBuf>,
}

impl Stage {
    /// An empty staging tree at `root` (whatever was there is removed).
    pub fn new(root: PathBuf) -> Result<Self> {
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
        }
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Self {
            root,
            done: BTreeSet::new(),
        })
    }

    /// Where absolute path `p` of the VM lives in the staging tree.
    fn inside(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Creates directory `p` (absolute, in the VM) with mode `mode`.
    pub fn dir(&mut self, p: &str, mode: u32) -> Result<()> {
        let d = self.inside(Path::new(p));
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", d.display()))
    }

    /// Writes file `p` (absolute, in the VM) with `contents` and `mode`.
    pub fn file(&mut self, p: &str, contents: &str, mode: u32) -> Result<()> {
        let f = self.inside(Path::new(p));
        if let Some(parent) = f.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&f, contents).with_context(|| format!("writing {}", f.display()))?;
        fs::set_permissions(&f, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", f.display()))
    }

    /// Stages executable `exe` and every shared library `ldd` lists for it. Debug info is
    /// stripped from `exe` (it is most of a debug build's size, and the VM has to unpack it
    /// all); symbols stay, so backtraces still name functions.
    pub fn executable(&mut self, exe: &Path) -> Result<()> {
        self.host_path(exe, true)?;
        for lib in shared_libraries(exe)? {
            self.host_path(&lib, false)?;
        }
        Ok(())
    }

    /// Stages host path `p` at the same place, with every symlink on the way recreated.
    /// Returns the path it resolves to.
    pub fn host_path(&mut self, p: &Path, strip: bool) -> Result<PathBuf> {
        self.host_path_depth(p, strip, 0)
            .with_context(|| format!("staging {} for the VM", p.display()))
    }

    fn host_path_depth(&mut self, p: &Path, strip: bool, links: usize) -> Result<PathBuf> {
        if links > MAX_LINKS {
            bail!("too many levels of symlinks");
        }
        if !p.is_absolute() {
            bail!("not an absolute path");
        }
        // The real (symlink-free) path of the components seen so far.
        let mut real = PathBuf::from("/");
        let mut components = p.components().skip(1).peekable();
        while let Some(c) = components.next() {
            let last = components.peek().is_none();
            match c {
                Component::Normal(name) => {
                    let next = real.join(name);
                    let meta = fs::symlink_metadata(&next)
                        .with_context(|| format!("reading {}", next.display()))?;
                    if meta.file_type().is_symlink() {
                        let target = fs::read_link(&next)
                            .with_context(|| format!("reading link {}", next.display()))?;
                        let link = self.inside(&next);
                        if fs::symlink_metadata(&link).is_err() {
                            create_parent(&link)?;
                            symlink(&target, &link)
                                .with_context(|| format!("creating link {}", link.display()))?;
                        }
                        real = self.host_path_depth(
                            &normalize(&real.join(&target)),
                            strip && last,
                            links + 1,
                        )?;
                    } else if meta.is_dir() {
                        let d = self.inside(&next);
                        if !d.exists() {
                            fs::create_dir_all(&d)
                                .with_context(|| format!("creating {}", d.display()))?;
                        }
                        real = next;
                    } else {
                        if !last {
                            bail!("{} is not a directory", next.display());
                        }
                        if self.done.insert(next.clone()) {
                            self.copy(&next, meta.permissions().mode(), strip)?;
                        }
                        real = next;
                    }
                }
                Component::ParentDir => {
                    real.pop();
                }
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        Ok(real)
    }

    fn copy(&self, from: &Path, mode: u32, strip: bool) -> Result<()> {
        let to = self.inside(from);
        create_parent(&to)?;
        if strip {
            let mut c = Command::new("strip");
            c.arg("--strip-debug").arg("-o").arg(&to).arg(from);
            let out = capture(&mut c)?;
            if !out.status.success() {
                bail!(
                    "`{}` failed ({}): {}",
                    describe(&c),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        } else {
            fs::copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", to.display()))
    }

    /// Writes the staged tree as a gzip-compressed cpio (newc) archive, owned by root.
    pub fn archive(&self, out: &Path) -> Result<()> {
        let mut names = Vec::new();
        list(&self.root, Path::new(""), &mut names)?;
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        // -1: the archive is built on every run and unpacked once; speed beats size here.
        let mut gzip = Command::new("gzip")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("could not start gzip")?;
        let gzip_in = gzip.stdin.take().context("gzip stdin")?;
        // The Command holds gzip's stdin until it is dropped, and gzip only ends at EOF: so
        // it must not outlive the spawn.
        let (line, mut cpio) = {
            let mut c = Command::new("cpio");
            c.current_dir(&self.root)
                .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
                .stdin(Stdio::piped())
                .stdout(gzip_in);
            let line = describe(&c);
            let child = c.spawn().with_context(|| {
                format!("could not start `{line}` (installed by `cargo xtask setup`)")
            })?;
            (line, child)
        };
        {
            let mut names_in = cpio.stdin.take().context("cpio stdin")?;
            for n in &names {
                writeln!(names_in, "{}", n.display()).context("writing names to cpio")?;
            }
        }
        let cpio_status = cpio.wait().context("waiting for cpio")?;
        let gzip_status = gzip.wait().context("waiting for gzip")?;
        if !cpio_status.success() {
            bail!("`{line}` failed ({cpio_status})");
        }
        if !gzip_status.success() {
            bail!("gzip failed ({gzip_status})");
        }
        Ok(())
    }
}

/// Every entry below `dir`, parents before children, as paths relative to the stage root.
fn list(dir: &Path, rel: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = rel.join(e.file_name());
        names.push(name.clone());
        if e.file_type()?.is_dir() {
            list(&e.path(), &name, names)?;
        }
    }
    Ok(())
}

fn create_parent(p: &Path) -> Result<()> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(())
}

/// `a/b/../c` -> `a/c`, without touching the file system (the caller resolves symlinks).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `exe`; none for a static
/// executable.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let mut c = Command::new("ldd");
    c.arg(exe);
    let out = capture(&mut c)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("`{}` failed ({}): {}", describe(&c), out.status, err.trim());
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux... (0x...)`
        // or `linux-vdso.so.1 (0x...)`, which the kernel provides.
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.trim().split(" (").next().unwrap_or("").trim();
                if path == "not found" || path.is_empty() {
                    bail!("ldd cannot find {}: {line}", name.trim());
                }
                path
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{normalize, parse_ldd};

    #[test]
    fn reads_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x00007f64)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f64)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libelf.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let missing = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(
            normalize(Path::new("/lib/../usr/lib64")),
            Path::new("/usr/lib64")
        );
        assert_eq!(normalize(Path::new("/../a/./b")), Path::new("/a/b"));
    }
}
