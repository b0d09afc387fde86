//! The deny tier's file hooks: the LSM programs behind file rules and the read-only rung's
//! refused writes (`file_open`, `path_truncate`, the inode hooks, and `userns_create`, which
//! keeps a cage with file rules out of user namespaces).
//!
//! They run on every open, unlink and rename of every process on the host, and they are
//! the slowest programs to verify (most of a deny-tier daemon's start, a minute under
//! emulation). So they are loaded and attached when the first cage needs them, a cage with
//! file rules or on the read-only rung, before that cage's configuration reaches the
//! kernel; and they stay until the daemon stops. A cage they cannot be attached for is
//! refused, naming why: never weaker than its policy says.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use agent_common::cage::{CAGE_F_FILES, CAGE_F_READ_ONLY};
use aya::{programs::links::PinnedLink, Ebpf};

use super::{
    hooks::{attach_lsm, lsm_btf, unpin, FILE_HOOKS, USERNS_HOOK},
    BpfError, HookStatus,
};

/// Cage flags whose enforcement needs the file hooks.
pub const NEEDS_FILE_HOOKS: u32 = CAGE_F_FILES | CAGE_F_READ_ONLY;

/// The file hooks, attached on first need.
pub struct FileHooks {
    ebpf: Arc<Mutex<Ebpf>>,
    /// The kernel has `userns_create` (Linux 6.1+).
    userns_hook: bool,
    dir: PathBuf,
    tag: String,
    pins: Mutex<Option<Vec<(PathBuf, PinnedLink)>>>,
}

impl std::fmt::Debug for FileHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHooks")
            .field("userns_hook", &self.userns_hook)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FileHooks {
    /// File hooks loaded from `ebpf` when needed, pinned in `dir` with `tag` like the others.
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, userns_hook: bool, dir: &Path, tag: &str) -> Self {
        Self {
            ebpf,
            userns_hook,
            dir: dir.to_owned(),
            tag: tag.to_owned(),
            pins: Mutex::new(None),
        }
    }

    /// Whether a cage with `flags` needs the file hooks.
    pub fn needed_for(flags: u32) -> bool {
        flags & NEEDS_FILE_HOOKS != 0
    }

    /// Loads and attaches every file hook unless that was done; on failure none stays
    /// attached (the next need tries again).
    pub fn ensure(&self) -> Result<(), BpfError> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.is_some() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        let btf = lsm_btf()?;
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut attached = Vec::new();
        for (name, hook, _) in self.hooks() {
            match attach_lsm(&mut ebpf, &btf, name, hook, &self.dir, &self.tag) {
                Ok(pin) => attached.push(pin),
                Err(e) => {
                    unpin(attached);
                    return Err(e);
                }
            }
        }
        tracing::info!(
            ms = t.elapsed().as_millis(),
            "file hooks attached (a cage has file rules or is on the read-only rung)"
        );
        *pins = Some(attached);
        Ok(())
    }

    /// The hooks' states, for `doctor` and `status`.
    pub fn status(&self) -> Vec<HookStatus> {
        let attached = self
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        FILE_HOOKS
            .into_iter()
            .chain([USERNS_HOOK])
            .map(|(name, hook, purpose)| HookStatus {
                program: name.to_owned(),
                hook: format!("lsm/{hook}"),
                purpose: purpose.to_owned(),
                state: if name == USERNS_HOOK.0 && !self.userns_hook {
                    "not loaded: no such hook in this kernel (Linux 6.1+); files rules are refused"
                } else if attached {
                    "attached"
                } else {
                    "not loaded yet (attached when a cage has file rules or goes read-only)"
                }
                .to_owned(),
            })
            .collect()
    }

    /// Unpins and detaches them.
    pub fn detach(&self) {
        if let Some(pins) = self.pins.lock().unwrap_or_else(|p| p.into_inner()).take() {
            unpin(pins);
        }
    }

    /// Leaves them pinned and attached after this process exits.
    pub fn keep(&self) {
        drop(self.pins.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    fn hooks(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
        FILE_HOOKS
            .into_iter()
            .chain(self.userns_hook.then_some(USERNS_HOOK))
    }
}
