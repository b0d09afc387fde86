//! The daemon's three clocks: wall time (event times, OTLP), CLOCK_BOOTTIME (the kernel's
//! event timestamps and approval expiries, which keep counting through suspend) and the
//! offset between them.

use nix::time::{clock_gettime, ClockId};

fn ns(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
}

/// Wall-clock time now, ns since the Unix epoch.
pub fn now_unix_nano() -> u64 {
    u64::try_from(ns(ClockId::CLOCK_REALTIME)).unwrap_or(0)
}

/// CLOCK_BOOTTIME now, in ns: the clock of kernel timestamps and approval expiries.
pub fn boot_ns() -> u64 {
    u64::try_from(ns(ClockId::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// CLOCK_REALTIME minus CLOCK_BOOTTIME, to put wall-clock times on kernel timestamps.
pub fn boot_to_wall_ns() -> i128 {
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_BOOTTIME)
}

/// The wall-clock time of a kernel timestamp, given the offset.
pub fn wall_of_boot(boot_ns: u64, boot_to_wall_ns: i128) -> u64 {
    u64::try_from(i128::from(boot_ns) + boot_to_wall_ns).unwrap_or(0)
}
