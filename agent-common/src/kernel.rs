//! Settings user space gives the programs before attaching them: the enforcement tier and
//! the offsets of the kernel struct fields they read.
//!
//! Rust eBPF has no CO-RE field relocations, so the offsets are read from the running
//! kernel's BTF (/sys/kernel/btf/vmlinux) at start and handed over in the `SETTINGS` map;
//! the same object then works on every kernel whose BTF names these fields.

/// The kernel refuses operations (BPF LSM is active): EPERM.
pub const TIER_DENY: u32 = 1;
/// The kernel cannot refuse, so the offending process is killed with SIGKILL.
pub const TIER_KILL: u32 = 2;

/// Byte offsets of the fields the programs read, and the tier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSettings {
    /// [`TIER_DENY`] or [`TIER_KILL`]; 0 until user space has written the settings, when
    /// the programs report but decide nothing.
    pub tier: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `task_struct.exit_code`.
    pub task_exit_code: u32,
    /// `mm_struct.arg_start`.
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`.
    pub mm_arg_end: u32,
    /// `linux_binprm.file`.
    pub bprm_file: u32,
    /// `linux_binprm.filename`.
    pub bprm_filename: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `file.f_mode`.
    pub file_mode: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `dentry.d_inode`.
    pub dentry_inode: u32,
    /// `socket.type`.
    pub socket_type: u32,
    /// `task_struct.signal`.
    pub task_signal: u32,
    /// `signal_struct.live` (an `atomic_t`: its counter is at offset 0).
    pub signal_live: u32,
    /// `file.f_flags`.
    pub file_flags: u32,
    /// `path.dentry`.
    pub path_dentry: u32,
    /// Which argument of the `mmap_file` LSM hook is `prot` (kernels differ).
    pub mmap_prot_arg: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock.sk_cgrp_data.cgroup`: the cgroup the socket was created in.
    pub sock_cgroup: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: a cgroup v2 id.
    pub kernfs_id: u32,
    /// `sock.__sk_common.skc_family`.
    pub sock_family: u32,
    /// `sock.sk_type`.
    pub sock_type: u32,
    /// `sock.__sk_common.skc_rcv_saddr`: the IPv4 address the socket is bound to.
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`: the IPv6 address the socket is bound to.
    pub sock_v6_rcv_saddr: u32,
    /// `unix_sock.addr`: the address a Unix socket is bound to (NULL if none).
    pub unix_addr: u32,
    /// `unix_sock.peer`: a connected Unix socket's peer.
    pub unix_peer: u32,
    /// `unix_address.len`: the bound address's length, `sun_family` included.
    pub unix_addr_len: u32,
    /// `unix_address.name`: the bound `sockaddr_un`.
    pub unix_addr_name: u32,
    /// `bpf_sock_addr_kern.uaddr`: the address a cgroup sock_addr program judges.
    pub sock_addr_uaddr: u32,
    /// `bpf_sock_addr_kern.uaddrlen`; 0 on kernels before 6.7, which have no Unix
    /// sock_addr hooks.
    pub sock_addr_uaddrlen: u32,
    /// `sock.__sk_common.skc_daddr`: a connected IPv4 socket's peer.
    pub sock_daddr: u32,
    /// `sock.__sk_common.skc_v6_daddr`: a connected IPv6 socket's peer.
    pub sock_v6_daddr: u32,
    /// `sock.__sk_common.skc_dport`: the peer's port, network order.
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_num`: the socket's own port, host order.
    pub sock_num: u32,
    /// `sock.sk_protocol`.
    pub sock_protocol: u32,
    /// `msghdr.msg_name`: the address a send names (kernel memory by then), or NULL.
    pub msg_name: u32,
    /// `msghdr.msg_namelen`.
    pub msg_namelen: u32,
    /// `inode.i_size`.
    pub inode_size: u32,
    /// `inode.i_ctime_sec` (6.11 and later), or `inode.i_ctime.tv_sec` / `__i_ctime.tv_sec`.
    pub inode_ctime_sec: u32,
    /// `inode.i_ctime_nsec` (a u32 since 6.11), or the low half of `tv_nsec` before.
    pub inode_ctime_nsec: u32,
}
