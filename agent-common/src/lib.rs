//! Types shared by agentcage's eBPF programs and its user space.
//!
//! Everything that crosses the kernel/user boundary is defined here once, `#[repr(C)]`, so the
//! two sides can never disagree on a layout. One module per event family; `maps` holds the map
//! names and sizes both sides use.
#![no_std]

pub mod approval;
pub mod cage;
pub mod dns;
pub mod egress;
pub mod event;
pub mod file;
pub mod kernel;
pub mod maps;
pub mod process;
pub mod unix;

#[cfg(feature = "user")]
mod user;
