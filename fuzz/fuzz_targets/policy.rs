//! `cargo xtask fuzz --target policy`: see `agent_userspace::fuzzing::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agent_userspace::fuzzing::policy(data));
