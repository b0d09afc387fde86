//! The host-wide hooks: scheduler tracepoints for process capture (and the kill tier), and
//! the BPF LSM hooks of the deny tier. Unlike the cgroup programs they attach to the kernel,
//! not to a cgroup, and filter by cage inside. Their links are pinned like the cgroup ones,
//! so enforcement outlives the daemon; tracing links cannot be detached, only closed, and
//! the daemon holds them open.

use std::path::{Path, PathBuf};

use aya::{
    programs::{links::FdLink, links::PinnedLink, Lsm, RawTracePoint},
    Btf, Ebpf,
};
use serde::{Deserialize, Serialize};

use super::{
    tier::{Capabilities, Tier},
    BpfError,
};

/// A hook's state, for `doctor` and `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// The program.
    pub program: String,
    /// Where it attaches, e.g. `raw_tracepoint/sched_process_exec`.
    pub hook: String,
    /// What it does for agentcage.
    pub purpose: String,
    /// `attached`, or why not.
    pub state: String,
}

/// Scheduler tracepoints: (program, tracepoint, purpose).
const TRACEPOINTS: [(&str, &str, &str); 3] = [
    (
        "agentcage_exec",
        "sched_process_exec",
        "exec capture; kill-tier exec enforcement",
    ),
    ("agentcage_fork", "sched_process_fork", "process tree"),
    (
        "agentcage_exit",
        "sched_process_exit",
        "process tree, exit codes",
    ),
];

const FILES: &str = "deny tier: file rules (refuse protected, report watched)";

/// The deny tier's LSM hooks attached at start besides exec: (program, hook, purpose).
const LSM_HOOKS: [(&str, &str, &str); 4] = [
    (
        "agentcage_mmap_file",
        "mmap_file",
        "deny tier: exec deny rules also for programs mapped by the dynamic loader",
    ),
    (
        "agentcage_socket_connect",
        "socket_connect",
        "deny tier: egress second line, judges the caller's cage (also for passed-in sockets)",
    ),
    (
        "agentcage_socket_sendmsg",
        "socket_sendmsg",
        "deny tier: sends on sockets made outside the cage, judged by their peer",
    ),
    (
        "agentcage_socket_recvmsg",
        "socket_recvmsg",
        "deny tier: receives on sockets made outside the cage, judged by their peer",
    ),
];

/// The Unix socket hooks, attached when a cage first needs them (see [`super::lazy_hooks`]).
pub(super) const UNIX_HOOKS: [(&str, &str, &str); 2] = [
    (
        "agentcage_unix_stream_connect",
        "unix_stream_connect",
        "deny tier: Unix stream connects of cages with unix: rules, judged by the listener",
    ),
    (
        "agentcage_unix_may_send",
        "unix_may_send",
        "deny tier: Unix datagrams of cages with unix: rules, judged by the receiver",
    ),
];

/// The file hooks, attached when a cage first needs them (see [`super::lazy_hooks`]).
pub(super) const FILE_HOOKS: [(&str, &str, &str); 10] = [
    ("agentcage_file_open", "file_open", FILES),
    ("agentcage_path_truncate", "path_truncate", FILES),
    ("agentcage_inode_unlink", "inode_unlink", FILES),
    ("agentcage_inode_rmdir", "inode_rmdir", FILES),
    ("agentcage_inode_rename", "inode_rename", FILES),
    ("agentcage_inode_link", "inode_link", FILES),
    ("agentcage_inode_create", "inode_create", FILES),
    ("agentcage_inode_mkdir", "inode_mkdir", FILES),
    ("agentcage_inode_mknod", "inode_mknod", FILES),
    ("agentcage_inode_symlink", "inode_symlink", FILES),
];

/// The `userns_create` hook (Linux 6.1+): where the kernel lacks it, the deny tier runs
/// without it and file rules are refused (see [`super::tier::NO_USERNS_HOOK`]).
pub(super) const USERNS_HOOK: (&str, &str, &str) = (
    "agentcage_userns_create",
    "userns_create",
    "deny tier: no user namespaces in cages with file rules",
);

/// The exec hook's two programs: with content hashes (sleepable, `bpf_ima_file_hash`), and
/// by file only, for kernels without IMA hashing for BPF.
const BPRM_HASH: &str = "agentcage_bprm_check";
const BPRM_INODE: &str = "agentcage_bprm_check_inode";
const BPRM_PURPOSE: &str = "deny tier: exec refused with EPERM";

/// Which optional parts of the deny tier loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsmLoaded {
    /// The exec program with content hashes (else the inode-only one).
    pub content_hashes: bool,
    /// The `userns_create` program.
    pub userns_hook: bool,
}

/// The attached host-wide hooks and what they give.
pub struct GlobalHooks {
    pins: Vec<(PathBuf, PinnedLink)>,
    /// Every hook's state.
    pub status: Vec<HookStatus>,
}

impl GlobalHooks {
    /// Attaches the tracepoints and, in the deny tier, the LSM hooks that `caps` says loaded
    /// (the file and Unix socket hooks come later, when a cage needs them:
    /// [`super::LazyHooks`]);
    /// pins each link as `DIR/NAME-TAG`. An LSM hook that fails is an error: the caller loads
    /// again for the kill tier rather than run the deny tier half-attached.
    pub fn attach(
        ebpf: &mut Ebpf,
        caps: &Capabilities,
        dir: &Path,
        tag: &str,
    ) -> Result<Self, BpfError> {
        let mut hooks = Self {
            pins: Vec::new(),
            status: Vec::new(),
        };
        for (name, tp, purpose) in TRACEPOINTS {
            let result = (|| {
                let p: &mut RawTracePoint = program(ebpf, name)?;
                match p.load() {
                    Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => {}
                    Err(source) => return Err(BpfError::Program { name, source }),
                }
                let id = p
                    .attach(tp)
                    .map_err(|source| BpfError::Program { name, source })?;
                let link = p
                    .take_link(id)
                    .map_err(|source| BpfError::Program { name, source })?;
                Ok(FdLink::from(link))
            })();
            match result.and_then(|l: FdLink| hooks.pin(l, name, dir, tag)) {
                Ok(()) => hooks.note(name, &format!("raw_tracepoint/{tp}"), purpose, "attached"),
                Err(e) => {
                    hooks.drop_all();
                    return Err(e);
                }
            }
        }
        let lsm = [(BPRM_HASH, "bprm_check_security", BPRM_PURPOSE)]
            .into_iter()
            .chain(LSM_HOOKS);
        if caps.tier == Tier::Kill {
            for (name, hook, purpose) in
                lsm.chain(UNIX_HOOKS).chain(FILE_HOOKS).chain([USERNS_HOOK])
            {
                hooks.note(
                    name,
                    &format!("lsm/{hook}"),
                    purpose,
                    "not loaded: kill tier (no BPF LSM)",
                );
            }
            return Ok(hooks);
        }
        let mut btf = LsmBtf::default();
        for (name, hook, purpose) in lsm {
            let name = match name {
                BPRM_HASH if !caps.content_hashes => BPRM_INODE,
                _ => name,
            };
            if let Err(e) = hooks.attach_lsm(ebpf, &mut btf, name, hook, dir, tag) {
                hooks.drop_all();
                return Err(e);
            }
            let state = if name == BPRM_INODE {
                "attached, by file only (no bpf_ima_file_hash: sha256 rules are refused)"
            } else {
                "attached"
            };
            hooks.note(name, &format!("lsm/{hook}"), purpose, state);
        }
        Ok(hooks)
    }

    /// Loads the deny tier's LSM programs attached at start (without attaching them): the
    /// exec program with content hashes if the kernel's IMA can hash for BPF, else the
    /// inode-only one. Says whether the kernel has the `userns_create` hook, which the file
    /// hooks load with when a cage needs them. An error means this kernel cannot give the
    /// deny tier after all.
    pub fn load_lsm(
        ebpf: &mut Ebpf,
        btf: &mut LsmBtf,
        kernel: &super::btf::Btf,
    ) -> Result<LsmLoaded, BpfError> {
        let content_hashes = match load_one_lsm(ebpf, btf, BPRM_HASH, "bprm_check_security") {
            Ok(()) => true,
            Err(first) => {
                tracing::warn!(
                    error = %first,
                    "exec rules by content unavailable (the sleepable exec program with \
                     bpf_ima_file_hash does not load); exec rules by file only"
                );
                load_one_lsm(ebpf, btf, BPRM_INODE, "bprm_check_security")?;
                false
            }
        };
        for (name, hook, _) in LSM_HOOKS {
            load_one_lsm(ebpf, btf, name, hook)?;
        }
        let userns_hook = kernel.has_func(&format!("bpf_lsm_{}", USERNS_HOOK.1));
        if !userns_hook {
            tracing::warn!(
                "no userns_create LSM hook in this kernel (Linux 6.1+): files rules are refused"
            );
        }
        Ok(LsmLoaded {
            content_hashes,
            userns_hook,
        })
    }

    fn attach_lsm(
        &mut self,
        ebpf: &mut Ebpf,
        btf: &mut LsmBtf,
        name: &'static str,
        hook: &str,
        dir: &Path,
        tag: &str,
    ) -> Result<(), BpfError> {
        self.pins.push(attach_lsm(ebpf, btf, name, hook, dir, tag)?);
        Ok(())
    }

    fn pin(&mut self, link: FdLink, name: &str, dir: &Path, tag: &str) -> Result<(), BpfError> {
        self.pins.push(pin(link, name, dir, tag)?);
        Ok(())
    }

    fn note(&mut self, program: &str, hook: &str, purpose: &str, state: &str) {
        self.status.push(HookStatus {
            program: program.to_owned(),
            hook: hook.to_owned(),
            purpose: purpose.to_owned(),
            state: state.to_owned(),
        });
    }

    fn drop_all(&mut self) {
        unpin(self.pins.drain(..));
    }

    /// Unpins and detaches every hook.
    pub fn detach(mut self) {
        self.drop_all();
    }

    /// Leaves the hooks pinned and attached after this process exits.
    pub fn keep(self) {
        drop(self.pins);
    }
}

/// Loads (if need be) and attaches LSM program `name` to `hook`, pinned as `DIR/NAME-TAG`.
pub(super) fn attach_lsm(
    ebpf: &mut Ebpf,
    btf: &mut LsmBtf,
    name: &'static str,
    hook: &str,
    dir: &Path,
    tag: &str,
) -> Result<(PathBuf, PinnedLink), BpfError> {
    load_one_lsm(ebpf, btf, name, hook)?;
    let p: &mut Lsm = program(ebpf, name)?;
    let id = p
        .attach()
        .map_err(|source| BpfError::Program { name, source })?;
    let link = p
        .take_link(id)
        .map_err(|source| BpfError::Program { name, source })?;
    pin(FdLink::from(link), name, dir, tag)
}

/// Pins `link` as `DIR/NAME-TAG`.
fn pin(link: FdLink, name: &str, dir: &Path, tag: &str) -> Result<(PathBuf, PinnedLink), BpfError> {
    let path = dir.join(format!("{name}-{tag}"));
    let pinned = link.pin(&path).map_err(|source| BpfError::Pin {
        path: path.clone(),
        source,
    })?;
    Ok((path, pinned))
}

/// Unpins (and so detaches) every link of `pins`.
pub(super) fn unpin(pins: impl IntoIterator<Item = (PathBuf, PinnedLink)>) {
    for (path, pinned) in pins {
        if let Err(e) = pinned.unpin() {
            tracing::warn!(path = %path.display(), error = %e, "could not unpin");
        }
    }
}

/// The kernel's BTF, which LSM programs are loaded against, read when a program first needs
/// it: reading it takes long (seconds under emulation), and attaching a program loaded
/// before needs none.
#[derive(Default)]
pub struct LsmBtf(Option<Btf>);

impl LsmBtf {
    /// The BTF, read now if it was not yet.
    pub fn get(&mut self) -> Result<&Btf, BpfError> {
        let btf = match self.0.take() {
            Some(btf) => btf,
            None => Btf::from_sys_fs().map_err(BpfError::KernelBtf)?,
        };
        Ok(self.0.insert(btf))
    }
}

fn load_one_lsm(
    ebpf: &mut Ebpf,
    btf: &mut LsmBtf,
    name: &'static str,
    hook: &str,
) -> Result<(), BpfError> {
    let p: &mut Lsm = program(ebpf, name)?;
    if p.fd().is_ok() {
        return Ok(());
    }
    let t = std::time::Instant::now();
    match p.load(hook, btf.get()?) {
        Ok(()) => {
            // Verifying takes long on old kernels (and under emulation): say how long.
            tracing::debug!(program = name, ms = t.elapsed().as_millis(), "loaded");
            Ok(())
        }
        Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        Err(source) => Err(BpfError::Program { name, source }),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(|_| BpfError::MissingProgram(name))
}
