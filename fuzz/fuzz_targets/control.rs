//! `cargo xtask fuzz --target control`: see `agentcage::fuzzing::control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentcage::fuzzing::control(data));
