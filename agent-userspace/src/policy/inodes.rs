//! Exec and file rules → the kernel's per-inode and per-digest entries.
//!
//! The kernel judges files by (device, inode), so paths and globs are resolved here, when a
//! policy is applied: a symlink or hard link to a named file is the same file, and a file
//! created later under a named path is not covered (name its directory instead). Deny rules
//! by path also carry the file's current SHA-256, so the deny tier refuses copies too.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::{
    file::FileRule,
    process::{
        ExecRule, EXEC_ALLOW, EXEC_APPROVAL, EXEC_APPROVAL_RULE_BASE, EXEC_DENY, EXEC_DENY_MAIN,
    },
};
use sha2::{Digest, Sha256};

use super::exec::{ExecDefault, ExecMatch, ExecPolicy, FileRuleSpec, FilesPolicy};

/// The kernel's encoding of a device number (`MAJOR << 20 | MINOR`, as in `sb->s_dev`);
/// stat(2) reports the user-space encoding.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// The `sb->s_dev` of the file system holding `f`, as the kernel hooks see it. stat(2)'s
/// st_dev is not always that (btrfs reports a device per subvolume, overlayfs may report
/// a layer's), so it is read from the file's mount (statx `STATX_MNT_ID`) in
/// /proc/self/mountinfo, whose third field is the super block's device.
pub fn kernel_dev_of(f: &impl std::os::fd::AsFd) -> Option<u32> {
    use std::os::fd::AsRawFd as _;
    const STATX_MNT_ID: u32 = 0x1000;
    // SAFETY: an all-zero statx is a valid output buffer.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty NUL-terminated path with AT_EMPTY_PATH, and a buffer.
    let rc = unsafe {
        libc::statx(
            f.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_MNT_ID,
            &raw mut stx,
        )
    };
    if rc != 0 {
        return None;
    }
    if stx.stx_mask & STATX_MNT_ID == 0 {
        // Kernels before 5.8: stat's device is the best there is.
        return Some((stx.stx_dev_major << 20) | (stx.stx_dev_minor & 0xf_ffff));
    }
    mount_dev(stx.stx_mnt_id)
}

thread_local! {
    /// Mount id → kernel device, from mountinfo; read again on a miss (a new mount).
    static MOUNT_DEVS: std::cell::RefCell<HashMap<u64, u32>> = Default::default();
}

fn mount_dev(mnt_id: u64) -> Option<u32> {
    if let Some(d) = MOUNT_DEVS.with(|m| m.borrow().get(&mnt_id).copied()) {
        return Some(d);
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let fresh: HashMap<u64, u32> = text
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((
                id,
                (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?,
            ))
        })
        .collect();
    let found = fresh.get(&mnt_id).copied();
    MOUNT_DEVS.with(|m| *m.borrow_mut() = fresh);
    found
}

/// Exec rules for one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledExec {
    /// (dev, inode) → rule.
    pub inodes: BTreeMap<(u32, u64), ExecRule>,
    /// SHA-256 → rule.
    pub hashes: BTreeMap<[u8; 32], ExecRule>,
    /// Whether unmatched execs are refused.
    pub default_deny: bool,
    /// Whether a rule is by content only (`sha256:`), which only the deny tier enforces.
    pub has_digest_rules: bool,
    /// Patterns that matched nothing or files that could not be read, for a warning.
    pub unmatched: Vec<String>,
}

/// File rules for one agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledFiles {
    /// (dev, inode) → rule.
    pub inodes: BTreeMap<(u32, u64), FileRule>,
    /// The path each inode was found at, for events.
    pub paths: HashMap<(u32, u64), String>,
    /// Patterns that matched nothing or files that could not be read, for a warning.
    pub unmatched: Vec<String>,
}

/// Files a pattern names now. `DIR/**` names DIR itself (rules on a directory cover what is
/// below it); other globs are expanded.
fn resolve(pattern: &str) -> Vec<PathBuf> {
    if let Some(dir) = pattern.strip_suffix("/**") {
        if !glob_chars(dir) {
            let dir = if dir.is_empty() { "/" } else { dir };
            return Path::new(dir)
                .exists()
                .then(|| PathBuf::from(dir))
                .into_iter()
                .collect();
        }
    }
    if !glob_chars(pattern) {
        return Path::new(pattern)
            .exists()
            .then(|| PathBuf::from(pattern))
            .into_iter()
            .collect();
    }
    glob::glob(pattern)
        .map(|paths| paths.flatten().collect())
        .unwrap_or_default()
}

pub(super) fn glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

pub(super) fn identity(path: &Path) -> io::Result<(u32, u64)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Follow symlinks (the kernel sees the file they point to); O_PATH opens nothing.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    let ino = f.metadata()?.ino();
    let dev = kernel_dev_of(&f)
        .ok_or_else(|| io::Error::other("cannot tell the file system's device"))?;
    Ok((dev, ino))
}

/// SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// Resolves `exec`; `at` names the section in errors (e.g. `agents.a.exec`).
pub fn compile_exec(at: &str, exec: &ExecPolicy, approvals: &[String]) -> CompiledExec {
    let mut out = CompiledExec {
        default_deny: exec.default == ExecDefault::Deny,
        ..CompiledExec::default()
    };
    // Allow rules first, then deny rules: a deny overwrites an allow for the same file.
    let rules = exec
        .allow
        .iter()
        .map(|m| (m, EXEC_ALLOW, "allow"))
        .chain(exec.deny.iter().map(|m| (m, EXEC_DENY, "deny")));
    for (id, (m, action, list)) in rules.enumerate() {
        let rule = ExecRule {
            action,
            rule_id: id as u32,
        };
        let index = if action == EXEC_ALLOW {
            id
        } else {
            id - exec.allow.len()
        };
        let name = format!("{at}.{list}[{index}]");
        match m {
            ExecMatch::Sha256(d) => {
                out.has_digest_rules = true;
                insert_hash(&mut out.hashes, *d, rule);
            }
            ExecMatch::Path(p) => {
                // Programs are files: a directory pattern means the files below it
                // (`DIR/**` recursively, as glob reads it).
                let files: Vec<PathBuf> = glob::glob(p)
                    .map(|paths| paths.flatten().filter(|f| f.is_file()).collect())
                    .unwrap_or_default();
                if files.is_empty() {
                    out.unmatched.push(format!("{name} {p}: matches no file"));
                }
                for path in files {
                    // A file that vanished or cannot be read is reported, not fatal: the
                    // agent could otherwise block every reload by planting one.
                    let id = match identity(&path) {
                        Ok(id) => id,
                        Err(e) => {
                            out.unmatched
                                .push(format!("{name} {}: {e}", path.display()));
                            continue;
                        }
                    };
                    insert_inode(&mut out.inodes, id, rule);
                    if action == EXEC_DENY {
                        match sha256_file(&path) {
                            Ok(digest) => insert_hash(&mut out.hashes, digest, rule),
                            Err(e) => out.unmatched.push(format!(
                                "{name} {}: content not hashed, copies are not denied: {e}",
                                path.display()
                            )),
                        }
                    }
                }
            }
        }
    }
    // Commands that wait for approval: the kernel gates their program (by file), whatever
    // the arguments; a deny rule still wins.
    for (i, command) in approvals.iter().enumerate() {
        let name = format!("{at}: approvals.exec[{i}]");
        let Some(program) = command.split_whitespace().next() else {
            continue;
        };
        let Some(path) = find_program(program) else {
            out.unmatched
                .push(format!("{name} {program}: no such program"));
            continue;
        };
        match identity(&path) {
            Ok(id) => insert_inode(
                &mut out.inodes,
                id,
                ExecRule {
                    action: EXEC_APPROVAL,
                    rule_id: EXEC_APPROVAL_RULE_BASE + i as u32,
                },
            ),
            Err(e) => out
                .unmatched
                .push(format!("{name} {}: {e}", path.display())),
        }
    }
    // With any exec rule, the loader may not run a program past them.
    if !exec.is_empty() || !approvals.is_empty() {
        super::loader::add_loader_rules(&mut out, exec);
    }
    out
}

/// An absolute program path, or the first match in the usual system directories.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(program))
    .find(|p| p.is_file())
}

/// Deny beats "not as the main program" beats approval beats allow for the same file.
pub(super) fn insert_inode(
    map: &mut BTreeMap<(u32, u64), ExecRule>,
    key: (u32, u64),
    rule: ExecRule,
) {
    let rank = |action| match action {
        EXEC_DENY => 3,
        EXEC_DENY_MAIN => 2,
        EXEC_APPROVAL => 1,
        _ => 0,
    };
    if map
        .get(&key)
        .is_none_or(|r| rank(r.action) <= rank(rule.action))
    {
        map.insert(key, rule);
    }
}

pub(super) fn insert_hash(map: &mut BTreeMap<[u8; 32], ExecRule>, key: [u8; 32], rule: ExecRule) {
    let keep_existing_deny = map.get(&key).is_some_and(|r| r.action == EXEC_DENY);
    if !keep_existing_deny {
        map.insert(key, rule);
    }
}

/// Resolves `files`; `at` names the section in errors.
pub fn compile_files(at: &str, files: &FilesPolicy) -> CompiledFiles {
    let mut out = CompiledFiles::default();
    let specs = files
        .protect
        .iter()
        .map(|s| (s, true, "protect"))
        .chain(files.watch.iter().map(|s| (s, false, "watch")));
    for (id, (spec, protect, list)) in specs.enumerate() {
        let FileRuleSpec { path, access } = spec;
        let index = if protect {
            id
        } else {
            id - files.protect.len()
        };
        let name = format!("{at}.{list}[{index}]");
        let found = resolve(&path.0);
        if found.is_empty() {
            out.unmatched
                .push(format!("{name} {path}: matches nothing"));
        }
        for p in found {
            let key = match identity(&p) {
                Ok(k) => k,
                Err(e) => {
                    out.unmatched.push(format!("{name} {}: {e}", p.display()));
                    continue;
                }
            };
            let entry = out.inodes.entry(key).or_insert(FileRule {
                rule_id: id as u32,
                ..FileRule::default()
            });
            if protect {
                entry.protect |= access.bits();
                entry.rule_id = id as u32;
            } else {
                entry.watch |= access.bits();
            }
            out.paths
                .entry(key)
                .or_insert_with(|| p.display().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Access;

    fn spec(path: &str, access: Access) -> FileRuleSpec {
        FileRuleSpec {
            path: super::super::FilePattern(path.to_owned()),
            access,
        }
    }

    #[test]
    fn deny_wins_and_carries_the_content_digest() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, b"#!/bin/sh\necho hi\n").unwrap();
        let p = bin.display().to_string();
        let exec = ExecPolicy {
            default: ExecDefault::Allow,
            allow: vec![ExecMatch::Path(p.clone())],
            deny: vec![ExecMatch::Path(p)],
        };
        let c = compile_exec("agents.a.exec", &exec, &[]);
        let rule = c.inodes[&identity(&bin).unwrap()];
        assert_eq!((rule.action, rule.rule_id), (EXEC_DENY, 1));
        let digest = sha256_file(&bin).unwrap();
        assert_eq!(c.hashes[&digest].action, EXEC_DENY);
        assert!(!c.has_digest_rules);
    }

    #[test]
    fn directories_and_globs_resolve_to_inodes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.key"), b"1").unwrap();
        std::fs::write(dir.path().join("b.txt"), b"2").unwrap();
        let d = dir.path().display();
        let files = FilesPolicy {
            protect: vec![spec(&format!("{d}/*.key"), Access::default())],
            watch: vec![
                spec(&format!("{d}/**"), Access::default()),
                spec(&format!("{d}/none-*"), Access::default()),
            ],
        };
        let c = compile_files("agents.a.files", &files);
        assert_eq!(c.inodes.len(), 2, "the .key file and the directory");
        assert_eq!(c.unmatched.len(), 1);
        assert!(
            c.unmatched[0].contains("files.watch[1]"),
            "{:?}",
            c.unmatched
        );
    }
}
