//! `cargo xtask fuzz --target event`: see `agent_userspace::fuzzing::event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_userspace::fuzzing::event(data));
