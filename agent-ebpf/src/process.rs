//! Process capture: exec, fork and exit, from the scheduler's raw tracepoints.
//!
//! These fire for every task on the host, so each starts with the cage lookup and returns at
//! once for uncaged tasks. The exec tracepoint is also the kill tier's exec enforcement: it
//! runs after the point of no return but before the new image's first instruction, so a
//! SIGKILL sent here means nothing of the binary runs.

use agent_common::{
    cage::CageConfig,
    event::{EventKind, Verdict},
    kernel::{KernelSettings, TIER_KILL},
    process::{
        ExecEvent, ExitEvent, ForkEvent, ARGV_BYTES, EXEC_F_ARGV_TRUNCATED, EXEC_F_ARGV_UNREADABLE,
        EXEC_F_FROM_LSM, EXEC_F_KILLED, FILENAME_BYTES,
    },
};
use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_probe_read_kernel_str,
        bpf_probe_read_user, bpf_send_signal,
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::{
    egress::cage_of,
    events::{batched_wakeup, count, header, Counter},
    exec_rules::{judge_exec, judge_inode},
    kernel::{file_inode, inode_id, read, settings},
    maps::EVENTS,
};

const SIGKILL: u32 = 9;

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn agentcage_exec(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let file = read::<*const u8>(bprm, s.bprm_file).unwrap_or_default();
    let inode = file_inode(&s, file);
    let (dev, ino) = inode_id(&s, inode);
    let mut flags = 0;
    // The deny tier judged before the exec (this only names the rule for the event); the
    // kill tier judges here, content included.
    let judged = if s.tier == TIER_KILL {
        judge_exec(&s, &cage, cgroup_id, inode, (dev, ino))
    } else {
        judge_inode(&cage, cgroup_id, dev, ino)
    };
    let (verdict, rule_id) = match judged {
        // The deny tier's LSM hook has already refused what it refuses; what reaches here
        // was allowed (a race with a reload is settled in favour of the decision made).
        (v @ (Verdict::Deny | Verdict::PendingApproval), rule) if s.tier == TIER_KILL => {
            // SAFETY: a helper without preconditions; the signal targets the current task.
            if unsafe { bpf_send_signal(SIGKILL) } == 0 {
                count(cgroup_id, Counter::Killed);
                flags |= EXEC_F_KILLED;
                // A missing approval keeps its verdict, so user space raises the request.
                if v == Verdict::Deny {
                    (Verdict::Killed, rule)
                } else {
                    (v, rule)
                }
            } else {
                count(cgroup_id, Counter::Denied);
                (Verdict::KillFailed, rule)
            }
        }
        (Verdict::Deny | Verdict::PendingApproval, rule) => (Verdict::Allow, rule),
        other => other,
    };
    emit_exec(
        &s,
        &cage,
        cgroup_id,
        task,
        bprm,
        (dev, ino),
        verdict,
        rule_id,
        flags,
    );
    0
}

/// Writes an exec event straight into the ring buffer (it is too large for the stack).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per hook, all fields needed"
)]
#[inline(always)]
pub fn emit_exec(
    s: &KernelSettings,
    cage: &CageConfig,
    cgroup_id: u64,
    task: *const u8,
    bprm: *const u8,
    (dev, ino): (u32, u64),
    verdict: Verdict,
    rule_id: u32,
    flags: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(cgroup_id, Counter::Lost(EventKind::Exec));
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved record of the right size, owned until submit.
    unsafe {
        (*e).header = header(EventKind::Exec, cage.agent_id, cage.policy_slot, cgroup_id);
        let parent = read::<*const u8>(task, s.task_real_parent).unwrap_or_default();
        (*e).ppid = read::<u32>(parent, s.task_tgid).unwrap_or(0);
        let uid_gid = bpf_get_current_uid_gid();
        (*e).uid = uid_gid as u32;
        (*e).gid = (uid_gid >> 32) as u32;
        (*e).ino = ino;
        (*e).dev = dev;
        (*e).rule_id = rule_id;
        (*e).verdict = verdict as u8;
        (*e)._pad = [0; 3];
        (*e).filename[0] = 0;
        if let Some(name) = read::<*const u8>(bprm, s.bprm_filename) {
            bpf_probe_read_kernel_str(
                (*e).filename.as_mut_ptr().cast(),
                FILENAME_BYTES as u32,
                name.cast(),
            );
        }
        let mut flags = flags;
        let mut len = 0u32;
        // Before the new image exists (the LSM hook) the arguments are not in a user
        // address space yet: the task's mm is still the old one, so skip them there.
        if flags & EXEC_F_FROM_LSM == 0 {
            let mm = read::<*const u8>(task, s.task_mm).unwrap_or_default();
            let start = read::<u64>(mm, s.mm_arg_start).unwrap_or(0);
            let end = read::<u64>(mm, s.mm_arg_end).unwrap_or(0);
            let total = end.saturating_sub(start);
            let want = if total >= ARGV_BYTES as u64 {
                flags |= EXEC_F_ARGV_TRUNCATED;
                ARGV_BYTES as u32 - 1
            } else {
                total as u32
            };
            // The mask lets the verifier bound the size; `want` is already below it.
            let want = want & (ARGV_BYTES as u32 - 1);
            if start != 0
                && bpf_probe_read_user(
                    (*e).argv.as_mut_ptr().cast(),
                    want,
                    start as *const core::ffi::c_void,
                ) == 0
            {
                len = want;
            } else {
                flags |= EXEC_F_ARGV_UNREADABLE;
            }
        }
        (*e).argv_len = len;
        (*e).flags = flags;
    }
    entry.submit(batched_wakeup());
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`: new
/// processes only; threads are not part of the process tree.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn agentcage_fork(ctx: RawTracePointContext) -> i32 {
    // SAFETY: a helper without preconditions; the parent is the current task.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    let child: *const u8 = ctx.arg(1);
    let tgid = read::<u32>(child, s.task_tgid).unwrap_or(0);
    let pid = read::<u32>(child, s.task_pid).unwrap_or(0);
    if tgid != pid {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count(cgroup_id, Counter::Lost(EventKind::Fork));
        return 0;
    };
    entry.write(ForkEvent {
        header: header(EventKind::Fork, cage.agent_id, cage.policy_slot, cgroup_id),
        child_tgid: tgid,
        _pad: 0,
    });
    entry.submit(batched_wakeup());
    0
}

/// `sched_process_exit(struct task_struct *p)`, run by each exiting thread: reported once,
/// by the last thread of the process (`signal->live` has dropped to 0 by then), with the
/// status its parent will reap.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn agentcage_exit(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: a helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(cage) = cage_of(cgroup_id) else {
        return 0;
    };
    let s = settings();
    // SAFETY: as above.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() } as *const u8;
    let signal = read::<*const u8>(task, s.task_signal).unwrap_or_default();
    // Unreadable counts as alive: one missed exit is better than a process marked ended
    // while it runs.
    if read::<i32>(signal, s.signal_live).unwrap_or(1) != 0 {
        return 0;
    }
    let exit_code = read::<u32>(task, s.task_exit_code).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count(cgroup_id, Counter::Lost(EventKind::Exit));
        return 0;
    };
    entry.write(ExitEvent {
        header: header(EventKind::Exit, cage.agent_id, cage.policy_slot, cgroup_id),
        exit_code,
        _pad: 0,
    });
    entry.submit(batched_wakeup());
    0
}
