//! Exists so that agent-userspace can name this crate as a build dependency (aya-build); the
//! programs are the `agent` binary in `main.rs`, built for bpfel-unknown-none.
#![no_std]
