//! The eBPF side as user space sees it: the embedded object, loading and attaching it to the
//! cages' parent cgroup, pinning for lasting enforcement, and typed access to its maps.

mod approvals;
pub mod btf;
mod cgroup_links;
mod dns;
mod hooks;
mod lazy_hooks;
mod loader;
mod maps;
pub mod memlock;
pub mod tier;
pub mod unix;

pub use approvals::ApprovalMap;
pub use cgroup_links::{CgroupPrograms, PinnedLinks};
pub use dns::DnsMaps;
pub use hooks::{GlobalHooks, HookStatus, LsmBtf};
pub use lazy_hooks::LazyHooks;
pub use loader::{
    attached_ids, ensure_bpffs, release_pinned, AttachedPrograms, ProgramKind, PROGRAMS,
};
pub use maps::{EgressMaps, SlotEntries};
pub use tier::{Capabilities, Feature, Refusal, Tier, TierProbe};
pub use unix::{UnixConfinement, UnixProgram};

use std::{io, path::PathBuf};

/// Errors of loading, attaching and map access.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The embedded object could not be loaded (verifier or kernel refusal).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}: {source}")]
    Program {
        /// The program's name.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program expected in the object is missing or of the wrong type.
    #[error("program {0} is missing from the eBPF object or has the wrong type")]
    MissingProgram(&'static str),
    /// A map expected in the object is missing.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The embedded object could not be parsed for the Unix-socket programs.
    #[error("parsing the eBPF object for the Unix-socket programs: {0}")]
    UnixObject(#[source] aya_obj::ParseError),
    /// The Unix-socket programs' map references could not be resolved.
    #[error("relocating the Unix-socket programs: {0}")]
    UnixRelocation(#[source] aya_obj::relocation::EbpfRelocationError),
    /// A map the Unix-socket programs reference was not created by aya.
    #[error("the Unix-socket programs reference map {0}, which the loaded object lacks")]
    UnixMap(String),
    /// A Unix-socket program could not be loaded or attached.
    #[error("program {name}: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier log:\n{log}") })]
    UnixLoad {
        /// The program's name.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
        /// The verifier's log, if the load failed.
        log: String,
    },
    /// A map is of the wrong type, or an operation on it failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// The number of possible CPUs (for the per-CPU maps) could not be read.
    #[error("reading the possible CPUs from {what}: {source}")]
    Cpus {
        /// The file read.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The bpffs path.
        path: PathBuf,
        /// Why.
        #[source]
        source: aya::pin::PinError,
    },
    /// An attached program's link could not be taken over as a file-descriptor link.
    #[error("program {name}: taking its link: {source}")]
    Link {
        /// The program's name.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// Hooks a cage needs (its file rules, the read-only rung, its `unix:` rules) could not
    /// be attached.
    #[error("the {what} this cage needs could not be attached: {source}")]
    LazyHooks {
        /// Which set.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<BpfError>,
    },
    /// The kernel's BTF, which LSM programs load against, could not be read.
    #[error("reading the kernel's BTF: {0}")]
    KernelBtf(#[source] aya::BtfError),
    /// A file operation (bpffs mount, pin directory, cgroup) failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's struct layout could not be read from its BTF.
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    /// A map refused an entry: it is full (it is shared by every running agent and policy
    /// version), or the kernel refused the update.
    #[error(
        "policy does not fit the kernel maps: {name} is full or refused the entry (it is \
         shared by every running agent and policy version): {source}"
    )]
    Capacity {
        /// The map's name.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// Loading failed on a kernel that charges BPF memory to RLIMIT_MEMLOCK (before 5.11),
    /// whose limit could not be raised.
    #[error(
        "BPF memory is charged to RLIMIT_MEMLOCK on this kernel (before Linux 5.11) and the \
         limit stays at {limit}: {why}"
    )]
    Memlock {
        /// The limit in force.
        limit: String,
        /// Why it could not be raised, and what to do.
        why: String,
        /// The load's error.
        #[source]
        source: Box<BpfError>,
    },
}

/// The embedded eBPF object, built by build.rs from agent-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// What loading found out about this kernel.
pub struct Loaded {
    /// The object, with `SETTINGS` written and, in the deny tier, the LSM programs loaded.
    pub ebpf: aya::Ebpf,
    /// What the programs can enforce here (Unix sockets included).
    pub caps: Capabilities,
    /// The kill tier's Unix-socket programs, loaded (none in the deny tier, where LSM hooks
    /// confine Unix sockets, or where the kernel lacks their hooks).
    pub unix: Vec<UnixProgram>,
}

/// Loads the object for the best tier this kernel gives: the probe's, and if the LSM
/// programs then fail to load, the kill tier (the tier is frozen into the object, so that
/// takes a second load). First makes sure a kernel that charges BPF memory to
/// RLIMIT_MEMLOCK (before 5.11) lets the maps be made.
pub fn load() -> Result<Loaded, BpfError> {
    let memlock = memlock::ensure()?;
    load_tiers().map_err(|e| memlock.explain(e))
}

fn load_tiers() -> Result<Loaded, BpfError> {
    let kernel_btf = btf::Btf::from_sys_fs()?;
    let mut settings = btf::kernel_settings(&kernel_btf)?;
    let probe = tier::probe_kernel(&kernel_btf);
    let mut missing = probe.missing;
    if probe.tier == Tier::Deny {
        settings.tier = Tier::Deny.code();
        let mut ebpf = load_with(&settings)?;
        match GlobalHooks::load_lsm(&mut ebpf, &mut LsmBtf::default(), &kernel_btf) {
            Ok(lsm) => {
                return Ok(Loaded {
                    ebpf,
                    caps: Capabilities {
                        tier: Tier::Deny,
                        missing: None,
                        content_hashes: lsm.content_hashes,
                        userns_hook: lsm.userns_hook,
                        unix: UnixConfinement::Lsm,
                        exec_watch: false,
                    },
                    unix: Vec::new(),
                })
            }
            Err(e) => {
                let why = format!(
                    "BPF LSM: the LSM programs do not load: {}",
                    crate::errors::render(&e)
                );
                tracing::warn!(reason = %why, "falling back to the kill tier");
                missing = Some(why);
            }
        }
    }
    settings.tier = Tier::Kill.code();
    let ebpf = load_with(&settings)?;
    // Before any map is taken out of `ebpf`: the Unix programs share them.
    let (unix, unix_confinement) = match unix::attach_types(&kernel_btf) {
        None => (
            Vec::new(),
            UnixConfinement::Unavailable(format!(
                "this kernel has no {}",
                unix::UNIX_HOOKS_MISSING
            )),
        ),
        Some(types) => match unix::load(&ebpf, EBPF_OBJECT, types) {
            Ok(programs) => (programs, UnixConfinement::CgroupHooks),
            Err(e) => {
                let why = format!(
                    "the {} do not load: {}",
                    unix::UNIX_HOOKS_MISSING,
                    crate::errors::render(&e)
                );
                tracing::warn!(reason = %why, "Unix sockets cannot be confined");
                (Vec::new(), UnixConfinement::Unavailable(why))
            }
        },
    };
    Ok(Loaded {
        ebpf,
        caps: Capabilities {
            tier: Tier::Kill,
            missing,
            content_hashes: false,
            userns_hook: false,
            unix: unix_confinement,
            // The daemon's exec watch sets it once it starts.
            exec_watch: false,
        },
        unix,
    })
}

/// bpf(2)'s command that loads a program.
pub(super) const BPF_PROG_LOAD: libc::c_long = 5;

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `attach_btf_id` (the kernel
/// zero-fills the rest; every kernel from 5.5 knows these fields).
#[repr(C)]
#[derive(Default)]
pub(super) struct ProgLoad {
    pub(super) prog_type: u32,
    pub(super) insn_cnt: u32,
    pub(super) insns: u64,
    pub(super) license: u64,
    pub(super) log_level: u32,
    pub(super) log_size: u32,
    pub(super) log_buf: u64,
    pub(super) kern_version: u32,
    pub(super) prog_flags: u32,
    pub(super) prog_name: [u8; 16],
    pub(super) prog_ifindex: u32,
    pub(super) expected_attach_type: u32,
    pub(super) prog_btf_fd: u32,
    pub(super) func_info_rec_size: u32,
    pub(super) func_info: u64,
    pub(super) func_info_cnt: u32,
    pub(super) line_info_rec_size: u32,
    pub(super) line_info: u64,
    pub(super) line_info_cnt: u32,
    pub(super) attach_btf_id: u32,
}

/// The bpf(2) syscall for `cmd` with `attr`; its result, if not negative.
///
/// # Safety
/// `attr` must be a valid prefix of `union bpf_attr` for `cmd` (the kernel zero-fills the
/// rest), and any pointers in it valid for what the kernel does with them.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for attr; its size is the one passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn load_with(settings: &agent_common::kernel::KernelSettings) -> Result<aya::Ebpf, BpfError> {
    let t = std::time::Instant::now();
    let ebpf = aya::EbpfLoader::new()
        .override_global(agent_common::maps::SETTINGS, settings, true)
        .load(EBPF_OBJECT)?;
    tracing::debug!(ms = t.elapsed().as_millis(), "object loaded (maps made)");
    Ok(ebpf)
}
