//! `cargo xtask fuzz --target app`: see `agent_userspace::fuzzing::app`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_userspace::fuzzing::app(data));
