//! Exists so that agent-userspace can name this crate as a build dependency (its build.rs
//! builds the programs, the `agent` binary in `main.rs`, for bpfel-unknown-none).
#![no_std]
