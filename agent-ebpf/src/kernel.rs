//! The running kernel's struct layout and enforcement tier, set by user space at load.
//!
//! `SETTINGS` lives in `.rodata`, which aya freezes after writing it: the verifier then
//! knows every field as a constant, so an offset added to a BTF pointer is a fixed offset
//! it can check (bpf_ima_file_hash needs exactly that), and a tier test folds away.

use agent_common::kernel::KernelSettings;
use aya_ebpf::helpers::bpf_probe_read_kernel;

#[unsafe(no_mangle)]
static SETTINGS: KernelSettings = KernelSettings {
    tier: 0,
    task_tgid: 0,
    task_pid: 0,
    task_real_parent: 0,
    task_mm: 0,
    task_exit_code: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    bprm_file: 0,
    bprm_filename: 0,
    file_inode: 0,
    file_dentry: 0,
    file_mode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    dentry_parent: 0,
    dentry_inode: 0,
    socket_type: 0,
    task_signal: 0,
    signal_live: 0,
    file_flags: 0,
    path_dentry: 0,
    mmap_prot_arg: 0,
    inode_mode: 0,
    socket_sk: 0,
    sock_cgroup: 0,
    cgroup_kn: 0,
    kernfs_id: 0,
    sock_family: 0,
    sock_type: 0,
    sock_rcv_saddr: 0,
    sock_v6_rcv_saddr: 0,
    unix_addr: 0,
    unix_peer: 0,
    unix_addr_len: 0,
    unix_addr_name: 0,
    sock_addr_uaddr: 0,
    sock_addr_uaddrlen: 0,
    sock_daddr: 0,
    sock_v6_daddr: 0,
    sock_dport: 0,
    sock_num: 0,
    sock_protocol: 0,
    msg_name: 0,
    msg_namelen: 0,
    inode_size: 0,
    inode_ctime_sec: 0,
    inode_ctime_nsec: 0,
};

/// The settings user space wrote. A volatile read, so the compiler cannot fold the zeros
/// above into the program.
#[inline(always)]
pub fn settings() -> KernelSettings {
    // SAFETY: a plain static, valid for reads for the program's life.
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}

/// `linux_binprm.file`, read on its own from the frozen global: the verifier must see it as
/// a constant where a typed pointer is derived from it.
#[inline(always)]
pub fn bprm_file_offset() -> u32 {
    // SAFETY: a plain static, valid for reads for the program's life.
    unsafe { core::ptr::read_volatile(&raw const SETTINGS.bprm_file) }
}

/// Reads a `T` at `base + offset` in kernel memory; `None` if the memory is not readable.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T).ok() }
}

/// Device (kernel encoding) and inode number of an `inode *`.
#[inline(always)]
pub fn inode_id(s: &KernelSettings, inode: *const u8) -> (u32, u64) {
    let ino = read::<u64>(inode, s.inode_ino).unwrap_or(0);
    let sb = read::<*const u8>(inode, s.inode_sb).unwrap_or_default();
    let dev = read::<u32>(sb, s.sb_dev).unwrap_or(0);
    (dev, ino)
}

/// Device and inode of the file behind a `file *`.
#[inline(always)]
pub fn file_id(s: &KernelSettings, file: *const u8) -> (u32, u64) {
    inode_id(s, file_inode(s, file))
}

/// The `inode *` of a `file *` (null if unreadable).
#[inline(always)]
pub fn file_inode(s: &KernelSettings, file: *const u8) -> *const u8 {
    read::<*const u8>(file, s.file_inode).unwrap_or_default()
}
