//! `cargo xtask fuzz --target control`: see `agent_userspace::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_userspace::fuzzing::control(data));
