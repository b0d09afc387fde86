//! Filling the common header and counting what could not be reported.

use agent_common::{
    event::{EventHeader, EventKind},
    maps::EVENTS_BYTES,
};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns,
};

use crate::maps::{CAGE_STATS, EVENTS, GLOBAL_LOST};

/// The header for an event of `kind` raised by the current task.
#[inline(always)]
pub fn header(kind: EventKind, agent_id: u32, policy_slot: u32, cgroup_id: u64) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..header_without_task(kind, agent_id, policy_slot, cgroup_id)
    }
}

/// The header for an event raised where the current task must not be asked: Linux 6.1
/// refuses `bpf_get_current_pid_tgid` and `bpf_get_current_comm` in `cgroup_skb` programs
/// (the program then fails to load), and a packet may be sent from softirq context, where the
/// current task is not the sender anyway. pid, tgid and comm stay zero; the cgroup names the
/// cage.
#[inline(always)]
pub fn header_without_task(
    kind: EventKind,
    agent_id: u32,
    policy_slot: u32,
    cgroup_id: u64,
) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        agent_id,
        policy_slot,
        _pad: 0,
        // SAFETY: a helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id,
        pid: 0,
        tgid: 0,
        comm: [0; 16],
    }
}

/// Submit flags for high-volume records (exec, fork, exit): no wakeup of the reader for
/// each one, which costs a context switch per process on a busy host; the reader also polls
/// on a short timer. Once a quarter of the ring is waiting, wake it at once, so a burst
/// never fills the ring for want of a wakeup.
#[inline(always)]
pub fn batched_wakeup() -> u64 {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if EVENTS.query(BPF_RB_AVAIL_DATA) > u64::from(EVENTS_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Which counter of `CageStats` to bump.
#[derive(Clone, Copy)]
pub enum Counter {
    Allowed,
    Denied,
    /// A process killed by the kill tier.
    Killed,
    /// An event of this kind could not be reserved.
    Lost(EventKind),
}

/// Adds one to a cage's counter; a lost event of an unknown cage goes to `GLOBAL_LOST`.
/// Both maps are per CPU, so a plain add cannot race; user space sums the CPUs.
#[inline(always)]
pub fn count(cgroup_id: u64, counter: Counter) {
    if let Some(stats) = CAGE_STATS.get_ptr_mut(cgroup_id) {
        // SAFETY: this CPU's copy of a live map value; nothing else writes it concurrently.
        unsafe {
            match counter {
                Counter::Allowed => (*stats).allowed += 1,
                Counter::Denied => (*stats).denied += 1,
                Counter::Killed => (*stats).killed += 1,
                Counter::Lost(kind) => {
                    (*stats).lost += 1;
                    // A bounds check the verifier can follow; kinds are always in range.
                    let i = kind as usize;
                    if i < EventKind::COUNT {
                        (*stats).lost_by_kind[i] += 1;
                    }
                }
            }
        }
    } else if let Counter::Lost(_) = counter {
        if let Some(lost) = GLOBAL_LOST.get_ptr_mut(0) {
            // SAFETY: as above.
            unsafe { *lost += 1 };
        }
    }
}
