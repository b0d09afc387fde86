//! agentcage's eBPF programs. One module per hook family; decisions come from maps alone.
#![no_std]
#![no_main]

mod dns;
mod egress;
mod egress_lsm;
mod events;
mod exec;
mod exec_rules;
mod files;
mod kernel;
mod maps;
mod packets;
mod passed;
mod process;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves panics unreachable; nothing here ever runs.
    loop {}
}

/// GPL-compatible so that GPL-only helpers (bpf_get_current_comm...) are usable.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
