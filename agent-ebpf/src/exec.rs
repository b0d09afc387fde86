//! Exec enforcement in the deny tier: the BPF LSM hook `bprm_check_security`, which runs
//! before the old image is replaced, so a refusal is a plain EPERM from execve.
//!
//! Rules by file key on (device, inode): a hard link is the same file, a copy is not. Rules
//! by content key on the SHA-256 the kernel's IMA computes (`bpf_ima_file_hash`), so a
//! renamed copy of a denied binary is still denied; that needs a sleepable program.

use agent_common::{
    cage::{CAGE_F_EXEC_DIGESTS_REQUIRED, CAGE_F_EXEC_HASHES},
    event::Verdict,
    file::InodeKey,
    process::{HashKey, EXEC_DENY, EXEC_F_FROM_LSM, EXEC_F_MMAP, EXEC_RULE_DEFAULT},
};
use aya_ebpf::{
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ima_file_hash},
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    egress::cage_of,
    events::{count, Counter},
    exec_rules::{by_inode, default_of, verdict_of},
    kernel::{bprm_file_offset, file_id, settings},
    maps::{EXEC_HASHES, EXEC_INODES},
    process::emit_exec,
};

const EPERM: i32 = 1;
/// `HASH_ALGO_SHA256` in the kernel's `enum hash_algo`.
const HASH_ALGO_SHA256: i64 = 4;

/// With content rules: inode rules first, then the file's SHA-256, then the default.
#[lsm(hook = "bprm_check_security", sleepable)]
pub fn agentcage_bprm_check(ctx: LsmContext) -> i32 {
    bprm_check(&ctx, true)
}

/// Without content rules, for kernels whose IMA cannot hash for BPF.
#[lsm(hook = "bprm_check_security")]
pub fn agentcage_bprm_check_inode(ctx: LsmContext) -> i32 {
    bprm_check(&ctx, false)
}

#[inline(always)]
fn bprm_check(ctx: &LsmContext, hashes: bool) -> i32 {
    // An earlier LSM's refusal stands.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    let bprm: *const u8 = ctx.arg(0);
    // A direct load at an offset the verifier knows (read straight from the frozen rodata,
    // not through a stack copy), so the result stays a typed `struct file *`, as
    // bpf_ima_file_hash requires.
    let offset = bprm_file_offset();
    // SAFETY: bprm is the hook's valid argument and `offset` that of its `file` field.
    let file = unsafe { *(bprm.add(offset as usize) as *const *mut core::ffi::c_void) };
    let (dev, ino) = file_id(&s, file as *const u8);
    let by_inode = by_inode(&cage, cgroup_id, dev, ino);
    // A deny (or a missing approval) by file settles it; otherwise content is checked
    // before an allow by file, so an allowed file overwritten with a denied binary's bytes
    // is still denied.
    let mut decided = by_inode.filter(|(v, _)| *v != Verdict::Allow);
    if decided.is_none() && hashes && cage.flags & CAGE_F_EXEC_HASHES != 0 {
        let mut hk = HashKey {
            slot: cage.policy_slot,
            sha256: [0; 32],
        };
        // SAFETY: file is the typed pointer the helper checks; the buffer is 32 bytes.
        let algo = unsafe { bpf_ima_file_hash(file.cast(), hk.sha256.as_mut_ptr().cast(), 32) };
        if algo == HASH_ALGO_SHA256 {
            // SAFETY: as above.
            decided = unsafe { EXEC_HASHES.get(hk) }.map(verdict_of);
        } else if cage.flags & CAGE_F_EXEC_DIGESTS_REQUIRED != 0 {
            // The policy names content (sha256: rules) that cannot be checked: fail closed.
            // Digests derived from deny paths only add to the rules by file, which stand.
            decided = Some((Verdict::Deny, EXEC_RULE_DEFAULT));
        }
    }
    let (verdict, rule_id) = decided.or(by_inode).unwrap_or_else(|| default_of(&cage));
    if verdict != Verdict::Allow {
        count(cgroup_id, Counter::Denied);
        emit_exec(
            &s,
            &cage,
            cgroup_id,
            // SAFETY: a helper without preconditions.
            unsafe { bpf_get_current_task() } as *const u8,
            bprm,
            (dev, ino),
            verdict,
            rule_id,
            EXEC_F_FROM_LSM,
        );
        return -EPERM;
    }
    0
}

const PROT_EXEC: u64 = 4;

/// `mmap_file(file, [reqprot,] prot, flags)`: a program run through the dynamic loader
/// (`ld.so /usr/bin/dd`) is mapped executable without an exec. Deny rules by file apply
/// there too; an allow list does not (every shared library is mapped so).
#[lsm(hook = "mmap_file")]
pub fn agentcage_mmap_file(ctx: LsmContext) -> i32 {
    let s = settings();
    // Where `prot` sits differs across kernels; the hook's result is the argument after
    // `flags`, which follows `prot`.
    // Every argument is read at a constant offset, with volatile loads that LLVM may not
    // merge into one load through a pointer chosen at run time: 6.1's verifier refuses
    // that ("dereference of modified ctx ptr").
    let args = aya_ebpf::EbpfContext::as_ptr(&ctx) as *const u64;
    // SAFETY: an LSM context holds the hook's arguments (mmap_file has at least five with
    // its return value) as u64 words.
    let arg = |i: usize| unsafe { core::ptr::read_volatile(args.add(i)) };
    let (arg1, arg2, arg3, arg4) = (arg(1), arg(2), arg(3), arg(4));
    let (prot, previous) = if s.mmap_prot_arg == 1 {
        (arg1, arg3 as i32)
    } else {
        (arg2, arg4 as i32)
    };
    if previous != 0 {
        return previous;
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    if file.is_null() {
        return 0;
    }
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let (dev, ino) = file_id(&s, file);
    let key = InodeKey {
        slot: cage.policy_slot,
        dev,
        ino,
    };
    // Only a plain deny: a loader's "not as the main program" rule must let every program
    // map it as its interpreter.
    // SAFETY: as in judge_inode.
    let Some(rule_id) = (unsafe { EXEC_INODES.get(key) })
        .filter(|r| r.action == EXEC_DENY)
        .map(|r| r.rule_id)
    else {
        return 0;
    };
    count(cgroup_id, Counter::Denied);
    emit_exec(
        &s,
        &cage,
        cgroup_id,
        // SAFETY: a helper without preconditions.
        unsafe { bpf_get_current_task() } as *const u8,
        core::ptr::null(),
        (dev, ino),
        Verdict::Deny,
        rule_id,
        EXEC_F_FROM_LSM | EXEC_F_MMAP,
    );
    -EPERM
}
