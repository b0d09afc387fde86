//! Field offsets from the running kernel's BTF, for the programs that read kernel structs.
//!
//! Rust eBPF has no CO-RE field relocations, so user space does the relocation: it looks the
//! fields up in /sys/kernel/btf/vmlinux and hands the offsets to the programs (see
//! `agent_common::kernel`). Only the small part of BTF needed for that is read here: aya-obj
//! keeps its BTF accessors private and btf-rs is LGPL, while the format is short and stable
//! (Documentation/bpf/btf.rst).

use std::path::Path;

use agent_common::kernel::KernelSettings;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the kernel's layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("reading {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF this reader understands.
    #[error("{0}: not valid BTF")]
    Malformed(String),
    /// A struct or field the programs need is not in this kernel.
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_FUNC: u32 = 12;

/// One type's record: its fixed part and the `vlen` entries after it.
struct Record<'a> {
    kind: u32,
    kind_flag: bool,
    /// For modifiers and typedefs, the type they refer to.
    referee: u32,
    /// What follows the fixed part (members, parameters, enumerators...), raw.
    entries: &'a [u8],
}

/// Names looked up by their hash: `(hash, name offset, id or entry offset)` in the order the
/// types came (the first definition wins). Searched from the start: a start looks up a few
/// dozen names, which costs less than sorting or hashing 100,000 into a map.
type NameIndex = Vec<(u64, u32, u32)>;

/// The types of one BTF blob, read where they lie: the vmlinux BTF holds some 130,000 types,
/// and a daemon start reads a few dozen of them, so only where each starts and an index of
/// the names looked up (structs, functions, enumerators) are made up front.
pub struct Btf {
    /// The type section.
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Where each type's record starts in `types`, by id (id 0, void, has none).
    starts: Vec<u32>,
    structs: NameIndex,
    funcs: NameIndex,
    /// Enumerators (`BPF_CGROUP_UNIX_CONNECT`...): their hash and the offset of their entry.
    enumerators: NameIndex,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// The bytes that follow a type's fixed 12 in its record; `None` for a kind this reader does
/// not know.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | 14 | 17 => 4, // int, var, decl_tag
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        KIND_FUNC_PROTO | KIND_ENUM => 8 * vlen,
        15 | 19 => 12 * vlen,                        // datasec, enum64
        KIND_PTR | 7..=12 | 16 | KIND_TYPE_TAG => 0, // fwd, typedef, modifiers, func, float
        _ => return None,
    })
}

/// FNV-1a of a name, read up to its NUL (or the end).
fn hash_name(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        if b == 0 {
            break;
        }
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data).ok_or_else(|| BtfError::Malformed(path.display().to_string()))
    }

    /// Parses little-endian BTF; `None` if it is malformed.
    pub fn parse(data: &[u8]) -> Option<Self> {
        if data.get(0..2)? != [0x9f, 0xeb] {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)?
            .to_vec();
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        let named =
            |off: u32, value: u32| Some((hash_name(strings.get(off as usize..)?), off, value));
        // Type id 0 is void.
        let mut starts = vec![0];
        let (mut structs, mut funcs, mut enumerators) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        while at < types.len() {
            let id = starts.len() as u32;
            starts.push(at as u32);
            let name_off = u32_at(&types, at)?;
            let info = u32_at(&types, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let entries = at + 12;
            match kind {
                // Forward declarations and empty duplicates carry no members; the
                // definition wins.
                KIND_STRUCT | KIND_UNION if vlen > 0 && name_off != 0 => {
                    structs.push(named(name_off, id)?)
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let e = entries + i * 8;
                        enumerators.push(named(u32_at(&types, e)?, e as u32)?);
                    }
                }
                KIND_FUNC => funcs.push(named(name_off, id)?),
                _ => {}
            }
            at = entries + extra_len(kind, vlen)?;
            if at > types.len() {
                return None;
            }
        }
        Some(Self {
            types,
            strings,
            starts,
            structs,
            funcs,
            enumerators,
        })
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The first value of `index` named `name`.
    fn find(&self, index: &NameIndex, name: &str) -> Option<u32> {
        let h = hash_name(name.as_bytes());
        index
            .iter()
            .find(|&&(x, off, _)| x == h && self.name(off) == name)
            .map(|&(_, _, v)| v)
    }

    /// The type with id `id`.
    fn record(&self, id: u32) -> Option<Record<'_>> {
        let at = *self.starts.get(id as usize).filter(|_| id != 0)? as usize;
        let info = u32_at(&self.types, at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let len = extra_len(kind, (info & 0xffff) as usize)?;
        Some(Record {
            kind,
            kind_flag: info >> 31 == 1,
            referee: u32_at(&self.types, at + 8)?,
            entries: self.types.get(at + 12..at + 12 + len)?,
        })
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.record(id) {
                Some(r)
                    if matches!(
                        r.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = r.referee
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset and type of `field` in the struct or union `id`, looking through
    /// anonymous members (as in `mm_struct`, whose fields sit in an unnamed struct).
    fn member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let r = self.record(self.resolve(id))?;
        if !matches!(r.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in r.entries.chunks_exact(12) {
            let (name_off, type_id, offset) = (u32_at(m, 0)?, u32_at(m, 4)?, u32_at(m, 8)?);
            let bit_offset = if r.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let name = self.name(name_off);
            if name == field {
                return Some((bit_offset, type_id));
            }
            if name.is_empty() {
                if let Some((off, ty)) = self.member(type_id, field) {
                    return Some((bit_offset + off, ty));
                }
            }
        }
        None
    }

    /// Whether the kernel has function `name` (e.g. `bpf_lsm_userns_create`: an LSM hook that
    /// BPF programs can attach to exists only if its `bpf_lsm_` stub does).
    pub fn has_func(&self, name: &str) -> bool {
        self.func_id(name).is_some()
    }

    /// The BTF type id of function `name` (what a tracing or LSM program is loaded for).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.find(&self.funcs, name)
    }

    /// Position (from 0) of parameter `param` of function `func`: LSM hooks gain and lose
    /// parameters across kernel versions.
    pub fn param_index(&self, func: &str, param: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("parameter {param} of {func}"));
        let id = self.func_id(func).ok_or_else(missing)?;
        let proto = self.record(id).ok_or_else(missing)?.referee;
        let r = self.record(proto).filter(|r| r.kind == KIND_FUNC_PROTO);
        let params = r.as_ref().map_or(&[][..], |r| r.entries);
        (0..)
            .zip(params.chunks_exact(8))
            .find(|(_, p)| u32_at(p, 0).is_some_and(|off| self.name(off) == param))
            .map(|(i, _)| i)
            .ok_or_else(missing)
    }

    /// The value of the enumerator `name` (e.g. `BPF_CGROUP_UNIX_CONNECT`), if this kernel
    /// has it: how a program learns what the kernel it runs on can do.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        let entry = self.find(&self.enumerators, name)?;
        // Enumerator values are signed 32-bit unless the enum's kind_flag says unsigned;
        // the attach types looked up are small either way.
        let value = u32_at(&self.types, entry as usize + 4)? as i32;
        Some(i64::from(value))
    }

    /// Byte offset of `path` (e.g. `file.f_path.dentry`): a struct name, then fields.
    pub fn offset_of(&self, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(path.to_owned());
        let mut parts = path.split('.');
        let name = parts.next().ok_or_else(missing)?;
        let mut id = self
            .find(&self.structs, name)
            .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
        let mut bits = 0;
        for field in parts {
            let (off, ty) = self.member(id, field).ok_or_else(missing)?;
            bits += off;
            id = ty;
        }
        if bits % 8 != 0 {
            return Err(missing());
        }
        Ok(bits / 8)
    }
}

/// The offsets the programs need, from this kernel's BTF; `tier` is left for the caller.
pub fn kernel_settings(btf: &Btf) -> Result<KernelSettings, BtfError> {
    Ok(KernelSettings {
        tier: 0,
        task_tgid: btf.offset_of("task_struct.tgid")?,
        task_pid: btf.offset_of("task_struct.pid")?,
        task_real_parent: btf.offset_of("task_struct.real_parent")?,
        task_mm: btf.offset_of("task_struct.mm")?,
        task_exit_code: btf.offset_of("task_struct.exit_code")?,
        mm_arg_start: btf.offset_of("mm_struct.arg_start")?,
        mm_arg_end: btf.offset_of("mm_struct.arg_end")?,
        bprm_file: btf.offset_of("linux_binprm.file")?,
        bprm_filename: btf.offset_of("linux_binprm.filename")?,
        file_inode: btf.offset_of("file.f_inode")?,
        file_dentry: btf.offset_of("file.f_path.dentry")?,
        file_mode: btf.offset_of("file.f_mode")?,
        inode_ino: btf.offset_of("inode.i_ino")?,
        inode_sb: btf.offset_of("inode.i_sb")?,
        sb_dev: btf.offset_of("super_block.s_dev")?,
        dentry_parent: btf.offset_of("dentry.d_parent")?,
        dentry_inode: btf.offset_of("dentry.d_inode")?,
        socket_type: btf.offset_of("socket.type")?,
        task_signal: btf.offset_of("task_struct.signal")?,
        signal_live: btf.offset_of("signal_struct.live")?,
        file_flags: btf.offset_of("file.f_flags")?,
        path_dentry: btf.offset_of("path.dentry")?,
        mmap_prot_arg: btf.param_index("bpf_lsm_mmap_file", "prot").unwrap_or(2),
        inode_mode: btf.offset_of("inode.i_mode")?,
        socket_sk: btf.offset_of("socket.sk")?,
        // Before 5.15 the cgroup pointer is the union's `val` (when no v1 net_cls/net_prio
        // data is stored there). Read wrong, the id matches no cage and the one use of it
        // (DNS on a socket made outside every cage) is refused: it fails closed.
        sock_cgroup: first_offset(btf, &["sock.sk_cgrp_data.cgroup", "sock.sk_cgrp_data.val"])?,
        cgroup_kn: btf.offset_of("cgroup.kn")?,
        kernfs_id: btf.offset_of("kernfs_node.id")?,
        sock_family: btf.offset_of("sock.__sk_common.skc_family")?,
        sock_type: btf.offset_of("sock.sk_type")?,
        sock_rcv_saddr: btf.offset_of("sock.__sk_common.skc_rcv_saddr")?,
        sock_v6_rcv_saddr: btf.offset_of("sock.__sk_common.skc_v6_rcv_saddr")?,
        unix_addr: btf.offset_of("unix_sock.addr")?,
        unix_peer: btf.offset_of("unix_sock.peer")?,
        unix_addr_len: btf.offset_of("unix_address.len")?,
        unix_addr_name: btf.offset_of("unix_address.name")?,
        sock_addr_uaddr: btf.offset_of("bpf_sock_addr_kern.uaddr")?,
        // Added with the Unix sock_addr hooks (6.7); without them nothing reads it.
        sock_addr_uaddrlen: btf.offset_of("bpf_sock_addr_kern.uaddrlen").unwrap_or(0),
        sock_daddr: btf.offset_of("sock.__sk_common.skc_daddr")?,
        sock_v6_daddr: btf.offset_of("sock.__sk_common.skc_v6_daddr")?,
        sock_dport: btf.offset_of("sock.__sk_common.skc_dport")?,
        sock_num: btf.offset_of("sock.__sk_common.skc_num")?,
        sock_protocol: btf.offset_of("sock.sk_protocol")?,
        msg_name: btf.offset_of("msghdr.msg_name")?,
        msg_namelen: btf.offset_of("msghdr.msg_namelen")?,
        inode_size: btf.offset_of("inode.i_size")?,
        inode_ctime_sec: first_offset(btf, &CTIME_SEC)?,
        inode_ctime_nsec: first_offset(btf, &CTIME_NSEC)?,
    })
}

/// Where kernels keep an inode's change time: separate fields since 6.11, a `timespec64`
/// named `__i_ctime` in 6.6-6.10 and `i_ctime` before.
const CTIME_SEC: [&str; 3] = [
    "inode.i_ctime_sec",
    "inode.__i_ctime.tv_sec",
    "inode.i_ctime.tv_sec",
];
/// As [`CTIME_SEC`], for the nanoseconds (read as a u32 either way: little-endian, below 2^30).
const CTIME_NSEC: [&str; 3] = [
    "inode.i_ctime_nsec",
    "inode.__i_ctime.tv_nsec",
    "inode.i_ctime.tv_nsec",
];

/// The offset of the first of `paths` this kernel has.
fn first_offset(btf: &Btf, paths: &[&str]) -> Result<u32, BtfError> {
    paths
        .iter()
        .find_map(|p| btf.offset_of(p).ok())
        .ok_or_else(|| BtfError::Missing(paths.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout: every field is found, and the offsets are plausible
    /// (inside their structs, distinct where the fields differ).
    #[test]
    fn reads_this_kernels_layout() {
        let btf = Btf::from_sys_fs().expect("this machine's kernel has BTF");
        let s = kernel_settings(&btf).expect("every field the programs read exists");
        assert_ne!(s.task_tgid, s.task_pid);
        assert_eq!(
            s.task_tgid,
            s.task_pid + 4,
            "pid and tgid are adjacent in task_struct"
        );
        assert!(s.mm_arg_end > s.mm_arg_start);
        assert!(
            s.inode_ctime_nsec > s.inode_ctime_sec && s.inode_ctime_nsec - s.inode_ctime_sec <= 32,
            "the change time's nanoseconds follow its seconds closely"
        );
        assert_eq!(s.mm_arg_end, s.mm_arg_start + 8);
        // f_path is { vfsmount *mnt; dentry *dentry }.
        assert_eq!(
            s.file_dentry,
            btf.offset_of("file.f_path").unwrap() + 8,
            "dentry follows mnt in struct path"
        );
    }

    #[test]
    fn finds_hook_parameters() {
        let btf = Btf::from_sys_fs().unwrap();
        // security_file_open(struct file *file): one parameter.
        assert_eq!(btf.param_index("security_file_open", "file").unwrap(), 0);
        let prot = btf.param_index("security_mmap_file", "prot").unwrap();
        assert!((1..=2).contains(&prot), "prot is parameter {prot}");
    }

    #[test]
    fn reads_enumerators() {
        let btf = Btf::from_sys_fs().unwrap();
        // BPF_CGROUP_INET_INGRESS is the first attach type, in every kernel.
        assert_eq!(btf.enum_value("BPF_CGROUP_INET_INGRESS"), Some(0));
        assert_eq!(btf.enum_value("BPF_CGROUP_INET4_CONNECT"), Some(10));
        assert_eq!(btf.enum_value("NO_SUCH_ENUMERATOR"), None);
    }

    #[test]
    fn finds_lsm_hook_stubs() {
        let btf = Btf::from_sys_fs().unwrap();
        // Every kernel with BPF LSM built in has the exec hook's stub (the host's 6.18 does,
        // although it refuses to load LSM programs).
        assert!(btf.has_func("bpf_lsm_bprm_check_security"));
        assert!(!btf.has_func("bpf_lsm_no_such_hook"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let btf = Btf::from_sys_fs().unwrap();
        let e = btf.offset_of("task_struct.no_such_field").unwrap_err();
        assert!(e.to_string().contains("task_struct.no_such_field"), "{e}");
        assert!(Btf::parse(b"not btf at all").is_none());
    }
}
