//! The cgroup Unix socket-address hooks (`cgroup/connect_unix`, `cgroup/sendmsg_unix`,
//! Linux 6.7 and later), loaded without aya.
//!
//! aya 0.14 has no Unix attach types, and its object parser refuses a section it does not
//! know, so the two programs sit in the embedded object under a section aya accepts
//! (`cgroup/connect4`) and aya never loads them. This module does what aya does for the
//! others, with the one difference that matters: it parses the same object with aya-obj,
//! points the programs' map references at the maps aya already created (so they share
//! `CAGES`, `UNIX_DFA` and `EVENTS` with every other program), and loads each with the Unix
//! expected attach type, which the kernel requires to attach it to that hook.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::bpf_insn;

use super::{
    btf::Btf,
    cgroup_links::{link_create, obj_pin},
    BpfError, ProgLoad,
};

/// The programs and the `enum bpf_attach_type` names of their hooks.
pub const UNIX_PROGRAMS: [(&str, &str); 2] = [
    ("agentcage_connect_unix", "BPF_CGROUP_UNIX_CONNECT"),
    ("agentcage_sendmsg_unix", "BPF_CGROUP_UNIX_SENDMSG"),
];

/// What the kernel lacks without the hooks, for messages.
pub const UNIX_HOOKS_MISSING: &str =
    "cgroup Unix socket hooks (cgroup/connect_unix and sendmsg_unix, Linux 6.7 and later)";

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// Size of the verifier log asked for when a load fails.
const LOG_SIZE: usize = 1 << 20;

/// How this kernel confines Unix sockets, for `cage_settings`, `status` and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnixConfinement {
    /// The deny tier's LSM hooks `unix_stream_connect` and `unix_may_send`: the listener's
    /// own address is judged, and listeners in the same cage pass.
    Lsm,
    /// The cgroup Unix socket-address hooks: the address the caller gives is judged.
    CgroupHooks,
    /// Neither: why the cgroup hooks are missing (the LSM's reason is the tier's own);
    /// agents whose policy has `unix:` are refused.
    Unavailable(String),
}

impl UnixConfinement {
    /// Whether a policy's `unix:` can be enforced.
    pub fn available(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }
}

impl std::fmt::Display for UnixConfinement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lsm => f.write_str("BPF LSM (unix_stream_connect, unix_may_send)"),
            Self::CgroupHooks => f.write_str("cgroup/connect_unix and cgroup/sendmsg_unix"),
            Self::Unavailable(why) => f.write_str(why),
        }
    }
}

/// One loaded Unix program.
pub struct UnixProgram {
    /// Its name in the object.
    pub name: &'static str,
    /// Its kernel attach type.
    pub attach_type: u32,
    /// The kernel's id for it (what BPF_PROG_QUERY lists).
    pub id: u32,
    fd: OwnedFd,
}

/// The attach types of the Unix hooks, if this kernel has them (read from its BTF).
pub fn attach_types(btf: &Btf) -> Option<[u32; 2]> {
    let [(_, connect), (_, sendmsg)] = UNIX_PROGRAMS;
    let value = |name| btf.enum_value(name).and_then(|v| u32::try_from(v).ok());
    Some([value(connect)?, value(sendmsg)?])
}

/// Loads the Unix programs of `object` (the bytes `ebpf` was loaded from), sharing the maps
/// of `ebpf`, which must still hold them all (before any is taken out).
pub fn load(
    ebpf: &Ebpf,
    object: &[u8],
    attach_types: [u32; 2],
) -> Result<Vec<UnixProgram>, BpfError> {
    let mut obj = aya_obj::Object::parse(object).map_err(BpfError::UnixObject)?;
    let fds: HashMap<&str, RawFd> = ebpf
        .maps()
        .filter_map(|(name, map)| map_fd(map).map(|fd| (name, fd)))
        .collect();
    let maps = obj.maps.clone();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let mut shared = Vec::new();
    for (name, map) in &maps {
        let fd = fds
            .get(name.as_str())
            .copied()
            .ok_or_else(|| BpfError::UnixMap(name.clone()))?;
        shared.push((name.as_str(), fd, map));
    }
    obj.relocate_maps(shared.into_iter(), &text_sections)
        .map_err(BpfError::UnixRelocation)?;
    obj.relocate_calls(&text_sections)
        .map_err(BpfError::UnixRelocation)?;
    let license = obj.license.clone();
    let mut loaded = Vec::new();
    for ((name, _), attach_type) in UNIX_PROGRAMS.into_iter().zip(attach_types) {
        let program = obj
            .programs
            .get(name)
            .ok_or(BpfError::MissingProgram(name))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or(BpfError::MissingProgram(name))?;
        let fd = prog_load(name, &function.instructions, &license, attach_type)?;
        let id = prog_id(&fd).map_err(|source| BpfError::UnixLoad {
            name,
            source,
            log: String::new(),
        })?;
        loaded.push(UnixProgram {
            name,
            attach_type,
            id,
            fd,
        });
    }
    Ok(loaded)
}

impl UnixProgram {
    /// The program's descriptor, to attach it to more cgroups (containers').
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Attaches the program to `cgroup` with a bpf link and pins the link at `path`.
    pub fn attach_and_pin(&self, cgroup: &File, path: &Path) -> Result<(), BpfError> {
        let link = link_create(&self.fd, cgroup, self.attach_type).map_err(|source| {
            BpfError::UnixLoad {
                name: self.name,
                source,
                log: String::new(),
            }
        })?;
        obj_pin(&link, path).map_err(|source| BpfError::Io {
            op: "pinning",
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The descriptor of a map aya created, for the map types the programs use.
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerfEventArray(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

fn bpf(cmd: libc::c_long, attr: *mut u8, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes a valid bpf_attr member of `size` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads one program; on failure, loads it again with the verifier's log for the error.
fn prog_load(
    name: &'static str,
    insns: &[bpf_insn],
    license: &CString,
    attach_type: u32,
) -> Result<OwnedFd, BpfError> {
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..ProgLoad::default()
    };
    // SAFETY: a BPF_PROG_LOAD attr whose insns, license and log buffer outlive the call.
    let load = |attr: &mut ProgLoad| unsafe { super::sys_bpf(super::BPF_PROG_LOAD, attr) };
    let source = match load(&mut attr) {
        // SAFETY: a new descriptor the kernel handed us.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => e,
    };
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = LOG_SIZE as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let _ = load(&mut attr);
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err(BpfError::UnixLoad {
        name,
        source,
        log: String::from_utf8_lossy(&log[..end]).into_owned(),
    })
}

/// The kernel's id of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`).
fn prog_id(prog: &OwnedFd) -> io::Result<u32> {
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // `struct bpf_prog_info` begins with `type` and `id`; the kernel fills what fits.
    let mut info = [0u32; 2];
    let mut attr = GetInfo {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw mut attr).cast(),
        size_of::<GetInfo>(),
    )?;
    Ok(info[1])
}
