//! LSM hooks of the deny tier that only some cages need, attached when the first such cage
//! appears, before its configuration reaches the kernel, and kept until the daemon stops:
//!
//! - the file hooks (file rules and the read-only rung's refused writes: `file_open`,
//!   `path_truncate`, the inode hooks, and `userns_create`, which keeps a cage with file
//!   rules out of user namespaces). They run on every open, unlink and rename of every
//!   process on the host, and they are the slowest programs to verify (most of a deny-tier
//!   daemon's start, a minute under emulation);
//! - the Unix socket hooks (`unix_stream_connect`, `unix_may_send`) of cages with `unix:`.
//!
//! A cage they cannot be attached for is refused, naming why: never weaker than its policy.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use agent_common::cage::{CAGE_F_FILES, CAGE_F_READ_ONLY, CAGE_F_UNIX};
use aya::{programs::links::PinnedLink, Ebpf};

use super::{
    hooks::{attach_lsm, unpin, LsmBtf, FILE_HOOKS, UNIX_HOOKS, USERNS_HOOK},
    BpfError, HookStatus,
};

/// (program, hook, purpose).
type Hook = (&'static str, &'static str, &'static str);

/// A set of hooks attached on first need.
pub struct LazyHooks {
    /// What they are, for messages: "file hooks", "Unix socket hooks".
    what: &'static str,
    /// When they attach, for `status`.
    when: &'static str,
    /// Cage flags whose enforcement needs them.
    flags: u32,
    hooks: Vec<Hook>,
    /// Hooks of the set this kernel lacks, with their state.
    absent: Vec<(Hook, &'static str)>,
    ebpf: Arc<Mutex<Ebpf>>,
    dir: PathBuf,
    tag: String,
    pins: Mutex<Option<Vec<(PathBuf, PinnedLink)>>>,
}

impl std::fmt::Debug for LazyHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyHooks")
            .field("what", &self.what)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LazyHooks {
    /// The file hooks (with `userns_create` where the kernel has it), loaded from `ebpf`
    /// when needed and pinned in `dir` with `tag` like the others.
    pub fn files(ebpf: Arc<Mutex<Ebpf>>, userns_hook: bool, dir: &Path, tag: &str) -> Self {
        let mut hooks = FILE_HOOKS.to_vec();
        let mut absent = Vec::new();
        if userns_hook {
            hooks.push(USERNS_HOOK);
        } else {
            absent.push((
                USERNS_HOOK,
                "not loaded: no such hook in this kernel (Linux 6.1+); files rules are refused",
            ));
        }
        Self::new(
            (
                "file hooks",
                "attached when a cage has file rules or goes read-only",
            ),
            CAGE_F_FILES | CAGE_F_READ_ONLY,
            hooks,
            absent,
            (ebpf, dir, tag),
        )
    }

    /// The Unix socket hooks, for cages with `unix:`.
    pub fn unix(ebpf: Arc<Mutex<Ebpf>>, dir: &Path, tag: &str) -> Self {
        Self::new(
            ("Unix socket hooks", "attached when a cage has unix: rules"),
            CAGE_F_UNIX,
            UNIX_HOOKS.to_vec(),
            Vec::new(),
            (ebpf, dir, tag),
        )
    }

    fn new(
        (what, when): (&'static str, &'static str),
        flags: u32,
        hooks: Vec<Hook>,
        absent: Vec<(Hook, &'static str)>,
        (ebpf, dir, tag): (Arc<Mutex<Ebpf>>, &Path, &str),
    ) -> Self {
        Self {
            what,
            when,
            flags,
            hooks,
            absent,
            ebpf,
            dir: dir.to_owned(),
            tag: tag.to_owned(),
            pins: Mutex::new(None),
        }
    }

    /// Whether a cage with `flags` needs these hooks.
    pub fn needed_for(&self, flags: u32) -> bool {
        flags & self.flags != 0
    }

    /// [`LazyHooks::ensure`] if a cage with `flags` needs them, its error naming the set.
    pub fn ensure_for(&self, flags: u32) -> Result<(), BpfError> {
        if !self.needed_for(flags) {
            return Ok(());
        }
        self.ensure().map_err(|source| BpfError::LazyHooks {
            what: self.what,
            source: Box::new(source),
        })
    }

    /// Loads and attaches every hook of the set unless that was done; on failure none stays
    /// attached (the next need tries again).
    pub fn ensure(&self) -> Result<(), BpfError> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.is_some() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        let mut btf = LsmBtf::default();
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut attached = Vec::new();
        for &(name, hook, _) in &self.hooks {
            match attach_lsm(&mut ebpf, &mut btf, name, hook, &self.dir, &self.tag) {
                Ok(pin) => attached.push(pin),
                Err(e) => {
                    unpin(attached);
                    return Err(e);
                }
            }
        }
        tracing::info!(ms = t.elapsed().as_millis(), "{} attached", self.what);
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
        let state = if attached {
            "attached".to_owned()
        } else {
            format!("not loaded yet ({})", self.when)
        };
        let status = |(name, hook, purpose): Hook, state: &str| HookStatus {
            program: name.to_owned(),
            hook: format!("lsm/{hook}"),
            purpose: purpose.to_owned(),
            state: state.to_owned(),
        };
        self.hooks
            .iter()
            .map(|&h| status(h, &state))
            .chain(self.absent.iter().map(|&(h, why)| status(h, why)))
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
}
