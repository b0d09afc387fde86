//! Loading the programs, attaching them to the parent cgroup, and pinning their links so
//! that enforcement outlives the daemon when cages still hold processes.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
    },
    Ebpf,
};
use nix::mount::{mount, MsFlags};

use super::{unix::UnixProgram, BpfError};

/// Which kind of cgroup program a name is.
#[derive(Clone, Copy, Debug)]
pub enum ProgramKind {
    /// cgroup/connect4, sendmsg4, ... (`BPF_PROG_TYPE_CGROUP_SOCK_ADDR`).
    SockAddr,
    /// cgroup/sock_create (`BPF_PROG_TYPE_CGROUP_SOCK`).
    Sock,
    /// cgroup_skb/egress (`BPF_PROG_TYPE_CGROUP_SKB`).
    SkbEgress,
    /// cgroup_skb/ingress.
    SkbIngress,
}

/// Every program the daemon attaches to the parent cgroup through aya, with its kernel attach
/// type (`enum bpf_attach_type`), by which the kernel lists what is attached. The kill tier's
/// Unix-socket programs are loaded and attached beside them by `bpf::unix`.
pub const PROGRAMS: [(&str, ProgramKind, u32); 11] = [
    ("agentcage_connect4", ProgramKind::SockAddr, 10),
    ("agentcage_connect6", ProgramKind::SockAddr, 11),
    ("agentcage_sendmsg4", ProgramKind::SockAddr, 14),
    ("agentcage_sendmsg6", ProgramKind::SockAddr, 15),
    // DNS answers appear to come from the address the process asked.
    ("agentcage_recvmsg4", ProgramKind::SockAddr, 19),
    ("agentcage_recvmsg6", ProgramKind::SockAddr, 20),
    ("agentcage_getpeername4", ProgramKind::SockAddr, 29),
    ("agentcage_getpeername6", ProgramKind::SockAddr, 30),
    ("agentcage_sock_create", ProgramKind::Sock, 2),
    ("agentcage_skb_egress", ProgramKind::SkbEgress, 1),
    ("agentcage_skb_ingress", ProgramKind::SkbIngress, 0),
];

const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless a bpf file system is already there.
pub fn ensure_bpffs() -> Result<bool, BpfError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|source| BpfError::Io {
        op: "reading",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let mounted = mountinfo.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(left, right)| {
            right.starts_with("bpf ") && left.split_whitespace().nth(4) == Some(BPFFS)
        })
    });
    if mounted {
        return Ok(false);
    }
    mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| BpfError::Io {
        op: "mounting bpffs at",
        path: BPFFS.into(),
        source: io::Error::from(e),
    })?;
    Ok(true)
}

/// The programs, loaded, attached to one cgroup, and pinned at once: should the daemon die
/// in any way (even SIGKILL), the pins keep the programs attached and enforcing.
pub struct AttachedPrograms {
    pins: Vec<(PathBuf, PinnedLink)>,
    /// The Unix-socket programs (kill tier on kernels that have their hooks), loaded outside
    /// aya.
    unix: Vec<UnixProgram>,
    dir: PathBuf,
    cgroup: PathBuf,
    tag: String,
}

impl AttachedPrograms {
    /// Loads and attaches every program in [`PROGRAMS`], and the loaded `unix` programs, to
    /// `cgroup` with bpf links, and pins each as `DIR/NAME-TAG` (bpffs refuses dots in
    /// names). Cgroup links are always multi-attach (the kernel refuses any flag on them), so
    /// an earlier daemon's pinned links overlap with these during a restart, leaving no gap.
    pub fn attach(
        ebpf: &mut Ebpf,
        unix: Vec<UnixProgram>,
        cgroup: &Path,
        dir: &Path,
        tag: &str,
    ) -> Result<Self, BpfError> {
        let cgroup_file = File::open(cgroup).map_err(|source| BpfError::Io {
            op: "opening cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        fs::create_dir_all(dir).map_err(|source| BpfError::Io {
            op: "creating pin directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut attached = Self {
            pins: Vec::with_capacity(PROGRAMS.len() + unix.len()),
            unix: Vec::new(),
            dir: dir.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            tag: tag.to_owned(),
        };
        for (name, kind, _) in PROGRAMS {
            let link = attach_one(ebpf, &cgroup_file, name, kind);
            let path = dir.join(format!("{name}-{tag}"));
            let pinned = link.and_then(|link| {
                link.pin(&path).map_err(|source| BpfError::Pin {
                    path: path.clone(),
                    source,
                })
            });
            match pinned {
                Ok(p) => attached.pins.push((path, p)),
                Err(e) => {
                    // Undo the ones already made; the caller reports the error.
                    attached.detach();
                    return Err(e);
                }
            }
        }
        for program in unix {
            if let Err(e) = attached.attach_unix(&program, &cgroup_file) {
                attached.detach();
                return Err(e);
            }
            attached.unix.push(program);
        }
        Ok(attached)
    }

    /// Attaches and pins one Unix-socket program, replacing a pin of the same name.
    fn attach_unix(&mut self, program: &UnixProgram, cgroup: &File) -> Result<(), BpfError> {
        let path = self.dir.join(format!("{}-{}", program.name, self.tag));
        self.pins.retain(|(p, _)| p != &path);
        let _ = fs::remove_file(&path);
        program.attach_and_pin(cgroup, &path)?;
        let pinned = PinnedLink::from_pin(&path).map_err(|source| BpfError::Link {
            name: program.name,
            source,
        })?;
        self.pins.push((path, pinned));
        Ok(())
    }

    /// The programs of ours that the kernel no longer lists on the cgroup: someone (root,
    /// outside any cage) detached their links.
    pub fn missing(&self, ebpf: &Ebpf) -> Result<Vec<&'static str>, BpfError> {
        let cgroup = File::open(&self.cgroup).map_err(|source| BpfError::Io {
            op: "opening cgroup",
            path: self.cgroup.clone(),
            source,
        })?;
        let mut missing = Vec::new();
        for (name, _, attach_type) in PROGRAMS {
            let id = ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .map(|i| i.id())
                .ok_or(BpfError::MissingProgram(name))?;
            let attached =
                attached_program_ids(&cgroup, attach_type).map_err(|source| BpfError::Io {
                    op: "querying the programs attached to",
                    path: self.cgroup.clone(),
                    source,
                })?;
            if !attached.contains(&id) {
                missing.push(name);
            }
        }
        for program in &self.unix {
            let attached =
                attached_program_ids(&cgroup, program.attach_type).map_err(|source| {
                    BpfError::Io {
                        op: "querying the programs attached to",
                        path: self.cgroup.clone(),
                        source,
                    }
                })?;
            if !attached.contains(&program.id) {
                missing.push(program.name);
            }
        }
        Ok(missing)
    }

    /// Attaches and pins `names` again, replacing their detached links.
    pub fn repair(&mut self, ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), BpfError> {
        let cgroup = File::open(&self.cgroup).map_err(|source| BpfError::Io {
            op: "opening cgroup",
            path: self.cgroup.clone(),
            source,
        })?;
        for (name, kind, _) in PROGRAMS.into_iter().filter(|(n, _, _)| names.contains(n)) {
            let link = attach_one(ebpf, &cgroup, name, kind)?;
            let path = self.dir.join(format!("{name}-{}", self.tag));
            // The old pin holds a dead link; its file must go before the new one is pinned.
            self.pins.retain(|(p, _)| p != &path);
            let _ = fs::remove_file(&path);
            let pinned = link.pin(&path).map_err(|source| BpfError::Pin {
                path: path.clone(),
                source,
            })?;
            self.pins.push((path, pinned));
        }
        let unix = std::mem::take(&mut self.unix);
        let result = unix
            .iter()
            .filter(|p| names.contains(&p.name))
            .try_for_each(|p| self.attach_unix(p, &cgroup));
        self.unix = unix;
        result
    }

    /// Unpins and detaches every program (no cage needs them any more).
    pub fn detach(self) {
        for (path, pinned) in self.pins {
            match pinned.unpin() {
                // Dropping the last reference detaches the program.
                Ok(link) => drop(link),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not unpin"),
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }

    /// The Unix-socket programs attached here (kill tier, 6.7+), for containers' cgroups.
    pub fn unix_programs(&self) -> &[UnixProgram] {
        &self.unix
    }

    /// The Unix-socket hooks' states, for `doctor` and `status`.
    pub fn unix_status(&self, confinement: &super::UnixConfinement) -> Vec<super::HookStatus> {
        let purpose = "kill tier: Unix connects and sends of cages with unix: rules";
        super::unix::UNIX_PROGRAMS
            .iter()
            .map(|(name, _)| {
                let hook = format!("cgroup/{}", name.trim_start_matches("agentcage_"));
                let state = if self.unix.iter().any(|p| p.name == *name) {
                    "attached".to_owned()
                } else {
                    match confinement {
                        super::UnixConfinement::Lsm => {
                            "not loaded: deny tier (the LSM hooks confine Unix sockets)".to_owned()
                        }
                        other => format!("not loaded: {other}"),
                    }
                };
                super::HookStatus {
                    program: (*name).to_owned(),
                    hook,
                    purpose: purpose.to_owned(),
                    state,
                }
            })
            .collect()
    }

    /// Leaves the programs pinned and attached after this process exits.
    pub fn keep(self) {
        drop(self.pins);
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    cgroup: &File,
    name: &'static str,
    kind: ProgramKind,
) -> Result<FdLink, BpfError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?;
    let wrap = |source| BpfError::Program { name, source };
    // Loaded once; a repair attaches the loaded program again.
    let load = |r: Result<(), ProgramError>| match r {
        Ok(()) | Err(ProgramError::AlreadyLoaded) => Ok(()),
        Err(source) => Err(BpfError::Program { name, source }),
    };
    // The three program types differ only in their type and attach arguments.
    macro_rules! attach_as {
        ($ty:ty $(, $arg:expr)*) => {{
            let p: &mut $ty = program
                .try_into()
                .map_err(|_| BpfError::MissingProgram(name))?;
            load(p.load())?;
            let id = p
                .attach(cgroup, $($arg,)* CgroupAttachMode::Single)
                .map_err(wrap)?;
            FdLink::try_from(p.take_link(id).map_err(wrap)?)
        }};
    }
    match kind {
        ProgramKind::SockAddr => attach_as!(CgroupSockAddr),
        ProgramKind::Sock => attach_as!(CgroupSock),
        ProgramKind::SkbEgress => attach_as!(CgroupSkb, CgroupSkbAttachType::Egress),
        ProgramKind::SkbIngress => attach_as!(CgroupSkb, CgroupSkbAttachType::Ingress),
    }
    .map_err(|source| BpfError::Link { name, source })
}

/// The ids of the programs attached to the cgroup at `path` for `attach_type`
/// (BPF_PROG_QUERY), which tools that predate an attach type (bpftool) do not list.
pub fn attached_ids(path: &Path, attach_type: u32) -> io::Result<Vec<u32>> {
    attached_program_ids(&File::open(path)?, attach_type)
}

/// The ids of the programs attached to `cgroup` for `attach_type` (BPF_PROG_QUERY).
pub(super) fn attached_program_ids(cgroup: &File, attach_type: u32) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    /// The `query` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let mut ids = vec![0u32; 64];
    let mut attr = Query {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr query; prog_ids has prog_cnt slots.
    unsafe { super::sys_bpf(BPF_PROG_QUERY, &mut attr) }?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Detaches links that an earlier daemon pinned under `dir` (those not tagged `keep_tag`).
/// Called after this daemon's own are attached, so there is no moment without enforcement.
/// Returns how many were released. Entries that cannot be released are left and logged:
/// an extra link still enforcing is safe, and this daemon's own links stay either way.
pub fn release_pinned(dir: &Path, keep_tag: &str) -> usize {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot list earlier pins");
            }
            return 0;
        }
    };
    let suffix = format!("-{keep_tag}");
    let mut released = 0;
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        // Directories hold other cgroups' links (containers), released with them.
        if path.to_string_lossy().ends_with(&suffix) || entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        // Unpinning removes the bpffs file; dropping the FdLink then detaches the program.
        match PinnedLink::from_pin(&path).map(PinnedLink::unpin) {
            Ok(Ok(link)) => {
                drop(link);
                released += 1;
            }
            Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "cannot unpin"),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %crate::errors::render(&e),
                "not a pinned link: left alone"
            ),
        }
    }
    released
}
