//! Attaching the already loaded cgroup programs to more cgroups than the parent: a
//! container's own cgroup, which its engine made and keeps (so its resource limits and
//! accounting stay the engine's), becomes a cage by having the same programs attached to it.
//!
//! aya attaches through `&mut` program handles owned by the loader; these links are made
//! from duplicated program descriptors with `BPF_LINK_CREATE` and pinned at once with
//! `BPF_OBJ_PIN`, so the state can make them under its own lock, and they outlive the daemon
//! like the parent's.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::Ebpf;

use super::{loader::attached_program_ids, BpfError, UnixProgram, PROGRAMS};

/// `enum bpf_cmd` values used here.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Descriptors of the loaded cgroup programs ([`PROGRAMS`] and the kill tier's Unix-socket
/// programs), to attach them elsewhere.
pub struct CgroupPrograms {
    programs: Vec<(&'static str, u32, OwnedFd, u32)>,
}

impl CgroupPrograms {
    /// Duplicates the descriptors of every cgroup program and of the loaded `unix` programs
    /// (so a container's cgroup confines Unix sockets as a cage's does); call after they are
    /// loaded (the parent's attach loads them).
    pub fn of(ebpf: &Ebpf, unix: &[UnixProgram]) -> Result<Self, BpfError> {
        let dup = |name: &'static str, fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|source| BpfError::Io {
                op: "duplicating the descriptor of program",
                path: name.into(),
                source,
            })
        };
        let mut programs = Vec::with_capacity(PROGRAMS.len() + unix.len());
        for (name, _, attach_type) in PROGRAMS {
            let program = ebpf.program(name).ok_or(BpfError::MissingProgram(name))?;
            let wrap = |source| BpfError::Program { name, source };
            let fd = dup(name, program.fd().map_err(wrap)?.as_fd())?;
            let id = program.info().map_err(wrap)?.id();
            programs.push((name, attach_type, fd, id));
        }
        for program in unix {
            let fd = dup(program.name, program.fd())?;
            programs.push((program.name, program.attach_type, fd, program.id));
        }
        Ok(Self { programs })
    }

    /// Attaches every program to `cgroup` and pins each link as `DIR/NAME-TAG`; on failure
    /// the links already made are removed and the error returned.
    pub fn attach(&self, cgroup: &Path, dir: &Path, tag: &str) -> Result<PinnedLinks, BpfError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| BpfError::Io { op, path, source }
        };
        let target = File::open(cgroup).map_err(io("opening cgroup", cgroup))?;
        fs::create_dir_all(dir).map_err(io("creating pin directory", dir))?;
        let mut links = PinnedLinks {
            dir: dir.to_path_buf(),
            pins: Vec::with_capacity(self.programs.len()),
        };
        for (name, attach_type, fd, _) in &self.programs {
            let path = dir.join(format!("{name}-{tag}"));
            let made = link_create(fd, &target, *attach_type)
                .and_then(|link| obj_pin(&link, &path))
                .map_err(io("attaching and pinning", &path));
            match made {
                Ok(()) => links.pins.push(path),
                Err(e) => {
                    links.detach();
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    /// The programs of ours the kernel no longer lists on `cgroup` (their links were
    /// detached by someone else).
    pub fn missing(&self, cgroup: &Path) -> io::Result<Vec<&'static str>> {
        let target = File::open(cgroup)?;
        let mut missing = Vec::new();
        for (name, attach_type, _, id) in &self.programs {
            if !attached_program_ids(&target, *attach_type)?.contains(id) {
                missing.push(*name);
            }
        }
        Ok(missing)
    }
}

/// Links pinned in bpffs: they stay attached, whatever becomes of this process, until their
/// pins are removed.
#[derive(Debug)]
pub struct PinnedLinks {
    dir: PathBuf,
    pins: Vec<PathBuf>,
}

impl PinnedLinks {
    /// Unpins every link (which detaches it: nothing else holds it) and removes the pin
    /// directory once it is empty.
    pub fn detach(self) {
        for path in &self.pins {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "could not unpin");
            }
        }
        let _ = fs::remove_dir(&self.dir);
        // The directory of every container's links, once the last is gone.
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `BPF_LINK_CREATE` for a cgroup program: a multi-attach link (the only kind for cgroups).
pub(super) fn link_create(prog: &OwnedFd, cgroup: &File, attach_type: u32) -> io::Result<OwnedFd> {
    /// The `link_create` member of `union bpf_attr`, up to the fields used.
    #[repr(C)]
    #[derive(Default)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 4],
    }
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size given; both descriptors are
    // open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw mut attr,
            size_of::<LinkCreate>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// `BPF_OBJ_PIN`: gives the link a name in bpffs, which keeps it alive after `link` closes.
pub(super) fn obj_pin(link: &OwnedFd, path: &Path) -> io::Result<()> {
    /// The `obj_pin` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr; `name` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw mut attr,
            size_of::<ObjPin>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
