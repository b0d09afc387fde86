//! `cargo xtask fuzz --target policy`: see `agentcage::fuzzing::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentcage::fuzzing::policy(data));
